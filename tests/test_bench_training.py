"""The training benches on the tiny generated data tree, so they can't rot. Never reads ../shared/data.

Each bench runs in-process through its ``main()`` with 1 epoch, 16 px inputs where the bench lets us
choose, and writes its JSON and its runs under tmp_path. The assertions check the rows are there and
plausible, and, where the tiny data fixes it, the exact answer (a rescored AUROC equal to the run's own).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from test_bench_smoke import _result, in_unit, run_bench  # importing it puts bench/ on sys.path

pytestmark = pytest.mark.slow  # every test here trains a model
TINY_AE = "width=8,depth=2,latent=8"  # model params small enough for 1 epoch in a second or two


def _main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bench: str, *argv: Any) -> Path:
    """Run bench/<bench>.py with ``argv``; returns the folder its JSON goes to."""
    return run_bench(monkeypatch, tmp_path / "results", bench, *argv)


def _check_sweep_rows(rows: list, configs: list) -> None:
    """train_sweep's table: every config scored with every score method, rates in [0, 1]."""
    import train_sweep

    methods = [f"{m}{s or ''}" for m, s in train_sweep.METHODS]
    for c in configs:
        assert [r["score"] for r in rows if r["config"] == c][: len(methods)] == methods
    for r in rows:
        assert in_unit(r["auroc"], r["tnr"], r["tpr"], r["tpr@tnr95"], r["tpr@tnr99"])
        assert r["train_s"] >= 0 and r["params"] > 0


# -- train_mnist / train_casting (bench/train_sweep.py) --------------------------------------------


