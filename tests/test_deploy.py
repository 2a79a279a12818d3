"""edge-deploy over a real sshd on loopback: a good bundle is installed and reported healthy by the
running daemon; a bundle that verifies but cannot load on the device is rolled back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_helpers import DaemonProc
from device_tree import derive_bundle, make_device
from sshd import Sshd, find_sshd

from edge_deploy.cli import main as deploy_cli
from edge_deploy.push import DeployOptions, push, summary_table
from edge_deploy.ssh import Target
from edge_detect.bundle import load_bundle
from edge_detect.update import BundleStore

EDGE_DETECT = str(Path(sys.executable).parent / "edge-detect")


@pytest.fixture
def sshd(tmp_path):
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make test installs it as root)")
    s = Sshd(tmp_path / "sshd")
    s.start()
    yield s
    s.stop()


def test_target_parsing():
    t = Target.parse("pi@line3.local:2222")
    assert (t.user, t.host, t.port, t.dest) == ("pi", "line3.local", 2222, "pi@line3.local")
    assert Target.parse("[fe80::1]:22").host == "fe80::1" and Target.parse("jetson").user is None
    with pytest.raises(ValueError):
        Target.parse("a@b:99999")


def test_deploy_good_then_bad_rolls_back(tiny_bundle, mosquitto, sshd, tmp_path):
    root = tmp_path / "device"
    cfg = make_device(root, tiny_bundle[0], mosquitto, "dep1")
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    good = derive_bundle(tiny_bundle[0], tmp_path / "good", "2")
    bad = derive_bundle(tiny_bundle[0], tmp_path / "bad", "3", model=b"TFL3 this is not a flatbuffer" * 40)
    load_bundle(bad)  # verifies on the workstation: hashes match, the manifest is fine

    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        opts = DeployOptions(root=str(root), edge_detect=EDGE_DETECT, reload=f"kill -HUP {d.proc.pid}",
                             health_timeout=20, poll_every=0.3, identity=sshd.identity,
                             ssh_options=sshd.ssh_options)
        [r] = push(str(good), [sshd.target], opts)
        assert r.ok, r.steps
        assert store.current() == r.version and r.version.startswith("tiny-ae-2-")
        assert d.wait_for(lambda x: x.get("event") == "model_reloaded")["model"]["version"] == "2"
        assert r.model_sha256 == load_bundle(good).model_sha256("float32")
        print(summary_table([r]))

        # The bad one through the CLI: installed, refused by the daemon's reload, rolled back.
        args = ["push", str(bad), "--host", sshd.target, "--device-root", str(root), "--remote-edge-detect",
                EDGE_DETECT, "--reload-cmd", f"kill -HUP {d.proc.pid}", "--health-timeout", "20", "-i",
                sshd.identity, "--json"] + [a for o in sshd.ssh_options for a in ("-o", o)]
        out = CliRunner().invoke(deploy_cli, args)
        assert out.exit_code == 1, out.output
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert not res["ok"] and res["rolled_back"] and res["rollback_healthy"], res
        assert "refused" in res["error"] and res["previous"] == r.version
        assert store.current() == r.version and store.previous() == res["version"]
        assert os.path.realpath(root / "var/lib/edge-detect/bundles/current").endswith(r.version)
    finally:
        assert d.terminate() == 0, d.tail()
