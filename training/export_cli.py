"""``edge-train export``: a training run directory in, a device bundle out.

The command only gathers what the run directory holds and calls
``training.export.export_bundle``. ``inputs_from_run`` is the one place that knows how a run
directory is read; it relies on the training modules' interfaces:

* ``training.train.load_run(run_dir)`` -> model, preprocess, scorer, dataset, calibration, info
  (attributes or keys; ``info`` is run.json);
* ``training.data.rebuild_run_splits(info, preprocess)`` -> x_train, x_val, x_test, y_test,
  test_kinds, summary (the split recorded in run.json, preprocessed by ``edge_detect.preprocess``;
  a warning if the data's images are no longer those fit saw);
* ``training.calibrate.recalibrate(calibration, val_scores)`` -> the run's calibration method
  applied to other validation scores: threshold + normal_stats.

Metric-learning runs (``family: metric``) come from ``training.metric.export_parts``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Tuple

import click

from edge_detect.errors import UserError
from edge_detect.oneline import os_error

from .export import QUANT_CHOICES, DataSplits, ExportError, ExportSpec, ParityError, export_bundle, replaced_bundle


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]``: load_run may return a dataclass or a dict."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def inputs_from_run(run_dir: Path, name: Optional[str] = None, version: str = "1") -> Tuple[ExportSpec, DataSplits]:
    """Read RUN_DIR (model.keras + run.json) into what ``export_bundle`` needs."""
    from .data import DataError

    try:
        return _inputs(run_dir, name, version)
    except (DataError, ValueError) as e:  # a damaged run directory, or its data moved away
        raise ExportError(str(e)) from None


def _inputs(run_dir: Path, name: Optional[str], version: str) -> Tuple[ExportSpec, DataSplits]:
    from edge_detect.preprocess import Preprocess

    from .train import read_run_json

    info = read_run_json(run_dir)

    if info.get("family") == "metric":
        return _metric_inputs(run_dir, info, name, version)
    try:
        from . import calibrate as cal_mod
        from . import data as data_mod
        from .train import load_run
    except ImportError as e:
        raise ExportError(f"cannot read autoencoder runs: {e}") from None
    run = load_run(run_dir)
    info = _field(run, "info") or info
    pre = _field(run, "preprocess")
    pre = pre if isinstance(pre, Preprocess) else Preprocess.from_dict(pre)
    scorer = _field(run, "scorer")
    scoring = scorer.to_dict() if hasattr(scorer, "to_dict") else dict(scorer)
    calibration = dict(_field(run, "calibration"))
    splits = data_mod.rebuild_run_splits({**info, "dataset": _field(run, "dataset")}, pre)
    model = _field(run, "model")
    # run.json's "family" says which kind of run it is; the manifest names the model family itself
    # (plain, denoising, superres, dilated), as docs/EXPORT.md and the schema describe.
    family = info.get("model") or info.get("family") or _field(run, "family") or "autoencoder"
    spec = ExportSpec(
        model=model,
        preprocess=pre,
        scoring=scoring,
        calibration=calibration,
        calibrate=lambda scores: cal_mod.recalibrate(calibration, scores),
        family=family,
        name=name or run_dir.resolve().name,
        version=version,
        model_params=dict(info.get("model_params") or info.get("params") or {}),
        training_data=dict(_field(splits, "summary") or {}),
        metrics=dict(info.get("metrics") or {}),
        run={"dir": str(run_dir.resolve())},
    )
    if scoring.get("kind") == "vote":
        from .ensemble import export_parts
        from .export import ReferenceSet

        parts = export_parts(calibration)
        x_val = _field(splits, "x_val")
        spec.calibrate = parts["calibrate"]
        spec.reference = ReferenceSet(images=x_val, fit=lambda out, variant: parts["refit"](x_val, out))
    data = DataSplits(
        x_train=_field(splits, "x_train"),
        x_val=_field(splits, "x_val"),
        x_test=_field(splits, "x_test"),
        y_test=_field(splits, "y_test"),
        test_kinds=_field(splits, "test_kinds"),
    )
    return spec, data


def _metric_inputs(run_dir: Path, info: dict, name: Optional[str], version: str) -> Tuple[ExportSpec, DataSplits]:
    from edge_detect.preprocess import Preprocess

    from . import data as data_mod
    from . import metric

    model, cfg, shape = metric.load_run(run_dir)
    pre = Preprocess.from_dict(info["preprocess"])
    splits = data_mod.rebuild_run_splits(info, pre)
    parts = metric.export_parts(run_dir, model, cfg, shape, _field(splits, "x_train"))
    spec = ExportSpec(
        model=parts["model"], preprocess=pre, scoring=parts["scoring"], calibration=dict(info["calibration"]),
        calibrate=parts["calibrate"], family=parts["family"], name=name or run_dir.resolve().name,
        version=version, model_params=parts["model_params"], rebuild=parts["rebuild"], arrays=parts["arrays"],
        reference=parts["reference"],
        training_data=dict(_field(splits, "summary") or {}), metrics=dict(info.get("metrics") or {}),
    )
    data = DataSplits(x_train=_field(splits, "x_train"), x_val=_field(splits, "x_val"),
                      x_test=_field(splits, "x_test"), y_test=_field(splits, "y_test"),
                      test_kinds=_field(splits, "test_kinds"))
    return spec, data


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory to write.")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="all", show_default=True,
              help="Variants: float32 is always included; int8 gives int8 (float io) and int8_io.")
@click.option("--name", help="Bundle name (default: the run directory's name).")
@click.option("--version", "model_version", default="1", show_default=True, help="Model version, free text.")
@click.option("--io-dtype", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="Input/output type of the int8_io variant (Edge TPU, NPUs).")
@click.option("--allow-degraded", is_flag=True, help="Write the bundle even if int8 fails the parity bar.")
@click.option("--archive", is_flag=True, help="Also write BUNDLE.tar.gz, the single-file form.")
@click.option("--rep-synthetic", type=click.FloatRange(0.0, 1.0), default=None,
              help="Share of the int8 calibration images given a synthetic defect, so that defects are not "
                   "clipped [default: 0.25 for metric runs (measured on casting), 0 for autoencoders].")
def export_command(run_dir: Path, out: Path, quant: str, name: Optional[str], model_version: str,
                   io_dtype: str, allow_degraded: bool, archive: bool, rep_synthetic: Optional[float]) -> None:
    """Convert RUN_DIR's model to TFLite variants, check parity, and write the device bundle."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if out.resolve() == run_dir.resolve():
        raise UserError("--out must not be the run directory")
    try:
        replaced_bundle(out)  # before the model and the data load: a wrong --out fails at once
        spec, data = inputs_from_run(run_dir, name, model_version)
        if rep_synthetic is None:
            rep_synthetic = 0.25 if spec.family == "metric" else 0.0
        res = export_bundle(spec, data, out, quant=quant, allow_degraded=allow_degraded, archive=archive,
                            io_dtype=io_dtype, echo=click.echo, rep_synthetic=rep_synthetic)
    except ParityError as e:
        click.echo(f"error: export failed: {e}", err=True)
        sys.exit(1)
    except ExportError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # e.g. an --out whose parent can't be created
        raise UserError(f"cannot use {os_error(e, out)}") from None
    b = res.bundle
    sizes = ", ".join(f"{v} {spec_['size_bytes'] / 1024:.1f} KiB" for v, spec_ in b.variants.items())
    click.echo(f"bundle {b.path}: {b.name} {b.version}, default {b.default_variant()}; {sizes}")
