"""Anomaly scores, in numpy only: the one implementation that training and the device share.

A scorer turns (model input, model output) into one score per image, and for
reconstruction models also a per-pixel error map for heatmaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np

RECONSTRUCTION_METHODS = ("mse", "mae", "ssim", "max_smooth")
SSIM_C1 = (0.01 * 1.0) ** 2  # for data range 1.0 (inputs scaled to 0..1)
SSIM_C2 = (0.03 * 1.0) ** 2


def box_filter(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k px window, same size output, reflected borders. x: (N, H, W) float."""
    if k <= 1:
        return x.astype(np.float32, copy=False)
    if k % 2 == 0:
        raise ValueError(f"box filter size must be odd, got {k} px")
    r = k // 2
    p = np.pad(x.astype(np.float32, copy=False), ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = x.shape[1], x.shape[2]
    # Separable sum of k shifted views: for the small windows we use (<= ~15 px) this is several
    # times faster than an integral image, and float32 keeps the error far below 1e-6 for 0..1 maps.
    rows = p[:, :, 0:w].copy()
    for j in range(1, k):
        rows += p[:, :, j : j + w]
    out = rows[:, 0:h].copy()
    for i in range(1, k):
        out += rows[:, i : i + h]
    out *= np.float32(1.0 / (k * k))
    return out


def _channels_last_to_planes(a: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N*C, H, W), so 2-D filters run on every channel at once."""
    n, h, w, c = a.shape
    return np.moveaxis(a, 3, 1).reshape(n * c, h, w)


def ssim_map(x: np.ndarray, y: np.ndarray, win: int = 7) -> np.ndarray:
    """Per-pixel SSIM for (N, H, W, C) images in 0..1, averaged over channels: (N, H, W)."""
    n, h, w, c = x.shape
    a = _channels_last_to_planes(x.astype(np.float32, copy=False))
    b = _channels_last_to_planes(y.astype(np.float32, copy=False))
    mu_a, mu_b = box_filter(a, win), box_filter(b, win)
    # Sample covariance, as in Wang et al. 2004 and scikit-image's default.
    cov = win * win / (win * win - 1.0)
    var_a = (box_filter(a * a, win) - mu_a * mu_a) * cov
    var_b = (box_filter(b * b, win) - mu_b * mu_b) * cov
    cov_ab = (box_filter(a * b, win) - mu_a * mu_b) * cov
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov_ab + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    )
    return s.reshape(n, c, h, w).mean(axis=1)


def reconstruction_scores(
    x: np.ndarray, recon: np.ndarray, method: str = "mse", smooth: int = 5, ssim_win: int = 7
) -> Tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and per-pixel error maps (N, H, W) of reconstructions of (N, H, W, C) inputs.

    mse / mae: mean squared / absolute error; maps are the squared / absolute error.
    ssim: 1 - mean SSIM; map is 1 - SSIM.
    max_smooth: max of the absolute error box-smoothed over ``smooth`` px; catches small defects.
    """
    x = np.asarray(x, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    if x.shape != recon.shape or x.ndim != 4:
        raise ValueError(f"input {x.shape} and reconstruction {recon.shape} must both be (N, H, W, C)")
    if method == "mse":
        m = ((x - recon) ** 2).mean(axis=3)
        return m.mean(axis=(1, 2)), m
    if method == "mae":
        m = np.abs(x - recon).mean(axis=3)
        return m.mean(axis=(1, 2)), m
    if method == "ssim":
        m = 1.0 - ssim_map(x, recon, ssim_win)
        return m.mean(axis=(1, 2)), m
    if method == "max_smooth":
        m = box_filter(np.abs(x - recon).mean(axis=3), smooth)
        return m.max(axis=(1, 2)), m
    raise ValueError(f"scoring.method must be one of {RECONSTRUCTION_METHODS}, got {method!r}")


def pixel_map(error_map: np.ndarray, method: str = "mse", smooth: int = 5) -> np.ndarray:
    """The map regions are cut from: mse/mae maps box-smoothed over ``smooth`` px, others as they are.

    max_smooth maps are already smoothed and ssim maps are windowed; raw squared errors are too
    speckled for connected components. Accepts (H, W) or (N, H, W); returns float32 of that shape.
    """
    m = np.asarray(error_map, dtype=np.float32)
    if method in ("mse", "mae") and smooth > 1:
        m = box_filter(m[None] if m.ndim == 2 else m, smooth)
        return m[0] if np.ndim(error_map) == 2 else m
    return m


def normalise(score: np.ndarray | float, threshold: float, center: float) -> np.ndarray | float:
    """Map a score so that ``center`` (median normal score) is 0.0 and the threshold is 1.0."""
    span = threshold - center
    if span <= 0:
        span = abs(threshold) or 1.0
        center = 0.0 if threshold > 0 else center
    return (score - center) / span


# -- scorers the device builds from a manifest ---------------------------------------------------


class Scorer:
    """Turns a batch of model inputs and outputs into scores (N,) and maps (N, H, W) or None."""

    kind: str = ""
    wants_maps: bool = False

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError


_REGISTRY: Dict[str, Type[Scorer]] = {}


def register(kind: str):
    """Class decorator: make a scorer constructible from a manifest's ``scoring.kind``."""

    def deco(cls: Type[Scorer]) -> Type[Scorer]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


@register("reconstruction")
@dataclass
class ReconstructionScorer(Scorer):
    method: str = "mse"
    smooth: int = 5  # px, box size for max_smooth
    ssim_win: int = 7  # px

    wants_maps = True

    def __post_init__(self) -> None:
        if self.method not in RECONSTRUCTION_METHODS:
            raise ValueError(f"scoring.method must be one of {RECONSTRUCTION_METHODS}, got {self.method!r}")

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return reconstruction_scores(x, y, self.method, self.smooth, self.ssim_win)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "method": self.method, "smooth": self.smooth, "ssim_win": self.ssim_win}


@register("vote")
@dataclass
class VoteScorer(Scorer):
    """Several reconstruction models as one: output channels [i*C, (i+1)*C) are member i's reconstruction.

    Each member's score is divided by that member's own threshold, and the image's score is the
    ``vote``-th highest of these ratios: it exceeds 1.0 exactly when at least ``vote`` members
    reject the image (vote = number of members: all must agree). The map is built the same way,
    pixel by pixel, from each member's smoothed map (:func:`pixel_map`) over its threshold.
    """

    members: List[Dict[str, Any]] = field(default_factory=list)  # ReconstructionScorer dicts
    thresholds: List[float] = field(default_factory=list)  # one per member, in its own score units
    vote: int = 0  # members that must reject; 0: all

    wants_maps = True
    method = "vote"  # what heatmaps read from the scoring block: the maps are already smoothed

    def __post_init__(self) -> None:
        self.scorers = []
        for i, m in enumerate(self.members):
            if not isinstance(m, dict) or m.get("kind", "reconstruction") != "reconstruction":
                raise ValueError(f"scoring.members[{i}] must be a reconstruction scoring block, got {m!r}")
            try:
                self.scorers.append(ReconstructionScorer(**{k: v for k, v in m.items() if k != "kind"}))
            except TypeError as e:  # an unknown key
                raise ValueError(f"scoring.members[{i}]: {e}") from None
        n = len(self.scorers)
        if n < 2:
            raise ValueError(f"scoring.members: a vote needs at least 2 members, got {n}")
        self.thresholds = [float(t) for t in np.asarray(self.thresholds, np.float64).ravel()]
        if len(self.thresholds) != n or not all(np.isfinite(t) and t > 0 for t in self.thresholds):
            raise ValueError(f"scoring.thresholds: need {n} positive numbers (one per member), got {self.thresholds}")
        self.vote = int(self.vote) or n
        if not 1 <= self.vote <= n:
            raise ValueError(f"scoring.vote must be 1..{n} (0: all), got {self.vote}")

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        n, c = len(self.scorers), x.shape[-1]
        if y.ndim != 4 or y.shape[-1] != n * c:
            raise ValueError(f"a vote of {n} members needs {n * c} output channels for {c}-channel input, "
                             f"got output {y.shape}")
        scores, maps = [], []
        for i, (sc, t) in enumerate(zip(self.scorers, self.thresholds)):
            s, m = sc(x, y[..., i * c : (i + 1) * c])
            scores.append(s / t)
            maps.append(m)
        maps_a = np.stack(maps)  # (members, N, H, W)
        # Members that smooth alike are smoothed in one call: fewer passes for the usual all-mse vote.
        for key in {(sc.method, sc.smooth) for sc in self.scorers}:
            idx = [i for i, sc in enumerate(self.scorers) if (sc.method, sc.smooth) == key]
            maps_a[idx] = pixel_map(maps_a[idx].reshape(-1, *maps_a.shape[2:]), *key).reshape(maps_a[idx].shape)
        maps_a /= np.asarray(self.thresholds, np.float32)[:, None, None, None]
        return _kth_highest(np.stack(scores), self.vote), _kth_highest(maps_a, self.vote)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "method": self.method, "members": [dict(m) for m in self.members],
                "thresholds": list(self.thresholds), "vote": self.vote}

    @classmethod
    def from_dict(cls, d: dict, arrays: Dict[str, np.ndarray]) -> VoteScorer:
        # A bundle variant carries thresholds from its own numerics (int8 errors are a little larger).
        th = arrays.get("member_thresholds", d.get("thresholds", []))
        extra = set(d) - {"members", "thresholds", "vote", "method"}
        if extra:
            raise ValueError(f"scoring: unknown key(s) {', '.join(sorted(extra))} for kind vote")
        vote = d.get("vote", 0)
        if isinstance(vote, bool) or not isinstance(vote, (int, np.integer)):
            raise ValueError(f"scoring.vote must be an integer, got {vote!r}")
        return cls(members=list(d.get("members", [])), thresholds=list(np.asarray(th).ravel()), vote=int(vote))


def _kth_highest(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th highest along axis 0 (k = 1: the maximum, k = len(a): the minimum)."""
    rank = len(a) - k
    if rank == 0:
        return a.min(axis=0)
    if rank == len(a) - 1:
        return a.max(axis=0)
    return np.partition(a, rank, axis=0)[rank]


def scorer_from_dict(d: dict, arrays: Optional[Dict[str, np.ndarray]] = None) -> Scorer:
    """Build the scorer a manifest describes. ``arrays`` holds any reference data it names."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _REGISTRY:
        _load_plugins()
    if kind not in _REGISTRY:
        raise ValueError(f"scoring.kind must be one of {sorted(_REGISTRY)}, got {kind!r}")
    cls = _REGISTRY[kind]
    from_dict = getattr(cls, "from_dict", None)
    if from_dict:
        return from_dict(d, arrays or {})
    try:
        return cls(**d)
    except TypeError as e:  # an unknown key in the manifest's scoring block
        raise ValueError(f"scoring: {e}") from None


def _load_plugins() -> None:
    """Scorers that live in their own modules register on import."""
    import importlib

    for mod in ("edge_detect.neighbors",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
