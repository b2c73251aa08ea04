"""A remix built in Python: louder vocals with a compressor and reverb, quieter backing.

    python examples/remix.py examples/demo.flac out/

Renders ``out/<song>.remix.flac`` (and a manifest beside it) with the embedded default model,
streaming, so it works the same on an album of long songs. Change the chains to any pedalboard
plugins, including VST3 ones (``pedalboard.load_plugin("path/to/Plugin.vst3")``).
"""

import sys
from pathlib import Path

from pedalboard import Compressor, HighShelfFilter, Limiter, Pedalboard, Reverb

from bridge import OutputSettings, RenderGraph, Session, StemSettings, load_separator, render_file


def main(song: str, out_dir: str) -> None:
    session = Session(
        stems=(("vocals", StemSettings(gain_db=3.0, pan=0.0)),
               ("instrumental", StemSettings(gain_db=[(0.0, -2.0), (10.0, -6.0)]))),  # duck the backing over 10 s
        output=OutputSettings(format="flac", bit_depth=24, mix="{track}.remix.{ext}", tail_seconds=2.0),
    )
    chains = {
        "vocals": Pedalboard([Compressor(threshold_db=-18, ratio=3), Reverb(room_size=0.5, wet_level=0.2)]),
        "instrumental": Pedalboard([HighShelfFilter(cutoff_frequency_hz=8000, gain_db=-3)]),
    }
    graph = RenderGraph(session, load_separator("default"), chains=chains,
                        master=Pedalboard([Limiter(threshold_db=-1.0)]))
    for label, path in render_file(song, graph, Path(out_dir)).items():
        print(f"{label}: {path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/remix.py SONG OUT_DIR")
    main(sys.argv[1], sys.argv[2])
