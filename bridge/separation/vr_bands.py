"""The multi-band spectrogram of UVR's VR models, and back: numpy and scipy, no model.

A VR model (Ultimate Vocal Remover's "VR architecture", python-audio-separator's
``uvr_lib_v5``) reads one magnitude spectrogram made of several bands, each cut from the STFT of
the song resampled to the band's own rate with the band's own ``n_fft`` and hop. A *parameter
set* (UVR's ``modelparams/*.json``, shipped in ``models/uvr_vr.json``) says, per band ``d = 1..N``
(lowest first): ``sr``, ``hl`` (hop), ``n_fft``, ``crop_start``/``crop_stop`` (the STFT rows the
band contributes, stacked in band order), the crossover ramps ``hpf_start``/``hpf_stop`` and
``lpf_start``/``lpf_stop`` applied on the way back, and ``res_type``; and for the whole set
``bins`` (rows of the stack, one more row is kept), ``sr`` and the ``pre_filter_start/stop`` ramp.

:class:`Bands` does what the reference's ``spec_utils`` does with a set, on a slice of a song
rather than the whole song:

- analysis (``loading_mix`` + ``wave_to_spectrogram`` + ``combine_spectrograms``): band N is the
  song at the set's rate; band d is band d+1 resampled with :func:`scipy.signal.resample_poly`
  (what librosa's ``res_type="polyphase"`` calls, its output cast back to float32); each band's
  centred STFT (periodic Hann of ``n_fft``, computed in float64 and stored as complex64, as
  ``librosa.stft``); v5.1 models mix the channels per band (``convert_channels``), v5 models per
  set (``mid_side``, ``mid_side_b2``); rows stacked; the pre-filter ramp;
- synthesis (``cmb_spectrogram_to_wave``): rows back into each band's STFT (complex128), the
  crossover ramps, inverse STFT (librosa's ``istft``: windowed overlap-add divided by the summed
  squared window, over the frames that exist), and from the lowest band up: resample to the next
  band's rate and add that band.

A slice is any stretch of the song that starts on a frame of the top band; frames are numbered
from the song's start, so frame ``t`` of every band is the one centred on ``t * hop_N /
sr_N`` seconds. Whatever depends on the slice's edges (the STFT of its first and last
``n_fft / 2`` samples, the resampling filters' tails) stays within :attr:`settle` frames of them.

Exact and not exact
-------------------
The reference resamples with ``librosa.resample(res_type=...)``, the band's ``res_type`` on the way
in and one module-wide type on the way back: ``sinc_fastest`` (libsamplerate) on Linux and Intel
Macs, ``polyphase`` on Apple Silicon. Here every resampling is ``polyphase``. So the analysis
matches the reference exactly for sets whose resampled bands say ``polyphase`` (every 3- and
4-band set, and 1-band sets, which resample nothing at their own rate); the synthesis matches the
reference as it runs on Apple Silicon, and differs from its Linux output by the difference of two
good resamplers (measured in the README). Sets whose resampled bands use ``sinc_*`` or
``kaiser_*`` types (``2band_*``) run with ``polyphase`` instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ModelError

#: The stems that UVR treats as "non-accompaniment": aggression is applied the other way round
#: for models whose primary stem is one of these (python-audio-separator's ``NON_ACCOM_STEMS``).
NON_ACCOMPANIMENT = ("Vocals", "Other", "Bass", "Drums", "Guitar", "Piano", "Synthesizer", "Strings",
                     "Woodwinds", "Brass", "Wind Inst")

#: UVR's pairs of stem names (python-audio-separator's ``STEM_PAIR_MAPPER``); otherwise "No X" <-> "X".
STEM_PAIRS = {"Vocals": "Instrumental", "Instrumental": "Vocals"}


def secondary_stem(primary: str) -> str:
    """The reference's name of a VR model's other stem: Vocals <-> Instrumental, "No X" <-> "X"."""
    if primary in STEM_PAIRS:
        return STEM_PAIRS[primary]
    return primary[3:] if primary.startswith("No ") else f"No {primary}"


@lru_cache(maxsize=1)
def uvr_vr_table() -> dict:
    """``models/uvr_vr.json``: ``{"models": {md5: entry}, "params": {name: set}, "credit", "license"}``."""
    path = Path(str(resources.files("bridge._models"))) / "uvr_vr.json"
    return json.loads(path.read_text(encoding="utf-8"))


def param_set(name: str) -> dict:
    """UVR's parameter set ``name`` (``4band_v3``, ...); a :class:`ModelError` listing them otherwise."""
    from ..errors import suggest

    params = uvr_vr_table()["params"]
    if name not in params:
        raise ModelError(f"unknown VR parameter set '{name}'{suggest(str(name), sorted(params))}; known: "
                         f"{', '.join(sorted(params))}")
    return params[name]


