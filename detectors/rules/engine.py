"""The rule engine detector: compiled rules indexed by protocol and function code, thresholds, aggregation.

Why an index: most messages are routine reads; a rule pinned to FC 5/6/15/16 must cost nothing on an FC 3 poll.
Each protocol's messages are looked up by their index field (``function_code``, MQTT ``packet_type``) into a
precomputed tuple of the rules that can match, in rule-file order, so alerts come out deterministically.

Repeats of one rule on one flow (or, for threshold rules, one ``by`` key) are held for ``aggregate_seconds``
and released as one alert with a count and first/last seen, on ``on_time`` and ``close``, ordered by
(first seen, rule order, arrival) so a replay always writes the same documents.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from pathlib import Path
from typing import Any

from detectors.rules.attack import technique_names
from detectors.rules.compiler import MISSING, Msg, Pred, compile_condition, getter, source_ip
from detectors.rules.loader import Problem, Rule, RuleLoadError
from detectors.rules.schema import ANY_PROTOCOL, INDEX_FIELDS
from sensor.messages import Alert, Message

MAX_KEYS = 100_000  # threshold windows per rule; the oldest key is dropped beyond this
MAX_PENDING = 100_000  # aggregated alerts held at once; beyond this the oldest is released early
NS = 1_000_000_000


def builtin_rules_dir() -> Path:
    """The shipped pack: $ICS_SENSOR_RULES_DIR, else rules/ beside the detectors package (checkout, editable)."""
    env = os.environ.get("ICS_SENSOR_RULES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "rules"


@dataclass(frozen=True, slots=True)
class RuleStatus:
    rule: Rule
    active: bool
    reason: str  # "active", "disabled", "list modbus_writers undefined", ...


def rule_status(rule: Rule, lists: Mapping[str, Any]) -> RuleStatus:
    if not rule.enabled:
        return RuleStatus(rule, False, "disabled")
    if rule.status == "deprecated":
        return RuleStatus(rule, False, "deprecated")
    missing = [n for n in rule.requires_lists if n not in lists]
    if missing:
        return RuleStatus(rule, False, "inactive: list " + ", ".join(missing) + " undefined")
    return RuleStatus(rule, True, "active")


class _Compiled:
    __slots__ = (
        "by", "count", "distinct", "distinct_field", "explain", "extra", "hit", "order", "pred", "rule", "seconds", "suppress",
        "window_ns", "windows",
    )  # fmt: skip

    def __init__(self, order: int, rule: Rule, lists: Mapping[str, list[str]], indexed: frozenset[str]) -> None:
        self.order = order
        self.rule = rule
        types = rule.field_types
        # None when the index alone guarantees the match (a flood rule on "every request")
        self.pred: Pred | None = (
            compile_condition(rule.match, types, lists, indexed) if any(k not in indexed for k in rule.match) else None
        )
        self.hit: Callable[[Msg], Alert | None] = _no_hit
        self.suppress: Pred | None = None
        if rule.exceptions:
            excs = [compile_condition(m, types, lists) for _, m in rule.exceptions]
            self.suppress = lambda msg: any(p(msg) for p in excs)
        names, tactics = technique_names(rule.attack_version, rule.techniques)
        self.extra: dict[str, Any] = {"threat": {"technique": {"name": names}, "tactic": {"name": tactics}}}
        thr = rule.threshold
        self.by: tuple[Callable[[Msg], Any], ...] = tuple(getter(p) for p in thr.by) if thr else ()
        self.distinct = getter(thr.distinct) if thr and thr.distinct else None
        self.count = thr.count if thr else 0
        self.seconds = thr.seconds if thr else 0.0
        self.window_ns = int(thr.seconds * NS) if thr else 0
        self.windows: OrderedDict[Any, Any] = OrderedDict()  # FIFO cap: O(1) popitem (a dict's front pop is not)
        self.distinct_field = ""  # the short name when distinct is an ics.<protocol>.<name> field (read inline)
        if thr and thr.distinct and thr.distinct.startswith("ics.") and thr.distinct.count(".") == 2:
            self.distinct_field = thr.distinct.split(".")[2]
        self.explain = ""
        if thr:
            what = f"{thr.count} distinct {thr.distinct}" if thr.distinct else f"{thr.count} matching messages"
            self.explain = f"{what} within {thr.seconds:g} s"


def _no_hit(m: Msg) -> Alert | None:
    return None


class _Agg:
    __slots__ = ("count", "extra", "firing", "first_ts", "last_frame", "last_ts", "msg", "rule", "seq", "tkey")

    def __init__(self, rule: _Compiled, msg: Msg, first_ts: int, last_ts: int, count: int, extra: dict[str, Any],
                 seq: int, firing: bool) -> None:  # fmt: skip
        self.rule = rule
        self.msg = msg
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.count = count
        self.extra = extra
        self.seq = seq
        self.firing = firing
        self.tkey: Any = None  # the threshold key while this alert collects the key's further matches
        self.last_frame = msg.packet.frame


class RuleEngine:
    """Detector over compiled rules. ``lists`` are the sensor config's named lists (name -> entries)."""

    name = "rules"

    def __init__(self, rules: Iterable[Rule], lists: Mapping[str, Any] | None = None,
                 aggregate_seconds: float = 60.0) -> None:  # fmt: skip
        lists = {k: [str(e) for e in v] for k, v in (lists or {}).items()}
        self.statuses = [rule_status(r, lists) for r in rules]
        self.window_ns = int(aggregate_seconds * NS)
        compiled: list[_Compiled] = []
        problems: list[Problem] = []
        for st in self.statuses:
            if not st.active:
                continue
            try:
                compiled.append(_Compiled(len(compiled), st.rule, lists, self._indexed(st.rule)))
            except ValueError as e:  # a list entry that is not an address for an ip field
                problems.append(Problem(st.rule.file, st.rule.line, 1, f"rule {st.rule.id}: {e}"))
        if problems:
            raise RuleLoadError(problems)
        for c in compiled:
            c.hit = self._make_hit(c)
        self.rules = compiled
        self._msg, self._anom, self._anom_any = self._index(compiled)
        self._pending: OrderedDict[tuple[Any, ...], _Agg] = OrderedDict()
        # (first_ts, seq, key) of every aggregate created, so a tick finds the due ones without a scan of all;
        # an entry whose aggregate was released meanwhile (early, or the key reused) is skipped by its seq.
        self._due: list[tuple[int, int, tuple[Any, ...]]] = []
        self._seq = 0
        self.evicted_keys = 0
        self.released_early = 0  # aggregated alerts emitted before their window because MAX_PENDING was hit
        self._early: list[Alert] = []

    # -- index -------------------------------------------------------------------------------------------------
    @classmethod
    def _index_paths(cls, rule: Rule) -> list[tuple[str, str]]:
        if rule.on_anomalies:
            return [("name", "error.code")]
        return [(f, f"ics.{rule.protocol}.{f}") for f in INDEX_FIELDS.get(rule.protocol, ())]

    @classmethod
    def _indexed(cls, rule: Rule) -> frozenset[str]:
        """Top-level tests the index guarantees for this rule: it is only ever reached through their values."""
        return frozenset(p for _, p in cls._index_paths(rule) if cls._pinned(rule, p) is not None)

    @staticmethod
    def _pinned(rule: Rule, path: str) -> list[Any] | None:
        """Values a rule's top-level condition pins ``path`` to (eq or in without lists), else None."""
        spec = rule.match.get(path, MISSING)
        if spec is MISSING:
            return None
        if not isinstance(spec, dict):
            return [spec]
        if set(spec) == {"eq"}:
            return [spec["eq"]]
        if set(spec) == {"in"} and isinstance(spec["in"], list) and not any(isinstance(v, dict) for v in spec["in"]):
            return list(spec["in"])
        return None

    def _tree(self, rules: list[_Compiled], paths: list[tuple[str, str]]) -> Any:
        """Nested [field, {value: subtree}, default subtree] levels; leaves are rule tuples in file order."""
        if not paths:
            return tuple(sorted(rules, key=lambda c: c.order))
        (field, path), rest = paths[0], paths[1:]
        pins = {id(c): self._pinned(c.rule, path) for c in rules}
        values = {v for p in pins.values() if p is not None for v in p}
        if not values:
            return self._tree(rules, rest)
        free = [c for c in rules if pins[id(c)] is None]
        by_value = {v: self._tree([c for c in rules if pins[id(c)] is None or v in pins[id(c)]], rest) for v in values}  # type: ignore[operator]
        return [field, by_value, self._tree(free, rest)]  # a list: leaves are tuples

    def _index(self, compiled: list[_Compiled]) -> tuple[dict[str, Any], dict[str, Any], Any]:
        msg_rules: dict[str, list[_Compiled]] = {}
        anom_rules: dict[str, list[_Compiled]] = {}
        anom_any: list[_Compiled] = []
        for c in compiled:
            r = c.rule
            if r.on_anomalies:
                (anom_any if r.protocol == ANY_PROTOCOL else anom_rules.setdefault(r.protocol, [])).append(c)
            else:
                msg_rules.setdefault(r.protocol, []).append(c)
        msg = {proto: self._tree(rules, self._index_paths(rules[0].rule)) for proto, rules in msg_rules.items()}
        name = [("name", "error.code")]
        anom = {p: self._tree([*rules, *anom_any], name) for p, rules in anom_rules.items()}
        return msg, anom, self._tree(anom_any, name)

    # -- detector seam -----------------------------------------------------------------------------------------
    def on_message(self, m: Msg) -> Iterable[Alert]:
        if type(m) is Message:
            node = self._msg.get(m.protocol)
            if node is None:
                return ()
            f = m.fields
            while type(node) is list:
                field, by_value, default = node
                node = by_value.get(f.get(field), default)
        else:
            node = self._anom.get(m.protocol, self._anom_any)
            while type(node) is list:
                node = node[1].get(m.name, node[2])  # type: ignore[union-attr]
        if not node:
            return ()
        out: list[Alert] | None = None
        for c in node:
            p = c.pred
            if p is None or p(m):
                a = c.hit(m)
                if a is not None:
                    if out is None:
                        out = []
                    out.append(a)
        if self._early:
            out = (out or []) + self._early
            self._early = []
        return out or ()

    def could_match(self, m: Msg) -> bool:
        """Whether ``m`` passes some active rule's condition, i.e. could change the engine's state or alert.

        Same index lookup and predicates as on_message, no state change: a sharded replay ships only these
        messages to the one process that runs the engine (sensor/parallel.py).
        """
        if type(m) is Message:
            node = self._msg.get(m.protocol)
            if node is None:
                return False
            f = m.fields
            while type(node) is list:
                node = node[1].get(f.get(node[0]), node[2])
        else:
            node = self._anom.get(m.protocol, self._anom_any)
            while type(node) is list:
                node = node[1].get(m.name, node[2])  # type: ignore[union-attr]
        for c in node:  # noqa: SIM110 - a loop, not any() over a generator: a third cheaper, asked of every message
            if c.pred is None or c.pred(m):
                return True
        return False

    def on_time(self, ts: int) -> Iterable[Alert]:
        if not self._pending:
            return ()
        heap, pending = self._due, self._pending
        cutoff = ts - self.window_ns  # due: ts - first_ts >= window
        due = []
        while heap and heap[0][0] <= cutoff:
            _first, seq, key = heappop(heap)
            a = pending.get(key)
            if a is not None and a.seq == seq:
                due.append(key)
        return self._release(due) if due else ()

    def close(self) -> Iterable[Alert]:
        return self._release(list(self._pending))

    def stats(self) -> dict[str, int]:
        """State sizes and evictions, for the sensor stats document."""
        return {
            "threshold_keys": sum(len(c.windows) for c in self.rules), "threshold_keys_evicted": self.evicted_keys,
            "pending_aggregates": len(self._pending), "released_early": self.released_early,
        }  # fmt: skip

    # -- internals ---------------------------------------------------------------------------------------------
    def _make_hit(self, c: _Compiled) -> Callable[[Msg], Alert | None]:
        """What a match of ``c`` does, as one closure over its state (hot path: no attribute lookups).

        Plain rules aggregate per (rule, flow). Threshold rules count per ``by`` key; once over the threshold
        the key's matches go straight into the held alert until it is released. Distinct counting stores
        value -> last seen and purges expired values only when the count is reached, so a host below the
        threshold costs one dict store per message.
        """
        suppress = c.suppress
        aggregate = self._aggregate
        order = c.order
        if not c.count:

            def hit_plain(m: Msg) -> Alert | None:
                if suppress is not None and suppress(m):
                    return None
                fl = m.flow
                return aggregate(c, (order, fl.flow_id if fl is not None else None), m, m.ts, 1, {})

            return hit_plain
        by = c.by
        key_of: Callable[[Msg], Any]
        if not by:
            key_of = lambda m: ()  # noqa: E731
        elif len(by) == 1:
            key_of = by[0]
        else:
            key_of = lambda m: tuple(g(m) for g in by)  # noqa: E731
        src = by == (source_ip,)
        windows, count, window_ns, fire, cap = c.windows, c.count, c.window_ns, self._fire, self._cap
        distinct = c.distinct
        dname = c.distinct_field
        agg_type = _Agg

        def hit_threshold(m: Msg) -> Alert | None:
            if suppress is not None and suppress(m):
                return None
            if src:
                fl = m.flow
                key = MISSING if fl is None else fl.client_ip if m.from_client else fl.server_ip
            else:
                key = key_of(m)
            st = windows.get(key)
            ts = m.ts
            if type(st) is agg_type:  # over the threshold: this key's matches go into the held alert
                st.count += 1
                st.last_ts = ts
                st.last_frame = m.packet.frame
                return None
            if distinct is not None:
                v = m.fields.get(dname, MISSING) if dname else distinct(m)
                if v is MISSING:
                    return None
                if type(v) is list:
                    v = tuple(v)
                if st is None:
                    st = windows[key] = {}
                    cap(windows)
                st[v] = ts
                if len(st) < count:
                    return None
                cutoff = ts - window_ns
                for old in [k for k, t in st.items() if t < cutoff]:
                    del st[old]
                if len(st) < count:
                    return None
                extra: dict[str, Any] = {"distinct_values": sorted(st, key=repr)[:64]}
                return fire(c, key, m, min(st.values()), len(st), extra)
            if st is None:
                st = windows[key] = deque(maxlen=count)
                cap(windows)
            st.append(ts)
            if len(st) < count or ts - st[0] > window_ns:
                return None
            return fire(c, key, m, st[0], count, {})

        return hit_threshold

    def _fire(self, c: _Compiled, key: Any, m: Msg, first_ts: int, n: int, extra: dict[str, Any]) -> Alert | None:
        """The threshold of ``c`` was reached for ``key``: start (or emit) its alert."""
        del c.windows[key]
        keys = (key,) if len(c.by) == 1 else key
        names = c.rule.threshold.by if c.rule.threshold else ()
        extra["threshold"] = {
            "count": c.count, "seconds": c.seconds,
            "by": {p: (None if k is MISSING else k) for p, k in zip(names, keys, strict=True)},
        }  # fmt: skip
        a = self._aggregate(c, (c.order, key), m, first_ts, n, extra)
        if a is None:  # held: the window's place goes to the alert, which takes the key's matches until released
            held = self._pending[(c.order, key)]
            held.firing, held.tkey = True, key
            c.windows[key] = held
        return a

    def _cap(self, windows: OrderedDict[Any, Any]) -> None:
        if len(windows) > MAX_KEYS:
            windows.popitem(last=False)
            self.evicted_keys += 1

    def _aggregate(self, c: _Compiled, key: tuple[Any, ...], m: Msg, first_ts: int, n: int, extra: dict[str, Any],
                   firing: bool = False) -> Alert | None:  # fmt: skip
        self._seq += 1
        if self.window_ns <= 0:
            return self._alert(_Agg(c, m, first_ts, m.ts, n, extra, self._seq, firing))
        agg = self._pending.get(key)
        if agg is None:
            if len(self._pending) >= MAX_PENDING:
                self.released_early += 1
                self._early += self._release([next(iter(self._pending))])
            self._pending[key] = _Agg(c, m, first_ts, m.ts, n, extra, self._seq, firing)
            heappush(self._due, (first_ts, self._seq, key))
            if len(self._due) > MAX_PENDING + MAX_PENDING // 2:  # mostly released early: rebuild from what is pending
                self._due = [(a.first_ts, a.seq, k) for k, a in self._pending.items()]
                heapify(self._due)
        else:
            agg.count += n
            agg.last_ts = m.ts
            agg.last_frame = m.packet.frame
        return None

    def _release(self, keys: list[tuple[Any, ...]]) -> list[Alert]:
        aggs = [self._pending.pop(k) for k in keys]
        for a in aggs:
            if a.firing and a.rule.windows.get(a.tkey) is a:
                del a.rule.windows[a.tkey]
        aggs.sort(key=lambda a: (a.first_ts, a.rule.order, a.seq))
        return [self._alert(a) for a in aggs]

    @staticmethod
    def _alert(a: _Agg) -> Alert:
        c, r = a.rule, a.rule.rule
        extra = {**c.extra, **a.extra, "last_frame": a.last_frame}
        explanation = None
        if c.explain:
            by = extra.get("threshold", {}).get("by", {})
            who = ", ".join(f"{k}={v}" for k, v in by.items())
            explanation = f"{r.title}: {c.explain}" + (f" ({who})" if who else "")
        return Alert(
            ts=a.first_ts, rule_id=r.id, rule_name=r.title, description=r.description, severity=r.severity,
            techniques=r.techniques, attack_version=r.attack_version, detector="rules", message=a.msg,
            references=r.references, count=a.count, first_ts=a.first_ts, last_ts=a.last_ts, explanation=explanation,
            extra=extra, rule_version=str(r.rev), rule_category=r.protocol,
        )  # fmt: skip
