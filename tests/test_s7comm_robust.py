"""S7comm decoder robustness and framing.

Invariants, whatever the input: nothing but ProtocolMismatch (the sanctioned "not my protocol" signal) leaves the
decoder, the flow table counts no decoder exception, and every anomaly name is in the closed set of
sensor.messages.s7comm.REGISTRY. Real PDUs are the TCP payloads tshark extracts from the shared captures.
Framing: the same byte streams cut at every possible place, several TPKTs coalesced in one segment, and each S7
PDU re-segmented into COTP DT TPDUs decode to the same messages as the original stream.
"""

from __future__ import annotations

import functools
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.flows import FlowConfig, FlowTable
from sensor.frames import Segment
from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.s7comm import REGISTRY
from sensor.protocols.base import Probe, ProtocolMismatch
from sensor.protocols.s7comm import S7commDecoder
from tests.conftest import SHARED_PCAPS
from tests.craft import ACK, PSH, T0, tshark_rows
from tests.replay_helpers import replay

CAPTURES = [
    SHARED_PCAPS / "icsnpp-s7comm/snap7.pcap",
    SHARED_PCAPS / "icsnpp-s7comm/s7comm_plus.pcap",
    SHARED_PCAPS / "ics-pcap/s7-1200-hmi-timer-sync.pcapng",
]
NAMES = frozenset(REGISTRY.anomalies)
REF = PacketRef("fuzz", 1, 0)
FLOW = FlowInfo("10.0.0.1", 40000, "10.0.0.2", 102, "tcp", "1:x", 1)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
need_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark extracts the real PDUs")


@functools.cache
def streams(path: Path) -> tuple[tuple[bool, bytes], ...]:
    """(from_client, TCP payload) of every port-102 segment with data, in capture order, as tshark reads them."""
    if not path.exists() or shutil.which("tshark") is None:
        return ()
    rows = tshark_rows(path, ["tcp.dstport", "tcp.payload", "tcp.stream"],
                       "tcp.port == 102 && tcp.len > 1 && !tcp.analysis.retransmission")  # fmt: skip
    first = rows[0][2] if rows else None
    return tuple((r[0] == "102", bytes.fromhex(r[1])) for r in rows if r[1] and r[2] == first)


@functools.cache
def real_tpkts() -> tuple[bytes, ...]:
    out = []
    for p in CAPTURES:
        for _fc, seg in streams(p):
            pos = 0
            while pos + 4 <= len(seg) and seg[pos] == 3:
                ln = seg[pos + 2] << 8 | seg[pos + 3]
                out.append(seg[pos : pos + ln])
                pos += ln
    return tuple(dict.fromkeys(t for t in out if len(t) >= 7))


def _check(out: list[Message | Anomaly]) -> None:
    for m in out:
        if isinstance(m, Anomaly):
            assert m.name in NAMES, m.name
            assert m.protocol == "s7comm"
        else:
            assert m.protocol in ("s7comm", "s7comm_plus")


def feed(chunks: list[tuple[bool, bool, bytes]], dec: S7commDecoder | None = None) -> list[Message | Anomaly]:
    dec = dec or S7commDecoder(max_items=16, max_outstanding=8)
    state = dec.new_state(FLOW)
    out: list[Message | Anomaly] = []
    try:
        for i, (from_client, gap, data) in enumerate(chunks):
            out += dec.feed(state, from_client, data, T0 + i, REF, gap)
    except ProtocolMismatch as e:
        assert e.reason
    out += dec.close(state, T0 + len(chunks), REF)
    assert state.internal == 0
    assert all(v >= 0 for v in dec.stats(state).values())
    _check(out)
    return out


def feed_table(chunks: list[tuple[bool, bytes]]) -> list[Message | Anomaly]:
    out: list[Message | Anomaly] = []
    ft = FlowTable({"s7comm": S7commDecoder(max_items=16, max_outstanding=8)}, {"s7comm": (102,)}, out.append,
                   FlowConfig(max_stream_buffer=4096))  # fmt: skip
    c, s = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    seq = [1000, 5000]
    for i, (from_client, data) in enumerate(chunks):
        k = 0 if from_client else 1
        src, dst, sp, dp = (c, s, 40000, 102) if from_client else (s, c, 102, 40000)
        ft.process(Segment(T0 + i * 1000, src, dst, sp, dp, 6, ACK | PSH, seq[k], seq[1 - k], data), REF)
        seq[k] += len(data)
    ft.close_all(REF)
    assert ft.stats.decoder_exceptions == 0
    for m in out:
        if isinstance(m, Anomaly) and m.protocol == "s7comm":
            assert m.name in NAMES, m.name
    return out


