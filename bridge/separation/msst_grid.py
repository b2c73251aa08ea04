"""MSST's chunk grid (``demix``'s generic mode), streamed: the grid its SCNet and MDX23C models
are run on, block by block with flat memory.

ZFTurbo's Music-Source-Separation-Training separates a song of ``N`` samples so, with ``step =
chunk // num_overlap``, ``border = chunk - step`` and ``fade = chunk // 10``:

1. if ``N > 2 * border`` (and ``border > 0``) the song is mirrored by ``border`` samples at both
   ends (reflect padding), ``M`` samples in all; otherwise it is taken as it is;
2. chunks start at ``0, step, 2 * step, ...`` while the start is inside the ``M`` samples; a chunk
   that runs past the end is completed to ``chunk`` samples by mirroring itself when more than
   half of it is there, with zeros otherwise;
3. each chunk's output is weighted by a window that rises linearly from 0 to 1 over its first
   ``fade`` samples and falls back over its last (``linspace`` endpoints included); the first
   chunk does not fade in, and the last one (the one after which the next start would be past
   the end), unless it is also the first, does not fade out; only the part of a chunk inside the
   ``M`` samples is added;
4. the sum is divided by the summed weights (0 where they sum to 0) and the padding cut off.

:class:`MsstOverlapAdd` gives the same samples without holding the song: it waits until it has
seen ``2 * border + 1`` samples (or the end), from then on runs each chunk as soon as its samples
(and one more: then it cannot be the last) have arrived, and gives out every sample no later chunk
reaches. The windows are chosen per chunk, as MSST does with ``inference.batch_size: 1``; with a
larger batch MSST applies the first and last chunk's window to every chunk of that batch (a quirk
of its loop that changes where its batches fall), which is not reproduced.
"""

from __future__ import annotations

import numpy as np

from .chunking import RunChunks


def msst_window(chunk: int) -> np.ndarray:
    """The weights of one chunk: linear fades of ``chunk // 10`` samples, float32 (as torch's
    ``linspace(0, 1, fade)`` and ``linspace(1, 0, fade)``)."""
    fade = chunk // 10
    window = np.ones(chunk, np.float32)
    if fade:
        window[-fade:] = np.linspace(1.0, 0.0, fade, dtype=np.float32)
        window[:fade] = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    return window


