"""Robustness of the capture reader, flow table and Modbus decoder against damaged and hostile input.

Invariants, whatever the input: nothing raises out of the pipeline, no decoder exception is counted, and every
anomaly emitted by the Modbus decoder has a name from the closed set in sensor.messages.modbus.REGISTRY.
"""

from __future__ import annotations

import functools
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.flows import FlowConfig, FlowTable
from sensor.frames import Segment
from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.modbus import REGISTRY
from sensor.protocols.base import ProtocolMismatch
from sensor.protocols.modbus import ModbusDecoder
from tests.conftest import SHARED_PCAPS
from tests.craft import ACK, PSH, T0, Conv, eth, read_holding, read_holding_resp, tshark_rows, write_pcap
from tests.replay_helpers import replay

BIG = SHARED_PCAPS / "zeek" / "modbusBig.pcap"
NAMES = frozenset(REGISTRY.anomalies)
REF = PacketRef("fuzz", 1, 0)
FLOW = FlowInfo("10.0.0.1", 40000, "10.0.0.2", 502, "tcp", "1:x", 1)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _need_big() -> None:
    if not BIG.exists():
        pytest.skip(f"{BIG} is missing")


@functools.cache
def real_adus() -> tuple[bytes, ...]:
    """TCP payloads to or from port 502 in modbusBig.pcap, as tshark extracts them (not our reader)."""
    if not BIG.exists():
        return ()
    rows = tshark_rows(BIG, ["tcp.payload"], "tcp.port == 502 && tcp.len > 0 && frame.number <= 3000")
    return tuple(dict.fromkeys(bytes.fromhex(r[0]) for r in rows if r[0]))


def _check(out: list[Message | Anomaly]) -> None:
    for m in out:
        if isinstance(m, Anomaly):
            assert m.name in NAMES, m.name
        else:
            assert 0 <= m.fields["function_code"] < 0x80
            assert m.fields["transaction_id"] < 1 << 16


def _feed_direct(chunks: list[tuple[bool, bool, bytes]]) -> list[Message | Anomaly]:
    """Feed the decoder directly; ProtocolMismatch is its sanctioned "not my protocol" signal (the flow table
    turns it into an anomaly and detaches), anything else escaping is a bug."""
    dec = ModbusDecoder(max_values=16, max_outstanding=8)
    state = dec.new_state(FLOW)
    out: list[Message | Anomaly] = []
    try:
        for i, (from_client, gap, data) in enumerate(chunks):
            out += dec.feed(state, from_client, data, T0 + i, REF, gap)
    except ProtocolMismatch as e:
        assert e.reason
    out += dec.close(state, T0 + len(chunks), REF)
    stats = dec.stats(state)
    assert all(v >= 0 for v in stats.values())
    _check(out)
    return out


def _feed_table(chunks: list[tuple[bool, bytes]]) -> tuple[FlowTable, list[Message | Anomaly]]:
    out: list[Message | Anomaly] = []
    ft = FlowTable({"modbus": ModbusDecoder(max_values=16, max_outstanding=8)}, {"modbus": (502,)}, out.append,
                   FlowConfig(max_stream_buffer=4096))  # fmt: skip
    c, s = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    seq = [1000, 5000]
    for i, (from_client, data) in enumerate(chunks):
        k = 0 if from_client else 1
        src, dst, sp, dp = (c, s, 40000, 502) if from_client else (s, c, 502, 40000)
        ft.process(Segment(T0 + i * 1000, src, dst, sp, dp, 6, ACK | PSH, seq[k], seq[1 - k], data), REF)
        seq[k] += len(data)
    ft.close_all(REF)
    assert ft.stats.decoder_exceptions == 0
    for m in out:
        if isinstance(m, Anomaly):
            assert m.name in NAMES, m.name
    return ft, out


# -- hypothesis: random bytes, bit flips of real ADUs, fuzzed length fields ----------------------------------------
chunk = st.tuples(st.booleans(), st.booleans(), st.binary(min_size=0, max_size=300))


