"""Nearest-neighbour anomaly scores on embeddings, in numpy only (the device never needs scikit-learn).

Two scorers for metric-learning models, whose ``.tflite`` outputs an embedding (N, D):

* ``knn``: the mean Euclidean distance to the k nearest reference (normal) embeddings.
* ``lof``: the Local Outlier Factor in novelty mode, with the semantics of scikit-learn's
  ``LocalOutlierFactor(novelty=True)``: our score is ``-score_samples`` (higher = more anomalous,
  1.0 ~ as dense as the neighbours) and the contamination threshold is ``-offset_``, so
  ``score > threshold`` is exactly scikit-learn's ``predict == -1``.

The reference set can be reduced to fit a small device (k-means centres or a greedy k-center
coreset), and with per-reference labels the scorers also classify in-distribution inputs
(classification with rejection). Distances are computed in row chunks so that memory stays
bounded by ``CHUNK_BYTES`` whatever the reference size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .scoring import Scorer, register

CHUNK_BYTES = 32 << 20  # bytes of distance matrix held at once (~32 MB, fits a Pi Zero 2's headroom)
REDUCE_METHODS = ("kmeans", "coreset")
LRD_EPS = 1e-10  # scikit-learn adds this to the mean reachability distance; kept for parity


def l2_normalize(e: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean length (zero rows stay zero)."""
    e = np.asarray(e)
    n = np.sqrt(np.einsum("ij,ij->i", e, e, dtype=np.float64))[:, None]
    return (e / np.maximum(n, eps)).astype(e.dtype if e.dtype.kind == "f" else np.float32, copy=False)


def _chunks(n_rows: int, n_cols: int, itemsize: int = 8) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // max(1, n_cols * itemsize))
    for i in range(0, n_rows, step):
        yield slice(i, min(n_rows, i + step))