def _key(m: Message | Anomaly) -> tuple:
    if isinstance(m, Anomaly):
        return ("anomaly", m.name, m.from_client)
    return (m.protocol, m.from_client, tuple(sorted((k, repr(v)) for k, v in m.fields.items())))


# -- replay of the real captures -------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["ics-pcap/s7-1200-hmi-timer-sync.pcapng", "icsnpp-s7comm/s7comm_plus.pcap"])
def test_s7comm_plus_captures_replay_clean(shared_pcaps: Path, rel: str) -> None:
    col, stats, *_ = replay([shared_pcaps / rel])
    assert stats["tcp"]["decoder_exceptions"] == 0
    assert stats["decode_errors"] == 0, stats["decode_errors_by_name"]
    plus = [m for m in col.messages if m.protocol == "s7comm_plus"]
    assert plus and all(m.fields["protocol_id"] == 0x72 for m in plus)
    assert {m.fields["opcode_name"] for m in plus} >= {"Request", "Response", "Notification"}
    assert not [m for m in col.messages if m.protocol == "s7comm" and "rosctr" in m.fields and "1200" in rel]
    # Requests paired with responses by sequence number (duration_ns comes from capture timestamps, no clock).
    assert any(m.duration_ns is not None for m in plus)


def test_s7_1200_sessions_and_tsaps(shared_pcaps: Path) -> None:
    col, *_ = replay([shared_pcaps / "ics-pcap/s7-1200-hmi-timer-sync.pcapng"])
    cr = [m for m in col.messages if m.fields.get("cotp_pdu_type") == 14]
    assert cr and all("dst_tsap" in m.fields for m in cr)
    reqs = [m for m in col.messages if m.protocol == "s7comm_plus" and m.fields.get("opcode") == 0x31]
    assert any("session_id" in m.fields for m in reqs)


def test_ecs_documents_name_both_protocols(shared_pcaps: Path) -> None:
    *_, docs = replay([shared_pcaps / "icsnpp-s7comm/s7comm_plus.pcap"], events=True)
    protos = {d["network"]["protocol"] for d in docs}
    assert protos == {"s7comm", "s7comm_plus"}
    for d in docs:
        p = d["network"]["protocol"]
        assert p in d["ics"]
        assert d["event"].get("action"), d  # action from each protocol's own registry


# -- framing: cut anywhere, coalesced, COTP-segmented ---------------------------------------------------------------
@need_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_any_segmentation_gives_the_same_messages(path: Path) -> None:
    segs = streams(path)
    if not segs:
        pytest.skip(f"{path} missing")
    ref = [_key(m) for m in feed([(fc, False, d) for fc, d in segs])]
    assert ref
    rng = random.Random(7)
    # Each direction's bytes cut at random places (1 byte .. 300 bytes), directions kept in request order.
    for _ in range(20):
        chunks = []
        for fc, d in segs:
            pos = 0
            while pos < len(d):
                step = rng.choice((1, 2, 3, 5, 7, 64, 300))
                chunks.append((fc, False, d[pos : pos + step]))
                pos += step
        assert [_key(m) for m in feed(chunks)] == ref
    # Consecutive segments of one direction coalesced: several TPKTs per segment.
    merged: list[tuple[bool, bool, bytes]] = []
    for fc, d in segs:
        if merged and merged[-1][0] == fc:
            merged[-1] = (fc, False, merged[-1][2] + d)
        else:
            merged.append((fc, False, d))
    got = [_key(m) for m in feed(merged)]
    assert sorted(got) == sorted(ref)  # same messages; order across directions may differ


def _cotp_segment(seg: bytes, size: int) -> bytes:
    """Re-frame every TPKT/COTP DT of a segment as several DT TPDUs of ``size`` data bytes, EOT on the last."""
    out, pos = [], 0
    while pos + 7 <= len(seg):
        ln = seg[pos + 2] << 8 | seg[pos + 3]
        tp = seg[pos : pos + ln]
        pos += ln
        if tp[5] != 0xF0:
            out.append(tp)
            continue
        data = tp[7:]
        parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for k, p in enumerate(parts):
            eot = 0x80 if k == len(parts) - 1 else 0
            out.append(bytes((3, 0, (7 + len(p)) >> 8, (7 + len(p)) & 0xFF, 2, 0xF0, eot)) + p)
    return b"".join(out)


