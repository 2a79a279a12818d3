"""The daemon's TOML config, validated at start (docs/CONFIG.md documents every key).

``load_config`` rejects unknown keys, missing required keys, wrong types and values out of
range, naming each by its dotted key (``cameras[1].source.settle``) and the file; the daemon
then exits non-zero. ``edge-detect check-config`` runs the same validation.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .capture import source_config_from_dict
from .capture.base import SourceConfig
from .delegates import DelegateConfig, delegate_from_dict
from .oneline import first_line
from .validate import ConfigError, from_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

SECTIONS = ("device", "model", "mqtt", "outbox", "cameras", "stats", "health", "update")
# Names that end up in MQTT topics and Home Assistant ids: no wildcards, no slashes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOG_FORMATS = ("json", "kv")
LOG_LEVELS = ("debug", "info", "warning", "error")
TRIGGERS = ("interval", "mqtt")
OUTBOX_POLICIES = ("drop_oldest", "reject_new")


MAX_QUEUE = 1000  # frames per camera

@dataclass(frozen=True)
class DeviceConfig:
    """id: the device's name in topics and events. log_format: json or kv (key=value). log_level."""

    id: str
    log_format: str = "json"
    log_level: str = "info"

    def check(self) -> Dict[str, str]:
        p = {}
        if not _NAME.fullmatch(self.id):
            p["id"] = f"must be 1-64 of A-Z a-z 0-9 _ . - (it is used in MQTT topics), got {self.id!r}"
        if self.log_format not in LOG_FORMATS:
            p["log_format"] = f"must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
        if self.log_level not in LOG_LEVELS:
            p["log_level"] = f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
        return p


@dataclass(frozen=True)
class ModelConfig:
    """bundle: bundle directory or .tar.gz. variant: "" = the accelerator's best, else the bundle's default.
    num_threads: interpreter CPU threads (0 = the runtime's default).
    accelerator: a delegate (edgetpu, gpu, external); None = CPU.
    require_accelerator: exit instead of falling back to the CPU.
    watch: reload when a new bundle appears at ``bundle``; watch_interval: s between checks.
    """

    bundle: str
    variant: str = ""
    num_threads: int = 0
    require_accelerator: bool = False
    watch: bool = True
    watch_interval: float = 5.0
    accelerator: Optional[DelegateConfig] = None

    def check(self) -> Dict[str, str]:
        p = {}
        if not self.bundle:
            p["bundle"] = "must not be empty"
        if not 0 <= self.num_threads <= 64:
            p["num_threads"] = f"must be 0..64, got {self.num_threads}"
        if self.watch_interval <= 0:
            p["watch_interval"] = f"must be > 0 s, got {self.watch_interval}"
        return p


@dataclass(frozen=True)
class OutboxConfig:
    """The persistent event outbox (SQLite WAL); see edge_detect/outbox.py for the cap policy."""

    path: str = "/var/lib/edge-detect/outbox.sqlite"
    max_messages: int = 100_000
    max_bytes: int = 512 * 1024 * 1024
    policy: str = "drop_oldest"
    synchronous: str = "FULL"

    def check(self) -> Dict[str, str]:
        p = {}
        if self.max_messages < 1:
            p["max_messages"] = f"must be >= 1, got {self.max_messages}"
        if self.max_bytes < 1:
            p["max_bytes"] = f"must be >= 1 bytes, got {self.max_bytes}"
        if self.policy not in OUTBOX_POLICIES:
            p["policy"] = f"must be one of {', '.join(OUTBOX_POLICIES)}, got {self.policy!r}"
        if self.synchronous not in ("FULL", "NORMAL"):
            p["synchronous"] = f"must be FULL or NORMAL, got {self.synchronous!r}"
        return p


@dataclass(frozen=True)
class StatsConfig:
    """interval: s between stats reports (MQTT stats topic and one log line). log: also log them."""

    interval: float = 60.0
    log: bool = True

    def check(self) -> Dict[str, str]:
        return {"interval": f"must be > 0 s, got {self.interval}"} if self.interval <= 0 else {}


