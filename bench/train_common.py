"""What the training benches share: fit a list of configurations on one loaded dataset and score
every reconstruction method from the same reconstructions (one training, four score columns).

Used by bench/train_mnist.py and bench/train_casting.py. Results go through common.write_result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SCORES = ("mse", "mae", "ssim", "max_smooth")


def fit_and_score(spec: Dict[str, Any], cfgs: Sequence[Any], out_root: Path, scores: Sequence[str] = SCORES,
                  k: float = 3.0) -> List[Dict[str, Any]]:
    """Train every FitConfig in ``cfgs`` (data loaded once per preprocessing), then score each score method.

    Threshold per method: mu + k*sigma of that method's validation-normal scores (the issue's protocol).
    Returns one row per (config, score method).
    """
    from edge_detect.scoring import ReconstructionScorer
    from training import calibrate as cal
    from training.data import rebuild_splits
    from training.metrics import evaluate
    from training.train import fit, load_run, predict

    rows: List[Dict[str, Any]] = []
    cache: Dict[Any, Any] = {}
    for cfg in cfgs:
        pre = cfg.preprocess()
        key = tuple(sorted(pre.to_dict().items(), key=lambda kv: kv[0]).__repr__())
        if key not in cache:
            t0 = time.perf_counter()
            cache.clear()  # one dataset in memory at a time
            cache[key] = (rebuild_splits(spec, pre), time.perf_counter() - t0)
        splits, t_load = cache[key]
        name = run_name(cfg)
        out = out_root / name
        t0 = time.perf_counter()
        info = fit(spec, cfg, out, verbose=0, splits=splits)
        t_fit = time.perf_counter() - t0
        run = load_run(out)
        r_val, r_test = predict(run.model, splits.x_val), predict(run.model, splits.x_test)
        for method in scores:
            sc = ReconstructionScorer(method, cfg.smooth)
            val = sc(splits.x_val, r_val)[0]
            test = sc(splits.x_test, r_test)[0]
            c = cal.calibrate(val, "mu_k_sigma", k=k)
            m = evaluate(test, splits.y_test, c["threshold"])
            rows.append({
                "run": name, "model": cfg.family, "size": cfg.input_size, **_params(cfg), "score": method,
                "params": info["parameters"], "epochs": len(info["history"].get("loss", [])),
                "train_s": info["timing_s"]["train"], "fit_s": round(t_fit, 1), "load_s": round(t_load, 1),
                "n_train": info["data_summary"]["counts"]["train"], "n_val": info["data_summary"]["counts"]["val"],
                "n_test_normal": m["n_normal"], "n_test_anomalous": m["n_anomalous"],
                "tnr": m["tnr"], "tpr": m["tpr"], "auroc": m["auroc"], "aupr": m["aupr"],
                "tpr_at_tnr_0.95": m["tpr_at_tnr_0.95"], "tpr_at_tnr_0.99": m["tpr_at_tnr_0.99"],
                "threshold": c["threshold"], "best_val_loss": min(info["history"].get("val_loss", [np.nan])),
            })
        print_rows([r for r in rows if r["run"] == name], title=name)
    return rows


def _params(cfg: Any) -> Dict[str, Any]:
    p = cfg.model_params
    out = {"width": p.get("width"), "depth": p.get("depth"), "latent": p.get("latent")}
    if cfg.family == "superres":
        out["k"] = p.get("k")
    if cfg.family == "denoising":
        out["noise"] = f"{cfg.noise}:{cfg.noise_strength:g}"
    return out


def run_name(cfg: Any) -> str:
    p = cfg.model_params
    return f"{cfg.family}-{cfg.input_size}-w{p.get('width')}-d{p.get('depth')}-l{p.get('latent')}-e{cfg.epochs}"


COLUMNS = ("run", "score", "params", "epochs", "train_s", "tnr", "tpr", "auroc", "aupr", "tpr_at_tnr_0.95")


def print_rows(rows: Sequence[Dict[str, Any]], title: Optional[str] = None, markdown: bool = False) -> None:
    import common

    pct = ("tnr", "tpr", "tpr_at_tnr_0.95")
    shown = [{c: (f"{100 * r[c]:.2f}%" if c in pct and r.get(c) is not None else r.get(c)) for c in COLUMNS}
             for r in rows]
    if title:
        print(f"\n{title}")
    print(common.format_table(shown, COLUMNS, digits=4, markdown=markdown), flush=True)
