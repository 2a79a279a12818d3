"""Do thresholds calibrated on synthetic anomalies hold on real ones (and the other way round)?

Per dataset (casting ok/def_front, brickwork Negative/Positive), the project's own autoencoder:
``training.train.fit`` with ``FitConfig`` defaults (training.models plain, 64x64 gray, width 16,
depth 3, latent 16, MAE loss, best checkpoint on validation loss) and ``--calibration synthetic``,
on the split ``edge-train fit DATA --anomalies DEFECTS --calib-anomaly-fraction 0.1`` makes
(training.data.dataset_spec, seed 0). Score: mse for casting, max_smooth for brickwork (the better
score of each in BENCHMARKS.md's quality sections). Thresholds, all from the validation normals plus:

* synthetic: what ``edge-train fit --calibration synthetic`` writes: best F1 against one synthetic
  anomaly per validation normal (training.train.calibration_anomaly_scores, training.calibrate);
* real: best F1 (training.calibrate.best_f1) against the held-out calibration defects (10 % of
  the real ones);
* normals: mu + 3 sigma of the same run (no anomalies at all), as the reference;

each evaluated on the held-out test normals against the remaining real defects and against
synthetic anomalies made from the test normals (training.synthetic.synthesize, another seed):
TNR, TPR, and the threshold-free AUROC.

Usage: python bench/synthetic_transfer.py [--data DIR] [--datasets casting,brickwork] [--epochs N]
       [--out DIR] (run directories; a temporary folder by default)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

DATASETS = {
    # name: (normal folder, anomalous folder, FitConfig overrides, max_train)
    "casting": ("casting/train/ok_front", "casting/train/def_front", {"score": "mse"}, 2000),
    "brickwork": ("brickwork-cracks/Negative", "brickwork-cracks/Positive", {"score": "max_smooth", "epochs": 30},
                  None),
}
CALIB_ANOMALY_FRACTION = 0.1
MIN_SYNTHETIC = 200  # synthetic test anomalies, at least


def rates(normal: np.ndarray, anomal: np.ndarray, thr: float) -> dict:
    return {"tnr": float((normal <= thr).mean()), "tpr": float((anomal > thr).mean())}


def run(name: str, base: Path, out: Path, epochs: int, seed: int) -> list:
    from training.calibrate import best_f1
    from training.data import dataset_spec, rebuild_splits
    from training.synthetic import synthesize
    from training.train import FitConfig, fit, load_run, score_keras

    nf, af, overrides, max_train = DATASETS[name]
    cfg = FitConfig(seed=seed, calibration="synthetic", **{**overrides, **({"epochs": epochs} if epochs else {})})
    spec = dataset_spec(str(base / nf), anomalies=str(base / af), calib_anomaly_fraction=CALIB_ANOMALY_FRACTION,
                        seed=seed, max_train=max_train)
    splits = rebuild_splits(spec, cfg.preprocess())
    t0 = time.time()
    info = fit(spec, cfg, out / name, verbose=0, splits=splits)
    train_s = time.time() - t0
    r = load_run(out / name)

    def score(x: np.ndarray) -> np.ndarray:
        return score_keras(r.model, r.scorer, x)[0]

    s_val, sa_cal = score(splits.x_val), score(splits.x_calib_anomalies)
    x_te_normal = splits.x_test[splits.y_test == 0]
    s_te, sa_te = score(x_te_normal), score(splits.x_test[splits.y_test == 1])
    syn_te = score(synthesize(x_te_normal, max(MIN_SYNTHETIC, len(s_te)), seed + 1).images)
    cal = info["calibration"]
    thresholds = (("synthetic", cal["threshold"]), ("real", best_f1(s_val, sa_cal)["threshold"]),
                  ("normals (mu+3sigma)", cal["thresholds"]["mu_k_sigma"]))
    rows = []
    for frm, thr in thresholds:
        for on, anom in (("real", sa_te), ("synthetic", syn_te)):
            rows.append({"dataset": name, "threshold_from": frm, "evaluated_on": on, "threshold": thr,
                         **rates(s_te, anom, thr), "auroc": common.auroc_split(s_te, anom),
                         "n_normal": len(s_te), "n_anomalous": len(anom), "score": cfg.score,
                         "epochs": cfg.epochs, "n_train": len(splits.x_train), "n_val": len(s_val),
                         "n_calib_real": len(sa_cal), "n_calib_synthetic": len(s_val), "train_s": round(train_s, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--datasets", default="casting,brickwork")
    ap.add_argument("--epochs", type=int, default=0, help="0: FitConfig's default (brickwork: 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the run directories")
    a = ap.parse_args()
    base = common.data_dir(a.data)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="synthetic-transfer-"))
    rows = []
    for name in a.datasets.split(","):
        rows += run(name, base, out, a.epochs, a.seed)
        common.print_table(rows, ["dataset", "threshold_from", "evaluated_on", "threshold", "tnr", "tpr", "auroc",
                                  "n_normal", "n_anomalous", "train_s"], digits=3)
    print(common.machine_line())
    print(common.write_result("synthetic_transfer", {"rows": rows, "runs": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
