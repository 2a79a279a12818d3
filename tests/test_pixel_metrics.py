"""Pixel AUROC and PRO on cases whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from training.pixel_metrics import pixel_auroc, pixel_metrics, pro_curve, pro_score


def _two_regions() -> np.ndarray:
    m = np.zeros((2, 16, 16), bool)
    m[0, 2:6, 2:6] = True  # 16 px
    m[1, 8:10, 8:14] = True  # 12 px
    return m


def test_perfect_and_inverted_maps() -> None:
    masks = _two_regions()
    perfect = masks.astype(float)
    assert pixel_auroc(perfect, masks) == 1.0
    assert pro_score(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(1 - perfect, masks) == 0.0
    assert pro_score(1 - perfect, masks) == pytest.approx(0.0)


def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    masks = rng.random((3, 12, 12)) < 0.2
    maps = np.round(rng.random((3, 12, 12)) + masks * 0.3, 1)  # coarse values: many ties
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_random_map_pro_is_half_max_fpr() -> None:
    # A map independent of the masks: each region's overlap tracks the FPR, so PRO(fpr) = fpr and the
    # normalised integral up to 0.3 is 0.3 / 2.
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 64, 64), bool)
    masks[:, 10:40, 10:40] = True
    maps = rng.random(masks.shape)
    assert pro_score(maps, masks) == pytest.approx(0.15, abs=0.01)
    assert pixel_auroc(maps, masks) == pytest.approx(0.5, abs=0.02)


def test_pro_weights_regions_equally_not_pixels() -> None:
    # A big region found perfectly, a small one missed (scored like background): PRO is 0.5 at
    # every FPR below the background's, although 90 % of the anomalous pixels are found.
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 0:9, 0:10] = True  # 90 px
    masks[0, 15:16, 10:20] = True  # 10 px
    maps = np.zeros((1, 20, 20))
    maps[0, 0:9, 0:10] = 1.0
    c = pro_curve(maps, masks)
    assert c["pro"][1] == pytest.approx(0.5) and c["fpr"][1] == 0.0
    # The rest (small region + background) is one tie group reached at FPR 1, so the segment from
    # (0, 0.5) to (1, 1.0) is linear: mean PRO over [0, 0.3] is 0.5 + 0.5 * 0.15.
    assert pro_score(maps, masks) == pytest.approx(0.575)
    assert pixel_auroc(maps, masks) == pytest.approx(0.95)


def test_pro_handles_partial_region_and_cut_at_max_fpr() -> None:
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :, :5] = True  # one region of 50 px; 50 normal px
    maps = np.zeros((1, 10, 10))
    maps[0, :5, :5] = 2.0  # half the region found first
    maps[0, 5:, 5:] = 1.0  # then 25 normal px (FPR 0.5) together with nothing else
    # Curve: (0,0) -> (0,0.5) -> (0.5,0.5) -> (1,1). Mean over [0,0.3] = 0.5.
    assert pro_score(maps, masks) == pytest.approx(0.5)
    assert pro_score(maps, masks, max_fpr=1.0) == pytest.approx((0.5 * 0.5 + 0.5 * 0.75) / 1.0)


def test_errors_and_degenerate_cases() -> None:
    with pytest.raises(ValueError, match="must both be"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
    assert pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool)) is None
    with pytest.raises(ValueError, match="at least one anomalous region"):
        pro_score(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    assert pixel_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))["pro"] is None


def test_evaluation_report_carries_pixel_auroc_and_pro_where_masks_exist(tmp_path) -> None:
    """What fit and evaluate (Keras and bundle paths) write: metrics["pixel"] and report/metrics.json
    hold pixel AUROC and PRO when the test split has masks, and no pixel block without them."""
    import json

    from training.data import Splits
    from training.report import write_report
    from training.train import evaluate_scores

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 16, 16), bool)
    masks[3:, 4:9, 5:11] = True  # three anomalous images, one region each
    maps = rng.random((6, 16, 16)) * 0.2 + masks * 0.5
    x = rng.random((6, 16, 16, 1)).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 1])
    scores = maps.max(axis=(1, 2))
    splits = Splits(x_train=x[:3], x_val=x[:3], x_test=x, y_test=y, test_kinds=["good"] * 3 + ["defect"] * 3,
                    summary={}, masks_test=masks)
    m = evaluate_scores(splits, scores, maps, threshold=0.5)
    assert m["pixel"]["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks))
    assert m["pixel"]["pro"] == pytest.approx(pro_score(maps, masks)) and m["pixel"]["pro"] > 0.9
    write_report(tmp_path / "report", m, scores[:3], scores, splits, 0.5, maps)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(saved["pixel"]) >= {"pixel_auroc", "pro", "pro_max_fpr"}
    splits.masks_test = None
    assert "pixel" not in evaluate_scores(splits, scores, maps, threshold=0.5)


def test_pixel_metrics_leave_out_anomalies_whose_masks_are_unknown():
    from training.data import Splits
    from training.train import evaluate_scores

    rng = np.random.default_rng(2)
    masks = np.zeros((6, 16, 16), bool)
    masks[3:5, 4:9, 5:11] = True  # image 5 is a defect without a mask: all-False, but not "normal"
    maps = rng.random((6, 16, 16)) * 0.2 + masks * 0.5
    maps[5] += 0.6  # its heat would count as false positives if its pixels were taken as normal
    x = rng.random((6, 16, 16, 1)).astype(np.float32)
    known = np.array([True] * 5 + [False])
    splits = Splits(x_train=x[:3], x_val=x[:3], x_test=x, y_test=np.array([0, 0, 0, 1, 1, 1]),
                    test_kinds=["good"] * 3 + ["defect"] * 3, summary={}, masks_test=masks, masks_known=known)
    m = evaluate_scores(splits, maps.max(axis=(1, 2)), maps, threshold=0.5)
    assert m["pixel"]["images"] == 5
    assert m["pixel"]["pixel_auroc"] == pytest.approx(pixel_auroc(maps[:5], masks[:5]))
    assert m["pixel"]["pixel_auroc"] > pixel_auroc(maps, masks) + 0.05


def test_pixel_metrics_are_taken_on_the_device_heatmap_map():
    from edge_detect.heatmap import pixel_map
    from training.data import Splits
    from training.train import evaluate_scores, heatmap_maps

    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), bool)
    masks[2:, 10:20, 8:18] = True
    # Speckled squared errors: single hot normal pixels, a weak but solid defect. The device
    # box-smooths mse maps before cutting regions, so that is what pixel AUROC must judge.
    maps = (rng.random((4, 32, 32)) ** 8) + masks * 0.15
    x = rng.random((4, 32, 32, 1)).astype(np.float32)
    splits = Splits(x_train=x[:2], x_val=x[:2], x_test=x, y_test=np.array([0, 0, 1, 1]),
                    test_kinds=["good"] * 2 + ["defect"] * 2, summary={}, masks_test=masks)
    scoring = {"kind": "reconstruction", "method": "mse", "smooth": 5}
    m = evaluate_scores(splits, maps.max(axis=(1, 2)), heatmap_maps(maps, scoring), 0.5)
    assert m["pixel"]["pixel_auroc"] == pytest.approx(pixel_auroc(pixel_map(maps, "mse", 5), masks))
    assert m["pixel"]["pixel_auroc"] > pixel_auroc(maps, masks) + 0.02  # smoothing is what makes it solid
