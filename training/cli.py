"""``edge-train``: the workstation's command line. Commands parse arguments and call library functions."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import click

from edge_detect import __version__
from edge_detect.errors import Group, UserError
from edge_detect.oneline import os_error

from .calibrate import MODES, tail_note
from .data import LAYOUTS, DataError, dataset_spec

# Mirrors of training.models.FAMILIES / LOSSES (a test keeps them equal): importing models loads
# Keras, which would add seconds to every `edge-train --help`.
AE_FAMILIES = ("plain", "denoising", "superres", "dilated")
LOSSES = ("mae", "mse", "ssim_l1")
NOISES = ("gaussian", "salt_pepper", "speckle", "synthetic")
SCORES = ("mse", "mae", "ssim", "max_smooth")


class Interrupted(UserError):
    """Ctrl-C before anything was saved."""

    exit_code = 130


def _roi(value: Optional[str]) -> Optional[Tuple[int, int, int, int]]:
    if not value:
        return None
    try:
        x, y, w, h = (int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--roi must be x,y,width,height in px, e.g. 10,10,200,200; got {value!r}") from None
    if min(x, y) < 0 or min(w, h) < 1:
        raise UserError(f"--roi needs x, y >= 0 and width, height >= 1 px; got {value!r}")
    return x, y, w, h


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # click's float types take nan and inf, which pass every range check and make a nan threshold.
    if not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-train")
@click.option("-v", "--verbose", count=True, help="More log output.")
def main(verbose: int) -> None:
    """Train, evaluate and export anomaly models for edge-detect."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .tfimport import install

    install()  # TensorFlow's start-up notices dropped, whenever a command first needs it
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s: %(message)s")


DATA_OPTION_NAMES = ("layout", "anomalies", "normal_classes", "val_fraction", "test_fraction",
                     "calib_anomaly_fraction", "max_train")


def _data_options(f):
    for opt in reversed([
        click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
                     help="Dataset layout."),
        click.option("--anomalies", type=click.Path(), help="Folder of anomalous images (folders layout)."),
        click.option("--normal-classes", help="Comma-separated normal classes (class folders or IDX labels)."),
        click.option("--val-fraction", type=click.FloatRange(0.01, 0.9), default=0.1, show_default=True,
                     help="Share of all the normal images held out for calibration (as --test-fraction is)."),
        click.option("--test-fraction", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
                     help="Share of normals held out as test normals when DATA has no test normals."),
        click.option("--calib-anomaly-fraction", type=click.FloatRange(0.0, 0.9), default=None,
                     help="Share of labelled anomalies held out for best_f1 (default 0.3 with best_f1)."),
        click.option("--max-train", type=click.IntRange(1), help="Use at most this many training images."),
    ]):
        f = opt(f)
    return f


def _spec(data: str, layout: str, anomalies: Optional[str], normal_classes: Optional[str], val_fraction: float,
          test_fraction: float, calib_anomaly_fraction: Optional[float], seed: int, max_train: Optional[int],
          calibration: str = "", all_test: bool = False) -> Dict[str, Any]:
    if calib_anomaly_fraction is None:
        calib_anomaly_fraction = 0.3 if calibration == "best_f1" else 0.0
    try:
        return dataset_spec(data, layout, anomalies, normal_classes.split(",") if normal_classes else None,
                            val_fraction, test_fraction, calib_anomaly_fraction, seed, max_train, all_test)
    except DataError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # e.g. a folder above DATA that we may not search
        raise UserError(f"cannot read {os_error(e, data)}") from None


# -- fit: one dispatch point per model family ----------------------------------------------------

# family -> fitter(spec, cfg, out_dir, opts, verbose) -> run.json content. ``opts`` holds the
# family-specific command-line options; a new family registers itself here and appears in --model.
Fitter = Callable[[Dict[str, Any], Any, Path, Dict[str, Any], int], Dict[str, Any]]
FITTERS: Dict[str, Fitter] = {}


def register_fitter(*families: str) -> Callable[[Fitter], Fitter]:
    """Decorator: make ``edge-train fit --model FAMILY`` call this function."""

    def deco(fn: Fitter) -> Fitter:
        for f in families:
            FITTERS[f] = fn
        return fn

    return deco


