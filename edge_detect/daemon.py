"""The long-running device process: cameras -> preprocess -> model -> decision -> outbox -> MQTT.

Threads: one capture thread per camera (open with backoff, trigger, read, stall detection)
hands frames to the main thread, which scores them one at a time, decides, and queues events
in the outbox; the publisher's threads deliver them. Signals only set flags; the main thread
acts on them between frames, so SIGTERM finishes the current frame, flushes and publishes
``offline``, and SIGHUP reloads the bundle without a half-scored frame.

Hot path per normal frame: one decode (JPEG draft mode), one invoke, one score, a few float
operations; no JSON, no logging, no per-frame dicts. Events (rare after debounce and cooldown)
pay for JSON, snapshot and heatmap.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

import numpy as np

from .bundle import ARCHIVE_SUFFIXES, BundleError, load_bundle
from .capture import Frame, Source, SourceError, make_source
from .config import CameraConfig, Config, camera_interval
from .decision import Decision
from .detector import Detector
from .logs import event as _ev
from .notify import Notifier
from .preprocess import ImageError, Preprocess
from .runtime import AcceleratorRequired

log = logging.getLogger("edge_detect.daemon")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_MODEL = 0, 1, 2, 3
LATENCY_WINDOW = 4096  # frames kept for latency percentiles
STORE_RETRY_S = 5.0  # s before a frame whose event the outbox could not store is read again
_EVENT_NS = uuid.UUID("6f1b8f52-3c1e-4c57-9a55-2f0e6d1de7a1")


def stable_event_id(device: str, camera: str, key: str, t_capture: float) -> str:
    """A UUIDv7-shaped id that is the same every time the same frame is processed.

    A dropped file processed again after a crash (scored, queued, then SIGKILL before it was
    moved) must not become a second alert: the capture time is the 48-bit timestamp (ids still
    sort by time) and a hash of device/camera/file identity fills the rest.
    """
    ms = max(0, int(t_capture * 1000)) & ((1 << 48) - 1)
    h = int.from_bytes(hashlib.sha256(f"{device}/{camera}/{key}".encode()).digest()[:10], "big")
    rand_a = h >> 68 & 0xFFF
    rand_b = h & ((1 << 62) - 1)
    return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


# -- frame hand-off between capture threads and the main thread ------------------------------------


class Inbox:
    """Per-camera bounded frame queues, served round-robin so one busy camera can't starve another."""

    def __init__(self, names: List[str]) -> None:
        self._cond = threading.Condition()
        self._queues: Dict[str, Deque[Frame]] = {n: deque() for n in names}
        self._order = list(names)
        self._next = 0

    def put(self, camera: str, frame: Frame, cap: int, block: bool, stop: threading.Event) -> Optional[Frame]:
        """Queue a frame; returns the frame dropped to make room (streams), or None.

        block: wait for room instead (a watched directory: the files wait on disk, nothing is lost).
        """
        with self._cond:
            q = self._queues[camera]
            dropped = None
            while len(q) >= cap:
                if not block:
                    dropped = q.popleft()
                    break
                if stop.is_set():
                    return frame  # shutting down: hand it back unprocessed
                self._cond.wait(0.2)
            q.append(frame)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Optional[Tuple[str, Frame]]:
        with self._cond:
            for attempt in range(2):
                n = len(self._order)
                for i in range(n):
                    name = self._order[(self._next + i) % n]
                    q = self._queues[name]
                    if q:
                        self._next = (self._next + i + 1) % n
                        frame = q.popleft()
                        self._cond.notify_all()  # a blocked producer may go on
                        return name, frame
                if attempt == 0:
                    self._cond.wait(timeout)
            return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


# -- cameras ------------------------------------------------------------------------------------


@dataclass
class CameraStats:
    frames: int = 0
    events: int = 0
    rejected: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    state: str = "starting"  # starting, ok (the source answers), down (it raises)
    stalled: bool = False  # no frame for stall_timeout s
    last_error: Optional[str] = None
    last_frame: Optional[float] = None  # monotonic s


