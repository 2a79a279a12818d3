"""The interpreter wrapper: the runtime's C++ INFO lines go to the debug log, nothing else is lost."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from edge_detect.runtime import runtime_info_to_log

DEMO = Path(__file__).resolve().parents[1] / "edge_detect" / "data" / "demo" / "bundle"


def test_runtime_info_lines_go_to_the_debug_log_and_the_rest_comes_back(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_detect.runtime")
    with runtime_info_to_log():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: keep me\n")
        sys.stderr.write("a Python line meanwhile\n")
    err = capfd.readouterr().err
    assert "WARNING: keep me" in err and "a Python line meanwhile" in err
    assert "INFO: Created" not in err
    assert "runtime: INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in caplog.text


def test_loading_a_float_model_writes_no_runtime_line_to_stderr():
    # A fresh process: the runtime says it once per process, when XNNPACK first takes a float graph.
    code = ("import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format='%(message)s');"
            "from edge_detect.runtime import TFLiteModel;"
            f"TFLiteModel({str(DEMO / 'model_float32.tflite')!r}, num_threads=1)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "runtime: INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in p.stdout
