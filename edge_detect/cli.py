"""``edge-detect``: the device's command line. Each command parses and calls a library function."""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional, Tuple

import click

from . import __version__


class UserError(click.ClickException):
    """A one-line error for bad input; exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-detect")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Visual anomaly detection on the edge device."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--variant", help="Model variant: int8, float32, float16, dynamic, int8_io, int8_edgetpu.")
@click.option("--threads", type=click.IntRange(1, 64), help="Interpreter CPU threads.")
@click.option("--threshold", type=float, help="Override the bundle's calibrated threshold.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def score(
    bundle: str,
    images: Tuple[str, ...],
    variant: Optional[str],
    threads: Optional[int],
    threshold: Optional[float],
    as_json: bool,
) -> None:
    """Score IMAGES with BUNDLE and print one verdict per image."""
    from .bundle import BundleError
    from .detector import Detector
    from .preprocess import ImageError

    try:
        det = Detector(bundle, variant=variant, num_threads=threads, threshold=threshold)
    except BundleError as e:
        raise UserError(f"bundle refused: {e}") from None
    bad = 0
    for path in images:
        try:
            r = det.score(path)
        except ImageError as e:
            bad += 1
            if as_json:
                click.echo(json.dumps({"image": path, "error": str(e)}))
            else:
                click.echo(f"{path}: error: {e}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({"image": path, "variant": det.variant, **r.to_dict()}))
        else:
            verdict = "ANOMALY" if r.anomalous else "ok"
            click.echo(
                f"{path}  score={r.score:.6g}  norm={r.normalised:.3f}  threshold={r.threshold:.6g}  {verdict}"
            )
    if bad:
        sys.exit(1 if bad < len(images) else 2)
