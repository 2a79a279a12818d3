"""tf.data input for ``keras.Model.fit``: shuffled batches from in-memory arrays, without autotuning.

Why not numpy arrays straight into ``fit``, or ``prefetch(AUTOTUNE)``: both start tf.data's
autotuning thread, which is only stopped when an epoch's iterator is destroyed, and the
destructor waits out that thread's sleep (gdb: ``RootDataset::Iterator::~Iterator`` waiting on
``Model::OptimizeLoop``). On a 2-core CPU that was 15-37 s before the first batch of about half
the epochs: 10-45 % of a training run (docs/BENCHMARKS.md, "Training time"). These pipelines are
tiny, so a fixed prefetch of 2 batches loses nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Optional


def untuned(ds: Any) -> Any:
    """``ds`` with tf.data autotuning switched off (no tuning thread to wait for)."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.autotune.enabled = False
    return ds.with_options(opts)


def in_order_batches(arrays: Any, batch_size: int) -> Any:
    """Batches of ``arrays`` (an array or a tuple of equally long ones) in order, for ``validation_data``.

    Arrays there would go through Keras's array adapter, whose parallel map also starts the
    autotuning thread and, on TF 2.21, prints an "E0000 ... use_unbounded_threadpool" line.
    """
    import tensorflow as tf

    return untuned(tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size).prefetch(2))


def shuffled_batches(arrays: Any, batch_size: int, seed: int, map_fn: Optional[Callable[..., Any]] = None) -> Any:
    """Batches of ``arrays`` (an array or a tuple of equally long ones), reshuffled every epoch from ``seed``.

    Only the indices go through the shuffle buffer, and each batch is gathered from one copy of
    the data: a buffer of the images themselves would copy every image every epoch (2.5 GB of
    224 px RGB took 17 s before the first batch). The order is the one ``shuffle`` would give the
    images. map_fn: applied per batch (e.g. ``x -> (x, x)`` for an autoencoder's target).
    """
    import tensorflow as tf

    parts = arrays if isinstance(arrays, tuple) else (arrays,)
    tensors = tuple(tf.convert_to_tensor(a) for a in parts)

    def gather(idx):
        out = tuple(tf.gather(t, idx) for t in tensors)
        return out if isinstance(arrays, tuple) else out[0]

    ds = tf.data.Dataset.range(len(parts[0])).shuffle(len(parts[0]), seed=seed).batch(batch_size).map(gather)
    if map_fn is not None:
        ds = ds.map(map_fn)
    return untuned(ds.prefetch(2))
