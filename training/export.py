"""Export a trained model to TFLite variants, check their parity, and write the device bundle.

Variants (file ``model_<variant>.tflite``; the device's Detector and delegates rely on these names):

* ``float32``: the reference; always exported, every parity number is measured against it.
* ``float16``: float16 weights, float32 compute on CPUs; for GPU delegates.
* ``dynamic``: int8 weights, float activations (dynamic-range quantisation).
* ``int8``: full-integer int8 inside, float32 input and output (CPUs).
* ``int8_io``: full-integer with int8 (or uint8) input and output (Edge TPU compiler, NPUs).
* ``int8_edgetpu``: ``int8_io`` compiled by ``edgetpu_compiler``, when it is installed.

Every variant is converted from the model rebuilt with a fixed batch of 1, and is
scored through :class:`edge_detect.detector.Detector`, i.e. the device's own code.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edge_detect.bundle import MANIFEST, Bundle, BundleError, pack, read_manifest, write_bundle
from edge_detect.detector import Detector
from edge_detect.preprocess import Preprocess
from edge_detect.runtime import TFLiteModel, model_ops
from training.metrics import aupr, auroc, rates
from training.pixel_metrics import pixel_calibration

VARIANTS = ("float32", "float16", "dynamic", "int8", "int8_io", "int8_edgetpu")
QUANT_CHOICES = ("float32", "float16", "dynamic", "int8", "all")
# What each --quant asks for; float32 always comes along as the parity reference.
QUANT_VARIANTS = {
    "float32": ("float32",),
    "float16": ("float32", "float16"),
    "dynamic": ("float32", "dynamic"),
    "int8": ("float32", "int8", "int8_io"),
    "all": ("float32", "float16", "dynamic", "int8", "int8_io"),
}
FULL_INTEGER = ("int8", "int8_io")
MAX_AUROC_LOSS = 0.005  # the bar: int8 may lose at most this much image AUROC
REPRESENTATIVE_MAX = 300  # images: enough for stable activation ranges, quick to calibrate on 2 cores

# The Edge TPU's supported operations (coral.ai/docs/edgetpu/models-intro/#supported-operations),
# spelled as TFLite builtin op names. Anything else runs on the CPU.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE",
    "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
_INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


class ExportError(Exception):
    """The export cannot produce a bundle; the message is one line."""


class ParityError(ExportError):
    """A quantised variant fails the parity bar (and --allow-degraded was not given)."""


def variant_file(variant: str) -> str:
    return f"model_{variant}.tflite"


# -- conversion ---------------------------------------------------------------------------------


def fixed_batch_model(model: Any, rebuild: Optional[Callable[[], Any]] = None) -> Any:
    """The same network with a fixed batch of 1, weights copied.

    A dynamic batch makes the converter emit shape-dependent ops (and fail on UpSampling2D);
    ``rebuild`` (e.g. ``lambda: build_model(family, shape, batch_size=1, **params)``) is used when
    given, otherwise the functional config is rewritten with batch 1.
    """
    import keras

    if rebuild is not None:
        fixed = rebuild()
    else:
        cfg = model.get_config()
        layers = cfg.get("layers", [])
        inputs = [lyr for lyr in layers if lyr.get("class_name") == "InputLayer"]
        if not inputs:
            raise ExportError("cannot fix the batch size: the model has no InputLayer in its config")
        for lyr in inputs:
            shape = list(lyr["config"]["batch_shape"])
            lyr["config"]["batch_shape"] = [1, *shape[1:]]
        cls = model.__class__ if isinstance(model, keras.Sequential) else keras.Model
        fixed = cls.from_config(cfg)
    fixed.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((1, *model.input_shape[1:]), dtype=np.float32)
    diff = float(np.max(np.abs(np.asarray(fixed(x, training=False)) - np.asarray(model(x, training=False)))))
    if diff > 1e-4:
        raise ExportError(f"the batch-1 rebuild differs from the trained model (max |diff| {diff:.3g})")
    return fixed


@contextlib.contextmanager
def _quiet_converter() -> Iterator[Path]:
    """Send the converter's chatter (C++ logs on fd 2, Keras's "Saved artifact" print on fd 1) to a
    file; yields that file so a failure can quote it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.NamedTemporaryFile(prefix="tflite-convert-", suffix=".log", delete=False) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield Path(log.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "error" in ln.lower()]
    return lines[-1][:300] if lines else ""


