"""int8 RoFormer variants (``stembridge models quantize``): speed-up and output difference, measured.

    PYTHONPATH=. python tests/benchmarks/roformer_quantize.py [--dim 256] [--depth 2] [--chunks 3]

A random-weight network with a RoFormer's shape (``onnx_models.roformer_like``: 1025 bins in 41
bands of 25, ``dim``-wide band projections, ``depth`` pairs of transformer blocks over time and over
bands, a mask estimator) at the real chunk geometry (n_fft 2048, hop 441, 8 s chunks, 801 frames),
its int8 variant from :func:`bridge.importers.quantize.quantize_model`, and for each: onnxruntime
time per chunk (median of ``--chunks`` chunks of the benchmark song, default threads), the whole
pipeline time per chunk around the network (STFT, mask multiply, inverse STFT), and the SNR of the
int8 model's vocals against the float model's on the same song.

A random network is not a trained one: its activations have no outliers, so the SNR here is an
upper bound of what a trained RoFormer keeps; check a real import with ``stembridge eval``
before trusting its int8 variant.

Measured 2026-12-07 on the 2-core machine (AMD EPYC, AVX-512 VNNI), shared with other jobs
(load average ~10, so the times are noisy: three runs gave 1.28x, 1.83x before the first and last
layers were kept float, and 2.04x), defaults, ``--chunks 5``:

    roformer-like dim 256, depth 2, heads 4; 8 s chunks, median of 5
     float32: network   4.30 s/chunk, pipeline around it    72 ms/chunk,   12.8 MB
        int8: network   2.11 s/chunk, pipeline around it    51 ms/chunk,    3.4 MB
    speed-up (network): 2.04x; SNR int8 vs float32 vocals: 34.8 dB

Quantizing every weight MatMul, the band split included, gave 18.1 dB at the same speed: the band
split sees the raw spectrogram, whose dynamic range per-tensor int8 activations cannot hold.
The pipeline around the network (STFT, mask multiply, inverse STFT of an 8 s stereo chunk) costs
50-130 ms, 1-3% of this small network's time and far less of a real RoFormer's (dim 512, depth 12).
"""

from __future__ import annotations

import argparse
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

from bridge import load_separator  # noqa: E402
from bridge.importers.quantize import quantize_model  # noqa: E402

N_FFT, HOP, CHUNK = 2048, 441, 352800


def per_chunk(engine, chunks: np.ndarray) -> tuple[float, float]:
    """Median seconds per chunk: ``(network, everything else in run())``."""
    network, total = [], []
    call = engine.runner.session.run

    def timed(*a, **k):
        started = time.perf_counter()
        out = call(*a, **k)
        network.append(time.perf_counter() - started)
        return out

    engine.runner.session.run = timed
    try:
        for chunk in chunks:
            started = time.perf_counter()
            engine.run(chunk[None])
            total.append(time.perf_counter() - started)
    finally:
        engine.runner.session.run = call
    network, total = np.array(network), np.array(total)
    return float(np.median(network)), float(np.median(total - network))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="roformer-quantize-"))
    folder.mkdir(parents=True, exist_ok=True)
    song, _ = sf.read(str(inputs.song(folder / "song.wav", CHUNK * args.chunks / 44100 / 60)), dtype="float32",
                      always_2d=True)
    mix = np.ascontiguousarray(song.T)
    chunks = mix[:, :CHUNK * args.chunks].reshape(2, args.chunks, CHUNK).swapaxes(0, 1).copy()
    model = onnx_models.roformer_like(folder / "like.onnx", bins=N_FFT // 2 + 1, bands=41, dim=args.dim,
                                      depth=args.depth, heads=args.heads)
    card = onnx_models.roformer_card(folder / "like.yaml", model, n_fft=N_FFT, hop=HOP, chunk_size=CHUNK)
    done = quantize_model(str(card), name="like-int8", force=True, folder=folder)
    results = {}
    for label, spec in (("float32", card), ("int8", done.card)):
        separator = load_separator(spec)
        network, rest = per_chunk(separator.engine, chunks)
        results[label] = (network, rest, separator(mix, 44100)["vocals"], Path(separator.engine.path).stat().st_size)
    print(f"roformer-like dim {args.dim}, depth {args.depth}, heads {args.heads}; 8 s chunks, median of {args.chunks}")
    for label, (network, rest, _, size) in results.items():
        print(f"{label:>8}: network {network:6.2f} s/chunk, pipeline around it {rest * 1000:5.0f} ms/chunk, "
              f"{size / 1e6:6.1f} MB")
    print(f"speed-up (network): {results['float32'][0] / results['int8'][0]:.2f}x; "
          f"SNR int8 vs float32 vocals: {snr_db(results['float32'][2], results['int8'][2]):.1f} dB")


if __name__ == "__main__":
    main()
