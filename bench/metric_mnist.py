"""Metric learning on MNIST's ten digits vs Fashion-MNIST, scored by LOF from the int8 bundle.

The reference table (L2-softmax embeddings + LOF, n_neighbors 20, novelty):
contamination 0.001 -> MNIST test 0.99 normal / Fashion 0.88 abnormal; 0.01 -> 0.96 / 0.98.

Steps: train the embedder on 55,000 training digits (5,000 held out for calibration), export
float32 + int8 bundles through training.export (the normal export path), then score MNIST test
(10,000) and the Fashion-MNIST dev slice (2,000; the full test set is not in shared/) through
edge_detect.detector.Detector, the code path of ``edge-detect score``. A few images are also
written as PNG and scored with the real ``edge-detect score --json`` to show the numbers agree.

Also measured here: where the L2 normalisation goes (graph vs host) on int8, and what reducing
the reference set to 256 / 1024 embeddings costs.

    python bench/metric_mnist.py [--data DIR] [--epochs 3] [--alpha 16] [--embed-dim 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import common
import numpy as np
from PIL import Image

from edge_detect.neighbors import contamination_threshold, fit_scorer
from edge_detect.preprocess import Preprocess


def read_idx(path: Path) -> np.ndarray:
    """An IDX (gz) file as a numpy array (uint8 images (N, H, W) or labels (N,))."""
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data: Path) -> Dict[str, np.ndarray]:
    m, f = data / "mnist", data / "fashion-mnist-dev"
    return {"x_train": read_idx(m / "train-images-idx3-ubyte.gz"),
            "y_train": read_idx(m / "train-labels-idx1-ubyte.gz"),
            "x_test": read_idx(m / "t10k-images-idx3-ubyte.gz"),
            "y_test": read_idx(m / "t10k-labels-idx1-ubyte.gz"),
            "x_fashion": read_idx(f / "images-idx3-ubyte.gz")}


def to_input(pp: Preprocess, x: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) to model inputs, exactly as Preprocess.to_array does per image."""
    return x[..., None].astype(np.float32) * np.float32(pp.scale) + np.float32(pp.offset)


def train(args: argparse.Namespace, d: Dict[str, np.ndarray], pp: Preprocess, run: Path) -> Tuple[Any, Any]:
    from training import metric

    cfg = metric.MetricConfig(backbone="cnn", embed_dim=args.embed_dim, alpha=args.alpha, width=args.width,
                              head=args.head, epochs=args.epochs, seed=args.seed, scorer=args.scorer,
                              contamination=args.contamination,
                              class_names=[str(i) for i in range(10)], max_reference=args.max_reference,
                              reference_size=args.reference_size, reduce=args.reduce)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(d["x_train"]))
    val, tr = perm[: args.n_val], perm[args.n_val :]
    x = to_input(pp, d["x_train"])
    x_fit, y_fit, n_classes = x[tr], d["y_train"][tr].astype(np.int64), 10
    if args.synthetic_aux:
        # Outlier exposure from the digits alone: synthetic anomalies become an 11th class, "other".
        from training.synthetic import KINDS, synthesize

        kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
        x_syn = synthesize(x_fit, int(args.synthetic_aux * len(x_fit)), seed=args.seed, kinds=kinds,
                           scale=args.syn_scale).images
        x_fit, y_fit, n_classes = np.concatenate([x_fit, x_syn]), np.r_[y_fit, np.full(len(x_syn), 10)], 11
    if args.aux:
        # Outlier exposure with unrelated real pictures (any folders), as in `edge-train fit --aux`.
        x_aux = np.concatenate([metric.load_aux(a, pp)[0] for a in args.aux.split(",")])
        x_fit, y_fit = np.concatenate([x_fit, x_aux]), np.r_[y_fit, np.full(len(x_aux), 10)]
        n_classes = 11
    model_path = run / "model.keras"
    if model_path.exists() and not args.retrain:
        import keras

        metric.register_custom_layers()
        model = keras.models.load_model(model_path)
        hist = json.loads((run / "run.json").read_text()).get("history", {})
    else:
        t0 = time.time()
        model, hist = metric.train_embedder(x_fit, y_fit, n_classes, cfg,
                                            x[val], d["y_train"][val].astype(np.int64), verbose=2)
        hist["train_seconds"] = time.time() - t0
        run.mkdir(parents=True, exist_ok=True)
        model.save(model_path)
        # The rows export re-embeds (main's x_train keeps file order) and checks float32 against.
        ref = np.sort(tr)[metric.reference_indices(len(tr), cfg)]
        metric.save_reference(run, metric.embed(model, x[ref]), d["y_train"][ref])
        metric.write_run_config(run, cfg, {"history": hist, "val_index": val.tolist()})
    return model, cfg


