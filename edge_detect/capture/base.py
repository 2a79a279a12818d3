"""The camera source interface: open, read frames, close.

A source plugin is a ``Source`` subclass with a ``type`` key and a ``Config``
dataclass that validates its own options (see ``edge_detect.validate``). ``read``
returns the next ``Frame``, or None when nothing new arrived within the timeout,
and raises ``SourceError`` when the camera is gone; the daemon then closes the
source and reopens it with exponential backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Type, Union

import numpy as np


class SourceError(RuntimeError):
    """The camera can't deliver (gone, unreachable, refused). The message is one log line."""


@dataclass
class Frame:
    """One captured image.

    data: encoded image bytes (JPEG, PNG, ...) or a uint8 array (H, W) gray / (H, W, 3) RGB.
    t_capture: capture time, s since the epoch (file mtime for dropped files).
    name: what the frame is called in logs and events (file name, URL, frame number).
    key: a stable identity where the source has one (a dropped file), so a frame that is
        processed again after a crash produces the same event id; None otherwise.
    rejected: why the source refused the frame without reading it (a file over ``max_bytes``);
        the daemon rejects it with this reason instead of decoding ``data``.
    """

    data: Union[bytes, np.ndarray]
    t_capture: float
    name: str
    key: Optional[str] = None
    token: Any = None  # the source's own bookkeeping for done()
    rejected: Optional[str] = None


@dataclass(frozen=True)
class SourceConfig:
    """Options every source accepts; subclasses add their own."""

    def check(self) -> Dict[str, str]:
        """{field: problem} for values of the right type but out of range."""
        return {}


class Source:
    """One camera. Not thread-safe: the daemon gives each source its own capture thread."""

    type: ClassVar[str] = ""
    Config: ClassVar[Type[SourceConfig]] = SourceConfig
    # Seconds between captures when the camera's trigger gives none: 0 = every frame it delivers.
    default_interval: ClassVar[float] = 1.0

    def __init__(self, config: SourceConfig, name: str) -> None:
        self.config = config
        self.name = name

    def open(self) -> None:
        """Connect to the camera; raises SourceError."""

    def read(self, timeout: float) -> Optional[Frame]:
        """The next frame, or None if none within ``timeout`` s; raises SourceError."""
        raise NotImplementedError

    def done(self, frame: Frame, ok: bool) -> None:
        """The daemon has finished with ``frame`` (its event, if any, is in the outbox).

        ok: False when the image was rejected (corrupt, a bomb, ...). Sources that consume
        their input (a watched directory) move or delete it only now, so a crash in between
        processes the frame again rather than losing it. Called on the daemon's thread while the
        camera thread may be in ``read``: state both touch must stay consistent at every step.
        """

    def retry(self, frame: Frame, after_s: float) -> None:
        """The daemon could not finish with ``frame`` (its event could not be stored): hand it out
        again in ``after_s`` s if the source still has it. Streams cannot, so the default does
        nothing. Same thread rules as ``done``."""

    def incomplete(self, frame: Frame) -> bool:
        """``frame`` did not decode. True if the source hands it out again later because it may
        still be arriving (a file whose writer paused for longer than ``settle``); the daemon then
        neither rejects nor counts it. Streams cannot tell, so the default is False. Same thread
        rules as ``done``."""
        return False

    def close(self) -> None:
        """Release the camera; safe to call twice."""


def now() -> float:
    return time.time()


PLUGINS: Dict[str, Type[Source]] = {}


def register(cls: Type[Source]) -> Type[Source]:
    """Class decorator: make a source constructible from ``source.type`` in the config."""
    PLUGINS[cls.type] = cls
    return cls
