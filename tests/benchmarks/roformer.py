"""RoFormer parity and speed: stembridge's roformer family vs python-audio-separator (issue 15).

    python tests/benchmarks/roformer.py build    --arch bs|mel --size mid|full
    python tests/benchmarks/roformer.py audiosep --arch bs --size full [--song so_easy_30s] [--tag T]
    python tests/benchmarks/roformer.py import   --arch bs --size full
    python tests/benchmarks/roformer.py stembridge --arch bs --size full [--song ...] [--grid]
    python tests/benchmarks/roformer.py parity   --arch bs --size mid      (grid emulation vs audio-separator)
    python tests/benchmarks/roformer.py floor    --arch bs --size full
    python tests/benchmarks/roformer.py songs                               (1- and 4-minute songs)

Everything (checkpoints, ONNX models, outputs, logs, results) goes under ``--work`` (default
``/work/bench15`` or ``$BENCH15``); nothing there is committed. See README.md, section "RoFormer".

Every measured run is its own process under ``/usr/bin/time -v`` (peak RSS of that process and
its children), with the 1-minute load average before and after it recorded beside its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("STEMBRIDGE_SRC", HERE.parents[1]))  # the stembridge checkout to run
WORK = Path(os.environ.get("BENCH15", "/work/bench15"))
VENV = Path(os.environ.get("AUDIOSEP_VENV", "/work/venvs/audiosep"))
RATE = 44100

#: The published configurations (ZFTurbo/Music-Source-Separation-Training).
CONFIGS = {
    "bs": "model_bs_roformer_ep_317_sdr_12.9755.yaml",   # viperx BS-RoFormer ep 317
    "mel": "config_vocals_mel_band_roformer_kj.yaml",    # Kimberley Jensen's Mel-Band RoFormer (vocals)
}
MODEL_TYPE = {"bs": "bs_roformer", "mel": "mel_band_roformer"}


def config_dir() -> Path:
    committed = HERE / "roformer_configs"
    return committed if committed.is_dir() else WORK / "configs"


def model_name(arch: str, size: str) -> str:
    return f"{MODEL_TYPE[arch]}_{size}_random"


def ckpt_path(arch: str, size: str) -> Path:
    return WORK / "models" / f"{model_name(arch, size)}.ckpt"


def song_path(name: str) -> Path:
    return WORK / "songs" / f"{name}.wav"


def log(message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    (WORK / "results").mkdir(parents=True, exist_ok=True)
    with open(WORK / "results" / "roformer.log", "a") as f:
        f.write(line + "\n")


def record(key: str, value: dict) -> None:
    """Merge one result into WORK/results/roformer.json (read-modify-write; runs are sequential)."""
    path = WORK / "results" / "roformer.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1, default=str))


def load() -> float:
    return os.getloadavg()[0]


def timed(cmd: list[str], *, env: dict | None, logfile: Path, cwd: Path | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; wall, CPU, peak RSS and the load around it."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    vfile = logfile.with_suffix(".time")
    before = os.getloadavg()
    start = time.perf_counter()
    with open(logfile, "w") as out:
        code = subprocess.call(["/usr/bin/time", "-v", "-o", str(vfile)] + cmd, stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=cwd)
    wall = time.perf_counter() - start
    after = os.getloadavg()
    fields = {}
    for line in vfile.read_text().splitlines():
        if ":" in line:
            k, _, v = line.strip().rpartition(": ")
            fields[k] = v
    if code:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{logfile.read_text()[-3000:]}")
    user, system = float(fields["User time (seconds)"]), float(fields["System time (seconds)"])
    return {"wall_s": wall, "cpu_s": user + system, "peak_rss_mb": int(fields["Maximum resident set size (kbytes)"]) / 1024,
            "load1_before": before[0], "load1_after": after[0], "load5_after": after[1],
            "started": time.strftime("%H:%M:%S", time.localtime(time.time() - wall)), "cmd": cmd}


# --------------------------------------------------------------------------- building the checkpoints

def cmd_build(args) -> None:
    out = WORK / "models"
    meta = out / f"{model_name(args.arch, args.size)}.json"
    if meta.exists() and not args.force:
        log(f"{meta} exists")
        return
    cmd = [str(VENV / "bin" / "python"), str(HERE / "roformer_torch.py"), "build",
           "--config", str(config_dir() / CONFIGS[args.arch]), "--size", args.size, "--out", str(out),
           "--probe", str(song_path("so_easy_30s"))]
    subprocess.run(cmd, check=True, env=audiosep_env())
    log(f"built {meta}: {json.loads(meta.read_text())['params']} parameters")


# --------------------------------------------------------------------------- audio-separator

def audiosep_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(VENV / "stubs"), PATH=str(VENV / "bin") + os.pathsep + os.environ.get("PATH", ""))


def audiosep_folder(arch: str, size: str) -> Path:
    """A model folder audio-separator accepts offline: the checkpoint and its YAML under our
    names, listed in ``download_checks.json``'s ``roformer_download_list`` (which it would
    otherwise download), with the two other JSON files it reads."""
    folder = WORK / f"audiosep-{arch}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    name = model_name(arch, size)
    for suffix in (".ckpt", ".yaml"):
        target = folder / f"{name}{suffix}"
        if not target.exists():
            os.link(WORK / "models" / f"{name}{suffix}", target)
    keys = ["vr_download_list", "mdx_download_list", "demucs_download_list", "mdx23c_download_list",
            "mdx_download_vip_list", "mdx23c_download_vip_list", "roformer_download_list"]
    checks = {k: {} for k in keys}
    checks["roformer_download_list"] = {f"Roformer Model: {name}": {f"{name}.ckpt": f"{name}.yaml"}}
    (folder / "download_checks.json").write_text(json.dumps(checks, indent=1))
    (folder / "mdx_model_data.json").write_text("{}")
    (folder / "vr_model_data.json").write_text("{}")
    return folder


def run_audiosep(arch: str, size: str, song: str, tag: str, overlap: int = 2) -> dict:
    folder = audiosep_folder(arch, size)
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = out.with_suffix(".json")
    cmd = [str(VENV / "bin" / "python"), str(HERE / "drive_audiosep.py"), str(song_path(song)), "--mdxc",
           "--model-dir", str(folder), "--model-name", f"{model_name(arch, size)}.ckpt", "--out", str(out),
           "--overlap", str(overlap), "--batch-size", "1", "--result", str(result)]
    m = timed(cmd, env=audiosep_env(), logfile=out.with_suffix(".log"))
    m.update(json.loads(result.read_text()))
    m["outputs"] = audiosep_outputs(out)
    m["tool"], m["song"], m["arch"], m["size"], m["num_overlap"] = "audio-separator", song, arch, size, overlap
    return m


def audiosep_outputs(folder: Path) -> dict:
    """``{stem: path}`` of an audio-separator run: it names files ``SONG_(stem)_MODEL.wav``."""
    out = {}
    for f in sorted(Path(folder).glob("*.wav")):
        stem = f.name.split("_(", 1)[1].split(")", 1)[0].lower() if "_(" in f.name else f.stem
        out[stem] = str(f)
    return out


def cmd_audiosep(args) -> None:
    tag = args.tag or f"as_{args.arch}_{args.size}_{args.song}"
    log(f"audio-separator {tag} starting (load {load():.2f})")
    m = run_audiosep(args.arch, args.size, args.song, tag, args.overlap)
    record(tag, m)
    log(f"audio-separator {tag}: wall {m['wall_s']:.1f} s, CPU {m['cpu_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, "
        f"load {m['load1_before']:.2f} -> {m['load1_after']:.2f}")


# --------------------------------------------------------------------------- comparing

def read(path) -> np.ndarray:
    x, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(x.T)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    n = min(ref.shape[-1], est.shape[-1])
    r, e = ref[..., :n].astype(np.float64), est[..., :n].astype(np.float64)
    den = float(np.sum((r - e) ** 2))
    return float("inf") if den == 0 else float(10 * np.log10(np.sum(r * r) / den))


def gain_fit(ref: np.ndarray, est: np.ndarray) -> float:
    """The scalar g minimising |ref - g est|: what a peak normalisation of ``est`` took away."""
    n = min(ref.shape[-1], est.shape[-1])
    r, e = ref[..., :n].astype(np.float64), est[..., :n].astype(np.float64)
    return float(np.sum(r * e) / np.sum(e * e))


def compare(ref: np.ndarray, est: np.ndarray, *, edge: int = 0) -> dict:
    """SNR of ``est`` against ``ref``: raw, after the best scalar gain (audio-separator's output
    peak normalisation, undone), and without ``edge`` samples at each end."""
    g = gain_fit(ref, est)
    out = {"snr_db": snr_db(ref, est), "gain": g, "snr_db_gain_fitted": snr_db(ref, g * est)}
    if edge:
        out["snr_db_without_edges"] = snr_db(ref[..., edge:-edge], g * est[..., edge:-edge])
    return out


# --------------------------------------------------------------------------- audio-separator's grid

def audiosep_chunk_starts(length: int, chunk: int, step: int) -> list[int]:
    """``MDXCSeparator._roformer_chunk_starts`` (audio-separator 0.47.1): offsets 0, step, ...
    while a chunk fits, then one chunk ending at the song's end."""
    starts = []
    for offset in range(0, length, step):
        if offset + chunk >= length:
            tail = max(length - chunk, 0)
            if not starts or starts[-1] != tail:
                starts.append(tail)
            break
        starts.append(offset)
    return starts


