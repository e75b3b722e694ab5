"""The learned baseline: who talks to whom, with which functions, addresses, values, topics and polling periods.

Everything is plain JSON (string keys), bounded by caps; an entry pushed out by a cap is counted in ``evicted``.
Training calls ``learn_message`` and ``learn_window``; scoring calls ``check_message`` and ``check_pair``, which
return ``Deviation``s whose explanation says what was seen, what was learned and over how much training.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from detectors.anomaly.features import (
    Pair,
    Window,
    access_of,
    action_of,
    pair_of,
    pair_str,
    signature_str,
)
from sensor.messages import Message

CAPS = {
    "talkers": 20_000, "modbus": 20_000, "registers": 50_000, "s7": 10_000, "mqtt": 10_000,
    "topics_per_client": 1_000, "pairs": 20_000, "polls": 50_000,
}  # fmt: skip
GENERALIZE_AT = 5  # distinct values at one topic level (others equal) that become a '+' in the learned pattern
MIN_VALUE_SAMPLES = 5  # fewer writes of a register than this: its value range is not checked
VALUE_FALSE_ALARM = 1e-4  # chance per write that a value from the learned range lands outside the margin
POLL_PERSIST = 3  # consecutive windows out of range before a polling-period deviation is reported
MAX_MATCH_MEMO = 10_000  # memoised (topic pattern, topic) matches
MIN_POLL_WINDOWS = 10  # windows with >= 3 requests of a signature before its polling period is checked
S7_FUNCTION_NAMES = {
    0x00: "CPU services", 0x04: "Read Var", 0x05: "Write Var", 0x1A: "Request Download", 0x1B: "Download Block",
    0x1C: "Download Ended", 0x1D: "Start Upload", 0x1E: "Upload", 0x1F: "End Upload", 0x28: "PI Service",
    0x29: "PLC Stop", 0xF0: "Setup Communication",
}  # fmt: skip


def span_words(ns: int) -> str:
    """'3 days 4 hours', '2 hours 5 minutes', '40 seconds'."""
    s = max(int(ns // 1_000_000_000), 0)
    d, rem = divmod(s, 86_400)
    h, rem = divmod(rem, 3_600)
    m, sec = divmod(rem, 60)
    parts = [(d, "day"), (h, "hour"), (m, "minute"), (sec, "second")]
    words = [f"{v} {u}{'s' if v != 1 else ''}" for v, u in parts if v][:2]
    return " ".join(words) or "0 seconds"


_CLOCK = [-1, ""]  # the last second formatted: deviations come in runs at one capture second


def clock(ts: int) -> str:
    """UTC time of day of a capture timestamp, 'HH:MM:SS' (every explanation has one; strftime cost 2.5 us)."""
    sec = ts // 1_000_000_000
    if sec != _CLOCK[0]:
        d = sec % 86_400
        _CLOCK[0], _CLOCK[1] = sec, f"{d // 3600:02d}:{d // 60 % 60:02d}:{d % 60:02d}"
    return _CLOCK[1]


def mqtt_match(pattern: str, topic: str) -> bool:
    """MQTT filter matching (MQTT 3.1.1 section 4.7): '+' one level, '#' the rest."""
    p, t = pattern.split("/"), topic.split("/")
    for i, seg in enumerate(p):
        if seg == "#":
            return not (i == 0 and t[0].startswith("$"))
        if i >= len(t) or (seg != "+" and seg != t[i]):
            return False
        if seg == "+" and i == 0 and t[0].startswith("$"):
            return False
    return len(p) == len(t)


def _generic(seg: str) -> bool:
    """A topic level that is an identifier rather than a name: digits, or a long hex string."""
    return seg.isdigit() or (len(seg) >= 8 and all(c in "0123456789abcdefABCDEF-" for c in seg))


def topic_patterns(topics: list[str]) -> list[str]:
    """Generalize learned topics: identifier levels and levels with many values (others equal) become '+'."""
    pats = {"/".join("+" if _generic(s) else s for s in t.split("/")) for t in topics}
    changed = True
    while changed:
        changed = False
        groups: dict[tuple[int, int, tuple[str, ...]], set[str]] = {}
        for p in pats:
            segs = p.split("/")
            for i in range(len(segs)):
                groups.setdefault((len(segs), i, tuple(segs[:i] + segs[i + 1 :])), set()).add(segs[i])
        for (_n, i, rest), values in groups.items():
            if len(values) >= GENERALIZE_AT and "+" not in values:
                new = "/".join([*rest[:i], "+", *rest[i:]])
                pats = {p for p in pats if not mqtt_match(new, p)} | {new}
                changed = True
                break
    return sorted(pats)


def _bounded(d: dict[str, Any], cap: int, evicted: dict[str, int], kind: str) -> None:
    """Make room for one new entry in ``d`` (oldest inserted out first), counting evictions."""
    while len(d) >= cap:
        d.pop(next(iter(d)))
        evicted[kind] = evicted.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class Deviation:
    """One departure from the baseline, ready to become an alert."""

    kind: str  # rule suffix: new_talker, new_function, address_range, value_range, ...
    key: str  # what repeats are suppressed on
    title: str
    explanation: str
    severity: str
    techniques: tuple[str, ...]
    message: Message
    details: dict[str, Any] = field(default_factory=dict)
    learnable: bool = True  # slow learning may promote it; rate and timing deviations never are


class Baseline:
    """Learned per-site behaviour; ``to_json``/``from_json`` round-trip it."""

    def __init__(self) -> None:
        self.first_ns = 0
        self.last_ns = 0
        self.messages = 0
        self.windows = 0
        self.window_seconds = 60.0
        self.talkers: dict[str, list[int]] = {}  # pair -> [count, first_ns, last_ns]
        self.modbus: dict[str, dict[str, Any]] = {}  # client|server|unit -> {fc, ranges}
        self.registers: dict[str, list[float]] = {}  # client|server|unit|table|address -> [min, max, n]
        self.s7: dict[str, dict[str, dict[str, int]]] = {}  # client|server -> {functions, areas, dbs}
        self.mqtt: dict[str, dict[str, Any]] = {}  # clientid -> {pub, sub, qos, size, patterns}
        self.pairs: dict[str, dict[str, float]] = {}  # pair -> {windows, max_requests, max_writes}
        self.polls: dict[str, list[float]] = {}  # pair|signature -> [windows, lo, hi, median]
        self._poll_samples: dict[str, list[float]] = {}  # training only: per-window mean periods
        self._span: tuple[int, str] = (-1, "")
        self._poll_streak: dict[str, int] = {}  # scoring only: consecutive windows out of the learned period range
        # scoring only, caches of derived strings and results (cleared when full): see _check_modbus, _check_s7, _matches
        self._unit_keys: dict[tuple[Pair, int], str] = {}
        self._pair_keys: dict[Pair, str] = {}
        self._match_memo: dict[tuple[str, str], bool] = {}
        self.evicted: dict[str, int] = {}

    # -- training ----------------------------------------------------------------------------------------------
    def learn_message(self, m: Message) -> None:
        if not self.first_ns or m.ts < self.first_ns:
            self.first_ns = m.ts
        self.last_ns = max(self.last_ns, m.ts)
        self.messages += 1
        p = pair_of(m)
        pk = pair_str(p)
        t = self.talkers.get(pk)
        if t is None:
            _bounded(self.talkers, CAPS["talkers"], self.evicted, "talkers")
            self.talkers[pk] = [1, m.ts, m.ts]
        else:
            t[0] += 1
            t[2] = m.ts
        f = m.fields
        if m.protocol == "modbus":
            if not f.get("is_request"):
                return
            key = f"{p[0]}|{p[1]}:{p[3]}|{f.get('unit_id')}"
            e = self.modbus.get(key)
            if e is None:
                _bounded(self.modbus, CAPS["modbus"], self.evicted, "modbus")
                e = self.modbus[key] = {"fc": {}, "ranges": {}}
            fc = str(f.get("function_code"))
            c = e["fc"].get(fc)
            e["fc"][fc] = [1, m.ts] if c is None else [c[0] + 1, c[1]]
            ref, qty = f.get("reference_number"), f.get("quantity")
            if ref is not None:
                end = ref + max((qty or len(f.get("values") or ()) or 1) - 1, 0)
                rk = f"{f.get('table')}|{access_of(m)}"
                r = e["ranges"].get(rk)
                e["ranges"][rk] = [ref, end] if r is None else [min(r[0], ref), max(r[1], end)]
                vals = f.get("values")
                if access_of(m) == "write" and vals and f.get("table") == "holding_registers":
                    for i, v in enumerate(vals[:64]):
                        vk = f"{key}|holding_registers|{ref + i}"
                        s = self.registers.get(vk)
                        if s is None:
                            _bounded(self.registers, CAPS["registers"], self.evicted, "registers")
                            self.registers[vk] = [v, v, 1]
                        else:
                            s[0], s[1], s[2] = min(s[0], v), max(s[1], v), s[2] + 1
        elif m.protocol == "s7comm":
            if not f.get("is_request"):
                return
            key = f"{p[0]}|{p[1]}:{p[3]}"
            e = self.s7.get(key)
            if e is None:
                _bounded(self.s7, CAPS["s7"], self.evicted, "s7")
                e = self.s7[key] = {"functions": {}, "areas": {}, "dbs": {}}
            fn = action_of(m)
            if fn is not None:
                e["functions"][str(fn)] = e["functions"].get(str(fn), 0) + 1
            for name, vs in (("areas", f.get("area")), ("dbs", f.get("db_number"))):
                for v in vs if isinstance(vs, list) else ():
                    e[name][str(v)] = e[name].get(str(v), 0) + 1
        elif m.protocol == "mqtt":
            if not m.from_client:
                return
            cid = str(f.get("clientid"))
            e = self.mqtt.get(cid)
            if e is None:
                _bounded(self.mqtt, CAPS["mqtt"], self.evicted, "mqtt")
                e = self.mqtt[cid] = {"pub": {}, "sub": {}, "qos": {}, "size": None, "ips": [], "patterns": []}
            if p[0] not in e["ips"] and len(e["ips"]) < 16:
                e["ips"].append(p[0])
            t = f.get("msgtype")
            if t == 3 and f.get("topic") is not None:
                topic = f["topic"]
                if topic not in e["pub"]:
                    _bounded(e["pub"], CAPS["topics_per_client"], self.evicted, "topics")
                e["pub"][topic] = e["pub"].get(topic, 0) + 1
                if e["patterns"] and not any(mqtt_match(x, topic) for x in e["patterns"]):
                    e["patterns"].append(topic)  # learned after training (slow learning); finalize regeneralizes
                q = str(f.get("qos", 0))
                e["qos"][q] = e["qos"].get(q, 0) + 1
                n = f.get("payload_length")
                if n is not None:
                    e["size"] = [n, n] if e["size"] is None else [min(e["size"][0], n), max(e["size"][1], n)]
            elif t == 8:
                for flt in f.get("topics") or ():
                    if flt not in e["sub"]:
                        _bounded(e["sub"], CAPS["topics_per_client"], self.evicted, "topics")
                    e["sub"][flt] = e["sub"].get(flt, 0) + 1

    def learn_window(self, start: int, windows: dict[Pair, Window]) -> None:
        self.windows += 1
        for p, w in windows.items():
            pk = pair_str(p)
            s = self.pairs.get(pk)
            if s is None:
                _bounded(self.pairs, CAPS["pairs"], self.evicted, "pairs")
                s = self.pairs[pk] = {"windows": 0, "max_requests": 0, "max_writes": 0}
            s["windows"] += 1
            s["max_requests"] = max(s["max_requests"], w.requests)
            s["max_writes"] = max(s["max_writes"], w.writes)
            for sig, period in window_periods(w):
                k = f"{pk}|{sig!r}"
                lst = self._poll_samples.get(k)
                if lst is None:
                    if len(self._poll_samples) >= CAPS["polls"]:
                        self.evicted["polls"] = self.evicted.get("polls", 0) + 1
                        continue
                    lst = self._poll_samples[k] = []
                lst.append(period)

    def finalize(self) -> None:
        """End of training: topic patterns and polling-period bounds from the collected samples."""
        for e in self.mqtt.values():
            e["patterns"] = topic_patterns(list(e["pub"]))
        for k, samples in self._poll_samples.items():
            old = self.polls.get(k)
            qs = statistics.quantiles(samples, n=200, method="inclusive") if len(samples) >= 2 else samples * 2
            lo, hi = qs[0], qs[-1]  # 0.5th and 99.5th percentiles: a stalled poller's odd window is not the norm
            if old:
                lo, hi = min(lo, old[1]), max(hi, old[2])
            n = len(samples) + (int(old[0]) if old else 0)
            self.polls[k] = [n, lo, hi, statistics.median(samples)]
        self._poll_samples = {}

    # -- scoring -----------------------------------------------------------------------------------------------
    def training_span(self) -> str:
        span = self.last_ns - self.first_ns
        if self._span[0] != span:
            self._span = (span, span_words(span))
        return self._span[1]

    def check_message(self, m: Message, p: Pair | None = None) -> list[Deviation]:
        """Deviations of one message; ``p`` is its pair when the caller has it already."""
        if p is None:
            p = pair_of(m)
        pk = pair_str(p)
        if pk in self.talkers:  # known pair: only client requests can deviate (see the _check_* below)
            if m.protocol == "mqtt":
                if not m.from_client:
                    return []
            elif m.protocol not in ("modbus", "s7comm") or not m.fields.get("is_request"):
                return []
        out: list[Deviation] = []
        span = self.training_span()
        if pk not in self.talkers:
            out.append(Deviation(
                "new_talker", pk, "Baseline: hosts never seen talking",
                f"{p[0]} never talked to {p[1]} port {p[3]} over {m.protocol} in {span} of training; first seen {clock(m.ts)}",
                "high" if access_of(m) == "write" and self._request(m) else "medium", ("T0846", "T0886"), m,
                {"pair": pk},
            ))  # fmt: skip
        if m.protocol == "modbus":
            out += self._check_modbus(m, p, span)
        elif m.protocol == "s7comm":
            out += self._check_s7(m, p, span)
        elif m.protocol == "mqtt":
            out += self._check_mqtt(m, p, span)
        return out

    @staticmethod
    def _request(m: Message) -> bool:
        return m.from_client if m.protocol == "mqtt" else bool(m.fields.get("is_request"))

    def _check_modbus(self, m: Message, p: Pair, span: str) -> list[Deviation]:
        f = m.fields
        if not f.get("is_request"):
            return []
        unit = f.get("unit_id")
        if type(unit) is int:  # the usual case: the key string is cached per (pair, unit)
            key = self._unit_keys.get((p, unit))
            if key is None:
                if len(self._unit_keys) >= CAPS["modbus"]:
                    self._unit_keys.clear()
                key = self._unit_keys[(p, unit)] = f"{p[0]}|{p[1]}:{p[3]}|{unit}"
        else:
            key = f"{p[0]}|{p[1]}:{p[3]}|{unit}"
        e = self.modbus.get(key)
        acc = access_of(m)
        if e is None:
            if pair_str(p) not in self.talkers:
                return []  # the new talker says it already
            return [Deviation(
                "new_unit", key, "Baseline: Modbus unit never addressed by this client",
                f"unit {unit} of {p[1]} never addressed by {p[0]} in {span} of training; first seen {clock(m.ts)}",
                "medium", ("T0846",), m, {"unit_id": unit},
            )]  # fmt: skip
        fc = f.get("function_code")
        if str(fc) not in e["fc"]:
            name = f.get("function_name") or "unknown"
            return [Deviation(
                "new_function", f"{key}|{fc}", "Baseline: Modbus function code never seen",
                f"function code {fc} ({name}) never seen from {p[0]} to unit {unit} of {p[1]} in {span} of training; first seen {clock(m.ts)}; "
                f"learned: {', '.join(sorted(e['fc'], key=int))}",
                "high" if acc == "write" else "medium", ("T0855",) if acc == "write" else ("T0888",), m,
                {"function_code": fc, "learned_function_codes": sorted(int(x) for x in e["fc"])},
            )]  # fmt: skip
        out: list[Deviation] = []
        ref, qty = f.get("reference_number"), f.get("quantity")
        if ref is not None:
            end = ref + max((qty or len(f.get("values") or ()) or 1) - 1, 0)
            rk = f"{f.get('table')}|{acc}"
            r = e["ranges"].get(rk)
            if r is None or ref < r[0] or end > r[1]:
                learned = f"learned {r[0]}-{r[1]}" if r else f"no {acc} of {f.get('table')} learned"
                out.append(Deviation(
                    "address_range", f"{key}|{rk}", "Baseline: Modbus address outside the learned range",
                    f"{acc} of {f.get('table')} {ref}-{end} from {p[0]} to unit {unit} of {p[1]} outside the range of {span} of training ({learned})",
                    "high" if acc == "write" else "medium", ("T0861",) if acc == "read" else ("T0836",), m,
                    {"table": f.get("table"), "address_start": ref, "address_end": end, "learned_range": r},
                ))  # fmt: skip
            vals = f.get("values")
            if acc == "write" and vals and f.get("table") == "holding_registers":
                for i, v in enumerate(vals[:64]):
                    s = self.registers.get(f"{key}|holding_registers|{ref + i}")
                    if s is None or s[2] < MIN_VALUE_SAMPLES:
                        continue
                    margin = value_margin(s[0], s[1], int(s[2]))
                    if v < s[0] - margin or v > s[1] + margin:
                        out.append(Deviation(
                            "value_range", f"{key}|{ref + i}", "Baseline: register written outside its learned range",
                            f"holding register {ref + i} of unit {unit} of {p[1]} set to {v} by {p[0]}; "
                            f"{int(s[2])} writes in {span} of training stayed within {s[0]:g}-{s[1]:g}",
                            "high", ("T0836", "T0831"), m,
                            {"register": ref + i, "value": v, "learned_min": s[0], "learned_max": s[1], "learned_writes": int(s[2])},
                        ))  # fmt: skip
                        break
        return out

    def _check_s7(self, m: Message, p: Pair, span: str) -> list[Deviation]:
        f = m.fields
        if not f.get("is_request") or pair_str(p) not in self.talkers:
            return []
        key = self._pair_keys.get(p)
        if key is None:
            if len(self._pair_keys) >= CAPS["s7"]:
                self._pair_keys.clear()
            key = self._pair_keys[p] = f"{p[0]}|{p[1]}:{p[3]}"
        e = self.s7.get(key) or {"functions": {}, "areas": {}, "dbs": {}}
        out: list[Deviation] = []
        fn = f.get("function")
        if fn is None:
            fn = action_of(m)
        if fn is not None and str(fn) not in e["functions"]:
            name = f.get("function_name") or (S7_FUNCTION_NAMES.get(fn, "unknown") if isinstance(fn, int) else str(fn))
            stop = fn in (0x28, 0x29)
            out.append(Deviation(
                "s7_new_function", f"{key}|{fn}", "Baseline: S7 function never seen on this pair",
                f"S7 function {name} ({fn}) never seen from {p[0]} to {p[1]} in {span} of training; first seen {clock(m.ts)}",
                "critical" if stop else "high", ("T0816", "T0858") if stop else ("T0855",), m,
                {"function": fn, "learned_functions": sorted(e["functions"])},
            ))  # fmt: skip
        for name, vs, what in (("areas", f.get("area"), "area"), ("dbs", f.get("db_number"), "DB")):
            new = [v for v in (vs if isinstance(vs, list) else ()) if str(v) not in e[name]]
            if new and not out:
                v = new[0]
                out.append(Deviation(
                    f"s7_new_{what.lower()}", f"{key}|{what}|{v}", f"Baseline: S7 {what} never accessed on this pair",
                    f"S7 {what} {v} never accessed by {p[0]} on {p[1]} in {span} of training; first seen {clock(m.ts)}",
                    "medium", ("T0861",), m, {what.lower(): v, "learned": sorted(e[name])},
                ))  # fmt: skip
        return out

    def _matches(self, patterns: list[str], topic: str) -> bool:
        """any(mqtt_match(x, topic) for x in patterns), memoised per (pattern, topic): a client publishes to the same
        few topics over and over, and matching splits both strings."""
        memo = self._match_memo
        for x in patterns:
            r = memo.get((x, topic))
            if r is None:
                if len(memo) >= MAX_MATCH_MEMO:
                    memo.clear()
                r = memo[(x, topic)] = mqtt_match(x, topic)
            if r:
                return True
        return False

    def _check_mqtt(self, m: Message, p: Pair, span: str) -> list[Deviation]:
        if not m.from_client:
            return []
        f = m.fields
        cid = str(f.get("clientid"))
        e = self.mqtt.get(cid)
        if e is None:
            if f.get("msgtype") != 1:
                return []
            return [Deviation(
                "mqtt_new_client", f"client|{cid}", "Baseline: MQTT client id never seen",
                f"MQTT client id {cid!r} from {p[0]} never connected in {span} of training; first seen {clock(m.ts)}",
                "medium", ("T0886",), m, {"clientid": cid},
            )]  # fmt: skip
        t = f.get("msgtype")
        out: list[Deviation] = []
        if t == 3 and f.get("topic") is not None:
            topic = f["topic"]
            pats = e["patterns"] or list(e["pub"])
            if not self._matches(pats, topic):
                out.append(Deviation(
                    "mqtt_new_topic", f"{cid}|pub|{topic}", "Baseline: MQTT client published to a new topic",
                    f"MQTT client {cid!r} ({p[0]}) published to {topic!r}, never published in {span} of training; "
                    f"learned topics: {', '.join(pats[:5])}{' ...' if len(pats) > 5 else ''}; first seen {clock(m.ts)}",
                    "high" if "cmd" in topic or topic.startswith("$") else "medium", ("T0855",), m,
                    {"clientid": cid, "topic": topic, "learned_patterns": pats[:20]},
                ))  # fmt: skip
            elif str(f.get("qos", 0)) not in e["qos"]:
                out.append(Deviation(
                    "mqtt_new_qos", f"{cid}|qos|{f.get('qos')}", "Baseline: MQTT QoS never used by this client",
                    f"MQTT client {cid!r} published at QoS {f.get('qos')}, learned QoS {', '.join(sorted(e['qos']))} in {span} of training",
                    "low", ("T0855",), m, {"clientid": cid, "qos": f.get("qos")},
                ))  # fmt: skip
            else:
                n, s = f.get("payload_length"), e["size"]
                if n is not None and s is not None and (n > s[1] * 1.5 + 16 or n < s[0] * 0.5 - 16):
                    out.append(Deviation(
                        "mqtt_payload_size", f"{cid}|size", "Baseline: MQTT payload size outside the learned range",
                        f"MQTT client {cid!r} published {n} bytes to {topic!r}, learned {s[0]}-{s[1]} bytes in {span} of training",
                        "low", ("T0855",), m, {"clientid": cid, "payload_length": n, "learned_size": s},
                    ))  # fmt: skip
        elif t == 8:
            for flt in f.get("topics") or ():
                if flt not in e["sub"]:
                    out.append(Deviation(
                        "mqtt_new_subscription", f"{cid}|sub|{flt}", "Baseline: MQTT client subscribed to a new filter",
                        f"MQTT client {cid!r} ({p[0]}) subscribed to {flt!r}, never in {span} of training; "
                        f"learned: {', '.join(sorted(e['sub'])) or 'none'}",
                        "high" if flt in ("#", "$SYS/#") else "medium", ("T0801",), m,
                        {"clientid": cid, "filter": flt, "learned_filters": sorted(e["sub"])[:20]},
                    ))  # fmt: skip
                    break
        return out

    def check_pair(self, p: Pair, w: Window, m: Message | None, seen: set[str]) -> list[Deviation]:
        """Rates and polling periods of one pair in a closed window against the learned bounds (``m``: its last
        message); the polling signatures checked are added to ``seen``, and ``end_window(seen)`` follows the
        window's last pair. Per pair, so that each worker of a parallel replay checks its own pairs."""
        pk = pair_str(p)
        s = self.pairs.get(pk)
        if s is None or m is None:
            return []
        out: list[Deviation] = []
        span = self.training_span()
        secs = self.window_seconds
        for count, noun, learned, severity, techniques in (
            (w.requests, "requests", "max_requests", "medium", ("T0814",)),
            (w.writes, "writes", "max_writes", "high", ("T0855", "T0836")),
        ):
            if count > math.ceil(s[learned] * 1.5) + 2:
                what = noun.rstrip("s")
                out.append(Deviation(
                    f"{what}_rate", f"{pk}|{'rate' if noun == 'requests' else noun}",
                    f"Baseline: {what} rate above the learned maximum",
                    f"{count} {noun} from {p[0]} to {p[1]} port {p[3]} in {secs:g} s, at most "
                    f"{int(s[learned])} per {secs:g} s window in {span} of training",
                    severity, techniques, m, {noun: count, f"learned_{learned}": s[learned], "window_seconds": secs},
                    learnable=False,
                ))  # fmt: skip
        for sig, period in window_periods(w):
            k = f"{pk}|{sig!r}"
            lp = self.polls.get(k)
            if lp is None or lp[0] < MIN_POLL_WINDOWS:
                continue
            n, lo, hi, med = lp
            seen.add(k)
            if not (period < lo * 0.75 or period > hi * 1.33):
                self._poll_streak.pop(k, None)
                continue
            streak = self._poll_streak[k] = self._poll_streak.get(k, 0) + 1
            if streak >= POLL_PERSIST:
                out.append(Deviation(
                    "polling_period", f"{pk}|{sig!r}|period", "Baseline: polling period changed",
                    f"polling period of {signature_str(sig, p[2])} from {p[0]} to {p[1]} is {period:.2f} s in this "
                    f"window and the {streak - 1} before; {int(n)} windows of {span} of training stayed within "
                    f"{lo:.2f}-{hi:.2f} s (median {med:.2f} s)",
                    "medium", ("T0814",) if period < lo else ("T0881",), m,
                    {"signature": repr(sig), "period_s": round(period, 3), "learned_min_s": lo, "learned_max_s": hi},
                    learnable=False,
                ))  # fmt: skip
        return out

    def end_window(self, seen: set[str]) -> None:
        """A streak is consecutive windows only: forget those of signatures not checked in this window."""
        for k in [k for k in self._poll_streak if k not in seen]:
            del self._poll_streak[k]

    # -- persistence -------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "first_ns": self.first_ns, "last_ns": self.last_ns, "messages": self.messages, "windows": self.windows,
            "window_seconds": self.window_seconds, "talkers": self.talkers, "modbus": self.modbus,
            "registers": self.registers, "s7": self.s7, "mqtt": self.mqtt, "pairs": self.pairs, "polls": self.polls,
            "evicted": self.evicted,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Baseline:
        b = cls()
        for k in b.to_json():
            if k in d:
                setattr(b, k, d[k])
        return b

    def summary(self) -> dict[str, Any]:
        return {
            "talkers": len(self.talkers), "modbus_client_units": len(self.modbus), "registers": len(self.registers),
            "s7_pairs": len(self.s7), "mqtt_clients": len(self.mqtt), "pairs": len(self.pairs),
            "polling_signatures": len(self.polls), "messages": self.messages, "windows": self.windows,
            "evicted": dict(self.evicted),
        }  # fmt: skip


def value_margin(lo: float, hi: float, n: int, p: float = VALUE_FALSE_ALARM) -> float:
    """How far past the learned [lo, hi] a written value may go. For n values drawn from one range, a new one lands
    beyond the sample maximum by more than m * span / n with probability about exp(-m) / (n + 1); m is chosen so
    that probability is ``p`` (at least 10% of the span, at least 1)."""
    span = hi - lo
    m = max(math.log(1.0 / ((n + 1) * p)), 0.0)
    return max(1.0, 0.1 * span, m * span / max(n, 1))


def window_periods(w: Window) -> list[tuple[tuple[Any, ...], float]]:
    """(signature, mean period in seconds) of every request signature seen at least 3 times in the window.

    The mean of the gaps, (last - first) / (n - 1), rather than their median: a poller that stalls and catches up
    keeps its mean period, while two bunched requests would pull a median to zero."""
    return [(sig, (tss[-1] - tss[0]) / 1e9 / (len(tss) - 1)) for sig, tss in w.signatures.items() if len(tss) >= 3]
