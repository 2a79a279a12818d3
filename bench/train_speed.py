"""Training speed of the autoencoder families at one input size: seconds per epoch on N images.

Issue 2's time bar: the default model on 2,000 images at 128x128 in under 5 minutes on a 2-core
CPU. Random images suffice (the speed does not depend on the pixels). One warm-up epoch on 64 images
builds the graph, then one timed epoch; also CPU seconds, since a shared machine inflates wall time.

    python bench/train_speed.py --size 128 --n 2000 --config plain:width=16,depth=3,latent=16 ...
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import common

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_CONFIGS = ("plain:width=16,depth=3,latent=16", "plain:width=8,depth=3,latent=16",
                   "plain:width=16,depth=4,latent=16", "superres:width=16,depth=3,latent=16,k=2")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="input size, px")
    ap.add_argument("--n", type=int, default=2000, help="training images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=300.0, help="the time bar, s")
    ap.add_argument("--config", action="append", help="FAMILY:key=value,... model params")
    ap.add_argument("--name", default="train_speed")
    args = ap.parse_args()

    import keras
    import numpy as np

    from training.models import build_model, loss_for

    x = np.random.default_rng(0).random((args.n, args.size, args.size, 1), dtype=np.float32)
    rows = []
    for item in args.config or DEFAULT_CONFIGS:
        family, _, rest = item.partition(":")
        params = {k: int(v) for k, v in (p.split("=") for p in filter(None, rest.split(",")))}
        keras.utils.set_random_seed(0)
        model = build_model(family, (args.size, args.size, 1), **params)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_for(family))
        model.fit(x[:64], x[:64], batch_size=args.batch_size, epochs=1, verbose=0)  # graph build, not timed
        t0, c0 = time.perf_counter(), _cpu_s()
        model.fit(x, x, batch_size=args.batch_size, epochs=1, verbose=0)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        rows.append({"config": item, "params": int(model.count_params()), "s_per_epoch": round(wall, 1),
                     "cpu_s_per_epoch": round(cpu, 1), "epochs_in_budget": int(args.budget_s // wall),
                     "s_30_epochs": round(30 * wall)})
        common.print_table(rows[-1:], title=None)
    common.print_table(rows, title=f"{args.n} images {args.size}x{args.size}, batch {args.batch_size}")
    path = common.write_result(args.name, {"size": args.size, "n": args.n, "batch_size": args.batch_size,
                                           "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
