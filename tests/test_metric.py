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
    """Something no class looks like: inverted polarity, a dark shape on a bright field."""
    return (255 - shape_image(rng, int(rng.integers(3)))).astype(np.uint8)


def _x(imgs) -> np.ndarray:
    return np.stack(imgs)[..., None].astype(np.float32) / np.float32(255.0)


NAMES = ["square", "ring", "bar"]  # generator kinds 0, 1, 2


def _write_dataset(root: Path, rng: np.random.Generator) -> None:
    """Class-folder layout: train/<class>/ (normals), test/<class>/ and test/odd/ (anomalous)."""
    for split, n in (("train", 66), ("test", 8)):
        for k, name in enumerate(NAMES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(shape_image(rng, k), "L").save(root / split / name / f"{i}.png")
    (root / "test" / "odd").mkdir()
    for i in range(8):
        Image.fromarray(odd_image(rng), "L").save(root / "test" / "odd" / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The real path: ``edge-train fit --model metric`` -> ``edge-train export`` -> bundle."""
    from training.cli import main as train_main
    from training.export_cli import export_command

    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("data")
    _write_dataset(data, rng)
    run = tmp_path_factory.mktemp("run")
    res = CliRunner().invoke(train_main, [
        "fit", str(data), "--model", "metric", "--out", str(run), "--input-size", str(SIZE), "--epochs", "20",
        "--batch-size", "32", "--learning-rate", "0.003", "--alpha", "8", "--embed-dim", "8",
        "--contamination", "0.05", "--scorer", "lof", "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    out = tmp_path_factory.mktemp("b") / "bundle"
    res = CliRunner().invoke(export_command, [str(run), "--out", str(out), "--quant", "int8", "--allow-degraded"])
    assert res.exit_code == 0, res.output
    return {"run": run, "bundle": out, "info": info}


def test_training_separates_classes_and_calibrates(trained):
    info = trained["info"]
    assert info["family"] == "metric" and info["metric"]["class_names"] == sorted(NAMES)
    assert info["history"]["accuracy"][-1] > 0.9
    assert info["interrupted"] is False and info["epochs_run"] == 20
    cal = info["calibration"]
    assert cal["method"] == "contamination" and cal["threshold"] > 0
    # The run's own float evaluation (training's metrics code): odd images vs the test shapes.
    assert info["metrics"]["auroc"] > 0.8
    report = Path(trained["run"]) / "report"
    assert (report / "metrics.json").is_file()
    # No pixel maps: the grids show the worst normals and hidden anomalies themselves, one panel per tile.
    from training.report import MIN_TILE_PX

    h = info["input_shape"][0]
    h *= -(-MIN_TILE_PX // h)  # tiles enlarged by a whole factor to at least MIN_TILE_PX
    for name in ("worst_normals.png", "hidden_anomalies.png"):
        with Image.open(report / name) as im:
            assert im.size[1] % (h + 12 + 6) == 0 and im.size[1] % (2 * h + 12 + 6) != 0


def test_bundle_carries_reference_and_int8_embedder(trained):
    from edge_detect.bundle import load_bundle
    from edge_detect.runtime import model_ops

    b = load_bundle(trained["bundle"])
    assert b.manifest["scoring"]["kind"] == "lof" and b.manifest["family"] == "metric"
    assert {"reference", "reference_kdist", "reference_lrd", "reference_labels"} <= set(b.arrays)
    n_train = trained["info"]["data_summary"]["counts"]["train"]
    assert b.arrays["reference"].shape == (n_train, 8)
    ops = {o["op"] for o in model_ops(b.model_path("int8"))}
    assert "CONV_2D" in ops and "L2_NORMALIZATION" not in ops  # host-side normalisation by default
    spec = b.variants["int8"]["output"]
    assert spec["shape"] == [1, 8]


def test_each_variant_scores_against_references_it_embedded_itself(trained):
    """int8 embeddings are compared with int8 references, so the error both share cancels."""
    from edge_detect.bundle import load_bundle
    from edge_detect.detector import Detector
    from training import metric
    from training.data import rebuild_splits

    b = load_bundle(trained["bundle"])
    own = {v: b.variants[v]["arrays"] for v in ("float32", "int8", "int8_io")}
    assert own["float32"]["reference"] == "reference" and own["int8"]["reference"] == "reference_int8"
    assert own["int8_io"] == own["int8"]  # same outputs, one stored copy
    assert own["int8"]["reference_labels"] == "reference_labels"  # identical arrays are not duplicated
    jsonschema = pytest.importorskip("jsonschema")
    schema = Path(__file__).resolve().parents[1] / "edge_detect/schemas/manifest.schema.json"
    jsonschema.Draft202012Validator(json.loads(schema.read_text())).validate(b.manifest)
    info, cfg = trained["info"], metric.load_run(trained["run"])[1]
    det = Detector(trained["bundle"], variant="int8")
    x_train = rebuild_splits(info["dataset"], det.preprocess).x_train
    images = x_train[metric.reference_indices(len(x_train), cfg)]
    want = det.scorer.embed(det.model.run_batch(images))
    np.testing.assert_array_equal(det.scorer.reference, want)
    np.testing.assert_array_equal(b.array("reference_int8"), want)
    assert "reference" not in det.bundle._arrays  # the float32 copy is never loaded for int8
    f32 = Detector(trained["bundle"], variant="float32").scorer.reference
    assert f32.shape == want.shape and not np.array_equal(f32, want)
    # Each variant's threshold comes from its own validation scores against its own references.
    v_cal = b.variants["int8"]["calibration"]
    val = det.infer(rebuild_splits(info["dataset"], det.preprocess).x_val)[0]
    assert v_cal["threshold"] == pytest.approx(np.quantile(val, 1 - cfg.contamination), rel=1e-6)


def test_export_refuses_references_when_the_training_images_changed(trained):
    from training import metric
    from training.export import ExportError

    model, cfg, shape = metric.load_run(trained["run"])
    emb, _ = metric.load_reference(trained["run"])
    n = len(emb)
    parts = metric.export_parts(trained["run"], model, cfg, shape, np.zeros((n, *shape), np.float32))
    fit = parts["reference"].fit
    arrays, scores = fit(emb + 1e-5, "float32")  # TFLite's float32 rounding, within the tolerance
    assert arrays["reference"].shape == emb.shape and scores.shape == (n,)
    np.testing.assert_array_equal(arrays["reference"], parts["arrays"]["reference"])  # fit's, not refitted
    fit(emb + 0.5, "int8")  # other variants differ from the float embeddings by design
    with pytest.raises(ExportError, match="the data changed since edge-train fit"):
        fit(emb + 0.5, "float32")


def test_reference_size_bench_reproduces_the_run_and_shrinks(trained, tmp_path, monkeypatch):
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    import common
    import reference_size

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["reference_size.py", str(trained["run"]), "--sizes", "0,24"])
    reference_size.main()
    (doc,) = [json.loads(p.read_text()) for p in tmp_path.glob("reference_size-*.json")]
    full, small = doc["rows"]
    assert full["references"] == trained["info"]["data_summary"]["counts"]["train"] and small["references"] == 24
    # All references, Keras float32 embeddings: the run's own evaluation.
    assert full["auroc"] == pytest.approx(trained["info"]["metrics"]["auroc"], abs=1e-9)
    assert 0.0 <= small["auroc"] <= 1.0


def test_evaluate_metric_run_through_its_bundle(trained):
    from training.cli import main as train_main

    run, bundle = str(trained["run"]), str(trained["bundle"])
    res = CliRunner().invoke(train_main, ["evaluate", run, "--bundle", bundle, "--variant", "int8", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["auroc"] > 0.8
    # Without the bundle: the Keras embedder against the run's reference set, as fit scored it.
    res = CliRunner().invoke(train_main, ["evaluate", run, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert m["auroc"] == pytest.approx(trained["info"]["metrics"]["auroc"], abs=1e-9)
    assert m["tnr"] == pytest.approx(trained["info"]["metrics"]["tnr"]) and m["evaluated"].endswith("(Keras float32)")


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
    assert all(r["anomalous"] for r in lines[6:]), (scores[6:].round(2).tolist(), lines[0]["threshold"])
    accepted = [(r, k) for r, k in zip(lines[:6], kinds) if not r["anomalous"]]
    assert len(accepted) >= 4
    # Classification with rejection: accepted images carry the class the reference labels vote for.
    det = Detector(trained["bundle"], variant="int8")
    xs = det.preprocess.batch(paths)
    pred = det.scorer.classify(det.model.run_batch(xs))
    names = sorted(NAMES)
    assert [r["class_name"] for r, _ in accepted] == [names[pred[i]] for i, r in enumerate(lines[:6])
                                                       if not r["anomalous"]]
    assert all("class" not in r for r in lines[6:])  # rejected inputs get no class
    fresh = np.repeat([0, 1, 2], 10)
    xf = _x([shape_image(rng, k) for k in fresh])
    want = np.array([names.index(NAMES[k]) for k in fresh])
    assert (det.scorer.classify(det.model.run_batch(xf)) == want).mean() >= 0.8
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


def test_single_class_with_synthetic_outlier_exposure_from_the_cli(tmp_path):
    """One normal class and no aux folder: --synthetic-aux makes the 'other' class from the normals."""
    from training.cli import main as train_main

    rng = np.random.default_rng(2)
    for name, make, n in (("good", lambda: shape_image(rng, 1), 60), ("bad", lambda: odd_image(rng), 8)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(make(), "L").save(tmp_path / name / f"{i}.png")
    args = ["fit", str(tmp_path / "good"), "--anomalies", str(tmp_path / "bad"), "--model", "metric",
            "--input-size", str(SIZE), "--epochs", "3", "--embed-dim", "8", "--scorer", "knn", "--quiet"]
    res = CliRunner().invoke(train_main, [*args, "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "--synthetic-aux" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(train_main, [*args, "--out", str(tmp_path / "run"), "--synthetic-aux", "1",
                                          "--head", "gap"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    aux = info["data_summary"]["aux"]
    assert aux["synthetic"] == aux["count"] == info["data_summary"]["counts"]["train"] > 0
    assert f"outlier exposure: 0 images from --aux, {aux['synthetic']} synthetic anomalies" in res.output
    assert info["metrics"]["n_anomalous"] == 8 and info["n_classes"] == 2
    assert info["model_params"]["head"] == "gap"

    # --aux repeats: every folder's pictures join the "other" class; a missing one is a one-line error.
    for name, n in (("aux1", 5), ("aux2", 7)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(odd_image(rng), "L").save(tmp_path / name / f"{i}.png")
    (tmp_path / "aux2" / "cut.png").write_bytes((tmp_path / "aux2" / "0.png").read_bytes()[:40])
    (tmp_path / "aux2" / "labels.xml").write_text("<a/>")  # not an image by name: not even a warning
    no_scorer = [a for a in args if a not in ("--scorer", "knn")]
    res = CliRunner().invoke(train_main, [*no_scorer, "--out", str(tmp_path / "two"),
                                          "--aux", str(tmp_path / "aux1"), "--aux", str(tmp_path / "aux2")])
    assert res.exit_code == 0, res.output
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    aux = two["data_summary"]["aux"]
    assert aux["count"] == 12 and aux["synthetic"] == 0 and len(aux["folders"]) == 2 and aux["skipped"] == 1
    assert " skipped (+ 1 in --aux)" in res.output
    assert "outlier exposure: 12 images from --aux, 0 synthetic anomalies" in res.output
    assert two["scoring"]["kind"] == "knn"  # the default scorer
    res = CliRunner().invoke(train_main, [*args, "--out", str(tmp_path / "bad"), "--aux", str(tmp_path / "aux1"),
                                          "--aux", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--aux folder not found" in res.output and "nope" in res.output


def test_cli_and_library_share_the_default_scorer():
    from training import metric
    from training.cli import fit

    (opt,) = [o for o in fit.params if o.name == "scorer"]
    assert opt.default == metric.MetricConfig().scorer == "knn"  # with or without outlier exposure


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


def test_imagenet_weights_option_errors_are_one_line(monkeypatch, tmp_path):
    """--weights imagenet: a CNN backbone is refused, and a failed download is one line, not a traceback."""
    from keras.src.utils import file_utils

    from training.cli import main as train_main

    def offline(*args, **kwargs):  # what Keras raises without a network (tests never reach one)
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] "
                        "Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    _write_dataset(tmp_path / "data", np.random.default_rng(4))
    args = ["fit", str(tmp_path / "data"), "--model", "metric", "--input-size", "32", "--epochs", "1",
            "--weights", "imagenet", "--quiet", "--out", str(tmp_path / "run")]
    for backbone, msg in (("cnn", "--weights imagenet needs a MobileNetV2 --backbone, got 'cnn'"),
                          ("mobilenetv2-0.35", "could not fetch MobileNetV2's ImageNet weights (URL fetch failure")):
        res = CliRunner().invoke(train_main, [*args, "--backbone", backbone])
        assert res.exit_code == 2, res.output
        assert msg in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) <= 2


def test_mobilenet_keeps_the_given_weights_and_trains_its_batch_norms_fused(monkeypatch, tmp_path):
    import keras

    from training import metric
    from training.layers import BN_MOMENTUM, BatchNorm
    from training.metric_models import build_model

    made = {}
    original = keras.applications.MobileNetV2

    def pretrained(*args, **kwargs):  # stands in for downloaded ImageNet weights
        base = original(*args, **{**kwargs, "weights": None})
        rng = np.random.default_rng(3)
        base.set_weights([rng.normal(size=w.shape).astype(w.dtype) if w.ndim > 1 else np.abs(w) + 0.5
                          for w in base.get_weights()])
        made["weights"] = base.get_weights()
        return base

    monkeypatch.setattr(keras.applications, "MobileNetV2", pretrained)
    m = build_model((32, 32, 1), 2, backbone="mobilenetv2-0.35", embed_dim=8)
    net = next(layer for layer in m.layers if isinstance(layer, keras.Model))
    for got, want in zip(net.get_weights(), made["weights"], strict=True):
        np.testing.assert_array_equal(got, want)
    bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and all(isinstance(b, BatchNorm) and b.momentum == BN_MOMENTUM for b in bns)
    # A saved model loads back through the run loader's registration.
    m.save(tmp_path / "m.keras")
    metric.register_custom_layers()
    back = keras.models.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(m(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stop_after", [None, 2])
def test_ctrl_c_keeps_the_last_completed_epoch(tmp_path, stop_after):
    """Ctrl-C after epoch 2: the run is written from epoch 2's weights; during epoch 1: nothing to keep."""
    import keras

    from training import metric

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if stop_after is not None and epoch + 1 == stop_after:
                self.weights_then = self.model.get_weights()
                raise KeyboardInterrupt

        def on_train_batch_end(self, batch, logs=None):
            if stop_after is None and batch == 1:  # in the middle of the first epoch
                raise KeyboardInterrupt

    rng = np.random.default_rng(0)
    x = _x([shape_image(rng, k % 3) for k in range(48)])
    y = np.arange(48) % 3
    cfg = metric.MetricConfig(epochs=5, batch_size=16, embed_dim=8, width=4, class_names=NAMES)
    stop = CtrlC()
    if stop_after is None:
        with pytest.raises(KeyboardInterrupt):
            metric.fit_metric(tmp_path / "r", cfg, x[:36], y[:36], x[36:], y[36:], callbacks=[stop], verbose=0)
        assert not (tmp_path / "r" / "model.keras").exists()
        return
    res = metric.fit_metric(tmp_path / "r", cfg, x[:36], y[:36], x[36:], y[36:], callbacks=[stop], verbose=0)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["interrupted"] is True and run["epochs_run"] == 2 and len(run["history"]["loss"]) == 2
    for got, want in zip(res["model"].get_weights(), stop.weights_then):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "r" / "model.keras").is_file() and run["calibration"]["threshold"] > 0
