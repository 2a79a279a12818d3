"""Bundle store (atomic install, rollback), Ed25519 signatures, and signed updates over MQTT
against a real daemon and a real Mosquitto."""

from __future__ import annotations

import json
import os
import shutil
import threading

import paho.mqtt.client as mqtt
import pytest
from daemon_helpers import DaemonProc
from device_tree import derive_bundle, make_device

from edge_deploy.mqtt_update import publish_update
from edge_detect.bundle import MANIFEST, BundleError, pack
from edge_detect.signing import (
    SIGNATURE,
    SignatureError,
    check_as_device,
    generate_keypair,
    load_trusted_keys,
    sign_bundle,
    verify_signature,
)
from edge_detect.update import MAX_PARTS, BundleStore, Updater, update_messages


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d / "trusted")
    other_priv, _ = generate_keypair(d / "other")
    return {"priv": priv, "pub": pub, "trusted_dir": d / "trusted", "other": other_priv}


@pytest.fixture(scope="module")
def v2(tiny_bundle, tmp_path_factory):
    return derive_bundle(tiny_bundle[0], tmp_path_factory.mktemp("v2") / "bundle", "2")


def test_store_installs_atomically_and_rolls_back(tiny_bundle, v2, tmp_path):
    store = BundleStore(tmp_path / "bundles", keep=2)
    a = store.install(tiny_bundle[0])
    assert a.previous is None and store.current() == a.version
    assert (tmp_path / "bundles/current").is_symlink() and os.readlink(tmp_path / "bundles/current") == a.version
    b = store.install(v2)
    assert b.previous == a.version and store.current() == b.version and store.previous() == a.version
    assert store.rollback() == a.version and store.current() == a.version and store.previous() == b.version
    # Re-installing identical content reuses the directory; nothing half-written is left behind.
    assert store.install(v2).version == b.version
    assert sorted(store.versions()) == sorted({a.version, b.version})
    assert not list((tmp_path / "bundles").glob(".*"))
    with pytest.raises(BundleError, match="no installed version"):
        store.activate("../etc")


def test_store_refuses_tampered_and_unlisted_files(v2, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(v2, bad)
    (bad / "extra.bin").write_bytes(b"x")
    store = BundleStore(tmp_path / "bundles")
    with pytest.raises(BundleError, match="does not list: extra.bin"):
        store.install(bad)
    (bad / "extra.bin").unlink()
    model = next(bad.glob("*.tflite"))
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="does not match"):
        store.install(bad)
    assert store.current() is None and store.versions() == []


def test_signature_verifies_and_detects_tampering(v2, keys, tmp_path):
    trusted = load_trusted_keys([keys["trusted_dir"]])
    b = tmp_path / "b"
    shutil.copytree(v2, b)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_signature(b, trusted)
    sign_bundle(b, keys["priv"])
    assert verify_signature(b, trusted).key_id == trusted[0].key_id
    # The signature file is outside manifest.files by design; the manifest it signs lists everything else.
    assert SIGNATURE not in json.loads((b / MANIFEST).read_text())["files"]
    m = json.loads((b / MANIFEST).read_text())
    m["calibration"]["threshold"] *= 10  # a quieter detector: exactly what an attacker would want
    (b / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b, trusted)
    c = tmp_path / "c"
    shutil.copytree(v2, c)
    sign_bundle(c, keys["other"])
    with pytest.raises(SignatureError, match="not trusted"):
        verify_signature(c, trusted)


def test_chunked_update_is_reassembled(v2, keys, tmp_path):
    signed = tmp_path / "signed"
    shutil.copytree(v2, signed)
    sign_bundle(signed, keys["priv"])
    archive = pack(signed, tmp_path / "u.tar.gz")
    results, statuses = [], []
    up = Updater(BundleStore(tmp_path / "bundles"), load_trusted_keys([keys["pub"]]),
                 report=lambda cmd, ok, detail="", **f: results.append((ok, detail)), status=statuses.append)
    msgs = update_messages(archive, chunk_bytes=4096)
    assert len(msgs) > 2
    for m in reversed(msgs):  # any order
        up.handle(m)
    assert results == [(True, results[0][1])] and statuses[-1]["state"] == "installed"
    assert up.store.current() == statuses[-1]["version"]


