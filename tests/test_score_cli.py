"""`edge-detect score`: one line per image, JSON lines, the same scores as training's evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_detect.cli import main

REPO = Path(__file__).resolve().parents[1]
CPU_VARIANTS = ("float32", "float16", "dynamic", "int8", "int8_io")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("tensorflow")
    import tiny_export as tx

    root = tmp_path_factory.mktemp("score")
    res, imgs, y = tx.export(root / "bundle", quant="all")
    # Four normals and four anomalies, as PNG and as JPEG files.
    pick = np.r_[0:4, 24:28]
    png = tx.write_images(root / "png", imgs[pick], "png")
    jpg = tx.write_images(root / "jpg", imgs[pick], "jpg")
    return res.bundle.path, png, jpg, y[pick]


def run_cli(*args: str):
    return CliRunner().invoke(main, ["score", *map(str, args)])


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_json_scores_equal_training_evaluation(bundle, variant):
    from training.export import evaluate_bundle

    path, png, jpg, y = bundle
    for files in (png, jpg):
        r = run_cli(path, *files, "--variant", variant, "--json")
        assert r.exit_code == 0, r.output
        rows = [json.loads(ln) for ln in r.output.strip().splitlines()]
        assert [row["image"] for row in rows] == [str(p) for p in files]
        assert all(row["variant"] == variant for row in rows)
        ev = evaluate_bundle(path, variant, files, y)
        assert np.max(np.abs(np.array([row["score"] for row in rows]) - ev["scores"])) <= 1e-6
        for row in rows:
            assert row["threshold"] == ev["threshold"]
            assert row["anomalous"] == (row["score"] > row["threshold"])
            assert {"score", "normalised", "threshold", "anomalous"} <= set(row)


def test_plain_lines_have_score_norm_threshold_verdict(bundle):
    path, png, _, y = bundle
    r = run_cli(path, *png)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == len(png)
    for line, p, label in zip(lines, png, y):
        parts = line.split()
        assert parts[0] == str(p)
        assert parts[1].startswith("score=") and parts[2].startswith("norm=") and parts[3].startswith("threshold=")
        assert parts[4] == ("ANOMALY" if label else "ok")


def test_cli_process_matches_evaluation_and_imports_no_tensorflow(bundle):
    """A real `edge-detect score` process: same score as training's evaluation, no TF on the way."""
    from training.export import evaluate_bundle

    path, png, _, y = bundle
    code = ("import sys; from edge_detect.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')], 'TF imported'\n"
            "    raise\n")
    p = subprocess.run([sys.executable, "-c", code, "score", str(path), str(png[5]), "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.strip().splitlines()[-1])
    ev = evaluate_bundle(path, None, [png[5]], [1])
    assert row["variant"] == ev["variant"] == "int8"
    assert abs(row["score"] - ev["scores"][0]) <= 1e-6


def test_unknown_variant_is_exit_2(bundle):
    path, png, _, _ = bundle
    r = run_cli(path, png[0], "--variant", "int4")
    assert r.exit_code == 2
    assert "has no variant 'int4'" in r.output


def test_bad_images_exit_1_when_some_2_when_all(bundle, tmp_path):
    path, png, _, _ = bundle
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    r = run_cli(path, png[0], junk, "--json")
    assert r.exit_code == 1
    rows = [json.loads(ln) for ln in r.output.strip().splitlines()]
    assert "score" in rows[0] and rows[1]["image"] == str(junk) and "not a readable image" in rows[1]["error"]
    r = run_cli(path, tmp_path / "missing.png")
    assert r.exit_code == 2
    assert "no such file" in r.output


def test_threshold_override(bundle):
    path, png, _, _ = bundle
    r = run_cli(path, png[0], "--threshold", "0", "--json")
    row = json.loads(r.output)
    assert row["threshold"] == 0.0 and row["anomalous"] is True


@pytest.mark.parametrize("module", ["edge_detect", "edge_detect.detector, edge_detect.cli"])
def test_device_imports_no_tensorflow_or_keras(module):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")]
    assert any(m.startswith("edge_detect") for m in imported)
    heavy = [m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch")]
    assert heavy == []


def test_the_daemon_and_detector_import_no_cli_framework():
    """The daemon's import path stays free of click (7 ms), which only the command line needs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys, edge_detect.daemon, edge_detect.detector; print([m for m in sys.modules if m == 'click'])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