def audiosep_grid(mix: np.ndarray, per_chunk, chunk: int, num_overlap: int, *, max_chunks: int | None = None,
                  shift: int = 0) -> tuple[np.ndarray, int]:
    """audio-separator's RoFormer ``demix`` around any per-chunk function: chunks of ``chunk``
    samples every ``chunk // num_overlap``, no padding, the last chunk ending at the song's end,
    each output weighted by a whole-chunk Hamming window (scipy's, symmetric), summed, divided by
    the summed windows. ``per_chunk((2, n)) -> (2, n)``. With ``max_chunks`` only the first chunks
    run, and the result is exact up to the returned sample count (where the next chunk would start).
    ``shift`` zeros go before the song and are dropped from the result (a control: the same grid,
    moved)."""
    from scipy.signal import windows

    mix = np.concatenate([np.zeros((mix.shape[0], shift), np.float32), mix], axis=1)
    length = mix.shape[1]
    step = chunk // num_overlap
    window = windows.hamming(chunk).astype(np.float32)
    result = np.zeros((2, length), np.float32)
    counter = np.zeros((2, length), np.float32)
    starts = audiosep_chunk_starts(length, chunk, step)
    valid = length
    if max_chunks is not None and max_chunks < len(starts):
        valid = starts[max_chunks]
        starts = starts[:max_chunks]
    for start in starts:
        part = mix[:, start:start + chunk]
        y = per_chunk(part)
        n = min(part.shape[1], y.shape[-1], chunk)
        result[:, start:start + n] += y[:, :n] * window[:n]
        counter[:, start:start + n] += window[:n]
    out = result / np.maximum(counter, 1e-10)
    return out[:, shift:valid], valid - shift


