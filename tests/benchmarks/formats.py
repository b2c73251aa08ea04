"""Decoding cost of the PyAV inputs against libsndfile's FLAC, and memory over a 60-minute file.

    python tests/benchmarks/formats.py [--song /work/bench25/songs/fishin_loop_4min.wav] [--rounds 3]
    python tests/benchmarks/formats.py --memory-minutes 4 60

1. Speed: the song is encoded (once, cached in $STEMBRIDGE_BENCH_CACHE/formats, default
   /work/bench-cache/formats) to AAC-LC 256 kbit/s m4a and ALAC m4a with PyAV's encoders, and to
   16-bit FLAC with libsndfile; each is then read through :func:`bridge.audio.files.stream` in
   10-second blocks, as a render reads a song, in rounds of A B C (FLAC, AAC, ALAC), each read in
   a fresh process so no file cache of ours is warm. ``info`` (the exact length: a decode-count for
   AAC, packet durations for ALAC, the header for FLAC) and the streamed read are timed apart.
2. Memory: an mp4 with a 64x64 H.264 video track (1 frame/s) and AAC audio of N minutes (the song
   looped) is read end to end in a fresh process; its peak RSS (``ru_maxrss``) is printed beside
   the RSS once the modules are imported, for each N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STEMBRIDGE_BENCH_CACHE", "/work/bench-cache")) / "formats"
SONG = Path("/work/bench25/songs/fishin_loop_4min.wav")

READ = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from bridge.audio import files
path = {path!r}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); header = files.info(path); t1 = time.perf_counter()
frames = 0
block = int(10 * header.sample_rate)
for b in files.stream(path, block_frames=block):
    frames += b.shape[1]
t2 = time.perf_counter()
assert frames == header.frames
print(json.dumps({{"info_s": t1 - t0, "stream_s": t2 - t1, "frames": frames, "rate": header.sample_rate,
                  "rss_base_mb": base / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _encode(av, source, target: Path, codec: str, *, fmt: str, bit_rate=None, video_minutes: float = 0, loops=1):
    """Encode ``source`` (a wav, looped ``loops`` times) into ``target`` with PyAV, block by block."""
    import soundfile as sf

    partial = target.with_name(f".{target.name}.partial")
    with av.open(str(partial), "w", format="mp4") as out, sf.SoundFile(str(source)) as f:
        video = None
        if video_minutes:
            video = out.add_stream("libx264", rate=1)
            video.width = video.height = 64
            video.pix_fmt = "yuv420p"
        stream = out.add_stream(codec, rate=f.samplerate, layout="stereo")
        if bit_rate:
            stream.bit_rate = bit_rate
        size = stream.codec_context.frame_size or 4096
        pts = 0
        seconds_done = 0
        for _ in range(loops):
            f.seek(0)
            for block in f.blocks(blocksize=size * 64, dtype="float32", always_2d=True):
                data = block.T
                if fmt == "s16p":
                    data = np.round(np.clip(data, -1, 1) * 32767).astype(np.int16)
                for start in range(0, data.shape[1], size):
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + size]),
                                                       format=fmt, layout="stereo")
                    frame.sample_rate = f.samplerate
                    frame.pts = pts
                    pts += frame.samples
                    for packet in stream.encode(frame):
                        out.mux(packet)
                while video is not None and seconds_done * f.samplerate < pts:
                    picture = np.full((64, 64, 3), seconds_done % 256, np.uint8)
                    vf = av.VideoFrame.from_ndarray(picture, format="rgb24")
                    vf.pts = seconds_done
                    seconds_done += 1
                    for packet in video.encode(vf):
                        out.mux(packet)
        for s in ([video] if video is not None else []) + [stream]:
            for packet in s.encode(None):
                out.mux(packet)
    partial.replace(target)


def prepare(song: Path) -> dict[str, Path]:
    import av
    import soundfile as sf

    CACHE.mkdir(parents=True, exist_ok=True)
    made = {"flac": CACHE / f"{song.stem}.flac", "aac": CACHE / f"{song.stem}.aac.m4a",
            "alac": CACHE / f"{song.stem}.alac.m4a"}
    if not made["flac"].exists():
        with sf.SoundFile(str(song)) as f, sf.SoundFile(str(made["flac"]), "w", samplerate=f.samplerate,
                                                        channels=f.channels, subtype="PCM_16") as out:
            for block in f.blocks(blocksize=1 << 18, dtype="float32"):
                out.write(block)
    if not made["aac"].exists():
        _encode(av, song, made["aac"], "aac", fmt="fltp", bit_rate=256_000)
    if not made["alac"].exists():
        _encode(av, song, made["alac"], "alac", fmt="s16p")
    return made


def read_once(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", READ.format(repo=str(REPO), path=str(path))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(song: Path, rounds: int) -> None:
    made = prepare(song)
    runs: dict[str, list[dict]] = {k: [] for k in made}
    for _ in range(rounds):
        for kind, path in made.items():  # A B C, A B C, ...
            runs[kind].append(read_once(path))
    print(f"load: {os.getloadavg()}")
    print(f"{'input':<6} {'MB':>7} {'info s':>8} {'stream s':>9} {'x real time':>12} {'peak MB':>8}")
    for kind, results in runs.items():
        seconds = results[0]["frames"] / results[0]["rate"]
        info = statistics.median(r["info_s"] for r in results)
        read = statistics.median(r["stream_s"] for r in results)
        peak = max(r["rss_peak_mb"] for r in results)
        print(f"{kind:<6} {made[kind].stat().st_size / 1e6:>7.1f} {info:>8.3f} {read:>9.3f} "
              f"{seconds / (info + read):>12.0f} {peak:>8.0f}")


def memory(song: Path, minutes: list[int]) -> None:
    import av
    import soundfile as sf

    length = sf.info(str(song)).duration / 60
    print(f"load: {os.getloadavg()}")
    print(f"{'minutes':>7} {'MB':>8} {'info s':>8} {'stream s':>9} {'RSS after import MB':>20} {'peak RSS MB':>12}")
    for m in minutes:
        loops = max(1, int(round(m / length)))
        path = CACHE / f"{song.stem}.video-{m}min.mp4"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            _encode(av, song, path, "aac", fmt="fltp", bit_rate=192_000, video_minutes=m, loops=loops)
        r = read_once(path)
        print(f"{r['frames'] / r['rate'] / 60:>7.1f} {path.stat().st_size / 1e6:>8.1f} {r['info_s']:>8.2f} "
              f"{r['stream_s']:>9.2f} {r['rss_base_mb']:>20.0f} {r['rss_peak_mb']:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--song", type=Path, default=SONG)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-minutes", type=int, nargs="*", default=None)
    args = parser.parse_args()
    if args.memory_minutes:
        memory(args.song, args.memory_minutes)
    else:
        speed(args.song, args.rounds)


if __name__ == "__main__":
    main()
