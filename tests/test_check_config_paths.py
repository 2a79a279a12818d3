"""Local paths of a config that are missing here: check-config warns (exit 0), run says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_detect.bundle import BundleError, load_bundle, pack, read_manifest

CLI = str(Path(sys.executable).parent / "edge-detect")
DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "edge_detect" / "data" / "demo" / "bundle"


def _camera(name: str, kind: str, **source: object) -> str:
    opts = "".join(f'{k} = "{v}"\n' for k, v in source.items())
    return f'[[cameras]]\nname = "{name}"\n[cameras.source]\ntype = "{kind}"\n{opts}'


def _config(tmp_path: Path, bundle: Path, watched: Path, extra: str = "") -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(f'[device]\nid = "line1"\n[model]\nbundle = "{bundle}"\n'
                 f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
                 + _camera("front", "directory", path=watched)
                 + _camera("side", "http", url="https://cam-side.invalid/snapshot.jpg") + extra)
    return p


def _check(config: Path) -> list:
    r = subprocess.run([CLI, "check-config", str(config)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout.splitlines()


def test_missing_paths_are_warnings_naming_key_and_path(tmp_path):
    bundle, watched, video = tmp_path / "bundles" / "current", tmp_path / "ftp", tmp_path / "clip.mp4"
    cfg = _config(tmp_path, bundle, watched, _camera("clip", "opencv", url=video)
                  + _camera("stream", "opencv", url="rtsp://cam.invalid/stream1"))
    lines = _check(cfg)
    # The http and rtsp URLs are not looked up.
    assert [x for x in lines if x.startswith("warning: ")] == [
        f"warning: model.bundle: {bundle}: no such file or directory",
        f"warning: cameras[0].source.path: {watched}: no such file or directory",
        f"warning: cameras[2].source.url: {video}: no such file or directory",
    ]
    assert lines[-1] == f"config {cfg}: ok (3 warnings)"


def test_present_paths_give_no_warning(tmp_path):
    (tmp_path / "ftp").mkdir()
    cfg = _config(tmp_path, DEMO_BUNDLE, tmp_path / "ftp")
    lines = _check(cfg)
    assert lines[-1] == f"config {cfg}: ok" and not any(x.startswith("warning") for x in lines)
    archive = pack(DEMO_BUNDLE, tmp_path / "demo.tar.gz")
    assert _check(_config(tmp_path, archive, tmp_path / "ftp"))[-1] == f"config {cfg}: ok"


def test_unusable_paths_are_warnings_with_the_reason(tmp_path):
    empty, junk, not_a_dir = tmp_path / "empty", tmp_path / "junk.tar.gz", tmp_path / "notes.txt"
    empty.mkdir()
    junk.write_text("not an archive\n")
    not_a_dir.write_text("x\n")
    lines = _check(_config(tmp_path, empty, not_a_dir))
    assert lines[-3:] == [f"warning: model.bundle: {empty}: not a bundle (no manifest.json)",
                          f"warning: cameras[0].source.path: {not_a_dir}: not a directory",
                          f"config {tmp_path / 'edge.toml'}: ok (2 warnings)"]
    assert f"warning: model.bundle: {junk}: damaged or truncated archive" in _check(_config(tmp_path, junk, empty))[-2]


def test_read_manifest_checks_the_manifest_of_a_directory_or_archive(tmp_path):
    assert read_manifest(DEMO_BUNDLE)["name"] == read_manifest(pack(DEMO_BUNDLE, tmp_path / "d.tgz"))["name"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"schema_version": 1}')
    with pytest.raises(BundleError, match=r"bad/manifest.json: missing key\(s\) name, "):
        read_manifest(bad)


def _refusal(path: Path) -> str:
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    return str(e.value)


def test_a_bundle_path_that_does_not_exist_is_not_called_a_non_bundle(tmp_path):
    assert _refusal(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such file or directory"
    os.symlink(tmp_path / "v1", tmp_path / "current")  # a current link whose version is gone
    assert _refusal(tmp_path / "current") == f"{tmp_path / 'current'}: no such file or directory"
    # An existing directory without a manifest is still "not a bundle".
    assert _refusal(tmp_path) == f"{tmp_path}: not a bundle (no manifest.json)"


def test_run_names_a_missing_bundle_as_missing(tmp_path):
    (tmp_path / "ftp").mkdir()
    cfg = _config(tmp_path, tmp_path / "nope", tmp_path / "ftp")
    r = subprocess.run([CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"bundle refused: {tmp_path / 'nope'}: no such file or directory" in r.stdout + r.stderr


def test_a_camera_threshold_far_from_the_bundles_is_a_warning(tmp_path):
    (tmp_path / "ftp").mkdir()
    # example.toml's autoencoder threshold with the demo's metric-learning bundle (calibrated 0.7226)
    cfg = _config(tmp_path, DEMO_BUNDLE, tmp_path / "ftp")
    cfg.write_text(cfg.read_text().replace('name = "front"', 'name = "front"\nthreshold = 0.012', 1))
    lines = _check(cfg)
    assert lines[-2].startswith("warning: cameras[0].threshold: 0.012 is 0.0166x the bundle's calibrated 0.7226")
    assert lines[-1] == f"config {cfg}: ok (1 warning)"
    cfg.write_text(cfg.read_text().replace("threshold = 0.012", "threshold = 0.8"))
    assert _check(cfg)[-1] == f"config {cfg}: ok"  # an adjustment near the bundle's own is fine
