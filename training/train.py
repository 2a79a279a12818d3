"""Fit an autoencoder on normal images, calibrate its threshold, evaluate it, write the run directory.

RUN_DIR/model.keras (best checkpoint), RUN_DIR/run.json (everything needed to rebuild the data
and score), RUN_DIR/report/ (metrics.json + PNG plots).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from edge_detect.atomic import atomic_path, write_atomic
from edge_detect.bundle import read_json
from edge_detect.oneline import first_line
from edge_detect.preprocess import Preprocess
from edge_detect.scoring import ReconstructionScorer, Scorer, scorer_from_dict

from . import calibrate as cal
from .data import Splits, rebuild_run_splits, rebuild_splits
from .metrics import evaluate

log = logging.getLogger(__name__)
NOISES = ("gaussian", "salt_pepper", "speckle", "synthetic")


@dataclass
class FitConfig:
    """What ``edge-train fit`` trains. Sizes in px, learning rate per step, strength in 0..1 units."""

    family: str = "plain"
    input_size: int = 64
    color: str = "gray"
    roi: Optional[Tuple[int, int, int, int]] = None
    resize: str = "bilinear"
    bit_depth: int = 16  # significant bits of 16-bit images (12: a camera writing 0..4095)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    score: str = "mse"
    smooth: int = 5
    calibration: str = "mu_k_sigma"
    k: float = 3.0
    q: float = 0.99
    far: float = 0.01
    noise: str = "gaussian"
    noise_strength: float = 0.1  # synthetic: the fraction of training images that get a defect
    patience: int = 0
    loss: Optional[str] = None  # None: the family's default (models.loss_for)
    model_params: Dict[str, Any] = field(default_factory=dict)

    def preprocess(self) -> Preprocess:
        return Preprocess((self.input_size, self.input_size), self.color, self.roi, self.resize,
                          bit_depth=self.bit_depth)


@dataclass
class Run:
    """A loaded run directory: the Keras model plus what it needs to score."""

    path: Path
    model: Any
    preprocess: Preprocess
    scorer: Scorer
    dataset: Dict[str, Any]
    calibration: Dict[str, Any]
    info: Dict[str, Any]
    family: str = "autoencoder"


def add_noise(x, kind: str, strength: float, seed: Optional[int] = None):
    """The denoising family's input corruption (TensorFlow ops, runs inside tf.data)."""
    import tensorflow as tf

    if kind == "gaussian":
        noisy = x + tf.random.normal(tf.shape(x), stddev=strength, seed=seed)
    elif kind == "salt_pepper":
        u = tf.random.uniform(tf.shape(x), seed=seed)
        noisy = tf.where(u < strength / 2, 0.0, tf.where(u > 1 - strength / 2, 1.0, x))
    elif kind == "speckle":
        noisy = x * (1.0 + tf.random.normal(tf.shape(x), stddev=strength, seed=seed))
    else:
        raise ValueError(f"noise must be one of {NOISES[:3]}, got {kind!r}")
    return tf.clip_by_value(noisy, 0.0, 1.0)


def synthetic_pairs(x: np.ndarray, batch_size: int, fraction: float, seed: int) -> Any:
    """tf.data of (input with synthetic defects, clean target) batches, fresh defects every epoch.

    A ``fraction`` of each epoch's images get one defect from :mod:`training.synthetic`; the
    network learns to remove them, so on a real defect its output differs from its input.
    """
    import tensorflow as tf

    from .pipeline import untuned
    from .synthetic import AnomalyGenerator

    gen = AnomalyGenerator()
    epoch = [0]

    def batches():
        rng = np.random.default_rng([seed, epoch[0]])
        clean = x[rng.permutation(len(x))]
        noisy = clean.copy()
        hit = np.sort(rng.permutation(len(x))[: int(round(fraction * len(x)))])
        if len(hit):
            noisy[hit] = gen.batch(clean[hit], len(hit), seed=seed * 1000 + epoch[0]).images
        epoch[0] += 1
        for i in range(0, len(x), batch_size):
            yield noisy[i : i + batch_size], clean[i : i + batch_size]

    spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
    ds = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec))
    # Without a known length Keras stops after the first epoch ("input ran out of data").
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))
    return untuned(ds.prefetch(2))