def test_train_mnist_bench_with_int8_export(shared_data_tiny: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    out = _main(monkeypatch, tmp_path, "train_mnist", "--data", shared_data_tiny / "mnist", "--out", runs,
                "--epochs", "1", "--export", "--config", f"plain:family=plain,input_size=16,{TINY_AE}")
    doc = _result(out, "train_mnist")
    assert doc["epochs"] == 1 and doc["dataset"]["normal_classes"] == ["1"]
    rows = doc["rows"]
    _check_sweep_rows(rows, ["plain"])
    assert [r["score"] for r in rows][-1] == "mse int8" and len(rows) == 6
    # The mse row rescores the run's own score with the run's own calibration: the run's numbers.
    info = json.loads((runs / "plain" / "run.json").read_text())
    by = {r["score"]: r for r in rows}
    for k in ("auroc", "tnr", "tpr"):
        assert by["mse"][k] == pytest.approx(info["metrics"][k], abs=1e-9)
    # Every other test digit is a "1": 60 test images, 30 normal.
    int8 = doc["runs"]["plain"]["int8"]
    assert int8["n_normal"] == info["metrics"]["n_normal"] == 30 and int8["n_anomalous"] == 30
    assert (runs / "plain-bundle" / "model_int8.tflite").stat().st_size > 0


def test_train_casting_bench_two_configs(shared_data_tiny: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    out = _main(monkeypatch, tmp_path, "train_casting", "--data", shared_data_tiny / "casting", "--out", runs,
                "--epochs", "1", "--max-train", "10",
                "--config", f"p16:family=plain,input_size=16,{TINY_AE}",
                "--config", f"dn16:family=denoising,input_size=16,{TINY_AE},noise_strength=0.2")
    doc = _result(out, "train_casting")
    _check_sweep_rows(doc["rows"], ["p16", "dn16"])
    assert len(doc["rows"]) == 10 and doc["dataset"]["max_train"] == 10
    dn = doc["runs"]["dn16"]
    assert dn["config"]["family"] == "denoising" and dn["config"]["noise_strength"] == 0.2
    assert dn["model_params"]["width"] == 8
    for name in ("p16", "dn16"):
        info = json.loads((runs / name / "run.json").read_text())
        assert info["data_summary"]["counts"]["train"] <= 10
        # All 24 def_front images are test anomalies; the rescored mse is the run's own AUROC.
        assert doc["runs"][name]["metrics_by_score"]["mse"]["n_anomalous"] == 24
        assert doc["runs"][name]["metrics_by_score"]["mse"]["auroc"] == pytest.approx(info["metrics"]["auroc"])


# -- train_speed -------------------------------------------------------------------------------------


def test_train_speed_bench_feeds_and_batch_norms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.layers import BatchNorm
    from training.models import build_model

    # The bench flips the class attribute per row; put it back for the tests that follow.
    monkeypatch.setattr(BatchNorm, "fused", BatchNorm.fused)
    out = _main(monkeypatch, tmp_path, "train_speed", "--size", "16", "--n", "64", "--batch-size", "16",
                "--epochs", "1", "--config", f"plain:{TINY_AE}", "--feed", "dataset", "--feed", "arrays",
                "--bn", "fused", "--bn", "keras")
    doc = _result(out, "train_speed")
    assert (doc["size"], doc["n"], doc["epochs"]) == (16, 64, 1)
    rows = doc["rows"]
    assert {(r["feed"], r["bn"]) for r in rows} == {(f, b) for f in ("dataset", "arrays") for b in ("fused", "keras")}
    params = build_model("plain", (16, 16, 1), width=8, depth=2, latent=8).count_params()
    for r in rows:
        assert r["params"] == params
        assert r["s_per_epoch"] >= 0 and r["cpu_s_per_epoch"] >= 0 and r["max_first_batch_wait_s"] >= 0
        assert r["epochs_in_budget"] >= 0 and r["s_30_epochs"] >= 0


# -- synthetic_transfer ------------------------------------------------------------------------------


def test_synthetic_transfer_bench_both_datasets(shared_data_tiny: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import synthetic_transfer

    runs = tmp_path / "runs"
    out = _main(monkeypatch, tmp_path, "synthetic_transfer", "--data", shared_data_tiny, "--epochs", "1",
                "--out", runs)
    rows = _result(out, "synthetic_transfer")["rows"]
    assert len(rows) == 2 * 3 * 2  # datasets x thresholds x evaluated on
    for name in synthetic_transfer.DATASETS:
        mine = [r for r in rows if r["dataset"] == name]
        assert {(r["threshold_from"], r["evaluated_on"]) for r in mine} == {
            (f, o) for f in ("synthetic", "real", "normals (mu+3sigma)") for o in ("real", "synthetic")}
        cal = json.loads((runs / name / "run.json").read_text())["calibration"]
        thr = {r["threshold_from"]: r["threshold"] for r in mine}
        assert thr["synthetic"] == pytest.approx(cal["threshold"])
        assert thr["normals (mu+3sigma)"] == pytest.approx(cal["thresholds"]["mu_k_sigma"])
        for on in ("real", "synthetic"):
            # AUROC is threshold-free: one value per test set, whichever threshold the row is about.
            assert len({r["auroc"] for r in mine if r["evaluated_on"] == on}) == 1
        for r in mine:
            assert in_unit(r["tnr"], r["tpr"], r["auroc"]) and r["epochs"] == 1 and r["n_calib_real"] >= 1
            if r["evaluated_on"] == "real":  # the 24 real defects: held out for calibration, or test
                assert r["n_calib_real"] + r["n_anomalous"] == 24
            else:
                assert r["n_anomalous"] == max(synthetic_transfer.MIN_SYNTHETIC, r["n_normal"])


# -- explain_compare -------------------------------------------------------------------------------


def test_explain_compare_bench_on_casting(shared_data_tiny: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The bench keeps its explainer and metric runs in a fresh temporary folder: put that under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = _main(monkeypatch, tmp_path, "explain_compare", "--data", shared_data_tiny, "--datasets", "casting",
                "--n-train", "12", "--n-val", "8", "--n-test", "2", "--per-image-epochs", "2",
                "--one-pass-epochs", "1", "--one-pass-per-epoch", "16", "--metric-epochs", "1")
    doc = _result(out, "explain_compare")
    (res,) = doc["results"]
    assert res["dataset"] == "casting" and res["n_train"] == 12 and res["n_test"] == 2 and len(res["kinds"]) == 2
    assert res["one_pass_ms_per_image"] > 0 and res["per_image_s_per_image"] > 0
    assert [r["method"] for r in doc["rows"]] == ["one-pass (int8)", "one-pass (Keras float)", "per-image"]
    for r in doc["rows"]:
        assert in_unit(r["pixel_auroc"], r["pro@0.3"])  # the synthetic masks always hold a region
    assert (next(tmp_path.glob("explain-casting-*")) / "explainer").is_dir()


# -- heatmap_cost ----------------------------------------------------------------------------------


def test_heatmap_cost_bench_builds_then_reuses_its_bundle(shared_data_tiny: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import heatmap_cost

    work = tmp_path / "work"
    argv = ("--data", shared_data_tiny, "--n", "8", "--train", "8", "--val", "8", "--size", "16", "--epochs", "1",
            "--work", work)
    out = _main(monkeypatch, tmp_path, "heatmap_cost", *argv)
    doc = _result(out, "heatmap_cost")
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    assert doc["size"] == 16 and manifest["preprocess"]["size"] == [16, 16]
    rows = doc["rows"]
    assert [r["variant"] for r in rows] == ["float32", "int8"]
    for r in rows:
        assert r["def_frames"] == 4 and 0 <= r["def_flagged"] <= 4
        assert r["frame_ms_p50"] > 0 and 0 < r["heatmap_ms_p50"] <= r["heatmap_ms_p90"] and r["jpeg_bytes_p50"] > 0
        # The stages add up to the heatmap's time, so no stage's median can exceed the total's.
        assert all(0 <= r[f"{k}_ms_p50"] <= r["heatmap_ms_p50"] for k in heatmap_cost.STAGES)
        # A mean number of regions over 4 frames: a multiple of 1/4 (not mixed with the regions stage's ms).
        assert (r["regions_mean"] * 4) == pytest.approx(round(r["regions_mean"] * 4))
    # A second run times the same bundle without training again.
    capsys.readouterr()
    _main(monkeypatch, tmp_path, "heatmap_cost", *argv)
    assert f"reusing {work / 'bundle'}" in capsys.readouterr().out
    again = _result(out, "heatmap_cost")["rows"]
    assert [r["pixel_threshold"] for r in again] == [r["pixel_threshold"] for r in rows]


# -- export_parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, counts", [("mnist", (54, 6, 60)), ("casting", (16, 4, 28))])
def test_export_parity_bench(dataset: str, counts: tuple, shared_data_tiny: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    # Earlier tests have started TensorFlow's runtime in this process, after which the thread count the
    # bench sets for its timings can no longer change (RuntimeError); a fresh process, as run, can.
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", lambda n: None)
    bundle = tmp_path / "bundle"
    out = _main(monkeypatch, tmp_path, "export_parity", dataset, "--data", shared_data_tiny, "--out", bundle,
                "--epochs", "1")
    doc = _result(out, f"export_parity_{dataset}")
    # mnist: the 60 training "1"s split 90/10, all 60 test digits; casting: 24 ok_front as 16/4/4 + 24 def_front.
    assert (doc["train"], doc["val"], doc["test"]) == counts
    manifest = json.loads((bundle / "manifest.json").read_text())
    for v in ("float32", "int8"):
        assert in_unit(*doc[v].values())
        assert doc[v] == {k: manifest["metrics"]["variants"][v][k] for k in ("auroc", "tnr", "tpr")}
    assert doc["delta_auroc"] == pytest.approx(doc["int8"]["auroc"] - doc["float32"]["auroc"])
    assert doc["int8_bytes"] == (bundle / "model_int8.tflite").stat().st_size
    assert doc["int8_io_bytes"] == (bundle / "model_int8_io.tflite").stat().st_size
    assert -1 <= doc["pearson_test"] <= 1 and isinstance(doc["parity_passed"], bool)
    assert all(s >= 0 for s in doc["seconds"].values())
