"""A tiny trained autoencoder and data set for the export and bundle tests.

16x16 gray "parts": a soft Gaussian blob somewhere near the middle. Defects: a 4x4 patch with
inverted brightness. A small Conv/MaxPool/nearest-resize autoencoder learns the normals in about
two seconds; ``export`` turns it into a real bundle through ``training.export.export_bundle``.
Imports TensorFlow lazily; only tests use this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from PIL import Image

SIZE = 16  # px


def normals(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 16, 16) uint8 normal images."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(5, 11, 2)
        out[i] = np.round(255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0))
    return out


def anomalies(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 16, 16) uint8 defective images: a normal one with a 4x4 patch of the opposite brightness."""
    out = normals(rng, n)
    for i in range(n):
        a, b = rng.integers(0, SIZE - 4, 2)
        patch = out[i, a : a + 4, b : b + 4]
        patch[...] = 0 if patch.mean() > 127 else 255
    return out


def to_x(imgs: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W) to the model input (n, H, W, 1) float32 in 0..1 (Preprocess's default scale)."""
    return imgs[..., None].astype(np.float32) * np.float32(1.0 / 255.0)


def mu_sigma(scores: np.ndarray, k: float = 3.0) -> dict:
    """Threshold mu + k*sigma of validation scores, as the training calibration does by default."""
    s = np.asarray(scores, np.float64)
    return {"method": "mu_sigma", "k": k, "threshold": float(s.mean() + k * s.std()),
            "normal_stats": {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
                             "median": float(np.median(s)), "max": float(s.max())}}


_CACHE: Dict[str, object] = {}


def trained(seed: int = 0):
    """(keras model, DataSplits, test uint8 images, test labels); trained once per test session."""
    if "model" not in _CACHE:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        from training.export import DataSplits

        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        train, val = normals(rng, 128), normals(rng, 32)
        test_imgs = np.concatenate([normals(rng, 24), anomalies(rng, 24)])
        y = np.r_[np.zeros(24, int), np.ones(24, int)]
        inp = keras.Input((SIZE, SIZE, 1))
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(h)
        h = keras.layers.Resizing(SIZE, SIZE, interpolation="nearest")(h)
        out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer="adam", loss="mse")
        model.fit(to_x(train), to_x(train), epochs=30, batch_size=16, verbose=0)
        data = DataSplits(x_train=to_x(train), x_val=to_x(val), x_test=to_x(test_imgs), y_test=y,
                          test_kinds=["good"] * 24 + ["patch"] * 24)
        _CACHE.update(model=model, data=data, test_imgs=test_imgs, y=y)
    return _CACHE["model"], _CACHE["data"], _CACHE["test_imgs"], _CACHE["y"]


def spec(model, name: str = "tiny", version: str = "1", calibrate: Optional[Callable] = None):
    from edge_detect.preprocess import Preprocess
    from training.export import ExportSpec

    return ExportSpec(
        model=model, preprocess=Preprocess(size=(SIZE, SIZE), color="gray", resize="bilinear"),
        scoring={"kind": "reconstruction", "method": "mse", "smooth": 5, "ssim_win": 7},
        calibration={"method": "mu_sigma", "k": 3.0, "threshold": 0.0},
        calibrate=calibrate or mu_sigma, family="plain", name=name, version=version,
        model_params={"filters": [8, 2]},
        training_data={"folder": "generated", "layout": "arrays", "counts": {"train": 128, "validation": 32},
                       "content_sha256": "0" * 64},
    )


def export(out: Path, quant: str = "all", **kw) -> Tuple[object, np.ndarray, np.ndarray]:
    """Export the tiny model to ``out``; returns (ExportResult, test images uint8, labels)."""
    from training.export import export_bundle

    model, data, imgs, y = trained()
    res = export_bundle(spec(model), data, out, quant=quant, echo=lambda s: None, **kw)
    return res, imgs, y


def write_images(folder: Path, imgs: np.ndarray, fmt: str = "png") -> list:
    """Save uint8 images as real files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(imgs):
        p = folder / f"img{i:03d}.{fmt}"
        Image.fromarray(a, "L").save(p, **({"quality": 95} if fmt == "jpg" else {}))
        paths.append(p)
    return paths