def test_a_chunked_update_has_at_most_max_parts(v2, tmp_path):
    results = []
    up = Updater(BundleStore(tmp_path / "bundles"), [], report=lambda cmd, ok, detail="", **f: results.append(detail),
                 status=lambda body: None)
    up.handle({"cmd": "update", "id": "u", "archive": "", "part": 0, "parts": MAX_PARTS + 1})
    assert results == [f'update refused: "part" must be an integer 0 <= part < "parts" <= {MAX_PARTS}']
    up.handle({"cmd": "update", "id": "u", "archive": "", "part": 0, "parts": MAX_PARTS})
    assert len(results) == 1 and up._partial["u"]["parts"] == MAX_PARTS  # waits for the other parts


def test_check_as_device_names_the_bundle_as_shown(v2, keys, tmp_path):
    """An archive is checked in the folder it was unpacked into; messages name the archive."""
    unpacked = tmp_path / ".unpack-x1y2" / "bundle"
    shutil.copytree(v2, unpacked)
    check_as_device(unpacked, shown="v2.tar.gz")
    with pytest.raises(SignatureError) as e:  # the type survives: callers tell signatures apart
        check_as_device(unpacked, load_trusted_keys([keys["pub"]]), shown="v2.tar.gz")
    assert str(e.value).startswith("v2.tar.gz: ") and ".unpack-" not in str(e.value)
    (unpacked / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError) as e:
        check_as_device(unpacked, shown="v2.tar.gz")
    assert str(e.value) == "v2.tar.gz: bundle carries files that manifest.json does not list: extra.bin"
    (unpacked / "extra.bin").unlink()
    model = next(unpacked.glob("*.tflite"))
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError) as e:
        check_as_device(unpacked, shown="v2.tar.gz")
    assert str(e.value) == (f"bundle v2.tar.gz: SHA-256 of {model.name} does not match the manifest "
                            "(tampered or truncated)")
    with pytest.raises(BundleError, match=f"^bundle {unpacked}: SHA-256"):  # no shown: the folder itself
        check_as_device(unpacked)


def _retained_status(broker, topic: str, timeout: float = 5.0) -> dict:
    got, ev = {}, threading.Event()

    def on_message(_c, _u, msg):
        got.update(json.loads(msg.payload))
        ev.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert ev.wait(timeout), f"no retained message on {topic}"
        return got
    finally:
        c.disconnect()
        c.loop_stop()


