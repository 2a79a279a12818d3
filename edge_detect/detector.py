"""Image in, verdict out: a bundle's model, preprocessing, scorer and threshold together.

``edge-detect score``, the daemon, and training's evaluation of exported models
all score through this class, so their numbers agree by construction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .bundle import Bundle, BundleError, load_bundle
from .delegates import DelegateConfig
from .logs import event as _ev
from .oneline import first_line
from .preprocess import ImageSource, Preprocess
from .runtime import AcceleratorRequired, TensorSpec, TFLiteModel
from .scoring import normalise

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One scored image. Times are ms."""

    score: float
    normalised: float
    threshold: float
    anomalous: bool
    error_map: Optional[np.ndarray] = field(default=None, repr=False)
    timings: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "normalised": self.normalised,
            "threshold": self.threshold,
            "anomalous": self.anomalous,
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            **self.extra,
        }


def check_tensors(model: TFLiteModel, variant: str, spec: dict, where: str) -> None:
    """Refuse a model whose input/output tensors differ from what the manifest says."""
    for key, actual in (("input", model.input), ("output", model.output)):
        want = spec[key]
        if list(actual.shape) != list(want["shape"]) or actual.dtype != want["dtype"]:
            raise BundleError(
                f"{where}: variants.{variant}.{key} says {want['dtype']}{list(want['shape'])} "
                f"but the model has {actual.dtype}{list(actual.shape)}"
            )
        if actual.quantized:
            scale, zp = want.get("quantization", (0.0, 0))
            if not np.isclose(actual.quantization[0], scale, rtol=1e-6) or actual.quantization[1] != zp:
                raise BundleError(f"{where}: variants.{variant}.{key}.quantization does not match the model")


def _load_model(
    path: Path,
    variant: str,
    num_threads: Optional[int],
    delegate: Optional[DelegateConfig],
    require_accelerator: bool,
) -> TFLiteModel:
    """Open a variant's .tflite; a file the interpreter can't parse is a refused bundle, not a crash."""
    try:
        return TFLiteModel(path, num_threads, delegate, require_accelerator)
    except AcceleratorRequired:
        raise
    except (ValueError, RuntimeError) as e:
        first = first_line(e)
        raise BundleError(f"{path}: variants.{variant} is not a loadable TFLite model ({first})") from None


def _parity_failures(bundle: Bundle, variant: str) -> List[str]:
    """What failed export's parity gate for ``variant`` (a bundle written with --allow-degraded)."""
    # The Edge TPU runs int8_io's graph, so int8_io's check stands for it.
    v = "int8_io" if variant == "int8_edgetpu" else variant
    parity = (bundle.variants.get(v) or {}).get("parity") or {}
    return [str(f) for f in parity.get("failures") or []]


class Detector:
    """A bundle ready to score images.

    variant: which .tflite to run (default: the accelerator's best, else the bundle's default).
    threshold: overrides the bundle's calibrated threshold (same units as the score).
    roi: per-camera crop (x, y, w, h) px that replaces the bundle's.
    """

    def __init__(
        self,
        bundle: Union[Bundle, str, Path],
        variant: Optional[str] = None,
        num_threads: Optional[int] = None,
        delegate: Optional[DelegateConfig] = None,
        require_accelerator: bool = False,
        threshold: Optional[float] = None,
        roi: Optional[Sequence[int]] = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.variant = variant or self._pick_variant(delegate)
        model_path = self.bundle.model_path(self.variant)
        if self.variant.endswith("_edgetpu") and delegate is None:
            raise BundleError(
                f"{self.bundle.path}: variant {self.variant!r} is compiled for the Edge TPU and runs only with "
                "its delegate; pick another variant for the CPU"
            )
        self.model = _load_model(model_path, self.variant, num_threads, delegate, require_accelerator)
        if self.model.fallback and variant is None and self.variant != self.bundle.default_variant():
            # The accelerator's own variant (e.g. int8_edgetpu) runs badly or not at all on a CPU.
            reason = self.model.fallback
            self.variant = self.bundle.default_variant()
            self.model = _load_model(self.bundle.model_path(self.variant), self.variant, num_threads, None, False)
            self.model.fallback = reason
        check_tensors(self.model, self.variant, self.bundle.variants[self.variant], str(self.bundle.path))
        if failed := _parity_failures(self.bundle, self.variant):
            log.warning("%s: variant %s failed the export parity gate (%s): its decisions may differ from float32's",
                        self.bundle.path, self.variant, failed[0],
                        extra=_ev("variant_degraded", variant=self.variant, failure=failed[0]))
        self.preprocess: Preprocess = self.bundle.preprocess
        if roi is not None:
            self.preprocess = self.preprocess.with_roi(roi)
        self.scorer = self.bundle.scorer(self.variant)
        cal = self.bundle.calibration(self.variant)
        self.threshold = float(threshold if threshold is not None else cal["threshold"])
        stats = cal.get("normal_stats") or {}
        self.center = float(stats.get("median", 0.0))

    def _pick_variant(self, delegate: Optional[DelegateConfig]) -> str:
        if delegate is not None:
            for v in delegate.preferred_variants():
                if v in self.bundle.variants:
                    return v
        return self.bundle.default_variant()

    @property
    def input_spec(self) -> TensorSpec:
        return self.model.input

    @property
    def model_sha256(self) -> str:
        return self.bundle.model_sha256(self.variant)

    def infer(self, x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
        """Scores (N,), maps (N, H, W) or None, and raw outputs for preprocessed inputs (N, H, W, C)."""
        y = self.model.run_batch(x)
        scores, maps = self.scorer(x, y)
        return scores, maps, y

    def decide(self, score: float) -> Tuple[float, bool]:
        """(normalised score, anomalous?) for a raw score."""
        return float(normalise(score, self.threshold, self.center)), bool(score > self.threshold)

    def score_array(self, x: np.ndarray) -> Result:
        """Score one preprocessed input (H, W, C)."""
        t0 = time.perf_counter()
        y = self.model(x[None])
        t1 = time.perf_counter()
        scores, maps = self.scorer(x[None], y)
        t2 = time.perf_counter()
        score = float(scores[0])
        norm, anomalous = self.decide(score)
        extra: Dict[str, object] = {}
        if not anomalous and getattr(self.scorer, "labels", None) is not None:
            # Classification with rejection (embedding scorers): a class only for accepted inputs.
            c = int(self.scorer.classify(y)[0])  # type: ignore[attr-defined]
            extra = {"class": c, "class_name": self.scorer.class_name(c)}  # type: ignore[attr-defined]
        return Result(
            score=score,
            normalised=norm,
            threshold=self.threshold,
            anomalous=anomalous,
            error_map=None if maps is None else maps[0],
            timings={"invoke": (t1 - t0) * 1e3, "score": (t2 - t1) * 1e3},
            extra=extra,
        )

    def score(self, source: ImageSource) -> Result:
        """Decode, preprocess and score one image (path, bytes, uint8 array or PIL image)."""
        t0 = time.perf_counter()
        x = self.preprocess(source)
        t1 = time.perf_counter()
        r = self.score_array(x)
        r.timings = {"preprocess": (t1 - t0) * 1e3, **r.timings}
        return r

    def score_many(self, sources: Sequence[ImageSource]) -> List[Result]:
        return [self.score(s) for s in sources]
