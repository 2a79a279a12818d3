"""Metric-learning family: train an L2-constrained softmax embedder, then score by kNN / LOF.

Two setups:

* multi-class: every known class is normal (MNIST's ten digits); the softmax learns them all.
* outlier exposure: one normal class plus auxiliary "other" images (``--aux DIR``); the softmax
  learns normal-vs-other, which spreads unrelated images away from the normal cluster.

Either way the reference set is the embeddings of the normal training images; anomalies are
what LOF (or the kNN distance) rejects in that space. The device side lives in
``edge_detect.neighbors``; this module only trains, builds the reference set, and hands export
what it must write into the bundle (``export_parts``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_detect.neighbors import contamination_threshold, fit_scorer

from . import calibrate as cal
from .metric_models import BACKBONES, build_model, embedder_of

log = logging.getLogger(__name__)

FAMILY = "metric"
REFERENCE_FILE = "reference.npz"  # in the run dir: normal embeddings (+ labels) for export


@dataclass
class MetricConfig:
    """Hyper-parameters of one metric run (all recorded in run.json).

    alpha: scale of the L2-normalised feature (Ranjan et al.: >= log(p (C-2) / (1-p))).
    contamination: fraction of normal references LOF/kNN may reject; sets the threshold.
    reference_size: reduce the reference set to this many rows (None: keep all).
    max_reference: cap on normal training images embedded for the reference (memory).
    """

    backbone: str = "cnn"
    embed_dim: int = 64  # 16 lost badly on MNIST vs Fashion (docs/BENCHMARKS.md, Metric learning)
    alpha: float = 4.0  # ~ Ranjan et al.'s bound for 10 classes; beat 16 on MNIST vs Fashion
    width: int = 16
    head: str = "flatten"  # keeps spatial layout; GAP let Fashion items sit among the digits
    weights: Optional[str] = None
    l2: str = "host"
    scorer: str = "knn"  # steadier than LOF over five MNIST trainings (docs/BENCHMARKS.md, Metric learning)
    k: int = 5
    n_neighbors: int = 20
    contamination: float = 0.01
    reference_size: Optional[int] = None
    reduce: str = "kmeans"
    max_reference: int = 20000
    synthetic_aux: float = 0.0  # synthetic anomalies per normal training image, as extra "other" images
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    class_names: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.weights not in (None, "imagenet"):
            raise ValueError(f"--weights must be none or imagenet, got {self.weights!r}")
        if self.weights and not self.backbone.startswith("mobilenetv2"):
            raise ValueError(f"--weights imagenet needs a MobileNetV2 --backbone, got {self.backbone!r}")
        if self.scorer not in ("lof", "knn"):
            raise ValueError(f"--scorer must be lof or knn, got {self.scorer!r}")
        if not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"--contamination must be in (0, 0.5], got {self.contamination}")
        if self.synthetic_aux < 0:
            raise ValueError(f"--synthetic-aux must be >= 0, got {self.synthetic_aux}")
        if self.alpha <= 0 or self.embed_dim < 2:
            raise ValueError(f"--alpha must be > 0 and --embed-dim >= 2, got {self.alpha}, {self.embed_dim}")

    def model_params(self) -> Dict[str, Any]:
        return {"backbone": self.backbone, "embed_dim": self.embed_dim, "alpha": self.alpha, "width": self.width,
                "head": self.head, "l2": self.l2, "n_classes": max(2, len(self.class_names))}


def training_labels(
    x_normal: np.ndarray, y_normal: Optional[np.ndarray], x_aux: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray, int, bool]:
    """(images, class labels, number of classes, multi_class?) for the classifier.

    With labels: the normal classes themselves (aux, if any, becomes one extra class).
    Without: class 0 = normal, class 1 = aux; aux images are required then.
    """
    if y_normal is not None and len(np.unique(y_normal)) > 1:
        y = np.asarray(y_normal, np.int64)
        n = int(y.max()) + 1
        if x_aux is not None and len(x_aux):
            return np.concatenate([x_normal, x_aux]), np.concatenate([y, np.full(len(x_aux), n)]), n + 1, True
        return x_normal, y, n, True
    if x_aux is None or len(x_aux) == 0:
        raise ValueError("a single normal class needs 'other' images to learn an embedding: "
                         "--aux DIR and/or --synthetic-aux N")
    y = np.concatenate([np.zeros(len(x_normal), np.int64), np.ones(len(x_aux), np.int64)])
    return np.concatenate([x_normal, x_aux]), y, 2, False


def train_embedder(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: MetricConfig,
    x_val: Optional[np.ndarray] = None,
    y_val: Optional[np.ndarray] = None,
    callbacks: Optional[List[Any]] = None,
    verbose: int = 1,
) -> Tuple[Any, Dict[str, List[float]]]:
    """Train the L2-softmax classifier; returns (classifier, history). Classes are balanced by weight."""
    import keras

    from .pipeline import in_order_batches, shuffled_batches

    keras.utils.set_random_seed(cfg.seed)
    model = build_model(tuple(x.shape[1:]), n_classes, cfg.backbone, cfg.embed_dim, cfg.alpha, cfg.width,
                        cfg.weights, l2=cfg.l2, head=cfg.head)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    # Outlier exposure usually has far fewer (or more) aux images than normals: weight classes equally.
    weights = {c: float(len(y) / (n_classes * max(1.0, counts[c]))) for c in range(n_classes)}
    val = (in_order_batches((x_val, y_val), cfg.batch_size) if x_val is not None and y_val is not None and len(x_val)
           else None)
    hist = keras.callbacks.History()  # ours, so the epochs before a Ctrl-C are still recorded
    last: List[Any] = []  # the weights after the last completed epoch

    class KeepLastEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            last[:] = [self.model.get_weights()]

    try:
        model.fit(shuffled_batches((x, y), cfg.batch_size, cfg.seed), epochs=cfg.epochs, validation_data=val,
                  shuffle=False,  # the dataset reshuffles itself
                  class_weight=weights, callbacks=[KeepLastEpoch(), hist, *(callbacks or [])], verbose=verbose)
    except KeyboardInterrupt:
        if not last:
            raise
        # Mid-epoch weights are half an update; the last completed epoch is a model we can describe.
        model.set_weights(last[0])
        log.warning("interrupted: keeping the model of epoch %d", len(hist.epoch))
    return model, {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def embed(classifier: Any, x: np.ndarray, l2: str = "host", batch_size: int = 256) -> np.ndarray:
    """Float (Keras) embeddings of preprocessed images (N, H, W, C): (N, D) float32."""
    return np.asarray(embedder_of(classifier, l2).predict(x, batch_size=batch_size, verbose=0), np.float32)


def build_scorer(emb: np.ndarray, labels: Optional[np.ndarray], cfg: MetricConfig) -> Tuple[Any, np.ndarray]:
    """The device scorer over normal embeddings, and its leave-one-out reference scores."""
    return fit_scorer(cfg.scorer, emb, labels if cfg.class_names else None, k=cfg.k, n_neighbors=cfg.n_neighbors,
                      normalize=cfg.l2 == "host", scale=cfg.alpha, reference_size=cfg.reference_size,
                      reduce=cfg.reduce, class_names=cfg.class_names or None, seed=cfg.seed)


def calibration_from_reference(ref_scores: np.ndarray, contamination: float,
                               val_scores: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The contamination calibration: threshold, the normal-score statistics, both rules' thresholds.

    With held-out validation scores the threshold is their (1 - contamination) quantile, a rule
    every exported variant can re-apply to its own scores; without, it is scikit-learn's rule
    over the leave-one-out reference scores (``-offset_``), which is also recorded for comparison.
    """
    ref_thr = contamination_threshold(ref_scores, contamination)
    has_val = val_scores is not None and len(val_scores) > 1
    s = np.asarray(val_scores if has_val else ref_scores, np.float64)
    val_thr = float(np.quantile(s, 1.0 - contamination)) if has_val else None
    return {"method": "contamination", "params": {"contamination": contamination},
            "threshold": val_thr if has_val else ref_thr,
            "thresholds": {"contamination_validation": val_thr, "contamination_reference": ref_thr},
            "normal_stats": {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
                             "median": float(np.median(s)), "min": float(s.min()), "max": float(s.max())},
            **({"accepted": cal.accepted(s, val_thr)} if has_val else {})}


