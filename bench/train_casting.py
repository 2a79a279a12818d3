"""Casting impellers (ok_front vs def_front) with the autoencoder families (issue 2's second bar),
and the training-time bar (--max-train 2000 --input-size 128).

Protocol: train on ok_front only; 10 % of ok_front (seed 0) is the validation split (threshold
mu + 3 sigma), 20 % the held-out test normals; def_front is the test anomalies. Prints one row per
(model, score method) and writes bench/results/train_casting-DATE.json.

    python bench/train_casting.py [DATA] --models plain --input-size 64 --epochs 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
import train_common


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="data root (default ../shared/data); uses DATA/casting/train")
    ap.add_argument("--models", default="plain")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train", type=int, help="train on at most this many ok images (timing bar: 2000)")
    ap.add_argument("--scores", default=",".join(train_common.SCORES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    a = ap.parse_args(argv)
    root = common.data_dir(a.data, "casting/train", "DATA")

    from training.data import dataset_spec
    from training.train import FitConfig

    spec = dataset_spec(str(root / "ok_front"), layout="folders", anomalies=str(root / "def_front"),
                        val_fraction=0.1, test_fraction=0.2, seed=a.seed, max_train=a.max_train)
    cfgs = []
    for family in a.models.split(","):
        params = {"width": a.width, "depth": a.depth, "latent": a.latent}
        if family == "superres":
            params["k"] = 2
        cfgs.append(FitConfig(family=family, input_size=a.input_size, epochs=a.epochs, batch_size=a.batch_size,
                              seed=a.seed, model_params=params))
    rows = train_common.fit_and_score(spec, cfgs, common.RESULTS_DIR / "train_casting", a.scores.split(","))
    print("\nall runs (threshold mu+3sigma of the validation ok images)")
    train_common.print_rows(rows)
    path = common.write_result("train_casting" + (f"_{a.tag}" if a.tag else ""),
                               {"protocol": "casting ok_front 70/10/20 train/val/test vs def_front, mu+3sigma",
                                "spec": spec, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
