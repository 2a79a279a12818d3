"""Explanations: where in an image the anomaly is, two ways.

* **per-image (Ano-Unet reference).** For each image x a small U-Net G is trained from scratch on
  that one image with L = mean|x - G(x)| + beta * mean|F(G(x)) - C|, where F is a frozen metric
  embedder (unit-length embedding of a metric run) and C the mean normal embedding. G learns to
  copy x except where copying would keep x away from the normal cluster; the heatmap is |x - G(x)|.
  (Means instead of sums: the same minimiser, and beta stays independent of image size.)
* **one-pass.** One small U-Net, trained once on normal images (target: empty mask) and synthetic
  anomalies (target: their mask, from :mod:`training.synthetic`), predicts the anomaly mask in a
  single forward pass. Built only from Conv2D, MaxPool, nearest Resizing and Concatenate at batch 1,
  so it converts to full-int8 TFLite for the device / Edge TPU. The .tflite outputs the logit and
  :class:`OnePass` applies the sigmoid in numpy: an int8 sigmoid output has steps of 1/256, which
  ties every pixel below ~0.002 at 0 and loses the ranking pixel AUROC measures.

An explainer directory (``edge-train fit-explainer``) holds ``explainer.keras``,
``explainer_int8.tflite`` and ``explainer.json`` (preprocess, training summary).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_detect.atomic import write_atomic
from edge_detect.oneline import first_line, os_error
from edge_detect.preprocess import Preprocess

from .data import image_files
from .synthetic import KINDS, AnomalyGenerator

EXPLAINER_JSON = "explainer.json"
EXPLAINER_KERAS = "explainer.keras"
EXPLAINER_TFLITE = "explainer_int8.tflite"
METHODS = ("per-image", "one-pass")


class ExplainError(Exception):
    """A user error (missing run, wrong kind of directory); the CLI prints it on one line, exit 2."""


# -- the network ----------------------------------------------------------------------------------


def unet(input_shape: Tuple[int, int, int], width: int = 8, depth: int = 2, out_channels: int = 1,
         out_activation: str = "sigmoid", batch_size: Optional[int] = None, out_bias: float = 0.0) -> Any:
    """A small U-Net of Edge TPU-mappable ops: Conv2D+ReLU, MaxPool, nearest Resizing, Concatenate.

    input_shape: (H, W, C) with H and W divisible by 2**depth. width: filters of the first level,
    doubling per level. out_activation "sigmoid" lowers to LOGISTIC, "linear" gives the logit.
    out_bias: initial bias of the output layer (a prior logit).
    """
    import keras
    from keras import layers

    h, w = input_shape[:2]
    if h % (2**depth) or w % (2**depth):
        raise ValueError(f"input {h}x{w} px must be divisible by {2 ** depth} for a depth-{depth} U-Net")
    inp = keras.Input(input_shape, batch_size=batch_size, name="image")
    x = inp
    skips = []
    for d in range(depth):
        x = layers.Conv2D(width * 2**d, 3, padding="same", activation="relu", name=f"down{d}a")(x)
        x = layers.Conv2D(width * 2**d, 3, padding="same", activation="relu", name=f"down{d}b")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{d}")(x)
    x = layers.Conv2D(width * 2**depth, 3, padding="same", activation="relu", name="bottom")(x)
    for d in reversed(range(depth)):
        # Nearest Resizing lowers to RESIZE_NEAREST_NEIGHBOR (UpSampling2D would give RESHAPE+TILE).
        x = layers.Resizing(h // 2**d, w // 2**d, interpolation="nearest", name=f"up{d}")(x)
        x = layers.Concatenate(name=f"skip{d}")([x, skips[d]])
        x = layers.Conv2D(width * 2**d, 3, padding="same", activation="relu", name=f"up{d}a")(x)
    out = layers.Conv2D(out_channels, 1, activation=out_activation, name="out",
                        bias_initializer=keras.initializers.Constant(out_bias))(x)
    return keras.Model(inp, out, name="unet")


# -- per-image (Ano-Unet) -------------------------------------------------------------------------


@dataclass
class PerImageConfig:
    """beta: weight of the embedding term (reference: 50-80). epochs: optimisation steps on the one
    image (reference: 150-200; the default finishes in seconds at 64x64 on a laptop CPU)."""

    beta: float = 60.0
    epochs: int = 150
    learning_rate: float = 2e-3
    width: int = 8
    depth: int = 2
    seed: int = 0


class AnoUnet:
    """Per-image explanations against a frozen embedder F with normal centre C."""

    def __init__(self, embedder: Any, center: np.ndarray, cfg: Optional[PerImageConfig] = None) -> None:
        self.embedder = embedder
        self.embedder.trainable = False
        self.center = np.asarray(center, np.float32)
        self.cfg = cfg or PerImageConfig()

    def explain(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
        """(heatmap (H, W), G(x) (H, W, C), {"loss", "seconds"}) for one preprocessed image (H, W, C)."""
        import keras
        import tensorflow as tf

        c = self.cfg
        keras.utils.set_random_seed(c.seed)
        g = unet(tuple(x.shape), c.width, c.depth, x.shape[2], "sigmoid")
        opt = keras.optimizers.Adam(c.learning_rate)
        xb = tf.constant(x[None], tf.float32)
        center = tf.constant(self.center[None], tf.float32)
        beta = tf.constant(c.beta, tf.float32)
        emb, variables = self.embedder, g.trainable_variables

        @tf.function
        def step() -> Any:
            with tf.GradientTape() as tape:
                y = g(xb, training=True)
                loss = tf.reduce_mean(tf.abs(xb - y)) + beta * tf.reduce_mean(tf.abs(emb(y, training=False) - center))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        t0 = time.perf_counter()
        loss = 0.0
        for _ in range(c.epochs):
            loss = float(step())
        y = np.asarray(g(xb, training=False))[0]
        heat = np.abs(x - y).mean(axis=2)
        return heat, y, {"loss": loss, "seconds": time.perf_counter() - t0}


def load_metric_embedder(run_dir: Union[str, Path]) -> Tuple[Any, np.ndarray, Preprocess]:
    """(frozen unit-length embedder F, centre C, preprocess) from a metric run directory."""
    from . import metric
    from .metric_models import embedder_of

    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").is_file() or not (run_dir / metric.REFERENCE_FILE).is_file():
        raise ExplainError(f"{run_dir}: per-image explanations need a metric run directory "
                           f"(model.keras + {metric.REFERENCE_FILE}; train one with --model metric)")
    classifier, _, shape = metric.load_run(run_dir)
    # The l2norm layer exists whatever cfg.l2 says: F(G(x)) is compared on the unit sphere.
    f = embedder_of(classifier, "graph")
    emb, _ = metric.load_reference(run_dir)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return f, emb.mean(axis=0), _run_preprocess(run_dir, shape)


def _run_preprocess(run_dir: Path, shape: Sequence[int]) -> Preprocess:
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if "preprocess" in run:
        return Preprocess.from_dict(run["preprocess"])
    return Preprocess(size=(int(shape[0]), int(shape[1])), color="gray" if int(shape[2]) == 1 else "rgb")


# -- one-pass -------------------------------------------------------------------------------------


@dataclass
class OnePassConfig:
    """epochs over ``per_epoch`` images, half normal and half synthetic anomalies (fresh each epoch)."""

    epochs: int = 20
    per_epoch: int = 512
    batch_size: int = 16
    learning_rate: float = 2e-3
    width: int = 8
    depth: int = 2
    anomaly_fraction: float = 0.5
    kinds: Tuple[str, ...] = KINDS
    seed: int = 0
    out_bias: float = 0.0


def _dice_bce(y_true: Any, y_pred: Any) -> Any:
    """BCE plus soft Dice over the whole batch: masks cover a few % of the pixels, and BCE alone
    learns to say "nothing".

    The Dice is pooled over the batch, not taken per image: half the images are normal (empty
    mask), and a per-image Dice of an empty mask, 1 - 1 / (sum(pred) + 1), is near 1 for any
    prediction summing to more than a few px, so the cheapest minimum was 0 everywhere: the model
    collapsed to a constant (pixel AUROC 0.500 after int8, bench/explain_compare.py).
    """
    import keras
    from keras import ops

    bce = keras.losses.binary_crossentropy(y_true, y_pred)
    inter = ops.sum(y_true * y_pred)
    dice = 1 - (2 * inter + 1) / (ops.sum(y_true) + ops.sum(y_pred) + 1)
    return ops.mean(bce) + dice


def training_batch(x_normal: np.ndarray, n: int, gen: AnomalyGenerator, fraction: float, seed: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, C), target masks (n, H, W, 1)): a ``fraction`` are synthetic anomalies."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x_normal), n)
    n_anom = int(round(n * fraction))
    xs = x_normal[idx].copy()
    ys = np.zeros((n, *x_normal.shape[1:3], 1), np.float32)
    if n_anom:
        s = gen.batch(x_normal[idx[:n_anom]], n_anom, seed=seed)
        xs[:n_anom], ys[:n_anom, :, :, 0] = s.images, s.masks
    return xs, ys


def fit_one_pass(x_normal: np.ndarray, cfg: Optional[OnePassConfig] = None,
                 foreign: Optional[Sequence[np.ndarray]] = None, verbose: int = 0,
                 progress: Optional[Callable[[int, float], None]] = None) -> Tuple[Any, Dict[str, Any]]:
    """Train the one-pass explainer on normal images (N, H, W, C) in 0..1; returns (model, summary)."""
    import keras

    cfg = cfg or OnePassConfig()
    if len(x_normal) == 0:
        raise ExplainError("no normal images to train the explainer on")
    keras.utils.set_random_seed(cfg.seed)
    model = unet(tuple(x_normal.shape[1:]), cfg.width, cfg.depth, 1, "sigmoid", out_bias=cfg.out_bias)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=_dice_bce)
    gen = AnomalyGenerator(cfg.kinds, foreign)
    t0 = time.perf_counter()
    losses: List[float] = []
    for e in range(cfg.epochs):
        xs, ys = training_batch(x_normal, cfg.per_epoch, gen, cfg.anomaly_fraction, cfg.seed * 100_003 + e)
        h = model.fit(xs, ys, batch_size=cfg.batch_size, epochs=1, shuffle=True, verbose=verbose)
        losses.append(float(h.history["loss"][-1]))
        if progress:
            progress(e + 1, losses[-1])
    return model, {"config": {**asdict(cfg), "kinds": list(cfg.kinds)}, "loss": losses,
                   "train_seconds": time.perf_counter() - t0, "n_normal": int(len(x_normal))}


def representative_set(x_normal: np.ndarray, n: int = 200, foreign: Optional[Sequence[np.ndarray]] = None,
                       fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Images (n, H, W, C) for int8 calibration: normals and synthetic anomalies, like the training batches.

    Normals alone never drive the logits up, so the converter would clip the anomalous range
    (a sigmoid capped at 0.5 in our runs).
    """
    from .export import representative_sample

    return representative_sample(x_normal, n, seed, synthetic_share=fraction, foreign=foreign)


