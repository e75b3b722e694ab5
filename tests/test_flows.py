"""Flow table and TCP reassembly: crafted Modbus conversations checked against the construction and tshark."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.packet import Packet

from sensor.flows import FlowConfig, FlowTable
from sensor.frames import Segment
from sensor.messages import Anomaly, Message, PacketRef
from sensor.messages.modbus import REGISTRY
from sensor.protocols.modbus import ModbusDecoder
from tests.craft import (
    ACK,
    FIN,
    PSH,
    SYN,
    T0,
    Conv,
    eth,
    mbap,
    read_holding,
    read_holding_resp,
    tshark_rows,
    write_pcap,
)
from tests.replay_helpers import Collector, replay

OOO = ["tcp.reassemble_out_of_order:TRUE"]
Row = tuple[int, int, int]


def _write(tmp_path: Path, name: str, pkts: list[Packet], step_ns: int = 1_000_000) -> Path:
    return write_pcap(tmp_path / f"{name}.pcap", 1, [(T0 + i * step_ns, eth(p)) for i, p in enumerate(pkts)])


def _run(path: Path) -> tuple[Collector, dict]:
    col, stats, report, _ = replay([path])
    assert report.problems == []
    assert stats["tcp"]["decoder_exceptions"] == 0
    for a in col.anomalies:
        assert a.name in REGISTRY.anomalies, a.name
    return col, stats


def _ours(col: Collector) -> list[Row]:
    return [(m.packet.frame, m.fields["transaction_id"], m.fields["function_code"]) for m in col.messages]


def _theirs(path: Path, options: list[str] | None = None) -> list[Row]:
    out: list[Row] = []
    for n, tids, fcs in tshark_rows(path, ["frame.number", "mbtcp.trans_id", "modbus.func_code"], "mbtcp", options):
        for t, f in zip(tids.split(","), fcs.split(","), strict=True):
            out.append((int(n), int(t), int(f)))
    return out


def _wmr(tid: int, addr: int, values: list[int]) -> bytes:
    """FC 16 Write Multiple Registers request (spec 6.12)."""
    return mbap(tid, 1, struct.pack(f">BHHB{len(values)}H", 16, addr, len(values), 2 * len(values), *values))


def _wmr_resp(tid: int, addr: int, qty: int) -> bytes:
    return mbap(tid, 1, struct.pack(">BHH", 16, addr, qty))


@pytest.mark.parametrize("cuts", [(9, 20), (5, 14)], ids=["after_header", "inside_header"])
def test_one_adu_over_three_segments(tmp_path: Path, cuts: tuple[int, int]) -> None:
    c = Conv()
    adu = _wmr(1, 100, list(range(10)))
    parts = [adu[: cuts[0]], adu[cuts[0] : cuts[1]], adu[cuts[1] :]]
    pkts = [*c.handshake(), *(c.pkt(True, p) for p in parts), c.pkt(False, _wmr_resp(1, 100, 10)), *c.close()]
    path = _write(tmp_path, "split3", pkts)
    col, _ = _run(path)
    assert _ours(col) == [(6, 1, 16), (7, 1, 16)]
    if cuts[0] >= 8:  # tshark's Modbus/TCP heuristic needs 8 bytes in the first segment before it reassembles
        assert _theirs(path) == _ours(col)
    assert col.messages[0].fields["values"] == list(range(10))
    assert col.anomalies == []


def test_several_adus_in_one_segment(tmp_path: Path) -> None:
    c = Conv()
    reqs = b"".join(read_holding(t, t * 10, 1) for t in (1, 2, 3))
    resps = b"".join(read_holding_resp(t, [t]) for t in (1, 2, 3))
    path = _write(tmp_path, "multi", [*c.handshake(), c.pkt(True, reqs), c.pkt(False, resps), *c.close()])
    col, _ = _run(path)
    assert _ours(col) == _theirs(path) == [(4, 1, 3), (4, 2, 3), (4, 3, 3), (5, 1, 3), (5, 2, 3), (5, 3, 3)]
    assert [m.fields.get("matched") for m in col.messages[3:]] == [True] * 3
    assert [m.fields["values"] for m in col.messages[3:]] == [[1], [2], [3]]


def test_out_of_order_segments(tmp_path: Path) -> None:
    c = Conv()
    a1, a2 = read_holding(1, 0, 1), read_holding(2, 1, 1)
    s0 = c.nxt[0] + 1  # after the SYN
    hs = c.handshake()
    # second ADU (and the tail of the first) arrives before the head of the first
    stream = a1 + a2
    late = c.pkt(True, stream[:8], seq=s0)
    early = c.pkt(True, stream[8:], seq=s0 + 8)
    c.nxt[0] = s0 + len(stream)
    pkts = [*hs, early, late, c.pkt(False, read_holding_resp(1, [5]) + read_holding_resp(2, [6])), *c.close()]
    path = _write(tmp_path, "ooo", pkts)
    col, stats = _run(path)
    assert _ours(col) == _theirs(path, OOO) == [(5, 1, 3), (5, 2, 3), (6, 1, 3), (6, 2, 3)]
    assert stats["tcp"]["out_of_order"] == 1 and stats["tcp"]["gaps"] == 0


def test_exact_retransmission_not_decoded_twice(tmp_path: Path) -> None:
    c = Conv()
    hs = c.handshake()
    req = c.pkt(True, read_holding(7, 0, 2))
    again = req.copy()
    pkts = [*hs, req, again, c.pkt(False, read_holding_resp(7, [1, 2])), *c.close()]
    path = _write(tmp_path, "retrans", pkts)
    col, stats = _run(path)
    assert _ours(col) == _theirs(path) == [(4, 7, 3), (6, 7, 3)]
    assert stats["tcp"]["retransmissions"] == 1
    assert not [a for a in col.anomalies if a.name == "modbus.duplicate_transaction_id"]


def test_overlapping_retransmission_with_more_data(tmp_path: Path) -> None:
    c = Conv()
    hs = c.handshake()
    s0 = c.nxt[0]
    a1, a2 = read_holding(1, 0, 1), read_holding(2, 0, 1)
    first = c.pkt(True, a1[:9], seq=s0)  # a partial ADU ...
    bigger = c.pkt(True, a1 + a2, seq=s0)  # ... then resent from the same sequence number with more data
    c.nxt[0] = s0 + len(a1 + a2)
    pkts = [*hs, first, bigger, c.pkt(False, read_holding_resp(1, [1]) + read_holding_resp(2, [2])), *c.close()]
    path = _write(tmp_path, "overlap", pkts)
    col, stats = _run(path)
    assert _ours(col) == [(5, 1, 3), (5, 2, 3), (6, 1, 3), (6, 2, 3)]
    # tshark 4.0 marks the longer copy a retransmission and leaves its new bytes undissected; it agrees on the
    # responses, which pair with requests it never showed.
    assert _theirs(path) == _ours(col)[2:]
    assert stats["tcp"]["overlaps"] == 1
    assert col.anomalies == []


def test_gap_acked_by_peer_resynchronises(tmp_path: Path) -> None:
    """Request 2 is lost by the capture (never retransmitted; the server answers it, acknowledging its bytes).
    Request 4's first five bytes are lost too. The decoder resynchronises and requests 3 and 5 still decode."""
    c = Conv()
    hs = c.handshake()
    r = {t: read_holding(t, t, 1) for t in range(1, 6)}
    p_r1 = c.pkt(True, r[1])
    c.pkt(True, r[2])  # lost: advances the client's sequence number, never written
    p_resp1 = c.pkt(False, read_holding_resp(1, [1]))
    p_resp2 = c.pkt(False, read_holding_resp(2, [2]))
    p_r3 = c.pkt(True, r[3])
    p_resp3 = c.pkt(False, read_holding_resp(3, [3]))
    c.pkt(True, r[4][:5])  # lost head of request 4
    p_r4_tail = c.pkt(True, r[4][5:])
    p_resp4 = c.pkt(False, read_holding_resp(4, [4]))
    p_r5 = c.pkt(True, r[5])
    p_resp5 = c.pkt(False, read_holding_resp(5, [5]))
    pkts = [*hs, p_r1, p_resp1, p_resp2, p_r3, p_resp3, p_r4_tail, p_resp4, p_r5, p_resp5, *c.close()]
    path = _write(tmp_path, "gap", pkts)
    col, stats = _run(path)
    ours = [(m.fields["transaction_id"], m.from_client) for m in col.messages]
    # construction: every captured whole ADU decodes, in the order the endpoints sent them
    assert ours == [(1, True), (1, False), (2, False), (3, True), (3, False), (4, False), (5, True), (5, False)]
    # tshark dissects the same ADUs (it does not hold segments after a gap)
    assert [t for _, t, _ in _theirs(path)] == [t for t, _ in ours]
    assert stats["tcp"]["gaps"] == 2 and stats["tcp"]["gap_bytes"] == len(r[2]) + 5
    matched = {m.fields["transaction_id"]: m.fields.get("matched") for m in col.messages if not m.from_client}
    assert matched == {1: True, 2: False, 3: True, 4: False, 5: True}
    names = sorted(a.name for a in col.anomalies)
    assert "modbus.unmatched_response" in names and names.count("modbus.unmatched_response") == 2


