"""Demucs: stembridge's demucs family vs the ``demucs`` command, same model file, same song (issue 25).

    python tests/benchmarks/demucs.py build                 (published-size htdemucs, random weights)
    python tests/benchmarks/demucs.py import                (stembridge models import, timed)
    python tests/benchmarks/demucs.py build --model hdemucs_mmi    (the same for hdemucs_mmi: HDemucs)
    python tests/benchmarks/demucs.py import --model hdemucs_mmi
    python tests/benchmarks/demucs.py run [--seconds 20]    (demucs -n htdemucs --repo vs stembridge separate)
    python tests/benchmarks/demucs.py run --shifts 0        (both without the shift trick: stems comparable)

The model is HTDemucs with the published htdemucs arguments (``tests/demucs_models.py``: 41,984,456
parameters), random weights, saved as Demucs saves it (``955717e8-<sha256[:8]>.th``) beside a bag
file ``htdemucs.yaml`` (``models: ['955717e8']``, as Demucs's own), so ``demucs -n htdemucs --repo
DIR`` and ``stembridge models import DIR --name htdemucs`` read the same file. Both run their
defaults: segment 7.8 s, overlap 0.25, one random shift (``--shifts 1``), float32 WAV out. With
``--shifts 0`` both run unshifted (stembridge through its Python API, ``load_separator(shifts=0)``:
the ``separate`` command has no shifts option), so their stems can be compared.

``--model hdemucs_mmi`` builds HDemucs with hdemucs_mmi's arguments (``tests/demucs_models.py``:
83.6 M parameters) as ``75fc33f5-<sha256[:8]>.th`` beside Demucs's own bag file (``models:
['75fc33f5']``, ``segment: 44``); ``run`` takes it too.

Every measured run is its own process under ``/usr/bin/time -v`` (whole-process wall, CPU = user +
system, peak RSS), with the 1-minute load average before and after it recorded beside its figures
(the machine is shared). The stems of both are compared (SNR per stem): they differ by the random
shift each draws, so expect agreement well below the shifts-0 parity of ``tests/test_demucs.py``.

Everything goes under ``--work`` (default ``/work/bench25`` or ``$BENCH25``); nothing there is
committed. Needs the ``demucs`` package and, for its command line, ``sphn`` and ``lameenc``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
# Run as a script, this folder is sys.path[0], where this file would shadow the demucs package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
RATE = 44100


def work(args) -> Path:
    return Path(args.work or os.environ.get("BENCH25", "/work/bench25"))


def env(args) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), STEMBRIDGE_MODELS=str(work(args) / "models"),
                STEMBRIDGE_CACHE=str(work(args) / "cache"))


def timed(cmd: list[str], *, environ: dict, logfile: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall, CPU, peak RSS and the load around it."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    vfile = logfile.with_suffix(".time")
    before = os.getloadavg()
    start = time.perf_counter()
    with open(logfile, "w") as out:
        code = subprocess.call(["/usr/bin/time", "-v", "-o", str(vfile)] + cmd, stdout=out, stderr=subprocess.STDOUT,
                               env=environ)
    wall = time.perf_counter() - start
    after = os.getloadavg()
    if code:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{logfile.read_text()[-3000:]}")
    fields = dict(line.strip().rpartition(": ")[::2] for line in vfile.read_text().splitlines() if ": " in line)
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(int(fields["Maximum resident set size (kbytes)"]) / 1024),
            "load1_before": before[0], "load1_after": after[0], "cmd": " ".join(cmd)}


def record(args, key: str, value: dict) -> None:
    path = work(args) / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))
    print(key, json.dumps(value, indent=1), flush=True)


def cmd_build(args) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import demucs_models as dm

    repo = work(args) / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    if args.model == "hdemucs_mmi":
        model = dm.build(dm.hdemucs_published(), seed=25)
        path = dm.save(model, repo, "75fc33f5")
        dm.save_bag(repo, "hdemucs_mmi", ["75fc33f5"], segment=44)  # as demucs/remote/hdemucs_mmi.yaml
    else:
        model = dm.build(dm.published(), seed=25)
        path = dm.save(model, repo, "955717e8")
        dm.save_bag(repo, "htdemucs", ["955717e8"])
    print(path, sum(p.numel() for p in model.parameters()), "parameters", path.stat().st_size / 1e6, "MB")


def cmd_import(args) -> None:
    cmd = [sys.executable, "-m", "bridge.cli", "models", "import", str(work(args) / "repo"), "--name", args.model,
           "--force"]
    key = "import" if args.model == "htdemucs" else f"import_{args.model}"
    record(args, key, timed(cmd, environ=env(args), logfile=work(args) / "logs" / f"{key}.log"))


def song(args) -> Path:
    path = work(args) / "songs" / f"fishin_{args.seconds}s.wav"
    if not path.exists():
        audio, rate = sf.read(DATA / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg", dtype="float32", always_2d=True)
        assert rate == RATE
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio[30 * RATE: (30 + args.seconds) * RATE], RATE, subtype="FLOAT")
    return path


def cmd_run(args) -> None:
    wav = song(args)
    out = work(args) / "out"
    out = out / f"shifts{args.shifts}" if args.model == "htdemucs" else out / args.model / f"shifts{args.shifts}"
    demucs_cmd = [sys.executable, "-m", "demucs", "-n", args.model, "--repo", str(work(args) / "repo"), "-d", "cpu",
                  "--float32", "--shifts", str(args.shifts), "-o", str(out / "demucs"), str(wav)]
    ours_cmd = [sys.executable, "-m", "bridge.cli", "separate", str(wav), "--model", args.model, "--out",
                str(out / "stembridge"), "--bit-depth", "32", "--no-cache", "--jobs", "1"]
    if args.shifts != 1:
        (out / "stembridge" / wav.stem).mkdir(parents=True, exist_ok=True)
        ours_cmd = [sys.executable, "-c", (
            "import sys, soundfile as sf; from bridge.separation import load_separator; "
            f"s = load_separator('{args.model}', shifts={args.shifts}, threads=int(sys.argv[-1])); "
            "x, r = sf.read(sys.argv[1], dtype='float32', always_2d=True); "
            "[sf.write(f'{sys.argv[2]}/{k}.wav', v.T, r, subtype='FLOAT') for k, v in s(x.T.copy(), r).items()]"),
            str(wav), str(out / "stembridge" / wav.stem)]
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = {}
    for name, cmd in (("demucs", demucs_cmd), ("stembridge", ours_cmd + ["--threads", str(args.threads)])):
        results[name] = timed(cmd, environ={**env(args), **threads},
                              logfile=work(args) / "logs" / f"{name}_shifts{args.shifts}.log")
    stems = {}
    for stem in ("drums", "bass", "other", "vocals"):
        ref, _ = sf.read(out / "demucs" / args.model / wav.stem / f"{stem}.wav", dtype="float64")
        est, _ = sf.read(out / "stembridge" / wav.stem / f"{stem}.wav", dtype="float64")
        stems[stem] = round(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2)), 1)
    results["snr_db_stembridge_vs_demucs"] = stems
    results["song_s"] = args.seconds
    prefix = "" if args.model == "htdemucs" else f"{args.model}_"
    record(args, f"{prefix}run_{args.seconds}s_shifts{args.shifts}", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "import", "run"])
    parser.add_argument("--work")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--model", choices=["htdemucs", "hdemucs_mmi"], default="htdemucs")
    args = parser.parse_args()
    {"build": cmd_build, "import": cmd_import, "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    main()
