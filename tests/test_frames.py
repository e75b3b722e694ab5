"""One Modbus request/response pair carried over every supported link layer, IPv6 extension headers and IP
fragments; decoded fields checked against the construction and against tshark's dissection of the same file."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.packet import Packet

from sensor.frames import FragmentTable, FrameDecoder
from tests.craft import T0, Conv, read_holding, read_holding_resp, tshark_rows, write_pcap
from tests.replay_helpers import replay

MAC = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01"
ADDR8 = b"\x02\0\0\0\0\x01\0\0"
TID, REF, QTY, VALUES = 0x1F2E, 0x0010, 2, [0x1234, 0x5678]


def _etype(ip: bytes) -> int:
    return 0x86DD if ip[0] >> 4 == 6 else 0x0800


def _eth(ip: bytes) -> bytes:
    return MAC + struct.pack(">H", _etype(ip)) + ip


def _vlan(ip: bytes) -> bytes:
    return MAC + struct.pack(">HHH", 0x8100, 10, _etype(ip)) + ip


def _qinq(ip: bytes) -> bytes:
    return MAC + struct.pack(">HHHHH", 0x88A8, 100, 0x8100, 10, _etype(ip)) + ip


def _sll(ip: bytes) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, ADDR8, _etype(ip)) + ip


def _sll2(ip: bytes) -> bytes:
    return struct.pack(">HHIHBB8s", _etype(ip), 0, 2, 1, 0, 6, ADDR8) + ip


def _null(ip: bytes) -> bytes:  # host byte order (little-endian writer); AF_INET6 as on macOS (30)
    return struct.pack("<I", 30 if ip[0] >> 4 == 6 else 2) + ip


def _loop(ip: bytes) -> bytes:  # network byte order; AF_INET6 as on OpenBSD (24)
    return struct.pack(">I", 24 if ip[0] >> 4 == 6 else 2) + ip


def _raw(ip: bytes) -> bytes:
    return ip


def _frag4(p: Packet, reverse: bool) -> list[bytes]:
    frs = [bytes(f) for f in fragment(p, fragsize=8)]
    assert len(frs) >= 4
    if reverse:  # out of order, and the middle fragment duplicated
        frs = [*frs[::-1], frs[len(frs) // 2]]
    return frs


def _frag6(p: Packet, reverse: bool) -> list[bytes]:
    whole = IPv6(src=p[IPv6].src, dst=p[IPv6].dst) / IPv6ExtHdrFragment(id=0x1234) / p[TCP]
    frs = [bytes(f) for f in fragment6(whole, 56)]
    assert len(frs) >= 4
    return frs[::-1] if reverse else frs


# id -> (linktype, IPv6?, link wrapper, extra: "hbh" | "frag" | "frag_ooo" | "")
VARIANTS: dict[str, tuple[int, bool, Callable[[bytes], bytes], str]] = {
    "ethernet": (1, False, _eth, ""),
    "dot1q": (1, False, _vlan, ""),
    "qinq": (1, False, _qinq, ""),
    "sll": (113, False, _sll, ""),
    "sll2": (276, False, _sll2, ""),
    "raw101": (101, False, _raw, ""),
    "raw12": (12, False, _raw, ""),
    "raw14": (14, False, _raw, ""),
    "ipv4_228": (228, False, _raw, ""),
    "ipv6_229": (229, True, _raw, ""),
    "raw101_v6": (101, True, _raw, ""),
    "null": (0, False, _null, ""),
    "null_v6": (0, True, _null, ""),
    "loop": (108, False, _loop, ""),
    "loop_v6": (108, True, _loop, ""),
    "ethernet_v6": (1, True, _eth, ""),
    "ipv6_hop_by_hop": (1, True, _eth, "hbh"),
    "ipv4_fragments": (1, False, _eth, "frag"),
    "ipv4_fragments_out_of_order": (1, False, _eth, "frag_ooo"),
    "ipv6_fragments": (1, True, _eth, "frag"),
    "ipv6_fragments_out_of_order": (229, True, _raw, "frag_ooo"),
}


def _build(tmp_path: Path, name: str) -> tuple[Path, Conv]:
    linktype, v6, wrap, extra = VARIANTS[name]
    conv = Conv(cip="2001:db8::a", sip="2001:db8::b", v6=True) if v6 else Conv(cip="192.0.2.10", sip="192.0.2.20")
    pkts = [*conv.handshake(), conv.pkt(True, read_holding(TID, REF, QTY)), conv.pkt(False, read_holding_resp(TID, VALUES))]
    ips: list[bytes] = []
    for i, p in enumerate(pkts):
        if extra == "hbh":
            p = IPv6(src=p[IPv6].src, dst=p[IPv6].dst) / IPv6ExtHdrHopByHop() / p[TCP]
        if extra.startswith("frag") and i >= 3:
            ips += _frag6(p, extra == "frag_ooo") if v6 else _frag4(p, extra == "frag_ooo")
        else:
            ips.append(bytes(p))
    path = write_pcap(tmp_path / f"{name}.pcap", linktype, [(T0 + i * 1_000_000, wrap(ip)) for i, ip in enumerate(ips)])
    return path, conv


@pytest.mark.parametrize("name", list(VARIANTS))
def test_modbus_pair_over_every_encapsulation(tmp_path: Path, name: str) -> None:
    path, conv = _build(tmp_path, name)
    col, stats, report, _ = replay([path])
    assert report.problems == []
    assert stats["frames"]["malformed"] == 0 and stats["tcp"]["decoder_exceptions"] == 0
    msgs = [m for m in col.messages if m.protocol == "modbus"]
    assert len(msgs) == 2, (stats, col.anomalies)
    req, resp = msgs
    # construction as oracle
    assert (req.from_client, resp.from_client) == (True, False)
    assert req.flow.client_ip == conv.ip[0] and req.flow.server_ip == conv.ip[1]
    assert (req.flow.client_port, req.flow.server_port) == conv.port
    assert req.fields["transaction_id"] == resp.fields["transaction_id"] == TID
    assert req.fields["function_code"] == resp.fields["function_code"] == 3
    assert (req.fields["reference_number"], req.fields["quantity"]) == (REF, QTY)
    assert resp.fields["values"] == VALUES and resp.fields["matched"] is True
    assert col.anomalies == []
    if VARIANTS[name][3].startswith("frag"):
        assert stats["frames"]["reassembled"] == 2
    # tshark as oracle: same frames, transaction ids, function codes, addresses, ports and VLAN ids
    ipf = "ipv6.src" if VARIANTS[name][1] else "ip.src"
    rows = tshark_rows(path, ["frame.number", "mbtcp.trans_id", "modbus.func_code", ipf, "tcp.srcport", "ieee8021ad.id",
                              "vlan.id", "modbus.reference_num", "modbus.word_cnt", "modbus.regval_uint16"], "mbtcp")  # fmt: skip
    theirs = [(int(n), int(t), int(fc), ip, int(sp), ",".join(x for x in (ad, v) if x), ref, cnt, vals)
              for n, t, fc, ip, sp, ad, v, ref, cnt, vals in rows]  # fmt: skip
    ours = []
    for m in msgs:
        f = m.fields
        src = (m.flow.client_ip, m.flow.client_port) if m.from_client else (m.flow.server_ip, m.flow.server_port)
        ours.append((m.packet.frame, f["transaction_id"], f["function_code"], src[0], src[1],
                     ",".join(map(str, m.flow.vlan)), str(f["reference_number"]) if m.from_client else "",
                     str(f["quantity"]) if m.from_client else "",
                     ",".join(map(str, f["values"])) if not m.from_client else ""))  # fmt: skip
    assert ours == theirs


def test_vlan_ids_outer_first() -> None:
    """QinQ: the outer (service) tag comes first, like tshark's vlan.id occurrence order."""
    ip = bytes(Conv().pkt(True, read_holding(1, 0, 1)))
    seg = FrameDecoder().decode(T0, 1, _qinq(ip))
    assert seg is not None and seg.vlan == (100, 10)


