"""Training and scoring through the Detector seam: ``Trainer`` learns from replayed captures, ``AnomalyDetector``
scores traffic against a saved ``Model`` (baseline deviations and model windows), optionally learning slowly."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from operator import attrgetter
from typing import Any

import numpy as np

from detectors.anomaly.baseline import Baseline, Deviation, clock, span_words, topic_patterns
from detectors.anomaly.features import FEATURE_NAMES, Pair, Window, WindowTracker, pair_of, pair_str
from detectors.anomaly.forest import Knn, Near
from detectors.anomaly.model import Model, build_groups, library_versions
from detectors.base import Part
from detectors.rules.attack import technique_names
from sensor.messages import Alert, Anomaly, Message

PROTOCOLS = frozenset({"modbus", "s7comm", "mqtt"})
ATTACK_VERSION = "18"
LOG_FEATURES = {"requests", "iat_mean", "bytes", "write_value_delta"}  # stored as log(1+x), shown as x
MAX_SUPPRESSED = 100_000
MAX_NEAR = 50_000  # cached nearest training windows of pairs (cleared when full)
MAX_LAST = 50_000  # pairs whose last message is kept (FIFO)


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
            out = self._window(start, wins, ts)
            t.advance_to(ts)
        self.prev_ts = max(self.prev_ts, ts)
        return out

    def _finish(self) -> list[Alert]:
        t = self.tracker
        if t.start is None:
            return []
        start, wins = t.close()
        return self._window(start, wins, None)

    def _window(self, start: int, wins: dict[Pair, Window], ts: int | None) -> list[Alert]:
        """Window ``start`` closed at capture time ``ts`` (None: at the end of the input); ``self.prev_ts`` is still
        the latest time seen before ``ts``."""
        raise NotImplementedError


def covered(start: int, ts: int | None, first_ts: int | None, prev_ts: int, width: int) -> bool:
    """Whether a window closed at ``ts`` was wholly in the input: the capture had started by its start and did not
    skip over it (a gap between captures longer than a window before ``ts``); never the last window (``ts`` None)."""
    return ts is not None and first_ts is not None and start >= first_ts and ts - prev_ts <= width


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

    def _window(self, start: int, wins: dict[Pair, Window], ts: int | None) -> list[Alert]:
        self.baseline.learn_window(start, wins)
        if covered(start, ts, self.first_ts, self.prev_ts, self.tracker.width):
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


@dataclass(frozen=True, slots=True)
class PairWindow:
    """One pair's share of a closed window: the baseline's deviations and, when the model may score it, its
    features and last message. ``key``: where its first message of the window was in the replay (a worker's)."""

    pair: Pair
    key: Any
    deviations: list[Deviation]
    vector: list[float] | None
    last: Message | None


@dataclass(frozen=True, slots=True)
class Closed:
    """A window a PairScorer closed at ``ts`` (None: end of input), with its latest time seen before ``ts``."""

    start: int
    ts: int | None
    prev_ts: int
    pairs: list[PairWindow]


DEVIATIONS, WINDOW = 0, 1  # kinds of Part a PairScorer in a worker sends its parent's AnomalyDetector


class PairScorer(_Windowed):
    """The half of AnomalyDetector whose state is per host pair: the window features, each pair's last message
    and the baseline's checks of messages and windows. Why a half: a parallel replay (sensor.parallel) shards
    flows by host pair, so each worker can run one on its own messages, and only deviations and window summaries
    reach the parent, whose AnomalyDetector keeps what spans pairs (repeat suppression, the model's batches). In
    one process AnomalyDetector owns one. Windows are closed into ``closed`` for the owner to take."""

    def __init__(self, model: Model, use_baseline: bool = True, use_model: bool = True, sharded: bool = False) -> None:
        super().__init__(model.window_seconds)
        self.model = model
        self.baseline = model.baseline
        self.use_baseline = use_baseline
        self.use_model = use_model
        self.sharded = sharded  # in a worker: whether a window was covered is decided in the parent (covered)
        self.last: OrderedDict[Pair, Message] = OrderedDict()  # FIFO caps: see WindowTracker.last_values
        self.last_evicted = 0
        self.closed: list[Closed] = []

    def on_message(self, m: Message) -> list[Deviation]:
        """A message of one of PROTOCOLS; its deviations from the baseline (a closed window goes to ``closed``)."""
        ts = m.ts
        t = self.tracker
        start = t.start
        if start is not None and ts < start + t.width:  # inside the current window: what _advance would do
            if ts > self.prev_ts:
                self.prev_ts = ts
        else:
            self._advance(ts)
        p = pair_of(m)
        t.add(m, p)
        last = self.last
        last[p] = m
        if len(last) > MAX_LAST:
            last.popitem(last=False)
            self.last_evicted += 1
        return self.baseline.check_message(m, p) if self.use_baseline else []

    def evictions(self) -> int:
        """Entries its capped tables pushed out (or, for a window's pairs, turned away): with several workers each
        evicts from its own tables, so past a cap the features can differ from one process's."""
        return self.tracker.evicted + self.tracker.pairs_dropped + self.last_evicted

    def on_time(self, ts: int) -> None:
        self._advance(ts)

    def close(self) -> None:
        self._finish()

    def _window(self, start: int, wins: dict[Pair, Window], ts: int | None) -> list[Alert]:
        model, last, b = self.model, self.last, self.baseline
        score = self.use_model and bool(model.groups)
        if score and not self.sharded:
            score = covered(start, ts, self.first_ts, self.prev_ts, self.tracker.width)
        secs = self.tracker.seconds
        seen: set[str] = set()
        out: list[PairWindow] = []
        for p, w in wins.items():
            m = last.get(p)
            devs = b.check_pair(p, w, m, seen) if self.use_baseline else []
            x = w.vector(secs) if score and m is not None and model.group_for(pair_str(p), p[2]) else None
            out.append(PairWindow(p, w.first, devs, x, m if x is not None else None))
        if self.use_baseline:
            b.end_window(seen)
        self.closed.append(Closed(start, ts, self.prev_ts, out))
        return []

    def score(self, items: list[tuple[int, int, Any]], out: list[tuple[int, int, Any]],
              portable: Callable[[Message], Message]) -> None:  # fmt: skip
        """A worker's loop (sensor.parallel): messages, ticks (int) and the end of input (None), each with its
        replay key (record key, flow), in order. Appends what the parent's AnomalyDetector needs, as keyed
        ``Part``s: a message's deviations under its key, a window closed at a tick just before the tick (flow -1),
        whose messages are made ``portable`` (no packet bytes)."""
        t = self.tracker
        for item in items:
            hi, c, x = item
            if type(x) is int:
                self.on_time(x)
                c = -1
            elif x is None:
                self.close()
            elif x.protocol in PROTOCOLS:
                t.key = item
                devs = self.on_message(x)
                if devs:
                    out.append((hi, c, Part(DEVIATIONS, (x.ts, [_portable_dev(d, portable) for d in devs]))))
            if self.closed:
                for w in self.closed:
                    pairs = [PairWindow(e.pair, e.key[:2], [_portable_dev(d, portable) for d in e.deviations], e.vector,
                                        None if e.last is None else portable(e.last)) for e in w.pairs]  # fmt: skip
                    out.append((hi, c, Part(WINDOW, Closed(w.start, w.ts, w.prev_ts, pairs))))
                self.closed.clear()


def _portable_dev(d: Deviation, portable: Callable[[Message], Message]) -> Deviation:
    return replace(d, message=portable(d.message))


class AnomalyDetector:
    """Scores messages and windows against a model; see LearnOptions for ``learn``. The per-pair work is a
    PairScorer's: its own, or (``shard``) one in each worker of a parallel replay, whose Parts it merges."""

    name = "anomaly"

    def __init__(
        self, model: Model, learn: LearnOptions | None = None, repeat_seconds: float = 600.0,
        use_baseline: bool = True, use_model: bool = True,
    ) -> None:  # fmt: skip
        self.model = model
        self.baseline = model.baseline
        self.learner = SlowLearner(model.baseline, learn) if learn else None
        self.repeat_ns = int(repeat_seconds * 1e9)
        self.use_model = use_model
        self.pairs: PairScorer | None = PairScorer(model, use_baseline, use_model)  # None: sharded (see shard)
        self.width = self.pairs.tracker.width
        self.seconds = self.pairs.tracker.seconds
        self.suppressed: OrderedDict[str, int] = OrderedDict()  # dedup key -> capture time until which repeats are dropped
        self.repeats = 0
        self.windows_scored = 0
        self.near: dict[Pair, Near] = {}  # pair -> its last scored window's nearest training windows (a cache)
        self._names: dict[tuple[str, ...], dict[str, Any]] = {}
        span = model.baseline.last_ns - model.baseline.first_ns
        self.span = span_words(span)
        # sharded: the windows the workers closed at the coming tick, the first tick and the latest time seen
        self._parts: list[Closed] = []
        self.first_ts: int | None = None
        self.prev_ts = 0

    def shard(self, tick_ns: int) -> tuple[Callable[[], PairScorer], int] | None:
        """For a parallel replay whose parent ticks every ``tick_ns`` (aligned: pipeline.next_tick): a maker of the
        PairScorer each worker runs on its flows, and the tick period the workers need (the window: every window
        then closes at a tick record, in every worker and in the parent). From then on this detector merges the
        workers' Parts (``on_part``) and ignores messages. None, and nothing changes, when it cannot be split:
        slow learning changes the baseline the workers read; a window not a whole number of ticks would not
        close at a tick."""
        pairs = self.pairs
        if pairs is None or self.learner is not None or self.width % tick_ns:
            return None
        self.pairs = None
        use_baseline, use_model = pairs.use_baseline, pairs.use_model
        return (lambda: PairScorer(self.model, use_baseline, use_model, sharded=True)), self.width

    def on_message(self, m: Message | Anomaly) -> Iterable[Alert]:
        pairs = self.pairs
        if pairs is None or type(m) is not Message or m.protocol not in PROTOCOLS:
            return ()
        devs = pairs.on_message(m)
        out = self._closed() if pairs.closed else []
        if devs:
            if self.learner:
                self.learner.observe(devs, m)
            out += self._deviations(devs, m.ts)
        return out

    def on_time(self, ts: int) -> Iterable[Alert]:
        pairs = self.pairs
        if pairs is not None:
            pairs.on_time(ts)
            return self._closed() if pairs.closed else ()
        if self.first_ts is None:
            self.first_ts = ts
        out = self._merge(ts) if self._parts else ()
        self.prev_ts = max(self.prev_ts, ts)
        return out

    def on_part(self, part: Part) -> Iterable[Alert]:
        """What a worker's PairScorer sent (``shard``): a message's deviations now; a closed window at the tick that
        follows, with the other workers' parts of it (they sort before the tick: PairScorer.score)."""
        if part.kind == DEVIATIONS:
            ts, devs = part.data
            return self._deviations(devs, ts)
        self._parts.append(part.data)
        return ()

    def close(self) -> Iterable[Alert]:
        if self.pairs is not None:
            self.pairs.close()
            out = self._closed()
        else:
            out = self._merge(None) if self._parts else []
        if self.learner:
            for e in self.baseline.mqtt.values():
                e["patterns"] = topic_patterns(list(e["pub"]))
        return out

    def _closed(self) -> list[Alert]:
        """The windows our own PairScorer closed."""
        pairs = self.pairs
        assert pairs is not None
        out: list[Alert] = []
        for w in pairs.closed:
            out += self._judge(w.start, w.pairs, covered(w.start, w.ts, pairs.first_ts, w.prev_ts, self.width))
        pairs.closed.clear()
        return out

    def _merge(self, ts: int | None) -> list[Alert]:
        """The workers' parts of the window closed at ``ts``: their pairs in the order of their first messages in
        the replay (the order one PairScorer holds them in, so the model's batches are the same), and the latest
        time seen before ``ts`` by any of them or by the ticks."""
        parts, self._parts = self._parts, []
        start = parts[0].start
        self.prev_ts = max(self.prev_ts, *(w.prev_ts for w in parts))
        pairs = sorted((e for w in parts for e in w.pairs), key=attrgetter("key"))
        return self._judge(start, pairs, covered(start, ts, self.first_ts, self.prev_ts, self.width))

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

    def _deviations(self, devs: list[Deviation], ts: int) -> list[Alert]:
        return [a for d in devs if (a := self._deviation_alert(d, ts)) is not None]

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

    def _judge(self, start: int, pairs: list[PairWindow], full: bool) -> list[Alert]:
        """Alerts of a closed window: the pairs' deviations, then (a covered window) the model's scores."""
        end = start + self.width
        out = [a for e in pairs for d in e.deviations if (a := self._deviation_alert(d, end)) is not None]
        if not (full and self.use_model and self.model.groups):
            return out
        by_group: dict[str, list[tuple[PairWindow, list[float], Message]]] = {}
        for e in pairs:
            if e.vector is not None and e.last is not None:
                g = self.model.group_for(pair_str(e.pair), e.pair[2])
                if g is not None:
                    by_group.setdefault(g.key, []).append((e, e.vector, e.last))
        for key, items in by_group.items():
            g = self.model.groups[key]
            self.windows_scored += len(items)
            rows = [x for _, x, _ in items]
            if isinstance(g.forest, Knn):
                # Skipped when every row is bounded below the threshold by its pair's last nearest neighbours.
                # Otherwise every row is scored, in one batch as before: a row's float32 score can differ in its
                # last bits with the batch's size (matrix product kernels), and the alerts print it.
                near = self.near
                if all((n := near.get(e.pair)) is not None and g.forest.below(x, g.threshold, n) for e, x, _ in items):
                    continue
                scores, found = g.forest.score_near(np.asarray(rows))
                if len(near) + len(items) > MAX_NEAR:
                    near.clear()
                near.update(islice(zip([e.pair for e, _, _ in items], found, strict=True), MAX_NEAR))
            else:
                scores = g.forest.score(np.asarray(rows))
            for (e, x, m), s in zip(items, scores, strict=True):
                if s > g.threshold and self._fresh(f"model|{pair_str(e.pair)}", end):
                    out.append(self._model_alert(e.pair, x, m, float(s), g, start, end))
        return out

    def _model_alert(self, p: Pair, x: list[float], m: Message, score: float, g: Any, start: int, end: int) -> Alert:
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
            message=m, first_ts=start, last_ts=end,
            explanation=(
                f"{p[0]} to {p[1]} port {p[3]} ({p[2]}), {self.seconds:g} s window from {when} UTC "
                f"({clock(start)}): anomaly score {score:.3f} above threshold {g.threshold:.3f} learned from "
                f"{g.windows:,} windows of {scope} in {self.span} of training; most unusual: {words}"
            ),
            score=min(1.0, 0.5 * score / g.threshold) if g.threshold > 0 else 1.0,  # 0.5 at the threshold
            extra={
                "model": {"score": round(score, 4), "threshold": round(g.threshold, 4), "group": g.key,
                          "window_start_ns": start, "window_seconds": self.seconds, "features": stand},
                "threat": self._threat(techniques),
            },
            rule_category="model",
        )  # fmt: skip


__all__ = ["FEATURE_NAMES", "AnomalyDetector", "LearnOptions", "Model", "Trainer"]
