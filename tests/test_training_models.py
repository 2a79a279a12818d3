"""training.models: every family builds, trains, and converts to int8 TFLite with Edge TPU ops only."""

from __future__ import annotations

import numpy as np
import pytest

from training.models import FAMILIES, build_model, loss_for

pytest.importorskip("tensorflow")


def _images(n: int, size: int, c: int = 1, seed: int = 0) -> np.ndarray:
    """Soft blobs in 0..1, (n, size, size, c) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, c), np.float32)
    for i in range(n):
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        out[i] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (size * 0.8))[..., None]
    return out


@pytest.mark.parametrize("family,skips", [(f, 0) for f in FAMILIES] + [("denoising", 2)])
def test_family_trains_and_maps_to_edgetpu(family, skips, tmp_path):
    import keras

    from training.export import convert, fixed_batch_model, float_ops, op_table

    keras.utils.set_random_seed(0)
    params = {"width": 4, "depth": 2, "latent": 4, "skips": skips}
    model = build_model(family, (16, 16, 1), **params)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_for(family))
    x = _images(32, 16)
    h = model.fit(x, x, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(h.history["loss"]).all()
    assert h.history["loss"][-1] < h.history["loss"][0]  # it learns something in two epochs
    y = np.asarray(model(x[:2], training=False))
    assert y.shape == x[:2].shape and 0.0 <= y.min() and y.max() <= 1.0  # sigmoid output

    fixed = fixed_batch_model(model, lambda: build_model(family, (16, 16, 1), batch_size=1, **params))
    flat, _ = convert(fixed, "int8", representative=x[:16])
    path = tmp_path / f"{family}.tflite"
    path.write_bytes(flat)
    rows = op_table(path)
    ops = {r["op"] for r in rows}
    assert "RESIZE_NEAREST_NEIGHBOR" in ops or family == "superres" and "AVERAGE_POOL_2D" in ops
    # UpSampling2D would lower to RESHAPE + TILE (not on the Edge TPU); we use nearest resizes.
    assert not ops & {"TILE", "RESHAPE", "BROADCAST_TO", "GATHER"}, ops
    assert ("CONCATENATION" in ops) == bool(skips)
    assert float_ops(rows) == [], rows
    cpu = [r for r in rows if r["edgetpu"] != "tpu" and r.get("reason") != "float input/output boundary"]
    assert cpu == [], cpu


@pytest.mark.parametrize("shape", [(20, 20, 1), (24, 18, 3)])
def test_sizes_not_divisible_by_the_pooling_and_rgb(shape):
    m = build_model("plain", shape, width=4, depth=3, latent=4)
    assert m.output_shape[1:] == shape
    m = build_model("superres", shape, width=4, depth=2, latent=4, k=2)
    assert m.output_shape[1:] == shape


def test_parameters_change_the_network():
    small = build_model("plain", (32, 32, 1), width=4, depth=2, latent=4).count_params()
    wide = build_model("plain", (32, 32, 1), width=8, depth=2, latent=4).count_params()
    deep = build_model("plain", (32, 32, 1), width=4, depth=3, latent=4).count_params()
    assert small < wide and small < deep
    latent = build_model("plain", (32, 32, 1), width=4, depth=2, latent=8)
    assert latent.get_layer("latent").output.shape[-1] == 8


def test_synthetic_noise_pairs_defects_with_clean_targets():
    from training.train import synthetic_pairs

    x = _images(40, 32)
    ds = synthetic_pairs(x, batch_size=16, fraction=0.5, seed=3)
    epochs = [[(np.asarray(a), np.asarray(b)) for a, b in ds] for _ in range(2)]
    for batches in epochs:
        noisy = np.concatenate([a for a, _ in batches])
        clean = np.concatenate([b for _, b in batches])
        assert noisy.shape == clean.shape == x.shape and [len(a) for a, _ in batches] == [16, 16, 8]
        # Targets are the normal images themselves (in a shuffled order); half the inputs carry a defect.
        assert np.allclose(np.sort(clean.reshape(len(x), -1).sum(1)), np.sort(x.reshape(len(x), -1).sum(1)))
        changed = np.abs(noisy - clean).reshape(len(x), -1).max(axis=1) > 1e-6
        assert changed.sum() == 20
    first, second = (np.concatenate([a for a, _ in b]) for b in epochs)
    assert not np.allclose(first, second)  # fresh defects and order every epoch
    model = build_model("denoising", (32, 32, 1), width=4, depth=2, latent=4)
    model.compile(optimizer="adam", loss="mae")
    assert len(model.fit(ds, epochs=3, verbose=0, shuffle=False).history["loss"]) == 3  # Keras sees every epoch's data


def test_skips_are_bounded_by_the_depth():
    assert len([lyr for lyr in build_model("plain", (16, 16, 1), width=4, depth=2, skips=1).layers
                if lyr.name.startswith("skip")]) == 1
    with pytest.raises(ValueError, match="skips must be in 0..2"):
        build_model("plain", (16, 16, 1), width=4, depth=2, skips=3)


def test_bad_family_and_too_small_input():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vae", (16, 16, 1))
    with pytest.raises(ValueError, match="too small"):
        build_model("plain", (8, 8, 1), depth=4)


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "speckle"])
def test_denoising_noise_kinds(kind):
    from training.train import add_noise

    x = np.full((2, 16, 16, 1), 0.5, np.float32)
    noisy = np.asarray(add_noise(x, kind, 0.2, seed=1))
    assert noisy.shape == x.shape and 0.0 <= noisy.min() and noisy.max() <= 1.0
    assert np.abs(noisy - x).mean() > 0.01
    assert np.abs(np.asarray(add_noise(x, kind, 0.0, seed=1)) - x).max() < 1e-6  # strength 0: clean
    with pytest.raises(ValueError):
        add_noise(x, "blur", 0.1)


def test_cli_choices_mirror_the_model_module():
    from training import cli, models, train

    assert cli.AE_FAMILIES == models.FAMILIES and cli.LOSSES == models.LOSSES and cli.NOISES == train.NOISES


def test_shuffled_batches_reshuffle_every_epoch_without_autotuning():
    import tensorflow as tf

    from training.pipeline import shuffled_batches

    x = np.arange(10, dtype=np.float32)
    y = x * 10
    ds = shuffled_batches((x, y), batch_size=4, seed=5, map_fn=lambda a, b: (a, b + 1))
    # Autotuning's thread made every other epoch wait 15-37 s before its first batch (pipeline.py).
    assert ds.options().autotune.enabled is False
    epochs = [[(np.asarray(a), np.asarray(b)) for a, b in ds] for _ in range(2)]
    for batches in epochs:
        assert [len(a) for a, _ in batches] == [4, 4, 2]
        xs, ys = np.concatenate([a for a, _ in batches]), np.concatenate([b for _, b in batches])
        assert sorted(xs) == list(x) and np.array_equal(ys, xs * 10 + 1)  # pairs stay together
    orders = [np.concatenate([a for a, _ in b]) for b in epochs]
    assert not np.array_equal(*orders)
    again = np.concatenate([np.asarray(a) for a, _ in shuffled_batches((x, y), 4, seed=5)])
    assert np.array_equal(again, orders[0])  # same seed, same order
    # Shuffling indices gives the order a buffer of the images would: runs before the change reproduce.
    images = np.concatenate([np.asarray(b) for b in tf.data.Dataset.from_tensor_slices(x).shuffle(10, seed=5).batch(4)])
    assert np.array_equal(images, orders[0])