def test_midstream_pickup(tmp_path: Path) -> None:
    c = Conv()
    c.handshake()  # happened before the capture started
    pkts = [c.pkt(False, read_holding_resp(9, [1])), c.pkt(True, read_holding(10, 4, 1)),
            c.pkt(False, read_holding_resp(10, [2]))]  # fmt: skip
    path = _write(tmp_path, "midstream", pkts)
    col, stats = _run(path)
    assert _ours(col) == _theirs(path) == [(1, 9, 3), (2, 10, 3), (3, 10, 3)]
    assert stats["tcp"]["midstream"] == 1
    assert all(m.flow.midstream for m in col.messages)
    assert (col.messages[0].flow.client_port, col.messages[0].flow.server_port) == (40000, 502)
    assert col.anomalies == []  # an unmatched response is expected when the start was not seen


def test_port_reuse_after_fin_makes_a_new_flow(tmp_path: Path) -> None:
    pkts: list[Packet] = []
    for isn, tid in ((1000, 1), (900_000, 2)):
        c = Conv(cisn=isn, sisn=isn * 3)
        pkts += [*c.handshake(), c.pkt(True, read_holding(tid, 0, 1)), c.pkt(False, read_holding_resp(tid, [tid])), *c.close()]
    path = _write(tmp_path, "reuse", pkts)
    col, stats = _run(path)
    assert _ours(col) == _theirs(path)
    streams = {r[0] for r in tshark_rows(path, ["tcp.stream"], "mbtcp")}
    assert len({m.flow.flow_id for m in col.messages}) == len(streams) == 2
    assert stats["flows"] == 2
    assert [m.fields.get("matched") for m in col.messages if not m.from_client] == [True, True]


