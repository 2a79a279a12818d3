"""Helpers every bench script shares: machine info, latency statistics, tables, JSON results, data dir.

Scripts are run as ``python bench/NAME.py``, so ``bench/`` is on ``sys.path`` and they write
``import common``. Results land in ``bench/results/<name>-<YYYY-MM-DD>.json`` (not committed),
each with the machine block from :func:`machine_info`, so a number is never without its context.

Also here: per-process CPU time and peak RSS from ``/proc`` (fleet and cold-start benches). The
benches that need MQTT start Mosquitto with :class:`edge_detect.broker.Mosquitto`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from training.tfimport import install as _quiet_tensorflow  # noqa: E402 - numpy and the standard library only

_quiet_tensorflow()  # benches that train print their tables, not TensorFlow's start-up notices
RESULTS_DIR = BENCH_DIR / "results"
# The shared data folder sits beside the repository on the development machines; a user's clone lacks it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PACKAGES = ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "keras",
            "paho-mqtt", "matplotlib", "scikit-learn", "edge-detect")
PERCENTILES = (50, 90, 99)


# -- machine -------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else lscpu, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_mb() -> Optional[float]:
    """Total RAM, MB (MiB), from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release plus the kernel release."""
    name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{name} (kernel {platform.release()})"


def package_versions(names: Iterable[str] = PACKAGES) -> Dict[str, str]:
    """Installed versions of the packages that matter to the numbers; absent ones are left out."""
    out: Dict[str, str] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages: other work on a shared machine makes timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> Dict[str, Any]:
    """Everything a reader needs to judge a number: CPU, cores, RAM, OS, Python, packages, load, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_mb": ram_mb(),
        "os": os_name(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "load_avg": load_average(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_line(info: Optional[Mapping[str, Any]] = None) -> str:
    """One human line for the top of a bench's output."""
    m = info or machine_info()
    pk = m["packages"]
    parts = [f"{k} {pk[k]}" for k in ("numpy", "ai-edge-litert", "tensorflow", "tensorflow-cpu", "paho-mqtt")
             if k in pk]
    load = "/".join(f"{v:.2f}" for v in m["load_avg"]) or "?"
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_mb']:.0f} MB RAM, {m['os']}, Python {m['python']}, "
            f"{', '.join(parts)}; load {load}")


# -- statistics ----------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no samples."""
    if len(samples) == 0:
        return math.nan
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def latency_summary(samples_ms: Sequence[float], percentiles: Sequence[int] = PERCENTILES) -> Dict[str, float]:
    """n, mean, min, max and pNN of latencies given in ms (results stay in ms, 4 decimals)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    out: Dict[str, float] = {"n": int(a.size)}
    if a.size == 0:
        return out
    out.update(mean=float(a.mean()), min=float(a.min()), max=float(a.max()))
    for q in percentiles:
        out[f"p{q}"] = float(np.percentile(a, q))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def timed_calls(fn: Any, iterations: int, warmup: int = 10) -> List[float]:
    """Call ``fn()`` ``warmup`` times untimed, then ``iterations`` times; each call's wall time, ms."""
    for _ in range(warmup):
        fn()
    out: List[float] = []
    clock = time.perf_counter
    for _ in range(iterations):
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1e3)
    return out


def cdf_points(samples: Sequence[float]) -> tuple:
    """(sorted samples, cumulative fraction) for a CDF plot."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    return a, np.arange(1, a.size + 1) / max(a.size, 1)


# -- tables and results --------------------------------------------------------------------------


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
                 digits: int = 3, markdown: bool = False) -> str:
    """Rows of dicts as an aligned text table (or a Markdown table for docs/BENCHMARKS.md)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c), digits) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    # Numbers right-aligned so columns of ms line up on the decimal point.
    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def print_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
                digits: int = 3, title: Optional[str] = None) -> None:
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns, digits))


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def result_path(name: str, out_dir: Optional[Union[str, Path]] = None, date: Optional[str] = None) -> Path:
    """bench/results/<name>-<YYYY-MM-DD>.json (or under ``out_dir``)."""
    day = date or _dt.date.today().isoformat()
    return Path(out_dir or RESULTS_DIR) / f"{name}-{day}.json"


def write_result(name: str, payload: Mapping[str, Any], out_dir: Optional[Union[str, Path]] = None,
                 command: Optional[Sequence[str]] = None, machine: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``{"bench", "command", "machine", **payload}`` as JSON; returns the file's path.

    A second run on the same day overwrites the first: the file holds the latest numbers.
    """
    path = result_path(name, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    doc = {"bench": name, "command": " ".join(["python", f"bench/{argv[0]}", *argv[1:]]) if argv else "",
           "machine": dict(machine or machine_info()), **payload}
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


# -- data ----------------------------------------------------------------------------------------


class DataDirMissing(SystemExit):
    """No data argument and no ../shared/data: a one-line error, exit code 2."""

    def __init__(self, what: str) -> None:
        print(f"error: no data directory: pass {what} (default {SHARED_DATA} does not exist)", file=sys.stderr)
        super().__init__(2)


def data_dir(arg: Optional[Union[str, Path]] = None, sub: Optional[str] = None, what: str = "--data DIR") -> Path:
    """The data directory: ``arg`` if given, else ``../shared/data`` beside the repo; ``sub`` joined on.

    Exits with code 2 and a one-line message if neither exists.
    """
    base = Path(arg) if arg else SHARED_DATA
    if not base.is_dir():
        if arg:
            print(f"error: data directory {base} does not exist", file=sys.stderr)
            raise SystemExit(2)
        raise DataDirMissing(what)
    path = base / sub if sub else base
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        raise SystemExit(2)
    return path


# -- processes -----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: Union[int, str] = "self") -> float:
    """User + system CPU time of a process (s), from /proc/<pid>/stat; children not included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_mb(key: str, pid: Union[int, str] = "self") -> Optional[float]:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MB (MiB); None if absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS, MB: VmHWM where /proc has it, else ru_maxrss (kB on Linux)."""
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024, 2)


# --- image subsets and a briefly trained autoencoder (heatmap / synthetic-anomaly benches) ------


def image_files(folder: Path, n: int, seed: int = 0, skip: int = 0) -> List[Path]:
    """``n`` images of ``folder`` in a seeded random order, after skipping the first ``skip``."""
    fs = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    idx = np.random.default_rng(seed).permutation(len(fs))
    return [fs[i] for i in idx[skip : skip + n]]


def split_files(folder: Path, sizes: Sequence[int], seed: int = 0) -> tuple:
    """Disjoint random subsets of a folder's images, of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(image_files(folder, n, seed, start))
        start += n
    return tuple(out)


def train_ae(x: np.ndarray, epochs: int, seed: int = 0, width: int = 16, depth: int = 3) -> Any:
    """training.models' ``plain`` autoencoder fitted on ``x`` (N, H, W, C) with MAE; imports Keras lazily."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from training.models import build_model, loss_for

    keras.utils.set_random_seed(seed)
    m = build_model("plain", tuple(x.shape[1:]), width=width, depth=depth, latent=width)
    m.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss_for("plain", "mae"))
    m.fit(x, x, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return m


def auroc_split(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUROC of normal scores ``neg`` against anomalous scores ``pos`` (training.metrics.auroc)."""
    from training.metrics import auroc

    return auroc(np.r_[neg, pos], np.r_[np.zeros(len(neg)), np.ones(len(pos))])
