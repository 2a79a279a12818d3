"""The bench scripts on tiny generated inputs, so they can't rot. Never reads ../shared/data.

Each bench runs in-process through its ``main(argv)`` with minimal counts and writes its
JSON under tmp_path; the assertions check the numbers are there and plausible, not their size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list:
    pytest.importorskip("tensorflow")
    import latency

    return latency.build_untrained(tmp_path_factory.mktemp("models"), [16], ["float32", "int8"])


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


def test_cold_start_bench(tiny_models: list, tmp_path: Path) -> None:
    import cold_start_rss

    from edge_detect.bundle import write_bundle
    from edge_detect.preprocess import Preprocess
    from edge_detect.runtime import TFLiteModel

    f32 = next(p for p in tiny_models if p.stem.endswith("float32"))
    m = TFLiteModel(f32)
    spec = {"input": m.input.to_dict(), "output": m.output.to_dict()}
    bundle = write_bundle(tmp_path / "b", {
        "name": "tiny", "version": "1", "family": "conv_ae", "model": {},
        "preprocess": Preprocess(size=(16, 16)).to_dict(), "scoring": {"kind": "reconstruction", "method": "mse"},
        "calibration": {"threshold": 0.5, "normal_stats": {"median": 0.01}},
        "variants": {"float32": {"file": "model_float32.tflite", **spec}},
    }, {"model_float32.tflite": f32})
    rc = cold_start_rss.main([str(bundle.path), "--repeats", "1", "--variants", "float32", "--out", str(tmp_path)])
    assert rc == 0
    rows = _result(tmp_path, "cold_start_rss")["rows"]
    (row,) = [r for r in rows if r["variant"] == "float32"]
    # The fresh process really imported, loaded and scored, and the device path stayed free of TensorFlow.
    assert row["load_ms"] > 0 and row["first_score_ms"] > 0 and row["cli_ms"] > 0
    assert row["wall_ms"] > row["import_ms"] and row["hwm_mb"] > rows[0]["hwm_mb"]
    assert row["tf_imported"] is False


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
