"""Ensembles: the best model for each stem, and several models' stems combined.

An ensemble is a list of *parts*; each part names one or more models, the stems it gives, and
(for several models) how their stems are combined. :class:`EnsembleSeparator` satisfies
:class:`~bridge.separation.Separator`: it feeds every block to each model's stream once, so a song
is read once however many models run, and combines the stems as they come (memory stays flat:
nothing but a frame or a segment is held per model).

Methods (``x_1 .. x_K``: the K models' versions of one stem, ``(channels, samples)`` float32;
ties go to the model listed first, except in UVR's own two, which keep UVR's order):

``avg_wave``
    ``sum_k w_k x_k / sum_k w_k`` per sample (``w``: the weights, 1 each by default).
``median_wave``
    The median of the K values of each sample (``numpy.median``: the mean of the middle two for
    an even K).
``min_wave`` / ``max_wave``
    Per sample, the value (with its sign) of smallest / largest absolute value.
``avg_fft``
    ``istft(sum_k w_k X_k / sum_k w_k)``, with ``X_k = stft(x_k)`` (the STFT below).
``median_fft``
    ``istft(median_k Re X_k + i median_k Im X_k)``: real and imaginary parts separately.
``min_fft`` / ``max_fft``
    Per time-frequency bin, the complex value ``X_k`` of smallest / largest magnitude: its
    magnitude *and its phase* come from that one model (never a mix of phases).
``uvr_min_spec`` / ``uvr_max_spec``
    UVR's Min Spec / Max Spec: the same per-bin choice, folded as UVR folds it, model after model
    with ``<=`` / ``>=``, so a tie goes to the model listed *later*.
``ensemble_wav``
    UVR's "least noisy part": the song is cut into segments of :data:`SEGMENT_SECONDS` from its
    start; each segment comes whole (every channel) from the model whose segment has the smallest
    mean absolute value.

The STFT of the spectral methods is python-audio-separator's (librosa's defaults): ``n_fft``
2048 samples, hop 1024, periodic Hann window, frames centred on multiples of the hop with
``n_fft // 2`` zeros beyond each end (``1 + samples // hop`` frames), and the least-squares
inverse: overlap-added ``window * irfft(frame)`` divided by the summed squared window, trimmed to
the song's length. With one model (or K equal ones) every spectral method gives back its input to
float32 rounding, and since that inverse reconstructs perfectly and the mean is linear, ``avg_fft``
equals ``avg_wave`` to float32 rounding (it is computed so; the tests hold it to the transform's
definition). Only ``avg_wave`` and ``avg_fft`` take weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from ..audio.buffers import validate
from ..errors import ModelError
from .models import derived_stems, offered_stems

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: The STFT of the spectral methods (python-audio-separator's ``_stft``: librosa's defaults).
N_FFT = 2048
HOP = 1024
#: ``ensemble_wav``'s segment: UVR cuts a song into 240 parts, one second each for a 4-minute
#: song; a fixed length keeps memory flat and lets the song stream.
SEGMENT_SECONDS = 1.0

WAVE_METHODS = ("avg_wave", "median_wave", "min_wave", "max_wave")
SPECTRAL_METHODS = ("avg_fft", "median_fft", "min_fft", "max_fft", "uvr_max_spec", "uvr_min_spec")
METHODS = WAVE_METHODS + SPECTRAL_METHODS + ("ensemble_wav",)
WEIGHTED = ("avg_wave", "avg_fft")


def check_method(method, *, weights=None, models: int, where: str, method_key: str | None = None,
                 weights_key: str | None = None) -> tuple[float, ...] | None:
    """Refuse an unknown method or weights that do not fit it; the weights as floats (or None).

    ``where`` names the preset entry (``separator.ensemble[2]``): errors name ``WHERE.method`` and
    ``WHERE.weights``, or ``method_key`` and ``weights_key`` (``--ensemble``, ``--weights``).
    """
    method_key = method_key or f"{where}.method"
    weights_key = weights_key or f"{where}.weights"
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ModelError(f"{method_key}: unknown method {method!r}; {hint}known: {', '.join(METHODS)}")
    if weights is None:
        return None
    if method not in WEIGHTED:
        raise ModelError(f"{weights_key}: method '{method}' takes no weights (only {' and '.join(WEIGHTED)} do); "
                         "drop them")
    if (not isinstance(weights, (list, tuple)) or
            not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise ModelError(f"{weights_key}: expected a list of numbers, one per model, got {weights!r}")
    if len(weights) != models:
        raise ModelError(f"{weights_key}: {len(weights)} weight{'s' if len(weights) != 1 else ''} for {models} "
                         f"models; give one per model, in the order of the models")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ModelError(f"{weights_key}: {list(weights)}: weights must be finite, >= 0, and not all 0")
    return tuple(float(w) for w in weights)


# --- the methods on whole buffers (what the streams compute, block by block) -----------------------

def combine_wave(method: str, stems: "Sequence[np.ndarray]", weights=None) -> np.ndarray:
    """A wave method over K equal-shape ``(channels, n)`` float32 buffers (see the module notes)."""
    x = np.stack([np.asarray(s, np.float32) for s in stems])
    if method == "avg_wave":
        w = np.ones(len(stems)) if weights is None else np.asarray(weights, np.float64)
        total = np.einsum("k,kcn->cn", w, x.astype(np.float64))
        return (total / w.sum()).astype(np.float32)
    if method == "median_wave":
        return _median(x).astype(np.float32)
    if method in ("min_wave", "max_wave"):
        pick = (np.argmin if method == "min_wave" else np.argmax)(np.abs(x), axis=0)
        return np.take_along_axis(x, pick[np.newaxis], axis=0)[0]
    raise ModelError(f"'{method}' is not a wave method")


def combine_bins(method: str, specs: np.ndarray, weights=None) -> np.ndarray:
    """A spectral method over ``specs`` ``(K, ...)`` complex: one complex array without the K axis."""
    if method == "avg_fft":
        w = np.ones(specs.shape[0]) if weights is None else np.asarray(weights, np.float64)
        return np.tensordot(w, specs, axes=1) / w.sum()
    if method == "median_fft":
        return _median(specs.real) + 1j * _median(specs.imag)
    if method in ("min_fft", "max_fft"):
        pick = (np.argmin if method == "min_fft" else np.argmax)(np.abs(specs), axis=0)
        return np.take_along_axis(specs, pick[np.newaxis], axis=0)[0]
    if method in ("uvr_min_spec", "uvr_max_spec"):
        out = specs[0]
        for spec in specs[1:]:
            take = np.abs(spec) <= np.abs(out) if method == "uvr_min_spec" else np.abs(spec) >= np.abs(out)
            out = np.where(take, spec, out)
        return out
    raise ModelError(f"'{method}' is not a spectral method")


def _median(x: np.ndarray) -> np.ndarray:
    """``numpy.median(x, axis=0)``; for two models the mean of the two, as numpy computes it, without
    numpy's partition along the first axis (ten times the time of the rest of a re-ensemble)."""
    if x.shape[0] == 2:
        return (x[0] + x[1]) / 2
    return np.median(x, axis=0)


