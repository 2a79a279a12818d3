"""``edge-deploy``: signing keys, signatures, pushes over SSH and signed updates over MQTT.

The same commands are added to ``edge-train`` (keygen, sign, deploy) by :func:`register`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Tuple

import click

from edge_detect import __version__
from edge_detect.errors import Group, UserError

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-deploy")
def main() -> None:
    """Get model bundles onto edge devices: sign, push over SSH with rollback, update over MQTT."""


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the keys.")
@click.option("--name", default="edge-detect-update", show_default=True, help="File name stem.")
def keygen(out_dir: str, name: str) -> None:
    """Make an Ed25519 signing key pair: NAME.key.pem (keep it here, 0600) and NAME.pub.pem (for devices)."""
    from edge_detect.signing import generate_keypair, key_id, load_public_key

    if not name or Path(name).name != name:
        raise UserError(f"--name must be a file name stem without '/', got {name!r}")
    try:
        priv, pub = generate_keypair(out_dir, name)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot write the keys into {out_dir}: {e.strerror or e}") from None
    click.echo(f"private key {priv}\npublic key  {pub} (key id {key_id(load_public_key(pub).key)})\n"
               f"copy the public key to each device's /etc/edge-detect/trusted-keys/")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM).")
@click.option("--archive", type=click.Path(dir_okay=False), help="Also write the signed single-file .tar.gz.")
def sign(bundle: str, key: str, archive: Optional[str]) -> None:
    """Sign BUNDLE's manifest.json (which hashes every other file): writes BUNDLE/signature.ed25519.

    BUNDLE is checked first as a device's store checks it (hashes, no file manifest.json does not list).
    """
    import os

    from edge_detect.bundle import BundleError, pack
    from edge_detect.signing import sign_bundle

    if archive:
        # Before signing: a bad --archive must leave BUNDLE as it was, and be named as given.
        folder = Path(archive).parent
        if not folder.is_dir():
            raise UserError(f"--archive {archive}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise UserError(f"--archive {archive}: folder {folder} is not writable")
    try:
        sig = sign_bundle(bundle, key)
        click.echo(f"signed: {sig}")
        if archive:
            click.echo(f"archive: {pack(bundle, archive)}")
    except (BundleError, ValueError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot use {e.filename}: {e.strerror or e}") from None


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--host", "hosts", multiple=True, required=True, help="user@host[:port]; repeat for a fleet.")
@click.option("--with-package", "with_package", is_flag=True,
              help="Build a wheel of this edge-detect and pip-install it on each device first.")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True, help="Hosts at once.")
@click.option("--health-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds to wait for the new model to be reported healthy before rolling back.")
@click.option("--reload-cmd", default="systemctl reload edge-detect.service", show_default=True,
              help="Shell command on the device that makes the daemon reload ('' to rely on its bundle watch).")
@click.option("--remote-edge-detect", default="/opt/edge-detect/venv/bin/edge-detect", show_default=True,
              help="The device's edge-detect executable.")
@click.option("--device-config", default="/etc/edge-detect/edge-detect.toml", show_default=True,
              help="The daemon's config on the device (edge-detect health reads its [mqtt] and device id).")
@click.option("--store", default="/var/lib/edge-detect/bundles", show_default=True, help="Device bundle store.")
@click.option("--device-root", default="", help="Prefix for every device path (staging trees, tests).")
@click.option("--trusted-key", "trusted", multiple=True,
              help="Device-side path (file or directory of *.pem, under --device-root) of trusted public keys: "
                   "the device then refuses bundles they did not sign; repeatable.")
@click.option("--verify-key", "verify", multiple=True, type=click.Path(exists=True),
              help="Workstation-side public key (file or directory of *.pem) to check the signature against "
                   "before pushing; repeatable.")
@click.option("-i", "--identity", type=click.Path(exists=True, dir_okay=False), help="SSH private key.")
@click.option("-o", "ssh_options", multiple=True, help="Extra ssh -o option, e.g. UserKnownHostsFile=...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host instead of the table.")
def deploy(bundle: str, hosts: Tuple[str, ...], with_package: bool, parallel: int, health_timeout: float,
           reload_cmd: str, remote_edge_detect: str, device_config: str, store: str, device_root: str,
           trusted: Tuple[str, ...], verify: Tuple[str, ...], identity: Optional[str], ssh_options: Tuple[str, ...],
           as_json: bool) -> None:
    """Push BUNDLE to every --host: verify, install atomically, reload, wait healthy, else roll back.

    Exit 0 when every host runs the new bundle, 1 otherwise (also when a host has no result), 130
    after Ctrl-C (hosts already switched are rolled back first; a second Ctrl-C aborts and names the
    hosts that may be left switched).
    """
    import tempfile

    from edge_detect.bundle import BundleError

    from .push import DeployOptions, PushAborted, build_wheel, push, summary_table

    opts = DeployOptions(root=device_root, store=store, config=device_config, edge_detect=remote_edge_detect,
                         reload=reload_cmd, health_timeout=health_timeout, parallel=parallel, identity=identity,
                         ssh_options=ssh_options, trusted_keys=trusted, verify_keys=verify)

    def log(host: str, msg: str) -> None:
        click.echo(f"[{host}] {msg}", err=True)

    with tempfile.TemporaryDirectory(prefix="edge-deploy-wheel-") as tmp:
        try:
            if with_package:
                opts.with_package = str(build_wheel(Path(__file__).resolve().parents[1], Path(tmp)))
            results = push(bundle, hosts, opts, log)
        except (BundleError, ValueError) as e:
            raise UserError(str(e)) from None
        except RuntimeError as e:  # building the wheel failed: not the user's input
            raise click.ClickException(str(e)) from None
        except PushAborted as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(INTERRUPTED_EXIT)
        except KeyboardInterrupt:  # only before the hosts start (push() handles Ctrl-C from then on)
            click.echo("error: interrupted (Ctrl-C) before any host was touched", err=True)
            sys.exit(INTERRUPTED_EXIT)
    if as_json:
        for r in results:
            click.echo(json.dumps(r.to_dict()))
    else:
        click.echo(summary_table(results))
    if any(r.interrupted for r in results):
        sys.exit(INTERRUPTED_EXIT)
    # Counted against the hosts asked for: a host missing from the results has not succeeded either.
    sys.exit(0 if sum(r.ok for r in results) == len(hosts) else 1)


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--broker", default="localhost:1883", show_default=True, help="host[:port] of the MQTT broker.")
@click.option("--device", required=True, help="Device id (its [device] id: no '/', '+' or '#').")
@click.option("--prefix", default="edge-detect", show_default=True,
              help="Topic prefix (the device's [mqtt] topic_prefix).")
@click.option("--chunk-kb", type=click.IntRange(0), default=0, show_default=True,
              help="The broker's message size limit in KiB: the update goes in parts of at most this size "
                   "as sent (base64 in JSON). 0: one message.")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds to wait for the device's answer.")
@click.option("--username", help="MQTT user name.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the MQTT password (needs --username).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA certificate: connect with TLS.")
def update(archive: str, broker: str, device: str, prefix: str, chunk_kb: int, timeout: float,
           username: Optional[str], password_file: Optional[str], tls_ca: Optional[str]) -> None:
    """Send a signed bundle ARCHIVE (.tar.gz from `sign --archive`) to a device over MQTT; print its answer.

    Exit 0 when the device installed it, 1 when it refused or did not answer, 2 for bad input.
    """
    import tempfile

    from edge_detect.bundle import BundleError
    from edge_detect.publisher import check_tls_files
    from edge_detect.subscribe import parse_broker

    from .mqtt_update import BrokerRefused, check_topic_names, plan_messages, publish_update
    from .push import check_bundle

    if password_file and not username:
        raise UserError("--password-file needs --username")
    try:
        host, port = parse_broker(broker)
        check_topic_names(device, prefix)
        check_tls_files(tls_ca)
        with tempfile.TemporaryDirectory(prefix="edge-deploy-update-") as tmp:
            # Never send what the device would refuse anyway: its store's checks, and a signature.
            check_bundle(archive, Path(tmp), require_signature="devices install only signed updates: make it "
                         "with edge-deploy sign BUNDLE --key KEY --archive ARCHIVE")
        plan_messages(archive, chunk_kb * 1024)  # too many parts, or no room: say so before connecting
    except BundleError as e:
        raise UserError(f"bundle refused: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    pw = Path(password_file).read_text().rstrip("\r\n") if password_file else None
    try:
        r = publish_update(host, port, device, archive, prefix=prefix, max_message_bytes=chunk_kb * 1024,
                           timeout=timeout, username=username, password=pw, tls_ca=tls_ca)
    except BrokerRefused as e:
        raise UserError(str(e)) from None
    except TimeoutError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    click.echo(json.dumps(r))
    sys.exit(0 if r.get("ok") else 1)


def register(group: click.Group) -> None:
    """Add keygen, sign and deploy to another command group (``edge-train``)."""
    for cmd in (keygen, sign, deploy):
        group.add_command(cmd)


for _cmd in (keygen, sign, deploy, update):
    main.add_command(_cmd)
# `edge-deploy push` reads better on its own; `deploy` is the name under edge-train.
main.add_command(deploy, name="push")
