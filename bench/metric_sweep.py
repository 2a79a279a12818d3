"""Choose the metric embedder's head, alpha and embedding size on MNIST vs the Fashion-MNIST dev slice.

Each configuration trains the small CNN on 55,000 training digits (5,000 held out), builds the LOF
reference from 20,000 training embeddings (float Keras, host-side normalisation) and reports
MNIST-test-judged-normal / Fashion-judged-abnormal at the bundle's rule (quantile 1 - c of the
held-out normals' scores) and the AUROC. The chosen configuration is then exported to int8 and
measured through the device path by bench/metric_mnist.py.

    python bench/metric_sweep.py --configs flatten:16:64,gap:16:64 [--epochs 3] [--n-val 5000] [--max-reference 20000]
"""

from __future__ import annotations

import argparse
import time
from typing import List, Optional

import common
import numpy as np
from metric_mnist import auroc, load, rates, to_input

from edge_detect.preprocess import Preprocess


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--configs", default="flatten:16:64,gap:16:64", help="head:alpha:embed_dim,...")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-val", type=int, default=5000, help="training digits held out for the threshold")
    ap.add_argument("--max-reference", type=int, default=20000, help="training embeddings in the LOF reference")
    ap.add_argument("--name", default="metric_sweep", help="result file bench/results/NAME-<date>.json")
    args = ap.parse_args(argv)
    from training import metric

    d = load(common.data_dir(args.data))
    pp = Preprocess(size=(28, 28), color="gray")
    x, y = to_input(pp, d["x_train"]), d["y_train"].astype(np.int64)
    perm = np.random.default_rng(args.seed).permutation(len(x))
    val, tr = perm[: args.n_val], perm[args.n_val :]
    ref = tr[: args.max_reference]
    x_test, x_fash = to_input(pp, d["x_test"]), to_input(pp, d["x_fashion"])
    rows = []
    for c in args.configs.split(","):
        head, alpha, dim = c.split(":")
        cfg = metric.MetricConfig(head=head, alpha=float(alpha), embed_dim=int(dim), width=args.width,
                                  epochs=args.epochs, seed=args.seed, class_names=[str(i) for i in range(10)],
                                  scorer="lof")  # the sweep compares embeddings under one scorer: LOF's
        t0 = time.time()
        model, hist = metric.train_embedder(x[tr], y[tr], 10, cfg, x[val], y[val], verbose=2)
        secs = time.time() - t0
        scorer, _ = metric.build_scorer(metric.embed(model, x[ref]), y[ref], cfg)
        sv, st, sf = (scorer(None, metric.embed(model, a))[0] for a in (x[val], x_test, x_fash))
        row = {"head": head, "alpha": float(alpha), "embed_dim": int(dim), "val_acc": hist["val_accuracy"][-1],
               "auroc": auroc(st, sf), "train_s": secs}
        for cont in (0.001, 0.01):
            r = rates(st, sf, float(np.quantile(sv, 1 - cont)))
            row.update({f"c{cont}_mnist_normal": r["mnist_normal"], f"c{cont}_fashion_abnormal": r["fashion_abnormal"]})
        rows.append(row)
        common.print_table(rows)
    print("wrote", common.write_result(args.name, {"rows": rows, "epochs": args.epochs, "width": args.width}))


if __name__ == "__main__":
    main()
