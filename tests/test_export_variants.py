"""Export: every variant converts, loads and scores through the device code; the parity gate works."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
jsonschema = pytest.importorskip("jsonschema")

import tiny_export as tx  # noqa: E402

from edge_detect.bundle import load_bundle  # noqa: E402
from edge_detect.detector import Detector  # noqa: E402

SCHEMA = Path(__file__).resolve().parents[1] / "edge_detect" / "schemas" / "manifest.schema.json"
CPU_VARIANTS = ("float32", "float16", "dynamic", "int8", "int8_io")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bundle"
    res, imgs, y = tx.export(out, quant="all", archive=True)
    return res, imgs, y


def validate(manifest: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(manifest)


def test_every_variant_written_with_fixed_batch_and_right_dtypes(exported):
    res, _, _ = exported
    b = load_bundle(res.bundle.path)
    assert set(b.variants) == set(CPU_VARIANTS)
    for v in CPU_VARIANTS:
        spec = b.variants[v]
        assert (b.path / f"model_{v}.tflite").is_file()
        assert spec["input"]["shape"] == [1, tx.SIZE, tx.SIZE, 1]
        assert spec["output"]["shape"] == [1, tx.SIZE, tx.SIZE, 1]
    assert b.variants["int8"]["input"]["dtype"] == "float32"
    assert b.variants["int8_io"]["input"]["dtype"] == "int8"
    assert b.variants["int8_io"]["output"]["dtype"] == "int8"
    assert b.variants["int8_io"]["input"]["quantization"][0] > 0
    assert b.manifest["default_variant"] == "int8"
    # The device's service user must be able to read the bundle directory.
    assert os.stat(b.path).st_mode & stat.S_IROTH


def test_manifest_records_what_issue_3_lists_and_validates(exported):
    res, _, _ = exported
    m = res.bundle.manifest
    validate(m)
    assert m["family"] == "plain" and m["name"] == "tiny" and m["version"] == "1"
    assert m["preprocess"]["size"] == [tx.SIZE, tx.SIZE] and m["preprocess"]["color"] == "gray"
    assert m["scoring"]["method"] == "mse"
    assert m["calibration"]["threshold"] > 0 and "median" in m["calibration"]["normal_stats"]
    assert m["training_data"]["counts"]["train"] == 128
    assert m["tools"]["tensorflow"] and m["tools"]["keras"] and m["tools"]["edge_detect"]
    assert set(m["files"]) == {f"model_{v}.tflite" for v in CPU_VARIANTS}
    assert m["metrics"]["variants"]["int8"]["auroc"] > 0.9
    assert m["export"]["representative"]["count"] == 128
    assert m["export"]["parity_passed"] is True
    # Absent compiler: recorded in one message, and the model it would take is there.
    assert m["export"]["edgetpu_compiler"]["available"] is False
    assert "edgetpu_compiler not on PATH" in m["export"]["edgetpu_compiler"]["message"]


def test_each_variant_has_its_own_calibration_and_parity(exported):
    res, _, _ = exported
    v = res.bundle.variants
    for name in CPU_VARIANTS:
        assert v[name]["calibration"]["threshold"] > 0
    assert v["float32"]["conversion_max_abs_diff"] < 1e-4
    for name in ("float16", "dynamic", "int8", "int8_io"):
        p = v[name]["parity"]
        assert p["splits"]["test"]["correlation"]["pearson"] > 0.9
        assert set(p["splits"]) == {"validation", "test"}
    for name in ("int8", "int8_io"):
        p = v[name]["parity"]
        assert p["passed"] and p["float_ops"] == []
        assert abs(p["splits"]["test"]["delta"]["auroc"]) <= 0.005
    # int8_io maps entirely to the Edge TPU's op list; int8 has only its float-io boundary on the CPU.
    assert v["int8_io"]["parity"]["edgetpu_cpu_ops"] == []
    assert [r["op"] for r in v["int8"]["parity"]["ops"] if r["edgetpu"] == "cpu"] == ["QUANTIZE", "DEQUANTIZE"]
    assert any(r["op"] == "RESIZE_NEAREST_NEIGHBOR" and r["int8"] for r in v["int8"]["parity"]["ops"])
    # float16/dynamic compute in float: the op table says so.
    assert v["dynamic"]["parity"]["float_ops"]


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_every_variant_loads_and_scores_real_images(exported, tmp_path, variant):
    res, imgs, y = exported
    paths = tx.write_images(tmp_path, imgs[::4])
    det = Detector(res.bundle.path, variant=variant)
    scores = np.array([det.score(p).score for p in paths])
    assert np.isfinite(scores).all()
    assert det.threshold == res.bundle.variants[variant]["calibration"]["threshold"]
    # Anomalies (second half) score above normals on average in every variant.
    half = len(scores) // 2
    assert scores[half:].mean() > scores[:half].mean()


def test_evaluate_bundle_matches_detector_scores_and_manifest(exported, tmp_path):
    from training.export import evaluate_bundle

    res, imgs, y = exported
    paths = tx.write_images(tmp_path, imgs)
    ev = evaluate_bundle(res.bundle.path, "int8", paths, y)
    det = Detector(res.bundle.path, variant="int8")
    direct = [det.score(p).score for p in paths]
    assert np.max(np.abs(np.array(ev["scores"]) - direct)) <= 1e-6
    # PNG round trip is lossless, so the image-path evaluation equals the one export measured.
    assert ev["auroc"] == pytest.approx(res.bundle.manifest["metrics"]["variants"]["int8"]["auroc"], abs=1e-9)
    assert ev["tnr"] == pytest.approx(res.bundle.manifest["metrics"]["variants"]["int8"]["tnr"], abs=1e-9)


def test_quant_choice_limits_variants(tmp_path):
    res, _, _ = tx.export(tmp_path / "b16", quant="float16")
    assert set(res.bundle.variants) == {"float32", "float16"}
    assert res.bundle.manifest["default_variant"] == "float32"


def test_bad_quant_is_a_one_line_error(tmp_path):
    from training.export import ExportError

    with pytest.raises(ExportError, match="--quant must be one of"):
        tx.export(tmp_path / "x", quant="int4")
    assert not (tmp_path / "x").exists()


def test_broken_quantisation_fails_parity_and_writes_nothing(tmp_path):
    from training.export import ParityError

    _, data, _, _ = tx.trained()
    out = tmp_path / "broken"
    # A representative set 20x too dark: int8 ranges clip everything brighter than 0.05.
    with pytest.raises(ParityError, match=r"int8 loses 0\.\d+ AUROC against float32"):
        tx.export(out, quant="int8", representative=data.x_train * 0.05)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging leftovers either


def test_allow_degraded_turns_the_failure_into_a_warning(tmp_path, caplog):
    _, data, _, _ = tx.trained()
    res, _, _ = tx.export(tmp_path / "degraded", quant="int8", representative=data.x_train * 0.05,
                          allow_degraded=True)
    m = res.bundle.manifest
    validate(m)
    assert m["export"]["parity_passed"] is False and m["export"]["allow_degraded"] is True
    assert any(w.startswith("degraded: int8 loses") for w in m["export"]["warnings"])
    assert m["variants"]["int8"]["parity"]["passed"] is False
    assert res.failures
    # A device with no --variant runs the reference, and is told so when it runs int8 on request.
    assert m["default_variant"] == "float32"
    assert any(w.startswith("the default variant is float32, because int8 failed the parity gate")
               for w in m["export"]["warnings"])
    assert Detector(res.bundle.path).variant == "float32"
    with caplog.at_level(logging.WARNING, logger="edge_detect.detector"):
        Detector(res.bundle.path, variant="int8")
    assert "variant int8 failed the export parity gate (int8 loses" in caplog.text


def test_parity_gate_fails_on_float_ops():
    from training.export import parity_report

    rng = np.random.default_rng(0)
    s = {"validation": rng.random(10), "test": rng.random(20)}
    y = np.r_[np.zeros(10), np.ones(10)]
    ops = [{"index": 0, "op": "QUANTIZE", "inputs": ["float32"], "outputs": ["int8"], "int8": False, "edgetpu": "cpu"},
           {"index": 1, "op": "CONV_2D", "inputs": ["float32"] * 3, "outputs": ["float32"], "int8": False,
            "edgetpu": "cpu"}]
    rep = parity_report("int8", s, s, 0.5, 0.5, y, ops)
    assert not rep["passed"]
    assert rep["failures"] == ["int8 keeps float ops: CONV_2D#1"]
    assert rep["splits"]["test"]["correlation"]["pearson"] == pytest.approx(1.0)


def test_op_table_cuts_after_first_unsupported_op(tmp_path, monkeypatch):
    import training.export as E

    fake = [
        {"index": 0, "op": "CONV_2D", "inputs": ["int8", "int8", "int32"], "outputs": ["int8"]},
        {"index": 1, "op": "TILE", "inputs": ["int8", "int32"], "outputs": ["int8"]},
        {"index": 2, "op": "CONV_2D", "inputs": ["int8", "int8", "int32"], "outputs": ["int8"]},
    ]
    monkeypatch.setattr(E, "model_ops", lambda path: fake)
    rows = E.op_table("unused.tflite")
    assert [r["edgetpu"] for r in rows] == ["tpu", "cpu", "cpu"]
    assert rows[1]["reason"] == "not in the Edge TPU op list"
    assert rows[2]["reason"] == "after the first unsupported op"


FAKE_COMPILER = """#!/bin/sh
# Stands in for Coral's edgetpu_compiler: same arguments (-s -o OUT MODEL), same kind of output.
out="$3"; model="$4"; stem=$(basename "$model" .tflite)
cp "$model" "$out/${stem}_edgetpu.tflite" && printf 'edgetpu-custom-op' >> "$out/${stem}_edgetpu.tflite"
cat <<EOF
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 12 ms.