@dataclass(frozen=True)
class HealthConfig:
    """stall_timeout: s without a frame before a camera is reported stalled (per-camera override).
    reconnect_min, reconnect_max: s, the exponential backoff between reopen attempts of a dropped camera.
    watchdog: send systemd WATCHDOG=1 when the unit sets WatchdogSec.
    """

    stall_timeout: float = 60.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    watchdog: bool = True

    def check(self) -> Dict[str, str]:
        p = {}
        if self.stall_timeout <= 0:
            p["stall_timeout"] = f"must be > 0 s, got {self.stall_timeout}"
        if self.reconnect_min <= 0:
            p["reconnect_min"] = f"must be > 0 s, got {self.reconnect_min}"
        if self.reconnect_max < self.reconnect_min:
            p["reconnect_max"] = f"must be >= reconnect_min ({self.reconnect_min} s), got {self.reconnect_max}"
        return p


@dataclass(frozen=True)
class TriggerConfig:
    """type: interval (capture every ``seconds``; 0 = every frame the source delivers, e.g. each dropped
    file) or mqtt (one capture per "capture now" command on the device's command topic).
    seconds: for interval; default: the source's own (0 for directory, 1 for http and opencv).
    """

    type: str = "interval"
    seconds: Optional[float] = None

    def check(self) -> Dict[str, str]:
        p = {}
        if self.type not in TRIGGERS:
            p["type"] = f"must be one of {', '.join(TRIGGERS)}, got {self.type!r}"
        if self.seconds is not None and (self.type != "interval" or self.seconds < 0):
            p["seconds"] = "only for type = \"interval\", and >= 0 s"
        return p


@dataclass(frozen=True)
class CameraConfig:
    """One camera: its source, trigger, crop and decision.

    roi: [x, y, width, height] px crop of the source image (replaces the bundle's).
    threshold: raw-score threshold override (default: the bundle's calibrated one).
    debounce_n, debounce_m: alert when N of the last M frames are anomalous.
    cooldown: s after an alert with no further alert.
    snapshot, heatmap: attach a JPEG snapshot / heatmap to events.
    stall_timeout: s without a frame before the camera is reported stalled (default: health.stall_timeout).
    queue: frames buffered between capture and inference (older frames are dropped and counted when full,
        except for a watched directory, whose files simply wait on disk).
    """

    name: str
    source_type: str = field(default="", metadata={"internal": True})  # [cameras.source] type
    source: Optional[SourceConfig] = None
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    roi: Optional[Tuple[int, int, int, int]] = None
    threshold: Optional[float] = None
    debounce_n: int = 1
    debounce_m: int = 1
    cooldown: float = 0.0
    snapshot: bool = True
    heatmap: bool = False
    stall_timeout: Optional[float] = None
    queue: int = 2

    def check(self) -> Dict[str, str]:
        p = {}
        if not _NAME.fullmatch(self.name):
            p["name"] = f"must be 1-64 of A-Z a-z 0-9 _ . - (it is used in MQTT topics), got {self.name!r}"
        if self.roi is not None and (self.roi[2] < 1 or self.roi[3] < 1 or min(self.roi[:2]) < 0):
            p["roi"] = f"must be [x, y, width, height] px with x, y >= 0 and width, height >= 1, got {list(self.roi)}"
        if not 1 <= self.debounce_n <= self.debounce_m:
            p["debounce_n"] = f"needs 1 <= debounce_n <= debounce_m, got {self.debounce_n} of {self.debounce_m}"
        if self.cooldown < 0:
            p["cooldown"] = f"must be >= 0 s, got {self.cooldown}"
        if self.stall_timeout is not None and self.stall_timeout <= 0:
            p["stall_timeout"] = f"must be > 0 s, got {self.stall_timeout}"
        if not 1 <= self.queue <= MAX_QUEUE:
            # Each queued frame is held decoded-size in memory: 1,000 1080p RGB frames are 6 GB.
            p["queue"] = f"must be 1..{MAX_QUEUE} frames, got {self.queue}"
        return p


