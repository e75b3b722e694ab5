"""A short run of every fuzz harness in fuzz/ (the long runs: fuzz/run.py, figures in SECURITY.md).

With atheris installed, each harness runs coverage-guided for a few thousand inputs in a subprocess (atheris
owns the process); without it, hypothesis feeds the same TestOneInput. Either way a finding fails the test:
an exception escaping a decoder or reader, an anomaly name outside the registry's closed set, a field outside
the registry, or per-flow state over its caps (fuzz/common.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import common
from fuzz.harness import TARGETS, build

ROOT = Path(__file__).resolve().parents[1]
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
RUNS = 2500


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris not installed: the hypothesis variant below runs instead")
@pytest.mark.parametrize("target", TARGETS)
def test_atheris_short_run(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in _seeds(target):
        (corpus / f"seed{len(list(corpus.iterdir()))}").write_bytes(seed)
    cmd = [sys.executable, str(ROOT / "fuzz" / f"fuzz_{target}.py"), str(corpus), f"-runs={RUNS}", "-max_len=2048",
           "-seed=1", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"stat::number_of_executed_units: {RUNS}" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("target", TARGETS)
def test_hypothesis_short_run(target: str) -> None:
    one = build(target)

    @settings(max_examples=150 if HAVE_ATHERIS else 1500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.one_of(st.binary(max_size=2048), st.sampled_from(_seeds(target)).flatmap(_mutate)))
    def run(data: bytes) -> None:
        one(data)

    run()


def _mutate(seed: bytes) -> st.SearchStrategy[bytes]:
    """Seeds cut, with bytes overwritten: real structure, hostile values."""
    return st.tuples(st.integers(0, len(seed)), st.lists(st.tuples(st.integers(0, max(len(seed) - 1, 0)),
                     st.integers(0, 255)), max_size=8)).map(lambda t: _apply(seed[: t[0]], t[1]))  # fmt: skip


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for at, v in edits:
        if at < len(b):
            b[at] = v
    return bytes(b)


def _seeds(target: str) -> list[bytes]:
    """Small seeds built here (no capture needed): a valid exchange per decoder, a minimal file per format."""
    mbap = bytes.fromhex("000100000006010300000002")
    mqtt = bytes.fromhex("100f00044d5154540402003c0003616263") + bytes.fromhex("3007000161") + b"hello"
    cotp_cr = bytes.fromhex("0300001611e00000000100c1020100c2020102c0010a")
    s7 = bytes.fromhex("0300001902f08032010000000100080000f0000001000101e0")
    from fuzz.make_corpus import TLS_SEEDS

    streams = {
        "modbus": [common.encode([(True, False, mbap), (False, False, bytes.fromhex("000100000007010304000a000b"))])],
        "mqtt": [common.encode([(True, False, mqtt), (False, False, bytes.fromhex("20020000"))])],
        "mqtt_tls": list(TLS_SEEDS),
        "s7comm": [common.encode([(True, False, cotp_cr), (True, False, s7)])],
    }
    if target in streams:
        return streams[target]
    import struct

    eth = b"\x02" * 12 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 52, 0, 0, 64, 6, 0, bytes(4), bytes(4))
    pkt = eth + ip + struct.pack("!HHIIBBHHH", 40000, 502, 1, 0, 0x50, 0x18, 1, 0, 0) + mbap
    pcap = (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 1, 0, len(pkt), len(pkt)) + pkt
    )
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20)
    pad = (-len(pkt)) % 4
    epb = struct.pack("<IIIIIII", 6, 32 + len(pkt) + pad, 0, 0, 1, len(pkt), len(pkt)) + pkt + bytes(pad)
    epb += struct.pack("<I", 32 + len(pkt) + pad)
    files = {"pcap": pcap, "pcapng": shb + idb + epb}
    if target == "gzip":
        return [b"\x01" + pcap, b"\x01" + files["pcapng"], b"\x02\x00\x30" + pcap]
    return [files[target]]


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_reach_the_decoders(target: str) -> None:
    """The seeds are real input, not noise: each decodes to messages (decoders) or records (captures)."""
    if target in common.PORTS:
        assert all(
            common.run_decoder(target, common.make_decoder(target), s, midstream=False) > 0 for s in _seeds(target)
        )
    else:
        runner = common.CaptureRunner()
        try:
            wanted = _seeds(target)[:2] if target == "gzip" else _seeds(target)
            assert all(runner.run(common.gzip_input(s) if target == "gzip" else s) == 1 for s in wanted)
        finally:
            runner.cleanup()


def test_regression_mqtt_tls_empty_delivery() -> None:
    """Found by fuzz_mqtt_tls (IndexError on an empty first delivery in sensor/protocols/mqtt/tls.py)."""
    data = bytes.fromhex("0000000000000000010002c000000002d0") + b"\xff" * 20 + b"\xf7" + b"\xff" * 150 + b"\x00"
    common.run_decoder("mqtt_tls", common.make_decoder("mqtt_tls"), data)
    common.run_decoder("mqtt_tls", common.make_decoder("mqtt_tls"), common.encode([(True, False, b"")]))


def test_regression_mismatch_on_the_tls_port_is_in_the_closed_set() -> None:
    """Plain MQTT on 8883 handed to the MQTT decoder, then not MQTT after a gap: the flow table's mismatch
    anomaly is named from the MQTT closed set (was ``mqtt_tls.protocol_mismatch``, outside every set)."""
    from sensor.flows import FlowTable
    from sensor.frames import Segment
    from sensor.protocols import registry

    out: list = []
    table = FlowTable({n: registry.create(n) for n in registry.names()}, dict(registry.DEFAULT_PORTS), out.append)
    c, s = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    table.process(Segment(1, c, s, 40000, 8883, 6, 0x02, 0, 0, b""), common.REF)
    table.process(Segment(2, s, c, 8883, 40000, 6, 0x12, 0, 1, b""), common.REF)
    table.process(Segment(3, c, s, 40000, 8883, 6, 0x18, 1, 1, bytes.fromhex("1020") + b"\x00\x04MQTT"), common.REF)
    seq = 1 + 8 + 1000  # 1000 bytes lost before each of the next segments
    for k in range(10):
        table.process(Segment(4 + k, c, s, 40000, 8883, 6, 0x18, seq, 1, b"\x00garbage"), common.REF)
        seq += 8 + 1000
    table.close_all(common.REF)
    names = {(m.protocol, m.name) for m in out if hasattr(m, "name")}
    assert ("mqtt", "mqtt.protocol_mismatch") in names, names
    regs = common.registries(registry.create("mqtt_tls"))
    common.check_output(regs, [m for m in out if m.name != "sensor.decoder_exception"])
