"""MDX23C: stembridge's mdx23c family vs python-audio-separator, same checkpoint, same song (issue 26).

    python tests/benchmarks/mdx23c.py build [--width published|small]   (random weights, reference class)
    python tests/benchmarks/mdx23c.py import [--width published]         (stembridge models import, timed)
    python tests/benchmarks/mdx23c.py run --seconds 20 --overlap 2       (audio-separator, then stembridge)
    python tests/benchmarks/mdx23c.py run --minutes 4 --repeats 2        (the song looped to 4 min; A B A B)
    python tests/benchmarks/mdx23c.py run --width small --minutes 16 --overlap 2   (memory against length)
    python tests/benchmarks/mdx23c.py run --song fishin_loop_4min_089.wav --overlap 2   (any WAV)
    python tests/benchmarks/mdx23c.py parity [--width published]         (one chunk: ONNX + numpy vs the reference)

``--width published`` is UVR's "MDX23C-8KFFT-InstVoc_HQ" geometry (``model_2_stem_full_band_8k.yaml``:
n_fft 8192, hop 1024, dim_f 4096, dim_t 256, 128 channels, growth 128, 5 scales of 2 blocks, 4
sub-bands, bottleneck 4, InstanceNorm, GELU; Vocals and Instrumental; num_overlap 8): 111,990,272
parameters, a 448 MB checkpoint, built with python-audio-separator 0.47.1's own ``TFC_TDF_net``
(``tests/reference_wheels.py``) with random weights and saved as a state dict beside that YAML.
``--width small`` keeps the geometry (so the STFT, the chunk grid and the buffers are the
published ones) with 8 channels, growth 8: the network costs little, so what grows with the
song's length shows.

audio-separator reads the same two files from a model folder it accepts offline (the checkpoint
listed in ``download_checks.json``'s ``mdx23c_download_list``, so it runs its MDXC separator with
``TFC_TDF_net``), driven by ``drive_audiosep.py --mdxc`` with ``--overlap`` as MDXC's num_overlap;
stembridge runs ``separate --overlap 1 - 1/num_overlap`` (the same grid). Both write float32
WAV. audio-separator scales a mix that peaks above 0.9 down before separating and normalises each
stem it writes (its ``normalization_threshold``); stembridge does neither, so the stems are
compared after the least-squares gain (``snr_db_gain_matched``) as well as plainly.

Every measured run is its own process under ``/usr/bin/time -v`` (whole-process wall, CPU = user +
system, peak RSS), the 1-minute load average before and after it recorded beside its figures
(the machine is shared). Everything goes under ``--work`` (default ``/work/bench26-mdx23c``);
songs come from ``/work/bench25/songs`` (Karissa Hobbs's "Let's Go Fishin'" from
``/work/shared/data/fullmix``, 20 s from 30 s in, or looped to 1/4/16 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = Path("/work/venvs/audiosep")
SONGS = Path("/work/bench25/songs")
NAME = "MDX23C-8KFFT-InstVoc_HQ"

PUBLISHED = {
    "audio": {"chunk_size": 261120, "dim_f": 4096, "dim_t": 256, "hop_length": 1024, "n_fft": 8192,
              "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.001},
    "model": {"act": "gelu", "bottleneck_factor": 4, "growth": 128, "norm": "InstanceNorm",
              "num_blocks_per_scale": 2, "num_channels": 128, "num_scales": 5, "num_subbands": 4, "scale": [2, 2]},
    "training": {"batch_size": 6, "instruments": ["Vocals", "Instrumental"], "target_instrument": None},
    "inference": {"batch_size": 1, "dim_t": 256, "num_overlap": 8},
}


def work(args) -> Path:
    return Path(args.work)


def model_name(args) -> str:
    return NAME if args.width == "published" else f"{NAME}-small"


def config(width: str) -> dict:
    data = json.loads(json.dumps(PUBLISHED))
    if width == "small":
        data["model"].update(num_channels=8, growth=8)
    return data


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
            "load1_before": round(before[0], 2), "load1_after": round(after[0], 2), "cmd": " ".join(cmd)}


def record(args, key: str, value: dict) -> None:
    path = work(args) / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))
    print(key, json.dumps(value, indent=1), flush=True)


def cmd_build(args) -> None:
    import torch
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from reference_wheels import module

    ref = module("audio-separator", "0.47.1", "audio_separator.separator.uvr_lib_v5.tfc_tdf_v3")
    folder = work(args) / "models-src"
    folder.mkdir(parents=True, exist_ok=True)
    data = config(args.width)
    ns = lambda d: types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})  # noqa: E731
    torch.manual_seed(26)
    net = ref.TFC_TDF_net(ns(data), "cpu").eval()
    with torch.no_grad():  # the norm layers start as identities: give them weights
        for name, tensor in net.state_dict().items():
            if name.endswith(".weight") and tensor.ndim == 1:
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(".bias") and tensor.ndim == 1:
                tensor.uniform_(-0.2, 0.2)
    ckpt = folder / f"{model_name(args)}.ckpt"
    torch.save(net.state_dict(), ckpt)
    (folder / f"{model_name(args)}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    print(ckpt, sum(p.numel() for p in net.parameters()), "parameters", ckpt.stat().st_size, "bytes")


def stembridge_env(args) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), STEMBRIDGE_MODELS=str(work(args) / "models"),
                STEMBRIDGE_CACHE=str(work(args) / "cache"))


def cmd_import(args) -> None:
    src = work(args) / "models-src"
    cmd = [sys.executable, "-m", "bridge.cli", "models", "import", str(src / f"{model_name(args)}.ckpt"),
           "--config", str(src / f"{model_name(args)}.yaml"), "--force"]
    record(args, f"import_{args.width}", timed(cmd, environ=stembridge_env(args),
                                               logfile=work(args) / "logs" / f"import_{args.width}.log"))


def audiosep_folder(args) -> Path:
    """A model folder audio-separator accepts offline: the checkpoint and its YAML, listed in
    ``download_checks.json``'s ``mdx23c_download_list`` (which it would otherwise download)."""
    folder = work(args) / f"audiosep-{args.width}"
    folder.mkdir(parents=True, exist_ok=True)
    name = model_name(args)
    for suffix in (".ckpt", ".yaml"):
        target = folder / f"{name}{suffix}"
        if not target.exists():
            os.link(work(args) / "models-src" / f"{name}{suffix}", target)
    keys = ["vr_download_list", "mdx_download_list", "demucs_download_list", "mdx23c_download_list",
            "mdx_download_vip_list", "mdx23c_download_vip_list", "roformer_download_list"]
    checks = {k: {} for k in keys}
    checks["mdx23c_download_list"] = {f"MDX23C Model: {name}": {f"{name}.ckpt": f"{name}.yaml"}}
    (folder / "download_checks.json").write_text(json.dumps(checks, indent=1))
    (folder / "mdx_model_data.json").write_text("{}")
    (folder / "vr_model_data.json").write_text("{}")
    return folder


