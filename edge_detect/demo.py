"""``edge-detect demo``: the whole device path on one machine, with an embedded default for everything.

- the model: the casting bundle shipped in ``edge_detect/data/demo/bundle`` (see its README);
- the camera: a watched directory, fed with the sample captures in ``edge_detect/data/demo/samples``
  (``good/`` and ``defect/``: real casting photos with known labels) the way an industrial
  camera drops files over FTP;
- the broker: ``--broker`` if given, else Mosquitto if it is installed, else amqtt in-process
  (a fresh machine has no Mosquitto; amqtt comes with the ``demo`` extra);
- the daemon: the real :class:`edge_detect.daemon.Daemon` (outbox, publisher, decision);
- the user's side: an :class:`edge_detect.subscribe.AlertSubscriber` printing alerts as they arrive.

It ends with a summary: frames scored, alerts, and accuracy against the samples' labels.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
DEVICE, CAMERA = "demo-line1", "station1"
LABEL_DIRS = {"good": False, "defect": True}  # samples/<dir>/ -> anomalous?
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Echo = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo saw. Counts are frames; accuracy is over the samples with a known label."""

    frames: int = 0
    alerts: int = 0
    rejected: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    seconds: float = 0.0
    broker: str = ""
    model: Dict[str, str] = field(default_factory=dict)
    alerted: List[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        n = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / n if n else float("nan")

    def summary(self) -> str:
        m = self.model
        return "\n".join([
            f"summary: {self.frames} frames scored, {self.alerts} alerts, {self.rejected} images rejected "
            f"in {self.seconds:.1f} s (broker: {self.broker})",
            f"  model     {m.get('name')} {m.get('version')} ({m.get('variant')}, sha256 {m.get('sha256', '')[:12]})",
            f"  defective {self.tp} of {self.tp + self.fn} caught; good {self.tn} of {self.tn + self.fp} passed",
            f"  accuracy  {self.accuracy:.0%} against the samples' labels",
        ])


def samples(directory: Path) -> List[Tuple[Path, bool]]:
    """(image, anomalous?) from ``good/`` and ``defect/``, interleaved so alerts come throughout."""
    groups = [sorted(p for p in (directory / d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
              for d in LABEL_DIRS if (directory / d).is_dir()]
    labels = [lab for d, lab in LABEL_DIRS.items() if (directory / d).is_dir()]
    out: List[Tuple[Path, bool]] = []
    for i in range(max((len(g) for g in groups), default=0)):
        for g, lab in zip(groups, labels):
            if i < len(g):
                out.append((g[i], lab))
    if not out:
        raise FileNotFoundError(f"no sample images under {directory}/good or {directory}/defect")
    return out


def _config(work: Path, bundle: Path, host: str, port: int, inbox: Path):
    from .config import parse_config

    return parse_config({
        "device": {"id": DEVICE, "log_level": "warning"},
        "model": {"bundle": str(bundle), "num_threads": 1, "watch": False},
        "mqtt": {"host": host, "port": port, "protocol": "3.1.1", "discovery": False,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "outbox": {"path": str(work / "outbox.sqlite"), "synchronous": "NORMAL"},
        "stats": {"interval": 60.0, "log": False},
        "cameras": [{"name": CAMERA, "snapshot": False,
                     "source": {"type": "directory", "path": str(inbox), "after": "delete", "settle": 0.0,
                                "poll_interval": 0.05}}],
    }, "<demo>")


def run_demo(
    broker: Optional[str] = None,
    embedded: str = "auto",
    bundle: Optional[Path] = None,
    sample_dir: Optional[Path] = None,
    interval: float = 0.15,
    timeout: float = 45.0,
    echo: Echo = print,
) -> DemoResult:
    """Run the demo; returns the result (the caller prints ``summary()``).

    broker: "host:port" of an existing broker (default: start one, see edge_detect.broker.local_broker).
    interval: s between two captures dropped into the watched directory. timeout: s for the whole run.
    """
    from .broker import local_broker
    from .bundle import load_bundle
    from .daemon import Daemon
    from .subscribe import HEADER, AlertSubscriber, BrokerOptions, format_line, parse_broker

    t0 = time.monotonic()
    bundle = Path(bundle or DEMO_DIR / "bundle")
    items = samples(Path(sample_dir or DEMO_DIR / "samples"))
    b = load_bundle(bundle)
    metrics = b.manifest.get("metrics") or {}
    echo(f"model    {b.name} {b.version} from {bundle}" + (
        f" (test AUROC {metrics['test']['auroc']:.3f})" if isinstance(metrics.get("test"), dict)
        and isinstance(metrics["test"].get("auroc"), (int, float)) else ""))
    emb = None
    with tempfile.TemporaryDirectory(prefix="edge-detect-demo-") as tmp:
        work = Path(tmp)
        try:
            if broker:
                host, port = parse_broker(broker)
                kind = f"{host}:{port}"
            else:
                emb = local_broker(embedded, work / "broker").start()
                host, port = emb.host, emb.port
                kind = f"embedded {emb.kind} on {emb.url}"
            echo(f"broker   {kind}")
            inbox = work / "inbox"
            inbox.mkdir()
            daemon = Daemon(_config(work, bundle, host, port, inbox))
            labels = {p.name: lab for p, lab in items}
            res = DemoResult(broker=kind)
            alerted: Dict[str, dict] = {}
            lock = threading.Lock()

            def on_event(ev: dict) -> None:
                with lock:
                    if not alerted:
                        echo(HEADER)
                    alerted[str((ev.get("extra") or {}).get("image", ev.get("event_id")))] = ev
                echo(format_line(ev) + f"  {(ev.get('extra') or {}).get('image', '')}")

            sub = AlertSubscriber(BrokerOptions(host=host, port=port, protocol="3.1.1"), device=DEVICE,
                                  on_event=on_event)
            sub.connect()
            echo(f"camera   {len(items)} sample captures -> watched directory {inbox}")
            feeder_error: List[BaseException] = []

            def feed() -> None:
                try:
                    while daemon.publisher is None or not daemon.publisher.connected:
                        if daemon.stop_event.is_set() or time.monotonic() - t0 > timeout:
                            return
                        time.sleep(0.02)
                    for p, _ in items:
                        tmp_name = inbox / f".{p.name}.part"  # written like an FTP upload, then renamed
                        shutil.copyfile(p, tmp_name)
                        os.replace(tmp_name, inbox / p.name)
                        time.sleep(interval)
                    # Done when every file was scored, the outbox is empty and the alerts have arrived.
                    while time.monotonic() - t0 < timeout:
                        done = daemon.frames + daemon.rejected + daemon.errors >= len(items)
                        if done and daemon.outbox is not None and daemon.outbox.depth() == 0:
                            with lock:
                                n_alerts = len(alerted)
                            if n_alerts >= daemon.events:
                                break
                        time.sleep(0.05)
                except BaseException as e:  # surfaced after the daemon stopped
                    feeder_error.append(e)
                finally:
                    daemon.request_stop()

            feeder = threading.Thread(target=feed, name="demo-feeder", daemon=True)
            feeder.start()
            code = daemon.run()
            feeder.join(5)
            sub.close()
            if feeder_error:
                raise feeder_error[0]
            if code != 0:
                raise RuntimeError(f"the daemon stopped with exit code {code}")
            res.model = dict(daemon.model.info) if daemon.model else {}
            res.frames, res.rejected, res.alerts = daemon.frames, daemon.rejected, len(alerted)
            for name, anomalous in labels.items():
                hit = name in alerted
                res.tp += hit and anomalous
                res.fn += (not hit) and anomalous
                res.fp += hit and not anomalous
                res.tn += (not hit) and not anomalous
            res.alerted = sorted(alerted)
            res.seconds = time.monotonic() - t0
            return res
        finally:
            if emb is not None:
                emb.close()
