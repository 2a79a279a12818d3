"""`edge-train export`: options, exit codes and messages (the run directory reader is stubbed here)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

import tiny_export as tx  # noqa: E402

from training import export_cli  # noqa: E402


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run directory whose reading is replaced by the tiny model (training.train is another issue's)."""
    run = tmp_path / "run-7"
    run.mkdir()
    (run / "run.json").write_text("{}")
    model, data, _, _ = tx.trained()

    def fake_inputs(rd, name=None, version="1"):
        assert rd == run
        return dataclasses.replace(tx.spec(model), name=name or rd.name, version=version), data

    monkeypatch.setattr(export_cli, "inputs_from_run", fake_inputs)
    return run


def invoke(*args):
    return CliRunner().invoke(export_cli.export_command, [str(a) for a in args])


def test_export_writes_bundle_and_archive(run_dir, tmp_path):
    out = tmp_path / "bundle"
    r = invoke(run_dir, "--out", out, "--quant", "int8", "--version", "2.1", "--archive")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "run-7" and m["version"] == "2.1"
    assert set(m["variants"]) == {"float32", "int8", "int8_io"}
    assert (tmp_path / "bundle.tar.gz").is_file()
    assert "edgetpu_compiler not on PATH" in r.output
    assert "parity int8 " in r.output and "Edge TPU op check (int8_io)" in r.output
    assert r.output.strip().splitlines()[-1].startswith(f"bundle {out}: run-7 2.1, default int8;")


def test_uint8_io_for_older_npus(run_dir, tmp_path):
    r = invoke(run_dir, "--out", tmp_path / "b", "--quant", "int8", "--io-dtype", "uint8", "--name", "npu")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["name"] == "npu"
    assert m["variants"]["int8_io"]["input"]["dtype"] == "uint8"
    assert m["variants"]["int8_io"]["output"]["dtype"] == "uint8"


def test_parity_failure_exit_1_and_allow_degraded(run_dir, tmp_path, monkeypatch):
    model, data, _, _ = tx.trained()
    # Representative images drawn from a 20x too dark "training set": int8 clips the real range.
    dark = dataclasses.replace(data, x_train=data.x_train * 0.05)
    monkeypatch.setattr(export_cli, "inputs_from_run", lambda rd, name=None, version="1": (tx.spec(model), dark))
    out = tmp_path / "b"
    r = invoke(run_dir, "--out", out, "--quant", "int8")
    assert r.exit_code == 1
    assert "error: export failed: int8 loses" in r.output and "--allow-degraded" in r.output
    assert not out.exists()
    r = invoke(run_dir, "--out", out, "--quant", "int8", "--allow-degraded")
    assert r.exit_code == 0, r.output
    assert "warning: degraded: int8 loses" in r.output
    assert json.loads((out / "manifest.json").read_text())["export"]["parity_passed"] is False


@pytest.mark.parametrize("args, message", [
    (["missing-run", "--out", "b"], "error: run directory not found: missing-run"),
    (["RUN", "--out", "b", "--quant", "int4"], "Invalid value for '--quant'"),
])
def test_bad_arguments_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RUN").mkdir()
    r = invoke(*args)
    assert r.exit_code == 2
    assert message in r.output


def test_run_dir_without_run_json_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke(tmp_path / "empty", "--out", tmp_path / "b")
    assert r.exit_code == 2
    want = f"error: {tmp_path / 'empty'} is not a training run (no run.json); run 'edge-train fit' first"
    assert r.output.strip() == want


def test_out_that_is_a_file_is_refused_not_replaced(run_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    r = invoke(run_dir, "--out", notes)
    assert r.exit_code == 2 and "is a file" in r.output
    assert notes.read_text() == "keep me\n"  # write_bundle would have swapped it for the bundle
    r = invoke(run_dir, "--out", notes / "b", "--quant", "float32")
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: cannot use {notes}")
    assert "Traceback" not in r.output


def test_representative_sample_with_synthetic_defects():
    import numpy as np

    from training.export import representative_sample

    rng = np.random.default_rng(0)
    x = rng.random((40, 16, 16, 1), dtype=np.float32) * 0.2 + 0.4
    plain = representative_sample(x, n=20)
    mixed = representative_sample(x, n=20, synthetic_share=0.25)
    assert plain.shape == mixed.shape == (20, 16, 16, 1)
    changed = np.abs(mixed - plain).reshape(20, -1).max(axis=1) > 1e-6
    assert changed.tolist() == [True] * 5 + [False] * 15  # 5 of the same 20 normals carry a defect
    assert np.array_equal(plain, representative_sample(x, n=20))  # reproducible


def test_rep_synthetic_reaches_the_export(run_dir, tmp_path, monkeypatch):
    seen = {}
    real = export_cli.export_bundle

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(export_cli, "export_bundle", spy)
    r = invoke(run_dir, "--out", tmp_path / "b", "--quant", "int8", "--rep-synthetic", "0.25")
    assert r.exit_code == 0, r.output
    assert seen["rep_synthetic"] == 0.25
    assert invoke(run_dir, "--out", tmp_path / "c", "--rep-synthetic", "2").exit_code == 2


def test_out_folder_with_other_files_is_refused_and_a_bundle_is_replaced_with_a_notice(run_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "part.jpg").write_bytes(b"keep me")
    r = invoke(run_dir, "--out", photos, "--quant", "float32")
    assert r.exit_code == 2 and "holds other files and no manifest.json" in r.output, r.output
    assert (photos / "part.jpg").read_bytes() == b"keep me"  # the export would have replaced the folder

    out = tmp_path / "bundle"
    assert invoke(run_dir, "--out", out, "--quant", "float32", "--archive").exit_code == 0
    r = invoke(run_dir, "--out", out, "--quant", "float32", "--version", "2")
    assert r.exit_code == 0, r.output
    assert f"replaced bundle run-7 1 in {out}" in r.output
    assert f"warning: {out}.tar.gz was not rewritten (no --archive): it holds an earlier export" in r.output
