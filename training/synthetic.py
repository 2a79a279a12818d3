"""Realistic synthetic anomalies from normal images alone, each with its pixel mask.

Kinds (all on preprocessed float images (H, W, C) in ``value_range``, usually 0..1):

* ``cutpaste``: a patch of the same image, flipped / rotated / resized, pasted elsewhere;
* ``scratch``: thin dark or bright curved lines (anti-aliased, 1-3 px at 128 px);
* ``blob``: a soft irregular stain, darker or lighter, partly transparent;
* ``foreign``: a piece of another picture (any image folder), irregularly shaped; without a
  folder, a procedural texture (stripes, checks, noise) stands in.

Everything is deterministic: image ``i`` of a call with ``seed`` always gets the same anomaly,
whatever the batch, because each draws from ``default_rng([seed, i])``. Pixels outside the mask are
never changed, and each anomaly changes the pixels inside its mask visibly (mean |change| at least
``min_contrast``; draws that don't are redrawn).

Uses: threshold calibration without real defects (``edge-train fit --calibration synthetic``,
which scores :func:`synthesize` output and takes training.calibrate's best F1), outlier
exposure for metric models (:func:`outlier_exposure`), and training the one-pass explainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .data import image_files

KINDS = ("cutpaste", "scratch", "blob", "foreign")
MIN_CONTRAST = 0.06  # mean |change| inside the mask, as a fraction of the value range
_TRIES = 12


@dataclass
class Synthetic:
    """A batch of synthetic anomalies. images (N, H, W, C) float32; masks (N, H, W) bool; kinds (N,)."""

    images: np.ndarray
    masks: np.ndarray
    kinds: List[str]


def load_foreign(folder: Union[str, Path], limit: int = 64, size: int = 256, seed: int = 0) -> List[np.ndarray]:
    """Up to ``limit`` RGB uint8 pictures (longest side ``size`` px) from any image folder (recursive).

    Unreadable files are skipped. A missing or empty folder raises FileNotFoundError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"foreign-object folder {folder} does not exist")
    files = image_files(folder)
    rng = np.random.default_rng(seed)
    out: List[np.ndarray] = []
    for i in rng.permutation(len(files)):
        try:
            with Image.open(files[i]) as im:
                im.draft("RGB", (size, size))
                im = im.convert("RGB")
                im.thumbnail((size, size))
                out.append(np.asarray(im))
        except (OSError, SyntaxError, ValueError):
            continue
        if len(out) >= limit:
            break
    if not out:
        raise FileNotFoundError(f"no readable images in foreign-object folder {folder}")
    return out


