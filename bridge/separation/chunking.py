"""Split a stream into model chunks and overlap-add the results back, block by block.

Pure numpy, no model: :class:`OverlapAdd` takes audio in blocks of any size and gives back
finished output as soon as no later chunk can change it, so a whole song never has to be in
memory, and feeding it in one block or in many gives the same samples.

Geometry, in samples of the model's rate::

    chunk:  |<-trim->|<------------ keep ------------>|<-trim->|
    weight:          |/fade\\______________________/fade\\|

A chunk of ``chunk`` samples goes to the engine; the ``trim`` samples at each edge are dropped
(they carry the transform's edge effects); the kept part is weighted by a window whose raised-
cosine fades of ``fade = keep - step`` samples are complementary (sin² + cos² = 1) between
neighbours, added up, and divided by the summed weights.

At the song's ends, two modes (``ChunkPlan.pad``):

- ``"zeros"``: the signal is preceded by ``trim + fade`` zeros, so its first sample falls where
  the first chunk's weight is already 1, and followed by zeros until the last sample has full
  weight;
- ``"reflect"``: the signal mirrored at its ends (``numpy.pad``'s reflect mode, repeated for a
  signal shorter than the pad), as a centred STFT pads and as the RoFormer reference tools pad the
  song, so that a model that reads context sees music-like input beyond the song's ends. Only
  ``trim`` samples precede the signal: the first chunk has no fade-in, and the last chunk's kept
  part only has to reach the song's end, where the division by the summed weights makes its
  fade-out harmless. That saves ``(trim + fade) / step`` chunks, one to three, per song.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal

import numpy as np

#: run(chunks) -> {stem: chunks}; chunks shape (batch, channels, chunk), float32.
RunChunks = Callable[[np.ndarray], "dict[str, np.ndarray]"]


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """Where chunks fall.

    Parameters
    ----------
    chunk : int
        Samples per engine call and chunk.
    trim : int
        Samples dropped at each edge of a chunk's output.
    overlap : float
        Fraction in [0, 1) of a chunk's kept part shared with the next chunk.
    pad : {"zeros", "reflect"}
        What precedes and follows the signal in the first and last chunks.
    """

    chunk: int
    trim: int
    overlap: float
    pad: Literal["zeros", "reflect"] = "zeros"

    def __post_init__(self):
        if self.keep < 1:
            raise ValueError(f"chunk {self.chunk} leaves nothing after trimming {self.trim} samples at each edge")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.pad not in ("zeros", "reflect"):
            raise ValueError(f"pad must be 'zeros' or 'reflect', got {self.pad!r}")

    @property
    def keep(self) -> int:
        return self.chunk - 2 * self.trim

    @property
    def step(self) -> int:
        return max(1, min(self.keep, round(self.keep * (1.0 - self.overlap))))

    @property
    def fade(self) -> int:
        return self.keep - self.step

    @property
    def lead(self) -> int:
        """Samples before the signal: with zeros, so that its first sample meets full weight."""
        return self.trim if self.pad == "reflect" else self.trim + self.fade

    @property
    def start(self) -> int:
        """Signal index where the first chunk's kept part begins (negative: before the signal)."""
        return self.trim - self.lead

    def chunks_for(self, samples: int) -> int:
        """How many chunks cover ``samples`` samples (with full weight, for ``pad="zeros"``)."""
        if samples <= 0:
            return 0
        if self.pad == "reflect":
            return 1 + max(0, math.ceil((samples - self.keep) / self.step))
        return math.ceil((samples + self.fade) / self.step)

    def window(self) -> np.ndarray:
        """Weights of a chunk's kept part, shape (keep,), float32."""
        weights = np.ones(self.keep, dtype=np.float64)
        if self.fade:
            ramp = np.sin(0.5 * np.pi * (np.arange(self.fade) + 0.5) / self.fade) ** 2
            weights[: self.fade] = ramp
            weights[-self.fade:] = ramp[::-1]
        return weights.astype(np.float32)


