"""What the plugin host costs: automation lanes and an instrument layer, on a 4-minute song.

    python tests/benchmarks/host_cost.py [--minutes 4] [--repeats 3] [--model default] [--cache DIR]

Renders the same synthetic song (``inputs.song``) through the same chains with ``render_file``:

- ``plain``: vocals through a Compressor, master through ZamCompX2 (a real VST3 built by
  ``tests/plugins/thirdparty.py``), fixed parameters;
- ``lanes``: the same with four active lanes: vocals gain (per sample), instrumental pan (per
  sample), the Compressor's threshold and ZamCompX2's threshold (both set every 5 ms, their
  chains run in 5 ms blocks);
- ``layer``: ``plain`` plus one Nekobi layer playing eighth notes at 120 bpm for the whole song.

Runs are interleaved (plain, lanes, layer per repeat) so they share the machine's load; the
medians are printed, with the separator's own time (``separate_file``) per stem to compare a
layer against. Needs the third-party plugins (built into tests/.cache/thirdparty).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mido

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import inputs  # noqa: E402
import vst3  # noqa: E402

from bridge.render.graph import RenderGraph
from bridge.render.song import render_file
from bridge.render.separate import SeparateOptions, separate_file
from bridge.separation import load_separator  # noqa: E402
from bridge.preset.session import load

PLAIN = """version: 1
separator: {{model: {model}}}
stems:
  vocals: {{chain: [{{effect: Compressor, threshold_db: -18, ratio: 3}}]}}
master: [{{vst3: {zam}, params: {{threshold_db: -12.0}}}}]
output: {{tail_seconds: 0}}
"""
LANES = """automation:
  stems.vocals.gain_db: [[0, -6], [{end}, 0]]
  stems.instrumental.pan: [[0, -0.5], [{end}, 0.5]]
  stems.vocals.chain[0].threshold_db: [[0, -30], [{end}, -10]]
  master[0].threshold_db: [[0, -20], [{end}, -6]]
"""
LAYER = """layers:
  bass: {{instrument: {{vst3: {nekobi}}}, midi: {midi}, gain_db: -12}}
"""


def eighths(path: Path, seconds: float) -> Path:
    """Eighth notes at 120 bpm (a bass line on A, C, D, E) for ``seconds``."""
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for i in range(int(seconds * 4)):
        note = (45, 48, 50, 52)[i % 4]
        track.append(mido.Message("note_on", note=note, velocity=100, time=0 if i == 0 else 40))
        track.append(mido.Message("note_off", note=note, velocity=0, time=200))
    mid.save(path)
    return path


def timed(job) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: user + sys, every thread)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    job()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "stembridge-host-bench")
    args = parser.parse_args(argv)
    plugins = vst3.build_third_party()
    song = inputs.song(args.cache / f"song-{args.minutes:g}min.wav", args.minutes)
    seconds = args.minutes * 60
    midi = eighths(args.cache / "bass.mid", seconds)
    texts = {"plain": PLAIN.format(model=args.model, zam=plugins["ZamCompX2"])}
    texts["lanes"] = texts["plain"] + LANES.format(end=seconds)
    texts["layer"] = texts["plain"] + LAYER.format(nekobi=plugins["Nekobi"], midi=midi)
    separator = load_separator(args.model)
    graphs = {}
    for name, text in texts.items():
        preset = args.cache / f"{name}.yaml"
        preset.write_text(text)
        graphs[name] = RenderGraph(load(preset), separator)
        graphs[name].check()
    times = {name: [] for name in [*texts, "separate"]}
    for _ in range(args.repeats):
        for name, graph in graphs.items():
            times[name].append(timed(lambda: render_file(song, graph, args.cache / "out" / name)))
        options = SeparateOptions(out_dir=args.cache / "out" / "separate")
        times["separate"].append(timed(lambda: separate_file(song, separator, options)))
    print(f"{args.minutes:g}-minute stereo song, model {args.model}, {args.repeats} repeats, medians "
          "(wall s / CPU s of the process):")
    for name, values in times.items():
        wall, cpu = (statistics.median(v[i] for v in values) for i in (0, 1))
        print(f"  {name:<9} {wall:7.2f} / {cpu:7.2f}   (all: {', '.join(f'{w:.2f}/{c:.2f}' for w, c in values)})")
    for i, label in ((0, "wall"), (1, "CPU")):
        median = {name: statistics.median(v[i] for v in values) for name, values in times.items()}
        extra = median["lanes"] / median["plain"] - 1
        layer = median["layer"] - median["plain"]
        per_stem = median["separate"] / len(separator.stems)
        print(f"{label}: 4 active lanes {100 * extra:+.1f} % over none (target < 15 %); instrument layer "
              f"{layer:+.2f} s against {per_stem:.2f} s per separator stem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
