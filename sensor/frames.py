"""Link, network and transport layers: raw record bytes to a small ``Segment``.

Hand-written ``struct`` unpacking on the hot path: no per-packet scapy objects. IP addresses stay packed bytes
here (the flow table turns them into text once per flow).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Link-layer header types (tcpdump.org linktypes)
DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_RAW_OPENBSD, DLT_RAW14 = 0, 1, 101, 12, 14
DLT_LOOP, DLT_LINUX_SLL, DLT_IPV4, DLT_IPV6, DLT_LINUX_SLL2 = 108, 113, 228, 229, 276
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options; fragment (44) apart

_H = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBH")
_UDP = struct.Struct("!HHH")
_SLL2_PROTO = struct.Struct("!H")


@dataclass(slots=True)
class Segment:
    ts: int
    src: bytes  # packed IPv4 (4) or IPv6 (16) address
    dst: bytes
    sport: int
    dport: int
    proto: int  # IPPROTO_TCP | IPPROTO_UDP
    flags: int  # TCP flags byte (0 for UDP)
    seq: int
    ack: int
    payload: bytes
    vlan: tuple[int, ...] = ()


@dataclass
class FrameStats:
    packets: int = 0
    not_ip: int = 0
    not_tcp_udp: int = 0
    malformed: int = 0
    unsupported_link: int = 0
    fragments: int = 0
    reassembled: int = 0
    fragments_evicted: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)


class FragmentTable:
    """IP fragment reassembly (RFC 791 / RFC 8200 section 4.5), capped in datagrams, bytes and time."""

    def __init__(self, max_datagrams: int = 1024, max_bytes: int = 65535 + 60, timeout_ns: int = 30_000_000_000):
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout_ns = timeout_ns
        # key -> [first_ts, {offset: bytes}, total_len or -1, bytes held]
        self.pending: dict[tuple, list] = {}
        self.evicted = 0

    def add(self, key: tuple, ts: int, offset: int, more: bool, data: bytes) -> bytes | None:
        entry = self.pending.get(key)
        if entry is None:
            pending = self.pending
            # Oldest first (insertion order): expire by capture time here, the only place fragments arrive.
            if pending and ts - next(iter(pending.values()))[0] > self.timeout_ns:
                self._expire(ts)
            if len(pending) >= self.max_datagrams:
                self._expire(ts, force=True)
            entry = pending[key] = [ts, {}, -1, 0]
        parts: dict[int, bytes] = entry[1]
        old = parts.get(offset)
        if old is None or len(old) < len(data):
            parts[offset] = data
            entry[3] += len(data) - (len(old) if old is not None else 0)
        if not more:
            entry[2] = offset + len(data)
        total = entry[2]
        # Bytes held per datagram are capped too: many overlapping fragments at distinct offsets must not add up.
        if offset + len(data) > self.max_bytes or entry[3] > self.max_bytes:
            del self.pending[key]
            self.evicted += 1
            return None
        if total < 0:
            return None
        # Complete when the parts cover [0, total) without holes; overlaps keep the first-arrived bytes' order.
        covered = 0
        for off in sorted(parts):
            if off > covered:
                return None
            covered = max(covered, off + len(parts[off]))
        if covered < total:
            return None
        out = bytearray(total)
        for off in sorted(parts, reverse=True):  # earlier offsets win on overlap
            chunk = parts[off][: max(0, total - off)]
            out[off : off + len(chunk)] = chunk
        del self.pending[key]
        return bytes(out)

    def _expire(self, now: int, force: bool = False) -> None:
        old = [k for k, e in self.pending.items() if now - e[0] > self.timeout_ns]
        if force and not old and self.pending:
            old = [next(iter(self.pending))]
        for k in old:
            del self.pending[k]
            self.evicted += 1

    def expire(self, now: int) -> None:
        if self.pending:
            self._expire(now)


class FrameDecoder:
    """Bytes of one record to a Segment, or None with the reason counted."""

    def __init__(self, frag_table: FragmentTable | None = None) -> None:
        self.stats = FrameStats()
        self.frags = frag_table or FragmentTable()

    def _bad(self, reason: str) -> None:
        s = self.stats
        s.malformed += 1
        s.malformed_reasons[reason] = s.malformed_reasons.get(reason, 0) + 1

    def decode(self, ts: int, linktype: int, data: bytes) -> Segment | None:
        self.stats.packets += 1
        # Fast path: untagged Ethernet, IPv4 without options or fragments, TCP (nearly all ICS traffic).
        if (
            linktype == 1 and len(data) >= 54 and data[12] == 8 and data[13] == 0 and data[14] == 0x45
            and data[23] == 6 and not data[20] & 0x3F and not data[21]
        ):  # fmt: skip
            total = (data[16] << 8) | data[17]
            sport, dport, seq, ack, doff, flags, _win = _TCP.unpack_from(data, 34)
            hl = (doff >> 4) * 4
            end = 14 + total
            if hl >= 20 and 34 + hl <= end <= len(data):
                return Segment(ts, data[26:30], data[30:34], sport, dport, 6, flags, seq, ack, data[34 + hl : end])
        n = len(data)
        vlan: tuple[int, ...] = ()
        if linktype == DLT_EN10MB:
            if n < 14:
                self._bad("short_ethernet")
                return None
            etype = (data[12] << 8) | data[13]
            off = 14
            while etype in VLAN_TPIDS:
                if n < off + 4:
                    self._bad("short_vlan")
                    return None
                vlan = (*vlan, ((data[off] << 8) | data[off + 1]) & 0x0FFF)
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        elif linktype == DLT_LINUX_SLL:
            if n < 16:
                self._bad("short_sll")
                return None
            etype = (data[14] << 8) | data[15]
            off = 16
        elif linktype == DLT_LINUX_SLL2:
            if n < 20:
                self._bad("short_sll2")
                return None
            etype = (data[0] << 8) | data[1]
            off = 20
        elif linktype in (DLT_RAW, DLT_RAW_OPENBSD, DLT_RAW14, DLT_IPV4, DLT_IPV6):
            if n < 1:
                self._bad("empty")
                return None
            version = data[0] >> 4
            etype = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
            off = 0
        elif linktype in (DLT_NULL, DLT_LOOP):
            if n < 4:
                self._bad("short_loopback")
                return None
            # Family in host order for DLT_NULL, network order for DLT_LOOP; AF_INET6 differs by OS (24, 28, 30).
            fam = int.from_bytes(data[:4], "big" if linktype == DLT_LOOP else "little")
            if fam > 0xFFFF:
                fam = int.from_bytes(data[:4], "big")
            etype = ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in (10, 24, 28, 30) else 0
            off = 4
        else:
            self.stats.unsupported_link += 1
            return None
        if etype == ETH_IPV4:
            return self._ipv4(ts, data, off, vlan)
        if etype == ETH_IPV6:
            return self._ipv6(ts, data, off, vlan)
        self.stats.not_ip += 1
        return None

    def _ipv4(self, ts: int, data: bytes, off: int, vlan: tuple[int, ...]) -> Segment | None:
        if len(data) < off + 20:
            self._bad("short_ipv4")
            return None
        vihl, _tos, total, ident, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl:
            self._bad("bad_ipv4_header")
            return None
        end = off + total
        if end > len(data):
            end = len(data)  # snapped capture: keep what is there
        payload = data[off + ihl : end]
        if frag & 0x3FFF:  # MF set or offset non-zero (RFC 791 section 3.2)
            self.stats.fragments += 1
            whole = self.frags.add((src, dst, proto, ident), ts, (frag & 0x1FFF) * 8, bool(frag & 0x2000), payload)
            if whole is None:
                return None
            self.stats.reassembled += 1
            payload = whole
        return self._transport(ts, proto, src, dst, payload, vlan)

    def _ipv6(self, ts: int, data: bytes, off: int, vlan: tuple[int, ...]) -> Segment | None:
        if len(data) < off + 40:
            self._bad("short_ipv6")
            return None
        plen = (data[off + 4] << 8) | data[off + 5]
        nxt = data[off + 6]
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        end = min(off + 40 + plen, len(data))
        pos = off + 40
        frag_info = None
        while nxt in IPV6_EXT_HEADERS or nxt == 44:
            if pos + 8 > end:
                self._bad("short_ipv6_extension")
                return None
            if nxt == 44:
                fo = (data[pos + 2] << 8) | data[pos + 3]
                ident = int.from_bytes(data[pos + 4 : pos + 8], "big")
                frag_info = (fo & 0xFFF8, bool(fo & 1), ident)
                nxt = data[pos]
                pos += 8
            else:
                nxt, hlen = data[pos], (data[pos + 1] + 1) * 8
                pos += hlen
        payload = data[pos:end]
        if frag_info is not None and (frag_info[0] or frag_info[1]):
            self.stats.fragments += 1
            whole = self.frags.add((src, dst, nxt, frag_info[2]), ts, frag_info[0], frag_info[1], payload)
            if whole is None:
                return None
            self.stats.reassembled += 1
            payload = whole
        return self._transport(ts, nxt, src, dst, payload, vlan)

    def _transport(self, ts: int, proto: int, src: bytes, dst: bytes, p: bytes, vlan: tuple[int, ...]) -> Segment | None:
        if proto == IPPROTO_TCP:
            if len(p) < 20:
                self._bad("short_tcp")
                return None
            sport, dport, seq, ack, doff, flags, _win = _TCP.unpack_from(p, 0)
            hl = (doff >> 4) * 4
            if hl < 20 or hl > len(p):
                self._bad("bad_tcp_header_length")
                return None
            return Segment(ts, src, dst, sport, dport, proto, flags, seq, ack, p[hl:], vlan)
        if proto == IPPROTO_UDP:
            if len(p) < 8:
                self._bad("short_udp")
                return None
            sport, dport, ulen = _UDP.unpack_from(p, 0)
            end = ulen if 8 <= ulen <= len(p) else len(p)
            return Segment(ts, src, dst, sport, dport, proto, 0, 0, 0, p[8:end], vlan)
        self.stats.not_tcp_udp += 1
        return None
