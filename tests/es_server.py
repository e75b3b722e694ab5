"""A small Elasticsearch stand-in for tests: the REST subset the sensor uses, with faults on demand.

Speaks: ``GET /`` (``X-Elastic-Product`` header, 8.x or 9.x version, REST-compatibility media types checked the way
the real server does: an 8.x server refuses ``compatible-with=9``), ``_bulk`` (create/index into data streams that
appear on first write; 201, or 409 on a duplicate ``_id`` within a stream; 400 when a value contradicts the installed
template mappings), ``_index_template``, ``_component_template``, ``_ilm/policy`` (PUT/GET/DELETE), ``_count`` and a
small ``_search`` (match_all, term). Faults: whole-request statuses queued in ``request_faults``, per-item statuses
in ``item_faults``, ``reject(doc) -> reason`` for extra mapping errors. Every request is recorded.
Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import ssl
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

Json = dict[str, Any]
_COMPAT = re.compile(r"compatible-with=(\d+)")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _error(status: int, typ: str, reason: str) -> Json:
    return {"error": {"root_cause": [{"type": typ, "reason": reason}], "type": typ, "reason": reason}, "status": status}


# -- mappings: composing templates and checking a document against them -------------------------------------------
def _merge(a: Json, b: Json) -> Json:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(index_template: Json, components: dict[str, Json]) -> Json:
    """The mappings an index created from ``index_template`` gets (components in order, then its own template)."""
    props: Json = {}
    dyn: list[Json] = []
    parts = [components[c].get("template", {}) for c in index_template.get("composed_of", []) if c in components]
    parts.append(index_template.get("template", {}))
    for p in parts:
        m = p.get("mappings", {})
        props = _merge(props, m.get("properties", {}))
        for d in m.get("dynamic_templates", []):
            name = next(iter(d))
            dyn = [x for x in dyn if next(iter(x)) != name] + [d]
    return {"properties": props, "dynamic_templates": dyn}


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    return "unknown"


def lookup(mappings: Json, path: str, value: Any) -> tuple[Json | None, str]:
    """The mapping of a leaf field, and where it came from: "explicit", "dynamic:<name>", "flattened" or "unmapped"."""
    node: Json = {"properties": mappings["properties"]}
    parts = path.split(".")
    for i, p in enumerate(parts):
        props = node.get("properties", {})
        if p not in props:
            break
        node = props[p]
        if node.get("type") == "flattened" and i < len(parts) - 1:
            return node, "flattened"
        if i == len(parts) - 1:
            return node, "explicit"
    kind = _json_kind(value)
    for d in mappings["dynamic_templates"]:
        name, spec = next(iter(d.items()))
        if "path_match" in spec and not fnmatch.fnmatchcase(path, spec["path_match"]):
            continue
        if "match_mapping_type" in spec and spec["match_mapping_type"] not in (kind, "*"):
            continue
        return spec["mapping"], f"dynamic:{name}"
    return None, "unmapped"


def _date_ok(v: Any) -> bool:
    if isinstance(v, int) and not isinstance(v, bool):
        return True
    if not isinstance(v, str):
        return False
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", v)
    if not m:
        return False
    try:
        datetime.fromisoformat(m.group(1))
    except ValueError:
        return False
    return True


def value_ok(es_type: str, v: Any) -> bool:
    """Does a JSON value index into a field of this Elasticsearch type (as the real server would accept it)?"""
    if isinstance(v, list):
        return all(value_ok(es_type, x) for x in v)
    if v is None:
        return True
    if es_type in ("long", "integer", "short", "byte", "unsigned_long"):
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(re.fullmatch(r"-?\d+", v)))
    if es_type in ("float", "double", "half_float", "scaled_float"):
        return isinstance(v, int | float) and not isinstance(v, bool)
    if es_type in ("keyword", "constant_keyword", "wildcard"):
        return isinstance(v, str | int | float | bool)
    if es_type in ("text", "match_only_text"):
        return isinstance(v, str)
    if es_type == "boolean":
        return isinstance(v, bool) or v in ("true", "false")
    if es_type == "ip":
        try:
            ipaddress.ip_address(v)
            return True
        except (ValueError, TypeError):
            return False
    if es_type in ("date", "date_nanos"):
        return _date_ok(v)
    if es_type == "flattened":
        return True
    if es_type == "object":
        return isinstance(v, dict)
    return False


def leaves(doc: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf; dotted keys expand like Elasticsearch does; lists are one leaf."""
    if isinstance(doc, dict) and doc:
        out: list[tuple[str, Any]] = []
        for k, v in doc.items():
            out += leaves(v, f"{prefix}{k}.")
        return out
    return [(prefix[:-1], doc)]


