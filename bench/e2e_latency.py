"""End-to-end latency (ms): an image file lands in the daemon's watched folder -> a subscriber has the event.

Starts a loopback Mosquitto and the real daemon (``edge-detect run --config``) with a temporary
config: one ``directory`` camera, debounce 1/1, no cooldown, and a threshold of 0 so every
frame is an anomaly and yields exactly one event (snapshot attached, as by default). Then it
drops ``--images`` JPEGs one at a time, each written to ``NAME.part`` and renamed (atomic, as an
FTP upload with a temp suffix lands), and times rename -> event received by an MQTT 5 subscriber
in this process. One file at a time, so the numbers are latency, not queueing.

Two watch profiles by default, because the folder watch dominates:

* ``default``: the shipped ``settle`` and ``poll_interval`` of the directory source (a file must
  stay unchanged for ``settle`` s before it is read, so half-written files are never scored);
* ``fast``: ``settle = 0`` and ``poll_interval = 0.01`` s, safe only when writers rename
  finished files into place (as here).

The event's own ``latency_ms`` breakdown (the daemon's stages) is averaged beside the total.

Usage::

    python bench/e2e_latency.py [--bundle BUNDLE] [--images 50] [--profiles default,fast]

Default bundle: the first under runs/ or bundles/. Writes bench/results/e2e_latency-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import common
import numpy as np
from cold_start_rss import make_image
from latency import find_bundles

from edge_detect.broker import Mosquitto, find_mosquitto

DEVICE = "bench-e2e"
CAMERA = "cam0"
FAST = {"settle": 0.0, "poll_interval": 0.01}


def default_watch() -> Dict[str, float]:
    """The directory source's shipped settle / poll_interval (s), read from the code, not copied."""
    from edge_detect.capture.directory import DirectoryConfig

    f = DirectoryConfig.__dataclass_fields__
    return {"settle": float(f["settle"].default), "poll_interval": float(f["poll_interval"].default)}


def write_config(path: Path, bundle: Path, port: int, inbox: Path, outbox: Path, watch: Dict[str, float],
                 threads: int) -> Path:
    """The daemon's TOML config for this bench (see docs/CONFIG.md for the keys)."""
    path.write_text(f"""
[device]
id = "{DEVICE}"
log_level = "warning"

[model]
bundle = "{bundle}"
num_threads = {threads}
watch = false

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "5"
discovery = false

[outbox]
path = "{outbox}"

[stats]
interval = 3600
log = false

[[cameras]]
name = "{CAMERA}"
threshold = 0.0
debounce_n = 1
debounce_m = 1
cooldown = 0.0

[cameras.source]
type = "directory"
path = "{inbox}"
after = "delete"
settle = {watch["settle"]}
poll_interval = {watch["poll_interval"]}
""")
    return path


