"""Datasets of normal (and optionally anomalous) images, and their reproducible splits.

Layouts (``layout="auto"`` picks one):

- ``mvtec``: ``train/good``, ``test/good``, ``test/<defect>``, optional ``ground_truth/<defect>/*_mask.png``
- ``folders``: DATA is a folder of normals; ``anomalies`` names a folder of anomalies (optional).
  A fraction of the normals is held out as test normals.
- ``classes``: ``train/<class>/...`` (every class normal unless ``normal_classes`` says otherwise),
  optional ``test/<class>/...``, where classes outside the normal set are anomalies.
- ``idx``: MNIST-style IDX files (gz or not): ``train-images-idx3-ubyte.gz`` + labels, ``t10k-*``.

A split is described by a JSON-able spec (kept in run.json) and rebuilt from it exactly:
``load_dataset(path, ...)`` gives a :class:`Dataset` whose items (file path, or IDX file + index)
are split by ``spec["seed"]``; ``Dataset.from_spec(run["dataset"])`` gives the same split back.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from edge_detect.oneline import printable
from edge_detect.preprocess import ImageError, Preprocess, RoiError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif"}
LAYOUTS = ("auto", "mvtec", "folders", "classes", "idx")


class DataError(Exception):
    """A dataset we cannot use: missing folder, empty, unreadable layout. One line."""


@dataclass(frozen=True)
class Item:
    """One image: a file path, or (IDX file, index). label 0 = normal, 1 = anomalous."""

    source: str
    index: int = -1
    label: int = 0
    kind: str = "good"
    cls: str = ""
    mask: Optional[str] = None


@dataclass
class Splits:
    """Preprocessed arrays (N, H, W, C) float32 for every split, plus what went in."""

    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_kinds: List[str]
    summary: Dict[str, Any]
    train_classes: List[str] = field(default_factory=list)
    test_classes: List[str] = field(default_factory=list)
    masks_test: Optional[np.ndarray] = None
    # Which test images' masks are ground truth: normals (all-normal) and anomalies with a readable
    # mask. An anomaly without one has unknown pixels, so pixel metrics leave it out.
    masks_known: Optional[np.ndarray] = None
    x_calib_anomalies: Optional[np.ndarray] = None
    items_test: List[Item] = field(default_factory=list)


def dataset_spec(
    path: str,
    layout: str = "auto",
    anomalies: Optional[str] = None,
    normal_classes: Optional[Sequence[str]] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    calib_anomaly_fraction: float = 0.0,
    seed: int = 0,
    max_train: Optional[int] = None,
    all_test: bool = False,
) -> Dict[str, Any]:
    """The JSON-able description of a dataset and its split; validated here (DataError).

    all_test: every image is a test image (evaluating a run on data it never saw): no training,
    validation or calibration split.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data not found: {path}")
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if anomalies is not None and not Path(anomalies).is_dir():
        raise DataError(f"anomaly folder not found: {anomalies}")
    if anomalies is not None and os.path.realpath(anomalies) == os.path.realpath(root):
        raise DataError(f"--anomalies {anomalies} is DATA itself: give the good images and the defects as two folders")
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                    ("calib_anomaly_fraction", calib_anomaly_fraction)):
        if not 0.0 <= v < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {v}")
    if layout == "auto":
        try:
            layout = detect_layout(root)
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    # Said, not ignored: a user who passes these expects them to change what is evaluated.
    if anomalies is not None and layout != "folders":
        raise DataError(f"--anomalies only applies to the folders layout; {path} is {layout} "
                        "(its anomalies come from its own test folders)")
    if normal_classes and layout not in ("classes", "idx"):
        raise DataError(f"--normal-classes only applies to the classes and idx layouts; {path} is {layout}")
    spec = {
        "path": str(root.resolve()),
        "layout": layout,
        "anomalies": str(Path(anomalies).resolve()) if anomalies else None,
        "normal_classes": [str(c) for c in normal_classes] if normal_classes else None,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "calib_anomaly_fraction": calib_anomaly_fraction,
        "seed": seed,
        "max_train": max_train,
    }
    if all_test:  # only when set, so that the specs kept in run.json stay as they were
        spec["all_test"] = True
    return spec


def detect_layout(root: Path) -> str:
    if root.is_file():
        if root.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")):
            return "idx"
        raise DataError(f"{root} is a file: DATA is a folder of images (or an MNIST-style *idx3-ubyte[.gz] file)")
    if any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in root.iterdir()):
        return "idx"
    if (root / "train" / "good").is_dir():
        return "mvtec"
    if (root / "train").is_dir() and _subdirs(root / "train"):
        return "classes"
    return "folders"