@dataclass(frozen=True)
class UpdateConfig:
    """Signed model updates over MQTT (edge_detect/update.py, docs/DEPLOY.md).

    enabled: accept ``{"cmd": "update"}`` on the command topic. trusted_keys: Ed25519 public key
    files (PEM), or directories of ``*.pem``; a bundle must be signed by one of them.
    bundles_dir: the versioned bundle store; ``model.bundle`` must be ``<bundles_dir>/current``.
    max_bytes: largest accepted archive (bytes). keep: installed versions kept (>= 2).
    """

    enabled: bool = False
    trusted_keys: List[str] = field(default_factory=lambda: ["/etc/edge-detect/trusted-keys"])
    bundles_dir: str = "/var/lib/edge-detect/bundles"
    max_bytes: int = 16 * 1024 * 1024
    keep: int = 3

    def check(self) -> Dict[str, str]:
        p = {}
        if self.max_bytes < 1024:
            p["max_bytes"] = f"must be >= 1024 bytes, got {self.max_bytes}"
        if self.keep < 2:
            p["keep"] = f"must be >= 2 (current and previous), got {self.keep}"
        if self.enabled:
            from .signing import load_trusted_keys

            try:
                if not load_trusted_keys(self.trusted_keys):
                    p["trusted_keys"] = f"no *.pem public key found in {self.trusted_keys}"
            except (OSError, ValueError) as e:
                p["trusted_keys"] = str(e)
        return p


@dataclass(frozen=True)
class Config:
    path: str
    device: DeviceConfig
    model: ModelConfig
    mqtt: Any  # edge_detect.publisher.MqttConfig
    outbox: OutboxConfig
    cameras: Tuple[CameraConfig, ...]
    stats: StatsConfig
    health: HealthConfig
    update: UpdateConfig = field(default_factory=UpdateConfig)

    def summary(self, warnings: Sequence[str] = ()) -> str:
        """A short human-readable description (no secrets), then ``warnings``, then the verdict with their count."""
        m = self.model
        acc = m.accelerator.name if m.accelerator else "cpu"
        lines = [
            f"  device   {self.device.id}",
            f"  model    {m.bundle} (variant {m.variant or 'auto'}, accelerator {acc}"
            f"{', required' if m.require_accelerator else ''}, watch {'on' if m.watch else 'off'})",
            f"  mqtt     {_mqtt_summary(self.mqtt)}",
            f"  outbox   {self.outbox.path} (cap {self.outbox.max_messages} messages / {self.outbox.max_bytes} bytes,"
            f" {self.outbox.policy})",
            f"  stats    every {self.stats.interval:g} s",
        ]
        for c in self.cameras:
            iv = _interval(c)
            trig = "mqtt" if c.trigger.type == "mqtt" else (f"every {iv:g} s" if iv else "every frame")
            lines.append(
                f"  camera   {c.name}: {c.source_type} ({_source_summary(c)}), trigger {trig}, "
                f"debounce {c.debounce_n}/{c.debounce_m}, cooldown {c.cooldown:g} s"
                + (f", threshold {c.threshold:g}" if c.threshold is not None else "")
                + (f", roi {list(c.roi)}" if c.roi else "")
            )
        lines += [f"warning: {w}" for w in warnings]
        n = len(warnings)
        note = f" ({n} warning{'s' if n > 1 else ''})" if n else ""
        lines.append(f"config {self.path}: ok{note}")
        return "\n".join(lines)


def _interval(c: CameraConfig) -> float:
    from .capture import PLUGINS

    return c.trigger.seconds if c.trigger.seconds is not None else PLUGINS[c.source_type].default_interval