def song(args) -> Path:
    if args.song:
        return Path(args.song)
    path = SONGS / (f"fishin_loop_{args.minutes:g}min.wav" if args.minutes else f"fishin_{args.seconds}s.wav")
    if not path.exists():
        raise SystemExit(f"{path}: not there; tests/benchmarks/demucs.py run --minutes N (or --seconds) writes it")
    return path


def outputs(folder: Path) -> dict:
    """``{stem: path}``: audio-separator names files ``SONG_(Stem)_MODEL.wav``, stembridge ``SONG/stem.wav``."""
    out = {}
    for f in sorted(Path(folder).rglob("*.wav")):
        stem = f.name.split("_(", 1)[1].split(")", 1)[0].lower() if "_(" in f.name else f.stem
        out[stem] = f
    return out


def compare(reference: Path, estimate: Path) -> dict:
    ref, _ = sf.read(str(reference), dtype="float64")
    est, _ = sf.read(str(estimate), dtype="float64")
    n = min(len(ref), len(est))
    ref, est = ref[:n], est[:n]
    gain = float(np.sum(ref * est) / max(np.sum(est * est), 1e-30))
    snr = lambda e: round(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - e) ** 2), 1e-30)), 1)  # noqa: E731
    return {"snr_db": snr(est), "snr_db_gain_matched": snr(gain * est), "gain": round(gain, 4)}


