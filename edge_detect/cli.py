"""``edge-detect``: the device's command line. Each command parses and calls a library function."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Optional, Tuple

import click

from . import __version__
from .errors import Group, UserError

if TYPE_CHECKING:
    from .validate import ConfigError


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--variant", help="Model variant: int8, float32, float16, dynamic, int8_io (int8_edgetpu runs only "
              "with the Edge TPU delegate, in the daemon).")
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
    --json: one object per line with image, score, normalised, threshold, anomalous, variant, timings_ms.
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

    from .bundle import BundleError, as_shown, load_bundle
    from .detector import Detector
    from .preprocess import ImageError

    if threshold is not None and not math.isfinite(threshold):
        raise UserError(f"--threshold must be a finite number, got {threshold}")
    try:
        # An archive is unpacked into extract_to, which the caller removes when scoring ends.
        b = load_bundle(bundle, extract_to=Path(extract_to))
        det = Detector(b, variant=variant, num_threads=threads, threshold=threshold)
    except (BundleError, ValueError) as e:  # ValueError: a manifest block the device can't build (scorer, preprocess)
        # An archive's bundle is read from extract_to: messages name the archive the user gave.
        raise UserError(f"bundle refused: {as_shown(e, extract_to, bundle)}") from None
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

    from .publisher import check_tls_files
    from .subscribe import HEADER, AlertSubscriber, BrokerOptions, format_line, parse_broker

    if bool(tls_cert) != bool(tls_key):
        raise UserError("--tls-cert and --tls-key must be given together")
    try:
        host, port = parse_broker(broker)
        check_tls_files(tls_ca, tls_cert, tls_key)
    except ValueError as e:
        raise UserError(str(e)) from None
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
        n = sub.delivered
    finally:
        sub.close()
    if count is not None and n < count:
        click.echo(f"error: {n} of {count} events arrived before the timeout", err=True)
        sys.exit(1)


def _invalid_config(e: ConfigError) -> UserError:
    """The error for a ConfigError: one line naming file and key, or a count and then a line per problem."""
    if len(e.errors) == 1:
        return UserError(f"invalid config: {e}")
    return UserError(f"invalid config ({len(e.errors)} problems)\n{e}")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The daemon's TOML config (docs/CONFIG.md).")
def run(config_path: str) -> None:
    """Run the device daemon: cameras -> model -> decision -> MQTT events, until SIGTERM."""
    from .config import load_config
    from .daemon import run as run_daemon
    from .logs import setup_logging
    from .validate import ConfigError

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise _invalid_config(e) from None
    setup_logging(cfg.device.log_format, cfg.device.log_level)
    sys.exit(run_daemon(cfg))


@main.command("check-config")
@click.argument("config_path", metavar="FILE", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a daemon config FILE (the same checks as ``run``); print a summary or every error.

    A local path that is missing or unusable here (the bundle, a watched directory, a video device)
    is a warning line, not an error: the config may be checked before it is deployed. Exit 0
    either way; the last line counts the warnings.
    """
    from .config import load_config, path_warnings
    from .validate import ConfigError

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise _invalid_config(e) from None
    click.echo(cfg.summary(path_warnings(cfg)))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The daemon's TOML config: its [mqtt] settings and device id are used.")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, help="Seconds to wait.")
def health(config_path: str, timeout: float) -> None:
    """Ask the running daemon for a fresh stats report over its broker; print one JSON line.

    The line has online, model (name, version, sha256, variant) and reloads (ok, failed,
    last_error). Exit 0 when the daemon answered, 1 when it did not within --timeout (a broker
    that refuses the login included), 2 when the config is invalid or the broker cannot be reached
    (one error line).
    """
    from .config import load_config
    from .health import query_health, summarize
    from .validate import ConfigError

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise _invalid_config(e) from None
    try:
        h = summarize(query_health(cfg.mqtt, cfg.device.id, timeout=timeout))
    except (ConnectionError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(json.dumps(h, separators=(",", ":")))
    sys.exit(0 if h["online"] else 1)


@main.group()
def bundle() -> None:
    """Manage the device's versioned bundle store (bundles/<version>/ and the current link)."""


_STORE = click.option("--store", default="/var/lib/edge-detect/bundles", show_default=True,
                      type=click.Path(file_okay=False), help="The bundle store directory.")


@bundle.command("install")
@click.argument("source", type=click.Path(exists=True))
@_STORE
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(exists=True),
              help="Require a signature from this public key (file or directory of *.pem); repeatable.")
