"""The metric-learning benches (metric_mnist, metric_casting, metric_sweep) on the tiny shared-data tree.

Each trains a 1-epoch embedder in-process through its ``main(argv)``, writes runs and bundles
under tmp_path and its JSON under tmp_path/results; the assertions check the rows are there and
plausible (and the numbers the tiny data fixes), not how good the embedder is.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
from test_bench_smoke import _result, in_unit, run_bench  # importing it puts bench/ on sys.path

TINY = ["--epochs", "1", "--embed-dim", "8", "--width", "4"]  # a seconds-long fit; the benches default to minutes
N_VAL = 20  # of the tree's 120 training digits: 100 remain to train on


def _run(bench: str, argv: List[str], name: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run a bench with argv, its result redirected to out; the JSON it wrote as ``name``."""
    return _result(run_bench(monkeypatch, out, bench, *argv), name)


def test_metric_mnist_bench(shared_data_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import metric

    work, out = tmp_path / "work", tmp_path / "results"
    argv = ["--data", str(shared_data_tiny), "--work", str(work), *TINY, "--n-val", str(N_VAL),
            "--max-reference", "80", "--reduce-sizes", "32,8"]
    doc = _run("metric_mnist", argv, "metric_mnist", out, monkeypatch)
    rows = doc["rows"]
    assert {(r["l2"], r["variant"]) for r in rows} == {(l2, v) for l2 in ("host", "graph")
                                                       for v in ("float32", "int8")}
    rate_keys = [k for k in rows[0] if k.endswith(("_mnist_normal", "_fashion_abnormal"))]
    assert len(rate_keys) == 6  # the bundle's rule and contamination 0.001 / 0.01, each on both sets
    for r in rows:
        assert r["scorer"] == "lof" and in_unit(r["auroc"], *(r[k] for k in rate_keys)) and r["score_s"] > 0
    for block in doc["l2"].values():
        assert Path(block["bundle"]).parent == work and np.isfinite(block["threshold"])
        assert 0 <= block["embedding_error"]["mean_l2_err"] <= block["embedding_error"]["p99_l2_err"] < 2
    # The real `edge-detect score --json` on 5 + 5 PNGs gives the Detector's scores: same code, lossless PNGs.
    spot = doc["spot_check"]
    assert spot["n"] == 10 and spot["max_abs_diff"] is not None and spot["max_abs_diff"] < 1e-5
    assert in_unit(spot["cli_mnist_normal"], spot["cli_fashion_abnormal"])
    # Reference: a sample of 80 of the 100 training digits (the rows export re-embeds and checks float32
    # against, so the export above proves they match), reduced to 32 and 8 rows by both methods.
    (run,) = work.glob("run-*")
    assert len(metric.load_reference(run)[0]) == 80
    red = doc["reduction"]
    assert {(r["size"], r["reduce"], r["scorer"]) for r in red} == {
        (n, m, s) for n, m in ((80, "full"), (32, "kmeans"), (32, "coreset"), (8, "kmeans"), (8, "coreset"))
        for s in ("lof", "knn")}
    assert all(in_unit(r["auroc"], r["mnist_normal"], r["fashion_abnormal"], r["class_acc"]) and r["ms_per_image"] > 0
               for r in red)
    assert doc["data"]["mnist_test"] == 60 and doc["train_seconds"] > 0

    # A second run finds model.keras and re-exports without training: the same float32 scores.
    again = _run("metric_mnist", [*argv, "--l2", "host", "--name", "metric_mnist_again"], "metric_mnist_again",
                 out, monkeypatch)
    assert {(r["l2"], r["variant"]) for r in again["rows"]} == {("host", "float32"), ("host", "int8")}
    first = next(r for r in rows if (r["l2"], r["variant"]) == ("host", "float32"))
    assert again["rows"][0] == pytest.approx({**first, "score_s": again["rows"][0]["score_s"]})
    assert again["train_seconds"] == doc["train_seconds"]


def test_metric_casting_bench(shared_data_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    argv = ["--data", str(shared_data_tiny), "--work", str(work), "--aux", "both", "--size", "32", *TINY]
    doc = _run("metric_casting", argv, "metric_casting_both_32", tmp_path / "results", monkeypatch)
    # 24 ok_front split 20/10/70 %; aux = 48 brickwork photos + one synthetic image per two training images.
    assert doc["n"] == {"train": 18, "val": 2, "test_ok": 4, "test_def": 24, "aux": 48 + 9}
    rows = doc["rows"]
    assert [(r["variant"], r["scorer"]) for r in rows] == [
        (v, s) for v in ("float32", "int8") for s in ("lof (bundle)", "knn k=5")]
    for r in rows:
        assert r["aux"] == "both" and r["size"] == 32 and in_unit(r["auroc"], r["tpr@tnr95"])
        if r["scorer"].startswith("lof"):
            assert in_unit(r["tnr@thr"], r["tpr@thr"])
    assert doc["train_seconds"] > 0 and doc["config"]["embed_dim"] == 8
    assert {p.name for p in (work / "bundle-both-32").glob("model_*.tflite")} >= {"model_float32.tflite",
                                                                                   "model_int8.tflite"}


def test_metric_sweep_bench(shared_data_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--data", str(shared_data_tiny), "--configs", "flatten:4:8,gap:16:4", "--epochs", "1", "--width", "4",
            "--n-val", str(N_VAL), "--max-reference", "50"]
    doc = _run("metric_sweep", argv, "metric_sweep", tmp_path / "results", monkeypatch)
    rows = doc["rows"]
    assert [(r["head"], r["alpha"], r["embed_dim"]) for r in rows] == [("flatten", 4.0, 8), ("gap", 16.0, 4)]
    for r in rows:
        rates = [v for k, v in r.items() if k.endswith(("_mnist_normal", "_fashion_abnormal"))]
        assert len(rates) == 4 and in_unit(r["val_acc"], r["auroc"], *rates) and r["train_s"] > 0
    assert doc["epochs"] == 1 and doc["width"] == 4
