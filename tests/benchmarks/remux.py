"""The video output's cost (issue 23): remuxing a film with the rendered mix as its audio.

    python tests/benchmarks/remux.py [--minutes 10 60] [--size 160x90] [--audio aac|pcm] [--results FILE]

For each length, builds (once, in /work/bench-cache/remux or $STEMBRIDGE_BENCH_CACHE) an mp4 with
PyAV: MPEG-4 Part 2 video at 25 fps of ``--size`` (a moving gradient), AAC stereo audio at
192 kbit/s of Karissa Hobbs' "Let's Go Fishin'" (CC BY 3.0, ../shared/data) looped (``--audio
pcm``: a .mov with 16-bit PCM instead, whose encoding costs next to nothing, for long memory runs
on a busy machine), and a float
WAV "mix" of the same length (the song, polarity-inverted, standing in for the render's scratch
file). Then times :func:`bridge.daw.video.remux` in a fresh process (wall, CPU, peak RSS via
``getrusage`` of the child), and, for scale, the same job by the ffmpeg command (``-c:v copy``
with the WAV encoded to AAC) where it is installed. Memory must not grow with the length: the
remux streams packets and encodes the audio just ahead of them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SONG = DATA / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg"
SR = 44100
FPS = 25


def build(folder: Path, minutes: int, size: tuple[int, int], audio_kind: str = "aac") -> tuple[Path, Path]:
    """The film and the mix for ``minutes``, made once."""
    import av
    import numpy as np
    import soundfile as sf

    ext, muxer, codec = (".mp4", "mp4", "aac") if audio_kind == "aac" else (".mov", "mov", "pcm_s16le")
    film, mix = folder / f"film-{minutes}min-{size[0]}x{size[1]}-{audio_kind}{ext}", folder / f"mix-{minutes}min.wav"
    if film.exists() and mix.exists():
        return film, mix
    song = sf.read(str(SONG), dtype="float32", always_2d=True)[0].T
    total = minutes * 60 * SR
    partial = film.with_suffix(".partial" + ext)
    started = time.time()
    with av.open(str(partial), "w", format=muxer) as out, sf.SoundFile(str(mix), "w", SR, 2, "FLOAT") as wav:
        picture = out.add_stream("mpeg4", rate=FPS)
        picture.width, picture.height, picture.pix_fmt = size[0], size[1], "yuv420p"
        picture.bit_rate = 200_000
        sound = out.add_stream(codec, rate=SR, layout="stereo")
        if codec == "aac":
            sound.bit_rate = 192_000
        ramp = np.linspace(0, 255, size[0] * size[1] * 3, dtype=np.float32).reshape(size[1], size[0], 3)
        at = 0
        for index in range(minutes * 60 * FPS):
            frame = av.VideoFrame.from_ndarray(((ramp + 3 * index) % 256).astype(np.uint8), format="rgb24")
            frame.pts = index
            for packet in picture.encode(frame):
                out.mux(packet)
            end = min(total, (index + 1) * SR // FPS)
            while at < end:
                n = min(4096, end - at)
                offset = at % song.shape[1]
                block = np.take(song, range(offset, offset + n), axis=1, mode="wrap")
                audio = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="stereo")
                audio.sample_rate, audio.pts = SR, at
                for packet in sound.encode(audio):
                    out.mux(packet)
                wav.write(-block.T)
                at += n
        for stream in (picture, sound):
            for packet in stream.encode(None):
                out.mux(packet)
    partial.rename(film)
    print(f"built {film.name} and {mix.name} in {time.time() - started:.0f} s", flush=True)
    return film, mix


def run_child(argv: list[str]) -> dict:
    """Run ``argv`` under /usr/bin/time: wall, CPU and peak RSS of that command alone (getrusage of a
    child forked from this process would count this process's memory, which the fork copies until
    the exec), and its resident memory sampled every 50 ms from /proc, to show it flat over the run."""
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "TIME %e %U %S %M", *argv],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split() \
                if Path(f"/proc/{proc.pid}").exists() else []:
            try:
                status = Path(f"/proc/{child}/status").read_text()
                samples.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))))
            except (OSError, StopIteration):
                pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read()
    line = next((l for l in stderr.splitlines() if l.startswith("TIME ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {stderr[-500:]}")
    _, elapsed, user, system, peak_kb = line.split()
    tenths = [round(samples[min(len(samples) - 1, i * len(samples) // 10)] / 1024) for i in range(10)] if samples else []
    return {"wall_s": round(float(elapsed), 2), "cpu_s": round(float(user) + float(system), 2),
            "peak_rss_mb": round(int(peak_kb) / 1024, 1), "rss_mb_by_tenth_of_run": tenths,
            "wall_with_sampling_s": round(wall, 2)}


def remux_command(film: Path, mix: Path, out: Path, minutes: int) -> list[str]:
    code = ("import sys; from pathlib import Path; from bridge.daw import video; "
            f"video.remux(Path({str(film)!r}), Path({str(mix)!r}), Path({str(out)!r}), frames={minutes * 60 * SR})")
    return [sys.executable, "-c", code]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--size", default="160x90")
    parser.add_argument("--audio", choices=["aac", "pcm"], default="aac")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("/work/bench-cache/results/remux.json"))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    folder = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "remux"
    folder.mkdir(parents=True, exist_ok=True)
    results = {"load": os.getloadavg(), "size": args.size, "audio": args.audio, "runs": []}
    for minutes in args.minutes:
        film, mix = build(folder, minutes, size, args.audio)
        out = folder / f"out-{minutes}min{film.suffix}"
        for repeat in range(args.repeats):  # stembridge and ffmpeg alternate (A B A B), under the same load
            row = {"minutes": minutes, "repeat": repeat, "film_mb": round(film.stat().st_size / 2**20, 1),
                   "load_before": [round(v, 2) for v in os.getloadavg()]}
            row["stembridge"] = run_child(remux_command(film, mix, out, minutes))
            if shutil.which("ffmpeg"):
                row["ffmpeg"] = run_child(["ffmpeg", "-v", "error", "-y", "-i", str(film), "-i", str(mix), "-map", "0:v",
                                           "-map", "1:a", "-c:v", "copy",
                                           *(["-c:a", "aac", "-b:a", "192k"] if args.audio == "aac"
                                             else ["-c:a", "pcm_s16le"]), "-shortest", str(folder / f"ffmpeg-{minutes}min{film.suffix}")])
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
        out.unlink(missing_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print(f"{'min':>4} {'stembridge wall':>16} {'cpu':>7} {'peak MB':>8} | {'ffmpeg wall':>12} {'peak MB':>8}")
    for row in results["runs"]:
        s, f = row["stembridge"], row.get("ffmpeg", {})
        print(f"{row['minutes']:>4} {s['wall_s']:>15.1f}s {s['cpu_s']:>6.1f}s {s['peak_rss_mb']:>8.0f} | "
              f"{f.get('wall_s', float('nan')):>11.1f}s {f.get('peak_rss_mb', float('nan')):>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