def _lp_gains(n: int, start: int, stop: int, *, v51: bool) -> np.ndarray:
    """Per-row gains of the reference's low-pass ramp over ``n`` rows (``fft_lp_filter`` or, for
    v5.1 models, ``get_lp_filter_mask``)."""
    gains = np.ones(n)
    if v51:
        gains[start - 1:stop] = np.linspace(1, 0, stop - start + 1)
        gains[stop:] = 0
        return gains
    g = 1.0
    for b in range(start, stop):
        g -= 1 / (stop - start)
        gains[b] = g
    gains[stop:] = 0
    return gains


def _hp_gains(n: int, start: int, stop: int, *, v51: bool) -> np.ndarray:
    """Per-row gains of the reference's high-pass ramp (``fft_hp_filter`` / ``get_hp_filter_mask``),
    called as the reference calls them, with ``stop = hpf_stop - 1``."""
    gains = np.ones(n)
    if v51:
        gains[:stop + 1] = 0
        gains[stop + 1:start + 2] = np.linspace(0, 1, 1 + start - stop)
        return gains
    g = 1.0
    for b in range(start, stop, -1):
        g -= 1 / (start - stop)
        gains[b] = g
    gains[:stop + 1] = 0
    return gains


@dataclasses.dataclass(frozen=True)
class Band:
    sr: int
    hop: int
    n_fft: int
    crop_start: int
    crop_stop: int
    res_type: str
    convert: str | None  # v5.1 channel mixing: mid_side, mid_side_c, stereo_n

    @property
    def rows(self) -> int:
        return self.crop_stop - self.crop_start


