"""Training on the MVTec layout (masks, pixel metrics, load_run, evaluate --data) and argument checks.

Ctrl-C, --seed and the other error paths are in tests/test_training_cli.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from training.cli import main
from training.data import dataset_spec
from training.train import FitConfig, fit, load_run, score_keras

TINY = {"width": 4, "depth": 2, "latent": 4}


@pytest.mark.slow
def test_cli_fit_writes_run_dir_and_evaluate_reads_it(mvtec_dir, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["fit", str(mvtec_dir), "--model", "plain", "--out", str(run), "--input-size",
                                    "16", "--epochs", "2", "--width", "4", "--depth", "2", "--latent", "4",
                                    "--score", "max_smooth", "--smooth", "3", "--quiet", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "2 skipped" in res.output and "image AUROC" in res.output  # the one-screen summary
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "plain" and info["model_params"]["input_shape"] == [16, 16, 1]
    assert "k" not in info["model_params"]  # the superres factor only where it means something
    assert info["preprocess"]["size"] == [16, 16] and info["scoring"]["method"] == "max_smooth"
    assert info["dataset"]["layout"] == "mvtec" and info["dataset"]["seed"] == 1
    cal = info["calibration"]
    assert cal["method"] == "mu_k_sigma" and cal["threshold"] == cal["thresholds"]["mu_k_sigma"]
    assert set(cal["normal_stats"]) == {"n", "mean", "std", "median", "p95", "p99", "max", "skew"}
    assert cal["normal_stats"]["n"] == 4
    assert info["data_summary"]["counts"]["skipped"] == 2
    assert len(info["history"]["loss"]) == 2 and info["timing_s"]["train"] > 0 and info["tools"]["keras"]
    assert info["metrics"]["n_anomalous"] == 8 and "pixel" in info["metrics"]
    for name in ("metrics.json", "histogram.png", "roc.png", "worst_normals.png", "hidden_anomalies.png"):
        assert (run / "report" / name).is_file(), name
    assert (run / "report" / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # load_run gives back exactly what fit scored with.
    r = load_run(run)
    assert r.preprocess.size == (16, 16) and r.calibration == cal and r.dataset == info["dataset"]
    x = np.stack([r.preprocess(p) for p in sorted((mvtec_dir / "test/square").glob("*.png"))])
    scores, maps = score_keras(r.model, r.scorer, x)
    assert scores.shape == (8,) and maps.shape == (8, 16, 16)

    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(mvtec_dir), "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert m["auroc"] == pytest.approx(info["metrics"]["auroc"])
    # Evaluation reads no training image, so the fixture's two bad ones (in train/good) are not
    # counted; the summary says where the report went.
    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(mvtec_dir), "--seed", "1",
                                    "--report", str(run / "elsewhere")])
    assert res.exit_code == 0, res.output
    assert "8 test normal, 8 test anomalous, 4 validation, 0 skipped" in res.output
    assert "pixel AUROC" in res.output and "(on 16 images with ground truth)" in res.output
    assert res.output.rstrip().endswith(f"report: {run / 'elsewhere'}") and (run / "elsewhere" / "roc.png").is_file()
    # A copy is a folder the run never saw: every image is a test image, and every bad file counts.
    other = tmp_path / "copy"
    shutil.copytree(mvtec_dir, other)
    (other / "test/good/cut.png").write_bytes((other / "test/good/000.png").read_bytes()[:60])
    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(other)])
    assert res.exit_code == 0, res.output
    assert "data: 48 test normal, 8 test anomalous, 0 validation, 3 skipped   (a folder the run never" in res.output


@pytest.mark.slow
def test_dilated_with_best_f1_on_held_out_anomalies(mvtec_dir, tmp_path):
    spec = dataset_spec(str(mvtec_dir), calib_anomaly_fraction=0.5, seed=0)
    cfg = FitConfig(family="dilated", input_size=16, epochs=1, calibration="best_f1", score="ssim",
                    model_params=TINY)
    info = fit(spec, cfg, tmp_path / "run", verbose=0)
    assert info["data_summary"]["counts"]["calib_anomalous"] == 4 and info["metrics"]["n_anomalous"] == 4
    assert info["calibration"]["method"] == "best_f1"
    assert info["calibration"]["threshold"] == info["calibration"]["thresholds"]["best_f1"]
    assert info["scoring"]["method"] == "ssim" and info["config"]["loss"] == "ssim_l1"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--input-size", "3"], "--input-size"),
        (["--model", "vae"], "--model"),
        (["--color", "cmyk"], "--color"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--calibration", "median"], "--calibration"),
        (["--epochs", "0"], "--epochs"),
        (["--k", "nan"], "--k"),  # click's float takes nan, which would make a nan threshold
        (["--model", "metric", "--alpha", "inf"], "--alpha"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(mvtec_dir, tmp_path, args, needle):
    res = CliRunner().invoke(main, ["fit", str(mvtec_dir), "--out", str(tmp_path / "run"), *args])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("noise", ["gaussian", "synthetic"])
def test_denoising_fit_through_each_input_pipeline(mvtec_dir, tmp_path, noise):
    """fit's two denoising inputs (tf.data noise map, synthetic-defect generator) train and score."""
    spec = dataset_spec(str(mvtec_dir), seed=0)
    cfg = FitConfig(family="denoising", input_size=16, epochs=2, noise=noise, noise_strength=0.3, batch_size=8,
                    model_params=dict(TINY))
    info = fit(spec, cfg, tmp_path / noise, verbose=0)
    loss = info["history"]["loss"]
    assert len(loss) == 2 and np.isfinite(loss).all() and info["config"]["noise"] == noise
    assert info["config"]["loss"] == "mae"  # the default is recorded by name, not as null
    assert info["metrics"]["n_anomalous"] == 8 and np.isfinite(info["metrics"]["auroc"])
    if noise == "gaussian":  # pixel metrics judge the device's smoothed heatmap map, not the raw error
        from edge_detect.heatmap import pixel_map
        from training.data import rebuild_splits
        from training.pixel_metrics import pixel_auroc

        run = load_run(tmp_path / noise)
        splits = rebuild_splits(spec, run.preprocess)
        raw = score_keras(run.model, run.scorer, splits.x_test)[1]
        shown = pixel_map(raw, "mse", cfg.smooth)
        assert info["metrics"]["pixel"]["pixel_auroc"] == pytest.approx(pixel_auroc(shown, splits.masks_test))
        assert pixel_auroc(shown, splits.masks_test) != pytest.approx(pixel_auroc(raw, splits.masks_test))


def test_predict_shows_progress_on_large_sets_only(capsys, monkeypatch):
    import sys

    from training.models import build_model
    from training.train import predict

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars draw on a terminal only

    model = build_model("plain", (16, 16, 1), **TINY)
    x = np.zeros((2000, 16, 16, 1), np.float32)
    assert predict(model, x[:100]).shape == (100, 16, 16, 1)
    assert "model" not in capsys.readouterr().err
    assert predict(model, x).shape == x.shape
    err = capsys.readouterr().err
    assert "model:" in err and "/2000 [" in err