def test_server_syn_from_502_keeps_ephemeral_side_as_client(tmp_path: Path) -> None:
    """The 502 side opens the TCP connection; the ephemeral side still asks the questions (flows.py)."""
    c = Conv()
    pkts = [c.pkt(False, flags=SYN), c.pkt(True, flags=SYN | ACK), c.pkt(False, flags=ACK),
            c.pkt(True, read_holding(3, 0, 1)), c.pkt(False, read_holding_resp(3, [9]))]  # fmt: skip
    path = _write(tmp_path, "server_syn", pkts)
    col, _ = _run(path)
    assert _ours(col) == _theirs(path)
    req, resp = col.messages
    assert (req.flow.client_ip, req.flow.client_port, req.flow.server_port) == ("10.0.0.1", 40000, 502)
    assert req.fields["is_request"] and not resp.fields["is_request"] and resp.fields["matched"]
    assert not req.flow.midstream
    # tshark calls the packet to port 502 the query
    qr = tshark_rows(path, ["frame.number", "tcp.dstport"], "mbtcp")
    assert [int(p) == 502 for _, p in qr] == [m.from_client for m in col.messages]


# -- caps, driven with Segments directly ---------------------------------------------------------------------------
def _table(cfg: FlowConfig) -> tuple[FlowTable, list[Message | Anomaly]]:
    out: list[Message | Anomaly] = []
    return FlowTable({"modbus": ModbusDecoder()}, {"modbus": (502,)}, out.append, cfg), out


def _ip(n: int) -> bytes:
    return bytes((10, (n >> 16) & 255, (n >> 8) & 255, n & 255))


REF = PacketRef("test", 1, 0)
SERVER = b"\x0a\xff\x00\x01"


def test_syn_flood_table_never_exceeds_cap() -> None:
    ft, _ = _table(FlowConfig(max_flows=100))
    n = 5000
    for i in range(n):
        ft.process(Segment(T0 + i * 1000, _ip(i), SERVER, 1024 + i % 60000, 502, 6, SYN, i, 0, b""), REF)
        assert len(ft.table) <= 2 * 100
    live = len({id(f) for f, _ in ft.table.values()})
    assert ft.stats.flows == n
    assert ft.stats.evicted_cap == n - live > 0