# -- listing items ----------------------------------------------------------------------------


def list_files(folder: Path, exclude: Optional[str] = None) -> List[Path]:
    """Every file under ``folder``, sorted; hidden files and folders (".name") left out.

    Linked folders are followed, each real folder once, and never up to a folder that holds
    ``folder`` (so neither a loop nor a link to ".." or "/" leaves it); a file reached under two
    names is listed once. Broken links and folders that cannot be listed are returned too, so that
    loading names each one and counts it as skipped. ``exclude``: a folder inside ``folder`` to
    leave out (the --anomalies folder). Raises DataError if ``folder`` itself cannot be listed.
    """
    if not folder.is_dir():
        return []
    root = os.path.realpath(folder)
    skip = os.path.realpath(exclude) if exclude else None
    found: List[Tuple[str, str]] = []  # (path, real path): the real one only resolved through links
    seen = set()
    stack = [(str(folder), root)]  # a stack, not recursion: any depth of nesting
    while stack:
        top, real = stack.pop()
        if real in seen or real == skip or (real != root and os.path.commonpath([real, root]) == real):
            continue
        seen.add(real)
        try:
            with os.scandir(top) as it:
                # Sorted, real folders before links to them: which copy of a linked folder is
                # listed must not depend on the order the disk returns entries in, or the split would.
                entries = sorted(it, key=lambda e: (e.is_symlink(), e.name))
        except OSError as e:
            if top == str(folder):
                raise DataError(f"cannot read {folder}: {e.strerror or e}") from None
            _unlistable[top] = f"a folder that cannot be read ({e.strerror or e})"
            found.append((top, real))
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            r = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append((e.path, r))
            else:
                found.append((e.path, r))
        stack += reversed(subdirs)
    out, reached = [], set()
    for path, r in sorted(found, key=lambda f: Path(f[0])):
        if r not in reached:  # the same file reached under two names is one image
            reached.add(r)
            out.append(Path(path))
    return out


_unlistable: Dict[str, str] = {}  # folder -> why it could not be listed, for the skip warning


