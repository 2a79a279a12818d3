"""training.calibrate, training.metrics and training.report on cases with known answers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from training import calibrate as cal
from training import metrics as mt

# -- calibration ---------------------------------------------------------------------------------


def test_mu_k_sigma_known_answer():
    c = cal.calibrate(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), "mu_k_sigma", k=3.0)
    assert c["threshold"] == pytest.approx(3.0 + 3.0 * math.sqrt(2.5))  # sample std (ddof=1)
    assert c["method"] == "mu_k_sigma" and c["params"]["k"] == 3.0
    st = c["normal_stats"]
    assert (st["n"], st["mean"], st["median"], st["max"]) == (5, 3.0, 3.0, 5.0)
    assert cal.calibrate(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), k=1.0)["threshold"] == pytest.approx(
        3.0 + math.sqrt(2.5))


def test_quantile_and_far_known_answers():
    s = np.arange(101, dtype=float)  # 0..100: the q-quantile is 100 q
    assert cal.calibrate(s, "quantile", q=0.99)["threshold"] == pytest.approx(99.0)
    assert cal.calibrate(s, "quantile", q=0.9)["threshold"] == pytest.approx(90.0)
    c = cal.calibrate(s, "far", far=0.05)
    assert c["threshold"] == pytest.approx(95.0)
    assert np.mean(s > c["threshold"]) == pytest.approx(0.05, abs=0.01)  # the false-alarm rate asked for


def test_best_f1_known_answer():
    normal, anomalous = np.array([0.0, 1.0, 2.0]), np.array([5.0, 6.0])
    c = cal.calibrate(normal, "best_f1", anomalous)
    assert c["threshold"] == pytest.approx(3.5)  # midway between the top normal and the lowest anomaly
    assert cal.best_f1(normal, anomalous)["f1"] == pytest.approx(1.0)
    # Overlap: normals 0..3 and one at 10; anomalies 4, 5, 6. Best is to cut at 3.5 (F1 = 6/7).
    r = cal.best_f1(np.array([0.0, 1.0, 2.0, 3.0, 10.0]), np.array([4.0, 5.0, 6.0]))
    assert r["threshold"] == pytest.approx(3.5) and r["f1"] == pytest.approx(6 / 7)
    # Ties are never split: two equal scores, one of each class, stay on one side.
    r = cal.best_f1(np.array([0.0, 2.0]), np.array([2.0, 3.0]))
    s = np.array([0.0, 2.0, 2.0, 3.0])
    assert not (s == r["threshold"]).any()


def test_best_f1_without_anomalies_and_bad_inputs():
    with pytest.raises(ValueError, match="needs anomaly scores"):
        cal.calibrate(np.arange(10.0), "best_f1")
    with pytest.raises(ValueError, match="calibration must be one of"):
        cal.calibrate(np.arange(10.0), "median")
    with pytest.raises(ValueError, match="at least 2"):
        cal.calibrate(np.array([1.0]))


def test_recalibrate_applies_the_same_method():
    c = cal.calibrate(np.arange(101.0), "quantile", q=0.9)
    again = cal.recalibrate(c, np.arange(101.0) * 2)
    assert again["method"] == "quantile" and again["threshold"] == pytest.approx(180.0)
    f1 = cal.calibrate(np.arange(10.0), "best_f1", np.array([20.0, 30.0]))
    # Without anomalies, best_f1 keeps its false-alarm rate (here none above 14.5 -> minimal rate).
    re = cal.recalibrate(f1, np.arange(10.0))
    assert re["method"] == "best_f1" and re["threshold"] >= 8.99


# -- metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_aupr_match_scikit_learn(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + y * 0.8
    s[:50] = np.round(s[:50], 1)  # some ties
    assert mt.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert mt.aupr(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_rates_and_tpr_at_tnr_known_cases():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    r = mt.rates(s, y, 0.45)
    assert r["tnr"] == pytest.approx(4 / 5) and r["tpr"] == pytest.approx(5 / 5)
    r = mt.rates(s, y, 0.65)  # strictly greater flags: 0.7..1.0
    assert r["tnr"] == pytest.approx(1.0) and r["tpr"] == pytest.approx(4 / 5)
    assert mt.rates(s, y, 0.5)["tpr"] == pytest.approx(4 / 5)  # 0.5 is not > 0.5
    assert mt.tpr_at_tnr(s, y, 1.0) == pytest.approx(4 / 5)
    assert mt.tpr_at_tnr(s, y, 0.8) == pytest.approx(1.0)
    assert mt.auroc(s, y) == pytest.approx(24 / 25)
    assert mt.auroc(s, np.zeros(10)) is None and mt.tpr_at_tnr(s, np.ones(10)) is None
    assert mt.auroc(np.r_[np.zeros(5), np.ones(5)], np.r_[np.zeros(5), np.ones(5)]) == 1.0


def test_per_kind_metrics():
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25, 0.15])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    kinds = ["good", "good", "good", "crack", "crack", "hole", "hole"]
    m = mt.evaluate(s, y, 0.5, kinds)
    assert m["n_normal"] == 3 and m["n_anomalous"] == 4
    pk = m["per_kind"]
    assert set(pk) == {"crack", "hole"}
    assert pk["crack"]["n"] == 2 and pk["crack"]["auroc"] == 1.0 and pk["crack"]["tpr"] == 1.0
    # hole: 0.25 beats normals 0.1, 0.2 (2 of 3), 0.15 beats 0.1 (1 of 3): AUROC 3/6.
    assert pk["hole"]["auroc"] == pytest.approx(0.5) and pk["hole"]["tpr"] == 0.0
    assert m["tpr"] == pytest.approx(0.5) and m["tnr"] == 1.0


# -- report --------------------------------------------------------------------------------------


def test_report_folder(tmp_path):
    from training.report import MIN_TILE_PX, write_report

    rng = np.random.default_rng(0)
    n = 24
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    scores = rng.random(n) + y
    x = rng.random((n, 16, 16, 1)).astype(np.float32)
    maps = rng.random((n, 16, 16)).astype(np.float32)
    masks = np.zeros((n, 16, 16), bool)
    masks[12:, 4:8, 4:8] = True
    splits = SimpleNamespace(y_test=y, x_test=x, test_kinds=["good"] * 12 + ["dent"] * 12, masks_test=masks)
    metrics = mt.evaluate(scores, y, 1.0, splits.test_kinds)
    out = write_report(tmp_path / "report", metrics, rng.random(10), scores, splits, 1.0, maps)
    m = json.loads((out / "metrics.json").read_text())
    assert m["auroc"] == pytest.approx(metrics["auroc"]) and "per_kind" in m
    for name in ("histogram.png", "roc.png", "worst_normals.png", "hidden_anomalies.png"):
        with Image.open(out / name) as im:
            im.load()  # decodes: a real PNG, not an empty or truncated file
            assert im.format == "PNG" and im.size[0] > 50
    # Without pixel maps (metric embedders) the grids still come, as the images alone: one panel a tile.
    bare = write_report(tmp_path / "bare", metrics, rng.random(10), scores, splits, 1.0)
    t = 16 * -(-MIN_TILE_PX // 16)  # 16 px tiles, enlarged to at least MIN_TILE_PX
    for name in ("worst_normals.png", "hidden_anomalies.png"):
        with Image.open(out / name) as full, Image.open(bare / name) as im:
            assert im.size == (full.size[0], t + 12 + 6) and full.size[1] == 2 * t + 12 + 6
