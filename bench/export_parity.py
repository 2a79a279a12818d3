"""Export parity on real data: float32 vs int8 through the device code, and the int8 model size.

Usage: python bench/export_parity.py {mnist,casting} --data /work/shared/data --out /tmp/parity [--epochs N]

Trains a stand-in hourglass autoencoder (Conv+BN+MaxPool down, nearest Resizing + Conv up,
sigmoid; MSE score, mu+3 sigma threshold on held-out normals), exports it with
``training.export.export_bundle`` (quant=int8) and prints float32 vs int8 AUROC and TNR/TPR at
each variant's own bundle threshold, as measured by ``edge_detect.detector.Detector``. Use it to
check the export path; the project's own models come from ``edge-train fit`` + ``edge-train export``.

mnist: the reference article's split: train on the training "1"s (10% held out for calibration),
test on the 1,135 test "1"s against the 8,865 other test digits.
casting: train on ok_front (20% held out for validation, 20% for test), test against def_front.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import common
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(root: Path, seed: int):
    from edge_detect.preprocess import Preprocess

    m = root / "mnist"
    xtr, ytr = read_idx(m / "train-images-idx3-ubyte.gz"), read_idx(m / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(m / "t10k-images-idx3-ubyte.gz"), read_idx(m / "t10k-labels-idx1-ubyte.gz")
    pre = Preprocess(size=(28, 28), color="gray")
    ones = pre.batch(list(xtr[ytr == 1]))
    idx = np.random.default_rng(seed).permutation(len(ones))
    n_val = len(ones) // 10
    x_val, x_train = ones[idx[:n_val]], ones[idx[n_val:]]
    x_test = pre.batch(list(xte))
    y_test = (yte != 1).astype(int)
    kinds = [("good" if d == 1 else f"digit{d}") for d in yte]
    return pre, x_train, x_val, x_test, y_test, kinds


def casting(root: Path, seed: int, size: int = 64):
    from edge_detect.preprocess import Preprocess

    pre = Preprocess(size=(size, size), color="gray", resize="area")
    ok = sorted((root / "casting/train/ok_front").glob("*.jpeg"))
    bad = sorted((root / "casting/train/def_front").glob("*.jpeg"))
    idx = np.random.default_rng(seed).permutation(len(ok))
    n = len(ok) // 5
    val, test_ok, train = [ok[i] for i in idx[:n]], [ok[i] for i in idx[n : 2 * n]], [ok[i] for i in idx[2 * n :]]
    x_test = pre.batch(test_ok + bad)
    y_test = np.r_[np.zeros(len(test_ok), int), np.ones(len(bad), int)]
    return pre, pre.batch(train), pre.batch(val), x_test, y_test, None


def hourglass(shape, widths=(16, 32, 32)):
    import keras
    from keras import layers

    inp = keras.Input(shape)
    x = inp
    sizes = []
    for w in widths:
        sizes.append(x.shape[1:3])
        x = layers.Conv2D(w, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(padding="same")(x)
    for w, hw in zip(reversed(widths), reversed(sizes)):
        x = layers.Resizing(int(hw[0]), int(hw[1]), interpolation="nearest")(x)
        x = layers.Conv2D(w, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(shape[-1], 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inp, out)


def mu_sigma(scores: np.ndarray, k: float = 3.0) -> dict:
    s = np.asarray(scores, np.float64)
    return {"method": "mu_sigma", "k": k, "threshold": float(s.mean() + k * s.std()),
            "normal_stats": {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
                             "median": float(np.median(s)), "min": float(s.min()), "max": float(s.max())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["mnist", "casting"])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import keras
    import tensorflow as tf

    from training.export import DataSplits, ExportSpec, export_bundle

    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(a.seed)
    t0 = time.perf_counter()
    pre, x_train, x_val, x_test, y_test, kinds = (mnist if a.dataset == "mnist" else casting)(a.data, a.seed)
    t_data = time.perf_counter() - t0
    model = hourglass(pre.shape)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    model.fit(x_train, x_train, validation_data=(x_val, x_val), epochs=a.epochs, batch_size=64, verbose=2)
    t_fit = time.perf_counter() - t0 - t_data
    spec = ExportSpec(model=model, preprocess=pre, scoring={"kind": "reconstruction", "method": "mse"},
                      calibration={"method": "mu_sigma", "k": 3.0, "threshold": 0.0}, calibrate=mu_sigma,
                      family="plain", name=f"bench-{a.dataset}", model_params={"widths": [16, 32, 32]},
                      training_data={"folder": str(a.data / a.dataset),
                                     "counts": {"train": len(x_train), "validation": len(x_val), "test": len(x_test)}})
    t1 = time.perf_counter()
    res = export_bundle(spec, DataSplits(x_train, x_val, x_test, y_test, kinds), a.out, quant="int8",
                        allow_degraded=True)
    t_export = time.perf_counter() - t1
    m = res.bundle.manifest
    f, q = m["metrics"]["variants"]["float32"], m["metrics"]["variants"]["int8"]
    summary = {
        "dataset": a.dataset, "train": len(x_train), "val": len(x_val), "test": len(x_test),
        "float32": {k: f[k] for k in ("auroc", "tnr", "tpr")}, "int8": {k: q[k] for k in ("auroc", "tnr", "tpr")},
        "delta_auroc": q["auroc"] - f["auroc"], "delta_tnr_points": 100 * (q["tnr"] - f["tnr"]),
        "delta_tpr_points": 100 * (q["tpr"] - f["tpr"]),
        "int8_bytes": m["variants"]["int8"]["size_bytes"], "int8_io_bytes": m["variants"]["int8_io"]["size_bytes"],
        "pearson_test": m["variants"]["int8"]["parity"]["splits"]["test"]["correlation"]["pearson"],
        "parity_passed": m["export"]["parity_passed"],
        "seconds": {"data": round(t_data, 1), "fit": round(t_fit, 1), "export": round(t_export, 1)},
    }
    print(json.dumps(summary, indent=2))
    print(common.write_result(f"export_parity_{a.dataset}", summary))


if __name__ == "__main__":
    main()
