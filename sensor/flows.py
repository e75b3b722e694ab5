"""Flow table and per-direction TCP stream reassembly.

Handles out-of-order segments, retransmissions, overlaps (first copy wins, like most end hosts), gaps
(bytes never captured: the decoder is told and resynchronises) and midstream pickup. Every table has a cap;
hitting one evicts and is counted. Time is capture time, so a replay is deterministic.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sensor.frames import IPPROTO_TCP, Segment
from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.protocols.base import Decoder, Probe, ProtocolMismatch

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
SEQ_MASK = 0xFFFFFFFF
HALF = 1 << 31
PROBE_BYTES = 512  # bytes per direction kept while the content heuristic cannot decide yet
PROBE_SEGMENTS = 4  # payload segments after which an unknown flow is left alone
NO_DECODER: Any = object()

Emit = Callable[[Message | Anomaly], None]


@dataclass(frozen=True)
class FlowConfig:
    max_flows: int = 100_000
    max_stream_buffer: int = 1 << 20  # out-of-order bytes held per direction
    max_ooo_segments: int = 256
    idle_timeout_s: float = 300.0
    closed_timeout_s: float = 5.0
    # A sweep walks the whole table, so it runs every few seconds of capture time, not every second: idle
    # flows then live up to idle_timeout + sweep_interval, a few percent more, for far less work per packet.
    sweep_interval_s: float = 5.0


@dataclass
class FlowStats:
    flows: int = 0
    tcp_flows: int = 0
    udp_flows: int = 0
    midstream: int = 0
    evicted_idle: int = 0
    evicted_cap: int = 0
    retransmissions: int = 0
    overlaps: int = 0
    out_of_order: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    buffer_cap_hits: int = 0
    decoder_exceptions: int = 0
    protocol_mismatches: int = 0
    per_protocol: dict[str, int] = field(default_factory=dict)
    decoder_counters: dict[str, int] = field(default_factory=dict)


def community_id(src: bytes, dst: bytes, sport: int, dport: int, proto: int, seed: int = 0) -> str:
    """Community ID v1 (corelight/community-id-spec): endpoints ordered, SHA-1, base64."""
    if (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    h = hashlib.sha1(struct.pack("!H", seed) + src + dst + bytes((proto, 0)) + struct.pack("!HH", sport, dport))
    return "1:" + base64.b64encode(h.digest()).decode()


def ip_text(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Stream:
    """One direction of a TCP connection."""

    __slots__ = ("fin", "next_seq", "ooo", "ooo_bytes", "probe_buf")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.fin = False
        self.probe_buf = b""


class Flow:
    __slots__ = (
        "bytes", "closed", "decoder", "first_ts", "info", "keys", "last_ts", "packets", "probes", "proto", "state",
        "streams",
    )  # fmt: skip

    def __init__(self, info: FlowInfo, keys: tuple[tuple, tuple], proto: int, ts: int) -> None:
        self.info = info
        self.keys = keys
        self.proto = proto
        self.streams = (Stream(), Stream())  # index 0: from client, 1: from server
        self.decoder: Any = None  # None: not chosen yet; NO_DECODER: none fits
        self.state: Any = None
        self.first_ts = ts
        self.last_ts = ts
        self.closed = False
        self.probes = 0
        self.packets = 0
        self.bytes = 0


class FlowTable:
    def __init__(
        self,
        decoders: dict[str, Decoder],
        ports: dict[str, tuple[int, ...]],
        emit: Emit,
        config: FlowConfig | None = None,
    ) -> None:
        self.cfg = config or FlowConfig()
        self.decoders = decoders
        self.port_map: dict[int, Decoder] = {}
        for name, plist in ports.items():
            if name in decoders:
                for p in plist:
                    self.port_map[p] = decoders[name]
        self.emit = emit
        self.table: dict[tuple, tuple[Flow, bool]] = {}  # both directions' keys -> (flow, from_client)
        self.stats = FlowStats()
        self.next_id = 0
        self.last_sweep = 0
        self.sweep_ns = int(self.cfg.sweep_interval_s * 1e9)
        self.idle_ns = int(self.cfg.idle_timeout_s * 1e9)
        self.closed_ns = int(self.cfg.closed_timeout_s * 1e9)
        self.now = 0

    # -- flow lifecycle -------------------------------------------------------------------------------------
    def _new_flow(self, seg: Segment) -> tuple[Flow, bool]:
        if len(self.table) >= 2 * self.cfg.max_flows:
            self._evict_oldest(max(1, self.cfg.max_flows // 10), seg.ts, seg)
        src, dst, sport, dport = seg.src, seg.dst, seg.sport, seg.dport
        midstream = False
        pm = self.port_map
        if (sport in pm) != (dport in pm):
            # Exactly one side is a known service port: it is the server, whoever sent the SYN. The protocol
            # role (who answers requests) is what decoders and analysts need, and tshark decides the same way.
            client_is_src = dport in pm
            midstream = seg.proto == IPPROTO_TCP and not seg.flags & SYN
        elif seg.proto == IPPROTO_TCP:
            flags = seg.flags
            if flags & SYN and not flags & ACK:
                client_is_src = True
            elif flags & SYN:
                client_is_src = False
            else:
                midstream = True
                client_is_src = self._guess_client_is_src(sport, dport)
        else:
            client_is_src = self._guess_client_is_src(sport, dport)
        if not client_is_src:
            src, dst, sport, dport = dst, src, dport, sport
        self.next_id += 1
        info = FlowInfo(
            ip_text(src), sport, ip_text(dst), dport, "tcp" if seg.proto == IPPROTO_TCP else "udp",
            community_id(src, dst, sport, dport, seg.proto), self.next_id, seg.vlan, midstream,
        )  # fmt: skip
        k_fwd = (src, sport, dst, dport, seg.proto)
        k_rev = (dst, dport, src, sport, seg.proto)
        flow = Flow(info, (k_fwd, k_rev), seg.proto, seg.ts)
        # Reverse key first: when both ends are the same (src == dst, sport == dport) the one entry must be the
        # forward one, or eviction, sweeping and close_all (which walk forward entries) would never see the flow.
        self.table[k_rev] = (flow, False)
        self.table[k_fwd] = (flow, True)
        st = self.stats
        st.flows += 1
        if seg.proto == IPPROTO_TCP:
            st.tcp_flows += 1
        else:
            st.udp_flows += 1
        if midstream:
            st.midstream += 1
        return flow, client_is_src

    def _guess_client_is_src(self, sport: int, dport: int) -> bool:
        if dport in self.port_map:
            return True
        if sport in self.port_map:
            return False
        return sport >= dport

    def _remove(self, flow: Flow, ts: int, packet: PacketRef) -> None:
        for k in flow.keys:
            self.table.pop(k, None)
        if not flow.closed:
            self._close_decoder(flow, ts, packet)

    def _close_decoder(self, flow: Flow, ts: int, packet: PacketRef) -> None:
        flow.closed = True
        for i, s in enumerate(flow.streams):
            if s.ooo:
                self._flush_ooo(flow, s, i == 0, ts, packet)
        dec = flow.decoder
        if dec is not None and dec is not NO_DECODER:
            try:
                for m in dec.close(flow.state, ts, packet):
                    self.emit(m)
                for k, v in dec.stats(flow.state).items():
                    key = f"{dec.name}.{k}"
                    self.stats.decoder_counters[key] = self.stats.decoder_counters.get(key, 0) + v
            except Exception as e:  # a decoder bug must not stop the sensor
                self._decoder_crash(flow, dec, e, True, ts, packet)

    def _evict_oldest(self, n: int, ts: int, packet: Any) -> None:
        flows = {id(f): f for f, fwd in self.table.values() if fwd}
        for f in heapq.nsmallest(n, flows.values(), key=lambda f: f.last_ts):
            self.stats.evicted_cap += 1
            self._remove(f, ts, packet)

    def sweep(self, now: int, packet: PacketRef) -> None:
        """Evict idle flows (capture time); called about once a second of capture time."""
        self.last_sweep = now
        idle, closed = now - self.idle_ns, now - self.closed_ns
        stale = [f for f, fwd in self.table.values() if fwd and (f.last_ts < idle or (f.closed and f.last_ts < closed))]
        for f in stale:
            if not f.closed:
                self.stats.evicted_idle += 1
            self._remove(f, now, packet)

    def close_all(self, packet: PacketRef) -> None:
        """End of capture: close every flow so unanswered requests and partial PDUs are reported."""
        for f in sorted({id(f): f for f, fwd in self.table.values() if fwd}.values(), key=lambda f: f.info.flow_id):
            self._remove(f, self.now, packet)

    # -- per packet ------------------------------------------------------------------------------------------
    def process(self, seg: Segment, packet: PacketRef) -> None:
        ts = seg.ts
        if ts > self.now:
            self.now = ts
            if ts - self.last_sweep > self.sweep_ns:
                self.sweep(ts, packet)
        entry = self.table.get((seg.src, seg.sport, seg.dst, seg.dport, seg.proto))
        if entry is None:
            flow, from_client = self._new_flow(seg)
        else:
            flow, from_client = entry
            if flow.closed:
                if seg.flags & SYN and not seg.flags & ACK:  # port reuse: a new connection
                    self._remove(flow, ts, packet)
                    flow, from_client = self._new_flow(seg)
                else:
                    return
        flow.last_ts = ts
        flow.packets += 1
        payload = seg.payload
        flow.bytes += len(payload)
        if seg.proto != IPPROTO_TCP:
            if payload:
                self._deliver(flow, from_client, payload, ts, packet, False)
            return
        flags = seg.flags
        stream = flow.streams[0 if from_client else 1]
        if flags & ACK:
            other = flow.streams[1 if from_client else 0]
            if other.ooo and other.next_seq is not None and 0 < (seg.ack - other.next_seq) & SEQ_MASK < HALF:
                # The receiver acknowledged bytes we never saw: they were lost by the capture, not the network.
                # Handled before this segment's payload, which the receiver sent after having those bytes.
                self._skip_gap(flow, other, not from_client, ts, packet)
        if flags & SYN:
            stream.next_seq = (seg.seq + 1) & SEQ_MASK
            stream.ooo.clear()
            stream.ooo_bytes = 0
        elif payload:
            nxt = stream.next_seq
            if nxt is None:
                nxt = stream.next_seq = seg.seq  # midstream pickup
            rel = (seg.seq - nxt) & SEQ_MASK
            if rel == 0:
                stream.next_seq = (nxt + len(payload)) & SEQ_MASK
                dec = flow.decoder
                if dec is None:
                    self._deliver(flow, from_client, payload, ts, packet, False)
                elif dec is not NO_DECODER:  # the common case: straight to the decoder
                    self._feed(flow, dec, from_client, payload, ts, packet, False)
                if stream.ooo:
                    self._drain(flow, stream, from_client, ts, packet)
            elif rel >= HALF:  # before next_seq: retransmission or overlap
                rel -= 1 << 32
                if rel + len(payload) <= 0:
                    self.stats.retransmissions += 1
                else:
                    self.stats.overlaps += 1
                    new = payload[-rel:]
                    stream.next_seq = (nxt + len(new)) & SEQ_MASK
                    self._deliver(flow, from_client, new, ts, packet, False)
                    if stream.ooo:
                        self._drain(flow, stream, from_client, ts, packet)
            else:
                self._hold(flow, stream, from_client, seg.seq, payload, ts, packet)
        if flags & (FIN | RST):
            if flags & RST:
                self._close_decoder(flow, ts, packet)
            else:
                stream.fin = True
                if flow.streams[0].fin and flow.streams[1].fin:
                    self._close_decoder(flow, ts, packet)

    def _hold(self, flow: Flow, s: Stream, from_client: bool, seq: int, payload: bytes, ts: int, packet: Any) -> None:
        self.stats.out_of_order += 1
        old = s.ooo.get(seq)
        if old is None or len(old) < len(payload):
            s.ooo[seq] = payload
            s.ooo_bytes += len(payload) - (len(old) if old else 0)
        cfg = self.cfg
        if s.ooo_bytes > cfg.max_stream_buffer or len(s.ooo) > cfg.max_ooo_segments:
            self.stats.buffer_cap_hits += 1
            # One skip may free less than was just added: skip until the stream is back under both caps.
            while s.ooo and (s.ooo_bytes > cfg.max_stream_buffer or len(s.ooo) > cfg.max_ooo_segments):
                self._skip_gap(flow, s, from_client, ts, packet)

    def _drain(self, flow: Flow, s: Stream, from_client: bool, ts: int, packet: Any) -> None:
        """Deliver held segments that are now in order; drop those wholly behind next_seq."""
        while s.ooo and not flow.closed:
            nxt = s.next_seq
            progressed = False
            for seq in list(s.ooo):
                rel = (seq - nxt) & SEQ_MASK
                data = s.ooo[seq]
                if rel >= HALF:
                    rel -= 1 << 32
                if rel > 0:
                    continue
                del s.ooo[seq]
                s.ooo_bytes -= len(data)
                if rel + len(data) <= 0:
                    self.stats.retransmissions += 1
                    continue
                new = data[-rel:] if rel else data
                s.next_seq = (nxt + len(new)) & SEQ_MASK
                self._deliver(flow, from_client, new, ts, packet, False)
                progressed = True
                break
            if not progressed:
                return

    def _skip_gap(self, flow: Flow, s: Stream, from_client: bool, ts: int, packet: Any) -> None:
        """Jump over missing bytes to the earliest held segment; the decoder is told there was a gap."""
        nxt = s.next_seq
        first = min(s.ooo, key=lambda q: (q - nxt) & SEQ_MASK)
        missing = (first - nxt) & SEQ_MASK
        self.stats.gaps += 1
        self.stats.gap_bytes += missing
        data = s.ooo.pop(first)
        s.ooo_bytes -= len(data)
        s.next_seq = (first + len(data)) & SEQ_MASK
        self._deliver(flow, from_client, data, ts, packet, True)
        if s.ooo:
            self._drain(flow, s, from_client, ts, packet)

    def _flush_ooo(self, flow: Flow, s: Stream, from_client: bool, ts: int, packet: Any) -> None:
        while s.ooo:
            self._skip_gap(flow, s, from_client, ts, packet)

    # -- decoder attachment and delivery ---------------------------------------------------------------------
    def _deliver(self, flow: Flow, from_client: bool, data: bytes, ts: int, packet: Any, gap: bool) -> None:
        dec = flow.decoder
        if dec is None:
            dec = self._choose(flow, from_client, data)
            if dec is None:
                return
            if dec is NO_DECODER:  # nothing fits: drop what was held for probing, feed nobody
                flow.streams[0].probe_buf = flow.streams[1].probe_buf = b""
                return
            pending = flow.streams[0 if from_client else 1].probe_buf
            if pending:
                data = pending + data
            other = flow.streams[1 if from_client else 0]
            if other.probe_buf:  # bytes the other side sent while we were still deciding
                buf, other.probe_buf = other.probe_buf, b""
                self._feed(flow, dec, not from_client, buf, ts, packet, False)
            flow.streams[0 if from_client else 1].probe_buf = b""
        if dec is NO_DECODER:
            return
        self._feed(flow, dec, from_client, data, ts, packet, gap)

    def _feed(self, flow: Flow, dec: Decoder, from_client: bool, data: bytes, ts: int, packet: Any, gap: bool) -> None:
        try:
            for m in dec.feed(flow.state, from_client, data, ts, packet, gap):
                self.emit(m)
        except ProtocolMismatch as e:
            self.stats.protocol_mismatches += 1
            proto = dec.registry.protocol  # mqtt_tls reports as mqtt: the name stays in the closed set
            self.emit(Anomaly(ts, proto, flow.info, from_client, f"{proto}.protocol_mismatch", e.reason, packet))
            flow.decoder = NO_DECODER
        except Exception as e:  # one bad message must not stop the sensor
            self._decoder_crash(flow, dec, e, from_client, ts, packet)

    def _decoder_crash(self, flow: Flow, dec: Decoder, e: Exception, from_client: bool, ts: int, packet: Any) -> None:
        self.stats.decoder_exceptions += 1
        reason = f"decoder raised {type(e).__name__}: {e}"[:300]
        self.emit(Anomaly(ts, dec.name, flow.info, from_client, "sensor.decoder_exception", reason, packet))
        flow.state = dec.new_state(flow.info)  # start over on this flow with fresh framing state

    def _choose(self, flow: Flow, from_client: bool, data: bytes) -> Decoder | None:
        info = flow.info
        dec = self.port_map.get(info.server_port) if flow.proto == IPPROTO_TCP else None
        if dec is None or dec.transport != info.transport:
            dec = None
            s = flow.streams[0 if from_client else 1]
            buf = (s.probe_buf + data)[:PROBE_BYTES]
            need_more = False
            for cand in self.decoders.values():
                if cand.transport != info.transport:
                    continue
                verdict = cand.probe(buf, from_client)
                if verdict is Probe.YES:
                    dec = cand
                    break
                if verdict is Probe.NEED_MORE:
                    need_more = True
            if dec is None:
                flow.probes += 1
                if need_more and flow.probes < PROBE_SEGMENTS and len(buf) < PROBE_BYTES:
                    s.probe_buf = buf
                    return None
                flow.decoder = NO_DECODER
                return NO_DECODER
        flow.decoder = dec
        flow.state = dec.new_state(info)
        self.stats.per_protocol[dec.name] = self.stats.per_protocol.get(dec.name, 0) + 1
        return dec
