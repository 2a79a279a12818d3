"""The TFLite interpreter: LiteRT where it installs, tflite-runtime next, tf.lite last.

``TFLiteModel`` hides quantisation: it takes and returns float32 whatever the
model's input and output dtypes are.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np

from .delegates import DelegateConfig, DelegateUnavailable

log = logging.getLogger(__name__)


class AcceleratorRequired(RuntimeError):
    """``require_accelerator`` is set and the accelerator can't be used."""


def interpreter_backend() -> Tuple[str, Any, Callable]:
    """(name, Interpreter class, load_delegate) of the first runtime that imports."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return "ai-edge-litert", Interpreter, load_delegate
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore

        return "tflite-runtime", Interpreter, load_delegate
    except ImportError:
        pass
    try:
        # Last resort on a workstation: this is the only place the device package may touch TensorFlow,
        # and only when neither LiteRT nor tflite-runtime is installed. importlib keeps it out of
        # static import scans of the device package.
        tf = importlib.import_module("tensorflow")

        return "tf.lite", tf.lite.Interpreter, tf.lite.experimental.load_delegate
    except ImportError:
        raise RuntimeError(
            "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime on armv7 / Python < 3.10)"
        ) from None


# The runtime's C++ logger writes lines like "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
# straight to fd 2, and no environment variable silences it in LiteRT 2.3 (TF_CPP_MIN_LOG_LEVEL does not).
_RUNTIME_INFO = re.compile(rb"^INFO: [^\n]*\n?", re.MULTILINE)


@contextlib.contextmanager
def runtime_info_to_log() -> Iterator[None]:
    """Catch what the runtime's C++ code writes to fd 2 while the block runs.

    Its ``INFO:`` lines go to the debug log, so a daemon's stderr (the journal) stays one JSON
    object per line; everything else caught, warnings and errors included, is written back to
    stderr unchanged after the block. Python's own writes in the meantime are caught and written
    back too, so nothing is lost, only delayed by the block's length (the model load, ms).
    """
    try:
        sys.stderr.flush()
        caught = tempfile.TemporaryFile()
    except (OSError, ValueError, AttributeError):  # no writable temp dir, or a replaced sys.stderr
        yield
        return
    with caught:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 to catch
            yield
            return
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read()
            for line in _RUNTIME_INFO.findall(text):
                log.debug("runtime: %s", line.decode("utf-8", "replace").strip())
            rest = memoryview(_RUNTIME_INFO.sub(b"", text))
            while rest:
                rest = rest[os.write(2, rest):]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: shape (with batch), numpy dtype name, (scale, zero_point)."""

    shape: Tuple[int, ...]
    dtype: str
    quantization: Tuple[float, int]

    @classmethod
    def from_details(cls, d: dict) -> TensorSpec:
        scale, zp = d.get("quantization", (0.0, 0))
        return cls(tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name, (float(scale), int(zp)))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "quantization": list(self.quantization)}

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8", "int16") and self.quantization[0] > 0


class TFLiteModel:
    """One .tflite file in an interpreter, float32 in and out.

    num_threads: CPU threads for the interpreter (None: the runtime's default).
    delegate: an accelerator; if it can't be loaded the model runs on the CPU and
    ``fallback`` says why, unless ``require_accelerator`` is set.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        num_threads: Optional[int] = None,
        delegate: Optional[DelegateConfig] = None,
        require_accelerator: bool = False,
    ) -> None:
        self.path = str(model_path)
        self.backend, interpreter_cls, load_delegate = interpreter_backend()
        self.accelerator = "cpu"
        self.fallback: Optional[str] = None
        delegates: List[Any] = []
        if delegate is not None:
            try:
                delegate.check_model(self.path)
                delegates.append(delegate.load(load_delegate))
                self.accelerator = delegate.name
            except DelegateUnavailable as e:
                if require_accelerator:
                    msg = f"{e}; require_accelerator is set, so not falling back to the CPU"
                    raise AcceleratorRequired(msg) from None
                self.fallback = str(e)
                # debug: the caller reports it (the daemon's accelerator_fallback line, ``.fallback``)
                log.debug("%s; falling back to the CPU", e)
        with runtime_info_to_log():
            self._interp = interpreter_cls(
                model_path=self.path, num_threads=num_threads, experimental_delegates=delegates or None
            )
            self._interp.allocate_tensors()
        (inp,) = self._interp.get_input_details()
        outs = self._interp.get_output_details()
        self._in_index = inp["index"]
        self._out_index = outs[0]["index"]
        self.input = TensorSpec.from_details(inp)
        self.outputs = [TensorSpec.from_details(o) for o in outs]
        self.output = self.outputs[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (the model's fixed batch size) of float32 input; float32 output."""
        spec = self.input
        if spec.quantized:
            scale, zp = spec.quantization
            info = np.iinfo(spec.dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(spec.dtype)
        else:
            x = x.astype(spec.dtype, copy=False)
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out_index)
        if self.output.quantized:
            scale, zp = self.output.quantization
            return (y.astype(np.float32) - zp) * np.float32(scale)
        return y.astype(np.float32, copy=False)

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        """Run any number of (H, W, C) inputs through the fixed-batch model, one batch at a time."""
        b = self.input.shape[0]
        if len(x) % b:
            raise ValueError(f"{len(x)} inputs is not a multiple of the model's batch size {b}")
        return np.concatenate([self(x[i : i + b]) for i in range(0, len(x), b)]) if len(x) else np.empty(
            (0, *self.output.shape[1:]), np.float32
        )

    def ops(self) -> List[dict]:
        """The graph's builtin ops with their tensor dtypes (for the parity and Edge TPU reports).

        The serving interpreter may have handed the graph to XNNPACK or an accelerator, which then
        shows up as one DELEGATE node; a second interpreter without any delegate lists the real ops.
        """
        return model_ops(self.path)


def model_ops(model_path: str | os.PathLike) -> List[dict]:
    """Ops of a .tflite file as ``{"index", "op", "inputs", "outputs"}``; inputs/outputs are dtype names.

    Constant inputs (weights, biases, shapes) are listed too, so a CONV_2D reads
    ``inputs=["int8", "int8", "int32"]`` when it is fully quantised.
    """
    _, interpreter_cls, _ = interpreter_backend()
    kwargs: dict = {}
    resolver = _builtin_resolver_without_delegates(interpreter_cls)
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver
    interp = interpreter_cls(model_path=str(model_path), **kwargs)
    # No allocate_tensors(): listing ops needs only the parsed graph, and custom ops (edgetpu) would fail.
    details = interp._get_ops_details()  # noqa: SLF001 - no public API for this
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def dtypes(idx: List[int]) -> List[str]:
        return [np.dtype(tensors[i]["dtype"]).name for i in idx if i >= 0 and i in tensors]

    return [
        {"index": int(d["index"]), "op": d["op_name"], "inputs": dtypes(d["inputs"]),
         "outputs": dtypes(d["outputs"])}
        for d in details
    ]


def _builtin_resolver_without_delegates(interpreter_cls: Any) -> Any:
    """The OpResolverType that disables XNNPACK, from whichever runtime module we loaded."""
    import importlib

    try:
        mod = importlib.import_module(interpreter_cls.__module__)
    except ImportError:
        return None
    kind = getattr(mod, "OpResolverType", None)
    return getattr(kind, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None) if kind is not None else None