class OverlapAdd:
    """Streaming chunked processing with overlap-add.

    Parameters
    ----------
    plan : ChunkPlan
    channels : int
    stems : sequence of str
        The keys ``run`` returns.
    run : callable
        ``run(chunks) -> {stem: chunks}`` with chunks of shape (batch, channels, plan.chunk).
    batch_size : int
        Chunks per ``run`` call. Chunks wait until a full batch is ready (or the stream ends).
    depth : int
        Batches that may be running in background threads while :meth:`process` returns and
        the caller goes on (reads, effects, writes; on a GPU, the next batch's STFT beside this
        one's network). 0 runs each batch before ``process`` returns. Results are added in
        chunk order whatever the depth, so the output does not depend on it; ``run`` must then
        be safe to call from other threads (with a depth above 1, from two at once).
    """

    def __init__(self, plan: ChunkPlan, *, channels: int, stems, run: RunChunks, batch_size: int = 1,
                 depth: int = 0):
        self.plan = plan
        self.channels = channels
        self._run = run
        self.batch_size = max(1, int(batch_size))
        self._depth = max(0, int(depth))
        self._pool: ThreadPoolExecutor | None = None
        self._running = deque()  # (first chunk, count, future), oldest first
        self._window = plan.window()
        self._reflect = plan.pad == "reflect"
        self._first_window = self._window.copy()
        if self._reflect and plan.fade:
            self._first_window[:plan.fade] = 1.0  # nothing before the first chunk to fade from
        # Input: padded-signal samples from index _in_start on. A reflected lead waits for the
        # signal's first lead + 1 samples, and a reflected tail needs the signal's last chunk.
        self._input = np.zeros((channels, 0 if self._reflect else plan.lead), np.float32)
        self._lead_done = not self._reflect
        self._history = plan.chunk if self._reflect else 0
        self._in_start = 0
        self._next_chunk = 0  # chunks handed to run
        self._added = 0  # chunks whose results are in the accumulators
        self._received = 0
        # Output: accumulators for signal samples from index _out_start on.
        self._out_start = plan.start  # where the first chunk's kept part starts
        self._acc = {stem: np.zeros((channels, 0), np.float32) for stem in stems}
        self._weight = np.zeros(0, np.float64)
        self._finished = False

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """Take ``block`` (channels, samples); return the output samples that are now final."""
        if self._finished:
            raise RuntimeError("process() after finish()")
        if block.shape[1]:
            self._input = np.concatenate([self._input, block], axis=1)
            self._received += block.shape[1]
        if not self._lead_done:
            if self._received <= self.plan.lead:
                return {stem: np.zeros((self.channels, 0), np.float32) for stem in self._acc}
            self._add_lead()
        ready = self._ready_chunks()
        while ready >= self.batch_size:
            self._run_batch(self.batch_size)
            ready -= self.batch_size
        return self._emit(limit=self._added * self.plan.step + self.plan.start)

    def finish(self) -> dict[str, np.ndarray]:
        """Process what is left and return the rest of the output."""
        self._finished = True
        total = self.plan.chunks_for(self._received)
        if not self._lead_done and total:
            self._add_lead()
        needed = (total - 1) * self.plan.step + self.plan.chunk - self._in_start if total else 0
        if needed > self._input.shape[1]:
            extra = needed - self._input.shape[1]
            if self._reflect:
                # The signal part of the buffer (it keeps the last chunk of the signal at least).
                signal = self._input[:, max(0, self.plan.lead - self._in_start):]
                pad = np.pad(signal, ((0, 0), (0, extra)), mode="reflect")[:, signal.shape[1]:]
            else:
                pad = np.zeros((self.channels, extra), np.float32)
            self._input = np.concatenate([self._input, pad], axis=1)
        while self._next_chunk < total:
            self._run_batch(min(self.batch_size, total - self._next_chunk))
        while self._running:
            self._add_oldest()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self._emit(limit=self._received)

    def _add_lead(self) -> None:
        """Put the mirrored start of the signal before it (the whole signal is in the buffer)."""
        lead = self.plan.lead
        self._input = np.pad(self._input, ((0, 0), (lead, 0)), mode="reflect") if lead else self._input
        self._lead_done = True

    def _ready_chunks(self) -> int:
        available = self._in_start + self._input.shape[1]  # padded samples seen so far
        if available < self.plan.chunk:
            return 0
        complete = (available - self.plan.chunk) // self.plan.step + 1
        return max(0, complete - self._next_chunk)

    def _run_batch(self, count: int) -> None:
        plan = self.plan
        first = self._next_chunk
        starts = [(first + i) * plan.step - self._in_start for i in range(count)]
        batch = np.stack([self._input[:, s:s + plan.chunk] for s in starts])  # a copy: the input may go
        self._next_chunk += count
        drop = max(0, self._next_chunk * plan.step - self._history - self._in_start)
        self._input = self._input[:, drop:]
        self._in_start += drop
        if not self._depth:
            self._add(first, count, self._run(batch))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._depth, thread_name_prefix="separate")
        self._running.append((first, count, self._pool.submit(self._run, batch)))
        while len(self._running) > self._depth:
            self._add_oldest()

    def _add_oldest(self) -> None:
        first, count, future = self._running.popleft()
        self._add(first, count, future.result())  # run's exception, if any, is raised here

    def _add(self, first: int, count: int, outputs: dict[str, np.ndarray]) -> None:
        """Overlap-add the outputs of chunks ``first`` to ``first + count - 1``."""
        plan = self.plan
        # Signal index where chunk `first`'s kept part begins.
        base = first * plan.step + plan.start
        end = base + (count - 1) * plan.step + plan.keep
        self._grow(end)
        offset = base - self._out_start
        windows = [self._first_window if first + i == 0 else self._window for i in range(count)]
        for stem, chunks in outputs.items():
            acc = self._acc[stem]
            for i in range(count):
                at = offset + i * plan.step
                acc[:, at:at + plan.keep] += chunks[i, :, plan.trim:plan.trim + plan.keep] * windows[i]
        for i in range(count):
            at = offset + i * plan.step
            self._weight[at:at + plan.keep] += windows[i]
        self._added = first + count

    def _grow(self, end: int) -> None:
        size = end - self._out_start
        if size > self._weight.shape[0]:
            self._weight = np.concatenate([self._weight, np.zeros(size - self._weight.shape[0])])
            for stem, acc in self._acc.items():
                self._acc[stem] = _extend(acc, size)

    def _emit(self, *, limit: int) -> dict[str, np.ndarray]:
        """Return signal samples [_out_start, limit) and drop them from the accumulators."""
        limit = min(limit, self._received)
        if limit <= max(self._out_start, 0):
            return {stem: np.zeros((self.channels, 0), np.float32) for stem in self._acc}
        skip = max(0, -self._out_start)  # the first chunk's fade-in lies before the signal
        count = limit - self._out_start - skip
        out = {}
        weight = np.maximum(self._weight[skip:skip + count], 1e-12)
        for stem, acc in self._acc.items():
            # Divided in float64 and rounded to float32 as it is stored: the values of
            # (acc / weight).astype(float32), without a float64 copy of the block.
            out[stem] = np.empty((self.channels, count), np.float32)
            np.divide(acc[:, skip:skip + count], weight, out=out[stem], dtype=np.float64, casting="unsafe")
            self._acc[stem] = acc[:, skip + count:]
        self._weight = self._weight[skip + count:]
        self._out_start += skip + count
        return out


def _extend(array: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((array.shape[0], size - array.shape[1]), array.dtype)], axis=1)
