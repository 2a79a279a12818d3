"""A tiny metric-learning model: trains on generated shapes, exports to int8, scores with ``edge-detect score``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("tensorflow")

SIZE = 16  # px


def shape_image(rng: np.random.Generator, kind: int) -> np.ndarray:
    """Class 0: filled square, 1: ring, 2: horizontal bar; jittered position, size and noise. uint8."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(6, 10, 2)
    r = rng.integers(3, 5)
    if kind == 0:
        m = (np.abs(yy - cy) <= r - 1) & (np.abs(xx - cx) <= r - 1)
    elif kind == 1:
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        m = (d <= r + 0.5) & (d >= r - 1.0)
    else:
        m = (np.abs(yy - cy) <= 1) & (np.abs(xx - cx) <= r + 2)
    img = np.where(m, 220.0, 30.0) + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(img, 0, 255).astype(np.uint8)


def odd_image(rng: np.random.Generator) -> np.ndarray:
    """Something no class looks like: a checkerboard of random phase and cell size."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    c = rng.integers(2, 4)
    board = ((yy // c + xx // c + rng.integers(2)) % 2) * 190.0 + 30 + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(board, 0, 255).astype(np.uint8)


def _x(imgs) -> np.ndarray:
    return np.stack(imgs)[..., None].astype(np.float32) / np.float32(255.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edge_detect.preprocess import Preprocess
    from training import export as E
    from training import metric

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    x = _x([shape_image(rng, k) for k in y])
    yv = np.repeat([0, 1, 2], 10)
    xv = _x([shape_image(rng, k) for k in yv])
    run = tmp_path_factory.mktemp("run")
    cfg = metric.MetricConfig(embed_dim=8, alpha=8.0, width=4, epochs=15, batch_size=32, learning_rate=3e-3,
                              n_neighbors=10, contamination=0.05, class_names=["square", "ring", "bar"])
    fit = metric.fit_metric(run, cfg, x, y, xv, yv, verbose=0)
    model, cfg2, shape = metric.load_run(run)
    assert cfg2.class_names == ["square", "ring", "bar"] and shape == (SIZE, SIZE, 1)
    parts = metric.export_parts(run, model, cfg2, shape)
    pp = Preprocess(size=(SIZE, SIZE), color="gray")
    spec = E.ExportSpec(model=parts["model"], preprocess=pp, scoring=parts["scoring"],
                        calibration=fit["calibration"], calibrate=parts["calibrate"], family=parts["family"],
                        name="tiny-metric", model_params=parts["model_params"], rebuild=parts["rebuild"],
                        arrays=parts["arrays"])
    out = tmp_path_factory.mktemp("b") / "bundle"
    E.export_bundle(spec, E.DataSplits(x_train=x, x_val=xv), out, quant="int8", allow_degraded=True,
                    echo=lambda s: None)
    return {"run": run, "bundle": out, "fit": fit, "cfg": cfg2}


def test_training_separates_classes_and_calibrates(trained):
    fit = trained["fit"]
    assert fit["history"]["accuracy"][-1] > 0.9
    assert fit["calibration"]["threshold"] > 0
    # Contamination 0.05 on the references: the held-out normals mostly pass the threshold.
    assert (fit["val_scores"] <= fit["calibration"]["threshold"]).mean() >= 0.8


def test_bundle_carries_reference_and_int8_embedder(trained):
    from edge_detect.bundle import load_bundle
    from edge_detect.runtime import model_ops

    b = load_bundle(trained["bundle"])
    assert b.manifest["scoring"]["kind"] == "lof" and b.manifest["family"] == "metric"
    assert {"reference", "reference_kdist", "reference_lrd", "reference_labels"} <= set(b.arrays)
    assert b.arrays["reference"].shape == (180, 8)
    ops = {o["op"] for o in model_ops(b.model_path("int8"))}
    assert "CONV_2D" in ops and "L2_NORMALIZATION" not in ops  # host-side normalisation by default
    spec = b.variants["int8"]["output"]
    assert spec["shape"] == [1, 8]


def test_edge_detect_score_flags_odd_images_and_classifies(trained, tmp_path):
    from edge_detect.cli import main
    from edge_detect.detector import Detector

    rng = np.random.default_rng(5)
    paths, kinds = [], []
    for i, k in enumerate([0, 1, 2, 0, 1, 2]):
        p = tmp_path / f"ok{i}.png"
        Image.fromarray(shape_image(rng, k), "L").save(p)
        paths.append(str(p))
        kinds.append(k)
    for i in range(4):
        p = tmp_path / f"odd{i}.png"
        Image.fromarray(odd_image(rng), "L").save(p)
        paths.append(str(p))
    res = CliRunner().invoke(main, ["score", str(trained["bundle"]), *paths, "--json", "--variant", "int8"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(s) for s in res.output.splitlines() if s.startswith("{")]
    scores = np.array([r["score"] for r in lines])
    assert scores[6:].min() > np.median(scores[:6])  # odd images score as outliers
    assert all(r["anomalous"] for r in lines[6:])
    accepted = [(r, k) for r, k in zip(lines[:6], kinds) if not r["anomalous"]]
    assert len(accepted) >= 4
    # Classification with rejection: accepted images carry the class the reference labels vote for.
    det = Detector(trained["bundle"], variant="int8")
    xs = det.preprocess.batch(paths)
    pred = det.scorer.classify(det.model.run_batch(xs))
    names = ["square", "ring", "bar"]
    assert [r["class_name"] for r, _ in accepted] == [names[pred[i]] for i, r in enumerate(lines[:6])
                                                       if not r["anomalous"]]
    assert all("class" not in r for r in lines[6:])  # rejected inputs get no class
    fresh = np.repeat([0, 1, 2], 10)
    xf = _x([shape_image(rng, k) for k in fresh])
    assert (det.scorer.classify(det.model.run_batch(xf)) == fresh).mean() >= 0.8
    # The CLI and the Detector API give the same numbers (same code path).
    direct = [det.score(Path(p)).score for p in paths]
    np.testing.assert_allclose(scores, direct, rtol=0, atol=1e-9)


def test_outlier_exposure_needs_aux_and_trains_two_classes():
    from training import metric

    rng = np.random.default_rng(1)
    x = _x([shape_image(rng, 1) for _ in range(20)])
    with pytest.raises(ValueError, match="--aux"):
        metric.training_labels(x, None, None)
    aux = _x([odd_image(rng) for _ in range(10)])
    xx, y, n, multi = metric.training_labels(x, None, aux)
    assert (n, multi, len(xx)) == (2, False, 30) and y.sum() == 10


def test_config_rejects_bad_values():
    from training import metric

    with pytest.raises(ValueError, match="backbone"):
        metric.MetricConfig(backbone="resnet")
    with pytest.raises(ValueError, match="contamination"):
        metric.MetricConfig(contamination=0.9)


def test_mobilenet_backbone_builds_and_rebuilds_at_batch_1():
    from training.metric_models import build_model, embedder_of

    m = build_model((32, 32, 1), 2, backbone="mobilenetv2-0.35", embed_dim=8)
    e = build_model((32, 32, 1), 2, backbone="mobilenetv2-0.35", embed_dim=8, batch_size=1, embedder_only=True)
    e.set_weights(embedder_of(m).get_weights())
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(e(x)), np.asarray(embedder_of(m)(x)), atol=1e-5)
    with pytest.raises(ValueError, match="32x32"):
        build_model((16, 16, 1), 2, backbone="mobilenetv2-0.5")
