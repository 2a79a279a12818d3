"""edge-train fit / evaluate end to end on tiny data: run dir, seed, Ctrl-C, error paths, bundle parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import _defect_image, _normal_image
from PIL import Image

pytest.importorskip("tensorflow")

from training.cli import main  # noqa: E402

TINY = ["--input-size", "16", "--epochs", "2", "--width", "4", "--depth", "2", "--latent", "4", "--quiet",
        "--batch-size", "8"]


def _folder(root, n_good=40, n_bad=8, seed=0):
    rng = np.random.default_rng(seed)
    (root / "ok").mkdir(parents=True)
    (root / "bad").mkdir()
    for i in range(n_good):
        Image.fromarray(_normal_image(rng, 24)).save(root / "ok" / f"{i:03d}.png")
    for i in range(n_bad):
        Image.fromarray(_defect_image(rng, 24)[0]).save(root / "bad" / f"{i:03d}.png")
    return root / "ok", root / "bad"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("cli-data"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One tiny trained run (plain, 16 px), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli-run") / "run"
    ok, bad = data
    res = CliRunner().invoke(main, ["fit", str(ok), "--anomalies", str(bad), "--out", str(out), "--seed", "1", *TINY])
    assert res.exit_code == 0, res.output
    return out, res.output


def _one_line_error(res) -> str:
    """Exit code 2, one 'error: ...' line, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "I0000"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_fit_writes_run_dir_and_report(run):
    out, text = run
    info = json.loads((out / "run.json").read_text())
    assert (out / "model.keras").is_file()
    assert info["model"] == "plain" and info["interrupted"] is False and info["epochs_run"] == 2
    assert info["data_summary"]["counts"]["test_anomalous"] == 8
    assert info["calibration"]["method"] == "mu_k_sigma" and info["calibration"]["threshold"] > 0
    assert info["metrics"]["auroc"] is not None
    rep = out / "report"
    assert json.loads((rep / "metrics.json").read_text())["n_anomalous"] == 8
    for name in ("histogram.png", "roc.png", "worst_normals.png", "hidden_anomalies.png"):
        with Image.open(rep / name) as im:
            im.load()
    assert "threshold (mu_k_sigma)" in text and "image AUROC" in text
    kept = info["calibration"]["accepted"]
    n = info["data_summary"]["counts"]["val"]
    assert f"keeps {kept:.2%} of the {n} validation normals" in text


def test_same_seed_same_threshold(data, run, tmp_path):
    ok, bad = data
    out = tmp_path / "again"
    res = CliRunner().invoke(main, ["fit", str(ok), "--anomalies", str(bad), "--out", str(out), "--seed", "1", *TINY])
    assert res.exit_code == 0, res.output
    a = json.loads((run[0] / "run.json").read_text())
    b = json.loads((out / "run.json").read_text())
    assert a["dataset"]["seed"] == b["dataset"]["seed"] == 1
    assert a["calibration"]["threshold"] == b["calibration"]["threshold"]
    assert a["history"]["loss"] == b["history"]["loss"]


def test_fit_records_every_threshold(run):
    c = json.loads((run[0] / "run.json").read_text())["calibration"]
    assert set(c["thresholds"]) == {"mu_k_sigma", "quantile", "far"}  # no anomalies held out: no best_f1
    assert c["threshold"] == c["thresholds"]["mu_k_sigma"]