def check_document(mappings: Json, doc: Json) -> list[str]:
    """Problems a real server would refuse the document for (type conflicts); unmapped fields are not problems."""
    problems = []
    for path, value in leaves(doc):
        m, _how = lookup(mappings, path, value)
        if m is None or _how == "flattened":
            continue
        typ = m.get("type", "object")
        if typ != "object" and isinstance(value, dict) and value:
            problems.append(f"[{path}] tried to parse field as {typ} but found an object")
        elif not value_ok(typ, value if value != {} else None):
            problems.append(f"[{path}] failed to parse field of type [{typ}]: {value!r}")
    return problems


# -- the server ------------------------------------------------------------------------------------------------------
class EsState:
    def __init__(self, version: str) -> None:
        self.version = version
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.streams: dict[str, dict[str, Json]] = {}  # data stream -> _id -> source
        self.index_templates: dict[str, Json] = {}
        self.component_templates: dict[str, Json] = {}
        self.ilm: dict[str, Json] = {}
        self.request_faults: deque[int] = deque()  # statuses for the next whole _bulk requests
        self.item_faults: deque[int] = deque()  # statuses for the next bulk items, one each
        self.reject: Callable[[Json], str | None] | None = None
        self.auth: str | None = None  # required Authorization header value; None accepts anything
        self.bulk_requests = 0

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def template_for(self, index: str) -> Json | None:
        best = None
        for t in self.index_templates.values():
            matches = any(fnmatch.fnmatchcase(index, p) for p in t.get("index_patterns", []))
            if matches and (best is None or t.get("priority", 0) > best.get("priority", 0)):
                best = t
        return best

    def mappings_for(self, index: str) -> Json | None:
        t = self.template_for(index)
        return compose(t, self.component_templates) if t else None

    def docs(self, pattern: str = "*") -> list[tuple[str, str, Json]]:
        with self.lock:
            pats = pattern.split(",")
            return [
                (s, i, d) for s, ds in self.streams.items() if any(fnmatch.fnmatchcase(s, p) for p in pats)
                for i, d in ds.items()
            ]  # fmt: skip


