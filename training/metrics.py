"""Detection metrics on numpy arrays: labels 1 = anomalous, higher score = more anomalous.

Plain numpy, so the export/parity code applies the same functions to TFLite scores. The flagging
rule everywhere is ``score > threshold`` (as on the device).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray):
    """(fpr, tpr, thresholds) with ties handled as one step, like scikit-learn."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def auroc(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Area under the ROC curve; None when only one class is present."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(scores, y)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def aupr(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Average precision (step-wise area under precision-recall), as scikit-learn computes it."""
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return None
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Dict[str, Optional[float]]:
    """TNR (normals accepted) and TPR (anomalies caught) of 'score > threshold'."""
    s = np.asarray(scores)
    y = np.asarray(labels).astype(bool)
    flagged = s > threshold
    return {
        "tnr": float((~flagged[~y]).mean()) if (~y).any() else None,
        "tpr": float(flagged[y].mean()) if y.any() else None,
    }


def tpr_at_tnr(scores: np.ndarray, labels: np.ndarray, tnr: float = 0.95) -> Optional[float]:
    """Best TPR among thresholds that keep at least ``tnr`` of the normals."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(scores, y)
    ok = fpr <= 1.0 - tnr + 1e-12
    return float(tpr[ok].max())


def per_defect(
    scores: np.ndarray, labels: np.ndarray, kinds: Sequence[str], threshold: float, tnr: float = 0.95
) -> Dict[str, Dict[str, Any]]:
    """Per anomaly kind (e.g. MVTec defect type): that kind's anomalies against all normals."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(int)
    k = np.asarray(kinds)
    normal = y == 0
    out: Dict[str, Dict[str, Any]] = {}
    for kind in sorted(set(k[y == 1].tolist())):
        sel = normal | ((k == kind) & (y == 1))
        out[kind] = {
            "n": int(((k == kind) & (y == 1)).sum()),
            "auroc": auroc(s[sel], y[sel]),
            "tpr": rates(s[sel], y[sel], threshold)["tpr"],
            f"tpr_at_tnr_{tnr:g}": tpr_at_tnr(s[sel], y[sel], tnr),
        }
    return out


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> Optional[float]:
    """Pixel-level AUROC of (N, H, W) error maps against (N, H, W) bool masks; None without both classes."""
    from .pixel_metrics import pixel_auroc as _pixel_auroc

    return _pixel_auroc(maps, masks)


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    kinds: Optional[Sequence[str]] = None,
    fixed_tnr: Sequence[float] = (0.95, 0.99),
) -> Dict[str, Any]:
    """All image-level metrics, overall and per defect kind (each kind against all normals)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(int)
    out: Dict[str, Any] = {
        "n_normal": int((y == 0).sum()),
        "n_anomalous": int((y == 1).sum()),
        "auroc": auroc(s, y),
        "aupr": aupr(s, y),
        "threshold": float(threshold),
        **rates(s, y, threshold),
    }
    for t in fixed_tnr:
        out[f"tpr_at_tnr_{t:g}"] = tpr_at_tnr(s, y, t)
    if kinds is not None:
        out["per_kind"] = per_defect(s, y, kinds, threshold, fixed_tnr[0])
    return out
