"""The bundle store as `edge-detect bundle install/activate/list` use it: it only ever lists or
removes its own versions, rollback by name or alias, temporaries inside the store and cleaned
after a kill, and messages that name what the user gave. Real files, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_tree import derive_bundle

from edge_detect.bundle import pack
from edge_detect.cli import main as cli

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "edge_detect" / "data" / "demo" / "bundle"
EDGE_DETECT = str(Path(sys.executable).parent / "edge-detect")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Five versions of the demo bundle (directories), and v2 as an archive and a tampered archive."""
    d = tmp_path_factory.mktemp("bundles")
    out = {v: derive_bundle(DEMO_BUNDLE, d / f"v{v}", str(v)) for v in range(1, 6)}
    out["archive"] = pack(out[2], d / "v2.tar.gz")
    tampered = d / "tampered"
    shutil.copytree(out[2], tampered)
    model = tampered / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    import tarfile

    out["tampered"] = d / "tampered.tar.gz"
    with tarfile.open(out["tampered"], "w:gz") as tar:  # pack() would refuse it
        for p in sorted(tampered.iterdir()):
            tar.add(p, arcname=p.name)
    return out


def bundle_cli(*args: str):
    return CliRunner().invoke(cli, ["bundle", *map(str, args)])


def ok_json(*args: str) -> dict:
    r = bundle_cli(*args)
    assert r.exit_code == 0, (args, r.output)
    return json.loads(r.stdout.strip().splitlines()[-1])


def one_line_error(*args: str) -> str:
    r = bundle_cli(*args)
    lines = r.output.splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.output)
    return lines[0]


def user_folder(path: Path) -> dict:
    """A folder of someone's own files; returns its listing, to compare with afterwards."""
    for sub in ("photos", "thesis", "backup", "code", "music"):
        (path / sub).mkdir(parents=True)
        (path / sub / "keep.txt").write_text(sub)
    (path / "notes.txt").write_text("mine\n")
    return listing(path)


def listing(path: Path) -> dict:
    return {str(p.relative_to(path)): p.is_dir() for p in sorted(path.rglob("*"))}


def test_a_folder_of_other_files_is_refused_before_anything_is_written(bundles, tmp_path):
    home = tmp_path / "home"
    before = user_folder(home)
    for source in (bundles[1], bundles["archive"]):
        line = one_line_error("install", source, "--store", home)
        assert f"{home} is not a bundle store: it holds other files (backup, code, music, ...)" in line, line
        assert listing(home) == before
    assert ok_json("list", "--store", home)["versions"] == []
    # A new or empty folder is a store; a refused first install leaves no empty store behind.
    assert one_line_error("install", bundles["tampered"], "--store", tmp_path / "new").startswith("error: bundle ")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert ok_json("install", bundles[1], "--store", tmp_path / "empty")["current"].startswith("casting-demo-1-")


def test_pruning_and_listing_touch_only_versions(bundles, tmp_path):
    store = tmp_path / "bundles"
    first = ok_json("install", bundles[1], "--store", store)
    # Things that are not versions, put there later: never listed, never removed.
    user_folder(store)
    (store / "casting-demo-9-0123456789ab").mkdir()  # a version's name, but no manifest.json
    (store / "casting-demo-9-0123456789ab" / "x").write_text("x")
    others = {k: v for k, v in listing(store).items() if not k.startswith(("casting-demo-1-", "current"))}
    results = [first]
    for v in range(2, 6):
        time.sleep(0.01)  # distinct mtimes: pruning keeps the newest
        results.append(ok_json("install", bundles[v], "--store", store))
    assert {k: v for k, v in listing(store).items() if k in others} == others
    installed = [r["version"] for r in results]
    assert ok_json("list", "--store", store)["versions"] == sorted(installed[2:])
    assert [r["pruned"] for r in results] == [[], [], [], [installed[0]], [installed[1]]]  # keep = 3
    assert not any((store / v).exists() for v in installed[:2])
    assert all(r["previous"] == p["version"] and r["current"] == r["version"] for p, r in zip(results, results[1:]))


