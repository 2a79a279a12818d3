"""edge-deploy over a real sshd on loopback: a good bundle is installed and reported healthy by the
running daemon; a bundle that verifies but cannot load on the device is rolled back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_helpers import DaemonProc
from device_tree import derive_bundle, make_device
from sshd import Sshd, find_sshd

from edge_deploy.cli import main as deploy_cli
from edge_deploy.push import DeployOptions, HostResult, PushAborted, Pusher, push, summary_table
from edge_deploy.ssh import SshError, Target
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


# --- failures named for what they are, before anything is installed --------------------------------

DEPLOY = str(Path(sys.executable).parent / "edge-deploy")


def _push_args(bundle, sshd, root, *extra: str) -> list:
    return ["push", str(bundle), "--host", sshd.target, "--device-root", str(root), "--remote-edge-detect",
            EDGE_DETECT, "-i", sshd.identity, *[a for o in sshd.ssh_options for a in ("-o", o)], *extra]


def _json_result(out) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def _device_and_v2(tiny_bundle, mosquitto, tmp_path, device_id: str):
    """A device tree running v1 of the tiny bundle, and a good v2 to push: (root, store, v1, v2 path)."""
    root = tmp_path / "device"
    make_device(root, tiny_bundle[0], mosquitto, device_id)
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    return root, store, store.current(), derive_bundle(tiny_bundle[0], tmp_path / "good", "2")


def test_health_failures_stop_before_install(tiny_bundle, mosquitto, sshd, tmp_path):
    root, store, v1, good = _device_and_v2(tiny_bundle, mosquitto, tmp_path, "dep2")
    run = CliRunner().invoke

    # A mistyped --device-config: the device's own message, not "does not answer"; nothing installed.
    out = run(deploy_cli, _push_args(good, sshd, root, "--device-config", "/etc/edge-detect/typo.toml", "--json"))
    assert out.exit_code == 1, out.output
    res = _json_result(out)
    assert "invalid --device-config" in res["error"] and "typo.toml" in res["error"], res
    assert "error:" not in res["error"] and res["version"] is None and store.current() == v1

    # The device has no edge-detect there: name the option that fixes it.
    args = _push_args(good, sshd, root, "--json")
    args[args.index(EDGE_DETECT)] = "/nowhere/edge-detect"
    res = _json_result(run(deploy_cli, args))
    assert "--remote-edge-detect" in res["error"] and "/nowhere/edge-detect" in res["error"], res
    assert store.current() == v1

    # ssh itself fails (unknown host key): said so, on one line of the table.
    args = _push_args(good, sshd, root)
    args[args.index(f"UserKnownHostsFile={sshd.dir / 'known_hosts'}")] = "UserKnownHostsFile=/dev/null"
    out = run(deploy_cli, args)
    assert out.exit_code == 1, out.output
    table = out.stdout.strip().splitlines()
    assert len(table) == 3 and "ssh failed" in table[1] and "Host key verification failed" in table[1], table
    assert store.current() == v1


def test_no_daemon_answering_rolls_back_and_says_so(tiny_bundle, mosquitto, sshd, tmp_path):
    root, store, v1, good = _device_and_v2(tiny_bundle, mosquitto, tmp_path, "dep3")
    out = CliRunner().invoke(deploy_cli, _push_args(good, sshd, root, "--reload-cmd", "true", "--health-timeout",
                                                    "1", "--json"))
    res = _json_result(out)
    assert not res["ok"] and res["rolled_back"] and store.current() == v1, res
    assert "did not answer" in res["error"], res


class _Installing(Exception):
    pass


def test_the_health_call_before_the_install_asks_for_no_more_than_health_timeout(tiny_bundle, tmp_path):
    # The bound itself, without timing a push on a busy machine: the first call used to ask for 10 s.
    calls = []

    class NoDaemon:  # the ssh link to a device whose daemon does not answer
        def run(self, argv, timeout=120.0, check=True):
            calls.append((list(argv), timeout))
            if argv[1:2] == ["health"]:
                return subprocess.CompletedProcess(argv, 1, json.dumps({"online": False}) + "\n", "")
            raise _Installing

    pusher = Pusher(load_bundle(tiny_bundle[0]), tmp_path / "b.tar.gz", DeployOptions(health_timeout=1))
    with pytest.raises(_Installing):
        pusher._push(NoDaemon(), HostResult("dev"))
    argv, _ = calls[0]
    assert argv[1] == "health" and argv[argv.index("--timeout") + 1] == "1", argv


def test_signed_push_manifest_only_change_and_device_refusal(tiny_bundle, mosquitto, sshd, tmp_path):
    from edge_detect.signing import generate_keypair, sign_bundle

    root = tmp_path / "device"
    cfg = make_device(root, tiny_bundle[0], mosquitto, "dep4")
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    v1 = store.current()
    priv, pub = generate_keypair(tmp_path / "keys")
    other, _ = generate_keypair(tmp_path / "keys", "other")
    trusted = root / "etc/edge-detect/trusted-keys"
    trusted.mkdir()
    (trusted / pub.name).write_bytes(pub.read_bytes())
    version = load_bundle(tiny_bundle[0]).version
    # Same model, name and version; only manifest.json differs (its created time): a manifest-only change.
    same = derive_bundle(tiny_bundle[0], tmp_path / "same", str(version))
    signed = derive_bundle(tiny_bundle[0], tmp_path / "signed", "2")
    sign_bundle(signed, priv)
    foreign = derive_bundle(tiny_bundle[0], tmp_path / "foreign", "3")
    sign_bundle(foreign, other)
    run = CliRunner().invoke

    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        hup = ["--reload-cmd", f"kill -HUP {d.proc.pid}", "--health-timeout", "20", "--json"]

        # No reload happens: the running model has the same SHA, name and version, yet that is not healthy.
        out = run(deploy_cli, _push_args(same, sshd, root, "--reload-cmd", "true", "--health-timeout", "3", "--json"))
        res = _json_result(out)
        assert out.exit_code == 1 and not res["ok"] and res["rolled_back"], res
        assert "no new successful reload" in res["error"] and store.current() == v1, res

        # --trusted-key is a device path under --device-root, checked by the device's install.
        out = run(deploy_cli, _push_args(signed, sshd, root, "--trusted-key", "/etc/edge-detect/trusted-keys", *hup))
        assert out.exit_code == 0, out.output
        assert _json_result(out)["ok"] and store.current().startswith("tiny-ae-2-")
        v2 = store.current()

        # Signed by a key the device does not trust: the device's reason, without a doubled "error:".
        out = run(deploy_cli, _push_args(foreign, sshd, root, "--trusted-key", "/etc/edge-detect/trusted-keys", *hup))
        res = _json_result(out)
        assert out.exit_code == 1 and res["error"].startswith("device refused the bundle: signed by key"), res
        assert "error:" not in res["error"] and "bundle refused" not in res["error"] and store.current() == v2

        # Checked here against a workstation key first: refused before any host is touched.
        out = run(deploy_cli, _push_args(foreign, sshd, root, "--verify-key", str(tmp_path / "keys" / pub.name)))
        assert out.exit_code == 2 and out.stderr.startswith("error: ") and "not trusted" in out.stderr, out.output
        # Unsigned while the devices require a signature: refused here too.
        out = run(deploy_cli, _push_args(same, sshd, root, "--trusted-key", "/etc/edge-detect/trusted-keys"))
        assert out.exit_code == 2 and "unsigned" in out.stderr and "edge-deploy sign" in out.stderr, out.output
        assert len(out.stderr.strip().splitlines()) == 1 and store.current() == v2
    finally:
        assert d.terminate() == 0, d.tail()


def test_unlisted_file_is_refused_by_push_and_sign(tiny_bundle, tmp_path):
    from edge_detect.signing import SIGNATURE, generate_keypair

    priv, _ = generate_keypair(tmp_path / "keys")
    extra = derive_bundle(tiny_bundle[0], tmp_path / "extra", "2")
    (extra / "notes.txt").write_text("not in the manifest\n")
    run = CliRunner().invoke
    out = run(deploy_cli, ["push", str(extra), "--host", "nobody@127.0.0.1:1"])
    assert out.exit_code == 2, out.output
    assert out.stderr.startswith("error: ") and "notes.txt" in out.stderr and str(extra) in out.stderr, out.stderr
    out = run(deploy_cli, ["sign", str(extra), "--key", str(priv)])
    assert out.exit_code == 2 and "notes.txt" in out.stderr and not (extra / SIGNATURE).exists(), out.output

    # A bad --archive folder is named as given, and nothing is signed first.
    good = derive_bundle(tiny_bundle[0], tmp_path / "good", "2")
    out = run(deploy_cli, ["sign", str(good), "--key", str(priv), "--archive", str(tmp_path / "no/dir/x.tar.gz")])
    assert out.exit_code == 2 and str(tmp_path / "no/dir") in out.stderr and ".part" not in out.stderr, out.output
    assert not (good / SIGNATURE).exists()


# --- Ctrl-C ------------------------------------------------------------------------------------------

class _Push:
    """``edge-deploy push`` in its own process group, as a terminal runs it; stderr read as it comes."""

    def __init__(self, args: list) -> None:
        import subprocess
        import threading

        self.proc = subprocess.Popen([DEPLOY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.err: list = []
        self._t = threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self._t.start()

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not any(text in x for x in self.err):
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.err)
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground group

    def finish(self, timeout: float) -> tuple:
        out = self.proc.stdout.read() if self.proc.wait(timeout) is not None else ""
        self._t.join(5)
        return self.proc.returncode, out, "".join(self.err)


def test_ctrl_c_rolls_back_and_prints_the_summary(tiny_bundle, mosquitto, sshd, tmp_path):
    import time

    root = tmp_path / "device"
    cfg = make_device(root, tiny_bundle[0], mosquitto, "dep5")
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    v1 = store.current()
    good = derive_bundle(tiny_bundle[0], tmp_path / "good", "2")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        # The reload never happens, so the push would poll for 60 s: Ctrl-C must not wait for that.
        p = _Push(_push_args(good, sshd, root, "--reload-cmd", "true", "--health-timeout", "60"))
        p.wait_for("] installed tiny-ae-2-")
        t0 = time.monotonic()
        p.ctrl_c()
        rc, out, err = p.finish(30)
        assert rc == 130, (out, err)
        assert time.monotonic() - t0 < 15, err
        row = out.strip().splitlines()[1]
        assert "rolled back" in row and "interrupted (Ctrl-C) after install" in row, out
        assert store.current() == v1, err
        assert "Aborted!" not in err and "Traceback" not in err, err
    finally:
        assert d.terminate() == 0, d.tail()


def _wait_for_file(path: Path, p: _Push, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and p.proc.poll() is None, "".join(p.err)
        time.sleep(0.05)


def test_second_ctrl_c_aborts_naming_hosts_left_switched(tiny_bundle, mosquitto, sshd, tmp_path):
    root = tmp_path / "device"
    make_device(root, tiny_bundle[0], mosquitto, "dep6")
    store = BundleStore(root / "var/lib/edge-detect/bundles")
    good = derive_bundle(tiny_bundle[0], tmp_path / "good", "2")
    # The reload marks that it started, then blocks until a flag the test creates only when done:
    # the host stays switched, between install and rollback, for as long as the test needs.
    started, release = tmp_path / "reload-started", tmp_path / "release"
    reload_cmd = f"touch {started}; while [ ! -e {release} ]; do sleep 0.1; done"
    try:
        p = _Push(_push_args(good, sshd, root, "--reload-cmd", reload_cmd, "--health-timeout", "2"))
        _wait_for_file(started, p)
        p.ctrl_c()
        p.wait_for("Ctrl-C: stopping")  # the first press is handled: a second one is not merged into it
        p.ctrl_c()
        rc, out, err = p.finish(60)
        assert rc == 130, (out, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: aborted by a second Ctrl-C") and sshd.target in last, err
        assert "Traceback" not in err and store.current().startswith("tiny-ae-2-")  # what the message warns of
    finally:
        release.touch()  # ends the remote reload loop the aborted push left behind


# --- a host always has a result ------------------------------------------------------------------

class _FakePusher(Pusher):
    """A Pusher whose per-host work is ``behave(pusher, res)`` instead of ssh (``push()`` itself is real)."""

    behave = None

    def _push(self, ssh, res):
        type(self).behave(self, res)


def _fake_push(monkeypatch, tiny_bundle, hosts, behave, log=None, parallel=1):
    import edge_deploy.push as push_mod

    monkeypatch.setattr(_FakePusher, "behave", staticmethod(behave))
    monkeypatch.setattr(push_mod, "Pusher", _FakePusher)
    return push(str(tiny_bundle[0]), hosts, DeployOptions(parallel=parallel), log)


def test_an_unexpected_error_costs_one_host_not_the_queue(monkeypatch, tiny_bundle):
    def behave(pusher, res):
        if res.host == "a":  # e.g. `bundle install` exit 0 with no output: IndexError on its last line
            pusher.at_risk(res.host)
            [][-1]
        res.ok = True

    results = _fake_push(monkeypatch, tiny_bundle, ["a", "b", "c"], behave, parallel=1)
    assert [r.host for r in results] == ["a", "b", "c"] and [r.ok for r in results] == [False, True, True]
    assert results[0].error.startswith("internal error: IndexError(") and results[0].switched, results[0]
    assert "current may point at tiny-ae-" in results[0].error and results[0].state == "FAILED"


def test_cli_fails_when_a_host_has_no_result(monkeypatch, tiny_bundle):
    import edge_deploy.push as push_mod

    monkeypatch.setattr(push_mod, "push", lambda *a, **k: [])
    out = CliRunner().invoke(deploy_cli, ["push", str(tiny_bundle[0]), "--host", "a", "--host", "b"])
    assert out.exit_code == 1, out.output


def test_ctrl_c_during_the_push_is_handled_in_process_and_the_handler_restored(monkeypatch, tiny_bundle):
    import signal
    import threading
    import time

    before = signal.getsignal(signal.SIGINT)
    release = threading.Event()

    def stuck_switched(pusher, res):  # a host in the middle of its rollback, current switched
        pusher.at_risk(res.host)
        res.switched = True
        os.kill(os.getpid(), signal.SIGINT)
        release.wait(30)

    def log(host, msg):
        if msg.startswith("Ctrl-C: stopping"):  # the second press lands while the first is reported
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(50):  # the handler runs in the main thread, between two bytecodes of this loop
                time.sleep(0.01)

    try:
        with pytest.raises(PushAborted) as e:
            _fake_push(monkeypatch, tiny_bundle, ["dev1"], stuck_switched, log)
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C during the push escaped as KeyboardInterrupt")
    finally:
        release.set()
    assert e.value.hosts == ["dev1"] and signal.getsignal(signal.SIGINT) is before

    def stopped(pusher, res):  # one press: the host stops, the push returns its result
        os.kill(os.getpid(), signal.SIGINT)
        assert pusher.stop.wait(10)
        pusher._check_stop("before install")

    [r] = _fake_push(monkeypatch, tiny_bundle, ["dev2"], stopped)
    assert r.interrupted and r.error == "interrupted (Ctrl-C) before install: nothing changed", r
    assert signal.getsignal(signal.SIGINT) is before


# --- ssh failing or timing out during the install, and the rollback command ----------------------

def _slow_install_device(tmp_path: Path, release: Path) -> str:
    """An edge-detect for the device whose `bundle install` completes, then does not answer until ``release`` exists."""
    wrap = tmp_path / "edge-detect-slow-install"
    wrap.write_text(f"""#!/bin/sh
