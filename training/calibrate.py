"""Thresholds from normal validation scores (and labelled anomalies, when there are some).

Modes:
- ``mu_k_sigma``: mean + k * std of the normal scores (the reference uses k = 3);
- ``quantile``:   the q-quantile of the normal scores;
- ``far``:        a target false-alarm rate r, i.e. the (1 - r)-quantile;
- ``best_f1``:    the threshold of best F1 on normals + labelled anomalies;
- ``synthetic``:  best F1 on normals + synthetic anomalies made from them (no real defects needed;
                  the caller scores :func:`training.synthetic.synthesize` output as ``anomalous``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

MODES = ("mu_k_sigma", "quantile", "far", "best_f1", "synthetic")
NEEDS_ANOMALIES = ("best_f1", "synthetic")


def normal_stats(scores: np.ndarray) -> Dict[str, float]:
    """The normal score distribution the device normalises with (median = 0.0, threshold = 1.0)."""
    s = np.asarray(scores, np.float64)
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
        "median": float(np.median(s)),
        "p95": float(np.quantile(s, 0.95)),
        "p99": float(np.quantile(s, 0.99)),
        "max": float(s.max()),
        "skew": _skew(s),
    }


def _skew(s: np.ndarray) -> float:
    """Sample skewness (0 for a symmetric distribution; reconstruction errors run 3-10)."""
    sd = s.std()
    return float(((s - s.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def accepted(normal: np.ndarray, threshold: float) -> float:
    """Fraction of ``normal`` scores at or below ``threshold`` (a score above it is anomalous)."""
    return float(np.mean(np.asarray(normal, np.float64) <= threshold))


def tail_note(calibration: Dict[str, Any]) -> Optional[str]:
    """One line when mean + k*std rejects many more validation normals than Gaussian scores would.

    Reconstruction errors are right-skewed, so mu+3 sigma, which keeps 99.87 % of Gaussian scores,
    keeps 98-99 % of them (docs/BENCHMARKS.md, MNIST): that is the false-alarm rate to expect.
    """
    if calibration.get("method") != "mu_k_sigma" or "accepted" not in calibration:
        return None
    k = float(calibration.get("params", {}).get("k", 3.0))
    n = int(calibration.get("normal_stats", {}).get("n", 0))
    lost, gaussian = 1.0 - calibration["accepted"], 0.5 * math.erfc(k / math.sqrt(2))
    if round(lost * n) < 3 or lost <= 2 * gaussian:
        return None
    skew = calibration["normal_stats"].get("skew")
    skewed = f"; the scores are skewed (skew {skew:.1f})" if skew else ""
    return (f"note: mean + {k:g} std rejects {lost:.2%} of the validation normals ({round(lost * n)} of {n}), where "
            f"Gaussian scores would lose {gaussian:.2%}{skewed}. Expect false alarms at about that rate, "
            "or choose one: --calibration far --far RATE")


def best_f1(normal: np.ndarray, anomalous: np.ndarray) -> Dict[str, float]:
    """Threshold (between two adjacent sorted scores) that maximises F1 of 'score > threshold'."""
    scores = np.concatenate([normal, anomalous]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    f1 = 2 * tp / (tp + fp + len(anomalous))
    # Only cut where the next score differs, so ties stay on one side.
    valid = np.append(s[1:] < s[:-1], True)
    i = int(np.argmax(np.where(valid, f1, -1)))
    thr = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else s[i] - 1e-12
    return {"threshold": float(thr), "f1": float(f1[i])}


def thresholds(
    normal: np.ndarray, anomalous: Optional[np.ndarray] = None, k: float = 3.0, q: float = 0.99, far: float = 0.01
) -> Dict[str, float]:
    """Every threshold we can compute from these scores, by mode."""
    s = np.asarray(normal, np.float64)
    out = {
        "mu_k_sigma": float(s.mean() + k * (s.std(ddof=1) if s.size > 1 else 0.0)),
        "quantile": float(np.quantile(s, q)),
        "far": float(np.quantile(s, 1.0 - far)),
    }
    if anomalous is not None and len(anomalous):
        out["best_f1"] = best_f1(s, np.asarray(anomalous, np.float64))["threshold"]
    return out


def calibrate(
    normal: np.ndarray,
    method: str = "mu_k_sigma",
    anomalous: Optional[np.ndarray] = None,
    k: float = 3.0,
    q: float = 0.99,
    far: float = 0.01,
) -> Dict[str, Any]:
    """The calibration block of run.json / the bundle manifest."""
    if method not in MODES:
        raise ValueError(f"calibration must be one of {MODES}, got {method!r}")
    if len(normal) < 2:
        raise ValueError(f"need at least 2 normal validation scores to calibrate, got {len(normal)} "
                         "(give more normal images, or a larger --val-fraction)")
    all_t = thresholds(normal, anomalous, k, q, far)
    if method == "synthetic":
        all_t["synthetic"] = all_t.pop("best_f1", None)
    if all_t.get(method) is None:
        raise ValueError(f"{method} calibration needs anomaly scores (none were given)")
    return {
        "method": method,
        "params": {"k": k, "q": q, "far": far},
        "threshold": all_t[method],
        "thresholds": all_t,
        "normal_stats": normal_stats(normal),
        "accepted": accepted(normal, all_t[method]),
    }


def recalibrate(calibration: Dict[str, Any], normal: np.ndarray, anomalous: Optional[np.ndarray] = None) -> Dict:
    """The same method and parameters applied to other scores (e.g. an int8 variant's own)."""
    p = calibration.get("params", {})
    method = calibration["method"]
    if method in NEEDS_ANOMALIES and anomalous is None:
        # A variant re-calibrated without anomalies keeps best-F1's false-alarm rate instead.
        ref = calibration["normal_stats"]
        far = max(1e-4, float(np.mean(np.asarray(normal) > calibration["threshold"]))) if ref else 0.01
        c = calibrate(normal, "far", None, far=far)
        c["method"] = method
        return c
    return calibrate(normal, method, anomalous, p.get("k", 3.0), p.get("q", 0.99), p.get("far", 0.01))