@FUZZ
@given(st.lists(chunk, max_size=12))
def test_random_bytes_direct(chunks: list[tuple[bool, bool, bytes]]) -> None:
    _feed_direct(chunks)


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_random_bytes_through_flow_table(chunks: list[tuple[bool, bytes]]) -> None:
    _feed_table(chunks)


@st.composite
def flipped_adus(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    adus = real_adus()
    if not adus:
        pytest.skip("modbusBig.pcap missing")
    picks = draw(st.lists(st.sampled_from(adus), min_size=1, max_size=8))
    out = []
    for adu in picks:
        b = bytearray(adu)
        for _ in range(draw(st.integers(0, 4))):
            bit = draw(st.integers(0, len(b) * 8 - 1))
            b[bit >> 3] ^= 1 << (bit & 7)
        out.append((draw(st.booleans()), bytes(b)))
    return out


@FUZZ
@given(flipped_adus())
def test_bit_flips_of_real_adus(chunks: list[tuple[bool, bytes]]) -> None:
    _feed_direct([(fc, False, d) for fc, d in chunks])
    _feed_table(chunks)


@st.composite
def fuzzed_lengths(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    adus = [a for a in real_adus() if len(a) >= 8 and a[2:4] == b"\0\0"]
    if not adus:
        pytest.skip("modbusBig.pcap missing")
    out = []
    for adu in draw(st.lists(st.sampled_from(adus), min_size=1, max_size=8)):
        b = bytearray(adu)
        struct.pack_into(">H", b, 4, draw(st.one_of(st.integers(0, 12), st.integers(250, 260), st.integers(0, 0xFFFF))))
        if len(b) > 9 and draw(st.booleans()):  # a PDU byte count too
            b[8 if b[7] in (1, 2, 3, 4, 23) else min(len(b) - 1, 12)] = draw(st.integers(0, 255))
        out.append((draw(st.booleans()), bytes(b)))
    return out


@FUZZ
@given(fuzzed_lengths())
def test_fuzzed_length_fields(chunks: list[tuple[bool, bytes]]) -> None:
    _feed_direct([(fc, False, d) for fc, d in chunks])
    _feed_table(chunks)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=200)), min_size=1, max_size=6))
def test_crafted_capture_full_replay(tmp_path: Path, chunks: list[tuple[bool, bytes]]) -> None:
    """The same kind of input as a capture file through source, frames, flows and decoder."""
    c = Conv()
    adus = real_adus()
    pkts = [*c.handshake(), c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [1]))]
    for i, (from_client, data) in enumerate(chunks):
        if adus and i % 2:
            data = adus[len(data) % len(adus)] + data  # real ADUs mixed with noise
        pkts.append(c.pkt(from_client, data))
    path = write_pcap(tmp_path / "fuzz.pcap", 1, [(T0 + i * 1000, eth(p)) for i, p in enumerate(pkts)])
    col, stats, report, _ = replay([path])
    assert report.problems == [] and stats["packets"] == len(pkts)
    assert stats["tcp"]["decoder_exceptions"] == 0
    assert {a.name for a in col.anomalies} <= NAMES
    assert col.messages[:2] and col.messages[0].fields["transaction_id"] == 1


# -- non-Modbus on 502 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "junk",
    [b"GET / HTTP/1.1\r\nHost: plc\r\nUser-Agent: curl/8\r\n\r\n", bytes(range(256)) * 2, b"\x16\x03\x01\x02\x00" + b"\x01" * 60],
    ids=["http", "bytes", "tls"],
)
def test_non_modbus_on_502_mismatch_and_detach(tmp_path: Path, junk: bytes) -> None:
    c = Conv()
    pkts = [*c.handshake(), c.pkt(True, junk), c.pkt(False, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [1]))]  # fmt: skip
    path = write_pcap(tmp_path / "junk502.pcap", 1, [(T0 + i * 1000, eth(p)) for i, p in enumerate(pkts)])
    col, stats, _, _ = replay([path])
    assert [a.name for a in col.anomalies] == ["modbus.protocol_mismatch"]
    assert col.messages == []  # detached: later valid-looking ADUs on the same flow are not decoded
    assert stats["tcp"]["protocol_mismatches"] == 1 and stats["tcp"]["decoder_exceptions"] == 0


