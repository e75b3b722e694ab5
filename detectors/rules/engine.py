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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.rules.attack import technique_names
from detectors.rules.compiler import MISSING, Msg, Pred, compile_condition, getter
from detectors.rules.loader import Problem, Rule, RuleLoadError
from detectors.rules.schema import ANY_PROTOCOL, INDEX_FIELDS
from sensor.messages import Alert, Message

MAX_KEYS = 100_000  # threshold windows per rule; the oldest key is dropped beyond this
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
        "by", "count", "distinct", "explain", "extra", "order", "pred", "rule", "seconds", "suppress", "window_ns",
        "windows",
    )  # fmt: skip

    def __init__(self, order: int, rule: Rule, lists: Mapping[str, list[str]]) -> None:
        self.order = order
        self.rule = rule
        types = rule.field_types
        self.pred: Pred = compile_condition(rule.match, types, lists)
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
        self.windows: dict[tuple[Any, ...], Any] = {}
        self.explain = ""
        if thr:
            what = f"{thr.count} distinct {thr.distinct}" if thr.distinct else f"{thr.count} matching messages"
            self.explain = f"{what} within {thr.seconds:g} s"


class _Agg:
    __slots__ = ("count", "extra", "firing", "first_ts", "last_frame", "last_ts", "msg", "rule", "seq")

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
        self.last_frame = msg.packet.frame


