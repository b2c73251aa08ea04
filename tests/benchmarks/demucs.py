"""Demucs: stembridge's demucs family vs the ``demucs`` command, same model file, same song (issue 25).

    python tests/benchmarks/demucs.py build [--model htdemucs_ft|hdemucs_mmi]  (published-size networks, random weights)
    python tests/benchmarks/demucs.py import [--model htdemucs_ft]   (stembridge models import of the bag, timed)
    python tests/benchmarks/demucs.py run [--seconds 20]             (demucs -n htdemucs --repo vs stembridge separate)
    python tests/benchmarks/demucs.py run --shifts 0                 (both without the shift trick: stems comparable)
    python tests/benchmarks/demucs.py run --minutes 4 --repeats 2    (the whole song looped to 4 min; A B A B)
    python tests/benchmarks/demucs.py run --minutes 16 --tools stembridge --results results_memory.json
    python tests/benchmarks/demucs.py floor --minutes 4 [--chunks 3] [--profile]

``--minutes N`` is Karissa Hobbs's "Let's Go Fishin'" (133 s, ``/work/shared/data/fullmix``) looped
end to end and cut at N minutes, so every length is real music. ``--repeats R`` runs R pairs,
demucs then stembridge each time, and records every run and the medians; ``--tools`` runs one of
the two (memory sweeps at lengths where one run each is all there is time for). ``--results``
names the JSON file under ``--work``: give each lane its own when two run at once (two lanes at
once share the cores, so only their peak memory is comparable then).

``floor``: the network's FLOPs per chunk (torch's ``FlopCounterMode`` on the published-size
HTDemucs, attention on SDPA's math kernel so it is counted), onnxruntime's float32 MatMul rate on
this machine (the session opened as stembridge's), and the network alone (``session.run`` of the
imported ONNX, nothing else timed) on the song's first ``--chunks`` real chunks; the floor of the
song is chunks x FLOPs / rate (both rates given) and chunks x seconds per chunk. Every rate is
also given per CPU-second (``time.process_time``), which follows the cores' own speed however
many other processes share them; the ``*_cpu_rate_2_cores`` floors assume both cores. The count is
cached in ``flops_<segment>.json``. ``--profile`` adds onnxruntime's per-operator profile of one
chunk.

The model is HTDemucs with the published htdemucs arguments (``tests/demucs_models.py``: 41,984,456
parameters), random weights, saved as Demucs saves it (``955717e8-<sha256[:8]>.th``) beside a bag
file ``htdemucs.yaml`` (``models: ['955717e8']``, as Demucs's own), so ``demucs -n htdemucs --repo
DIR`` and ``stembridge models import DIR/htdemucs.yaml --name htdemucs`` read the same file.
``--model htdemucs_ft`` is the fine-tuned bag as Demucs saves it: four such networks (``f7e0c4bc``,
``d12395a8``, ``92cfc3b6``, ``04573f0d``, one specialist per stem) and ``htdemucs_ft.yaml`` with
the one-hot ``weights`` matrix. Both run their
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
#: The bags as Demucs's remote files list them: htdemucs one network, htdemucs_ft four specialists
#: (drums, bass, other, vocals) with a one-hot weights matrix.
BAGS = {"htdemucs": ["955717e8"], "hdemucs_mmi": ["75fc33f5"], "htdemucs_ft": ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"]}


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
    path = work(args) / args.results
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))
    print(key, json.dumps(value, indent=1), flush=True)


def cmd_build(args) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import demucs_models as dm

    repo = work(args) / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    signatures = BAGS[args.model]
    for i, signature in enumerate(signatures):
        if any(repo.glob(f"{signature}-*.th")):
            continue
        arguments = dm.hdemucs_published() if args.model == "hdemucs_mmi" else dm.published()
        model = dm.build(arguments, seed=25 + i)
        path = dm.save(model, repo, signature)
        print(path, sum(p.numel() for p in model.parameters()), "parameters", path.stat().st_size / 1e6, "MB")
    weights = None if len(signatures) == 1 else np.eye(len(signatures)).tolist()
    segment = {"segment": 44} if args.model == "hdemucs_mmi" else {}  # as demucs/remote/hdemucs_mmi.yaml
    print(dm.save_bag(repo, args.model, signatures, weights=weights, **segment))


def cmd_import(args) -> None:
    bag = work(args) / "repo" / f"{args.model}.yaml"
    cmd = [sys.executable, "-m", "bridge.cli", "models", "import", str(bag), "--name", args.model, "--force"]
    record(args, f"import_{args.model}", timed(cmd, environ=env(args),
                                               logfile=work(args) / "logs" / f"import_{args.model}.log"))


def song(args) -> Path:
    """``--seconds`` from 30 s into the song, or ``--minutes``: the whole song (133 s) looped end to end."""
    audio = None
    if args.minutes:
        path = work(args) / "songs" / f"fishin_loop_{args.minutes:g}min.wav"
    else:
        path = work(args) / "songs" / f"fishin_{args.seconds}s.wav"
    if not path.exists():
        audio, rate = sf.read(DATA / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg", dtype="float32", always_2d=True)
        assert rate == RATE
        if args.minutes:
            length = int(args.minutes * 60 * RATE)
            audio = np.tile(audio, (-(-length // len(audio)), 1))[:length]
        else:
            audio = audio[30 * RATE: (30 + args.seconds) * RATE]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, RATE, subtype="FLOAT")
    return path


def song_seconds(args) -> float:
    return args.minutes * 60 if args.minutes else args.seconds


def cmd_run(args) -> None:
    """``--repeats`` pairs, demucs then stembridge each time (A B A B: both see the same load drift)."""
    wav = song(args)
    out = work(args) / "out"
    out = out / f"shifts{args.shifts}" if args.model == "htdemucs" else out / args.model / f"shifts{args.shifts}"
    demucs_cmd = [sys.executable, "-m", "demucs", "-n", args.model, "--repo", str(work(args) / "repo"), "-d", "cpu",
                  "--float32", "--shifts", str(args.shifts), "-o", str(out / "demucs"), str(wav)]
    ours_cmd = [sys.executable, "-m", "bridge.cli", "separate", str(wav), "--model", args.model, "--out",
                str(out / "stembridge"), "--bit-depth", "32", "--no-cache", "--force", "--jobs", "1"]  # --force: a
    # finished song from an earlier run would otherwise be skipped as up to date and time nothing
    if args.shifts != 1:
        (out / "stembridge" / wav.stem).mkdir(parents=True, exist_ok=True)
        ours_cmd = [sys.executable, "-c", (
            "import sys, soundfile as sf; from bridge.separation import load_separator; "
            f"s = load_separator('{args.model}', shifts={args.shifts}, threads=int(sys.argv[-1])); "
            "x, r = sf.read(sys.argv[1], dtype='float32', always_2d=True); "
            "[sf.write(f'{sys.argv[2]}/{k}.wav', v.T, r, subtype='FLOAT') for k, v in s(x.T.copy(), r).items()]"),
            str(wav), str(out / "stembridge" / wav.stem)]
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    tools = {"demucs": demucs_cmd, "stembridge": ours_cmd + ["--threads", str(args.threads)]}
    key = f"run_{args.model}_{args.minutes:g}min" if args.minutes else f"run_{args.model}_{args.seconds}s"
    key += f"_shifts{args.shifts}"
    runs = {name: [] for name in tools if name in args.tools}
    for repeat in range(args.repeats):
        for name in runs:
            runs[name].append(timed(tools[name], environ={**env(args), **threads},
                                    logfile=work(args) / "logs" / f"{key}_{name}_{repeat}.log"))
            record(args, key, {"partial": True, **runs})
    results = {"model": args.model, "song_s": song_seconds(args), "song": wav.name, "shifts": args.shifts, **runs}
    for field in ("wall_s", "cpu_s", "peak_rss_mb"):
        for name, got in runs.items():
            results[f"median_{field}_{name}"] = float(np.median([r[field] for r in got]))
    if set(runs) == set(tools):
        results["wall_ratio_stembridge_over_demucs"] = [round(s["wall_s"] / d["wall_s"], 3)
                                                        for d, s in zip(runs["demucs"], runs["stembridge"])]
        stems = {}
        for stem in ("drums", "bass", "other", "vocals"):
            ref, _ = sf.read(out / "demucs" / args.model / wav.stem / f"{stem}.wav", dtype="float64")
            est, _ = sf.read(out / "stembridge" / wav.stem / f"{stem}.wav", dtype="float64")
            stems[stem] = round(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2)), 1)
        results["snr_db_stembridge_vs_demucs"] = stems
    record(args, key, results)


def torch_flops(segment: int) -> dict:
    """FLOPs of one batch-1 chunk of the published-size HTDemucs, counted by torch's
    ``FlopCounterMode`` (2 per multiply-add) with attention forced onto SDPA's math kernel, so its two
    products are counted as ``bmm`` (on the default CPU kernel the counter sees none). Convolutions
    (transposed ones too), linear layers and attention; norms, activations, softmax and the STFT are
    not counted. (ONNX shape inference leaves most of the exported graph's MatMuls without shapes.)"""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(REPO / "tests"))
    import demucs_models as dm

    model = dm.build(dm.published(), seed=25)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, 2, segment).normal_())
    by_op = {str(k).replace("aten.", ""): v for k, v in counter.get_flop_counts()["Global"].items()}
    return {"flops_per_chunk": counter.get_total_flops(), "by_op": by_op, "segment": segment}


