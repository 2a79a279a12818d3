"""Calibration modes and the detection metrics, on cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edge_detect.scoring import normalise
from training import calibrate as cal
from training import metrics as M


def test_mu_k_sigma_matches_hand_computation():
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    c = cal.calibrate(s, "mu_k_sigma", k=3.0)
    assert c["threshold"] == pytest.approx(3.0 + 3.0 * np.sqrt(2.5))  # sample std of 1..5 is sqrt(2.5)
    assert c["method"] == "mu_k_sigma"
    assert cal.calibrate(s, "mu_k_sigma", k=1.0)["threshold"] == pytest.approx(3.0 + np.sqrt(2.5))


def test_quantile_and_false_alarm_rate():
    s = np.arange(101, dtype=float)  # quantile q of 0..100 is 100 q exactly
    assert cal.calibrate(s, "quantile", q=0.9)["threshold"] == pytest.approx(90.0)
    c = cal.calibrate(s, "far", far=0.05)
    assert c["threshold"] == pytest.approx(95.0)
    assert np.mean(s > c["threshold"]) == pytest.approx(0.05, abs=0.01)


def test_best_f1_separates_and_needs_anomalies():
    normal = np.array([0.1, 0.2, 0.3, 0.35])
    anomalous = np.array([0.8, 0.9, 0.33])
    r = cal.best_f1(normal, anomalous)
    # Cutting at 0.575 catches 2 of 3 with no false alarm (F1 0.8); at 0.325 catches 3 with 1 false alarm (0.857).
    assert r["threshold"] == pytest.approx((0.3 + 0.33) / 2)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    c = cal.calibrate(normal, "best_f1", anomalous)
    assert c["threshold"] == pytest.approx(r["threshold"])
    assert set(c["thresholds"]) == {"mu_k_sigma", "quantile", "far", "best_f1"}
    with pytest.raises(ValueError, match="labelled anomalies"):
        cal.calibrate(normal, "best_f1")


def test_calibrate_rejects_bad_input():
    with pytest.raises(ValueError, match="calibration must be one of"):
        cal.calibrate(np.arange(5.0), "median")
    with pytest.raises(ValueError, match="at least 2"):
        cal.calibrate(np.array([1.0]), "quantile")


def test_normal_stats_drive_the_device_normalisation():
    s = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    c = cal.calibrate(s, "quantile", q=0.75)
    st = c["normal_stats"]
    assert st == {"n": 5, "mean": pytest.approx(4.0), "std": pytest.approx(np.std(s, ddof=1)), "median": 3.0,
                  "p95": pytest.approx(np.quantile(s, 0.95)), "p99": pytest.approx(np.quantile(s, 0.99)),
                  "max": 10.0}
    # On the device, the median normal maps to 0 and the threshold to 1.
    assert normalise(st["median"], c["threshold"], st["median"]) == pytest.approx(0.0)
    assert normalise(c["threshold"], c["threshold"], st["median"]) == pytest.approx(1.0)


def test_recalibrate_keeps_method_and_parameters():
    c = cal.calibrate(np.arange(101.0), "quantile", q=0.9)
    r = cal.recalibrate(c, np.arange(101.0) * 2)
    assert r["method"] == "quantile" and r["threshold"] == pytest.approx(180.0)


# -- metrics --------------------------------------------------------------------------------------


def test_auroc_aupr_on_known_cases():
    y = np.array([0, 0, 0, 1, 1])
    assert M.auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == pytest.approx(1.0)
    assert M.aupr(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == pytest.approx(1.0)
    assert M.auroc(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), y) == pytest.approx(0.0)
    assert M.auroc(np.full(5, 0.5), y) == pytest.approx(0.5)  # all tied: chance
    # One anomaly below one normal: 5 of the 6 (normal, anomaly) pairs are ordered right.
    assert M.auroc(np.array([0.1, 0.2, 0.5, 0.4, 0.9]), y) == pytest.approx(5 / 6)
    assert M.auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None


def test_metrics_agree_with_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.aupr(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_rates_and_tpr_at_fixed_tnr():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = M.rates(s, y, 0.32)
    assert r == {"tnr": 0.75, "tpr": 1.0}  # 0.4 is a false alarm; everything anomalous is above 0.32
    assert M.tpr_at_tnr(s, y, 1.0) == pytest.approx(0.75)  # no false alarm allowed: 0.35 is lost
    assert M.tpr_at_tnr(s, y, 0.75) == pytest.approx(1.0)


def test_evaluate_per_defect_kind():
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    y = np.array([0, 0, 0, 1, 1, 1])
    kinds = ["good", "good", "good", "crack", "crack", "hole"]
    m = M.evaluate(s, y, 0.5, kinds)
    assert m["n_normal"] == 3 and m["n_anomalous"] == 3
    assert m["tnr"] == 1.0 and m["tpr"] == pytest.approx(2 / 3)
    assert m["per_kind"]["crack"] == {"n": 2, "auroc": 1.0, "tpr": 1.0, "tpr_at_tnr_0.95": 1.0}
    assert m["per_kind"]["hole"]["auroc"] == pytest.approx(2 / 3)
    assert m["per_kind"]["hole"]["tpr"] == 0.0


def test_pixel_auroc_known_map():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    maps = masks.astype(float) * 0.9 + 0.05
    assert M.pixel_auroc(maps, masks) == pytest.approx(1.0)
    assert M.pixel_auroc(1.0 - maps, masks) == pytest.approx(0.0)
    assert M.pixel_auroc(maps, np.zeros_like(masks)) is None