def test_land_packets_bounded_by_cap() -> None:
    """src == dst and sport == dport: one table key per flow; the flows must still be found and evicted."""
    ft, _ = _table(FlowConfig(max_flows=50))
    for i in range(1000):
        a = _ip(i)
        ft.process(Segment(T0 + i, a, a, 7, 7, 17, 0, 0, 0, b"x"), REF)
        assert len(ft.table) <= 2 * 50
    assert ft.stats.evicted_cap > 0
    ft.close_all(REF)
    assert ft.table == {}


def test_stream_buffer_cap_is_honoured() -> None:
    cap = 1000
    ft, _ = _table(FlowConfig(max_stream_buffer=cap, max_ooo_segments=1000))
    c, s = _ip(1), SERVER
    ft.process(Segment(T0, c, s, 40000, 502, 6, SYN, 0, 0, b""), REF)
    seq = 1 + 100  # the first 100 bytes are never seen: everything after is held
    sizes = [10, 900, 10, 700, 10, 1200, 50, 400]
    for i, size in enumerate(sizes):
        ft.process(Segment(T0 + i + 1, c, s, 40000, 502, 6, ACK | PSH, seq, 1, b"\0" * size), REF)
        seq += size + 3  # and a 3-byte hole after each
        for f, fwd in ft.table.values():
            if fwd:
                assert all(st.ooo_bytes <= cap for st in f.streams)
                assert all(st.ooo_bytes == sum(map(len, st.ooo.values())) for st in f.streams)
    assert ft.stats.buffer_cap_hits >= 1 and ft.stats.gaps >= 1


def test_idle_timeout_by_capture_time() -> None:
    ft, _ = _table(FlowConfig(idle_timeout_s=10.0))
    s = SERVER
    ft.process(Segment(T0, _ip(1), s, 40001, 502, 6, SYN, 0, 0, b""), REF)
    ft.process(Segment(T0 + 5 * 10**9, _ip(2), s, 40002, 502, 6, SYN, 0, 0, b""), REF)
    ft.process(Segment(T0 + 12 * 10**9, _ip(3), s, 40003, 502, 6, SYN, 0, 0, b""), REF)
    clients = sorted(f.info.client_ip for f, fwd in ft.table.values() if fwd)
    assert clients == ["10.0.0.2", "10.0.0.3"]
    assert ft.stats.evicted_idle == 1 and ft.stats.evicted_cap == 0


def test_flow_left_undecided_after_partial_probe() -> None:
    """A 4-byte client start on an unknown port (probe needs more) then a server banner that no decoder takes."""
    ft, out = _table(FlowConfig())
    a, b = _ip(1), _ip(2)
    ft.process(Segment(T0, a, b, 40000, 6000, 6, ACK | PSH, 100, 1, b"\x00\x01\x00\x00"), REF)
    ft.process(Segment(T0 + 1, b, a, 6000, 40000, 6, ACK | PSH, 1, 104, b"HTTP/1.1 200 OK\r\n"), REF)
    ft.process(Segment(T0 + 2, a, b, 40000, 6000, 6, ACK | PSH | FIN, 104, 18, read_holding(1, 0, 1)), REF)
    ft.close_all(REF)
    assert ft.stats.decoder_exceptions == 0 and out == []


def test_modbus_on_unexpected_port_found_by_content(tmp_path: Path) -> None:
    c = Conv(sport=5020)
    pkts = [*c.handshake(), c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [1])), *c.close()]
    path = _write(tmp_path, "p5020", pkts)
    col, stats = _run(path)
    theirs = _theirs(path, ["mbtcp.tcp.port:5020"])
    assert _ours(col) == theirs == [(4, 1, 3), (5, 1, 3)]
    assert stats["flows_by_protocol"] == {"modbus": 1}


def test_fin_then_data_is_not_a_new_flow(tmp_path: Path) -> None:
    c = Conv()
    pkts = [*c.handshake(), c.pkt(True, read_holding(1, 0, 1)), c.pkt(False, read_holding_resp(1, [1])),
            c.pkt(True, flags=FIN | ACK), c.pkt(False, read_holding_resp(1, [1]), flags=ACK | PSH | FIN)]  # fmt: skip
    path = _write(tmp_path, "finresp", pkts)
    col, stats = _run(path)
    assert stats["flows"] == 1
    assert _ours(col) == _theirs(path)
