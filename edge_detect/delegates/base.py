"""The delegate interface shared by every accelerator plugin."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

from ..oneline import first_line
from ..validate import from_table


class DelegateUnavailable(RuntimeError):
    """The accelerator can't be used here; the message is the one line we log."""


LoadDelegate = Callable[[str, Optional[Dict[str, str]]], Any]


@dataclass(frozen=True)
class DelegateConfig:
    type: ClassVar[str] = ""
    # Bundle variants this accelerator can run, best first.
    variants: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "accelerator") -> DelegateConfig:
        """Build from the TOML table without its ``type``; ConfigError naming every bad ``where.key``."""
        return from_table(cls, d, where)

    def check(self) -> Dict[str, str]:
        """Value problems as ``{key: problem}`` (validate.from_table's convention)."""
        return {}

    @property
    def name(self) -> str:
        """How the accelerator is reported on the stats topic, e.g. 'edgetpu:usb'."""
        return self.type

    def delegate_options(self) -> Dict[str, str]:
        """What ``load_delegate`` passes to the library, as strings."""
        return {}

    def preferred_variants(self) -> Tuple[str, ...]:
        """Bundle variants to try on this accelerator, best first."""
        return self.variants

    def library(self) -> str:
        raise NotImplementedError

    def check_model(self, model_path: str) -> None:
        """Raise DelegateUnavailable if this model can't run on the accelerator."""

    def load(self, load_delegate: LoadDelegate) -> Any:
        """The runtime's delegate object, or DelegateUnavailable with the one-line reason."""
        library = self.library()
        # LiteRT's Delegate fails noisily on a library it can't open or that is no delegate: an
        # AttributeError escapes, and its __del__ prints a traceback later. Look first ourselves.
        try:
            lib = ctypes.CDLL(library)
        except OSError as e:
            raise DelegateUnavailable(f"{self.name}: cannot load {library} ({first_line(e)})") from None
        if not hasattr(lib, "tflite_plugin_create_delegate"):
            raise DelegateUnavailable(f"{self.name}: {library} is not a TFLite delegate library "
                                      "(no tflite_plugin_create_delegate)")
        try:
            return load_delegate(library, self.delegate_options() or None)
        except (ValueError, RuntimeError, OSError) as e:
            raise DelegateUnavailable(f"{self.name}: cannot load {library} ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """The delegate's own words: LiteRT puts them under a line of its own ("Failed to load delegate
    from LIB") that the caller's message already says; several lines are joined with "; "."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Failed to load delegate from"):
        lines = lines[1:]
    return "; ".join(lines)[:300] if lines else type(e).__name__