def test_fragment_table_bounded_and_expires() -> None:
    """Overlapping fragments at many distinct offsets cannot pile up beyond the per-datagram byte cap, and an
    incomplete datagram is dropped once the timeout (capture time) has passed."""
    ft = FragmentTable(max_datagrams=4, max_bytes=4096, timeout_ns=1_000_000_000)
    key = (b"a", b"b", 6, 1)
    chunk = b"x" * 1400
    for off in range(0, 4096 - 1400, 8):
        assert ft.add(key, T0, off, True, chunk) is None
        held = sum(len(v) for e in ft.pending.values() for v in e[1].values())
        assert held <= 4096 + 1400
    assert ft.evicted >= 1
    ft.add((b"a", b"b", 6, 2), T0, 0, True, b"y" * 8)
    assert ft.add((b"a", b"b", 6, 3), T0 + 2_000_000_000, 0, True, b"z" * 8) is None
    assert (b"a", b"b", 6, 2) not in ft.pending
    # a complete datagram after that still reassembles
    ft.add((b"c", b"d", 6, 9), T0 + 3_000_000_000, 8, False, b"B" * 8)
    assert ft.add((b"c", b"d", 6, 9), T0 + 3_000_000_001, 0, True, b"A" * 8) == b"A" * 8 + b"B" * 8


@pytest.mark.parametrize(
    "linktype,data",
    [(1, b"\0" * 13), (1, MAC + b"\x81\x00\x00"), (113, b"\0" * 15), (276, b"\0" * 19), (0, b"\2\0"), (101, b""),
     (1, MAC + b"\x08\x00" + b"\x45" + b"\0" * 10), (1, MAC + b"\x86\xdd" + b"\x60" + b"\0" * 20),
     (101, bytes(IP(src="1.1.1.1", dst="2.2.2.2", ihl=15) / TCP())[:40])],
)  # fmt: skip
def test_short_headers_counted_not_raised(linktype: int, data: bytes) -> None:
    fd = FrameDecoder()
    assert fd.decode(T0, linktype, data) is None
    assert fd.stats.malformed == 1
