"""Several autoencoder runs voting as one model (``edge-train vote RUN... --out RUN_DIR``).

Each member keeps the threshold it was calibrated with on its own held-out validation images
(μ+3σ by default). The combined network runs the members side by side on one input and stacks
their reconstructions on the channel axis, so it converts to one .tflite with a CONCATENATION at
the end; ``edge_detect.scoring.VoteScorer`` turns that output into one score: above 1.0 when at
least ``vote`` members reject the image. Families that err on different normals (plain,
denoising, superres) reject fewer normals together than any one of them alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_detect.scoring import ReconstructionScorer, VoteScorer

from . import calibrate as cal
from .data import rebuild_run_splits
from .train import (
    evaluate_scores,
    heatmap_maps,
    load_run,
    read_run_json,
    save_keras_model,
    score_keras,
    tool_versions,
    write_run_json,
)

# run.json blocks the members must share: the same images, split and preprocessing.
SHARED = ("preprocess", "dataset")


def check_members(run_dirs: Sequence[Path]) -> List[Dict[str, Any]]:
    """The members' run.json contents; ValueError naming the run and key where members differ, or
    where a member cannot vote. Reads no model, so a run of another kind gets this message."""
    from edge_detect.preprocess import Preprocess

    if len(run_dirs) < 2:
        raise ValueError(f"a vote needs at least 2 runs, got {len(run_dirs)}")
    seen = {}
    for d in run_dirs:
        real = Path(d).resolve()
        if real in seen:
            raise ValueError(f"{d} is listed twice (as {seen[real]}): a run cannot outvote the others")
        seen[real] = d
    infos = [read_run_json(Path(d)) for d in run_dirs]
    shared = []
    for d, info in zip(run_dirs, infos):
        kind = (info.get("scoring") or {}).get("kind")
        if info.get("family", "autoencoder") != "autoencoder" or kind != "reconstruction":
            what = info.get("model", info.get("family"))
            raise ValueError(f"{d}: only autoencoder runs can vote (this one is {what})")
        try:  # every field as the code reads it, so a key older versions did not write compares equal
            p = Preprocess.from_dict(info["preprocess"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{d}/run.json: preprocess: {e}") from None
        threshold = info["calibration"].get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"{d}/run.json: calibration.threshold must be a number, got {threshold!r}")
        shared.append({"preprocess": {**p.to_dict(), "bit_depth": p.bit_depth}, "dataset": info["dataset"]})
    for d, blocks in zip(run_dirs[1:], shared[1:]):
        for block in SHARED:
            a, b = shared[0][block], blocks[block]
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    raise ValueError(f"{d}/run.json: {block}.{key} is {b.get(key)!r} but {run_dirs[0]} has "
                                     f"{a.get(key)!r}; the members must be trained on the same data and split")
    return infos


def vote_model(models: Sequence[Any]) -> Any:
    """One Keras model: the members side by side, reconstructions concatenated on the channel axis."""
    import keras

    inp = keras.Input(shape=models[0].input_shape[1:], name="image")
    outs = []
    for i, m in enumerate(models):
        m.name = f"member{i}"  # nested models need distinct names
        outs.append(m(inp))
    return keras.Model(inp, keras.layers.Concatenate(axis=-1, name="reconstructions")(outs), name="vote")


def vote_calibration(val_scores: np.ndarray, vote: int, members: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The calibration block: the threshold is 1.0 by construction (each member's own threshold)."""
    return {"method": "vote", "params": {"vote": vote}, "threshold": 1.0, "thresholds": {"vote": 1.0},
            "normal_stats": cal.normal_stats(val_scores), "accepted": cal.accepted(val_scores, 1.0), "members": members}


def export_parts(calibration: Dict[str, Any]) -> Dict[str, Any]:
    """What export needs for a vote run: per-variant member thresholds and the calibration function.

    Each member is recalibrated with its own method on a variant's own reconstructions of the
    validation images, as a single model's variant is, so an int8 member's slightly larger errors
    move its threshold too; the vote's threshold stays 1.0.
    """
    try:
        members = list(calibration["members"])
        vote = int(calibration["params"]["vote"])
        scorers = [ReconstructionScorer(**{k: v for k, v in m["scoring"].items() if k != "kind"}) for m in members]
        for m in members:
            float(m["calibration"]["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"run.json: calibration of a vote run is damaged ({type(e).__name__}: {e}); "
                         "write it again with edge-train vote") from None

    def refit(x_val: np.ndarray, outputs: np.ndarray) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        c = x_val.shape[-1]
        th = [cal.recalibrate(m["calibration"], sc(x_val, outputs[..., i * c:(i + 1) * c])[0])["threshold"]
              for i, (m, sc) in enumerate(zip(members, scorers))]
        vs = VoteScorer([m["scoring"] for m in members], th, vote)
        return {"member_thresholds": np.asarray(th, np.float64)}, vs(x_val, outputs)[0]

    def calibrate(val_scores: np.ndarray, reference_scores: Optional[np.ndarray] = None) -> Dict[str, Any]:
        return vote_calibration(val_scores, vote, members)

    return {"refit": refit, "calibrate": calibrate}


def combine(run_dirs: Sequence[Path], out_dir: Path, vote: int = 0) -> Dict[str, Any]:
    """Write RUN_DIR (model.keras, run.json, report/) for the members' vote; returns run.json's content.

    vote: how many members must reject an image (0: all of them).
    """
    check_members(run_dirs)
    n = len(run_dirs)
    if not 0 <= vote <= n:
        raise ValueError(f"--vote must be 1..{n} for {n} runs (0: all), got {vote}")
    vote = vote or n
    t0 = time.perf_counter()
    runs = [load_run(Path(d)) for d in run_dirs]
    first = runs[0]
    splits = rebuild_run_splits(first.info, first.preprocess, with_train=False)
    members = [{"run": str(r.path.resolve()), "model": r.info.get("model"), "scoring": r.scorer.to_dict(),
                "calibration": {k: r.calibration[k] for k in ("method", "params", "threshold", "normal_stats")
                                if k in r.calibration}} for r in runs]
    scorer = VoteScorer([m["scoring"] for m in members], [r.calibration["threshold"] for r in runs], vote)
    model = vote_model([r.model for r in runs])
    val_scores, _ = score_keras(model, scorer, splits.x_val)
    calibration = vote_calibration(val_scores, vote, members)
    test_scores, test_maps = score_keras(model, scorer, splits.x_test)
    test_maps = heatmap_maps(test_maps, scorer.to_dict())
    metrics = evaluate_scores(splits, test_scores, test_maps, 1.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_keras_model(model, out_dir / "model.keras")
    info = {
        "family": "autoencoder",
        "model": "vote",
        "model_params": {"members": [m["model"] for m in members], "vote": vote,
                         "input_shape": list(first.preprocess.shape)},
        "config": {"vote": vote, "members": [m["run"] for m in members]},
        "preprocess": first.info["preprocess"],
        "scoring": scorer.to_dict(),
        "dataset": first.info["dataset"],
        # The members' split, whose training images this command never loads.
        "data_summary": first.info.get("data_summary") or splits.summary,
        "calibration": calibration,
        "metrics": metrics,
        "timing_s": {"combine": round(time.perf_counter() - t0, 2)},  # load, score, save; nothing is trained
        "parameters": int(model.count_params()),
        "tools": tool_versions(),
    }
    write_run_json(out_dir, info)
    from .report import write_report

    write_report(out_dir / "report", metrics, val_scores, test_scores, splits, 1.0, test_maps, first.preprocess)
    return info
