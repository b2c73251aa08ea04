"""Whole-process A/B of ``stembridge separate --no-cache`` between two checkouts, interleaved.

    python tests/benchmarks/pipeline_ab.py --a /tmp/base --b . [--minutes 4] [--runs 3] [--profile] [--model M]

Builds the trivial MDX-shaped model at UVR geometry (n_fft 6144, dim_f 3072, dim_t 256, hop
1024; output = input x 0.5, so the network costs nothing and the pipeline is all that is timed)
and a synthetic song (``inputs.song``), then runs each checkout's command line ``--runs`` times,
A then B then A ..., under ``/usr/bin/time``: wall, user+sys CPU and peak RSS, medians. Checks that
both checkouts wrote the same samples (24-bit PCM compared as integers). ``--profile`` also
writes a cProfile of one B run and prints its top functions. The machine is shared: quote the
load average printed with the figures, and compare only figures from one invocation.
``--model`` runs a real model instead (a name such as ``default``, or a card's path), to check
that a pipeline change costs the networks nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def run(checkout: Path, song: Path, card: Path, out: Path, *, profile: Path | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    command = ["/usr/bin/time", "-f", "TIME %e %U %S %M", *python, "-m", "bridge.cli", "separate", str(song),
               "--model", str(card), "--out", str(out), "--no-cache", "--quiet"]
    # cwd: the scratch folder, since "python -m" puts the cwd first on sys.path (a checkout there would win)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True, cwd=out.parent)
    wall, user, system, rss = re.search(r"TIME (\S+) (\S+) (\S+) (\S+)", result.stderr).groups()
    return {"wall": float(wall), "cpu": float(user) + float(system), "rss_mb": int(rss) / 1024}


def samples(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): sf.read(str(p), dtype="int32")[0] for p in sorted(folder.rglob("*.wav"))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", required=True, help="checkout A (a folder holding bridge/)")
    parser.add_argument("--b", required=True, help="checkout B")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--model", help="a model name or card instead of the trivial MDX model")
    args = parser.parse_args()
    import inputs
    import models

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        song = inputs.song(folder / "song.wav", args.minutes)
        card = args.model or models.write_card(folder / "trivial.yaml", models.trivial_mdx(folder / "trivial.onnx"),
                                               name="trivial")
        figures = {"a": [], "b": []}
        for _ in range(args.runs):
            for label in ("a", "b"):
                figures[label].append(run(Path(getattr(args, label)).resolve(), song, card, folder / f"out_{label}"))
        same = {k: np.array_equal(v, samples(folder / "out_b")[k]) for k, v in samples(folder / "out_a").items()}
        print(f"{args.minutes:g}-minute song, {args.model or 'trivial UVR-geometry MDX model'}, {args.runs} interleaved runs, "
              f"load average {os.getloadavg()[0]:.2f}:")
        for label in ("a", "b"):
            rows = figures[label]
            print(f"  {label} ({getattr(args, label)}): wall {statistics.median(r['wall'] for r in rows):.2f} s, "
                  f"CPU {statistics.median(r['cpu'] for r in rows):.2f} s, peak "
                  f"{statistics.median(r['rss_mb'] for r in rows):.0f} MB  (walls {[r['wall'] for r in rows]})")
        print(f"  stems identical: {same}")
        if args.profile:
            import pstats

            target = folder / "b.prof"
            run(Path(args.b).resolve(), song, card, folder / "out_p", profile=target)
            pstats.Stats(str(target)).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