def camera_interval(c: CameraConfig) -> float:
    """Seconds between captures for an interval trigger (0 = every frame the source delivers)."""
    return _interval(c)


def _source_summary(c: CameraConfig) -> str:
    s = c.source
    for attr in ("path", "url"):
        v = getattr(s, attr, "")
        if v:
            if attr == "url":
                from .capture.http import redact

                v = redact(v)
            return v
    dev = getattr(s, "device", -1)
    return f"/dev/video{dev}" if dev >= 0 else "?"


def path_warnings(cfg: Config) -> List[str]:
    """``key: path: why`` for each local path of ``cfg`` that is missing or unusable on this machine,
    and ``key: why`` for a camera threshold far from the bundle's own.

    Warnings, not errors: a config is often checked on a workstation before it is deployed. URLs
    are not checked, and of the bundle only the manifest is read (the daemon hashes the files).
    """
    from .bundle import Bundle, BundleError, read_manifest

    out = []
    try:
        manifest = read_manifest(cfg.model.bundle)
    except BundleError as e:  # its message starts with the path
        out.append(f"model.bundle: {first_line(e)}")
    else:
        bundle = Bundle(Path(cfg.model.bundle), manifest)
        variant = cfg.model.variant if cfg.model.variant in bundle.variants else bundle.default_variant()
        out += _threshold_warnings(cfg.cameras, bundle.calibration(variant).get("threshold"))
    for key, path, kind in _source_paths(cfg.cameras):
        why = _path_problem(path, kind)
        if why:
            out.append(f"{key}: {path}: {why}")
    return out


def _threshold_warnings(cameras: Sequence[CameraConfig], own: Any) -> List[str]:
    """Camera thresholds 10x or more away from the bundle's calibrated ``own``: most likely copied
    from another model's config, since every model scores in its own units."""
    if isinstance(own, bool) or not isinstance(own, (int, float)) or own <= 0:
        return []
    return [f"cameras[{i}].threshold: {c.threshold:g} is {c.threshold / own:.3g}x the bundle's calibrated "
            f"{own:.4g} (scores are in each model's own units; leave it out to use the bundle's)"
            for i, c in enumerate(cameras)
            if c.threshold is not None and not own / 10 < c.threshold < own * 10]


def _source_paths(cameras: Sequence[CameraConfig]) -> Iterator[Tuple[str, str, str]]:
    """(dotted key, path, "directory" or "file") for each camera option that names something local."""
    for i, c in enumerate(cameras):
        where, s = f"cameras[{i}].source", c.source
        if c.source_type == "directory":
            yield f"{where}.path", s.path, "directory"
        elif c.source_type == "opencv":
            if s.device >= 0:
                yield f"{where}.device", f"/dev/video{s.device}", "file"
            # A URL, a GStreamer pipeline or an image sequence pattern (img_%04d.jpg) is no path to look up.
            elif "://" not in s.url and s.backend != "gstreamer" and "%" not in s.url:
                yield f"{where}.url", s.url, "file"
        elif c.source_type == "http":
            for attr in ("ca_file", "password_file"):
                if getattr(s, attr):
                    yield f"{where}.{attr}", getattr(s, attr), "file"


