"""IsolationForest trained by scikit-learn, stored as plain arrays and scored with numpy.

Why not pickle/joblib: a model file is input to the sensor, and unpickling runs code chosen by whoever wrote the
file. The fitted trees are only arrays (split feature, threshold, children, and the path length each leaf adds),
so they are saved in an ``.npz`` read with ``allow_pickle=False`` and scored here exactly as scikit-learn's
``IsolationForest.score_samples`` does (checked by tests/test_anomaly_model.py). Scoring then does not depend on
the installed scikit-learn version; training does.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from operator import sub, truediv

import numpy as np

EULER = 0.5772156649015329
# Rows scored at once: a window closing with tens of thousands of pairs must not allocate rows x training points
# (1 GB measured at 20,000 pairs against 14,336 neighbours). A row's score does not depend on the other rows, so
# blocks give the same numbers (tests/test_anomaly.py); small blocks were also 7 times faster there (the distance
# matrix stays in cache).
KNN_DISTANCES = 1 << 21  # distances per block: 8 MB of float32
FOREST_ROWS = 4096  # rows per block: 3 MB per (rows, trees) array of 100 trees


_add_reduce = np.add.reduce


def in_blocks(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) <= rows:
        return score(x)
    return np.concatenate([score(x[i : i + rows]) for i in range(0, len(x), rows)])


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """c(n): mean path length of an unsuccessful BST search among n points (Liu et al. 2008), as scikit-learn."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    two = n == 2
    big = n > 2
    out[two] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass
class Forest:
    """All trees of one IsolationForest in flat arrays; ``roots[i]`` is tree i's first node."""

    feature: np.ndarray  # int32, -1 on leaves
    threshold: np.ndarray  # float64
    left: np.ndarray  # int32, absolute node index
    right: np.ndarray  # int32
    leaf_depth: np.ndarray  # float64: depth + c(samples in leaf), only meaningful on leaves
    roots: np.ndarray  # int32
    max_samples: int

    @classmethod
    def fit(cls, x: np.ndarray, seed: int, n_estimators: int = 100) -> Forest:
        from sklearn.ensemble import IsolationForest

        model = IsolationForest(n_estimators=n_estimators, max_samples=min(256, len(x)), random_state=seed)
        model.fit(x)
        return cls.from_sklearn(model)

    @classmethod
    def from_sklearn(cls, model: object) -> Forest:
        feats, ths, lefts, rights, depths, roots = [], [], [], [], [], []
        base = 0
        for est, cols in zip(model.estimators_, model.estimators_features_, strict=True):  # type: ignore[attr-defined]
            t = est.tree_
            n = t.node_count
            cl, cr = t.children_left, t.children_right
            depth = np.zeros(n)
            for i in range(n):  # nodes are numbered parents first
                if cl[i] != -1:
                    depth[cl[i]] = depth[cr[i]] = depth[i] + 1
            leaf = cl == -1
            feats.append(np.where(leaf, -1, np.asarray(cols)[np.maximum(t.feature, 0)]).astype(np.int32))
            ths.append(t.threshold.astype(np.float64))
            lefts.append(np.where(leaf, -1, cl + base).astype(np.int32))
            rights.append(np.where(leaf, -1, cr + base).astype(np.int32))
            depths.append(depth + average_path_length(t.n_node_samples.astype(np.float64)))
            roots.append(base)
            base += n
        return cls(
            np.concatenate(feats), np.concatenate(ths), np.concatenate(lefts), np.concatenate(rights),
            np.concatenate(depths), np.asarray(roots, dtype=np.int32), int(model.max_samples_),  # type: ignore[attr-defined]
        )  # fmt: skip

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1) per row: 2^(-E[h(x)]/c(max_samples)); higher is more anomalous (about 0.5 is
        ordinary). This is minus scikit-learn's ``score_samples``. All trees descend together, one level a step."""
        return in_blocks(self._score, np.asarray(x, dtype=np.float32), FOREST_ROWS)  # float32: as scikit-learn's trees

    def _score(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        rows = np.arange(n)[:, None]
        node = np.broadcast_to(self.roots.astype(np.int64), (n, len(self.roots))).copy()
        while True:
            f = self.feature[node]
            inner = f >= 0
            if not inner.any():
                break
            go_left = x[rows, np.maximum(f, 0)] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        mean = self.leaf_depth[node].mean(axis=1)
        return np.power(2.0, -mean / float(average_path_length(np.array([self.max_samples]))[0]))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}feature": self.feature, f"{prefix}threshold": self.threshold, f"{prefix}left": self.left,
            f"{prefix}right": self.right, f"{prefix}leaf_depth": self.leaf_depth, f"{prefix}roots": self.roots,
            f"{prefix}max_samples": np.asarray([self.max_samples], dtype=np.int64),
        }  # fmt: skip

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str, n_features: int) -> Forest:
        f = cls(
            a[f"{prefix}feature"].astype(np.int32), a[f"{prefix}threshold"].astype(np.float64),
            a[f"{prefix}left"].astype(np.int32), a[f"{prefix}right"].astype(np.int32),
            a[f"{prefix}leaf_depth"].astype(np.float64), a[f"{prefix}roots"].astype(np.int32),
            int(a[f"{prefix}max_samples"][0]),
        )  # fmt: skip
        f.validate(n_features)
        return f

    def validate(self, n_features: int) -> None:
        """Refuse arrays that would index out of range (a damaged or hand-edited file)."""
        n = len(self.feature)
        if not (len(self.threshold) == len(self.left) == len(self.right) == len(self.leaf_depth) == n) or n == 0:
            raise ValueError("tree arrays of different lengths")
        inner = self.feature >= 0
        if (self.feature >= n_features).any():
            raise ValueError("split feature outside the feature schema")
        for arr in (self.left, self.right):
            if ((arr[inner] < 0) | (arr[inner] >= n)).any():
                raise ValueError("child index out of range")
        if ((self.roots < 0) | (self.roots >= n)).any() or self.max_samples < 1:
            raise ValueError("bad roots or max_samples")
        # children always come after their parent, so traversal ends
        idx = np.nonzero(inner)[0]
        if ((self.left[idx] <= idx) | (self.right[idx] <= idx)).any():
            raise ValueError("child before parent")


