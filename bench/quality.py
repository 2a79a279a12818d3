"""Detection quality beside the published reference tables, on the same protocols.

Subcommands::

    python bench/quality.py mnist-ae BUNDLE [BUNDLE ...] [--data DIR]
        MNIST "1" vs rest, the reference article's test split (1,135 test ones vs 8,865 other test
        digits), scored through the device's Detector for the float32 and int8 variants, at each
        variant's own bundle threshold (mu+3 sigma of held-out training ones, set at training time).
    python bench/quality.py brickwork [--data DIR] [--size 64] [--model plain] [--epochs 30]
        Brickwork cracks, an autoencoder trained with ``edge-train fit`` on Negative only (held-out
        split), exported with ``edge-train export``, then held-out Negative vs all Positive through
        the device's Detector: AUROC, TNR/TPR at the bundle threshold, TPR at TNR 95%, ROC and
        score histogram PNGs in docs/img/.
    python bench/quality.py report
        Compile the tables: the results above plus the other benches' JSON in bench/results/
        (metric_mnist, train_mnist, train_casting, metric_casting_*) and training times from
        run.json files, each beside the reference figures from ../shared/data/README.md.

Each subcommand writes bench/results/quality_<name>-<date>.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import common
import numpy as np

IMG_DIR = common.REPO_ROOT / "docs" / "img"

# The published figures this project starts from (../shared/data/README.md), as fractions.
REF_MNIST_AE = {  # threshold mu+3 sigma of normal scores: (normals accepted, anomalies caught)
    "plain": (0.9868, 0.9713), "denoising": (0.9868, 0.9759), "superres": (0.9859, 0.8485),
}
REF_LOF = {  # L2-softmax embedding + LOF: (MNIST test judged normal, Fashion judged abnormal, CIFAR-10 abnormal)
    0.001: (0.99, 0.88, 0.95), 0.01: (0.96, 0.98, 1.00),
}
REF_LOF_RAW = (0.99, 0.30, 0.84)
REF_CASTING = "86-90% of anomalies detected (AE with synthetic-anomaly augmentation)"
REF_CRACKS = "91-98% of cracks detected (same method)"


# -- metrics (numpy only, so the bench needs nothing beyond the device stack) -------------------------


auroc = common.auroc_split

def rates_at(neg: np.ndarray, pos: np.ndarray, threshold: float) -> Dict[str, float]:
    """TNR (normals accepted) and TPR (anomalies caught) with ``score > threshold`` = anomaly."""
    return {"tnr": float((neg <= threshold).mean()), "tpr": float((pos > threshold).mean())}


def tpr_at_tnr(neg: np.ndarray, pos: np.ndarray, tnr: float = 0.95) -> Tuple[float, float]:
    """(TPR, threshold) at the lowest threshold that keeps at least ``tnr`` of the normals accepted."""
    k = max(1, int(np.ceil(tnr * len(neg) - 1e-9)))  # normals that must stay at or below the threshold
    thr = float(np.sort(neg)[k - 1])
    return float((pos > thr).mean()), thr


def roc_points(neg: np.ndarray, pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over all thresholds."""
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = np.array([0.0, *[(neg > t).mean() for t in thr], 1.0])
    tpr = np.array([0.0, *[(pos > t).mean() for t in thr], 1.0])
    return fpr, tpr


def evaluate(det: Any, x_neg: np.ndarray, x_pos: np.ndarray) -> Dict[str, Any]:
    """Scores and metrics of one Detector (bundle variant) on preprocessed normals and anomalies."""
    s_neg = det.infer(x_neg)[0].astype(np.float64)
    s_pos = det.infer(x_pos)[0].astype(np.float64)
    tpr95, thr95 = tpr_at_tnr(s_neg, s_pos)
    return {"variant": det.variant, "threshold": det.threshold, "n_normal": len(s_neg), "n_anomalous": len(s_pos),
            "auroc": auroc(s_neg, s_pos), **rates_at(s_neg, s_pos, det.threshold),
            "tpr_at_tnr95": tpr95, "threshold_tnr95": thr95,
            "scores_normal": s_neg.tolist(), "scores_anomalous": s_pos.tolist()}


