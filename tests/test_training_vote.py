"""`edge-train vote`: runs combined, evaluated, exported and scored on the device, and its errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

from edge_detect.detector import Detector  # noqa: E402
from training.cli import main  # noqa: E402
from training.train import load_run, score_keras  # noqa: E402

TINY = ["--input-size", "16", "--epochs", "2", "--width", "4", "--depth", "2", "--latent", "4", "--quiet"]


def _fit(data, out, family, *extra):
    r = CliRunner().invoke(main, ["fit", str(data), "--model", family, "--out", str(out), *TINY, *extra])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    from conftest import write_mvtec

    root = tmp_path_factory.mktemp("vote")
    write_mvtec(root / "data")
    runs = [_fit(root / "data", root / fam, fam) for fam in ("plain", "superres")]
    return root, runs


@pytest.mark.slow
def test_vote_run_scores_as_its_members_agree_and_exports(members):
    root, runs = members
    out = root / "vote"
    r = CliRunner().invoke(main, ["vote", *map(str, runs), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "vote: anomalous when 2 of 2 members reject (plain, superres)" in r.output and "image AUROC" in r.output
    assert "validation normals" in r.output
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == "vote" and info["calibration"]["threshold"] == 1.0
    assert [m["model"] for m in info["calibration"]["members"]] == ["plain", "superres"]
    assert (out / "report" / "roc.png").is_file()

    # Known answer: the vote's score is the smaller of the members' scores over their own thresholds.
    vote, a, b = load_run(out), load_run(runs[0]), load_run(runs[1])
    x = np.stack([vote.preprocess(p) for p in sorted((root / "data/test").rglob("*.png"))])
    want = np.minimum(score_keras(a.model, a.scorer, x)[0] / a.calibration["threshold"],
                      score_keras(b.model, b.scorer, x)[0] / b.calibration["threshold"])
    got, maps = score_keras(vote.model, vote.scorer, x)
    assert got == pytest.approx(want, rel=1e-4) and maps.shape == (len(x), 16, 16)

    bundle = root / "vote-bundle"
    r = CliRunner().invoke(main, ["export", str(out), "--out", str(bundle), "--quant", "int8"])
    assert r.exit_code == 0, r.output
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["scoring"]["kind"] == "vote" and m["model"]["family"] == "vote"
    # int8 members are recalibrated on their own reconstructions, as a single model's variant is.
    assert m["variants"]["int8"]["arrays"] == {"member_thresholds": "member_thresholds_int8"}
    assert all(v["calibration"]["threshold"] == 1.0 for v in m["variants"].values())
    det = Detector(bundle, variant="float32")
    assert det.infer(x)[0] == pytest.approx(want, rel=1e-3)  # the device's TFLite float32 agrees with Keras
    res = Detector(bundle).score(sorted((root / "data/test/square").glob("*.png"))[0])
    assert res.error_map is not None and res.error_map.shape == (16, 16)

    r = CliRunner().invoke(main, ["evaluate", str(out), "--bundle", str(bundle)])
    assert r.exit_code == 0, r.output
    assert "at threshold 1: normals accepted" in r.output and (out / "report-int8" / "histogram.png").is_file()

    damaged = root / "vote-damaged"
    shutil.copytree(out, damaged)
    info = json.loads((damaged / "run.json").read_text())
    del info["calibration"]["members"]
    (damaged / "run.json").write_text(json.dumps(info))
    r = CliRunner().invoke(main, ["export", str(damaged), "--out", str(root / "b-damaged")])
    assert r.exit_code == 2 and "calibration of a vote run is damaged" in r.output, r.output


@pytest.mark.slow
def test_vote_bundle_in_the_daemon_publishes_events_with_regions(members, mosquitto, tmp_path):
    # The device end of the vote: the daemon scores a watched folder with the int8 vote bundle and
    # publishes anomaly events (with regions and a heatmap) to a real broker.
    from daemon_helpers import DaemonProc, Subscriber, drop_file, write_config
    from test_daemon import _dir_camera

    root, runs = members
    out, bundle = tmp_path / "vote", tmp_path / "vote-bundle"
    for args in (["vote", *map(str, runs), "--out", str(out)],
                 ["export", str(out), "--out", str(bundle), "--quant", "int8"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    inbox = tmp_path / "in"
    inbox.mkdir()
    good = sorted((root / "data/test/good").glob("*.png"))[:3]
    bad = sorted((root / "data/test/square").glob("*.png"))[:3]
    for p in good:
        drop_file(inbox, f"good-{p.name}", p.read_bytes())
    for p in bad:
        drop_file(inbox, f"square-{p.name}", p.read_bytes())
    sub = Subscriber(mosquitto, ["edge-detect/vote1/#"], client_id="vote-e2e")
    assert sub.subscribed.wait(5)
    cfg = write_config(tmp_path / "edge.toml", device="vote1", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=_dir_camera("front", inbox, heatmap=True))
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["frames"] == 6)
        assert sub.wait(lambda: len(sub.events()) >= stats["events"] > 0, 20), d.tail()
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    events = sub.events()
    # Every alert is a defect image, scored against the vote's threshold of 1.0 (the members' own).
    assert events and all(e["extra"]["image"].startswith("square-") for e in events)
    assert all(e["threshold"] == 1.0 and e["score"] > 1.0 and e["model"]["name"] == "vote" for e in events)
    assert any(e["extra"].get("regions") for e in events) and sub.payloads("/heatmap/")
    sub.close()


@pytest.mark.slow
def test_vote_refuses_members_of_other_data_or_kind(members):
    root, runs = members
    other = _fit(root / "data", root / "plain-seed1", "plain", "--seed", "1")
    cases = [
        ([runs[0], other], "dataset.seed is 1 but"),
        ([runs[0]], "a vote needs at least 2 runs, got 1"),
        ([*runs, "--vote", "3"], "--vote must be 1..2 for 2 runs"),
        ([runs[0], root / "missing"], "not a run directory (no run.json)"),
    ]
    for args, needle in cases:
        r = CliRunner().invoke(main, ["vote", *map(str, args), "--out", str(root / "v-bad")])
        assert r.exit_code == 2 and needle in r.output, r.output
        assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["vote", *map(str, runs), "--out", str(runs[0])])
    assert r.exit_code == 2 and "--out must not be one of the runs" in r.output
    # A run of another kind is refused from its run.json, before its model is read.
    metric = root / "metric-like"
    shutil.copytree(runs[1], metric)
    info = json.loads((metric / "run.json").read_text())
    info.update(family="metric", model="metric", metric={}, input_shape=[16, 16, 1])
    (metric / "run.json").write_text(json.dumps(info))
    (metric / "model.keras").write_bytes(b"not a keras model")
    deeper, damaged = root / "deeper", root / "damaged"
    for copy, change in ((deeper, lambda i: i["preprocess"].update(bit_depth=12)),
                         (damaged, lambda i: i["calibration"].pop("threshold"))):
        shutil.copytree(runs[1], copy)
        info = json.loads((copy / "run.json").read_text())
        change(info)
        (copy / "run.json").write_text(json.dumps(info))
    for args, needle in (([runs[0], metric], "only autoencoder runs can vote (this one is metric)"),
                         ([runs[0], runs[1], runs[0]], "is listed twice"),
                         ([runs[0], deeper], "preprocess.bit_depth is 12 but"),
                         ([runs[0], damaged], "calibration.threshold must be a number, got None")):
        r = CliRunner().invoke(main, ["vote", *map(str, args), "--out", str(root / "v-bad")])
        assert r.exit_code == 2 and needle in r.output, r.output
    assert not (root / "v-bad").exists()


@pytest.mark.slow
def test_vote_accepts_a_member_whose_run_json_spells_the_default_bit_depth(members):
    # Runs written by one version record preprocess.bit_depth 16, others leave the default out.
    root, runs = members
    spelled = root / "superres-spelled"
    shutil.copytree(runs[1], spelled)
    info = json.loads((spelled / "run.json").read_text())
    info["preprocess"]["bit_depth"] = 16
    (spelled / "run.json").write_text(json.dumps(info))
    r = CliRunner().invoke(main, ["vote", str(runs[0]), str(spelled), "--out", str(root / "v-spelled")])
    assert r.exit_code == 0, r.output