@register_fitter(*AE_FAMILIES)
def _fit_autoencoder(spec: Dict[str, Any], cfg: Any, out_dir: Path, opts: Dict[str, Any], verbose: int) -> Dict:
    from .train import fit as fit_ae

    if cfg.family != "superres":
        cfg.model_params.pop("k", None)  # only superres has a pooling factor; keep run.json honest
    return fit_ae(spec, cfg, out_dir, verbose=verbose)


@register_fitter("metric")
def _fit_metric(spec: Dict[str, Any], cfg: Any, out_dir: Path, opts: Dict[str, Any], verbose: int) -> Dict:
    from . import metric

    aux = list(opts.get("aux") or ())
    for folder in aux:
        if not Path(folder).is_dir():
            raise UserError(f"--aux folder not found: {folder}")
    weights = None if opts.get("weights", "none") == "none" else opts["weights"]
    mcfg = metric.MetricConfig(backbone=opts["backbone"], weights=weights, embed_dim=opts["embed_dim"],
                               alpha=opts["alpha"], head=opts["head"],
                               scorer=opts["scorer"],
                               contamination=opts["contamination"],
                               reference_size=opts["reference_size"], reduce=opts["reduce"],
                               synthetic_aux=opts["synthetic_aux"], epochs=cfg.epochs,
                               batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=cfg.seed)
    return metric.fit_run(spec, cfg, mcfg, out_dir, aux_dirs=aux, verbose=verbose)


def fit_family(family: str, spec: Dict[str, Any], cfg: Any, out_dir: Path, opts: Optional[Dict[str, Any]] = None,
               verbose: int = 1) -> Dict[str, Any]:
    """Train ``family`` through its registered fitter; data and value errors become one-line UserErrors."""
    if family not in FITTERS:
        raise UserError(f"--model must be one of {sorted(FITTERS)}, got {family!r}")
    try:
        return FITTERS[family](spec, cfg, out_dir, opts or {}, verbose)
    except (DataError, ValueError) as e:
        raise UserError(str(e)) from None
    except OSError as e:  # e.g. an --out whose parent can't be created
        raise UserError(f"cannot use {os_error(e, out_dir)}") from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the first checkpoint: nothing saved") from None


@main.command()
@click.argument("data", type=click.Path())
@click.option("--model", "family", type=click.Choice(list(FITTERS)), default="plain", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to write.")
@click.option("--input-size", type=click.IntRange(8, 1024), default=64, show_default=True, help="Model input, px.")
@click.option("--color", type=click.Choice(["gray", "rgb"]), default="gray", show_default=True)
@click.option("--bit-depth", type=click.IntRange(8, 16), default=16, show_default=True,
              help="Significant bits of 16-bit images, e.g. 12 for a camera that writes 0..4095.")
@click.option("--roi", help="Crop x,y,width,height (source px) before resizing.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Training epochs (10: MNIST's validation loss is flat by then; see docs/BENCHMARKS.md).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0.0, 1.0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Makes the split and the training reproducible.")
@click.option("--score", type=click.Choice(SCORES), default="mse", show_default=True, help="Autoencoder score.")
@click.option("--smooth", type=click.IntRange(1, 63), default=5, show_default=True, help="max_smooth box, px (odd).")
@click.option("--calibration", type=click.Choice(MODES), default="mu_k_sigma", show_default=True)
@click.option("--k", "k_sigma", type=float, default=3.0, show_default=True, callback=_finite, help="k of mu+k*sigma.")
@click.option("--quantile", type=click.FloatRange(0.5, 1.0), default=0.99, show_default=True)
@click.option("--far", type=click.FloatRange(0.0, 0.5, min_open=True), default=0.01, show_default=True,
              help="Target false-alarm rate.")
@click.option("--width", type=click.IntRange(2, 256), default=16, show_default=True, help="First-level filters.")
@click.option("--depth", type=click.IntRange(1, 6), default=3, show_default=True, help="Pooling levels.")
@click.option("--latent", type=click.IntRange(1, 512), default=16, show_default=True, help="Bottleneck channels.")
@click.option("--superres-factor", type=click.IntRange(2, 8), default=2, show_default=True)
@click.option("--skips", type=click.IntRange(0, 6), default=0, show_default=True,
              help="U-Net skip connections on the deepest N decoder levels (use with --noise synthetic).")
@click.option("--noise", type=click.Choice(NOISES), default="gaussian",
              show_default=True, help="Denoising: input corruption (synthetic: pasted defects to remove).")
@click.option("--noise-strength", type=click.FloatRange(0.0, 1.0), default=None,
              help="Noise sigma / rate [default: 0.1]; synthetic: fraction of images with a defect [default: 0.5].")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="Training loss (default: mae; ssim_l1 for dilated).")