def image_files(folder: Path) -> List[Path]:
    """The files under ``folder`` (:func:`list_files`) whose names say they are images."""
    return [p for p in list_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


def _subdirs(folder: Path) -> List[Path]:
    """The visible subfolders of ``folder``, sorted (a hidden one, e.g. .ipynb_checkpoints, is no class).

    A link to a missing folder, or a folder that cannot be listed, is left out with a warning.
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        log.warning("ignored %s: %s", printable(str(folder)), e.strerror or e)
        return []
    out = []
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            out.append(p)
        elif p.is_symlink():
            log.warning("ignored %s: a link to a missing folder", printable(str(p)))
    return out


def _list_mvtec(root: Path) -> Tuple[List[Item], List[Item]]:
    train = [Item(str(p)) for p in list_files(root / "train" / "good")]
    test: List[Item] = []
    for d in _subdirs(root / "test") if (root / "test").is_dir() else []:
        for p in list_files(d):
            mask = root / "ground_truth" / d.name / f"{p.stem}_mask.png"
            try:
                has_mask = mask.is_file()
            except OSError:  # it may exist behind a folder we cannot search: load_masks says so
                has_mask = True
            test.append(Item(str(p), label=int(d.name != "good"), kind=d.name,
                             mask=str(mask) if has_mask else None))
    return train, test


def _list_classes(root: Path, normal: Optional[Sequence[str]]) -> Tuple[List[Item], List[Item]]:
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder of class folders (layout classes)")
    classes = [p.name for p in _subdirs(root / "train")]
    normal_set = set(normal) if normal else set(classes)
    unknown = normal_set - set(classes)
    if unknown:
        raise DataError(f"normal class(es) {sorted(unknown)} not found under {root / 'train'}")
    train = [Item(str(p), cls=c) for c in classes if c in normal_set for p in list_files(root / "train" / c)]
    test = []
    if (root / "test").is_dir():
        for d in _subdirs(root / "test"):
            bad = d.name not in normal_set
            test += [Item(str(p), label=int(bad), kind=d.name if bad else "good", cls=d.name) for p in list_files(d)]
    return train, test


def _idx_files(root: Path) -> Dict[str, Path]:
    names = {}
    for p in ([root] if root.is_file() else root.iterdir()):
        n = p.name
        split = "test" if n.startswith(("t10k", "test")) else "train"
        what = "images" if "idx3" in n else "labels" if "idx1" in n else None
        if what:
            names[f"{split}_{what}"] = p
    return names


@lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzip) as a numpy array (uint8 images or labels)."""
    opener = gzip.open if path.endswith(".gz") else open
    if not os.path.isfile(path):  # a FIFO would block the read
        raise DataError(f"{path}: not a regular file")
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08 or ndim == 0:
            raise DataError(f"{path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
        want = math.prod(shape)  # Python ints: a corrupt header must not overflow into a negative size
        if arr.size != want:
            raise DataError(f"{path}: truncated IDX file ({arr.size} of {want} bytes)")
        if ndim == 3 and 0 in shape[1:]:
            raise DataError(f"{path}: images of {shape[1]}x{shape[2]} px")
        return arr.reshape(shape)
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"{path}: unreadable IDX file ({e})") from None


def _list_idx(root: Path, normal: Optional[Sequence[str]]) -> Tuple[List[Item], List[Item]]:
    f = _idx_files(root)
    if "train_images" not in f:
        raise DataError(f"{root}: no *idx3-ubyte[.gz] training images")
    normal_set = set(normal) if normal else None
    items: Dict[str, List[Item]] = {"train": [], "test": []}
    for split in ("train", "test"):
        if f"{split}_images" not in f:
            continue
        images = read_idx(str(f[f"{split}_images"]))
        if images.ndim != 3:
            raise DataError(f"{f[f'{split}_images']}: not an images IDX file (shape {images.shape}, want N x H x W)")
        n = images.shape[0]
        labels = read_idx(str(f[f"{split}_labels"])) if f"{split}_labels" in f else None
        if split == "train" and labels is None and normal_set is not None:
            raise DataError(f"--normal-classes needs labels: no *idx1-ubyte[.gz] labels file in {root}")
        if labels is not None and labels.shape != (n,):
            raise DataError(f"{f[f'{split}_labels']}: {labels.shape[0]} labels for the {n} images "
                            f"in {f[f'{split}_images'].name}")
        if split == "train" and labels is not None and normal_set is not None:
            unknown = normal_set - {str(int(v)) for v in np.unique(labels)}
            if unknown:
                raise DataError(f"normal class(es) {sorted(unknown)} not found in {f['train_labels']}")
        for i in range(n):
            c = str(int(labels[i])) if labels is not None else ""
            bad = normal_set is not None and c not in normal_set
            if split == "train" and bad:
                continue  # training sees normals only
            items[split].append(Item(str(f[f"{split}_images"]), i, int(bad), f"class_{c}" if bad else "good", c))
    return items["train"], items["test"]


def list_items(spec: Dict[str, Any]) -> Tuple[List[Item], List[Item]]:
    """(train normals, test items) as the layout describes them, before the split."""
    root, layout = Path(spec["path"]), spec["layout"]
    for what, where in (("data", root), ("anomaly folder", spec.get("anomalies"))):
        if where and not Path(where).exists():  # a spec from run.json outlives its data
            raise DataError(f"{what} not found: {where} (moved or deleted since the run was trained?)")
    if layout == "mvtec":
        train, test = _list_mvtec(root)
    elif layout == "classes":
        train, test = _list_classes(root, spec.get("normal_classes"))
    elif layout == "idx":
        train, test = _list_idx(root, spec.get("normal_classes"))
    else:
        train, test = [Item(str(p)) for p in list_files(root, exclude=spec.get("anomalies"))], []
        if spec.get("anomalies"):
            bad = Path(spec["anomalies"])
            test = [Item(str(p), label=1, kind=bad.name) for p in list_files(bad, exclude=str(root))]
    if not train:
        raise DataError(f"no training images found in {root} (layout {layout})")
    return train, test


def _image_item(it: Item) -> bool:
    return it.index >= 0 or Path(it.source).suffix.lower() in IMAGE_SUFFIXES


def split_items(spec: Dict[str, Any]) -> Dict[str, List[Item]]:
    """Train / validation / test (and calibration anomalies) items, reproducible from spec['seed']."""
    listed, listed_test = list_items(spec)
    # Files that are not images by name stay out of the split (so they take no validation, test or
    # calibration place) and go with the training ones, where loading names and counts each as skipped.
    train = [it for it in listed if _image_item(it)]
    test = [it for it in listed_test if _image_item(it)]
    others = [it for it in listed + listed_test if not _image_item(it)]
    if not train:  # then every listed normal is a non-image
        raise DataError(f"no image files in {spec['path']} (only {len(listed)} other file(s), "
                        f"e.g. {Path(listed[0].source).name}; images are {', '.join(sorted(IMAGE_SUFFIXES))})")
    if spec.get("all_test"):
        return {"train": [], "val": [], "test": train + test + others, "calib": []}
    rng = np.random.default_rng(spec["seed"])
    order = rng.permutation(len(train))
    train = [train[i] for i in order]
    has_test_normals = any(it.label == 0 for it in test)
    n_test = 0 if has_test_normals or not test else int(round(spec["test_fraction"] * len(train)))
    n_val = max(1, int(round(spec["val_fraction"] * len(train))))
    if len(train) - n_test - n_val < 1:
        raise DataError(f"only {len(train)} training image(s) in {spec['path']}: too few to hold out validation "
                        "and test splits")
    test = train[:n_test] + test
    val = train[n_test : n_test + n_val]
    train = train[n_test + n_val :]
    if spec.get("max_train"):
        train = train[: spec["max_train"]]
    train += others
    calib: List[Item] = []
    frac = spec.get("calib_anomaly_fraction") or 0.0
    if frac > 0:
        anomalies = [i for i, it in enumerate(test) if it.label == 1]
        pick = set(rng.permutation(anomalies)[: int(round(frac * len(anomalies)))].tolist())
        calib = [test[i] for i in sorted(pick)]
        test = [it for i, it in enumerate(test) if i not in pick]
    return {"train": train, "val": val, "test": test, "calib": calib}


@dataclass
class Dataset:
    """A dataset spec and its reproducible split into train / val / test / calib items.

    ``val`` is the held-out part of the train normals (calibration); ``calib`` holds labelled
    anomalies set aside for best-F1 calibration; ``test`` holds the rest, labelled.
    """

    spec: Dict[str, Any]
    splits: Dict[str, List[Item]]

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> Dataset:
        """The same split again, e.g. from run.json's ``dataset`` block."""
        return cls(dict(spec), split_items(spec))

    def items(self, split: str) -> List[Item]:
        if split not in self.splits:
            raise KeyError(f"split must be one of {tuple(self.splits)}, got {split!r}")
        return self.splits[split]

    def arrays(self, split: str, pre: Preprocess) -> Tuple[np.ndarray, List[Item], List[str]]:
        """Preprocessed (N, H, W, C) float32 of a split, the items kept, and the skipped file names."""
        items = self.items(split)
        x, kept, skipped = load_items(items, pre, split)
        return x, [items[i] for i in kept], skipped

    def load(self, pre: Preprocess, with_test: bool = True) -> Splits:
        """Every split preprocessed at once (what ``fit`` trains and calibrates on)."""
        return rebuild_splits(self.spec, pre, with_test)

    def counts(self) -> Dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def load_dataset(
    path: str,
    layout: str = "auto",
    anomalies: Optional[str] = None,
    normal_classes: Optional[Sequence[str]] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    calib_anomaly_fraction: float = 0.0,
    seed: int = 0,
    max_train: Optional[int] = None,
) -> Dataset:
    """List and split a dataset (no pixels read yet). Raises DataError for a missing or empty one.

    val_fraction: share of the train normals held out for calibration; test_fraction: share of the
    normals held out as test normals when the layout has none (plain folders).
    """
    return Dataset.from_spec(dataset_spec(path, layout, anomalies, normal_classes, val_fraction, test_fraction,
                                          calib_anomaly_fraction, seed, max_train))


# -- loading pixels -----------------------------------------------------------------------------


def _pixels(item: Item) -> Any:
    if item.index >= 0:
        return read_idx(item.source)[item.index]
    return item.source


def load_items(items: Sequence[Item], pre: Preprocess, desc: str = "",
               roi_check: bool = False) -> Tuple[np.ndarray, List[int], List[str]]:
    """Preprocess items into (N, H, W, C); bad files are skipped with a warning naming each one.

    roi_check: a crop that misses the first ROI_MISSES images, before any fits, is a DataError
    naming --roi (the training split's images are what the user's --roi was meant for).
    Returns the array, the indices of the items kept and the skipped file names.
    """
    out = np.empty((len(items), *pre.shape), np.float32)
    kept: List[int] = []
    skipped: List[str] = []
    missed: List[Tuple[str, str]] = []  # crop misses held back while they may still be a wrong --roi
    for i, it in enumerate(_progress(items, desc)):
        if not _image_item(it):
            why = _unlistable.get(it.source) or (
                "a broken link" if os.path.islink(it.source) and not os.path.exists(it.source) else "not an image file")
            _skip(skipped, it.source, why)
            continue
        try:
            out[len(kept)] = pre(_pixels(it))
        except RoiError as e:
            if not (roi_check and not kept):
                _skip(skipped, it.source, str(e))
                continue
            missed.append((it.source, str(e)))
            if len(missed) >= ROI_MISSES:
                # A crop that fits none of the first images is a wrong --roi, not a folder of bad files.
                raise DataError(printable(f"--roi: {e} ({it.source}), and in the {len(missed) - 1} {desc} images "
                                          "before it: check the crop against the image size")) from None
            continue
        except ImageError as e:
            _skip(skipped, it.source, str(e))
            continue
        kept.append(i)
        for source, why in missed:  # a crop that fits some images: those it missed are bad files after all
            _skip(skipped, source, why)
        missed.clear()
    for source, why in missed:
        _skip(skipped, source, why)
    return out[: len(kept)], kept, skipped


ROI_MISSES = 10  # images a split's crop misses before it keeps one: then the --roi is wrong


_skip_reasons: Dict[str, str] = {}  # file -> why it was skipped, for the one-line error


def _skip(skipped: List[str], source: str, reason: str) -> None:
    # A newline or an undecodable byte in a file name must not break the one-line warning.
    log.warning("%s", printable(f"skipped {source}: {reason}"))
    _skip_reasons[source] = reason
    skipped.append(source)


def load_masks(items: Sequence[Item], pre: Preprocess) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Ground-truth masks resized like the images (nearest), (N, H, W) bool, and (N,) bool: whose
    masks are known (normals, and anomalies whose mask file reads). (None, None) if no item has one.

    Any non-zero mask pixel is a defect (0/255 MVTec masks, 0/1 masks and coloured ones alike). A
    mask whose shape differs from its image's, or that marks nothing on a defect image, is ignored
    with a warning: stretched or empty, it would only make the pixel metrics wrong.
    """
    if not any(it.mask for it in items):
        return None, None
    mask_pre = Preprocess(pre.size, "gray", pre.roi, "nearest", 1.0, 0.0, draft=False)
    masks = np.zeros((len(items), *pre.size), bool)
    known = np.array([it.label == 0 for it in items], bool)
    for i, it in enumerate(items):
        if not it.mask:
            continue
        try:
            masks[i] = mask_pre(_binary_mask(it))[..., 0] > 0
        except (ImageError, OSError, SyntaxError, ValueError) as e:
            log.warning("ignored the mask %s: %s", it.mask, e)
            continue
        if it.label == 1 and not masks[i].any():
            log.warning("ignored the mask %s: it marks no defect pixel", it.mask)
            continue
        known[i] = True
    return masks, known


def _binary_mask(it: Item) -> Image.Image:
    """``it.mask`` as a 0/255 L image of its image's shape: any non-zero pixel (any channel, any bit
    depth: 0/1 and 16-bit masks too) is a defect. Raises ImageError if the shapes differ."""
    with Image.open(it.source) as im, Image.open(it.mask) as mk:
        (w, h), (mw, mh) = im.size, mk.size
        # Another resolution of the same shape is fine (resized); another shape would be stretched.
        if abs(w * mh - h * mw) > 0.01 * w * mh:
            raise ImageError(f"its {mw}x{mh} px do not have the shape of the {w}x{h} px image")
        mk = mk.convert("RGBA") if mk.mode == "P" else mk
        bands = np.asarray(mk).reshape(mh, mw, -1)
        alpha = mk.getbands().index("A") if "A" in mk.getbands() else None
        if alpha is not None and bands[..., alpha].min() != bands[..., alpha].max():
            a = bands[..., alpha] > 0  # drawn with transparency: the opaque part is the defect
        else:
            a = (np.delete(bands, [alpha], axis=-1) if alpha is not None else bands).any(axis=-1)
    if (mw, mh) != (w, h):  # the ROI is in image px
        a = np.asarray(Image.fromarray(a.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return Image.fromarray(a.astype(np.uint8) * 255)


def tqdm_class() -> Any:
    """tqdm's progress bar class, or None where tqdm is not installed or stderr is no terminal (in a
    log file a bar is only carriage returns; bars are a nicety)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm

        return tqdm
    except ImportError:
        return None


