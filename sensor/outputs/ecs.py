"""The one place that maps messages, anomalies, alerts and stats to Elastic Common Schema documents.

ECS names only where ECS has the concept (checked against ecs_flat.yml in tests); protocol fields live under
``ics.<protocol>.*`` as named by the protocol's field registry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

from sensor import __version__
from sensor.messages import SEVERITY_SCORES, Alert, Anomaly, FieldRegistry, FlowInfo, Message
from sensor.messages.asset import AssetState

Document = dict[str, Any]
MODULE = "ics_sensor"
EVENT_DATASET = "ics_sensor.event"
ALERT_DATASET = "ics_sensor.alert"
STATS_DATASET = "ics_sensor.stats"
ASSET_DATASET = "ics_sensor.asset"
ATTACK_FRAMEWORK = "MITRE ATT&CK for ICS"


@dataclass(frozen=True)
class Observer:
    name: str = "ics-sensor"
    hostname: str = "localhost"
    site: str | None = None
    organization: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


# Serialised flow parts kept by message_json, one per flow and direction (about 0.6 kB each): room for 8k
# concurrent flows, since clearing a cache smaller than the live flows re-serialises every flow on every pass.
JSON_CACHE_ENTRIES = 16384

_sec_cache: dict[int, str] = {}
_slugs: dict[Any, str] = {}


_DECODE_ERROR = {
    "kind": "event", "category": ["network"], "type": ["error", "protocol"], "module": MODULE,
    "dataset": EVENT_DATASET, "action": "decode_error", "outcome": "failure",
}  # fmt: skip
_DECODE_ERROR_EVENT = b'Z","event":' + orjson.dumps(_DECODE_ERROR) + b',"error":'


def _slug(value: Any) -> str:
    """ECS event.action style: "Read Holding Registers" -> "read-holding-registers" (cached: few values)."""
    s = _slugs.get(value)
    if s is None:
        s = "-".join(str(value).lower().replace("_", " ").replace("/", " ").split())
        if len(_slugs) < 4096:
            _slugs[value] = s
    return s


def _second(sec: int) -> str:
    """The whole-second part of a timestamp, cached: captures are ordered, so one second covers many messages."""
    base = _sec_cache.get(sec)
    if base is None:
        if len(_sec_cache) > 4096:
            _sec_cache.clear()
        base = _sec_cache[sec] = dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base


def timestamp(ts_ns: int) -> str:
    """ISO 8601 UTC with nanoseconds (Elasticsearch date_nanos keeps them; date truncates to ms)."""
    sec, frac = divmod(ts_ns, 1_000_000_000)
    return f"{_second(sec)}.{frac:09d}Z"


class EcsMapper:
    def __init__(self, observer: Observer, registries: dict[str, FieldRegistry]) -> None:
        self.observer_doc: Document = {
            "name": observer.name, "hostname": observer.hostname, "type": "sensor",
            "vendor": "ics-sensor", "product": "ics-sensor", "version": __version__,
        }  # fmt: skip
        labels = dict(observer.labels)
        if observer.site:
            labels["site"] = observer.site
        self.labels = labels
        self.organization = {"name": observer.organization} if observer.organization else None
        self.registries = registries
        self._action_fields = {p: r.action_field for p, r in registries.items()}
        self._flow_cache: dict[tuple[int, bool, str], Document] = {}
        self._event_cache: dict[tuple[str, Any, str | None], Document] = {}
        self._file_docs: dict[str, Document] = {}
        self._json_cache: dict[Any, bytes] = {}
        self._ts_json: dict[int, bytes] = {}  # second -> b'{"@timestamp":"YYYY-MM-DDTHH:MM:SS.'
        self._tail_json: dict[str | None, bytes] = {None: b"}\n"}  # capture file -> end of line

    def _common(self, doc: Document) -> Document:
        doc["observer"] = self.observer_doc
        if self.labels:
            doc["labels"] = self.labels
        if self.organization:
            doc["organization"] = self.organization
        return doc

    def _flow_base(self, flow: FlowInfo, from_client: bool, protocol: str) -> Document:
        """The parts of a document that depend only on the flow and direction, built once per flow.

        Documents share these sub-dicts: consumers treat documents as read-only (a sink that adds fields,
        like event.ingested, copies the top level first).
        """
        key = (flow.flow_id, from_client, protocol)
        cached = self._flow_cache.get(key)
        if cached is not None and cached["client"]["ip"] == flow.client_ip:
            return cached
        if len(self._flow_cache) > 8192:
            self._flow_cache.clear()
        client = {"ip": flow.client_ip, "port": flow.client_port}
        server = {"ip": flow.server_ip, "port": flow.server_port}
        net: Document = {
            "transport": flow.transport, "community_id": flow.community_id,
            "type": "ipv6" if ":" in flow.client_ip else "ipv4", "protocol": protocol,
        }  # fmt: skip
        if flow.vlan:
            net["vlan"] = {"id": str(flow.vlan[0])}
            if len(flow.vlan) > 1:
                net["inner"] = {"vlan": {"id": str(flow.vlan[1])}}
        src, dst = (client, server) if from_client else (server, client)
        base: Document = {
            "source": src, "destination": dst, "client": client, "server": server, "network": net,
            "related": {"ip": sorted({flow.client_ip, flow.server_ip})},
        }  # fmt: skip
        self._common(base)
        self._flow_cache[key] = base
        return base

    def _log(self, packet: Any) -> Document | None:
        """log.file.path names the capture; the frame number and record offset go under ics (not ECS fields)."""
        file = packet.file
        if file is None:
            return None
        fd = self._file_docs.get(file)
        if fd is None:
            fd = self._file_docs[file] = {"file": {"path": file}}
        return fd

    def _event(self, protocol: str, action: Any, outcome: str | None) -> Document:
        key = (protocol, action, outcome)
        ev = self._event_cache.get(key)
        if ev is None:
            ev = {"kind": "event", "category": ["network"], "type": ["protocol"], "module": MODULE, "dataset": EVENT_DATASET}
            if action is not None:
                ev["action"] = _slug(action)
            if outcome is not None:
                ev["outcome"] = outcome
            if len(self._event_cache) < 4096:
                self._event_cache[key] = ev
        return ev.copy()

    def _action_outcome(self, m: Message) -> tuple[Any, str | None]:
        """event.action from the registry's action field; event.outcome failure for exceptions and errors,
        success for other answers, unset on requests."""
        f = m.fields
        field = self._action_fields.get(m.protocol)
        action = f.get(field) if field else None
        if f.get("is_exception") or f.get("is_error"):
            return action, "failure"
        return action, (None if m.from_client else "success")

    def message(self, m: Message) -> Document:
        f = m.fields
        action, outcome = self._action_outcome(m)
        event = self._event(m.protocol, action, outcome)
        if m.duration_ns is not None:
            event["duration"] = m.duration_ns
        doc: Document = {"@timestamp": timestamp(m.ts), "event": event}
        doc.update(self._flow_base(m.flow, m.from_client, m.protocol))
        doc["ics"] = {m.protocol: f, "frame": m.packet.frame, "record_offset": m.packet.offset}
        log = self._log(m.packet)
        if log is not None:
            doc["log"] = log
        return doc

    def _flow_json(self, flow: FlowInfo, protocol: str) -> tuple[bytes, bytes]:
        """The flow parts of a line, client-to-server and server-to-client: ``_flow_base`` serialised between the
        event and "ics". Both directions at once, from one document: they differ only in source and destination,
        and a flow's answer follows its request within microseconds."""
        base = self._flow_base(flow, True, protocol)
        body = orjson.dumps(base)[1:-1]
        client, server = orjson.dumps(base["client"]), orjson.dumps(base["server"])
        lead = b'"source":' + client + b',"destination":' + server
        if not body.startswith(lead):  # not the layout this relies on: serialise the other direction itself
            other = orjson.dumps(self._flow_base(flow, False, protocol))[1:-1]
            return b"}," + body + b',"ics":', b"}," + other + b',"ics":'
        rest = body[len(lead) :]
        return (
            b'},"source":' + client + b',"destination":' + server + rest + b',"ics":',
            b'},"source":' + server + b',"destination":' + client + rest + b',"ics":',
        )

    def _flow_part(self, flow: FlowInfo, from_client: bool, protocol: str) -> bytes:
        """The cached ``_flow_json`` part of one direction (both are cached at once)."""
        cache = self._json_cache
        if len(cache) > JSON_CACHE_ENTRIES:
            cache.clear()
        to_server, to_client = self._flow_json(flow, protocol)
        cache[(flow.flow_id, True, protocol, flow.client_ip)] = to_server
        cache[(flow.flow_id, False, protocol, flow.client_ip)] = to_client
        return to_server if from_client else to_client

    def _head_json(self, sec: int) -> bytes:
        """'{"@timestamp":"YYYY-MM-DDTHH:MM:SS.' of a line, cached per second."""
        head = self._ts_json.get(sec)
        if head is None:
            if len(self._ts_json) > 4096:
                self._ts_json.clear()
            head = self._ts_json[sec] = b'{"@timestamp":"' + _second(sec).encode() + b"."
        return head

    def _tail_of(self, file: str | None) -> bytes:
        """The end of a line: log.file.path of the capture (none live), then the closing braces."""
        tail = self._tail_json.get(file)
        if tail is None:
            if len(self._tail_json) > 1024:
                self._tail_json = {None: b"}\n"}
            tail = self._tail_json[file] = b',"log":{"file":{"path":' + orjson.dumps(file) + b"}}}\n"
        return tail

    def anomaly_json(self, a: Anomaly) -> bytes:
        """``anomaly(a)`` serialised as one NDJSON line, from the same cached parts as ``message_json`` (a test
        checks they are equal). Decode errors can come by the tens of thousands a minute from one broken peer."""
        flow = a.flow
        if flow is None:
            return orjson.dumps(self.anomaly(a), option=orjson.OPT_APPEND_NEWLINE)
        protocol = a.protocol
        fb = self._json_cache.get((flow.flow_id, a.from_client, protocol, flow.client_ip))
        if fb is None:
            fb = self._flow_part(flow, a.from_client, protocol)
        pk = a.packet
        ics = {"frame": pk.frame, "record_offset": pk.offset}
        if a.fields:
            ics[protocol] = a.fields
        error = orjson.dumps({"code": a.name, "message": a.reason, "type": "protocol_anomaly"})[:-1]  # open
        sec, frac = divmod(a.ts, 1_000_000_000)
        return b"".join((self._head_json(sec), b"%09d" % frac, _DECODE_ERROR_EVENT, error, fb, orjson.dumps(ics),
                         self._tail_of(pk.file)))  # fmt: skip

    def message_json(self, m: Message) -> bytes:
        """``message(m)`` serialised as one NDJSON line, without building the document.

        Everything but the protocol fields, the time, the frame and the latency is serialised once and cached
        (per flow and direction, per event action and outcome, per second, per capture file), so a line costs
        one small orjson call and one join. The action and outcome are those of ``_action_outcome``, inlined:
        this runs once per message. A test checks that it equals ``orjson.dumps(message(m))``.
        """
        f = m.fields
        protocol = m.protocol
        flow = m.flow
        from_client = m.from_client
        cache = self._json_cache
        fb = cache.get((flow.flow_id, from_client, protocol, flow.client_ip))
        if fb is None:
            fb = self._flow_part(flow, from_client, protocol)
        field = self._action_fields.get(protocol)
        action = f.get(field) if field else None
        if f.get("is_exception") or f.get("is_error"):
            outcome: str | None = "failure"
        else:
            outcome = None if from_client else "success"
        ekey = (protocol, action, outcome)
        ev = cache.get(ekey)
        if ev is None:
            ev = cache[ekey] = b'Z","event":' + orjson.dumps(self._event(protocol, action, outcome))[:-1]  # open
        sec, frac = divmod(m.ts, 1_000_000_000)
        head = self._ts_json.get(sec)
        if head is None:
            head = self._head_json(sec)
        pk = m.packet
        tail = self._tail_json.get(pk.file)
        if tail is None:
            tail = self._tail_of(pk.file)
        # One join of cached parts (bytes %-formatting grows its buffer piece by piece, join sizes it once); the
        # frame and offset ride in the protocol fields' orjson call rather than being formatted apart.
        ics = orjson.dumps({protocol: f, "frame": pk.frame, "record_offset": pk.offset})
        if m.duration_ns is None:
            return b"".join((head, b"%09d" % frac, ev, fb, ics, tail))
        return b"".join((head, b"%09d" % frac, ev, b',"duration":%d' % m.duration_ns, fb, ics, tail))

    def anomaly(self, a: Anomaly) -> Document:
        doc: Document = {
            "@timestamp": timestamp(a.ts),
            "event": dict(_DECODE_ERROR),  # a copy: the lists shared, as _event's copies share theirs
            "error": {"code": a.name, "message": a.reason, "type": "protocol_anomaly"},
        }  # fmt: skip
        if a.flow is not None:
            doc.update(self._flow_base(a.flow, a.from_client, a.protocol))
        else:
            self._common(doc)
            doc["network"] = {"protocol": a.protocol}
        doc["ics"] = {"frame": a.packet.frame, "record_offset": a.packet.offset}
        if a.fields:
            doc["ics"][a.protocol] = a.fields
        log = self._log(a.packet)
        if log is not None:
            doc["log"] = log
        return doc

    def alert(self, al: Alert) -> Document:
        m = al.message
        base = self.message(m) if isinstance(m, Message) else self.anomaly(m)
        first = al.first_ts or al.ts
        last = al.last_ts or al.ts
        base["@timestamp"] = timestamp(first)
        event: Document = {
            "kind": "alert", "category": ["network", "intrusion_detection"], "type": ["info"],
            "module": MODULE, "dataset": ALERT_DATASET, "severity": SEVERITY_SCORES.get(al.severity, 47),
            "start": timestamp(first), "end": timestamp(last), "risk_score": float(SEVERITY_SCORES.get(al.severity, 47)),
            "reason": al.explanation or al.description,
        }  # fmt: skip
        if "action" in base["event"]:
            event["action"] = base["event"]["action"]
        if al.score is not None:
            event["risk_score"] = round(float(al.score) * 100, 2)
        base["event"] = event
        base["rule"] = {
            "id": al.rule_id, "uuid": al.rule_id, "name": al.rule_name, "description": al.description,
            "version": al.rule_version, "category": al.rule_category or al.detector, "ruleset": al.detector,
        }  # fmt: skip
        if al.references:
            base["rule"]["reference"] = " ".join(al.references)
        if al.techniques:
            base["threat"] = {
                "framework": ATTACK_FRAMEWORK,
                "technique": {
                    "id": list(al.techniques),
                    "reference": [f"https://attack.mitre.org/techniques/{t.replace('.', '/')}/" for t in al.techniques],
                },
            }
            names = al.extra.get("threat")  # technique and tactic names, from the detector that knows the release
            if names:
                base["threat"]["technique"].update(names.get("technique", {}))
                if names.get("tactic", {}).get("name"):
                    base["threat"]["tactic"] = names["tactic"]
        base["ics"]["alert"] = {
            "count": al.count, "severity": al.severity, "detector": al.detector, "attack_version": al.attack_version,
        }  # fmt: skip
        if al.explanation:
            base["message"] = al.explanation
        else:
            base["message"] = al.rule_name
        details = {k: v for k, v in al.extra.items() if k != "threat"}
        if details:
            base["ics"]["alert"]["details"] = details
        return base

    def asset(self, st: AssetState) -> Document:
        """An inventory record: ECS ``host.*``/``device.*`` where ECS has the concept, the rest under ics.asset."""
        f = st.fields
        nested: Document = {"first_seen": timestamp(st.first), "last_seen": timestamp(st.ts)}
        for k, v in f.items():
            node = nested
            *parents, leaf = k.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        host: Document = {"id": st.ip, "ip": [st.ip], "type": f.get("role", "unknown")}
        if f.get("s7comm.module_name"):
            host["name"] = f["s7comm.module_name"]
        device: Document = {}
        if f.get("modbus.vendor_name"):
            device["manufacturer"] = f["modbus.vendor_name"]
        model = {k: v for k, v in (
            ("identifier", f.get("modbus.product_code") or f.get("s7comm.order_number")),
            ("name", f.get("modbus.model_name") or f.get("modbus.product_name") or f.get("s7comm.module_type_name")),
        ) if v}  # fmt: skip
        if model:
            device["model"] = model
        if f.get("s7comm.serial_number"):
            device["serial_number"] = f["s7comm.serial_number"]
        doc: Document = {
            "@timestamp": timestamp(st.ts),
            "event": {
                "kind": "asset", "category": ["host"], "type": ["change" if st.action == "changed" else "info"],
                "module": MODULE, "dataset": ASSET_DATASET, "action": st.action,
            },
            "message": f"{st.ip}: {', '.join(f.get('roles', ()))} ({', '.join(f.get('protocols', ()))})",
            "host": host, "related": {"ip": [st.ip]}, "ics": {"asset": nested},
        }  # fmt: skip
        if device:
            doc["device"] = device
        return self._common(doc)

    def stats(self, ts_ns: int, stats: Document) -> Document:
        doc: Document = {
            "@timestamp": timestamp(ts_ns),
            "event": {"kind": "metric", "category": ["network"], "type": ["info"], "module": MODULE, "dataset": STATS_DATASET},
            "ics": {"stats": stats},
        }
        return self._common(doc)