def test_garbage_after_good_modbus_counted_not_detached(tmp_path: Path) -> None:
    c = Conv()
    pkts = [*c.handshake(), c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [1])),
            c.pkt(True, b"\x00\x02\x00\x07\x00\x06\x01\x03\x00\x00\x00\x01"),  # protocol id 7
            c.pkt(True, b"\x00\x03\x00\x00\x01\x00\x01\x03\x00\x00\x00\x01"),  # length 256
            c.pkt(True, read_holding(4, 0, 1)), c.pkt(False, read_holding_resp(4, [4]))]  # fmt: skip
    path = write_pcap(tmp_path / "bad_after_good.pcap", 1, [(T0 + i * 1000, eth(p)) for i, p in enumerate(pkts)])
    col, stats, _, _ = replay([path])
    assert [a.name for a in col.anomalies] == ["modbus.invalid_protocol_id", "modbus.invalid_length"]
    assert [m.fields["transaction_id"] for m in col.messages] == [1, 1, 4, 4]
    assert col.messages[-1].fields["matched"] is True
    assert stats["tcp"]["protocol_mismatches"] == 0


# -- truncated real capture --------------------------------------------------------------------------------------
def _record_ends(data: bytes) -> list[int]:
    """End offset of every record of a little-endian microsecond pcap, walked with struct (not our reader)."""
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    ends, pos = [], 24
    while pos + 16 <= len(data):
        (caplen,) = struct.unpack_from("<I", data, pos + 8)
        pos += 16 + caplen
        if pos > len(data):
            break
        ends.append(pos)
    return ends


def test_truncated_modbus_big_at_many_offsets(tmp_path: Path) -> None:
    _need_big()
    data = BIG.read_bytes()
    ends = _record_ends(data)
    assert len(ends) == 13622
    full, _, _, _ = replay([BIG])
    full_msgs = {(m.packet.frame, m.fields["transaction_id"], m.fields["function_code"], m.from_client) for m in full.messages if m.protocol == "modbus"}
    rng = random.Random(502)
    cuts = sorted({10, 24, 24 + 7, ends[0] + 3, ends[100] + 16 + 2, *(rng.randrange(24, len(data)) for _ in range(14))})
    for i, cut in enumerate(cuts):
        path = tmp_path / f"cut{i}.pcap"
        path.write_bytes(data[:cut])
        col, stats, report, _ = replay([path])
        whole = sum(1 for e in ends if e <= cut)
        assert stats["packets"] == whole
        assert stats["tcp"]["decoder_exceptions"] == 0
        assert {a.name for a in col.anomalies if a.protocol == "modbus"} <= NAMES
        clean_end = ends[whole - 1] if whole else 24
        if cut != clean_end:
            assert len(report.problems) == 1 and str(path) in report.problems[0] and "offset" in report.problems[0]
        # every message decoded from the damaged file was decoded, identically, from the whole file
        got = {(m.packet.frame, m.fields["transaction_id"], m.fields["function_code"], m.from_client) for m in col.messages if m.protocol == "modbus"}
        assert got <= full_msgs
        if i % 5 == 0 and whole:
            assert len(tshark_rows(path, ["frame.number"], check=False)) == whole


def test_garbage_bytes_on_502_in_real_flow_positions() -> None:
    """Real ADUs with random garbage spliced in at random places, through the flow table."""
    adus = real_adus()
    if not adus:
        pytest.skip("modbusBig.pcap missing")
    rng = random.Random(7)
    for _ in range(200):
        chunks = []
        for _ in range(rng.randrange(1, 10)):
            d = rng.choice(adus)
            if rng.random() < 0.3:
                at = rng.randrange(len(d) + 1)
                d = d[:at] + rng.randbytes(rng.randrange(1, 40)) + d[at:]
            chunks.append((rng.random() < 0.5, d))
        _feed_table(chunks)
