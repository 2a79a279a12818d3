"""Smoke tests for the delivery benches (daemon throughput, MQTT throughput, cold start), so they can't rot.

Each bench runs in-process with minimal counts on generated inputs (never ../shared/data) and writes
its JSON under tmp_path; the assertions check that everything sent was counted and the numbers are
plausible, not their size.

The bundle is ``smoke_bundle``: test_bench_smoke's 16 px LOGISTIC ``tiny_bundle`` under another name,
not conftest's session ``tiny_bundle`` (a 32 px autoencoder trained with TensorFlow). It builds in
milliseconds without TensorFlow, and these benches time plumbing and set the camera threshold
themselves, so a trained model would add only start-up time and a TensorFlow dependency.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_bench_smoke as smoke
from test_bench_smoke import _result, common, run_bench  # importing it puts bench/ on sys.path

# Fixtures of another module are visible here only as attributes of this one; pytest registers
# them under these names, so the bundle does not shadow conftest's tiny_bundle.
tiny_models = smoke.tiny_models
smoke_bundle = smoke.tiny_bundle


def _images(shared_data_tiny: Path) -> Path:
    return shared_data_tiny / "casting" / "train" / "ok_front"


@pytest.mark.parametrize("given", [True, False], ids=["bundle-given", "bundle-built"])
def test_daemon_throughput_bench(given: bool, smoke_bundle: Path, shared_data_tiny: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real daemon on a watched folder against the bare loop, then the first-event run; with
    --bundle, or without it (the bench builds the 128 px test autoencoder in a child process)."""
    import daemon_throughput

    runs: list = []  # daemon_run's own dicts: the frame count and exit code the JSON leaves out
    real_run = daemon_throughput.daemon_run

    def spy(*args: object, **kwargs: object) -> dict:
        runs.append(real_run(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(daemon_throughput, "daemon_run", spy)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    bundle_args = ["--bundle", str(smoke_bundle)] if given else []
    rc = daemon_throughput.main([str(_images(shared_data_tiny)), *bundle_args, "--files", "12", "--repeat", "1"])
    assert rc == 0
    doc = _result(tmp_path, "daemon_throughput")
    built = "tests/tiny_bundle.py autoencoder, 128x128 gray, float32 (built: no --bundle given)"
    assert doc["bundle"] == (f"given: {smoke_bundle}" if given else built)
    assert doc["files"] == 12
    (row,) = doc["runs"]
    # The daemon scored exactly the 12 files, rejected none and stopped cleanly on SIGTERM.
    (d,) = runs
    assert d["frames"] == 12 and d["rejected"] == 0 and row["rejected"] == 0 and d["exit_code"] == 0
    assert row["bare_fps"] > 0 and row["daemon_fps"] > 0 and row["ratio"] > 0
    # CPU time comes in 10 ms ticks: 12 tiny frames may measure 0, and then there is no ratio.
    assert row["bare_cpu_ms"] >= 0 and row["daemon_cpu_ms"] >= 0 and row["daemon_peak_rss_mb"] > 10
    assert (row["cpu_ratio"] is None) == (row["daemon_cpu_ms"] == 0)
    assert row["daemon_p50_ms"] > 0 and 0 < row["window_frames"] <= 12
    fe = doc["first_event"]
    assert fe["first_event_s"] is not None and fe["first_event_s"] > 0 and fe["daemon_startup_ms"] > 0


def test_mqtt_throughput_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare paho, both outbox modes and the replay after an outage, each until every PUBACK arrived."""
    out, work = tmp_path / "results", tmp_path / "work"
    run_bench(monkeypatch, out, "mqtt_throughput", "--events", "20", "--replay", "30", "--repeat", "1",
              "--dir", work, "--out", out)
    rows = _result(out, "mqtt_throughput")["rows"]
    assert [(r["mode"], r["events"]) for r in rows] == [("paho", 20), ("outbox_full", 20), ("outbox_normal", 20),
                                                        ("replay", 30)]
    assert all(r["wall_s"] > 0 and r["events_per_s"] > 0 and r["ratio_vs_paho"] > 0 for r in rows)
    assert rows[0]["ratio_vs_paho"] == 1.0
    assert all(0 <= r["call_ms_p50"] <= r["call_ms_p99"] for r in rows[:3])
    assert not list(work.iterdir())  # the outbox files and the broker's folder are cleaned up


def test_cold_start_bench(smoke_bundle: Path, shared_data_tiny: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh ``edge-detect score`` processes to a verdict, and the bare import time."""
    image = sorted(_images(shared_data_tiny).glob("*.jpeg"))[0]
    run_bench(monkeypatch, tmp_path, "cold_start", smoke_bundle, image, "--variant", "float32", "--runs", "2")
    doc = _result(tmp_path, "cold_start")
    assert doc["cli"][-5:] == ["score", str(smoke_bundle), str(image), "--variant", "float32"]
    assert len(doc["runs_s"]) == 2 and len(doc["import_s"]) == 3  # import runs: max(3, runs // 2)
    assert all(0 < t < 60 for t in doc["runs_s"] + doc["import_s"])
    # The last run printed its verdict line: the image, its score and the bundle's threshold.
    assert doc["output"].startswith(f"{image}  score=") and "threshold=0.5" in doc["output"]


def test_cold_start_bench_without_an_image_scores_a_grey_one(smoke_bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_bench(monkeypatch, tmp_path, "cold_start", smoke_bundle, "--runs", "1")
    doc = _result(tmp_path, "cold_start")
    assert doc["cli"][-1].endswith("grey.png") and "grey.png  score=" in doc["output"]