# --------------------------------------------------------------------------- stembridge

def sb_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                STEMBRIDGE_MODELS=str(WORK / "sbmodels"))


def sb_name(arch: str, size: str, quant: str = "") -> str:
    return f"bench-{arch}-{size}" + (f"-{quant}" if quant else "")


def import_variant(arch: str, size: str, variant: str) -> tuple[Path, str]:
    """The config to import with, and the model's name. ``variant`` "asgrid": the config with
    ``audio.chunk_size = hop * (inference.dim_t - 1)``, the chunk audio-separator runs (for Kim's
    Mel-Band config 112,455 samples, where the published ``audio.chunk_size`` is 352,800; for
    viperx's both are 352,800)."""
    config = WORK / "models" / f"{model_name(arch, size)}.yaml"
    if not variant:
        return config, sb_name(arch, size)
    import yaml

    data = yaml.load(config.read_text(), Loader=yaml.FullLoader)
    hop = data["model"].get("stft_hop_length", data["audio"].get("hop_length"))
    data["audio"]["chunk_size"] = hop * (data["inference"]["dim_t"] - 1)
    out = config.with_name(f"{config.stem}_{variant}.yaml")
    out.write_text(yaml.dump(data, sort_keys=False))
    return out, sb_name(arch, size, variant)


