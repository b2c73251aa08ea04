"""The ``stembridge`` command: parse arguments, call the library, report errors in one line.

Exit codes: 0 success; 2 bad input or a failed file (the message says which and how to fix it);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import BridgeError

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 130


def _progress(label: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, desc=label, unit="%", leave=False, file=sys.stderr,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(done: int, total: int) -> None:
        bar.n = round(100 * done / max(total, 1))
        bar.refresh()

    return update, bar.close


def _error(message: str) -> None:
    print(f"stembridge: error: {message}", file=sys.stderr)


def cmd_separate(args) -> int:
    from .render import SeparateOptions, run_many, separate_file
    from .separation import load_separator

    separator = load_separator(args.model, overlap=args.overlap, batch_size=args.batch_size, threads=args.threads,
                               denoise=args.denoise, invert=args.invert)
    stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
    options = SeparateOptions(out_dir=Path(args.out), template=args.name, ext=args.format,
                              bit_depth=args.bit_depth, stems=stems)
    show = sys.stderr.isatty() and not args.quiet

    def job(path: Path):
        update, close = _progress(path.name, show)
        try:
            written = separate_file(path, separator, options, progress=update)
        finally:
            close()
        if not args.quiet:
            for stem, target in written.items():
                print(f"{path.name}: {stem} -> {target}")
        return written

    _, failures = run_many(args.inputs, job, fail_fast=args.fail_fast, on_error=lambda p, e: _error(str(e)))
    if failures and len(args.inputs) > 1:
        _error(f"{len(failures)} of {len(args.inputs)} inputs failed")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_models(args) -> int:
    from .models import DEFAULT_MODEL, known_cards, search_paths

    print("Model cards (name, family, stems, file):")
    for name, card in sorted(known_cards().items()):
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {card.describe()}{mark}")
    print("  dsp                          dsp   vocals/instrumental              (no weights; weight-free fallback)")
    print("Also accepted: a path to a card .yaml, or to a UVR MDX-Net .onnx file (recognised by its hash).")
    print("Searched folders ($STEMBRIDGE_MODELS first):")
    for folder in search_paths():
        print(f"  {folder}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stembridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stembridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    sep = commands.add_parser("separate", help="split songs into stem files")
    sep.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff)")
    sep.add_argument("--model", default="default", help="model name, card .yaml or .onnx path, or 'dsp' (default: %(default)s)")
    sep.add_argument("--out", default="separated", help="output folder (default: %(default)s)")
    sep.add_argument("--name", default="{track}/{stem}.{ext}", help="output name template (default: %(default)s)")
    sep.add_argument("--stems", help="comma-separated stems to write (default: all the model gives)")
    sep.add_argument("--format", default="wav", choices=["wav", "flac", "ogg", "mp3", "aiff"])
    sep.add_argument("--bit-depth", type=int, default=24, choices=[16, 24, 32], help="PCM bits; 32 = float (default: %(default)s)")
    sep.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    sep.add_argument("--batch-size", type=int, default=1, help="chunks per model call (default: %(default)s)")
    sep.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    sep.add_argument("--denoise", action="store_true", help="MDX-Net: average model(x) and -model(-x)")
    sep.add_argument("--invert", action="store_true", help="MDX-Net: spectral inversion for the other stem")
    sep.add_argument("--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it")
    sep.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sep.set_defaults(run=cmd_separate)

    models = commands.add_parser("models", help="list known models and where they are looked for")
    models.set_defaults(run=cmd_models)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BridgeError as exc:
        if args.debug:
            traceback.print_exc()
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted; no partial output was left under a final name")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
