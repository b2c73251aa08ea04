"""Albums (issue 11): first render, renders over cached stems, reruns, --jobs, a Dask cluster, memory.

    python tests/benchmarks/albums.py [--songs 10] [--minutes 4] [--only first,cached,rerun,jobs,dask,memory]

Builds an album of real music: Karissa Hobbs' "Let's Go Fishin'" (CC BY 3.0, from ../shared/data),
each song a different rotation of it looped to ``--minutes``, 24-bit FLAC, in
/work/bench-cache/albums (or $STEMBRIDGE_BENCH_CACHE). Every step is a fresh ``stembridge``
process timed by /usr/bin/time -v (wall, CPU, peak RSS of the largest process: with --jobs or
Dask that is one worker); results go to ``--results`` as JSON and a table.

Steps (the default model throughout; the cache is emptied first):

- ``separate --no-cache``: the separation alone, writing one stem;
- the karaoke preset's first render (fills the cache), a heavier preset's first render without the
  cache (vocal-up: chains, stems and a loudness target), then both again over the cached stems;
- a rerun of the first render (everything up to date);
- ``--jobs 1`` against ``--jobs 2`` and a Dask cluster of two one-thread workers against
  ``--jobs 2``, all without the cache;
- peak memory of ``--jobs 2`` with 1- and 8-minute songs;
- cache size per minute of stereo audio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "albums"
SOURCE = DATA / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg"
RATE = 44100


def build_album(folder: Path, songs: int, minutes: float) -> Path:
    """``songs`` FLAC files of ``minutes`` each, rotations of the source song, written block by block."""
    audio, rate = sf.read(str(SOURCE), dtype="float32", always_2d=True)
    assert rate == RATE, rate
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(minutes * 60 * RATE)
    for i in range(songs):
        path = folder / f"{i + 1:02d} fishin.flac"
        if path.exists() and sf.info(str(path)).frames == frames:
            continue
        start = (i * 13 * RATE) % len(audio)
        with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="PCM_24") as f:
            written = 0
            while written < frames:
                take = min(len(audio) - start, frames - written)
                f.write(audio[start:start + take])
                written += take
                start = 0
    return folder


def timed(argv, *, env=None) -> dict:
    """Wall and CPU seconds and peak RSS (MB) of one command, by /usr/bin/time -v."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *map(str, argv)], capture_output=True, text=True,
                            env=env or os.environ.copy(), cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, argv))}\n{result.stderr[-3000:]}")
    report = result.stderr
    grab = lambda key: float(re.search(rf"{key}: ([\d.]+)", report).group(1))  # noqa: E731
    return {"wall_s": round(wall, 2), "cpu_s": round(grab("User time \\(seconds\\)") + grab("System time \\(seconds\\)"), 2),
            "peak_rss_mb": round(grab("Maximum resident set size \\(kbytes\\)") / 1024, 1)}


def stembridge(*argv) -> list:
    return [sys.executable, "-m", "bridge.cli", *map(str, argv)]


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``dask scheduler`` and ``dask worker ADDRESS --nworkers 2 --nthreads 1`` on 127.0.0.1."""

    def __init__(self, folder: Path):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        port = self.address.rsplit(":", 1)[1]
        logs = folder / "dask.log"
        self.log = open(logs, "w")
        self.processes = [
            subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                             stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True),
        ]
        time.sleep(2)
        self.processes.append(subprocess.Popen(
            ["dask", "worker", self.address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--host",
             "127.0.0.1", "--local-directory", str(folder)], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)

    def close(self) -> None:
        for process in reversed(self.processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--only", default="first,cached,rerun,jobs,dask,memory")
    parser.add_argument("--results", type=Path, default=CACHE / "results.json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    album = build_album(CACHE / f"album-{args.songs}x{args.minutes:g}min", args.songs, args.minutes)
    audio_minutes = args.songs * args.minutes
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = work / "cache"
    karaoke, heavy = REPO / "presets" / "karaoke.yaml", REPO / "presets" / "vocal-up.yaml"
    results: dict = {"album": {"songs": args.songs, "minutes_each": args.minutes}, "cpus": os.cpu_count()}

    def step(name, argv, **kwargs):
        figures = timed(argv, **kwargs)
        figures["realtime_x"] = round(audio_minutes * 60 / figures["wall_s"], 1)
        results[name] = figures
        print(f"{name:<34} {figures['wall_s']:>8.1f} s wall {figures['cpu_s']:>8.1f} s cpu "
              f"{figures['peak_rss_mb']:>7.0f} MB  {figures['realtime_x']:>6.1f}x real time", flush=True)
        return figures

    if {"first", "cached", "rerun"} & only:
        step("separate alone (no cache)", stembridge("separate", album, "--out", work / "sep", "--no-cache",
                                                     "--stems", "vocals", "--quiet"))
        step("karaoke, first render", stembridge("render", karaoke, album, "--out", work / "k1", "--cache-dir", cache,
                                                 "--quiet"))
        results["cache_mb_per_minute"] = round(folder_mb(cache) / audio_minutes, 2)
        print(f"cache: {folder_mb(cache):.0f} MB for {audio_minutes:g} min = {results['cache_mb_per_minute']} MB/min")
        step("vocal-up, first render (no cache)", stembridge("render", heavy, album, "--out", work / "h1", "--no-cache",
                                                              "--quiet"))
    if "cached" in only:
        step("karaoke, over cached stems", stembridge("render", karaoke, album, "--out", work / "k2", "--cache-dir",
                                                      cache, "--quiet"))
        step("vocal-up, over cached stems", stembridge("render", heavy, album, "--out", work / "h2", "--cache-dir",
                                                       cache, "--quiet"))
    if "rerun" in only:
        step("karaoke, rerun (all up to date)", stembridge("render", karaoke, album, "--out", work / "k1",
                                                           "--cache-dir", cache, "--quiet"))
    if "jobs" in only:
        step("karaoke --jobs 1 (no cache)", stembridge("render", karaoke, album, "--out", work / "j1", "--no-cache",
                                                       "--quiet", "--jobs", "1"))
        step("karaoke --jobs 2 (no cache)", stembridge("render", karaoke, album, "--out", work / "j2", "--no-cache",
                                                       "--quiet", "--jobs", "2"))
    if "dask" in only:
        cluster = Cluster(work)
        try:
            step("karaoke on Dask, 2 workers x 1 thread", stembridge("render", karaoke, album, "--out", work / "d",
                                                                     "--no-cache", "--quiet", "--scheduler",
                                                                     cluster.address))
        finally:
            cluster.close()
    if "memory" in only:
        for minutes in (1, 8):
            short = build_album(CACHE / f"album-2x{minutes}min", 2, minutes)
            figures = timed(stembridge("render", karaoke, short, "--out", work / f"m{minutes}", "--no-cache",
                                       "--quiet", "--jobs", "2"))
            results[f"memory --jobs 2, {minutes}-min songs"] = figures
            print(f"peak RSS of one worker, {minutes}-min songs: {figures['peak_rss_mb']:.0f} MB", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
