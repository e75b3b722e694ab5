"""MQTT over TLS (port 8883): the flow is reported with its TLS handshake metadata only.

The payload is encrypted, so the decoder reads the ClientHello (RFC 8446 section 4.1.2: SNI, ALPN, offered
versions and cipher count) and the ServerHello (section 4.1.3: chosen version and cipher suite), emits each as an
``mqtt`` message with ``tls_*`` fields, and then ignores the rest of the flow. A client that speaks plain MQTT on
the TLS port is handed to the MQTT decoder instead, so it is decoded (and visible to the rules).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sensor.messages import Anomaly, FlowInfo, Message, PacketRef
from sensor.messages.mqtt import REGISTRY
from sensor.protocols.base import Probe
from sensor.protocols.mqtt.codes import TLS_CIPHERS, TLS_VERSIONS
from sensor.protocols.mqtt.decoder import MqttDecoder, MqttState

MAX_HANDSHAKE = 1 << 16  # bytes of handshake records buffered per direction
HANDSHAKE = 22
CLIENT_HELLO, SERVER_HELLO = 1, 2


class _Short(Exception):
    pass


def _u16(b: bytes, p: int) -> int:
    if p + 2 > len(b):
        raise _Short
    return (b[p] << 8) | b[p + 1]


def _extensions(b: bytes, p: int, f: dict[str, Any], client: bool) -> None:
    """RFC 8446 section 4.2: server_name (0, RFC 6066), ALPN (16, RFC 7301), supported_versions (43)."""
    if p + 2 > len(b):
        return
    end = min(len(b), p + 2 + _u16(b, p))
    p += 2
    while p + 4 <= end:
        etype, elen = _u16(b, p), _u16(b, p + 2)
        d = b[p + 4 : p + 4 + elen]
        p += 4 + elen
        if etype == 0 and client and len(d) >= 5 and d[2] == 0:
            n = _u16(d, 3)
            f["tls_sni"] = d[5 : 5 + n].decode("utf-8", "replace")
        elif etype == 16 and client and len(d) >= 2:
            q, names = 2, []
            while q < len(d) and len(names) < 16:
                n = d[q]
                names.append(d[q + 1 : q + 1 + n].decode("utf-8", "replace"))
                q += 1 + n
            f["tls_alpn"] = names
        elif etype == 43:
            if client and d:
                f["tls_supported_versions"] = [_u16(d, 1 + 2 * k) for k in range(min(d[0], len(d) - 1) // 2)]
            elif not client and len(d) >= 2:
                f["tls_version"] = _u16(d, 0)


def parse_hello(hs: bytes) -> dict[str, Any] | None:
    """A ClientHello or ServerHello handshake message (type, 3-byte length, body) -> fields; None if neither."""
    htype = hs[0]
    if htype not in (CLIENT_HELLO, SERVER_HELLO):
        return None
    client = htype == CLIENT_HELLO
    f: dict[str, Any] = {
        "msgtype_name": "TLS Client Hello" if client else "TLS Server Hello", "transport_security": "tls",
        "tls_handshake": "client_hello" if client else "server_hello",
    }  # fmt: skip
    try:
        f["tls_version"] = _u16(hs, 4)
        p = 4 + 2 + 32
        if p >= len(hs):
            raise _Short
        p += 1 + hs[p]  # session id
        if client:
            n = _u16(hs, p)
            f["tls_cipher_suites_count"] = n // 2
            p += 2 + n
            if p >= len(hs):
                raise _Short
            p += 1 + hs[p]  # compression methods
        else:
            f["tls_cipher"] = c = _u16(hs, p)
            f["tls_cipher_name"] = TLS_CIPHERS.get(c, f"0x{c:04x}")
            p += 3
        _extensions(hs, p, f, client)
    except _Short:
        pass
    f["tls_version_name"] = TLS_VERSIONS.get(f.get("tls_version", -1), "unknown")
    return f


class TlsState:
    __slots__ = ("bufs", "done", "flow", "inner")

    def __init__(self, flow: FlowInfo) -> None:
        self.flow = flow
        self.bufs = [b"", b""]
        self.done = [False, False]
        self.inner: MqttState | None = None


class MqttTlsDecoder:
    name = "mqtt_tls"
    transport = "tcp"
    registry = REGISTRY

    def __init__(self, **mqtt_options: Any) -> None:
        self.mqtt = MqttDecoder(**mqtt_options)

    def probe(self, data: bytes, from_client: bool) -> Probe:
        return Probe.NO  # by port only: TLS elsewhere is not ours to claim

    def new_state(self, flow: FlowInfo) -> TlsState:
        return TlsState(flow)

    def feed(
        self, state: TlsState, from_client: bool, data: bytes, ts: int, packet: PacketRef, gap: bool
    ) -> Iterable[Message | Anomaly]:
        if state.inner is not None:
            return self.mqtt.feed(state.inner, from_client, data, ts, packet, gap)
        i = 0 if from_client else 1
        if state.done[i]:
            return ()
        buf = state.bufs[i] + data
        if not buf:  # nothing to look at yet (an empty delivery)
            return ()
        first = from_client and not state.bufs[i] and not state.bufs[1 - i] and not state.done[1 - i]
        if first and self.mqtt.probe(buf, True) is Probe.YES:  # plain MQTT on the TLS port
            state.inner = self.mqtt.new_state(state.flow)
            return self.mqtt.feed(state.inner, from_client, buf, ts, packet, gap)
        if buf[0] != HANDSHAKE or (len(buf) > 1 and buf[1] != 3):
            state.done = [True, True]
            return (Anomaly(ts, "mqtt", state.flow, from_client, "mqtt.tls_malformed",
                            f"first bytes 0x{buf[:3].hex()} are not a TLS handshake record", packet,
                            {"transport_security": "tls"}),)  # fmt: skip
        # Join the handshake fragments of consecutive records (RFC 8446 section 5.1) until one message is whole.
        hs = b""
        p = 0
        while p + 5 <= len(buf) and buf[p] == HANDSHAKE:
            n = (buf[p + 3] << 8) | buf[p + 4]
            hs += buf[p + 5 : p + 5 + n]
            p += 5 + n
            if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                break
        if len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4], "big"):
            if len(buf) > MAX_HANDSHAKE:
                state.done[i] = True
                state.bufs[i] = b""
                return ()
            state.bufs[i] = buf
            return ()
        state.bufs[i] = b""
        state.done[i] = True
        f = parse_hello(hs)
        if f is None:
            return ()
        return (Message(ts, "mqtt", state.flow, from_client, f, packet),)

    def close(self, state: TlsState, ts: int, packet: PacketRef) -> Iterable[Message | Anomaly]:
        if state.inner is not None:
            return self.mqtt.close(state.inner, ts, packet)
        return ()

    def stats(self, state: TlsState) -> dict[str, int]:
        if state.inner is not None:
            return self.mqtt.stats(state.inner)
        return {"tls_flows": 1}
