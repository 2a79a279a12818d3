"""Per-model inference latency p50/p99 (ms) in the LiteRT interpreter the device uses.

For every model x variant (float32, float16, dynamic, int8) x thread count it times
``edge_detect.runtime.TFLiteModel.__call__`` (quantise in, invoke, dequantise out: what the
daemon's Detector pays per frame), after a warm-up. Configurations are timed round-robin in
short blocks, so a burst of load from other processes hits them all alike and the ratios
between them stay fair on a shared machine.

Usage::

    python bench/latency.py [BUNDLE_OR_TFLITE ...] [--threads 1,2] [--iterations 300]
    python bench/latency.py --build bench/results/latency-models --sizes 64,128   # no trained bundles yet

With no paths it uses every bundle under ``runs/`` and ``bundles/``. ``--build DIR`` converts
untrained hourglass autoencoders (``training.models.build_model`` when it exists) at each size
to all four variants; latency does not depend on the weights' values, only on the graph.
Writes bench/results/latency-<date>.json and a CDF plot (``--plot``, default
bench/results/latency_cdf.png; pass ``--plot docs/img/latency_cdf.png`` to update the docs' figure).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import common
import numpy as np

VARIANTS = ("float32", "float16", "dynamic", "int8")
SEARCH_DIRS = ("runs", "bundles")
BLOCK = 10  # timed calls per configuration before moving to the next one (round-robin, fine-grained for fairness)


@dataclass
class Target:
    """One .tflite file to time, with where it came from."""

    model: str  # bundle name or file stem
    variant: str
    path: Path
    input_shape: Sequence[int] = ()
    samples_ms: Dict[int, List[float]] = field(default_factory=dict)  # threads -> latencies


def find_bundles(root: Path = common.REPO_ROOT, dirs: Sequence[str] = SEARCH_DIRS) -> List[Path]:
    """Bundle directories (holding manifest.json) under root/runs and root/bundles, hidden dirs skipped."""
    out: List[Path] = []
    for d in dirs:
        base = root / d
        if not base.is_dir():
            continue
        for mf in sorted(base.rglob("manifest.json")):
            if any(p.startswith(".") for p in mf.relative_to(base).parts):
                continue  # half-written exports (.export-*, .name.old)
            out.append(mf.parent)
    return out


def targets_from_paths(paths: Sequence[Path], variants: Sequence[str]) -> List[Target]:
    """Expand bundle dirs into their wanted variants; a .tflite file is one target on its own."""
    from edge_detect.bundle import load_bundle

    out: List[Target] = []
    for p in paths:
        if p.suffix == ".tflite":
            v = _variant_of(p.stem)
            model = p.stem[: -len(v) - 1] if p.stem.endswith("_" + v) else p.stem
            out.append(Target(model=model, variant=v, path=p))
            continue
        b = load_bundle(p)
        size = "x".join(str(v) for v in b.preprocess.shape)
        label = f"{b.name}@{size}" if size not in b.name else b.name
        for v in variants:
            if v in b.variants:
                out.append(Target(model=label, variant=v, path=b.model_path(v)))
    return out


def _variant_of(stem: str) -> str:
    for v in ("int8_io", *VARIANTS):
        if stem.endswith(v):
            return v
    return "float32"


def build_untrained(out_dir: Path, sizes: Sequence[int], variants: Sequence[str], channels: int = 1) -> List[Path]:
    """Convert an untrained hourglass autoencoder at each size to ``variants``; returns the .tflite paths.

    Uses ``training.models.build_model("plain", ...)`` when the training package has it, else the
    same shape built here (conv+BN+pool down, nearest resize + conv up, sigmoid), so the graph is
    what a trained model would run. int8 is calibrated on uniform noise: fine for timing only.
    """
    import contextlib
    import io
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.export import convert

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths: List[Path] = []
    for size in sizes:
        model = _hourglass(size, channels)
        rep = rng.random((16, size, size, channels), dtype=np.float32)
        for v in variants:
            # Keras' export prints every captured tensor on stdout; keep the bench's output readable.
            with contextlib.redirect_stdout(io.StringIO()):
                blob, _ = convert(model, v, rep if v == "int8" else None)
            p = out_dir / f"ae{size}_{v}.tflite"
            p.write_bytes(blob)
            paths.append(p)
    return paths


def _hourglass(size: int, channels: int, batch_size: Optional[int] = 1) -> Any:
    """The plain autoencoder: the project's ``build_model`` when it exists, else the same shape here."""
    try:
        from training.models import build_model  # type: ignore[import-not-found]

        return build_model("plain", (size, size, channels), batch_size=batch_size)
    except (ImportError, TypeError):
        pass
    import keras
    from keras import layers

    inp = keras.Input((size, size, channels), batch_size=batch_size)
    x = inp
    for f in (16, 32, 64):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    for f in (64, 32, 16):
        h, w = x.shape[1] * 2, x.shape[2] * 2
        x = layers.Resizing(h, w, interpolation="nearest")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inp, out)


