"""MQTT framing, session state and malformed input, through the real flow table.

Packets are built here by hand from the specifications (MQTT 3.1.1 / 5.0 OASIS), so every expected value is the
one the test put on the wire; hypothesis mutates them (remaining lengths, property lengths, flags, truncation)
and the flow table must never see a decoder exception, only anomalies from the registry's closed set.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.flows import FlowTable
from sensor.frames import IPPROTO_TCP, Segment
from sensor.messages import Anomaly, Message, PacketRef
from sensor.messages.mqtt import REGISTRY
from sensor.protocols.mqtt import MqttDecoder
from tests.conftest import SHARED_PCAPS
from tests.replay_helpers import replay

CLI, SRV = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"


# -- packet builders (3.1.1 section 2-3, 5.0 section 2-3) ------------------------------------------------------
def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x: str | bytes) -> bytes:
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def pkt(hdr: int, body: bytes) -> bytes:
    return bytes([hdr]) + vbi(len(body)) + body


def connect(clientid: str = "plc-7", level: int = 4, user: str | None = "op", password: bytes | None = b"s3cret!",
            will: tuple[str, bytes] | None = None, props: bytes = b"") -> bytes:  # fmt: skip
    flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0) | (0x04 if will else 0)
    body = s("MQTT" if level != 3 else "MQIsdp") + bytes([level, flags]) + struct.pack(">H", 30)
    if level == 5:
        body += vbi(len(props)) + props
    body += s(clientid)
    if will:
        if level == 5:
            body += b"\x00"
        body += s(will[0]) + s(will[1])
    if user:
        body += s(user)
    if password:
        body += s(password)
    return pkt(0x10, body)


def connack(code: int = 0, v5: bool = False) -> bytes:
    return pkt(0x20, bytes([0, code]) + (b"\x00" if v5 else b""))


def publish(topic: str, payload: bytes = b"x", qos: int = 0, msgid: int = 1, retain: bool = False,
            props: bytes | None = None) -> bytes:  # fmt: skip
    body = s(topic) + (struct.pack(">H", msgid) if qos else b"")
    if props is not None:
        body += vbi(len(props)) + props
    return pkt(0x30 | qos << 1 | int(retain), body + payload)


def ack(t: int, msgid: int) -> bytes:
    return pkt(t << 4 | (2 if t == 6 else 0), struct.pack(">H", msgid))


def subscribe(msgid: int, *filters: tuple[str, int]) -> bytes:
    return pkt(0x82, struct.pack(">H", msgid) + b"".join(s(t) + bytes([q]) for t, q in filters))


def suback(msgid: int, *codes: int) -> bytes:
    return pkt(0x90, struct.pack(">H", msgid) + bytes(codes))


# -- running bytes through the flow table ------------------------------------------------------------------------
STEP_NS = 1_000_000  # capture time between the packets Run crafts (their timestamps, not a clock)


class Run:
    def __init__(self, segments: list[tuple[bool, bytes]], midstream: bool = False, port: int = 1883, **opts: object) -> None:
        self.out: list[Message | Anomaly] = []
        self.dec = MqttDecoder(**opts)  # type: ignore[arg-type]
        self.table = FlowTable({"mqtt": self.dec}, {"mqtt": (1883,)}, self.out.append)
        seq = [1000, 5000]
        ts = 1_700_000_000_000_000_000
        frame = 0

        def send(from_client: bool, flags: int, payload: bytes = b"") -> None:
            nonlocal ts, frame
            ts += STEP_NS
            frame += 1
            i = 0 if from_client else 1
            src, dst, sp, dp = (CLI, SRV, 40000, port) if from_client else (SRV, CLI, port, 40000)
            seg = Segment(ts, src, dst, sp, dp, IPPROTO_TCP, flags, seq[i], seq[1 - i], payload)
            self.table.process(seg, PacketRef("test", frame, -1))
            seq[i] = (seq[i] + len(payload) + (1 if flags & 0x02 else 0)) & 0xFFFFFFFF

        if not midstream:
            send(True, 0x02)
            send(False, 0x12)
            send(True, 0x10)
        for from_client, data in segments:
            send(from_client, 0x18, data)
        self.table.close_all(PacketRef("test", frame, -1))

    @property
    def messages(self) -> list[dict]:
        return [m.fields for m in self.out if isinstance(m, Message)]

    @property
    def anomalies(self) -> list[str]:
        return [a.name for a in self.out if isinstance(a, Anomaly)]

    def types(self) -> list[int]:
        return [f["msgtype"] for f in self.messages]


def chop(data: bytes, size: int) -> list[tuple[bool, bytes]]:
    return [(True, data[i : i + size]) for i in range(0, len(data), size)]


# -- framing ---------------------------------------------------------------------------------------------------
def test_many_packets_in_one_segment_and_one_byte_segments_agree() -> None:
    client = connect() + subscribe(1, ("plant/#", 1)) + publish("plant/a", b"1", qos=1, msgid=2) + pkt(0xC0, b"")
    whole = Run([(True, client), (False, connack() + suback(1, 1) + ack(4, 2) + pkt(0xD0, b""))])
    bytewise = Run([*chop(client, 1), (False, connack() + suback(1, 1) + ack(4, 2) + pkt(0xD0, b""))])
    assert whole.types() == [1, 8, 3, 12, 2, 9, 4, 13]
    assert bytewise.types() == whole.types()
    assert not whole.anomalies and not bytewise.anomalies
    assert whole.table.stats.decoder_exceptions == bytewise.table.stats.decoder_exceptions == 0


def test_200k_publish_split_over_many_segments() -> None:
    big = publish("historian/bulk", bytes(200_000), qos=1, msgid=9)
    r = Run([(True, connect()), (False, connack()), *chop(big, 1448), (False, ack(4, 9))])
    pub = [f for f in r.messages if f["msgtype"] == 3]
    assert len(pub) == 1 and pub[0]["topic"] == "historian/bulk" and pub[0]["payload_length"] == 200_000
    assert pub[0]["len"] == len(big) - 4  # 1 header byte + 3 length bytes
    puback = next(f for f in r.messages if f["msgtype"] == 4)
    assert puback["matched"] is True
    assert not r.anomalies


def test_packet_over_the_limit_is_skipped_but_its_publish_header_kept() -> None:
    big = publish("cam/1/jpeg", bytes(50_000), qos=1, msgid=3)
    r = Run([(True, connect()), (False, connack()), *chop(big, 1448), (True, pkt(0xC0, b""))], max_packet_size=4096)
    pub = next(f for f in r.messages if f["msgtype"] == 3)
    assert pub["topic"] == "cam/1/jpeg" and pub["msgid"] == 3 and pub["payload_length"] == 50_000 - 0
    assert r.anomalies == ["mqtt.packet_too_large"]
    assert r.types()[-1] == 12  # the stream is still in step after the skipped bytes


def test_fifth_length_byte_is_malformed_and_the_stream_resyncs() -> None:
    bad = b"\x30\xff\xff\xff\xff\x01" + b"junk"
    r = Run([(True, connect()), (False, connack()), (True, bad), (True, publish("ok/topic"))])
    assert "mqtt.invalid_remaining_length" in r.anomalies
    assert [f.get("topic") for f in r.messages if f["msgtype"] == 3] == ["ok/topic"]


# -- malformed and suspicious input, each with its precise name ------------------------------------------------
def _one(extra: bytes, **opts: object) -> Run:
    return Run([(True, connect()), (False, connack()), (True, extra)], **opts)


def test_reserved_type_flags_and_qos3() -> None:
    assert "mqtt.reserved_packet_type" in _one(pkt(0x00, b"\x00\x01")).anomalies
    assert "mqtt.reserved_packet_type" in _one(pkt(0xF0, b"\x00")).anomalies  # AUTH before 5.0
    assert "mqtt.reserved_flags" in _one(pkt(0x80, struct.pack(">H", 1) + s("a") + b"\x00")).anomalies
    assert "mqtt.reserved_flags" in _one(pkt(0xC1, b"")).anomalies
    assert "mqtt.invalid_qos" in _one(pkt(0x36, s("t") + b"\x00\x01x")).anomalies
    assert "mqtt.invalid_qos" in _one(subscribe(4, ("a/b", 3))).anomalies


def test_lengths_past_the_end() -> None:
    r = _one(pkt(0x30, b"\x00\x50abc"))  # topic length 80 in a 5-byte packet
    assert "mqtt.truncated_packet" in r.anomalies
    v5 = Run([(True, connect(level=5)), (False, connack(v5=True)),
              (True, pkt(0x32, s("t") + b"\x00\x07" + b"\x7f" + b"\x01\x01"))])  # fmt: skip
    assert "mqtt.invalid_property_length" in v5.anomalies
    assert "mqtt.invalid_length" in _one(pkt(0xC0, b"\x00")).anomalies


def test_session_order_anomalies() -> None:
    before = Run([(True, publish("early")), (True, connect()), (False, connack())])
    assert before.anomalies.count("mqtt.unintroduced_message") == 1
    double = Run([(True, connect()), (False, connack()), (True, connect(clientid="other")), (True, publish("p"))])
    assert double.anomalies == ["mqtt.double_connect"]
    assert [f.get("clientid") for f in double.messages][-2:] == ["other", "plc-7"]  # the session keeps the first
    orphan = Run([(False, connack())])
    assert orphan.anomalies == ["mqtt.missing_connect"]
    reply = Run([(True, connect()), (False, connack()), (False, suback(7, 0))])
    assert reply.anomalies == ["mqtt.unmatched_response"]
    wrong = Run([(True, connect()), (False, connack()), (False, subscribe(1, ("x", 0)))])
    assert "mqtt.wrong_direction" in wrong.anomalies


def test_identity_carried_and_password_never_kept() -> None:
    r = Run([(True, connect(clientid="rtu-12", user="maint", password=b"hunter2")), (False, connack()),
             (True, publish("site/valve", b"open", qos=2, msgid=5)), (False, ack(5, 5)), (True, ack(6, 5)),
             (False, ack(7, 5))])  # fmt: skip
    assert all(f["clientid"] == "rtu-12" and f["username"] == "maint" for f in r.messages)
    assert "hunter2" not in repr(r.out)
    c = r.messages[0]
    assert c["username_present"] is True and c["password_present"] is True and "password" not in c
    # Request-to-answer latency from the capture timestamps Run gives its packets (STEP_NS apart), not a wall
    # clock: which messages are paired with their request, and with which one (each answer follows its request).
    durations = [m.duration_ns for m in r.out if isinstance(m, Message)]
    assert durations == [None, STEP_NS, None, STEP_NS, STEP_NS, STEP_NS]


def test_unanswered_requests_are_counted() -> None:
    r = Run([(True, connect()), (False, connack()), (True, publish("a", qos=1, msgid=1)),
             (True, subscribe(2, ("b/#", 0))), (True, pkt(0xC0, b""))])  # fmt: skip
    assert r.table.stats.decoder_counters["mqtt.unanswered_requests"] == 3


def test_topic_alias_resolved_per_connection() -> None:
    alias = b"\x23\x00\x04"
    r = Run([(True, connect(level=5)), (False, connack(v5=True)),
             (True, publish("plant/line2/temp", b"20", props=alias)), (True, publish("", b"21", props=alias)),
             (True, publish("", b"22", props=b"\x23\x00\x09"))])  # fmt: skip
    pubs = [f for f in r.messages if f["msgtype"] == 3]
    assert [p["topic"] for p in pubs] == ["plant/line2/temp", "plant/line2/temp", ""]
    assert pubs[1]["topic_from_alias"] is True
    assert r.anomalies == ["mqtt.unknown_topic_alias"]


def test_topic_aliases_are_capped() -> None:
    pubs = [(True, publish(f"t/{k}", props=b"\x23" + struct.pack(">H", k + 1))) for k in range(5)]
    r = Run([(True, connect(level=5)), (False, connack(v5=True)), *pubs], max_topic_aliases=3)
    assert r.anomalies.count("mqtt.topic_alias_overflow") == 2


def test_outstanding_packet_ids_are_capped() -> None:
    pubs = [(True, publish("t", qos=1, msgid=k)) for k in range(1, 8)]
    r = Run([(True, connect()), (False, connack()), *pubs], max_outstanding=4)
    assert r.anomalies.count("mqtt.outstanding_overflow") == 3


def test_subscription_intent() -> None:
    r = _one(subscribe(3, ("#", 0), ("$SYS/#", 0), ("plant/+/temp", 1), ("plant/a", 2)))
    sub = r.messages[-1]
    assert sub["topics"] == ["#", "$SYS/#", "plant/+/temp", "plant/a"]
    assert [x["is_wildcard"] for x in sub["topic_filters"]] == [True, True, True, False]
    assert [x["subscribes_all"] for x in sub["topic_filters"]] == [True, True, False, False]
    assert sub["subscribes_all"] is True and sub["is_wildcard"] is True


def test_midstream_pickup_infers_version_or_marks_it_unknown() -> None:
    tail = publish("x/y", bytes(300), qos=1, msgid=4)[100:]  # the end of a packet whose start was not captured
    r = Run([(True, tail), (True, publish("a/b", b"1")), (False, pkt(0x20, b"\x00\x00\x00"))], midstream=True)
    pubs = [f for f in r.messages if f["msgtype"] == 3]
    assert pubs[0]["topic"] == "a/b" and pubs[0]["protocol_version_name"] == "unknown"
    connack5 = r.messages[-1]
    assert connack5["protocol_version"] == 5 and connack5["protocol_version_inferred"] is True
    assert not r.anomalies


def test_found_by_content_on_another_port() -> None:
    r = Run([(True, connect()), (False, connack()), (True, publish("x"))], port=11883)
    assert r.types() == [1, 2, 3]


def test_payload_bytes_only_when_asked() -> None:
    segs = [(True, connect()), (False, connack()), (True, publish("t", b"temperature=21.5"))]
    assert "msg" not in Run(segs).messages[-1]
    f = Run(segs, max_payload_bytes=11).messages[-1]
    assert f["msg_text"] == "temperature" and f["msg_truncated"] is True


# -- fuzzing ---------------------------------------------------------------------------------------------------
SESSION = [
    connect(level=5, props=b"\x11\x00\x00\x00\x3c\x21\x00\x14"), connack(v5=True),
    subscribe(1, ("plant/#", 1)), suback(1, 1),
    publish("plant/a", b"v=1", qos=1, msgid=2, props=b"\x23\x00\x01"), ack(4, 2),
    publish("", b"v=2", qos=2, msgid=3, props=b"\x23\x00\x01"), ack(5, 3), ack(6, 3), ack(7, 3),
    pkt(0xC0, b""), pkt(0xD0, b""), pkt(0xE0, b"\x00"),
]  # fmt: skip
FROM_CLIENT = [True, False, True, False, True, False, True, False, True, False, True, False, True]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(SESSION) - 1),
    mutation=st.sampled_from(["flip", "length", "props", "flags", "truncate", "insert"]),
    at=st.integers(0, 400),
    value=st.integers(0, 255),
    split=st.integers(1, 64),
)
def test_mutated_packets_never_raise(which: int, mutation: str, at: int, value: int, split: int) -> None:
    packets = list(SESSION)
    p = bytearray(packets[which])
    if mutation == "flip":
        p[at % len(p)] ^= 1 << (value % 8)
    elif mutation == "length":  # remaining length bytes replaced by a random (maybe 5-byte) varint
        p[1:2] = bytes([value | 0x80] * (1 + at % 5)) + bytes([value & 0x7F])
    elif mutation == "props" and len(p) > 10:
        p[min(len(p) - 1, 10 + at % 8)] = value
    elif mutation == "flags":
        p[0] = (p[0] & 0xF0) | (value & 0x0F)
    elif mutation == "truncate":
        p = p[: at % len(p)]
    else:
        p[at % len(p) : at % len(p)] = bytes([value]) * (1 + at % 7)
    packets[which] = bytes(p)
    stream_c = b"".join(x for x, c in zip(packets, FROM_CLIENT, strict=True) if c)
    stream_s = b"".join(x for x, c in zip(packets, FROM_CLIENT, strict=True) if not c)
    segs = chop(stream_c, split) + [(False, stream_s[i : i + split]) for i in range(0, len(stream_s), split)]
    r = Run(segs)
    assert r.table.stats.decoder_exceptions == 0
    unknown = set(r.anomalies) - set(REGISTRY.anomalies)
    assert not unknown, f"anomaly names outside the registry: {unknown}"
    for a in r.out:
        if isinstance(a, Anomaly):
            assert a.reason


def test_random_bytes_on_the_port_are_a_mismatch_not_a_crash() -> None:
    rng = random.Random(7)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        r = Run([(True, junk), (False, junk[::-1])])
        assert r.table.stats.decoder_exceptions == 0
        assert set(r.anomalies) <= set(REGISTRY.anomalies)


def test_truncated_captures(tmp_path: Path) -> None:
    """Real captures cut mid-record and mid-stream: decoded as far as they go, never an exception."""
    for rel in ("zeek/mqtt.pcap", "suricata-verify/mqtt-limit-2/input.pcap", "suricata-verify/mqtt5-pub-mosquittoprops/input.pcap"):
        data = (SHARED_PCAPS / rel).read_bytes()
        for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
            p = tmp_path / f"cut{cut}.pcap"
            p.write_bytes(data[:cut])
            _col, stats, _report, _ = replay([p])
            assert stats["tcp"]["decoder_exceptions"] == 0
            assert set(stats["decode_errors_by_name"]) <= set(REGISTRY.anomalies) | {"mqtt.truncated_stream"}
