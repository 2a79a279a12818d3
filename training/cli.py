"""``edge-train``: the workstation's command line. Commands parse arguments and call library functions."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import click

from edge_detect import __version__

from .calibrate import MODES
from .data import LAYOUTS, DataError, dataset_spec

AE_FAMILIES = ("plain", "denoising", "superres", "dilated")
SCORES = ("mse", "mae", "ssim", "max_smooth")


class UserError(click.ClickException):
    """A one-line error for bad input: exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _roi(value: Optional[str]) -> Optional[Tuple[int, int, int, int]]:
    if not value:
        return None
    try:
        x, y, w, h = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("must be x,y,width,height in px, e.g. 10,10,200,200") from None
    return x, y, w, h


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-train")
@click.option("-v", "--verbose", count=True, help="More log output.")
def main(verbose: int) -> None:
    """Train, evaluate and export anomaly models for edge-detect."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s: %(message)s")


def _data_options(f):
    for opt in reversed([
        click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
                     help="Dataset layout."),
        click.option("--anomalies", type=click.Path(), help="Folder of anomalous images (folders layout)."),
        click.option("--normal-classes", help="Comma-separated normal classes (class folders or IDX labels)."),
        click.option("--val-fraction", type=click.FloatRange(0.01, 0.9), default=0.1, show_default=True,
                     help="Share of normal training images held out for calibration."),
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
          calibration: str = "") -> Dict[str, Any]:
    if calib_anomaly_fraction is None:
        calib_anomaly_fraction = 0.3 if calibration == "best_f1" else 0.0
    try:
        return dataset_spec(data, layout, anomalies, normal_classes.split(",") if normal_classes else None,
                            val_fraction, test_fraction, calib_anomaly_fraction, seed, max_train)
    except DataError as e:
        raise UserError(str(e)) from None


@main.command()
@click.argument("data", type=click.Path())
@click.option("--model", "family", type=click.Choice(AE_FAMILIES + ("metric",)), default="plain", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--input-size", type=click.IntRange(8, 1024), default=64, show_default=True, help="Model input, px.")
@click.option("--color", type=click.Choice(["gray", "rgb"]), default="gray", show_default=True)
@click.option("--roi", help="Crop x,y,width,height (source px) before resizing.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Makes the split and the training reproducible.")
@click.option("--score", type=click.Choice(SCORES), default="mse", show_default=True, help="Autoencoder score.")
@click.option("--smooth", type=click.IntRange(1, 63), default=5, show_default=True, help="max_smooth box, px (odd).")
@click.option("--calibration", type=click.Choice(MODES), default="mu_k_sigma", show_default=True)
@click.option("--k", "k_sigma", type=float, default=3.0, show_default=True, help="k of mu+k*sigma.")
@click.option("--quantile", type=click.FloatRange(0.5, 1.0), default=0.99, show_default=True)
@click.option("--far", type=click.FloatRange(0.0, 0.5), default=0.01, show_default=True,
              help="Target false-alarm rate.")
@click.option("--width", type=click.IntRange(2, 256), default=16, show_default=True, help="First-level filters.")
@click.option("--depth", type=click.IntRange(1, 6), default=3, show_default=True, help="Pooling levels.")
@click.option("--latent", type=click.IntRange(1, 512), default=16, show_default=True, help="Bottleneck channels.")
@click.option("--superres-factor", type=click.IntRange(2, 8), default=2, show_default=True)
@click.option("--noise", type=click.Choice(["gaussian", "salt_pepper", "speckle"]), default="gaussian",
              show_default=True, help="Denoising: input corruption.")
@click.option("--noise-strength", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True)
@click.option("--patience", type=click.IntRange(0), default=0, help="Early stopping patience, epochs (0: off).")
@click.option("--backbone", default="cnn", show_default=True, help="metric: cnn, mobilenetv2-0.35, mobilenetv2-0.5.")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="metric: L2-softmax scale.")
@click.option("--embed-dim", type=click.IntRange(2, 1024), default=64, show_default=True,
              help="metric: embedding size.")
@click.option("--aux", type=click.Path(), help="metric: folder of unrelated images (outlier exposure).")
@click.option("--scorer", type=click.Choice(["lof", "knn"]), default="lof", show_default=True, help="metric scorer.")
@click.option("--contamination", type=float, default=0.01, show_default=True, help="metric: LOF/kNN contamination.")
@click.option("--reference-size", type=click.IntRange(1), help="metric: reduce the reference set to this many.")
@click.option("--reduce", type=click.Choice(["kmeans", "coreset"]), default="kmeans", show_default=True)
@click.option("--quiet", is_flag=True, help="No per-epoch progress.")
@_data_options
def fit(data: str, family: str, out_dir: Path, input_size: int, color: str, roi: Optional[str], epochs: int,
        batch_size: int, learning_rate: float, seed: int, score: str, smooth: int, calibration: str, k_sigma: float,
        quantile: float, far: float, width: int, depth: int, latent: int, superres_factor: int, noise: str,
        noise_strength: float, patience: int, backbone: str, alpha: float, embed_dim: int, aux: Optional[str],
        scorer: str, contamination: float, reference_size: Optional[int], reduce: str, quiet: bool,
        **data_opts: Any) -> None:
    """Train a model on the normal images in DATA and write RUN_DIR (model, run.json, report/)."""
    if smooth % 2 == 0:
        raise UserError(f"--smooth must be odd, got {smooth}")
    spec = _spec(data, seed=seed, calibration=calibration, **data_opts)
    roi_t = _roi(roi)
    from .train import FitConfig

    cfg = FitConfig(family=family, input_size=input_size, color=color, roi=roi_t, epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, seed=seed, score=score, smooth=smooth,
                    calibration=calibration, k=k_sigma, q=quantile, far=far, noise=noise,
                    noise_strength=noise_strength, patience=patience,
                    model_params={"width": width, "depth": depth, "latent": latent, "k": superres_factor})
    try:
        if family == "metric":
            from . import metric

            if aux and not Path(aux).is_dir():
                raise UserError(f"--aux folder not found: {aux}")
            mcfg = metric.MetricConfig(backbone=backbone, embed_dim=embed_dim, alpha=alpha, scorer=scorer,
                                       contamination=contamination, reference_size=reference_size, reduce=reduce,
                                       epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
            info = metric.fit_run(spec, cfg.preprocess(), out_dir, mcfg, aux=aux, verbose=0 if quiet else 1)
        else:
            from .train import fit as fit_ae

            model_params = dict(cfg.model_params)
            if family != "superres":
                model_params.pop("k")
            cfg.model_params = model_params
            info = fit_ae(spec, cfg, out_dir, verbose=0 if quiet else 1)
    except DataError as e:
        raise UserError(str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    click.echo(summary(info, out_dir))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(), help="Dataset to evaluate on (default: the run's own held-out split).")
@click.option("--bundle", type=click.Path(path_type=Path), help="Evaluate a bundle variant with the device code.")
@click.option("--variant", help="Bundle variant (default: the bundle's default).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_data_options
def evaluate(run_dir: Path, data: Optional[str], bundle: Optional[Path], variant: Optional[str], seed: int,
             as_json: bool, **data_opts: Any) -> None:
    """Evaluate RUN_DIR (or one of its exported bundle's variants) and write a report folder."""
    if not (run_dir / "run.json").is_file():
        raise UserError(f"not a run directory (no run.json): {run_dir}")
    spec = _spec(data, seed=seed, **data_opts) if data else None
    from edge_detect.bundle import BundleError

    from .train import evaluate_run

    try:
        m = evaluate_run(run_dir, spec, bundle, variant)
    except (DataError, BundleError, ValueError) as e:
        raise UserError(str(e)) from None
    if as_json:
        click.echo(json.dumps(m))
    else:
        click.echo(_metrics_lines(m))


def _fmt(v: Optional[float], pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _metrics_lines(m: Dict[str, Any]) -> str:
    if not m or m.get("auroc") is None and m.get("tnr") is None:
        return "no labelled test images: nothing to evaluate"
    lines = [
        f"test: {m['n_normal']} normal, {m['n_anomalous']} anomalous   ({m.get('evaluated', '')})",
        f"image AUROC {_fmt(m['auroc'])}   AUPR {_fmt(m['aupr'])}",
        f"at threshold {m['threshold']:.6g}: normals accepted (TNR) {_fmt(m['tnr'], True)}, "
        f"anomalies caught (TPR) {_fmt(m['tpr'], True)}",
        f"TPR at TNR 95% {_fmt(m.get('tpr_at_tnr_0.95'), True)}   at TNR 99% {_fmt(m.get('tpr_at_tnr_0.99'), True)}",
    ]
    for kind, km in (m.get("per_kind") or {}).items():
        lines.append(f"  {kind:<16} n={km['n']:<5} AUROC {_fmt(km['auroc'])}  TPR {_fmt(km['tpr'], True)}")
    if m.get("pixel"):
        lines.append(f"pixel AUROC {_fmt(m['pixel'].get('pixel_auroc'))}   PRO {_fmt(m['pixel'].get('pro'))}")
    return "\n".join(lines)


def summary(info: Dict[str, Any], out_dir: Path) -> str:
    """The one-screen summary printed after ``fit``."""
    d = info.get("data_summary", {}).get("counts", {})
    cal = info["calibration"]
    t = info.get("timing_s", {})
    lines = [
        "",
        f"run {out_dir}: {info.get('model', info.get('family'))} model, {info.get('parameters', '?')} parameters"
        + ("  (interrupted: best checkpoint kept)" if info.get("interrupted") else ""),
        f"data: {d.get('train', '?')} train, {d.get('val', '?')} validation, {d.get('test_normal', 0)} test normal, "
        f"{d.get('test_anomalous', 0)} test anomalous, {d.get('skipped', 0)} skipped",
        f"threshold ({cal['method']}): {cal['threshold']:.6g}   normal median {cal['normal_stats']['median']:.6g}",
        f"time: data {t.get('load_data', 0):.1f} s, training {t.get('train', 0):.1f} s",
    ]
    if info.get("metrics"):
        lines.append(_metrics_lines(info["metrics"]))
    lines.append(f"report: {out_dir / 'report'}   next: edge-train export {out_dir} --out BUNDLE")
    return "\n".join(lines)


def _register_optional() -> None:
    """Commands that live beside the modules they drive."""
    from .export_cli import export_command

    main.add_command(export_command)
    from .explain import explain_command, fit_explainer_command

    main.add_command(explain_command)
    main.add_command(fit_explainer_command)


_register_optional()


if __name__ == "__main__":
    sys.exit(main())
