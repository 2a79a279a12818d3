"""More known-answer cases beside tests/test_training_calibrate_metrics.py: best-F1 with an
overlap, normal_stats feeding the device normalisation, AUROC by pair counting, per-defect, pixel AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from edge_detect.scoring import normalise
from training import calibrate as cal
from training import metrics as M


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
    with pytest.raises(ValueError, match="needs anomaly scores"):
        cal.calibrate(normal, "best_f1")
    with pytest.raises(ValueError, match=r"got 1 \(give more normal images, or a larger --val-fraction\)$"):
        cal.calibrate(normal[:1], "mu_k_sigma")
    # synthetic: the same rule on synthetic anomalies' scores, under its own name
    c = cal.calibrate(normal, "synthetic", anomalous)
    assert c["threshold"] == pytest.approx(r["threshold"]) and "best_f1" not in c["thresholds"]
    # an int8 variant re-calibrated without anomalies keeps the method and the false-alarm rate
    v = cal.recalibrate(c, normal * 1.01)
    assert v["method"] == "synthetic" and v["threshold"] == pytest.approx(np.quantile(normal * 1.01, 1.0 - 0.25))


def test_normal_stats_drive_the_device_normalisation():
    s = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    c = cal.calibrate(s, "quantile", q=0.75)
    st = c["normal_stats"]
    assert st == {"n": 5, "mean": pytest.approx(4.0), "std": pytest.approx(np.std(s, ddof=1)), "median": 3.0,
                  "p95": pytest.approx(np.quantile(s, 0.95)), "p99": pytest.approx(np.quantile(s, 0.99)),
                  "max": 10.0, "skew": pytest.approx(1.13, abs=0.01)}
    assert c["accepted"] == 0.8  # 10.0 lies above the 0.75 quantile, 5.5
    # On the device, the median normal maps to 0 and the threshold to 1.
    assert normalise(st["median"], c["threshold"], st["median"]) == pytest.approx(0.0)
    assert normalise(c["threshold"], c["threshold"], st["median"]) == pytest.approx(1.0)


def test_auroc_aupr_on_known_cases():
    y = np.array([0, 0, 0, 1, 1])
    assert M.auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == pytest.approx(1.0)
    assert M.aupr(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == pytest.approx(1.0)
    assert M.auroc(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), y) == pytest.approx(0.0)
    assert M.auroc(np.full(5, 0.5), y) == pytest.approx(0.5)  # all tied: chance
    # One anomaly below one normal: 5 of the 6 (normal, anomaly) pairs are ordered right.
    assert M.auroc(np.array([0.1, 0.2, 0.5, 0.4, 0.9]), y) == pytest.approx(5 / 6)
    assert M.auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None


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


def test_tail_note_when_mu_3_sigma_rejects_more_than_gaussian_scores_would():
    rng = np.random.default_rng(0)
    gaussian = cal.calibrate(rng.normal(10.0, 1.0, 2000), "mu_k_sigma")
    assert gaussian["accepted"] > 0.995 and cal.tail_note(gaussian) is None
    # Log-normal with sigma 1: mu+3 sigma keeps ~98.3 %, as reconstruction errors do (docs/BENCHMARKS.md, MNIST).
    skewed = cal.calibrate(rng.lognormal(0.0, 1.0, 2000), "mu_k_sigma")
    lost = round((1 - skewed["accepted"]) * 2000)
    assert 0.97 < skewed["accepted"] < 0.99 and skewed["normal_stats"]["skew"] > 3
    note = cal.tail_note(skewed)
    assert note.startswith("note: mean + 3 std rejects ") and f"({lost} of 2000)" in note
    assert "Gaussian scores would lose 0.13%" in note and note.endswith("--calibration far --far RATE")
    # Other rules set their rate themselves; two stray normals are not a tail.
    assert cal.tail_note(cal.calibrate(rng.lognormal(0.0, 1.0, 2000), "quantile", q=0.99)) is None
    assert cal.tail_note(cal.calibrate(np.array([1.0] * 98 + [50.0, 60.0]), "mu_k_sigma")) is None
