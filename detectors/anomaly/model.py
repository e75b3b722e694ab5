"""The model file: learned baseline, per-pair IsolationForests, thresholds and the metadata to refuse a mismatch.

Format: one ``.npz`` (a zip of ``.npy`` arrays) read with ``allow_pickle=False``, so loading a file never runs code
from it. The entry ``meta`` holds UTF-8 JSON: format name and version, feature schema (version and names),
library versions, training span, data summary, the baseline, and per group the threshold and the learned feature
distribution; the other entries are the trees of each group's forest (see forest.py).
"""

from __future__ import annotations

import json
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors.anomaly.baseline import Baseline, span_words
from detectors.anomaly.features import FEATURE_NAMES, SCHEMA_VERSION
from detectors.anomaly.forest import Forest, Knn, tail_threshold

FORMAT = "ics-sensor-anomaly-model"
FORMAT_VERSION = 1
MIN_PAIR_WINDOWS = 50  # a pair with fewer training windows is scored by its protocol's pooled forest
MIN_GROUP_WINDOWS = 20  # fewer windows than this: no forest at all for the group
MIN_SCALE = 0.05  # floor of a feature's spread: a feature constant in training still tolerates small changes
ALGORITHMS = ("knn", "iforest")
LOG_EPS = 1e-3


class ModelError(Exception):
    """A model file that cannot be used: missing, damaged, another format, schema or version."""


@dataclass
class Group:
    """One forest: a pair ('10.0.0.7>10.0.0.20:502/modbus') or a protocol's pooled windows ('*/modbus')."""

    key: str
    forest: Forest | Knn  # the scorer: an isolation forest or k-nearest-neighbour distance
    threshold: float
    median: list[float]
    scale: list[float]
    low: list[float]  # 0.5th percentile of each feature in training
    high: list[float]  # 99.5th percentile
    windows: int
    score_median: float

    def standouts(self, x: list[float], top: int = 3) -> list[dict[str, Any]]:
        """The features furthest from their learned distribution, as robust z-scores, largest first."""
        out = []
        for i, name in enumerate(FEATURE_NAMES):
            z = (x[i] - self.median[i]) / self.scale[i]
            out.append({"feature": name, "value": round(x[i], 4), "learned_median": round(self.median[i], 4),
                        "learned_range": [round(self.low[i], 4), round(self.high[i], 4)], "z": round(z, 2)})  # fmt: skip
        out.sort(key=lambda d: -abs(d["z"]))
        return out[:top]

    def meta(self) -> dict[str, Any]:
        return {
            "key": self.key, "algorithm": "knn" if isinstance(self.forest, Knn) else "iforest", "threshold": self.threshold, "median": self.median, "scale": self.scale, "low": self.low,
            "high": self.high, "windows": self.windows, "score_median": self.score_median,
        }  # fmt: skip


