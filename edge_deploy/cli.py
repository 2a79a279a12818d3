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
    """Sign BUNDLE's manifest.json (which hashes every other file): writes BUNDLE/signature.ed25519."""
    from edge_detect.bundle import BundleError, pack
    from edge_detect.signing import sign_bundle

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
@click.option("--device-config", default="/etc/edge-detect/edge-detect.toml", show_default=True)
@click.option("--store", default="/var/lib/edge-detect/bundles", show_default=True, help="Device bundle store.")
@click.option("--device-root", default="", help="Prefix for every device path (staging trees, tests).")
@click.option("--trusted-key", "trusted", multiple=True,
              help="Device-side path of a trusted public key: the device then refuses unsigned bundles.")
@click.option("-i", "--identity", type=click.Path(exists=True, dir_okay=False), help="SSH private key.")
@click.option("-o", "ssh_options", multiple=True, help="Extra ssh -o option, e.g. UserKnownHostsFile=...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host instead of the table.")
def deploy(bundle: str, hosts: Tuple[str, ...], with_package: bool, parallel: int, health_timeout: float,
           reload_cmd: str, remote_edge_detect: str, device_config: str, store: str, device_root: str,
           trusted: Tuple[str, ...], identity: Optional[str], ssh_options: Tuple[str, ...], as_json: bool) -> None:
    """Push BUNDLE to every --host: verify, install atomically, reload, wait healthy, else roll back.

    Exit 0 when every host runs the new bundle, 1 otherwise.
    """
    import tempfile

    from edge_detect.bundle import BundleError

    from .push import DeployOptions, build_wheel, push, summary_table

    opts = DeployOptions(root=device_root, store=store, config=device_config, edge_detect=remote_edge_detect,
                         reload=reload_cmd, health_timeout=health_timeout, parallel=parallel, identity=identity,
                         ssh_options=ssh_options, trusted_keys=trusted)

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
    if as_json:
        for r in results:
            click.echo(json.dumps(r.to_dict()))
    else:
        click.echo(summary_table(results))
    sys.exit(0 if all(r.ok for r in results) else 1)


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--broker", default="localhost:1883", show_default=True, help="host[:port] of the MQTT broker.")
@click.option("--device", required=True, help="Device id.")
@click.option("--prefix", default="edge-detect", show_default=True, help="Topic prefix.")
@click.option("--chunk-kb", type=click.IntRange(0), default=0, show_default=True,
              help="Split into messages of this many KiB (0: one message).")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True)
@click.option("--username")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False))
def update(archive: str, broker: str, device: str, prefix: str, chunk_kb: int, timeout: float,
           username: Optional[str], password_file: Optional[str], tls_ca: Optional[str]) -> None:
    """Send a signed bundle ARCHIVE (.tar.gz from `sign --archive`) to a device over MQTT; print its answer."""
    import tempfile

    from edge_detect.bundle import BundleError, load_bundle
    from edge_detect.publisher import check_tls_files
    from edge_detect.subscribe import parse_broker

    from .mqtt_update import publish_update

    try:
        host, port = parse_broker(broker)
        check_tls_files(tls_ca)
        with tempfile.TemporaryDirectory(prefix="edge-deploy-update-") as tmp:
            load_bundle(archive, extract_to=Path(tmp))  # never send what the device would refuse anyway
    except BundleError as e:
        raise UserError(f"bundle refused: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    pw = Path(password_file).read_text().rstrip("\r\n") if password_file else None
    try:
        r = publish_update(host, port, device, archive, prefix=prefix, chunk_bytes=chunk_kb * 1024,
                           timeout=timeout, username=username, password=pw, tls_ca=tls_ca)
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