class AnomalyGenerator:
    """Makes one anomaly per call; see the module docstring.

    kinds: which kinds to draw from (uniformly). foreign: pictures for ``foreign`` (uint8 arrays,
    gray or RGB, any size). value_range: (low, high) of the images' values. scale: anomaly size
    relative to the defaults (1.0: patches of 2-12 % of the image area).
    """

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        foreign: Optional[Sequence[np.ndarray]] = None,
        value_range: Tuple[float, float] = (0.0, 1.0),
        scale: float = 1.0,
        min_contrast: float = MIN_CONTRAST,
    ) -> None:
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"anomaly kinds must be among {', '.join(KINDS)}, got {', '.join(bad) or 'none'}")
        self.kinds = tuple(kinds)
        self.foreign = list(foreign) if foreign else []
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.scale = float(scale)
        self.min_contrast = float(min_contrast)

    # -- public ---------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, rng: np.random.Generator, kind: Optional[str] = None
                 ) -> Tuple[np.ndarray, np.ndarray, str]:
        """(anomalous image (H, W, C) float32, mask (H, W) bool, kind) for one normal image."""
        x = np.asarray(image, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3:
            raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
        u = (x - self.lo) / (self.hi - self.lo)  # work in 0..1
        k = kind or self.kinds[int(rng.integers(len(self.kinds)))]
        make = getattr(self, f"_{k}")
        for _ in range(_TRIES):
            patch, mask = make(u, rng)
            mask &= np.abs(patch - u).max(axis=2) > 1e-6  # unchanged pixels are not anomalous
            if mask.sum() >= 4 and np.abs(patch - u)[mask].mean() >= self.min_contrast:
                break
        else:
            # Flat images defeat cut-paste: fall back to a stain, which always shows.
            patch, mask = self._blob(u, rng, force_contrast=True)
            k = "blob"
        out = np.where(mask[:, :, None], patch, u)
        return (out * (self.hi - self.lo) + self.lo).astype(np.float32), mask, k

    def batch(self, images: np.ndarray, n: int, seed: int = 0, kinds: Optional[Sequence[str]] = None) -> Synthetic:
        """``n`` anomalies made from ``images`` (N, H, W, C), cycling through them; kinds cycle too when given."""
        images = np.asarray(images, dtype=np.float32)
        if len(images) == 0:
            raise ValueError("no normal images to make synthetic anomalies from")
        if images.ndim == 3:
            images = images[..., None]
        xs = np.empty((n, *images.shape[1:]), np.float32)
        ms = np.zeros((n, *images.shape[1:3]), bool)
        ks: List[str] = []
        order = np.random.default_rng(seed).permutation(len(images))
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            kind = kinds[i % len(kinds)] if kinds else None
            xs[i], ms[i], k = self(images[order[i % len(images)]], rng, kind)
            ks.append(k)
        return Synthetic(xs, ms, ks)

    # -- geometry helpers -----------------------------------------------------------------------

    def _box(self, rng: np.random.Generator, h: int, w: int, lo: float = 0.02, hi: float = 0.12
             ) -> Tuple[int, int]:
        """A (height, width) px whose area is lo..hi of the image's, aspect ratio 1/3..3."""
        area = rng.uniform(lo, hi) * self.scale * h * w
        aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        bh = int(np.clip(round(np.sqrt(area / aspect)), 2, h - 1))
        bw = int(np.clip(round(np.sqrt(area * aspect)), 2, w - 1))
        return bh, bw

    @staticmethod
    def _irregular(rng: np.random.Generator, bh: int, bw: int) -> np.ndarray:
        """A smooth irregular blob filling most of a (bh, bw) box: low-frequency noise times a radial falloff."""
        g = rng.random((5, 5)).astype(np.float32)
        noise = np.asarray(Image.fromarray(g, "F").resize((bw, bh), Image.Resampling.BICUBIC))
        yy, xx = np.mgrid[:bh, :bw]
        r = ((yy + 0.5) / bh * 2 - 1) ** 2 + ((xx + 0.5) / bw * 2 - 1) ** 2
        field = (1 - r) + 0.6 * (noise - 0.5)
        m = field > 0.25
        if m.sum() < 4:  # tiny boxes: an ellipse
            m = r <= 1
        return m

    # -- kinds ----------------------------------------------------------------------------------

    def _cutpaste(self, u: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        h, w, c = u.shape
        bh, bw = self._box(rng, h, w)
        sy, sx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        patch = u[sy : sy + bh, sx : sx + bw]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        patch = np.rot90(patch, int(rng.integers(4)))
        f = rng.uniform(0.6, 1.4)  # resize
        ph = int(np.clip(round(patch.shape[0] * f), 2, h - 1))
        pw = int(np.clip(round(patch.shape[1] * f), 2, w - 1))
        patch = _resize(patch, ph, pw)
        # Small brightness jitter, as a part from another batch or a different surface would have.
        patch = np.clip(patch * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
        shape = self._irregular(rng, ph, pw) if rng.random() < 0.5 else np.ones((ph, pw), bool)
        return _place(u, patch, shape, rng, avoid=(sy, sx, bh, bw))

    def _scratch(self, u: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        h, w, c = u.shape
        ss = 4  # supersampling for anti-aliased edges
        canvas = Image.new("L", (w * ss, h * ss), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            length = rng.uniform(0.25, 0.7) * min(h, w) * np.sqrt(self.scale)
            x0, y0 = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            ang = rng.uniform(0, np.pi)
            bend = rng.uniform(-0.4, 0.4)  # a gentle curve, as a tool mark or a crack has
            ts = np.linspace(0, 1, 16)
            a = ang + bend * (ts - 0.5) * 2
            dx, dy = np.cos(a) * length / 15, np.sin(a) * length / 15
            xs, ys = x0 + np.concatenate([[0], np.cumsum(dx[1:])]), y0 + np.concatenate([[0], np.cumsum(dy[1:])])
            width = max(1.0, rng.uniform(0.6, 2.2) * min(h, w) / 128)
            draw.line([(float(px) * ss, float(py) * ss) for px, py in zip(xs, ys)], fill=255,
                      width=max(1, int(round(width * ss))), joint="curve")
        alpha = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0
        mask = alpha > 0.25
        colour = _contrasting(u, mask, rng)
        a = np.clip(alpha * rng.uniform(0.7, 1.0) / 0.75, 0, 1)[:, :, None]
        return u * (1 - a) + colour * a, mask

    def _blob(self, u: np.ndarray, rng: np.random.Generator, force_contrast: bool = False
              ) -> Tuple[np.ndarray, np.ndarray]:
        h, w, c = u.shape
        bh, bw = self._box(rng, h, w, 0.01, 0.08)
        shape = self._irregular(rng, bh, bw)
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask = np.zeros((h, w), bool)
        mask[y : y + bh, x : x + bw] = shape
        colour = _contrasting(u, mask, rng)
        if c == 3 and rng.random() < 0.5:  # a tinted stain (rust, oil) instead of a gray one
            colour = np.clip(colour * rng.uniform(0.6, 1.3, 3), 0, 1)
        # Soft inside: opacity falls off towards the rim, like a dried liquid.
        dist = _soft_falloff(mask)
        opacity = 1.0 if force_contrast else rng.uniform(0.55, 0.95)
        a = (opacity * dist)[:, :, None]
        return u * (1 - a) + colour * a, mask

    def _foreign(self, u: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        h, w, c = u.shape
        bh, bw = self._box(rng, h, w, 0.02, 0.10)
        if self.foreign:
            src = self.foreign[int(rng.integers(len(self.foreign)))]
            src = src.astype(np.float32) / 255.0
            if src.ndim == 2:
                src = src[:, :, None]
            fh, fw = src.shape[:2]
            ch, cw = int(rng.integers(max(2, fh // 4), fh + 1)), int(rng.integers(max(2, fw // 4), fw + 1))
            oy, ox = int(rng.integers(0, fh - ch + 1)), int(rng.integers(0, fw - cw + 1))
            obj = src[oy : oy + ch, ox : ox + cw]
        else:
            obj = _texture(rng, bh, bw)
        obj = obj.mean(axis=2, keepdims=True) if c == 1 else (np.repeat(obj, 3, 2) if obj.shape[2] == 1 else obj)
        obj = np.rot90(obj, int(rng.integers(4)))
        obj = _resize(obj, bh, bw)
        return _place(u, obj, self._irregular(rng, bh, bw), rng)


# -- helpers --------------------------------------------------------------------------------------


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h0, w0, C) float 0..1 to (h, w, C) by bilinear resizing, channel by channel."""
    a = np.asarray(a, dtype=np.float32)  # PIL's "F" mode reads float32 bytes
    if a.shape[:2] == (h, w):
        return np.ascontiguousarray(a)
    bilinear = Image.Resampling.BILINEAR
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[:, :, i]), "F").resize((w, h), bilinear))
             for i in range(a.shape[2])]
    return np.stack(chans, axis=2)


def _place(u: np.ndarray, patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
           avoid: Optional[Tuple[int, int, int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Paste ``patch`` (ph, pw, C) through ``shape`` (ph, pw) at a random spot; away from ``avoid`` if given."""
    h, w, _ = u.shape
    ph, pw = shape.shape
    y = x = 0
    for _ in range(8):  # cut-paste onto its own source spot would be invisible
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if avoid is None or abs(y - avoid[0]) > avoid[2] // 2 or abs(x - avoid[1]) > avoid[3] // 2:
            break
    out = u.copy()
    mask = np.zeros((h, w), bool)
    mask[y : y + ph, x : x + pw] = shape
    out[y : y + ph, x : x + pw] = np.where(shape[:, :, None], patch, out[y : y + ph, x : x + pw])
    return out, mask


def _contrasting(u: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour (C,) clearly darker or lighter than the image under ``mask``, whichever has room."""
    local = u[mask].mean(axis=0) if mask.any() else u.reshape(-1, u.shape[2]).mean(axis=0)
    level = float(local.mean())
    delta = rng.uniform(0.25, 0.6)
    target = level - delta if (level > 0.5) != (rng.random() < 0.25) else level + delta
    return np.clip(np.full(u.shape[2], target, np.float32), 0, 1)


def _soft_falloff(mask: np.ndarray) -> np.ndarray:
    """Opacity 0.5 at the mask's rim rising to 1 two px inside: a 5x5 box blur of the mask, clipped."""
    m = mask.astype(np.float32)
    p = np.pad(m, 2)
    acc = sum(p[dy : dy + m.shape[0], dx : dx + m.shape[1]] for dy in range(5) for dx in range(5)) / 25.0
    return np.where(mask, np.clip(0.5 + acc, 0, 1), 0).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural stand-in object (stripes, checks or coarse noise), (h, w, 3) float 0..1."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    kind = int(rng.integers(3))
    period = rng.uniform(3, 8)
    if kind == 0:
        ang = rng.uniform(0, np.pi)
        v = 0.5 + 0.5 * np.sin((xx * float(np.cos(ang)) + yy * float(np.sin(ang))) * float(2 * np.pi / period))
    elif kind == 1:
        v = ((xx // period + yy // period) % 2).astype(np.float32)
    else:
        g = rng.random((max(2, h // 3), max(2, w // 3))).astype(np.float32)
        v = np.asarray(Image.fromarray(g, "F").resize((w, h), Image.Resampling.NEAREST))
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    return np.clip(v[:, :, None] * tint, 0, 1)


# -- entry points -------------------------------------------------------------------------------


def synthesize(
    images: np.ndarray,
    n: int,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    foreign: Optional[Union[str, Path, Sequence[np.ndarray]]] = None,
    value_range: Tuple[float, float] = (0.0, 1.0),
    scale: float = 1.0,
) -> Synthetic:
    """``n`` synthetic anomalies (kinds cycling in order) from normal images (N, H, W, C).

    foreign: a folder of any pictures or a list of uint8 arrays for the ``foreign`` kind.
    """
    pool = load_foreign(foreign, seed=seed) if isinstance(foreign, (str, Path)) else foreign
    gen = AnomalyGenerator(kinds, pool, value_range, scale)
    return gen.batch(images, n, seed, kinds=list(kinds))


def outlier_exposure(
    images: np.ndarray, n: int, seed: int = 0,
    foreign: Optional[Union[str, Path, Sequence[np.ndarray]]] = None,
    value_range: Tuple[float, float] = (0.0, 1.0),
) -> Tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, C) float32, masks (n, H, W) bool): "other" images for metric-model outlier exposure."""
    s = synthesize(images, n, seed, KINDS, foreign, value_range)
    return s.images, s.masks
