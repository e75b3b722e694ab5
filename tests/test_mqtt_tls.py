"""MQTT over TLS on 8883: handshake metadata only, checked against tshark on a real OpenSSL handshake.

The ClientHello and ServerHello come from Python's ssl module (OpenSSL) talking to itself through memory BIOs,
written into a capture with scapy (tests only); tshark's tls dissector is the oracle for SNI, versions and cipher.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from scapy.all import IP, TCP, Ether, wrpcap

from tests.replay_helpers import replay, tshark_fields


def _handshake(tmp: Path) -> tuple[bytes, bytes]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp / "k.pem", tmp / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=broker.plant.local"], check=True, capture_output=True)  # fmt: skip
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.set_alpn_protocols(["mqtt"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname="broker.plant.local")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = c_out.read()
    s_in.write(hello)
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()
    return hello, s_out.read()


def _capture(path: Path, client_bytes: bytes, server_bytes: bytes, port: int = 8883) -> None:
    c, s = "10.1.1.5", "10.1.1.9"
    cs, ss = 1000, 7000
    pkts = [
        Ether() / IP(src=c, dst=s) / TCP(sport=51000, dport=port, flags="S", seq=cs - 1),
        Ether() / IP(src=s, dst=c) / TCP(sport=port, dport=51000, flags="SA", seq=ss - 1, ack=cs),
        Ether() / IP(src=c, dst=s) / TCP(sport=51000, dport=port, flags="A", seq=cs, ack=ss),
        Ether() / IP(src=c, dst=s) / TCP(sport=51000, dport=port, flags="PA", seq=cs, ack=ss) / client_bytes,
        Ether() / IP(src=s, dst=c) / TCP(sport=port, dport=51000, flags="PA", seq=ss, ack=cs + len(client_bytes)) / server_bytes,
    ]  # fmt: skip
    for k, p in enumerate(pkts):
        p.time = 1_700_000_000 + k / 1000
    wrpcap(str(path), pkts)


def test_tls_handshake_metadata_matches_tshark(tmp_path: Path) -> None:
    hello, answer = _handshake(tmp_path)
    cap = tmp_path / "mqtt_tls.pcap"
    _capture(cap, hello, answer)
    col, stats, _, docs = replay([cap], events=True)
    assert stats["tcp"]["decoder_exceptions"] == 0
    ours = {m.fields["tls_handshake"]: m.fields for m in col.messages}
    assert set(ours) == {"client_hello", "server_hello"}
    assert all(m.protocol == "mqtt" for m in col.messages)
    rows = tshark_fields(cap, ["tls.handshake.type", "tls.handshake.extensions_server_name",
                               "tls.handshake.extensions_alpn_str", "tls.handshake.ciphersuite",
                               "tls.handshake.extensions.supported_version"], "tls.handshake.type == 1 || tls.handshake.type == 2",
                         ["-d", "tcp.port==8883,tls"])  # fmt: skip
    by_type = {r[0].split(",")[0]: r for r in rows}
    ch, sh = by_type["1"], by_type["2"]
    assert ours["client_hello"]["tls_sni"] == ch[1] == "broker.plant.local"
    assert ours["client_hello"]["tls_alpn"] == ch[2].split(",")
    assert ours["client_hello"]["tls_supported_versions"] == [int(v, 16) for v in ch[4].split(",")]
    assert ours["client_hello"]["tls_cipher_suites_count"] == len(ch[3].split(","))
    assert ours["server_hello"]["tls_cipher"] == int(sh[3], 16)
    assert ours["server_hello"]["tls_version"] == int(sh[4], 16)
    assert ours["server_hello"]["tls_version_name"] == "TLS 1.3"
    assert {d["event"]["action"] for d in docs} == {"tls-client-hello", "tls-server-hello"}


def test_plain_mqtt_on_the_tls_port_is_decoded(tmp_path: Path) -> None:
    connect = bytes.fromhex("101000044d5154540402003c000470756d70")  # CONNECT 3.1.1, client id "pump"
    cap = tmp_path / "plain.pcap"
    _capture(cap, connect, bytes.fromhex("20020000"))
    col, _stats, _, _ = replay([cap])
    assert [m.fields.get("msgtype") for m in col.messages] == [1, 2]
    assert col.messages[0].fields["clientid"] == "pump"


def test_garbage_on_the_tls_port_is_an_anomaly(tmp_path: Path) -> None:
    cap = tmp_path / "junk.pcap"
    _capture(cap, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad\r\n\r\n")
    col, stats, _, _ = replay([cap])
    assert [a.name for a in col.anomalies] == ["mqtt.tls_malformed"]
    assert stats["tcp"]["decoder_exceptions"] == 0