if [ "$1" = bundle ] && [ "$2" = install ]; then
  "{EDGE_DETECT}" "$@"; rc=$?
  while [ ! -e "{release}" ]; do sleep 0.1; done
  exit $rc
fi
exec "{EDGE_DETECT}" "$@"
""")
    wrap.chmod(0o755)
    return str(wrap)


def test_timed_out_install_that_switched_is_rolled_back(tiny_bundle, mosquitto, sshd, tmp_path):
    root, store, v1, good = _device_and_v2(tiny_bundle, mosquitto, tmp_path, "dep7")
    release = tmp_path / "release"
    opts = DeployOptions(root=str(root), edge_detect=_slow_install_device(tmp_path, release), reload="true",
                         health_timeout=2, install_timeout=6, identity=sshd.identity, ssh_options=sshd.ssh_options)
    try:
        [r] = push(str(good), [sshd.target], opts)
    finally:
        release.touch()
    assert r.rolled_back and not r.switched and r.previous == v1, r
    assert "no answer within 6 s" in r.error and "completed on the device" in r.error, r
    assert store.current() == v1 and store.previous().startswith("tiny-ae-2-")


def test_rollback_passes_the_version_after_double_dash(tiny_bundle, tmp_path):
    class LocalSsh:  # runs the device's commands here, as the device would
        def run(self, argv, timeout=120.0, check=True):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            if check and r.returncode:
                raise SshError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}", r.returncode)
            return r

    store = tmp_path / "store"
    BundleStore(store).install(tiny_bundle[0])
    opts = DeployOptions(store=str(store), edge_detect=EDGE_DETECT, reload="")
    pusher = Pusher(load_bundle(tiny_bundle[0]), tmp_path / "b.tar.gz", opts)
    res = HostResult("dev", version="x", previous="-v1", switched=True)
    with pytest.raises(SshError) as e:  # no such version: refused as one, not read as option -v
        pusher._rollback(LocalSsh(), res, None, {})
    assert "No such option" not in str(e.value) and "-v1" in str(e.value), e.value