def matmul_rate(threads: int, size: int = 2048, repeats: int = 10) -> dict:
    """onnxruntime's float32 MatMul (size^3) GFLOP/s on this machine, the session opened as stembridge's."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bridge.separation.runtime import open_session

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mm.onnx"
        onnx.save(model, str(path))
        session = open_session(path, threads=threads)
        x = rng.standard_normal((size, size)).astype(np.float32)
        session.run(None, {"x": x})
        times, cpu = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            session.run(None, {"x": x})
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    flops = 2 * size ** 3
    return {"size": size, "best_gflops": flops / min(times) / 1e9,
            "median_gflops": flops / float(np.median(times)) / 1e9,
            # Per core-second of CPU time: what the cores reach when they run, however shared the machine.
            "gflops_per_cpu_s_median": flops / float(np.median(cpu)) / 1e9}


def chunk_count(song_samples: int, segment: int, shifts: int) -> int:
    """Chunks per network: ``apply_model``'s grid over the song plus a shift's delay (<= 0.5 s, the
    count the same for any delay unless the song ends within 0.5 s of a stride)."""
    stride = int(0.75 * segment)
    delay = int(0.5 * RATE) if shifts else 0
    return max(1, shifts) * -(-(song_samples + delay) // stride)


def cmd_floor(args) -> None:
    """FLOPs per chunk, onnxruntime's MatMul rate and the network alone on real chunks: the floor."""
    os.environ.update({k: v for k, v in env(args).items() if k.startswith("STEMBRIDGE_")})
    sys.path.insert(0, str(REPO))
    from bridge.separation.demucs import DemucsNetwork
    from bridge.separation.models import resolve

    card = resolve(args.model)
    data = card.demucs
    folder = Path(card.file).parent if card.file else Path(card.source).parent
    member = data["models"][0]
    path = folder / member["file"]
    segment = member["segment"]
    cached = work(args) / f"flops_{segment}.json"  # the count is deterministic: once per segment
    if not cached.exists():
        cached.write_text(json.dumps(torch_flops(segment)))
    counted = json.loads(cached.read_text())
    rate = matmul_rate(args.threads)
    network = DemucsNetwork(path, segment=segment, n_fft=card.n_fft, stems=len(card.stems),
                            channels=card.audio_channels, threads=args.threads)
    audio, _ = sf.read(song(args), dtype="float32", always_2d=True)
    stride = int(0.75 * segment)
    times, cpu, total_times, total_cpu = [], [], [], []
    for k in range(args.chunks):
        chunk = np.ascontiguousarray(audio[k * stride: k * stride + segment].T[None])
        spec = network.spectrogram.forward(chunk)
        start, cpu_start = time.perf_counter(), time.process_time()
        freq, wave = network.session.run(network.output_names, {network.mix_name: chunk, network.spec_name: spec})
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        start, cpu_start = time.perf_counter(), time.process_time()
        network.spectrogram.inverse(freq)
        network.spectrogram.forward(chunk)
        total_times.append(time.perf_counter() - start)
        total_cpu.append(time.process_time() - cpu_start)
    members = len({m["file"] for m in data["models"]})
    chunks = members * chunk_count(int(song_seconds(args) * RATE), segment, args.shifts)
    gflop = counted["flops_per_chunk"] / 1e9
    median = float(np.median(times))
    result = {"model": args.model, "song_s": song_seconds(args), "shifts": args.shifts, "threads": args.threads,
              "networks": members, "chunks_for_song": chunks, "gflop_per_chunk": gflop, **counted,
              "matmul": rate, "ort_chunk_s": times, "ort_chunk_median_s": median,
              "ort_gflops_median": gflop / median, "ort_gflops_best": gflop / min(times),
              "ort_chunk_cpu_s": cpu, "ort_gflops_per_cpu_s_median": gflop / float(np.median(cpu)),
              "stft_istft_chunk_s": total_times, "stft_istft_chunk_cpu_s": total_cpu,
              "floor_s_at_matmul_cpu_rate_2_cores": chunks * gflop / (2 * rate["gflops_per_cpu_s_median"]),
              "floor_s_at_network_cpu_rate_2_cores": chunks * float(np.median(cpu)) / 2,
              "floor_s_at_matmul_rate": chunks * gflop / rate["best_gflops"],
              "floor_s_at_network_median": chunks * median, "floor_s_at_network_best": chunks * min(times),
              "load1": os.getloadavg()[0]}
    if args.profile:
        result["ort_profile"] = ort_profile(path, chunk, spec, args.threads)
    record(args, f"floor_{args.model}_{song_seconds(args):g}s_shifts{args.shifts}", result)


