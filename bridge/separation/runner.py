"""The part every chunked separator shares: validation, channels, resampling, streaming, sums.

An *engine* knows its model: it turns a batch of stereo chunks at its own sample rate into
stems. :class:`ChunkedSeparator` does everything around it, so the MDX-Net, mask and DSP
separators differ only in their engines:

- checks the buffer, takes mono (processed as stereo, returned as mono) or stereo;
- resamples to the engine's rate and back, block by block (soxr streams);
- chunks and overlap-adds (:mod:`.chunking`), batching chunks per engine call;
- makes the stems sum to the mix: the engine returns every stem but one, the *residual stem*,
  which is set to ``mix - sum(others)`` at the caller's rate. Whatever the engine never sees
  (bands a model cuts off, resampling loss, float rounding) lands in that stem, never nowhere.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from ..audio.buffers import StreamResampler, check_finite, validate
from ..errors import AudioError
from .chunking import ChunkPlan, OverlapAdd


class Engine(Protocol):
    """A model behind a chunked separator."""

    #: Sample rate the model runs at, in Hz.
    sample_rate: int
    #: Samples per chunk, and samples dropped at each chunk edge. An engine may also set
    #: ``pad = "reflect"`` to have the song mirrored beyond its ends instead of zero-padded.
    chunk: int
    trim: int
    #: Every stem the separator produces, and the one computed as the mix minus the others
    #: (None: the stems are not promised to sum to the mix).
    stems: tuple[str, ...]
    residual_stem: str | None
    # Optional, read once by ChunkedSeparator with these defaults (a ten-line test engine needs
    # none of them): ``card`` (ModelCard or None: the model file behind it, for caches and
    # manifests), ``options`` (dict: settings that change the output, for manifests), and
    # ``pad`` ("zeros" or "reflect").

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk)`` float32 -> ``{stem: (batch, 2, chunk)}`` for every stem but the residual."""


class ChunkedSeparator:
    """A :class:`~bridge.separation.Separator` around an :class:`Engine`.

    Parameters
    ----------
    engine : Engine
    overlap : float
        Fraction of each chunk shared with the next, in [0, 1).
    batch_size : int
        Chunks per engine call.
    name : str
        What to call this separator in messages and manifests.
    device : str
        Where the engine's model runs, as ``--device`` writes it (the engine was opened there).
    device_note : str, optional
        What ``--device auto`` said about its choice (a fallback to the CPU).
    """

    def __init__(self, engine: Engine, *, overlap: float = 0.25, batch_size: int = 1, name: str = "separator",
                 device: str = "cpu", device_note: str | None = None):
        self.engine = engine  # kept for older callers: use card, residual and settings instead
        self.plan = ChunkPlan(chunk=engine.chunk, trim=engine.trim, overlap=overlap,
                              pad=getattr(engine, "pad", "zeros"))
        self.batch_size = batch_size
        self.name = name
        #: The model's card (for default-4stems, the vocal model's, whose file it runs); None for an
        #: engine without one (a test's), whose stems are then never cached.
        self.card = getattr(engine, "card", None)
        self._options = dict(getattr(engine, "options", {}))
        #: Where the model runs (``cpu``, ``cuda:0``, ...): for summaries and manifests, never part
        #: of :attr:`settings` (the device does not name a separation, see :mod:`.devices`); and
        #: what ``auto`` has to say about its choice, or None.
        self.device = device
        self.device_note = device_note
        #: Batches in flight in background threads (see :class:`~.chunking.OverlapAdd`): two, so
        #: that one batch's STFT, packing and inverse run beside the other's network (its
        #: :class:`~.runtime.Runner` runs one call at a time), on an accelerator and on the CPU
        #: alike, while the caller reads, mixes and writes.
        self.depth = 2

    @property
    def stems(self) -> tuple[str, ...]:
        return self.engine.stems

    @property
    def residual(self) -> str | None:
        """The stem set to the mix minus the others (None: the stems need not sum to the mix)."""
        return self.engine.residual_stem

    @property
    def settings(self) -> dict:
        """What changes this separator's output besides the model: for manifests and score files."""
        return {"overlap": self.plan.overlap, **self._options}

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        """Separate a whole buffer.

        Parameters
        ----------
        audio : ndarray, shape (channels, samples), float32
            Mono or stereo, any sample rate; not modified.
        sample_rate : int
            In Hz.

        Returns
        -------
        dict of str to ndarray, shape (channels, samples), float32
            One buffer per stem, same shape and rate as ``audio``.
        """
        audio = validate(audio, sample_rate)
        stream = self.stream(sample_rate=sample_rate, channels=audio.shape[0])
        parts = [stream.process(audio), stream.finish()]
        return {stem: np.concatenate([p[stem] for p in parts], axis=1) for stem in self.stems}

    def stream(self, *, sample_rate: int, channels: int) -> "SeparationStream":
        """A stream that separates a song fed block by block."""
        return SeparationStream(self, sample_rate=int(sample_rate), channels=channels)


