"""Sidechain ducking: one stem's gain lowered while another stem is loud. Causal and streaming.

``stems.instrumental.duck: {by: vocals, depth_db: 6, threshold_db: -30, attack_ms: 10,
release_ms: 250}`` lowers the instrumental by ``depth_db`` while the vocals are above
``threshold_db``. The detector hears the key stem after its chain and before its fader (a
pre-fader send, as a DAW's sidechain usually is: the key's gain, pan and mute do not change the
ducking).

- Level: RMS over the last :data:`DETECTOR_SECONDS` (10 ms; a boxcar, so the level falls
  below any threshold at most 10 ms after the key stops), of all channels, in dBFS.
- Gain reduction: ramps linearly in dB towards ``depth_db`` while the level is above the
  threshold, reaching it ``attack_ms`` after starting from none, and back to 0 dB in
  ``release_ms`` once the level is below (broadcast-style ramp times, so "recovers at the release
  time" is exact, not a time constant).

Every sample depends only on the past, and the state (the detector's last 10 ms, the reduction)
is carried between blocks, so blocks of any size give the same result as one pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DETECTOR_SECONDS = 0.010


@dataclasses.dataclass(frozen=True)
class DuckSettings:
    """Units: dB, dBFS and milliseconds. ``by`` is the key stem's name."""

    by: str
    depth_db: float = 6.0
    threshold_db: float = -30.0
    attack_ms: float = 10.0
    release_ms: float = 250.0

    def to_yaml(self) -> dict:
        return dataclasses.asdict(self)


class Ducker:
    """``gain = ducker(key)``: per-sample linear gains for the ducked stem, from the key's block.

    Parameters
    ----------
    settings : DuckSettings
    sample_rate : int
    """

    def __init__(self, settings: DuckSettings, *, sample_rate: int):
        self.settings = settings
        self.window = max(1, int(round(DETECTOR_SECONDS * sample_rate)))
        self._history = np.zeros(self.window - 1)  # the key's mean square over channels, last samples
        self._threshold = 10.0 ** (settings.threshold_db / 10.0) * self.window  # on the window's sum of squares
        depth = settings.depth_db
        self._up = depth / max(settings.attack_ms * 1e-3 * sample_rate, 1e-9)  # dB per sample
        self._down = depth / max(settings.release_ms * 1e-3 * sample_rate, 1e-9)
        self._reduction = 0.0

    def __call__(self, key: np.ndarray) -> np.ndarray:
        """``key``: (channels, samples) float32, the key stem after its chain. Returns (samples,) float32."""
        count = key.shape[1]
        if count == 0:
            return np.ones(0, np.float32)
        power = np.mean(key.astype(np.float64) ** 2, axis=0)
        joined = np.concatenate([self._history, power])
        sums = np.cumsum(np.concatenate([[0.0], joined]))
        window_sum = sums[self.window:] - sums[:-self.window]  # the window ending at each sample
        self._history = joined[-(self.window - 1):] if self.window > 1 else joined[:0]
        loud = window_sum > self._threshold
        reduction = np.empty(count)
        depth = self.settings.depth_db
        edges = np.flatnonzero(np.diff(loud.astype(np.int8))) + 1
        state = self._reduction
        for start, stop in zip(np.concatenate([[0], edges]), np.concatenate([edges, [count]])):
            steps = np.arange(1, stop - start + 1)
            if loud[start]:
                reduction[start:stop] = np.minimum(depth, state + self._up * steps)
            else:
                reduction[start:stop] = np.maximum(0.0, state - self._down * steps)
            state = reduction[stop - 1]
        self._reduction = state
        return (10.0 ** (-reduction / 20.0)).astype(np.float32)
