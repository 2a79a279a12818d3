"""One-pass explainer vs per-image Ano-Unet: pixel AUROC / PRO on images with ground-truth masks.

The real datasets here (casting, brickwork cracks) have no pixel masks, so the test images are
held-out normals with synthetic anomalies (training.synthetic), whose masks are exact; foreign
objects come from the other dataset. 64x64 gray.

* per-image: training.explain.AnoUnet against a metric embedder F trained here with outlier
  exposure (training.metric.fit_metric; aux = training.synthetic.outlier_exposure of the normals),
  C = mean normal embedding; heatmap |x - G(x)|.
* one-pass: training.explain.fit_one_pass on the normals + fresh synthetic anomalies, run as the
  int8 TFLite through LiteRT (what the device would run); the Keras float model's numbers too.

Usage: python bench/explain_compare.py [--data DIR] [--datasets casting,brickwork] [--n-test 12]
       [--n-train N] [--n-val 40] [--per-image-epochs 150] [--one-pass-epochs 20] [--one-pass-per-epoch 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

DATASETS = {"casting": ("casting/train/ok_front", "brickwork-cracks/Negative", 600),
            "brickwork": ("brickwork-cracks/Negative", "casting/train/ok_front", 300)}


def run(name: str, base: Path, a: argparse.Namespace) -> dict:
    from edge_detect.preprocess import Preprocess
    from training.explain import (
        AnoUnet,
        OnePass,
        OnePassConfig,
        PerImageConfig,
        fit_one_pass,
        load_metric_embedder,
        representative_set,
        save_explainer,
    )
    from training.metric import MetricConfig, fit_metric
    from training.pixel_metrics import pixel_metrics
    from training.synthetic import load_foreign, outlier_exposure, synthesize

    nf, ff, n_tr = DATASETS[name]
    pre = Preprocess(size=(64, 64), color="gray")
    tr, va, te = common.split_files(base / nf, [a.n_train or n_tr, a.n_val, a.n_test], a.seed)
    x_tr, x_va, x_te = pre.batch(tr), pre.batch(va), pre.batch(te)
    foreign = load_foreign(base / ff, limit=64, seed=a.seed)
    test = synthesize(x_te, a.n_test, seed=a.seed + 7, foreign=foreign)
    work = Path(tempfile.mkdtemp(prefix=f"explain-{name}-"))
    out = {"dataset": name, "n_test": a.n_test, "n_train": len(x_tr)}

    t0 = time.time()
    cfg = OnePassConfig(epochs=a.one_pass_epochs, per_epoch=a.one_pass_per_epoch, seed=a.seed)
    model, summary = fit_one_pass(x_tr, cfg, foreign)
    save_explainer(work / "explainer", model, pre, summary, representative_set(x_tr, 200, foreign, seed=a.seed + 3))
    out["one_pass_train_s"] = round(time.time() - t0, 1)
    out["one_pass_epochs"], out["one_pass_per_epoch"] = a.one_pass_epochs, a.one_pass_per_epoch
    one = OnePass(work / "explainer")
    t0 = time.perf_counter()
    maps1 = np.stack([one.explain(x[None])[0] for x in test.images])
    out["one_pass_ms_per_image"] = round((time.perf_counter() - t0) / a.n_test * 1e3, 2)
    out["one_pass"] = pixel_metrics(maps1, test.masks)
    out["one_pass_keras"] = pixel_metrics(OnePass(work / "explainer", use_tflite=False).explain(test.images),
                                          test.masks)

    t0 = time.time()
    aux, _ = outlier_exposure(x_tr, len(x_tr), seed=a.seed + 1, foreign=foreign)
    fit_metric(work / "metric", MetricConfig(epochs=a.metric_epochs, width=16, embed_dim=32, batch_size=64,
                                             seed=a.seed), x_tr, None, x_va, x_aux=aux, verbose=0)
    out["metric_train_s"] = round(time.time() - t0, 1)
    f, c, _ = load_metric_embedder(work / "metric")
    ano = AnoUnet(f, c, PerImageConfig(epochs=a.per_image_epochs, beta=a.beta, seed=a.seed))
    maps2, secs = [], []
    for x in test.images:
        h, _, info = ano.explain(x)
        maps2.append(h)
        secs.append(info["seconds"])
    out["per_image_s_per_image"] = round(float(np.mean(secs)), 2)
    out["per_image"] = pixel_metrics(np.stack(maps2), test.masks)
    out["per_image_epochs"], out["beta"] = a.per_image_epochs, a.beta
    out["kinds"] = test.kinds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--datasets", default="casting,brickwork")
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--n-train", type=int, default=0, help="normal training images; 0: the dataset's (600 or 300)")
    ap.add_argument("--n-val", type=int, default=40, help="normal validation images (the metric embedder's)")
    ap.add_argument("--per-image-epochs", type=int, default=150)
    ap.add_argument("--beta", type=float, default=60.0)
    ap.add_argument("--one-pass-epochs", type=int, default=20)
    ap.add_argument("--one-pass-per-epoch", type=int, default=512, help="images per one-pass epoch")
    ap.add_argument("--metric-epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = common.data_dir(a.data)
    results, rows = [], []
    for name in a.datasets.split(","):
        r = run(name, base, a)
        results.append(r)
        for m, label in (("one_pass", "one-pass (int8)"), ("one_pass_keras", "one-pass (Keras float)"),
                         ("per_image", "per-image")):
            t = {"one_pass": f"{r['one_pass_ms_per_image']} ms", "one_pass_keras": "-",
                 "per_image": f"{r['per_image_s_per_image']} s"}[m]
            rows.append({"dataset": name, "method": label, "pixel_auroc": r[m]["pixel_auroc"],
                         "pro@0.3": r[m]["pro"], "time_per_image": t})
        common.print_table(rows, digits=3)
    print(common.machine_line())
    print(common.write_result("explain_compare", {"results": results, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