def convert(
    model: Any,
    variant: str,
    representative: Optional[np.ndarray] = None,
    io_dtype: str = "int8",
) -> Tuple[bytes, List[str]]:
    """Convert a batch-1 Keras model to one variant; returns (flatbuffer, warnings).

    representative: (N, H, W, C) float32 normal images for the full-integer variants.
    io_dtype: "int8" or "uint8", the input/output type of ``int8_io``.
    For the full-integer variants the converter is first restricted to int8 builtins; if some
    op can't be quantised it converts again allowing float ops, which the parity gate reports.
    """
    import tensorflow as tf

    if variant not in VARIANTS[:5]:
        raise ExportError(f"cannot convert to variant {variant!r}; choose from {VARIANTS[:5]}")
    if model.input_shape[0] != 1:
        raise ExportError(f"convert a fixed batch-1 model (input shape {model.input_shape})")
    notes: List[str] = []

    def make(int8_only: bool) -> Any:
        c = tf.lite.TFLiteConverter.from_keras_model(model)
        if variant == "float32":
            return c
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            c.target_spec.supported_types = [tf.float16]
        elif variant in FULL_INTEGER:
            if representative is None or len(representative) == 0:
                raise ExportError(f"variant {variant} needs a representative dataset of normal images")
            rep = np.asarray(representative, dtype=np.float32)

            def gen() -> Iterator[List[np.ndarray]]:
                for x in rep:
                    yield [x[None]]

            c.representative_dataset = gen
            c.target_spec.supported_ops = (
                [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                if int8_only
                else [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            )
            if variant == "int8_io":
                t = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
                c.inference_input_type = t
                c.inference_output_type = t
        return c

    with _quiet_converter() as log, warnings.catch_warnings():
        # int8 io takes its input scale from the representative data; TF warns about that anyway.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        try:
            try:
                return bytes(make(int8_only=True).convert()), notes
            except Exception as e:  # noqa: BLE001 - the converter raises many kinds
                if variant not in FULL_INTEGER:
                    raise
                notes.append(f"{variant}: some ops can't be int8 ({str(e).splitlines()[0][:200]}); kept them float")
                return bytes(make(int8_only=False).convert()), notes
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001
            detail = _last_error_line(log) or str(e).splitlines()[0]
            raise ExportError(f"TFLite conversion to {variant} failed: {detail}") from None
        finally:
            log.unlink(missing_ok=True)


def representative_sample(x_train: np.ndarray, n: int = REPRESENTATIVE_MAX, seed: int = 0,
                          synthetic_share: float = 0.0, foreign: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Up to ``n`` normal training images, drawn without replacement (reproducible with ``seed``).

    synthetic_share: this share of them get a synthetic defect (training.synthetic), so that the
    int8 activation ranges also cover what a defect produces instead of clipping it (foreign:
    pictures for the foreign-object kind).
    """
    if len(x_train) == 0:
        raise ExportError("no normal training images for the int8 representative dataset")
    idx = np.random.default_rng(seed).permutation(len(x_train))[:n]
    rep = np.array(x_train[np.sort(idx)], dtype=np.float32)
    k = int(round(synthetic_share * len(rep)))
    if k:
        from .synthetic import synthesize

        rep[:k] = synthesize(rep[:k], k, seed=seed, foreign=foreign).images
    return rep


# -- op table -----------------------------------------------------------------------------------


def op_table(model_path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Per-op rows: op, input/output dtypes, ``int8`` (all tensors integer) and ``edgetpu``.

    ``edgetpu`` is "tpu" or "cpu" with ``reason``: the op is not on the Edge TPU's published list,
    has float tensors, or follows the first unsupported op (the compiler maps one leading
    subgraph; everything after the first CPU op stays on the CPU). QUANTIZE from a float input and
    DEQUANTIZE to a float output are the float-io boundary: on the CPU, but they cut nothing.
    """
    rows = []
    cut = False
    for op in model_ops(model_path):
        dtypes = op["inputs"] + op["outputs"]
        is_int = all(d in _INT_DTYPES for d in dtypes)
        row = {**op, "int8": is_int}
        boundary = op["op"] in _BOUNDARY_OPS and not is_int
        if boundary:
            row["edgetpu"], row["reason"] = "cpu", "float input/output boundary"
        elif op["op"] not in EDGETPU_OPS:
            row["edgetpu"], row["reason"] = "cpu", "not in the Edge TPU op list"
        elif not is_int:
            row["edgetpu"], row["reason"] = "cpu", "float tensors"
        elif cut:
            row["edgetpu"], row["reason"] = "cpu", "after the first unsupported op"
        else:
            row["edgetpu"] = "tpu"
        cut = cut or (row["edgetpu"] == "cpu" and not boundary)
        rows.append(row)
    return rows


def float_ops(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Ops computing in float (QUANTIZE/DEQUANTIZE at the float-io boundary excepted)."""
    return [f"{r['op']}#{r['index']}" for r in rows if not r["int8"] and r["op"] not in _BOUNDARY_OPS]


# -- Edge TPU compiler --------------------------------------------------------------------------


def compile_edgetpu(src: Path, out_dir: Path, timeout_s: float = 600.0) -> Dict[str, Any]:
    """Run ``edgetpu_compiler`` on ``src`` when it is on PATH.

    Returns ``{"available": False, "message": ...}`` when it is absent; otherwise the compiler
    version, return code, ops mapped to the TPU / CPU, the per-op status table, and ``file``
    (the compiled model) when it succeeded.
    """
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return {"available": False,
                "message": "edgetpu_compiler not on PATH: no int8_edgetpu variant (docs/EXPORT.md says how to "
                           "install it); the int8_io model it would compile is in the bundle"}
    work = Path(tempfile.mkdtemp(prefix="edgetpu-", dir=out_dir))
    try:
        proc = subprocess.run([exe, "-s", "-o", str(work), str(src)], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"available": True, "ok": False, "message": f"edgetpu_compiler timed out after {timeout_s:.0f} s"}
    text = proc.stdout + proc.stderr
    info: Dict[str, Any] = {"available": True, "returncode": proc.returncode, **parse_edgetpu_log(text)}
    compiled = work / f"{src.stem}_edgetpu.tflite"
    if proc.returncode == 0 and compiled.is_file():
        info["ok"] = True
        info["file"] = str(compiled)
    else:
        info["ok"] = False
        last = [ln for ln in text.strip().splitlines() if ln.strip()]
        info["message"] = f"edgetpu_compiler failed (exit {proc.returncode}): {last[-1] if last else 'no output'}"
    return info


def parse_edgetpu_log(text: str) -> Dict[str, Any]:
    """The mapping summary from ``edgetpu_compiler -s`` output (any compiler version we know)."""
    out: Dict[str, Any] = {}
    patterns = {
        "compiler_version": (r"Edge TPU Compiler version\s+(\S+)", str),
        "ops_on_tpu": (r"operations that will run on Edge TPU:\s*(\d+)", int),
        "ops_on_cpu": (r"operations that will run on CPU:\s*(\d+)", int),
        "subgraphs": (r"Number of Edge TPU subgraphs:\s*(\d+)", int),
        "ops_total": (r"Total number of operations:\s*(\d+)", int),
        "on_chip_cache": (r"On-chip memory used for caching model parameters:\s*(\S+)", str),
        "off_chip_streamed": (r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)", str),
    }
    for key, (pat, kind) in patterns.items():
        m = re.search(pat, text)
        if m:
            out[key] = kind(m.group(1))
    table = []
    for ln in text.splitlines():
        mm = re.match(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$", ln)
        if mm:
            table.append({"op": mm.group(1), "count": int(mm.group(2)), "status": mm.group(3)})
    if table:
        out["ops"] = table
        # Newer compilers print only the table; the counts follow from it.
        on_tpu = sum(r["count"] for r in table if r["status"].startswith("Mapped to Edge TPU"))
        out.setdefault("ops_on_tpu", on_tpu)
        out.setdefault("ops_on_cpu", sum(r["count"] for r in table) - on_tpu)
    return out


# -- scoring through the device code, metrics, calibration --------------------------------------


def rank_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, Optional[float]]:
    """Image AUROC and AUPR (``training.metrics``); both None when one class is missing."""
    a = auroc(scores, labels)
    return {"auroc": a, "aupr": None if a is None else aupr(scores, labels)}


def correlation(a: np.ndarray, b: np.ndarray) -> Dict[str, Optional[float]]:
    """Pearson and Spearman (rank) correlation of two score vectors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return {"pearson": None, "spearman": None}
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return {"pearson": float(np.corrcoef(a, b)[0, 1]), "spearman": float(np.corrcoef(ra, rb)[0, 1])}


def variant_scores(
    bundle: Union[Bundle, str, Path], variant: str, splits: Mapping[str, np.ndarray]
) -> Dict[str, np.ndarray]:
    """Scores (N,) per split of preprocessed inputs (N, H, W, C), through the device's Detector."""
    det = Detector(bundle, variant=variant, num_threads=1)
    return {
        name: det.infer(np.asarray(x, np.float32))[0].astype(np.float64) if len(x) else np.empty(0)
        for name, x in splits.items()
    }


@dataclass
class DataSplits:
    """Preprocessed arrays the export measures on. ``y_test``: 1 = anomalous."""

    x_train: np.ndarray
    x_val: np.ndarray
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    test_kinds: Optional[Sequence[str]] = None  # defect type per test image ("good" for normals)


@dataclass
class ReferenceSet:
    """A scorer's reference set (kNN / LOF), rebuilt from each variant's own outputs.

    images: preprocessed images (N, H, W, C) whose model outputs are the references.
    fit: (raw outputs (N, ...), variant) -> (the scorer's arrays, leave-one-out reference scores (N,)).
    """

    images: np.ndarray
    fit: Callable[[np.ndarray, str], Tuple[Dict[str, np.ndarray], np.ndarray]]


@dataclass
class ExportSpec:
    """Everything ``export_bundle`` needs besides the data; the run directory provides it.

    calibrate: validation scores (N,) -> ``{"threshold": float, "normal_stats": {...}, ...}``,
    the run's own calibration method, so each variant gets a threshold in its own score units.
    With ``reference`` it is also given the variant's ``reference_scores``.
    reference: rebuild the scorer's arrays per variant (else every variant shares ``arrays``).
    """

    model: Any
    preprocess: Preprocess
    scoring: Dict[str, Any]
    calibration: Dict[str, Any]
    calibrate: Callable[[np.ndarray], Dict[str, Any]]
    family: str
    name: str
    version: str = "1"
    model_params: Dict[str, Any] = field(default_factory=dict)
    rebuild: Optional[Callable[[], Any]] = None
    training_data: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)
    run: Dict[str, Any] = field(default_factory=dict)
    reference: Optional[ReferenceSet] = None


@dataclass
class ExportResult:
    bundle: Bundle
    archive: Optional[Path]
    failures: List[str]
    warnings: List[str]


def _split_eval(scores: np.ndarray, y: Optional[np.ndarray], threshold: float) -> Dict[str, Any]:
    if y is None:
        y = np.zeros(len(scores), bool)
    return {"n": int(len(scores)), **rank_metrics(scores, y), **rates(scores, y, threshold)}


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else float(b - a)


def parity_report(
    variant: str,
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    ref_threshold: float,
    threshold: float,
    y_test: Optional[np.ndarray],
    ops: List[Dict[str, Any]],
) -> Dict[str, Any]:
    """Float32 vs ``variant``: score correlation, AUROC/TNR/TPR on each split, the op table, pass/fail.

    TNR/TPR are taken at each model's own threshold (the one the device would use with it).
    """
    rep: Dict[str, Any] = {"reference": "float32", "splits": {}}
    for split in ("validation", "test"):
        if split not in got or len(got[split]) == 0:
            continue
        y = y_test if split == "test" else None
        a = _split_eval(ref[split], y, ref_threshold)
        b = _split_eval(got[split], y, threshold)
        rep["splits"][split] = {
            "n": a["n"],
            "correlation": correlation(ref[split], got[split]),
            "float32": {k: a[k] for k in ("auroc", "aupr", "tnr", "tpr")},
            variant: {k: b[k] for k in ("auroc", "aupr", "tnr", "tpr")},
            "delta": {k: _delta(a[k], b[k]) for k in ("auroc", "aupr", "tnr", "tpr")},
        }
    rep["ops"] = ops
    rep["float_ops"] = float_ops(ops)
    rep["edgetpu_cpu_ops"] = [f"{r['op']}#{r['index']}" for r in ops if r["edgetpu"] == "cpu"]
    failures: List[str] = []
    if variant in FULL_INTEGER:
        test = rep["splits"].get("test", {})
        d = (test.get("delta") or {}).get("auroc")
        if d is not None and -d > MAX_AUROC_LOSS:
            failures.append(
                f"{variant} loses {-d:.4f} AUROC against float32 ({test['float32']['auroc']:.4f} -> "
                f"{test[variant]['auroc']:.4f}; the limit is {MAX_AUROC_LOSS})"
            )
        if rep["float_ops"]:
            failures.append(f"{variant} keeps float ops: {', '.join(rep['float_ops'])}")
        rep["auroc_checked"] = d is not None
    rep["failures"] = failures
    rep["passed"] = not failures
    return rep


def _tool_versions() -> Dict[str, Any]:
    import keras
    import tensorflow as tf

    from edge_detect import __version__

    versions: Dict[str, Any] = {"edge_detect": __version__, "tensorflow": tf.__version__,
                                "keras": keras.__version__, "numpy": np.__version__,
                                "python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - absent runtime: the interpreter came from tf.lite
        versions["ai_edge_litert"] = None
    return versions


def variant_references(
    ref: ReferenceSet, files: Mapping[str, Path], variants: Dict[str, Dict[str, Any]],
    echo: Callable[[str], None] = print,
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Embed the reference images with every CPU-runnable variant: (bundle arrays, reference scores per variant).

    Each variant's scorer then compares its outputs with references from the same numerics, so an
    int8 model's systematic error cancels instead of reading as distance (docs/EXPORT.md).
    float32 keeps the scorer's array names; another variant's copy is ``<name>_<variant>``, unless
    it equals a copy already stored (int8 and int8_io give the same outputs). Sets
    ``variants[v]["arrays"]``; the Edge TPU variant takes int8_io's, the model it was compiled from.
    """
    arrays: Dict[str, np.ndarray] = {}
    stored: Dict[str, List[str]] = {}
    ref_scores: Dict[str, np.ndarray] = {}
    order = sorted((v for v in files if v != "int8_edgetpu"), key=lambda v: v != "float32")
    for v in order:
        outputs = TFLiteModel(files[v], num_threads=1).run_batch(np.asarray(ref.images, np.float32))
        own, ref_scores[v] = ref.fit(outputs, v)
        names: Dict[str, str] = {}
        for role, arr in own.items():
            same = [n for n in stored.get(role, []) if np.array_equal(arrays[n], arr)]
            names[role] = same[0] if same else (role if v == "float32" else f"{role}_{v}")
            if not same:
                arrays[names[role]] = arr
                stored.setdefault(role, []).append(names[role])
        variants[v]["arrays"] = names
        echo(f"references {v:<8} {len(outputs)} images run through this variant")
    if "int8_edgetpu" in variants and "int8_io" in variants:
        variants["int8_edgetpu"]["arrays"] = dict(variants["int8_io"]["arrays"])
    return arrays, ref_scores


def replaced_bundle(out: Path) -> Optional[str]:
    """"bundle NAME VERSION" (or "a damaged bundle") that ``out`` holds, None if ``out`` is new or empty.

    Raises ExportError if ``out`` holds anything else: the export replaces the whole folder.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a bundle folder")
    if (out / MANIFEST).is_file():
        try:
            m = read_manifest(out)
            return f"bundle {m.get('name')} {m.get('version')}"
        except BundleError:
            return "a damaged bundle"
    if any(out.iterdir()):
        raise ExportError(f"--out {out} holds other files and no manifest.json: the export replaces the whole "
                          "folder, so choose a new or empty one")
    return None


def export_bundle(
    spec: ExportSpec,
    data: DataSplits,
    out: Union[str, Path],
    quant: str = "int8",
    allow_degraded: bool = False,
    archive: bool = False,
    io_dtype: str = "int8",
    representative: Optional[np.ndarray] = None,
    echo: Callable[[str], None] = print,
    rep_synthetic: float = 0.0,
) -> ExportResult:
    """Convert, measure every variant through the device's Detector, and write the bundle at ``out``.

    representative: the int8 calibration images (default: a sample of ``data.x_train``, of which a
    ``rep_synthetic`` share carries a synthetic defect).
    Raises ParityError (nothing written) if a full-integer variant misses the parity bar and
    ``allow_degraded`` is False; with it, the failures become warnings recorded in the manifest.
    """
    if quant not in QUANT_CHOICES:
        raise ExportError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, got {quant!r}")
    if io_dtype not in ("int8", "uint8"):
        raise ExportError(f"--io-dtype must be int8 or uint8, got {io_dtype!r}")
    if len(data.x_val) == 0:
        raise ExportError("no validation images: the export recalibrates each variant on them")
    out = Path(out)
    earlier = replaced_bundle(out)
    wanted = QUANT_VARIANTS[quant]
    warnings: List[str] = []
    fixed = fixed_batch_model(spec.model, spec.rebuild)
    rep = representative if representative is not None else representative_sample(
        data.x_train, synthetic_share=rep_synthetic)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        files: Dict[str, Path] = {}
        for v in wanted:
            blob, notes = convert(fixed, v, rep if v in FULL_INTEGER else None, io_dtype)
            warnings += notes
            files[v] = work / variant_file(v)
            files[v].write_bytes(blob)
            echo(f"converted {v:<8} {len(blob) / 1024:8.1f} KiB")

        edgetpu: Optional[Dict[str, Any]] = None
        if "int8_io" in files:
            edgetpu = compile_edgetpu(files["int8_io"], work)
            if not edgetpu["available"]:
                echo(edgetpu["message"])
            elif edgetpu.get("ok"):
                files["int8_edgetpu"] = work / variant_file("int8_edgetpu")
                shutil.move(edgetpu.pop("file"), files["int8_edgetpu"])
                echo(f"edgetpu_compiler {edgetpu.get('compiler_version', '?')}: {edgetpu.get('ops_on_tpu', '?')} "
                     f"ops on the Edge TPU, {edgetpu.get('ops_on_cpu', '?')} on the CPU")
            else:
                warnings.append(edgetpu["message"])

        variants: Dict[str, Dict[str, Any]] = {}
        for v, path in files.items():
            # The compiled model's tensors are those of the model it was compiled from.
            src = files["int8_io"] if v == "int8_edgetpu" else path
            m = TFLiteModel(src, num_threads=1)
            variants[v] = {"file": path.name, "input": m.input.to_dict(), "output": m.output.to_dict(),
                           "size_bytes": path.stat().st_size}
            if v == "int8_edgetpu":
                variants[v]["compiled_from"] = "int8_io"
                variants[v]["edgetpu"] = {k: val for k, val in edgetpu.items() if k != "file"}

        arrays, ref_scores = dict(spec.arrays), {}
        if spec.reference is not None:
            arrays, ref_scores = variant_references(spec.reference, files, variants, echo)

        def calibrate(v: str, val_scores: np.ndarray) -> Dict[str, Any]:
            kw = {"reference_scores": ref_scores[v]} if v in ref_scores else {}
            return {**spec.calibrate(val_scores, **kw), **pixel_calibration(staged, v, data.x_val)}

        manifest: Dict[str, Any] = {
            "name": spec.name,
            "version": str(spec.version),
            "family": spec.family,
            "model": {"family": spec.family, "params": spec.model_params,
                      "input_shape": list(spec.preprocess.shape), "batch_size": 1,
                      "parameters": int(spec.model.count_params())},
            "preprocess": spec.preprocess.to_dict(),
            "scoring": spec.scoring,
            "calibration": spec.calibration,
            "default_variant": "int8" if "int8" in variants else "float32",
            "variants": variants,
            "training_data": spec.training_data,
            "metrics": spec.metrics,
            "tools": _tool_versions(),
        }
        if edgetpu is not None:
            manifest["tools"]["edgetpu_compiler"] = edgetpu.get("compiler_version")
        stage = work / "stage"
        staged = write_bundle(stage, manifest, {p.name: p for p in files.values()}, arrays)

        # Score every split with every CPU-runnable variant through the device code.
        splits = {"validation": data.x_val}
        if data.x_test is not None and len(data.x_test):
            splits["test"] = data.x_test
        scores: Dict[str, Dict[str, np.ndarray]] = {}
        for v in variants:
            if v == "int8_edgetpu":
                continue
            scores[v] = variant_scores(staged, v, splits)

        failures: List[str] = []
        ref = scores["float32"]
        ref_cal = calibrate("float32", ref["validation"])  # with the heatmap regions on the device
        keras_out = np.asarray(fixed(data.x_val[:1], training=False))
        tfl_out = TFLiteModel(files["float32"], num_threads=1)(np.asarray(data.x_val[:1], np.float32))
        variants["float32"]["conversion_max_abs_diff"] = float(np.max(np.abs(keras_out - tfl_out)))
        evaluation: Dict[str, Any] = {}
        for v, s in scores.items():
            cal = ref_cal if v == "float32" else calibrate(v, s["validation"])
            variants[v]["calibration"] = cal
            if "test" in s:
                evaluation[v] = _split_eval(s["test"], data.y_test, cal["threshold"])
                if data.test_kinds is not None and data.y_test is not None:
                    evaluation[v]["per_defect"] = _per_defect(s["test"], data.y_test, data.test_kinds,
                                                              cal["threshold"])
                variants[v]["metrics"] = evaluation[v]
            if v == "float32":
                continue
            rep_v = parity_report(v, ref, s, ref_cal["threshold"], cal["threshold"], data.y_test,
                                  op_table(files[v]))
            variants[v]["parity"] = rep_v
            failures += rep_v["failures"]
            echo(_parity_line(v, rep_v))
            if v in FULL_INTEGER and not rep_v.get("auroc_checked"):
                warnings.append(f"{v}: no labelled test data with both classes, so the AUROC parity gate "
                                "could not run")
        if "int8_edgetpu" in variants:
            # The Edge TPU runs int8_io's graph; its scores are the nearest the CPU can measure.
            variants["int8_edgetpu"]["calibration"] = variants["int8_io"]["calibration"]
        if "int8_io" in variants:
            table = variants["int8_io"]["parity"]["ops"]
            cpu = [r for r in table if r["edgetpu"] == "cpu"]
            echo(f"Edge TPU op check (int8_io): {len(table) - len(cpu)}/{len(table)} ops on the published list"
                 + (f"; CPU: {', '.join(r['op'] for r in cpu)}" if cpu else ""))

        if failures and not allow_degraded:
            raise ParityError("; ".join(failures) + " (--allow-degraded writes the bundle anyway)")
        warnings += [f"degraded: {f}" for f in failures]
        default = manifest["default_variant"]
        if variants[default].get("parity", {}).get("failures"):
            # A device without a --variant or an accelerator runs the default: keep the reference there.
            manifest["default_variant"] = "float32"
            warnings.append(f"the default variant is float32, because {default} failed the parity gate; a device "
                            f"runs a failed variant only when asked (--variant, model.variant) or when its "
                            "accelerator picks it (int8_io, int8_edgetpu), and then logs a warning")
        manifest["export"] = {
            "quant": quant,
            "variants": list(variants),
            "io_dtype": io_dtype if "int8_io" in variants else None,
            "representative": {"count": int(len(rep)), "source": "normal training images"},
            "allow_degraded": allow_degraded,
            "parity_passed": not failures,
            "max_auroc_loss": MAX_AUROC_LOSS,
            "edgetpu_compiler": ({k: val for k, val in edgetpu.items() if k != "file"}
                                 if edgetpu is not None else None),
            "warnings": warnings,
        }
        manifest["metrics"] = {**spec.metrics, "variants": evaluation}
        manifest["calibration"] = {**spec.calibration, **ref_cal}
        bundle = write_bundle(out, manifest, {p.name: p for p in files.values()}, arrays)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if earlier:
        echo(f"replaced {earlier} in {out}")
    arch, stale = None, out.with_name(out.name + ".tar.gz")
    if archive:
        arch = pack(out, stale)
        echo(f"archive: {arch}")
    elif stale.exists():
        warnings.append(f"{stale} was not rewritten (no --archive): it holds an earlier export; delete it, "
                        "or export again with --archive")
    for w in warnings:
        echo(f"warning: {w}")
    return ExportResult(bundle=bundle, archive=arch, failures=failures, warnings=warnings)


def _per_defect(scores: np.ndarray, y: np.ndarray, kinds: Sequence[str], threshold: float) -> Dict[str, Any]:
    """AUROC and TPR of each defect type against all test normals."""
    y = np.asarray(y).astype(bool)
    kinds_a = np.asarray(kinds)
    out = {}
    for k in sorted(set(kinds_a[y].tolist())):
        sel = ~y | (kinds_a == k)
        out[k] = {"n": int((kinds_a[y] == k).sum()), **rank_metrics(scores[sel], y[sel]),
                  "tpr": rates(scores[sel], y[sel], threshold)["tpr"]}
    return out


def _fmt(v: Optional[float], pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _parity_line(variant: str, rep: Mapping[str, Any]) -> str:
    parts = [f"parity {variant:<8}"]
    for split, r in rep["splits"].items():
        c = r["correlation"]["pearson"]
        parts.append(f"{split}: r={_fmt(c)}")
        if r["float32"]["auroc"] is not None:
            parts.append(f"AUROC {_fmt(r['float32']['auroc'])}->{_fmt(r[variant]['auroc'])}")
        if r["float32"]["tnr"] is not None:
            parts.append(f"TNR {_fmt(r['float32']['tnr'], True)}->{_fmt(r[variant]['tnr'], True)}")
        if r["float32"]["tpr"] is not None:
            parts.append(f"TPR {_fmt(r['float32']['tpr'], True)}->{_fmt(r[variant]['tpr'], True)}")
    if rep["float_ops"]:
        parts.append(f"float ops: {len(rep['float_ops'])}")
    parts.append("ok" if rep["passed"] else "FAILED")
    return "  ".join(parts)


def evaluate_bundle(
    bundle: Union[Bundle, str, Path],
    variant: Optional[str],
    images: Union[np.ndarray, Sequence[Union[str, Path]]],
    labels: Optional[Sequence[int]] = None,
    kinds: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Evaluate one bundle variant with the device's Detector (the scores ``edge-detect score`` prints).

    images: image paths (decoded with the bundle's own preprocessing, as on the device) or an
    already preprocessed (N, H, W, C) float32 array. labels: 1 = anomalous.
    Returns ``{"variant", "threshold", "scores", **metrics}``; metrics need ``labels``.
    """
    det = Detector(bundle, variant=variant, num_threads=1)
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32, copy=False)
    else:
        x = det.preprocess.batch(list(images)) if len(images) else np.empty((0, *det.preprocess.shape), np.float32)
    scores = det.infer(x)[0].astype(np.float64) if len(x) else np.empty(0)
    out: Dict[str, Any] = {"variant": det.variant, "threshold": det.threshold, "scores": scores.tolist()}
    if labels is not None:
        y = np.asarray(labels)
        out.update(_split_eval(scores, y, det.threshold))
        if kinds is not None:
            out["per_defect"] = _per_defect(scores, y, kinds, det.threshold)
    return out
