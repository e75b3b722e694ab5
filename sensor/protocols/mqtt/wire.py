"""MQTT control packet layouts (MQTT 3.1.1 OASIS Standard section 3, MQTT 5.0 OASIS Standard section 3) and their
pure decoding into registry fields.

A body decoder fills the fields dict as far as the bytes allow. A layout that cannot be followed any further
(a length past the end, an unknown property whose size is unknowable) raises ``Malformed``, caught by the decoder,
which keeps the fields decoded so far; problems that do not stop decoding are appended to ``problems``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sensor.protocols.mqtt.codes import (
    AUTH,
    CONNACK,
    CONNACK_RETURN_CODES,
    CONNECT,
    DISCONNECT,
    PROPERTIES,
    PROTOCOL_NAMES,
    PUBLISH,
    REASON_CODES,
    REASON_ZERO,
    REPEATABLE,
    SECRET_PROPERTIES,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    VERSION_NAMES,
)  # fmt: skip

Fields = dict[str, Any]
Problems = list[tuple[str, str]]
MAX_BINARY_HEX = 256  # bytes of correlation data kept (as hex)


class Malformed(Exception):
    """Raised inside the wire functions only; the decoder turns it into an Anomaly."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def _trunc(what: str) -> Malformed:
    return Malformed("mqtt.truncated_packet", f"{what} runs past the end of the packet")


def varint(b: bytes, pos: int, end: int) -> tuple[int, int]:
    """5.0 section 1.5.5 variable byte integer (at most four bytes)."""
    value = shift = 0
    for i in range(4):
        if pos + i >= end:
            raise _trunc("variable byte integer")
        c = b[pos + i]
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, pos + i + 1
        shift += 7
    raise Malformed("mqtt.invalid_remaining_length", "variable byte integer with a fifth continuation byte")


def u16(b: bytes, pos: int, end: int, what: str) -> int:
    if pos + 2 > end:
        raise _trunc(what)
    return (b[pos] << 8) | b[pos + 1]


def string(b: bytes, pos: int, end: int, what: str, problems: Problems) -> tuple[str, int]:
    """3.1.1 section 1.5.3 UTF-8 encoded string: two-byte length, then the bytes."""
    if pos + 2 > end:
        raise _trunc(what + " length")
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    if pos + n > end:
        raise _trunc(f"{what} of {n} bytes")
    raw = b[pos : pos + n]
    try:
        return raw.decode(), pos + n
    except UnicodeDecodeError:
        problems.append(("mqtt.invalid_utf8", f"{what} is not valid UTF-8"))
        return raw.decode("utf-8", "replace"), pos + n


