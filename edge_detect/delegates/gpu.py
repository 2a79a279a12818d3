"""The LiteRT GPU delegate (OpenCL/OpenGL: Jetson, Mali, Adreno)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Tuple

from .base import DelegateConfig


@dataclass(frozen=True)
class GpuDelegate(DelegateConfig):
    """library_path: the GPU delegate shared library built for the device's runtime."""

    library_path: str = "libtensorflowlite_gpu_delegate.so"
    precision_loss_allowed: bool = True
    type: ClassVar[str] = "gpu"
    variants: ClassVar[Tuple[str, ...]] = ("float16", "float32")

    def library(self) -> str:
        return self.library_path

    def delegate_options(self) -> Dict[str, str]:
        return {"precision_loss_allowed": "1" if self.precision_loss_allowed else "0"}
