"""Any external delegate given as a library path plus options (NXP VX, Arm NN, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, Tuple

from .base import DelegateConfig


@dataclass(frozen=True)
class ExternalDelegate(DelegateConfig):
    """library_path: e.g. /usr/lib/libvx_delegate.so (i.MX8) or libarmnnDelegate.so
    options: passed to the delegate as strings, e.g. {backends = "GpuAcc,CpuAcc"} for Arm NN.
    variant: bundle variant to run (NPUs usually want "int8_io" or "int8").
    """

    library_path: str = ""
    options_: Dict[str, str] = field(default_factory=dict)
    variant: str = "int8"
    type: ClassVar[str] = "external"
    variants: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, d, where="accelerator"):  # "options" is the natural key in TOML
        d = dict(d)
        if "options_" in d:  # the field behind "options", not a key of the TOML table
            raise ValueError(f"{where}: unknown key(s) options_ for type {cls.type!r}")
        if "options" in d:
            opts = d.pop("options")
            if not isinstance(opts, dict):
                raise ValueError(f"{where}.options must be a table of strings, got {opts!r}")
            d["options_"] = {str(k): str(v) for k, v in opts.items()}
        return super().from_dict(d, where)

    def __post_init__(self) -> None:
        if not self.library_path:
            raise ValueError("library_path is required for an external delegate")

    @property
    def name(self) -> str:
        return f"external:{self.library_path.rsplit('/', 1)[-1]}"

    def library(self) -> str:
        return self.library_path

    def options(self) -> Dict[str, str]:
        return dict(self.options_)

    def preferred_variants(self) -> Tuple[str, ...]:
        return (self.variant,)