def cmd_import(args) -> None:
    """``stembridge models import CKPT --config CFG --name bench-ARCH-SIZE --force`` into WORK/sbmodels."""
    config, name = import_variant(args.arch, args.size, args.variant)
    ckpt = ckpt_path(args.arch, args.size)
    cli = (REPO / "bridge" / "cli.py").read_text()
    if '"--config"' in cli:
        cmd = [sys.executable, "-m", "bridge.cli", "models", "import", str(ckpt), "--config", str(config),
               "--name", name, "--force"]
    else:  # before the CLI has it: the function it calls
        cmd = [sys.executable, "-c", ("import sys; from bridge.importers.roformer import import_roformer as f; "
                                      "r = f(sys.argv[1], config=sys.argv[2], name=sys.argv[3], force=True); print(r)"),
               str(ckpt), str(config), name]
    m = timed(cmd, env=sb_env(), logfile=WORK / "runs" / f"import_{name}.log", cwd=REPO)
    record(f"import_{name}", m)
    log(f"imported {name}: {m['wall_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB\n"
        + (WORK / "runs" / f"import_{name}.log").read_text()[-600:])


def engine_for(name: str, *, threads: int | None = None):
    os.environ["STEMBRIDGE_MODELS"] = str(WORK / "sbmodels")
    sys.path.insert(0, str(REPO))
    from bridge.separation.models import resolve
    from bridge.separation import load_separator

    card = resolve(name)
    separator = load_separator(card, threads=threads)
    return separator.engine, card


def run_stembridge(name: str, song: str, tag: str, *, extra: list[str] = ()) -> dict:
    out = WORK / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    result = out.with_suffix(".json")
    cmd = [sys.executable, str(HERE / "drive_stembridge.py"), "--result", str(result), "--",
           "separate", str(song_path(song)), "--model", name, "--out", str(out), "--quiet", "--no-cache",
           "--bit-depth", "32", *extra]
    m = timed(cmd, env=sb_env(), logfile=out.with_suffix(".log"))
    m.update(json.loads(result.read_text()))
    m["outputs"] = {p.stem: str(p) for p in sorted(out.rglob("*.wav"))}
    m["tool"], m["song"], m["model"] = "stembridge", song, name
    return m


def cmd_stembridge(args) -> None:
    name = sb_name(args.arch, args.size, args.quant)
    tag = args.tag or f"sb_{args.arch}_{args.size}{'_' + args.quant if args.quant else ''}_{args.song}"
    log(f"stembridge {tag} starting (load {load():.2f})")
    m = run_stembridge(name, args.song, tag, extra=args.extra or [])
    record(tag, m)
    log(f"stembridge {tag}: wall {m['wall_s']:.1f} s, CPU {m['cpu_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, "
        f"onnxruntime {m.get('ort_s', 0):.1f} s in {m.get('ort_calls')} calls, load {m['load1_before']:.2f} -> {m['load1_after']:.2f}")


def primary_of(engine, part: np.ndarray, stem: str = "vocals") -> np.ndarray:
    """One chunk through stembridge's engine (its per-chunk ``run``): the vocals."""
    out = engine.run(part[None].astype(np.float32))
    return out[stem][0]


