"""A real, tiny .tflite bundle for device tests (and the daemon benchmark).

A small convolutional autoencoder is trained for a few seconds on "normal" images
(dark, smooth, slightly noisy), converted with tf.lite at batch 1 and written with
``edge_detect.bundle.write_bundle``. Its threshold sits between the highest normal
score and the lowest score of "anomalous" images (the same images with bright blobs),
so tests can rely on the verdict of the images generated here.

Only tests and bench import this module; it imports TensorFlow lazily.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

NAME = "tiny-ae"


def normal_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A normal part: dark, a gentle horizontal gradient, small noise. uint8 (size, size)."""
    base = np.linspace(50, 80, size, dtype=np.float32)[None, :].repeat(size, 0)
    img = base + rng.normal(0, 3, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def anomalous_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A defective part: the normal image with a bright blob of a quarter of its width. uint8."""
    img = normal_image(rng, size).astype(np.float32)
    r = max(2, size // 8)
    cy, cx = rng.integers(r, size - r, 2)
    yy, xx = np.mgrid[:size, :size]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 250
    return img.astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 gray array to PNG or JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _model(size: int):
    import keras
    from keras import layers

    inp = keras.Input((size, size, 1), batch_size=1)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inp, out)


def build_tiny_bundle(out_dir: Path, size: int = 32, seed: int = 0, version: str = "1") -> Tuple[Path, float]:
    """Train, convert and write the bundle; returns (bundle dir, threshold)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from edge_detect.bundle import write_bundle
    from edge_detect.preprocess import Preprocess
    from edge_detect.runtime import TFLiteModel
    from edge_detect.scoring import reconstruction_scores

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    train = np.stack([normal_image(rng, size) for _ in range(128)])[..., None].astype(np.float32) / 255.0
    model = _model(size)
    model.compile(optimizer="adam", loss="mse")
    model.fit(train, train, batch_size=1 if size > 64 else 8, epochs=8 if size <= 64 else 2, verbose=0)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    tflite = conv.convert()
    tmp = Path(out_dir).with_name(Path(out_dir).name + ".tflite")
    tmp.write_bytes(tflite)
    m = TFLiteModel(tmp)
    pre = Preprocess(size=(size, size), color="gray")

    def scores(imgs) -> np.ndarray:
        x = np.stack([pre(encode(i)) for i in imgs])
        y = np.concatenate([m(x[i : i + 1]) for i in range(len(x))])
        return reconstruction_scores(x, y, "mse")[0]

    normal = scores([normal_image(rng, size) for _ in range(32)])
    anomalous = scores([anomalous_image(rng, size) for _ in range(32)])
    if anomalous.min() <= normal.max():
        raise RuntimeError(f"tiny bundle does not separate: normal max {normal.max()}, anomalous min {anomalous.min()}")
    # Geometric midpoint: both sides keep a wide margin even though the scales differ a lot.
    threshold = float(np.sqrt(normal.max() * anomalous.min()))
    spec = {"dtype": "float32", "quantization": [0.0, 0]}
    manifest = {
        "name": NAME,
        "version": version,
        "family": "conv_ae",
        "model": {"input_size": [size, size]},
        "preprocess": pre.to_dict(),
        "scoring": {"kind": "reconstruction", "method": "mse"},
        "calibration": {
            "method": "geometric-midpoint",
            "threshold": threshold,
            "normal_stats": {"median": float(np.median(normal)), "max": float(normal.max())},
        },
        "variants": {
            "float32": {
                "file": "model_float32.tflite",
                "input": {"shape": [1, size, size, 1], **spec},
                "output": {"shape": [1, size, size, 1], **spec},
            }
        },
        "default_variant": "float32",
    }
    write_bundle(out_dir, manifest, {"model_float32.tflite": tmp})
    tmp.unlink()
    return Path(out_dir), threshold


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build the tiny test bundle.")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    path, thr = build_tiny_bundle(Path(a.out), a.size)
    print(f"{path} threshold={thr:.6g}")
