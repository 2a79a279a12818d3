"""Cold start of `edge-detect score`: a fresh process per run, from exec to the printed verdict.

Usage: .venv/bin/python bench/cold_start.py BUNDLE [IMAGE] [--variant int8] [--runs 10]

Without IMAGE it scores a mid-grey PNG of the bundle's input size (px), written to a temp folder.

Prints min / median / max wall time (s) over the runs, plus the import time of edge_detect alone.
Each run is a new interpreter (`python -m edge_detect.cli`-equivalent entry point), so it pays for
Python start-up, imports, bundle verification (SHA-256 of every file), interpreter creation,
decoding, inference and printing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("image", nargs="?", help="default: a mid-grey PNG of the bundle's input size")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    print(common.machine_line())
    if a.image is None:
        from PIL import Image

        from edge_detect.bundle import load_bundle

        pre = load_bundle(a.bundle, verify=False).preprocess
        tmp = tempfile.TemporaryDirectory()  # removed when main() returns
        a.image = str(Path(tmp.name) / "grey.png")
        grey = Image.new("L", pre.size[::-1], 128)  # PIL sizes are (width, height)
        (grey if pre.channels == 1 else grey.convert("RGB")).save(a.image)
    # The entry point of the running venv first, so the numbers are for this install.
    beside = Path(sys.executable).with_name("edge-detect")
    exe = str(beside) if beside.is_file() else shutil.which("edge-detect")
    cmd = [exe] if exe else [sys.executable, "-c", "from edge_detect.cli import main; main()"]
    cmd += ["score", a.bundle, a.image] + (["--variant", a.variant] if a.variant else [])
    times = []
    out = ""
    for _ in range(a.runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if p.returncode not in (0,):
            sys.exit(f"edge-detect score failed ({p.returncode}): {p.stderr.strip()}")
        out = p.stdout.strip()
    imp = []
    for _ in range(max(3, a.runs // 2)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import edge_detect.cli, edge_detect.detector"], check=True)
        imp.append(time.perf_counter() - t0)
    print(f"command: {' '.join(cmd)}")
    print(f"output:  {out}")
    print(f"cold start to verdict, {a.runs} runs: min {min(times):.3f} s  median {statistics.median(times):.3f} s  "
          f"max {max(times):.3f} s")
    print(f"python + import edge_detect.cli/detector: median {statistics.median(imp):.3f} s")
    print(common.write_result("cold_start", {"cli": cmd, "output": out, "runs_s": times, "import_s": imp}))


if __name__ == "__main__":
    main()