class Subscriber:
    """MQTT 5 subscriber in this process: events and the device's status land on queues with receipt times."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.events: queue.Queue[tuple] = queue.Queue()
        self.status: queue.Queue[str] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-e2e-sub", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, r, p: c.subscribe([(f"edge-detect/{DEVICE}/event/+", 1),
                                                               (f"edge-detect/{DEVICE}/status", 1)])
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        now = time.time()
        if msg.topic.endswith("/status"):
            self.status.put(msg.payload.decode(errors="replace"))
        else:
            self.events.put((now, json.loads(msg.payload)))

    def wait_online(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status.get(timeout=max(0.01, deadline - time.monotonic())) == "online":
                    return True
            except queue.Empty:
                return False
        return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def daemon_cmd(config: Path) -> List[str]:
    exe = Path(sys.executable).with_name("edge-detect")
    base = [str(exe)] if exe.exists() else [sys.executable, "-c", "from edge_detect.cli import main; main()"]
    return [*base, "run", "--config", str(config)]


def _wait_event(sub: Subscriber, captured_ms: int, timeout: float) -> Optional[Tuple[float, dict, List[dict]]]:
    """The event whose ``captured_at_ms`` is ``captured_ms`` (+-1 ms rounding): (receipt time, event, others seen).

    Events for other captures (there should be none) are counted, not matched, so a stray or
    duplicate event can never pair with the wrong file.
    """
    deadline = time.monotonic() + timeout
    skipped: List[dict] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            t_recv, ev = sub.events.get(timeout=left)
        except queue.Empty:
            return None
        if abs(int(ev.get("captured_at_ms", -10)) - captured_ms) <= 1:
            return t_recv, ev, skipped
        skipped.append({k: ev.get(k) for k in ("event_id", "captured_at_ms", "published_at_ms")})


def run_profile(name: str, watch: Dict[str, float], bundle: Path, images: int, gap: float, threads: int,
                frame: bytes, timeout: float) -> Dict[str, Any]:
    """Start broker + daemon, drop ``images`` files one by one; per-file latency (ms) and the daemon's breakdown."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-e2e-{name}-"))
    inbox = tmp / "in"
    inbox.mkdir()
    samples: List[float] = []
    stages: Dict[str, List[float]] = {}
    missed = 0
    others: List[dict] = []
    matched: List[dict] = []
    daemon: Optional[subprocess.Popen] = None
    sub: Optional[Subscriber] = None
    try:
        with Mosquitto(log=False) as broker:
            cfg = write_config(tmp / "edge-detect.toml", bundle, broker.port, inbox, tmp / "outbox.sqlite", watch,
                               threads)
            sub = Subscriber(broker.port)
            log = open(tmp / "daemon.log", "wb")  # closed once the daemon has exited
            daemon = subprocess.Popen(daemon_cmd(cfg), stdout=log, stderr=subprocess.STDOUT)
            if not sub.wait_online(60):
                raise RuntimeError(f"daemon never came online:\n{(tmp / 'daemon.log').read_text()[-3000:]}")
            # One untimed file first: the first frame pays lazy allocations and the JPEG codec's start-up.
            for i in range(images + 1):
                part = inbox / f"frame{i:05d}.jpg.part"
                part.write_bytes(frame)
                # The daemon's capture time of a dropped file is its mtime: that pairs an event with its file.
                want_ms = round(part.stat().st_mtime_ns / 1e6)
                t_land = time.time()
                os.replace(part, inbox / f"frame{i:05d}.jpg")
                got = _wait_event(sub, want_ms, timeout)
                if got is None:
                    missed += 1
                    if daemon.poll() is not None:
                        raise RuntimeError(f"daemon exited:\n{(tmp / 'daemon.log').read_text()[-3000:]}") from None
                    continue
                t_recv, ev, skipped = got
                others += skipped
                matched.append({k: ev.get(k) for k in ("event_id", "captured_at_ms", "published_at_ms")})
                if i == 0:
                    continue
                samples.append((t_recv - t_land) * 1e3)
                for k, v in (ev.get("latency_ms") or {}).items():
                    stages.setdefault(k, []).append(float(v))
                time.sleep(gap)
            daemon.terminate()
            daemon.wait(30)
            log.close()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if sub is not None:
            sub.close()
        shutil.rmtree(tmp, ignore_errors=True)
    st = common.latency_summary(samples)
    return {
        "row": {"profile": name, "settle_s": watch["settle"], "poll_s": watch["poll_interval"],
                "n": st["n"], "missed": missed, "other_events": len(others), "p50_ms": st.get("p50"),
                "p99_ms": st.get("p99"), "max_ms": st.get("max"), **_split(st.get("p50"), stages)},
        "stages_median_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
        "samples_ms": samples,
        # Events that matched no file just dropped: a repeat of a matched id is an MQTT redelivery.
        "other_events": [{**o, "index_of_matched": next((i for i, m in enumerate(matched)
                                                         if m["event_id"] == o["event_id"]), None),
                          "same_payload": any(m == o for m in matched)} for o in others],
    }


