"""Demucs's ``apply_model`` as a stream: its chunk grid, triangle weights, shifts and bag weights.

The Demucs family (:mod:`.demucs`) runs its networks through :class:`DemucsOverlapAdd`, the
runner's overlap-add seam: chunks of the model's segment every ``int(0.75 * segment)`` samples,
the last ones centred in a segment of audio and zeros and cut back (HTDemucs) or run at their own
length (HDemucs, whose graph takes any length), each weighted by
:func:`triangle`; each shifted run is the song delayed by :func:`shift_delays` zeros; a bag's
members are weighted per stem. See :mod:`.demucs` for what is and is not Demucs's behaviour.
"""

from __future__ import annotations

import numpy as np

#: The most a shift delays the song (Demucs's ``0.5 * samplerate``).
MAX_SHIFT_SECONDS = 0.5


def triangle(segment: int) -> np.ndarray:
    """``apply_model``'s chunk weight: a triangle peaking at 1 mid-chunk (transition power 1)."""
    weight = np.concatenate([np.arange(1, segment // 2 + 1), np.arange(segment - segment // 2, 0, -1)])
    return (weight / weight.max()).astype(np.float32)


def shift_delays(seed: int, shifts: int, models: int, sample_rate: int) -> np.ndarray:
    """The zeros each shifted run puts before the song: ``(models, shifts)`` ints in ``[0, 0.5 s]``.

    ``shifts`` 0 is one unshifted run per model (Demucs's ``shifts=0``).
    """
    if shifts == 0:
        return np.zeros((models, 1), np.int64)
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(MAX_SHIFT_SECONDS * sample_rate) + 1, size=(models, shifts))


class _Split:
    """``apply_model(model, zeros(delay) ++ song, shifts=0, split=True)[..., delay:]``, streamed,
    for one ``network`` (a :class:`~.demucs.DemucsNetwork`)."""

    def __init__(self, network, *, delay: int, channels: int, stems: int, overlap: float,
                 batch_size: int):
        self.network = network
        self.segment = network.segment
        self.stride = int((1 - overlap) * self.segment)
        self.weight = triangle(self.segment)
        self.batch_size = batch_size
        self.delay = delay
        self._input = np.zeros((channels, delay), np.float32)  # the delayed song from index _in_start
        self._in_start = 0
        self._received = delay
        self._next = 0  # next chunk index
        self._acc = np.zeros((stems, channels, 0), np.float32)  # from delayed-song index _out_start
        self._sum = np.zeros(0, np.float32)
        self._out_start = 0
        self._skip = delay  # output samples of the delay, never given out

    def process(self, block: np.ndarray) -> np.ndarray:
        self._input = np.concatenate([self._input, block], axis=1)
        self._received += block.shape[1]
        ready = 0
        while (self._next + ready) * self.stride + self.segment <= self._received:
            ready += 1
            if ready == self.batch_size:
                self._run(self._next, ready, total=None)
                ready = 0
        if ready:
            self._run(self._next, ready, total=None)
        return self._emit(self._next * self.stride)

    def finish(self) -> np.ndarray:
        total = self._received
        count = -(-total // self.stride) if total else 0
        while self._next < count:
            self._run(self._next, min(self.batch_size, count - self._next), total=total)
        return self._emit(total)

    def _run(self, first: int, count: int, *, total: int | None) -> None:
        seg, chunks = self.segment, []
        for k in range(first, first + count):
            offset = k * self.stride
            length = seg if total is None else min(seg, total - offset)
            # apply_model pads a chunk to the model's valid length: HTDemucs's is the segment (the
            # chunk centred in real audio where there is some, zeros past the end: TensorChunk.padded);
            # HDemucs has none, so a last chunk runs at its own length.
            size = seg if self.network.fixed else length
            start = offset - (size - length) // 2
            lo, hi = max(start, 0), min(start + size, self._received)
            window = np.zeros((self._input.shape[0], size), np.float32)
            window[:, lo - start:hi - start] = self._input[:, lo - self._in_start:hi - self._in_start]
            chunks.append((k, length, window))
        end = (first + count - 1) * self.stride + chunks[-1][1]
        self._grow(end)
        for size in dict.fromkeys(w.shape[1] for _, _, w in chunks):  # one run per chunk length
            same = [(k, length, w) for k, length, w in chunks if w.shape[1] == size]
            out = self.network(np.stack([w for _, _, w in same]))  # (count, stems, c, size)
            for i, (k, length, _) in enumerate(same):
                trim = (size - length) // 2  # center_trim
                at = k * self.stride - self._out_start
                weight = self.weight[:length]
                self._acc[..., at:at + length] += out[i, ..., trim:trim + length] * weight
                self._sum[at:at + length] += weight
        self._next = first + count
        # Keep what a later chunk may read: a centred last chunk reaches back up to segment / 2.
        drop = max(0, self._next * self.stride - seg - self._in_start)
        self._input = self._input[:, drop:]
        self._in_start += drop

    def _grow(self, end: int) -> None:
        size = end - self._out_start
        if size > self._sum.shape[0]:
            extra = size - self._sum.shape[0]
            self._sum = np.concatenate([self._sum, np.zeros(extra, np.float32)])
            self._acc = np.concatenate([self._acc, np.zeros(self._acc.shape[:2] + (extra,), np.float32)], axis=2)

    def _emit(self, limit: int) -> np.ndarray:
        """Finished output from ``_out_start`` to ``limit`` (delayed-song indices), the delay dropped."""
        count = max(0, min(limit, self._received) - self._out_start)
        out = self._acc[..., :count] / self._sum[:count]
        self._acc, self._sum = self._acc[..., count:], self._sum[count:]
        self._out_start += count
        skip = min(self._skip, count)
        self._skip -= skip
        return out[..., skip:]


class DemucsOverlapAdd:
    """Demucs's chunking, shifts and bag weights over a stream (the runner's overlap-add seam).

    Same interface as :class:`~.chunking.OverlapAdd`: ``process(block)`` and ``finish()`` return
    ``{stem: (channels, n)}`` for the samples now final; in total exactly as many as were fed.
    ``engine`` is the :class:`~.demucs.DemucsEngine` whose networks, weights and shifts it runs.
    """

    def __init__(self, engine, *, overlap: float, channels: int, stems, batch_size: int):
        self.stems = tuple(stems)
        self.channels = channels
        index = [engine.model_stems.index(s) for s in self.stems]
        delays = shift_delays(engine.seed, engine.shifts, len(engine.networks), engine.sample_rate)
        totals = engine.weights.sum(axis=0)
        self._passes = []  # (split, factors over the wanted stems)
        for m, network in enumerate(engine.networks):
            factors = engine.weights[m, index] / totals[index] / delays.shape[1]
            if not np.any(factors):
                continue  # this model's weight is zero for every stem asked for
            for delay in delays[m]:
                split = _Split(network, delay=int(delay), channels=channels, stems=len(engine.model_stems),
                               overlap=overlap, batch_size=batch_size)
                self._passes.append((split, factors.astype(np.float32)))
        self._index = index
        self._pending = [[] for _ in self._passes]
        self._pending_len = [0] * len(self._passes)

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        for i, (split, _) in enumerate(self._passes):
            self._keep(i, split.process(block))
        return self._combine()

    def finish(self) -> dict[str, np.ndarray]:
        for i, (split, _) in enumerate(self._passes):
            self._keep(i, split.finish())
        return self._combine()

    def _keep(self, i: int, out: np.ndarray) -> None:
        if out.shape[-1]:
            self._pending[i].append(out)
            self._pending_len[i] += out.shape[-1]

    def _combine(self) -> dict[str, np.ndarray]:
        ready = min(self._pending_len) if self._passes else 0
        result = {s: np.zeros((self.channels, ready), np.float32) for s in self.stems}
        if not ready:
            return result
        for i, (_, factors) in enumerate(self._passes):
            joined = np.concatenate(self._pending[i], axis=-1) if len(self._pending[i]) > 1 else self._pending[i][0]
            head, rest = joined[..., :ready], joined[..., ready:]
            self._pending[i] = [rest] if rest.shape[-1] else []
            self._pending_len[i] -= ready
            for j, stem in enumerate(self.stems):
                if factors[j]:
                    result[stem] += head[self._index[j]] * factors[j]
        return result