def predict(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Reconstructions of (N, H, W, C) with a Keras model, without Keras' per-call overhead.

    From 2,000 images on, a progress bar (images) on stderr while it runs."""
    if len(x) == 0:
        return np.empty_like(x)
    from .data import tqdm_class

    tqdm = tqdm_class() if len(x) >= 2000 else None
    bar = tqdm(total=len(x), desc="model", unit="img", leave=False) if tqdm else None
    out = []
    try:
        for i in range(0, len(x), batch_size):
            out.append(np.asarray(model(x[i : i + batch_size], training=False)))
            if bar is not None:
                bar.update(len(out[-1]))
    finally:
        if bar is not None:
            bar.close()
    return np.concatenate(out)


def score_keras(model: Any, scorer: Scorer, x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Scores and error maps of a Keras model through the device's own scorer."""
    if len(x) == 0:
        return np.empty(0, np.float32), None
    return scorer(x, predict(model, x))


def tool_versions() -> Dict[str, str]:
    import keras
    import tensorflow as tf

    from edge_detect import __version__

    return {"edge_detect": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def fit(spec: Dict[str, Any], cfg: FitConfig, out_dir: Path, verbose: int = 1,
        splits: Optional[Splits] = None, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Train, calibrate, evaluate and write RUN_DIR; returns run.json's content.

    Ctrl-C (KeyboardInterrupt) during training keeps the best checkpoint so far and still calibrates,
    evaluates and writes run.json (``interrupted: true``); before the first checkpoint it re-raises.
    splits: already-loaded data (benchmarks reuse one load for several models); callbacks: extra Keras ones.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from .models import build_model, loss_for, loss_name
    from .pipeline import in_order_batches, shuffled_batches

    out_dir = Path(out_dir)
    keras.utils.set_random_seed(cfg.seed)
    # Same seed, same threshold: deterministic kernels cost little on CPU.
    tf.config.experimental.enable_op_determinism()
    pre = cfg.preprocess()
    t0 = time.perf_counter()
    splits = splits or rebuild_splits(spec, pre)
    t_data = time.perf_counter() - t0
    if cfg.calibration == "best_f1" and splits.x_calib_anomalies is None:
        # Fail before training, not after: best-F1 needs labelled anomalies held out for calibration.
        raise ValueError("best_f1 calibration needs labelled anomalies (--anomalies, or a layout with defects, "
                         "and --calib-anomaly-fraction > 0)")
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a data error leaves no empty run directory

    params = {**cfg.model_params}
    model = build_model(cfg.family, pre.shape, **params)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss_for(cfg.family, cfg.loss))
    if cfg.family == "denoising" and cfg.noise == "synthetic":
        ds = synthetic_pairs(splits.x_train, cfg.batch_size, cfg.noise_strength, cfg.seed)
    elif cfg.family == "denoising":
        ds = shuffled_batches(splits.x_train, cfg.batch_size, cfg.seed,
                              lambda b: (add_noise(b, cfg.noise, cfg.noise_strength), b))
    else:
        ds = shuffled_batches(splits.x_train, cfg.batch_size, cfg.seed, lambda b: (b, b))
    ckpt = out_dir / "model.keras"
    cbs = [best_checkpoint(ckpt)]
    if cfg.patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience))
    hist = keras.callbacks.History()  # ours, so the epochs before a Ctrl-C are still recorded
    interrupted = False
    t1 = time.perf_counter()
    try:
        model.fit(ds, validation_data=in_order_batches((splits.x_val, splits.x_val), cfg.batch_size), epochs=cfg.epochs,
                  callbacks=[*cbs, hist, *callbacks], verbose=verbose, shuffle=False)  # ds shuffles itself
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: keeping the best checkpoint so far")
        if not ckpt.exists():
            raise
    t_train = time.perf_counter() - t1
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    model = keras.models.load_model(ckpt, compile=False)

    scorer = ReconstructionScorer(cfg.score, cfg.smooth)
    val_scores, _ = score_keras(model, scorer, splits.x_val)
    calib_anom = calibration_anomaly_scores(splits, cfg.calibration, cfg.seed,
                                            lambda x: score_keras(model, scorer, x)[0])
    calibration = cal.calibrate(val_scores, cfg.calibration, calib_anom, cfg.k, cfg.q, cfg.far)
    test_scores, test_maps = score_keras(model, scorer, splits.x_test)
    test_maps = heatmap_maps(test_maps, scorer.to_dict())
    metrics = evaluate_scores(splits, test_scores, test_maps, calibration["threshold"])

    info = {
        "family": "autoencoder",
        "model": cfg.family,
        "model_params": {**params, "input_shape": list(pre.shape)},
        "config": {**{k: v for k, v in cfg.__dict__.items() if k != "model_params"},
                   "loss": loss_name(cfg.family, cfg.loss)},
        "preprocess": pre.to_dict(),
        "scoring": scorer.to_dict(),
        "dataset": spec,
        "data_summary": splits.summary,
        "calibration": calibration,
        "metrics": metrics,
        "history": history,
        "epochs_run": len(history.get("loss", [])),
        "interrupted": interrupted,
        "timing_s": {"load_data": round(t_data, 2), "train": round(t_train, 2)},
        "parameters": int(model.count_params()),
        "tools": tool_versions(),
    }
    write_run_json(out_dir, info)
    from .report import write_report

    write_report(out_dir / "report", metrics, val_scores, test_scores, splits, calibration["threshold"], test_maps,
                 pre)
    return info