def cmd_parity(args) -> None:
    """audio-separator's grid around stembridge's per-chunk ``run``, against audio-separator's
    own output (and the same grid shifted by ``--shift`` samples, as a control)."""
    results = json.loads((WORK / "results" / "roformer.json").read_text())
    asp = results[f"as_{args.arch}_{args.size}_{args.song}"]
    ref = read(audiosep_outputs(Path(asp["outputs"][next(iter(asp["outputs"]))]).parent)["vocals"])
    mix = read(song_path(args.song))
    engine, _ = engine_for(sb_name(args.arch, args.size, args.variant), threads=args.threads)
    chunk = int(args.chunk or engine.chunk)
    t = time.perf_counter()
    emulated, valid = audiosep_grid(mix, lambda part: primary_of(engine, part), chunk, args.num_overlap,
                                    max_chunks=args.chunks)
    seconds = time.perf_counter() - t
    out = WORK / "runs" / f"grid_{args.arch}_{args.size}{args.variant}_{args.song}.wav"
    sf.write(str(out), emulated.T, RATE, subtype="FLOAT")
    entry = {"chunk": chunk, "num_overlap": args.num_overlap, "chunks": args.chunks, "valid_samples": valid,
             "seconds": seconds, "load1": load(), "emulated": str(out),
             "grid_vs_audiosep": compare(ref[:, :valid], emulated, edge=0)}
    if args.shift:
        shifted, valid2 = audiosep_grid(mix, lambda part: primary_of(engine, part), chunk, args.num_overlap,
                                        max_chunks=args.chunks, shift=args.shift)
        n = min(valid, valid2)
        entry["shift"] = args.shift
        entry["shifted_grid_vs_audiosep"] = compare(ref[:, :n], shifted[:, :n])
    native = results.get(f"sb_{args.arch}_{args.size}_{args.song}")
    if native and "vocals" in native["outputs"]:
        entry["stembridge_native_vs_audiosep"] = compare(ref, read(native["outputs"]["vocals"]))
        entry["stembridge_native_vs_grid"] = compare(emulated, read(native["outputs"]["vocals"])[:, :valid])
    record(f"parity_{args.arch}_{args.size}{args.variant}_{args.song}", entry)
    log(f"parity {args.arch} {args.size}: " + json.dumps({k: v for k, v in entry.items() if isinstance(v, dict)}))


def cmd_floor(args) -> None:
    """The model floor: onnxruntime alone, the session opened as stembridge opens it
    (``open_session``), ``run`` on the song's real chunks (stembridge's grid: as many as
    ``ChunkPlan.chunks_for`` says, each packed as ``RoformerEngine.run`` packs it, outside the
    timed region), batch 1. ``--max-chunks`` times only the first N and scales the median."""
    import statistics

    name = sb_name(args.arch, args.size, args.quant)
    os.environ["STEMBRIDGE_MODELS"] = str(WORK / "sbmodels")
    sys.path.insert(0, str(REPO))
    from bridge.separation.models import resolve, verify_file
    from bridge.separation import load_separator
    from bridge.separation.runtime import default_threads, open_session

    card = resolve(name)
    separator = load_separator(card, threads=args.threads)
    engine, plan = separator.engine, separator.plan
    del separator
    mix = read(song_path(args.song))
    count = plan.chunks_for(mix.shape[1])
    padded = np.pad(mix, ((0, 0), (plan.lead, plan.chunk * 2)), mode="reflect" if plan.pad == "reflect" else "constant")
    session = open_session(verify_file(card), threads=args.threads)
    del engine.runner  # one session in memory
    feed = session.get_inputs()[0].name
    todo = min(count, args.max_chunks or count)
    times = []
    for i in range(todo):
        chunk = padded[None, :, i * plan.step:i * plan.step + plan.chunk]
        spec = np.ascontiguousarray(engine.stft.forward(chunk))
        x = spec.view(np.float32).reshape(spec.shape + (2,))
        t = time.perf_counter()
        session.run(None, {feed: x})
        times.append(time.perf_counter() - t)
        log(f"floor {name} chunk {i + 1}/{todo}: {times[-1]:.1f} s (load {load():.2f})")
    median = statistics.median(times)
    entry = {"model": name, "song": args.song, "chunks_needed": count, "chunks_timed": todo,
             "threads": args.threads or default_threads(), "times": times, "median_chunk_s": median,
             "min_chunk_s": min(times), "ort_s_timed": sum(times), "floor_s": median * count, "load1_after": load()}
    flops = WORK / "results" / f"flops_{args.arch}_{args.size}.json"
    if flops.exists():
        f = json.loads(flops.read_text())
        if f["chunk"] == plan.chunk:
            entry["gflop_per_chunk"] = f["flops_per_chunk"] / 1e9
            entry["gflops_achieved_median"] = f["flops_per_chunk"] / 1e9 / median
            entry["gflops_achieved_best"] = f["flops_per_chunk"] / 1e9 / min(times)
            entry["fraction_of_165_gflops_peak"] = entry["gflops_achieved_best"] / 165.0
    record(f"floor_{name}_{args.song}", entry)
    log(f"floor {name}: " + json.dumps({k: v for k, v in entry.items() if k != "times"}))