Input model: $model
Output model: $out/${stem}_edgetpu.tflite
On-chip memory used for caching model parameters: 3.25KiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 6

Operator                       Count      Status

CONV_2D                        3          Mapped to Edge TPU
MAX_POOL_2D                    1          Mapped to Edge TPU
RESIZE_NEAREST_NEIGHBOR        1          Mapped to Edge TPU
LOGISTIC                       1          Mapped to Edge TPU
EOF
"""


def test_edgetpu_compiler_on_path_adds_compiled_variant(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "edgetpu_compiler"
    exe.write_text(FAKE_COMPILER)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res, _, _ = tx.export(tmp_path / "tpu", quant="int8")
    m = res.bundle.manifest
    validate(m)
    v = m["variants"]["int8_edgetpu"]
    assert v["file"] == "model_int8_edgetpu.tflite" and v["compiled_from"] == "int8_io"
    assert v["input"] == m["variants"]["int8_io"]["input"]
    assert v["edgetpu"]["compiler_version"] == "16.0.384591198"
    assert v["edgetpu"]["ops_on_tpu"] == 6 and v["edgetpu"]["ops_on_cpu"] == 0
    assert m["tools"]["edgetpu_compiler"] == "16.0.384591198"
    assert b"edgetpu-custom-op" in (res.bundle.path / v["file"]).read_bytes()
    # It runs int8_io's graph, so it takes int8_io's threshold rather than float32's.
    assert v["calibration"] == m["variants"]["int8_io"]["calibration"]
    # On a CPU without the delegate the compiled variant is refused with a reason, not a crash.
    from edge_detect.bundle import BundleError

    with pytest.raises(BundleError, match="compiled for the Edge TPU"):
        Detector(res.bundle.path, variant="int8_edgetpu")
