"""How the normal score distribution's tail sets what mu + k sigma accepts, for one autoencoder run.

For each score transform (identity, sqrt, log) and variant (MSE of a low-pass filtered error, MSE
per unit of ink), prints the skew of the validation normals' scores and the share of validation
normals, test normals and test anomalies on each side of mu + k sigma of the validation scores.
Issue 2's MNIST bar asks for >= 99 % normals accepted at mu + 3 sigma; this shows whether any
score shape gets there without changing the protocol. Also scores that are not reconstruction
errors, for comparison: the mean distance to the k nearest training normals (kNN) in pixels, in the
bottleneck code (the ``latent`` layer) and in error maps; and, with --with RUN (repeatable), the
mean of several runs' MSE, each divided by its own validation mean (an ensemble); with --shift N,
the minimum and the mean MSE over the input shifted by up to N px each way (test-time shifts); with
--deadzone D (repeatable), the mean of max(|error| - D, 0)^2, which ignores grey-level differences
below D (0-1 scale). Always also Box-Cox(mse), its lambda fitted to the validation scores.
"tpr_at_tnr99" is what the ranking allows: TPR at the test normals' 99th percentile.

    python bench/score_tails.py runs/bench-mnist40/plain-d3 [--k 3]
    python bench/score_tails.py runs/mnist-hard/mae-d3 --knn 1 \
        --with runs/mnist-seeds/d3-s1 --with runs/mnist-seeds/d3-s2
    python bench/score_tails.py runs/mnist-hard/mae-d3 --shift 1
    python bench/score_tails.py runs/mnist-hard/mae-d3 --deadzone 0.1 --deadzone 0.3 --deadzone 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict

import common
import numpy as np


def skew(a: np.ndarray) -> float:
    d = a - a.mean()
    return float((d**3).mean() / max((d**2).mean() ** 1.5, 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an autoencoder run directory (edge-train fit)")
    ap.add_argument("--k", type=float, default=3.0)
    ap.add_argument("--knn", type=int, default=0, help="also kNN scores with this k (0: none)")
    ap.add_argument("--with", dest="others", action="append", default=[],
                    help="another run on the same data: adds the ensemble row")
    ap.add_argument("--shift", type=int, default=0, help="also test-time shifts of up to this many px (0: none)")
    ap.add_argument("--deadzone", type=float, action="append", default=[],
                    help="also the MSE of the error beyond this grey level (0-1; repeatable)")
    ap.add_argument("--name", default="score_tails")
    args = ap.parse_args()

    from edge_detect.neighbors import knn_scores
    from edge_detect.scoring import box_filter
    from training.data import rebuild_splits
    from training.train import load_run, predict

    run = load_run(Path(args.run))
    sp = rebuild_splits(run.dataset, run.preprocess)
    xv, xt = sp.x_val[..., 0], sp.x_test[..., 0]
    rv, rt = predict(run.model, sp.x_val)[..., 0], predict(run.model, sp.x_test)[..., 0]
    y = sp.y_test.astype(bool)

    def mse(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        return ((x - r) ** 2).mean(axis=(1, 2)).astype(np.float64)

    def lowpass(k: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda x, r: (box_filter((x - r).astype(np.float32), k) ** 2).mean(axis=(1, 2)).astype(np.float64)

    scores: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "mse": mse, "sqrt(mse)": lambda x, r: np.sqrt(mse(x, r)), "log(mse)": lambda x, r: np.log(mse(x, r)),
        "mae": lambda x, r: np.abs(x - r).mean(axis=(1, 2)).astype(np.float64),
        "log(mae)": lambda x, r: np.log(np.abs(x - r).mean(axis=(1, 2)).astype(np.float64)),
        "lowpass3 mse": lowpass(3), "lowpass5 mse": lowpass(5), "lowpass7 mse": lowpass(7),
        "mse / ink": lambda x, r: mse(x, r) / np.maximum(x.mean(axis=(1, 2)), 1e-6),
    }
    for d in args.deadzone:
        scores[f"mse beyond {d:g}"] = lambda x, r, d=d: (
            np.maximum(np.abs(x - r) - d, 0) ** 2).mean(axis=(1, 2)).astype(np.float64)
    pairs = {name: (f(xv, rv), f(xt, rt)) for name, f in scores.items()}
    # Box-Cox with its lambda fitted (maximum likelihood) to the validation ones: the principled way
    # to make a skewed score Gaussian before mu + k sigma; monotone, so it moves only the threshold.
    from scipy import stats

    v_mse, t_mse = pairs["mse"]
    lam = float(stats.boxcox(v_mse)[1])
    pairs[f"Box-Cox(mse), lambda {lam:.2f} from validation"] = (stats.boxcox(v_mse, lam), stats.boxcox(t_mse, lam))
    if args.knn:
        import keras

        x_tr = sp.x_train
        code = keras.Model(run.model.input, run.model.get_layer("latent").output)
        spaces = {"pixels": lambda x: x, "latent code": lambda x: predict(code, x),
                  "error map": lambda x: x - predict(run.model, x)}
        for space, f in spaces.items():
            ref = f(x_tr).reshape(len(x_tr), -1)
            pairs[f"kNN {args.knn}, {space}"] = tuple(
                knn_scores(f(x).reshape(len(x), -1), ref, args.knn).astype(np.float64) for x in (sp.x_val, sp.x_test))
    if args.others:
        members = [pairs["mse"]]
        for other in args.others:
            o = load_run(Path(other))
            members.append(tuple(mse(x[..., 0], predict(o.model, x)[..., 0]) for x in (sp.x_val, sp.x_test)))
        pairs[f"mean MSE / val mean, {len(members)} runs"] = tuple(
            np.mean([m[i] / m[0].mean() for m in members], axis=0) for i in (0, 1))
    if args.shift:
        offsets = [(dy, dx) for dy in range(-args.shift, args.shift + 1) for dx in range(-args.shift, args.shift + 1)]

        def shifted_mse(x: np.ndarray) -> np.ndarray:
            # np.roll wraps around, harmless here: MNIST digits have empty borders wider than the shift.
            xs = [np.roll(x, o, axis=(1, 2)) for o in offsets]
            return np.stack([mse(a[..., 0], predict(run.model, a)[..., 0]) for a in xs])

        sv, st = shifted_mse(sp.x_val), shifted_mse(sp.x_test)
        pairs[f"min MSE over +-{args.shift} px shifts"] = (sv.min(0), st.min(0))
        pairs[f"mean MSE over +-{args.shift} px shifts"] = (sv.mean(0), st.mean(0))
    rows = []
    for name, (v, t) in pairs.items():
        thr = v.mean() + args.k * v.std(ddof=1)
        rows.append({"score": name, "val_skew": round(skew(v), 2), "val_tnr": float((v <= thr).mean()),
                     "test_tnr": float((t[~y] <= thr).mean()) if (~y).any() else None,
                     "test_tpr": float((t[y] > thr).mean()) if y.any() else None,
                     "tpr_at_tnr99": float((t[y] > np.quantile(t[~y], 0.99)).mean()) if y.any() and (~y).any()
                     else None,
                     "auroc": common.auroc_split(t[~y], t[y]) if y.any() and (~y).any() else None})
    common.print_table(rows)
    print("wrote", common.write_result(args.name, {"run": args.run, "with": args.others, "k": args.k,
                                                   "knn": args.knn, "shift": args.shift,
                                                   "deadzone": args.deadzone, "rows": rows}))


if __name__ == "__main__":
    main()
