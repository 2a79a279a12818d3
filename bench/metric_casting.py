"""Metric learning with outlier exposure on casting impellers: AUROC of def_front vs held-out ok_front.

The embedder learns ok_front (normal) against auxiliary "other" images that are NOT defects:
* ``--aux brickwork``: the brickwork-cracks photos (an unrelated folder, as ``--aux DIR``);
* ``--aux synthetic``: synthetic anomalies made from the ok_front training images themselves
  (training.synthetic.outlier_exposure, foreign patches from brickwork).
def_front is never seen in training. The int8 bundle is exported through training.export and the
test split is scored through edge_detect.detector.Detector (the path of ``edge-detect score``).

    python bench/metric_casting.py [--data DIR] [--aux brickwork|synthetic] [--size 64] [--epochs 6] [--scorer lof|knn]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

import common
import numpy as np
from metric_mnist import auroc

from edge_detect.neighbors import KNNScorer
from edge_detect.preprocess import Preprocess


def files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def tpr_at_tnr(neg: np.ndarray, pos: np.ndarray, tnr: float = 0.95) -> float:
    return float((pos > np.quantile(neg, tnr)).mean())


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="shared data folder (default ../shared/data)")
    ap.add_argument("--aux", default="brickwork", choices=("brickwork", "synthetic", "both"))
    ap.add_argument("--head", default="gap", choices=("gap", "flatten"))
    ap.add_argument("--size", type=int, default=64, help="input size, px")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", default="lof", choices=("lof", "knn"),
                    help="the bundle's scorer (lof: the one this section's tables were measured with)")
    ap.add_argument("--work", default=str(common.RESULTS_DIR / "metric_casting"))
    args = ap.parse_args(argv)
    data = common.data_dir(args.data)
    pp = Preprocess(size=(args.size, args.size), color="gray", resize="area")
    t0 = time.time()
    ok = pp.batch(files(data / "casting" / "train" / "ok_front"))
    bad = pp.batch(files(data / "casting" / "train" / "def_front"))
    brick_dir = data / "brickwork-cracks"
    print(f"loaded {len(ok)} ok, {len(bad)} def in {time.time() - t0:.1f} s")
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(ok))
    n_test, n_val = int(0.2 * len(ok)), int(0.1 * len(ok))
    test_ok, val, train = ok[perm[:n_test]], ok[perm[n_test : n_test + n_val]], ok[perm[n_test + n_val :]]
    parts_aux = []
    if args.aux in ("brickwork", "both"):
        parts_aux.append(pp.batch(files(brick_dir / "Negative") + files(brick_dir / "Positive")))
    if args.aux in ("synthetic", "both"):
        from training.synthetic import outlier_exposure

        parts_aux.append(outlier_exposure(train, len(train) // 2, seed=args.seed, foreign=brick_dir)[0])
    aux = np.concatenate(parts_aux)

    from training import export as E
    from training import metric

    tag = f"{args.aux}-{args.size}" + ("" if args.head == "gap" else f"-{args.head}")
    run = Path(args.work) / f"run-{tag}"
    cfg = metric.MetricConfig(embed_dim=args.embed_dim, alpha=args.alpha, width=args.width, epochs=args.epochs,
                              head=args.head, scorer=args.scorer, batch_size=64, seed=args.seed, contamination=0.01)
    t0 = time.time()
    fit = metric.fit_metric(run, cfg, train, None, val, None, aux, verbose=2)
    train_s = time.time() - t0
    model, cfg, shape = metric.load_run(run)
    parts = metric.export_parts(run, model, cfg, shape, train)
    x_test = np.concatenate([test_ok, bad])
    y_test = np.concatenate([np.zeros(len(test_ok)), np.ones(len(bad))]).astype(np.int64)
    spec = E.ExportSpec(model=parts["model"], preprocess=pp, scoring=parts["scoring"],
                        calibration=fit["calibration"], calibrate=parts["calibrate"], family="metric",
                        name=f"metric-casting-{args.aux}", model_params=parts["model_params"],
                        rebuild=parts["rebuild"], arrays=parts["arrays"], reference=parts["reference"])
    bundle = Path(args.work) / f"bundle-{tag}"
    E.export_bundle(spec, E.DataSplits(train, val, x_test, y_test), bundle, quant="int8", allow_degraded=True,
                    echo=print)

    from edge_detect.detector import Detector

    rows = []
    for variant in ("float32", "int8"):
        det = Detector(bundle, variant=variant, num_threads=1)
        s, _, emb = det.infer(x_test)
        neg, pos = s[y_test == 0], s[y_test == 1]
        rows.append({"aux": args.aux, "size": args.size, "variant": variant, "scorer": f"{args.scorer} (bundle)",
                     "auroc": auroc(neg, pos), "tpr@tnr95": tpr_at_tnr(neg, pos),
                     "tnr@thr": float((neg <= det.threshold).mean()), "tpr@thr": float((pos > det.threshold).mean())})
        # kNN over the same references the bundle's LOF uses: this variant's own embeddings.
        knn = KNNScorer(k=5, reference=det.scorer.reference, normalize=det.scorer.normalize, scale=det.scorer.scale)
        s2 = knn(None, emb)[0]
        rows.append({"aux": args.aux, "size": args.size, "variant": variant, "scorer": "knn k=5",
                     "auroc": auroc(s2[y_test == 0], s2[y_test == 1]),
                     "tpr@tnr95": tpr_at_tnr(s2[y_test == 0], s2[y_test == 1])})
    common.print_table(rows)
    print("wrote", common.write_result(f"metric_casting_{tag.replace('-', '_')}",
                                       {"rows": rows, "train_seconds": train_s, "config": cfg.__dict__,
                                        "n": {"train": len(train), "val": len(val), "test_ok": len(test_ok),
                                              "test_def": len(bad), "aux": len(aux)}}))


if __name__ == "__main__":
    main()