@need_tshark
def test_cotp_segmented_pdus_are_reassembled() -> None:
    segs = streams(CAPTURES[0])
    if not segs:
        pytest.skip("snap7.pcap missing")
    ref = [m for m in feed([(fc, False, d) for fc, d in segs]) if isinstance(m, Message)]
    got = [m for m in feed([(fc, False, _cotp_segment(d, 16)) for fc, d in segs]) if isinstance(m, Message)]
    assert len(got) == len(ref) > 30
    for a, b in zip(ref, got, strict=True):
        seg = b.fields.pop("cotp_segments", 1)
        a.fields.pop("cotp_segments", None)
        assert a.fields == b.fields
        hlen = 12 if b.fields["rosctr"] in (2, 3) else 10
        size = hlen + b.fields["parameter_length"] + b.fields["data_length"]
        assert seg == -(-size // 16)  # one DT TPDU per 16 bytes of the S7 PDU


def test_cotp_reassembly_is_capped() -> None:
    dt = bytes((3, 0, 0x04, 0x07, 2, 0xF0, 0)) + b"\x32" * 1024  # 1031-byte TPKTs, never EOT
    out = feed([(True, False, b"\x03\x00\x00\x16\x11\xe0\x00\x00\x00\x01\x00\xc1\x02\x01\x00\xc2\x02\x01\x02\xc0\x01\x0a")]
               + [(True, False, dt)] * 200)  # fmt: skip
    assert [m.name for m in out if isinstance(m, Anomaly)] == ["s7comm.cotp_reassembly_overflow"]


def test_probe() -> None:
    dec = S7commDecoder()
    for seg in [s for p in CAPTURES for fc, s in streams(p) if fc][:20]:
        assert dec.probe(seg, True) is Probe.YES
    assert dec.probe(b"\x03", True) is Probe.NEED_MORE
    assert dec.probe(b"GET / HTTP/1.1\r\n", True) is Probe.NO
    assert dec.probe(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01", True) is Probe.NO  # Modbus/TCP


# -- hypothesis --------------------------------------------------------------------------------------------------
chunk = st.tuples(st.booleans(), st.booleans(), st.binary(min_size=0, max_size=300))


@FUZZ
@given(st.lists(chunk, max_size=12))
def test_random_bytes(chunks: list[tuple[bool, bool, bytes]]) -> None:
    feed(chunks)


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_random_bytes_through_flow_table(chunks: list[tuple[bool, bytes]]) -> None:
    feed_table(chunks)


@st.composite
def mutated(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    tpkts = real_tpkts()
    if not tpkts:
        pytest.skip("captures or tshark missing")
    out = []
    for t in draw(st.lists(st.sampled_from(tpkts), min_size=1, max_size=8)):
        b = bytearray(t)
        how = draw(st.sampled_from(("flip", "truncate", "length", "byte")))
        if how == "flip":
            for _ in range(draw(st.integers(1, 6))):
                bit = draw(st.integers(0, len(b) * 8 - 1))
                b[bit >> 3] ^= 1 << (bit & 7)
        elif how == "truncate":
            cut = draw(st.integers(7, len(b)))
            b = b[:cut]
            b[2:4] = len(b).to_bytes(2, "big")  # a consistent TPKT around a truncated S7 PDU
        elif how == "length":
            at = draw(st.sampled_from([2, 4, 13, 15, 17, 19, 20, 21, 23, 24]))  # TPKT, COTP, S7 length fields
            if at < len(b) - 1:
                b[at : at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        else:
            at = draw(st.integers(0, len(b) - 1))
            b[at] = draw(st.integers(0, 255))
        out.append((draw(st.booleans()), bytes(b)))
    return out


@FUZZ
@given(mutated())
def test_mutated_real_pdus(chunks: list[tuple[bool, bytes]]) -> None:
    feed([(fc, False, d) for fc, d in chunks])
    feed_table(chunks)


@FUZZ
@given(mutated(), st.integers(0, 2**32 - 1))
def test_mutated_pdus_cut_randomly(chunks: list[tuple[bool, bytes]], seed: int) -> None:
    rng = random.Random(seed)
    stream: list[tuple[bool, bool, bytes]] = []
    for fc, d in chunks:
        pos = 0
        while pos < len(d):
            n = rng.randint(1, 40)
            stream.append((fc, rng.random() < 0.05, d[pos : pos + n]))
            pos += n
    feed(stream)


def test_truncated_real_pdus_counted() -> None:
    """Every real S7 PDU truncated at every length: decoded or counted as an anomaly, never raised."""
    tpkts = [t for t in real_tpkts() if len(t) > 17 and t[7] == 0x32]
    if not tpkts:
        pytest.skip("captures or tshark missing")
    anomalies = 0
    for t in tpkts:
        for cut in range(8, len(t)):
            b = bytearray(t[:cut])
            b[2:4] = cut.to_bytes(2, "big")
            out = feed([(t[8] in (1, 7), False, bytes(b))])
            anomalies += sum(isinstance(m, Anomaly) for m in out)
    assert anomalies > len(tpkts)  # truncations are noticed, not silently accepted