def cmd_run(args) -> None:
    wav = song(args)
    length = Path(args.song).stem if args.song else f"{args.minutes:g}min" if args.minutes else f"{args.seconds}s"
    key = f"run_{args.width}_{length}_ov{args.overlap}"
    if set(args.tools) != {"audio-separator", "stembridge"}:
        key += "_" + "_".join(sorted(args.tools))  # one tool's runs: their own entry in results.json
    out = work(args) / "out" / key
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    audiosep_cmd = [str(VENV / "bin" / "python"), str(HERE / "drive_audiosep.py"), str(wav), "--mdxc",
                    "--model-dir", str(audiosep_folder(args)), "--model-name", f"{model_name(args)}.ckpt",
                    "--out", str(out / "audio-separator"), "--overlap", str(args.overlap), "--batch-size", "1",
                    "--result", str(out / "audio-separator.json")]
    ours_cmd = [sys.executable, "-m", "bridge.cli", "separate", str(wav), "--model", model_name(args),
                "--overlap", repr(1 - 1 / args.overlap), "--out", str(out / "stembridge"), "--bit-depth", "32",
                "--no-cache", "--force", "--jobs", "1", "--threads", str(args.threads)]
    audiosep_env = dict(os.environ, PYTHONPATH=f"{VENV / 'stubs'}{os.pathsep}{HERE}",
                        PATH=str(VENV / "bin") + os.pathsep + os.environ.get("PATH", ""), **threads)
    tools = {"audio-separator": (audiosep_cmd, audiosep_env),
             "stembridge": (ours_cmd, {**stembridge_env(args), **threads})}
    runs = {name: [] for name in tools if name in args.tools}
    for repeat in range(args.repeats):
        for name in runs:
            shutil.rmtree(out / name, ignore_errors=True)
            (out / name).mkdir(parents=True)
            cmd, environ = tools[name]
            runs[name].append(timed(cmd, environ=environ, logfile=work(args) / "logs" / f"{key}_{name}_{repeat}.log"))
            record(args, key, {"partial": True, **runs})
    results = {"width": args.width, "song": wav.name, "num_overlap": args.overlap, "threads": args.threads, **runs}
    for field in ("wall_s", "cpu_s", "peak_rss_mb"):
        for name, got in runs.items():
            results[f"median_{field}_{name}"] = float(np.median([r[field] for r in got]))
    if set(runs) == set(tools):
        results["wall_ratio_stembridge_over_audiosep"] = [round(s["wall_s"] / a["wall_s"], 3)
                                                          for a, s in zip(runs["audio-separator"], runs["stembridge"])]
        theirs, ours = outputs(out / "audio-separator"), outputs(out / "stembridge")
        results["stems_stembridge_vs_audiosep"] = {stem: compare(theirs[stem], ours[stem])
                                                   for stem in ("vocals", "instrumental") if stem in theirs}
    record(args, key, results)


def cmd_parity(args) -> None:
    """One chunk of real music through audio-separator's ``TFC_TDF_net`` (its STFT, the network, its
    inverse STFT) and through stembridge's engine (numpy STFT, the imported ONNX, numpy inverse):
    SNR per output. The published-size counterpart of ``tests/test_mdx23c.py``'s chunk test."""
    import torch
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    from reference_wheels import module

    from bridge.separation import load_separator

    ref = module("audio-separator", "0.47.1", "audio_separator.separator.uvr_lib_v5.tfc_tdf_v3")
    src = work(args) / "models-src"
    data = yaml.safe_load((src / f"{model_name(args)}.yaml").read_text())
    ns = lambda d: types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})  # noqa: E731
    torch.set_num_threads(args.threads)
    net = ref.TFC_TDF_net(ns(data), "cpu").eval()
    net.load_state_dict(torch.load(src / f"{model_name(args)}.ckpt", map_location="cpu", weights_only=True))
    audio, rate = sf.read(str(SONGS / "fishin_20s.wav"), dtype="float32", always_2d=True)
    chunk = np.ascontiguousarray(audio.T[:, 5 * rate:5 * rate + data["audio"]["chunk_size"]])
    start = time.perf_counter()
    with torch.no_grad():
        expected = net(torch.from_numpy(chunk)[None]).numpy()[0]  # [targets, 2, chunk]
    torch_s = time.perf_counter() - start
    del net
    os.environ["STEMBRIDGE_MODELS"] = str(work(args) / "models")
    separator = load_separator(model_name(args), threads=args.threads)
    start = time.perf_counter()
    got = separator.engine.run(chunk[None].copy())
    onnx_s = time.perf_counter() - start
    snr = {stem: round(float(10 * np.log10(np.sum(expected[i].astype(np.float64) ** 2)
                                           / np.sum((expected[i] - got[stem][0]) ** 2))), 1)
           for i, stem in enumerate(separator.engine.model_stems)}
    record(args, f"parity_{args.width}", {"snr_db": snr, "torch_chunk_s": round(torch_s, 1),
                                          "onnx_chunk_s": round(onnx_s, 1), "load1": round(os.getloadavg()[0], 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "import", "run", "parity"])
    parser.add_argument("--width", choices=["published", "small"], default="published")
    parser.add_argument("--work", default=os.environ.get("BENCH26", "/work/bench26-mdx23c"))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=0)
    parser.add_argument("--song", help="this WAV instead (e.g. the 4-minute loop scaled to peak 0.89, below the 0.9 "
                                       "at which audio-separator scales the mix, so the stems can be compared)")
    parser.add_argument("--overlap", type=int, default=8, help="num_overlap for both (the published config's: 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tools", nargs="+", default=["audio-separator", "stembridge"])
    args = parser.parse_args()
    {"build": cmd_build, "import": cmd_import, "run": cmd_run, "parity": cmd_parity}[args.command](args)


if __name__ == "__main__":
    main()
