"""``import tensorflow`` without its start-up chatter on stderr.

TensorFlow 2.21 prints oneDNN and CPU-feature notices through absl before any logging is set up,
so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them (tensorflow/tensorflow#100442), and every
``edge-train`` command would open with them. During the import, fd 2 goes through a small child
process (:data:`CHILD`) that drops exactly those notices and passes every other line on at once.
A child, not a thread, so that a fatal message before an abort (a CPU without the instructions
TensorFlow was built for) still reaches the terminal.
:func:`install` makes the first ``import tensorflow`` (or ``import keras``) anywhere do this, so a
command pays for TensorFlow only when it needs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import subprocess
import sys
from types import ModuleType
from typing import Any, Optional

# The notices, word for word: a line that merely comes from the same source file is kept.
NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on. You may see slightly different numerical results",
    "This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions:",  # the second line of the notice above
)


# The child: copies its stdin (the parent's fd 2) to its stdout (the parent's real stderr) line by
# line as it comes, except lines containing any of its arguments. Self-contained, imports nothing.
CHILD = """import sys
noise = [a.encode() for a in sys.argv[1:]]
for raw in iter(sys.stdin.buffer.readline, b""):
    if not any(n in raw for n in noise):
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
"""


def import_tensorflow() -> ModuleType:
    """The tensorflow module, imported with its start-up notices dropped (once per process)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        child = subprocess.Popen([sys.executable, "-I", "-c", CHILD, *NOISE], stdin=subprocess.PIPE,
                                 stdout=saved, stderr=saved)
    except OSError:  # no interpreter to start: import with the notices rather than not at all
        os.close(saved)
        import tensorflow

        return tensorflow
    os.dup2(child.stdin.fileno(), 2)
    try:
        import tensorflow
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()  # end of input: the child passes on what is left and exits
        child.wait()
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