@click.option("--patience", type=click.IntRange(0), default=0, help="Early stopping patience, epochs (0: off).")
@click.option("--backbone", default="cnn", show_default=True, help="metric: cnn, mobilenetv2-0.35, mobilenetv2-0.5.")
@click.option("--weights", type=click.Choice(["none", "imagenet"]), default="none", show_default=True,
              help="metric, MobileNetV2: start from ImageNet weights (Keras downloads them once; needs internet).")
@click.option("--alpha", type=float, default=4.0, show_default=True, callback=_finite,
              help="metric: L2-softmax scale (4 measured best, docs/BENCHMARKS.md).")
@click.option("--embed-dim", type=click.IntRange(2, 1024), default=64, show_default=True,
              help="metric: embedding size.")
@click.option("--head", type=click.Choice(["flatten", "gap"]), default="flatten", show_default=True,
              help="metric: flatten keeps where things are; gap (global average) ignores it, e.g. for rotating parts.")
@click.option("--aux", type=click.Path(), multiple=True,
              help="metric: folder of unrelated images (outlier exposure); repeat for several.")
@click.option("--synthetic-aux", type=click.FloatRange(0.0, 4.0), default=0.0, show_default=True,
              help="metric: synthetic anomalies per normal training image, added as 'other' (outlier exposure).")
@click.option("--scorer", type=click.Choice(["knn", "lof"]), default="knn", show_default=True,
              help="metric: mean distance to the 5 nearest normals (knn), or LOF (n_neighbors 20).")
@click.option("--contamination", type=float, default=0.01, show_default=True, help="metric: LOF/kNN contamination.")
@click.option("--reference-size", type=click.IntRange(1), help="metric: reduce the reference set to this many.")
@click.option("--reduce", type=click.Choice(["kmeans", "coreset"]), default="kmeans", show_default=True)
@click.option("--quiet", is_flag=True, help="No per-epoch progress.")
@_data_options
@click.pass_context
def fit(ctx: click.Context, data: str, family: str, out_dir: Path, input_size: int, color: str, bit_depth: int,
        roi: Optional[str],
        epochs: int, batch_size: int, learning_rate: float, seed: int, score: str, smooth: int, calibration: str,
        k_sigma: float, quantile: float, far: float, width: int, depth: int, latent: int, superres_factor: int,
        skips: int, noise: str, noise_strength: Optional[float], loss: Optional[str], patience: int,
        quiet: bool, **opts: Any) -> None:
    """Train a model on the normal images in DATA and write RUN_DIR (model, run.json, report/)."""
    if smooth % 2 == 0:
        raise UserError(f"--smooth must be odd, got {smooth}")
    data_opts = {k: opts.pop(k) for k in DATA_OPTION_NAMES}
    spec = _spec(data, seed=seed, calibration=calibration, **data_opts)
    from .train import FitConfig

    cfg = FitConfig(family=family, input_size=input_size, color=color, bit_depth=bit_depth, roi=_roi(roi),
                    epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, score=score,
                    smooth=smooth, calibration=calibration, k=k_sigma, q=quantile, far=far, noise=noise,
                    noise_strength=(0.5 if noise == "synthetic" else 0.1) if noise_strength is None else noise_strength,
                    patience=patience, loss=loss,
                    model_params={"width": width, "depth": depth, "latent": latent, "k": superres_factor,
                                  "skips": skips})
    # The metric family keeps its own default calibration unless the user chose one.
    cfg.calibration_explicit = ctx.get_parameter_source("calibration") != click.core.ParameterSource.DEFAULT
    # Keras' bar redraws one line with carriage returns; into a log file it writes a line per epoch.
    info = fit_family(family, spec, cfg, out_dir, opts, verbose=0 if quiet else 1 if sys.stdout.isatty() else 2)
    click.echo(summary(info, out_dir))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(), help="Dataset to evaluate on (default: the run's own held-out split).")
