"""Float16 variant vs its float32 model on real music: SNR of every stem, and CPU speed.

    python tests/benchmarks/fp16_parity.py [--model default] [--song DIR_OR_FILE] [--seconds 60]

Converts the model with ``stembridge models quantize --fp16`` into a scratch folder, separates the
same audio with both on the CPU (interleaved, median of --runs), and prints per-stem SNR
(10 log10 of float stem energy over the difference's energy) and the seconds per run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--song", default=str(DATA / "cristina-vane-so-easy" / "mixture.flac"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["STEMBRIDGE_MODELS"] = folder
        from bridge.importers.fp16 import fp16_model
        from bridge.separation import load_separator

        done = fp16_model(args.model, folder=folder)
        audio, rate = sf.read(args.song, dtype="float32", always_2d=True, frames=int(args.seconds * 44100))
        audio = np.ascontiguousarray(audio.T)
        full = load_separator(args.model, device="cpu")
        half = load_separator(str(done.card), device="cpu")
        times = {"float32": [], "float16": []}
        for _ in range(args.runs):
            for label, sep in (("float32", full), ("float16", half)):
                t = time.perf_counter()
                out = sep(audio, rate)
                times[label].append(time.perf_counter() - t)
                if label == "float32":
                    ref = out
                else:
                    got = out
        print(f"{args.model} vs {done.name} on {Path(args.song).parent.name}/{Path(args.song).name}, "
              f"{audio.shape[1] / rate:.1f} s, CPU ({os.cpu_count()} cores), median of {args.runs}:")
        for stem in ref:
            print(f"  {stem:<14} SNR {snr_db(ref[stem], got[stem]):6.1f} dB")
        for label, values in times.items():
            print(f"  {label}: {statistics.median(values):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
