"""Self-contained HTML audit report: a Sink that aggregates event and alert documents while streaming.

Memory stays bounded on a replay of millions of packets: events become counters (per host pair and function,
per time bucket, per Modbus write target, per MQTT topic, device facts), and at most ``max_alerts`` alert documents
are kept (the most severe, earliest first), with a note when the table is truncated; counts and charts always cover
every alert. ``render(stats)`` builds one HTML file with inline CSS, SVG charts and a little vanilla JS: no
external resource, and a Content-Security-Policy that forbids any request. Everything that came from the wire
(topics, client ids, device names, rule text) is HTML-escaped, and the JSON of the alert fields is embedded with
``<``, ``>`` and ``&`` as ``\\u`` escapes and rendered with ``textContent`` only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import html
import math
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sensor import __version__
from sensor.attack import RELEASE, TACTICS, technique
from sensor.outputs.base import Document
from sensor.outputs.report_assets import CSS, JS

SEVERITIES = ("critical", "high", "medium", "low")
SEV_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
MAX_ALERTS = 5000
MAX_TS_KEYS = 50_000  # per-second buckets before coarsening to minutes, hours, days
MAX_KEYS = 20_000  # cap on write targets, topics, clients, subscriptions
MAX_FLOW_KEYS = 100_000  # cap on (client, server, function) keys behind the graph, inventory and function charts
MAX_GRAPH_NODES = 40
MAX_ROWS = 500  # rows per aggregate table in the page
MODBUS_CONTROL_DIAG = {1: "restart communications option", 4: "force listen only mode", 10: "clear counters"}
CONTROL_WORDS = ("stop", "start", "restart", "download", "delete", "control", "firmware", "program", "run",
                 "insert", "password", "cold", "warm", "reset", "force")  # fmt: skip
WRITE_ACCESS = {"write", "read_write"}
_DETAIL_SKIP = ("observer", "client", "server", "related", "event.module", "event.dataset", "event.category",
                "event.type", "threat.framework", "threat.technique.reference", "rule.uuid")  # fmt: skip
_RULE_LEVEL = ("rule.", "threat.")  # the same for every alert of a rule: stored once in the page


def e(value: Any) -> str:
    """HTML-escape anything for text and attribute positions."""
    return html.escape("" if value is None else str(value), quote=True)


def json_for_script(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` or line separators."""
    s = orjson.dumps(value).decode()
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))  # fmt: skip


def rule_pack_summary(detectors: Iterable[Any]) -> str | None:
    """'12 rules, 10 active, id@rev digest 1a2b3c4d5e6f' for the rule engines among ``detectors`` (duck-typed)."""
    rules: list[tuple[str, int]] = []
    active = 0
    for d in detectors:
        for st in getattr(d, "statuses", ()):
            rule = getattr(st, "rule", None)
            if rule is not None:
                rules.append((str(rule.id), int(getattr(rule, "rev", 1))))
                active += bool(getattr(st, "active", True))
    if not rules:
        return None
    digest = hashlib.sha256(" ".join(f"{i}@{r}" for i, r in sorted(rules)).encode()).hexdigest()[:12]
    return f"{len(rules)} rules, {active} active, id@rev digest {digest}"


def _sev_label(doc_event: Document, ics_alert: Document) -> str:
    sev = ics_alert.get("severity")
    if sev in SEV_RANK:
        return str(sev)
    score = doc_event.get("severity")
    if isinstance(score, int | float):
        return "critical" if score >= 90 else "high" if score >= 70 else "medium" if score >= 40 else "low"
    return "medium"


def _flatten(obj: Any, prefix: str, out: list[list[str]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            if not p.startswith(_DETAIL_SKIP):
                _flatten(v, p, out)
        return
    if isinstance(obj, list):
        if all(not isinstance(x, dict | list) for x in obj):
            text = ", ".join(str(x) for x in obj[:32]) + (f", … ({len(obj)} values)" if len(obj) > 32 else "")
            out.append([prefix, text])
        else:
            for i, x in enumerate(obj[:16]):
                _flatten(x, f"{prefix}[{i}]", out)
        return
    s = str(obj)
    out.append([prefix, s if len(s) <= 500 else s[:500] + "…"])


def _classify(proto: str, action: str | None, access: Any) -> str:
    """'write', 'control' or '' for an event's function (cached by the caller)."""
    a = (action or "").lower()
    if any(w in a for w in CONTROL_WORDS) or access in ("control", "program", "execute", "download", "security"):
        return "control"
    if access in WRITE_ACCESS or (proto != "mqtt" and a.startswith("write")):
        return "write"
    return ""


def _ts_prefix_to_epoch(prefix: str) -> int:
    p = prefix if len(prefix) != 13 else prefix + ":00"
    d = dt.datetime.fromisoformat(p if len(p) > 10 else p + "T00:00")
    return int(d.replace(tzinfo=dt.UTC).timestamp())


@dataclass(slots=True)
class AlertRow:
    ts: str
    sev: str
    rule_id: str
    rule_name: str
    techniques: list[str]
    src: str
    src_port: Any
    dst: str
    dst_port: Any
    proto: str
    action: str
    count: int
    message: str
    details: list[list[str]]


@dataclass
class ReportData:
    """Everything the page shows, aggregated while streaming."""

    tsl: int = 19  # length of the ISO timestamp prefix used as time bucket (19 s, 16 min, 13 h, 10 day)
    first_ts: str | None = None
    last_ts: str | None = None
    traffic: Counter[str] = field(default_factory=Counter)  # ts prefix -> messages
    alert_time: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ts prefix, severity) -> alerts
    # (proto, client, server, server port) -> [messages, first, last, requests, writes, control commands, failures]
    pairs: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    funcs: dict[tuple[Any, ...], int] = field(default_factory=dict)  # (proto, action, fc, class, is_request) -> n
    pair_funcs: dict[tuple[Any, ...], int] = field(default_factory=dict)  # (proto, client, server, action, fc) -> requests
    captures: Counter[str] = field(default_factory=Counter)
    decode_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (name, client, server)
    events: int = 0
    alerts: int = 0
    alerts_by_sev: Counter[str] = field(default_factory=Counter)
    alerts_by_rule: dict[str, list[Any]] = field(default_factory=dict)  # id -> [name, severity, count]
    alerts_by_tech: Counter[str] = field(default_factory=Counter)
    alerts_by_pair: Counter[tuple[str, str]] = field(default_factory=Counter)
    kept: list[tuple[int, int, AlertRow]] = field(default_factory=list)  # heap (severity rank, -seq, row)
    modbus_units: dict[str, set[int]] = field(default_factory=dict)
    modbus_writes: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    modbus_exceptions: Counter[tuple[str, Any, str]] = field(default_factory=Counter)
    device_facts: dict[str, dict[str, str]] = field(default_factory=dict)  # ip -> facts (FC 43/14, S7 SZL)
    s7_objects: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (server, kind, value)
    mqtt_topics: dict[str, list[Any]] = field(default_factory=dict)  # topic -> [publishes, publishers, qos, retained, first, last]
    mqtt_subs: dict[str, set[str]] = field(default_factory=dict)  # filter -> subscribers
    mqtt_clients: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ip, client id) -> facts
    rule_fields: dict[str, list[list[str]]] = field(default_factory=dict)  # rule id -> rule.* and threat.* fields
    dropped_keys: int = 0
    metric: Document | None = None  # the stats document, when one is written to the sink