# quantile and far differ from mu_k_sigma only inside calibrate() (tested there); best_f1 also changes the split,
# synthetic makes its own anomalies.
@pytest.mark.parametrize("calibration", ["best_f1", "synthetic"])
def test_every_calibration_mode_through_fit(data, tmp_path, calibration):
    from training.data import dataset_spec
    from training.train import FitConfig, fit

    ok, bad = data
    spec = dataset_spec(str(ok), anomalies=str(bad), calib_anomaly_fraction=0.5 if calibration == "best_f1" else 0)
    cfg = FitConfig(input_size=16, epochs=1, calibration=calibration, q=0.9, far=0.05, batch_size=8,
                    model_params={"width": 4, "depth": 2, "latent": 4})
    info = fit(spec, cfg, tmp_path / calibration, verbose=0)
    c = info["calibration"]
    assert c["method"] == calibration and c["threshold"] == c["thresholds"][calibration]
    if calibration == "best_f1":
        assert info["data_summary"]["counts"]["calib_anomalous"] == 4
        assert info["metrics"]["n_anomalous"] == 4  # the calibration anomalies are not tested on
    else:  # no real defect was used to calibrate, and the threshold is not the normals' mu+3 sigma
        assert info["data_summary"]["counts"].get("calib_anomalous", 0) == 0
        assert info["metrics"]["n_anomalous"] == 8 and c["threshold"] != c["thresholds"]["mu_k_sigma"]


def test_ctrl_c_keeps_best_checkpoint(data, tmp_path):
    import keras

    from training.data import dataset_spec
    from training.train import FitConfig, fit, load_run

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    ok, bad = data
    cfg = FitConfig(input_size=16, epochs=5, batch_size=8, model_params={"width": 4, "depth": 2, "latent": 4})
    info = fit(dataset_spec(str(ok), anomalies=str(bad)), cfg, tmp_path / "r", verbose=0, callbacks=[CtrlC()])
    on_disk = json.loads((tmp_path / "r" / "run.json").read_text())
    assert on_disk["interrupted"] is True and info["interrupted"] is True
    assert len(on_disk["history"]["loss"]) == 2  # the two epochs before Ctrl-C are recorded
    run = load_run(tmp_path / "r")
    assert run.model.output_shape[1:] == (16, 16, 1)
    assert on_disk["calibration"]["threshold"] > 0


def test_ctrl_c_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    # The interrupt lands inside the second save, after half a zip is written: the first checkpoint
    # must survive whole, and nothing half-written may be left beside it.
    import keras

    from training.models import build_model
    from training.train import best_checkpoint, load_keras_model

    model = build_model("plain", (16, 16, 1), width=4, depth=2, latent=4)
    ckpt = tmp_path / "model.keras"
    cb = best_checkpoint(ckpt)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_loss": 1.0})
    first = ckpt.read_bytes()
    cb.on_epoch_end(1, {"val_loss": 2.0})  # not better: not saved
    assert ckpt.read_bytes() == first

    def interrupted_save(self, path, *a, **kw):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        cb.on_epoch_end(2, {"val_loss": 0.5})
    monkeypatch.undo()
    assert ckpt.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert load_keras_model(ckpt).output_shape[1:] == (16, 16, 1)


def test_error_missing_folder(tmp_path):
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]))
    assert "not found" in line


def test_error_empty_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                                                     *TINY]))
    assert "no training images" in line and not (tmp_path / "r").exists()


def test_error_bad_roi(data, tmp_path, caplog):
    ok, _ = data
    assert "--roi" in _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--out", str(tmp_path / "r"),
                                                                "--roi", "1,2,3"]))
    # An ROI outside every image is a wrong setting: one error after the first 10 misses, not a
    # warning for every file; and the run directory is not left behind empty.
    res = CliRunner().invoke(main, ["fit", str(ok), "--out", str(tmp_path / "r"), "--roi", "0,0,500,500", *TINY])
    line = _one_line_error(res)
    assert line.startswith("error: --roi: roi (0, 0, 500, 500) lies outside the 24x24 px image (")
    assert line.endswith("and in the 9 train images before it: check the crop against the image size")
    assert not (tmp_path / "r").exists()
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]  # the misses are the error, not files


def test_error_even_smooth(data, tmp_path):
    ok, _ = data
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--out", str(tmp_path / "r"), "--smooth", "4"]))
    assert "--smooth must be odd" in line


def test_error_best_f1_without_anomalies(data, tmp_path):
    ok, _ = data
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--out", str(tmp_path / "r"),
                                                     "--calibration", "best_f1", *TINY]))
    assert "best_f1" in line
    assert not (tmp_path / "r" / "model.keras").exists()  # refused before training