def cmd_netparity(args) -> None:
    """The network alone on our calibrated checkpoint and a real chunk: audio-separator's torch
    network (its venv) vs stembridge's ONNX model (onnxruntime, opened as stembridge opens it) on
    the same spectrogram (torch's own STFT of the chunk); the masked spectrograms and the masks
    compared (SNR). Then the whole chunk path: stembridge's ``RoformerEngine.run`` (its STFT,
    model, inverse STFT) on the chunk vs the torch network's output audio."""
    name = sb_name(args.arch, args.size, args.variant)
    folder = WORK / "runs" / f"netparity_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    engine, card = engine_for(name, threads=args.threads)
    mix = read(song_path(args.song))
    start = int(args.start * RATE)
    chunk = np.ascontiguousarray(mix[:, start:start + card.chunk_size])
    np.save(folder / "chunk.npy", chunk)
    config = WORK / "models" / f"{model_name(args.arch, args.size)}.yaml"
    if args.variant:
        config = config.with_name(f"{config.stem}_{args.variant}.yaml")
    cmd = [str(VENV / "bin" / "python"), str(HERE / "roformer_torch.py"), "forward", "--ckpt",
           str(ckpt_path(args.arch, args.size)), "--config", str(config), "--input", str(folder / "chunk.npy"),
           "--output", str(folder / "torch.npz")]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    torch_run = timed(cmd, env=audiosep_env(), logfile=folder / "torch.log")
    ref = np.load(folder / "torch.npz")
    spec = ref["spec"].astype(np.float32)
    t = time.perf_counter()
    masks = engine._model(spec)  # (b, stems, c, f, t) complex64, the ONNX model through stembridge's runner
    ort_s = time.perf_counter() - t
    spec_c = spec[..., 0].astype(np.float64) + 1j * spec[..., 1]
    mine = spec_c[:, None] * masks.astype(np.complex128)
    theirs = ref["masked"].astype(np.complex128)
    their_mask = theirs / np.where(spec_c[:, None] == 0, 1, spec_c[:, None])

    def csnr(a, b):
        return snr_db(np.stack([a.real, a.imag]), np.stack([b.real, b.imag]))

    t = time.perf_counter()
    audio = engine.run(chunk[None])["vocals"][0]
    run_s = time.perf_counter() - t
    # What differs between the STFTs: stembridge's of the chunk vs torch's.
    own = engine.stft.forward(chunk[None])
    entry = {"model": name, "song": args.song, "chunk_start_s": args.start, "chunk": card.chunk_size,
             "masked_spec_snr_db": csnr(theirs, mine), "mask_snr_db": csnr(their_mask, masks.astype(np.complex128)),
             "stft_snr_db": csnr(spec_c, own.astype(np.complex128)),
             "chunk_audio_snr_db": snr_db(ref["audio"], audio),
             "torch_forward_s": float(ref["seconds"]), "torch_threads": int(ref["threads"]), "ort_model_s": ort_s,
             "engine_run_s": run_s, "torch_process": {k: torch_run[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "load1_before")},
             "load1": load()}
    record(f"netparity_{name}", entry)
    log(f"network parity {name}: " + json.dumps(entry))


