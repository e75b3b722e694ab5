"""Training and scoring through the Detector seam: ``Trainer`` learns from replayed captures, ``AnomalyDetector``
scores traffic against a saved ``Model`` (baseline deviations and model windows), optionally learning slowly."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import numpy as np

from detectors.anomaly.baseline import Baseline, Deviation, clock, span_words, topic_patterns
from detectors.anomaly.features import FEATURE_NAMES, Pair, Window, WindowTracker, pair_of, pair_str
from detectors.anomaly.forest import Knn, Near
from detectors.anomaly.model import Model, build_groups, library_versions
from detectors.rules.attack import technique_names
from sensor.messages import Alert, Anomaly, Message

PROTOCOLS = frozenset({"modbus", "s7comm", "mqtt"})
ATTACK_VERSION = "18"
LOG_FEATURES = {"requests", "iat_mean", "bytes", "write_value_delta"}  # stored as log(1+x), shown as x
MAX_SUPPRESSED = 100_000
MAX_NEAR = 50_000  # cached nearest training windows of pairs (cleared when full)


class _Windowed:
    """Shared window clock: closes windows as capture time passes and knows which windows the input covered."""

    def __init__(self, seconds: float) -> None:
        self.tracker = WindowTracker(seconds)
        self.first_ts: int | None = None
        self.prev_ts = 0

    def _advance(self, ts: int) -> list[Alert]:
        t = self.tracker
        if t.start is None:
            t.advance_to(ts)
            self.first_ts = self.prev_ts = ts
            return []
        out: list[Alert] = []
        if t.due(ts):
            start, wins = t.close()
            # covered: the capture had started and did not skip over the window (a gap between captures)
            full = self.first_ts is not None and start >= self.first_ts and ts - self.prev_ts <= t.width
            out = self._window(start, wins, full)
            t.advance_to(ts)
        self.prev_ts = max(self.prev_ts, ts)
        return out

    def _finish(self) -> list[Alert]:
        t = self.tracker
        if t.start is None:
            return []
        start, wins = t.close()
        return self._window(start, wins, False)

    def _window(self, start: int, wins: dict[Pair, Window], full: bool) -> list[Alert]:
        raise NotImplementedError


class Trainer(_Windowed):
    """Learns the baseline and collects per-pair window features; ``model()`` fits the forests."""

    name = "anomaly-train"

    def __init__(self, window_seconds: float = 60.0) -> None:
        super().__init__(window_seconds)
        self.baseline = Baseline()
        self.baseline.window_seconds = window_seconds
        self.rows: dict[str, list[list[float]]] = {}
        self.protocol_of: dict[str, str] = {}
        self.messages: dict[str, int] = {}

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        if type(m) is not Message or m.protocol not in PROTOCOLS:
            return ()
        self._advance(m.ts)
        self.messages[m.protocol] = self.messages.get(m.protocol, 0) + 1
        self.baseline.learn_message(m)
        self.tracker.add(m, pair_of(m))
        return ()

    def on_time(self, ts: int) -> Iterable[Alert]:
        self._advance(ts)
        return ()

    def close(self) -> Iterable[Alert]:
        self._finish()
        return ()

    def _window(self, start: int, wins: dict[Pair, Window], full: bool) -> list[Alert]:
        self.baseline.learn_window(start, wins)
        if full:
            secs = self.tracker.seconds
            for p, w in wins.items():
                k = pair_str(p)
                self.rows.setdefault(k, []).append(w.vector(secs))
                self.protocol_of[k] = p[2]
        return []

    def model(self, false_alarms_per_day: float = 0.5, seed: int = 0, summary: dict[str, Any] | None = None,
              algorithm: str = "knn") -> Model:  # fmt: skip
        self.baseline.finalize()
        b = self.baseline
        days = max((b.last_ns - b.first_ns) / 86_400e9, 1e-9)
        groups = build_groups(self.rows, self.protocol_of, days, false_alarms_per_day, seed, algorithm)
        s = dict(summary or {})
        s.update({
            "messages": dict(sorted(self.messages.items())), "pair_windows": {k: len(v) for k, v in sorted(self.rows.items())},
            "baseline": b.summary(), "value_memory_evicted": self.tracker.evicted,
        })  # fmt: skip
        return Model(b, groups, self.tracker.seconds, false_alarms_per_day, s, library_versions())


@dataclass(frozen=True)
class LearnOptions:
    """Slow learning: a deviation becomes normal only after it kept appearing for ``min_span_hours`` in at least
    ``min_distinct_hours`` different hours, and at most ``max_per_day`` items are learned per day. An attacker
    therefore needs a day of persistent, spread-out activity, alerted on all along, to teach one item, and cannot
    teach many at once. Rates and polling periods are never learned this way, only by retraining."""

    min_span_hours: float = 24.0
    min_distinct_hours: int = 6
    max_per_day: int = 20
    max_candidates: int = 10_000


class SlowLearner:
    def __init__(self, baseline: Baseline, opts: LearnOptions) -> None:
        self.baseline = baseline
        self.opts = opts
        self.candidates: OrderedDict[str, tuple[int, set[int], Message]] = OrderedDict()
        self.promoted: deque[int] = deque()
        self.learned: list[str] = []
        self.evicted = 0

    def observe(self, devs: list[Deviation], m: Message) -> None:
        o = self.opts
        for d in devs:
            if not d.learnable:
                continue
            c = self.candidates.get(d.key)
            if c is None:
                if len(self.candidates) >= o.max_candidates:
                    self.candidates.popitem(last=False)
                    self.evicted += 1
                c = self.candidates[d.key] = (m.ts, set(), m)
            first, hours, _ = c
            hours.add(m.ts // 3_600_000_000_000)
            self.candidates[d.key] = (first, hours, m)
            while self.promoted and self.promoted[0] < m.ts - 86_400_000_000_000:
                self.promoted.popleft()
            if (m.ts - first >= o.min_span_hours * 3_600e9 and len(hours) >= o.min_distinct_hours
                    and len(self.promoted) < o.max_per_day):  # fmt: skip
                self.baseline.learn_message(m)
                self.promoted.append(m.ts)
                self.learned.append(f"{d.kind} {d.key}")
                del self.candidates[d.key]


class AnomalyDetector(_Windowed):
    """Scores messages and windows against a model; see LearnOptions for ``learn``."""

    name = "anomaly"

    def __init__(
        self, model: Model, learn: LearnOptions | None = None, repeat_seconds: float = 600.0,
        use_baseline: bool = True, use_model: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(model.window_seconds)
        self.model = model
        self.baseline = model.baseline
        self.learner = SlowLearner(model.baseline, learn) if learn else None
        self.repeat_ns = int(repeat_seconds * 1e9)
        self.use_baseline = use_baseline
        self.use_model = use_model
        self.suppressed: OrderedDict[str, int] = OrderedDict()  # dedup key -> capture time until which repeats are dropped
        self.repeats = 0
        self.last: OrderedDict[Pair, Message] = OrderedDict()  # FIFO caps: see WindowTracker.last_values
        self.windows_scored = 0
        self.near: dict[Pair, Near] = {}  # pair -> its last scored window's nearest training windows (a cache)
        self._names: dict[tuple[str, ...], dict[str, Any]] = {}
        span = model.baseline.last_ns - model.baseline.first_ns
        self.span = span_words(span)

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        if type(m) is not Message or m.protocol not in PROTOCOLS:
            return ()
        ts = m.ts
        t = self.tracker
        start = t.start
        if start is not None and ts < start + t.width:  # inside the current window: what _advance would do
            if ts > self.prev_ts:
                self.prev_ts = ts
            out: list[Alert] = []
        else:
            out = self._advance(ts)
        p = pair_of(m)
        t.add(m, p)
        last = self.last
        last[p] = m
        if len(last) > 50_000:
            last.popitem(last=False)
        if self.use_baseline:
            devs = self.baseline.check_message(m, p)
            if devs:
                if self.learner:
                    self.learner.observe(devs, m)
                out += [a for d in devs if (a := self._deviation_alert(d, ts)) is not None]
        return out

    def on_time(self, ts: int) -> Iterable[Alert]:
        return self._advance(ts)

    def close(self) -> Iterable[Alert]:
        out = self._finish()
        if self.learner:
            for e in self.baseline.mqtt.values():
                e["patterns"] = topic_patterns(list(e["pub"]))
        return out

    # -- alerts ------------------------------------------------------------------------------------------------
    def _fresh(self, key: str, ts: int) -> bool:
        until = self.suppressed.get(key)
        if until is not None and ts < until:
            self.repeats += 1
            return False
        if until is None and len(self.suppressed) >= MAX_SUPPRESSED:
            self.suppressed.popitem(last=False)
        self.suppressed[key] = ts + self.repeat_ns
        return True

    def _threat(self, techniques: tuple[str, ...]) -> dict[str, Any]:
        t = self._names.get(techniques)
        if t is None:
            names, tactics = technique_names(ATTACK_VERSION, techniques)
            t = self._names[techniques] = {"technique": {"name": names}, "tactic": {"name": tactics}}
        return t

    def _deviation_alert(self, d: Deviation, ts: int) -> Alert | None:
        if not self._fresh(f"{d.kind}|{d.key}", ts):
            return None
        return Alert(
            ts=ts, rule_id=f"ICS-BASELINE-{d.kind.upper().replace('_', '-')}", rule_name=d.title,
            description=f"Deviation from the baseline learned over {self.span} of training.",
            severity=d.severity, techniques=d.techniques, attack_version=ATTACK_VERSION, detector="baseline",
            message=d.message, first_ts=ts, last_ts=ts, explanation=d.explanation,
            extra={"baseline": {"kind": d.kind, **d.details}, "threat": self._threat(d.techniques)},
            rule_category="baseline",
        )  # fmt: skip

    def _window(self, start: int, wins: dict[Pair, Window], full: bool) -> list[Alert]:
        out: list[Alert] = []
        end = start + self.tracker.width
        if self.use_baseline:
            for d in self.baseline.check_window(start, wins, self.last):
                a = self._deviation_alert(d, end)
                if a is not None:
                    out.append(a)
        if not (full and self.use_model and self.model.groups):
            return out
        secs = self.tracker.seconds
        by_group: dict[str, list[tuple[Pair, list[float]]]] = {}
        for p, w in wins.items():
            g = self.model.group_for(pair_str(p), p[2])
            if g is not None and p in self.last:
                by_group.setdefault(g.key, []).append((p, w.vector(secs)))
        for key, items in by_group.items():
            g = self.model.groups[key]
            self.windows_scored += len(items)
            if isinstance(g.forest, Knn):
                # Skipped when every row is bounded below the threshold by its pair's last nearest neighbours.
                # Otherwise every row is scored, in one batch as before: a row's float32 score can differ in its
                # last bits with the batch's size (matrix product kernels), and the alerts print it.
                near = self.near
                if all((n := near.get(p)) is not None and g.forest.below(x, g.threshold, n) for p, x in items):
                    continue
                scores, found = g.forest.score_near(np.asarray([x for _, x in items]))
                if len(near) + len(items) > MAX_NEAR:
                    near.clear()
                near.update(islice(zip([p for p, _ in items], found, strict=True), MAX_NEAR))
            else:
                scores = g.forest.score(np.asarray([x for _, x in items]))
            for (p, x), s in zip(items, scores, strict=True):
                if s > g.threshold and self._fresh(f"model|{pair_str(p)}", end):
                    out.append(self._model_alert(p, x, float(s), g, start, end))
        return out

    def _model_alert(self, p: Pair, x: list[float], score: float, g: Any, start: int, end: int) -> Alert:
        stand = g.standouts(x)
        for s in stand:
            if s["feature"] in LOG_FEATURES:
                s["value"] = round(math.expm1(s["value"]), 3)
                s["learned_median"] = round(math.expm1(s["learned_median"]), 3)
                s["learned_range"] = [round(math.expm1(v), 3) for v in s["learned_range"]]
        words = "; ".join(
            f"{s['feature']} {s['value']:g} (learned median {s['learned_median']:g}, range {s['learned_range'][0]:g}-"
            f"{s['learned_range'][1]:g}, z {s['z']:+.1f})" for s in stand
        )
        scope = "this pair" if g.key == pair_str(p) else f"all {p[2]} pairs (pooled)"
        when = datetime.fromtimestamp(start / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        techniques = ("T0814",) if stand and stand[0]["feature"] == "requests" and stand[0]["z"] > 0 else ("T0855",)
        return Alert(
            ts=end, rule_id="ICS-MODEL-WINDOW", rule_name="Anomaly model: unusual traffic window",
            description="A per-pair time window scored above the threshold learned from training windows.",
            severity="medium", techniques=techniques, attack_version=ATTACK_VERSION, detector="model",
            message=self.last[p], first_ts=start, last_ts=end,
            explanation=(
                f"{p[0]} to {p[1]} port {p[3]} ({p[2]}), {self.tracker.seconds:g} s window from {when} UTC "
                f"({clock(start)}): anomaly score {score:.3f} above threshold {g.threshold:.3f} learned from "
                f"{g.windows:,} windows of {scope} in {self.span} of training; most unusual: {words}"
            ),
            score=min(1.0, 0.5 * score / g.threshold) if g.threshold > 0 else 1.0,  # 0.5 at the threshold
            extra={
                "model": {"score": round(score, 4), "threshold": round(g.threshold, 4), "group": g.key,
                          "window_start_ns": start, "window_seconds": self.tracker.seconds, "features": stand},
                "threat": self._threat(techniques),
            },
            rule_category="model",
        )  # fmt: skip


__all__ = ["FEATURE_NAMES", "AnomalyDetector", "LearnOptions", "Model", "Trainer"]