@click.option("--bundle", type=click.Path(path_type=Path), help="Evaluate a bundle variant with the device code.")
@click.option("--variant", help="Bundle variant (default: the bundle's default).")
@click.option("--seed", type=int, default=0, help="Split seed for --data [default: the run's].")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Report folder [default: RUN_DIR/report, report-VARIANT for --bundle, plus -DATA_NAME with --data].")
@_data_options
@click.pass_context
def evaluate(ctx: click.Context, run_dir: Path, data: Optional[str], bundle: Optional[Path], variant: Optional[str],
             seed: int, as_json: bool, report_dir: Optional[Path], **data_opts: Any) -> None:
    """Evaluate RUN_DIR (or one of its exported bundle's variants) and write a report folder.

    --data naming the folder the run trained on: the split options not given are the run's own, so
    that the same images are held out (another seed would test on training images). Any other
    folder: every image in it is a test image."""
    if not (run_dir / "run.json").is_file():
        raise UserError(f"not a run directory (no run.json): {run_dir}")
    from edge_detect.bundle import BundleError

    from .train import evaluate_run, read_run_json

    spec = None
    if data:
        opts = {"seed": seed, **data_opts}
        try:
            trained = read_run_json(run_dir).get("dataset")
        except ValueError as e:
            raise UserError(str(e)) from None
        trained = trained if isinstance(trained, dict) else {}
        for key in ("seed", "val_fraction", "test_fraction", "calib_anomaly_fraction", "max_train"):
            if ctx.get_parameter_source(key) == click.core.ParameterSource.DEFAULT and key in trained:
                opts[key] = trained[key]
        spec = _spec(data, **opts, all_test=os.path.realpath(data) != os.path.realpath(trained.get("path", "")))

    try:
        m = evaluate_run(run_dir, spec, bundle, variant, report_dir=report_dir)
    except (DataError, BundleError, ValueError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot use {os_error(e, run_dir)}") from None
    if as_json:
        click.echo(json.dumps(m))
    else:
        d = m["data"]
        unseen = "   (a folder the run never trained on: every image is a test image)" if spec and spec.get(
            "all_test") else ""
        click.echo(f"data: {d['test_normal']} test normal, {d['test_anomalous']} test anomalous, "
                   f"{d['val']} validation, {d['skipped']} skipped{unseen}")
        click.echo(_metrics_lines(m, run_dir))
        click.echo(f"report: {m['report']}")


@main.command("vote")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to write (model.keras, run.json, report/).")
@click.option("--vote", "vote_n", type=click.IntRange(0), default=0, show_default=True,
              help="How many members must reject an image for it to be anomalous (0: all of them).")
def vote(run_dirs: Tuple[Path, ...], out_dir: Path, vote_n: int) -> None:
    """Combine autoencoder runs trained on the same data into one model that votes.

    Each member keeps its own calibrated threshold; the combined run exports and deploys like
    any other (one .tflite, the reconstructions side by side)."""
    if any(out_dir.resolve() == Path(d).resolve() for d in run_dirs):
        raise UserError("--out must not be one of the runs")
    for d in run_dirs:
        if not (Path(d) / "run.json").is_file():
            raise UserError(f"not a run directory (no run.json): {d}")
    from .ensemble import combine

    try:
        info = combine(run_dirs, out_dir, vote_n)
    except (DataError, ValueError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot use {os_error(e, out_dir)}") from None
    click.echo(summary(info, out_dir))


def _fmt(v: Optional[float], pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _metrics_lines(m: Dict[str, Any], run_dir: Path) -> str:
    if not m or m.get("auroc") is None and m.get("tnr") is None:
        return (f"no labelled test images: nothing to evaluate (for a test on labelled images: "
                f"edge-train evaluate {run_dir} --data GOOD_FOLDER --anomalies DEFECT_FOLDER)")
    worse = m.get("auroc") is not None and m["auroc"] < 0.5
    lines = [
        f"test: {m['n_normal']} normal, {m['n_anomalous']} anomalous"
        + (f"   ({m['evaluated']})" if m.get("evaluated") else ""),
        f"image AUROC {_fmt(m['auroc'])}   AUPR {_fmt(m['aupr'])}",
        f"at threshold {m['threshold']:.6g}: normals accepted (TNR) {_fmt(m['tnr'], True)}, "
        f"anomalies caught (TPR) {_fmt(m['tpr'], True)}",
        f"TPR at TNR 95% {_fmt(m.get('tpr_at_tnr_0.95'), True)}   at TNR 99% {_fmt(m.get('tpr_at_tnr_0.99'), True)}",
    ]
    for kind, km in (m.get("per_kind") or {}).items():
        lines.append(f"  {kind:<16} n={km['n']:<5} AUROC {_fmt(km['auroc'])}  TPR {_fmt(km['tpr'], True)}")
    if worse:
        lines.append("note: AUROC below 0.5: the anomalies score lower than the normals, worse than chance "
                     "(too little training, or defects that the model finds more typical than the good parts)")
    if m.get("pixel"):
        n = m["pixel"].get("images")
        on = f"   (on {n} images with ground truth)" if n is not None else ""
        lines.append(f"pixel AUROC {_fmt(m['pixel'].get('pixel_auroc'))}   PRO {_fmt(m['pixel'].get('pro'))}{on}")
    return "\n".join(lines)


def summary(info: Dict[str, Any], out_dir: Path) -> str:
    """The one-screen summary printed after ``fit``."""
    d = info.get("data_summary", {}).get("counts", {})
    cal = info["calibration"]
    t = info.get("timing_s", {})
    lines = [
        "",
        f"run {out_dir}: {info.get('model', info.get('family'))} model, {info.get('parameters', '?')} parameters"
        + (f"  (interrupted after {info.get('epochs_run', '?')} epochs: "
           f"{'its last epoch' if info.get('family') == 'metric' else 'the best checkpoint'} kept)"
           if info.get("interrupted") else ""),
        f"data: {d.get('train', '?')} train, {d.get('val', '?')} validation, {d.get('test_normal', 0)} test normal, "
        f"{d.get('test_anomalous', 0)} test anomalous, {d.get('skipped', 0)} skipped"
        + (f" (+ {aux['skipped']} in --aux)" if (aux := info.get("data_summary", {}).get("aux") or {}).get("skipped")
           else ""),
    ]
    if aux.get("count"):
        syn = int(aux.get("synthetic") or 0)
        lines.append(f"outlier exposure: {aux['count'] - syn} images from --aux, {syn} synthetic anomalies")
    kept = (f"   keeps {cal['accepted']:.2%} of the {cal['normal_stats']['n']} validation normals"
            if "accepted" in cal else "")
    if info.get("model") == "vote":
        p = info["model_params"]
        lines.append(f"vote: anomalous when {p['vote']} of {len(p['members'])} members reject "
                     f"({', '.join(map(str, p['members']))}), each at its own threshold; the vote's threshold is 1"
                     + kept)
    else:
        lines += [f"threshold ({cal['method']}): {cal['threshold']:.6g}   "
                  f"normal median {cal['normal_stats']['median']:.6g}" + kept,
                  f"time: data {t.get('load_data', 0):.1f} s, training {t.get('train', 0):.1f} s"]
    if note := tail_note(cal):
        lines.append(note)
    if info.get("metrics"):
        lines.append(_metrics_lines(info["metrics"], out_dir))
    lines.append(f"report: {out_dir / 'report'}   next: edge-train export {out_dir} --out BUNDLE")
    return "\n".join(lines)


def _register_optional() -> None:
    """Commands that live beside the modules they drive."""
    from .export_cli import export_command

    main.add_command(export_command)
    from .explain import explain_command, fit_explainer_command

    main.add_command(explain_command)
    main.add_command(fit_explainer_command)
    # keygen, sign, deploy: workstation tools that need no TensorFlow, so they live in edge_deploy.
    from edge_deploy.cli import register as register_deploy

    register_deploy(main)


_register_optional()


if __name__ == "__main__":
    sys.exit(main())