# --- streaming combiners: each takes K aligned blocks and returns what is final ------------------------

class _WaveCombiner:
    def __init__(self, method: str, weights, channels: int, sample_rate: int):
        self.method, self.weights = method, weights

    def process(self, blocks):
        return combine_wave(self.method, blocks, self.weights)

    def finish(self):
        return None


class _SpectralCombiner:
    """A spectral method, frame by frame: equals the whole-song STFT, combine, inverse (module notes).

    Input is kept with ``N_FFT // 2`` zeros in front, so frame ``t`` spans kept samples
    ``[t*HOP, t*HOP + N_FFT)``; with ``N_FFT == 2 * HOP``, output segment ``j`` (kept samples
    ``[j*HOP, (j+1)*HOP)``) is the first half of frame ``j`` plus the second half of frame ``j-1``.
    """

    def __init__(self, method: str, weights, channels: int, sample_rate: int):
        from .spectral import hann

        self.method, self.weights, self.channels = method, weights, channels
        self.window = hann(N_FFT).astype(np.float64)
        self.square = self.window ** 2
        self._kept = None  # (K, channels, n) float32: input from the next frame's start
        self._frame = 0  # the next frame to compute
        self._tail = None  # second half of the last frame, (channels, HOP) float64, windowed
        self._received = 0
        self._emitted = 0

    def process(self, blocks):
        x = np.stack([np.asarray(b, np.float32) for b in blocks])
        if self._kept is None:
            self._kept = np.zeros((x.shape[0], x.shape[1], N_FFT // 2), np.float32)
        self._received += x.shape[2]
        self._kept = np.concatenate([self._kept, x], axis=2)
        count = (self._kept.shape[2] - N_FFT) // HOP + 1 if self._kept.shape[2] >= N_FFT else 0
        return self._frames(count)

    def finish(self):
        if self._kept is None:
            return None
        last = self._received // HOP  # frames 0 .. last, as a centred STFT has
        count = last - self._frame + 1
        need = (count - 1) * HOP + N_FFT
        self._kept = np.pad(self._kept, ((0, 0), (0, 0), (0, max(0, need - self._kept.shape[2]))))
        out = self._frames(count)
        # The samples after the last frame's centre (fewer than HOP): its second half alone.
        rest = self._received - self._emitted
        tail = (self._tail[:, :rest] / self.square[HOP:HOP + rest]).astype(np.float32)
        self._emitted += rest
        return np.concatenate([out, tail], axis=1)

    def _frames(self, count: int) -> np.ndarray:
        if count <= 0:
            return np.zeros((self.channels, 0), np.float32)
        span = self._kept[:, :, :(count - 1) * HOP + N_FFT].astype(np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(span, N_FFT, axis=2)[:, :, ::HOP]  # (K, C, T, N)
        import scipy.fft  # here, not at the top: the family registry imports every module of the package

        spec = scipy.fft.rfft(frames * self.window, axis=-1)  # float64, twice numpy's speed
        waves = scipy.fft.irfft(combine_bins(self.method, spec, self.weights), n=N_FFT, axis=-1) * self.window
        first, second = waves[..., :HOP], waves[..., HOP:]  # (C, T, HOP) each
        segments = []
        for t in range(count):
            if self._tail is None:  # frame 0's first half covers the zeros in front: dropped
                segment = None
            else:
                segment = (first[:, t] + self._tail) / (self.square[:HOP] + self.square[HOP:])
            self._tail = second[:, t]
            if segment is not None:
                segments.append(segment)
        self._frame += count
        self._kept = self._kept[:, :, count * HOP:]
        out = (np.concatenate(segments, axis=1) if segments else np.zeros((self.channels, 0))).astype(np.float32)
        self._emitted += out.shape[1]
        return out


class _SegmentCombiner:
    """``ensemble_wav``: whole segments of :data:`SEGMENT_SECONDS`, each from the quietest model."""

    def __init__(self, method: str, weights, channels: int, sample_rate: int):
        self.segment = max(1, int(round(SEGMENT_SECONDS * sample_rate)))
        self._held = None

    def process(self, blocks):
        x = np.stack([np.asarray(b, np.float32) for b in blocks])
        self._held = x if self._held is None else np.concatenate([self._held, x], axis=2)
        whole = self._held.shape[2] // self.segment * self.segment
        out = self._pick(self._held[:, :, :whole])
        self._held = self._held[:, :, whole:]
        return out

    def finish(self):
        if self._held is None or self._held.shape[2] == 0:
            return None
        out = self._pick(self._held)
        self._held = None
        return out

    def _pick(self, x):
        parts = []
        for start in range(0, x.shape[2], self.segment):
            seg = x[:, :, start:start + self.segment]
            quietest = int(np.argmin(np.abs(seg.astype(np.float64)).mean(axis=(1, 2))))
            parts.append(seg[quietest])
        return np.concatenate(parts, axis=1) if parts else x[0, :, :0]


def combiner(method: str, weights, *, channels: int, sample_rate: int):
    if method == "avg_fft":
        # The weighted mean is linear and the inverse STFT reconstructs perfectly (module notes), so
        # istft(mean of stft(x_k)) is the mean of the x_k to float32 rounding: no transform needed.
        return _WaveCombiner("avg_wave", weights, channels, sample_rate)
    kind = (_WaveCombiner if method in WAVE_METHODS else _SpectralCombiner if method in SPECTRAL_METHODS
            else _SegmentCombiner)
    return kind(method, weights, channels, sample_rate)


# --- the ensemble -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Part:
    """One entry of an ensemble: ``stems`` from ``models`` (one: that model's own; several:
    combined by ``method`` with ``weights``)."""

    stems: tuple[str, ...]
    models: tuple[str, ...]
    method: str | None = None
    weights: tuple[float, ...] | None = None

    def label(self) -> str:
        """What made the part's stems: ``htdemucs_ft``, or ``avg_fft(htdemucs_ft, scnet_xl; 2, 1)``."""
        if len(self.models) == 1:
            return self.models[0]
        weights = f"; {', '.join(f'{w:g}' for w in self.weights)}" if self.weights else ""
        return f"{self.method}({', '.join(self.models)}{weights})"


def check_parts(parts: "Sequence[Part]", offered: "Mapping[str, Sequence[str]]", *, residual: str | None,
                where: str) -> None:
    """Refuse a part whose model does not give a stem asked of it, a stem given twice, a part
    of several models without a method (or one model with a method). ``offered``: each model's
    :func:`~.models.offered_stems`. ``where`` names the list (``separator.ensemble``)."""
    seen: dict[str, int] = {}
    for i, part in enumerate(parts):
        at = f"{where}[{i}]"
        if not part.stems:
            raise ModelError(f"{at}.stems: name at least one stem")
        if not part.models:
            raise ModelError(f"{at}: name a model (model: NAME) or several (models: [A, B])")
        if len(part.models) > 1 and part.method is None:
            raise ModelError(f"{at}.method: {len(part.models)} models need a method to combine them; "
                             f"e.g. method: avg_wave (known: {', '.join(METHODS)})")
        if len(part.models) == 1 and (part.method is not None or part.weights is not None):
            raise ModelError(f"{at}.method: one model's stems are taken as they are; drop method and weights, "
                             "or list several models")
        if part.method is not None:
            check_method(part.method, weights=part.weights, models=len(part.models), where=at)
        for model in part.models:
            for stem in part.stems:
                if stem not in offered[model]:
                    raise ModelError(f"{at}.stems: model '{model}' does not give stem '{stem}'; "
                                     f"it gives {', '.join(offered[model])}")
        for stem in part.stems:
            if stem in seen:
                raise ModelError(f"{at}.stems: stem '{stem}' is already given by {where}[{seen[stem]}]; "
                                 "name each stem once")
            seen[stem] = i
    if residual is not None and not isinstance(residual, str):
        raise ModelError(f"{where}: residual must be a stem name, got {residual!r}")


def ensemble_stems(parts: "Sequence[Part]", residual: str | None) -> tuple[str, ...]:
    """An ensemble's stems: each part's, in order, then the residual if no part gives it."""
    stems = [s for p in parts for s in p.stems]
    return tuple(stems + ([residual] if residual is not None and residual not in stems else []))


class EnsembleSeparator:
    """A :class:`~bridge.separation.Separator` whose stems come from several models.

    Parameters
    ----------
    members : mapping of str to Separator
        The models, by name, each loaded once (a model used by several parts runs once).
    parts : sequence of Part
        Checked with :func:`check_parts` against the members' stems.
    residual : str, optional
        The stem set to ``mix - sum(other stems)``, so the stems sum to the mix; it may be one a
        part gives (that part's models then run only if another part needs them) or a new one.
    name : str
        What messages, manifests and summaries call the ensemble.
    """

    card = None  # no single model: each member's stems are cached on their own (bridge.render.stemsource)

    def __init__(self, members: "Mapping[str, object]", parts: "Sequence[Part]", *, residual: str | None = None,
                 name: str = "ensemble"):
        self.parts = tuple(parts)
        self.residual = residual
        self.name = name
        # A part that gives only the residual stem is replaced by mix - others: its models need not run.
        self._live = tuple(p for p in self.parts if any(s != residual for s in p.stems))
        missing = [m for p in self._live for m in p.models if m not in members]
        if missing:
            raise ModelError(f"{name}: no model '{missing[0]}' among {', '.join(members) or 'none'}")
        needed = {m for p in self._live for m in p.models}
        self.members = {m: sep for m, sep in members.items() if m in needed}
        check_parts(self._live, {m: offered_stems(sep.stems) for m, sep in self.members.items()},
                    residual=residual, where=name)
        self.stems = ensemble_stems(self.parts, residual)
        self.device = next((getattr(s, "device", None) for s in self.members.values()), "cpu")
        self.device_note = next((getattr(s, "device_note", None) for s in self.members.values()
                                 if getattr(s, "device_note", None)), None)

    @property
    def settings(self) -> dict:
        """The parts and residual (what changes the output besides the members' own settings)."""
        return {"ensemble": [{"stems": list(p.stems), "models": list(p.models), "method": p.method,
                              "weights": list(p.weights) if p.weights else None} for p in self.parts],
                "residual": self.residual,
                "members": {m: dict(getattr(s, "settings", {})) for m, s in self.members.items()}}

    def made_by(self) -> dict[str, str]:
        """Which model (or ensemble method over which models) made each stem."""
        out = {s: p.label() for p in self.parts for s in p.stems}
        if self.residual is not None:
            out[self.residual] = f"residual (mix - {' - '.join(s for s in self.stems if s != self.residual)})"
        return out

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        """Separate a whole buffer: ``(channels, samples)`` float32 -> ``{stem: same shape}``."""
        audio = validate(audio, sample_rate)
        stream = self.stream(sample_rate=sample_rate, channels=audio.shape[0])
        parts = [stream.process(audio), stream.finish()]
        return {stem: np.concatenate([p[stem] for p in parts], axis=1) for stem in self.stems}

    def stream(self, *, sample_rate: int, channels: int, member_streams=None) -> "EnsembleStream":
        """A stream over the members' streams (``member_streams``: name -> stream, e.g. replayed from
        the stem cache; default: each member's own)."""
        if member_streams is None:
            member_streams = {m: sep.stream(sample_rate=sample_rate, channels=channels)
                              for m, sep in self.members.items()}
        return EnsembleStream(self, member_streams, sample_rate=sample_rate, channels=channels)


class StoredStream:
    """A separation stream over stems already separated whole (``{stem: (channels, samples)}``):
    each block gets the matching samples. For scoring many ensembles of the same models' stems."""

    def __init__(self, stems: "Mapping[str, np.ndarray]"):
        self._stems = dict(stems)
        self.stems = tuple(self._stems)
        self._at = 0

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        start, self._at = self._at, self._at + block.shape[1]
        return {s: a[:, start:self._at] for s, a in self._stems.items()}

    def finish(self) -> dict[str, np.ndarray]:
        return {s: a[:, self._at:self._at] for s, a in self._stems.items()}


class _Queue:
    """Blocks of one signal not yet given out."""

    def __init__(self, channels: int):
        self.blocks: deque = deque()
        self.frames = 0
        self.channels = channels

    def push(self, block: np.ndarray) -> None:
        if block is not None and block.shape[1]:
            self.blocks.append(block)
            self.frames += block.shape[1]

    def pop(self, count: int) -> np.ndarray:
        parts, need = [], count
        while need:
            head = self.blocks[0]
            if head.shape[1] <= need:
                parts.append(self.blocks.popleft())
                need -= head.shape[1]
            else:
                parts.append(head[:, :need])
                self.blocks[0] = head[:, need:]
                need = 0
        self.frames -= count
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.channels, 0), np.float32)


class EnsembleStream:
    """The members' streams fed the same blocks, their stems aligned and combined part by part.

    ``timings`` holds each member's seconds spent separating (its stream's calls), for run summaries.
    """

    def __init__(self, ensemble: EnsembleSeparator, member_streams, *, sample_rate: int, channels: int):
        self.ensemble = ensemble
        self.stems = ensemble.stems
        self.channels = channels
        self.members = dict(member_streams)
        self.timings = {m: 0.0 for m in self.members}
        self._wanted = {m: sorted({s for p in ensemble._live if m in p.models for s in p.stems}) for m in self.members}
        self._raw = {(m, s): _Queue(channels) for m, stems in self._wanted.items() for s in stems}
        self._combiners = {(i, s): combiner(p.method, p.weights, channels=channels, sample_rate=sample_rate)
                           for i, p in enumerate(ensemble._live) if len(p.models) > 1 for s in p.stems}
        self._out = {s: _Queue(channels) for s in self.stems if s != ensemble.residual}
        self._mix = _Queue(channels)

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        block = np.asarray(block, np.float32)
        self._mix.push(block)
        self._feed({m: self._run(m, "process", block) for m in self.members})
        return self._give(final=False)

    def finish(self) -> dict[str, np.ndarray]:
        self._feed({m: self._run(m, "finish") for m in self.members}, last=True)
        return self._give(final=True)

    def _run(self, member: str, call: str, *args):
        started = time.perf_counter()
        stream = self.members[member]
        out = getattr(stream, call)(*args)
        self.timings[member] += time.perf_counter() - started
        sums = derived_stems(tuple(out))
        for stem in self._wanted[member]:
            if stem not in out and stem in sums:
                out[stem] = np.sum([out[p] for p in sums[stem]], axis=0, dtype=np.float32)
        return out

    def _feed(self, outs, *, last: bool = False) -> None:
        for (member, stem), queue in self._raw.items():
            queue.push(outs[member][stem])
        for i, part in enumerate(self.ensemble._live):
            for stem in part.stems:
                if stem == self.ensemble.residual:
                    continue
                queues = [self._raw[(m, stem)] for m in part.models]
                ready = min(q.frames for q in queues)
                blocks = [q.pop(ready) for q in queues]
                if len(part.models) == 1:
                    self._out[stem].push(blocks[0])
                    continue
                mixer = self._combiners[(i, stem)]
                self._out[stem].push(mixer.process(blocks) if ready else None)
                if last:
                    self._out[stem].push(mixer.finish())

    def _give(self, *, final: bool) -> dict[str, np.ndarray]:
        ready = min([q.frames for q in self._out.values()], default=self._mix.frames)
        if final and ready != self._mix.frames:
            raise ModelError(f"ensemble '{self.ensemble.name}': its models gave {ready} samples of a "
                             f"{self._mix.frames}-sample song")
        ready = min(ready, self._mix.frames)
        mix = self._mix.pop(ready)
        out = {stem: queue.pop(ready) for stem, queue in self._out.items()}
        residual = self.ensemble.residual
        if residual is not None:
            out[residual] = mix - sum(out.values()) if out else mix.copy()
        return {stem: np.ascontiguousarray(out[stem], dtype=np.float32) for stem in self.stems}


__all__ = ["StoredStream", "ensemble_stems", "METHODS", "N_FFT", "HOP", "SEGMENT_SECONDS", "EnsembleSeparator", "EnsembleStream", "Part",
           "check_method", "check_parts", "combine_bins", "combine_wave"]