def test_error_unconvertible_image_mode(tmp_path):
    d = tmp_path / "floats"
    d.mkdir()
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).random((20, 20)).astype(np.float32), "F").save(d / f"{i}.tif")
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(d), "--out", str(tmp_path / "r"), *TINY]))
    assert "image mode" in line


def test_error_evaluate_not_a_run_dir(tmp_path):
    line = _one_line_error(CliRunner().invoke(main, ["evaluate", str(tmp_path)]))
    assert "not a run directory" in line


def _set_in_run_json(d, **kw):
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, **kw}))


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "run.json").write_text("{"), "run.json: not valid JSON"),
    (lambda d: (d / "run.json").write_text("[1]"), "run.json: not a JSON object"),
    (lambda d: (d / "run.json").write_text('{"family": "plain"}'),
     "run.json: missing key(s) preprocess, scoring, dataset, calibration"),
    (lambda d: _set_in_run_json(d, preprocess=[16, 16]), "run.json: preprocess must be a JSON object"),
    (lambda d: (d / "model.keras").unlink(), "model.keras is missing"),
    (lambda d: (d / "model.keras").write_text("x"), "model.keras: not a Keras model"),
])
def test_error_damaged_run_dir(run, tmp_path, damage, needle):
    """evaluate and export name the damaged file instead of a KeyError / TypeError traceback."""
    d = tmp_path / "run"
    shutil.copytree(run[0], d)
    damage(d)
    for args in (["evaluate", str(d)], ["export", str(d), "--out", str(tmp_path / "b")]):
        assert needle in _one_line_error(CliRunner().invoke(main, args)), args


def test_error_out_is_a_file_or_under_one(data, tmp_path):
    ok, _ = data
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    res = CliRunner().invoke(main, ["fit", str(ok), "--out", str(notes), *TINY])
    assert res.exit_code == 2 and "is a file" in res.output and "Traceback" not in res.output
    assert notes.read_text() == "keep me\n"
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--out", str(notes / "run"), *TINY]))
    assert line.startswith(f"error: cannot use {notes}")


def test_error_classes_layout_without_train_folder(data, tmp_path):
    ok, _ = data
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--out", str(tmp_path / "r"),
                                                     "--layout", "classes", *TINY]))
    assert "no train/ folder" in line