class MsstOverlapAdd:
    """Streaming chunked processing on MSST's grid; the interface of :class:`.chunking.OverlapAdd`.

    Parameters
    ----------
    chunk : int
        Samples per chunk.
    step : int
        Samples between chunk starts (MSST: ``chunk // num_overlap``), at most ``chunk``.
    channels : int
    stems : sequence of str
        The keys ``run`` returns.
    run : callable
        ``run(chunks) -> {stem: chunks}``, chunks of shape (batch, channels, chunk).
    batch_size : int
        Chunks per ``run`` call (the output does not depend on it).
    """

    def __init__(self, *, chunk: int, step: int, channels: int, stems, run: RunChunks, batch_size: int = 1):
        if not 0 < step <= chunk:
            raise ValueError(f"step {step} must be from 1 to the chunk's {chunk} samples")
        self.chunk, self.step = chunk, step
        self.border = chunk - step
        self.channels = channels
        self.stems = tuple(stems)
        self._run = run
        self.batch_size = max(1, int(batch_size))
        self._window = msst_window(chunk)
        self._pad: int | None = None if self.border else 0  # border mirrored at each end, once known
        self._input = np.zeros((channels, 0), np.float32)  # padded samples from _in_start on
        self._in_start = 0
        self._received = 0
        self._next = 0  # next chunk to run
        self._acc = {s: np.zeros((channels, 0), np.float64) for s in self.stems}  # padded samples from _out_start
        self._weight = np.zeros(0, np.float64)
        self._out_start = 0
        self._emitted = 0  # signal samples given out
        self._finished = False

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """Take ``block`` (channels, samples); return the output samples that are now final."""
        if self._finished:
            raise RuntimeError("process() after finish()")
        if block.shape[1]:
            self._input = np.concatenate([self._input, np.asarray(block, np.float32)], axis=1)
            self._received += block.shape[1]
        if self._pad is None and self._received > 2 * self.border:
            self._start(self.border)
        if self._pad is None:
            return self._empty()
        available = self._in_start + self._input.shape[1]
        ready = []
        while (self._next + len(ready)) * self.step + self.chunk < available:
            ready.append(self._next + len(ready))
            if len(ready) == self.batch_size:
                self._run_chunks(ready, total=None)
                ready = []
        if ready:
            self._run_chunks(ready, total=None)
        return self._emit(self._next * self.step - self._pad)

    def finish(self) -> dict[str, np.ndarray]:
        """Run the chunks that are left and return the rest of the output."""
        self._finished = True
        if not self._received:
            return self._empty()
        if self._pad is None:
            self._start(self.border if self._received > 2 * self.border else 0)
        if self._pad:
            # The mirrored end: the buffer still holds the last border + 1 samples (see _drop).
            signal = self._input[:, max(0, self._pad - self._in_start):]
            tail = np.pad(signal[:, -(self._pad + 1):], ((0, 0), (0, self._pad)), mode="reflect")[:, self._pad + 1:]
            self._input = np.concatenate([self._input, tail], axis=1)
        total = self._in_start + self._input.shape[1]  # M
        starts = list(range(self._next, -(-total // self.step)))
        for i in range(0, len(starts), self.batch_size):
            self._run_chunks(starts[i:i + self.batch_size], total=total)
        return self._emit(self._received)

    def _start(self, pad: int) -> None:
        """Decide the padding (the song is long enough for it, or it has ended) and mirror the start."""
        self._pad = pad
        if pad:
            self._input = np.pad(self._input, ((0, 0), (pad, 0)), mode="reflect")

    def _run_chunks(self, indices: list[int], *, total: int | None) -> None:
        batch = np.zeros((len(indices), self.channels, self.chunk), np.float32)
        lengths = []
        for j, k in enumerate(indices):
            part = self._input[:, k * self.step - self._in_start:][:, :self.chunk]
            length = part.shape[1]
            if length < self.chunk:
                mode = "reflect" if length > self.chunk // 2 else "constant"
                part = np.pad(part, ((0, 0), (0, self.chunk - length)), mode=mode)
            batch[j] = part
            lengths.append(length)
        outputs = self._run(batch)
        self._next = indices[-1] + 1
        for j, (k, length) in enumerate(zip(indices, lengths)):
            window = self._window
            last = total is not None and (k + 1) * self.step >= total
            if k == 0 or last:
                window = window.copy()
                if k == 0:
                    window[:self.chunk // 10] = 1.0
                elif last:
                    window[self.chunk - self.chunk // 10:] = 1.0
            at = k * self.step - self._out_start
            self._grow(at + length)
            weights = window[:length]
            for stem in self.stems:
                self._acc[stem][:, at:at + length] += outputs[stem][j, :, :length] * weights
            self._weight[at:at + length] += weights
        self._drop()

    def _drop(self) -> None:
        """Forget input no chunk to come reads (keeping the last border + 1 samples for the mirrored end)."""
        keep_from = self._next * self.step
        if not self._finished:
            keep_from = min(keep_from, self._in_start + self._input.shape[1] - self.border - 1)
        drop = max(0, keep_from - self._in_start)
        self._input = self._input[:, drop:]
        self._in_start += drop

    def _grow(self, size: int) -> None:
        if size > self._weight.shape[0]:
            extra = size - self._weight.shape[0]
            self._weight = np.concatenate([self._weight, np.zeros(extra)])
            for stem, acc in self._acc.items():
                self._acc[stem] = np.concatenate([acc, np.zeros((self.channels, extra))], axis=1)

    def _emit(self, limit: int) -> dict[str, np.ndarray]:
        """Give out signal samples ``[_emitted, limit)`` (padded index minus the padding)."""
        limit = min(limit, self._received)
        count = limit - self._emitted
        if count <= 0:
            return self._empty()
        first = self._emitted + self._pad - self._out_start  # in the accumulators
        weight = self._weight[first:first + count]
        safe = np.where(weight > 0, weight, 1.0)
        out = {}
        for stem, acc in self._acc.items():
            part = acc[:, first:first + count]
            out[stem] = np.where(weight > 0, part / safe, 0.0).astype(np.float32)
            self._acc[stem] = acc[:, first + count:]
        self._weight = self._weight[first + count:]
        self._out_start += first + count
        self._emitted = limit
        return out

    def _empty(self) -> dict[str, np.ndarray]:
        return {stem: np.zeros((self.channels, 0), np.float32) for stem in self.stems}
