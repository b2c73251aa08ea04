"""Side-by-side speed and memory benchmarks: stembridge vs python-audio-separator.

    python tests/benchmarks/run.py                       # everything (~45 min on 2 cores)
    python tests/benchmarks/run.py --only trivial,real   # some sections
    python tests/benchmarks/run.py --quick               # 1 repeat, smoke-test sizes

Every measured run is its own subprocess, so wall time, CPU time (user + sys) and peak RSS are of
the whole process (``os.wait4`` on that child). Both tools run in the same invocation, interleaved,
so they share whatever load the machine has; compare the ratios and medians, not lone numbers.
See README.md for the sections, the setup and what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import inputs  # noqa: E402
import models  # noqa: E402

SECTIONS = ("trivial", "real", "floor", "knobs", "default", "pydub")


# --------------------------------------------------------------------------- running one process

TIME = Path("/usr/bin/time")


def measure(cmd: list[str], *, env: dict | None = None, log: Path) -> dict:
    """Run ``cmd`` to completion; its wall time, CPU time and peak RSS.

    Peak RSS comes from ``/usr/bin/time`` when it exists: Linux folds the high-water RSS of the
    memory a process had before ``exec`` into its ``ru_maxrss``, and Python starts children by
    (v)fork + exec, so ``os.wait4`` on a direct child reports at least this (parent) process's peak.
    ``/usr/bin/time`` is small when it forks the measured command, so its figure is the command's.
    Without it, ``os.wait4`` is used and the parent's own peak is recorded beside it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    # Both tools run as installed: with their bytecode. PYTHONDONTWRITEBYTECODE (set on some
    # machines, this one included) made every stembridge run compile its 50-odd modules again
    # (~0.15 s of a 4-minute run), while pip had compiled audio-separator's when it installed it.
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    usage_file = log.with_suffix(".time")
    wrapped = [str(TIME), "-o", str(usage_file), "-f", "%M %U %S"] + list(cmd) if TIME.exists() else list(cmd)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{log.read_text()[-3000:]}")
    if TIME.exists():
        rss_kb, user, system = usage_file.read_text().split()[-3:]
        return {"wall_s": wall, "user_s": float(user), "sys_s": float(system), "cpu_s": float(user) + float(system),
                "peak_rss_mb": int(rss_kb) / 1024, "rss_source": "/usr/bin/time"}
    import resource

    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "rss_source": "wait4 (at least the parent's peak)",
            "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class Runner:
    def __init__(self, cache: Path, venv: Path):
        self.cache = cache
        self.venv = venv
        self.work = cache / "runs"

    def stembridge(self, tag: str, song: Path, model: Path, *, overlap=0.25, batch=1, threads=None,
                   bit_depth=24, keep=False) -> dict:
        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        result = out.with_suffix(".json")
        cmd = [sys.executable, str(HERE / "drive_stembridge.py"), "--result", str(result)]
        # --no-cache: every repeat separates (with the stem cache, the repeats after the first would
        # copy the first one's stems and time nothing but the copy).
        cmd += ["--", "separate", str(song), "--model", str(model), "--out", str(out), "--quiet", "--no-cache",
                "--batch-size", str(batch), "--bit-depth", str(bit_depth)]
        if overlap is not None:
            cmd += ["--overlap", str(overlap)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        m = measure(cmd, env=env, log=out.with_suffix(".log"))
        m.update(json.loads(result.read_text()))
        m["outputs"] = {p.stem: str(p) for p in sorted((out / song.stem).glob("*.wav"))}
        m["tool"], m["tag"] = "stembridge", tag
        return m

    def audiosep(self, tag: str, song: Path, model_dir: Path, *, overlap=0.25, batch=1, pydub=False) -> dict:
        out = self.work / tag
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        result = out.with_suffix(".json")
        cmd = [str(self.venv / "bin" / "python"), str(HERE / "drive_audiosep.py"), str(song),
               "--model-dir", str(model_dir), "--model-name", inputs.AUDIOSEP_MODEL_NAME, "--out", str(out),
               "--overlap", str(overlap), "--batch-size", str(batch), "--result", str(result)]
        if pydub:
            cmd.append("--pydub")
        env = dict(os.environ, PYTHONPATH=str(self.venv / "stubs"),
                   PATH=str(self.venv / "bin") + os.pathsep + os.environ.get("PATH", ""))
        m = measure(cmd, env=env, log=out.with_suffix(".log"))
        m.update(json.loads(result.read_text()))
        files = {}
        for name in m.pop("outputs"):
            stem = "instrumental" if "(Instrumental)" in name else "vocals" if "(Vocals)" in name else name
            files[stem] = str(out / Path(name).name)
        m["outputs"] = files
        m["tool"], m["tag"] = "audio-separator" + (" (pydub writer)" if pydub else ""), tag
        return m


# --------------------------------------------------------------------------- comparing outputs

def snr_db(reference: Path, estimate: Path, *, scale: float = 1.0, start: int = 0, stop: int | None = None) -> float:
    """10 log10(|ref|^2 / |ref - est/scale|^2) over frames [start, stop), streamed in blocks."""
    num = den = 0.0
    with sf.SoundFile(str(reference)) as a, sf.SoundFile(str(estimate)) as b:
        stop = min(a.frames, b.frames) if stop is None else stop
        a.seek(start)
        b.seek(start)
        left = stop - start
        while left > 0:
            n = min(left, 1 << 20)
            x = a.read(n, dtype="float64")
            y = b.read(n, dtype="float64") / scale
            num += float(np.sum(x * x))
            den += float(np.sum((x - y) ** 2))
            left -= n
    return float("inf") if den == 0 else 10 * np.log10(num / den)


def peak(path: Path) -> float:
    top = 0.0
    for block in sf.blocks(str(path), blocksize=1 << 20, dtype="float32"):
        top = max(top, float(np.max(np.abs(block))))
    return top


def audiosep_scale(song: Path) -> float:
    """What audio-separator 0.47.1 multiplies its primary stem by.

    ``MDXSeparator.separate`` does ``peak = max|mix|; mix = normalize(mix, 0.9); source =
    demix(mix) * peak``: for a song that peaks under the threshold the mix is left alone and the
    primary stem comes out ``peak`` times too quiet (over it, for a linear model, 0.9 times).
    """
    p = peak(song)
    return p if p <= 0.9 else 0.9


# --------------------------------------------------------------------------- building inputs

def prepare(cache: Path, *, quick: bool, need_real: bool) -> dict:
    # Compiled once here, as pip compiles an installed package, so no timed run pays for it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "bridge")], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    songs = {}
    lengths = (1, 4) if quick else (1, 4, 16)
    for minutes in lengths:
        songs[minutes] = inputs.song(cache / "songs" / f"song_{minutes}min.wav", minutes)
    songs["20s"] = inputs.song(cache / "songs" / "song_20s.wav", 20 / 60)
    trivial = models.trivial_mdx(cache / "models" / "trivial" / "mdx_trivial.onnx")
    prepared = {
        "songs": songs,
        "trivial_card": models.write_card(cache / "models" / "trivial" / "mdx_trivial.yaml", trivial, name="mdx-trivial"),
        "trivial_audiosep": inputs.audiosep_folder(cache / "models" / "trivial-audiosep", trivial),
    }
    if need_real:
        real = build_real_model(cache / "models" / "real", songs[4])
        prepared["real_model"] = real
        prepared["real_card"] = models.write_card(real.with_suffix(".yaml"), real, name="mdx-tfc-tdf-random")
        prepared["real_audiosep"] = inputs.audiosep_folder(cache / "models" / "real-audiosep", real)
    return prepared


def song_chunks(song: Path, count: int, *, first: int = 0) -> np.ndarray:
    """Model inputs ``(count, 4, 3072, 256)`` of consecutive stembridge chunks of ``song``."""
    from bridge.separation.chunking import ChunkPlan
    from bridge.separation.spectral import Stft, pack_mdx

    plan = ChunkPlan(chunk=models.HOP * (models.DIM_T - 1), trim=models.N_FFT // 2, overlap=0.25)
    audio, _ = sf.read(str(song), dtype="float32", always_2d=True)
    padded = np.concatenate([np.zeros((plan.lead, 2), np.float32), audio,
                             np.zeros((plan.chunk * (count + first + 1), 2), np.float32)]).T
    stft = Stft(models.N_FFT, models.HOP)
    chunks = np.stack([padded[:, i * plan.step:i * plan.step + plan.chunk] for i in range(first, first + count)])
    return pack_mdx(stft.forward(chunks), models.DIM_F)


def build_real_model(folder: Path, song: Path) -> Path:
    """The random TFC-TDF model, with its mask logits calibrated to a standard deviation of 2 on a
    chunk of the benchmark song (so the mask is neither saturated nor flat)."""
    path = folder / "mdx_tfc_tdf_random.onnx"
    meta = folder / "calibration.json"
    if path.exists() and meta.exists():
        return path
    import onnxruntime as ort

    probe = models.tfc_tdf_mdx(folder / "probe.onnx", extra_output=True)
    session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    x = song_chunks(song, 1, first=10)
    logits = session.run(["logits"], {"input": x})[0]
    scale = 2.0 / float(np.std(logits))
    models.tfc_tdf_mdx(path, mask_scale=scale)
    probe.unlink()
    meta.write_text(json.dumps({"probe_logit_std": float(np.std(logits)), "mask_scale": scale,
                                "params": models.count_params(path)}, indent=1))
    return path


# --------------------------------------------------------------------------- sections

def median_of(runs: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(runs: list[dict]) -> dict:
    keys = ("wall_s", "cpu_s", "peak_rss_mb", "ort_s")
    return {k: median_of(runs, k) for k in keys if all(k in r for r in runs)} | {"n": len(runs)}


def section_trivial(r: Runner, prep: dict, repeats: int, long_repeats: int, results: dict) -> None:
    """Trivial model, 1/4/16 min, both tools interleaved."""
    out = results.setdefault("trivial", {})
    for minutes, song in prep["songs"].items():
        if minutes == "20s":
            continue
        n = long_repeats if minutes == 16 else repeats
        runs = {"stembridge": [], "audio-separator": []}
        for rep in range(n):
            tag = f"trivial_{minutes}min"
            runs["stembridge"].append(r.stembridge(f"{tag}_sb", song, prep["trivial_card"]))
            runs["audio-separator"].append(r.audiosep(f"{tag}_as", song, prep["trivial_audiosep"]))
            log(f"trivial {minutes} min rep {rep}: " + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s {v[-1]['peak_rss_mb']:.0f} MB" for k, v in runs.items()))
        entry = {k: summarise(v) | {"runs": v} for k, v in runs.items()}
        sb, asp = runs["stembridge"][-1]["outputs"], runs["audio-separator"][-1]["outputs"]
        scale = audiosep_scale(song)
        frames = sf.info(str(song)).frames
        entry["snr_db"] = {
            "stembridge_vs_audiosep_primary_rescaled": snr_db(Path(sb["instrumental"]), Path(asp["instrumental"]), scale=scale),
            # The song stops dead: both tools' last ~50 ms differ (the band cut rings at the step).
            "stembridge_vs_audiosep_primary_rescaled_without_last_second": snr_db(
                Path(sb["instrumental"]), Path(asp["instrumental"]), scale=scale, stop=frames - inputs.RATE),
            "stembridge_vs_audiosep_primary_raw": snr_db(Path(sb["instrumental"]), Path(asp["instrumental"])),
            "audiosep_primary_scale": scale,
        }
        out[f"{minutes}min"] = entry
        save(results)


def section_pydub(r: Runner, prep: dict, results: dict) -> None:
    """audio-separator with its default writer (pydub, 16-bit), once per length, beside stembridge."""
    out = results.setdefault("trivial_pydub", {})
    for minutes, song in prep["songs"].items():
        if minutes == "20s":
            continue
        sb = r.stembridge(f"pydub_{minutes}min_sb", song, prep["trivial_card"], bit_depth=16)
        asp = r.audiosep(f"pydub_{minutes}min_as", song, prep["trivial_audiosep"], pydub=True)
        out[f"{minutes}min"] = {"stembridge (16-bit)": summarise([sb]) | {"runs": [sb]},
                                "audio-separator (pydub, 16-bit)": summarise([asp]) | {"runs": [asp]}}
        log(f"pydub {minutes} min: sb {sb['wall_s']:.1f} s, as {asp['wall_s']:.1f} s")
        save(results)


def uvr_grid_reference(song: Path, card: Path, *, chunks: int, overlap: float = 0.25, shift: int = 0) -> tuple[np.ndarray, int]:
    """audio-separator's (= UVR's) ``demix`` grid and window, with stembridge's per-chunk math
    (``MdxEngine.run``: STFT, pack, model, unpack, inverse STFT, compensate), over the first
    ``chunks`` chunks only. Returns the primary stem for the samples those chunks fully determine,
    and that sample count. ``shift`` moves the grid: that many zeros go before the song and are
    dropped from the result (a control: how much the model's output depends on where chunks fall)."""
    from bridge.separation.models import resolve
    from bridge.separation.mdx import MdxEngine

    engine = MdxEngine(resolve(str(card)))
    mix, _ = sf.read(str(song), dtype="float32", always_2d=True)
    mix = np.concatenate([np.zeros((2, shift), np.float32), mix.T], axis=1)
    chunk, trim = engine.chunk, engine.trim
    gen = chunk - 2 * trim
    pad = gen + trim - mix.shape[1] % gen
    mixture = np.concatenate([np.zeros((2, trim), np.float32), mix, np.zeros((2, pad), np.float32)], axis=1)
    step = int((1 - overlap) * chunk)
    result = np.zeros((2, mixture.shape[1]), np.float64)
    divider = np.zeros((2, mixture.shape[1]), np.float64)
    for i in range(chunks):
        start = i * step
        end = min(start + chunk, mixture.shape[1])
        part = np.zeros((1, 2, chunk), np.float32)
        part[0, :, :end - start] = mixture[:, start:end]
        primary = primary_of(engine, part)[0]
        window = np.hanning(end - start)
        result[:, start:end] += primary[:, :end - start] * window
        divider[:, start:end] += window
    determined = chunks * step - trim  # mixture index < chunks*step only sees these chunks
    out = (result / np.where(divider > 0, divider, 1.0))[:, trim + shift:trim + determined]
    return out.astype(np.float32), determined - shift


def primary_of(engine, part: np.ndarray) -> np.ndarray:
    """The primary stem of one chunk with stembridge's math, whichever stem its engine returns."""
    stems = engine.run(part)
    if engine.primary in stems:
        return stems[engine.primary]
    matched = engine.stft.inverse(_unpack(engine, part), engine.chunk)
    return matched - stems[engine.secondary]


def _unpack(engine, part):
    from bridge.separation.spectral import pack_mdx, unpack_mdx

    return unpack_mdx(pack_mdx(engine.stft.forward(part), engine.card.dim_f), engine.stft.bins)


def section_real(r: Runner, prep: dict, results: dict, *, repeats: int, grid_chunks: int, floor: bool) -> None:
    song = prep["songs"][4]
    runs = {"stembridge": [], "audio-separator": []}
    for rep in range(repeats):
        runs["stembridge"].append(r.stembridge("real_4min_sb", song, prep["real_card"]))
        log(f"real sb: {runs['stembridge'][-1]['wall_s']:.1f} s")
        if floor:  # between the two tools, so it shares their load
            section_floor(r, prep, results)
        runs["audio-separator"].append(r.audiosep("real_4min_as", song, prep["real_audiosep"]))
        log(f"real as: {runs['audio-separator'][-1]['wall_s']:.1f} s")
    entry = {k: summarise(v) | {"runs": v} for k, v in runs.items()}
    sb, asp = runs["stembridge"][-1]["outputs"], runs["audio-separator"][-1]["outputs"]
    scale = audiosep_scale(song)
    snr = {"audiosep_primary_scale": scale,
           "stembridge_vs_audiosep_primary_rescaled": snr_db(Path(sb["instrumental"]), Path(asp["instrumental"]), scale=scale),
           "stembridge_vs_audiosep_primary_raw": snr_db(Path(sb["instrumental"]), Path(asp["instrumental"])),
           "stembridge_vs_audiosep_primary_rescaled_without_last_second": snr_db(
               Path(sb["instrumental"]), Path(asp["instrumental"]), scale=scale, stop=sf.info(str(song)).frames - inputs.RATE)}
    results["real"] = entry | {"snr_db": snr}
    save(results)
    if grid_chunks:
        # Same per-chunk math as stembridge, on audio-separator's chunk grid and window: if this
        # matches audio-separator, the stembridge/audio-separator difference is the grid alone.
        t = time.perf_counter()
        ref, n = uvr_grid_reference(song, prep["real_card"], chunks=grid_chunks)
        path = r.work / "real_uvr_grid_primary.wav"
        sf.write(str(path), ref.T, inputs.RATE, subtype="FLOAT")
        snr["uvr_grid_emulation_vs_audiosep_rescaled"] = snr_db(path, Path(asp["instrumental"]), scale=scale, stop=n)
        snr["stembridge_vs_audiosep_rescaled_same_span"] = snr_db(Path(sb["instrumental"]), Path(asp["instrumental"]), scale=scale, stop=n)
        snr["uvr_grid_emulation_vs_stembridge"] = snr_db(path, Path(sb["instrumental"]), stop=n)
        # Controls: the same grid moved by whole hops (STFT frames stay aligned) and by whole hops
        # plus a quarter hop (frames fall elsewhere, as they do between the two tools' grids).
        for shift in (4 * models.HOP, 4 * models.HOP + models.HOP // 4):
            shifted, n_shift = uvr_grid_reference(song, prep["real_card"], chunks=grid_chunks, shift=shift)
            shifted_path = r.work / f"real_uvr_grid_shifted_{shift}_primary.wav"
            sf.write(str(shifted_path), shifted.T, inputs.RATE, subtype="FLOAT")
            snr[f"uvr_grid_emulation_vs_same_grid_shifted_{shift}_samples"] = snr_db(path, shifted_path, stop=min(n, n_shift))
        snr["emulation_span_s"] = n / inputs.RATE
        snr["emulation_s"] = time.perf_counter() - t
        save(results)
    log(f"real snr: {json.dumps(snr)}")


def section_floor(r: Runner, prep: dict, results: dict) -> None:
    """onnxruntime alone on the chunks the 4-minute song needs, in a subprocess (2 threads as stembridge opens it)."""
    from bridge.separation.chunking import ChunkPlan

    song = prep["songs"][4]
    frames = sf.info(str(song)).frames
    plan = ChunkPlan(chunk=models.HOP * (models.DIM_T - 1), trim=models.N_FFT // 2, overlap=0.25)
    sb_chunks = plan.chunks_for(frames)
    chunk = plan.chunk
    gen = chunk - 2 * plan.trim
    as_len = plan.trim + frames + gen + plan.trim - frames % gen
    as_chunks = -(-as_len // int(0.75 * chunk))
    out = r.work / "floor.json"
    cmd = [sys.executable, str(HERE / "floor.py"), "--model", str(prep["real_model"]), "--song", str(song),
           "--chunks", str(sb_chunks), "--result", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    m = measure(cmd, env=env, log=r.work / "floor.log")
    m.update(json.loads(out.read_text()))
    m["stembridge_chunks"], m["audiosep_chunks"] = sb_chunks, as_chunks
    results["floor"] = m
    save(results)
    log(f"floor: {m['ort_s']:.1f} s for {sb_chunks} chunks (median {m['median_chunk_s']:.2f} s/chunk)")


def section_knobs(r: Runner, prep: dict, results: dict, *, real: bool) -> None:
    """--threads 1 vs 2 and --batch-size 1/2/4: timing, and equal outputs across batch sizes."""
    out = results.setdefault("knobs", {})
    song4 = prep["songs"][4]
    trivial = {}
    for batch in (1, 2, 4):
        trivial[f"batch{batch}"] = r.stembridge(f"knob_trivial_b{batch}", song4, prep["trivial_card"], batch=batch, bit_depth=32)
    base = Path(trivial["batch1"]["outputs"]["vocals"])
    for k, v in trivial.items():
        v["max_abs_diff_vs_batch1"] = max_abs_diff(base, Path(v["outputs"]["vocals"]))
    out["trivial_4min"] = trivial
    log("knobs trivial: " + ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in trivial.items()))
    save(results)
    if not real:
        return
    song = prep["songs"]["20s"]
    runs = {}
    for threads in (1, 2):
        runs[f"threads{threads}_batch1"] = r.stembridge(f"knob_t{threads}", song, prep["real_card"], threads=threads, bit_depth=32)
        log(f"knobs real threads {threads}: {runs[f'threads{threads}_batch1']['wall_s']:.1f} s")
    for batch in (2, 4):
        runs[f"threads2_batch{batch}"] = r.stembridge(f"knob_b{batch}", song, prep["real_card"], threads=2, batch=batch, bit_depth=32)
        log(f"knobs real batch {batch}: {runs[f'threads2_batch{batch}']['wall_s']:.1f} s")
    runs["default_threads_batch1"] = r.stembridge("knob_default", song, prep["real_card"], bit_depth=32)
    base = Path(runs["threads2_batch1"]["outputs"]["vocals"])
    for k, v in runs.items():
        v["max_abs_diff_vs_threads2_batch1"] = max_abs_diff(base, Path(v["outputs"]["vocals"]))
    out["real_20s"] = runs
    save(results)


def max_abs_diff(a: Path, b: Path) -> float:
    x, _ = sf.read(str(a), dtype="float32")
    y, _ = sf.read(str(b), dtype="float32")
    return float(np.max(np.abs(x - y)))


def section_default(r: Runner, prep: dict, results: dict) -> None:
    card = REPO / "models" / "spleeter-2stems.yaml"
    if not card.exists():
        results["default"] = {"skipped": f"{card} does not exist yet"}
        save(results)
        log("default model: skipped (no models/spleeter-2stems.yaml)")
        return
    song = prep["songs"][4]
    runs = [r.stembridge("default_4min", song, card, overlap=None) for _ in range(2)]
    s = summarise(runs)
    seconds = sf.info(str(song)).frames / inputs.RATE
    results["default"] = s | {"runs": runs, "audio_s": seconds, "rtf": seconds / s["wall_s"]}
    save(results)
    log(f"default model: {s['wall_s']:.1f} s, {s['peak_rss_mb']:.0f} MB")


# --------------------------------------------------------------------------- reporting

RESULTS: Path | None = None


def log(message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    if RESULTS is not None:
        with open(RESULTS.with_suffix(".log"), "a") as f:
            f.write(line + "\n")


def save(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    RESULTS.with_suffix(".md").write_text(markdown(results))


def environment(venv: Path) -> dict:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    peer = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "from importlib import metadata as m; print(m.version('audio-separator'), m.version('torch'), m.version('onnxruntime'))"],
                          capture_output=True, text=True).stdout.split()
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "numpy": version("numpy"), "onnxruntime": version("onnxruntime"),
            "soundfile": version("soundfile"), "stembridge": version("stembridge"),
            "audio_separator": peer[0] if peer else None, "audiosep_torch": peer[1] if len(peer) > 1 else None,
            "audiosep_onnxruntime": peer[2] if len(peer) > 2 else None,
            "load_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(res: dict) -> str:
    lines = ["# stembridge vs python-audio-separator", ""]
    env = res.get("environment", {})
    if env:
        lines += [f"Machine: {env['cpu']}, {env['affinity']} cores, {env['memory_gb']} GiB; Python {env['python']}, "
                  f"numpy {env['numpy']}, onnxruntime {env['onnxruntime']}; audio-separator {env['audio_separator']} "
                  f"(torch {env['audiosep_torch']}, onnxruntime {env['audiosep_onnxruntime']}); {env['date']}; "
                  f"load average at start {tuple(round(x, 2) for x in env['load_at_start'])}.", ""]
    triv = res.get("trivial", {})
    if triv:
        lines += ["## Trivial MDX-shaped model (pipeline only), overlap 0.25, batch 1, 24-bit in and out", "",
                  "Medians over repeats; every row's runs were interleaved with the others'.", "",
                  "| song | tool | runs | wall s | wall s per audio min | CPU s | peak RSS MB | onnxruntime s |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, entry in triv.items():
            minutes = int(key.removesuffix("min"))
            for tool in ("stembridge", "audio-separator"):
                if tool in entry:
                    s = entry[tool]
                    lines.append(f"| {key} | {tool} | {s['n']} | {s['wall_s']:.2f} | {s['wall_s'] / minutes:.2f} | "
                                 f"{s['cpu_s']:.2f} | {s['peak_rss_mb']:.0f} | {s.get('ort_s', 0):.2f} |")
        lines += ["", "| song | wall: audio-separator / stembridge | CPU: as / sb | peak RSS: as / sb | "
                  "SNR sb vs as primary, as rescaled (raw) dB |", "|---|---|---|---|---|"]
        for key, entry in triv.items():
            sb, asp = entry["stembridge"], entry["audio-separator"]
            snr = entry["snr_db"]
            lines.append(f"| {key} | {asp['wall_s'] / sb['wall_s']:.1f}x | {asp['cpu_s'] / sb['cpu_s']:.1f}x | "
                         f"{asp['peak_rss_mb'] / sb['peak_rss_mb']:.1f}x | "
                         f"{snr['stembridge_vs_audiosep_primary_rescaled']:.1f} ({snr['stembridge_vs_audiosep_primary_raw']:.1f}) |")
        if "1min" in triv and "16min" in triv:
            r16 = triv["16min"]["stembridge"]["peak_rss_mb"] / triv["1min"]["stembridge"]["peak_rss_mb"]
            a16 = triv["16min"]["audio-separator"]["peak_rss_mb"] / triv["1min"]["audio-separator"]["peak_rss_mb"]
            lines += ["", f"Peak RSS 16 min / 1 min: stembridge {r16:.2f}x, audio-separator {a16:.2f}x.", ""]
    pyd = res.get("trivial_pydub", {})
    if pyd:
        lines += ["", "## Trivial model, audio-separator with its default writer (pydub: always 16-bit); stembridge --bit-depth 16; 1 run each", "",
                  "| song | stembridge wall s | audio-separator wall s | ratio | stembridge RSS MB | audio-separator RSS MB |",
                  "|---|---|---|---|---|---|"]
        for key, e in pyd.items():
            sb, asp = e["stembridge (16-bit)"], e["audio-separator (pydub, 16-bit)"]
            lines.append(f"| {key} | {sb['wall_s']:.2f} | {asp['wall_s']:.2f} | {asp['wall_s'] / sb['wall_s']:.1f}x | "
                         f"{sb['peak_rss_mb']:.0f} | {asp['peak_rss_mb']:.0f} |")
    real = res.get("real")
    if real:
        sb, asp = real["stembridge"], real["audio-separator"]
        lines += ["", "## UVR-size random TFC-TDF model, 4-minute song, overlap 0.25, batch 1, default threads", "",
                  "| tool | runs | wall s | real-time factor | CPU s | peak RSS MB | onnxruntime s (in run) | pipeline s (wall - onnxruntime) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in (("stembridge", sb), ("audio-separator", asp)):
            lines.append(f"| {name} | {s['n']} | {s['wall_s']:.1f} | {240 / s['wall_s']:.2f}x | {s['cpu_s']:.1f} | "
                         f"{s['peak_rss_mb']:.0f} | {s['ort_s']:.1f} | {s['wall_s'] - s['ort_s']:.1f} |")
        lines += ["", f"stembridge / audio-separator wall: {sb['wall_s'] / asp['wall_s']:.2f}; SNR of the primary "
                  "stems (audio-separator rescaled by its input-peak factor): "
                  f"{real['snr_db']['stembridge_vs_audiosep_primary_rescaled']:.1f} dB."]
        for k, v in real["snr_db"].items():
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    floor = res.get("floor")
    if floor:
        lines += ["", "## Model floor (onnxruntime alone, same session options, same chunks and batch)", "",
                  f"{floor['chunks']} chunks (stembridge's count for the 4-min song; audio-separator's grid needs "
                  f"{floor['audiosep_chunks']}): {floor['ort_s']:.1f} s summed, median {floor['median_chunk_s']:.2f} s per chunk "
                  f"(min {floor['min_chunk_s']:.2f}, max {floor['max_chunk_s']:.2f}); process peak RSS {floor['peak_rss_mb']:.0f} MB."]
        if real:
            fl = floor["ort_s"]
            per = floor["median_chunk_s"]
            lines += [f"- stembridge wall / floor: {sb['wall_s'] / fl:.3f} ({100 * (sb['wall_s'] / fl - 1):+.1f} %); "
                      f"in-run pipeline share (wall - onnxruntime) / onnxruntime: {100 * (sb['wall_s'] - sb['ort_s']) / sb['ort_s']:.1f} %",
                      f"- audio-separator wall / its own floor ({floor['audiosep_chunks']} x median): "
                      f"{asp['wall_s'] / (per * floor['audiosep_chunks']):.3f}; in-run (wall - onnxruntime) / onnxruntime: "
                      f"{100 * (asp['wall_s'] - asp['ort_s']) / asp['ort_s']:.1f} %"]
    knobs = res.get("knobs")
    if knobs:
        lines += ["", "## --threads and --batch-size", "", "| model, song | setting | wall s | CPU s | peak RSS MB | onnxruntime s | max |diff| vs reference |",
                  "|---|---|---|---|---|---|---|"]
        for group, runs in knobs.items():
            for name, v in runs.items():
                diff = v.get("max_abs_diff_vs_batch1", v.get("max_abs_diff_vs_threads2_batch1"))
                lines.append(f"| {group} | {name} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {v['peak_rss_mb']:.0f} | "
                             f"{v['ort_s']:.2f} | {diff:.3g} |")
    default = res.get("default")
    if default:
        lines += ["", "## Embedded default model, 4-minute song", ""]
        if "skipped" in default:
            lines.append(f"Skipped: {default['skipped']}.")
        else:
            lines.append(f"{default['n']} runs: wall {default['wall_s']:.1f} s, real-time factor {default['rtf']:.1f}x, "
                         f"peak RSS {default['peak_rss_mb']:.0f} MB, CPU {default['cpu_s']:.1f} s.")
    targets = res.get("targets")
    if targets:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def evaluate_targets(res: dict) -> list[dict]:
    out = []
    triv = res.get("trivial", {})
    for key, e in triv.items():
        ratio = e["audio-separator"]["wall_s"] / e["stembridge"]["wall_s"]
        out.append({"target": f"trivial model, {key}: stembridge wall per audio minute >= 5x less than audio-separator",
                    "measured": f"{ratio:.1f}x less", "met": ratio >= 5})
    if "1min" in triv and "16min" in triv:
        sb1, sb16 = triv["1min"]["stembridge"]["peak_rss_mb"], triv["16min"]["stembridge"]["peak_rss_mb"]
        as16 = triv["16min"]["audio-separator"]["peak_rss_mb"]
        out.append({"target": "16-min peak RSS within 1.3x of the 1-min run's",
                    "measured": f"{sb16:.0f} / {sb1:.0f} MB = {sb16 / sb1:.2f}x", "met": sb16 / sb1 <= 1.3})
        out.append({"target": "16-min peak RSS far under audio-separator's",
                    "measured": f"{sb16:.0f} vs {as16:.0f} MB ({as16 / sb16:.1f}x less)", "met": as16 / sb16 >= 3})
    real, floor = res.get("real"), res.get("floor")
    if real:
        ratio = real["stembridge"]["wall_s"] / real["audio-separator"]["wall_s"]
        out.append({"target": "real-size model: stembridge wall <= 0.8x audio-separator's (overlap 0.25)",
                    "measured": f"{ratio:.2f}x", "met": ratio <= 0.8})
        snr = real["snr_db"]["stembridge_vs_audiosep_primary_rescaled"]
        out.append({"target": "equal output: primary stems agree within 60 dB SNR",
                    "measured": f"{snr:.1f} dB (see the grid emulation lines for why)", "met": snr >= 60})
    if real and floor:
        over = real["stembridge"]["wall_s"] / floor["ort_s"] - 1
        out.append({"target": "real-size model: stembridge within 10 % of the model floor",
                    "measured": f"{100 * over:+.1f} % vs the standalone floor (whole process incl. start-up and I/O); "
                                f"in-run: wall / summed onnxruntime = {real['stembridge']['wall_s'] / real['stembridge']['ort_s']:.3f}",
                    "met": over <= 0.10})
    return out


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("BENCH_CACHE", "/work/bench-cache")))
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("AUDIOSEP_VENV", "/work/venvs/audiosep")))
    parser.add_argument("--results", type=Path, help="results JSON path (default: CACHE/results/results-DATE.json)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the 1- and 4-minute trivial runs")
    parser.add_argument("--long-repeats", type=int, default=2, help="repeats of the 16-minute trivial runs")
    parser.add_argument("--real-repeats", type=int, default=1)
    parser.add_argument("--grid-chunks", type=int, default=8,
                        help="chunks of the UVR-grid emulation used to explain the real-model SNR (0: skip)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, no 16-minute song")
    args = parser.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if not (args.venv / "bin" / "python").exists():
        parser.error(f"{args.venv} has no python: run tests/benchmarks/setup_audiosep.sh first")
    if args.quick:
        args.repeats = args.long_repeats = 1
    RESULTS = args.results or args.cache / "results" / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(args.venv), "command": sys.argv, "sections": sorted(only)}
    log(f"results -> {RESULTS}")
    need_real = bool(only & {"real", "floor", "knobs"})
    prep = prepare(args.cache, quick=args.quick, need_real=need_real)
    if need_real:
        results["real_model"] = json.loads((prep["real_model"].parent / "calibration.json").read_text())
    save(results)
    r = Runner(args.cache, args.venv)
    if "trivial" in only:
        section_trivial(r, prep, args.repeats, args.long_repeats, results)
    if "real" in only:
        section_real(r, prep, results, repeats=args.real_repeats, grid_chunks=args.grid_chunks, floor="floor" in only)
    elif "floor" in only:
        section_floor(r, prep, results)
    if "knobs" in only:
        section_knobs(r, prep, results, real=True)
    if "default" in only:
        section_default(r, prep, results)
    if "pydub" in only:
        section_pydub(r, prep, results)
    results["targets"] = evaluate_targets(results)
    save(results)
    log(f"done: {RESULTS} and {RESULTS.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