@click.option("--no-activate", is_flag=True, help="Install the version directory but leave current alone.")
def bundle_install(source: str, store: str, trusted: Tuple[str, ...], no_activate: bool) -> None:
    """Verify SOURCE (bundle directory or .tar.gz), install it as a new version, switch current to it.

    --store must be a bundle store, or a new or empty folder: a folder of other files is refused.
    Prints one JSON line: version (the version directory's name), path, previous (what current
    pointed to before: the version itself when it already was current; null with --no-activate),
    current (what it points to now), name, bundle_version, model_sha256 per variant, signed_by,
    activated, pruned (older versions removed; the store keeps current, previous and the newest).
    Exit 2 if refused.
    """
    from pathlib import Path

    from .bundle import ARCHIVE_SUFFIXES, BundleError, as_shown, unpack
    from .signing import load_trusted_keys
    from .update import BundleStore, StoreError

    try:
        keys = load_trusted_keys(trusted) if trusted else None
    except (OSError, ValueError) as e:
        raise UserError(f"--trusted-key: {e}") from None
    s, src = BundleStore(store), Path(source)
    folder: Optional[Path] = None  # where the bundle is read from: its messages name SOURCE instead
    try:
        if src.is_file() and src.name.endswith(ARCHIVE_SUFFIXES):
            # Unpacked inside the store, which the deploy user may write (its parent: maybe not);
            # an interrupted install's folder is removed by the next one.
            with s.scratch("unpack") as tmp:
                unpack(src, tmp)
                folder = tmp
                r = s.install(tmp, trusted=keys, activate=not no_activate)
        else:
            folder = src
            r = s.install(src, trusted=keys, activate=not no_activate)
    except StoreError as e:
        raise UserError(str(e)) from None
    except BundleError as e:
        raise UserError(f"bundle refused: {e if folder is None else as_shown(e, folder, source)}") from None
    except OSError as e:  # e.g. a --store that can't be created or written
        raise UserError(_install_os_error(e, store, source)) from None
    click.echo(json.dumps(r.to_dict()))


def _install_os_error(e: OSError, store: str, source: str) -> str:
    """The store at fault, named as given, for an error inside it; else the file the OS names."""
    from .oneline import os_error

    where = os.path.abspath(e.filename) if isinstance(e.filename, str) else None
    if where is None or os.path.commonpath([where, os.path.abspath(store)]) == os.path.abspath(store):
        return f"cannot install into {store}: {e.strerror or e}"
    return f"cannot install {source}: {os_error(e, source)}"


@bundle.command("activate")
@click.argument("version")
@_STORE
def bundle_activate(version: str, store: str) -> None:
    """Switch current to VERSION: an installed version as `bundle list` shows it, or `previous`.

    A manual rollback is `edge-detect bundle activate previous`, then a reload of the daemon
    (`systemctl reload edge-detect`); run it again to undo. The version's files are verified
    first; a damaged or unknown version is refused and current stays as it was. Prints one JSON
    line: current, previous (the previous link now), pruned (versions removed).
    """
    from .bundle import BundleError
    from .update import BundleStore

    try:
        a = BundleStore(store).activate(version)
    except BundleError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot activate {version!r} in {store}: {e.strerror or e}") from None
    click.echo(json.dumps(a.to_dict()))


@bundle.command("list")
@_STORE
def bundle_list(store: str) -> None:
    """Print the store as JSON: current, previous and the installed versions.

    A running install is waited for (at most 60 s), so the listing shows where it left the store.
    A link that points at no installed version (the daemon could not load it) is a `warning:` line
    on stderr.
    """
    from .bundle import BundleError
    from .update import BundleStore

    if not os.path.isdir(store):  # a mistyped --store would otherwise read as an empty one
        raise UserError(f"--store {store}: no such directory (nothing installed yet, or another --store)")
    try:
        state, problems = BundleStore(store).read()
    except BundleError as e:  # busy; or a current that is a plain file, not the link the store manages
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot read {store}: {e.strerror or e}") from None
    click.echo(json.dumps(state))
    for line in problems:
        click.echo(f"warning: {line}", err=True)


@main.command()
@click.option("--broker", help="host[:port] of an MQTT broker to use instead of the embedded one.")
@click.option("--embedded", type=click.Choice(["auto", "mosquitto", "amqtt"]), default="auto", show_default=True,
              help="Embedded broker: mosquitto when installed, else amqtt (the demo extra).")
@click.option("--bundle", type=click.Path(exists=True), help="Another bundle (default: the shipped casting model).")
@click.option("--samples", "sample_dir", type=click.Path(exists=True, file_okay=False),
              help="Another sample folder with good/ and defect/ (default: the shipped casting photos).")
@click.option("--interval", type=click.FloatRange(0), default=0.15, show_default=True,
              help="Seconds between two captures.")
def demo(broker: Optional[str], embedded: str, bundle: Optional[str], sample_dir: Optional[str],
         interval: float) -> None:
    """Run the whole device path on this machine: sample captures -> daemon -> MQTT -> alerts.

    Everything has an embedded default: the casting model and sample photos shipped in the
    package, and an MQTT broker. Ends with frames, alerts and accuracy against the samples' labels.
    """
    from pathlib import Path

    from .bundle import BundleError
    from .demo import run_demo

    logging.getLogger("edge_detect").setLevel(logging.WARNING)
    try:
        r = run_demo(broker=broker, embedded=embedded, bundle=Path(bundle) if bundle else None,
                     sample_dir=Path(sample_dir) if sample_dir else None, interval=interval, echo=click.echo)
    except BundleError as e:
        raise UserError(f"bundle refused: {e}") from None
    except (RuntimeError, FileNotFoundError, ConnectionError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(r.summary())
