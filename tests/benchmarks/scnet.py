"""SCNet: stembridge against MSST's own code, at published sizes (on demand, not CI).

Needs a checkout of ZFTurbo's Music-Source-Separation-Training (MSST; not on PyPI) and a Python
with its few extra packages (ml-collections; torch, numpy, soundfile, tqdm as stembridge's), e.g.::

    git clone https://github.com/ZFTurbo/Music-Source-Separation-Training /work/scratch/msst
    python -m venv --system-site-packages /work/venvs/msst && /work/venvs/msst/bin/pip install ml-collections
    PYTHONPATH=$PWD /work/venvs/msst/bin/python tests/benchmarks/scnet.py --msst /work/scratch/msst

For each size (``base``: ``configs/config_musdb18_scnet.yaml``, ``large``:
``configs/config_musdb18_scnet_large.yaml``, ``xl``: the large config with ``num_dplayer: 8``, a
54.0 M-parameter stand-in for the XL checkpoints, whose configs are release assets) it

1. builds MSST's own ``SCNet(**config.model)`` with random weights (torch's initialisation, seed
   0) and saves its state dict as MSST does (``{"model_state_dict": ...}``);
2. imports it with ``stembridge models import`` in a child process: wall time and peak memory
   (``/usr/bin/time``'s maximum resident set size);
3. network parity: MSST's ``model(chunk)`` (its forward: padding, STFT, network, inverse STFT)
   against stembridge's engine (numpy STFT + onnxruntime) on one ``chunk_size`` chunk of real
   music, SNR per stem (>= 80 dB);
4. stems: MSST's ``utils.model_utils.demix`` (``inference.batch_size: 1``: see
   ``bridge/separation/msst_grid.py``) against stembridge's separator on ``--seconds`` of real
   music, SNR per stem (>= 60 dB);
5. with ``--timing SONG``: whole-process wall time, CPU time and peak memory of MSST's demix and of
   ``stembridge separate`` on SONG, side by side (A B A B with ``--repeats 2``).

Prints one line per figure and writes them to ``--results`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
SONG = DATA / "cristina-vane-so-easy" / "mixture.flac"
SIZES = {"base": ("config_musdb18_scnet.yaml", {}),
         "large": ("config_musdb18_scnet_large.yaml", {}),
         "xl": ("config_musdb18_scnet_large.yaml", {"num_dplayer": 8})}


def snr_db(reference, estimate) -> float:
    reference = np.asarray(reference, np.float64)
    error = float(np.sum((reference - estimate) ** 2))
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference ** 2) / error))


def timed(argv: list[str], *, env=None, cwd=None) -> dict:
    """Run ``argv`` under /usr/bin/time -v: wall s, CPU s, peak RSS MB."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    field = lambda name: float(re.search(rf"{name}: ([\d.]+)", done.stderr).group(1))
    return {"wall_s": round(wall, 1), "cpu_s": round(field("User time \\(seconds\\)") + field("System time \\(seconds\\)"), 1),
            "peak_mb": round(field("Maximum resident set size \\(kbytes\\)") / 1024), "stdout": done.stdout}


def msst_config(msst: Path, size: str):
    import yaml
    from ml_collections import ConfigDict

    name, changes = SIZES[size]
    data = yaml.load((msst / "configs" / name).read_text(), Loader=yaml.FullLoader)  # MSST's own, trusted file
    data["model"].update(changes)
    data["inference"]["batch_size"] = 1
    return data, ConfigDict(data)


