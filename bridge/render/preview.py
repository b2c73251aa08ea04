"""A song's pictures and levels for the run report: a sink that watches every block.

:class:`Preview` is fed the same blocks as the audio files (the mix and the stems, at the song's
rate) and keeps only what the report draws, so memory stays flat with song length:

- **waveforms**: per signal, the minimum and maximum sample (over channels) of consecutive
  buckets, about :data:`WAVE_POINTS` buckets per song: the envelope a DAW draws for a track;
- **spectrograms**: per signal, the channel mean cut into frames of :data:`N_FFT` samples with
  no overlap, each Hann-windowed, and the frames' power spectra averaged into about
  :data:`SPEC_COLUMNS` time columns (a Welch estimate per column), then into log-spaced bands.
  No frame overlap: the picture needs a level per column, not a reversible transform, and one
  FFT per 2048 samples keeps the cost at a few FFTs per second of audio per signal.

At :meth:`Preview.finish` (the song's gain known, so the pictures show the written levels) it
draws both figures with matplotlib (``pip install "stembridge[report]"``), image bytes in a
picklable :class:`SongPreview` that travels back from worker processes; the HTML is written
once per run by :mod:`bridge.batch.report`. matplotlib is used through its object API
(``Figure`` + the Agg canvas): no pyplot, no global backend or style state.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ReportError
from .sinks import AudioFiles, Block, Gain

#: Buckets per waveform row (about one per horizontal pixel of the figure).
WAVE_POINTS = 1400
#: Spectrogram frame length in samples (46 ms at 44.1 kHz: 21.5 Hz bins) and the columns per song.
N_FFT = 2048
SPEC_COLUMNS = 600
#: Log-spaced display bands between the first FFT bin and Nyquist.
SPEC_BANDS = 160
#: The colour scale's span below the loudest band of the song, dB.
SPEC_RANGE_DB = 90.0


def require_matplotlib() -> None:
    """Refuse ``--report`` before any work when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError('--report draws with matplotlib, which is not installed; pip install "stembridge[report]"') \
            from None


