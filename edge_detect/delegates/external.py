"""Any external delegate given as a library path plus options (NXP VX, Arm NN, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, Tuple, Union

from .base import DelegateConfig


@dataclass(frozen=True)
class ExternalDelegate(DelegateConfig):
    """library_path: e.g. /usr/lib/libvx_delegate.so (i.MX8) or libarmnnDelegate.so
    options: passed to the delegate as strings, e.g. {backends = "GpuAcc,CpuAcc"} for Arm NN
    (numbers and booleans are turned into strings: 4 -> "4", true -> "true").
    variant: bundle variant to run (NPUs usually want "int8_io" or "int8").
    """

    library_path: str = ""
    options: Dict[str, Union[str, int, float, bool]] = field(default_factory=dict)
    variant: str = "int8"
    type: ClassVar[str] = "external"
    variants: ClassVar[Tuple[str, ...]] = ()

    def check(self) -> Dict[str, str]:
        return {} if self.library_path else {"library_path": "required for an external delegate (its .so)"}

    @property
    def name(self) -> str:
        return f"external:{self.library_path.rsplit('/', 1)[-1]}"

    def library(self) -> str:
        return self.library_path

    def delegate_options(self) -> Dict[str, str]:
        # The library parses strings; TOML's true/false would otherwise arrive as "True"/"False".
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.options.items()}

    def preferred_variants(self) -> Tuple[str, ...]:
        return (self.variant,)
