"""A fake device for deploy and update tests: the /etc and /var/lib of a device under a scratch
root, a bundle store holding a first version, a daemon config, and bundles derived from the
tiny test bundle (another version, a model the runtime cannot load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from daemon_helpers import write_config

from edge_detect.bundle import MANIFEST, write_bundle
from edge_detect.update import BundleStore


def derive_bundle(src: Path, out: Path, version: str, model: Optional[bytes] = None) -> Path:
    """A copy of bundle ``src`` as ``version``; ``model`` replaces every variant's .tflite bytes.

    Hashes are recomputed, so the result verifies on any machine; with ``model=b"..."`` garbage it
    loads on none (the device's runtime refuses it when the daemon reloads).
    """
    m = json.loads((src / MANIFEST).read_text())
    m["version"] = version
    for k in ("files", "created"):
        m.pop(k, None)
    files = {v["file"]: (model if model is not None else src / v["file"]) for v in m["variants"].values()}
    arrays = m.pop("arrays", {})
    for a in arrays.values():
        files[a["file"]] = src / a["file"]
    m["arrays"] = arrays
    write_bundle(out, m, files)
    return out


def make_device(root: Path, bundle: Path, broker, device: str, update: str = "", cameras: str = "") -> Path:
    """Lay out the device under ``root``; returns its config path. ``bundle`` becomes the current version."""
    etc, state = root / "etc/edge-detect", root / "var/lib/edge-detect"
    etc.mkdir(parents=True, exist_ok=True)
    (state / "bundles").mkdir(parents=True)
    inbox = root / "srv/inbox"
    inbox.mkdir(parents=True)
    BundleStore(state / "bundles").install(bundle)
    cams = cameras or (f'[[cameras]]\nname = "cam1"\n[cameras.source]\ntype = "directory"\npath = "{inbox}"\n'
                       'poll_interval = 0.1\n')
    cfg = write_config(etc / "edge-detect.toml", device=device, bundle=state / "bundles/current", broker=broker,
                       outbox=state / "outbox.sqlite", cameras=cams, stats_interval=30.0, extra=update)
    # watch = false: the reload has to come from the deploy (SIGHUP) or the update handler, not the file watch.
    cfg.write_text(cfg.read_text().replace("watch_interval = 0.3", "watch = false"))
    return cfg
