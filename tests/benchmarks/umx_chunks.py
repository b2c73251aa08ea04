"""How far stembridge's chunked Open-Unmix is from the same model run over the whole track at once.

    python tests/benchmarks/umx_chunks.py [--song FILE] [--hidden 512] [--configs 6,4,6:0.1]

openunmix runs its bidirectional LSTM (and the Wiener step, in 300-frame windows) over the whole
song; stembridge runs chunks of N filter windows (the card's default 6: 41.8 s), drops one window
at each chunk edge and abuts the kept parts, so that memory stays flat. A config ``N`` is N
windows per chunk with that default geometry; ``N:OVERLAP`` passes ``overlap`` (cross-fading the
kept parts, which moves the chunks off the filter's window grid) for contrast. This builds umxhq's shape
(4 targets, hidden 512, random weights: no published weights can be downloaded here) with
openunmix's own classes, imports it, and separates the song (default Karissa Hobbs, "Let's Go
Fishin'", 133 s) twice: whole (one chunk as long as the song, the engine called directly, which
is what openunmix does) and streamed with each configuration. Prints the SNR
of each chunked stem against the whole-track stem, over the whole song and away from its first
and last 10 s, and the seconds each took (process CPU and wall).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import umx_models  # noqa: E402

from bridge import load_separator  # noqa: E402
from bridge.importers.umx import import_umx  # noqa: E402
from bridge.separation import umx  # noqa: E402
from bridge.separation.models import load_card  # noqa: E402

SONG = Path("/work/shared/data/fullmix/karissa-hobbs-lets-go-fishin.ogg")


def snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - estimate) ** 2), 1e-30)))


def with_chunk(card_path: Path, out: Path, samples: int) -> Path:
    data = yaml.safe_load(card_path.read_text())
    data["chunk_size"], data["dim_t"] = samples, samples // data["hop"] + 1
    data["file"] = str(card_path.with_suffix(".onnx"))
    out.write_text(yaml.safe_dump(data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--song", type=Path, default=SONG)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--configs", default="6,4,6:0.1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    audio, rate = sf.read(str(args.song), dtype="float32", always_2d=True)
    assert rate == 44100
    audio = np.ascontiguousarray(audio.T)
    audio = audio[:, : audio.shape[1] // 1024 * 1024]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        nets = {t: umx_models.random_target(hidden_size=args.hidden, seed=i)
                for i, t in enumerate(("vocals", "drums", "bass", "other"))}
        folder = umx_models.save_model(scratch / "umxhq", nets, hidden_size=args.hidden)
        done = import_umx(folder, folder=scratch / "models")
        whole_card = load_card(with_chunk(done.card, scratch / "whole.yaml", audio.shape[1]))
        engine = umx.UmxEngine(whole_card, threads=args.threads)
        t0, c0 = time.perf_counter(), time.process_time()
        whole = {k: v[0] for k, v in engine.run(audio[None]).items()}
        print(f"whole track ({audio.shape[1] / rate:.1f} s): {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time() - c0:.1f} s CPU")
        inner = slice(10 * rate, audio.shape[1] - 10 * rate)
        for config in args.configs.split(","):
            windows, _, overlap = config.partition(":")
            chunk = int(windows) * 300 * 1024
            card = load_card(with_chunk(done.card, scratch / "chunked.yaml", chunk))
            separator = load_separator(card, threads=args.threads, overlap=float(overlap) if overlap else None)
            t0, c0 = time.perf_counter(), time.process_time()
            stems = separator(audio, rate)
            seconds = time.perf_counter() - t0, time.process_time() - c0
            row = ", ".join(f"{s} {snr(whole[s], stems[s]):.1f} / {snr(whole[s][:, inner], stems[s][:, inner]):.1f}"
                            for s in whole)
            print(f"chunk {chunk / rate:.1f} s ({windows} windows), trim {separator.plan.trim / rate:.1f} s, overlap "
                  f"{separator.plan.overlap:g} (step {separator.plan.step / rate:.1f} s): {seconds[0]:.1f} s wall, "
                  f"{seconds[1]:.1f} s CPU; SNR vs whole track, whole song / away from the first and last 10 s: {row}",
                  flush=True)

if __name__ == "__main__":
    main()