def test_signed_update_over_mqtt(tiny_bundle, v2, keys, mosquitto, tmp_path):
    """A running daemon refuses an unsigned, a tampered and a foreign-signed update (reported on
    cmd/result and retained on status/update), keeps its model, then installs a good one."""
    root = tmp_path / "device"
    trusted_dir = root / "etc/edge-detect/trusted-keys"
    update = (f'[update]\nenabled = true\ntrusted_keys = ["{trusted_dir}"]\n'
              f'bundles_dir = "{root}/var/lib/edge-detect/bundles"\n')
    trusted_dir.mkdir(parents=True)
    shutil.copy(keys["pub"], trusted_dir)
    cfg = make_device(root, tiny_bundle[0], mosquitto, "upd1", update=update)
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    v1 = store.current()

    signed = tmp_path / "signed"
    shutil.copytree(v2, signed)
    sign_bundle(signed, keys["priv"])
    good = pack(signed, tmp_path / "good.tar.gz")
    unsigned = pack(v2, tmp_path / "unsigned.tar.gz")
    tampered_dir = tmp_path / "tampered"
    shutil.copytree(signed, tampered_dir)
    m = json.loads((tampered_dir / MANIFEST).read_text())
    m["calibration"]["threshold"] *= 10
    (tampered_dir / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    tampered = tmp_path / "tampered.tar.gz"
    import tarfile

    with tarfile.open(tampered, "w:gz") as tar:  # pack() would refuse it; an attacker would not use pack()
        for p in sorted(tampered_dir.iterdir()):
            tar.add(p, arcname=p.name)
    foreign_dir = tmp_path / "foreign"
    shutil.copytree(v2, foreign_dir)
    sign_bundle(foreign_dir, keys["other"])
    foreign = pack(foreign_dir, tmp_path / "foreign.tar.gz")

    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        for archive, why in ((unsigned, "unsigned"), (tampered, "does not match"), (foreign, "not trusted")):
            r = publish_update(mosquitto.host, mosquitto.port, "upd1", archive, timeout=20)
            assert r["ok"] is False and why in r["detail"], r
            status = _retained_status(mosquitto, "edge-detect/upd1/status/update")
            assert status["state"] == "refused" and why in status["reason"]
            assert store.current() == v1
        r = publish_update(mosquitto.host, mosquitto.port, "upd1", good, chunk_bytes=8192, timeout=30)
        assert r["ok"] is True, r
        assert store.current() == r["update"]["version"] != v1 and store.previous() == v1
        reloaded = d.wait_for(lambda x: x.get("event") == "model_reloaded")
        assert reloaded["model"]["version"] == "2"
        assert _retained_status(mosquitto, "edge-detect/upd1/status/update")["state"] == "installed"
    finally:
        assert d.terminate() == 0, d.tail()


def test_cli_bad_keys_archives_and_options_are_one_line_exit_2(tiny_bundle, tmp_path):
    """edge-deploy / edge-detect bundle install: bad input is `error: ...` naming it, exit 2, no traceback."""
    from click.testing import CliRunner

    from edge_deploy.cli import main as deploy_cli
    from edge_detect.cli import main as device_cli

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], bundle)
    archive = str(pack(bundle, tmp_path / "bundle.tar.gz"))
    notes = tmp_path / "notes.txt"
    notes.write_text("neither a key nor a bundle\n")
    keys = tmp_path / "keys"
    assert CliRunner().invoke(deploy_cli, ["keygen", "--out", str(keys)]).exit_code == 0
    priv, pub = str(keys / "edge-detect-update.key.pem"), str(keys / "edge-detect-update.pub.pem")
    signed = bundle.parent / "signed"
    shutil.copytree(bundle, signed)
    signed_archive = str(tmp_path / "signed.tar.gz")
    r = CliRunner().invoke(deploy_cli, ["sign", str(signed), "--key", priv, "--archive", signed_archive])
    assert r.exit_code == 0, r.output
    odd_store = tmp_path / "store"
    odd_store.mkdir()
    (odd_store / "current").write_text("not the link the store manages\n")
    cases = [
        (deploy_cli, ["keygen", "--out", str(keys)], "edge-detect-update.key.pem exists; refusing to overwrite"),
        (deploy_cli, ["keygen", "--out", str(notes / "k")], f"cannot write the keys into {notes / 'k'}"),
        (deploy_cli, ["keygen", "--out", str(keys), "--name", "../x"], "--name must be a file name stem"),
        (deploy_cli, ["sign", str(bundle), "--key", str(notes)], f"{notes}: not an unencrypted PEM private key"),
        (deploy_cli, ["sign", str(bundle), "--key", pub], f"{pub}: not an unencrypted PEM private key"),
        (deploy_cli, ["sign", str(bundle), "--key", priv, "--archive", str(tmp_path / "no" / "b.tar.gz")],
         f"--archive {tmp_path / 'no' / 'b.tar.gz'}: folder {tmp_path / 'no'} does not exist"),
        (deploy_cli, ["push", str(notes), "--host", "a@b"], f"{notes}: not a bundle (no manifest.json)"),
        (deploy_cli, ["update", str(notes), "--device", "d"], f"bundle refused: {notes}: not a bundle"),
        (deploy_cli, ["update", archive, "--device", "d", "--broker", "127.0.0.1:1"],
         f"{archive} is unsigned (no signature.ed25519)"),
        (deploy_cli, ["update", signed_archive, "--device", "d", "--broker", "h:99999"], "port must be 1..65535"),
        (deploy_cli, ["update", signed_archive, "--device", "d", "--broker", "127.0.0.1:1", "--tls-ca", str(notes)],
         f"CA file {notes}: not usable for TLS"),
        (deploy_cli, ["update", signed_archive, "--device", "d", "--broker", "127.0.0.1:1"],
         "cannot connect to 127.0.0.1:1"),
        (device_cli, ["bundle", "install", archive, "--store", str(tmp_path / "s"), "--trusted-key", str(notes)],
         f"--trusted-key: {notes}: not a PEM public key"),
        (device_cli, ["bundle", "install", archive, "--store", str(notes / "s")], f"cannot install into {notes / 's'}"),
        (device_cli, ["bundle", "list", "--store", str(odd_store)], f"{odd_store / 'current'} is not a symlink"),
        (device_cli, ["bundle", "list", "--store", str(tmp_path / "stroe")], f"--store {tmp_path / 'stroe'}: no such"),
    ]
    for cli, args, message in cases:
        r = CliRunner().invoke(cli, args)
        lines = [ln for ln in r.output.splitlines() if not ln.startswith("signed: ")]
        assert r.exit_code == 2 and len(lines) == 1, (args, r.output)
        assert lines[0].startswith("error: ") and message in lines[0], (args, r.output)
