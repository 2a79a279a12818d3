"""V4L2 devices, RTSP URLs, video files and GStreamer pipelines through OpenCV.

OpenCV is the optional ``camera`` extra and is imported only when such a source opens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .base import Frame, Source, SourceConfig, SourceError, register

BACKENDS = ("any", "v4l2", "ffmpeg", "gstreamer")
MISSING = "OpenCV is not installed: pip install 'edge-detect[camera]' (opencv-python-headless)"


@dataclass(frozen=True)
class OpenCvConfig(SourceConfig):
    """device: a V4L2 device index (0 = /dev/video0), or
    url: an RTSP/HTTP stream URL, a video file path, or a GStreamer pipeline (with backend = "gstreamer").
    backend: any, v4l2, ffmpeg or gstreamer.
    width, height: requested capture size px (0 = the camera's default).
    fps: requested frame rate (0 = default).
    loop: restart a video file at its end (for demos); otherwise the end of a file is a dropped camera.
    """

    device: int = -1
    url: str = ""
    backend: str = "any"
    width: int = 0
    height: int = 0
    fps: float = 0.0
    loop: bool = False

    def check(self) -> Dict[str, str]:
        p: Dict[str, str] = {}
        if (self.device >= 0) == bool(self.url):
            p["url"] = "give exactly one of device (V4L2 index) or url (stream, file or pipeline)"
        if self.backend not in BACKENDS:
            p["backend"] = f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        if min(self.width, self.height) < 0 or self.fps < 0:
            p["width"] = "width, height and fps must be >= 0"
        return p


def import_cv2() -> Any:
    try:
        import cv2  # type: ignore
    except ImportError:
        raise SourceError(MISSING) from None
    return cv2


@register
class OpenCvSource(Source):
    type = "opencv"
    Config = OpenCvConfig
    default_interval = 1.0

    def __init__(self, config: OpenCvConfig, name: str) -> None:
        super().__init__(config, name)
        self.cfg = config
        self._cap: Any = None
        self._n = 0

    def open(self) -> None:
        cv2 = import_cv2()
        api = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG,
               "gstreamer": cv2.CAP_GSTREAMER}[self.cfg.backend]
        target = self.cfg.device if self.cfg.device >= 0 else self.cfg.url
        cap = cv2.VideoCapture(target, api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV cannot open {self._shown()}")
        if self.cfg.width and self.cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        if self.cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        # Keep only the newest frame: an interval trigger wants "now", not a stale buffer.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def _shown(self) -> str:
        if self.cfg.device >= 0:
            return f"/dev/video{self.cfg.device}"
        from .http import redact

        return redact(self.cfg.url) if "://" in self.cfg.url else self.cfg.url

    def read(self, timeout: float) -> Optional[Frame]:
        assert self._cap is not None, "open() first"
        ok, img = self._cap.read()
        if not ok and self.cfg.loop:
            cv2 = import_cv2()
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self._cap.read()
        if not ok or img is None:
            raise SourceError(f"{self._shown()}: no frame (camera dropped or end of stream)")
        self._n += 1
        if img.ndim == 3:
            img = np.ascontiguousarray(img[:, :, 2::-1])  # OpenCV is BGR; preprocess expects RGB
        return Frame(data=img, t_capture=time.time(), name=f"{self._shown()}#{self._n}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