_Bucket = tuple[str | None, dict[Any, tuple[_Compiled, ...]], tuple[_Compiled, ...]]


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
                compiled.append(_Compiled(len(compiled), st.rule, lists))
            except ValueError as e:  # a list entry that is not an address for an ip field
                problems.append(Problem(st.rule.file, st.rule.line, 1, f"rule {st.rule.id}: {e}"))
        if problems:
            raise RuleLoadError(problems)
        self.rules = compiled
        self._msg, self._anom, self._anom_any = self._index(compiled)
        self._pending: dict[tuple[Any, ...], _Agg] = {}
        self._seq = 0
        self.evicted_keys = 0

    # -- index -------------------------------------------------------------------------------------------------
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

    def _index(self, compiled: list[_Compiled]) -> tuple[dict[str, _Bucket], dict[str, _Bucket], _Bucket]:
        def bucket(rules: list[_Compiled], field: str | None, path: str | None) -> _Bucket:
            default: list[_Compiled] = []
            by_value: dict[Any, list[_Compiled]] = {}
            for c in rules:
                values = self._pinned(c.rule, path) if path else None
                if values is None:
                    default.append(c)
                else:
                    for v in values:
                        by_value.setdefault(v, []).append(c)
            merged = {v: tuple(sorted({*lst, *default}, key=lambda c: c.order)) for v, lst in by_value.items()}
            return field, merged, tuple(default)

        msg_rules: dict[str, list[_Compiled]] = {}
        anom_rules: dict[str, list[_Compiled]] = {}
        anom_any: list[_Compiled] = []
        for c in compiled:
            r = c.rule
            if r.on_anomalies:
                (anom_any if r.protocol == ANY_PROTOCOL else anom_rules.setdefault(r.protocol, [])).append(c)
            else:
                msg_rules.setdefault(r.protocol, []).append(c)
        msg: dict[str, _Bucket] = {}
        for proto, rules in msg_rules.items():
            field = INDEX_FIELDS.get(proto)
            path = f"ics.{proto}.{field}" if field else None
            msg[proto] = bucket(rules, field, path)
        anom = {
            p: bucket(sorted([*rules, *anom_any], key=lambda c: c.order), "name", "error.code")
            for p, rules in anom_rules.items()
        }
        return msg, anom, bucket(anom_any, "name", "error.code")

    # -- detector seam -----------------------------------------------------------------------------------------
    def on_message(self, m: Msg) -> Iterable[Alert]:
        if type(m) is Message:
            b = self._msg.get(m.protocol)
            if b is None:
                return ()
            field, by_value, rules = b
            if by_value:
                rules = by_value.get(m.fields.get(field), rules)  # type: ignore[arg-type]
        else:
            field, by_value, rules = self._anom.get(m.protocol, self._anom_any)
            if by_value:
                rules = by_value.get(m.name, rules)  # type: ignore[union-attr]
        out: list[Alert] | None = None
        for c in rules:
            if c.pred(m) and (c.suppress is None or not c.suppress(m)):
                a = self._hit(c, m) if c.count else self._aggregate(c, (c.order, m.flow.flow_id if m.flow else None), m, m.ts, 1, {})
                if a is not None:
                    if out is None:
                        out = []
                    out.append(a)
        return out or ()

    def on_time(self, ts: int) -> Iterable[Alert]:
        if not self._pending:
            return ()
        w = self.window_ns
        due = [k for k, a in self._pending.items() if ts - a.first_ts >= w]
        return self._release(due) if due else ()

    def close(self) -> Iterable[Alert]:
        return self._release(list(self._pending))

    # -- internals ---------------------------------------------------------------------------------------------
    def _hit(self, c: _Compiled, m: Msg) -> Alert | None:
        """A match of a threshold rule: count it in its key's window and fire when the threshold is reached."""
        ts = m.ts
        key = tuple(None if (v := g(m)) is MISSING else v for g in c.by)
        agg = self._pending.get((c.order, key))
        if agg is not None and agg.firing:  # already over the threshold: add to the held alert
            agg.count += 1
            agg.last_ts = ts
            agg.last_frame = m.packet.frame
            return None
        windows = c.windows
        if c.distinct is not None:
            v = c.distinct(m)
            if v is MISSING:
                return None
            if type(v) is list:
                v = tuple(v)
            seen = windows.get(key)
            if seen is None:
                seen = windows[key] = {}
                self._cap(windows)
            seen.pop(v, None)
            seen[v] = ts
            cutoff = ts - c.window_ns
            while True:
                oldest = next(iter(seen))
                if seen[oldest] >= cutoff:
                    break
                del seen[oldest]
            if len(seen) < c.count:
                return None
            first_ts = seen[next(iter(seen))]
            n = len(seen)
            extra = {"distinct_values": sorted(seen, key=repr)[:64]}
        else:
            dq = windows.get(key)
            if dq is None:
                dq = windows[key] = deque(maxlen=c.count)
                self._cap(windows)
            dq.append(ts)
            if len(dq) < c.count or ts - dq[0] > c.window_ns:
                return None
            first_ts = dq[0]
            n = c.count
            extra = {}
        del windows[key]
        extra["threshold"] = {"count": c.count, "seconds": c.seconds, "by": dict(zip(c.rule.threshold.by, key, strict=True))}  # type: ignore[union-attr]
        return self._aggregate(c, (c.order, key), m, first_ts, n, extra, firing=True)

    def _cap(self, windows: dict[Any, Any]) -> None:
        if len(windows) > MAX_KEYS:
            del windows[next(iter(windows))]
            self.evicted_keys += 1

    def _aggregate(self, c: _Compiled, key: tuple[Any, ...], m: Msg, first_ts: int, n: int, extra: dict[str, Any],
                   firing: bool = False) -> Alert | None:  # fmt: skip
        self._seq += 1
        if self.window_ns <= 0:
            return self._alert(_Agg(c, m, first_ts, m.ts, n, extra, self._seq, firing))
        agg = self._pending.get(key)
        if agg is None:
            self._pending[key] = _Agg(c, m, first_ts, m.ts, n, extra, self._seq, firing)
        else:
            agg.count += n
            agg.last_ts = m.ts
            agg.last_frame = m.packet.frame
        return None

    def _release(self, keys: list[tuple[Any, ...]]) -> list[Alert]:
        aggs = [self._pending.pop(k) for k in keys]
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