def ort_profile(path: Path, chunk: np.ndarray, spec: np.ndarray, threads: int) -> dict:
    """onnxruntime's own profile of one chunk (after a warm-up): milliseconds per operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get('BENCH25', '/work/bench25')) / "logs" / "ort_profile")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {n: (chunk if len(i.shape) == 3 else spec) for n, i in zip(names, session.get_inputs())}
    session.run(None, feeds)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last_start = runs[-1]["ts"]
    by_op = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            op = e["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0) + e["dur"] / 1000
    return {"model_run_ms": runs[-1]["dur"] / 1000,
            "ms_by_op": dict(sorted(((k, round(v, 1)) for k, v in by_op.items()), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "import", "run", "floor"])
    parser.add_argument("--work")
    parser.add_argument("--results", default="results.json", help="file under --work (one per concurrent lane)")
    parser.add_argument("--model", choices=sorted(BAGS), default="htdemucs")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--minutes", type=float, help="a song of this many minutes (the whole song, looped)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs, run A B A B")
    parser.add_argument("--tools", nargs="+", default=["demucs", "stembridge"], choices=["demucs", "stembridge"])
    parser.add_argument("--chunks", type=int, default=3, help="floor: chunks timed through onnxruntime")
    parser.add_argument("--profile", action="store_true", help="floor: also onnxruntime's profile of one chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shifts", type=int, default=1)
    args = parser.parse_args()
    {"build": cmd_build, "import": cmd_import, "run": cmd_run, "floor": cmd_floor}[args.command](args)


if __name__ == "__main__":
    main()