def export_one_pass(model: Any, representative: np.ndarray, out: Union[str, Path]) -> Path:
    """Full-int8 (float in/out) batch-1 TFLite of the explainer's logit at ``out``; raises if float ops remain.

    representative: calibration inputs with anomalies in them (:func:`representative_set`).
    """
    from .export import convert, float_ops, op_table

    width, depth, ch, _ = _unet_params(model.get_config())
    logit = unet(tuple(model.input_shape[1:]), width, depth, ch, "linear", batch_size=1)
    logit.set_weights(model.get_weights())
    x = np.asarray(representative[:4], np.float32)
    diff = float(np.max(np.abs(_sigmoid(np.asarray(logit(x, training=False))) - np.asarray(model(x, training=False)))))
    if diff > 1e-4:
        raise ExplainError(f"the batch-1 logit rebuild differs from the trained explainer (max |diff| {diff:.3g})")
    blob, _ = convert(logit, "int8", np.asarray(representative, np.float32))
    out = write_atomic(out, blob)
    left = float_ops(op_table(out))
    if left:
        raise ExplainError(f"explainer keeps float ops after int8 conversion: {', '.join(left)}")
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic in numpy without overflow warnings for very negative logits."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float32)))


def _unet_params(cfg: Dict[str, Any]) -> Tuple[int, int, int, str]:
    """(width, depth, out_channels, activation) read back from a built U-Net's config."""
    names = [lyr["name"] for lyr in cfg["layers"]]
    depth = sum(1 for n in names if n.startswith("pool"))
    conf = {lyr["name"]: lyr["config"] for lyr in cfg["layers"]}
    return int(conf["down0a"]["filters"]), depth, int(conf["out"]["filters"]), str(conf["out"]["activation"])


