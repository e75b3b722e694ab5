"""Elasticsearch delivery: exactly once through faults, outages, kills and full spools; dead letters; TLS; secrets.

Runs against tests/es_server.py (a stand-in on 127.0.0.1), with millisecond backoff from the sink settings.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from sensor.cli import main
from sensor.config import ConfigError, load_config
from sensor.outputs import es_templates
from sensor.outputs.elasticsearch import ElasticsearchSink, connect, doc_id, make_client
from sensor.outputs.spool import Spool
from tests.es_helpers import MODBUS_CAPTURES, fast_settings, replay_into
from tests.es_server import EsServer, free_port

STREAMS = {"ics_sensor.event": "logs-ics_sensor.event-default", "ics_sensor.alert": "logs-ics_sensor.alert-default",
           "ics_sensor.stats": "metrics-ics_sensor.stats-default", "ics_sensor.asset": "logs-ics_sensor.asset-default"}  # fmt: skip


def expected_ids(docs: list[dict[str, Any]], namespace: str = "default") -> Counter[str]:
    """The _id each produced document must arrive under (stats documents carry sink counters: compared by count)."""
    out: Counter[str] = Counter()
    for d in docs:
        ds = d["event"]["dataset"]
        if ds == "ics_sensor.stats":
            continue
        typ = STREAMS[ds].split("-")[0]
        out[doc_id({**d, "data_stream": {"type": typ, "dataset": ds, "namespace": namespace}})] += 1
    return out


def wait_for(pred: Any, what: str, limit: float = 30.0) -> None:
    """Poll a condition (never a timing assertion: the limit only stops a hung test)."""
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def check_exactly_once(es: EsServer, docs: list[dict[str, Any]]) -> None:
    want = expected_ids(docs)
    assert max(want.values()) == 1, "the captures should not produce two identical documents"
    got = Counter(i for s, i, _d in es.state.docs() if not s.startswith("metrics-"))
    assert got == want
    by_stream = Counter(s for s, _i, _d in es.state.docs())
    produced = Counter(STREAMS[d["event"]["dataset"]] for d in docs)
    assert by_stream == produced
    for src in es.sources():
        assert src["event"]["ingested"].endswith("Z")
        assert src["data_stream"]["namespace"] == "default"


@pytest.mark.parametrize("version", ["8.17.0", "9.1.0"])
def test_replay_delivers_every_document_once(tmp_path: Path, version: str) -> None:
    with EsServer(version) as es:
        sink = ElasticsearchSink(fast_settings(es.url, tmp_path / "spool", batch_docs=25))
        mem, _stats = replay_into(MODBUS_CAPTURES, [sink])
        alerts = [d for d in mem.docs if d["event"]["kind"] == "alert"]
        assert len(alerts) >= 5
        check_exactly_once(es, mem.docs)
        assert len(es.sources("logs-ics_sensor.alert-*")) == len(alerts)
        # REST compatibility: the client talks the server's major (a 9.x client to an 8.x server says 8).
        major = version.split(".")[0]
        compat = {r.headers.get("accept", "") for r in es.state.requests if r.path != "/"}
        assert compat == {f"application/vnd.elasticsearch+json; compatible-with={major}"}
        bulk_types = {r.headers["content-type"] for r in es.state.requests if r.path.endswith("_bulk")}
        assert bulk_types == {f"application/vnd.elasticsearch+x-ndjson; compatible-with={major}"}
        assert sink.stats()["delivered"] == len(mem.docs)
        assert sink.spool.pending()["records"] == 0


def test_8x_server_refuses_the_clients_native_compat_header() -> None:
    """Why connect() negotiates: without it a 9.x client cannot talk to an 8.x cluster (the stand-in is faithful)."""
    from elasticsearch import BadRequestError, Elasticsearch
    from elasticsearch import __versionstr__ as client_version

    if not client_version.startswith("9."):
        pytest.skip("needs a 9.x client")
    with EsServer("8.17.0") as es:
        with pytest.raises(BadRequestError):
            Elasticsearch(es.url).info()
        client, info = connect(fast_settings(es.url, Path("/nonexistent")))
        assert info["version"]["number"] == "8.17.0" and client.info()["version"]["number"] == "8.17.0"


def test_429_and_503_then_recovery_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with EsServer("9.1.0") as es:
        es.state.request_faults.extend([503, 429, 503, 429])
        es.state.item_faults.extend([429] * 30 + [503] * 20 + [502] * 5)
        sink = ElasticsearchSink(fast_settings(es.url, tmp_path / "spool", batch_docs=40))
        mem, _ = replay_into(MODBUS_CAPTURES, [sink])
        check_exactly_once(es, mem.docs)
        assert not es.state.request_faults and not es.state.item_faults, "every injected fault was hit"
        st = sink.stats()
        assert st["retried"] >= 55 and st["failed_requests"] >= 4
        assert st["dead_lettered"] == 0


def test_cluster_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    es = EsServer("9.1.0", port=port)
    sink = ElasticsearchSink(fast_settings(f"http://127.0.0.1:{port}", tmp_path / "spool"))
    sink.open()
    mem, _ = replay_into(MODBUS_CAPTURES, [])  # the documents, produced while the cluster is away
    sink.write(mem.docs)
    wait_for(lambda: sink.counters["failed_requests"] >= 3, "a few failed connection attempts")
    assert sink.spool.pending()["records"] == len(mem.docs)
    es.start()
    try:
        sink.close()
        check_exactly_once(es, mem.docs)
    finally:
        es.stop()


def _write_config(path: Path, spool: Path, **es: Any) -> Path:
    section = {"spool_dir": str(spool), "retry_initial": 0.01, "retry_max": 0.05, "close_timeout": 120, "batch_docs": 50}
    section.update(es)
    path.write_text(yaml.safe_dump({"sensor": {"name": "test-sensor"}, "outputs": {"elasticsearch": section}}))
    return path


def _empty_pcap(path: Path) -> Path:
    path.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    return path


def test_sigkill_with_documents_in_the_spool_then_restart_delivers(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    cfg = _write_config(tmp_path / "sensor.yml", spool)
    capture = str(MODBUS_CAPTURES[0])
    cmd = [sys.executable, "-m", "sensor.cli", "replay", capture, "--es", url, "--config", str(cfg), "-q", "--no-builtin-rules"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def spooled() -> int:
            probe = [p for p in spool.glob("*/*.ndjson")]
            return sum(p.read_bytes().count(b"\n") for p in probe)

        # The events and the stats document are spooled once the replay has closed its pipeline and waits
        # for the cluster (close_timeout 120 s): then kill it.
        wait_for(lambda: list(spool.glob("alerts/*.ndjson")) and spooled() > 0 and proc.poll() is None, "spooled docs")
        wait_for(lambda: any(b"ics_sensor.stats" in p.read_bytes() for p in spool.glob("alerts/*.ndjson")), "stats doc")
        n_spooled = spooled()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with EsServer("9.1.0", port=port) as es:
        empty = _empty_pcap(tmp_path / "empty.pcap")
        cmd2 = [sys.executable, "-m", "sensor.cli", "replay", str(empty), "--es", url, "--config", str(cfg), "--no-builtin-rules"]
        out = subprocess.run(cmd2, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        # The killed run's documents (as an in-process replay of the same capture produces them) all arrived.
        from sensor.cli import observer_from

        cfg_obj = load_config(str(cfg))
        from sensor.outputs.memory import MemorySink
        from sensor.pipeline import Outputs, Pipeline
        from sensor.source import SourceReport, read_captures

        mem = MemorySink()
        pipe = Pipeline(cfg_obj, Outputs(events=[mem], alerts=[mem], stats=[mem], assets=[mem]), observer=observer_from(cfg_obj))
        pipe.open()
        pipe.run(read_captures([capture], SourceReport()))
        pipe.close()
        want = expected_ids(mem.docs)
        got = Counter(i for s, i, _ in es.state.docs() if not s.startswith("metrics-"))
        assert got == want
        assert len(es.sources("metrics-*")) == 2  # the killed run's stats document and the restart's
        assert n_spooled == len(mem.docs)
        assert "left in spool 0" in out.stderr


def test_spool_cap_drops_oldest_events_first_alerts_last(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=20_000, segment_bytes=2_000)
    sp.open()
    alert = b"a" * 99 + b"\n"
    event = lambda i: b"%08d" % i + b"e" * 91 + b"\n"  # noqa: E731
    sp.append("alerts", [alert] * 50)  # 5,000 bytes of alerts
    with caplog.at_level(logging.WARNING, logger="sensor.outputs.spool"):
        sp.append("events", [event(i) for i in range(300)])  # 30,000 bytes of events: 15,000 must go
    st = sp.stats()
    assert st["dropped"]["alerts"] == 0
    assert st["dropped"]["events"] >= 150
    assert st["disk_bytes"] <= 20_000
    assert st["pending"] == 50 + 300 - st["dropped"]["events"]
    assert any("dropped" in r.getMessage() and "events" in r.getMessage() for r in caplog.records)
    # What remains: all alerts, then the newest events in order.
    got: list[bytes] = []
    while (b := sp.read(1000, 1 << 20)) is not None:
        got += b.records
        sp.commit(b)
    assert got[:50] == [alert] * 50
    events = [int(r[:8]) for r in got[50:]]
    assert events == list(range(300 - len(events), 300))
    # Alerts go only once the events lane is empty.
    sp.append("alerts", [alert] * 250)
    assert sp.stats()["dropped"]["alerts"] > 0
    sp.close()


def test_spool_cap_reported_in_stats_document(tmp_path: Path) -> None:
    """The sink counts drops and the stats document it delivers says so (ics.stats.elasticsearch.spool.dropped)."""
    port = free_port()
    settings = fast_settings(f"http://127.0.0.1:{port}", tmp_path / "spool", spool_max_bytes=40_000, segment_bytes=4_000)
    sink = ElasticsearchSink(settings)
    sink.open()
    mem, _ = replay_into(MODBUS_CAPTURES, [])
    sink.write([d for d in mem.docs if d["event"]["dataset"] != "ics_sensor.stats"])
    stats_doc = next(d for d in mem.docs if d["event"]["dataset"] == "ics_sensor.stats")
    dropped_before_stats = sink.spool.stats()["dropped"]["events"]
    sink.write([stats_doc])  # counters as of this moment ride in the document (making room for it may drop more)
    dropped = sink.spool.stats()["dropped"]
    assert dropped_before_stats > 0 and dropped["alerts"] == 0
    with EsServer("9.1.0", port=port) as es:
        sink.close()
        (st,) = es.sources("metrics-*")
        assert st["ics"]["stats"]["elasticsearch"]["spool"]["dropped"]["events"] == dropped_before_stats
        n_alerts = sum(1 for d in mem.docs if d["event"]["kind"] == "alert")
        assert len(es.sources("logs-ics_sensor.alert-*")) == n_alerts
        assert len(es.sources("logs-ics_sensor.event-*")) == sum(1 for d in mem.docs if d["event"]["kind"] == "event") - dropped["events"]


def test_mapping_errors_go_to_the_dead_letter_file(tmp_path: Path) -> None:
    with EsServer("9.1.0") as es:
        settings = fast_settings(es.url, tmp_path / "spool")
        client, _ = connect(settings)
        es_templates.install(client)
        mem, _ = replay_into(MODBUS_CAPTURES, [])
        docs = [d for d in mem.docs if d["event"]["dataset"] != "ics_sensor.stats"][:30]
        bad = orjson.loads(orjson.dumps(docs[3]))
        bad["ics"]["modbus"]["unit_id"] = "not-a-number"
        bad2 = orjson.loads(orjson.dumps(docs[4]))
        bad2["source"]["ip"] = "999.1.1.1"
        sink = ElasticsearchSink(settings)
        sink.open()
        sink.write([*docs, bad, bad2])
        sink.close()
        assert len(es.sources()) == 30
        lines = [orjson.loads(x) for x in settings.dead_letter_path.read_bytes().splitlines()]
        assert len(lines) == 2 and sink.stats()["dead_lettered"] == 2
        reasons = sorted(x["reason"]["error"]["reason"] for x in lines)
        assert "ics.modbus.unit_id" in reasons[0] and "source.ip" in reasons[1]
        assert {x["reason"]["status"] for x in lines} == {400}
        assert {x["document"]["ics"]["modbus"].get("unit_id") for x in lines} >= {"not-a-number"}
        assert oct(settings.dead_letter_path.stat().st_mode & 0o777) == "0o600"
        assert sink.spool.pending()["records"] == 0  # not retried forever


def test_setup_is_idempotent_and_check_reports(tmp_path: Path) -> None:
    runner = CliRunner()
    with EsServer("8.17.0") as es:
        r = runner.invoke(main, ["es", "check", "--es", es.url])
        assert r.exit_code == 1 and "missing  index template logs-ics_sensor.alert" in r.output
        for _ in range(2):
            r = runner.invoke(main, ["es", "setup", "--es", es.url, "--namespace", "plant1"])
            assert r.exit_code == 0, r.output
        assert "logs-ics_sensor.alert-plant1" in r.output
        assert set(es.state.index_templates) == set(es_templates.index_templates())
        assert set(es.state.ilm) == {"ics_sensor-events", "ics_sensor-alerts", "ics_sensor-assets", "ics_sensor-stats"}
        assert es.state.ilm["ics_sensor-alerts"]["phases"]["delete"]["min_age"] == "365d"
        assert es.state.ilm["ics_sensor-events"]["phases"]["delete"]["min_age"] == "180d"
        r = runner.invoke(main, ["es", "check", "--es", es.url])
        assert r.exit_code == 0, r.output
        assert "elasticsearch 8.17.0" in r.output
        # A newer sensor's templates are not overwritten by this one.
        es.state.index_templates["logs-ics_sensor.alert"]["_meta"]["version"] = "99.0.0"
        r = runner.invoke(main, ["es", "setup", "--es", es.url])
        assert r.exit_code == 1 and "skipped" in r.output


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    import ssl

    cert, key, ca = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    runner = CliRunner()
    with EsServer("9.1.0", tls=ctx) as es:
        r = runner.invoke(main, ["es", "check", "--es", es.url])
        assert r.exit_code == 2
        assert "TLS certificate verification failed" in r.output and "ca_file" in r.output
        cfg = tmp_path / "tls.yml"
        cfg.write_text(yaml.safe_dump({"outputs": {"elasticsearch": {"ca_file": str(ca)}}}))
        r = runner.invoke(main, ["es", "setup", "--es", es.url, "--config", str(cfg)])
        assert r.exit_code == 0, r.output


def _self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path, cert_path


API_KEY = "c2VjcmV0LWFwaS1rZXktZG8tbm90LWxlYWs6eHl6enk="
PASSWORD = "pa55-w0rd-that-must-never-show"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "es.key"
    key.write_text(API_KEY)
    key.chmod(0o640)
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"outputs": {"elasticsearch": {"hosts": ["http://127.0.0.1:9"], "api_key_file": str(key)}}}))
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert "outputs.elasticsearch.api_key_file" in str(e.value) and "chmod 600" in str(e.value)
    assert API_KEY not in str(e.value)
    r = CliRunner().invoke(main, ["replay", str(MODBUS_CAPTURES[0]), "--config", str(cfg)])
    assert r.exit_code == 2 and "api_key_file" in r.output and API_KEY not in r.output


def test_credentials_in_the_url_are_refused_without_echo() -> None:
    r = CliRunner().invoke(main, ["replay", str(MODBUS_CAPTURES[0]), "--es", f"http://elastic:{PASSWORD}@127.0.0.1:9"])
    assert r.exit_code == 2 and "credentials" in r.output and PASSWORD not in r.output


@pytest.mark.parametrize("auth", ["api_key_file", "password_env"])
def test_secrets_never_appear_in_output_logs_or_stats(tmp_path: Path, auth: str) -> None:
    """A run that fails authentication first (errors logged), then succeeds: the secret is nowhere but on the wire."""
    spool = tmp_path / "spool"
    env = dict(os.environ)
    if auth == "api_key_file":
        key = tmp_path / "es.key"
        key.write_text(API_KEY + "\n")
        key.chmod(0o600)
        extra: dict[str, Any] = {"api_key_file": str(key)}
        secret, header = API_KEY, f"ApiKey {API_KEY}"
    else:
        env["ICS_TEST_ES_PASSWORD"] = PASSWORD
        extra = {"username": "ics_sensor", "password_env": "ICS_TEST_ES_PASSWORD"}
        secret = PASSWORD
        header = "Basic " + base64.b64encode(f"ics_sensor:{PASSWORD}".encode()).decode()
    cfg = _write_config(tmp_path / "c.yml", spool, close_timeout=60, **extra)
    with EsServer("9.1.0") as es:
        es.state.auth = "wrong"  # every request is refused with 401 until the "operator" fixes the cluster
        stats_path, events_path = tmp_path / "stats.ndjson", tmp_path / "events.ndjson"
        cmd = [sys.executable, "-m", "sensor.cli", "replay", str(MODBUS_CAPTURES[0]), "--es", es.url, "--config", str(cfg),
               "--stats", str(stats_path), "--events", str(events_path)]  # fmt: skip

        def fix_auth_after_failures() -> None:
            wait_for(lambda: sum(1 for r in es.state.requests) >= 3, "refused requests", 60)
            es.state.auth = header

        t = threading.Thread(target=fix_auth_after_failures)
        t.start()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        t.join()
        assert out.returncode == 0, out.stderr
        assert "authentication failed (401)" in out.stderr  # the failure was reported...
        assert "left in spool 0" in out.stderr
        sent = [r.headers.get("authorization") for r in es.state.requests]
        assert header in sent  # ...the secret was used on the wire...
        texts = [out.stdout, out.stderr, stats_path.read_text(), events_path.read_text(), cfg.read_text()]
        texts += [orjson.dumps(d).decode() for d in es.sources()]
        texts += [p.read_text(errors="replace") for p in spool.rglob("*") if p.is_file()]
        for text in texts:  # ...and nowhere else
            assert secret not in text
            assert base64.b64encode(f"ics_sensor:{PASSWORD}".encode()).decode() not in text


def test_doc_id_ignores_event_ingested_only() -> None:
    d = {"@timestamp": "2024-01-01T00:00:00.000000000Z", "event": {"kind": "event", "dataset": "ics_sensor.event"}}
    same = {"event": {"dataset": "ics_sensor.event", "kind": "event", "ingested": "2025-01-01T00:00:00Z"},
            "@timestamp": "2024-01-01T00:00:00.000000000Z"}  # fmt: skip
    other = {**d, "@timestamp": "2024-01-01T00:00:00.000000001Z"}
    assert doc_id(d) == doc_id(same) != doc_id(other)


def test_unreachable_https_without_ca_fails_fast_and_clearly(tmp_path: Path) -> None:
    """make_client builds a verifying client for https URLs (no silent verify=False default)."""
    s = fast_settings("https://127.0.0.1:9", tmp_path)
    client = make_client(s)
    node = next(iter(client.transport.node_pool.all()))
    assert node.config.verify_certs is True
