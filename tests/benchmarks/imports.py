"""Peak memory, wall and CPU time of ``stembridge models import`` at the published sizes (issue 26).

    python tests/benchmarks/imports.py build [--model NAME ...]         # random-weight checkpoints
    python tests/benchmarks/imports.py run   [--model NAME ...] [--tag T] [--repeat N]
    python tests/benchmarks/imports.py compare --a TAG --b TAG [--model NAME ...]
    python tests/benchmarks/imports.py table [--tag T]

Every model in :data:`MODELS` (one entry each: how to build its checkpoint at the published size
with seeded random weights, and the ``models import`` arguments) is imported by a fresh process
under ``/usr/bin/time -v``: wall time, CPU time (user + system) and peak RSS of the whole process,
with the 1-minute load average before and after. One import runs at a time. ``compare`` runs two
tags' exported models on the same input (the importer's own parity input) and prints the SNR of
one's outputs against the other's: an export that changes how it is made must not change what
it computes.

Everything (checkpoints, imported models, logs, results) goes to ``$STEMBRIDGE_BENCH_CACHE/imports``
(default ``/work/bench-cache/imports``); results to ``results/imports.json`` there, one entry per
tag and model. Nothing there is committed. See README.md, section "Import memory".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "imports"
# This folder holds a demucs.py that would hide the demucs package: the repository and tests/ instead.
sys.path[:] = [str(REPO), str(REPO / "tests")] + [p for p in sys.path if Path(p or ".").resolve() != HERE]


# --------------------------------------------------------------------------- the models

def _roformer(config: str, seed: int) -> Callable[[Path], list[str]]:
    """A RoFormer checkpoint of the published ``config`` (``roformer_configs/``): stembridge's own
    module tree, whose state dict is the reference's key for key (``roformer_network_parity.py``),
    with torch's default random initialisation; saved as the training scripts save it."""
    def build(folder: Path) -> list[str]:
        ckpt, yaml_path = folder / "model.ckpt", HERE / "roformer_configs" / config
        if not ckpt.exists():
            import torch
            from bridge.importers.roformer_config import parse_config, read_config
            from bridge.importers.roformer_net import Roformer

            torch.manual_seed(seed)
            net = Roformer(parse_config(read_config(yaml_path), source=config), gates=True)  # 699 keys, 159,758,092 parameters at viperx size: the published count
            state = net.state_dict()
            print(f"{ckpt}: {sum(p.numel() for p in net.parameters()):,} parameters, {len(state)} keys", flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(state, folder / "partial.ckpt")
            (folder / "partial.ckpt").replace(ckpt)
        return [str(ckpt), "--config", str(yaml_path)]
    return build


def _demucs(bag: str, signatures: tuple[str, ...], *, hdemucs: bool = False) -> Callable[[Path], list[str]]:
    """Demucs files as Demucs saves them (``tests/demucs_models.py``: the published arguments,
    seeded random weights) and the bag file beside them."""
    def build(folder: Path) -> list[str]:
        path = folder / f"{bag}.yaml"
        if not path.exists():
            import demucs_models as dm

            folder.mkdir(parents=True, exist_ok=True)
            for i, signature in enumerate(signatures):
                model = dm.build(dm.hdemucs_published() if hdemucs else dm.published(), seed=25 + i)
                print(dm.save(model, folder, signature), f"{sum(p.numel() for p in model.parameters()):,} parameters")
                del model
            weights = None if len(signatures) == 1 else np.eye(len(signatures)).tolist()
            dm.save_bag(folder, bag, signatures, weights=weights, segment=44 if hdemucs else None)
        return [str(path)]
    return build


def _spleeter(stems: int) -> Callable[[Path], list[str]]:
    """Spleeter's TensorFlow checkpoint with Deezer's layers and sizes and random weights."""
    def build(folder: Path) -> list[str]:
        if not (folder / "model.index").exists():
            import tf_checkpoints

            tf_checkpoints.write_checkpoint(folder / "model", tf_checkpoints.spleeter_tensors(stems, np.random.default_rng(4)))
            tf_checkpoints.write_meta(folder / "model.meta", bins=1024)
        return [str(folder)]
    return build


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    family: str
    what: str
    build: Callable[[Path], list[str]]


#: One entry per model; add a family's published size here.
MODELS = [
    Model("bs_roformer_viperx", "roformer", "BS-RoFormer, viperx ep_317 config (159.8 M parameters)",
          _roformer("model_bs_roformer_ep_317_sdr_12.9755.yaml", 317)),
    Model("mel_roformer_kim", "roformer", "Mel-Band RoFormer, Kim's vocals config (228.2 M parameters)",
          _roformer("config_vocals_mel_band_roformer_kj.yaml", 384)),
    Model("htdemucs", "demucs", "HTDemucs, published arguments (42.0 M parameters)",
          _demucs("htdemucs", ("955717e8",))),
    Model("htdemucs_ft", "demucs", "htdemucs_ft: a bag of 4 HTDemucs",
          _demucs("htdemucs_ft", ("f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"))),
    Model("hdemucs_mmi", "demucs", "HDemucs, hdemucs_mmi's arguments (83.6 M parameters), 44 s segment",
          _demucs("hdemucs_mmi", ("75fc33f5",), hdemucs=True)),
    Model("spleeter_4stems", "spleeter", "Spleeter 4stems U-Nets (TensorFlow checkpoint)", _spleeter(4)),
]
BY_NAME = {m.name: m for m in MODELS}


# --------------------------------------------------------------------------- running

def results_path() -> Path:
    return WORK / "results" / "imports.json"


def record(tag: str, name: str, value: dict) -> None:
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(tag, {})[name] = value
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def timed(cmd: list[str], *, env: dict, logfile: Path) -> dict:
    """``cmd`` under ``/usr/bin/time -v``: wall, CPU, peak RSS (the process and its children)."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    vfile = logfile.with_suffix(".time")
    before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(logfile, "w") as out:
        code = subprocess.call(["/usr/bin/time", "-v", "-o", str(vfile)] + cmd, stdout=out, stderr=subprocess.STDOUT,
                               env=env)
    wall = time.perf_counter() - start
    fields = {}
    for line in vfile.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    if code:
        raise SystemExit(f"exit {code}: {' '.join(cmd)}\n{logfile.read_text()[-2000:]}")
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(int(fields["Maximum resident set size (kbytes)"]) / 1024),
            "load1_before": round(before, 2), "load1_after": round(os.getloadavg()[0], 2),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - wall))}


def out_folder(tag: str) -> Path:
    return WORK / "out" / tag


def card_of(tag: str, name: str) -> dict:
    import yaml

    return yaml.safe_load((out_folder(tag) / f"{name}.yaml").read_text())


def cmd_build(args) -> None:
    for name in args.model:
        BY_NAME[name].build(WORK / "checkpoints" / name)


def cmd_run(args) -> None:
    env = {**os.environ, "STEMBRIDGE_MODELS": str(out_folder(args.tag)), "PYTHONPATH": str(REPO),
           "PYTHONUNBUFFERED": "1"}
    for name in args.model:
        target = BY_NAME[name].build(WORK / "checkpoints" / name)
        cmd = [sys.executable, "-m", "bridge.cli", "models", "import", *target, "--name", name, "--force"]
        for repeat in range(args.repeat):
            run = timed(cmd, env=env, logfile=WORK / "logs" / f"{args.tag}-{name}-{repeat}.log")
            card = card_of(args.tag, name)
            run["parity_db"] = card.get("imported", {}).get("parity_db")
            run["onnx_mb"] = round(sum((out_folder(args.tag) / f).stat().st_size for f in onnx_files(card)) / 1e6)
            run["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
            record(args.tag, name if repeat == 0 else f"{name}#{repeat}", run)
            print(f"{name}: {run}", flush=True)
    cmd_table(args)


def onnx_files(card: dict) -> list[str]:
    if card["family"] == "demucs":
        return list(dict.fromkeys(m["file"] for m in card["demucs"]["models"]))
    if card["family"] == "spleeter" or "files" in card:
        return list(card.get("files") or [card["file"]])
    return [card["file"]]


def cmd_table(args) -> None:
    path = results_path()
    data = json.loads(path.read_text()) if path.exists() else {}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; results {path}")
    print("| tag | model | wall s | CPU s | peak RSS MB | parity dB | ONNX MB | load before -> after | started |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tag, rows in data.items():
        if args.tag not in (None, tag):
            continue
        for name, r in rows.items():
            print(f"| {tag} | {name} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']:,} | {r.get('parity_db')} | "
                  f"{r.get('onnx_mb')} | {r['load1_before']} -> {r['load1_after']} | {r['started']} |")


# --------------------------------------------------------------------------- before/after

def _roformer_outputs(onnx_path: Path, card: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    from bridge.importers.roformer import parity_spectrogram
    from bridge.importers.roformer_config import parse_config

    cfg = parse_config(card["imported"]["config"], source=str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: parity_spectrogram(cfg).numpy()})


def _demucs_outputs(onnx_path: Path, card: dict, entry: dict) -> list[np.ndarray]:
    from bridge.separation.demucs import DemucsNetwork

    fixed = card["demucs"]["architecture"] == "htdemucs"
    network = DemucsNetwork(onnx_path, segment=entry["segment"], n_fft=card["n_fft"], stems=len(card["stems"]),
                            channels=card["audio_channels"], threads=None, fixed=fixed)
    rng = np.random.default_rng(26)
    return [network((0.1 * rng.standard_normal((1, card["audio_channels"], entry["segment"]))).astype(np.float32))]


def _spleeter_outputs(onnx_path: Path, card: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {}
    rng = np.random.default_rng(26)
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        feeds[arg.name] = np.abs(rng.standard_normal(shape)).astype(np.float32)
    return session.run(None, feeds)


def outputs(tag: str, name: str) -> dict[str, list[np.ndarray]]:
    card = card_of(tag, name)
    got = {}
    for file in onnx_files(card):
        path = out_folder(tag) / file
        if card["family"] == "roformer":
            got[file] = _roformer_outputs(path, card)
        elif card["family"] == "demucs":
            got[file] = _demucs_outputs(path, card, next(m for m in card["demucs"]["models"] if m["file"] == file))
        else:
            got[file] = _spleeter_outputs(path, card)
    return got


def cmd_compare(args) -> None:
    for name in args.model:
        if not (out_folder(args.a) / f"{name}.yaml").exists() or not (out_folder(args.b) / f"{name}.yaml").exists():
            print(f"{name}: not imported under both tags")
            continue
        a, b = outputs(args.a, name), outputs(args.b, name)
        for file in a:
            for x, y in zip(a[file], b[file]):
                x64, err = x.astype(np.float64), float(np.sum((x.astype(np.float64) - y) ** 2))
                db = float("inf") if err == 0 else 10 * np.log10(np.sum(x64 ** 2) / err)
                print(f"{name} {file}: {args.b} against {args.a}: {db:.1f} dB SNR, max |diff| "
                      f"{float(np.max(np.abs(x64 - y))):.3g}, identical: {bool(np.array_equal(x, y))}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    names = [m.name for m in MODELS]
    for command in ("build", "run", "compare", "table"):
        p = sub.add_parser(command)
        if command != "table":
            p.add_argument("--model", nargs="+", choices=names, default=names)
        if command in ("run", "table"):
            p.add_argument("--tag", default=None if command == "table" else "current")
        if command == "run":
            p.add_argument("--repeat", type=int, default=1)
        if command == "compare":
            p.add_argument("--a", required=True)
            p.add_argument("--b", required=True)
    args = parser.parse_args()
    {"build": cmd_build, "run": cmd_run, "compare": cmd_compare, "table": cmd_table}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