def measure(targets: List[Target], threads: Sequence[int], iterations: int, warmup: int) -> None:
    """Fill each target's samples_ms[threads] with ``iterations`` invoke latencies (ms), round-robin."""
    from edge_detect.runtime import TFLiteModel

    runners = []
    rng = np.random.default_rng(0)
    for t in targets:
        for n in threads:
            m = TFLiteModel(t.path, num_threads=n)
            t.input_shape = m.input.shape
            x = rng.random(m.input.shape, dtype=np.float32)
            for _ in range(warmup):
                m(x)
            t.samples_ms[n] = []
            runners.append((t, n, m, x))
    done = 0
    while done < iterations:
        k = min(BLOCK, iterations - done)
        for t, n, m, x in runners:
            t.samples_ms[n] += common.timed_calls(lambda m=m, x=x: m(x), k, warmup=0)
        done += k


def rows_of(targets: List[Target]) -> List[Dict[str, Any]]:
    """Table rows; speedup is float32 at 1 thread's p50 over this row's p50, same model."""
    base: Dict[str, float] = {}
    for t in targets:
        if t.variant == "float32" and 1 in t.samples_ms:
            base[t.model] = common.percentile(t.samples_ms[1], 50)
    rows = []
    for t in targets:
        for n, s in sorted(t.samples_ms.items()):
            st = common.latency_summary(s)
            ref = base.get(t.model)
            rows.append({
                "model": t.model, "variant": t.variant, "threads": n,
                "size_kb": round(t.path.stat().st_size / 1024, 1),
                "p50_ms": st["p50"], "p99_ms": st["p99"], "mean_ms": st["mean"],
                "fps_p50": round(1000.0 / st["p50"], 1) if st["p50"] > 0 else None,
                "x_vs_f32_1t": round(ref / st["p50"], 2) if ref else None,
                "n": st["n"],
            })
    return rows


def plot_cdf(targets: List[Target], path: Path, title: str) -> None:
    """One panel per model: latency CDF per variant, solid 1 thread, dashed 2+."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(t.model for t in targets))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
    colours = {v: c for v, c in zip((*VARIANTS, "int8_io"), ("C0", "C1", "C2", "C3", "C4"))}
    for ax, model in zip(axes[0], models):
        for t in (t for t in targets if t.model == model):
            for n, s in sorted(t.samples_ms.items()):
                xs, ys = common.cdf_points(s)
                ax.plot(xs, ys, color=colours.get(t.variant, "k"), ls="-" if n == 1 else "--",
                        label=f"{t.variant} {n}t")
        ax.set_xscale("log")
        ax.set_xlabel("invoke latency (ms, log)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(model)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="bundle directories or .tflite files")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list (bundles only)")
    ap.add_argument("--threads", default="1,2", help="comma list of interpreter thread counts")
    ap.add_argument("--iterations", type=int, default=300, help="timed calls per configuration")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls per configuration first")
    ap.add_argument("--build", type=Path, help="convert untrained autoencoders into DIR and time those")
    ap.add_argument("--sizes", default="64,128", help="input sizes (px) for --build")
    ap.add_argument("--plot", default=str(common.RESULTS_DIR / "latency_cdf.png"),
                    help="CDF plot PNG ('' for none); docs/img/latency_cdf.png is the one docs/BENCHMARKS.md shows")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    threads = [int(v) for v in a.threads.split(",") if v]
    if a.iterations < 1 or not threads or min(threads) < 1:
        ap.error("--iterations and --threads must be positive")

    info = common.machine_info()
    print(common.machine_line(info))
    paths: List[Path] = list(a.paths)
    source = "arguments"
    if a.build:
        paths += build_untrained(a.build, [int(s) for s in a.sizes.split(",")], variants)
        source = "untrained autoencoders converted by --build"
    if not paths:
        paths = find_bundles()
        source = "bundles found under runs/ and bundles/"
    if not paths:
        print("error: no bundles under runs/ or bundles/: pass bundle paths, or --build DIR", file=sys.stderr)
        return 2
    targets = targets_from_paths(paths, variants)
    if not targets:
        print(f"error: none of the variants {variants} found in {[str(p) for p in paths]}", file=sys.stderr)
        return 2
    print(f"{len(targets)} models from {source}; {a.iterations} calls each after {a.warmup} warm-up, "
          f"threads {threads}")
    measure(targets, threads, a.iterations, a.warmup)
    info["load_avg_after"] = common.load_average()
    rows = rows_of(targets)
    common.print_table(rows, title="invoke latency (TFLiteModel.__call__, batch 1)")
    if a.plot:
        plot_cdf(targets, Path(a.plot), f"LiteRT invoke latency, {info['cpu']}, {info['cores']} cores, "
                                  f"load {info['load_avg'][0] if info['load_avg'] else '?'}")
        print(f"plot: {a.plot}")
    out = common.write_result("latency", {
        "source": source, "iterations": a.iterations, "warmup": a.warmup, "threads": threads,
        "models": [{"model": t.model, "variant": t.variant, "path": str(t.path),
                    "input_shape": list(t.input_shape)} for t in targets],
        "rows": rows,
    }, out_dir=a.out, machine=info)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