def save_explainer(out_dir: Union[str, Path], model: Any, pre: Preprocess, summary: Dict[str, Any],
                   representative: np.ndarray) -> Path:
    """Write explainer.keras, explainer_int8.tflite and explainer.json into ``out_dir``.

    representative: int8 calibration inputs with anomalies in them (:func:`representative_set`).
    """
    from .train import save_keras_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_keras_model(model, out_dir / EXPLAINER_KERAS)
    export_one_pass(model, representative, out_dir / EXPLAINER_TFLITE)
    doc = {"kind": "one-pass-explainer", "preprocess": pre.to_dict(), "tflite_output": "logit", **summary,
           "tflite_bytes": (out_dir / EXPLAINER_TFLITE).stat().st_size}
    write_atomic(out_dir / EXPLAINER_JSON, json.dumps(doc, indent=2) + "\n")
    return out_dir


class OnePass:
    """A saved one-pass explainer, run through the device's LiteRT runtime (the int8 .tflite)."""

    def __init__(self, path: Union[str, Path], use_tflite: bool = True) -> None:
        path = Path(path)
        meta = path / EXPLAINER_JSON
        if not meta.is_file():
            raise ExplainError(f"{path}: no {EXPLAINER_JSON}; train a one-pass explainer with "
                               "'edge-train fit-explainer DATA --out DIR'")
        try:
            self.meta = json.loads(meta.read_text())
            self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        except (ValueError, TypeError, KeyError) as e:  # a truncated or hand-edited file
            raise ExplainError(f"{meta}: not a valid explainer description ({type(e).__name__}: {e})") from None
        if use_tflite:
            from edge_detect.runtime import TFLiteModel

            try:
                self._tfl = TFLiteModel(path / EXPLAINER_TFLITE, num_threads=1)
            except (ValueError, RuntimeError) as e:
                first = first_line(e)
                raise ExplainError(f"{path / EXPLAINER_TFLITE}: not a loadable TFLite model ({first})") from None
            # Explainers saved before the logit export end in the sigmoid themselves.
            if self.meta.get("tflite_output") == "logit":
                self._run = lambda x: _sigmoid(self._tfl.run_batch(x))
            else:
                self._run = lambda x: self._tfl.run_batch(x)
        else:
            import keras

            m = keras.models.load_model(path / EXPLAINER_KERAS, compile=False)
            self._run = lambda x: np.asarray(m.predict(x, verbose=0, batch_size=32))

    def explain(self, x: np.ndarray) -> np.ndarray:
        """Anomaly probability maps (N, H, W) for preprocessed images (N, H, W, C)."""
        return self._run(np.asarray(x, np.float32))[..., 0]


