"""A two-model ensemble on a 4-minute song: first run, the single-model runs, re-ensembles from the cache.

    python tests/benchmarks/ensemble.py [--minutes 4] [--models default dsp] [--results out.json]

Targets (issue 22): the ensemble's first run costs no more than the two single-model runs added
(the song is decoded and hashed once and streamed through both models in one pass), and another
method from the stem cache costs under 10 % of the first run (no model runs). The single-model
runs use the stem cache as a user's would (cold, each its own folder), so both sides write it. Also reported: the
peak memory of each run (flat with song length: ``--minutes 1 4`` shows it), and the machine's
load average around the runs (the machine is shared; seconds move with the neighbours).

The song is real music repeated to the length asked (``four_stems.make_song``: Karissa Hobbs,
"Let's Go Fishin'", CC BY 3.0). Every run is a fresh ``stembridge separate`` process writing
24-bit WAV stems: wall time around it, CPU time and peak RSS its own (``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from four_stems import REPO, make_song, timed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[4])
    parser.add_argument("--models", nargs=2, default=["default", "dsp"])
    parser.add_argument("--methods", nargs="+", default=["avg_fft", "median_wave", "uvr_max_spec"],
                        help="the first for the first run, the others re-ensembled from the cache")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "bridge.cli", "separate"]
    models = [x for m in args.models for x in ("--model", m)]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "models": args.models, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="stembridge-ensemble-bench-"))
    try:
        for minutes in args.minutes:
            song = make_song(minutes)
            cache = work / f"cache-{minutes:g}"
            rows = {}

            def run(label, argv):
                load = os.getloadavg()[0]
                out = work / f"out-{minutes:g}-{len(rows)}"
                got = timed(cli + [str(song), "--out", str(out)] + argv, env)
                got["load_before"] = round(load, 2)
                got["load_after"] = round(os.getloadavg()[0], 2)
                record = json.loads((out / "stembridge-run.json").read_text())
                got["models"] = record.get("models", {})
                rows[label] = got
                shutil.rmtree(out, ignore_errors=True)
                print(f"{minutes:g} min  {label:<34} {got}", flush=True)

            for model in args.models:  # as a user runs them: with the stem cache, cold (its own folder)
                run(f"{model} alone", ["--model", model, "--cache-dir", str(work / f"alone-{model}-{minutes:g}")])
            run(f"ensemble {args.methods[0]} (first run)", models + ["--ensemble", args.methods[0],
                                                                     "--cache-dir", str(cache)])
            for method in args.methods[1:]:
                run(f"ensemble {method} (from cache)", models + ["--ensemble", method, "--cache-dir", str(cache)])
            first = rows[f"ensemble {args.methods[0]} (first run)"]["wall_s"]
            alone = sum(rows[f"{m} alone"]["wall_s"] for m in args.models)
            again = [rows[f"ensemble {m} (from cache)"]["wall_s"] for m in args.methods[1:]]
            cpu_first = rows[f"ensemble {args.methods[0]} (first run)"]["cpu_s"]
            cpu_alone = sum(rows[f"{m} alone"]["cpu_s"] for m in args.models)
            cpu_again = [rows[f"ensemble {m} (from cache)"]["cpu_s"] for m in args.methods[1:]]
            summary = {"minutes": minutes, "first_run_s": first, "singles_added_s": round(alone, 2),
                       "first_vs_singles": round(first / alone, 3),
                       "cpu_first_vs_singles": round(cpu_first / cpu_alone, 3),
                       "cpu_from_cache_vs_first": [round(a / cpu_first, 3) for a in cpu_again],
                       "from_cache_s": again, "from_cache_vs_first": [round(a / first, 3) for a in again],
                       "targets_met": first <= alone and all(a < 0.1 * first for a in again)}
            results["runs"].append({"minutes": minutes, "rows": rows, "summary": summary})
            print(json.dumps(summary), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