def tail_threshold(scores: np.ndarray, rate: float, bounded: bool = True) -> float:
    """The score exceeded with probability ``rate`` per window.

    The empirical quantile when the sample holds at least 10 expected exceedances; else peaks over threshold on
    the top 5% of the scores (at least 5 of them): a generalized Pareto distribution fitted with scipy when there
    are 20 excesses or more, an exponential tail (shape 0, the mean excess as scale) below that, extrapolated to
    ``rate``. Forest scores are bounded by 1 (``bounded``): an estimate past that is capped halfway between the
    largest training score and 1, so the forest can still fire.
    """
    from scipy.stats import genpareto

    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n < 2:
        return float(s[-1]) if n else 1.0
    if rate * n >= 10:
        return float(np.quantile(s, 1.0 - rate))
    top = float(s[-1])
    cap = (top + 1.0) / 2 if bounded else math.inf
    k = min(max(int(0.05 * n), 5), n - 1)
    u = float(s[n - k - 1])
    exc = s[n - k :] - u
    p_u = k / n
    if rate >= p_u:
        return min(top, cap)
    shape, scale = 0.0, float(exc.mean())
    if k >= 20:
        shape, _, scale = genpareto.fit(exc, floc=0)
    if abs(shape) < 1e-6:
        q = u + scale * math.log(p_u / rate)
    else:
        q = u + scale / shape * ((p_u / rate) ** shape - 1.0)
    return float(min(max(q, top), cap))


@dataclass(frozen=True, slots=True)
class Near:
    """k training windows (as float lists: ``below`` is plain float arithmetic, a few numpy calls cost more) near an
    earlier window: see ``Knn.below``."""

    rows: list[list[float]]
    slack: list[float]  # 1e-5 |row|^2: the rows' part of the slack in ``Knn.below``