def binary(b: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """5.0 section 1.5.6 binary data: two-byte length, then the bytes."""
    if pos + 2 > end:
        raise _trunc(what + " length")
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    if pos + n > end:
        raise _trunc(f"{what} of {n} bytes")
    return b[pos : pos + n], pos + n


def properties(b: bytes, pos: int, end: int, where: int | str, problems: Problems, limit: int) -> tuple[Fields, int]:
    """5.0 section 2.2.2: property length (variable byte integer), then id/value pairs (table 2-4)."""
    plen, pos = varint(b, pos, end)
    stop = pos + plen
    if stop > end:
        raise Malformed("mqtt.invalid_property_length", f"property length {plen} exceeds the {end - pos} bytes left")
    props: Fields = {}
    seen: set[int] = set()
    while pos < stop:
        pid = b[pos]
        pos += 1
        meta = PROPERTIES.get(pid)
        if meta is None:
            raise Malformed("mqtt.invalid_property", f"unknown property id 0x{pid:02x}")
        name, kind, allowed = meta
        if where not in allowed:
            problems.append(("mqtt.invalid_property", f"property {name} not allowed in this packet"))
        if pid in seen and pid not in REPEATABLE:
            problems.append(("mqtt.invalid_property", f"property {name} repeated"))
        seen.add(pid)
        try:
            if kind == "B":
                if pos >= stop:
                    raise _trunc(name)
                value: Any = b[pos]
                pos += 1
            elif kind == "H":
                value = u16(b, pos, stop, name)
                pos += 2
            elif kind == "I":
                if pos + 4 > stop:
                    raise _trunc(name)
                value = int.from_bytes(b[pos : pos + 4], "big")
                pos += 4
            elif kind == "V":
                value, pos = varint(b, pos, stop)
            elif kind == "S":
                value, pos = string(b, pos, stop, name, problems)
            elif kind == "D":
                raw, pos = binary(b, pos, stop, name)
                if pid in SECRET_PROPERTIES:
                    props[name + "_length"] = len(raw)
                    continue
                value = raw[:MAX_BINARY_HEX].hex()
            else:  # "P": user property, a string pair
                key, pos = string(b, pos, stop, name + " key", problems)
                val, pos = string(b, pos, stop, name + " value", problems)
                up = props.setdefault(name, {})
                if len(up) < limit:
                    old = up.get(key)
                    up[key] = val if old is None else [*(old if isinstance(old, list) else [old]), val]
                continue
        except Malformed as e:
            if e.name == "mqtt.truncated_packet":
                raise Malformed("mqtt.invalid_property_length", f"property {name} runs past the property length") from None
            raise
        if pid in REPEATABLE:
            props.setdefault(name, []).append(value)
        else:
            props[name] = value
    return props, stop


def reason_name(mtype: int, code: int) -> str:
    if code == 0:
        return REASON_ZERO.get(mtype, "Success")
    return REASON_CODES.get(code, "unknown")


def _filter_flags(t: str) -> tuple[bool, bool]:
    """Derived intent of a topic filter: wildcard, and whether it asks for everything (or the broker's $SYS)."""
    wild = "#" in t or "+" in t
    if not wild:
        return False, False
    if t.startswith("$share/"):  # 5.0 section 4.8.2 shared subscription: $share/{group}/{filter}
        t = t.split("/", 2)[2] if t.count("/") >= 2 else t
    return wild, t in ("#", "$SYS/#", "+/#")


# -- bodies ------------------------------------------------------------------------------------------------------
# Each: (body, flags, version (3/4/5), fields, problems, limit) -> None. ``version`` is 4 when unknown.


def connect(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 section 3.1 / 5.0 section 3.1 CONNECT: protocol name, level, flags, keep alive, [properties], payload."""
    end = len(b)
    if end < 2:
        raise _trunc("protocol name")
    n = (b[0] << 8) | b[1]
    name = b[2 : 2 + n]
    if 2 + n > end:
        raise _trunc("protocol name")
    f["protoname"] = name.decode("latin-1")
    pos = 2 + n
    if pos + 4 > end:
        raise _trunc("protocol level, flags and keep alive")
    level, cf = b[pos], b[pos + 1]
    f["kalive"] = (b[pos + 2] << 8) | b[pos + 3]
    pos += 4
    f["protocol_version"] = level
    f["protocol_version_name"] = VERSION_NAMES.get(level, "unknown")
    expected = PROTOCOL_NAMES.get(name)
    if expected is None:
        problems.append(("mqtt.invalid_protocol_name", f"protocol name {f['protoname']!r}"))
    elif not (level == expected or (expected == 4 and level == 5)):
        problems.append(("mqtt.invalid_protocol_version", f"protocol level {level} with protocol name {f['protoname']}"))
    f["conflags"] = cf
    f["username_present"] = uname = bool(cf & 0x80)
    f["password_present"] = passwd = bool(cf & 0x40)
    f["will_retain"] = bool(cf & 0x20)
    f["will_qos"] = wqos = (cf >> 3) & 3
    f["will_flag"] = will = bool(cf & 0x04)
    f["clean_session"] = bool(cf & 0x02)
    if cf & 0x01:
        problems.append(("mqtt.invalid_connect_flags", "reserved connect flag set"))
    if wqos == 3:
        problems.append(("mqtt.invalid_qos", "will QoS 3"))
    if not will and (wqos or cf & 0x20):
        problems.append(("mqtt.invalid_connect_flags", "will QoS or will retain without the will flag"))
    if passwd and not uname and level != 5:
        problems.append(("mqtt.invalid_connect_flags", "password flag without user name flag"))
    v5 = level == 5
    if v5:
        f["properties"], pos = properties(b, pos, end, CONNECT, problems, limit)
    f["clientid"], pos = string(b, pos, end, "client id", problems)
    if will:
        if v5:
            f["will_properties"], pos = properties(b, pos, end, "will", problems, limit)
        f["willtopic"], pos = string(b, pos, end, "will topic", problems)
        msg, pos = binary(b, pos, end, "will message")
        f["will_payload_length"] = len(msg)
    if uname:
        f["username"], pos = string(b, pos, end, "user name", problems)
    if passwd:
        _secret, pos = binary(b, pos, end, "password")  # skipped: never kept
    if pos != end:
        problems.append(("mqtt.invalid_length", f"{end - pos} bytes after the CONNECT payload"))


def connack(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 section 3.2 / 5.0 section 3.2 CONNACK: acknowledge flags, return or reason code, [properties]."""
    end = len(b)
    if end < 2:
        raise _trunc("CONNACK flags and code")
    af, code = b[0], b[1]
    f["session_present"] = bool(af & 1)
    if af & 0xFE:
        problems.append(("mqtt.reserved_flags", f"CONNACK acknowledge flags 0x{af:02x} reserved bits set"))
    if version == 5:
        f["reason_code"] = code
        f["reason_code_name"] = reason_name(CONNACK, code)
        f["is_error"] = code >= 0x80
        if end > 2:
            f["properties"], _pos = properties(b, 2, end, CONNACK, problems, limit)
    else:
        f["conack_val"] = code
        f["conack_val_name"] = CONNACK_RETURN_CODES.get(code, "reserved")
        f["is_error"] = code != 0
        if end != 2:
            problems.append(("mqtt.invalid_length", f"CONNACK remaining length {end}, expected 2"))


def publish(
    b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int, total: int = -1, keep: int = 0
) -> None:
    """3.1.1 section 3.3 / 5.0 section 3.3 PUBLISH: topic, packet id (QoS > 0), [properties], payload.

    ``b`` may be only the head of a packet of ``total`` bytes (one too large to buffer); ``keep`` payload bytes
    are kept in ``msg``.
    """
    end = len(b)
    if total < 0:
        total = end
    f["topic"], pos = string(b, 0, end, "topic", problems)
    if flags & 6:
        f["msgid"] = u16(b, pos, end, "packet identifier")
        pos += 2
        if f["msgid"] == 0:
            problems.append(("mqtt.missing_packet_id", "PUBLISH QoS > 0 with packet identifier 0"))
    if version == 5:
        props, pos = properties(b, pos, end, PUBLISH, problems, limit)
        f["properties"] = props
        alias = props.get("topic_alias")
        if alias is not None:
            f["topic_alias"] = alias
    f["payload_length"] = total - pos
    if keep:
        data = b[pos : pos + keep]
        f["msg"] = data.hex()
        with contextlib.suppress(UnicodeDecodeError):
            f["msg_text"] = data.decode()
        f["msg_truncated"] = total - pos > len(data)


def ack(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 sections 3.4-3.7 / 5.0 sections 3.4-3.7 PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, [reason, properties]."""
    end = len(b)
    f["msgid"] = u16(b, 0, end, "packet identifier")
    if version == 5:
        code = b[2] if end > 2 else 0
        f["reason_code"] = code
        f["reason_code_name"] = reason_name(f["msgtype"], code)
        f["is_error"] = code >= 0x80
        if end > 3:
            f["properties"], _ = properties(b, 3, end, f["msgtype"], problems, limit)
    elif end != 2:
        problems.append(("mqtt.invalid_length", f"remaining length {end}, expected 2"))


def _filters(b: bytes, pos: int, end: int, f: Fields, problems: Problems, limit: int, options: bool, version: int) -> None:
    filters: list[Fields] = []
    topics: list[str] = []
    wild_any = all_any = False
    count = 0
    while pos < end:
        t, pos = string(b, pos, end, "topic filter", problems)
        item: Fields = {"topic": t}
        if options:
            if pos >= end:
                raise _trunc("subscription options")
            o = b[pos]
            pos += 1
            item["qos"] = o & 3
            if o & 3 == 3:
                problems.append(("mqtt.invalid_qos", f"subscription to {t!r} with QoS 3"))
            if version == 5:
                item["no_local"] = bool(o & 4)
                item["retain_as_published"] = bool(o & 8)
                item["retain_handling"] = (o >> 4) & 3
                if o & 0xC0:
                    problems.append(("mqtt.invalid_subscription", f"reserved subscription option bits 0x{o:02x}"))
            elif o & 0xFC:
                problems.append(("mqtt.invalid_subscription", f"reserved requested QoS bits 0x{o:02x}"))
        wild, everything = _filter_flags(t)
        item["is_wildcard"] = wild
        item["subscribes_all"] = everything
        wild_any |= wild
        all_any |= everything
        count += 1
        if count <= limit:
            filters.append(item)
            topics.append(t)
    f["topic_filters"] = filters
    f["topics"] = topics
    f["is_wildcard"] = wild_any
    f["subscribes_all"] = all_any
    if not count:
        problems.append(("mqtt.invalid_subscription", "no topic filter"))


def subscribe(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 section 3.8 / 5.0 section 3.8 SUBSCRIBE: packet id, [properties], (topic filter, options)+."""
    end = len(b)
    f["msgid"] = u16(b, 0, end, "packet identifier")
    pos = 2
    if version == 5:
        f["properties"], pos = properties(b, pos, end, SUBSCRIBE, problems, limit)
    _filters(b, pos, end, f, problems, limit, True, version)


def unsubscribe(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 section 3.10 / 5.0 section 3.10 UNSUBSCRIBE: packet id, [properties], topic filter+."""
    end = len(b)
    f["msgid"] = u16(b, 0, end, "packet identifier")
    pos = 2
    if version == 5:
        f["properties"], pos = properties(b, pos, end, UNSUBSCRIBE, problems, limit)
    _filters(b, pos, end, f, problems, limit, False, version)


def suback(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 section 3.9 / 5.0 section 3.9 SUBACK (and 5.0 section 3.11 UNSUBACK): packet id, [properties], codes."""
    end = len(b)
    mtype = f["msgtype"]
    f["msgid"] = u16(b, 0, end, "packet identifier")
    pos = 2
    if version == 5:
        f["properties"], pos = properties(b, pos, end, mtype, problems, limit)
        codes = list(b[pos : pos + limit]) if end > pos else []
        f["reason_codes"] = codes
        f["reason_code_names"] = [reason_name(mtype, c) for c in codes]
        f["is_error"] = any(c >= 0x80 for c in b[pos:end])
    elif mtype == SUBACK:
        codes = list(b[pos : pos + limit])
        f["suback_qos"] = codes
        f["is_error"] = 0x80 in b[pos:end]
        bad = [c for c in b[pos:end] if c not in (0, 1, 2, 0x80)]
        if bad:
            problems.append(("mqtt.invalid_qos", f"SUBACK return code {bad[0]}"))
    elif end != 2:  # 3.1.1 UNSUBACK
        problems.append(("mqtt.invalid_length", f"UNSUBACK remaining length {end}, expected 2"))
    if mtype == SUBACK and end <= pos:
        problems.append(("mqtt.invalid_length", "SUBACK without return codes"))


def empty(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """3.1.1 sections 3.12-3.14 PINGREQ, PINGRESP, DISCONNECT: no variable header (5.0: DISCONNECT has one)."""
    if b:
        problems.append(("mqtt.invalid_length", f"remaining length {len(b)}, expected 0"))


def reason_and_properties(b: bytes, flags: int, version: int, f: Fields, problems: Problems, limit: int) -> None:
    """5.0 section 3.14 DISCONNECT and 3.15 AUTH: [reason code, [properties]] (absent means 0)."""
    if version != 5:
        empty(b, flags, version, f, problems, limit)
        return
    end = len(b)
    mtype = f["msgtype"]
    code = b[0] if end else 0
    f["reason_code"] = code
    f["reason_code_name"] = reason_name(mtype, code)
    f["is_error"] = code >= 0x80
    if end > 1:
        f["properties"], _ = properties(b, 1, end, mtype, problems, limit)


Body = Callable[[bytes, int, int, Fields, Problems, int], None]
BODIES: tuple[Body | None, ...] = (
    None, connect, connack, publish, ack, ack, ack, ack, subscribe, suback, unsubscribe, suback, empty, empty,
    reason_and_properties, reason_and_properties,
)  # fmt: skip
assert BODIES[DISCONNECT] is reason_and_properties and BODIES[AUTH] is reason_and_properties
assert BODIES[UNSUBACK] is suback
