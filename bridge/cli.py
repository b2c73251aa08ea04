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
from .errors import BridgeError, ModelError, PresetError

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


def _warn_clipped(target: Path, count: int) -> None:
    from .render import clipping_message

    print(f"stembridge: warning: {clipping_message(target, count)}", file=sys.stderr)


def cmd_separate(args) -> int:
    from .render import SeparateOptions, run_many, separate_file
    from .separation import load_separator

    separator = load_separator(args.model, overlap=args.overlap, batch_size=args.batch_size, threads=args.threads,
                               denoise=args.denoise, invert=args.invert, wiener=args.wiener)
    stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
    options = SeparateOptions(out_dir=Path(args.out), template=args.name, ext=args.format,
                              bit_depth=args.bit_depth, stems=stems)
    show = sys.stderr.isatty() and not args.quiet

    def job(path: Path):
        update, close = _progress(path.name, show)
        try:
            written = separate_file(path, separator, options, progress=update, on_clip=_warn_clipped)
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


def _report_file(name: str, written: dict, manifest_path) -> None:
    import json

    outputs = json.loads(manifest_path.read_text(encoding="utf-8"))["outputs"]
    for label, target in written.items():
        if label == "manifest":
            continue
        stats = outputs[label]
        loud = "-inf" if stats["loudness_lufs"] is None else f"{stats['loudness_lufs']:.1f}"
        peak = "-inf" if stats["true_peak_dbtp"] is None else f"{stats['true_peak_dbtp']:.1f}"
        print(f"{name}: {label} -> {target} ({loud} LUFS, true peak {peak} dBTP)")
        if stats["clipped_samples"]:
            print(f"stembridge: warning: {target}: {stats['clipped_samples']} samples were over full scale and "
                  "clipped; lower a gain, add a Limiter to master, or set output.loudness_lufs", file=sys.stderr)


def _separator_card(session):
    """The session's model card, with model errors named by the preset key they come from."""
    from .models import resolve
    from .separation import check_wiener_fits

    try:
        card = resolve(session.separator.model)
    except ModelError as exc:
        raise PresetError(f"{session.source}: separator.model: {exc}") from exc
    try:
        check_wiener_fits(card, session.separator.wiener)
    except ModelError as exc:
        raise PresetError(f"{session.source}: separator.wiener: {exc}") from exc
    return card


def _session_graph(args):
    from .graph import RenderGraph
    from .separation import load_separator
    from .session import load

    session = load(args.preset, overrides=args.set or ())
    sep = session.separator
    card = _separator_card(session)
    try:
        separator = load_separator(card, overlap=sep.overlap, batch_size=sep.batch_size, threads=args.threads,
                                   wiener=sep.wiener)
    except ModelError as exc:  # a missing or corrupt model file: the model key's
        raise PresetError(f"{session.source}: separator.model: {exc}") from exc
    graph = RenderGraph(session, separator)
    graph.check()  # every plugin loads before any audio work
    return graph


def cmd_render(args) -> int:
    from .render import render_file, run_many

    graph = _session_graph(args)
    show = sys.stderr.isatty() and not args.quiet

    def job(path: Path):
        update, close = _progress(path.name, show)
        try:
            written = render_file(path, graph, Path(args.out), progress=update)
        finally:
            close()
        if not args.quiet:
            _report_file(path.name, written, written["manifest"])
        return written

    _, failures = run_many(args.inputs, job, fail_fast=args.fail_fast, on_error=lambda p, e: _error(str(e)))
    if failures and len(args.inputs) > 1:
        _error(f"{len(failures)} of {len(args.inputs)} inputs failed")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_preset_check(args) -> int:
    from . import effects
    from .graph import check_stem_names
    from .session import load

    for preset in args.presets:
        session = load(preset, overrides=args.set or ())
        card = _separator_card(session)
        check_stem_names(session, card.stems, model=card.name)
        effects.build_chain(session.pre, where=f"{preset}: pre")
        effects.build_chain(session.master, where=f"{preset}: master")
        for name, stem in session.stems:
            effects.build_chain(stem.chain, where=f"{preset}: stems.{name}.chain")
        o = session.output
        print(f"{preset}: ok (model {card.name}, stems {', '.join(card.stems)}, {o.layout} {o.format}"
              f" {o.bit_depth}-bit)")
    return EXIT_OK


def cmd_effects(args) -> int:
    from .effects import builtin_effects, builtin_parameters

    print("pedalboard built-in effects and their parameters (use as {effect: Name, parameter: value}):")
    for name, cls in builtin_effects().items():
        print(f"  {name:<18} {', '.join(builtin_parameters(cls)) or '(none)'}")
    print("VST3 plugins: {vst3: path/to/Plugin.vst3, params: {name: value}, preset: file.vstpreset}")
    return EXIT_OK


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .separation import load_separator

    if args.model == "oracle" and args.wiener:
        raise ModelError("--wiener applies to mask models; the oracle is the references' ideal ratio mask, "
                         "drop --wiener with --model oracle")
    if args.model == "no-split":
        from .evaluate import NoSplit
        separator = NoSplit(load_separator("default", overlap=args.overlap, threads=args.threads, wiener=args.wiener))
    else:
        separator = "oracle" if args.model == "oracle" else load_separator(args.model, overlap=args.overlap,
                                                                            threads=args.threads, wiener=args.wiener)
    update, close = _progress(f"eval {args.model}", sys.stderr.isatty() and not args.quiet)
    try:
        report = evaluate(separator, args.references, progress=update)
    finally:
        close()
    print(report.table())
    if not args.quiet:
        for note in report.notes:
            print(f"stembridge: note: {note}", file=sys.stderr)
    if args.json:
        target = report.write_json(args.json)
        if not args.quiet:
            print(f"scores -> {target}")
    return EXIT_OK