# -- the command ----------------------------------------------------------------------------------


def explanation_png(x: np.ndarray, heat: np.ndarray, threshold: float, out: Path, pre: Preprocess) -> None:
    """input | heatmap overlay with region boxes, side by side, as PNG (model px)."""
    from PIL import Image

    from edge_detect.heatmap import draw_boxes as boxes
    from edge_detect.heatmap import overlay, regions, to_uint8_image

    img = to_uint8_image(x, pre.scale, pre.offset)
    ov = boxes(overlay(img, heat, threshold), regions(heat, threshold))
    img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
    Image.fromarray(np.concatenate([img, np.full((img.shape[0], 2, 3), 255, np.uint8), ov], axis=1)).save(out)


def expand_images(images: Sequence[Union[str, Path]]) -> List[Path]:
    """IMAGE... as files: a folder gives its images (recursive, sorted); repeats are dropped.

    Raises ExplainError for a path that does not exist or a folder without images: a typo is
    found before any explainer is loaded.
    """
    out: List[Path] = []
    for p in map(Path, images):
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise ExplainError(f"{p}: a folder with no images in it")
            out += found
        elif p.exists() or p.is_symlink():  # a dangling link is reported as unreadable, with the rest
            out.append(p)
        else:
            raise ExplainError(f"no such image: {p}")
    unique: Dict[str, Path] = {}  # the same file given twice (or inside a folder given too) once
    for p in out:
        unique.setdefault(os.path.normpath(os.path.abspath(p)), p)
    return list(unique.values())


