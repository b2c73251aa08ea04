"""Loudness and peaks, measured block by block: ITU-R BS.1770-4 integrated loudness and true peak.

The K-weighting filters are pyloudnorm's (``Meter(rate)._filters``), run with carried state so a
song of any length is measured in constant memory; the gating (400 ms blocks every 100 ms,
-70 LUFS absolute and -10 LU relative gates) follows BS.1770-4 as pyloudnorm does. Channel
weights: 1.0 for L, R, C; 1.41 for the surrounds; the LFE is not measured (BS.1770 table 3).
True peak is the peak of the signal upsampled 4x (BS.1770-4 annex 2), with soxr.

From the same 100 ms step energies, :func:`descriptors` gives the maximum momentary (400 ms) and
short-term (3 s) loudness of EBU Tech 3341 and the loudness range of EBU Tech 3342 (short-term
values every 100 ms, gated at -70 LUFS and 20 LU below their power mean, 95th minus 10th
percentile): the loudness fields of a Broadcast WAV bext chunk (EBU Tech 3285 v2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import soxr

BLOCK_S, STEP_S = 0.4, 0.1
ABSOLUTE_GATE, RELATIVE_GATE = -70.0, -10.0
SHORT_TERM_S = 3.0  # EBU Tech 3341 short-term window
LRA_RELATIVE_GATE, LRA_PERCENTILES = -20.0, (10.0, 95.0)  # EBU Tech 3342


def channel_weights(channels: int) -> np.ndarray:
    if channels == 6:  # L R C LFE Ls Rs
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
    return np.array([1.0, 1.0, 1.0, 1.41, 1.41, 1.41, 1.41, 1.41][:channels])


class LoudnessMeter:
    """Feed ``(channels, samples)`` blocks; read :attr:`integrated` (LUFS) and :attr:`true_peak_db`."""

    def __init__(self, *, sample_rate: int, channels: int):
        import pyloudnorm  # with scipy.signal, 0.7 s to import: only when something is measured
        from scipy.signal import lfilter

        self._lfilter = lfilter
        self.sample_rate = sample_rate
        self.channels = channels
        meter = pyloudnorm.Meter(sample_rate)
        self._stages = [(f.b, f.a, f.passband_gain) for f in meter._filters.values()]
        self._state = [np.zeros((channels, max(len(a), len(b)) - 1)) for b, a, _ in self._stages]
        self._step = int(round(STEP_S * sample_rate))
        self._partial = np.zeros(channels)
        self._partial_count = 0
        self._steps: list[np.ndarray] = []  # summed squares per channel for each 100 ms step
        self._peak = 0.0
        self._oversample = soxr.ResampleStream(sample_rate, sample_rate * 4, channels, dtype="float32", quality="HQ")
        self.samples = 0

    def process(self, block: np.ndarray) -> None:
        if not block.shape[1]:
            return
        self.samples += block.shape[1]
        up = self._oversample.resample_chunk(np.ascontiguousarray(block.T))
        if up.size:
            self._peak = max(self._peak, float(np.max(np.abs(up))))
        self._peak = max(self._peak, float(np.max(np.abs(block))))
        weighted = block.astype(np.float64)
        for k, (b, a, gain) in enumerate(self._stages):
            weighted, self._state[k] = self._lfilter(b, a, weighted, axis=1, zi=self._state[k])
            weighted = weighted * gain
        at = 0
        total = weighted.shape[1]
        while at < total:
            take = min(self._step - self._partial_count, total - at)
            self._partial += np.sum(np.square(weighted[:, at:at + take]), axis=1)
            self._partial_count += take
            at += take
            if self._partial_count == self._step:
                self._steps.append(self._partial)
                self._partial = np.zeros(self.channels)
                self._partial_count = 0

    @property
    def true_peak_db(self) -> float:
        return 20 * np.log10(self._peak) if self._peak > 0 else float("-inf")

    @property
    def integrated(self) -> float:
        """Gated integrated loudness in LUFS (-inf for silence or under 400 ms)."""
        return gated_loudness(_block_powers(np.array(self._steps), self._step, self.channels))

    def descriptors(self) -> "Descriptors":
        """Maximum momentary and short-term loudness and the loudness range; see :func:`descriptors`."""
        return descriptors(np.array(self._steps), self._step, self.channels)

    def state(self) -> "MeterState":
        """What the album measurement needs of this meter: small, picklable."""
        return MeterState(steps=np.array(self._steps), step=self._step, channels=self.channels, peak=self._peak)


@dataclasses.dataclass(frozen=True)
class MeterState:
    """A finished meter's 100 ms step energies and its true peak (linear)."""

    steps: np.ndarray
    step: int
    channels: int
    peak: float

    @property
    def true_peak_db(self) -> float:
        return 20 * np.log10(self.peak) if self.peak > 0 else float("-inf")

    @property
    def integrated(self) -> float:
        """Gated integrated loudness in LUFS, as :attr:`LoudnessMeter.integrated` gave it."""
        return gated_loudness(_block_powers(self.steps, self.step, self.channels))

    def descriptors(self) -> "Descriptors":
        return descriptors(self.steps, self.step, self.channels)


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """EBU Tech 3341/3342 measures of one programme: LUFS (or -inf) and LU."""

    max_momentary: float
    max_short_term: float
    loudness_range: float | None  # None under 3 s of audio (no short-term value)