def _split(p50: Optional[float], stages: Dict[str, List[float]]) -> Dict[str, Optional[float]]:
    """Where the median goes, from the events' own ``latency_ms`` (ms).

    ``capture_to_decision`` runs from the frame's capture time (the file's mtime, so it includes the
    watch's settle and poll wait) to the verdict; model = preprocess + invoke + score; the rest of
    the total is outbox, MQTT and the subscriber.
    """
    med = {k: float(np.median(v)) for k, v in stages.items()}
    model = sum(med.get(k, 0.0) for k in ("preprocess", "invoke", "score")) if med else None
    decision = med.get("capture_to_decision")
    after = p50 - decision if p50 is not None and decision is not None else None
    return {"model_ms": None if model is None else round(model, 2),
            "to_decision_ms": None if decision is None else round(decision, 2),
            "after_decision_ms": None if after is None else round(after, 2)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: the first under runs/ or bundles/)")
    ap.add_argument("--images", type=int, default=50, help="files per profile")
    ap.add_argument("--profiles", default="default,fast", help="comma list of default, fast")
    ap.add_argument("--gap", type=float, default=0.05, help="s between one event and the next file")
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads in the daemon")
    ap.add_argument("--timeout", type=float, default=10.0, help="s to wait for each event before counting a miss")
    ap.add_argument("--image", type=Path, help="JPEG to drop (default: a generated 300x300 one)")
    ap.add_argument("--plot", default=str(common.RESULTS_DIR / "e2e_latency_cdf.png"),
                    help="CDF plot PNG ('' for none); docs/img/e2e_latency_cdf.png is the one docs/BENCHMARKS.md shows")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    a = ap.parse_args(argv)
    bundles = [a.bundle] if a.bundle else find_bundles()
    if not bundles:
        print("error: no bundle: pass --bundle (none under runs/ or bundles/)", file=sys.stderr)
        return 2
    bundle = bundles[0].resolve()
    if find_mosquitto() is None:
        print("error: mosquitto not found (sudo apt-get install mosquitto)", file=sys.stderr)
        return 2
    from edge_detect.bundle import load_bundle

    b = load_bundle(bundle)
    if a.image:
        frame = a.image.read_bytes()
    else:
        tmpimg = Path(tempfile.mkdtemp(prefix="bench-e2e-img-")) / "frame.jpg"
        frame = make_image(b.preprocess.shape, tmpimg).read_bytes()
    profiles = {"default": default_watch(), "fast": FAST}
    wanted = [p for p in a.profiles.split(",") if p]
    if not wanted or set(wanted) - set(profiles):
        ap.error(f"--profiles must name some of {', '.join(profiles)}")
    info = common.machine_info()
    print(common.machine_line(info))
    print(f"bundle {bundle} ({b.name}, input {'x'.join(map(str, b.preprocess.shape))}), "
          f"{a.images} files per profile, {len(frame)} bytes each")
    results = {p: run_profile(p, profiles[p], bundle, a.images, a.gap, a.threads, frame, a.timeout) for p in wanted}
    info["load_avg_after"] = common.load_average()
    rows = [r["row"] for r in results.values()]
    common.print_table(rows, title="file landed -> event received (ms)", digits=2)
    for p, r in results.items():
        print(f"  {p}: daemon stages (median ms) {r['stages_median_ms']}")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for p, r in results.items():
            xs, ys = common.cdf_points(r["samples_ms"])
            ax.plot(xs, ys, label=f"{p} (settle {r['row']['settle_s']} s, poll {r['row']['poll_s']} s)")
        ax.set_xscale("log")
        ax.set_xlabel("file landed -> event at subscriber (ms, log)")
        ax.set_ylabel("fraction of files")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"daemon end-to-end latency, {b.name}", fontsize=9)
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=110)
        plt.close(fig)
        print(f"plot: {a.plot}")
    out = common.write_result("e2e_latency", {"bundle": str(bundle), "images": a.images, "rows": rows,
                                              "profiles": results}, out_dir=a.out, machine=info)
    print(f"results: {out}")
    return 0 if all(r["row"]["missed"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
