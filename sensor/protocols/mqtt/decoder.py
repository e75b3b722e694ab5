"""MQTT framing and per-connection state (MQTT 3.1, 3.1.1 OASIS and 5.0 OASIS).

Framing (3.1.1 section 2.2 / 5.0 section 2.1): one fixed-header byte, then the remaining length as a variable
byte integer of at most four bytes. Several packets may share a segment and one packet may span many; a packet
over ``max_packet_size`` is not buffered: its head is decoded (a PUBLISH keeps topic and ids) and the rest skipped.
A stream that starts midstream or after a gap is resynchronised on the first segment whose start looks like a
fixed header. Per connection the decoder keeps the protocol version, client id and user name (never the
password) and puts them on every later message, resolves 5.0 topic aliases per direction, and pairs
acknowledgements with their requests by packet identifier for latency and unanswered counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.mqtt import REGISTRY
from sensor.protocols.base import Probe, ProtocolMismatch
from sensor.protocols.mqtt.codes import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    MSGTYPE_NAMES,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    REQUIRED_FLAGS,
    SENDER,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    VERSION_NAMES,
)  # fmt: skip
from sensor.protocols.mqtt.wire import BODIES, Malformed, publish

OVERSIZE_HEAD = 65_546  # bytes of an oversize packet decoded: a full topic, packet id and the start of properties
MISMATCH_AFTER = 8  # segments dropped while unsynchronised with nothing decoded: not MQTT
# Response type -> request type it answers (3.1.1 section 4.3 / 5.0 section 4.3 QoS flows; 3.8-3.13).
ANSWERS = {PUBACK: PUBLISH, PUBREC: PUBLISH, PUBREL: PUBREC, PUBCOMP: PUBREL, SUBACK: SUBSCRIBE,
           UNSUBACK: UNSUBSCRIBE, CONNACK: CONNECT, PINGRESP: PINGREQ}  # fmt: skip
# Request types that wait for an answer (PUBLISH only at QoS 1 and 2).
AWAITS = frozenset({PUBREC, PUBREL, SUBSCRIBE, UNSUBSCRIBE, CONNECT, PINGREQ})
ID_LESS = frozenset({CONNECT, CONNACK, PINGREQ, PINGRESP})


def _head(hdr: int) -> dict[str, Any]:
    """The fields a packet with this fixed-header byte starts with, in document order ("len" set per packet).

    A packet copies its template: cheaper than building the dict, and a PUBLISH gets its flags for free.
    """
    t = hdr >> 4
    f: dict[str, Any] = {"msgtype": t, "msgtype_name": MSGTYPE_NAMES[t], "hdrflags": hdr, "len": 0}
    if t == PUBLISH:
        f["dupflag"] = bool(hdr & 8)
        f["qos"] = (hdr >> 1) & 3
        f["retain"] = bool(hdr & 1)
    return f


HEADS = tuple(_head(hdr) for hdr in range(256))


def _header(b: bytes, pos: int, n: int) -> tuple[int, int]:
    """Remaining length at ``pos`` + 1: (length, offset of the body); (-1, 0) incomplete, (-2, 0) five bytes."""
    value = shift = 0
    j = pos + 1
    while True:
        if j >= n:
            return -1, 0
        c = b[j]
        j += 1
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, j
        shift += 7
        if shift == 28:
            return -2, 0


def _valid_first_byte(h: int) -> bool:
    t = h >> 4
    if t == 0:
        return False
    req = REQUIRED_FLAGS[t]
    return (h & 6) != 6 if req < 0 else (h & 15) == req


class MqttState:
    __slots__ = (
        "aliases",
        "chunks",
        "clientid",
        "connack_seen",
        "connect_seen",
        "ctx",
        "dropped",
        "flow",
        "gapped",
        "good",
        "have",
        "inferred",
        "introduced",
        "need",
        "oversize",
        "packets",
        "pending",
        "resync_bytes",
        "skip",
        "started",
        "synced",
        "unanswered",
        "unmatched",
        "username",
        "version",
    )  # fmt: skip

    def __init__(self, flow: FlowInfo) -> None:
        self.flow = flow
        self.version: int | None = None
        self.inferred = False
        self.clientid: str | None = None
        self.username: str | None = None
        self.connect_seen = False
        self.connack_seen = False
        self.introduced = flow.midstream  # midstream: no CONNECT to expect, no "unintroduced" reports
        self.chunks: tuple[list[bytes], list[bytes]] = ([], [])  # partial packet per direction (0: from client)
        self.have = [0, 0]
        self.need = [0, 0]  # bytes the partial packet needs in all; 0 while its header is incomplete
        self.skip = [0, 0]  # bytes of an oversize packet still to pass over
        self.synced = [not flow.midstream, not flow.midstream]
        self.started = [False, False]  # a byte of this direction was seen
        self.aliases: tuple[dict[int, str], dict[int, str]] = ({}, {})  # 5.0 topic aliases, per sender
        self.pending: dict[tuple[bool, int, int], int] = {}  # (request from client, type, packet id) -> ts
        self.gapped = False
        self.good = 0
        self.dropped = 0
        self.packets = 0
        self.unanswered = 0
        self.unmatched = 0
        self.resync_bytes = 0
        self.oversize = 0
        self.ctx: dict[str, Any] | None = None  # fields carried onto every message


class MqttDecoder:
    name = "mqtt"
    transport = "tcp"
    registry = REGISTRY

    def __init__(
        self,
        max_payload_bytes: int = 0,
        max_packet_size: int = 1 << 20,
        max_outstanding: int = 1024,
        max_topic_aliases: int = 1024,
        max_list_items: int = 64,
    ) -> None:
        self.max_payload_bytes = max_payload_bytes  # PUBLISH payload bytes kept in ``msg``; off by default
        self.max_packet_size = max_packet_size  # largest packet buffered whole, per direction
        self.max_outstanding = max_outstanding  # unanswered packet ids per connection
        self.max_topic_aliases = max_topic_aliases  # per direction
        self.max_list_items = max_list_items  # topic filters, reason codes, user properties kept per packet

    # -- detection ---------------------------------------------------------------------------------------------
    def probe(self, data: bytes, from_client: bool) -> Probe:
        """A CONNECT (3.1.1 section 3.1.2.1): type 1, remaining length, then protocol name MQTT or MQIsdp."""
        if not data:
            return Probe.NEED_MORE
        if data[0] != 0x10 or not from_client:
            return Probe.NO
        rl, j = _header(data, 0, len(data))
        if rl == -1:
            return Probe.NEED_MORE
        if rl < 10 or rl > self.max_packet_size:
            return Probe.NO
        name = data[j : j + 8]
        for want in (b"\x00\x04MQTT", b"\x00\x06MQIsdp"):
            if name[: len(want)] == want:
                return Probe.YES
            if len(name) < len(want) and want.startswith(name):
                return Probe.NEED_MORE
        return Probe.NO

    def new_state(self, flow: FlowInfo) -> MqttState:
        return MqttState(flow)

    # -- framing -----------------------------------------------------------------------------------------------
    def feed(
        self, state: MqttState, from_client: bool, data: bytes, ts: int, packet: PacketRef, gap: bool
    ) -> Iterable[Message | Anomaly]:
        i = 0 if from_client else 1
        out: list[Message | Anomaly] = []
        if gap:
            state.gapped = True
            if state.chunks[i]:
                h = state.chunks[i][0][0]
                out.append(self._anomaly(state, from_client, ts, packet, "mqtt.gap_in_packet",
                                         f"bytes lost inside a {MSGTYPE_NAMES[h >> 4]} of {state.need[i] or '?'} bytes", h))  # fmt: skip
                state.chunks[i].clear()
                state.have[i] = state.need[i] = 0
            state.skip[i] = 0
            state.synced[i] = False
        state.started[i] = True
        skip = state.skip[i]
        if skip:
            if len(data) <= skip:
                state.skip[i] = skip - len(data)
                return out
            data = data[skip:]
            state.skip[i] = 0
        chunks = state.chunks[i]
        if chunks:
            chunks.append(data)
            state.have[i] += len(data)
            if state.need[i] and state.have[i] < state.need[i]:
                return out
            data = b"".join(chunks)
            chunks.clear()
            state.have[i] = state.need[i] = 0
        if not state.synced[i]:
            if not self._plausible(data):
                state.resync_bytes += len(data)
                state.dropped += 1
                if state.packets == 0 and state.dropped >= MISMATCH_AFTER:
                    raise ProtocolMismatch(f"no MQTT fixed header found in {state.dropped} segments")
                return out
            state.synced[i] = True
        n = len(data)
        pos = 0
        maxp = self.max_packet_size
        while pos < n:
            rl = data[pos + 1] if pos + 1 < n else 0x80
            if rl < 0x80:  # one-byte remaining length: most packets, no call
                j = pos + 2
            else:
                rl, j = _header(data, pos, n)
            if rl < 0:
                if rl == -1:  # header split between segments
                    chunks.append(data[pos:])
                    state.have[i] = n - pos
                    break
                if state.packets == 0 and not state.flow.midstream:
                    raise ProtocolMismatch("not MQTT: remaining length with a fifth continuation byte at stream start")
                out.append(self._anomaly(state, from_client, ts, packet, "mqtt.invalid_remaining_length",
                                         "remaining length with a fifth continuation byte; rest of segment dropped", data[pos]))  # fmt: skip
                state.synced[i] = False
                state.resync_bytes += n - pos
                break
            if pos == 0 and state.packets == 0 and not state.flow.midstream and not _valid_first_byte(data[0]):
                raise ProtocolMismatch(f"not MQTT: first byte 0x{data[0]:02x} is no valid fixed header")
            end = j + rl
            if rl > maxp:
                head = OVERSIZE_HEAD if rl > OVERSIZE_HEAD else rl
                if j + head > n:
                    chunks.append(data[pos:])
                    state.have[i] = n - pos
                    state.need[i] = j - pos + head
                    break
                self._oversize(state, from_client, data[pos], data[j : j + head], rl, ts, packet, out)
                if end > n:
                    state.skip[i] = end - n
                    break
                pos = end
                continue
            if end > n:
                chunks.append(data[pos:])
                state.have[i] = n - pos
                state.need[i] = end - pos
                break
            self._packet(state, from_client, data[pos], data[j:end], rl, ts, packet, out)
            pos = end
        return out

    def _plausible(self, data: bytes) -> bool:
        """Does this segment start at a packet boundary? A valid first byte and remaining length, and the packet
        either runs on past the segment or is followed by another valid first byte."""
        n = len(data)
        if not n or not _valid_first_byte(data[0]):
            return False
        rl, j = _header(data, 0, n)
        if rl == -1:
            return True
        if rl < 0 or rl > self.max_packet_size:
            return False
        t = data[0] >> 4
        if t in (PINGREQ, PINGRESP) and rl:
            return False
        end = j + rl
        return end >= n or _valid_first_byte(data[end])

    def _anomaly(
        self, st: MqttState, from_client: bool, ts: int, packet: PacketRef, name: str, reason: str, hdr: int,
        f: dict[str, Any] | None = None,
    ) -> Anomaly:  # fmt: skip
        t = hdr >> 4
        fields: dict[str, Any] = {"msgtype": t, "msgtype_name": MSGTYPE_NAMES[t]}
        if f is not None and "msgid" in f:
            fields["msgid"] = f["msgid"]
        if st.clientid is not None:
            fields["clientid"] = st.clientid
        return Anomaly(ts, "mqtt", st.flow, from_client, name, reason, packet, fields)

    def _oversize(
        self, st: MqttState, from_client: bool, hdr: int, head: bytes, rl: int, ts: int, packet: PacketRef,
        out: list[Message | Anomaly],
    ) -> None:  # fmt: skip
        st.oversize += 1
        reason = f"remaining length {rl} over the {self.max_packet_size}-byte limit; packet skipped"
        if hdr >> 4 == PUBLISH and _valid_first_byte(hdr):
            self._packet(st, from_client, hdr, head, rl, ts, packet, out, total=rl)
            reason = f"PUBLISH of {rl} bytes over the {self.max_packet_size}-byte limit; payload skipped"
        out.append(self._anomaly(st, from_client, ts, packet, "mqtt.packet_too_large", reason, hdr))

    # -- one packet --------------------------------------------------------------------------------------------
    def _packet(
        self, st: MqttState, from_client: bool, hdr: int, body: bytes, rl: int, ts: int, packet: PacketRef,
        out: list[Message | Anomaly], total: int = -1,
    ) -> None:  # fmt: skip
        t = hdr >> 4
        fl = hdr & 15
        st.packets += 1
        version = st.version
        if t == 0 or (t == AUTH and version is not None and version != 5):
            out.append(self._anomaly(st, from_client, ts, packet, "mqtt.reserved_packet_type",
                                     f"packet type {t} is reserved" + (" before MQTT 5.0" if t else ""), hdr))  # fmt: skip
            return
        f = HEADS[hdr].copy()
        f["len"] = rl
        problems: list[tuple[str, str]] = []
        if t == PUBLISH:
            if fl & 6 == 6:
                problems.append(("mqtt.invalid_qos", "PUBLISH with QoS 3"))
        elif REQUIRED_FLAGS[t] != fl:
            problems.append(("mqtt.reserved_flags", f"{MSGTYPE_NAMES[t]} flags 0x{fl:x}, must be 0x{REQUIRED_FLAGS[t]:x}"))
        if version is None and t != CONNECT:
            version = self._infer(st, t, rl)
        # Well-formed 3.x PUBLISH and PUBACK..PUBCOMP, most of the traffic, are decoded here without a call, as
        # wire.publish and wire.ack would decode them; anything else (or anything odd) goes to the wire functions.
        end = len(body)
        if t == PUBLISH and version != 5 and total < 0 and not self.max_payload_bytes and end > 1:
            pos = 2 + ((body[0] << 8) | body[1])
            topic = None
            if pos + (2 if fl & 6 else 0) <= end:  # topic and packet id inside the packet
                try:  # not contextlib.suppress: a try costs nothing, a context manager two calls
                    topic = body[2:pos].decode()
                except UnicodeDecodeError:
                    topic = None  # wire.publish reports it
            if topic is not None:
                f["topic"] = topic
                if fl & 6:
                    f["msgid"] = msgid = (body[pos] << 8) | body[pos + 1]
                    pos += 2
                    if not msgid:
                        problems.append(("mqtt.missing_packet_id", "PUBLISH QoS > 0 with packet identifier 0"))
                f["payload_length"] = end - pos
            else:
                self._body(t, body, fl, version, f, problems, total)
        elif 3 < t < 8 and version != 5 and end == 2:
            f["msgid"] = (body[0] << 8) | body[1]
        else:
            self._body(t, body, fl, version, f, problems, total)
        msg = Message(ts, "mqtt", st.flow, from_client, f, packet)
        out.append(msg)
        if not SENDER[t] & (1 if from_client else 2) or (t == DISCONNECT and not from_client and version != 5):
            problems.append(("mqtt.wrong_direction", f"{MSGTYPE_NAMES[t]} sent by the {'client' if from_client else 'server'}"))
        # session facts
        if t == CONNECT:
            if st.connect_seen:
                problems.append(("mqtt.double_connect", "a second CONNECT on this connection"))
            elif from_client:
                st.connect_seen = st.introduced = True
                level = f.get("protocol_version")
                if level in (3, 4, 5):
                    st.version = level
                    st.inferred = False
                st.clientid = f.get("clientid")
                st.username = f.get("username")
        elif t == CONNACK:
            if not st.connect_seen and not st.introduced and not st.gapped:
                problems.append(("mqtt.missing_connect", "CONNACK without a CONNECT on this connection"))
            st.connack_seen = st.introduced = True
            props = f.get("properties")
            if props and "assigned_client_identifier" in props and not st.clientid:
                st.clientid = props["assigned_client_identifier"]
        elif not st.introduced and not st.gapped and (from_client or t != AUTH):
            if from_client and not st.connect_seen:
                problems.append(("mqtt.unintroduced_message", f"{MSGTYPE_NAMES[t]} before CONNECT"))
            elif not from_client and not st.connack_seen:
                problems.append(("mqtt.unintroduced_message", f"{MSGTYPE_NAMES[t]} from the server before CONNACK"))
        # context carried onto every message of the connection (rebuilt only when the session facts change)
        if t in (CONNECT, CONNACK) or st.ctx is None:
            st.ctx = self._context(st)
            if t == CONNECT:
                ctx = {k: v for k, v in st.ctx.items() if k not in ("clientid", "username")}
                f.update(ctx)
            else:
                f.update(st.ctx)
        else:
            f.update(st.ctx)
        if t == PUBLISH:
            # 5.0 section 3.3.2.3.4 topic alias, per sender; 4.7 wildcards are not allowed in a topic name.
            topic = f.get("topic")
            if topic is not None:
                alias = f.get("topic_alias")
                if alias is not None:
                    aliases = st.aliases[0 if from_client else 1]
                    if topic:
                        if alias in aliases or len(aliases) < self.max_topic_aliases:
                            aliases[alias] = topic
                        else:
                            problems.append(("mqtt.topic_alias_overflow", f"more than {self.max_topic_aliases} topic aliases"))
                    else:
                        known = aliases.get(alias)
                        if known is None:
                            problems.append(("mqtt.unknown_topic_alias", f"topic alias {alias} never defined on this connection"))
                        else:
                            f["topic"] = known
                            f["topic_from_alias"] = True
                elif not topic:
                    problems.append(("mqtt.invalid_topic", "empty topic without a topic alias"))
                if "+" in topic or "#" in topic:
                    problems.append(("mqtt.invalid_topic", f"wildcard in topic name {topic!r}"))
        if (t != PUBLISH or fl & 6) and (t in ID_LESS or "msgid" in f):  # else truncated before its packet id
            # pair acknowledgements with their requests by packet identifier
            msgid = f.get("msgid", 0)
            req = ANSWERS.get(t)
            if req is not None:
                started = st.pending.pop((not from_client, req, msgid), None)
                f["matched"] = started is not None
                if started is not None:
                    msg.duration_ns = ts - started
                elif t != CONNACK:
                    st.unmatched += 1
                    if not st.flow.midstream and not st.gapped:
                        problems.append(("mqtt.unmatched_response", f"{MSGTYPE_NAMES[t]} for packet id {msgid} with no outstanding {MSGTYPE_NAMES[req]}"))
            if t in AWAITS or (t == PUBLISH and f.get("qos")):
                key = (from_client, t, msgid)
                pending = st.pending
                if key in pending:
                    if t in (PINGREQ, CONNECT):
                        st.unanswered += 1
                    elif not f.get("dupflag") and t != PUBREL:
                        problems.append(("mqtt.duplicate_packet_id", f"packet id {msgid} reused while its {MSGTYPE_NAMES[t]} is unanswered"))
                elif len(pending) >= self.max_outstanding:
                    pending.pop(next(iter(pending)))
                    st.unanswered += 1
                    problems.append(("mqtt.outstanding_overflow", f"more than {self.max_outstanding} unanswered packet ids"))
                pending[key] = ts
        if problems:
            for name, reason in problems:
                out.append(self._anomaly(st, from_client, ts, packet, name, reason, hdr, f))
        else:
            st.good += 1

    def _body(
        self, t: int, body: bytes, fl: int, version: int | None, f: dict[str, Any], problems: list[tuple[str, str]],
        total: int,
    ) -> None:  # fmt: skip
        """The wire function of the packet type; a layout it cannot follow becomes a problem (fields kept)."""
        try:
            if total >= 0:
                publish(body, fl, version or 4, f, problems, self.max_list_items, total, self.max_payload_bytes)
            elif t == PUBLISH and self.max_payload_bytes:
                publish(body, fl, version or 4, f, problems, self.max_list_items, -1, self.max_payload_bytes)
            else:
                BODIES[t](body, fl, version or 4, f, problems, self.max_list_items)  # type: ignore[misc]
        except Malformed as e:
            problems.append((e.name, e.reason))

    @staticmethod
    def _context(st: MqttState) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        if st.clientid is not None:
            ctx["clientid"] = st.clientid
        if st.username is not None:
            ctx["username"] = st.username
        if st.version is not None:
            ctx["protocol_version"] = st.version
            ctx["protocol_version_name"] = VERSION_NAMES[st.version]
            if st.inferred:
                ctx["protocol_version_inferred"] = True
        else:
            ctx["protocol_version_name"] = "unknown"
        return ctx

    def _infer(self, st: MqttState, t: int, rl: int) -> int | None:
        """CONNECT not seen: only a 5.0 packet has a CONNACK longer than 2, an ack with a reason code, a
        DISCONNECT with a body or an AUTH; a 2-byte CONNACK is 3.x (taken as 3.1.1)."""
        v: int | None = None
        if t == CONNACK:
            v = 5 if rl > 2 else 4
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
            v = 5 if rl > 2 else None
        elif t in (DISCONNECT, AUTH):
            v = 5 if rl > 0 or t == AUTH else None
        if v is not None:
            st.version = v
            st.inferred = True
            st.ctx = None
        return v

    # -- end of flow -------------------------------------------------------------------------------------------
    def close(self, state: MqttState, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        state.unanswered += len(state.pending)
        state.pending.clear()
        out: list[Message | Anomaly] = []
        for i in (0, 1):
            if state.chunks[i] or state.skip[i]:
                h = state.chunks[i][0][0] if state.chunks[i] else PUBLISH << 4
                out.append(self._anomaly(state, i == 0, ts, packet, "mqtt.truncated_stream",
                                         "the connection ended inside a packet", h))  # fmt: skip
                state.chunks[i].clear()
                state.skip[i] = 0
        return out

    def stats(self, state: MqttState) -> dict[str, int]:
        return {
            "packets": state.packets, "unanswered_requests": state.unanswered,
            "unmatched_responses": state.unmatched, "resync_bytes": state.resync_bytes,
            "oversize_packets": state.oversize,
        }  # fmt: skip