def calibration_anomaly_scores(splits: Splits, method: str, seed: int, score: Any) -> Optional[np.ndarray]:
    """Anomaly scores for calibration: the held-out labelled defects, or (``synthetic``) one synthetic
    defect per validation normal; ``score`` maps images (N, H, W, C) to scores (N,)."""
    if method == "synthetic":
        from .synthetic import synthesize

        # Made from the validation normals, never seen in training; a fixed seed keeps the threshold reproducible.
        return score(synthesize(splits.x_val, len(splits.x_val), seed=seed + 7919).images)
    if splits.x_calib_anomalies is not None:
        return score(splits.x_calib_anomalies)
    return None


def heatmap_maps(maps: Optional[np.ndarray], scoring: Dict[str, Any]) -> Optional[np.ndarray]:
    """The maps (N, H, W) the device's heatmap cuts regions from (``edge_detect.heatmap.pixel_map``).

    Pixel metrics and the report's grids use these, not the raw error, so they judge what a user sees.
    """
    if maps is None:
        return None
    from edge_detect.heatmap import pixel_map

    return pixel_map(maps, str(scoring.get("method", "mse")), int(scoring.get("smooth", 5)))


def evaluate_scores(splits: Splits, scores: np.ndarray, maps: Optional[np.ndarray], threshold: float) -> Dict:
    """Image metrics (+ pixel metrics of ``maps`` where masks exist) of test scores."""
    if len(scores) == 0:
        return {}
    m = evaluate(scores, splits.y_test, threshold, splits.test_kinds)
    if splits.masks_test is not None and maps is not None:
        from .pixel_metrics import pixel_metrics

        known = splits.masks_known if splits.masks_known is not None else np.ones(len(scores), bool)
        m["pixel"] = pixel_metrics(maps[known], splits.masks_test[known])
        m["pixel"]["images"] = int(known.sum())
    return m


def write_run_json(out_dir: Path, info: Dict[str, Any]) -> None:
    write_atomic(Path(out_dir) / "run.json", json.dumps(info, indent=2, default=_json_default) + "\n")


# What reading a run back needs from run.json, per family (ValueError naming the file and key otherwise).
RUN_KEYS = ("preprocess", "scoring", "dataset", "calibration")
METRIC_RUN_KEYS = ("preprocess", "dataset", "calibration", "metric", "input_shape")


