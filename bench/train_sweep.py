"""Shared by bench/train_mnist.py and bench/train_casting.py: train configs, rescore, export, tabulate.

Each config is trained once with ``training.train.fit`` (the library behind ``edge-train fit``);
its reconstructions are then scored with every score method (scores are cheap, training is not),
each calibrated with the run's calibration on the held-out validation normals. Optionally the run
is exported with ``edge-train export --quant int8`` and the int8 variant evaluated through the
device code (``training.train.evaluate_run(..., bundle, variant="int8")``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import common

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

METHODS: Tuple[Tuple[str, int], ...] = (("mse", 0), ("mae", 0), ("ssim", 0), ("max_smooth", 5), ("max_smooth", 9))
COLUMNS = ("config", "score", "auroc", "tnr", "tpr", "tpr@tnr95", "tpr@tnr99", "train_s", "params")


def _row(name: str, method: str, m: Dict[str, Any], train_s: float, params: int) -> Dict[str, Any]:
    return {"config": name, "score": method, "auroc": m.get("auroc"), "tnr": m.get("tnr"), "tpr": m.get("tpr"),
            "tpr@tnr95": m.get("tpr_at_tnr_0.95"), "tpr@tnr99": m.get("tpr_at_tnr_0.99"),
            "train_s": round(train_s, 1), "params": params}


def rescore(run_dir: Path, splits: Any, methods: Sequence[Tuple[str, int]] = METHODS) -> Dict[str, Dict[str, Any]]:
    """Metrics of one trained run under every score method, each with its own threshold (run's calibration)."""
    from edge_detect.scoring import ReconstructionScorer
    from training import calibrate as cal
    from training.metrics import evaluate
    from training.train import load_run, predict

    run = load_run(run_dir)
    rv, rt = predict(run.model, splits.x_val), predict(run.model, splits.x_test)
    c = run.calibration
    out = {}
    for method, smooth in methods:
        sc = ReconstructionScorer(method, smooth or 5)
        v, t = sc(splits.x_val, rv)[0], sc(splits.x_test, rt)[0]
        thr = cal.calibrate(v, c["method"], None, **{k: c["params"][k] for k in ("k", "q", "far")})["threshold"]
        out[f"{method}{smooth or ''}"] = evaluate(t, splits.y_test, thr)
    return out


def export_int8(run_dir: Path) -> Tuple[Optional[Path], str]:
    """``edge-train export RUN --quant int8``; (bundle dir or None, last output line)."""
    bundle = Path(f"{run_dir}-bundle")
    cmd = [str(Path(sys.executable).parent / "edge-train"), "export", str(run_dir), "--out", str(bundle),
           "--quant", "int8", "--allow-degraded"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    tail = (p.stdout.strip() or p.stderr.strip()).splitlines()[-1:] or [""]
    return (bundle if p.returncode == 0 else None), tail[0]


def sweep(spec: Dict[str, Any], configs: Sequence[Tuple[str, Dict[str, Any]]], out_root: Path,
          export: bool = False, methods: Sequence[Tuple[str, int]] = METHODS) -> Tuple[List[Dict[str, Any]], Dict]:
    """Train each (name, FitConfig kwargs); return table rows and per-run details (run.json bits)."""
    from training.data import rebuild_splits
    from training.train import FitConfig, evaluate_run, fit

    rows: List[Dict[str, Any]] = []
    details: Dict[str, Any] = {}
    cache: Dict[Any, Any] = {}
    for name, kw in configs:
        cfg = FitConfig(**kw)
        key = (cfg.input_size, cfg.color, cfg.resize, cfg.roi)
        if key not in cache:  # one load per preprocessing, shared by the configs that use it
            cache.clear()
            cache[key] = rebuild_splits(spec, cfg.preprocess())
        splits = cache[key]
        run_dir = out_root / name
        t0 = time.perf_counter()
        info = fit(spec, cfg, run_dir, verbose=0, splits=splits)
        wall = time.perf_counter() - t0
        train_s = info["timing_s"]["train"]
        by_method = rescore(run_dir, splits, methods)
        for method, m in by_method.items():
            rows.append(_row(name, method, m, train_s, info["parameters"]))
        details[name] = {"config": info["config"], "model_params": info["model_params"], "run_dir": str(run_dir),
                         "wall_s": round(wall, 1), "epochs_run": info.get("epochs_run"),
                         "metrics_by_score": by_method}
        if export:
            bundle, line = export_int8(run_dir)
            details[name]["export"] = line
            if bundle is not None:
                m = evaluate_run(run_dir, bundle=bundle, variant="int8", report=False)
                m.pop("scores", None)
                rows.append(_row(name, f"{cfg.score} int8", m, train_s, info["parameters"]))
                details[name]["int8"] = m
        print(f"done {name} in {wall:.0f} s", flush=True)
    return rows, details


def run_and_report(spec: Dict[str, Any], items: Sequence[str], base: Dict[str, Any], out_root: Path,
                   export: bool, name: str) -> None:
    """The train_mnist / train_casting tail: sweep the configs, print the table, write the JSON."""
    rows, details = sweep(spec, parse_configs(items, base), out_root, export=export)
    common.print_table(fmt_rows(rows), COLUMNS)
    path = common.write_result(name, {"dataset": spec, "epochs": base["epochs"], "rows": rows, "runs": details})
    print(f"wrote {path}")


def fmt_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rates as percentages with 2 decimals, AUROC with 4, for the printed table."""
    out = []
    for r in rows:
        f = dict(r)
        for k in ("tnr", "tpr", "tpr@tnr95", "tpr@tnr99"):
            f[k] = None if r[k] is None else f"{100 * r[k]:.2f}%"
        f["auroc"] = None if r["auroc"] is None else f"{r['auroc']:.4f}"
        out.append(f)
    return out


def best(rows: Sequence[Dict[str, Any]], key: str = "auroc") -> Optional[Dict[str, Any]]:
    vals = [r for r in rows if r.get(key) is not None]
    return max(vals, key=lambda r: (r[key], r.get("tnr") or 0)) if vals else None


def parse_configs(items: Sequence[str], base: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """``name:key=value,key=value`` strings into (name, FitConfig kwargs); model params go to model_params."""
    model_keys = {"width", "depth", "latent", "k", "skips"}
    out = []
    for item in items:
        name, _, rest = item.partition(":")
        kw = {**base, "model_params": dict(base.get("model_params", {}))}
        for pair in filter(None, rest.split(",")):
            k, v = pair.split("=")
            val: Any = v
            for conv in (int, float):
                try:
                    val = conv(v)
                    break
                except ValueError:
                    continue
            (kw["model_params"] if k in model_keys else kw)[k] = val
        if kw.get("family", "plain") != "superres":
            kw["model_params"].pop("k", None)
        out.append((name, kw))
    return out

