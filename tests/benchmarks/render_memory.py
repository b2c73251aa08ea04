"""Peak memory of `stembridge render` (or `separate`) against song length: it must stay flat.

    python tests/benchmarks/render_memory.py [--model dsp|default] [--minutes 1 4 16] [--command separate]
    python tests/benchmarks/render_memory.py --model default --minutes 60 --command render separate


Writes synthetic 44.1 kHz stereo songs (tones and noise bursts, 24-bit wav) to
/work/bench-cache/render (or $STEMBRIDGE_BENCH_CACHE), renders each in a fresh process through a
preset with chains, a loudness target (the two-pass path) and stems, and prints wall time, CPU time
and peak RSS of the whole process. ``--minutes 60`` is the reliability corpus's very long file
(issue 5: an hour of audio, about 635 MB of 24-bit wav, written block by block).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "render"
SR = 44100
PRESET = """version: 1
separator: {{model: {model}}}
stems:
  vocals:
    gain_db: 2
    chain:
      - {{effect: Compressor, threshold_db: -18, ratio: 3}}
      - {{effect: Reverb, room_size: 0.6, wet_level: 0.2}}
  instrumental: {{gain_db: -1}}
master: [{{effect: Limiter, threshold_db: -1}}]
output:
  format: wav
  files: {{mix: "{{track}}.remix.{{ext}}", stems: "{{track}}/{{stem}}.{{ext}}"}}
  loudness_lufs: -16
"""


def make_song(minutes: int) -> Path:
    path = CACHE / f"song-{minutes}min.wav"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(minutes)
    with sf.SoundFile(path, "w", samplerate=SR, channels=2, subtype="PCM_24") as f:
        for second in range(minutes * 60):
            t = (second + np.arange(SR) / SR)
            tone = 0.2 * np.sin(2 * np.pi * (220 + 20 * (second % 7)) * t)
            burst = 0.05 * rng.standard_normal(SR) * (second % 3 == 0)
            f.write(np.stack([tone + burst, 0.8 * tone - burst], axis=1).astype(np.float32))
    return path


#: Runs a command and reports its own children's usage, so every measurement is of one process.
MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "subprocess.run(sys.argv[1:], check=True); w = time.perf_counter() - t; "
           "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(json.dumps({'wall_s': round(w, 2), 'cpu_s': round(r.ru_utime + r.ru_stime, 2), "
           "'peak_rss_mb': round(r.ru_maxrss / 1024, 1)}))")


def run(command_name: str, song: Path, preset: Path, model: str, out: Path) -> dict:
    command = [sys.executable, "-m", "bridge.cli", command_name]
    if command_name == "render":
        command += [str(preset), str(song), "--out", str(out), "--quiet"]
    else:
        command += [str(song), "--model", model, "--out", str(out), "--quiet"]
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dsp")
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--command", nargs="+", choices=["render", "separate"], default=["render"])
    args = parser.parse_args()
    preset = CACHE / f"preset-{args.model}.yaml"
    CACHE.mkdir(parents=True, exist_ok=True)
    preset.write_text(PRESET.format(model=args.model))
    results = {}
    for command in args.command:
        for minutes in sorted(args.minutes):
            out = CACHE / "out"
            result = run(command, make_song(minutes), preset, args.model, out)
            result["real_time_factor"] = round(minutes * 60 / result["wall_s"], 1)
            results[f"{command} {minutes} min"] = result
            print(f"{command} {minutes:>3} min: {result}", flush=True)
            shutil.rmtree(out, ignore_errors=True)  # an hour of stems is gigabytes
    print(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