class CameraWorker:
    """One camera's capture thread: open with backoff, wait for the trigger, read, hand over."""

    def __init__(self, cfg: Config, cam: CameraConfig, inbox: Inbox, stop: threading.Event) -> None:
        self.cfg = cam
        self.name = cam.name
        self.source: Source = make_source(cam.source_type, cam.source, cam.name)
        self.inbox = inbox
        self.stop = stop
        self.stats = CameraStats()
        self.interval = camera_interval(cam) if cam.trigger.type == "interval" else None
        # Parts reach a watched directory when the line makes them: quiet there is no fault unless the
        # camera sets its own stall_timeout.
        self.stall_timeout = cam.stall_timeout or (None if cam.source_type == "directory"
                                                    else cfg.health.stall_timeout)
        if self.stall_timeout is None:  # said once: earlier versions applied health.stall_timeout here too
            log.info("camera %s: no stall check on a watched directory (set the camera's stall_timeout for one)",
                     cam.name, extra=_ev("stall_check_off", camera=cam.name))
        self.backoff_min, self.backoff_max = cfg.health.reconnect_min, cfg.health.reconnect_max
        # Directory files wait on disk when the model is busy; a stream drops its oldest frame.
        self.block = cam.source_type == "directory"
        self.trigger = threading.Event()  # set by a "capture" command (mqtt trigger)
        self.lock = threading.Lock()  # source.done() from the main thread vs open/close here
        self.thread = threading.Thread(target=self._run, name=f"camera-{cam.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _set_state(self, state: str, why: Optional[str] = None) -> None:
        """state: ok (the source answers) or down (it raises); logged once per change."""
        old = self.stats.state
        self.stats.state = state
        if why:
            self.stats.last_error = why
        if state == old:
            return
        if state == "down":
            log.warning("camera %s is down: %s", self.name, why, extra=_ev("camera_down", camera=self.name, error=why))
        elif old == "down":
            log.info("camera %s is back", self.name, extra=_ev("camera_recovered", camera=self.name))

    def _set_stalled(self, stalled: bool) -> None:
        """A camera that delivers no frame for stall_timeout s (down, or up but silent) is stalled."""
        if stalled == self.stats.stalled:
            return
        self.stats.stalled = stalled
        if stalled:
            self.stats.stalls += 1
            log.warning("camera %s delivered nothing for %g s", self.name, self.stall_timeout,
                        extra=_ev("camera_stalled", camera=self.name, stall_timeout_s=self.stall_timeout,
                                  state=self.stats.state, error=self.stats.last_error))
        else:
            log.info("camera %s delivers again", self.name, extra=_ev("camera_unstalled", camera=self.name))

    def _failed(self, why: str) -> None:
        """The source raised (on open or read): report, then wait with exponential backoff."""
        self.stats.errors += 1
        self._set_state("down", why)
        self._check_stall()
        self.stop.wait(self._delay)  # woken early by shutdown
        self._delay = min(self._delay * 2, self.backoff_max)

    def _open(self) -> None:
        while not self.stop.is_set():
            try:
                with self.lock:
                    self.source.open()
                return
            except SourceError as e:
                self._failed(str(e))
                self.stats.reconnects += 1

    def _check_stall(self) -> None:
        if self.stall_timeout is None:
            return  # a watched directory without its own stall_timeout: quiet is normal there
        if self.interval is None and not self._waiting:
            return  # an mqtt-triggered camera is only late while a capture is asked for
        since = self.stats.last_frame if self.stats.last_frame is not None else self._started
        if not self.stats.stalled and time.monotonic() - max(since, self._started) > self.stall_timeout:
            self._set_stalled(True)

    def _run(self) -> None:
        self._started = time.monotonic()
        self._waiting = False
        self._delay = self.backoff_min
        self._open()
        next_due = time.monotonic()
        while not self.stop.is_set():
            if self.interval is None:  # mqtt trigger
                if not self._waiting:
                    if not self.trigger.wait(0.5):
                        continue
                    self.trigger.clear()
                    self._waiting = True
                    self._started = time.monotonic()
            elif self.interval > 0:
                wait = next_due - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    break
                next_due = max(next_due + self.interval, time.monotonic())
            try:
                frame = self.source.read(0.5)
            except Exception as e:
                if not isinstance(e, SourceError):  # a plugin bug must not end the camera thread for good
                    log.exception("camera %s: source failed", self.name, extra=_ev("camera_error", camera=self.name))
                with self.lock:
                    self.source.close()
                self._failed(str(e) if isinstance(e, SourceError) else f"{type(e).__name__}: {e}")
                self.stats.reconnects += 1
                self._open()
                continue
            # The source answered (a frame, or a successful look with nothing new): it is up.
            self._delay = self.backoff_min
            self._set_state("ok")
            if frame is None:
                self._check_stall()
                continue
            self._waiting = False
            self.stats.last_frame = time.monotonic()
            self._set_stalled(False)
            dropped = self.inbox.put(self.name, frame, self.cfg.queue, self.block, self.stop)
            if dropped is frame:
                break  # shutting down
            if dropped is not None:
                self.stats.dropped += 1
        with self.lock:
            self.source.close()

    def retry(self, frame: Frame) -> None:
        with self.lock:
            self.source.retry(frame, STORE_RETRY_S)

    def incomplete(self, frame: Frame) -> bool:
        with self.lock:
            return self.source.incomplete(frame)

    def done(self, frame: Frame, ok: bool) -> None:
        try:
            with self.lock:
                self.source.done(frame, ok)
        except SourceError as e:
            self.stats.errors += 1
            log.error("camera %s: %s", self.name, e, extra=_ev("camera_error", camera=self.name, error=str(e)))

    def capture_now(self) -> None:
        self.trigger.set()


# -- the model ----------------------------------------------------------------------------------


@dataclass
class Model:
    """A loaded bundle and what each camera needs from it."""

    detector: Detector
    signature: Tuple
    extracted: Optional[Path] = None
    preprocess: Dict[str, Preprocess] = field(default_factory=dict)
    info: Dict[str, str] = field(default_factory=dict)
    heatmapper: Any = None


def bundle_signature(path: Path) -> Tuple:
    """What changes when a new bundle is put in place (write_bundle renames a new directory in)."""
    try:
        if path.is_dir():
            d, m = path.stat(), (path / "manifest.json").stat()
            return (d.st_ino, m.st_ino, m.st_mtime_ns, m.st_size)
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return ()


def load_model(cfg: Config) -> Model:
    """Load, verify and smoke-test the configured bundle. Raises BundleError / AcceleratorRequired."""
    m = cfg.model
    path = Path(m.bundle)
    sig = bundle_signature(path)
    extracted = None
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        extracted = Path(tempfile.mkdtemp(prefix="edge-detect-bundle-"))
    try:
        bundle = load_bundle(path, verify=True, extract_to=extracted)
        det = Detector(bundle, variant=m.variant or None, num_threads=m.num_threads or None,
                       delegate=m.accelerator, require_accelerator=m.require_accelerator)
        # One zero frame through model and scorer: a bundle that loads but can't run is refused here,
        # before it replaces a working one.
        x = np.zeros(det.preprocess.shape, np.float32)[None]
        maps = det.scorer(x, det.model(x))[1]
    except (BundleError, AcceleratorRequired):
        if extracted:
            shutil.rmtree(extracted, ignore_errors=True)
        raise
    except (ValueError, RuntimeError, OSError, KeyError, TypeError) as e:
        if extracted:
            shutil.rmtree(extracted, ignore_errors=True)
        raise BundleError(f"{path}: {type(e).__name__}: {e}") from None
    model = Model(det, sig, extracted)
    model.info = {"name": det.bundle.name, "version": str(det.bundle.version), "sha256": det.model_sha256,
                  "variant": det.variant}
    for cam in cfg.cameras:
        model.preprocess[cam.name] = det.preprocess.with_roi(cam.roi) if cam.roi else det.preprocess
    asking = [c.name for c in cfg.cameras if c.heatmap]
    if maps is None:
        if asking:  # else heatmap = true would go quietly unanswered
            why = f"its {det.bundle.manifest.get('family', 'model')} scorer makes no error map"
            log.warning("heatmaps off for this bundle (cameras %s ask for them): %s", ", ".join(asking), why,
                        extra=_ev("heatmap_off", error=why, cameras=asking))
        return model
    try:
        from .heatmap import Heatmapper

        model.heatmapper = Heatmapper(det)
    except Exception as e:  # heatmaps are a nicety: a bundle without what they need still scores
        log.warning("heatmaps off for this bundle: %s", e, extra=_ev("heatmap_off", error=str(e)))
    return model


# -- statistics ---------------------------------------------------------------------------------


class Latency:
    """Per-frame latency (ms) in a preallocated ring: no allocation per frame."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._buf = np.zeros(size, np.float64)
        self._n = 0

    def add(self, ms: float) -> None:
        self._buf[self._n % len(self._buf)] = ms
        self._n += 1

    def percentiles(self) -> Dict[str, Optional[float]]:
        k = min(self._n, len(self._buf))
        if k == 0:
            return {"p50": None, "p95": None, "p99": None}
        p = np.percentile(self._buf[:k], [50, 95, 99])
        return {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3), "p99": round(float(p[2]), 3)}


def rss_mb() -> Optional[float]:
    """Resident set size of this process, MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return None


# -- snapshot ---------------------------------------------------------------------------------


def snapshot_jpeg(data: Any, quality: int = 85, bit_depth: int = 16) -> Optional[bytes]:
    """The frame as JPEG: a JPEG file as it came (no re-encode), anything else encoded once
    (16-bit frames reduced to 8 bits as the model input is: ``bit_depth`` significant bits).

    A JPEG whose EXIF turns it (orientation tag != 1) is re-encoded without EXIF: the model and
    the event's regions see the stored pixel grid, and a viewer that obeys the tag would show
    the picture rotated away from its region boxes."""
    from PIL import Image

    from .preprocess import eight_bit

    if isinstance(data, (bytes, bytearray)) and data[:2] == b"\xff\xd8" and not _exif_turned(data):
        return bytes(data)
    try:
        if isinstance(data, np.ndarray):
            img = Image.fromarray(data)
        else:
            img = Image.open(io.BytesIO(bytes(data)))
            img.load()
        img = eight_bit(img, bit_depth)
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    except Exception:  # the frame scored fine; a snapshot that can't be made is only left out
        return None


_EXIF_ORIENTATION = 0x0112


def _exif_turned(jpeg: Union[bytes, bytearray]) -> bool:
    """Whether a JPEG's EXIF orientation asks viewers to rotate or mirror it (header only, no decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            return img.getexif().get(_EXIF_ORIENTATION, 1) != 1
    except Exception:  # unreadable header: pass the bytes through as before
        return False


# -- the daemon ---------------------------------------------------------------------------------


class Daemon:
    """Everything the ``run`` command starts. ``run()`` returns the process exit code."""

    def __init__(self, cfg: Config, notifier: Optional[Notifier] = None) -> None:
        self.cfg = cfg
        self.device = cfg.device.id
        self.notifier = notifier or Notifier.from_env()
        self.stop_event = threading.Event()
        self._reload_reason: Optional[str] = None
        self._stats_now = False
        self.model: Optional[Model] = None
        self.workers: Dict[str, CameraWorker] = {}
        self.decisions: Dict[str, Decision] = {}
        self.inbox = Inbox([c.name for c in cfg.cameras])
        self.latency = Latency()
        self.frames = 0
        self.events = 0
        self.rejected = 0
        self.errors = 0
        self.events_refused = 0
        self._outbox_error: Optional[str] = None  # the last outbox_restore_failed, logged once
        self.reloads = {"ok": 0, "failed": 0, "last_error": None, "last_at": None}
        self.started = time.monotonic()
        self.first_event_s: Optional[float] = None
        self.outbox: Any = None
        self.publisher: Any = None
        self.updater: Any = None  # edge_detect.update.Updater when [update] enabled

    # -- signals and commands (any thread) ------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()
        self.inbox.wake()

    def request_reload(self, reason: str = "SIGHUP") -> None:
        self._reload_reason = reason
        self.inbox.wake()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.request_reload("SIGHUP")
        else:
            self.request_stop()

    def on_command(self, cmd: Dict[str, Any]) -> None:
        """Commands from the device's MQTT command topic (publisher's command thread)."""
        name = cmd.get("cmd")
        if name == "capture":
            cam = cmd.get("camera")
            targets = [w for w in self.workers.values() if (cam is None and w.interval is None) or w.name == cam]
            if not targets:
                self.publisher.report(cmd, False, f"no camera {cam!r}" if cam else "no mqtt-triggered camera")
                return
            if targets[0].interval is not None:  # a named camera that captures on its own schedule
                self.publisher.report(cmd, False, f"camera {cam!r} is not mqtt-triggered (trigger type "
                                      f"{targets[0].cfg.trigger.type!r}): it captures on its own")
                return
            for w in targets:
                w.capture_now()
            self.publisher.report(cmd, True, f"capture on {', '.join(w.name for w in targets)}")
        elif name == "reload":
            self.request_reload("command")
            self.publisher.report(cmd, True, "reload requested")
        elif name == "stats":
            self._stats_now = True
            self.publisher.report(cmd, True, "stats requested")
        elif name == "update":
            if self.updater is None:
                self.publisher.report(cmd, False, "updates over MQTT are off on this device ([update] enabled)")
            else:
                self.updater.handle(cmd)  # verified, installed and reported by edge_detect.update
        else:
            self.publisher.report(cmd, False, f"unknown command {name!r} (capture, reload, stats, update)")

    def _make_updater(self) -> Any:
        """The signed-update handler when ``[update] enabled`` (edge_detect/update.py), else None."""
        u = self.cfg.update
        if not u.enabled:
            return None
        from dataclasses import replace as _replace

        from .signing import load_trusted_keys
        from .update import BundleStore, Updater

        def trial_load(path: Path) -> None:
            # The device's own runtime and accelerator settings: a bundle that would not load here
            # is refused before `current` moves. AcceleratorRequired is a refusal too.
            try:
                m = load_model(_replace(self.cfg, model=_replace(self.cfg.model, bundle=str(path))))
            except AcceleratorRequired as e:
                raise BundleError(f"accelerator required but unavailable: {e}") from None
            if m.extracted:
                shutil.rmtree(m.extracted, ignore_errors=True)

        return Updater(BundleStore(u.bundles_dir, u.keep), load_trusted_keys(u.trusted_keys),
                       report=self.publisher.report,
                       status=lambda body: self.publisher.publish_status_detail("update", body),
                       check=trial_load, reload=lambda: self.request_reload("update"), max_bytes=u.max_bytes)

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.model = load_model(self.cfg)
        except AcceleratorRequired as e:
            log.error("accelerator required but unavailable: %s", e, extra=_ev("accelerator_required", error=str(e)))
            return EXIT_MODEL
        except BundleError as e:
            log.error("bundle refused: %s", e, extra=_ev("bundle_refused", error=str(e)))
            return EXIT_MODEL
        self._announce_model("loaded")
        for cam in self.cfg.cameras:
            self.decisions[cam.name] = self._decision(cam)

        from .outbox import open_outbox
        from .publisher import Publisher

        o = self.cfg.outbox
        try:
            self.outbox, aside = open_outbox(o.path, o.max_messages, o.max_bytes, o.policy, o.synchronous)
        except (sqlite3.Error, OSError) as e:
            log.error("outbox %s cannot be opened: %s", o.path, e,
                      extra=_ev("outbox_unusable", path=str(o.path), error=str(e)))
            if self.model.extracted:
                shutil.rmtree(self.model.extracted, ignore_errors=True)
            return EXIT_ERROR
        if aside is not None:
            log.error("outbox %s was not a readable database: moved aside to %s, starting empty", o.path, aside,
                      extra=_ev("outbox_corrupt", path=str(o.path), moved_to=str(aside)))
        self.publisher = Publisher(self.cfg.mqtt, self.device, self.outbox,
                                   cameras=[c.name for c in self.cfg.cameras], on_command=self.on_command)
        self.updater = self._make_updater()
        self.publisher.start()

        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for cam in self.cfg.cameras:
                w = CameraWorker(self.cfg, cam, self.inbox, self.stop_event)
                self.workers[cam.name] = w
                w.start()
            self.notifier.ready(self._status_line())
            log.info("daemon started", extra=_ev("started", device=self.device, cameras=list(self.workers),
                                                 outbox_depth=self.outbox.depth(),
                                                 startup_ms=round((time.monotonic() - self.started) * 1e3, 1)))
            self._loop()
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return EXIT_OK

    def _decision(self, cam: CameraConfig) -> Decision:
        det = self.model.detector
        thr = cam.threshold if cam.threshold is not None else det.threshold
        return Decision(thr, det.center, cam.debounce_n, cam.debounce_m, cam.cooldown)

    def _announce_model(self, what: str) -> None:
        det = self.model.detector
        fb = det.model.fallback
        log.info("model %s: %s %s (%s) on %s", what, det.bundle.name, det.bundle.version, det.variant,
                 det.model.accelerator,
                 extra=_ev("model_" + what, model=self.model.info, accelerator=det.model.accelerator,
                           backend=det.model.backend, fallback=fb, threshold=det.threshold))
        if fb:
            # The one clear line the issue asks for; the stats topic carries the same reason.
            log.warning("accelerator fallback: running on the CPU because %s", fb,
                        extra=_ev("accelerator_fallback", reason=fb))

    def _check_outbox(self) -> None:
        """The outbox file deleted or replaced under the running daemon (an operator's ``rm``, a
        cleanup script): write it out again with every pending message, and say so once."""
        try:
            what = self.outbox.restore_if_gone()
        except (sqlite3.Error, OSError) as e:
            if self._outbox_error != str(e):
                self._outbox_error = str(e)
                log.error("outbox %s was deleted or replaced and cannot be written again: %s", self.outbox.path, e,
                          extra=_ev("outbox_restore_failed", path=str(self.outbox.path), error=str(e)))
            return
        if what:
            self._outbox_error = None
            log.warning("%s", what, extra=_ev("outbox_restored", path=str(self.outbox.path),
                                               outbox_depth=self.outbox.depth()))

    def _loop(self) -> None:
        next_stats = time.monotonic() + self.cfg.stats.interval
        next_outbox = time.monotonic() + 1.0
        next_watch = time.monotonic() + self.cfg.model.watch_interval
        stats_every = self.cfg.stats.interval
        notifier = self.notifier
        while not self.stop_event.is_set():
            item = self.inbox.get(0.2)
            if item is not None:
                self._process(*item)
            now = time.monotonic()
            if notifier.watchdog_due(now) and self.cfg.health.watchdog:
                notifier.watchdog()
            if self._reload_reason is not None:
                reason, self._reload_reason = self._reload_reason, None
                self.reload(reason)
            if self.cfg.model.watch and now >= next_watch:
                next_watch = now + self.cfg.model.watch_interval
                if bundle_signature(Path(self.cfg.model.bundle)) not in ((), self.model.signature):
                    self.reload("new bundle")
            if now >= next_outbox:
                next_outbox = now + 1.0
                self._check_outbox()
            if now >= next_stats or self._stats_now:
                self._stats_now = False
                next_stats = now + stats_every
                self.publish_stats()

    def _process(self, camera: str, frame: Frame) -> None:
        """Score one frame; an event if the decision says so. Never raises for bad input."""
        worker = self.workers[camera]
        model = self.model
        det = model.detector
        t0 = time.perf_counter()
        try:
            if frame.rejected is not None:
                raise ImageError(frame.rejected)
            x = model.preprocess[camera](frame.data)
            t1 = time.perf_counter()
            xb = x[None]
            y = det.model(xb)
            t2 = time.perf_counter()
            scores, maps = det.scorer(xb, y)
            score = float(scores[0])
        except ImageError as e:
            if frame.rejected is None and worker.incomplete(frame):
                log.info("camera %s: %s does not decode yet (%s); read again once it changes", camera,
                         frame.name, e, extra=_ev("image_incomplete", camera=camera, image=frame.name, error=str(e)))
                return
            self.rejected += 1
            worker.stats.rejected += 1
            log.warning("camera %s: image rejected: %s: %s", camera, frame.name, e,
                        extra=_ev("image_rejected", camera=camera, image=frame.name, error=str(e)))
            worker.done(frame, False)
            return
        except Exception as e:  # never let one frame stop the daemon
            self.errors += 1
            worker.stats.errors += 1
            log.exception("camera %s: scoring %s failed", camera, frame.name,
                          extra=_ev("frame_error", camera=camera, image=frame.name, error=str(e)))
            worker.done(frame, False)
            return
        t3 = time.perf_counter()
        verdict = self.decisions[camera].update(score, time.monotonic())
        self.frames += 1
        worker.stats.frames += 1
        self.latency.add((t3 - t0) * 1e3)
        if verdict.alert:
            timings = {"preprocess": (t1 - t0) * 1e3, "invoke": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3,
                       "capture_to_decision": max(0.0, (time.time() - frame.t_capture) * 1e3)}
            if not self._event(worker, frame, verdict, x, None if maps is None else maps[0], timings):
                # Disk full or failing: a watched directory keeps the file and hands it out again,
                # so the event is stored once the disk takes writes (a stream's frame is gone).
                worker.retry(frame)
                return
        worker.done(frame, True)

    def _event(self, worker: CameraWorker, frame: Frame, verdict: Any, x: np.ndarray,
               error_map: Optional[np.ndarray], timings: Dict[str, float]) -> bool:
        """Build the event and put it in the outbox; False if the outbox could not store it."""
        from .events import build_event
        from .outbox import OutboxFull

        cam = worker.cfg
        extra: Dict[str, Any] = {"image": frame.name}
        heat = None
        t0 = time.perf_counter()
        if error_map is not None and self.model.heatmapper is not None and cam.heatmap:
            try:
                from .heatmap import source_size

                # Header only for encoded frames: boxes in source px need the source's size.
                src_wh = source_size(frame.data)
                ex = self.model.heatmapper.explain(x, error_map, src_wh)
                heat = ex.heatmap_jpeg
                extra["regions"] = ex.regions_json()
            except Exception as e:
                log.warning("heatmap failed: %s", e, extra=_ev("heatmap_error", camera=cam.name, error=str(e)))
        snap = snapshot_jpeg(frame.data, bit_depth=self.model.preprocess[cam.name].bit_depth) if cam.snapshot else None
        timings["event"] = (time.perf_counter() - t0) * 1e3
        eid = stable_event_id(self.device, cam.name, frame.key, frame.t_capture) if frame.key else None
        event = build_event(device=self.device, camera=cam.name, score=verdict.score, normalised=verdict.normalised,
                            threshold=verdict.threshold, anomalous=verdict.anomalous, model=self.model.info,
                            captured_at=frame.t_capture, latency_ms=timings, event_id=eid, extra=extra)
        self._check_outbox()  # one stat(): an event must not go into a deleted file
        try:
            self.publisher.publish_event(event, snap, heat)
        except (OutboxFull, sqlite3.Error) as e:  # full by policy, or the disk is full / failing
            self.events_refused += 1
            log.error("event refused by the outbox: %s", e,
                      extra=_ev("event_refused", camera=cam.name, image=frame.name, event_id=event["event_id"],
                                error=str(e)))
            return isinstance(e, OutboxFull)  # the policy's choice is final; a storage failure is not
        self.events += 1
        worker.stats.events += 1
        if self.first_event_s is None:
            self.first_event_s = time.monotonic() - self.started
        log.info("anomaly on %s: score %.4g (%.2f x threshold)", cam.name, verdict.score, verdict.normalised,
                 extra=_ev("anomaly", camera=cam.name, event_id=event["event_id"], image=frame.name,
                           score=verdict.score, normalised=verdict.normalised))
        return True

    # -- reload ---------------------------------------------------------------------------------

    def reload(self, reason: str) -> bool:
        """Load the bundle at the configured path; keep the old model if the new one is refused."""
        path = self.cfg.model.bundle
        log.info("reloading bundle %s (%s)", path, reason, extra=_ev("reload_start", reason=reason, bundle=path))
        try:
            new = load_model(self.cfg)
        except (BundleError, AcceleratorRequired) as e:
            self.reloads["failed"] += 1
            self.reloads["last_error"] = str(e)
            self.reloads["last_at"] = time.time()
            # Don't retry the same bad files every watch tick; a further change is tried again.
            self.model.signature = bundle_signature(Path(path))
            log.error("bundle reload refused, keeping %s %s: %s", self.model.info["name"], self.model.info["version"],
                      e, extra=_ev("reload_failed", reason=reason, error=str(e), kept=self.model.info))
            self._stats_now = True
            return False
        old = self.model
        self.model = new
        for cam in self.cfg.cameras:
            det = new.detector
            self.decisions[cam.name].set_threshold(cam.threshold if cam.threshold is not None else det.threshold,
                                                   det.center)
        if old.extracted:
            shutil.rmtree(old.extracted, ignore_errors=True)
        self.reloads["ok"] += 1
        self.reloads["last_error"] = None
        self.reloads["last_at"] = time.time()
        self._announce_model("reloaded")
        self._stats_now = True
        return True

    # -- stats ------------------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        now = time.monotonic()
        uptime = now - self.started
        prev = getattr(self, "_prev_stats", (self.started, 0))
        fps = (self.frames - prev[1]) / max(now - prev[0], 1e-9)
        self._prev_stats = (now, self.frames)
        det = self.model.detector
        cams = {}
        for name, w in self.workers.items():
            s = w.stats
            cams[name] = {
                "state": s.state, "stalled": s.stalled, "frames": s.frames, "events": s.events, "rejected": s.rejected,
                "dropped": s.dropped, "errors": s.errors, "reconnects": s.reconnects, "stalls": s.stalls,
                "last_frame_age_s": None if s.last_frame is None else round(now - s.last_frame, 1),
                "last_error": s.last_error,
            }
        return {
            "uptime_s": round(uptime, 1),
            "fps": round(fps, 2),
            "frames": self.frames,
            "events": self.events,
            "latency_ms": self.latency.percentiles(),
            "accelerator": det.model.accelerator,
            "accelerator_fallback": det.model.fallback,
            "runtime": det.model.backend,
            "model": self.model.info,
            "frames_dropped": sum(w.stats.dropped for w in self.workers.values()),
            "images_rejected": self.rejected,
            "frame_errors": self.errors,
            "events_refused": self.events_refused,
            "outbox_depth": self.outbox.depth(),
            "mqtt_connected": self.publisher.connected,  # in the log too: the one place it shows while down
            "reloads": dict(self.reloads),
            "first_event_s": None if self.first_event_s is None else round(self.first_event_s, 3),
            "rss_mb": rss_mb(),
            "cameras": cams,
        }

    def publish_stats(self) -> None:
        s = self.stats()
        if self.cfg.stats.log:
            log.info("stats", extra=_ev("stats", **s))
        try:
            self.publisher.publish_stats(s)
        except Exception as e:  # stats are QoS 0 and best effort; never worth stopping for
            log.warning("stats not published: %s", e, extra=_ev("stats_not_published", error=str(e)))
        self.notifier.status(self._status_line(s))

    def _status_line(self, s: Optional[Dict[str, Any]] = None) -> str:
        if s is None:
            return f"{len(self.cfg.cameras)} camera(s), model {self.model.info['name']} {self.model.info['version']}"
        down = [n for n, c in s["cameras"].items() if c["state"] != "ok" or c["stalled"]]
        return (f"{s['fps']} fps, p95 {s['latency_ms']['p95']} ms, outbox {s['outbox_depth']}, "
                f"{'cameras not ok: ' + ', '.join(down) if down else 'all cameras ok'}")

    # -- shutdown ---------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        self.stop_event.set()
        self.inbox.wake()
        for w in self.workers.values():
            w.thread.join(timeout=5)
        if self.publisher is not None:
            try:
                self.publish_stats()
            except Exception:
                pass
            self.publisher.stop(clean=True)
        if self.outbox is not None:
            self._check_outbox()
            self.outbox.close()
        if self.model is not None and self.model.extracted:
            shutil.rmtree(self.model.extracted, ignore_errors=True)
        log.info("daemon stopped", extra=_ev("stopped", frames=self.frames, events=self.events,
                                             rejected=self.rejected, outbox_depth=self.outbox.depth()
                                             if self.outbox is not None else None))
        self.notifier.close()


def run(cfg: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code."""
    return Daemon(cfg).run()