class ReportSink:
    """Aggregates event, alert and stats documents; ``close()`` writes the HTML report when a path was given."""

    def __init__(
        self, path: str | None = None, max_alerts: int = MAX_ALERTS, captures: Iterable[str] = (),
        rule_pack: str | None = None, title: str = "ICS sensor report",
    ) -> None:  # fmt: skip
        self.path = path
        self.max_alerts = max_alerts
        self.capture_list = list(captures)
        self.rule_pack = rule_pack
        self.title = title
        self.data = ReportData()
        self._seq = 0
        self._cls: dict[tuple[Any, ...], str] = {}
        self.stats: Document | None = None

    # -- Sink ----------------------------------------------------------------------------------------------------
    def open(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.path:
            page = self.render(self.stats)
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(page)

    def write(self, batch: list[Document]) -> None:
        for d in batch:
            ev = d.get("event") or {}
            kind = ev.get("kind")
            if kind == "event":
                self._event(d, ev)
            elif kind == "alert":
                self._alert(d, ev)
            elif kind == "metric":
                st = (d.get("ics") or {}).get("stats")
                if isinstance(st, dict):
                    self.data.metric = st
                    if self.stats is None:
                        self.stats = st

    # -- aggregation (hot path: a few dict operations per event) ------------------------------------------------
    def _bucket(self, ts: str) -> str:
        D = self.data
        if D.first_ts is None or ts < D.first_ts:
            D.first_ts = ts
        if D.last_ts is None or ts > D.last_ts:
            D.last_ts = ts
        return ts[: D.tsl]

    def _coarsen(self) -> None:
        D = self.data
        D.tsl = {19: 16, 16: 13, 13: 10}.get(D.tsl, 7)
        traffic: Counter[str] = Counter()
        for k, v in D.traffic.items():
            traffic[k[: D.tsl]] += v
        D.traffic = traffic
        at: Counter[tuple[str, str]] = Counter()
        for (k, s), v in D.alert_time.items():
            at[(k[: D.tsl], s)] += v
        D.alert_time = at

    def _event(self, d: Document, ev: Document) -> None:
        D = self.data
        D.events += 1
        ts = d.get("@timestamp") or ""
        b = self._bucket(ts)
        traffic = D.traffic
        traffic[b] = traffic.get(b, 0) + 1
        if len(traffic) > MAX_TS_KEYS:
            self._coarsen()
        log = d.get("log")
        if log:
            path = (log.get("file") or {}).get("path")
            if path:
                D.captures[path] += 1
        net = d.get("network") or {}
        proto = net.get("protocol") or "unknown"
        cl = d.get("client") or d.get("source") or {}
        sv = d.get("server") or d.get("destination") or {}
        cip, sip = cl.get("ip", "?"), sv.get("ip", "?")
        action = ev.get("action")
        ics = d.get("ics") or {}
        f = ics.get(proto) or {}
        if action == "decode_error":
            D.decode_errors[((d.get("error") or {}).get("code", "?"), cip, sip)] += 1
            return
        req = f.get("is_request")
        if req is None:
            req = d.get("source") == cl
        fc = f.get("function_code")
        access = f.get("access")
        ck = (proto, action, access)
        cls = self._cls.get(ck)
        if cls is None:
            cls = self._cls[ck] = _classify(proto, action, access)
        if proto == "modbus":
            cls = self._modbus(f, cip, sip, cls, req, ts)
        elif proto == "s7comm":
            self._s7(f, sip, req)
        elif proto == "mqtt":
            self._mqtt(f, cip, req, ts, action)
        req = bool(req)
        pkey = (proto, cip, sip, sv.get("port"))
        rec = D.pairs.get(pkey)
        if rec is None:
            if len(D.pairs) < MAX_FLOW_KEYS:
                rec = D.pairs[pkey] = [0, ts, ts, 0, 0, 0, 0]
            else:
                D.dropped_keys += 1
        if rec is not None:
            rec[0] += 1
            rec[2] = ts
            if req:
                rec[3] += 1
                if cls == "write":
                    rec[4] += 1
                elif cls == "control":
                    rec[5] += 1
            if ev.get("outcome") == "failure":
                rec[6] += 1
        fkey = (proto, action, fc, cls, req)
        D.funcs[fkey] = D.funcs.get(fkey, 0) + 1
        if req:
            mkey = (proto, cip, sip, action, fc)
            n = D.pair_funcs.get(mkey)
            if n is not None:
                D.pair_funcs[mkey] = n + 1
            elif len(D.pair_funcs) < MAX_FLOW_KEYS:
                D.pair_funcs[mkey] = 1
            else:
                D.dropped_keys += 1

    def _modbus(self, f: Document, cip: str, sip: str, cls: str, req: bool, ts: str) -> str:
        D = self.data
        unit = f.get("unit_id")
        units = D.modbus_units.get(sip)
        if units is None:
            units = D.modbus_units[sip] = set()
        if unit is not None and len(units) < 256:
            units.add(unit)
        fc = f.get("function_code")
        if fc == 8 and f.get("diagnostic_code") in MODBUS_CONTROL_DIAG:
            cls = "control"
        if f.get("is_exception"):
            D.modbus_exceptions[(sip, fc, str(f.get("exception_name") or f.get("exception_code")))] += 1
        if req and cls == "write":
            ref = f.get("write_reference_number", f.get("reference_number"))
            qty = f.get("write_quantity", f.get("quantity", 1))
            key = (cip, sip, unit, fc, f.get("table"), ref)
            w = D.modbus_writes.get(key)
            vals = f.get("values") or ([f["output_value"]] if "output_value" in f else [])
            if w is None:
                if len(D.modbus_writes) < MAX_KEYS:
                    D.modbus_writes[key] = [1, qty, vals[:8], ts, ts]
                else:
                    D.dropped_keys += 1
            else:
                w[0] += 1
                w[2] = vals[:8]
                w[4] = ts
        elif fc == 43 and not req:
            objs = f.get("objects")
            if isinstance(objs, dict):
                facts = D.device_facts.setdefault(sip, {})
                for k, v in list(objs.items())[:32]:
                    if len(facts) < 48:
                        facts[f"unit {unit} {k}" if unit not in (None, 0, 255, 1) else str(k)] = str(v)[:200]
        return cls

    def _s7(self, f: Document, sip: str, req: bool) -> None:
        D = self.data
        objs = D.s7_objects
        if len(objs) < MAX_KEYS:
            area = f.get("area_name")
            if area is not None:
                dbs = f.get("db_number")
                areas = area if isinstance(area, list) else [area]
                dbl = dbs if isinstance(dbs, list) else [dbs] * len(areas)
                for a, db in zip(areas, dbl, strict=False):
                    objs[(sip, "area", f"{a} {db}" if db else str(a))] += 1
            bt = f.get("block_type")
            if bt is not None:
                bn = f.get("block_number")
                objs[(sip, "block", f"{bt} {bn}" if bn is not None else str(bt))] += 1
            for kind, name in (("szl", "szl_id_name"), ("pi service", "pi_service_name"), ("file", "filename")):
                v = f.get(name)
                if v is not None and req:
                    objs[(sip, kind, str(v)[:80])] += 1
        if not req:
            facts: dict[str, str] | None = None
            for k, v in f.items():
                if k.startswith("szl.") and not isinstance(v, dict | list):
                    facts = facts if facts is not None else D.device_facts.setdefault(sip, {})
                    if len(facts) < 48:
                        facts[k] = str(v)[:200]
                elif k == "szl" and isinstance(v, dict):
                    facts = facts if facts is not None else D.device_facts.setdefault(sip, {})
                    for kk, vv in list(v.items())[:32]:
                        if len(facts) < 48 and not isinstance(vv, dict | list):
                            facts[f"szl.{kk}"] = str(vv)[:200]

    def _mqtt(self, f: Document, cip: str, req: bool, ts: str, action: str | None) -> None:
        D = self.data
        cid = f.get("clientid", f.get("client_id"))
        if cid is not None:
            key = (cip, str(cid)[:256])
            c = D.mqtt_clients.get(key)
            if c is None and len(D.mqtt_clients) < MAX_KEYS:
                c = D.mqtt_clients[key] = {"messages": 0}
            if c is not None:
                c["messages"] += 1
                if c["messages"] == 1 or f.get("msgtype") == 1:
                    for k in ("username", "protocol_version_name", "kalive", "willtopic", "transport_security"):
                        if f.get(k) is not None:
                            c[k] = str(f[k])[:200]
        a = action or ""
        topic = f.get("topic")
        if topic is not None and (f.get("msgtype") == 3 or a.startswith("publish-message")):
            topic = str(topic)
            t = D.mqtt_topics.get(topic)
            who = (str(cid) if cid is not None else cip) if req else f"broker → {cid if cid is not None else cip}"
            if t is None:
                if len(D.mqtt_topics) >= MAX_KEYS:
                    D.dropped_keys += 1
                    return
                t = D.mqtt_topics[topic] = [0, set(), set(), 0, ts, ts]
            t[0] += 1
            if len(t[1]) < 16:
                t[1].add(who)
            q = f.get("qos")
            if q is not None:
                t[2].add(q)
            if f.get("retain"):
                t[3] += 1
            t[5] = ts
        elif f.get("msgtype") == 8 or a.startswith("subscribe-request"):
            filters = f.get("topic_filters") or f.get("topics") or []
            for flt in filters if isinstance(filters, list) else [filters]:
                name = flt.get("topic") if isinstance(flt, dict) else flt
                if name is None:
                    continue
                s = D.mqtt_subs.get(str(name))
                if s is None:
                    if len(D.mqtt_subs) >= MAX_KEYS:
                        continue
                    s = D.mqtt_subs[str(name)] = set()
                if len(s) < 16:
                    s.add(f"{cid} ({cip})" if cid is not None else cip)

    def _alert(self, d: Document, ev: Document) -> None:
        D = self.data
        D.alerts += 1
        ics = d.get("ics") or {}
        ia = ics.get("alert") or {}
        sev = _sev_label(ev, ia)
        ts = d.get("@timestamp") or ""
        b = self._bucket(ts)
        D.alert_time[(b, sev)] += 1
        if len(D.alert_time) > MAX_TS_KEYS:
            self._coarsen()
        D.alerts_by_sev[sev] += 1
        rule = d.get("rule") or {}
        rid = str(rule.get("id") or "?")
        r = D.alerts_by_rule.get(rid)
        if r is None:
            r = D.alerts_by_rule[rid] = [rule.get("name") or rid, sev, 0]
        r[2] += 1
        tech = ((d.get("threat") or {}).get("technique") or {}).get("id") or []
        techs = [str(t) for t in (tech if isinstance(tech, list) else [tech])]
        for t in techs:
            D.alerts_by_tech[t] += 1
        src, dst = d.get("source") or {}, d.get("destination") or {}
        sip, dip = str(src.get("ip", "")), str(dst.get("ip", ""))
        D.alerts_by_pair[(sip, dip)] += 1
        self._seq += 1
        rank = SEV_RANK.get(sev, 2)
        if len(D.kept) >= self.max_alerts and (self.max_alerts <= 0 or rank <= D.kept[0][0]):
            return  # the table keeps the most severe alerts, earliest first
        flat: list[list[str]] = []
        _flatten(d, "", flat)
        details = [kv for kv in flat if not kv[0].startswith(_RULE_LEVEL)]
        if rid not in D.rule_fields and len(D.rule_fields) < MAX_KEYS:  # rule text once per rule, not per alert
            D.rule_fields[rid] = [kv for kv in flat if kv[0].startswith(_RULE_LEVEL)]
        row = AlertRow(
            ts=ts, sev=sev, rule_id=rid, rule_name=str(rule.get("name") or ""), techniques=techs, src=sip,
            src_port=src.get("port"), dst=dip, dst_port=dst.get("port"), proto=str((d.get("network") or {}).get("protocol") or ""),
            action=str(ev.get("action") or ""), count=int(ia.get("count") or 1),
            message=str(d.get("message") or ev.get("reason") or rule.get("name") or ""), details=details,
        )  # fmt: skip
        item = (rank, -self._seq, row)
        if len(D.kept) < self.max_alerts:
            heapq.heappush(D.kept, item)
        else:
            heapq.heapreplace(D.kept, item)

    # -- rendering ----------------------------------------------------------------------------------------------
    def render(self, stats: Document | None = None) -> str:
        """The whole report as one HTML string."""
        return Renderer(self, stats if stats is not None else self.stats).html()


# ---------------------------------------------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------------------------------------------
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800, 2592000, 31536000)  # fmt: skip
PROTO_COLORS = ("modbus", "s7comm", "mqtt")


