"""The bench scripts on tiny generated inputs, so they can't rot. Never reads ../shared/data.

Each bench runs in-process through its ``main(argv)`` with minimal counts and writes its
JSON under tmp_path; the assertions check the numbers are there and plausible, not their size.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402


def _result(out: Path, name: str) -> dict:
    (path,) = out.glob(f"{name}-*.json")
    doc = json.loads(path.read_text())
    assert doc["bench"] == name
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    return doc


def run_bench(monkeypatch: pytest.MonkeyPatch, out: Path, bench: str, *argv: Any) -> Path:
    """Run bench/<bench>.py's ``main()`` in-process with ``argv``, its JSON going to ``out``; returns out."""
    monkeypatch.setattr(common, "RESULTS_DIR", out)
    # Benches whose main() takes no argv read sys.argv; write_result records it as the command.
    monkeypatch.setattr(sys, "argv", [f"{bench}.py", *map(str, argv)])
    assert importlib.import_module(bench).main() in (None, 0)
    return out


def in_unit(*values: Any) -> bool:
    """Every value is a rate or an AUROC: present and within [0, 1]."""
    return all(v is not None and 0.0 <= v <= 1.0 for v in values)


# -- common ----------------------------------------------------------------------------------------


def test_latency_summary_matches_numpy() -> None:
    s = common.latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["n"] == 5 and s["p50"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["p99"] == pytest.approx(np.percentile([1, 2, 3, 4, 100], 99), abs=1e-4)
    assert common.latency_summary([]) == {"n": 0}


def test_format_table_aligns_and_markdown() -> None:
    rows = [{"name": "a", "ms": 1.5}, {"name": "bbb", "ms": 12.25}]
    text = common.format_table(rows, digits=2).splitlines()
    assert text[0].split() == ["name", "ms"] and text[2].endswith(" 1.50") and text[3].endswith("12.25")
    md = common.format_table(rows, markdown=True).splitlines()
    assert md[0] == "| name | ms |" and md[2] == "| a | 1.500 |"


def test_write_result_and_data_dir(tmp_path: Path) -> None:
    p = common.write_result("unit", {"x": np.float32(1.5), "arr": np.arange(3)}, out_dir=tmp_path,
                            command=["unit.py", "--flag"])
    doc = json.loads(p.read_text())
    assert doc["x"] == 1.5 and doc["arr"] == [0, 1, 2] and doc["command"] == "python bench/unit.py --flag"
    assert "numpy" in doc["machine"]["packages"]
    assert common.data_dir(tmp_path) == tmp_path
    with pytest.raises(SystemExit) as e:
        common.data_dir(tmp_path / "missing")
    assert e.value.code == 2


def test_proc_cpu_and_rss_of_self() -> None:
    t0 = common.proc_cpu_seconds()
    sum(i * i for i in range(300_000))  # burn a little CPU so the counter moves
    assert common.proc_cpu_seconds() >= t0
    assert common.peak_rss_mb() > 5


# -- latency and cold start on a tiny converted model ---------------------------------------------


def tiny_tflite(kind: str, size: int = 16) -> bytes:
    """A real .tflite flatbuffer written with LiteRT's schema, no TensorFlow: (1, size, size, 1) in and out.

    float32: LOGISTIC. int8: int8 input and output (scale 1/255, 1/256) around DEQUANTIZE, LOGISTIC,
    QUANTIZE, so TFLiteModel's quantise-in / dequantise-out path runs as for an ``int8_io`` model.
    """
    flatbuffers = pytest.importorskip("flatbuffers")
    s = pytest.importorskip("ai_edge_litert.schema_py_generated")
    shape = [1, size, size, 1]

    def tensor(name: str, ttype: int, q: tuple = ()) -> object:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, ttype, 0
        if q:
            t.quantization = s.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [q[0]], [q[1]]
        return t

    if kind == "float32":
        tensors = [tensor("in", s.TensorType.FLOAT32), tensor("out", s.TensorType.FLOAT32)]
        codes = [s.BuiltinOperator.LOGISTIC]
    else:
        tensors = [tensor("in", s.TensorType.INT8, (1 / 255, -128)), tensor("f", s.TensorType.FLOAT32),
                   tensor("g", s.TensorType.FLOAT32), tensor("out", s.TensorType.INT8, (1 / 256, -128))]
        codes = [s.BuiltinOperator.DEQUANTIZE, s.BuiltinOperator.LOGISTIC, s.BuiltinOperator.QUANTIZE]
    ops, opcodes = [], []
    for i, c in enumerate(codes):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = i, [i], [i + 1]
        ops.append(op)
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
        opcodes.append(oc)
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [0], [len(tensors) - 1], ops, "main"
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.description = 3, opcodes, [sg], "bench smoke test"
    m.buffers = [s.BufferT()]  # buffer 0: the empty one every activation tensor points at
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list:
    d = tmp_path_factory.mktemp("models")
    paths = []
    for kind in ("float32", "int8"):
        p = d / f"tiny_{kind}.tflite"
        p.write_bytes(tiny_tflite(kind))
        paths.append(p)
    return paths


def test_tiny_models_compute_a_logistic(tiny_models: list) -> None:
    from edge_detect.runtime import TFLiteModel

    x = np.full((1, 16, 16, 1), 0.5, np.float32)
    for p in tiny_models:
        y = TFLiteModel(p, num_threads=1)(x)
        assert y.shape == x.shape and abs(float(y.mean()) - 1 / (1 + np.exp(-0.5))) < 0.01


def test_latency_bench(tiny_models: list, tmp_path: Path) -> None:
    import latency

    plot = tmp_path / "cdf.png"
    rc = latency.main([*map(str, tiny_models), "--iterations", "5", "--warmup", "1", "--threads", "1,2",
                       "--out", str(tmp_path), "--plot", str(plot)])
    assert rc == 0
    rows = _result(tmp_path, "latency")["rows"]
    assert {(r["variant"], r["threads"]) for r in rows} == {("float32", 1), ("float32", 2), ("int8", 1), ("int8", 2)}
    assert all(r["n"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
    assert plot.stat().st_size > 1000


def test_latency_bench_without_models_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import latency

    monkeypatch.setattr(latency, "find_bundles", lambda *a, **k: [])
    assert latency.main(["--out", str(tmp_path), "--plot", ""]) == 2


@pytest.fixture(scope="module")
def tiny_bundle(tiny_models: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 16 px float32 model as a bundle; threshold 0.5 (the benches don't care about verdicts)."""
    from edge_detect.bundle import write_bundle
    from edge_detect.preprocess import Preprocess
    from edge_detect.runtime import TFLiteModel

    f32 = next(p for p in tiny_models if p.stem.endswith("float32"))
    m = TFLiteModel(f32)
    spec = {"input": m.input.to_dict(), "output": m.output.to_dict()}
    return write_bundle(tmp_path_factory.mktemp("bundle") / "b", {
        "name": "tiny", "version": "1", "family": "conv_ae", "model": {},
        "preprocess": Preprocess(size=(16, 16)).to_dict(), "scoring": {"kind": "reconstruction", "method": "mse"},
        "calibration": {"threshold": 0.5, "normal_stats": {"median": 0.01}},
        "variants": {"float32": {"file": "model_float32.tflite", **spec}},
    }, {"model_float32.tflite": f32}).path


def test_cold_start_bench(tiny_bundle: Path, tmp_path: Path) -> None:
    import cold_start_rss

    rc = cold_start_rss.main([str(tiny_bundle), "--repeats", "1", "--variants", "float32", "--out", str(tmp_path)])
    assert rc == 0
    rows = _result(tmp_path, "cold_start_rss")["rows"]
    (row,) = [r for r in rows if r["variant"] == "float32"]
    # The fresh process really imported, loaded and scored, and the device path stayed free of TensorFlow.
    assert row["load_ms"] > 0 and row["first_score_ms"] > 0 and row["cli_ms"] > 0
    assert row["wall_ms"] > row["import_ms"] and row["hwm_mb"] > rows[0]["hwm_mb"]
    assert row["tf_imported"] is False


def test_e2e_latency_bench(tiny_bundle: Path, tmp_path: Path) -> None:
    """The real daemon (edge-detect run) and a real broker: every dropped file becomes one received event."""
    import e2e_latency

    rc = e2e_latency.main(["--bundle", str(tiny_bundle), "--images", "3", "--profiles", "fast", "--gap", "0",
                           "--plot", "", "--out", str(tmp_path)])
    assert rc == 0
    (row,) = _result(tmp_path, "e2e_latency")["rows"]
    assert row["n"] == 3 and row["missed"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] < 10_000


def test_score_cost_bench(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_bench(monkeypatch, tmp_path, "score_cost", tiny_bundle, "--variant", "float32", "--blocks", "2")
    (row,) = _result(tmp_path, "score_cost")["rows"]
    assert row["n"] == 50 and row["scorer"] == "reconstruction" and row["variant"] == "float32"
    assert 0 < row["invoke_p50_ms"] < 1000 and 0 < row["score_p50_ms"] <= row["score_p99_ms"]


# -- quality --------------------------------------------------------------------------------------


def test_quality_metrics_on_known_cases() -> None:
    import quality

    neg, pos = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5, 0.6])
    # 11 of the 12 (normal, anomaly) pairs are ordered right: 0.4 > 0.35 is the one miss.
    assert quality.auroc(neg, pos) == pytest.approx(11 / 12)
    assert quality.auroc(np.array([1.0, 1.0]), np.array([1.0])) == pytest.approx(0.5)  # ties count half
    assert quality.rates_at(neg, pos, 0.32) == {"tnr": 0.75, "tpr": 1.0}
    tpr, thr = quality.tpr_at_tnr(neg, pos, 0.75)
    assert thr == 0.3 and tpr == 1.0


def test_quality_mnist_ae_on_generated_idx(tiny_bundle: Path, tmp_path: Path) -> None:
    """The MNIST 1-vs-rest protocol on 12 generated 28x28 'digits'. The bundle's LOGISTIC 'reconstruction'
    sigmoid(x) is far from x for dark pixels (0.5 vs 0) and close for bright ones, so dark 'other digits'
    must all score above the bright 'ones'."""
    import quality
    from conftest import write_idx_file

    rng = np.random.default_rng(0)
    labels = np.array([1] * 6 + [7] * 6)
    imgs = np.where(labels[:, None, None] == 1, rng.integers(200, 255, (12, 28, 28)), rng.integers(0, 30, (12, 28, 28)))
    (tmp_path / "mnist").mkdir()
    write_idx_file(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", imgs)
    write_idx_file(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "out"
    assert quality.main(["mnist-ae", str(tiny_bundle), "--data", str(tmp_path), "--out", str(out)]) == 0
    (row,) = _result(out, "quality_mnist_ae")["rows"]
    assert row["variant"] == "float32" and row["auroc"] == 1.0


# -- fleet against the test broker -----------------------------------------------------------------


def test_fleet_bench_delivers_everything(mosquitto, tmp_path: Path) -> None:
    import fleet

    rc = fleet.main(["--sizes", "2", "--rate", "5", "--duration", "1.5", "--drain", "5", "--procs", "1",
                     "--consumers", "1", "--port", str(mosquitto.port), "--broker-pid", str(mosquitto.proc.pid),
                     "--out", str(tmp_path)])
    assert rc == 0
    (row,) = _result(tmp_path, "fleet")["rows"]
    # 2 devices x 5 events/s x 1.5 s, every one through Publisher + Outbox and the shared subscription.
    assert 12 <= row["offered_ev_s"] * 1.5 <= 16
    assert row["lost"] == 0 and row["dups"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] < 5000


# -- training analyses on tiny runs (the real runs need ../shared/data) ---------------------------


def test_score_tails_bench_on_a_tiny_autoencoder_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from conftest import write_idx

    from training.cli import main as train_main

    data, run = write_idx(tmp_path / "idx", n_train=120, n_test=40), tmp_path / "run"
    res = CliRunner().invoke(train_main, ["fit", str(data), "--normal-classes", "1", "--model", "plain",
                                          "--input-size", "16", "--epochs", "2", "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    out = run_bench(monkeypatch, tmp_path / "results", "score_tails", run, "--knn", "1", "--shift", "1",
                    "--deadzone", "0")
    rows = {r["score"]: r for r in _result(out, "score_tails")["rows"]}
    assert {"kNN 1, latent code", "min MSE over +-1 px shifts", "mean MSE over +-1 px shifts"} <= set(rows)
    # The identity row is the run's own score (MSE) on the run's own split: the same ranking.
    metrics = json.loads((run / "run.json").read_text())["metrics"]
    assert rows["mse"]["auroc"] == pytest.approx(metrics["auroc"], abs=1e-9)
    assert all(0.0 <= r["val_tnr"] <= 1.0 for r in rows.values())
    # A dead zone of 0 is plain MSE again.
    assert rows["mse beyond 0"]["auroc"] == pytest.approx(rows["mse"]["auroc"], abs=1e-9)
    assert rows["mse beyond 0"]["tpr_at_tnr99"] == rows["mse"]["tpr_at_tnr99"]