def test_evaluate_int8_bundle_matches_edge_detect_score(run, tmp_path):
    from edge_detect.cli import main as device_main

    out, _ = run
    bundle = tmp_path / "bundle"
    res = CliRunner().invoke(main, ["export", str(out), "--out", str(bundle), "--quant", "int8", "--allow-degraded"])
    assert res.exit_code == 0, res.output
    # The manifest names the model family, not the kind of run ("autoencoder").
    assert json.loads((bundle / "manifest.json").read_text())["family"] == "plain"
    res = CliRunner().invoke(main, ["evaluate", str(out), "--bundle", str(bundle), "--variant", "int8", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    images, scores = m["scores"]["images"], m["scores"]["test"]
    assert len(images) == len(scores) == m["n_normal"] + m["n_anomalous"] == 16
    res = CliRunner().invoke(device_main, ["score", str(bundle), *images, "--variant", "int8", "--json"])
    assert res.exit_code == 0, res.output
    dev = {r["image"]: r for r in (json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{"))}
    assert all(dev[p]["variant"] == "int8" for p in images)
    np.testing.assert_allclose([dev[p]["score"] for p in images], scores, atol=1e-6, rtol=0)
    assert (out / "report-int8" / "metrics.json").is_file()


def test_evaluate_with_data_splits_it_like_the_run_did(run, data, monkeypatch):
    # The module's run trained with --seed 1 on a folder whose test normals are held out by the seed:
    # evaluate --data must hold out the same ones, or it tests on images the model trained on.
    import training.train

    ok, bad = data
    out, _ = run
    info = json.loads((out / "run.json").read_text())
    seen = []
    real = training.train.evaluate_run
    monkeypatch.setattr(training.train, "evaluate_run",
                        lambda r, spec, *a, **kw: seen.append(spec) or real(r, spec, *a, **kw))
    fit_report = (out / "report" / "metrics.json").read_bytes()
    res = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(ok), "--anomalies", str(bad), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert m["auroc"] == pytest.approx(info["metrics"]["auroc"]) and m["tnr"] == pytest.approx(info["metrics"]["tnr"])
    assert "train" not in m["data"] and m["data"]["val"] == info["data_summary"]["counts"]["val"]  # none read
    # Another dataset's report goes beside fit's, which stays as it was.
    assert m["report"] == str(out / f"report-{ok.name}") and (out / f"report-{ok.name}" / "roc.png").is_file()
    assert (out / "report" / "metrics.json").read_bytes() == fit_report
    res = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(ok), "--anomalies", str(bad), "--json",
                                    "--seed", "0", "--test-fraction", "0.3"])  # asked for: another split
    assert res.exit_code == 0, res.output
    assert [(s["seed"], s["test_fraction"], s["val_fraction"]) for s in seen] == [(1, 0.2, 0.1), (0, 0.3, 0.1)]


def test_evaluate_on_a_folder_the_run_never_saw_tests_every_image(run, tmp_path):
    out, _ = run
    ok, bad = _folder(tmp_path / "new", n_good=10, n_bad=5, seed=7)
    res = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(ok), "--anomalies", str(bad)])
    assert res.exit_code == 0, res.output
    assert "data: 10 test normal, 5 test anomalous, 0 validation, 0 skipped   (a folder the run never" in res.output
    bundle = tmp_path / "bundle"
    assert CliRunner().invoke(main, ["export", str(out), "--out", str(bundle), "--quant", "float32"]).exit_code == 0
    res = CliRunner().invoke(main, ["evaluate", str(out), "--bundle", str(bundle), "--data", str(ok),
                                    "--anomalies", str(bad), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert (m["n_normal"], m["n_anomalous"]) == (10, 5) and m["report"].endswith("report-float32-ok")
    # Another folder of the same name gets its own report; the first folder's is kept, and reused.
    ok2, bad2 = _folder(tmp_path / "other", n_good=6, n_bad=3, seed=8)
    reports = []
    for folders in ((ok2, bad2), (ok, bad)):
        res = CliRunner().invoke(main, ["evaluate", str(out), "--bundle", str(bundle), "--data", str(folders[0]),
                                        "--anomalies", str(folders[1]), "--json"])
        assert res.exit_code == 0, res.output
        reports.append(json.loads(res.output.strip().splitlines()[-1]))
    assert reports[0]["report"].endswith("report-float32-ok-2") and reports[0]["n_normal"] == 6
    assert reports[1]["report"] == m["report"]
    assert json.loads((Path(m["report"]) / "metrics.json").read_text())["n_normal"] == 10
    everything = sorted(p.name for p in [*ok.iterdir(), *bad.iterdir()])
    assert sorted(Path(i).name for i in m["scores"]["images"]) == everything


def test_evaluate_and_export_warn_when_the_data_changed_since_fit(tmp_path, caplog):
    ok, bad = _folder(tmp_path / "d", n_good=24, n_bad=4)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["fit", str(ok), "--anomalies", str(bad), "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    warned = "differ from those the run was trained on"
    with caplog.at_level("WARNING"):
        same = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(ok), "--anomalies", str(bad)])
    assert same.exit_code == 0 and warned not in caplog.text
    shutil.copy(ok / "000.png", ok / "new.png")
    for args in (["evaluate", str(out)], ["evaluate", str(out), "--data", str(ok), "--anomalies", str(bad)],
                 ["export", str(out), "--out", str(tmp_path / "b"), "--quant", "float32"]):
        caplog.clear()
        with caplog.at_level("WARNING"):
            res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert warned in caplog.text, args


def test_options_that_do_not_apply_to_the_layout_are_errors(data, tmp_path):
    ok, bad = data
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(ok), "--normal-classes", "a", "--out",
                                                     str(tmp_path / "r"), *TINY]))
    assert "--normal-classes only applies to the classes and idx layouts" in line and "folders" in line
    (tmp_path / "mv" / "train").mkdir(parents=True)
    shutil.copytree(ok, tmp_path / "mv" / "train" / "good")
    line = _one_line_error(CliRunner().invoke(main, ["fit", str(tmp_path / "mv"), "--anomalies", str(bad), "--out",
                                                     str(tmp_path / "r"), *TINY]))
    assert "--anomalies only applies to the folders layout" in line and "mvtec" in line


