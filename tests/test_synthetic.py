"""Synthetic anomalies: deterministic, and each mask says exactly which pixels changed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.synthetic import KINDS, AnomalyGenerator, load_foreign, outlier_exposure, synthesize


def _normals(n: int = 4, size: int = 48, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    base = 0.3 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)  # some structure for cut-paste to move
    imgs = base[None, :, :, None] + rng.normal(0, 0.02, (n, size, size, channels))
    return np.clip(imgs, 0, 1).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_kind_changes_exactly_its_mask(kind: str, channels: int) -> None:
    x = _normals(channels=channels)
    s = synthesize(x, 6, seed=3, kinds=[kind])
    order = np.random.default_rng(3).permutation(len(x))
    for i in range(6):
        src = x[order[i % len(x)]]
        diff = np.abs(s.images[i] - src).max(axis=2)
        m = s.masks[i]
        assert s.kinds[i] == kind
        assert s.images[i].shape == src.shape and s.images[i].dtype == np.float32
        assert 4 <= m.sum() < m.size * 0.5
        assert np.all(diff[~m] == 0), "pixels outside the mask changed"
        assert np.all(diff[m] > 0), "mask marks unchanged pixels"
        assert np.abs(s.images[i] - src)[m].mean() >= 0.06
        assert s.images[i].min() >= 0 and s.images[i].max() <= 1


def test_deterministic_per_index_and_seed() -> None:
    x = _normals()
    a = synthesize(x, 8, seed=5)
    b = synthesize(x, 8, seed=5)
    c = synthesize(x, 8, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.kinds == b.kinds == [KINDS[i % 4] for i in range(8)]
    assert not np.array_equal(a.images, c.images)
    # Image i does not depend on how many are made.
    d = synthesize(x, 3, seed=5)
    np.testing.assert_array_equal(a.images[:3], d.images)


def test_value_range_and_foreign_folder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    pool = load_foreign(tmp_path)
    assert len(pool) == 3 and pool[0].dtype == np.uint8
    x = _normals(channels=3) * 2 - 1  # images scaled to -1..1
    s = synthesize(x, 4, seed=0, kinds=["foreign"], foreign=tmp_path, value_range=(-1, 1))
    assert s.images.min() >= -1 and s.images.max() <= 1
    assert all(m.any() for m in s.masks)


def test_outlier_exposure_shapes() -> None:
    imgs, masks = outlier_exposure(_normals(), 5, seed=1)
    assert imgs.shape == (5, 48, 48, 1) and masks.shape == (5, 48, 48) and masks.dtype == bool


def test_flat_images_still_get_visible_anomalies() -> None:
    # Cut-paste of a flat image shows only its brightness jitter (< 0.13): below this contrast bar,
    # so every draw fails and the generator falls back to a stain.
    x = np.full((2, 32, 32, 1), 0.5, np.float32)
    gen = AnomalyGenerator(kinds=["cutpaste"], min_contrast=0.2)
    s = gen.batch(x, 3, seed=0, kinds=["cutpaste"])
    assert s.kinds == ["blob"] * 3
    for img, m in zip(s.images, s.masks):
        assert m.any() and np.all(img[~m] == 0.5) and np.all(img[m] != 0.5)


def test_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="anomaly kinds"):
        AnomalyGenerator(kinds=["dent"])
    with pytest.raises(ValueError, match="no normal images"):
        synthesize(np.zeros((0, 8, 8, 1)), 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_foreign(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no readable images"):
        load_foreign(tmp_path)
