"""Open-Unmix at umxhq's published size: stembridge against openunmix 1.3.0 run with PyTorch.

    python tests/benchmarks/umx.py build            (umxhq's shape, random weights, and its import, timed)
    python tests/benchmarks/umx.py run --minutes 1  (openunmix then stembridge, A B [A B ...])
    python tests/benchmarks/umx.py run --minutes 4 --repeats 1 --tools stembridge

The model is umxhq's shape (4 targets, hidden size 512, n_fft 4096, hop 1024, 16 kHz bandwidth,
stereo: 8,893,348 parameters per target), built with openunmix's own ``OpenUnmix`` class and
random weights (no published weights can be downloaded here), saved as openunmix's train.py saves
a model (``tests/umx_models.py``). ``build`` also imports it (``stembridge models import``) under
``/usr/bin/time -v`` and records the import's wall, CPU and peak memory.

``run`` separates ``/work/bench25/songs/fishin_loop_{N}min.wav`` (Karissa Hobbs, "Let's Go
Fishin'", looped) with each tool, each run its own process under ``/usr/bin/time -v`` (whole
process wall, CPU = user + system, peak RSS), the load average beside each:

- openunmix: its ``Separator`` as ``openunmix.utils.load_separator`` builds it (niter 1, softmask
  off, residual off, wiener_win_len 300), on the whole track as openunmix's ``predict.separate``
  does, the stems written as float WAV (python-audio-separator has no Open-Unmix support, so
  openunmix itself is the reference tool); torch threads 2;
- stembridge: ``stembridge separate --model umxhq-bench --threads 2``, float WAV.

The stems of the two are compared (SNR per stem); they differ by stembridge's chunking only
(``umx_chunks.py`` measures that part alone). Everything goes under ``--work`` (default
``/work/bench25/umx``); nothing there is committed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGETS = ("vocals", "drums", "bass", "other")

REFERENCE = """
import sys, time
sys.path.insert(0, {tests!r})
import numpy as np, soundfile as sf, torch
import umx_models
torch.set_num_threads(2)
state = {{t: torch.load(p, weights_only=True) for t, p in {files!r}.items()}}
nets = {{}}
for t, s in state.items():
    net = umx_models.reference().OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487)
    net.load_state_dict(s, strict=False)
    nets[t] = net.eval()
separator = umx_models.reference_separator(nets)
audio, rate = sf.read({song!r}, dtype="float32", always_2d=True)
with torch.no_grad():
    out = separator(torch.from_numpy(np.ascontiguousarray(audio.T))[None]).numpy()[0]
for i, t in enumerate(nets):
    sf.write(f"{{sys.argv[1]}}/{{t}}.wav", out[i].T, rate, subtype="FLOAT")
"""


def timed(argv, log: Path) -> dict:
    load = os.getloadavg()[0]
    done = subprocess.run(["/usr/bin/time", "-v", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"{argv[:3]} failed:\n{done.stderr[-2000:]}")
    stats = dict(re.findall(r"^\s*(.+?): (.+)$", done.stderr, re.M))
    wall = stats["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
    return {"wall_s": round(sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall))), 1),
            "cpu_s": round(float(stats["User time (seconds)"]) + float(stats["System time (seconds)"]), 1),
            "peak_mb": round(int(stats["Maximum resident set size (kbytes)"]) / 1024),
            "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}


def build(work: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    import umx_models

    folder = umx_models.save_model(work / "umxhq-bench", {t: umx_models.random_target(hidden_size=512, seed=i)
                                                          for i, t in enumerate(TARGETS)}, hidden_size=512)
    models = work / "models"
    result = timed([sys.executable, "-m", "bridge.cli", "models", "import", folder, "--force"],
                   work / "import.log") | {"what": "stembridge models import (umxhq shape, 4 targets)"}
    os.environ["STEMBRIDGE_MODELS"] = str(models)
    print(json.dumps(result))
    (work / "import.json").write_text(json.dumps(result, indent=1))


def snr(a, b) -> float:
    import numpy as np

    a = a.astype(np.float64)
    return float(10 * np.log10(np.sum(a ** 2) / max(np.sum((a - b) ** 2), 1e-30)))


def run(work: Path, minutes: int, repeats: int, tools: list[str]) -> None:
    import soundfile as sf

    song = Path(f"/work/bench25/songs/fishin_loop_{minutes}min.wav")
    folder = work / "umxhq-bench"
    files = {t: str(next(folder.glob(f"{t}-*.pth"))) for t in TARGETS}
    script = work / "reference.py"
    script.write_text(REFERENCE.format(tests=str(HERE.parent), files=files, song=str(song)))
    rows = []
    for repeat in range(repeats):
        for tool in tools:
            out = work / f"{tool}-{minutes}min"
            out.mkdir(parents=True, exist_ok=True)
            if tool == "openunmix":
                argv = [sys.executable, script, out]
            else:
                argv = [sys.executable, "-m", "bridge.cli", "separate", song, "--model", "umxhq-bench", "--threads", "2",
                        "--out", out, "--bit-depth", "32", "--no-cache"]
            row = timed(argv, work / f"{tool}-{minutes}min-{repeat}.log") | {"tool": tool, "minutes": minutes}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if set(tools) == {"openunmix", "stembridge"}:
        agreement = {}
        for t in TARGETS:
            a, _ = sf.read(str(work / f"openunmix-{minutes}min" / f"{t}.wav"), dtype="float32")
            b, _ = sf.read(str(next((work / f"stembridge-{minutes}min").rglob(f"{t}.wav"))), dtype="float32")
            agreement[t] = round(snr(a, b), 1)
        print(json.dumps({"stems_snr_db_stembridge_vs_openunmix": agreement}))
        rows.append({"agreement": agreement})
    (work / f"run-{minutes}min.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "run"])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH25", "/work/bench25")) / "umx")
    parser.add_argument("--minutes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tools", default="openunmix,stembridge")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["STEMBRIDGE_MODELS"] = str(args.work / "models")
    if args.action == "build":
        build(args.work)
    else:
        run(args.work, args.minutes, args.repeats, args.tools.split(","))


if __name__ == "__main__":
    main()