def png_names(images: Sequence[Union[str, Path]], method: str) -> List[str]:
    """``STEM_METHOD.png`` per image, unique: where stems collide (good/000.png, crack/000.png),
    parent folder names are prefixed (good_000_..., crack_000_...) until they differ.

    Compared without case, so that a case-insensitive file system cannot merge two either.
    """
    full = [Path(os.path.normpath(os.path.abspath(p))) for p in images]
    parents = [f.parent.parts[1:] for f in full]  # without the anchor ("/")
    depth = [0] * len(full)

    def name(i: int) -> str:
        return "_".join([*parents[i][len(parents[i]) - depth[i]:], full[i].stem])

    while True:
        groups: Dict[str, List[int]] = {}
        for i in range(len(full)):
            groups.setdefault(name(i).lower(), []).append(i)
        grew = False
        for group in groups.values():
            if len(group) < 2:
                continue
            for i in group:
                if depth[i] < len(parents[i]):
                    depth[i] += 1
                    grew = True
        if not grew:
            break
    names: List[str] = []
    used: set = set()
    for i in range(len(full)):
        n, c = name(i), 1
        while n.lower() in used:  # the last resort (folders that differ only in case): a counter
            c += 1
            n = f"{name(i)}-{c}"
        used.add(n.lower())
        names.append(f"{n}_{method}.png")
    return names


def make_out_dir(out_dir: Union[str, Path]) -> List[Path]:
    """Create ``out_dir`` now, so that a wrong --out fails before the long work; the folders made,
    deepest first, for :func:`remove_made` when the work fails.

    Creating it is the only reliable check: /proc/foo, or a path under a file, pass every test
    short of that. Raises ExplainError "cannot use --out PATH: reason".
    """
    out_dir = Path(out_dir)
    missing = [q for q in [out_dir, *out_dir.parents] if not (q.exists() or q.is_symlink())]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_made(missing)
        raise ExplainError(f"cannot use --out {os_error(e, out_dir)}") from None
    return missing


def remove_made(made: Sequence[Path]) -> None:
    """Remove the folders :func:`make_out_dir` made, deepest first, where still empty."""
    for q in made:
        try:
            q.rmdir()
        except OSError:
            pass  # not empty (something was written) or already gone: leave it


def _image_problem(p: Path, e: Exception) -> str:
    """"PATH: reason" for an unreadable image, without the path twice (some ImageErrors end in it)."""
    why = str(e)
    if why.endswith(f": {p}"):
        why = why[: -len(str(p)) - 2]
    return f"{p}: {why}"


def _one_pass(target: Path) -> OnePass:
    if not (target / EXPLAINER_JSON).is_file():
        from . import metric

        if (target / "model.keras").is_file() and (target / metric.REFERENCE_FILE).is_file():
            raise ExplainError(f"{target}: a metric run, not a one-pass explainer: add --method per-image, "
                               "or train an explainer with 'edge-train fit-explainer DATA --out DIR'")
    return OnePass(target)


def _per_image(target: Path) -> Tuple[Any, np.ndarray, Preprocess]:
    if (target / EXPLAINER_JSON).is_file():
        raise ExplainError(f"{target}: a one-pass explainer; per-image explanations need a metric run directory "
                           "(for this one, leave out --method per-image)")
    return load_metric_embedder(target)


