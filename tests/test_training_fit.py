"""End-to-end training on tiny generated data: run directory, report, load_run, Ctrl-C, --seed."""

from __future__ import annotations

import json

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
    assert set(cal["normal_stats"]) == {"n", "mean", "std", "median", "p95", "p99", "max"}
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


@pytest.mark.slow
def test_dilated_with_best_f1_on_held_out_anomalies(mvtec_dir, tmp_path):
    spec = dataset_spec(str(mvtec_dir), calib_anomaly_fraction=0.5, seed=0)
    cfg = FitConfig(family="dilated", input_size=16, epochs=1, calibration="best_f1", score="ssim",
                    model_params=TINY)
    info = fit(spec, cfg, tmp_path / "run", verbose=0)
    assert info["data_summary"]["counts"]["calib_anomalous"] == 4 and info["metrics"]["n_anomalous"] == 4
    assert info["calibration"]["method"] == "best_f1"
    assert info["calibration"]["threshold"] == info["calibration"]["thresholds"]["best_f1"]
    assert info["scoring"]["method"] == "ssim"


@pytest.mark.slow
def test_ctrl_c_keeps_the_best_checkpoint_and_writes_run_json(idx_dir, tmp_path):
    import keras

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    spec = dataset_spec(str(idx_dir), normal_classes=["1"], val_fraction=0.2, seed=0)
    cfg = FitConfig(family="denoising", input_size=16, epochs=5, noise="salt_pepper", noise_strength=0.2,
                    calibration="quantile", q=0.95, model_params=TINY)
    info = fit(spec, cfg, tmp_path / "run", verbose=0, callbacks=[CtrlC()])
    assert info["interrupted"] is True and len(info["history"]["loss"]) == 2
    assert (tmp_path / "run" / "model.keras").is_file()
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["interrupted"] is True and saved["calibration"]["method"] == "quantile"
    assert saved["metrics"]["per_kind"].keys() == {"class_0", "class_7"}


@pytest.mark.slow
def test_same_seed_same_run(idx_dir, tmp_path):
    spec = dataset_spec(str(idx_dir), normal_classes=["1"], val_fraction=0.2, seed=0)
    cfg = FitConfig(family="superres", input_size=16, epochs=1, seed=7, model_params={**TINY, "depth": 1, "k": 2})
    a = fit(spec, cfg, tmp_path / "a", verbose=0)
    b = fit(spec, cfg, tmp_path / "b", verbose=0)
    assert a["model_params"]["k"] == 2
    assert a["calibration"]["threshold"] == pytest.approx(b["calibration"]["threshold"], rel=1e-6)
    assert a["history"]["loss"] == pytest.approx(b["history"]["loss"], rel=1e-6)