def _fmt_ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_dur(secs: float) -> str:
    secs = int(secs)
    if secs < 120:
        return f"{secs} s"
    if secs < 7200:
        return f"{secs // 60} min {secs % 60} s"
    if secs < 172800:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    return f"{secs // 86400} d {secs % 86400 // 3600} h"


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else e(v)


def _iso_to_epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts[:26].rstrip("Z") if len(ts) > 26 else ts.rstrip("Z")).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def hbar_chart(chart_id: str, items: list[tuple[str, int, str]], title: str, width: int = 560) -> str:
    """Horizontal bars: (label, value, css class) -> inline SVG."""
    if not items:
        return f'<p class="empty" id="{e(chart_id)}">No data.</p>'
    row, label_w, num_w = 22, 230, 70
    h = row * len(items) + 8
    vmax = max(v for _, v, _ in items) or 1
    bar_w = width - label_w - num_w
    out = [f'<svg id="{e(chart_id)}" class="chart hbar" role="img" aria-label="{e(title)}" viewBox="0 0 {width} {h}" '
           f'width="{width}" height="{h}"><title>{e(title)}</title>']  # fmt: skip
    for i, (label, v, cls) in enumerate(items):
        y = 4 + i * row
        w = max(1.0, bar_w * v / vmax)
        short = label if len(label) <= 34 else label[:33] + "…"
        out.append(
            f'<g class="bar-row"><text class="lbl" x="{label_w - 6}" y="{y + 15}" text-anchor="end">{e(short)}</text>'
            f'<rect class="bar {e(cls)}" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" rx="2">'
            f"<title>{e(label)}: {v:,}</title></rect>"
            f'<text class="num" x="{label_w + w + 5:.1f}" y="{y + 15}">{v:,}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _bucketize(counts: dict[Any, int], key_ts: Any, n_max: int = 120) -> tuple[float, int, int]:
    """(start epoch, bucket width in seconds, number of buckets) covering the keys."""
    times = [key_ts(k) for k in counts]
    lo, hi = min(times), max(times)
    span = max(1, hi - lo + 1)
    width = next((s for s in NICE_STEPS if span / s <= n_max), NICE_STEPS[-1])
    start = lo - lo % width
    n = int((hi - start) // width) + 1
    return start, width, n


def timeline_chart(chart_id: str, series: dict[str, dict[int, int]], title: str, start: float, width_s: int,
                   n: int, classes: dict[str, str], width: int = 900, height: int = 180) -> str:  # fmt: skip
    """Stacked bars over time: series name -> {bucket index: count}."""
    left, right, top, bottom = 50, 10, 10, 34
    pw, ph = width - left - right, height - top - bottom
    totals = [sum(s.get(i, 0) for s in series.values()) for i in range(n)]
    vmax = max(totals) if totals else 0
    if vmax == 0:
        return f'<p class="empty" id="{e(chart_id)}">No data.</p>'
    bw = pw / n
    out = [f'<svg id="{e(chart_id)}" class="chart timeline" role="img" aria-label="{e(title)}" viewBox="0 0 {width} {height}" '
           f'width="100%" preserveAspectRatio="xMinYMin meet"><title>{e(title)}</title>',
           f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>',
           f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>',
           f'<text class="tick" x="{left - 4}" y="{top + 8}" text-anchor="end">{vmax:,}</text>',
           f'<text class="tick" x="{left - 4}" y="{top + ph}" text-anchor="end">0</text>']  # fmt: skip
    for i in range(n):
        y = top + ph
        parts = []
        for name, s in series.items():
            v = s.get(i, 0)
            if not v:
                continue
            hgt = ph * v / vmax
            y -= hgt
            parts.append(f'<rect class="tbar {e(classes.get(name, ""))}" x="{left + i * bw + 0.5:.1f}" y="{y:.1f}" '
                         f'width="{max(0.8, bw - 1):.1f}" height="{max(0.5, hgt):.1f}"/>')  # fmt: skip
        if parts:
            detail = ", ".join(f"{name} {s.get(i, 0):,}" for name, s in series.items() if s.get(i, 0))
            out.append(f"<g><title>{e(_fmt_ts(start + i * width_s))} (+{_fmt_dur(width_s)}): {e(detail)}</title>{''.join(parts)}</g>")
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        x = left + pw * frac
        out.append(f'<text class="tick" x="{x:.1f}" y="{height - 18}" text-anchor="{anchor}">{e(_fmt_ts(start + n * width_s * frac))}</text>')
    out.append(f'<text class="tick" x="{left + pw:.1f}" y="{height - 4}" text-anchor="end">bucket {e(_fmt_dur(width_s))}</text>')
    out.append("</svg>")
    return "".join(out)


@dataclass
class Edge:
    client: str
    server: str
    count: int = 0
    protos: Counter[str] = field(default_factory=Counter)
    funcs: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    controls: int = 0
    failures: int = 0
    alerts: int = 0
    first: str = ""
    last: str = ""


@dataclass
class Host:
    ip: str
    roles: set[str] = field(default_factory=set)
    protos: set[str] = field(default_factory=set)
    ports: set[Any] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)
    sent: int = 0
    received: int = 0
    writes: int = 0
    controls: int = 0
    alerts: int = 0
    first: str = ""
    last: str = ""


ROLE_NAMES = {
    ("modbus", True): "Modbus server", ("modbus", False): "Modbus client",
    ("s7comm", True): "S7 PLC", ("s7comm", False): "S7 client",
    ("mqtt", True): "MQTT broker", ("mqtt", False): "MQTT client",
}  # fmt: skip


class Renderer:
    """Turns the aggregates into the page (pure: the sink's data are not changed)."""

    def __init__(self, sink: ReportSink, stats: Document | None) -> None:
        self.sink = sink
        self.D = sink.data
        self.stats = stats or {}
        self.edges, self.hosts = self._graph_model()

    # -- model ------------------------------------------------------------------------------------------------
    def _graph_model(self) -> tuple[list[Edge], dict[str, Host]]:
        edges: dict[tuple[str, str], Edge] = {}
        hosts: dict[str, Host] = {}

        def host(ip: str) -> Host:
            h = hosts.get(ip)
            if h is None:
                h = hosts[ip] = Host(ip)
            return h

        for (proto, cip, sip, sport), (count, first, last, reqs, writes, controls, failures) in self.D.pairs.items():
            ed = edges.get((cip, sip))
            if ed is None:
                ed = edges[(cip, sip)] = Edge(cip, sip, first=first, last=last)
            ed.count += count
            ed.protos[proto] += count
            ed.first, ed.last = min(ed.first, first), max(ed.last, last)
            ed.writes += writes
            ed.controls += controls
            ed.failures += failures
            c, s = host(cip), host(sip)
            c.roles.add(ROLE_NAMES.get((proto, False), f"{proto} client"))
            s.roles.add(ROLE_NAMES.get((proto, True), f"{proto} server"))
            for h, peer in ((c, sip), (s, cip)):
                h.protos.add(proto)
                if len(h.peers) < 64:
                    h.peers.add(peer)
                h.first = min(h.first or first, first)
                h.last = max(h.last, last)
            if sport is not None:
                s.ports.add(sport)
            c.sent += reqs
            s.received += reqs
            s.sent += count - reqs
            c.received += count - reqs
            c.writes += writes
            c.controls += controls
        for (proto, cip, sip, action, fc), n in self.D.pair_funcs.items():
            ed = edges.get((cip, sip))
            if ed is not None:
                ed.funcs[f"{proto}: FC {fc} {action}" if proto == "modbus" and fc is not None else f"{proto}: {action}"] += n
        for (a, b), n in self.D.alerts_by_pair.items():
            ed = edges.get((a, b)) or edges.get((b, a))
            if ed is not None:
                ed.alerts += n
            for ip in {a, b}:
                if ip in hosts:
                    hosts[ip].alerts += n
        for ip, h in hosts.items():
            if h.writes or h.controls:
                h.roles.add("engineering / control station" if h.controls else "writes to field devices")
            if ip in self.D.device_facts:
                h.roles.add("identified device")
        return sorted(edges.values(), key=lambda x: -x.count), hosts

    # -- page ---------------------------------------------------------------------------------------------------
    def html(self) -> str:
        nonce = secrets.token_urlsafe(16)
        D = self.D
        sections = [
            ("summary", "Summary", self.summary()),
            ("alerts", "Alerts", self.alerts_overview()),
            ("alert-list", f"Alert table ({D.alerts:,})", self.alert_table()),
            ("attack", "ATT&CK for ICS", self.attack()),
            ("talkers", "Who talks to whom", self.talkers()),
            ("assets", f"Asset inventory ({len(self.hosts):,} hosts)", self.assets()),
            ("modbus", "Modbus/TCP", self.modbus()),
            ("s7comm", "S7comm", self.s7()),
            ("mqtt", "MQTT", self.mqtt()),
            ("sensor", "Sensor statistics", self.sensor_stats()),
        ]
        nav = "".join(f'<a href="#{sid}">{e(title.split(" (")[0])}</a>' for sid, title, _ in sections)
        body = "".join(f'<section id="{sid}"><h2>{e(title)}</h2>{content}</section>' for sid, title, content in sections)
        csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'nonce-{nonce}'; "
               "connect-src 'none'; form-action 'none'; base-uri 'none'")  # fmt: skip
        generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            "<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="color-scheme" content="light dark">'
            f"<title>{e(self.sink.title)}</title><style>{CSS}</style></head><body>"
            f'<header><h1>{e(self.sink.title)}</h1><p class="sub">Generated {e(generated)} by ics-sensor {e(__version__)}</p>'
            f"<nav>{nav}</nav></header><main>{body}</main>"
            f'<footer>ics-sensor {e(__version__)} · self-contained report: no external resources · ATT&amp;CK for ICS release {e(RELEASE)}</footer>'
            f'<script type="application/json" id="alert-data">{json_for_script(self._details())}</script>'
            f'<script nonce="{nonce}">{JS}</script></body></html>\n'
        )

    def _rows(self) -> list[AlertRow]:
        return [r for _, _, r in sorted(self.D.kept, key=lambda x: (x[2].ts, -x[0]))]

    def _details(self) -> dict[str, Any]:
        """Fields of each table row (in row order) and of each rule, joined by the page's JS on expand."""
        return {"rows": [r.details for r in self._rows()], "rules": self.D.rule_fields}

    def summary(self) -> str:
        D, st = self.D, self.stats
        captures = self.sink.capture_list or sorted(D.captures)
        t0, t1 = _iso_to_epoch(D.first_ts), _iso_to_epoch(D.last_ts)
        span = f"{_fmt_ts(t0)} → {_fmt_ts(t1)} UTC ({_fmt_dur(t1 - t0)})" if t0 is not None and t1 is not None else "n/a"
        msgs: dict[str, int] = st.get("messages") or {}
        if not msgs:
            per: Counter[str] = Counter()
            for k, v in D.funcs.items():
                per[k[0]] += v
            msgs = dict(per)
        protos = sorted({k[0] for k in D.funcs})
        dec = st.get("decode_errors", sum(D.decode_errors.values()))
        rule_pack = self.sink.rule_pack or st.get("rule_pack") or st.get("rules_version") or "n/a"
        cards = [
            ("Captures", f"{len(captures):,}"),
            ("Packets", _n(st["packets"]) if "packets" in st else "n/a"),
            ("Messages", f"{D.events:,}"),
            ("Hosts", f"{len(self.hosts):,}"),
            ("Protocols", ", ".join(protos) or "none"),
            ("Decode errors", _n(dec)),
            ("Alerts", f"{D.alerts:,}"),
        ]
        card_html = "".join(f'<div class="card"><div class="k">{e(k)}</div><div class="v">{v if k in ("Packets", "Decode errors") else e(v)}</div></div>' for k, v in cards)
        rows = [
            ("Time span", span),
            ("Captures", "; ".join(captures[:20]) + (f" … ({len(captures)} files)" if len(captures) > 20 else "")),
            ("Bytes", f"{st['bytes']:,}" if isinstance(st.get("bytes"), int) else "n/a"),
            ("Flows", f"{st['flows']:,}" if isinstance(st.get("flows"), int) else f"{len(self.edges):,} host pairs"),
            ("Messages per protocol", ", ".join(f"{k} {v:,}" for k, v in sorted(dict(msgs).items())) or "none"),
            ("Decode errors by name", ", ".join(f"{k} {v:,}" for k, v in (st.get("decode_errors_by_name") or {}).items()) or "none"),
            ("Sensor version", __version__),
            ("Rule pack", str(rule_pack)),
            ("Replay time", f"{st['seconds']} s ({st.get('packets_per_second', 0):,} packets/s)" if "seconds" in st else "n/a"),
        ]
        table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        note = ""
        if D.dropped_keys:
            note = f'<p class="note">{D.dropped_keys:,} events were counted in totals only: aggregate tables reached their cap ({MAX_FLOW_KEYS:,} conversation keys, {MAX_KEYS:,} others).</p>'
        return f'<div class="cards" id="summary-cards">{card_html}</div><table class="kv" id="summary-table">{table}</table>{note}'

    def alerts_overview(self) -> str:
        D = self.D
        sev_items = [(s, D.alerts_by_sev.get(s, 0), f"sev-{s}") for s in SEVERITIES if D.alerts_by_sev.get(s)]
        by_sev = hbar_chart("chart-severity", sev_items, "Alerts by severity", width=480)
        rules = sorted(D.alerts_by_rule.items(), key=lambda kv: -kv[1][2])[:15]
        by_rule = hbar_chart("chart-rules", [(f"{rid} {r[0]}", r[2], f"sev-{r[1]}") for rid, r in rules], "Alerts by rule (top 15)", width=620)
        tl = '<p class="empty" id="chart-alert-timeline">No alerts.</p>'
        if D.alert_time:
            start, w, n = _bucketize(D.alert_time, lambda k: _ts_prefix_to_epoch(k[0]))
            series: dict[str, dict[int, int]] = {s: {} for s in SEVERITIES}
            for (k, s), v in D.alert_time.items():
                i = int((_ts_prefix_to_epoch(k) - start) // w)
                series.setdefault(s, {})[i] = series.setdefault(s, {}).get(i, 0) + v
            series = {s: v for s, v in series.items() if v}
            tl = timeline_chart("chart-alert-timeline", series, "Alerts over time by severity", start, w, n, {s: f"sev-{s}" for s in SEVERITIES})
        traffic = '<p class="empty" id="chart-traffic">No messages.</p>'
        if D.traffic:
            start, w, n = _bucketize(D.traffic, _ts_prefix_to_epoch)
            s1: dict[int, int] = {}
            for k, v in D.traffic.items():
                i = int((_ts_prefix_to_epoch(k) - start) // w)
                s1[i] = s1.get(i, 0) + v
            traffic = timeline_chart("chart-traffic", {"messages": s1}, "Decoded messages over time", start, w, n, {"messages": "traffic"}, height=140)
        legend = "".join(f'<span class="chip sev-{s}">{s}</span>' for s in SEVERITIES)
        return (f'<div class="grid2"><div><h3>By severity</h3>{by_sev}</div><div><h3>By rule</h3>{by_rule}</div></div>'
                f'<h3>Alerts over time</h3><div class="legend">{legend}</div>{tl}<h3>Traffic over time</h3>{traffic}')  # fmt: skip

    def alert_table(self) -> str:
        D = self.D
        rows = self._rows()
        if not rows:
            return '<p class="empty">No alerts.</p><table id="alert-table" class="data"><tbody></tbody></table>'
        note = ""
        if D.alerts > len(rows):
            note = (f'<p class="note" id="alert-truncated">The table holds {len(rows):,} of {D.alerts:,} alerts: the most severe, '
                    "earliest first. Counts and charts cover every alert.</p>")  # fmt: skip

        def options(name: str, values: Iterable[tuple[str, str]]) -> str:
            opts = "".join(f'<option value="{e(v)}">{e(lbl)}</option>' for v, lbl in values)
            return f'<label>{e(name)} <select data-filter="{e(name)}"><option value="">all</option>{opts}</select></label>'

        sev_present = [s for s in SEVERITIES if any(r.sev == s for r in rows)]
        rules = sorted({(r.rule_id, r.rule_name) for r in rows})
        techs = sorted({t for r in rows for t in r.techniques})
        srcs = sorted({r.src for r in rows})
        dsts = sorted({r.dst for r in rows})
        controls = (
            '<div class="controls" id="alert-filters">'
            + options("severity", [(s, s) for s in sev_present])
            + options("rule", [(rid, f"{rid} {name}"[:80]) for rid, name in rules])
            + options("technique", [(t, f"{t} {(technique(t) or ('unknown', ()))[0]}") for t in techs])
            + options("source", [(s, s) for s in srcs])
            + options("destination", [(d, d) for d in dsts])
            + '<label>text <input type="search" id="alert-search" placeholder="filter text"></label>'
            + '<button type="button" id="alert-reset">reset</button>'
            + f'<span id="alert-count" aria-live="polite">{len(rows):,} of {len(rows):,} rows</span></div>'
        )
        head = "".join(
            f'<th data-key="{k}" aria-sort="none"><button type="button" class="sort">{lbl}</button></th>'
            for k, lbl in (("ts", "Time (UTC)"), ("sev", "Severity"), ("rule", "Rule"), ("tech", "Techniques"),
                           ("src", "Source"), ("dst", "Destination"), ("proto", "Protocol / action"), ("count", "Count"),
                           ("msg", "Message"))
        )  # fmt: skip
        body = []
        for i, r in enumerate(rows):
            tech = " ".join(r.techniques)
            tech_html = e(" ".join(r.techniques))
            src = f"{r.src}:{r.src_port}" if r.src_port is not None else r.src
            dst = f"{r.dst}:{r.dst_port}" if r.dst_port is not None else r.dst
            body.append(
                f'<tr class="arow" data-i="{i}" data-ts="{e(r.ts)}" data-severity="{r.sev}" data-rule="{e(r.rule_id)}" '
                f'data-technique="{e(tech)}" data-source="{e(r.src)}" data-destination="{e(r.dst)}" data-count="{r.count}">'
                f'<td><button type="button" class="exp" aria-expanded="false" aria-label="show fields">▸</button>{e(r.ts[:23].replace("T", " "))}</td>'
                f'<td class="sev sev-{r.sev}">{r.sev}</td><td><b>{e(r.rule_id)}</b> {e(r.rule_name)}</td>'
                f'<td class="tech">{tech_html}</td><td>{e(src)}</td>'
                f"<td>{e(dst)}</td><td>{e(r.proto)} {e(r.action)}</td>"
                f'<td class="r">{r.count:,}</td><td class="msg">{e(r.message)}</td></tr>'
            )
        cols = "".join(f'<col style="width:{w}">' for w in ("140px", "80px", "19%", "90px", "140px", "140px", "11%", "55px", "auto"))
        return (f"{note}{controls}<div class=\"scroll\"><table id=\"alert-table\" class=\"data alerts\"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip

    def attack(self) -> str:
        D = self.D
        if not D.alerts_by_tech:
            return '<p class="empty" id="attack-matrix">No techniques in the alerts.</p>'
        by_tactic: dict[str, list[tuple[str, str, int]]] = {}
        unknown: list[tuple[str, int]] = []
        for tid, n in D.alerts_by_tech.items():
            info = technique(tid)
            if info is None:
                unknown.append((tid, n))
                continue
            for ta in info[1]:
                by_tactic.setdefault(ta, []).append((tid, info[0], n))
        cols = []
        for ta, _short, name in TACTICS:
            items = by_tactic.get(ta)
            if not items:
                continue
            cells = "".join(f'<li class="tcell"><span class="tid">{e(t)}</span> {e(nm)}<span class="cnt">{n:,}</span></li>'
                            for t, nm, n in sorted(items, key=lambda x: (-x[2], x[0])))  # fmt: skip
            cols.append(f'<div class="tactic" data-tactic="{e(ta)}"><h4>{e(name)}<small>{e(ta)}</small></h4><ul>{cells}</ul></div>')
        extra = ""
        if unknown:
            extra = "<p class=\"note\">Not in release " + e(RELEASE) + " or the v19 crosswalk: " + ", ".join(f"{e(t)} ({n:,})" for t, n in sorted(unknown)) + "</p>"
        return (f'<p>Techniques named by the alerts (alert counts), grouped by tactic in matrix order; a technique '
                f'with several tactics appears under each. Release {e(RELEASE)}; v19 sub-technique ids resolve through the crosswalk.</p>'
                f'<div class="matrix" id="attack-matrix">{"".join(cols)}</div>{extra}')  # fmt: skip

    def talkers(self) -> str:
        if not self.edges:
            return '<p class="empty" id="graph">No conversations.</p>'
        return self._graph_svg() + self._edge_table()

    def _graph_svg(self) -> str:
        weight: Counter[str] = Counter()
        for ed in self.edges:
            weight[ed.client] += ed.count
            weight[ed.server] += ed.count
        keep: set[str] = set()
        edges: list[Edge] = []
        for ed in self.edges:  # busiest conversations first, while their hosts fit
            new = {ed.client, ed.server} - keep
            if len(keep) + len(new) <= MAX_GRAPH_NODES:
                keep |= new
                edges.append(ed)
        clients = {ed.client for ed in edges}
        servers = {ed.server for ed in edges}
        cols: list[list[str]] = [sorted(clients - servers, key=lambda ip: -weight[ip]),
                                 sorted(clients & servers, key=lambda ip: -weight[ip]),
                                 sorted(servers - clients, key=lambda ip: -weight[ip])]  # fmt: skip
        nbrs: dict[str, list[str]] = {}
        for ed in edges:
            nbrs.setdefault(ed.client, []).append(ed.server)
            nbrs.setdefault(ed.server, []).append(ed.client)
        for _ in range(4):  # barycentre ordering, a few sweeps, to untangle edges
            pos = {ip: i / max(1, len(c) - 1) for c in cols for i, ip in enumerate(c)}
            for c in cols:
                c.sort(key=lambda ip: sum(pos[p] for p in nbrs[ip]) / len(nbrs[ip]))
        used = [c for c in cols if c]
        width, row_h, top = 1000, 44, 30
        xs = {1: [500], 2: [290, 710], 3: [290, 500, 710]}[len(used)]
        tallest = max(len(c) for c in used)
        height = top * 2 + tallest * row_h
        xy: dict[str, tuple[float, float, int]] = {}
        for ci, c in enumerate(used):
            off = top + (tallest - len(c)) * row_h / 2 + row_h / 2
            for i, ip in enumerate(c):
                xy[ip] = (xs[ci], off + i * row_h, ci)
        out = [f'<svg id="graph" class="chart graph" role="img" aria-label="Hosts and the conversations between them" '
               f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMin meet">'
               "<title>Who talks to whom: clients on the left, servers on the right</title>"]  # fmt: skip
        vmax = max(ed.count for ed in edges) or 1
        show_labels = len(edges) <= 14
        for ed in edges:
            x1, y1, c1 = xy[ed.client]
            x2, y2, c2 = xy[ed.server]
            if c1 == c2:
                d = f"M{x1 + 8},{y1} C{x1 + 140},{y1} {x2 + 140},{y2} {x2 + 8},{y2}"
                lx, ly, anchor = x1 + 110, (y1 + y2) / 2, "middle"
            else:
                mx = (x1 + x2) / 2
                d = f"M{x1 + 8},{y1} C{mx},{y1} {mx},{y2} {x2 - 8},{y2}"
                t = 0.12  # label near the client end, where edges are still apart
                lx = (1 - t) ** 3 * (x1 + 8) + 3 * (1 - t) * t * mx + t**3 * (x2 - 8) + 6
                ly = ((1 - t) ** 3 + 3 * (1 - t) ** 2 * t) * y1 + (3 * (1 - t) * t**2 + t**3) * y2
                anchor = "start"
            sw = 1.2 + 4 * math.log10(1 + 9 * ed.count / vmax)
            proto = ed.protos.most_common(1)[0][0]
            cls = ["edge", f"proto-{proto if proto in PROTO_COLORS else 'other'}"]
            if ed.writes:
                cls.append("write")
            if ed.controls:
                cls.append("control")
            if ed.alerts:
                cls.append("alerted")
            mix = "; ".join(f"{k} {v:,}" for k, v in ed.funcs.most_common(8))
            tip = (f"{ed.client} → {ed.server}: {ed.count:,} messages ({', '.join(f'{p} {n:,}' for p, n in ed.protos.most_common())})"
                   f"; writes {ed.writes:,}, control {ed.controls:,}, alerts {ed.alerts:,}. Requests: {mix}")  # fmt: skip
            out.append(f'<path class="{" ".join(cls)}" d="{d}" stroke-width="{sw:.1f}" data-client="{e(ed.client)}" '
                       f'data-server="{e(ed.server)}"><title>{e(tip)}</title></path>')  # fmt: skip
            if show_labels:
                top_funcs = ", ".join(k.split(": ", 1)[-1] for k, _ in ed.funcs.most_common(2))
                flags = (" ✎" if ed.writes else "") + (" ⚡" if ed.controls else "")
                label = f"{proto}: {top_funcs}{flags}" if top_funcs else proto
                out.append(f'<text class="elabel" x="{lx:.1f}" y="{ly - 5:.1f}" text-anchor="{anchor}">{e(label[:60])}</text>')
        for ip, (x, y, ci) in xy.items():
            h = self.hosts[ip]
            roles = ", ".join(sorted(h.roles))
            short_roles = roles if len(roles) <= 40 else roles[:39] + "…"
            anchor, dx = ("end", -12) if ci == 0 and len(used) > 1 else ("start", 12)
            cls = "node" + (" alerted" if h.alerts else "") + (" writer" if h.writes or h.controls else "")
            out.append(f'<g class="{cls}" data-ip="{e(ip)}"><title>{e(ip)}: {e(roles)}; sent {h.sent:,}, received {h.received:,}, alerts {h.alerts:,}</title>'
                       f'<circle cx="{x}" cy="{y}" r="7"/><text class="nlabel" x="{x + dx}" y="{y - 2}" text-anchor="{anchor}">{e(ip)}</text>'
                       f'<text class="nrole" x="{x + dx}" y="{y + 11}" text-anchor="{anchor}">{e(short_roles)}</text></g>')  # fmt: skip
        out.append("</svg>")
        omitted = len(weight) - len(keep)
        legend = ('<div class="legend"><span class="chip proto-modbus">modbus</span><span class="chip proto-s7comm">s7comm</span>'
                  '<span class="chip proto-mqtt">mqtt</span><span class="chip write">writes (✎)</span>'
                  '<span class="chip control">control commands (⚡)</span><span class="chip alerted">host or pair with alerts</span>'
                  "<span>line width: message count (log scale); hover for the function mix</span></div>")  # fmt: skip
        note = ""
        if omitted > 0 or len(edges) < len(self.edges):
            note = (f'<p class="note">The graph shows the busiest {len(edges):,} of {len(self.edges):,} conversations '
                    f"({len(keep)} hosts); {omitted:,} more hosts are in the tables.</p>")  # fmt: skip
        return legend + "".join(out) + note

    def _edge_table(self) -> str:
        rows = []
        for ed in self.edges[:MAX_ROWS]:
            cls = ' class="hl"' if ed.writes or ed.controls else ""
            mix = ", ".join(f"{k} {v:,}" for k, v in ed.funcs.most_common(6))
            rows.append(f"<tr{cls}><td>{e(ed.client)}</td><td>{e(ed.server)}</td><td>{e(', '.join(ed.protos))}</td>"
                        f'<td class="r">{ed.count:,}</td><td class="r">{ed.writes:,}</td><td class="r">{ed.controls:,}</td>'
                        f'<td class="r">{ed.failures:,}</td><td class="r">{ed.alerts:,}</td><td>{e(mix)}</td>'
                        f"<td>{e(ed.first[:19])} → {e(ed.last[:19])}</td></tr>")  # fmt: skip
        more = f'<p class="note">{len(self.edges) - MAX_ROWS:,} more pairs not listed.</p>' if len(self.edges) > MAX_ROWS else ""
        return ('<h3>Conversations</h3><div class="scroll"><table class="data" id="edge-table"><thead><tr><th>Client</th><th>Server</th>'
                '<th>Protocols</th><th>Messages</th><th>Writes</th><th>Control</th><th>Errors</th><th>Alerts</th>'
                f"<th>Requests (function mix)</th><th>First → last</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>{more}")  # fmt: skip

    def assets(self) -> str:
        if not self.hosts:
            return '<p class="empty" id="asset-table">No hosts.</p>'
        hosts = sorted(self.hosts.values(), key=lambda h: (-(h.sent + h.received), h.ip))
        rows = []
        for h in hosts[: MAX_ROWS * 4]:
            facts = dict(self.D.device_facts.get(h.ip, {}))
            units = self.D.modbus_units.get(h.ip)
            if units:
                facts = {"modbus units": ", ".join(str(u) for u in sorted(units)[:32]), **facts}
            fact_html = "".join(f"<div><span class=\"fk\">{e(k)}</span> {e(v)}</div>" for k, v in facts.items())
            cls = ' class="hl"' if h.writes or h.controls else ""
            rows.append(f'<tr{cls} data-ip="{e(h.ip)}"><td>{e(h.ip)}</td><td>{e(", ".join(sorted(h.roles)))}</td><td>{e(", ".join(sorted(h.protos)))}</td>'
                        f"<td>{e(', '.join(str(p) for p in sorted(h.ports, key=str)[:8]))}</td><td class=\"r\">{len(h.peers):,}</td>"
                        f'<td class="r">{h.sent:,}</td><td class="r">{h.received:,}</td><td class="r">{h.writes:,}</td>'
                        f'<td class="r">{h.controls:,}</td><td class="r">{h.alerts:,}</td><td class="facts">{fact_html}</td>'
                        f"<td>{e(h.first[:19])} → {e(h.last[:19])}</td></tr>")  # fmt: skip
        return ('<p>Roles are inferred from what each host does on the wire: it answered (server, PLC, broker) or asked '
                '(client); writes and control commands mark engineering or control stations. Device facts come from Modbus '
                "FC 43/14 device identification and S7 SZL reads.</p>"
                '<div class="scroll"><table class="data" id="asset-table"><thead><tr><th>Host</th><th>Roles</th><th>Protocols</th>'
                "<th>Server ports</th><th>Peers</th><th>Sent</th><th>Received</th><th>Writes</th><th>Control</th><th>Alerts</th>"
                f"<th>Device facts</th><th>First → last seen</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip

    def _functions(self, proto: str) -> list[tuple[str, int, str]]:
        c: Counter[tuple[str, str]] = Counter()
        any_req = any(k[4] for k in self.D.funcs if k[0] == proto)
        for (p, action, fc, cls, req), n in self.D.funcs.items():
            if p == proto and (req or not any_req):
                c[(f"{fc} {action}" if proto == "modbus" and fc is not None else str(action), cls)] += n
        return [(lbl, n, f"fn {cls}" if cls else "fn") for (lbl, cls), n in c.most_common(24)]

    def modbus(self) -> str:
        D = self.D
        if not any(k[0] == "modbus" for k in D.funcs):
            return '<p class="empty">No Modbus/TCP traffic.</p>'
        chart = hbar_chart("chart-modbus-fc", self._functions("modbus"), "Modbus requests by function code", width=620)
        writes = sorted(D.modbus_writes.items(), key=lambda kv: -kv[1][0])
        wrows = "".join(
            f"<tr><td>{e(k[0])}</td><td>{e(k[1])}</td><td>{e(k[2])}</td><td>{e(k[3])}</td><td>{e(k[4])}</td><td class=\"r\">{e(k[5])}</td>"
            f'<td class="r">{e(v[1])}</td><td class="r">{v[0]:,}</td><td>{e(", ".join(str(x) for x in v[2]))}</td><td>{e(v[3][:19])} → {e(v[4][:19])}</td></tr>'
            for k, v in writes[:MAX_ROWS]
        )  # fmt: skip
        wtable = ('<table class="data" id="modbus-writes"><thead><tr><th>Client</th><th>Server</th><th>Unit</th><th>FC</th><th>Table</th>'
                  "<th>Address</th><th>Quantity</th><th>Writes</th><th>Last values</th><th>First → last</th></tr></thead>"
                  f"<tbody>{wrows}</tbody></table>") if writes else '<p class="empty" id="modbus-writes">No writes.</p>'  # fmt: skip
        more = f'<p class="note">{len(writes) - MAX_ROWS:,} more write targets not listed.</p>' if len(writes) > MAX_ROWS else ""
        exc = "".join(f"<tr><td>{e(s)}</td><td>{e(fc)}</td><td>{e(name)}</td><td class=\"r\">{n:,}</td></tr>"
                      for (s, fc, name), n in D.modbus_exceptions.most_common(50))  # fmt: skip
        exc_html = (f'<h3>Exception responses</h3><table class="data" id="modbus-exceptions"><thead><tr><th>Server</th><th>FC</th>'
                    f"<th>Exception</th><th>Count</th></tr></thead><tbody>{exc}</tbody></table>") if exc else ""  # fmt: skip
        return (f"<h3>Function codes (requests)</h3>{chart}<h3>Write targets</h3><div class=\"scroll\">{wtable}</div>{more}{exc_html}")

    def s7(self) -> str:
        D = self.D
        if not any(k[0] == "s7comm" for k in D.funcs):
            return '<p class="empty">No S7comm traffic.</p>'
        chart = hbar_chart("chart-s7-functions", self._functions("s7comm"), "S7 functions", width=620)
        objs = "".join(f"<tr><td>{e(s)}</td><td>{e(k)}</td><td>{e(v)}</td><td class=\"r\">{n:,}</td></tr>"
                       for (s, k, v), n in D.s7_objects.most_common(MAX_ROWS))  # fmt: skip
        obj_html = (f'<h3>Areas, blocks, SZL lists, PI services and files</h3><table class="data" id="s7-objects"><thead><tr><th>PLC</th><th>Kind</th><th>Value</th>'
                    f"<th>Messages</th></tr></thead><tbody>{objs}</tbody></table>") if objs else ""  # fmt: skip
        return f"<h3>Functions</h3>{chart}{obj_html}"

    def mqtt(self) -> str:
        D = self.D
        if not any(k[0] == "mqtt" for k in D.funcs):
            return '<p class="empty">No MQTT traffic.</p>'
        chart = hbar_chart("chart-mqtt-packets", self._functions("mqtt"), "MQTT packet types", width=620)
        topics = sorted(D.mqtt_topics.items(), key=lambda kv: -kv[1][0])
        trows = "".join(
            f"<tr><td class=\"topic\">{e(t)}</td><td class=\"r\">{v[0]:,}</td><td>{e(', '.join(sorted(v[1])))}</td>"
            f"<td>{e(', '.join(str(q) for q in sorted(v[2], key=str)))}</td><td class=\"r\">{v[3]:,}</td><td>{e(v[4][:19])} → {e(v[5][:19])}</td></tr>"
            for t, v in topics[:MAX_ROWS]
        )  # fmt: skip
        ttable = (f'<table class="data" id="mqtt-topics"><thead><tr><th>Topic</th><th>Publishes</th><th>Publishers</th><th>QoS</th>'
                  f"<th>Retained</th><th>First → last</th></tr></thead><tbody>{trows}</tbody></table>") if topics else '<p class="empty" id="mqtt-topics">No publishes.</p>'  # fmt: skip
        subs = "".join(f"<tr><td class=\"topic\">{e(t)}</td><td>{e(', '.join(sorted(s)))}</td></tr>"
                       for t, s in sorted(D.mqtt_subs.items())[:MAX_ROWS])  # fmt: skip
        stable = (f'<h3>Subscriptions</h3><table class="data" id="mqtt-subs"><thead><tr><th>Filter</th><th>Subscribers</th></tr></thead>'
                  f"<tbody>{subs}</tbody></table>") if subs else ""  # fmt: skip
        crow = "".join(
            f"<tr><td>{e(ip)}</td><td class=\"topic\">{e(cid)}</td><td>{e(c.get('username', ''))}</td>"
            f"<td>{e(c.get('protocol_version_name', ''))}</td><td>{e(c.get('kalive', ''))}</td><td>{e(c.get('willtopic', ''))}</td>"
            f"<td>{e(c.get('transport_security', ''))}</td><td class=\"r\">{c['messages']:,}</td></tr>"
            for (ip, cid), c in sorted(D.mqtt_clients.items())[:MAX_ROWS]
        )  # fmt: skip
        ctable = (f'<h3>Clients</h3><table class="data" id="mqtt-clients"><thead><tr><th>Host</th><th>Client id</th><th>User</th>'
                  f"<th>Version</th><th>Keep-alive</th><th>Will topic</th><th>Transport</th><th>Messages</th></tr></thead><tbody>{crow}</tbody></table>") if crow else ""  # fmt: skip
        return f'<h3>Packet types</h3>{chart}<h3>Topics</h3><div class="scroll">{ttable}</div>{stable}{ctable}'

    def sensor_stats(self) -> str:
        st = self.stats
        dec = "".join(f"<tr><td>{e(n)}</td><td>{e(c)}</td><td>{e(s)}</td><td class=\"r\">{v:,}</td></tr>"
                      for (n, c, s), v in self.D.decode_errors.most_common(100))  # fmt: skip
        dec_html = (f'<h3>Decode errors</h3><table class="data" id="decode-errors"><thead><tr><th>Anomaly</th><th>Client</th><th>Server</th>'
                    f"<th>Count</th></tr></thead><tbody>{dec}</tbody></table>") if dec else "<p>No decode errors in the events.</p>"  # fmt: skip
        if not st:
            return dec_html + '<p class="note">No sensor statistics document was given.</p>'
        flat: list[list[str]] = []
        _flatten({k: v for k, v in st.items() if k not in ("messages", "alerts_by_rule")}, "", flat)
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in flat if v not in ("", "0"))
        return f'{dec_html}<h3>Counters</h3><table class="kv" id="sensor-stats">{rows}</table><p class="note">Zero counters are not listed.</p>'
