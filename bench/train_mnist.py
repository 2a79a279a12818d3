"""MNIST "1" vs rest with the autoencoder families (issue 2's first bar).

Protocol (the reference article's split): train on the training-set ones, with a validation split
of them (10 %, seed 0) held out; threshold mu + 3 sigma of the validation scores; test on the 1,135
test ones (normal) against the 8,865 other test digits. Prints one row per (model, score method)
and writes bench/results/train_mnist-DATE.json.

    python bench/train_mnist.py [DATA] --models plain,denoising,superres --epochs 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
import train_common


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="data root (default ../shared/data); uses DATA/mnist")
    ap.add_argument("--models", default="plain,denoising,superres")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--input-size", type=int, default=28)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--superres-factor", type=int, default=2)
    ap.add_argument("--noise", default="gaussian")
    ap.add_argument("--noise-strength", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="plain only: width x latent x depth grid")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    a = ap.parse_args(argv)
    data = common.data_dir(a.data, "mnist", "DATA")

    from training.data import dataset_spec
    from training.train import FitConfig

    spec = dataset_spec(str(data), layout="idx", normal_classes=["1"], val_fraction=0.1, seed=a.seed)

    def cfg(family: str, width: int, depth: int, latent: int) -> FitConfig:
        params = {"width": width, "depth": depth, "latent": latent}
        if family == "superres":
            params["k"] = a.superres_factor
        return FitConfig(family=family, input_size=a.input_size, epochs=a.epochs, batch_size=a.batch_size,
                         seed=a.seed, noise=a.noise, noise_strength=a.noise_strength, model_params=params)

    if a.sweep:
        cfgs = [cfg("plain", w, d, lat) for w in (8, 16, 32) for d in (2,) for lat in (4, 16, 64)]
    else:
        cfgs = [cfg(f, a.width, a.depth, a.latent) for f in a.models.split(",")]
    out_root = common.RESULTS_DIR / "train_mnist"
    rows = train_common.fit_and_score(spec, cfgs, out_root)
    print("\nall runs (threshold mu+3sigma of the validation ones)")
    train_common.print_rows(rows)
    path = common.write_result("train_mnist" + (f"_{a.tag}" if a.tag else ""),
                               {"protocol": "MNIST 1 vs rest, mu+3sigma from 10% validation of training ones",
                                "spec": spec, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