def test_activate_names_an_installed_version_or_an_alias(bundles, tmp_path):
    store = tmp_path / "bundles"
    v1 = ok_json("install", bundles[1], "--store", store)["version"]
    v2 = ok_json("install", bundles["archive"], "--store", store)["version"]
    assert ok_json("activate", "previous", "--store", store) == {"current": v1, "previous": v2, "pruned": []}
    assert os.readlink(store / "current") == v1 and os.readlink(store / "previous") == v2
    assert ok_json("activate", "current", "--store", store)["current"] == v1  # a no-op, not a loop
    assert os.readlink(store / "current") == v1
    assert ok_json("activate", f"{v2}/", "--store", store)["current"] == v2  # as tab completion writes it
    assert os.readlink(store / "current") == v2 and os.readlink(store / "previous") == v1
    (store / "photos").mkdir()
    for name in ("", "photos", "../etc", "nope"):
        line = one_line_error("activate", name, "--store", store)
        assert f"{store}: no installed version {name!r} (have: {', '.join(sorted([v1, v2]))})" in line
    assert one_line_error("activate", "previous", "--store", tmp_path / "nostore") == \
        f"error: {tmp_path / 'nostore'}: no such bundle store"
    # A version whose files changed after install is refused; current stays.
    model = store / v1 / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    line = one_line_error("activate", "previous", "--store", store)
    assert f"{store}: not activating {v1}: " in line and "SHA-256 of model_int8.tflite does not match" in line
    assert os.readlink(store / "current") == v2
    # A dangling link: not an alias for anything, and a warning in the listing.
    shutil.rmtree(store / v1)
    assert f"previous points to {v1!r}, which is not an installed version" in \
        one_line_error("activate", "previous", "--store", store)
    r = bundle_cli("list", "--store", store)
    assert r.exit_code == 0 and json.loads(r.stdout)["versions"] == [v2], r.output
    assert r.stderr == f"warning: {store / 'previous'} points to {v1!r}, which is not an installed version\n"


def test_install_json_says_what_happened(bundles, tmp_path):
    store = tmp_path / "bundles"
    v1 = ok_json("install", bundles[1], "--store", store)
    assert (v1["previous"], v1["current"], v1["activated"], v1["pruned"]) == (None, v1["version"], True, [])
    # edge-deploy push reads "previous == version" as "already current" after a plain re-install.
    again = ok_json("install", bundles[1], "--store", store)
    assert again["previous"] == again["version"] == again["current"]
    # --no-activate switches nothing: no previous, and current says what runs.
    quiet = ok_json("install", bundles[1], "--store", store, "--no-activate")
    assert (quiet["previous"], quiet["current"], quiet["activated"]) == (None, v1["version"], False)
    v2 = ok_json("install", bundles[2], "--store", store, "--no-activate")
    assert (v2["previous"], v2["current"]) == (None, v1["version"])
    help_text = bundle_cli("install", "-h").output
    assert all(k in help_text for k in v1), help_text  # the help names every key it prints


def test_messages_name_the_archive_and_the_store(bundles, tmp_path):
    store = tmp_path / "bundles"
    line = one_line_error("install", bundles["tampered"], "--store", store)
    assert line == (f"error: bundle refused: bundle {bundles['tampered']}: SHA-256 of model_int8.tflite "
                    "does not match the manifest (tampered or truncated)")
    line = one_line_error("install", bundles["archive"], "--store", "/proc/edge-detect-store")
    assert line == "error: cannot install into /proc/edge-detect-store: No such file or directory"
    assert not list(tmp_path.glob(".*")) and not list(store.glob(".*"))