def check_channels(channels: int, *, source: str = "the input") -> None:
    """Refuse audio the separators cannot take: they take mono or stereo."""
    if channels not in (1, 2):
        raise AudioError(f"{source}: has {channels} channels, and the separator takes mono or stereo; "
                         "downmix it to stereo first (e.g. ffmpeg -i in.wav -ac 2 out.wav)")


class SeparationStream:
    """Block-by-block separation; concatenated outputs equal one :meth:`ChunkedSeparator.__call__`.

    ``process(block)`` returns ``{stem: (channels, n)}`` for however many samples are final
    (possibly none yet); ``finish()`` returns the rest. In total each stem has exactly as many
    samples as were fed.
    """

    def __init__(self, separator: ChunkedSeparator, *, sample_rate: int, channels: int):
        check_channels(channels)
        engine = separator.engine
        self.stems = engine.stems
        self.channels = channels
        self.sample_rate = sample_rate
        self._residual = engine.residual_stem
        self._computed = tuple(s for s in engine.stems if s != self._residual)
        self._to_model = StreamResampler(orig_sr=sample_rate, target_sr=engine.sample_rate, channels=2)
        self._from_model = {s: StreamResampler(orig_sr=engine.sample_rate, target_sr=sample_rate, channels=2)
                            for s in self._computed}
        # An engine with its own chunking (Demucs's apply_model) supplies its own overlap-add.
        own = getattr(engine, "overlap_add", None)
        if own is not None:
            self._ola = own(separator.plan, channels=2, stems=self._computed, run=engine.run,
                            batch_size=separator.batch_size)
        else:
            self._ola = OverlapAdd(separator.plan, channels=2, stems=self._computed, run=engine.run,
                                   batch_size=separator.batch_size, depth=separator.depth)
        self._pending = {s: [] for s in self._computed}  # back at our rate, not yet matched to the mix
        self._mix = deque()  # input blocks not yet given out, at our rate
        self._mix_frames = 0
        self._received = 0
        self._emitted = 0

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        if block.shape[0] != self.channels:
            raise AudioError(f"block has {block.shape[0]} channels, the stream was opened for {self.channels}")
        check_finite(block, name="audio", sample_rate=self.sample_rate, offset=self._received)
        block = np.asarray(block, dtype=np.float32)
        self._received += block.shape[1]
        self._mix.append(block)
        self._mix_frames += block.shape[1]
        stereo = np.repeat(block, 2, axis=0) if self.channels == 1 else block
        self._take(self._ola.process(self._to_model.process(stereo)), last=False)
        return self._give(final=False)

    def finish(self) -> dict[str, np.ndarray]:
        # Drain the input resampler into the chunker, then everything back out.
        self._take(self._ola.process(self._to_model.flush()), last=False)
        self._take(self._ola.finish(), last=True)
        return self._give(final=True)

    def _take(self, stems: dict[str, np.ndarray], *, last: bool) -> None:
        for stem in self._computed:
            back = self._from_model[stem].process(stems[stem], last=last)
            self._pending[stem].append(back)

    def _give(self, *, final: bool) -> dict[str, np.ndarray]:
        for stem in self._computed:
            self._pending[stem] = [np.concatenate(self._pending[stem], axis=1)] if self._pending[stem] else \
                [np.zeros((2, 0), np.float32)]
        ready = min([p[0].shape[1] for p in self._pending.values()], default=self._mix_frames)
        if final:
            ready = self._received - self._emitted
        ready = min(ready, self._received - self._emitted)
        mix = self._pop_mix(ready)
        out = {}
        for stem in self._computed:
            have = self._pending[stem][0]
            part = have[:, :ready]
            if part.shape[1] < ready:  # the resampler's round trip may come out a sample short
                part = np.pad(part, ((0, 0), (0, ready - part.shape[1])))
            self._pending[stem] = [have[:, ready:]]
            out[stem] = part.mean(axis=0, keepdims=True) if self.channels == 1 else part
        if self._residual is not None:
            out[self._residual] = mix - sum(out[s] for s in self._computed) if self._computed else mix.copy()
        self._emitted += ready
        return {stem: np.ascontiguousarray(out[stem], dtype=np.float32) for stem in self.stems}

    def _pop_mix(self, count: int) -> np.ndarray:
        parts, need = [], count
        while need:
            head = self._mix[0]
            if head.shape[1] <= need:
                parts.append(self._mix.popleft())
                need -= head.shape[1]
            else:
                parts.append(head[:, :need])
                self._mix[0] = head[:, need:]
                need = 0
        self._mix_frames -= count
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.channels, 0), np.float32)