def export(model: Any, cfg: Any, run: Path, x_train: np.ndarray, x_val: np.ndarray, pp: Preprocess, l2: str,
           out: Path) -> Path:
    from training import export as E
    from training import metric

    cfg = type(cfg)(**{**cfg.__dict__, "l2": l2})
    if l2 == "graph":
        # The references must live where the graph's output lives: unit vectors from the model.
        emb, labels = metric.load_reference(run)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        tmp = run / f"ref-{l2}"
        tmp.mkdir(exist_ok=True)
        metric.save_reference(tmp, emb, labels)
        parts = metric.export_parts(tmp, model, cfg, pp.shape, x_train)
    else:
        parts = metric.export_parts(run, model, cfg, pp.shape, x_train)
    spec = E.ExportSpec(model=parts["model"], preprocess=pp, scoring=parts["scoring"],
                        calibration=parts["calibration"],
                        calibrate=parts["calibrate"], family=parts["family"], name=f"metric-mnist-{l2}",
                        model_params=parts["model_params"], rebuild=parts["rebuild"], arrays=parts["arrays"],
                        reference=parts["reference"])
    data = E.DataSplits(x_train=x_train, x_val=x_val)
    E.export_bundle(spec, data, out, quant="int8", allow_degraded=True, echo=print)
    return out


def embedding_error(f: np.ndarray, q: np.ndarray) -> Dict[str, float]:
    """How far int8 unit embeddings are from float32 ones: mean / p99 of |u_q - u_f| and 1 - cosine."""
    uf = f / np.linalg.norm(f, axis=1, keepdims=True)
    uq = q / np.linalg.norm(q, axis=1, keepdims=True)
    dist = np.linalg.norm(uq - uf, axis=1)
    return {"mean_l2_err": float(dist.mean()), "p99_l2_err": float(np.quantile(dist, 0.99)),
            "mean_1_minus_cos": float((1 - (uf * uq).sum(axis=1)).mean())}


def rates(s_mnist: np.ndarray, s_fashion: np.ndarray, thr: float) -> Dict[str, float]:
    return {"mnist_normal": float((s_mnist <= thr).mean()), "fashion_abnormal": float((s_fashion > thr).mean())}


auroc = common.auroc_split

