"""A small convolutional autoencoder for the heatmap / synthetic-anomaly benches.

The training engineer's model families (training/models.py) were not in the tree when these
benches were written; this stand-in uses the same Edge TPU-mappable ops (Conv2D, MaxPool, nearest
Resizing, sigmoid) so the error maps and timings are representative. Swap in training.models when
it lands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(size: int, width: int = 16, depth: int = 3, batch_size=None):
    import keras
    from keras import layers

    inp = keras.Input((size, size, 1), batch_size=batch_size)
    x = inp
    for d in range(depth):
        x = layers.Conv2D(width * 2**d, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    for d in reversed(range(depth)):
        s = size // 2**d
        x = layers.Resizing(s, s, interpolation="nearest")(x)
        x = layers.Conv2D(width * 2**d, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inp, out)


def train(x: np.ndarray, epochs: int, seed: int = 0, width: int = 16, depth: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    m = build(x.shape[1], width, depth)
    m.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mae")
    m.fit(x, x, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return m


def files(folder: Path, n: int, seed: int = 0, skip: int = 0) -> List[Path]:
    fs = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    idx = np.random.default_rng(seed).permutation(len(fs))
    return [fs[i] for i in idx[skip : skip + n]]


def split(folder: Path, sizes: Sequence[int], seed: int = 0) -> Tuple[List[Path], ...]:
    """Disjoint random subsets of a folder's images, of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(files(folder, n, seed, start))
        start += n
    return tuple(out)
