"""Casting impellers: train on ok_front only, test def_front against held-out ok_front.

Usage: python bench/train_casting.py [--data DIR] [--out runs/bench-casting] [--epochs N] [--export]
       [--config NAME:family=plain,input_size=64,latent=4 ...]

The plain-folders layout: DATA = casting/train/ok_front (10% held out as validation normals for
mu+3 sigma, 20% as test normals), --anomalies casting/train/def_front (all test anomalies). Every
config is scored with each score method (own threshold); --export adds the int8 variant through
the device code. Prints a table; writes bench/results/train_casting-<date>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import train_sweep

DEFAULT_CONFIGS = (
    "plain-64:family=plain,input_size=64",
    "plain-128:family=plain,input_size=128",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="The casting folder (default ../shared/data/casting).")
    ap.add_argument("--out", default="runs/bench-casting", help="Parent of the run directories.")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, help="Use at most this many training images.")
    ap.add_argument("--export", action="store_true", help="Also export int8 and evaluate it with the device code.")
    ap.add_argument("--config", action="append", help="NAME:key=value,... (FitConfig fields or model params).")
    ap.add_argument("--name", default="train_casting", help="Result file name.")
    args = ap.parse_args()

    from training.data import dataset_spec

    root = common.data_dir(args.data, None if args.data else "casting")
    spec = dataset_spec(str(root / "train" / "ok_front"), anomalies=str(root / "train" / "def_front"),
                        val_fraction=0.1, test_fraction=0.2, seed=args.seed, max_train=args.max_train)
    base = {"epochs": args.epochs, "seed": args.seed, "score": "mse"}
    train_sweep.run_and_report(spec, args.config or DEFAULT_CONFIGS, base, Path(args.out), args.export, args.name)


if __name__ == "__main__":
    main()