def _no_dac_override() -> list:
    """The prefix that makes a command obey file permissions: root ignores them otherwise."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("root needs setpriv (util-linux) to test file permissions")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


def test_a_deploy_user_who_may_write_only_the_store_can_install(bundles, tmp_path):
    """The documented layout: /var/lib/edge-detect (0750, not group-writable), its bundles/ (2775)."""
    state = tmp_path / "var-lib-edge-detect"
    store = state / "bundles"
    store.mkdir(parents=True)
    store.chmod(0o2775)
    state.chmod(0o550)
    try:
        r = subprocess.run(_no_dac_override() + [EDGE_DETECT, "bundle", "install", str(bundles["archive"]),
                                                 "--store", str(store)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["current"].startswith("casting-demo-2-")
        assert sorted(p.name for p in state.iterdir()) == ["bundles"]
        assert not list(store.glob(".*"))
    finally:
        state.chmod(0o750)


HOLDER = """
import sys, time
from edge_detect.update import BundleStore
s = BundleStore(sys.argv[1])
with s.scratch("unpack") as unpack, s.scratch("archive") as archive:
    (unpack / "part").write_bytes(b"x" * 1000)
    print(unpack, archive, flush=True)
    sys.stdin.readline()
"""


def _hold_store(store: Path):
    """A process that holds the store with two temporaries in it, as an install does midway."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    temps = [Path(t) for t in p.stdout.readline().split()]
    assert len(temps) == 2 and all(t.is_dir() for t in temps), temps
    return p, temps


def test_leftovers_of_a_killed_install_go_with_the_next_one(bundles, tmp_path):
    store = tmp_path / "bundles"
    p, temps = _hold_store(store)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    old, new = store / ".deploy-0123456789ab.tar.gz", store / ".deploy-ba9876543210.tar.gz"
    for f in (old, new):  # archives `edge-deploy push` copied in: only an abandoned one goes
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    assert all(t.exists() for t in temps)
    ok_json("install", bundles[1], "--store", store)
    assert not any(t.exists() for t in temps) and not old.exists() and new.exists()


