"""The ``stembridge`` command: parse arguments, call the library, report errors in one line.

Exit codes: 0 success; 1 some songs failed (each named in one line) and all the others were
written; 2 a usage error found before any work (a bad preset, model, option or folder); 130
interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from . import console
from .version import __version__
from .errors import BridgeError, ModelError, PresetError

EXIT_OK, EXIT_SOME_FAILED, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


def cmd_separate(args) -> int:
    from .batch import RunSpec

    stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
    spec = RunSpec(kind="separate", out_dir=Path(args.out), model=args.model, overlap=args.overlap,
                   batch_size=args.batch_size, device=args.device, denoise=args.denoise, invert=args.invert, wiener=args.wiener,
                   stems=stems, template=args.name, ext=args.format, bit_depth=args.bit_depth, bwf=not args.no_bwf,
                   project=args.project, **_batch_options(args))
    _check_model(args)
    return _run(args, spec, device=_check_device(args.device, scheduler=args.scheduler))


def cmd_render(args) -> int:
    from .batch import RunSpec

    console.show_layer_warnings()
    if args.project:  # --project reaper is --set output.project=reaper
        args.set = [*(args.set or ()), f"output.project={args.project}"]
    session = _check_session(args.preset, args.set or ())
    device = args.device or session.separator.device  # --device overrides the preset's
    spec = RunSpec(kind="render", out_dir=Path(args.out), preset=args.preset, overrides=tuple(args.set or ()),
                   device=device, **_batch_options(args))
    album = session.output.loudness_scope == "album" and session.output.loudness_lufs is not None
    try:
        resolved = _check_device(device, scheduler=args.scheduler)
    except BridgeError as exc:
        if args.device:
            raise
        raise PresetError(f"{session.source}: separator.device: {exc}") from None  # the preset's choice
    return _run(args, spec, album=album, device=resolved)


def _check_device(asked: str, *, scheduler: str | None = None):
    """The device, refused in one line before any work if it cannot run here (exit 2).

    With ``--scheduler`` the workers' machines decide; only the name's form is checked here.
    """
    from .separation.devices import check_device, parse_device, side_by_side_warning

    clash = side_by_side_warning()  # a broken install breaks the CPU too: say it on every run
    if clash:
        console.say(f"stembridge: warning: {clash}", file=sys.stderr)
    if scheduler:
        parse_device(asked)
        return None
    return check_device(asked)


def _check_model(args) -> None:
    """The model and settings of ``separate``, checked before any work without loading the model."""
    from .separation.models import resolve, verify_file
    from .separation import _check_settings, check_wiener_fits, families
    from .separation.mask import check_wiener

    wiener = check_wiener(args.wiener)
    _check_settings(overlap=args.overlap, batch_size=args.batch_size, threads=args.threads)
    card = resolve(args.model)
    check_wiener_fits(card, wiener)
    if families.family(card.family).weights:
        verify_file(card)


def _jobs(args, *, songs: int) -> int:
    from .batch.executors import auto_jobs

    if args.jobs == "auto":
        return auto_jobs(songs)
    return args.jobs


def _batch_options(args) -> dict:
    from .render.cache import default_location, default_max_gb

    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_location()
    max_gb = default_max_gb() if args.cache_max_gb is None else args.cache_max_gb
    return {"threads": args.threads, "cache_dir": cache_dir, "cache_max_gb": max_gb, "force": args.force}


def _check_session(preset, overrides):
    """Validate a preset as ``preset check`` does, and its model file, without loading the model."""
    from .batch.jobs import check_session, separator_card
    from .separation import families
    from .separation.models import verify_file
    from .preset.session import load

    session = load(preset, overrides=overrides)
    card = separator_card(session)
    try:
        if families.family(card.family).weights:
            verify_file(card)
    except ModelError as exc:
        raise PresetError(f"{session.source}: separator.model: {exc}") from exc
    check_session(session)
    return session


def _run(args, spec, *, album: bool = False, device=None) -> int:
    """Discover the songs, run them, print one line per song and the summary; the exit code."""
    import dataclasses

    from .batch import discover, run_batch, write_record
    from .batch.executors import threads_per_job
    from .batch.jobs import plan, worker_for

    songs, notes = discover(args.inputs, out_dir=Path(args.out))
    songs = plan(spec, songs)
    jobs = _jobs(args, songs=len(songs))
    spec = dataclasses.replace(spec, threads=threads_per_job(jobs, args.threads))
    if jobs == 1 and not args.scheduler:
        worker_for(spec)  # the model and plugins load here, before any song: their errors are usage errors
    for note in notes:
        console.say(f"stembridge: warning: {note}", file=sys.stderr)
    show = sys.stderr.isatty() and not args.quiet
    overall = console.Overall(len(songs), sum(console.seconds(s.path) for s in songs) if show else 0.0, show)

    def on_event(kind, song, outcome):
        overall.done(outcome)
        if outcome.status == "failed":
            console.error(outcome.error)
            return
        if not args.quiet:
            console.report_song(console.label(song) if song else outcome.path.name, outcome, spec.kind)
        for target, count in outcome.clipped:
            console.warn_clipped(target, count)

    def progress_for(song):
        if not show:
            return None
        return overall.song(console.label(song))

    try:
        report = run_batch(spec, songs, jobs=jobs, scheduler=args.scheduler, album_loudness=album,
                           fail_fast=args.fail_fast, on_event=on_event, progress_for=progress_for)
    finally:
        overall.close()
    report.notes = notes
    report.device_note = device.note if device is not None else None
    write_record(report, Path(args.out))
    failures = report.failed
    if failures and len(songs) > 1:
        console.error(f"{len(failures)} of {len(songs)} inputs failed")
    if not args.quiet:
        for line in report.summary():
            if not line.startswith("  failed"):
                print(line)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def cmd_preset_check(args) -> int:
    from .batch.jobs import check_session
    from .preset.session import load

    for preset in args.presets:
        session = load(preset, overrides=args.set or ())
        card = check_session(session)
        o = session.output
        print(f"{preset}: ok (model {card.name}, stems {', '.join(card.stems)}, {o.layout} {o.format}"
              f" {o.bit_depth}-bit)")
    return EXIT_OK


def cmd_effects(args) -> int:
    from .host.effects import builtin_effects, builtin_parameters

    print("pedalboard built-in effects and their parameters (use as {effect: Name, parameter: value}):")
    for name, cls in builtin_effects().items():
        print(f"  {name:<18} {', '.join(builtin_parameters(cls)) or '(none)'}")
    print("VST3 plugins: {vst3: path/to/Plugin.vst3 or a name, params: {name: value}, preset: file.vstpreset}"
          " (stembridge plugins lists them)")
    return EXIT_OK


def cmd_plugins(args) -> int:
    from .host.plugins import listing, listing_json, search_folders

    folders = [Path(d) for d in args.dirs] if args.dirs else list(search_folders())
    infos = listing(folders)
    if args.json:
        print(listing_json(infos))
        return EXIT_OK
    print(f"VST3 plugins in {', '.join(map(str, folders))} (use as {{vst3: NAME, params: {{name: value}}}}):")
    for info in infos:
        print(f"  {info.line()}")
        for p in info.parameters:
            print(f"      {p.name:<22} {p.span()}, default {p.default}")
    if not infos:
        print("  (none found; add folders as arguments or to VST3_PATH)")
    return EXIT_OK


def cmd_eval(args) -> int:
    from .quality.evaluate import evaluate
    from .separation import load_separator

    _check_device(args.device)
    if args.model == "oracle" and args.wiener:
        raise ModelError("--wiener applies to mask models; the oracle is the references' ideal ratio mask, "
                         "drop --wiener with --model oracle")
    if args.model == "no-split":
        from .quality.evaluate import NoSplit
        separator = NoSplit(load_separator("default", overlap=args.overlap, threads=args.threads, wiener=args.wiener,
                                           device=args.device))
    else:
        separator = "oracle" if args.model == "oracle" else load_separator(args.model, overlap=args.overlap,
                                                                            threads=args.threads, wiener=args.wiener,
                                                                            device=args.device)
    update, close = console.progress(f"eval {args.model}", sys.stderr.isatty() and not args.quiet)
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


def cmd_doctor(args) -> int:
    from .separation.devices import doctor_lines

    for line in doctor_lines():
        print(line)
    return EXIT_OK


def cmd_models(args) -> int:
    from .separation import families
    from .separation.models import DEFAULT_MODEL, known_cards, search_paths

    print("Model cards (name, family, stems, file):")
    for name, card in sorted(known_cards().items()):
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {card.describe()}{mark}")
    for name in families.builtin_names():  # the weight-free ones, which no card file names
        print(f"  {families.builtin_card(name).describe()}")
    print("Also accepted: a path to a card .yaml, or to a UVR MDX-Net .onnx file (recognised by its hash).")
    print("Searched folders ($STEMBRIDGE_MODELS first):")
    for folder in search_paths():
        print(f"  {folder}")
    return EXIT_OK


def cmd_models_import(args) -> int:
    from .importers import import_model

    done = import_model(args.path, config=args.config, name=args.name, force=args.force, bins=args.bins,
                        fp32=args.fp32)
    detail = (f"{done.architecture}, ONNX vs torch {done.parity_db:.1f} dB" if hasattr(done, "parity_db")
              else f"{done.bins} bins")
    print(f"{args.path}: imported as '{done.name}' ({len(done.stems)} stems: {', '.join(done.stems)}; "
          f"{detail}) in {done.seconds:.1f} s -> {done.card}")
    print(f"use it with: stembridge separate --model {done.name} SONG")
    return EXIT_OK


def cmd_models_quantize(args) -> int:
    from .importers.quantize import quantize_model

    if args.fp16:
        from .importers.fp16 import fp16_model

        done = fp16_model(args.model, name=args.name, force=args.force)
        print(f"{args.model}: converted to float16 as '{done.name}' ({done.bytes_before / 1e6:.1f} -> "
              f"{done.bytes_after / 1e6:.1f} MB) in {done.seconds:.1f} s -> {done.card}")
        print(f"use it with: stembridge separate --model {done.name} --device cuda SONG (on a CPU float16 is "
              "usually slower)")
        return EXIT_OK
    done = quantize_model(args.model, name=args.name, force=args.force)
    print(f"{args.model}: quantized as '{done.name}' ({done.bytes_before / 1e6:.1f} -> {done.bytes_after / 1e6:.1f} MB) "
          f"in {done.seconds:.1f} s -> {done.card}")
    print(f"use it with: stembridge separate --model {done.name} SONG")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stembridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stembridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    sep = commands.add_parser("separate", help="split songs into stem files")
    sep.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff) and folders (walked recursively)")
    sep.add_argument("--model", default="default", help="model name, card .yaml or .onnx path, or 'dsp' (default: %(default)s)")
    sep.add_argument("--out", default="separated", help="output folder (default: %(default)s)")
    sep.add_argument("--name", default="{track}/{stem}.{ext}", help="output name template (default: %(default)s)")
    sep.add_argument("--stems", help="comma-separated stems to write (default: all the model gives)")
    sep.add_argument("--format", default="wav", choices=["wav", "flac", "ogg", "mp3", "aiff"])
    sep.add_argument("--bit-depth", type=int, default=24, choices=[16, 24, 32], help="PCM bits; 32 = float (default: %(default)s)")
    sep.add_argument("--overlap", type=float, help="chunk overlap in [0, 1) (default: per model)")
    sep.add_argument("--batch-size", type=_batch_value, default=1, metavar="N",
                     help="chunks per model call, or 'auto' (1 on the CPU, sized to free memory on a GPU) "
                          "(default: %(default)s)")
    sep.add_argument("--device", default="auto", type=_device_value,
                     help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino "
                          "(default: %(default)s, the best this onnxruntime offers; stembridge doctor shows it)")
    sep.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    sep.add_argument("--denoise", action="store_true", help="MDX-Net: average model(x) and -model(-x)")
    sep.add_argument("--invert", action="store_true", help="MDX-Net: spectral inversion for the other stem")
    sep.add_argument("--wiener", type=int, default=0, metavar="N",
                     help="mask models: N EM iterations of the multichannel Wiener filter, 0 = off (default: %(default)s)")
    sep.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the stems")
    sep.add_argument("--no-bwf", action="store_true", help="plain wav: no bext/iXML (Broadcast WAV) chunks")
    _add_batch_arguments(sep)
    sep.set_defaults(run=cmd_separate)

    ren = commands.add_parser("render", help="render songs through a session preset (split, stem chains, mix)")
    ren.add_argument("preset", help="session preset .yaml (see presets/)")
    ren.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, mp3, aiff) and folders (walked recursively)")
    ren.add_argument("--out", default="rendered", help="output folder (default: %(default)s)")
    ren.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a preset value, e.g. --set stems.vocals.gain_db=6 (repeatable)")
    ren.add_argument("--threads", type=int, help="onnxruntime threads per job (default: the cores divided by --jobs)")
    ren.add_argument("--device", type=_device_value,
                     help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino "
                          "(default: the preset's separator.device, auto)")
    ren.add_argument("--project", choices=["reaper"], help="also write <track>.rpp, a REAPER project of the "
                     "session (= --set output.project=reaper)")
    _add_batch_arguments(ren)
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
    ev.add_argument("--device", default="auto", type=_device_value,
                    help="where the model runs: auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N], openvino ""(default: %(default)s)")
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

    plug = commands.add_parser("plugins", help="list VST3 plugins: kind, channels, latency, parameters")
    plug.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search (default: $VST3_PATH, ~/.vst3, "
                      "/usr/lib/vst3, /usr/local/lib/vst3)")
    plug.add_argument("--json", action="store_true", help="print the same as JSON")
    plug.set_defaults(run=cmd_plugins)

    models = commands.add_parser("models", help="list known models and where they are looked for; import one")
    models.set_defaults(run=cmd_models)
    models_commands = models.add_subparsers(dest="models_command")
    imp = models_commands.add_parser("import", help="convert a Spleeter TensorFlow checkpoint (2/4/5 stems) or a "
                                                    "BS-/Mel-Band RoFormer checkpoint into the user model folder")
    imp.add_argument("path", help="Spleeter checkpoint folder (model.index, model.data-*, model.meta) or its .tar.gz; "
                                  "or a RoFormer CHECKPOINT.ckpt (with --config)")
    imp.add_argument("--config", metavar="CONFIG.yaml",
                     help="RoFormer: the checkpoint's YAML config (model:, audio:, training:); needs torch")
    imp.add_argument("--name", help="model name (default: spleeter-4stems etc. from the stem count; a RoFormer's "
                                    "checkpoint file name)")
    imp.add_argument("--force", action="store_true", help="replace a model of the same name")
    imp.add_argument("--bins", type=int, choices=[1024, 1536],
                     help="band of the nets if model.meta is missing: 1024 (11 kHz) or 1536 (-16kHz models)")
    imp.add_argument("--fp32", action="store_true", help="store float32 weights (twice the size)")
    imp.set_defaults(run=cmd_models_import)
    quant = models_commands.add_parser("quantize", help="write an int8 variant of a roformer model (a new model: "
                                                        "faster on CPUs with VNNI, slightly different output)")
    quant.add_argument("model", help="model name or card .yaml (a roformer)")
    quant.add_argument("--name", help="the new model's name (default: NAME-int8, or NAME-fp16)")
    quant.add_argument("--fp16", action="store_true", help="write a float16 variant instead (any model with an ONNX "
                                                           "file; for GPUs; float32 in and out)")
    quant.add_argument("--force", action="store_true", help="replace a model of the same name")
    quant.set_defaults(run=cmd_models_quantize)

    doctor = commands.add_parser("doctor", help="the onnxruntime build, its devices and what --device auto picks")
    doctor.set_defaults(run=cmd_doctor)

    cache = commands.add_parser("cache", help="the stem cache: where it is, its size (or 'cache clear')")
    cache.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    cache.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $STEMBRIDGE_CACHE, "
                                                          "$XDG_CACHE_HOME/stembridge or ~/.cache/stembridge)")
    cache.add_argument("--cache-max-gb", type=float, metavar="GB", help="size cap (default: 20, or $STEMBRIDGE_CACHE_MAX_GB)")
    cache.set_defaults(run=cmd_cache)
    return parser


def _jobs_value(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of songs at once (>= 1) or 'auto'")
    return value


def _batch_value(text: str):
    """A whole number or 'auto'; the range is checked with the other settings, in one line."""
    try:
        return int(text)
    except ValueError:
        return text


def _device_value(text: str) -> str:
    """Checked later, by :func:`_check_device`, so that a bad name is one line, not a usage screen."""
    return text.strip().lower()


def _add_batch_arguments(command) -> None:
    command.add_argument("--jobs", type=_jobs_value, default=1, metavar="N",
                         help="songs at once on this machine, or 'auto' (cores and free memory) (default: 1)")
    command.add_argument("--scheduler", metavar="ADDRESS",
                         help="send the songs to a Dask cluster, e.g. tcp://10.0.0.5:8786 (inputs and --out must be "
                              "on storage the workers share; pip install \"stembridge[dask]\")")
    command.add_argument("--force", action="store_true", help="render songs again even if their outputs are up to date")
    command.add_argument("--cache-dir", metavar="DIR", help="stem cache folder (default: $STEMBRIDGE_CACHE, "
                                                            "$XDG_CACHE_HOME/stembridge or ~/.cache/stembridge)")
    command.add_argument("--no-cache", action="store_true", help="neither read nor fill the stem cache")
    command.add_argument("--cache-max-gb", type=float, metavar="GB",
                         help="stem cache size cap; least recently used entries go first (default: 20, or "
                              "$STEMBRIDGE_CACHE_MAX_GB)")
    command.add_argument("--fail-fast", action="store_true", help="stop at the first bad input instead of skipping it")
    command.add_argument("--quiet", action="store_true", help="print nothing but errors")


def cmd_cache(args) -> int:
    from .render.cache import StemCache, default_location, default_max_gb

    root = Path(args.cache_dir) if args.cache_dir else default_location()
    cache = StemCache(root, max_gb=default_max_gb() if args.cache_max_gb is None else args.cache_max_gb)
    if args.action == "clear":
        count = cache.clear()
        print(f"stem cache {root}: removed {count} entries")
        return EXIT_OK
    stats = cache.stats()
    print(f"stem cache: {stats.location}")
    print(f"  {stats.entries} entries, {stats.bytes / 1e9:.2f} GB of {stats.max_bytes / 1e9:.2f} GB cap")
    return EXIT_OK


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
        console.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.error("interrupted; no partial output was left under a final name")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
