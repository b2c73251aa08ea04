"""What each DAW hand-off output costs on a 4-minute song (issue 14).

    PYTHONPATH=. python tests/benchmarks/handoff.py [--song real|synthetic] [--minutes 4] [--repeats 3]
                                                    [--json out.json]

The song: ``real`` is Karissa Hobbs - Let's Go Fishin' (../shared/data/fullmix, 133 s, CC BY 3.0)
played twice over to ``--minutes``, as a 24-bit wav; ``synthetic`` is tones and noise (noise is
what AAC codes most slowly). Either is written to a temporary folder and rendered
with the 4-stem test separator (tests/four_stems.py: FFT bands, so the separator itself costs
little and the hand-off's share is visible) to a mix and four stems (24-bit wav), in four
configurations: none of the hand-off outputs, then Broadcast WAV chunks, a REAPER project,
and NI Stems, each alone. The cost of an output is its configuration's median wall time minus
the baseline's. The Broadcast WAV insertion and the .rpp writer are also timed alone, on the
rendered files. The machine is shared: medians of ``--repeats`` runs, with the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from bridge.daw import bwf, reaper  # noqa: E402
from bridge.render.graph import RenderGraph
from bridge.render.song import render_file
from bridge.preset.session import parse
from four_stems import four_stem_separator  # noqa: E402

SR = 44100
CONFIGS = {
    "baseline": {"bwf": False},
    "bwf": {"bwf": True},
    "reaper": {"bwf": False, "project": "reaper"},
    "nistems": {"bwf": False, "files": {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}",
                                        "nistems": "{track}.stem.mp4"}},
}


def write_song(path: Path, minutes: float) -> Path:
    rng = np.random.default_rng(4)
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=2, subtype="PCM_24") as f:
        block = 10 * SR
        for start in range(0, int(minutes * 60 * SR), block):
            t = (start + np.arange(block)) / SR
            tones = 0.2 * np.sin(2 * np.pi * 110 * t) + 0.1 * np.sin(2 * np.pi * 880 * t) + 0.05 * np.sin(2 * np.pi * 3520 * t)
            f.write((tones[:, None] + 0.03 * rng.standard_normal((block, 2))).astype(np.float32))
    return path


# ../shared/data beside the repository (a worktree sits one folder deeper).
REAL_SONG = next((p / "shared" / "data" / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg" for p in REPO.parents
                  if (p / "shared" / "data").is_dir()), Path("karissa-hobbs-lets-go-fishin.ogg"))


def write_real_song(path: Path, minutes: float) -> Path:
    audio, rate = sf.read(str(REAL_SONG), dtype="float32", always_2d=True)
    frames = int(minutes * 60 * rate)
    audio = np.tile(audio, (frames // len(audio) + 1, 1))[:frames]
    sf.write(str(path), audio, rate, subtype="PCM_24")
    return path


#: Lanes as a session has them (issue 12): the .rpp gets them as envelopes, the mixer plays them.
AUTOMATION = {"stems.vocals.gain_db": [[0, 0], ["31:1", -6], ["61:1", 0]],
              "stems.drums.gain_db": {"points": [[0, 1], [120, 6], [200, 1]], "curve": "exponential"},
              "stems.bass.pan": [[0, -0.3], [240, 0.3]],
              "stems.other.gain_db": {"points": [[t, -(t % 7)] for t in range(0, 240, 2)], "curve": "hold"}}


def render_once(song: Path, out: Path, output: dict) -> float:
    files = {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}"}
    session = parse({"version": 1, "tempo": {"bpm": 120, "time_signature": "4/4"}, "automation": AUTOMATION,
                     "output": {"files": files, "tail_seconds": 1.0, **output}}, source="bench.yaml")
    graph = RenderGraph(session, four_stem_separator())
    start, cpu = time.perf_counter(), time.process_time()
    render_file(song, graph, out)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--song", choices=("real", "synthetic"), default="real")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
        folder = Path(folder)
        song = (write_real_song if args.song == "real" else write_song)(folder / "song.wav", args.minutes)
        render_once(song, folder / "warm-up", CONFIGS["nistems"])  # imports, first-call set-up
        times = {name: [] for name in CONFIGS}
        for repeat in range(args.repeats):
            for name, output in CONFIGS.items():  # interleaved, so load changes hit every configuration
                times[name].append(render_once(song, folder / f"out-{name}-{repeat}", output))
        base = statistics.median(w for w, _ in times["baseline"])
        base_cpu = statistics.median(c for _, c in times["baseline"])
        for name, values in times.items():
            wall = [w for w, _ in values]
            cpu = statistics.median(c for _, c in values)
            results[name] = {"wall_median_s": round(statistics.median(wall), 2), "wall_min_s": round(min(wall), 2),
                             "wall_max_s": round(max(wall), 2), "wall_cost_s": round(statistics.median(wall) - base, 2),
                             "cpu_median_s": round(cpu, 2), "cpu_cost_s": round(cpu - base_cpu, 2)}
        # The pieces alone, on the files the baseline wrote.
        stem = folder / "out-baseline-0" / "song" / "vocals.wav"
        info = sf.info(str(stem))
        embeds = []
        for repeat in range(args.repeats):
            copy = folder / f"embed-{repeat}.wav"
            copy.write_bytes(stem.read_bytes())
            start = time.perf_counter()
            bwf.embed(copy, bwf.Broadcast(description="bench", sample_rate=SR, channels=2))
            embeds.append(time.perf_counter() - start)
        results["bwf_embed_one_file"] = {"median_s": round(statistics.median(embeds), 3),
                                         "file_mb": round(stem.stat().st_size / 1e6, 1)}
        session = parse({"version": 1, "tempo": {"bpm": 120}, "automation": AUTOMATION}, source="bench.yaml")
        lanes = {(t.stem, t.param): lane for t, lane in session.automation}
        start = time.perf_counter()
        tracks = tuple(reaper.Track(name=s, file=f"song/{s}.wav", length=info.frames / SR,
                                    volume_envelope=reaper.gain_envelope(lanes[s, "gain_db"])
                                    if (s, "gain_db") in lanes else (),
                                    pan_envelope=reaper.pan_envelope(lanes[s, "pan"]) if (s, "pan") in lanes else ())
                       for s in ("vocals", "drums", "bass", "other"))
        reaper.write(folder / "x.rpp", reaper.Project(sample_rate=SR, tracks=tracks))
        results["rpp_envelopes_and_write"] = {"median_s": round(time.perf_counter() - start, 4),
                                              "points": sum(len(t.volume_envelope) + len(t.pan_envelope)
                                                            for t in tracks)}
        nistems_file = folder / "out-nistems-0" / "song.stem.mp4"
        results["nistems_file_mb"] = round(nistems_file.stat().st_size / 1e6, 1)
    what = "Let's Go Fishin' twice over" if args.song == "real" else "synthetic tones and noise"
    results["input"] = f"{args.minutes:g} min {what}, 44.1 kHz stereo 24-bit wav; outputs mix + 4 stems, 24-bit wav"
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
