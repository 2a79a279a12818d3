"""Coral Edge TPU (USB Accelerator, M.2/PCIe, Dev Board) through libedgetpu."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, Tuple

from .base import DelegateConfig, DelegateUnavailable

_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True)
class EdgeTpuDelegate(DelegateConfig):
    """device: "usb", "pci", "usb:0", "pci:1" or ":N" (the N-th Edge TPU of any kind)."""

    device: str = ""
    library_path: str = ""
    type: ClassVar[str] = "edgetpu"
    variants: ClassVar[Tuple[str, ...]] = ("int8_edgetpu",)

    def check(self) -> Dict[str, str]:
        if self.device and not re.fullmatch(r"(usb|pci)?(:\d+)?", self.device):
            return {"device": f"must be usb, pci, usb:N, pci:N or :N, got {self.device!r}"}
        return {}

    @property
    def name(self) -> str:
        return f"edgetpu:{self.device}" if self.device else "edgetpu"

    def library(self) -> str:
        return self.library_path or _LIB.get(platform.system(), "libedgetpu.so.1")

    def delegate_options(self) -> Dict[str, str]:
        return {"device": self.device} if self.device else {}

    def check_model(self, model_path: str) -> None:
        # The compiler replaces the mapped subgraph with one custom op; without it nothing runs on the TPU.
        with open(model_path, "rb") as f:
            if b"edgetpu-custom-op" not in f.read():
                raise DelegateUnavailable(
                    f"{self.name}: {model_path} is not compiled for the Edge TPU (run edgetpu_compiler)"
                )
