"""The model floor: onnxruntime alone on the chunks a song needs, nothing else timed.

    python floor.py --model M.onnx --song S.wav --chunks N [--batch B] [--threads T] --result R.json

The session is opened exactly as stembridge opens it (``bridge.separation.runtime.open_session``);
the inputs are the song's real chunks (stembridge's grid, overlap 0.25), packed before each call
and outside the timed region. Only ``session.run`` is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--song", required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()

    import models
    from bridge.separation.chunking import ChunkPlan
    from bridge.separation.runtime import default_threads, open_session
    from bridge.separation.spectral import Stft, pack_mdx

    session = open_session(Path(args.model), threads=args.threads)
    name = session.get_inputs()[0].name
    plan = ChunkPlan(chunk=models.HOP * (models.DIM_T - 1), trim=models.N_FFT // 2, overlap=0.25)
    audio, _ = sf.read(args.song, dtype="float32", always_2d=True)
    padded = np.concatenate([np.zeros((plan.lead, 2), np.float32), audio,
                             np.zeros((plan.chunk * (args.batch + 1), 2), np.float32)]).T
    stft = Stft(models.N_FFT, models.HOP)
    times = []
    for first in range(0, args.chunks, args.batch):
        count = min(args.batch, args.chunks - first)
        chunks = np.stack([padded[:, i * plan.step:i * plan.step + plan.chunk] for i in range(first, first + count)])
        x = np.ascontiguousarray(pack_mdx(stft.forward(chunks), models.DIM_F))
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    per_chunk = [t / min(args.batch, args.chunks - i * args.batch) for i, t in enumerate(times)]
    result = {"chunks": args.chunks, "batch": args.batch, "threads": args.threads or default_threads(),
              "ort_s": sum(times), "median_chunk_s": statistics.median(per_chunk), "min_chunk_s": min(per_chunk),
              "max_chunk_s": max(per_chunk), "calls": times}
    Path(args.result).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
