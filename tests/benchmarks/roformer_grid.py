"""Chunk grids for RoFormers: stembridge's trimmed grid against the reference tools', measured.

    PYTHONPATH=. python tests/benchmarks/roformer_grid.py [--minutes 1] [--overlaps 2 4] [--out DIR]

A RoFormer-interface model whose output depends on context (``onnx_models.roformer_model`` with a
``("context", 31)`` mask: each STFT frame's mask is its power over the power averaged across 31
neighbouring frames, 0.31 s, so what a chunk edge cuts off changes the output) runs at the real
geometry (44.1 kHz, n_fft 2048, hop 441, chunk_size 352800 = 8 s) on the synthetic benchmark song
(``inputs.song``: chords and a noise burst every 0.5 s), over four grids:

- ``whole``: the whole song as one chunk, the reference every grid is scored against;
- ``stembridge``: :mod:`bridge.separation.roformer`'s default (step ``chunk_size // num_overlap``,
  ``chunk_size // 10`` trimmed at each chunk edge, raised-cosine cross-fades), through
  ``load_separator`` and the streaming runner;
- ``zfturbo``: Music-Source-Separation-Training's ``demix`` (reflect padding of ``chunk_size - step``
  at both ends, linear fades over ``chunk_size // 10``, none at the song's ends; the windowing
  array copied per chunk, as intended);
- ``audiosep``: python-audio-separator 0.47's roformer path (``MDXCSeparator.demix``: chunks from
  sample 0 every ``step``, the last one flush with the song's end, Hamming window over the chunk).

Each grid calls the same engine (:class:`~bridge.separation.roformer.RoformerEngine`) per chunk,
so only the grid differs. Reported: network calls, and the SNR of the ``vocals`` stem against the
whole-song run, over the whole song and away from the song's ends (first and last chunk_size
excluded: there every grid, and the whole-song run itself, guesses what lies outside the song).

Measured 2026-12-07 on the 2-core machine, 1-minute song (``--minutes 1``, the defaults):

    num_overlap grid        calls  SNR all SNR inner
              2 stembridge     15     60.2     151.6
              2 zfturbo        17     55.4      56.7
              2 audiosep       14     54.2      53.5
              4 stembridge     28     60.2     147.1
              4 zfturbo        36     57.9      61.5
              4 audiosep       27     54.2      55.5

Away from the song's ends stembridge's grid reproduces the whole-song run to float32 rounding
(every output sample has at least ``trim`` = 0.8 s of real audio on both sides, more than the
model's 0.15 s reach), where both references mix in chunk-edge output (~55 dB). At the song's ends
every grid guesses (reflection) and the whole-song run guesses differently (the STFT's own
reflection, a shorter average), which bounds the overall figure at 60 dB, still above both
references. Calls: one more per song than audio-separator, two (num_overlap 2) to eight (4) fewer
than ZFTurbo, the same per minute as both.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import inputs  # noqa: E402
import onnx_models  # noqa: E402
from roformer import audiosep_chunk_starts  # noqa: E402  (the grid's one copy, beside its driver)

from bridge import load_separator  # noqa: E402
from bridge.separation.models import load_card
from bridge.separation.roformer import RoformerEngine  # noqa: E402

N_FFT, HOP, CHUNK, RATE = 2048, 441, 352800, 44100


def zfturbo(engine, mix: np.ndarray, *, num_overlap: int) -> tuple[np.ndarray, int]:
    """ZFTurbo's ``demix`` (models/utils.py) in numpy, batch 1: ``(vocals, calls)``."""
    C, N = engine.chunk, num_overlap
    fade, step = C // 10, C // N
    border = C - step
    length = mix.shape[1]
    padded = length > 2 * border and border > 0
    if padded:
        mix = np.pad(mix, ((0, 0), (border, border)), mode="reflect")
    base = np.ones(C, np.float32)
    base[:fade] = np.linspace(0, 1, fade)
    base[-fade:] = np.linspace(1, 0, fade)
    result = np.zeros(mix.shape, np.float32)
    counter = np.zeros(mix.shape, np.float32)
    i, calls = 0, 0
    while i < mix.shape[1]:
        part = mix[:, i:i + C]
        n = part.shape[1]
        if n < C:
            mode = "reflect" if n > C // 2 + 1 else "constant"
            part = np.pad(part, ((0, 0), (0, C - n)), mode=mode)
        y = engine.run(part[None])["vocals"][0]
        calls += 1
        window = base.copy()
        if i == 0:
            window[:fade] = 1
        if i + step >= mix.shape[1]:
            window[-fade:] = 1
        result[:, i:i + n] += y[:, :n] * window[:n]
        counter[:, i:i + n] += window[:n]
        i += step
    out = result / counter
    return (out[:, border:-border] if padded else out), calls


