"""Do thresholds calibrated on synthetic anomalies hold on real ones (and the other way round)?

Per dataset (casting ok/def_front, brickwork Negative/Positive), 64x64 gray, a small autoencoder
(training.models' plain family) trained on normals, score = max of the 5 px box-smoothed |error| (max_smooth):

* synthetic -> real: best-F1 threshold between normal calibration images and synthetic anomalies
  made from them (training.synthetic.synthetic_calibration); TNR / TPR on held-out real normals /
  real defects;
* real -> synthetic: best-F1 threshold between the same normals and real calibration defects;
  TNR / TPR on held-out normals / synthetic anomalies made from those held-out normals;
* real -> real and synthetic -> synthetic as references, and image AUROC on both test sets.

Foreign objects for one dataset come from the other dataset's folder.
Usage: python bench/synthetic_transfer.py [--data DIR] [--datasets casting,brickwork] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import numpy as np

DATASETS = {
    # name: (normal folder, anomalous folder, foreign folder, normal train/cal/test, anomalous cal/test, epochs)
    "casting": ("casting/train/ok_front", "casting/train/def_front", "brickwork-cracks/Negative",
                (800, 200, 300), (150, 300), 6),
    "brickwork": ("brickwork-cracks/Negative", "brickwork-cracks/Positive", "casting/train/ok_front",
                  (150, 100, 100), (100, 250), 15),
}


def rates(normal: np.ndarray, anomal: np.ndarray, thr: float) -> dict:
    return {"tnr": float((normal <= thr).mean()), "tpr": float((anomal > thr).mean())}


auroc = common.auroc_split

def run(name: str, base, epochs: int, seed: int) -> list:
    from edge_detect.preprocess import Preprocess
    from edge_detect.scoring import reconstruction_scores
    from training.synthetic import best_f1_threshold, load_foreign, synthesize, synthetic_calibration

    nf, af, ff, (n_tr, n_cal, n_te), (a_cal, a_te), ep = DATASETS[name]
    ep = epochs or ep
    pre = Preprocess(size=(64, 64), color="gray")
    tr, cal, te = common.split_files(base / nf, [n_tr, n_cal, n_te], seed)
    acal, ate = common.split_files(base / af, [a_cal, a_te], seed)
    x_tr, x_cal, x_te, xa_cal, xa_te = (pre.batch(f) for f in (tr, cal, te, acal, ate))
    foreign = load_foreign(base / ff, limit=64, seed=seed)
    t0 = time.time()
    model = common.train_ae(x_tr, ep, seed, width=16, depth=3)
    train_s = time.time() - t0

    def score(x: np.ndarray) -> np.ndarray:
        y = model.predict(x, batch_size=64, verbose=0)
        return reconstruction_scores(x, y, "max_smooth", 5)[0]

    s_cal, s_te, sa_cal, sa_te = score(x_cal), score(x_te), score(xa_cal), score(xa_te)
    syn_cal = synthetic_calibration(score, x_cal, n=len(x_cal), seed=seed, foreign=foreign)
    syn_te = score(synthesize(x_te, len(x_te), seed + 1, foreign=foreign).images)
    t_syn = syn_cal["threshold"]
    t_real, _ = best_f1_threshold(s_cal, sa_cal)
    rows = []
    for frm, thr in (("synthetic", t_syn), ("real", t_real)):
        for on, anom in (("real", sa_te), ("synthetic", syn_te)):
            rows.append({"dataset": name, "threshold_from": frm, "evaluated_on": on, "threshold": thr,
                         **rates(s_te, anom, thr), "auroc": auroc(s_te, anom), "n_normal": len(s_te),
                         "n_anomalous": len(anom), "train_s": round(train_s, 1), "epochs": ep})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--datasets", default="casting,brickwork")
    ap.add_argument("--epochs", type=int, default=0, help="0: the per-dataset default")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = common.data_dir(a.data)
    rows = []
    for name in a.datasets.split(","):
        rows += run(name, base, a.epochs, a.seed)
        common.print_table(rows, ["dataset", "threshold_from", "evaluated_on", "threshold", "tnr", "tpr", "auroc",
                                  "n_normal", "n_anomalous", "train_s"], digits=3)
    print(common.machine_line())
    print(common.write_result("synthetic_transfer", {"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