@pytest.mark.parametrize("family, calibration, extra, stat", [
    ("plain", "quantile", ["--quantile", "0.95"], "p95"),
    ("superres", "far", ["--far", "0.01", "--superres-factor", "2"], "p99"),
])
def test_quantile_and_far_and_superres_through_the_cli(data, tmp_path, family, calibration, extra, stat):
    # The threshold is that quantile of the validation normals' scores (recorded as normal_stats).
    ok, bad = data
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["fit", str(ok), "--anomalies", str(bad), "--out", str(out), "--model", family,
                                    "--calibration", calibration, *extra, *TINY])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    c = info["calibration"]
    assert c["method"] == calibration and c["threshold"] == pytest.approx(c["normal_stats"][stat])
    assert info["model"] == family


def test_rgb_with_a_roi_from_fit_to_the_device(tmp_path):
    # Colour images, cropped to a region of interest: the bundle replays the same crop on the device,
    # so the device's score of a source image equals training's score of it.
    from edge_detect.detector import Detector

    rng = np.random.default_rng(5)
    (tmp_path / "ok").mkdir()
    for i in range(30):
        a = np.full((48, 64, 3), (40, 90, 160), np.uint8)
        a[8:40, 16:48] = rng.integers(100, 140, (32, 32, 3))  # the part, inside the ROI
        a[:, :8] = rng.integers(0, 255, (48, 8, 3))  # clutter outside it
        Image.fromarray(a).save(tmp_path / "ok" / f"{i}.png")
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "ok"), "--color", "rgb", "--roi", "16,8,32,32",
                                    "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["preprocess"]["roi"] == [16, 8, 32, 32] and info["model_params"]["input_shape"] == [16, 16, 3]
    res = CliRunner().invoke(main, ["export", str(out), "--out", str(tmp_path / "b"), "--quant", "float32"])
    assert res.exit_code == 0, res.output
    det = Detector(tmp_path / "b", variant="float32")
    img = tmp_path / "ok" / "0.png"
    from training.train import load_run, score_keras

    run = load_run(out)
    want, _ = score_keras(run.model, run.scorer, run.preprocess(img)[None])
    assert det.score(img.read_bytes()).score == pytest.approx(float(want[0]), rel=1e-4, abs=1e-6)


def test_twelve_bit_frames_from_fit_to_the_device(tmp_path, caplog, monkeypatch):
    # A Mono12 camera's 16-bit PNGs (values 0..4095): --bit-depth 12 is recorded, and the device
    # reads the frames the same way, so its score equals training's.
    import edge_detect.preprocess as pp
    from edge_detect.detector import Detector
    from training.train import load_run, score_keras

    monkeypatch.setattr(pp, "_warned", set())

    rng = np.random.default_rng(6)
    (tmp_path / "ok").mkdir()
    for i in range(30):
        a = (rng.integers(1000, 1400, (32, 32)) + 2000 * (np.arange(32) > 15)).astype(np.uint16)
        Image.fromarray(a).save(tmp_path / "ok" / f"{i}.png")
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "ok"), "--bit-depth", "12", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["preprocess"]["bit_depth"] == 12
    assert "peaks at" not in caplog.text
    res = CliRunner().invoke(main, ["export", str(out), "--out", str(tmp_path / "b"), "--quant", "float32"])
    assert res.exit_code == 0, res.output
    det = Detector(tmp_path / "b", variant="float32")
    assert det.preprocess.bit_depth == 12
    img = tmp_path / "ok" / "0.png"
    run = load_run(out)
    assert run.preprocess(img).max() > 0.5  # 12 significant bits, not 8 of 16
    want, _ = score_keras(run.model, run.scorer, run.preprocess(img)[None])
    assert det.score(img.read_bytes()).score == pytest.approx(float(want[0]), rel=1e-4, abs=1e-6)
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "ok"), "--bit-depth", "7", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--bit-depth" in res.output


