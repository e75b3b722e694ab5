"""Elasticsearch sink: documents go to a disk spool first, a background thread delivers them with ``streaming_bulk``.

Why the spool is write-ahead (every document, not only while the cluster is away): one path for every case, a
killed sensor loses nothing, and delivery order is the spool's order. Appends are buffered and synced on segment
rotation, so the cost is one sequential write per document.

Delivery rules:
- ``op_type: create`` into ``logs-ics_sensor.{event,alert,asset}-<ns>`` / ``metrics-ics_sensor.stats-<ns>``, chosen by
  ``event.dataset``; ``_id`` is a hash of the canonical document (sorted keys, without ``event.ingested``), so a
  resend after a crash or a retry never duplicates: a 409 conflict counts as already delivered.
- Per item: 429 and 5xx are retried with exponential backoff and jitter; 400 (mapping and parsing errors) never
  succeeds and goes to the dead-letter NDJSON file with the reason; other 4xx (401, 403, 404: credentials,
  privileges, templates missing) are retried and logged, since an operator can fix them without losing data.
- Connection errors and whole-request errors are retried the same way; the batch stays in the spool meanwhile.
- ``close()`` waits at most ``close_timeout`` seconds, then leaves the rest in the spool for the next start.

Server versions: the client in use (8.x or 9.x) sends ``compatible-with=<client major>`` media types, which an
older server rejects. ``connect()`` asks ``GET /`` with ``compatible-with=8`` (accepted by 8.x and 9.x servers) and
then talks ``compatible-with=min(server major, client major)``, so a 9.x client works with an 8.x cluster.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
from elasticsearch import ApiError, Elasticsearch, OrjsonSerializer, TransportError, UnsupportedProductError, helpers
from elasticsearch import __versionstr__ as CLIENT_VERSION

from sensor.config import ConfigError, read_secret_file
from sensor.outputs.base import Document
from sensor.outputs.es_templates import DATASETS, stream_name
from sensor.outputs.spool import Batch, Spool

log = logging.getLogger("sensor.outputs.elasticsearch")

CLIENT_MAJOR = int(CLIENT_VERSION.split(".")[0])
MIN_SERVER_MAJOR = 8
_MIME = re.compile(r"application/(json|x-ndjson)")
_ID_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_LANE_OF = {"alert": "alerts", "stats": "alerts", "asset": "alerts", "event": "events"}


class EsError(Exception):
    """A clear, secret-free reason why the cluster cannot be used."""


# -- client ------------------------------------------------------------------------------------------------------
class _CompatElasticsearch(Elasticsearch):
    """Rewrites the media types of every request to ``compatible-with=<compat_major>``.

    A class attribute, not an instance one: helpers call ``client.options()``, which builds a new instance of the
    same class around the same transport.
    """

    compat_major: ClassVar[int] = CLIENT_MAJOR

    def perform_request(self, method: str, path: str, *, headers: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        if headers and self.compat_major != CLIENT_MAJOR:
            sub = rf"application/vnd.elasticsearch+\1; compatible-with={self.compat_major}"
            headers = {k: _MIME.sub(sub, v) if k.lower() in ("accept", "content-type") else v for k, v in headers.items()}
        return super().perform_request(method, path, headers=headers, **kw)


_CLASSES: dict[int, type[_CompatElasticsearch]] = {}


def _client_class(major: int) -> type[_CompatElasticsearch]:
    if major not in _CLASSES:
        _CLASSES[major] = type(f"Elasticsearch{major}Compat", (_CompatElasticsearch,), {"compat_major": major})
    return _CLASSES[major]


@dataclass(frozen=True)
class EsSettings:
    """The validated ``outputs.elasticsearch`` section (secrets are file paths or variable names, never values)."""

    hosts: tuple[str, ...]
    namespace: str = "default"
    api_key_file: str | None = None
    api_key_env: str | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    verify_certs: bool = True
    kinds: tuple[str, ...] = ("events", "alerts", "stats", "assets")
    batch_docs: int = 1000
    batch_bytes: int = 5 << 20
    request_timeout: float = 30.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    close_timeout: float = 30.0
    spool_dir: str | None = None
    spool_max_bytes: int = 1 << 30
    segment_bytes: int = 16 << 20
    dead_letter: str | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any], hosts: tuple[str, ...] = (), namespace: str | None = None) -> EsSettings:
        kw = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        kw["hosts"] = tuple(hosts or section.get("hosts") or ())
        kw["kinds"] = tuple(kw.get("kinds") or ("events", "alerts", "stats", "assets"))
        if namespace:
            kw["namespace"] = namespace
        return cls(**kw)

    @property
    def spool_path(self) -> Path:
        if self.spool_dir:
            return Path(self.spool_dir)
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        return Path(state) / "ics-sensor" / f"es-spool-{self.namespace}"

    @property
    def dead_letter_path(self) -> Path:
        return Path(self.dead_letter) if self.dead_letter else self.spool_path / "dead-letter.ndjson"


def _auth(s: EsSettings) -> dict[str, Any]:
    key = "outputs.elasticsearch."
    if s.api_key_file:
        return {"api_key": read_secret_file(s.api_key_file, key + "api_key_file")}
    if s.api_key_env:
        value = os.environ.get(s.api_key_env)
        if not value:
            raise ConfigError(f"{key}api_key_env: environment variable {s.api_key_env} is not set")
        return {"api_key": value}
    if s.username:
        if s.password_file:
            return {"basic_auth": (s.username, read_secret_file(s.password_file, key + "password_file"))}
        value = os.environ.get(s.password_env or "")
        if not value:
            raise ConfigError(f"{key}password_env: environment variable {s.password_env} is not set")
        return {"basic_auth": (s.username, value)}
    return {}


def make_client(s: EsSettings, compat_major: int = CLIENT_MAJOR) -> Elasticsearch:
    """A client that never retries by itself on 429/5xx (the sink decides) but fails over between hosts."""
    if not s.hosts:
        raise EsError("no Elasticsearch hosts: give --es URL or outputs.elasticsearch.hosts")
    tls: dict[str, Any] = {}
    if any(h.startswith("https://") for h in s.hosts):
        tls["verify_certs"] = s.verify_certs
        if s.ca_file:
            tls["ca_certs"] = s.ca_file
        if not s.verify_certs:
            tls["ssl_show_warn"] = False
            log.warning("TLS certificate verification is OFF (outputs.elasticsearch.verify_certs: false)")
    fast = OrjsonSerializer()
    return _client_class(compat_major)(
        list(s.hosts), request_timeout=s.request_timeout, max_retries=max(0, len(s.hosts) - 1),
        retry_on_status=(), retry_on_timeout=True,
        serializers={"application/json": fast, "application/vnd.elasticsearch+json": fast}, **tls, **_auth(s),
    )  # fmt: skip


def explain(e: BaseException, s: EsSettings) -> str:
    """One line for an operator: what failed and what to change. Never includes credentials."""
    hosts = ", ".join(s.hosts)
    text = str(e)
    detail = " ".join([text, str(getattr(e, "message", "")), *(repr(x) for x in getattr(e, "errors", ()) or ())])
    if e.__cause__ is not None:
        detail += " " + repr(e.__cause__)
    if isinstance(e, UnsupportedProductError):
        return f"{hosts}: the server is not Elasticsearch (no X-Elastic-Product header)"
    if isinstance(e, ApiError):
        if e.status_code == 401:
            return f"{hosts}: authentication failed (401): check the API key or username/password"
        if e.status_code == 403:
            return f"{hosts}: permission denied (403): {e.message}"
        return f"{hosts}: HTTP {e.status_code}: {e.message} (is this an Elasticsearch URL?)" if e.status_code == 404 else (
            f"{hosts}: HTTP {e.status_code}: {e.message}"
        )
    if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
        why = re.search(r"certificate verify failed: ([^(')\]]+)", detail)
        return (
            f"{hosts}: TLS certificate verification failed ({why.group(1).strip() if why else 'untrusted certificate'}); "
            "give the cluster's CA certificate in outputs.elasticsearch.ca_file (verification is on by default)"
        )
    if isinstance(e, TransportError):
        errno = re.search(r"\[Errno -?\d+\] [A-Za-z ]+?(?= ?\w*Error|['\")]|$)", detail)
        timeout = "timed out" if "timeout" in detail.lower() or "timed out" in detail else None
        return f"{hosts}: cannot connect: {errno.group(0) if errno else timeout or text}"
    return f"{hosts}: {type(e).__name__}: {text}"


def connect(s: EsSettings) -> tuple[Elasticsearch, dict[str, Any]]:
    """Probe the cluster (``GET /``) and return a client speaking its REST compatibility version, and its info."""
    probe = make_client(s, MIN_SERVER_MAJOR)
    try:
        info = probe.info().body
    finally:
        probe.close()
    number = str(info.get("version", {}).get("number", "0"))
    major = int(number.split(".")[0] or 0)
    if major < MIN_SERVER_MAJOR:
        raise EsError(f"Elasticsearch {number} is not supported: the sensor needs 8.x or 9.x")
    if major > CLIENT_MAJOR + 1 or (major > CLIENT_MAJOR and CLIENT_MAJOR < 9):
        raise EsError(f"Elasticsearch {number} is newer than the client {CLIENT_VERSION}: upgrade the elasticsearch package")
    return make_client(s, min(major, CLIENT_MAJOR)), info


# -- documents ---------------------------------------------------------------------------------------------------
def doc_id(doc: Document) -> str:
    """Deterministic id: SHA-256 of the canonical JSON (sorted keys) without event.ingested, 120 bits, URL-safe."""
    ev = doc.get("event")
    if isinstance(ev, dict) and "ingested" in ev:
        doc = {**doc, "event": {k: v for k, v in ev.items() if k != "ingested"}}
    digest = hashlib.sha256(orjson.dumps(doc, option=_ID_OPTS, default=str)).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode()


def _with_ingested(body: bytes, marker: bytes, ingested: str) -> bytes:
    """Add event.ingested without parsing: bodies are sorted-key JSON whose top-level keys before "event"
    (@timestamp, client, data_stream, destination, error) hold no "event" key, and a key's quotes cannot occur
    unescaped inside a string, so the first ``"event":{`` is the top-level event object."""
    at = body.find(b'"event":{')
    if at < 0 or b'"ingested":' in body:
        doc = orjson.loads(body)  # no event object, or a field named ingested somewhere: parse, to be sure
        if isinstance(doc.get("event"), dict):
            doc["event"]["ingested"] = ingested
        return orjson.dumps(doc)
    at += 9
    return body[:at] + (marker if body[at : at + 1] != b"}" else marker[:-1]) + body[at:]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ElasticsearchSink:
    """A Sink: ``write`` appends to the spool and returns; a daemon thread drains the spool to the cluster."""

    def __init__(self, settings: EsSettings) -> None:
        self.s = settings
        self.spool = Spool(settings.spool_path, settings.spool_max_bytes, settings.segment_bytes)
        self.streams = {f"ics_sensor.{k}": (stream_name(k, settings.namespace), k) for k in DATASETS}
        self._cv = threading.Condition()
        self._stop = threading.Event()  # interrupts backoff sleeps: close() gave up waiting
        self._closing = False
        self._idle = True
        self._thread: threading.Thread | None = None
        self._client: Elasticsearch | None = None
        self._last_log: dict[str, float] = {}
        self.server_version: str | None = None
        self.counters = {
            "written": 0, "delivered": 0, "duplicates": 0, "retried": 0, "dead_lettered": 0, "requests": 0,
            "failed_requests": 0, "unknown_dataset": 0,
        }  # fmt: skip

    # -- Sink --------------------------------------------------------------------------------------------------
    def open(self) -> None:
        self.spool.open()
        self._thread = threading.Thread(target=self._run, name="es-sink", daemon=True)
        self._thread.start()

    def write(self, batch: list[Document]) -> None:
        lanes: dict[str, list[bytes]] = {"alerts": [], "events": []}
        dumps = orjson.dumps
        for doc in batch:
            ds = doc.get("event", {}).get("dataset")
            target = self.streams.get(ds)
            if target is None:
                self.counters["unknown_dataset"] += 1
                self._dead_letter([(b"", b"", dumps(doc, default=str))], [{"error": f"unknown event.dataset {ds!r}"}])
                continue
            index, kind = target
            typ = index.split("-", 1)[0]
            d = {**doc, "data_stream": {"type": typ, "dataset": ds, "namespace": self.s.namespace}}
            if kind == "stats" and isinstance(doc.get("ics", {}).get("stats"), dict):  # delivery counters ride along
                d["ics"] = {**doc["ics"], "stats": {**doc["ics"]["stats"], "elasticsearch": self.stats()}}
            body = dumps(d, option=_ID_OPTS, default=str)
            _id = base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:15])
            lanes[_LANE_OF[kind]].append(b"%s\t%s\t%s\n" % (index.encode(), _id, body))
        for lane, records in lanes.items():
            if records:
                self.spool.append(lane, records)
                self.counters["written"] += len(records)
        with self._cv:
            self._cv.notify_all()

    def flush(self) -> None:
        self.spool.sync()
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """Deliver what we can within ``close_timeout``; whatever is left stays in the spool for the next start."""
        if self._thread is None:
            return
        deadline = time.monotonic() + self.s.close_timeout
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while not (self._idle and self.spool.empty()) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.2))
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=self.s.request_timeout + 1)
        pending = self.spool.pending()
        self.spool.close()
        self._thread = None
        if self._client is not None:
            self._client.close()
        c = self.counters
        msg = (
            f"elasticsearch: {c['delivered']} delivered, {c['duplicates']} already present, {c['dead_lettered']} "
            f"dead-lettered, {pending['records']} left in the spool {self.spool.dir}"
        )
        (log.warning if pending["records"] else log.info)(msg)

    def stats(self) -> dict[str, Any]:
        """Counters for the sensor's stats document (no hosts with credentials, no secrets)."""
        return {**self.counters, "server_version": self.server_version, "spool": self.spool.stats()}

    # -- delivery thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.spool.read(self.s.batch_docs, self.s.batch_bytes)
                if batch is None:
                    with self._cv:
                        self._idle = True
                        self._cv.notify_all()
                        if (self._closing or self._stop.is_set()) and self.spool.empty():
                            return
                        self._cv.wait(0.5)
                        self._idle = False
                    continue
                if self._deliver(batch):
                    self.spool.commit(batch)
        except Exception:  # the thread must not die silently: the spool keeps the data for the next start
            log.exception("elasticsearch delivery thread stopped; documents stay in the spool")
        finally:
            with self._cv:
                self._idle = True
                self._cv.notify_all()

    def _backoff(self, attempt: int) -> None:
        delay = min(self.s.retry_max, self.s.retry_initial * (2 ** min(attempt, 30)))
        self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _warn(self, key: str, msg: str, every: float = 30.0) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= every:
            self._last_log[key] = now
            log.warning(msg)

    def _ensure_client(self) -> Elasticsearch | None:
        if self._client is None:
            try:
                self._client, info = connect(self.s)
                self.server_version = str(info.get("version", {}).get("number"))
                log.info("elasticsearch %s at %s", self.server_version, ", ".join(self.s.hosts))
            except (ApiError, TransportError, EsError, ConfigError) as e:
                self.counters["failed_requests"] += 1
                self._warn("connect", f"elasticsearch unreachable, documents wait in the spool: {explain(e, self.s)}")
                return None
        return self._client

    def _deliver(self, batch: Batch) -> bool:
        """Send a batch until every record is delivered, already present or dead-lettered; False if stopped."""
        pending: dict[bytes, tuple[bytes, bytes]] = {}
        for rec in batch.records:
            index, _id, body = rec.rstrip(b"\n").split(b"\t", 2)
            pending[_id] = (index, body)
        attempt = 0
        while pending:
            if self._stop.is_set():
                return False
            client = self._ensure_client()
            if client is None:
                self._backoff(attempt)
                attempt += 1
                continue
            pending = self._send(client, pending)
            if pending:
                self.counters["retried"] += len(pending)
                self._backoff(attempt)
                attempt += 1
        return True

    def _send(self, client: Elasticsearch, pending: dict[bytes, tuple[bytes, bytes]]) -> dict[bytes, tuple[bytes, bytes]]:
        """One streaming_bulk pass; returns the records to retry."""
        ingested = _now()

        marker = b'"ingested":"%s",' % ingested.encode()

        def actions() -> Any:
            for _id, (index, body) in pending.items():
                yield {"create": {"_index": index.decode(), "_id": _id.decode()}}, _with_ingested(body, marker, ingested)

        retry: dict[bytes, tuple[bytes, bytes]] = {}
        dead: list[tuple[bytes, bytes, bytes, dict[str, Any]]] = []
        seen: set[bytes] = set()
        self.counters["requests"] += 1
        try:
            results = helpers.streaming_bulk(
                client, actions(), chunk_size=self.s.batch_docs, max_chunk_bytes=self.s.batch_bytes,
                expand_action_callback=lambda a: a, raise_on_error=False, raise_on_exception=False,
                max_retries=0, yield_ok=True,
            )  # fmt: skip
            for ok, item in results:
                info = next(iter(item.values()))
                _id = str(info.get("_id", "")).encode()
                rec = pending.get(_id)
                if rec is None or _id in seen:
                    continue
                seen.add(_id)
                status = info.get("status")
                if ok:
                    self.counters["delivered"] += 1
                elif status == 409:
                    self.counters["duplicates"] += 1
                elif "exception" in info:  # the whole request failed: retry all of it
                    self._request_failed(info["exception"])
                    retry[_id] = rec
                elif status in (400, 413):
                    dead.append((rec[0], _id, rec[1], {"status": status, "error": info.get("error")}))
                else:
                    if status != 429 and not (isinstance(status, int) and status >= 500):
                        self._warn(f"item{status}", f"elasticsearch refused documents ({status}): {info.get('error')}; retrying")
                    retry[_id] = rec
        except (ApiError, TransportError, EsError) as e:  # connection refused, timeout, TLS: nothing more was sent
            self._request_failed(e)
            retry.update((k, v) for k, v in pending.items() if k not in seen)
        if dead:
            self._dead_letter([(i, d, b) for i, d, b, _ in dead], [r for *_, r in dead])
        return retry

    def _request_failed(self, e: BaseException) -> None:
        self.counters["failed_requests"] += 1
        self._warn("request", f"elasticsearch request failed, will retry: {explain(e, self.s)}")
        if isinstance(e, TransportError) and not isinstance(e, ApiError):
            if self._client is not None:
                self._client.close()
            self._client = None  # reconnect: the server may have come back as another version

    def _dead_letter(self, recs: list[tuple[bytes, bytes, bytes]], reasons: list[dict[str, Any]]) -> None:
        """Documents that can never be indexed, with the reason, in an owner-only NDJSON file."""
        path = self.s.dead_letter_path
        path.parent.mkdir(parents=True, exist_ok=True)
        now = _now()
        lines = [
            orjson.dumps({
                "@timestamp": now, "reason": r, "_index": index.decode() or None, "_id": _id.decode() or None,
                "document": orjson.Fragment(body),
            }) + b"\n"
            for (index, _id, body), r in zip(recs, reasons, strict=True)
        ]  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(lines))
        finally:
            os.close(fd)
        self.counters["dead_lettered"] += len(recs)
        self._warn("dead", f"{len(recs)} documents refused for good by elasticsearch, written to {path}: {reasons[0]}", 5)