def cmd_models(args) -> int:
    from .models import DEFAULT_4STEMS, DEFAULT_MODEL, known_cards, search_paths

    print("Model cards (name, family, stems, file):")
    for name, card in sorted(known_cards().items()):
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {card.describe()}{mark}")
    print("  dsp                          dsp   vocals/instrumental              (no weights; weight-free fallback)")
    print(f"  {DEFAULT_4STEMS:<28} hpss  vocals/drums/bass/other          ({DEFAULT_MODEL} vocals + a DSP split of "
          "the rest by HPSS; not a 4-stem model; also gives instrumental = drums+bass+other)")
    print("Also accepted: a path to a card .yaml, or to a UVR MDX-Net .onnx file (recognised by its hash).")
    print("Searched folders ($STEMBRIDGE_MODELS first):")
    for folder in search_paths():
        print(f"  {folder}")
    return EXIT_OK


def cmd_models_import(args) -> int:
    from .importers import import_model

    done = import_model(args.path, name=args.name, force=args.force, bins=args.bins, fp32=args.fp32)
    print(f"{args.path}: imported as '{done.name}' ({len(done.stems)} stems: {', '.join(done.stems)}; "
          f"{done.bins} bins) in {done.seconds:.1f} s -> {done.card}")
    print(f"use it with: stembridge separate --model {done.name} SONG")
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
    sep.add_argument("--wiener", type=int, default=0, metavar="N",
                     help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    sep.add_argument("--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it")
    sep.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sep.set_defaults(run=cmd_separate)

    ren = commands.add_parser("render", help="render songs through a session preset (split, stem chains, mix)")
    ren.add_argument("preset", help="session preset .yaml (see presets/)")
    ren.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff)")
    ren.add_argument("--out", default="rendered", help="output folder (default: %(default)s)")
    ren.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a preset value, e.g. --set stems.vocals.gain_db=6 (repeatable)")
    ren.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    ren.add_argument("--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it")
    ren.add_argument("--quiet", action="store_true", help="print nothing but errors")
    ren.set_defaults(run=cmd_render)

    ev = commands.add_parser("eval", help="score a model against reference stems (SDR, SI-SDR)")
    ev.add_argument("--model", default="default",
                    help="model name, card .yaml or .onnx path, 'dsp', or 'oracle' (the ideal ratio mask of the "
                         "references: a yardstick, not a model), or 'no-split' (the default model's instrumental "
                         "as each of drums, bass, other: the 4-stem baseline) (default: %(default)s)")
    ev.add_argument("--references", required=True, metavar="DIR",
                    help="folder of songs, searched recursively: <song>/mixture.<ext> beside <song>/<stem>.<ext>")
    ev.add_argument("--json", metavar="FILE", help="also write the scores to FILE as JSON")
    ev.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    ev.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    ev.add_argument("--wiener", type=int, default=0, metavar="N",
                    help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    ev.add_argument("--quiet", action="store_true", help="print the table only (no progress, no notes)")
    ev.set_defaults(run=cmd_eval)

    preset = commands.add_parser("preset", help="work with session presets")
    preset_commands = preset.add_subparsers(dest="preset_command", required=True)
    check = preset_commands.add_parser("check", help="validate presets without rendering (loads every plugin)")
    check.add_argument("presets", nargs="+", help="preset .yaml files")
    check.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value first")
    check.set_defaults(run=cmd_preset_check)

    fx = commands.add_parser("effects", help="list the built-in effects a preset can name")
    fx.set_defaults(run=cmd_effects)

    models = commands.add_parser("models", help="list known models and where they are looked for; import one")
    models.set_defaults(run=cmd_models)
    models_commands = models.add_subparsers(dest="models_command")
    imp = models_commands.add_parser("import", help="convert a Spleeter TensorFlow checkpoint (2/4/5 stems) "
                                                    "into the user model folder")
    imp.add_argument("path", help="checkpoint folder (model.index, model.data-*, model.meta) or its .tar.gz")
    imp.add_argument("--name", help="model name (default: spleeter-4stems etc. from the stem count)")
    imp.add_argument("--force", action="store_true", help="replace a model of the same name")
    imp.add_argument("--bins", type=int, choices=[1024, 1536],
                     help="band of the nets if model.meta is missing: 1024 (11 kHz) or 1536 (-16kHz models)")
    imp.add_argument("--fp32", action="store_true", help="store float32 weights (twice the size)")
    imp.set_defaults(run=cmd_models_import)
    return parser


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks instead of handing them back to the kernel.

    Each chunk allocates a few arrays of 6-13 MB and frees them; by default glibc returns such
    blocks to the kernel, and the next chunk pays a page fault for every 4 KiB of them again
    (about 0.5 s of system time per 4 minutes of audio with an MDX model). Peak memory grows by
    a few MB (253 -> 262 MB measured); the command owns its process, so it may choose. A no-op
    where glibc is not the C library.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for this setting on 64-bit
    mallopt(M_TRIM_THRESHOLD, 512 << 20)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _keep_freed_memory()
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
