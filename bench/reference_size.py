"""How far a metric run's reference set can shrink: AUROC and TPR per reference-set size.

Re-scores one ``edge-train fit --model metric`` run (Keras float32 embeddings, its own split) with
the reference set reduced to each size by the run's ``--reduce`` method; 0 keeps every training
embedding. The threshold column is the run's contamination quantile of the validation scores.

    python bench/reference_size.py bench/results/demo-run/run --sizes 0,1024,512,256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import common
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a metric run directory (edge-train fit --model metric)")
    ap.add_argument("--sizes", default="0,1024,512,256", help="comma-separated sizes (0: all)")
    ap.add_argument("--name", default="reference_size")
    args = ap.parse_args()

    from edge_detect.preprocess import Preprocess
    from training import metric
    from training.data import rebuild_splits

    run = Path(args.run)
    model, cfg, _ = metric.load_run(run)
    info = json.loads((run / "run.json").read_text())
    sp = rebuild_splits(info["dataset"], Preprocess.from_dict(info["preprocess"]))
    if sp.y_test is None or not sp.y_test.any():
        raise SystemExit(f"{run}: the run has no labelled anomalies to measure against")
    emb, labels = metric.load_reference(run)
    ev, et = (metric.embed(model, x, cfg.l2) for x in (sp.x_val, sp.x_test))
    y = sp.y_test.astype(bool)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        scorer, _ = metric.build_scorer(emb, labels, dataclasses.replace(cfg, reference_size=size or None))
        v, t = scorer(None, ev)[0], scorer(None, et)[0]
        thr = float(np.quantile(v, 1 - cfg.contamination))
        neg, pos = t[~y], t[y]
        rows.append({"references": len(scorer.arrays()["reference"]), "auroc": common.auroc_split(neg, pos),
                     "tpr_at_tnr95": float((pos > np.quantile(neg, 0.95)).mean()),
                     "tnr": float((neg <= thr).mean()), "tpr": float((pos > thr).mean())})
    common.print_table(rows)
    print("wrote", common.write_result(args.name, {"run": str(run), "rows": rows}))


if __name__ == "__main__":
    main()