class _Signal:
    """What one signal of the song leaves for the pictures: envelope buckets and spectrum columns."""

    def __init__(self, bucket: int, frames_per_column: int):
        self.bucket, self.per_column = bucket, frames_per_column
        self.lows: list[float] = []
        self.highs: list[float] = []
        self._low, self._high, self._filled = math.inf, -math.inf, 0
        self._rest = np.zeros(0, np.float32)  # samples short of a whole FFT frame
        self.columns: list[np.ndarray] = []
        self._power = np.zeros(N_FFT // 2 + 1)
        self._frames = 0
        self.samples = 0

    def process(self, audio: np.ndarray) -> None:
        if audio.shape[1] == 0:
            return
        self.samples += audio.shape[1]
        self._envelope(audio.min(axis=0), audio.max(axis=0))
        mono = np.concatenate([self._rest, audio.mean(axis=0, dtype=np.float32)])
        whole = mono.shape[0] // N_FFT * N_FFT
        self._rest = mono[whole:]
        if whole:
            self._spectra(mono[:whole].reshape(-1, N_FFT))

    def _envelope(self, lows: np.ndarray, highs: np.ndarray) -> None:
        at = 0
        while at < lows.shape[0]:
            take = min(self.bucket - self._filled, lows.shape[0] - at)
            self._low = min(self._low, float(lows[at:at + take].min()))
            self._high = max(self._high, float(highs[at:at + take].max()))
            self._filled += take
            at += take
            if self._filled == self.bucket:
                self._close_bucket()

    def _close_bucket(self) -> None:
        self.lows.append(self._low)
        self.highs.append(self._high)
        self._low, self._high, self._filled = math.inf, -math.inf, 0

    def _spectra(self, frames: np.ndarray) -> None:
        power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
        at = 0
        while at < power.shape[0]:
            take = min(self.per_column - self._frames, power.shape[0] - at)
            self._power += power[at:at + take].sum(axis=0)
            self._frames += take
            at += take
            if self._frames == self.per_column:
                self._close_column()

    def _close_column(self) -> None:
        self.columns.append(self._power / self._frames)
        self._power = np.zeros_like(self._power)
        self._frames = 0

    def end(self) -> None:
        if self._filled:
            self._close_bucket()
        if self._rest.shape[0]:  # the last partial frame, zero-padded
            self._spectra(np.pad(self._rest, (0, N_FFT - self._rest.shape[0]))[None, :])
            self._rest = np.zeros(0, np.float32)
        if self._frames:
            self._close_column()


_WINDOW = np.hanning(N_FFT + 1)[:N_FFT].astype(np.float32)  # periodic Hann
# Power of a full-scale sine in its bin: (sum(w) / 2) ** 2, so that such a sine reads 0 dB.
_FULL_SCALE = (float(_WINDOW.sum()) / 2) ** 2


@dataclasses.dataclass
class OutputLevels:
    """One written output, as the report shows it: levels in dB (None for silence)."""

    label: str
    path: str
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    loudness_range_lu: float | None
    clipped_samples: int


@dataclasses.dataclass
class SongPreview:
    """What the report shows of one rendered song; picklable (PNG bytes, numbers, paths)."""

    outputs: list[OutputLevels]
    gain: dict | None  # the manifest's loudness facts (target, gain, album) or None
    waveforms_png: bytes | None
    spectrograms_jpeg: bytes | None  # JPEG: a PNG of this noise-like picture is 4-5x larger
    signals: tuple[str, ...]
    seconds: float  # audio length drawn
    draw_seconds: float  # what the pictures cost this song: streaming analysis + drawing, CPU time


class Preview:
    """The report's sink for one song; see the module docstring.

    Parameters
    ----------
    audio : AudioFiles
        The song's audio files (metered): their levels after the gain are the report's numbers.
    sample_rate : int
        The rate of the blocks (the song's own).
    frames : int
        About how many samples the song's blocks will hold (sizes the buckets and columns).
    view : str, optional
        Draw the stems of this graph tap, as the audio files write them.
    """

    needs_gain = False  # it reads the gain at finish, but writes no first pass

    def __init__(self, audio: AudioFiles, *, sample_rate: int, frames: int, view: str | None = None):
        self.audio = audio
        self.sample_rate = sample_rate
        self.view = view
        self.bucket = max(1, math.ceil(frames / WAVE_POINTS))
        self.per_column = max(1, round(frames / N_FFT / SPEC_COLUMNS))
        self.signals: dict[str, _Signal] = {}
        self.result: SongPreview | None = None
        self._cpu = 0.0

    @property
    def targets(self) -> tuple[Path, ...]:
        return ()  # nothing of its own: the run's report is written once, by the run

    def open(self, scratch) -> None:
        pass

    def process(self, block: Block) -> None:
        started = time.process_time()
        stems = block.taps[self.view] if self.view else block.stems
        parts = ({"mix": block.mix} if block.mix is not None else {}) | dict(stems)
        for label, audio in parts.items():
            if label not in self.signals:
                self.signals[label] = _Signal(self.bucket, self.per_column)
            self.signals[label].process(audio)
        self._cpu += time.process_time() - started

    def end(self) -> None:
        for signal in self.signals.values():
            signal.end()

    def finish(self, gain: Gain, written: Mapping[str, Path]) -> dict:
        started = time.process_time()
        outputs = []
        stats = self.audio.stats(gain.db)
        for f in self.audio.files:
            s = stats[f.label]
            lra = (f.loudness.descriptors().loudness_range
                   if f.loudness is not None and s.loudness_lufs is not None else None)  # none for silence
            outputs.append(OutputLevels(f.label, str(f.path), s.loudness_lufs, s.true_peak_dbtp,
                                        None if lra is None else round(lra, 3), s.clipped_samples))
        waves, spectra = draw(self.signals, sample_rate=self.sample_rate, bucket=self.bucket,
                              per_column=self.per_column, gain_db=gain.db)
        seconds = max((s.samples for s in self.signals.values()), default=0) / self.sample_rate
        self._cpu += time.process_time() - started
        self.result = SongPreview(outputs, gain.loudness, waves, spectra, tuple(self.signals), seconds, self._cpu)
        self.signals = {}
        return {}

    def abort(self) -> None:
        self.signals = {}


# --- drawing -------------------------------------------------------------------------------------

def minutes_seconds(seconds: float, _position=None) -> str:
    """An axis label: ``m:ss``."""
    total = int(round(max(0.0, float(seconds))))
    return f"{total // 60}:{total % 60:02d}"


#: The waveform's amplitude scales: the smallest that holds the song's peak (full scale is 1).
_LIMITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def wave_limit(peak: float) -> float:
    """The waveforms' y range: the smallest of :data:`_LIMITS` above ``peak`` (a quiet song is
    zoomed, as a DAW's waveform zoom does), or a little over the peak when it passes full scale."""
    if peak > 1.0:
        return round(peak * 1.05, 2)
    return next((limit for limit in _LIMITS if peak <= limit * 0.98), 1.0)


def band_edges(sample_rate: int) -> np.ndarray:
    """FFT bin indices that start each log-spaced display band, and the end (N_FFT // 2 + 1)."""
    top = N_FFT // 2 + 1
    starts = np.unique(np.round(np.geomspace(1, top - 1, SPEC_BANDS)).astype(int))
    return np.append(starts, top)


def draw(signals: Mapping[str, _Signal], *, sample_rate: int, bucket: int, per_column: int,
         gain_db: float) -> tuple[bytes | None, bytes | None]:
    """The waveform figure (one row per signal, one time axis; PNG bytes) and the spectrogram
    figure (one row per signal, log frequency, one dB colour scale with its legend; JPEG bytes)."""
    if not signals:
        return None, None
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    gain = 10 ** (gain_db / 20)
    names = list(signals)
    seconds = max(s.samples for s in signals.values()) / sample_rate
    time_format = FuncFormatter(minutes_seconds)
    # Ticks on whole seconds that read well as m:ss: 1, 2, 3, 6, 10, 15, 20, 30, 60 s apart ...
    time_ticks = MaxNLocator(nbins=12, steps=[1, 1.5, 2, 3, 6, 10], integer=True, min_n_ticks=3)

    rows = len(names)
    envelopes = {name: (np.asarray(signals[name].lows) * gain, np.asarray(signals[name].highs) * gain)
                 for name in names}
    peak = max((float(max(-lo.min(), hi.max())) for lo, hi in envelopes.values() if lo.size), default=0.0)
    limit = wave_limit(peak)
    fig, axes = _stacked(rows, row_inches=0.95, top_inches=0.35 if limit < 1 else 0.15)
    for ax, name in zip(axes, names):
        lows, highs = envelopes[name]
        t = (np.arange(lows.shape[0]) + 0.5) * bucket / sample_rate
        ax.fill_between(t, lows, highs, color="#2b6cb0", linewidth=0.4)
        over = np.maximum(highs, -lows) > 1.0
        if over.any():  # what a PCM file clips: marked in red
            ax.fill_between(t, lows, highs, where=over, color="#c53030", linewidth=0.4)
        if limit > 1:
            for level in (-1, 1):
                ax.axhline(level, color="#c53030", linewidth=0.6, linestyle="--")
        ax.set_ylim(-limit, limit)
        ax.set_yticks([-limit, 0, limit], [f"{-limit:g}", "0", f"{limit:g}"])
        for label, va in zip(ax.get_yticklabels(), ("bottom", "center", "top")):  # inside the row: rows touch
            label.set_verticalalignment(va)
        ax.axhline(0, color="#a0aec0", linewidth=0.5)
        ax.set_ylabel(name, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0, seconds)
    if limit < 1:
        fig.text(0.5 * (_LEFT + _RIGHT), 1 - 0.1 / fig.get_figheight(), f"amplitude zoomed to \u00b1{limit:g} of "
                 "full scale (the loudest peak of the song)", fontsize=8, color="#4a5568", ha="center", va="top")
    axes[-1].xaxis.set_major_locator(time_ticks)
    axes[-1].xaxis.set_major_formatter(time_format)
    axes[-1].set_xlabel("time (m:ss)", fontsize=9)
    waves = _image(fig, "png")

    fig, axes = _stacked(rows, row_inches=1.6, top_inches=0.15)
    edges = band_edges(sample_rate)
    freqs = edges * sample_rate / N_FFT
    levels = {}
    for name in names:
        columns = np.asarray(signals[name].columns)  # (time, bins)
        bands = np.add.reduceat(columns, edges[:-1], axis=1) / np.diff(edges)  # mean power per band
        levels[name] = 10 * np.log10(np.maximum(bands / _FULL_SCALE, 1e-20)) + gain_db
    top = max(float(v.max()) for v in levels.values() if v.size) if any(v.size for v in levels.values()) else 0.0
    top = math.ceil(top / 10) * 10
    mesh = None
    for ax, name in zip(axes, names):
        value = levels[name]
        t = np.arange(value.shape[0] + 1) * per_column * N_FFT / sample_rate
        t[-1] = min(t[-1], seconds) if t.shape[0] > 1 else t[-1]
        mesh = ax.pcolormesh(t, freqs, value.T, cmap="magma", vmin=top - SPEC_RANGE_DB, vmax=top,
                             shading="flat", rasterized=True)
        ax.set_yscale("log")
        ax.set_ylim(max(freqs[0], 20), sample_rate / 2)
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_hertz))
        ax.set_ylabel(f"{name}\nHz", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0, seconds)
    axes[-1].xaxis.set_major_locator(time_ticks)
    axes[-1].xaxis.set_major_formatter(time_format)
    axes[-1].set_xlabel("time (m:ss)", fontsize=9)
    low, high = axes[-1].get_position().y0, axes[0].get_position().y1
    bar = fig.colorbar(mesh, cax=fig.add_axes((_RIGHT + 0.015, low, 0.012, high - low)))
    bar.set_label("level, dB (full-scale sine = 0)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return waves, _image(fig, "jpeg")


#: Both figures share their left and right margins (as fractions of the width), so their time
#: axes line up one above the other on the page; the spectrograms' colour bar sits in the right one.
_LEFT, _RIGHT = 0.105, 0.9


def _stacked(rows: int, *, row_inches: float, top_inches: float):
    """A figure of ``rows`` axes stacked on one time axis, with fixed margins in inches."""
    from matplotlib.figure import Figure

    height = row_inches * rows + 0.55 + top_inches
    fig = Figure(figsize=(11, height), dpi=100)
    fig.subplots_adjust(left=_LEFT, right=_RIGHT, bottom=0.5 / height, top=1 - top_inches / height, hspace=0.12)
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _hertz(value: float, _position=None) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _image(fig, kind: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=100, **({"pil_kwargs": {"quality": 90}} if kind == "jpeg" else {}))
    return buffer.getvalue()
