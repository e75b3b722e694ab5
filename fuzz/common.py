"""Shared pieces of the fuzz harnesses: the input encoding, the decoder driver and the invariants.

A decoder input is a sequence of chunks, each ``[flags][length: 2 bytes big-endian][data]``: bit 0 of ``flags``
says the chunk comes from the client, bit 1 that bytes were lost before it (``gap``). ``fuzz/make_corpus.py``
writes real TCP payload streams in this encoding; the fuzzer mutates them. A capture input is the file itself.

Invariants checked on every input (an ``AssertionError`` is a finding, like any other escaping exception):
- nothing but ``ProtocolMismatch`` (the decoder's sanctioned "not my protocol" signal) escapes ``feed``/``close``;
- every anomaly name is in the closed set of the protocol's field registry, every message field is a registry field;
- per-flow state stays within its caps (buffers, outstanding requests, aliases, fragment tables).
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from sensor.flows import FlowConfig, FlowTable
from sensor.frames import FrameDecoder
from sensor.messages import Anomaly, FieldRegistry, FlowInfo, Message, PacketRef
from sensor.protocols import registry
from sensor.protocols.base import Decoder, ProtocolMismatch
from sensor.protocols.modbus.decoder import MAX_ADU, ModbusState
from sensor.protocols.mqtt.decoder import OVERSIZE_HEAD, MqttState
from sensor.protocols.mqtt.tls import MAX_HANDSHAKE, TlsState
from sensor.protocols.s7comm.decoder import MAX_COTP_DATA, MAX_UD_OPEN, S7State
from sensor.source import MAX_RECORD, CaptureError, SourceReport, read_capture

# Small caps so that the fuzzer reaches them within a few thousand inputs.
OPTIONS: dict[str, dict[str, int]] = {
    "modbus": {"max_values": 16, "max_outstanding": 8},
    "s7comm": {"max_items": 8, "max_outstanding": 8, "max_value_bytes": 32},
    "mqtt": {"max_packet_size": 2048, "max_outstanding": 8, "max_topic_aliases": 4, "max_list_items": 8,
             "max_payload_bytes": 64},
    "mqtt_tls": {"max_packet_size": 2048, "max_outstanding": 8, "max_topic_aliases": 4, "max_list_items": 8},
}  # fmt: skip
PORTS = {"modbus": 502, "s7comm": 102, "mqtt": 1883, "mqtt_tls": 8883}
REF = PacketRef("fuzz", 1, 0)
CHUNK = struct.Struct("!BH")
_TS0 = 1_700_000_000_000_000_000


def chunks(data: bytes) -> Iterator[tuple[bool, bool, bytes]]:
    """Decode the chunk encoding: (from_client, gap, bytes); a short tail is one last client chunk."""
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 3:
            yield True, False, data[pos:]
            return
        flags, length = CHUNK.unpack_from(data, pos)
        pos += 3
        yield bool(flags & 1), bool(flags & 2), data[pos : pos + length]
        pos += length


def encode(stream: list[tuple[bool, bool, bytes]]) -> bytes:
    """The inverse of ``chunks`` (used by make_corpus.py and the tests); chunks over 65535 bytes are split."""
    out = bytearray()
    for from_client, gap, data in stream:
        for k in range(0, max(len(data), 1), 0xFFFF):
            part = data[k : k + 0xFFFF]
            out += CHUNK.pack((1 if from_client else 0) | (2 if gap and k == 0 else 0), len(part)) + part
    return bytes(out)


def registries(dec: Decoder) -> dict[str, FieldRegistry]:
    regs = {dec.registry.protocol: dec.registry}
    for reg in getattr(dec, "extra_registries", ()):
        regs[reg.protocol] = reg
    return regs


def check_output(regs: dict[str, FieldRegistry], out: list[Message | Anomaly]) -> None:
    """Closed anomaly set per protocol; message fields named by the registry."""
    for m in out:
        reg = regs.get(m.protocol)
        assert reg is not None, f"output of unknown protocol {m.protocol!r}"
        if type(m) is Anomaly:
            assert m.name in reg.anomalies, f"anomaly {m.name!r} not in the closed set of {m.protocol}"
            assert isinstance(m.reason, str)
        else:
            assert type(m) is Message, type(m)
            unknown = set(m.fields) - reg.fields.keys()
            assert not unknown, f"{m.protocol} message fields not in the registry: {sorted(unknown)}"


def check_state(name: str, dec: Any, st: Any) -> None:
    """Per-flow state within its caps."""
    if isinstance(st, TlsState):
        assert all(len(b) <= MAX_HANDSHAKE for b in st.bufs), [len(b) for b in st.bufs]
        if st.inner is not None:
            check_state("mqtt", dec.mqtt, st.inner)
        return
    if isinstance(st, ModbusState):
        assert all(len(b) <= MAX_ADU for b in st.bufs), [len(b) for b in st.bufs]
        assert len(st.pending) <= dec.max_outstanding
    elif isinstance(st, MqttState):
        limit = max(dec.max_packet_size, OVERSIZE_HEAD) + 5
        assert all(h <= limit for h in st.have), st.have
        assert all(sum(map(len, c)) <= limit for c in st.chunks)
        assert len(st.pending) <= dec.max_outstanding
        assert all(len(a) <= dec.max_topic_aliases for a in st.aliases)
    elif isinstance(st, S7State):
        assert all(len(b) < 0x10000 for b in st.bufs), [len(b) for b in st.bufs]  # one partial TPKT at most
        assert all(n <= MAX_COTP_DATA for n in st.seg_len), st.seg_len
        assert len(st.ud_frags) <= MAX_UD_OPEN
        assert len(st.pending) <= dec.max_outstanding
    else:
        raise AssertionError(f"unexpected state type {type(st).__name__} for {name}")


def make_decoder(name: str) -> Decoder:
    return registry.create(name, **OPTIONS[name])


def run_decoder(name: str, dec: Decoder, data: bytes, midstream: bool | None = None) -> int:
    """Feed one fuzz input to a fresh flow of ``dec``; returns the number of outputs. Raises on a finding."""
    if midstream is None:
        midstream = bool(len(data) & 1)  # both pickups, chosen by a bit the fuzzer controls cheaply
    flow = FlowInfo("10.0.0.1", 40000, "10.0.0.2", PORTS[name], "tcp", "1:fuzz", 1, midstream=midstream)
    regs = registries(dec)
    st = dec.new_state(flow)
    ts = _TS0
    total = 0
    try:
        for from_client, gap, part in chunks(data):
            ts += 1000
            out = list(dec.feed(st, from_client, part, ts, REF, gap))
            check_output(regs, out)
            check_state(name, dec, st)
            total += len(out)
    except ProtocolMismatch as e:
        assert isinstance(e.reason, str) and e.reason
    out = list(dec.close(st, ts + 1, REF))
    check_output(regs, out)
    stats = dec.stats(st)
    assert all(isinstance(v, int) and v >= 0 for v in stats.values()), stats
    return total + len(out)


# -- capture readers -------------------------------------------------------------------------------------------
class CaptureRunner:
    """Write the input to a private file, read it with the sensor's reader and push every record through the
    frame decoder and the flow table (all decoders, small caps). Invariants: only ``CaptureError`` (a foreign
    file) escapes; records within MAX_RECORD; no decoder exception caught by the flow table; closed sets."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="ics-fuzz-", suffix=".cap", dir=_tmpdir())
        os.close(fd)
        self.decoders = {n: make_decoder(n) for n in registry.names()}
        self.regs: dict[str, FieldRegistry] = {}
        for d in self.decoders.values():
            self.regs.update(registries(d))

    def run(self, content: bytes) -> int:
        with open(self.path, "wb") as f:
            f.write(content)
        report = SourceReport()
        frames = FrameDecoder()
        out: list[Message | Anomaly] = []
        table = FlowTable(self.decoders, {n: (PORTS[n],) for n in self.decoders}, out.append,
                          FlowConfig(max_flows=64, max_stream_buffer=4096, max_ooo_segments=8))  # fmt: skip
        n = 0
        last: PacketRef = REF
        try:
            for rec in read_capture(self.path, report):
                assert 0 <= len(rec.data) <= MAX_RECORD
                n += 1
                last = rec
                seg = frames.decode(rec.ts, rec.linktype, rec.data)
                if seg is not None:
                    table.process(seg, rec)
        except CaptureError as e:
            assert str(e).startswith(self.path), str(e)
            return 0
        table.close_all(last)
        assert report.records == n, (report.records, n)
        assert table.stats.decoder_exceptions == 0, [a.reason for a in out if a.name == "sensor.decoder_exception"]
        assert len(table.table) <= 2 * 2 * 64 + 2
        assert len(frames.frags.pending) <= frames.frags.max_datagrams
        check_output({**self.regs, "sensor": _SENSOR}, [m for m in out if m.protocol != "sensor"])
        return n

    def cleanup(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


_SENSOR = FieldRegistry("sensor", [], {"sensor.decoder_exception": ""})


def _tmpdir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def gzip_input(data: bytes) -> bytes:
    """Map a fuzz input to a gzip file: byte 0 picks raw gzip bytes (header/deflate/trailer mutations), a whole
    compressed capture, or a compressed capture cut short at a fuzzer-chosen offset."""
    if not data:
        return b""
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        return b"\x1f\x8b" + body
    packed = gzip.compress(body, compresslevel=1, mtime=0)
    if mode == 1:
        return packed
    cut = int.from_bytes(body[:2], "big") % (len(packed) + 1) if len(body) >= 2 else len(packed) // 2
    return packed[:cut]


def atheris_main(test_one_input: Callable[[bytes], None]) -> None:
    import sys

    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