def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="shared data folder (default ../shared/data)")
    ap.add_argument("--work", default=str(common.RESULTS_DIR / "metric_mnist"), help="run dir and bundles")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--head", default="gap", choices=("gap", "flatten"))
    ap.add_argument("--scorer", default="lof", choices=("lof", "knn"), help="the bundle's scorer")
    ap.add_argument("--contamination", type=float, default=0.01, help="the bundle's threshold rule")
    ap.add_argument("--n-val", type=int, default=5000)
    ap.add_argument("--max-reference", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic-aux", type=float, default=0.0,
                    help="synthetic anomalies per training digit, as an 11th 'other' class (outlier exposure)")
    ap.add_argument("--kinds", help="synthetic anomaly kinds, comma-separated (default: all)")
    ap.add_argument("--syn-scale", type=float, default=1.0, help="synthetic anomaly size (1: 2-12%% of the area)")
    ap.add_argument("--reference-size", type=int, help="the bundle's reduced reference set (default: all)")
    ap.add_argument("--reduce", default="kmeans", choices=("kmeans", "coreset"))
    ap.add_argument("--reduce-sizes", default="4096,1024,256",
                    help="reduced reference-set sizes compared with the full one, comma-separated")
    ap.add_argument("--cli-all", action="store_true",
                    help="score every test image with the edge-detect score CLI, not just 10")
    ap.add_argument("--aux", help="folders of unrelated pictures, comma-separated, as an 'other' class")
    ap.add_argument("--name", default="metric_mnist", help="result file bench/results/NAME-<date>.json")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--l2", default="host,graph", help="where to normalise, comma-separated")
    args = ap.parse_args(argv)
    data = common.data_dir(args.data)
    d = load(data)
    pp = Preprocess(size=(28, 28), color="gray", resize="bilinear")
    work = Path(args.work)
    run = work / (f"run-{args.head}-a{args.alpha:g}-d{args.embed_dim}-w{args.width}-e{args.epochs}"
                  + (f"-oe{args.synthetic_aux:g}s{args.syn_scale:g}"
                     f"{('-' + args.kinds.replace(',', '+')) if args.kinds else ''}" if args.synthetic_aux else "")
                  + ("-aux" + "+".join(Path(a).name for a in args.aux.split(",")) if args.aux else ""))
    model, cfg = train(args, d, pp, run)
    val = np.asarray(json.loads((run / "run.json").read_text())["val_index"])
    x_all = to_input(pp, d["x_train"])
    x_val = x_all[val]
    x_train = np.delete(x_all, val, axis=0)
    x_test, x_fash = to_input(pp, d["x_test"]), to_input(pp, d["x_fashion"])

    from edge_detect.detector import Detector

    rows, results = [], {"config": cfg.__dict__, "l2": {}}
    emb_int8: Dict[str, np.ndarray] = {}
    for l2 in args.l2.split(","):
        bundle = export(model, cfg, run, x_train, x_val, pp, l2, work / f"bundle-{l2}-{run.name}")
        for variant in ("float32", "int8"):
            det = Detector(bundle, variant=variant, num_threads=1)
            t0 = time.time()
            s_test, _, y_test = det.infer(x_test)
            s_fash, _, y_fash = det.infer(x_fash)
            secs = time.time() - t0
            thr = det.threshold  # the bundle's own (validation quantile at 1 - contamination)
            # Leave-one-out reference scores: scikit-learn's contamination rule (offset_).
            ref_scores = fit_scorer(cfg.scorer, det.scorer.reference, normalize=False, k=cfg.k)[1]
            row = {"l2": l2, "variant": variant, "scorer": cfg.scorer, "auroc": auroc(s_test, s_fash),
                   **{f"bundle_{k}": v for k, v in rates(s_test, s_fash, thr).items()}}
            for c in (0.001, 0.01):
                r = rates(s_test, s_fash, contamination_threshold(ref_scores, c))
                row.update({f"c{c}_{k}": v for k, v in r.items()})
            row["score_s"] = secs
            rows.append(row)
            if variant == "float32":
                y_float = y_test
            if variant == "int8":
                results["l2"][l2] = {"embedding_error": embedding_error(y_float, y_test)}
                emb_int8[l2] = y_test
                results["l2"][l2].update({"bundle": str(bundle), "threshold": thr})
                print(f"l2={l2}: int8 vs float32 unit embeddings on MNIST test: {results['l2'][l2]}")
                if l2 == "host":
                    results["spot_check"] = spot_check(bundle, d, s_test, s_fash, 0 if args.cli_all else 5)
                    emb_int8["host_fash"] = y_fash
                    emb_int8["host_val"] = det.model.run_batch(x_val)
    common.print_table(rows)
    results["rows"] = rows
    if "host" in emb_int8:
        sizes = [int(n) for n in args.reduce_sizes.split(",")]
        results["reduction"] = reduction(run, cfg, emb_int8, d["y_test"], sizes)
    results["train_seconds"] = json.loads((run / "run.json").read_text())["history"].get("train_seconds")
    results["data"] = {"mnist_test": len(x_test), "fashion": f"{len(x_fash)} (dev slice of the training set)"}
    print("wrote", common.write_result(args.name, results))


