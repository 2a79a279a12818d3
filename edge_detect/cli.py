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
    """Score IMAGES with BUNDLE and print one verdict per image.

    Plain output: path, score, normalised score (1.0 = threshold), threshold, verdict.
    --json: one object per line with image, score, normalised, threshold, anomalous, variant.
    Exit code 0 when every image was scored, 1 when some could not be read, 2 when none could
    (or the bundle was refused).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edge-detect-score-") as tmp:
        _score(bundle, images, variant, threads, threshold, as_json, tmp)


def _score(
    bundle: str,
    images: Tuple[str, ...],
    variant: Optional[str],
    threads: Optional[int],
    threshold: Optional[float],
    as_json: bool,
    extract_to: str,
) -> None:
    from pathlib import Path

    from .bundle import BundleError, load_bundle
    from .detector import Detector
    from .preprocess import ImageError

    try:
        # An archive is unpacked into extract_to, which the caller removes when scoring ends.
        b = load_bundle(bundle, extract_to=Path(extract_to))
        det = Detector(b, variant=variant, num_threads=threads, threshold=threshold)
    except BundleError as e:
        raise UserError(f"bundle refused: {e}") from None
    except ValueError as e:  # a manifest block the device can't build (scorer, preprocess)
        raise UserError(f"bundle refused: {bundle}: {e}") from None
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
                f"{path}  score={r.score:.9g}  norm={r.normalised:.3f}  threshold={r.threshold:.9g}  {verdict}"
            )
    if bad:
        sys.exit(1 if bad < len(images) else 2)


@main.command()
@click.option("--broker", default="localhost:1883", show_default=True, help="host[:port] of the MQTT broker.")
@click.option("--device", default="all", show_default=True, help="A device id, or 'all' for the whole fleet.")
@click.option("--prefix", default="edge-detect", show_default=True, help="Topic prefix the devices use.")
@click.option("--protocol", type=click.Choice(["3.1.1", "5"]), default="5", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One event JSON object per line instead of a table.")
@click.option("--save-snapshots", type=click.Path(file_okay=False), help="Save snapshot/heatmap JPEGs under DIR.")
@click.option("--username", help="MQTT user name.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False), help="File holding the password.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA bundle; turns TLS on.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Client key (PEM).")
@click.option("--tls-insecure", is_flag=True, help="Skip the broker host name check.")
@click.option("--session", "session_id", help="Persistent session under this fixed client id: get what was "
              "queued while away.")
@click.option("--count", type=click.IntRange(1), help="Exit after N distinct events (exit 1 if --timeout hits first).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Exit after S seconds.")
def subscribe(
    broker: str,
    device: str,
    prefix: str,
    protocol: str,
    as_json: bool,
    save_snapshots: Optional[str],
    username: Optional[str],
    password_file: Optional[str],
    tls_ca: Optional[str],
    tls_cert: Optional[str],
    tls_key: Optional[str],
    tls_insecure: bool,
    session_id: Optional[str],
    count: Optional[int],
    timeout: Optional[float],
) -> None:
    """Print anomaly events from one device or many, deduplicated by event id."""
    from pathlib import Path

    from .subscribe import HEADER, AlertSubscriber, BrokerOptions, format_line, parse_broker

    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        raise UserError(str(e)) from None
    if bool(tls_cert) != bool(tls_key):
        raise UserError("--tls-cert and --tls-key must be given together")
    if password_file and not username:
        raise UserError("--password-file needs --username")
    password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n") if password_file else None
    opts = BrokerOptions(host=host, port=port, protocol=protocol, username=username, password=password,
                         tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, tls_insecure=tls_insecure,
                         session_id=session_id)
    header = []

    def on_event(ev: dict) -> None:
        if as_json:
            click.echo(json.dumps(ev, separators=(",", ":")))
            return
        if not header:
            header.append(True)
            click.echo(HEADER)
        click.echo(format_line(ev))

    def on_status(dev: str, state: str) -> None:
        if not as_json:
            click.echo(f"# {dev} is {state}", err=True)

    try:
        sub = AlertSubscriber(opts, device=device, prefix=prefix, on_event=on_event, on_status=on_status,
                              save_dir=Path(save_snapshots) if save_snapshots else None)
        sub.connect()
    except (ValueError, ConnectionError) as e:
        raise UserError(str(e)) from None
    try:
        n = sub.run(count=count, timeout=timeout)
    except KeyboardInterrupt:
        n = len(sub.seen)
    finally:
        sub.close()
    if count is not None and n < count:
        click.echo(f"error: {n} of {count} events arrived before the timeout", err=True)
        sys.exit(1)
