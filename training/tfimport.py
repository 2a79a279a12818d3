"""``import tensorflow`` without its start-up chatter on stderr.

TensorFlow 2.21 prints oneDNN and CPU-feature notices through absl before any logging is set up,
so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them (tensorflow/tensorflow#100442), and every
``edge-train`` command would open with them. The import runs with fd 2 captured; the known
notices are dropped and every other line is passed on, so a real error still shows.
:func:`install` makes the first ``import tensorflow`` (or ``import keras``) anywhere do this, so a
command pays for TensorFlow only when it needs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile
from types import ModuleType
from typing import Any, Optional

# Substrings of the lines TensorFlow writes to stderr on every import on x86 CPUs.
NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


def without_noise(text: str) -> str:
    """``text`` without the lines that are TensorFlow's start-up notices."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not any(n in ln for n in NOISE))


def import_tensorflow() -> ModuleType:
    """The tensorflow module, imported with its start-up notices dropped (once per process)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sys.stderr.write(without_noise(tmp.read().decode(errors="replace")))
            sys.stderr.flush()
    return tensorflow


class _Imported(importlib.abc.Loader):
    """Hands the import system the module :func:`import_tensorflow` already imported."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: Any) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        pass


class _QuietFinder(importlib.abc.MetaPathFinder):
    busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != "tensorflow" or self.busy:
            return None
        self.busy = True  # the import inside import_tensorflow() goes the usual way
        try:
            module = import_tensorflow()
        finally:
            self.busy = False
            uninstall()
        return importlib.util.spec_from_loader(name, _Imported(module))


def install() -> None:
    """Make the process's first ``import tensorflow`` quiet (see the module docstring)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]
