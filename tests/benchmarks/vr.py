"""UVR VR model: stembridge against python-audio-separator (CPU), the same .pth, the same song.

    python tests/benchmarks/vr.py [--song SONG.wav] [--repeats 1] [--v51]

The model is a random-weight network at a published size built with python-audio-separator's own
classes: by default the v5 ``123821 KB`` class (CascadedASPPNet, ch 32, UVR-DeEcho-DeReverb's and
the HP models' size) on ``4band_v3``, primary stem "No Reverb"; ``--v51`` a v5.1 CascadedNet with
nout 48 / nout_lstm 128 (UVR-De-Echo's size). audio-separator finds its parameters through a
``vr_model_data.json`` beside the file (its hash table, as it downloads it), with its defaults
(window 512, aggression 5, batch 1, no TTA or post-process); stembridge imports the file
(``stembridge models import --vr-params``), then separates (``stembridge separate``). Every run is
its own process, measured as tests/benchmarks/run.py measures (wall, user + sys CPU, peak RSS
from /usr/bin/time); the two tools alternate (A B A B). The import is measured once, separately.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from run import measure  # noqa: E402

VENV = Path(os.environ.get("AUDIOSEP_VENV", "/work/venvs/audiosep"))
SONG = Path("/work/bench25/songs/fishin_loop_4min.wav")

DRIVER = r'''
import logging, sys, time
from audio_separator.separator import Separator
t0 = time.perf_counter()
sep = Separator(log_level=logging.WARNING, model_file_dir=sys.argv[1], output_dir=sys.argv[3], output_format="WAV",
                use_soundfile=True, vr_params={"batch_size": 1, "window_size": 512, "aggression": 5,
                "enable_tta": False, "enable_post_process": False, "post_process_threshold": 0.2,
                "high_end_process": False})
sep.load_model(sys.argv[2])
files = sep.separate(sys.argv[4])
print("outputs", files, "seconds", time.perf_counter() - t0)
'''


def build_model(folder: Path, *, v51: bool) -> tuple[Path, dict]:
    """The random-weight model file (kept from an earlier run in the same --work folder)."""
    from tests.vr_models import reference_net, save_state

    if v51:
        entry = {"vr_model_param": "4band_v3", "primary_stem": "No Echo", "nout": 48, "nout_lstm": 128}
        path = folder / "vr-bench-51.pth"
    else:
        entry = {"vr_model_param": "4band_v3", "primary_stem": "No Reverb"}
        path = folder / "vr-bench-5.pth"
    if not path.is_file():
        net = (reference_net("4band_v3", v51=True, nout=48, nout_lstm=128, size=56817, seed=5) if v51
               else reference_net("4band_v3", v51=False, size=123821, seed=5))
        save_state(net, path)
    return path, entry


def uvr_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 10_000 * 1024))
        return hashlib.md5(handle.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--song", type=Path, default=SONG)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--v51", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vr-bench-"))
    models_as = work / "audiosep-models"
    models_sb = work / "stembridge-models"
    models_as.mkdir(parents=True, exist_ok=True)
    pth, entry = build_model(models_as, v51=args.v51)
    (models_as / "vr_model_data.json").write_text(json.dumps({uvr_md5(pth): entry}))
    (models_as / "download_checks.json").write_text(json.dumps({
        "vr_download_list": {f"VR Arch Single Model v5: {pth.stem}": pth.name}, "mdx_download_list": {},
        "demucs_download_list": {}, "mdx23c_download_list": {}, "mdx_download_vip_list": {},
        "mdx23c_download_vip_list": {}, "roformer_download_list": {}}))
    (models_as / "mdx_model_data.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(models_sb), "STEMBRIDGE_CACHE": str(work / "c")}
    results = {"song": str(args.song), "model": pth.name, "bytes": pth.stat().st_size, "entry": entry,
               "load_before": os.getloadavg()}
    flags = ["--vr-params", entry["vr_model_param"], "--vr-primary", entry["primary_stem"]]
    if "nout" in entry:
        flags += ["--vr-nout", str(entry["nout"]), "--vr-nout-lstm", str(entry["nout_lstm"])]
    if not (models_sb / "bench.yaml").is_file():  # imported once per --work folder
        results["import"] = measure([sys.executable, "-m", "bridge.cli", "models", "import", str(pth), "--name", "bench",
                                     "--force", *flags], env=env, log=work / "logs" / "import.log")
    driver = work / "drive_vr_audiosep.py"
    driver.write_text(DRIVER)
    runs = []
    for i in range(args.repeats):
        for tool in ("audio-separator", "stembridge"):
            out = work / f"out-{tool}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            if tool == "stembridge":
                cmd = [sys.executable, "-m", "bridge.cli", "separate", str(args.song), "--model", "bench", "--out",
                       str(out), "--no-cache", "--device", "cpu"]
            else:
                cmd = [str(VENV / "bin" / "python"), str(driver), str(models_as), pth.name, str(out), str(args.song)]
            row = measure(cmd, env=env, log=work / "logs" / f"{tool}-{i}.log")
            row.update(tool=tool, repeat=i, load=os.getloadavg())
            runs.append(row)
            print(json.dumps(row), flush=True)
    results["runs"] = runs
    results["load_after"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))
    print("results:", work / "results.json")


if __name__ == "__main__":
    main()
