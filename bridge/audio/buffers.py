"""Buffers: checks, layout conversion and resampling.

The buffer contract of the whole package: ``numpy.ndarray``, ``float32``, shape
``(channels, samples)``, with ``sample_rate`` passed beside it on every call (pedalboard's own
contract). soundfile and pyloudnorm use ``(frames, channels)``: convert only at the edges, with
:func:`frames_first` and :func:`channels_first`, never by guessing from which axis is smaller.
"""

from __future__ import annotations

import numpy as np
import soxr

from ..errors import AudioError

#: Sample rates outside this range are refused: below it nothing musical survives, above it
#: the resampler and the models have never been checked.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000


def validate(audio, sample_rate, *, name: str = "audio") -> np.ndarray:
    """Check a buffer against the contract and return it as float32, never a view to mutate.

    Parameters
    ----------
    audio : ndarray, shape (channels, samples)
        Floating-point samples, nominally in [-1, 1]. float64 is converted to float32.
    sample_rate : int or float
        In Hz.
    name : str
        What to call the buffer in an error message (a file name, a stem name).

    Returns
    -------
    ndarray, shape (channels, samples), float32
        The same array if it already was float32, otherwise a converted copy.

    Raises
    ------
    AudioError
        Wrong type, dimensionality, dtype, sample rate, or non-finite samples.
    """
    if not isinstance(audio, np.ndarray):
        raise AudioError(f"{name}: expected a numpy array of shape (channels, samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        raise AudioError(
            f"{name}: expected shape (channels, samples), got {audio.shape}; "
            "a mono signal is audio[np.newaxis, :], and soundfile's (frames, channels) is audio.T"
        )
    if audio.shape[0] < 1:
        raise AudioError(f"{name}: a buffer needs at least one channel, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(
            f"{name}: expected float32 samples in [-1, 1], got {audio.dtype}; "
            "convert integer PCM with audio.astype(np.float32) / 2**(bits-1)"
        )
    check_sample_rate(sample_rate, name=name)
    if audio.dtype != np.float32:
        audio = audio.astype(np.float32)
    check_finite(audio, name=name, sample_rate=sample_rate)
    return audio


def check_sample_rate(sample_rate, *, name: str = "audio") -> int:
    """Return ``sample_rate`` as an int, or raise :class:`AudioError` if it is unusable."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(f"{name}: sample rate must be a number of Hz, got {sample_rate!r}") from None
    if not rate.is_integer() or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sample_rate!r} Hz is not supported; "
            f"expected a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}"
        )
    return int(rate)


def check_finite(audio: np.ndarray, *, name: str, sample_rate, offset: int = 0) -> None:
    """Raise :class:`AudioError` naming the first NaN or Inf sample and its time."""
    if np.isfinite(audio).all():
        return
    channel, index = np.argwhere(~np.isfinite(audio))[0]
    value = audio[channel, index]
    seconds = (offset + index) / float(sample_rate)
    raise AudioError(
        f"{name}: sample {offset + index} ({seconds:.3f} s) of channel {channel} is {value}; "
        "the audio holds NaN or Inf samples, so it cannot be separated: repair or re-export the file"
    )


def frames_first(audio: np.ndarray) -> np.ndarray:
    """``(channels, samples)`` -> ``(samples, channels)``, the layout of soundfile and pyloudnorm."""
    return audio.T


def channels_first(frames: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` -> ``(channels, samples)``; a 1-D array is one channel."""
    if frames.ndim == 1:
        return frames[np.newaxis, :]
    return frames.T


def db_to_gain(db) -> float:
    """Decibels to a linear amplitude factor."""
    return float(10.0 ** (np.asarray(db, dtype=np.float64) / 20.0))


def power_db(audio: np.ndarray) -> float:
    """Mean power in dB relative to full scale (-inf for silence)."""
    power = float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def resample(audio: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a whole buffer with soxr (VHQ), keeping ``(channels, samples)`` float32."""
    if orig_sr == target_sr:
        return audio
    out = soxr.resample(frames_first(audio), orig_sr, target_sr, quality="VHQ")
    return np.ascontiguousarray(channels_first(out), dtype=np.float32)


class StreamResampler:
    """Block-by-block resampling whose concatenated output equals one long resample.

    soxr's stream removes its own filter delay, so the output starts at time zero; call
    :meth:`flush` once at the end to drain the filter.
    """

    def __init__(self, *, orig_sr: int, target_sr: int, channels: int):
        self.identity = orig_sr == target_sr
        self._channels = channels
        if not self.identity:
            self._stream = soxr.ResampleStream(orig_sr, target_sr, channels, dtype="float32", quality="VHQ")

    def process(self, block: np.ndarray, *, last: bool = False) -> np.ndarray:
        if self.identity:
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(frames_first(block)), last=last)
        return np.ascontiguousarray(channels_first(out.reshape(-1, self._channels)), dtype=np.float32)

    def flush(self) -> np.ndarray:
        return self.process(np.zeros((self._channels, 0), np.float32), last=True)