MSST_DEMIX = """
import sys, numpy as np, soundfile as sf, torch, yaml
sys.path.insert(0, sys.argv[1])
from ml_collections import ConfigDict
from models.scnet import SCNet
from utils.model_utils import demix
torch.set_num_threads(int(sys.argv[5]))
config = ConfigDict(yaml.load(open(sys.argv[2]), Loader=yaml.FullLoader))
model = SCNet(**config.model)
state = torch.load(sys.argv[3], map_location="cpu", weights_only=True)
model.load_state_dict(state.get("model_state_dict", state))
model.eval()
mix, rate = sf.read(sys.argv[4], dtype="float32", always_2d=True)
out = demix(config, model, mix.T, torch.device("cpu"), model_type="scnet")
np.savez(sys.argv[6], **out)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--msst", type=Path, required=True, help="an MSST checkout")
    parser.add_argument("--sizes", default="base,large,xl")
    parser.add_argument("--song", type=Path, default=SONG)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timing", type=Path, help="a song for the whole-process comparison")
    parser.add_argument("--timing-sizes", default="base")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    msst = args.msst.resolve()
    # MSST's "models" and "utils" packages (namespace packages: stembridge's root, with a models
    # package of its own, and this folder, with a models.py, must not be on the path meanwhile)
    ours = [p for p in sys.path if Path(p or ".").resolve() in (REPO, Path(__file__).parent)]
    sys.path[:] = [str(msst)] + [p for p in sys.path if p not in ours]
    import soundfile as sf
    import torch
    import yaml

    from models.scnet import SCNet  # MSST's
    from utils.model_utils import demix  # MSST's

    sys.path.append(str(REPO))

    from bridge.separation import load_separator
    from bridge.separation.models import load_card
    from bridge.separation.scnet import ScnetEngine

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="scnet-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(work / "models")}
    os.environ["STEMBRIDGE_MODELS"] = str(work / "models")
    song, rate = sf.read(str(args.song), dtype="float32", always_2d=True)
    song = np.ascontiguousarray(song.T)
    results = {"load": os.getloadavg(), "song": str(args.song), "sizes": {}}
    print(f"work folder {work}; load {os.getloadavg()[0]:.1f}")
    for size in args.sizes.split(","):
        data, config = msst_config(msst, size)
        cfg_path = work / f"{size}.yaml"
        cfg_path.write_text(yaml.safe_dump(data))
        torch.manual_seed(0)
        model = SCNet(**config.model).eval()
        params = sum(p.numel() for p in model.parameters())
        ckpt = work / f"{size}.ckpt"
        torch.save({"model_state_dict": model.state_dict(), "epoch": 0}, ckpt)
        row = {"parameters_m": round(params / 1e6, 1), "checkpoint_mb": round(ckpt.stat().st_size / 1e6)}
        imp = timed([sys.executable, "-m", "bridge.cli", "models", "import", str(ckpt), "--config", str(cfg_path),
                     "--name", f"bench-{size}", "--force"], env=env, cwd=REPO)
        parity = re.search(r"ONNX vs torch ([\d.]+) dB", imp.pop("stdout"))
        row["import"] = {**imp, "parity_db": float(parity.group(1)) if parity else None}
        print(f"{size}: {row['parameters_m']} M parameters; import {imp['wall_s']} s, peak {imp['peak_mb']} MB, "
              f"ONNX vs our torch {row['import']['parity_db']} dB")
        # Network parity: MSST's forward (its STFT included) against the engine's run on one chunk.
        chunk = config.audio.chunk_size
        x = song[:, :chunk] if song.shape[1] >= chunk else np.pad(song, ((0, 0), (0, chunk - song.shape[1])))
        with torch.no_grad():
            want = model(torch.from_numpy(x[None])).numpy()[0]
        engine = ScnetEngine(load_card(work / "models" / f"bench-{size}.yaml"), threads=args.threads)
        got = engine.run(x[None].copy())
        stems = list(config.training.instruments)
        row["network_db"] = {s: round(snr_db(want[i], got[s][0]), 1) for i, s in enumerate(stems)}
        print(f"{size}: network MSST vs stembridge (one {chunk / rate:g} s chunk): {row['network_db']}")
        del engine
        # Stems: MSST's demix against stembridge's separator.
        mix = np.ascontiguousarray(song[:, : int(args.seconds * rate)])
        start = time.perf_counter()
        with torch.no_grad():
            want = demix(config, model, mix, torch.device("cpu"), model_type="scnet")
        msst_s = time.perf_counter() - start
        del model
        start = time.perf_counter()
        got = load_separator(f"bench-{size}", threads=args.threads)(mix, rate)
        ours_s = time.perf_counter() - start
        row["stems_db"] = {s: round(snr_db(want[s], got[s]), 1) for s in stems}
        row["stems_seconds"] = {"msst_demix": round(msst_s, 1), "stembridge": round(ours_s, 1)}
        print(f"{size}: stems MSST demix vs stembridge ({args.seconds:g} s): {row['stems_db']}; "
              f"in-process {msst_s:.1f} s vs {ours_s:.1f} s")
        results["sizes"][size] = row
    if args.timing:
        results["timing"] = {}
        for size in args.timing_sizes.split(","):
            runs = {"msst": [], "stembridge": []}
            script = work / "msst_demix.py"
            script.write_text(MSST_DEMIX)
            for _ in range(args.repeats):
                runs["msst"].append(timed([sys.executable, str(script), str(msst), str(work / f"{size}.yaml"),
                                           str(work / f"{size}.ckpt"), str(args.timing), str(args.threads),
                                           str(work / "msst.npz")]))
                runs["stembridge"].append(timed([sys.executable, "-m", "bridge.cli", "separate", str(args.timing),
                                                 "--model", f"bench-{size}", "--out", str(work / "out"), "--no-cache",
                                                 "--force", "--threads", str(args.threads)], env=env, cwd=REPO))
            for who, rows in runs.items():
                for r in rows:
                    r.pop("stdout", None)
                print(f"timing {size} {args.timing.name}: {who}: " + "; ".join(
                    f"{r['wall_s']} s wall, {r['cpu_s']} s CPU, {r['peak_mb']} MB" for r in rows))
            results["timing"][size] = runs
        results["load_after"] = os.getloadavg()
    if args.results:
        args.results.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