def kneighbors(
    query: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (N, k) float64 and indices (N, k) of the k nearest rows of ``ref``, nearest first.

    exclude_self: ``query`` is ``ref`` itself and a point is not its own neighbour (as
    scikit-learn's ``kneighbors()`` without X). Candidates come from the fast expansion
    |a|^2 + |b|^2 - 2ab in the references' dtype; the k chosen distances are then recomputed
    exactly in float64, so rounding in the expansion can only matter for near-ties.
    """
    query = np.asarray(query)
    ref = np.asarray(ref)
    n, m = len(query), len(ref)
    avail = m - 1 if exclude_self else m
    if not 1 <= k <= avail:
        raise ValueError(f"k={k} neighbours requested but the reference set has {avail} candidates")
    work = ref.dtype if ref.dtype in (np.float32, np.float64) else np.float64
    r = ref.astype(work, copy=False)
    q_all = query.astype(work, copy=False)
    r_sq = np.einsum("ij,ij->i", r, r)
    dist = np.empty((n, k), np.float64)
    idx = np.empty((n, k), np.int64)
    # Per query row we hold m squared distances and k exact D-dim differences.
    for s in _chunks(n, m + k * max(1, ref.shape[1]), 8):
        q = q_all[s]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + r_sq[None, :] - 2.0 * (q @ r.T)
        if exclude_self:
            d2[np.arange(s.stop - s.start), np.arange(s.start, s.stop)] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < m else np.argsort(d2, axis=1)[:, :k]
        diff = query[s, None, :].astype(np.float64) - ref[part].astype(np.float64)
        exact = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
        order = np.argsort(exact, axis=1, kind="stable")
        dist[s] = np.take_along_axis(exact, order, axis=1)
        idx[s] = np.take_along_axis(part, order, axis=1)
    return dist, idx


def knn_scores(query: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Mean distance (embedding units) to the k nearest references: (N,) float64."""
    return kneighbors(query, ref, k, exclude_self)[0].mean(axis=1)


def _lrd(dist: np.ndarray, idx: np.ndarray, ref_kdist: np.ndarray) -> np.ndarray:
    """Local reachability density from neighbour distances/indices and the references' k-distances."""
    reach = np.maximum(dist, ref_kdist[idx])
    return 1.0 / (reach.mean(axis=1) + LRD_EPS)


def lof_fit(ref: np.ndarray, n_neighbors: int = 20) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Fit LOF on the references: (k-distance (M,), lrd (M,), training LOF (M,), n_neighbors used).

    n_neighbors is capped at M - 1 as scikit-learn does. The training LOF is scikit-learn's
    ``-negative_outlier_factor_`` and sets the contamination threshold.
    """
    m = len(ref)
    if m < 2:
        raise ValueError(f"LOF needs at least 2 reference embeddings, got {m}")
    k = min(n_neighbors, m - 1)
    dist, idx = kneighbors(ref, ref, k, exclude_self=True)
    kdist = dist[:, -1].copy()
    lrd = _lrd(dist, idx, kdist)
    train_lof = (lrd[idx] / lrd[:, None]).mean(axis=1)
    return kdist, lrd, train_lof, k


def lof_scores(query: np.ndarray, ref: np.ndarray, kdist: np.ndarray, lrd: np.ndarray, k: int) -> np.ndarray:
    """Local Outlier Factor of new points (novelty mode): (N,) float64, ~1 for inliers."""
    dist, idx = kneighbors(query, ref, k)
    q_lrd = _lrd(dist, idx, kdist)
    return (lrd[idx] / q_lrd[:, None]).mean(axis=1)


def contamination_threshold(train_scores: np.ndarray, contamination: float) -> float:
    """Score above which a fraction ``contamination`` of the references lies (scikit-learn's -offset_)."""
    if not 0.0 < contamination <= 0.5:
        raise ValueError(f"contamination must be in (0, 0.5], got {contamination}")
    return float(-np.percentile(-np.asarray(train_scores, np.float64), 100.0 * contamination))


# -- reference-set reduction ----------------------------------------------------------------------


def kmeans(x: np.ndarray, k: int, iters: int = 50, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: centres (k, D) and each row's cluster (N,)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} centres from {n} points")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = d2.sum()
        # All remaining points coincide with a centre: any choice is as good.
        j = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres[i] = x[j]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(axis=1))
    assign = np.zeros(n, np.int64)
    for it in range(iters):
        new = kneighbors(x, centres, 1)[1][:, 0]
        if it and np.array_equal(new, assign):
            break
        assign = new
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        keep = counts > 0  # an emptied cluster keeps its old centre
        centres[keep] = sums[keep] / counts[keep, None]
    return centres, assign


def kcenter_coreset(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center (farthest-point) coreset: indices (k,) of rows that cover ``x`` best."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} points from {n}")
    # Start from the point nearest the mean: deterministic, and not an outlier.
    first = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    d2 = ((x - x[first]) ** 2).sum(axis=1)
    for _ in range(1, k):
        j = int(np.argmax(d2))
        chosen.append(j)
        d2 = np.minimum(d2, ((x - x[j]) ** 2).sum(axis=1))
    return np.asarray(chosen, np.int64)


def reduce_reference(
    emb: np.ndarray,
    size: int,
    method: str = "kmeans",
    labels: Optional[np.ndarray] = None,
    seed: int = 0,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Shrink a reference set to ``size`` rows: (embeddings, labels or None).

    kmeans: cluster centres (new points, the set's density is smoothed out).
    coreset: a subset of the real points that covers the set (greedy k-center).
    With labels, each class gets a share of ``size`` proportional to its count (at least 1),
    so the reduced set still classifies; a k-means centre carries its class's label.
    """
    if method not in REDUCE_METHODS:
        raise ValueError(f"reduce must be one of {REDUCE_METHODS}, got {method!r}")
    emb = np.asarray(emb)
    if size >= len(emb):
        return emb, labels
    if labels is None:
        groups: List[Tuple[Optional[int], np.ndarray]] = [(None, np.arange(len(emb)))]
    else:
        labels = np.asarray(labels)
        groups = [(int(c), np.flatnonzero(labels == c)) for c in np.unique(labels)]
    quota = _split_quota([len(g) for _, g in groups], size)
    out_e, out_l = [], []
    for (c, rows), q in zip(groups, quota):
        part = emb[rows]
        if method == "kmeans":
            e = kmeans(part, q, seed=seed)[0].astype(emb.dtype)
        else:
            e = part[kcenter_coreset(part, q)]
        out_e.append(e)
        if c is not None:
            out_l.append(np.full(len(e), c, np.int64))
    return np.concatenate(out_e), (np.concatenate(out_l) if labels is not None else None)


def _split_quota(counts: Sequence[int], size: int) -> List[int]:
    """Largest-remainder split of ``size`` over groups by count, each at least 1 and at most its count."""
    total = sum(counts)
    raw = [size * c / total for c in counts]
    q = [max(1, min(c, int(r))) for r, c in zip(raw, counts)]
    for i in sorted(range(len(q)), key=lambda i: raw[i] - int(raw[i]), reverse=True):
        if sum(q) >= size:
            break
        if q[i] < counts[i]:
            q[i] += 1
    return q


# -- scorers --------------------------------------------------------------------------------------


def _vote(idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Majority label among each row's neighbours; ties go to the nearer neighbour's label."""
    lab = labels[idx]
    n_cls = int(labels.max()) + 1
    counts = np.zeros((len(idx), n_cls), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), lab.ravel()), 1)
    best = counts.max(axis=1, keepdims=True)
    # Among tied classes, pick the one whose first occurrence in the (nearest-first) list is earliest.
    tied = counts[np.arange(len(idx))[:, None], lab] == best
    return lab[np.arange(len(idx)), np.argmax(tied, axis=1)]


@dataclass
class _NeighborScorer(Scorer):
    """Shared parts: host-side normalisation, reference arrays, optional classification."""

    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)
    labels: Optional[np.ndarray] = field(default=None, repr=False)
    normalize: bool = False  # L2-normalise the model output on the host (when the graph does not)
    scale: float = 1.0  # multiply normalised embeddings by this (alpha), so distances keep their units
    class_names: Optional[List[str]] = None

    def embed(self, y: np.ndarray) -> np.ndarray:
        """Model output (N, ...) to the embedding the references live in: (N, D)."""
        y = np.asarray(y, np.float32)
        e = y.reshape(len(y), int(np.prod(y.shape[1:])))  # not -1: an empty batch must keep its width
        if self.normalize:
            e = l2_normalize(e) * np.float32(self.scale)
        return e

    def neighbours(self, y: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return kneighbors(self.embed(y), self.reference, k)

    def classify(self, y: np.ndarray, k: Optional[int] = None) -> np.ndarray:
        """Predicted class index (N,) by majority of the k nearest references' labels."""
        if self.labels is None:
            raise ValueError("this scorer has no reference labels, so it cannot classify")
        k = min(k or self._k(), len(self.reference))
        return _vote(self.neighbours(y, k)[1], self.labels)

    def class_name(self, c: int) -> str:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else str(c)

    def _k(self) -> int:
        raise NotImplementedError

    def _base_dict(self) -> dict:
        d = {"kind": self.kind, "normalize": self.normalize, "scale": self.scale,
             "reference_size": int(len(self.reference)), "embed_dim": int(self.reference.shape[1])}
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
        return d

    def arrays(self) -> Dict[str, np.ndarray]:
        """What the bundle must store beside the manifest for ``from_dict`` to rebuild this scorer."""
        a = {"reference": self.reference.astype(np.float32)}
        if self.labels is not None:
            a["reference_labels"] = self.labels.astype(np.int32)
        return a

    @staticmethod
    def _neighbour_count(d: dict, key: str, default: int, n: Optional[int]) -> int:
        """``d[key]`` checked at load: 1..n (the reference set's size; n None: any count >= 1), so
        that a hand-edited manifest is refused once, not with a ValueError on every image."""
        k = d.get(key, default)
        # bool is an int to Python; a float is accepted only when whole (5.0).
        whole = not isinstance(k, bool) and isinstance(k, (int, float)) and float(k).is_integer()
        if n is None and not (whole and k >= 1):
            raise ValueError(f"scoring.{key} must be a whole number >= 1, got {k!r}")
        if n is not None and not (whole and 1 <= k <= n):
            raise ValueError(f"scoring.{key} must be 1..{n} (the reference set's size), got {k!r}")
        return int(k)

    @staticmethod
    def _common(d: dict, arrays: Dict[str, np.ndarray]) -> dict:
        if "reference" not in arrays:
            raise ValueError("scoring needs the bundle array 'reference' (the normal embeddings)")
        if np.ndim(arrays["reference"]) != 2 or len(arrays["reference"]) == 0:
            raise ValueError(f"scoring needs a non-empty (N, D) array 'reference', got shape "
                             f"{list(np.shape(arrays['reference']))}")
        labels = arrays.get("reference_labels")
        return {
            "reference": np.asarray(arrays["reference"]),
            "labels": None if labels is None else np.asarray(labels, np.int64),
            "normalize": bool(d.get("normalize", False)),
            "scale": float(d.get("scale", 1.0)),
            "class_names": d.get("class_names"),
        }


@register("knn")
@dataclass
class KNNScorer(_NeighborScorer):
    """Mean distance to the k nearest normal embeddings (embedding units)."""

    k: int = 5

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self.neighbours(y, self.k)[0].mean(axis=1), None

    def _k(self) -> int:
        return self.k

    def reference_scores(self) -> np.ndarray:
        """Leave-one-out score of every reference (for a contamination threshold)."""
        return knn_scores(self.reference, self.reference, self.k, exclude_self=True)

    def to_dict(self) -> dict:
        return {**self._base_dict(), "k": self.k}

    @classmethod
    def from_dict(cls, d: dict, arrays: Dict[str, np.ndarray]) -> KNNScorer:
        common = cls._common(d, arrays)
        return cls(k=cls._neighbour_count(d, "k", 5, len(common["reference"])), **common)


@register("lof")
@dataclass
class LOFScorer(_NeighborScorer):
    """Local Outlier Factor in novelty mode; ~1.0 for inliers, larger for outliers.

    kdist / lrd: each reference's k-distance and local reachability density, precomputed at
    fit time so the device never does the O(M^2) pass.
    """

    n_neighbors: int = 20
    kdist: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    lrd: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return lof_scores(self.embed(y), self.reference, self.kdist, self.lrd, self.n_neighbors), None

    def _k(self) -> int:
        return self.n_neighbors

    def to_dict(self) -> dict:
        return {**self._base_dict(), "n_neighbors": self.n_neighbors}

    def arrays(self) -> Dict[str, np.ndarray]:
        # float64: lrd ratios of near-duplicate references are sensitive to rounding.
        return {**super().arrays(), "reference_kdist": self.kdist.astype(np.float64),
                "reference_lrd": self.lrd.astype(np.float64)}

    @classmethod
    def from_dict(cls, d: dict, arrays: Dict[str, np.ndarray]) -> LOFScorer:
        common = cls._common(d, arrays)
        if "reference_kdist" in arrays and "reference_lrd" in arrays:
            k = cls._neighbour_count(d, "n_neighbors", 20, len(common["reference"]))
            kdist, lrd = np.asarray(arrays["reference_kdist"]), np.asarray(arrays["reference_lrd"])
        else:  # an older/hand-made bundle: fit on load, which caps n_neighbors at N - 1 as scikit-learn does
            k = cls._neighbour_count(d, "n_neighbors", 20, None)
            kdist, lrd, _, k = lof_fit(common["reference"], k)
        if len(kdist) != len(common["reference"]) or len(lrd) != len(common["reference"]):
            raise ValueError("reference_kdist / reference_lrd do not match the reference embeddings")
        return cls(n_neighbors=k, kdist=kdist, lrd=lrd, **common)


def fit_scorer(
    kind: str,
    embeddings: np.ndarray,
    labels: Optional[np.ndarray] = None,
    *,
    k: int = 5,
    n_neighbors: int = 20,
    normalize: bool = False,
    scale: float = 1.0,
    reference_size: Optional[int] = None,
    reduce: str = "kmeans",
    class_names: Optional[List[str]] = None,
    seed: int = 0,
) -> Tuple[_NeighborScorer, np.ndarray]:
    """Build a knn/lof scorer from normal model outputs: (scorer, leave-one-out reference scores).

    ``embeddings`` are raw model outputs; with ``normalize`` they are normalised the way the
    scorer will normalise device outputs. The returned reference scores feed a contamination
    threshold (``contamination_threshold``); validation scores suit the other calibration modes.
    """
    probe = _NeighborScorer(normalize=normalize, scale=scale)
    emb = probe.embed(embeddings)
    if reference_size:
        emb, labels = reduce_reference(emb, reference_size, reduce, labels, seed)
    if len(emb) < 2:
        # An embedding's nearest other one is its score: with one there is none (k would be 0),
        # and the bundle written would be refused when a device loads it.
        raise ValueError(f"a neighbour scorer needs at least 2 normal reference embeddings, got {len(emb)}: "
                         "train on more normal images (or a larger reference size)")
    common = {"reference": emb.astype(np.float32), "labels": labels, "normalize": normalize, "scale": scale,
              "class_names": class_names}
    if kind == "knn":
        s = KNNScorer(k=min(k, len(emb) - 1), **common)
        return s, s.reference_scores()
    if kind == "lof":
        kdist, lrd, train_lof, kk = lof_fit(common["reference"], n_neighbors)
        return LOFScorer(n_neighbors=kk, kdist=kdist, lrd=lrd, **common), train_lof
    raise ValueError(f"neighbour scorer must be 'knn' or 'lof', got {kind!r}")
