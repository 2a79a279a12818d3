"""The one image preprocessing, shared by training and the device.

Training imports this module, so a bundle's ``preprocess`` block replays on the
device exactly what the model saw while it learned.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import re
import stat
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFile

# Decompression bombs: PIL only warns between 1x and 2x this limit; we make the warning an error below.
MAX_PIXELS = 64_000_000  # px, larger than any industrial sensor we know of (e.g. 8K = 33 Mpx)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
COLORS = ("gray", "rgb")
log = logging.getLogger(__name__)
# Modes we can convert to gray/RGB without guessing what the pixels mean.
_ACCEPTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L", "I"}

ImageSource = Union[str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image]


class ImageError(ValueError):
    """An input that cannot become a model input: unreadable, truncated, a bomb, or an odd mode."""


class RoiError(ImageError):
    """The crop does not fit the image: a setting to fix rather than a bad file."""


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes a model input tensor (H, W, C) float32.

    size: (height, width) of the model input, px.
    color: "gray" (C=1) or "rgb" (C=3).
    roi: optional (x, y, width, height) crop in source-image px, applied before resizing.
    resize: one of nearest, bilinear, bicubic, area, lanczos.
    scale, offset: pixel value v in 0..255 becomes v * scale + offset.
    draft: let JPEG decode at a reduced DCT scale first (much cheaper; same code on both sides).
    bit_depth: significant bits of 16-bit images, of which the top 8 are kept: 16 for full-range
    sensors, 12 for a camera that writes 0..4095 (Mono12 in a 16-bit PNG or TIFF), 10 for 0..1023.
    """

    size: Tuple[int, int]
    color: str = "gray"
    roi: Optional[Tuple[int, int, int, int]] = None
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    draft: bool = True
    bit_depth: int = 16
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocess.size must be (height, width) > 0, got {self.size!r}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.color not in COLORS:
            raise ValueError(f"preprocess.color must be one of {COLORS}, got {self.color!r}")
        if self.resize not in _RESAMPLE:
            raise ValueError(f"preprocess.resize must be one of {tuple(_RESAMPLE)}, got {self.resize!r}")
        for k in ("scale", "offset"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"preprocess.{k} must be a number, got {v!r}")
        if isinstance(self.bit_depth, bool) or not isinstance(self.bit_depth, int) or not 8 <= self.bit_depth <= 16:
            raise ValueError(f"preprocess.bit_depth must be an integer 8..16, got {self.bit_depth!r}")
        if self.roi is not None:
            if len(self.roi) != 4 or self.roi[2] < 1 or self.roi[3] < 1 or min(self.roi[:2]) < 0:
                raise ValueError(f"preprocess.roi must be (x, y, width, height) px, got {self.roi!r}")
            object.__setattr__(self, "roi", tuple(int(v) for v in self.roi))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Model input shape without the batch axis: (H, W, C)."""
        return (self.size[0], self.size[1], self.channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["size"] = list(self.size)
        d["roi"] = list(self.roi) if self.roi else None
        if d["bit_depth"] == 16:
            del d["bit_depth"]  # the default: bundles that don't need the key still load on older devices
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        d = dict(d)
        d["size"] = tuple(d["size"])
        if d.get("roi") is not None:
            d["roi"] = tuple(d["roi"])
        return cls(**d)

    def with_roi(self, roi: Optional[Sequence[int]]) -> Preprocess:
        """A copy with another crop (per-camera ROI on the device)."""
        return Preprocess(**{**self.to_dict(), "size": self.size, "roi": tuple(roi) if roi else None})

    # -- the pipeline ---------------------------------------------------------

    def open(self, source: ImageSource) -> Image.Image:
        """Decode ``source`` into a PIL image in our colour mode, cropped and resized."""
        img = _open(source)
        if img.mode not in _ACCEPTED_MODES:
            raise ImageError(f"unsupported image mode {img.mode!r}")
        target_mode = "L" if self.color == "gray" else "RGB"
        w0, h0 = img.size
        if self.roi:
            x, y, rw, rh = self.roi
            if x + rw > w0 or y + rh > h0:
                raise RoiError(f"roi {self.roi} lies outside the {w0}x{h0} px image")
        if self.draft and img.format == "JPEG":
            # draft() picks the smallest DCT scale that still covers the requested size.
            rw, rh = (self.roi[2], self.roi[3]) if self.roi else (w0, h0)
            want = (math.ceil(self.size[1] * w0 / rw), math.ceil(self.size[0] * h0 / rh))
            img.draft(target_mode if target_mode == "L" else "RGB", want)
        if self.bit_depth != 16 and _wide_colour(img):
            _warn_once("colour", "a 16-bit colour image is read at 8 bits per channel (its top byte): "
                       "bit_depth %d applies to 16-bit gray images only", self.bit_depth)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot decode image: {e}") from None
        img = eight_bit(img, self.bit_depth)
        if img.mode != target_mode:
            img = img.convert(target_mode)
        if self.roi:
            fx, fy = img.size[0] / w0, img.size[1] / h0
            x, y, rw, rh = self.roi
            img = img.crop((round(x * fx), round(y * fy), round((x + rw) * fx), round((y + rh) * fy)))
        if img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), _RESAMPLE[self.resize])
        return img

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL image (already in our size and mode) to the float32 (H, W, C) model input."""
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return arr * np.float32(self.scale) + np.float32(self.offset)

    def __call__(self, source: ImageSource) -> np.ndarray:
        """Decode and preprocess one image: float32 array of shape ``self.shape``."""
        return self.to_array(self.open(source))

    def batch(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """Preprocess many images into an (N, H, W, C) float32 array. Raises on the first bad one."""
        out = np.empty((len(sources), *self.shape), dtype=np.float32)
        for i, s in enumerate(sources):
            out[i] = self(s)
        return out


def eight_bit(img: Image.Image, bit_depth: int = 16) -> Image.Image:
    """A 16- or 32-bit integer image as 8-bit L, keeping the top 8 of its ``bit_depth`` significant
    bits (so scale/offset mean the same as for 8-bit images); any other image as it is."""
    if not img.mode.startswith("I"):
        return img
    arr = np.asarray(img, dtype=np.int64)
    _check_bit_depth(int(arr.max(initial=0)), bit_depth, "32-bit" if img.mode == "I" else "16-bit")
    return Image.fromarray(np.clip(arr >> (bit_depth - 8), 0, 255).astype(np.uint8), "L")


# Bit depths cameras write (Mono10/12/14); a frame's peak suggests the smallest that holds it.
CAMERA_BIT_DEPTHS = (10, 12, 14, 16)
_warned: set = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def _check_bit_depth(peak: int, bit_depth: int, kind: str) -> None:
    """Warn once per process when an integer image's values look like another bit depth: all below
    a quarter of ``bit_depth``'s range (it keeps at most 64 grey levels: a 10-14-bit camera read as
    16-bit), or above its range (clipped to white: the camera writes more bits)."""
    bits = next((b for b in CAMERA_BIT_DEPTHS if peak < 1 << b), 16)  # the camera depth that holds the peak
    if peak >= 1 << bit_depth:
        fix = (f"; if the camera writes more bits, train with edge-train fit --bit-depth {bits}"
               if bits > bit_depth else "")
        _warn_once("clipped", "a %s image has values up to %d, above the %d that bit_depth %d holds: they are "
                   "clipped to white%s", kind, peak, (1 << bit_depth) - 1, bit_depth, fix)
    elif 0 < peak < 1 << (bit_depth - 2) and bits < bit_depth:
        _warn_once("dark", "a %s image peaks at %d, so with bit_depth %d it keeps only %d grey levels; if the "
                   "camera writes %d-bit values, train with edge-train fit --bit-depth %d", kind, peak,
                   bit_depth, (peak >> (bit_depth - 8)) + 1, bits, bits)


def _wide_colour(img: Image.Image) -> bool:
    """A 48- or 64-bit colour PNG/TIFF, which Pillow decodes to 8 bits per channel (the top byte)."""
    return img.mode in ("RGB", "RGBA") and any(";16" in str(t[3]) for t in (getattr(img, "tile", None) or []))


def _open(source: Any) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                return source
            if isinstance(source, np.ndarray):
                return _from_array(source)
            if isinstance(source, (bytes, bytearray, memoryview)):
                if len(source) == 0:
                    raise ImageError("empty image data (0 bytes)")
                return Image.open(io.BytesIO(bytes(source)))
            path = Path(source)
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the read
                raise ImageError(f"not a regular file: {path}")
            if st.st_size == 0:
                raise ImageError(f"empty file (0 bytes): {path}")
            return Image.open(path)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"decompression bomb refused: {e}") from None
    except FileNotFoundError:
        raise ImageError(f"no such file: {source}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL names in-memory sources by their repr, which says nothing to someone reading the log.
        why = re.sub(r"<_io.BytesIO object at 0x[0-9a-f]+>", "data", str(e))
        raise ImageError(f"not a readable image: {why}") from None


def _from_array(arr: np.ndarray) -> Image.Image:
    """uint8 array from a camera: (H, W) gray, or (H, W, 3) in RGB order."""
    if arr.dtype != np.uint8:
        raise ImageError(f"camera frame must be uint8, got {arr.dtype}")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        return Image.fromarray(arr.reshape(arr.shape[0], arr.shape[1]), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")
    raise ImageError(f"camera frame of shape {arr.shape} is neither gray nor RGB")