def cmd_sensitivity(args) -> None:
    """Why the tools agree at ~74 dB and not ~120: the same ONNX model on one real chunk, fed
    torch's STFT (``torch.stft``, as audio-separator's network computes it) and stembridge's
    (``Stft.forward``), which differ by float32 rounding only; then again with white noise added to
    the chunk (``--noise-db``, dBFS), so that no band of the input is near-silent. BS-RoFormer's
    band-split normalises each band (RMSNorm: scale-invariant), so a band holding almost nothing
    (this MUSDB excerpt has ~1e-8 of the mean power above 19 kHz) is scaled up to full size with its
    rounding; the frequency transformer then mixes it into every band."""
    import torch

    name = sb_name(args.arch, args.size, args.variant)
    engine, card = engine_for(name, threads=args.threads)
    mix = read(song_path(args.song))
    start = int(args.start * RATE)
    base = np.ascontiguousarray(mix[:, start:start + card.chunk_size])
    win = card.win_length or card.n_fft

    def csnr(a, b):
        return snr_db(np.stack([a.real, a.imag]), np.stack([b.real, b.imag]))

    rows = []
    for noise_db in [None] + [float(x) for x in args.noise_db.split(",")]:
        chunk = base.copy()
        if noise_db is not None:
            chunk += (10 ** (noise_db / 20) * np.random.default_rng(0).standard_normal(chunk.shape)).astype(np.float32)
        t = torch.stft(torch.from_numpy(chunk), card.n_fft, card.hop, win, window=torch.hann_window(win), center=True,
                       return_complex=True).numpy()[None]
        spec_t = np.ascontiguousarray(np.stack([t.real, t.imag], -1).astype(np.float32))
        own = np.ascontiguousarray(engine.stft.forward(chunk[None]))
        spec_s = own.view(np.float32).reshape(own.shape + (2,))
        m_t, m_s = engine._model(spec_t), engine._model(spec_s)
        rows.append({"noise_dbfs": noise_db, "stft_snr_db": csnr(t.astype(complex), own.astype(complex)),
                     "masked_spec_snr_db": csnr((t[:, None] * m_t).astype(complex), (own[:, None] * m_s).astype(complex))})
        log(f"sensitivity {name}: {rows[-1]}")
    record(f"sensitivity_{name}", {"chunk_start_s": args.start, "song": args.song, "rows": rows})


def cmd_quantize(args) -> None:
    """``stembridge models quantize bench-ARCH-SIZE`` (-> bench-ARCH-SIZE-int8), timed."""
    name = sb_name(args.arch, args.size)
    cmd = [sys.executable, "-m", "bridge.cli", "models", "quantize", name, "--force"]
    m = timed(cmd, env=sb_env(), logfile=WORK / "runs" / f"quantize_{name}.log", cwd=REPO)
    m["onnx_bytes"] = (WORK / "sbmodels" / f"{name}-int8.onnx").stat().st_size
    m["float_onnx_bytes"] = (WORK / "sbmodels" / f"{name}.onnx").stat().st_size
    record(f"quantize_{name}", m)
    log(f"quantized {name}: {m['wall_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, {m['onnx_bytes'] / 1e6:.0f} MB "
        f"(float {m['float_onnx_bytes'] / 1e6:.0f} MB)\n" + (WORK / "runs" / f"quantize_{name}.log").read_text()[-400:])


def cmd_compare(args) -> None:
    """SNR between two recorded runs' stems (``--a TAG --b TAG``, e.g. int8 vs float32)."""
    results = json.loads((WORK / "results" / "roformer.json").read_text())

    def stems(tag):
        outputs = results[tag]["outputs"]
        if results[tag]["tool"] == "audio-separator":
            return audiosep_outputs(Path(next(iter(outputs.values()))).parent)
        return outputs

    a, b = stems(args.a), stems(args.b)
    entry = {stem: compare(read(a[stem]), read(b[stem])) for stem in args.stems.split(",") if stem in a and stem in b}
    record(f"compare_{args.a}__{args.b}", entry)
    log(f"compare {args.a} vs {args.b}: {json.dumps(entry)}")


