"""The local decision per camera: threshold, debounce (N anomalous of the last M), cooldown.

One defect that sits in front of a camera for 30 frames should raise one alert, not 30:
debouncing suppresses single noisy frames, the cooldown suppresses repeats.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

from .scoring import normalise


@dataclass(frozen=True)
class Verdict:
    """One frame's decision. ``alert`` is True when an event should be sent."""

    score: float
    normalised: float  # 1.0 = threshold
    threshold: float
    anomalous: bool  # this frame is above the threshold
    alert: bool  # debounce satisfied and not in cooldown


class Decision:
    """Per-camera decision state.

    threshold: raw-score threshold (the bundle's, or the camera's override).
    center: median normal score (normalised 0.0); the threshold is normalised 1.0.
    debounce_n, debounce_m: alert when at least N of the last M frames are anomalous (1 <= N <= M).
    cooldown: s after an alert during which no further alert is raised.
    """

    def __init__(
        self, threshold: float, center: float = 0.0, debounce_n: int = 1, debounce_m: int = 1, cooldown: float = 0.0
    ) -> None:
        if not 1 <= debounce_n <= debounce_m:
            raise ValueError(f"debounce needs 1 <= n <= m, got n={debounce_n} m={debounce_m}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 s, got {cooldown}")
        self.threshold = float(threshold)
        self.center = float(center)
        self.n, self.m = debounce_n, debounce_m
        self.cooldown = float(cooldown)
        self._window: deque = deque(maxlen=debounce_m)
        self._hits = 0
        self._last_alert: Optional[float] = None

    def set_threshold(self, threshold: float, center: float) -> None:
        """A reloaded bundle brings a new calibration; the debounce window carries over."""
        self.threshold, self.center = float(threshold), float(center)

    def update(self, score: float, now: float) -> Verdict:
        """Feed one frame's raw score at time ``now`` (s, monotonic)."""
        anomalous = score > self.threshold
        if len(self._window) == self.m:
            self._hits -= self._window[0]
        self._window.append(anomalous)
        self._hits += anomalous
        alert = False
        if anomalous and self._hits >= self.n:
            if self._last_alert is None or now - self._last_alert >= self.cooldown:
                alert = True
                self._last_alert = now
        norm = float(normalise(score, self.threshold, self.center))
        return Verdict(float(score), norm, self.threshold, anomalous, alert)
