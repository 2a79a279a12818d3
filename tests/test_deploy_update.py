"""``edge-deploy update`` (signed bundles over MQTT) against a real Mosquitto: bad input is one
``error:`` line before anything is sent, the broker's refusal is shown, and --chunk-kb bounds the
size of every message as sent."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from device_tree import derive_bundle

from edge_deploy.cli import main as deploy_cli
from edge_deploy.mqtt_update import MAX_PARTS, plan_messages
from edge_detect.bundle import pack
from edge_detect.signing import generate_keypair, sign_bundle


@pytest.fixture
def archives(tiny_bundle, tmp_path):
    """(signed archive, unsigned archive) of the tiny bundle as version 2."""
    priv, _ = generate_keypair(tmp_path / "keys")
    src = derive_bundle(tiny_bundle[0], tmp_path / "v2", "2")
    unsigned = pack(src, tmp_path / "unsigned.tar.gz")
    signed_dir = tmp_path / "signed"
    shutil.copytree(src, signed_dir)
    sign_bundle(signed_dir, priv)
    return pack(signed_dir, tmp_path / "signed.tar.gz"), unsigned


def _update(*args: str):
    return CliRunner().invoke(deploy_cli, ["update", *map(str, args)])


def _one_error(out, *words: str) -> None:
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], out.stderr


def test_bad_input_is_one_line(archives, tmp_path):
    signed, unsigned = archives
    broker = "127.0.0.1:1"  # nothing listens: every one of these must fail before connecting
    _one_error(_update(signed, "--broker", broker, "--device", "a/+/#"), "--device")
    _one_error(_update(signed, "--broker", broker, "--device", "line3", "--prefix", "a//b"), "--prefix")
    _one_error(_update(signed, "--broker", broker, "--device", "line3", "--prefix", "plant/#"), "--prefix")
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    _one_error(_update(signed, "--broker", broker, "--device", "line3", "--password-file", pw), "--username")
    _one_error(_update(unsigned, "--broker", broker, "--device", "line3"), "unsigned", str(unsigned),
               "edge-deploy sign")


def test_chunk_kb_bounds_each_message_as_sent(archives):
    signed, _ = archives
    data = signed.read_bytes()
    for limit in (2048, 4096, 64 * 1024):
        msgs = plan_messages(data, limit)
        sizes = [len(json.dumps(m, separators=(",", ":")).encode()) for m in msgs]
        assert max(sizes) <= limit, (limit, sizes)
    assert len(plan_messages(data, 0)) == 1
    many = bytes(range(256)) * 16000  # 4 MB: 1 KiB messages would need more than MAX_PARTS parts
    with pytest.raises(ValueError, match=str(MAX_PARTS)):
        plan_messages(many, 1024)


def test_broker_refusal_and_silent_device(archives, tmp_path):
    from edge_detect.broker import Mosquitto

    signed, _ = archives
    with Mosquitto(tmp_path / "auth", users={"deploy": "right"}) as broker:
        pw = tmp_path / "pw"
        pw.write_text("wrong\n")
        out = _update(signed, "--broker", broker.url.split("//")[-1], "--device", "line3", "--username", "deploy",
                      "--password-file", pw, "--timeout", "2")
        _one_error(out, "refused", "Not authorized")
        pw.write_text("right\n")
        out = _update(signed, "--broker", broker.url.split("//")[-1], "--device", "nobody-here", "--username",
                      "deploy", "--password-file", pw, "--timeout", "1")
        assert out.exit_code == 1 and "did not answer" in out.output and "--chunk-kb" in out.output, out.output