# --------------------------------------------------------------------------- songs

def cmd_songs(args) -> None:
    """so_easy_30s(_f32): Cristina Vane - So Easy (30 s, MUSDB18 excerpt), as 24-bit and float WAV.
    fishin_1min / fishin_4min: Karissa Hobbs - Let's Go Fishin' (133 s), its first minute, and
    the song twice minus 26 s (4 minutes), float WAV."""
    (WORK / "songs").mkdir(parents=True, exist_ok=True)
    x, sr = sf.read("/work/shared/data/cristina-vane-so-easy/mixture.flac", dtype="float32")
    sf.write(str(song_path("so_easy_30s")), x, sr, subtype="PCM_24")
    sf.write(str(song_path("so_easy_30s_f32")), x, sr, subtype="FLOAT")
    y, sr = sf.read("/work/shared/data/fullmix/karissa-hobbs-lets-go-fishin.ogg", dtype="float32")
    y = y * (0.89 / np.max(np.abs(y)))  # under audio-separator's 0.9 input normalisation
    sf.write(str(song_path("fishin_1min")), y[:60 * sr], sr, subtype="FLOAT")
    sf.write(str(song_path("fishin_4min")), np.concatenate([y, y])[:240 * sr], sr, subtype="FLOAT")
    log("songs written")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p, song=True):
        p.add_argument("--arch", choices=("bs", "mel"), default="bs")
        p.add_argument("--size", choices=("small", "mid", "full"), default="mid")
        if song:
            p.add_argument("--song", default="so_easy_30s_f32")
        return p

    common(sub.add_parser("build"), song=False).add_argument("--force", action="store_true")
    p = common(sub.add_parser("audiosep"))
    p.add_argument("--tag")
    p.add_argument("--overlap", type=int, default=2)
    sub.add_parser("songs")
    common(sub.add_parser("import"), song=False).add_argument("--variant", default="", choices=("", "asgrid"))
    p = common(sub.add_parser("stembridge"))
    p.add_argument("--tag")
    p.add_argument("--quant", default="", help="a quantised variant's suffix, e.g. int8")
    p.add_argument("extra", nargs="*", help="more `stembridge separate` options, after --")
    p = common(sub.add_parser("parity"))
    p.add_argument("--num-overlap", type=int, default=2)
    p.add_argument("--chunk", type=int, help="audio-separator's chunk (default: the engine's)")
    p.add_argument("--chunks", type=int, help="emulate only the first N chunks")
    p.add_argument("--shift", type=int, default=0, help="also run the grid moved by this many samples")
    p.add_argument("--threads", type=int)
    p.add_argument("--variant", default="", help="the imported variant, e.g. asgrid (audio-separator's chunk)")
    p = common(sub.add_parser("netparity"))
    p.add_argument("--variant", default="")
    p.add_argument("--start", type=float, default=10.0, help="where the chunk starts in the song, seconds")
    p.add_argument("--threads", type=int)
    p = common(sub.add_parser("sensitivity"))
    p.add_argument("--variant", default="")
    p.add_argument("--start", type=float, default=10.0)
    p.add_argument("--noise-db", default="-80,-60")
    p.add_argument("--threads", type=int)
    common(sub.add_parser("quantize"), song=False)
    p = sub.add_parser("compare")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--stems", default="vocals,instrumental,other")
    p = common(sub.add_parser("floor"))
    p.add_argument("--quant", default="")
    p.add_argument("--threads", type=int)
    p.add_argument("--max-chunks", type=int)
    args = parser.parse_args()
    {"quantize": cmd_quantize, "compare": cmd_compare, "sensitivity": cmd_sensitivity, "floor": cmd_floor, "netparity": cmd_netparity, "build": cmd_build, "audiosep": cmd_audiosep, "songs": cmd_songs, "import": cmd_import,
     "stembridge": cmd_stembridge, "parity": cmd_parity}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
