"""The systemd unit: `systemd-analyze verify` passes, its exposure stays low, and the runtime
tolerates MemoryDenyWriteExecute=yes and SystemCallFilter=~@resources (checked with the same
seccomp rules, without systemd: tests/native/mdwx_exec.c)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-detect.service"
EXEC = "/opt/edge-detect/venv/bin/edge-detect"  # ExecStart's binary, as the platform scripts install it


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _fake_root(tmp: Path, unit_text: str, name: str = "edge-detect.service") -> Path:
    """A filesystem root holding what `verify` looks up: the unit, its executables, the system's targets."""
    (tmp / "etc/systemd/system").mkdir(parents=True)
    (tmp / "etc/systemd/system" / name).write_text(unit_text)
    for binary in (EXEC, "/bin/kill"):
        p = tmp / binary.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    units = next((d for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if d.is_dir()), None)
    if units is None:
        pytest.skip("no systemd unit directory on this machine (sysinit.target etc. are needed by verify)")
    shutil.copytree(units, tmp / "usr/lib/systemd/system", symlinks=True)
    return tmp


def _verify(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([_analyze(), "verify", f"--root={root}", "--man=no", f"/etc/systemd/system/{name}"],
                          capture_output=True, text=True, timeout=60)


def test_unit_verifies_cleanly(tmp_path):
    r = _verify(_fake_root(tmp_path / "ok", UNIT.read_text()), "edge-detect.service")
    assert r.returncode == 0, r.stderr
    # verify exits 0 on unknown keys and only warns: any output is a problem.
    assert r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt key and a missing executable are reported."""
    text = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=").replace(EXEC + " run", "/nonexistent run")
    r = _verify(_fake_root(tmp_path / "bad", text), "edge-detect.service")
    out = r.stderr + r.stdout
    assert "WatchdogSecs" in out and "/nonexistent" in out


def test_unit_hardening_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "User=edge-detect", "DynamicUser=no", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "DevicePolicy=closed", "ReadWritePaths=/var/lib/edge-detect",
                 "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "Restart=on-failure"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^StartLimitBurst=\d+", text, re.M) and re.search(r"^StartLimitIntervalSec=\d+", text, re.M)
    allowed = re.findall(r"^DeviceAllow=(\S+)", text, re.M)
    assert sorted(allowed) == ["/dev/apex_0", "char-usb_device", "char-video4linux"]


def test_exposure_score_matches_docs():
    """`systemd-analyze security --offline=yes` scores the unit; docs/SERVICE.md quotes that number."""
    r = subprocess.run([_analyze(), "security", "--offline=yes", str(UNIT)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for edge-detect\.service: (\d+\.\d+)", r.stdout + r.stderr)
    if m is None and "--offline" in r.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {r.stderr.strip()}")
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    assert score <= 2.0
    assert f"**{score:.1f}**" in (ROOT / "docs" / "SERVICE.md").read_text()


@pytest.fixture(scope="module")
def mdwx_exec(build_native) -> Path:
    return build_native("mdwx_exec.c")


@pytest.mark.parametrize("code", [
    "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)",
    "import os; os.sched_setaffinity(0, {0})",
])
def test_launcher_denies_what_the_unit_denies(mdwx_exec, code):
    r = subprocess.run([str(mdwx_exec), sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr


def test_runtime_tolerates_memory_deny_write_execute(mdwx_exec, tiny_bundle, tmp_path):
    """Load and invoke a real .tflite with LiteRT (XNNPACK, 2 threads), decode images, verify an
    Ed25519 signature and import the MQTT client, all under the W^X and ~@resources rules."""
    from tiny_bundle import anomalous_image, encode, normal_image

    bundle, _ = tiny_bundle
    import numpy as np

    rng = np.random.default_rng(1)
    imgs = []
    for i, img in enumerate((normal_image(rng), anomalous_image(rng))):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(encode(img, "JPEG"))
        imgs.append(str(p))
    code = (
        "import sys, json; from click.testing import CliRunner; from edge_detect.cli import main\n"
        "import paho.mqtt.client, edge_detect.daemon, edge_detect.publisher\n"
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
        "k = Ed25519PrivateKey.generate(); k.public_key().verify(k.sign(b'x'), b'x')\n"
        "r = CliRunner().invoke(main, ['score', '--threads', '2', '--json', *sys.argv[1:]])\n"
        "print(r.output); sys.exit(r.exit_code)\n"
    )
    r = subprocess.run([str(mdwx_exec), sys.executable, "-c", code, str(bundle), *imgs], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    verdicts = [__import__("json").loads(line)["anomalous"] for line in r.stdout.splitlines() if line.startswith("{")]
    assert verdicts == [False, True]


def test_every_log_event_is_documented_and_every_documented_one_exists():
    """docs/SERVICE.md's "Log events" table against the names the device code logs."""
    code = "".join(f.read_text() for f in (ROOT / "edge_detect").rglob("*.py"))
    used = set(re.findall(r'(?:_ev|\bevent)\("([a-z_]+)"', code))
    announced = re.findall(r'_announce_model\("([a-z]+)"\)', code)  # logged as "model_" + what
    used = {n for n in used if n != "model_"} | {"model_" + w for w in announced}
    doc = (ROOT / "docs" / "SERVICE.md").read_text().split("## Log events", 1)[1].split("\n## ", 1)[0]
    documented = {n for row in doc.splitlines() if row.startswith("| `")
                  for n in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert used == documented, (sorted(used - documented), sorted(documented - used))