@dataclass
class Knn:
    """k-nearest-neighbour distance in robust-scaled feature space: the mean distance from a window to its ``k``
    nearest training windows. Unlike an isolation forest it keeps growing as a window moves past the training
    data's range (a flood ten times the learned rate scores ten times further), which the evaluation needs
    (bench/eval_model.py). Fitted neighbours come from scikit-learn's NearestNeighbors; the stored model is the
    scaled training windows, scored with numpy."""

    points: np.ndarray  # (n, features) float32, scaled
    center: np.ndarray
    scale: np.ndarray
    k: int

    @classmethod
    def fit(cls, x: np.ndarray, center: np.ndarray, scale: np.ndarray, k: int = 5) -> Knn:
        pts = ((np.asarray(x, dtype=np.float64) - center) / scale).astype(np.float32)
        return cls(pts, np.asarray(center, dtype=np.float64), np.asarray(scale, dtype=np.float64), min(k, len(pts)))

    def score(self, x: np.ndarray) -> np.ndarray:
        return in_blocks(self._score, np.asarray(x, dtype=np.float64), max(1, KNN_DISTANCES // len(self.points)))

    def score_near(self, x: np.ndarray) -> tuple[np.ndarray, list[Near]]:
        """``score(x)`` and, per row, its k nearest training windows as a ``Near`` for ``below``."""
        found: list[np.ndarray] = []
        rows = max(1, KNN_DISTANCES // len(self.points))
        s = in_blocks(lambda b: self._score(b, found), np.asarray(x, dtype=np.float64), rows)
        return s, [self._near(self.points[i]) for block in found for i in block]

    @staticmethod
    def _near(rows: np.ndarray) -> Near:
        r = rows.astype(np.float64)
        return Near(r.tolist(), (1e-5 * _add_reduce(r * r, 1)).tolist())

    def below(self, x: list[float], threshold: float, near: Near) -> bool:
        """True only if ``score([x])[0] <= threshold``, at a fraction of its cost (a window is scored per pair
        and window, and almost every window of normal traffic is far below the threshold).

        The mean distance to the k nearest training windows is at most the mean distance to any k of them, such
        as the nearest of an earlier window of the same pair (``near``). Those k distances are computed in float64
        by ``math.dist`` (within an ulp of exact), then raised by a slack larger than the rounding error of
        ``_score``'s float32 arithmetic: its squared distance ``|q|^2 + |p|^2 - 2 q.p`` is within about
        2e-6 (|q|^2 + |p|^2) of the exact one (sums of 12 float32 terms), and its square root, sum and mean add a
        few float32 roundings; the slack is 1e-5 (|q|^2 + |p|^2) and a factor 1 + 1e-5. So when this says True,
        ``score`` would not exceed the threshold either; when it says False, nothing is known and the caller
        scores the row."""
        c = self.__dict__.get("_cs")
        if c is None:
            c = self.__dict__["_cs"] = (self.center.tolist(), self.scale.tolist())
        # (x - center) / scale in float64, then rounded to float32 (array 'f'), as _score's q
        q = array("f", map(truediv, map(sub, x, c[0]), c[1])).tolist()
        extra = 1e-5 * math.hypot(*q) ** 2
        total = 0.0
        for row, slack in zip(near.rows, near.slack, strict=True):
            d = math.dist(row, q)  # correctly rounded to within an ulp
            total += math.sqrt(d * d + slack + extra)
        return total / len(near.rows) * (1.0 + 1e-5) <= threshold

    def _score(self, x: np.ndarray, near: list[np.ndarray] | None = None) -> np.ndarray:
        """Mean distance to the k nearest training windows. Called once per group and window, mostly with one
        row, so numpy's Python-level wrappers (sum, partition, mean) are called as the ufuncs and methods they
        run: the same operations in the same order, so the same float32 numbers."""
        q = ((x - self.center) / self.scale).astype(np.float32)
        d2 = _add_reduce(q * q, 1)[:, None] + self._squares()[None, :] - 2.0 * q @ self.points.T
        d = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
        k = self.k
        if near is not None:  # which points are the k nearest (before d is partitioned in place)
            whole = d.shape[1] <= k
            near.append(np.tile(np.arange(k), (len(d), 1)) if whole else np.argpartition(d, k - 1, axis=1)[:, :k])
        if d.shape[1] > k:
            d.partition(k - 1, axis=1)  # in place: d is this call's own array
            d = d[:, :k]
        s = _add_reduce(d, 1)
        return np.true_divide(s, np.intp(d.shape[1]), out=s, casting="unsafe")  # ndarray.mean's own steps

    def _squares(self) -> np.ndarray:
        """Squared norms of the training points, computed once: most of a score's cost otherwise (scored per
        window and group). Recomputed if ``points`` is replaced."""
        c = self.__dict__.get("_sq")
        if c is None or c[0] is not self.points:
            c = self.__dict__["_sq"] = (self.points, (self.points * self.points).sum(1))
        return c[1]

    def oof_scores(self) -> np.ndarray:
        """Each training window scored against the others (leave-one-out through sklearn's NearestNeighbors)."""
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=min(self.k + 1, len(self.points))).fit(self.points)
        dist, _ = nn.kneighbors(self.points)
        return dist[:, 1:].mean(axis=1) if dist.shape[1] > 1 else dist[:, 0]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}points": self.points, f"{prefix}center": self.center, f"{prefix}scale": self.scale,
                f"{prefix}k": np.asarray([self.k], dtype=np.int64)}  # fmt: skip

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str, n_features: int) -> Knn:
        pts = a[f"{prefix}points"].astype(np.float32)
        c, s = a[f"{prefix}center"].astype(np.float64), a[f"{prefix}scale"].astype(np.float64)
        k = int(a[f"{prefix}k"][0])
        if pts.ndim != 2 or pts.shape[1] != n_features or c.shape != (n_features,) or s.shape != (n_features,):
            raise ValueError("neighbour arrays do not match the feature schema")
        if not 1 <= k <= len(pts) or (s <= 0).any():
            raise ValueError("bad k or scale")
        return cls(pts, c, s, k)