def audiosep(engine, mix: np.ndarray, *, num_overlap: int) -> tuple[np.ndarray, int]:
    """audio-separator 0.47's roformer ``demix`` (Hamming window, flush tail chunk): ``(vocals, calls)``."""
    from scipy.signal import windows

    C = engine.chunk
    step = C // num_overlap
    starts = audiosep_chunk_starts(mix.shape[1], C, step)
    window = windows.hamming(C).astype(np.float32)
    result = np.zeros(mix.shape, np.float32)
    counter = np.zeros(mix.shape, np.float32)
    for start in starts:
        y = engine.run(mix[None, :, start:start + C])["vocals"][0]
        result[:, start:start + C] += y * window
        counter[:, start:start + C] += window
    return result / np.maximum(counter, 1e-10), len(starts)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--context", type=int, default=31, help="frames the model's moving average spans")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="roformer-grid-"))
    folder.mkdir(parents=True, exist_ok=True)
    song, _ = sf.read(str(inputs.song(folder / "song.wav", args.minutes)), dtype="float32", always_2d=True)
    mix = np.ascontiguousarray(song.T)
    model = onnx_models.roformer_model(folder / "context.onnx", bins=N_FFT // 2 + 1, dim_t=None,
                                       masks=[("context", args.context)])
    rows = []
    for overlap in args.overlaps:
        card_path = onnx_models.roformer_card(folder / f"context-{overlap}.yaml", model, n_fft=N_FFT, hop=HOP,
                                              chunk_size=CHUNK, num_overlap=overlap)
        card = load_card(card_path)
        engine = RoformerEngine(card)
        whole_card = dataclasses.replace(card, chunk_size=mix.shape[1], dim_t=mix.shape[1] // HOP + 1)
        whole = RoformerEngine(whole_card).run(mix[None])["vocals"][0]
        separator = load_separator(card)
        calls = {"stembridge": separator.plan.chunks_for(mix.shape[1])}
        started = time.perf_counter()
        outputs = {"stembridge": separator(mix, RATE)["vocals"]}
        seconds = {"stembridge": time.perf_counter() - started}
        for name, run in (("zfturbo", zfturbo), ("audiosep", audiosep)):
            started = time.perf_counter()
            outputs[name], calls[name] = run(engine, mix, num_overlap=overlap)
            seconds[name] = time.perf_counter() - started
        inner = slice(CHUNK, -CHUNK)
        for name, out in outputs.items():
            rows.append((overlap, name, calls[name], snr_db(whole, out), snr_db(whole[:, inner], out[:, inner]),
                         seconds[name]))
    print(f"{args.minutes:g}-minute song, context {args.context} frames; SNR of vocals vs the whole-song run")
    print(f"{'num_overlap':>11} {'grid':<11} {'calls':>5} {'SNR all':>8} {'SNR inner':>9} {'seconds':>7}")
    for overlap, name, calls, snr_all, snr_inner, secs in rows:
        print(f"{overlap:>11} {name:<11} {calls:>5} {snr_all:>8.1f} {snr_inner:>9.1f} {secs:>7.2f}")


if __name__ == "__main__":
    main()