def test_an_install_waits_for_another_and_leaves_its_temporaries(bundles, tmp_path):
    store = tmp_path / "bundles"
    p, temps = _hold_store(store)
    try:
        inst = subprocess.Popen([EDGE_DETECT, "bundle", "install", str(bundles["archive"]), "--store", str(store)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert inst.poll() is None and all(t.exists() for t in temps)
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = inst.communicate(timeout=60)
        assert inst.returncode == 0, err
        assert json.loads(out)["current"].startswith("casting-demo-2-")
    finally:
        p.kill()
        p.wait(10)
    assert not list(store.glob(".*"))


@pytest.mark.parametrize("name, starts", [(".hidden", "hidden-1-"), ("-rf", "rf-1-"), ("-.-x", "x-1-")])
def test_a_bundle_whose_name_starts_with_a_dot_or_dash_is_a_listed_version(tmp_path, name, starts):
    """Dot-names are the store's temporaries, and `bundle activate -x-1-...` would read an option:
    version_id() makes neither."""
    from edge_detect.bundle import MANIFEST, write_bundle

    m = json.loads((DEMO_BUNDLE / MANIFEST).read_text())
    m["name"] = name
    files = {v["file"]: DEMO_BUNDLE / v["file"] for v in m["variants"].values()}
    files.update({a["file"]: DEMO_BUNDLE / a["file"] for a in m["arrays"].values()})
    for k in ("files", "created"):
        m.pop(k)
    write_bundle(tmp_path / "b", m, files)
    store = tmp_path / "store"
    r = ok_json("install", tmp_path / "b", "--store", store)
    assert r["version"].startswith(starts)
    assert ok_json("list", "--store", store)["versions"] == [r["version"]]
    assert ok_json("activate", r["version"], "--store", store)["current"] == r["version"]
    # A folder so named by hand is no version: never listed, never a target.
    shutil.copytree(tmp_path / "b", store / "-rf-1-0123456789ab")
    assert ok_json("list", "--store", store)["versions"] == [r["version"]]


def test_a_pushed_archive_does_not_make_a_folder_a_store(bundles, tmp_path):
    """`edge-deploy push` copies its archive into --store before `bundle install`: into a mistyped
    one too, which must still be refused; a new folder holding only that archive is a new store."""
    home = tmp_path / "home"
    user_folder(home)
    pushed = home / ".deploy-0123456789ab.tar.gz"
    shutil.copyfile(bundles["archive"], pushed)
    before = listing(home)
    line = one_line_error("install", pushed, "--store", home)
    assert f"{home} is not a bundle store: it holds other files (backup, code, music, ...)" in line, line
    assert listing(home) == before
    new = tmp_path / "new"
    new.mkdir()
    shutil.copyfile(bundles["archive"], new / pushed.name)
    assert ok_json("install", new / pushed.name, "--store", new)["current"].startswith("casting-demo-2-")


def test_an_install_waits_a_bounded_time_for_a_stuck_holder(bundles, tmp_path):
    from edge_detect.update import BundleStore, StoreError

    store = tmp_path / "bundles"
    p, temps = _hold_store(store)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as e:
            BundleStore(store, wait_s=0.5).install(bundles[1])
        assert str(e.value) == f"{store}: busy: another install has held the store for 0.5 s"
        assert 0.5 <= time.monotonic() - t0 < 10 and all(t.exists() for t in temps)
    finally:
        p.kill()
        p.wait(10)


def test_a_listing_waits_for_a_running_install(bundles, tmp_path):
    """A reader (edge-deploy push after a dropped ssh link) sees where the install left the store."""
    store = tmp_path / "bundles"
    v1 = ok_json("install", bundles[1], "--store", store)["version"]
    p, temps = _hold_store(store)
    try:
        ls = subprocess.Popen([EDGE_DETECT, "bundle", "list", "--store", str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert ls.poll() is None
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = ls.communicate(timeout=60)
        assert ls.returncode == 0, err
        assert json.loads(out) == {"current": v1, "previous": None, "versions": [v1]}
    finally:
        p.kill()
        p.wait(10)


REFUSED_FIRST = """
import sys
from edge_detect.update import BundleStore
with BundleStore(sys.argv[1])._hold(create=True):  # makes the store, as a first install does
    print("held", flush=True)
    sys.stdin.readline()
    raise SystemExit(2)  # refused: the store it made is removed
"""


def test_an_install_waiting_on_a_refused_first_install_makes_the_store_again(bundles, tmp_path):
    store = tmp_path / "bundles"
    p = subprocess.Popen([sys.executable, "-c", REFUSED_FIRST, str(store)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "held\n" and store.is_dir()
        inst = subprocess.Popen([EDGE_DETECT, "bundle", "install", str(bundles[1]), "--store", str(store)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert inst.poll() is None
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(10) == 2
        out, err = inst.communicate(timeout=60)
        assert inst.returncode == 0, err
        assert json.loads(out)["current"].startswith("casting-demo-1-") and (store / "current").is_symlink()
    finally:
        p.kill()
        p.wait(10)


def test_a_store_that_cannot_be_opened_is_not_left_behind(bundles, tmp_path, monkeypatch):
    from edge_detect import update

    store = tmp_path / "bundles"
    real_open = os.open

    def refuse_store(path, *a, **kw):
        if Path(path) == store:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(update.os, "open", refuse_store)
    with pytest.raises(PermissionError):
        update.BundleStore(store).install(bundles[1])
    assert not store.exists()


def test_previous_names_only_an_installed_version(bundles, tmp_path):
    """push rolls back to the install's `previous`: a dangling current is nothing to return to."""
    store = tmp_path / "bundles"
    v1 = ok_json("install", bundles[1], "--store", store)["version"]
    shutil.rmtree(store / v1)
    r = ok_json("install", bundles[2], "--store", store)
    assert r["previous"] is None and r["current"] == r["version"]
    assert not (store / "previous").is_symlink()