def save_reference(run_dir: Path, emb: np.ndarray, labels: Optional[np.ndarray]) -> None:
    """Normal training embeddings (float Keras) for export to rebuild the scorer from."""
    arrays = {"embeddings": emb.astype(np.float32)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int32)
    np.savez_compressed(run_dir / REFERENCE_FILE, **arrays)


def load_reference(run_dir: Path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    with np.load(Path(run_dir) / REFERENCE_FILE) as z:
        return z["embeddings"], (z["labels"] if "labels" in z.files else None)


def rebuild_embedder(cfg: MetricConfig, input_shape: Tuple[int, int, int], classifier: Any) -> Callable[[], Any]:
    """``rebuild`` for export: the batch-1 embedder (weights set by export from ``embedder_of``)."""
    n_classes = int(classifier.output_shape[-1])

    def rebuild() -> Any:
        return build_model(input_shape, n_classes, cfg.backbone, cfg.embed_dim, cfg.alpha, cfg.width, None,
                           batch_size=1, l2=cfg.l2, embedder_only=True, head=cfg.head)

    return rebuild


def reference_indices(n_train: int, cfg: MetricConfig) -> np.ndarray:
    """Which training images (sorted indices) the reference set embeds: at most ``max_reference``."""
    return np.sort(np.random.default_rng(cfg.seed).permutation(n_train)[: cfg.max_reference])


def export_parts(run_dir: Path, classifier: Any, cfg: MetricConfig, input_shape: Tuple[int, int, int],
                 x_train: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """What export needs beyond an autoencoder's: model, rebuild, scoring dict, arrays, calibrate,
    a starting calibration (the contamination threshold over the float references), and with
    ``x_train`` (the run's training images, rebuilt) the reference set each variant re-embeds.

    ``calibrate`` maps a variant's validation scores to its calibration with the run's method; for
    the contamination mode the threshold is the quantile (1 - contamination) of those held-out
    normal scores, so every variant (float32, int8) gets a threshold in its own score units.
    """
    from .export import ExportError, ReferenceSet

    emb, labels = load_reference(run_dir)
    scorer, ref_scores = build_scorer(emb, labels, cfg)

    run_cal = _run_calibration(run_dir)

    def calibrate(val_scores: np.ndarray, reference_scores: Optional[np.ndarray] = None) -> Dict[str, Any]:
        v = np.asarray(val_scores, np.float64)
        if run_cal.get("method", "contamination") == "contamination":
            rs = ref_scores if reference_scores is None else reference_scores
            return calibration_from_reference(rs, cfg.contamination, v)

        return cal.recalibrate(run_cal, v)

    def fit(outputs: np.ndarray, variant: str) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        outputs = outputs.reshape(len(outputs), -1)
        if variant == "float32":
            # float32 must reproduce what fit embedded; if not, the images are not the same ones.
            tol = 1e-3 * max(1.0, float(np.max(np.abs(emb))))
            if outputs.shape != emb.shape or np.max(np.abs(outputs - emb)) > tol:
                raise ExportError(f"{run_dir}: the training images no longer give the embeddings in "
                                  f"{REFERENCE_FILE} (the data changed since edge-train fit)")
            return scorer.arrays(), ref_scores  # fit's references; a second LOF fit over them is not cheap
        s, scores = build_scorer(outputs, labels, cfg)
        return s.arrays(), scores

    reference = None
    if x_train is not None:
        reference = ReferenceSet(images=x_train[reference_indices(len(x_train), cfg)], fit=fit)
    return {"model": embedder_of(classifier, cfg.l2), "rebuild": rebuild_embedder(cfg, input_shape, classifier),
            "scoring": scorer.to_dict(), "arrays": scorer.arrays(), "calibrate": calibrate,
            "calibration": calibration_from_reference(ref_scores, cfg.contamination),
            "family": FAMILY, "model_params": cfg.model_params(), "reference": reference}


def fit_metric(
    run_dir: Path,
    cfg: MetricConfig,
    x_train: np.ndarray,
    y_train: Optional[np.ndarray],
    x_val: np.ndarray,
    y_val: Optional[np.ndarray] = None,
    x_aux: Optional[np.ndarray] = None,
    callbacks: Optional[List[Any]] = None,
    verbose: int = 1,
) -> Dict[str, Any]:
    """Train, build the reference set, calibrate on held-out normals; write model.keras, reference.npz, run.json.

    x_train / x_val: normal images (N, H, W, C) in 0..1; y_*: their class (multi-class setup) or None.
    x_aux: auxiliary "other" images for outlier exposure (never used as references).
    Returns ``{"model", "scorer", "val_scores", "calibration", "history", "train_seconds"}``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    x, y, n_classes, multi = training_labels(x_train, y_train, x_aux)
    if multi and not cfg.class_names:
        cfg.class_names = [str(c) for c in range(int(np.max(y_train)) + 1)]
    if not multi:
        cfg.class_names = []
    yv = None
    if len(x_val):
        yv = np.asarray(y_val, np.int64) if multi and y_val is not None else np.zeros(len(x_val), np.int64)
    t0 = time.time()
    model, history = train_embedder(x, y, n_classes, cfg, x_val if len(x_val) else None, yv, callbacks, verbose)
    train_s = time.time() - t0
    from .train import save_keras_model

    save_keras_model(model, run_dir / "model.keras")
    keep = reference_indices(len(x_train), cfg)
    ref_labels = np.asarray(y_train)[keep] if multi else None
    save_reference(run_dir, embed(model, x_train[keep], cfg.l2), ref_labels)
    scorer, ref_scores = build_scorer(*load_reference(run_dir), cfg)
    val_scores = scorer(None, embed(model, x_val, cfg.l2))[0] if len(x_val) else np.empty(0)
    cal = calibration_from_reference(ref_scores, cfg.contamination, val_scores)
    epochs_run = len(history.get("loss", []))  # fewer than cfg.epochs only after a Ctrl-C (no early stopping)
    write_run_config(run_dir, cfg, {"model_params": cfg.model_params(), "scoring": scorer.to_dict(),
                                    "calibration": cal, "history": history, "train_seconds": train_s,
                                    "epochs_run": epochs_run, "interrupted": epochs_run < cfg.epochs,
                                    "input_shape": list(x_train.shape[1:]), "n_classes": n_classes,
                                    "outlier_exposure": x_aux is not None and len(x_aux) > 0})
    return {"model": model, "scorer": scorer, "val_scores": val_scores, "calibration": cal, "history": history,
            "train_seconds": train_s}


def load_aux(aux_dirs: Union[str, Sequence[str], None], pre: Any) -> Tuple[Optional[np.ndarray], List[str]]:
    """Every readable image under the ``aux_dirs`` folders (recursively), preprocessed like the training
    data, and the files skipped (each named in a warning)."""
    dirs = [aux_dirs] if isinstance(aux_dirs, str) else list(aux_dirs or ())
    if not dirs:
        return None, []
    from .data import DataError, Item, image_files, load_items

    parts, skipped = [], []
    for folder in dirs:
        if not Path(folder).is_dir():
            raise DataError(f"aux folder not found: {folder}")
        x, _, skip = load_items([Item(str(p)) for p in image_files(Path(folder))], pre, "aux")
        if len(x) == 0:
            raise DataError(f"no readable images in aux folder {folder}")
        parts.append(x)
        skipped += skip
    return np.concatenate(parts), skipped


def fit_run(spec: Dict[str, Any], fit_cfg: Any, cfg: MetricConfig, out_dir: Path,
            aux_dirs: Sequence[str] = (), verbose: int = 1) -> Dict[str, Any]:
    """``edge-train fit --model metric``: the metric twin of ``training.train.fit``.

    Same dataset spec, preprocessing, held-out split, calibration modes, metrics and report as the
    autoencoders; ``fit_cfg`` is their FitConfig (input size, colour, epochs, seed, calibration).
    The calibration is ``contamination`` unless the user chose a mode on purpose
    (``fit_cfg.calibration_explicit``), see ``_calibration_mode``.
    """
    from .data import rebuild_splits
    from .report import write_report
    from .train import calibration_anomaly_scores, evaluate_scores, tool_versions, write_run_json

    out_dir = Path(out_dir)
    pre = fit_cfg.preprocess()
    t0 = time.time()
    splits = rebuild_splits(spec, pre)
    aux_dirs = list(aux_dirs)
    x_aux, aux_skipped = load_aux(aux_dirs, pre)
    n_syn = int(round(cfg.synthetic_aux * len(splits.x_train)))
    if n_syn:
        from .synthetic import load_foreign, outlier_exposure

        # The aux pictures, when given, also supply the foreign-object patches.
        foreign = [p for d in aux_dirs for p in load_foreign(d, limit=max(1, 64 // len(aux_dirs)),
                                                              seed=fit_cfg.seed)] or None
        x_syn = outlier_exposure(splits.x_train, n_syn, seed=fit_cfg.seed, foreign=foreign)[0]
        x_aux = x_syn if x_aux is None else np.concatenate([x_aux, x_syn])
    t_data = time.time() - t0
    classes = sorted(set(splits.train_classes)) if len(set(splits.train_classes)) > 1 else []
    y_train = np.array([classes.index(c) for c in splits.train_classes], np.int64) if classes else None
    cfg.class_names = classes
    cfg.epochs, cfg.seed = fit_cfg.epochs, fit_cfg.seed
    cfg.batch_size, cfg.learning_rate = fit_cfg.batch_size, fit_cfg.learning_rate
    res = fit_metric(out_dir, cfg, splits.x_train, y_train, splits.x_val, None, x_aux, verbose=verbose)
    scorer, model = res["scorer"], res["model"]
    mode = _calibration_mode(fit_cfg)
    if mode == "contamination":
        calibration = res["calibration"]
    else:
        calib_anom = calibration_anomaly_scores(splits, mode, fit_cfg.seed,
                                                lambda x: scorer(None, embed(model, x, cfg.l2))[0])
        calibration = cal.calibrate(res["val_scores"], mode, calib_anom, fit_cfg.k, fit_cfg.q, fit_cfg.far)
    test_scores = scorer(None, embed(model, splits.x_test, cfg.l2))[0] if len(splits.x_test) else np.empty(0)
    metrics = evaluate_scores(splits, test_scores, None, calibration["threshold"])
    run = json.loads((out_dir / "run.json").read_text())
    info = {
        **run,
        "family": FAMILY,
        "model": FAMILY,
        "model_params": {**cfg.model_params(), "input_shape": list(pre.shape)},
        "config": {k: v for k, v in fit_cfg.__dict__.items() if k != "model_params"},
        "preprocess": pre.to_dict(),
        "dataset": spec,
        "data_summary": {**splits.summary,
                         "aux": {"folders": aux_dirs, "count": 0 if x_aux is None else len(x_aux),
                                 "skipped": len(aux_skipped), "skipped_files": aux_skipped[:50],
                                 "synthetic": n_syn}},
        "calibration": calibration,
        "metrics": metrics,
        "timing_s": {"load_data": round(t_data, 2), "train": round(res["train_seconds"], 2)},
        "parameters": int(model.count_params()),
        "tools": tool_versions(),
    }
    write_run_json(out_dir, info)
    write_report(out_dir / "report", metrics, res["val_scores"], test_scores, splits, calibration["threshold"],
                 pre=pre)
    return info


def _calibration_mode(fit_cfg: Any) -> str:
    """Metric runs calibrate by contamination unless the user picked a calibration mode on purpose."""
    return fit_cfg.calibration if getattr(fit_cfg, "calibration_explicit", False) else "contamination"


def load_run(run_dir: Path) -> Tuple[Any, MetricConfig, Tuple[int, int, int]]:
    """(classifier, config, input shape) of a metric run directory."""
    from .train import load_keras_model, read_run_json

    register_custom_layers()
    # Only what the model needs: explain reads runs that hold the metric block alone.
    run = read_run_json(Path(run_dir), need=("metric", "input_shape"))
    cfg = MetricConfig(**run["metric"])
    return load_keras_model(Path(run_dir) / "model.keras", compile=True), cfg, tuple(run["input_shape"])


def run_scorer(run_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Scores of images (N, H, W, C) by a metric run without its bundle: the Keras float32 embedder
    against the run's reference set, as ``fit`` scored its test split."""
    model, cfg, _ = load_run(run_dir)
    scorer, _ = build_scorer(*load_reference(run_dir), cfg)
    return lambda x: scorer(None, embed(model, x, cfg.l2))[0] if len(x) else np.empty(0, np.float64)


def register_custom_layers() -> None:
    """Loading a metric model.keras needs the project's layer classes registered first: the L2
    layer, and training.layers.BatchNorm, which a saved model may name."""
    from . import layers, metric_models  # noqa: F401 - importing layers registers BatchNorm

    metric_models._l2_layer("probe")


def _run_calibration(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return dict(json.loads(path.read_text()).get("calibration") or {}) if path.exists() else {}


def write_run_config(run_dir: Path, cfg: MetricConfig, extra: Dict[str, Any]) -> None:
    """The metric block of run.json (merged into whatever the training CLI writes)."""
    path = Path(run_dir) / "run.json"
    run = json.loads(path.read_text()) if path.exists() else {}
    run.update({"family": FAMILY, "metric": asdict(cfg), **extra, "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps(run, indent=2) + "\n")