def plot_roc_hist(results: Dict[str, Dict[str, Any]], title: str, path: Path) -> None:
    """ROC curves (one per label) and the first label's score histogram with its threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, r in results.items():
        fpr, tpr = roc_points(np.asarray(r["scores_normal"]), np.asarray(r["scores_anomalous"]))
        a1.plot(fpr, tpr, label=f"{label} AUROC {r['auroc']:.3f}")
    a1.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
    a1.set_xlabel("false positive rate (normals flagged)")
    a1.set_ylabel("true positive rate (anomalies caught)")
    a1.legend(fontsize=8, loc="lower right")
    a1.grid(alpha=0.3)
    label, r = next(iter(results.items()))
    neg, pos = np.asarray(r["scores_normal"]), np.asarray(r["scores_anomalous"])
    bins = np.linspace(min(neg.min(), pos.min()), max(np.quantile(pos, 0.99), neg.max()), 50)
    a2.hist(neg, bins=bins, alpha=0.6, density=True, label=f"normal (n={len(neg)})")
    a2.hist(pos, bins=bins, alpha=0.6, density=True, label=f"anomalous (n={len(pos)})")
    a2.axvline(r["threshold"], color="k", ls="--", lw=1, label="bundle threshold")
    a2.set_xlabel(f"anomaly score ({label})")
    a2.set_ylabel("density")
    a2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _strip_scores(r: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith("scores_")}


# -- MNIST "1" vs rest ----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX (gz) file as uint8 images (N, H, W) or labels (N,)."""
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def cmd_mnist_ae(a: argparse.Namespace) -> int:
    from edge_detect.bundle import load_bundle
    from edge_detect.detector import Detector

    d = common.data_dir(a.data, "mnist")
    x, y = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
    rows, out = [], {}
    for bp in a.bundles:
        b = load_bundle(bp)
        pre = b.preprocess
        xs = np.stack([pre(img) for img in x])
        neg, pos = xs[y == 1], xs[y != 1]
        # The manifest says "autoencoder"; which kind (plain, denoising, superres) is only in the run's name.
        family = next((k for k in (*REF_MNIST_AE, "dilated") if k in b.name),
                      b.manifest.get("family") or b.manifest.get("model", {}).get("family", "?"))
        for v in ("float32", "int8"):
            if v not in b.variants:
                continue
            r = evaluate(Detector(b, variant=v, num_threads=1), neg, pos)
            ref = REF_MNIST_AE.get(family)
            rows.append({"bundle": b.name, "family": family, "variant": v, "auroc": r["auroc"], "tnr": r["tnr"],
                         "tpr": r["tpr"], "ref_tnr": ref[0] if ref else None, "ref_tpr": ref[1] if ref else None})
            out[f"{b.name}/{v}"] = _strip_scores(r)
    common.print_table(rows, digits=4, title='MNIST "1" vs rest (1,135 test ones vs 8,865 others)')
    print(common.write_result("quality_mnist_ae", {"rows": rows, "details": out}, out_dir=a.out))
    return 0


# -- brickwork cracks -----------------------------------------------------------------------------


def _edge_train() -> List[str]:
    exe = Path(sys.executable).with_name("edge-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from training.cli import main; main()"]


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


def split_brickwork(src: Path, dst: Path, test_fraction: float, seed: int) -> Dict[str, Any]:
    """Hold out a fixed share of Negative as test normals; train/ gets the rest (links, no copies).

    Layout written: dst/train/good (training normals; fit holds out its own validation split from
    them), dst/test/good (held-out normals), dst/test/crack (all Positive), i.e. the MVTec layout.
    """
    neg, pos = _images(src / "Negative"), _images(src / "Positive")
    if not neg or not pos:
        raise SystemExit(f"error: {src} must hold Negative/ and Positive/ images")
    rng = random.Random(seed)
    shuffled = neg[:]
    rng.shuffle(shuffled)
    n_test = round(len(neg) * test_fraction)
    parts = {"train/good": shuffled[n_test:], "test/good": shuffled[:n_test], "test/crack": pos}
    if dst.exists():
        shutil.rmtree(dst)
    for sub, files in parts.items():
        (dst / sub).mkdir(parents=True)
        for f in files:
            (dst / sub / f.name).symlink_to(f.resolve())
    return {k: len(v) for k, v in parts.items()}