@dataclass
class Model:
    baseline: Baseline
    groups: dict[str, Group] = field(default_factory=dict)
    window_seconds: float = 60.0
    false_alarms_per_day: float = 0.5
    summary: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def group_for(self, pair_key: str, protocol: str) -> Group | None:
        return self.groups.get(pair_key) or self.groups.get(f"*/{protocol}")

    def describe(self) -> str:
        b = self.baseline
        lines = [
            f"training span: {span_words(b.last_ns - b.first_ns)} ({b.messages:,} messages, {b.windows:,} windows of {self.window_seconds:g} s)",
            "baseline: " + ", ".join(f"{k} {v}" for k, v in b.summary().items() if k not in ("messages", "windows")),
            f"forests: {len(self.groups)} ({', '.join(sorted(self.groups))})",
            f"target false alarms per day (model): {self.false_alarms_per_day:g}",
        ]
        return "\n".join(lines)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        groups = []
        for i, g in enumerate(self.groups.values()):
            arrays.update(g.forest.arrays(f"g{i}_"))
            groups.append(g.meta())
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
            "features": list(FEATURE_NAMES), "versions": self.versions or library_versions(),
            "window_seconds": self.window_seconds, "false_alarms_per_day": self.false_alarms_per_day,
            "training": {"first_ns": self.baseline.first_ns, "last_ns": self.baseline.last_ns,
                         "span": span_words(self.baseline.last_ns - self.baseline.first_ns)},
            "summary": self.summary, "groups": groups, "baseline": self.baseline.to_json(),
        }  # fmt: skip
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = Path(f"{path}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Model:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ModelError(f"{path}: no such model file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ModelError(f"{path}: not an ics-sensor model file ({e})") from None
        if "meta" not in arrays:
            raise ModelError(f"{path}: not an ics-sensor model file (no metadata entry)")
        try:
            meta = json.loads(arrays["meta"].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: damaged model metadata ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"{path}: not an ics-sensor model file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{path}: model format version {meta.get('format_version')}, this sensor reads version {FORMAT_VERSION}; "
                "retrain it with `ics-sensor train`"
            )
        if meta.get("schema_version") != SCHEMA_VERSION or meta.get("features") != list(FEATURE_NAMES):
            raise ModelError(
                f"{path}: model feature schema {meta.get('schema_version')} ({len(meta.get('features') or [])} features), "
                f"this sensor computes schema {SCHEMA_VERSION} ({len(FEATURE_NAMES)} features: "
                f"{', '.join(FEATURE_NAMES)}); retrain it with `ics-sensor train`"
            )
        try:
            baseline = Baseline.from_json(meta["baseline"])
            groups = {}
            for i, g in enumerate(meta["groups"]):
                algo = g.get("algorithm", "iforest")
                if algo not in ("iforest", "knn"):
                    raise ValueError(f"unknown algorithm {algo!r}")
                scorer = Forest if algo == "iforest" else Knn
                forest = scorer.from_arrays(arrays, f"g{i}_", len(FEATURE_NAMES))
                groups[g["key"]] = Group(g["key"], forest, float(g["threshold"]), g["median"], g["scale"], g["low"],
                                         g["high"], int(g["windows"]), float(g["score_median"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: damaged model file ({type(e).__name__}: {e})") from None
        baseline.window_seconds = float(meta["window_seconds"])
        return cls(baseline, groups, float(meta["window_seconds"]), float(meta["false_alarms_per_day"]),
                   meta.get("summary", {}), meta.get("versions", {}))  # fmt: skip


def library_versions() -> dict[str, str]:
    import sklearn

    from sensor import __version__

    return {"ics_sensor": __version__, "scikit_learn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version()}  # fmt: skip


def build_groups(
    rows: dict[str, list[list[float]]], protocol_of: dict[str, str], days: float, fa_per_day: float, seed: int = 0,
    algorithm: str = "knn",
) -> dict[str, Group]:
    """Fit one forest per pair with enough windows and one pooled forest per protocol; set thresholds so the
    expected model alerts over all training windows come to ``fa_per_day`` per day of traffic.

    Each group's threshold comes from out-of-sample scores (forest: two halves, each scored by a forest fitted
    on the other; knn: leave-one-out), so a window is never scored by a model that saw it; the tail beyond the
    largest score is extrapolated by a generalized Pareto fit (forest.tail_threshold).
    """
    pooled: dict[str, list[list[float]]] = {}
    for k, r in rows.items():
        pooled.setdefault(f"*/{protocol_of[k]}", []).extend(r)
    total = sum(len(r) for r in rows.values())
    rate = min(0.5, fa_per_day * max(days, 1e-9) / max(total, 1))
    candidates = {k: r for k, r in rows.items() if len(r) >= MIN_PAIR_WINDOWS}
    candidates.update(pooled)
    groups: dict[str, Group] = {}
    for n, (key, r) in enumerate(sorted(candidates.items())):
        if len(r) < MIN_GROUP_WINDOWS:
            continue
        x = np.asarray(r, dtype=np.float64)
        med = np.median(x, axis=0)
        q1, q3 = np.quantile(x, [0.25, 0.75], axis=0)
        spread = np.maximum((q3 - q1) / 1.349, np.maximum(x.std(axis=0), 0.05 * np.abs(med)))
        scale = np.maximum(spread, MIN_SCALE)
        scorer: Forest | Knn
        if algorithm == "knn":
            scorer = Knn.fit(x, med, scale)
            oof = scorer.oof_scores()
        else:
            rng = np.random.default_rng(seed + n)
            fold = rng.permutation(len(x)) % 2
            oof = np.empty(len(x))
            for k in (0, 1):
                oof[fold == k] = Forest.fit(x[fold != k], seed + n).score(x[fold == k])
            scorer = Forest.fit(x, seed + n)
        if algorithm == "knn":  # distances are scale-like: their logarithm has the lighter, better-fitted tail
            threshold = float(np.exp(tail_threshold(np.log(oof + LOG_EPS), rate, bounded=False)) - LOG_EPS)
        else:
            threshold = tail_threshold(oof, rate)
        groups[key] = Group(
            key, scorer, threshold, med.tolist(), scale.tolist(),
            np.quantile(x, 0.005, axis=0).tolist(), np.quantile(x, 0.995, axis=0).tolist(), len(x),
            float(np.median(oof)),
        )  # fmt: skip
    return groups