def _progress(items: Sequence[Any], desc: str):
    bar = tqdm_class() if len(items) >= 500 and desc else None
    return bar(items, desc=desc, unit="img", leave=False) if bar else items


def content_hash(items: Sequence[Item]) -> str:
    """SHA-256 over every image file's bytes (IDX files once), in a fixed order: the data's identity.

    Files that are not images by name are left out (a video beside the images is not read); an
    unreadable file counts by its name alone.
    """
    h = hashlib.sha256()
    for src in sorted({it.source for it in items if _image_item(it)}):
        h.update(os.fsencode(src.rsplit("/", 1)[-1]))
        if not os.path.isfile(src):  # a broken link, or a FIFO that would block the read
            h.update(b"\0unreadable")
            continue
        try:
            with open(src, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            h.update(b"\0unreadable")
    return h.hexdigest()


def rebuild_run_splits(info: Dict[str, Any], pre: Preprocess, spec: Optional[Dict[str, Any]] = None,
                       with_test: bool = True, with_train: bool = True) -> Splits:
    """The splits of ``spec`` (default: the run's own dataset, from run.json ``info``), with a warning
    when they are drawn from the run's data folder but its images differ from fit's: the split may
    then test on images the model trained on."""
    trained = info["dataset"]
    spec = spec or trained
    splits = rebuild_splits(spec, pre, with_test, with_train)
    then = (info.get("data_summary") or {}).get("content_sha256")
    same_data = all(spec.get(k) == trained.get(k) for k in ("path", "layout", "anomalies", "normal_classes"))
    if same_data and then and then != splits.summary["content_sha256"]:
        where = spec["path"] + (f" and {spec['anomalies']}" if spec.get("anomalies") else "")
        log.warning("the images in %s differ from those the run was trained on (content hash; files added, "
                    "removed or changed, or listed differently by this version): the split is drawn again and "
                    "may put training images in the test set", where)
    return splits


def rebuild_splits(spec: Dict[str, Any], pre: Preprocess, with_test: bool = True,
                   with_train: bool = True) -> Splits:
    """Load every split that ``spec`` describes, preprocessed with ``pre``. Raises DataError if empty.

    with_train=False: leave the training images unread (evaluation needs none): x_train is empty.
    """
    parts = split_items(spec)
    x_train, kept_tr, skip_tr = load_items(parts["train"] if with_train else [], pre, "train", roi_check=True)
    x_val, _, skip_val = load_items(parts["val"], pre, "validation")
    test_items = parts["test"] if with_test else []
    x_test, kept_te, skip_te = load_items(test_items, pre, "test")
    test_items = [test_items[i] for i in kept_te]
    x_cal, _, skip_cal = load_items(parts["calib"], pre, "calibration")
    masks, masks_known = load_masks(test_items, pre)
    for name, x, skip in (("training", x_train, skip_tr), ("validation", x_val, skip_val)):
        if len(x) == 0 and not spec.get("all_test") and (with_train or name != "training"):
            # Say why on the one line, e.g. every file a float TIFF the preprocessing refuses.
            why = f" ({len(skip)} skipped, e.g. {skip[0]}: {_skip_reasons.get(skip[0], 'unreadable')})" if skip else ""
            raise DataError(printable(f"no readable {name} images in {spec['path']}{why}"))
    skipped = skip_tr + skip_val + skip_te + skip_cal
    y = np.array([it.label for it in test_items], np.int64)
    summary = {
        "folder": spec["path"],
        "layout": spec["layout"],
        "counts": {
            "train": len(x_train),
            "val": len(x_val),
            "test_normal": int((y == 0).sum()),
            "test_anomalous": int((y == 1).sum()),
            "calib_anomalous": len(x_cal),
            "skipped": len(skipped),
        },
        "skipped_files": skipped[:50],
        "content_sha256": content_hash(parts["train"] + parts["val"] + parts["test"] + parts["calib"]),
    }
    return Splits(
        x_train=x_train,
        x_val=x_val,
        x_test=x_test,
        y_test=y,
        test_kinds=[it.kind for it in test_items],
        summary=summary,
        train_classes=[parts["train"][i].cls for i in kept_tr],
        test_classes=[it.cls for it in test_items],
        masks_test=masks,
        masks_known=masks_known,
        x_calib_anomalies=x_cal if len(x_cal) else None,
        items_test=test_items,
    )