def explain_paths(target: Union[str, Path], images: Sequence[Union[str, Path]], out_dir: Union[str, Path],
                  method: str = "one-pass", per_image: Optional[PerImageConfig] = None,
                  echo: Callable[[str], None] = print,
                  warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> List[Dict[str, Any]]:
    """Explain image files with an explainer dir (one-pass) or a metric run (per-image); write PNGs.

    images: files or folders (:func:`expand_images`). Returns one row per image: file, png, peak,
    measure ("probability": the one-pass map, boxes above 0.5; "abs_error": per-image |x - G(x)|
    in 0..1 of full scale), seconds; or file, error for an unreadable image, which is skipped
    with a warning. Raises ExplainError when none could be read, or for a wrong target or --out.
    """
    from edge_detect.preprocess import ImageError

    if method not in METHODS:
        raise ExplainError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    files = expand_images(images)
    target = Path(target)
    if not target.is_dir():
        raise ExplainError(f"{target}: no such run or explainer directory")
    made = make_out_dir(out_dir)
    try:
        if method == "one-pass":
            one = _one_pass(target)
            pre, threshold = one.preprocess, 0.5  # the explainer outputs a probability: 0.5 decides
        else:
            f, center, pre = _per_image(target)
            ano = AnoUnet(f, center, per_image)
    except BaseException:
        remove_made(made)
        raise
    out_dir = Path(out_dir)
    rows: List[Dict[str, Any]] = []
    for p, name in zip(files, png_names(files, method)):
        try:
            x = pre(p)
        except ImageError as e:
            if len(files) == 1:
                remove_made(made)
                raise ExplainError(_image_problem(p, e)) from None
            warn(f"warning: skipped {_image_problem(p, e)}")
            rows.append({"file": str(p), "error": str(e)})
            continue
        t0 = time.perf_counter()
        if method == "one-pass":
            heat = one.explain(x[None])[0]
            what = f"peak anomaly probability {heat.max():.3f} (boxes above {threshold})"
        else:
            heat, _, _ = ano.explain(x)
            # |x - G(x)| has no calibrated scale: show it relative to its own 99th percentile.
            threshold = float(np.quantile(heat, 0.99)) or 1e-6
            what = (f"peak |x-G(x)| {heat.max():.3f} of full scale "
                    f"(boxes above this image's 99th percentile, {threshold:.3f})")
        dt = time.perf_counter() - t0
        png = out_dir / name
        try:
            explanation_png(x, heat, threshold, png, pre)
        except OSError as e:  # e.g. a full disk: the rest would fail the same way
            raise ExplainError(f"cannot write {os_error(e, png)}") from None
        rows.append({"file": str(p), "png": str(png), "peak": float(heat.max()),
                     "measure": "probability" if method == "one-pass" else "abs_error", "seconds": round(dt, 3)})
        echo(f"{p}: {what}, {dt:.2f} s -> {png}")
    if all("error" in r for r in rows):
        remove_made(made)
        raise ExplainError(f"none of the {len(rows)} images could be read")
    return rows


def _click_commands() -> List[Any]:
    """``explain`` and ``fit-explainer`` for the ``edge-train`` group (thin wrappers)."""
    import click

    from edge_detect.errors import UserError

    @click.command("explain")
    @click.argument("target", metavar="EXPLAINER_OR_RUN")
    @click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
    @click.option("--out", "out_dir", default="explanations", show_default=True, type=click.Path(file_okay=False),
                  help="Folder for the PNGs.")
    @click.option("--method", type=click.Choice(METHODS), default="one-pass", show_default=True,
                  help="one-pass: an explainer dir (fit-explainer); per-image: Ano-Unet against a metric run.")
    @click.option("--epochs", type=int, default=PerImageConfig.epochs, show_default=True,
                  help="per-image: optimisation steps per image.")
    @click.option("--beta", type=float, default=PerImageConfig.beta, show_default=True,
                  help="per-image: weight of the embedding term.")
    def explain_cmd(target: str, images: Tuple[str, ...], out_dir: str, method: str, epochs: int,
                    beta: float) -> None:
        """Heatmaps of where IMAGE... is anomalous, as PNGs in --out.

        EXPLAINER_OR_RUN: an explainer directory from fit-explainer (--method one-pass), or a
        metric run directory (--method per-image). IMAGE: a file, or a folder of images.
        Unreadable images are skipped with a warning, and the exit code is then 1.
        """
        if epochs < 1 or not 0 <= beta < float("inf"):  # "not": nan fails every comparison
            raise UserError("--epochs must be >= 1 and --beta a finite number >= 0")
        try:
            rows = explain_paths(target, images, out_dir, method, PerImageConfig(beta=beta, epochs=epochs),
                                 click.echo, lambda m: click.echo(m, err=True))
        except ExplainError as e:
            raise UserError(str(e)) from None
        bad = [r["file"] for r in rows if "error" in r]
        if bad:  # as edge-detect score: the readable ones were explained, exit 1 says some were not
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            click.echo(f"error: {len(bad)} of {len(rows)} images could not be read (skipped): "
                       f"{', '.join(bad[:3])}{more}", err=True)
            sys.exit(1)

    @click.command("fit-explainer")
    @click.argument("data", type=click.Path(file_okay=False))
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                  help="Explainer directory to write.")
    @click.option("--input-size", type=click.IntRange(8, 1024), default=64, show_default=True,
                  help="Square input, px (a multiple of 4).")
    @click.option("--color", type=click.Choice(["gray", "rgb"]), default="gray", show_default=True)
    @click.option("--epochs", type=click.IntRange(1), default=OnePassConfig.epochs, show_default=True)
    @click.option("--per-epoch", type=click.IntRange(1), default=OnePassConfig.per_epoch, show_default=True,
                  help="Images per epoch (half synthetic anomalies, made fresh).")
    @click.option("--foreign", type=click.Path(file_okay=False), default=None,
                  help="Any folder of pictures for the foreign-object anomalies.")
    @click.option("--limit", type=click.IntRange(1), default=2000, show_default=True,
                  help="At most this many normal images.")
    # numpy's generators take no negative seed.
    @click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
    def fit_cmd(data: str, out_dir: str, input_size: int, color: str, epochs: int, per_epoch: int,
                foreign: Optional[str], limit: int, seed: int) -> None:
        """Train the one-pass explainer on a folder of normal images (+ synthetic anomalies)."""
        from .synthetic import load_foreign

        if input_size % 4:  # the U-Net pools twice
            raise UserError(f"--input-size must be a multiple of 4, got {input_size}")
        pre = Preprocess(size=(input_size, input_size), color=color)
        try:
            made = make_out_dir(out_dir)  # before the data load and the training: a wrong --out fails at once
            try:
                with _reading(data):
                    x = load_folder(data, pre, limit, seed)
                with _reading(str(foreign)):
                    pool = load_foreign(foreign, seed=seed) if foreign else None
                cfg = OnePassConfig(epochs=epochs, per_epoch=per_epoch, seed=seed)
                model, summary = fit_one_pass(x, cfg, pool, progress=lambda e, loss: click.echo(
                    f"epoch {e}/{epochs} loss {loss:.4f}"))
                summary["data"] = str(data)
                save_explainer(out_dir, model, pre, summary, representative_set(x, 200, pool, seed=seed))
            except BaseException:
                remove_made(made)  # a failed run (or Ctrl-C) leaves no empty --out behind
                raise
        except (ExplainError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        except OSError as e:  # e.g. the disk filled up while saving (the inputs' errors are _reading's)
            raise UserError(f"cannot use --out {os_error(e, out_dir)}") from None
        click.echo(f"explainer: {out_dir} ({len(x)} normal images, {summary['train_seconds']:.0f} s)")

    return [explain_cmd, fit_cmd]


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """An OSError while reading an input folder as an ExplainError naming its own file (or ``path``),
    not --out."""
    try:
        yield
    except OSError as e:
        # load_foreign's own FileNotFoundError ("no readable images in ...") has no errno: already whole.
        raise ExplainError(str(e) if e.errno is None else f"cannot read {os_error(e, path)}") from None


def load_folder(folder: Union[str, Path], pre: Preprocess, limit: int = 2000, seed: int = 0) -> np.ndarray:
    """Preprocessed images (N, H, W, C) of a folder (recursive); unreadable files skipped with a warning."""
    from edge_detect.preprocess import ImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise ExplainError(f"{folder}: no such folder")
    files = image_files(folder)
    files = [files[i] for i in np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])]
    xs = []
    for p in files:
        try:
            xs.append(pre(p))
        except ImageError as e:
            print(f"warning: skipped {p}: {e}", file=sys.stderr)
    if not xs:
        raise ExplainError(f"{folder}: no readable images")
    return np.stack(xs)


# For the edge-train group: main.add_command(explain_command); main.add_command(fit_explainer_command)
explain_command, fit_explainer_command = _click_commands()