def _run(cmd: List[str], log: Path) -> float:
    """Run a CLI step, tee its output to ``log``; wall time (s). Exits on failure with the tail."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if p.returncode:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"error: {cmd[1] if len(cmd) > 1 else cmd[0]} failed ({p.returncode}):\n{tail}")
    return time.perf_counter() - t0


def cmd_brickwork(a: argparse.Namespace) -> int:
    from edge_detect.bundle import load_bundle
    from edge_detect.detector import Detector

    src = common.data_dir(a.data, "brickwork-cracks")
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    counts = split_brickwork(src, data, a.test_fraction, a.seed)
    tag = f"{a.model}-{a.size}" + ("-standin" if a.standin else "")
    run, bundle = work / f"run-{tag}", work / f"bundle-{tag}"
    log = work / f"{run.name}.log"
    log.write_text("")
    if a.standin:
        t_fit, t_exp, run_json = standin_fit_export(data, a, bundle)
        t_eval = 0.0
    else:
        fit = [*_edge_train(), "fit", str(data), "--model", a.model, "--out", str(run), "--input-size",
               str(a.size), "--seed", str(a.seed), *(["--epochs", str(a.epochs)] if a.epochs else []), *a.fit_args]
        t_fit = _run(fit, log)
        t_eval = _run([*_edge_train(), "evaluate", str(run), "--data", str(data)], log)
        t_exp = _run([*_edge_train(), "export", str(run), "--out", str(bundle), "--quant", "all",
                      "--allow-degraded"], log)
        run_json = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    b = load_bundle(bundle)
    pre = b.preprocess
    x_neg = pre.batch(_images(data / "test/good"))
    x_pos = pre.batch(_images(data / "test/crack"))
    res = {v: evaluate(Detector(b, variant=v, num_threads=1), x_neg, x_pos)
           for v in ("float32", "int8") if v in b.variants}
    rows = [{"model": f"{a.model} {a.size}px", "variant": v, **{k: r[k] for k in ("auroc", "tnr", "tpr",
                                                                                   "tpr_at_tnr95")}}
            for v, r in res.items()]
    common.print_table(rows, digits=4, title=f"brickwork cracks: {counts['test/good']} held-out Negative vs "
                                             f"{counts['test/crack']} Positive")
    methods = scoring_methods(b, x_neg, x_pos)
    common.print_table(methods, digits=4, title="same float32 reconstructions, other scores (threshold-free)")
    png = IMG_DIR / f"brickwork_{tag.replace('-', '_')}_roc.png"
    plot_roc_hist(res, f"brickwork cracks, {a.model} AE {a.size}x{a.size}{' (stand-in)' if a.standin else ''}, "
                       "bundle variants via Detector", png)
    print(f"plot: {png}")
    print(common.write_result(f"quality_brickwork_{tag.replace('-', '_')}", {
        "trainer": "stand-in (bench/quality.py --standin)" if a.standin else "edge-train fit",
        "counts": counts, "seed": a.seed, "run": str(run), "bundle": str(bundle), "rows": rows,
        "wall_s": {"fit": t_fit, "evaluate": t_eval, "export": t_exp},
        "train_seconds": _train_seconds(run_json), "run_metrics": run_json.get("metrics"),
        "variants": {v: _strip_scores(r) for v, r in res.items()},
        "bundle_kb": {v: round(b.model_path(v).stat().st_size / 1024, 1) for v in b.variants},
        "scoring_methods": methods,
        "plot": str(png),
    }))
    return 0


def scoring_methods(bundle: Any, x_neg: np.ndarray, x_pos: np.ndarray) -> List[Dict[str, Any]]:
    """AUROC and TPR at TNR 95% of every reconstruction score on the float32 variant's outputs.

    The bundle fixes one score; this shows what the others would give on the same model, e.g.
    whether the max of a smoothed error map finds thin cracks that a mean washes out.
    """
    from edge_detect.runtime import TFLiteModel
    from edge_detect.scoring import RECONSTRUCTION_METHODS, reconstruction_scores

    m = TFLiteModel(bundle.model_path("float32"), num_threads=1)
    y_neg, y_pos = m.run_batch(x_neg), m.run_batch(x_pos)
    rows = []
    for method in RECONSTRUCTION_METHODS:
        s_neg = reconstruction_scores(x_neg, y_neg, method)[0].astype(np.float64)
        s_pos = reconstruction_scores(x_pos, y_pos, method)[0].astype(np.float64)
        rows.append({"score": method, "auroc": auroc(s_neg, s_pos), "tpr_at_tnr95": tpr_at_tnr(s_neg, s_pos)[0]})
    return rows


def standin_fit_export(data: Path, a: argparse.Namespace, bundle: Path) -> Tuple[float, float, Dict[str, Any]]:
    """Without ``edge-train fit``: train the plain hourglass here, export with training.export.

    The same ops and export path as the project's models (``latency._hourglass`` uses
    ``training.models.build_model`` when it exists); MSE score, mu+3 sigma threshold on a held-out
    15% of the training normals. Returns (fit s, export s, a run.json-like dict).
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from latency import _hourglass

    from edge_detect.preprocess import Preprocess
    from edge_detect.scoring import reconstruction_scores
    from training.export import DataSplits, ExportSpec, export_bundle

    keras.utils.set_random_seed(a.seed)
    pre = Preprocess(size=(a.size, a.size), color="gray", resize="bilinear")
    x = pre.batch(_images(data / "train/good"))
    idx = np.random.default_rng(a.seed).permutation(len(x))
    n_val = max(8, round(0.15 * len(x)))
    x_val, x_train = x[idx[:n_val]], x[idx[n_val:]]
    x_test = np.concatenate([pre.batch(_images(data / "test/good")), pre.batch(_images(data / "test/crack"))])
    y_test = np.r_[np.zeros(len(_images(data / "test/good")), int), np.ones(len(_images(data / "test/crack")), int)]
    model = _hourglass(a.size, 1, batch_size=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    t0 = time.perf_counter()
    hist = model.fit(x_train, x_train, validation_data=(x_val, x_val), epochs=a.epochs or 40, batch_size=16,
                     verbose=0)
    t_fit = time.perf_counter() - t0

    def calibrate(scores: np.ndarray) -> Dict[str, Any]:
        s = np.asarray(scores, np.float64)
        return {"method": "mu_sigma", "k": 3.0, "threshold": float(s.mean() + 3 * s.std()),
                "normal_stats": {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
                                 "median": float(np.median(s)), "max": float(s.max())}}

    val_scores = reconstruction_scores(x_val, np.asarray(model.predict(x_val, verbose=0)), "mse")[0]
    spec = ExportSpec(model=model, preprocess=pre, scoring={"kind": "reconstruction", "method": "mse"},
                      calibration=calibrate(val_scores), calibrate=calibrate, family=a.model,
                      name=f"brickwork-{a.model}-{a.size}", rebuild=lambda: _hourglass(a.size, 1, batch_size=1),
                      training_data={"folder": str(data), "layout": "mvtec", "counts": {
                          "train": len(x_train), "validation": len(x_val)}})
    t1 = time.perf_counter()
    export_bundle(spec, DataSplits(x_train=x_train, x_val=x_val, x_test=x_test, y_test=y_test), bundle,
                  quant="all", allow_degraded=True, echo=lambda s: print("  " + s))
    t_exp = time.perf_counter() - t1
    return t_fit, t_exp, {"history": {"train_seconds": t_fit, "epochs": len(hist.history["loss"]),
                                      "loss": hist.history["loss"][-1], "val_loss": hist.history["val_loss"][-1]}}


# -- report ---------------------------------------------------------------------------------------


def _train_seconds(run_json: Dict[str, Any]) -> Optional[float]:
    """Training wall time (s) from a run.json, wherever the trainer put it."""
    for path in (("timing_s", "train"), ("history", "train_seconds"), ("timing", "train_seconds"),
                 ("train_seconds",)):
        v: Any = run_json
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _latest(name_glob: str) -> Optional[Dict[str, Any]]:
    files = sorted(common.RESULTS_DIR.glob(f"{name_glob}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def training_times(roots: Sequence[Path]) -> List[Dict[str, Any]]:
    """One row per run.json under ``roots``: model family, input size, training seconds, epochs."""
    rows = []
    for root in roots:
        if not root.is_dir():
            continue
        for rj in sorted(root.rglob("run.json")):
            if any(p.startswith(".") for p in rj.parts):
                continue
            try:
                d = json.loads(rj.read_text())
            except (OSError, ValueError):
                continue
            model = d.get("model")
            family = model if isinstance(model, str) else (model or {}).get("family") or d.get("family")
            hist = d.get("history", {}) if isinstance(d.get("history"), dict) else {}
            size = (d.get("preprocess") or {}).get("size")
            counts = (d.get("data_summary") or {}).get("counts", {})
            rows.append({"run": str(rj.parent.relative_to(common.REPO_ROOT) if rj.is_relative_to(common.REPO_ROOT)
                                    else rj.parent),
                         "model": family, "input": "x".join(map(str, size)) if size else None,
                         "train_images": counts.get("train"),
                         "epochs": hist.get("epochs") or len(hist.get("loss", []) or []) or None,
                         "train_s": _train_seconds(d)})
    return rows


def cmd_report(a: argparse.Namespace) -> int:
    sections: Dict[str, Any] = {}
    md: List[str] = []
    q = _latest("quality_mnist_ae")
    if q:
        rows = [{**r, "ref TNR/TPR": f"{r['ref_tnr']:.2%} / {r['ref_tpr']:.2%}" if r.get("ref_tnr") else "-"}
                for r in q["rows"]]
        sections["mnist_ae"] = rows
        md += ['### MNIST "1" vs rest, autoencoders', common.format_table(
            rows, ["family", "variant", "auroc", "tnr", "tpr", "ref TNR/TPR"], digits=4, markdown=True)]
    m = _latest("metric_mnist")
    if m:
        rows = []
        for r in m["rows"]:
            for c in (0.001, 0.01):
                ref = REF_LOF[c]
                rows.append({"l2": r.get("l2"), "variant": r["variant"], "auroc": r.get("auroc"), "contamination": c,
                             "mnist_normal": r.get(f"c{c}_mnist_normal", r.get(f"c{c}_tnr")),
                             "fashion_abnormal": r.get(f"c{c}_fashion_abnormal", r.get(f"c{c}_tpr")),
                             "ref_mnist": ref[0], "ref_fashion": ref[1], "cifar10": "not available",
                             "ref_cifar10": ref[2]})
        sections["metric_mnist"] = rows
        md += ["### MNIST vs Fashion-MNIST (dev slice), embeddings + LOF", common.format_table(
            rows, digits=3, markdown=True)]
    for name in ("train_mnist", "train_casting", "metric_casting_brickwork_64", "metric_casting_synthetic_64"):
        doc = _latest(name)
        if doc and "rows" in doc:
            sections[name] = doc["rows"]
            # The columns that compare with the references; the JSON keeps everything else.
            keep = ["run", "model", "aux", "size", "variant", "scorer", "score", "epochs", "auroc", "tnr", "tpr",
                    "tpr@tnr95", "tpr_at_tnr95", "tnr@thr", "tpr@thr", "train_s"]
            have = set().union(*(r.keys() for r in doc["rows"]))
            md += [f"### {name} (from bench/results/{name}-*.json)",
                   common.format_table(doc["rows"], [c for c in keep if c in have] or None, digits=4, markdown=True)]
    for f in sorted(common.RESULTS_DIR.glob("quality_brickwork_*-*.json")):
        doc = json.loads(f.read_text())
        mf = Path(doc["bundle"]) / "manifest.json"
        score = json.loads(mf.read_text())["scoring"].get("method") if mf.exists() else None
        rj = Path(doc["run"]) / "run.json"
        t = _train_seconds(json.loads(rj.read_text())) if rj.exists() else doc.get("train_seconds")
        rows = [{**r, "score": score, "train_s": None if t is None else int(round(t))} for r in doc["rows"]]
        sections[f.stem] = {"rows": rows, "scoring_methods": doc.get("scoring_methods"), "counts": doc["counts"]}
        md += [f"### Brickwork cracks ({f.stem}; {doc['counts']['test/good']} held-out Negative vs "
               f"{doc['counts']['test/crack']} Positive)",
               common.format_table(rows, ["model", "score", "variant", "auroc", "tnr", "tpr", "tpr_at_tnr95",
                                          "train_s"], digits=4, markdown=True)]
        if doc.get("scoring_methods"):
            md += ["Same float32 model, every score (threshold-free):",
                   common.format_table(doc["scoring_methods"], digits=4, markdown=True)]
    times = training_times([common.REPO_ROOT / "runs", common.RESULTS_DIR, *map(Path, a.runs)])
    sections["training_times"] = times
    if times:
        md += ["### Training time", common.format_table(times, digits=1, markdown=True)]
    text = "\n\n".join(md) if md else "(no quality results yet)"
    print(text)
    print(common.write_result("quality_report", {"sections": sections, "markdown": text}))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mnist-ae", help="evaluate MNIST 1-vs-rest autoencoder bundles")
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--data", help="shared data folder (default ../shared/data)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results)")
    p = sub.add_parser("brickwork", help="train, export and evaluate an AE on brickwork cracks")
    p.add_argument("--data", help="shared data folder (default ../shared/data)")
    p.add_argument("--work", default=str(common.RESULTS_DIR / "brickwork"), help="runs, bundles and split go here")
    p.add_argument("--model", default="plain")
    p.add_argument("--size", type=int, default=64, help="input size, px")
    p.add_argument("--epochs", type=int, default=0, help="0: edge-train's default")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of Negative held out as test normals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standin", action="store_true",
                   help="train the plain hourglass in this script instead of edge-train fit (before it exists)")
    p.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="passed on to edge-train fit")
    p = sub.add_parser("report", help="compile the quality tables from bench/results")
    p.add_argument("--runs", nargs="*", default=[], help="more folders to search for run.json")
    a = ap.parse_args(argv)
    return {"mnist-ae": cmd_mnist_ae, "brickwork": cmd_brickwork, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