def _path_problem(path: str, kind: str) -> str:
    """Why ``path`` can't serve as a ``kind`` ("directory" or "file"), or "" when it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as e:
        return e.strerror or str(e)
    if kind == "directory" and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    return ""


def _mqtt_summary(m: Any) -> str:
    host = getattr(m, "host", None) or getattr(m, "broker", None)
    port = getattr(m, "port", None)
    return f"{host}:{port}" if host else type(m).__name__


def _mqtt_from_dict(d: Any, where: str) -> Any:
    from .publisher import MqttConfig

    try:
        return MqttConfig.from_dict(d, where)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e)
        raise ConfigError([msg if msg.startswith(where) else f"{where}: {msg}"]) from None


def _section(errors: List[str], fn, *args) -> Any:
    try:
        return fn(*args)
    except ConfigError as e:
        errors.extend(e.errors)
        return None


def _model(d: Any) -> ModelConfig:
    if not isinstance(d, dict):
        raise ConfigError(["model: must be a table"])
    d = dict(d)
    acc = d.pop("accelerator", None)
    errors: List[str] = []
    m = _section(errors, from_table, ModelConfig, d, "model", ("accelerator",))
    delegate = None
    if acc is not None:
        if not isinstance(acc, dict):
            errors.append("model.accelerator: must be a table with a type key")
        else:
            try:
                delegate = delegate_from_dict(acc, "model.accelerator")
            except ConfigError as e:
                errors += e.errors
    if errors:
        raise ConfigError(errors)
    return replace(m, accelerator=delegate)


def _camera(d: Any, where: str) -> CameraConfig:
    if not isinstance(d, dict):
        raise ConfigError([f"{where}: must be a table ([[cameras]])"])
    d = dict(d)
    src = d.pop("source", None)
    trig = d.pop("trigger", {})
    errors: List[str] = []
    cam = _section(errors, from_table, CameraConfig, d, where, ("source_type", "source", "trigger"))
    if src is None:
        errors.append(f"{where}.source: required table is missing (with type = directory, http or opencv)")
        kind, scfg = "", None
    else:
        kind, scfg = _section(errors, source_config_from_dict, src, f"{where}.source") or ("", None)
    t = _section(errors, from_table, TriggerConfig, trig, f"{where}.trigger")
    if errors:
        raise ConfigError(errors)
    return replace(cam, source_type=kind, source=scfg, trigger=t)


def parse_config(data: Dict[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    known = ", ".join(SECTIONS)
    errors: List[str] = [f"{k}: unknown section (known: {known})" for k in sorted(set(data) - set(SECTIONS))]
    for req in ("device", "model", "cameras"):
        if req not in data:
            errors.append(f"{req}: required section is missing")
    device = _section(errors, from_table, DeviceConfig, data.get("device", {}), "device") if "device" in data else None
    model = _section(errors, _model, data["model"]) if "model" in data else None
    mqtt = _section(errors, _mqtt_from_dict, data.get("mqtt", {}), "mqtt")
    outbox = _section(errors, from_table, OutboxConfig, data.get("outbox", {}), "outbox")
    stats = _section(errors, from_table, StatsConfig, data.get("stats", {}), "stats")
    health = _section(errors, from_table, HealthConfig, data.get("health", {}), "health")
    update = _section(errors, from_table, UpdateConfig, data.get("update", {}), "update")
    if update is not None and update.enabled and model is not None and \
            Path(model.bundle) != Path(update.bundles_dir) / "current":
        errors.append(f"update.enabled: model.bundle must be {Path(update.bundles_dir) / 'current'} (the link an "
                      f"update switches), got {model.bundle!r}")
    cams: List[CameraConfig] = []
    raw = data.get("cameras")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            errors.append("cameras: must be one or more [[cameras]] tables")
        else:
            for i, c in enumerate(raw):
                cam = _section(errors, _camera, c, f"cameras[{i}]")
                if cam is not None:
                    cams.append(cam)
            # From the tables, not the parsed cameras: a duplicate is reported even beside other problems.
            names = [c["name"] for c in raw if isinstance(c, dict) and isinstance(c.get("name"), str)]
            for n in sorted({n for n in names if names.count(n) > 1}):
                errors.append(f"cameras: name {n!r} is used more than once")
    if errors:
        raise ConfigError(errors, path)
    return Config(path, device, model, mqtt, outbox, tuple(cams), stats, health, update)


def load_config(path: Union[str, Path]) -> Config:
    """Read and validate a TOML config file; raises ConfigError (message names file and key)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(["no such file"], path) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], path) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not valid TOML: not UTF-8 text (byte {e.start})"], path) from None
    return parse_config(data, path)