def _backing(stream: str) -> str:
    return f".ds-{stream}-2026.01.01-000001"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response: avoids the 40 ms Nagle/delayed-ACK stall on keep-alive
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, compat: int | None = None, ndjson: bool = False) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        ctype = "application/json" if compat is None else f"application/vnd.elasticsearch+json;compatible-with={compat}"
        self.send_header("Content-Type", ctype)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        with st.lock:
            st.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if st.auth is not None and self.headers.get("Authorization") != st.auth:
            return self._send(401, _error(401, "security_exception", "unable to authenticate user [?] for REST request [/]"))
        # REST compatibility: the real server accepts compatible-with=N for N in (major - 1, major) only.
        compat = None
        for h in ("Accept", "Content-Type"):
            m = _COMPAT.search(self.headers.get(h) or "")
            if m:
                n = int(m.group(1))
                if n not in (st.major - 1, st.major):
                    return self._send(400, _error(400, "media_type_header_exception",
                        f"Invalid media-type value on headers [{h}]: A compatible version is required on both "
                        f"Content-Type and Accept headers if either one has requested a compatible version. "
                        f"Accept version must be either version {st.major} or {st.major - 1}, but found {n}."))  # fmt: skip
                compat = n
        parts = [unquote(p) for p in path.split("/") if p]
        send = lambda status, obj: self._send(status, obj, compat)  # noqa: E731
        if not parts:
            return send(200, {
                "name": "test-node", "cluster_name": "ics-test", "cluster_uuid": "t3st",
                "version": {"number": st.version, "build_flavor": "default", "lucene_version": "9.12.0",
                            "minimum_wire_compatibility_version": "7.17.0", "minimum_index_compatibility_version": "7.0.0"},
                "tagline": "You Know, for Search",
            })  # fmt: skip
        if parts[-1] == "_bulk":
            return send(*self._bulk(body, parts[0] if len(parts) == 2 else None))
        stores = {"_index_template": st.index_templates, "_component_template": st.component_templates}
        if parts[0] in stores or parts[:2] == ["_ilm", "policy"]:
            store = stores.get(parts[0], st.ilm)
            name = parts[-1] if len(parts) >= (3 if parts[0] == "_ilm" else 2) else None
            key = {"_index_template": "index_templates", "_component_template": "component_templates"}.get(parts[0])
            with st.lock:
                if self.command == "PUT" and name:
                    doc = orjson.loads(body or b"{}")
                    store[name] = doc.get("policy", doc) if store is st.ilm else doc
                    return send(200, {"acknowledged": True})
                if self.command == "DELETE" and name:
                    if store.pop(name, None) is None:
                        return send(404, _error(404, "resource_not_found_exception", f"{name} not found"))
                    return send(200, {"acknowledged": True})
                names = [n for n in store if name is None or fnmatch.fnmatchcase(n, name)]
                if name and not names:
                    return send(404, _error(404, "resource_not_found_exception", f"index template matching [{name}] not found"))
                if store is st.ilm:
                    return send(200, {n: {"version": 1, "policy": store[n]} for n in names})
                inner = key[:-1] if key else "x"
                return send(200, {key: [{"name": n, inner: store[n]} for n in names]})
        if parts[-1] in ("_count", "_search"):
            q = orjson.loads(body) if body else {}
            docs = st.docs(parts[0] if len(parts) == 2 else "*")
            docs = [d for d in docs if _matches(q.get("query", {"match_all": {}}), d[2])]
            if parts[-1] == "_count":
                return send(200, {"count": len(docs), "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}})
            size = int(q.get("size", query.get("size", ["10"])[0]))
            hits = [{"_index": _backing(s), "_id": i, "_score": 1.0, "_source": d} for s, i, d in docs[:size]]
            return send(200, {"took": 1, "timed_out": False, "hits": {"total": {"value": len(docs), "relation": "eq"}, "hits": hits}})
        if parts[0] == "_data_stream":
            names = sorted(s for s in st.streams if len(parts) < 2 or fnmatch.fnmatchcase(s, parts[1]))
            return send(200, {"data_streams": [{"name": n, "template": (st.template_for(n) or {}).get("_name")} for n in names]})
        return send(404, _error(404, "no_handler_found_exception", f"no handler for {self.command} {path}"))

    def _bulk(self, body: bytes, default_index: str | None) -> tuple[int, Json]:
        st = self.server.state
        with st.lock:
            st.bulk_requests += 1
            if st.request_faults:
                status = st.request_faults.popleft()
                typ = "es_rejected_execution_exception" if status == 429 else "unavailable_shards_exception"
                return status, _error(status, typ, f"injected fault {status}")
        lines = [ln for ln in body.split(b"\n") if ln.strip()]
        items = []
        errors = False
        i = 0
        while i < len(lines):
            action = orjson.loads(lines[i])
            op, meta = next(iter(action.items()))
            src = orjson.loads(lines[i + 1])
            i += 2
            index = meta.get("_index", default_index)
            _id = meta.get("_id") or uuid.uuid4().hex
            item: Json = {"_index": _backing(index), "_id": _id}
            with st.lock:
                fault = st.item_faults.popleft() if st.item_faults else None
                mappings = st.mappings_for(index)
                problems = check_document(mappings, src) if mappings else []
                if fault is None and not problems and st.reject:
                    reason = st.reject(src)
                    problems = [reason] if reason else []
                stream = st.streams.setdefault(index, {})
                if fault is not None:
                    typ = "es_rejected_execution_exception" if fault == 429 else "unavailable_shards_exception"
                    item.update(status=fault, error={"type": typ, "reason": f"injected item fault {fault}"})
                elif problems:
                    item.update(status=400, error={"type": "document_parsing_exception", "reason": problems[0]})
                elif op == "create" and _id in stream:
                    item.update(status=409, error={
                        "type": "version_conflict_engine_exception",
                        "reason": f"[{_id}]: version conflict, document already exists (current version [1])"})  # fmt: skip
                else:
                    stream[_id] = src
                    item.update(status=201, result="created", _version=1, _seq_no=len(stream) - 1, _primary_term=1)
            errors = errors or "error" in item
            items.append({op: item})
        return 200, {"took": 1, "errors": errors, "items": items}

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def _get(doc: Json, path: str) -> Any:
    node: Any = doc
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _matches(q: Json, doc: Json) -> bool:
    if "match_all" in q:
        return True
    if "term" in q:
        field, want = next(iter(q["term"].items()))
        want = want.get("value") if isinstance(want, dict) else want
        got = _get(doc, field)
        return want in got if isinstance(got, list) else got == want
    if "bool" in q:
        return all(_matches(c, doc) for c in q["bool"].get("filter", []) + q["bool"].get("must", []))
    raise ValueError(f"query not supported by the test server: {q}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: EsState


class EsServer:
    """``with EsServer("9.1.0") as es: es.url`` — a running stand-in; ``stop()``/``start()`` keep the same port."""

    def __init__(self, version: str = "9.1.0", port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.state = EsState(version)
        self.port = port
        self.tls = tls
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> EsServer:
        srv = _Server(("127.0.0.1", self.port), _Handler)
        if self.tls is not None:
            srv.socket = self.tls.wrap_socket(srv.socket, server_side=True)
        srv.state = self.state
        self.port = srv.server_address[1]
        self._srv = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def __enter__(self) -> EsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # conveniences for tests
    def ids(self, pattern: str = "*") -> list[str]:
        return [i for _s, i, _d in self.state.docs(pattern)]

    def sources(self, pattern: str = "*") -> list[Json]:
        return [d for _s, _i, d in self.state.docs(pattern)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