class Bands:
    """One parameter set, ready to run on slices of a song.

    Parameters
    ----------
    params : dict
        A set as UVR's JSON writes it (band keys ``"1"``... as strings or ints).
    v51 : bool
        A v5.1 model (``nets_new.CascadedNet``): channel mixing per band, the v5.1 filter ramps.
    name : str
        The set's name, for messages.
    """

    def __init__(self, params: dict, *, v51: bool, name: str = "the parameter set"):
        self.name = name
        self.v51 = v51
        try:
            bands = {int(k): v for k, v in params["band"].items()}
            self.bins = int(params.get("n_bins", params.get("bins")))
            self.sr = int(params["sr"])
            self.bands = [Band(int(b["sr"]), int(b["hl"]), int(b["n_fft"]), int(b["crop_start"]), int(b["crop_stop"]),
                               str(b.get("res_type", "polyphase")), b.get("convert_channels"))
                          for _, b in sorted(bands.items())]
            raw = [b for _, b in sorted(bands.items())]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{name}: not a VR parameter set ({type(exc).__name__}: {exc})") from None
        if sorted(bands) != list(range(1, len(bands) + 1)):
            raise ModelError(f"{name}: bands must be numbered 1..N, got {sorted(bands)}")
        if params.get("reverse"):
            raise ModelError(f"{name}: a 'reverse' set runs the song backwards, which cannot be streamed; "
                             "not supported")
        # v5 sets may ask for mid/side input (the reference honours mid_side and mid_side_b2 only).
        self.stereo = None if v51 else ("mid_side" if params.get("mid_side")
                                        else "mid_side_b2" if params.get("mid_side_b2") else None)
        top = self.bands[-1]
        if top.sr != self.sr:
            raise ModelError(f"{name}: the top band's rate {top.sr} differs from the set's {self.sr}; not supported")
        for band in self.bands:
            if band.hop * self.sr != top.hop * band.sr or band.n_fft % 2:
                raise ModelError(f"{name}: band at {band.sr} Hz has hop {band.hop}: every band must have the top "
                                 f"band's frame rate ({top.hop}/{top.sr} s) and an even n_fft")
        # Resampling stays in phase with a slice only if each slice start is a multiple of `down`.
        self.down_steps = []  # (up, down) from band d+1 to band d, analysis
        for low, high in zip(self.bands[:-1], self.bands[1:]):
            g = math.gcd(low.sr, high.sr)
            up, down = low.sr // g, high.sr // g
            if high.hop % down or low.hop % up:
                raise ModelError(f"{name}: hops {low.hop} at {low.sr} Hz and {high.hop} at {high.sr} Hz do not keep "
                                 "the resampling in phase with the frames; not supported")
            self.down_steps.append((up, down))
        n = self.bins + 1
        pre_start, pre_stop = int(params.get("pre_filter_start", -1)), int(params.get("pre_filter_stop", -1))
        self.pre_gains = np.ones(n)
        if pre_start > 0:
            if v51:
                self.pre_gains = _lp_gains(n, pre_start, pre_stop, v51=True)
            elif len(self.bands) == 1:
                self.pre_gains = _lp_gains(n, pre_start, pre_stop, v51=False)
            else:
                gp = 1.0
                for b in range(pre_start + 1, pre_stop):
                    g = math.pow(10, -(b - pre_start) * (3.5 - gp) / 20.0)
                    gp = g
                    self.pre_gains[b] = g
        # Synthesis ramps per band (on each band's own STFT rows).
        self.band_gains = []
        last = len(self.bands) - 1
        for d, (band, b) in enumerate(zip(self.bands, raw)):
            rows = band.n_fft // 2 + 1
            gains = np.ones(rows)
            if d == last:
                if int(b.get("hpf_start", -1)) > 0:
                    gains *= _hp_gains(rows, int(b["hpf_start"]), int(b["hpf_stop"]) - 1, v51=v51)
            elif d == 0:
                gains *= _lp_gains(rows, int(b["lpf_start"]), int(b["lpf_stop"]), v51=v51)
            else:
                gains *= _hp_gains(rows, int(b["hpf_start"]), int(b["hpf_stop"]) - 1, v51=v51)
                gains *= _lp_gains(rows, int(b["lpf_start"]), int(b["lpf_stop"]), v51=v51)
            self.band_gains.append(gains)
        if sum(b.rows for b in self.bands) > self.bins:
            raise ModelError(f"{name}: the bands' rows add up to more than bins {self.bins}")
        self.hop = top.hop
        # Frames within which a slice's edges disturb the result: the widest STFT half-window plus
        # the resampling filters (scipy's half length, 10 * max(up, down) input samples per step).
        reach = max(b.n_fft // 2 * self.sr / b.sr for b in self.bands)
        reach += sum(10 * max(up, down) * self.sr / self.bands[i + 1].sr
                     for i, (up, down) in enumerate(self.down_steps))
        self.settle = 2 * math.ceil(reach / self.hop) + 2

    # --- analysis -------------------------------------------------------------------------------

    def analyse(self, audio: np.ndarray) -> np.ndarray:
        """The combined spectrogram of a slice.

        Parameters
        ----------
        audio : ndarray, shape (2, samples), float32
            A slice at :attr:`sr` whose first sample is on a top-band frame; ``samples`` a whole
            number of top-band hops.

        Returns
        -------
        ndarray, shape (2, bins + 1, samples // hop + 1), complex64
            Frame ``t`` is centred on the slice's sample ``t * hop``.
        """
        from scipy.signal import resample_poly  # here: scipy.signal (and the scipy.stats it imports)
        # costs 0.6 s, and every run imports this module through the family registry

        frames = audio.shape[1] // self.hop + 1
        spec = np.zeros((2, self.bins + 1, frames), np.complex64)
        wave = audio
        row = sum(b.rows for b in self.bands)
        for d in range(len(self.bands) - 1, -1, -1):
            band = self.bands[d]
            if d < len(self.bands) - 1:
                up, down = self.down_steps[d]
                wave = resample_poly(wave, up, down, axis=-1).astype(np.float32, copy=False)
            stft = _stft(self._stereo_in(wave), band.n_fft, band.hop)[:, :, :frames]
            if self.v51:
                stft = _convert(stft, band.convert)
            row -= band.rows
            spec[:, row:row + band.rows, :stft.shape[2]] = stft[:, band.crop_start:band.crop_stop]
        if not np.all(self.pre_gains == 1):
            spec *= self.pre_gains[:, None].astype(np.float32 if not self.v51 else np.float64)
        return spec

    def _stereo_in(self, wave: np.ndarray) -> np.ndarray:
        if self.stereo == "mid_side":
            return np.stack([(wave[0] + wave[1]) / 2, wave[0] - wave[1]])
        if self.stereo == "mid_side_b2":
            return np.stack([wave[1] + wave[0] * 0.5, wave[0] - wave[1] * 0.5])
        return wave

    # --- synthesis ------------------------------------------------------------------------------

    def synthesise(self, spec: np.ndarray, first: int, *, exists_from: int = 0) -> tuple[int, np.ndarray]:
        """Waves from combined-spectrogram frames, as the reference's ``cmb_spectrogram_to_wave``.

        Parameters
        ----------
        spec : ndarray, shape (2, bins + 1, frames), complex
            Frames ``first .. first + frames - 1`` of a slice (numbered as :meth:`analyse` does).
        first : int
            The slice frame of ``spec[..., 0]``.
        exists_from : int
            The first slice frame that exists in the song (frames before it are left out of the
            overlap-add and of the window sums, as frames before the song are in the reference).

        Returns
        -------
        (start, wave) : int and ndarray, shape (2, n), float64
            Samples of the slice at :attr:`sr` from ``start``: only those every frame around them
            contributes to (no edge effects of the frame range but the song's own start).
        """
        from scipy.signal import resample_poly  # here, as in analyse

        skip = max(0, exists_from - first)
        spec, first = spec[:, :, skip:], first + skip
        wave_start, wave = None, None
        row = 0
        for d, band in enumerate(self.bands):
            rows = np.zeros((2, band.n_fft // 2 + 1, spec.shape[2]), np.complex128)
            rows[:, band.crop_start:band.crop_stop] = spec[:, row:row + band.rows]
            row += band.rows
            rows *= self.band_gains[d][:, None]
            start, part = _istft(rows, band.n_fft, band.hop, first, song_start=first == exists_from)
            part = self._stereo_out(_convert_back(part, band.convert) if self.v51 else part)
            if wave is not None:
                wave_start, wave = _add(wave_start, wave, start, part)
            else:
                wave_start, wave = start, part
            if d < len(self.bands) - 1:
                up, down = self.down_steps[d]  # band d+1 -> band d on the way in: up <-> down on the way out
                at_start = first == exists_from and wave_start == first * band.hop
                lead = -wave_start % up  # in phase with the song's grid of `up` samples
                wave, wave_start = wave[:, lead:], wave_start + lead
                wave = resample_poly(wave, down, up, axis=-1)
                wave_start = wave_start * down // up
                # Drop the resampler's edge effects (not at the song's start, which the reference
                # also resamples from zeros): its filter reaches 10 * max(up, down) / up samples.
                reach = math.ceil(10 * max(up, down) / up) + 1
                wave = wave[:, (0 if at_start and not lead else reach):wave.shape[1] - reach]
                wave_start += 0 if at_start and not lead else reach
        return wave_start, wave

    def _stereo_out(self, wave: np.ndarray) -> np.ndarray:
        if self.stereo == "mid_side":
            return np.stack([wave[0] + wave[1] / 2, wave[0] - wave[1] / 2])
        if self.stereo == "mid_side_b2":
            return np.stack([wave[1] / 1.25 + 0.4 * wave[0], wave[0] / 1.25 - 0.4 * wave[1]])
        return wave


def _stft(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``librosa.stft(wave, n_fft=n_fft, hop_length=hop)`` (centred, zero-padded, periodic Hann):
    ``(channels, n_fft/2+1, samples // hop + 1)`` complex64, each frame computed in float64."""
    half = n_fft // 2
    padded = np.pad(wave, ((0, 0), (half, half)))
    frames = 1 + (padded.shape[1] - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    view = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop][:, :frames]
    out = np.fft.rfft(view * window, axis=-1)  # (channels, frames, bins)
    return np.ascontiguousarray(out.transpose(0, 2, 1)).astype(np.complex64)


def _istft(spec: np.ndarray, n_fft: int, hop: int, first: int, *, song_start: bool) -> tuple[int, np.ndarray]:
    """Overlap-add of frames ``first..`` (centred, periodic Hann, divided by the summed squared
    window where it is above float's tiny); returns ``(start, wave)`` in the band's samples (sample
    0 = frame 0's centre), only where no missing frame (before ``first`` or after the last) would
    contribute, except before the song, where none exists."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = spec.shape[2]
    ytmp = np.fft.irfft(spec, n=n_fft, axis=1) * window[None, :, None]  # (c, n_fft, frames)
    length = n_fft + hop * (frames - 1)
    y = np.zeros((spec.shape[0], length))
    wsum = np.zeros(length)
    sq = window ** 2
    for t in range(frames):
        y[:, t * hop:t * hop + n_fft] += ytmp[:, :, t]
        wsum[t * hop:t * hop + n_fft] += sq
    good = wsum > np.finfo(wsum.dtype).tiny
    y[:, good] /= wsum[good]
    start = first * hop - n_fft // 2  # band sample of y[:, 0]
    lo = n_fft // 2 if song_start else n_fft - hop  # complete from here (or the song's start)
    hi = length - (n_fft - hop)
    return start + lo, y[:, lo:hi]


def _add(a_start: int, a: np.ndarray, b_start: int, b: np.ndarray) -> tuple[int, np.ndarray]:
    """The sum of two waves over the samples both cover."""
    lo, hi = max(a_start, b_start), min(a_start + a.shape[1], b_start + b.shape[1])
    return lo, a[:, lo - a_start:hi - a_start] + b[:, lo - b_start:hi - b_start]


def _convert(spec: np.ndarray, how: str | None) -> np.ndarray:
    if how == "mid_side_c":
        return np.stack([spec[0] + spec[1] * 0.25, spec[1] - spec[0] * 0.25])
    if how == "mid_side":
        return np.stack([(spec[0] + spec[1]) / 2, spec[0] - spec[1]])
    if how == "stereo_n":
        return np.stack([(spec[0] + spec[1] * 0.25) / 0.9375, (spec[1] + spec[0] * 0.25) / 0.9375])
    return spec


def _convert_back(wave: np.ndarray, how: str | None) -> np.ndarray:
    if how == "mid_side_c":
        return np.stack([wave[0] / 1.0625 - wave[1] / 4.25, wave[1] / 1.0625 + wave[0] / 4.25])
    if how == "mid_side":
        return np.stack([wave[0] + wave[1] / 2, wave[0] - wave[1] / 2])
    if how == "stereo_n":
        return np.stack([wave[0] - wave[1] * 0.25, wave[1] - wave[0] * 0.25])
    return wave