def spot_check(bundle: Path, d: Dict[str, np.ndarray], s_test: np.ndarray, s_fash: np.ndarray,
               n: int = 5) -> Dict[str, Any]:
    """Score n MNIST + n Fashion PNGs (all with n=0) with the real ``edge-detect score --json``.

    Returns the max |CLI score - Detector score| and, from the CLI's own ``anomalous`` verdicts,
    the share of MNIST judged normal and of Fashion judged abnormal.
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths, want, is_fashion = [], [], []
        for name, imgs, scores in (("mnist", d["x_test"], s_test), ("fashion", d["x_fashion"], s_fash)):
            for i in range(n or len(imgs)):
                p = Path(tmp) / f"{name}-{i}.png"
                Image.fromarray(imgs[i], "L").save(p)
                paths.append(str(p))
                want.append(float(scores[i]))
                is_fashion.append(name == "fashion")
        exe = Path(sys.executable).with_name("edge-detect")
        out = subprocess.run([str(exe), "score", str(bundle), *paths, "--json", "--variant", "int8"],
                             capture_output=True, text=True, check=False)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    got = [r["score"] for r in rows]
    diff = float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) if len(got) == len(want) else None
    flags = np.array([r["anomalous"] for r in rows], bool)
    fash = np.array(is_fashion, bool)[: len(flags)]
    res = {"n": len(paths), "max_abs_diff": diff, "sample": [json.dumps(r) for r in rows[:2]],
           "cli_mnist_normal": float((~flags[~fash]).mean()), "cli_fashion_abnormal": float(flags[fash].mean())}
    print(f"edge-detect score --json on {len(paths)} PNGs: max |score - Detector score| = {diff}; "
          f"MNIST judged normal {res['cli_mnist_normal']:.4f}, "
          f"Fashion judged abnormal {res['cli_fashion_abnormal']:.4f}")
    return res


def reduction(run: Path, cfg: Any, emb: Dict[str, np.ndarray], y_test: np.ndarray,
              sizes: Sequence[int] = (4096, 1024, 256)) -> list:
    """LOF / kNN on int8 embeddings with the reference set reduced to each of sizes (rows; and full)."""
    from training import metric

    ref, labels = metric.load_reference(run)
    rows = []
    for size in (None, *sizes):
        for method in (("kmeans", "coreset") if size else ("full",)):
            for kind in ("lof", "knn"):
                s, _ = fit_scorer(kind, ref, labels, normalize=True, scale=cfg.alpha, reference_size=size,
                                  reduce=method if size else "kmeans", seed=0, n_neighbors=cfg.n_neighbors, k=cfg.k)
                v = s(None, emb["host_val"])[0]
                thr = float(np.quantile(v, 1 - cfg.contamination))
                t0 = time.time()
                st, sf = s(None, emb["host"])[0], s(None, emb["host_fash"])[0]
                ms = (time.time() - t0) / (len(st) + len(sf)) * 1e3
                acc = float((s.classify(emb["host"]) == y_test).mean())
                rows.append({"size": size or len(ref), "reduce": method, "scorer": kind,
                             "auroc": auroc(st, sf), **rates(st, sf, thr), "class_acc": acc,
                             "ms_per_image": ms})
    common.print_table(rows)
    return rows


if __name__ == "__main__":
    main()
