"""Pixel-level evaluation where ground-truth masks exist: pixel AUROC and PRO (numpy only).

PRO (per-region overlap, Bergmann et al., MVTec AD): for a threshold t, each ground-truth
connected component r scores |{map > t} ∩ r| / |r|; PRO(t) is their mean over all components of
all images. Plotted against the false-positive rate of the normal pixels (every pixel outside
all masks), integrated from FPR 0 to ``max_fpr`` (0.3 by convention) and divided by ``max_fpr``,
so 1.0 is perfect and a random map gives max_fpr / 2 (0.15).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from edge_detect.heatmap import PIXEL_QUANTILE, calibrate_pixel_threshold, label, pixel_map

from .metrics import auroc

MAX_FPR = 0.3


def _check(maps: np.ndarray, masks: np.ndarray) -> tuple:
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    return maps, masks


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> Optional[float]:
    """Area under the ROC of every pixel's map value against its mask label; None without both classes.

    Ties count half, as in ``training.metrics.auroc``.
    """
    maps, masks = _check(maps, masks)
    return auroc(maps.ravel(), masks.ravel())


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> Dict[str, np.ndarray]:
    """The PRO curve over every distinct map value: ``{"fpr", "pro", "threshold"}``, FPR ascending.

    Thresholds are "map >= t", one point per distinct value; the curve starts at (0, 0).
    """
    maps, masks = _check(maps, masks)
    regions = np.zeros(maps.shape, dtype=np.int64)
    n_regions = 0
    for i in range(len(masks)):
        lab, k = label(masks[i], connectivity=8)
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += k
    if n_regions == 0:
        raise ValueError("PRO needs at least one anomalous region in the masks")
    s = maps.ravel()
    reg = regions.ravel()
    normal = reg == 0
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise ValueError("PRO needs normal pixels to measure the false-positive rate on")
    sizes = np.bincount(reg, minlength=n_regions + 1).astype(np.float64)
    # Each region pixel carries 1 / (|region| * R): their running sum is the mean per-region overlap.
    weight = np.where(normal, 0.0, 1.0 / (sizes[reg] * n_regions))
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    fpr = np.cumsum(normal[order]) / n_normal
    pro = np.cumsum(weight[order])
    last = np.r_[ss[1:] != ss[:-1], True]  # a threshold includes its whole tie group
    return {"fpr": np.r_[0.0, fpr[last]], "pro": np.r_[0.0, pro[last]], "threshold": np.r_[np.inf, ss[last]]}


def pro_score(maps: np.ndarray, masks: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Normalised area under the PRO curve from FPR 0 to ``max_fpr`` (1.0 perfect, ~max_fpr/2 random)."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    c = pro_curve(maps, masks)
    fpr, pro = c["fpr"], c["pro"]
    # Cut the curve at max_fpr, interpolating the point on the segment that crosses it.
    k = int(np.searchsorted(fpr, max_fpr, side="right"))
    xs, ys = fpr[:k], pro[:k]
    if k < len(fpr):
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, max_fpr], np.r_[ys, y_cut]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / max_fpr)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, max_fpr: float = MAX_FPR) -> Dict[str, Optional[float]]:
    """``{"pixel_auroc", "pro"}``; PRO is None when the masks hold no region."""
    maps, masks = _check(maps, masks)
    out: Dict[str, Optional[float]] = {"pixel_auroc": pixel_auroc(maps, masks), "pro": None,
                                       "pro_max_fpr": max_fpr}
    if masks.any() and not masks.all():
        out["pro"] = pro_score(maps, masks, max_fpr)
    return out


def pixel_calibration(bundle: Any, variant: str, x_val: np.ndarray, quantile: float = PIXEL_QUANTILE
                      ) -> Dict[str, float]:
    """``{"pixel_threshold", "pixel_quantile"}`` for one bundle variant from normal validation inputs.

    Scores through the device's Detector and :func:`edge_detect.heatmap.pixel_map`, so the threshold
    is in exactly the units the device thresholds. Empty for scorers without error maps.
    """
    from edge_detect.detector import Detector

    if len(x_val) == 0:
        return {}
    det = Detector(bundle, variant=variant, num_threads=1)
    if not getattr(det.scorer, "wants_maps", False):
        return {}
    scoring = det.bundle.manifest.get("scoring", {})
    _, maps, _ = det.infer(np.asarray(x_val, np.float32))
    if maps is None:
        return {}
    pm = pixel_map(maps, str(scoring.get("method", "mse")), int(scoring.get("smooth", 5)))
    return calibrate_pixel_threshold(pm, quantile)