def descriptors(steps: np.ndarray, step: int, channels: int) -> Descriptors:
    """Max momentary (400 ms) and short-term (3 s) loudness, and the loudness range (EBU Tech 3342),
    from 100 ms step energies. Windows slide by 100 ms; under 3 s of audio there is no range."""
    momentary = _window_loudness(steps, step, channels, BLOCK_S)
    short = _window_loudness(steps, step, channels, SHORT_TERM_S)
    gated = short[short >= ABSOLUTE_GATE]
    lra = None if not short.size else 0.0
    if gated.size:
        relative = 10 * np.log10(np.mean(10 ** (gated / 10))) + LRA_RELATIVE_GATE
        kept = gated[gated >= relative]
        if kept.size:
            low, high = np.percentile(kept, LRA_PERCENTILES)
            lra = float(high - low)
    return Descriptors(max_momentary=float(momentary.max()) if momentary.size else float("-inf"),
                       max_short_term=float(short.max()) if short.size else float("-inf"), loudness_range=lra)


def _window_loudness(steps: np.ndarray, step: int, channels: int, seconds: float) -> np.ndarray:
    """Loudness (LUFS, -inf for silence) of every ``seconds`` window, sliding by one 100 ms step."""
    per_window = int(round(seconds / STEP_S))
    if len(steps) < per_window:
        return np.zeros(0)
    window = np.lib.stride_tricks.sliding_window_view(steps, per_window, axis=0).sum(axis=-1)
    power = (window / (per_window * step)) @ channel_weights(channels)
    with np.errstate(divide="ignore"):
        return -0.691 + 10 * np.log10(power)


def album_loudness(states) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) of several songs taken as one programme.

    Each song's 400 ms gating blocks are pooled and gated together (BS.1770-4 over the album,
    as ReplayGain's album mode measures it); no block spans two songs.
    """
    powers = [_block_powers(s.steps, s.step, s.channels) for s in states]
    pooled = np.concatenate([p for p in powers if p.size]) if any(p.size for p in powers) else np.zeros(0)
    peak = max((s.peak for s in states), default=0.0)
    return gated_loudness(pooled), (20 * np.log10(peak) if peak > 0 else float("-inf"))


def _block_powers(steps: np.ndarray, step: int, channels: int) -> np.ndarray:
    """Channel-weighted mean square of every 400 ms block (75 % overlap) from 100 ms step energies."""
    per_block = int(round(BLOCK_S / STEP_S))
    if len(steps) < per_block:
        return np.zeros(0)
    window = np.lib.stride_tricks.sliding_window_view(steps, per_block, axis=0).sum(axis=-1)
    mean_square = window / (per_block * step)  # (blocks, channels)
    return mean_square @ channel_weights(channels)


def gated_loudness(power: np.ndarray) -> float:
    """BS.1770-4 gating (-70 LUFS absolute, -10 LU relative) over block powers; LUFS or -inf."""
    if not power.size:
        return float("-inf")
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(power)
    gated = power[loudness >= ABSOLUTE_GATE]
    if not gated.size:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(gated.mean()) + RELATIVE_GATE
    with np.errstate(divide="ignore"):
        final = power[(loudness >= ABSOLUTE_GATE) & (loudness >= relative)]
    return float(-0.691 + 10 * np.log10(final.mean())) if final.size else float("-inf")
