"""Cold start to first score (ms) and peak RSS (MB) per model size and variant, each in a fresh process.

A fresh Python process imports ``edge_detect``, loads and verifies the bundle, builds the
Detector and scores one JPEG; it reports its own phase times and its peak RSS (VmHWM, with
ru_maxrss as a cross-check). The parent times the whole process, interpreter start included.
Baselines in the same run: a bare interpreter, and ``import numpy, PIL`` (what any device
process pays), so the model's own share of time and memory is a difference within one run.
Also timed: the ``edge-detect score BUNDLE IMAGE`` command itself, the export issue's < 1.5 s bar.

Usage::

    python bench/cold_start_rss.py BUNDLE [BUNDLE ...] [--variants int8,float32] [--repeats 5] [--image IMG]

With no bundles it uses every bundle under ``runs/`` and ``bundles/``.
Writes bench/results/cold_start_rss-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import common
import numpy as np
from latency import find_bundles

# Runs in the fresh process. Kept to the stdlib until the timed imports, so nothing is preloaded.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
mode, bundle, variant, image = sys.argv[1:5]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None
out = {}
if mode == "baseline-numpy":
    import numpy, PIL.Image  # noqa: F401
    out["import_ms"] = (time.perf_counter() - t0) * 1e3
elif mode == "score":
    import edge_detect.detector as d
    t1 = time.perf_counter()
    det = d.Detector(bundle, variant=variant or None, num_threads=1)
    t2 = time.perf_counter()
    r = det.score(image)
    t3 = time.perf_counter()
    out.update(import_ms=(t1 - t0) * 1e3, load_ms=(t2 - t1) * 1e3, first_score_ms=(t3 - t2) * 1e3,
               in_process_ms=(t3 - t0) * 1e3, variant=det.variant, score=r.score,
               tensorflow_imported=any(m == "tensorflow" or m.startswith(("tensorflow.", "keras"))
                                       for m in sys.modules))
out["vm_hwm_mb"] = hwm()
out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def run_child(mode: str, bundle: str = "", variant: str = "", image: str = "") -> Dict[str, Any]:
    """One fresh process; its JSON plus ``wall_ms``, the parent's view from spawn to exit."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, mode, bundle, variant, image],
                       capture_output=True, text=True, timeout=120, check=False)
    wall = (time.perf_counter() - t0) * 1e3
    if p.returncode:
        raise RuntimeError(f"child {mode} {bundle} {variant} failed:\n{p.stderr[-2000:]}")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return {"wall_ms": wall, **json.loads(line[len("RESULT "):])}


def run_cli(bundle: str, variant: str, image: str) -> float:
    """Wall time (ms) of ``edge-detect score --variant V BUNDLE IMAGE`` from spawn to exit."""
    exe = Path(sys.executable).with_name("edge-detect")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_detect.cli"]
    t0 = time.perf_counter()
    p = subprocess.run([*cmd, "score", "--variant", variant, bundle, image], capture_output=True, text=True,
                       timeout=120, check=False)
    wall = (time.perf_counter() - t0) * 1e3
    if p.returncode not in (0, 1):  # 1: the image was judged anomalous; still a full run
        raise RuntimeError(f"edge-detect score failed ({p.returncode}): {p.stderr[-1000:]}")
    return wall


def make_image(shape: Sequence[int], path: Path, side: int = 300) -> Path:
    """A side x side px JPEG with smooth content: decode cost like a camera frame's, any colour mode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    base = 110 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0) + rng.normal(0, 4, (side, side))
    arr = np.clip(base, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "L")
    if len(shape) == 3 and shape[-1] == 3:
        img = img.convert("RGB")
    img.save(path, quality=90)
    return path


def median(vals: Sequence[float]) -> float:
    return round(float(statistics.median(vals)), 2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--variants", default="int8,float32", help="comma list; missing ones are skipped")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per configuration (median reported)")
    ap.add_argument("--image", type=Path, help="image to score (default: a generated 300x300 JPEG)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the edge-detect score command")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    a = ap.parse_args(argv)
    from edge_detect.bundle import load_bundle

    bundles = list(a.bundles) or find_bundles()
    if not bundles:
        print("error: no bundles given and none under runs/ or bundles/", file=sys.stderr)
        return 2
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    info = common.machine_info()
    print(common.machine_line(info))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cold-"))

    rows: List[Dict[str, Any]] = []
    base = [run_child("baseline-bare") for _ in range(a.repeats)]
    npil = [run_child("baseline-numpy") for _ in range(a.repeats)]
    rows.append({"model": "(python -c pass)", "variant": "-", "file_kb": None,
                 "wall_ms": median([r["wall_ms"] for r in base]), "import_ms": None, "load_ms": None,
                 "first_score_ms": None, "cli_ms": None, "hwm_mb": median([r["vm_hwm_mb"] for r in base])})
    rows.append({"model": "(import numpy, PIL)", "variant": "-", "file_kb": None,
                 "wall_ms": median([r["wall_ms"] for r in npil]), "import_ms": median([r["import_ms"] for r in npil]),
                 "load_ms": None, "first_score_ms": None, "cli_ms": None,
                 "hwm_mb": median([r["vm_hwm_mb"] for r in npil])})
    raw: Dict[str, Any] = {"baseline_bare": base, "baseline_numpy_pil": npil, "runs": {}}
    for bpath in bundles:
        b = load_bundle(bpath)
        shape = b.preprocess.shape
        image = a.image or make_image(shape, tmp / f"frame_{'rgb' if shape[-1] == 3 else 'gray'}.jpg")
        label = f"{b.name} {shape[0]}x{shape[1]}x{shape[2]}"
        for v in [v for v in a.variants.split(",") if v in b.variants]:
            runs = [run_child("score", str(bpath), v, str(image)) for _ in range(a.repeats)]
            cli = [] if a.no_cli else [run_cli(str(bpath), v, str(image)) for _ in range(a.repeats)]
            raw["runs"][f"{label} {v}"] = {"child": runs, "cli_ms": cli}
            if any(r["tensorflow_imported"] for r in runs):
                print(f"warning: {label} {v}: TensorFlow or Keras got imported on the device path", file=sys.stderr)
            rows.append({
                "model": label, "variant": v, "file_kb": round(b.model_path(v).stat().st_size / 1024, 1),
                "wall_ms": median([r["wall_ms"] for r in runs]),
                "import_ms": median([r["import_ms"] for r in runs]),
                "load_ms": median([r["load_ms"] for r in runs]),
                "first_score_ms": median([r["first_score_ms"] for r in runs]),
                "cli_ms": median(cli) if cli else None,
                "hwm_mb": median([r["vm_hwm_mb"] for r in runs]),
                "maxrss_mb": median([r["ru_maxrss_mb"] for r in runs]),
                "tf_imported": any(r["tensorflow_imported"] for r in runs),
            })
    info["load_avg_after"] = common.load_average()
    cols = ["model", "variant", "file_kb", "wall_ms", "import_ms", "load_ms", "first_score_ms", "cli_ms",
            "hwm_mb", "tf_imported"]
    common.print_table(rows, cols, digits=1,
                       title=f"cold start (median of {a.repeats} fresh processes; ms, peak RSS MB)")
    out = common.write_result("cold_start_rss", {"repeats": a.repeats, "rows": rows, "raw": raw},
                              out_dir=a.out, machine=info)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