def test_tensorflow_start_up_notices_are_dropped_and_other_stderr_kept(tmp_path):
    import subprocess
    import sys

    from training.tfimport import CHILD, NOISE

    # The filter drops the notices word for word and keeps everything else, including a fatal line
    # from the same source file as a notice.
    lines = [f"I0000 port.cc:153] {NOISE[1]} due to x\n", "F0000 cpu_feature_guard.cc:1] compiled to use AVX\n",
             f"I0000 cpu_feature_guard.cc:227] {NOISE[2]}\n", "real trouble\n"]
    out = subprocess.run([sys.executable, "-I", "-c", CHILD, *NOISE], input="".join(lines), capture_output=True,
                         text=True).stdout
    assert out == lines[1] + lines[3]
    noisy = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True).stderr
    if not any(n in noisy for n in NOISE):
        pytest.skip("this TensorFlow build prints no start-up notices here")
    ok, _ = _folder(tmp_path, n_good=30, n_bad=2)
    res = subprocess.run([sys.executable, "-m", "training.cli", "fit", str(ok), "--out", str(tmp_path / "r"), *TINY],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not any(n in res.stderr for n in NOISE), res.stderr
    assert "use_unbounded_threadpool" not in res.stderr  # validation data that Keras's array adapter never sees
    assert "threshold (mu_k_sigma)" in res.stdout


def test_a_fatal_tensorflow_import_still_shows_its_message(tmp_path):
    # A CPU without the instructions TensorFlow was built for: one fatal line, then abort. The line
    # must reach stderr even though the process dies inside the quiet import.
    import os
    import subprocess
    import sys

    from training.tfimport import NOISE

    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        f"os.write(2, b'I0000 port.cc:153] {NOISE[1]}\\n')\n"
        "os.write(2, b'F0000 cpu_feature_guard.cc:1] compiled to use AVX instructions, not available\\n')\n"
        "os.abort()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent)])}
    res = subprocess.run([sys.executable, "-c", "from training.tfimport import install; install(); import tensorflow"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0
    assert "compiled to use AVX instructions" in res.stderr and NOISE[1] not in res.stderr


def test_summary_warns_when_mu_3_sigma_keeps_fewer_normals_than_it_promises(run):
    from training import calibrate as cal
    from training.cli import summary

    out, _ = run
    info = json.loads((out / "run.json").read_text())
    info["calibration"] = cal.calibrate(np.random.default_rng(1).lognormal(0.0, 1.0, 674), "mu_k_sigma")
    text = summary(info, out)
    assert f"keeps {info['calibration']['accepted']:.2%} of the 674 validation normals" in text
    assert text.count("note: mean + 3 std rejects") == 1


def test_metrics_lines_flag_worse_than_chance_and_point_to_labelled_data(tmp_path):
    from training.cli import _metrics_lines

    m = {"n_normal": 4, "n_anomalous": 4, "auroc": 0.33, "aupr": 0.4, "threshold": 0.1, "tnr": 0.5, "tpr": 0.25}
    text = _metrics_lines(m, tmp_path)
    assert "note: AUROC below 0.5: the anomalies score lower than the normals, worse than chance" in text
    assert "AUROC below 0.5" not in _metrics_lines({**m, "auroc": 0.5}, tmp_path)
    assert _metrics_lines({}, tmp_path) == (
        "no labelled test images: nothing to evaluate (for a test on labelled images: "
        f"edge-train evaluate {tmp_path} --data GOOD_FOLDER --anomalies DEFECT_FOLDER)")