def read_run_json(run_dir: Path, need: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """RUN_DIR/run.json, checked to be a JSON object with the keys ``need`` (default: what its family
    needs to be evaluated or exported). Raises ValueError."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a training run (no run.json); run 'edge-train fit' first")
    info = read_json(path)
    if not isinstance(info, dict):
        raise ValueError(f"{path}: not a JSON object")
    if need is None:
        need = METRIC_RUN_KEYS if info.get("family") == "metric" else RUN_KEYS
    missing = [k for k in need if k not in info]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    for k in need:
        if not isinstance(info[k], list if k == "input_shape" else dict):
            raise ValueError(f"{path}: {k} must be a JSON {'array' if k == 'input_shape' else 'object'}")
    return info


def save_keras_model(model: Any, path: Path) -> None:
    """``model.save(path)`` by way of a temporary file, so a Ctrl-C or a crash mid-write leaves the
    previous file (the best checkpoint so far) intact rather than half a zip."""
    with atomic_path(path, tmp_name=f".{Path(path).stem}.partial.keras") as tmp:  # Keras wants .keras
        model.save(tmp)


def best_checkpoint(path: Path) -> Any:
    """A callback like ``keras.callbacks.ModelCheckpoint(save_best_only=True)`` on ``val_loss``, but
    atomic (:func:`save_keras_model`): Ctrl-C during a save keeps the previous best."""
    import keras

    class _Best(keras.callbacks.Callback):
        best = float("inf")

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            loss = (logs or {}).get("val_loss")
            if loss is not None and loss < self.best:
                self.best = float(loss)
                save_keras_model(self.model, path)

    return _Best()


def load_keras_model(path: Path, compile: bool = False) -> Any:
    """``keras.models.load_model``; a missing or damaged file is a ValueError naming it."""
    import keras

    if not Path(path).is_file():
        raise ValueError(f"{path} is missing")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ValueError(f"{path}: not a Keras model (a .keras file is a zip archive)")
    try:
        return keras.models.load_model(path, compile=compile)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        first = first_line(e)
        raise ValueError(f"{path}: not a loadable Keras model ({first})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    return str(o)


def load_run(run_dir: Path) -> Run:
    """Read RUN_DIR/run.json and RUN_DIR/model.keras."""
    from . import layers  # noqa: F401 - registers BatchNorm, which model.keras may name

    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    model = load_keras_model(run_dir / "model.keras")
    return Run(
        path=run_dir,
        model=model,
        preprocess=Preprocess.from_dict(info["preprocess"]),
        scorer=scorer_from_dict(info["scoring"]),
        dataset=info["dataset"],
        calibration=info["calibration"],
        info=info,
        family=info.get("family", "autoencoder"),
    )


def report_dir_for(run_dir: Path, name: str, dataset: Dict[str, Any]) -> Path:
    """RUN_DIR/NAME, or the first of NAME-2, NAME-3, ... that is free or already holds this dataset's
    report: two data folders of the same name must not overwrite each other's reports."""
    for i in range(1, 10_000):
        d = run_dir / (name if i == 1 else f"{name}-{i}")
        if not d.exists():
            return d
        try:
            if json.loads((d / "metrics.json").read_text()).get("dataset") == dataset:
                return d
        except (OSError, ValueError, AttributeError):
            pass  # not a report of ours, or of a version that did not record its data: keep it
    raise ValueError(f"{run_dir}: no free report folder name for {name}; pass --report DIR")


def evaluate_run(
    run_dir: Path,
    spec: Optional[Dict[str, Any]] = None,
    bundle: Optional[Path] = None,
    variant: Optional[str] = None,
    report: bool = True,
    report_dir: Optional[Path] = None,
) -> Dict[str, Any]:
    """Metrics of a run (Keras model) or of one of its bundle's variants (device code) on a dataset.

    spec: the dataset to evaluate on (default: the run's own held-out split).
    report_dir: default RUN_DIR/report (report-VARIANT for a bundle), with "-DATA" added when
    ``spec`` is another dataset, so that fit's own report is not overwritten.
    """
    info = read_run_json(run_dir)
    own = spec is None
    spec = spec or info["dataset"]

    def splits_for(pre: Preprocess) -> Splits:
        return rebuild_run_splits(info, pre, spec, with_train=False)

    if bundle is not None:
        # The device's own code path; the Keras model is not needed (nor loaded).
        from edge_detect.detector import Detector

        det = Detector(bundle, variant=variant)
        splits = splits_for(det.preprocess)
        scores, maps, _ = det.infer(splits.x_test)
        maps = heatmap_maps(maps, det.bundle.manifest.get("scoring", {}))
        val_scores = det.infer(splits.x_val)[0]
        threshold, pre = det.threshold, det.preprocess
        where = f"bundle {bundle} variant {det.variant}"
    elif info.get("family") == "metric":
        from .metric import run_scorer

        score = run_scorer(Path(run_dir))
        pre = Preprocess.from_dict(info["preprocess"])
        splits = splits_for(pre)
        scores, maps, val_scores = score(splits.x_test), None, score(splits.x_val)
        threshold = info["calibration"]["threshold"]
        where = f"run {run_dir} (Keras float32)"
    else:
        run = load_run(run_dir)
        splits = splits_for(run.preprocess)
        scores, maps = score_keras(run.model, run.scorer, splits.x_test)
        maps = heatmap_maps(maps, run.scorer.to_dict())
        val_scores = score_keras(run.model, run.scorer, splits.x_val)[0]
        threshold, pre = run.calibration["threshold"], run.preprocess
        where = f"run {run_dir} (Keras float32)"
    metrics = evaluate_scores(splits, scores, maps, threshold)
    metrics["evaluated"] = where
    metrics["dataset"] = dict(spec)  # what the data was: another folder of the same name gets another report
    # Evaluation reads no training images, so a "train" count here would read 0: leave it out.
    metrics["data"] = {k: v for k, v in splits.summary["counts"].items() if k != "train"}
    metrics["skipped_files"] = splits.summary["skipped_files"]
    metrics["scores"] = {"test": [float(s) for s in scores], "labels": splits.y_test.tolist(),
                         "images": [it.source if it.index < 0 else f"{it.source}#{it.index}"
                                    for it in splits.items_test]}
    if report:
        from .report import write_report

        if report_dir is None:
            name = f"report-{det.variant}" if bundle is not None else "report"
            report_dir = Path(run_dir) / name
            if not own:
                report_dir = report_dir_for(Path(run_dir), f"{name}-{Path(spec['path']).name or 'data'}",
                                            metrics["dataset"])
        metrics["report"] = str(report_dir)
        write_report(report_dir, metrics, val_scores, scores, splits, threshold, maps, pre)
    return metrics

