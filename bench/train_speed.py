"""Training speed of the autoencoder families at one input size: seconds per epoch on N images.

Issue 2's time bar: the default model on 2,000 images at 128x128 in under 5 minutes on a 2-core
CPU. Random images suffice (the speed does not depend on the pixels). One warm-up epoch on 64 images
builds the graph, then --epochs timed epochs; also CPU seconds, since a shared machine inflates wall
time, and the longest wait between an epoch's start and its first batch.

--bn fused (default) trains with ``training.layers.BatchNorm``'s fused kernel; --bn keras with
Keras 3's composite batch norm (what the models used before; the same arithmetic, about 1.4x slower at
128 px).

--feed dataset (default) feeds ``training.pipeline.shuffled_batches``, as ``edge-train fit`` does;
--feed arrays passes the numpy arrays straight to ``fit`` (Keras' own autotuned tf.data), which
waits 15-37 s before the first batch of about every other epoch.

    python bench/train_speed.py --size 128 --n 2000 --config plain:width=16,depth=3,latent=16 ...
    python bench/train_speed.py --epochs 4 --feed arrays --feed dataset --config plain:width=16,depth=3,latent=16
    python bench/train_speed.py --epochs 2 --bn keras --bn fused --config plain:width=16,depth=3,latent=16
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


def _train(model, feed: str, images, batch_size: int, epochs: int, callbacks=()) -> None:
    from training.pipeline import shuffled_batches

    if feed == "arrays":
        model.fit(images, images, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=list(callbacks))
    else:
        ds = shuffled_batches(images, batch_size, 0, lambda b: (b, b))
        model.fit(ds, epochs=epochs, verbose=0, callbacks=list(callbacks), shuffle=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="input size, px")
    ap.add_argument("--n", type=int, default=2000, help="training images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=300.0, help="the time bar, s")
    ap.add_argument("--config", action="append", help="FAMILY:key=value,... model params")
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs")
    ap.add_argument("--feed", action="append", choices=("dataset", "arrays"),
                    help="how fit gets the images (repeatable; default dataset)")
    ap.add_argument("--bn", action="append", choices=("fused", "keras"),
                    help="batch norm's training kernel (repeatable; default fused)")
    ap.add_argument("--name", default="train_speed")
    args = ap.parse_args()

    import keras
    import numpy as np

    from training.layers import BatchNorm
    from training.models import build_model, loss_for

    class FirstBatchWait(keras.callbacks.Callback):
        """Seconds from each epoch's start to its first batch."""

        def __init__(self) -> None:
            super().__init__()
            self.waits: list = []
            self.t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if self.t0 is not None:
                self.waits.append(time.perf_counter() - self.t0)
                self.t0 = None

    x = np.random.default_rng(0).random((args.n, args.size, args.size, 1), dtype=np.float32)
    rows = []
    for item in args.config or DEFAULT_CONFIGS:
        family, _, rest = item.partition(":")
        params = {k: int(v) for k, v in (p.split("=") for p in filter(None, rest.split(",")))}
        for feed, bn in ((f, b) for f in args.feed or ["dataset"] for b in args.bn or ["fused"]):
            BatchNorm.fused = bn == "fused"
            keras.utils.set_random_seed(0)
            model = build_model(family, (args.size, args.size, 1), **params)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_for(family))
            _train(model, feed, x[:64], args.batch_size, 1)  # graph build, not timed
            waits = FirstBatchWait()
            t0, c0 = time.perf_counter(), _cpu_s()
            _train(model, feed, x, args.batch_size, args.epochs, [waits])
            wall, cpu = (time.perf_counter() - t0) / args.epochs, (_cpu_s() - c0) / args.epochs
            rows.append({"config": item, "feed": feed, "bn": bn, "params": int(model.count_params()),
                         "s_per_epoch": round(wall, 1), "cpu_s_per_epoch": round(cpu, 1),
                         "max_first_batch_wait_s": round(max(waits.waits), 1),
                         "epochs_in_budget": int(args.budget_s // wall), "s_30_epochs": round(30 * wall)})
            common.print_table(rows[-1:], title=None)
    common.print_table(rows, title=f"{args.n} images {args.size}x{args.size}, batch {args.batch_size}")
    path = common.write_result(args.name, {"size": args.size, "n": args.n, "batch_size": args.batch_size,
                                           "epochs": args.epochs, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
