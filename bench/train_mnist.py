"""MNIST "1" vs rest: train on the training ones, test the 1,135 test ones against the 8,865 others.

Usage: python bench/train_mnist.py [--data DIR] [--out runs/bench-mnist] [--epochs N] [--export] [--val-fraction F]
       [--config NAME:family=superres,input_size=28,depth=2,latent=16 ...]

The reference article's protocol: the training-set ones (6,742) are split 90/10 (seed 0); the
threshold is mu + 3 sigma of the 10 % validation ones' scores, never of the test set. Every config
is scored with each score method (own threshold); --export adds the int8 variant through the
device code. Prints a table; writes bench/results/train_mnist-<date>.json (or --name).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import train_sweep

# 28 px needs no resize; two pooling levels keep 7x7 at the bottleneck.
DEFAULT_CONFIGS = (
    "plain:family=plain,input_size=28,width=16,depth=2,latent=16",
    "denoising:family=denoising,input_size=28,width=16,depth=2,latent=16,noise_strength=0.2",
    "superres:family=superres,input_size=28,width=16,depth=2,latent=16,k=2",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="The mnist folder of IDX .gz files (default ../shared/data/mnist).")
    ap.add_argument("--out", default="runs/bench-mnist", help="Parent of the run directories.")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="Split seed, and the training seed unless a config sets seed=.")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="Share of the training ones held out for mu + 3 sigma (the reference: 0.1).")
    ap.add_argument("--export", action="store_true", help="Also export int8 and evaluate it with the device code.")
    ap.add_argument("--config", action="append", help="NAME:key=value,... (FitConfig fields or model params).")
    ap.add_argument("--name", default="train_mnist", help="Result file name.")
    args = ap.parse_args()

    from training.data import dataset_spec

    root = common.data_dir(args.data, None if args.data else "mnist")
    spec = dataset_spec(str(root), layout="idx", normal_classes=["1"],
                        val_fraction=args.val_fraction, seed=args.seed)
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "score": "mse"}
    train_sweep.run_and_report(spec, args.config or DEFAULT_CONFIGS, base, Path(args.out), args.export, args.name)


if __name__ == "__main__":
    main()
