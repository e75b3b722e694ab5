"""MQTT code tables (MQTT 3.1.1 OASIS Standard, MQTT 5.0 OASIS Standard). Tables only, no logic."""

from __future__ import annotations

# 3.1.1 section 2.2.1 / 5.0 section 2.1.2: control packet types, named as Wireshark's mqtt dissector names them.
MSGTYPE_NAMES: tuple[str, ...] = (
    "Reserved", "Connect Command", "Connect Ack", "Publish Message", "Publish Ack", "Publish Received",
    "Publish Release", "Publish Complete", "Subscribe Request", "Subscribe Ack", "Unsubscribe Request",
    "Unsubscribe Ack", "Ping Request", "Ping Response", "Disconnect Req", "Authentication Exchange",
)  # fmt: skip
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# 3.1.1 section 2.2.2 / 5.0 section 2.1.3: the flags each type must carry (PUBLISH: any but QoS 3).
REQUIRED_FLAGS: tuple[int, ...] = (0, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)

# Who may send each type: 1 client only, 2 server only, 3 both (5.0 section 2.1.2; 3.1.1 DISCONNECT is client only).
SENDER: tuple[int, ...] = (3, 1, 2, 3, 3, 3, 3, 3, 1, 2, 1, 2, 1, 2, 3, 3)

# Protocol name and level (3.1 section 3.1, 3.1.1 section 3.1.2.1-2, 5.0 section 3.1.2.1-2).
PROTOCOL_NAMES: dict[bytes, int] = {b"MQTT": 4, b"MQIsdp": 3}  # name -> the level it goes with (MQTT: 4 or 5)
VERSION_NAMES: dict[int | None, str] = {3: "3.1", 4: "3.1.1", 5: "5.0", None: "unknown"}

# 3.1.1 section 3.2.2.3: CONNACK return codes (Wireshark's mqtt.conack.val names).
CONNACK_RETURN_CODES: dict[int, str] = {
    0: "Connection Accepted",
    1: "Connection Refused: unacceptable protocol version",
    2: "Connection Refused: identifier rejected",
    3: "Connection Refused: server unavailable",
    4: "Connection Refused: bad user name or password",
    5: "Connection Refused: not authorized",
}
# 3.1.1 section 3.9.3: SUBACK return codes.
SUBACK_RETURN_CODES: dict[int, str] = {
    0: "Success - Maximum QoS 0", 1: "Success - Maximum QoS 1", 2: "Success - Maximum QoS 2", 0x80: "Failure",
}  # fmt: skip

# 5.0 section 2.4, table 2-6: reason codes. Code 0 means something else to each packet type (below).
REASON_CODES: dict[int, str] = {
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x11: "No subscription existed",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}
REASON_ZERO: dict[int, str] = {SUBACK: "Granted QoS 0", DISCONNECT: "Normal disconnection"}  # else "Success"

# 5.0 section 2.2.2.2, table 2-4: property id -> (name, value type, packet types it may appear in).
# Types: B byte, H two-byte integer, I four-byte integer, V variable byte integer, S UTF-8 string,
# D binary data, P UTF-8 string pair. "will" stands for the will properties of CONNECT.
_ALL = frozenset(range(1, 16)) | {"will"}
PROPERTIES: dict[int, tuple[str, str, frozenset]] = {
    0x01: ("payload_format_indicator", "B", frozenset({PUBLISH, "will"})),
    0x02: ("message_expiry_interval", "I", frozenset({PUBLISH, "will"})),
    0x03: ("content_type", "S", frozenset({PUBLISH, "will"})),
    0x08: ("response_topic", "S", frozenset({PUBLISH, "will"})),
    0x09: ("correlation_data", "D", frozenset({PUBLISH, "will"})),
    0x0B: ("subscription_identifier", "V", frozenset({PUBLISH, SUBSCRIBE})),
    0x11: ("session_expiry_interval", "I", frozenset({CONNECT, CONNACK, DISCONNECT})),
    0x12: ("assigned_client_identifier", "S", frozenset({CONNACK})),
    0x13: ("server_keep_alive", "H", frozenset({CONNACK})),
    0x15: ("authentication_method", "S", frozenset({CONNECT, CONNACK, AUTH})),
    0x16: ("authentication_data", "D", frozenset({CONNECT, CONNACK, AUTH})),
    0x17: ("request_problem_information", "B", frozenset({CONNECT})),
    0x18: ("will_delay_interval", "I", frozenset({"will"})),
    0x19: ("request_response_information", "B", frozenset({CONNECT})),
    0x1A: ("response_information", "S", frozenset({CONNACK})),
    0x1C: ("server_reference", "S", frozenset({CONNACK, DISCONNECT})),
    0x1F: ("reason_string", "S", frozenset({CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH})),
    0x21: ("receive_maximum", "H", frozenset({CONNECT, CONNACK})),
    0x22: ("topic_alias_maximum", "H", frozenset({CONNECT, CONNACK})),
    0x23: ("topic_alias", "H", frozenset({PUBLISH})),
    0x24: ("maximum_qos", "B", frozenset({CONNACK})),
    0x25: ("retain_available", "B", frozenset({CONNACK})),
    0x26: ("user_properties", "P", _ALL),
    0x27: ("maximum_packet_size", "I", frozenset({CONNECT, CONNACK})),
    0x28: ("wildcard_subscription_available", "B", frozenset({CONNACK})),
    0x29: ("subscription_identifier_available", "B", frozenset({CONNACK})),
    0x2A: ("shared_subscription_available", "B", frozenset({CONNACK})),
}
REPEATABLE = frozenset({0x26, 0x0B})  # user properties; subscription identifiers in a PUBLISH
SECRET_PROPERTIES = frozenset({0x16})  # authentication data: kept as its length only

# TLS (RFC 8446 / RFC 5246) for the MQTT over TLS flows: versions and the cipher suites worth naming.
TLS_VERSIONS: dict[int, str] = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
TLS_CIPHERS: dict[int, str] = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x0005: "TLS_RSA_WITH_RC4_128_SHA",
    0x0004: "TLS_RSA_WITH_RC4_128_MD5",
    0x0000: "TLS_NULL_WITH_NULL_NULL",
}
