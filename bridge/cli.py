"""The ``stembridge`` command: parse arguments, call the library, report errors in one line.

Exit codes: 0 success; 1 some songs failed (each named in one line) and all the others were
written; 2 a usage error found before any work (a bad preset, model, option or folder); 130
interrupted.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from . import console, memory
from .arguments import build_parser
from .errors import BridgeError, ModelError, PresetError

EXIT_OK, EXIT_SOME_FAILED, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


def cmd_separate(args) -> int:
    from .batch import RunSpec

    stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
    models = tuple(args.model or ("default",))
    spec = RunSpec(kind="separate", out_dir=Path(args.out), model=models[0], overlap=args.overlap,
                   models=models if args.ensemble else (), ensemble=args.ensemble, weights=_weights(args),
                   residual=args.residual,
                   batch_size=args.batch_size, device=args.device, denoise=args.denoise, invert=args.invert, wiener=args.wiener,
                   shifts=args.shifts,
                   stems=stems, template=args.name, ext=args.format, bit_depth=args.bit_depth, codec=args.codec,
                   bitrate=args.bitrate, bwf=not args.no_bwf,
                   project=args.project, report=args.report, stream=args.stream, **_batch_options(args))
    _check_model(args)
    _check_format(args)
    if spec.report:
        _check_report()
    return _run(args, spec, device=_check_device(args.device, scheduler=args.scheduler))


def cmd_render(args) -> int:
    from .batch import RunSpec

    console.show_layer_warnings()
    if args.project:  # --project reaper is --set output.project=reaper
        args.set = [*(args.set or ()), f"output.project={args.project}"]
    if args.stream is not None:  # --stream N is --set input.stream=N
        args.set = [*(args.set or ()), f"input.stream={args.stream}"]
    session = _check_session(args.preset, args.set or ())
    device = args.device or session.separator.device  # --device overrides the preset's
    report = args.report or session.output.report
    spec = RunSpec(kind="render", out_dir=Path(args.out), preset=args.preset, overrides=tuple(args.set or ()),
                   device=device, report=report, **_batch_options(args))
    if report:
        _check_report()
    album = session.output.loudness_scope == "album" and session.output.loudness_lufs is not None
    try:
        resolved = _check_device(device, scheduler=args.scheduler)
    except BridgeError as exc:
        if args.device:
            raise
        raise PresetError(f"{session.source}: separator.device: {exc}") from None  # the preset's choice
    target = ({"loudness_lufs": session.output.loudness_lufs, "true_peak_db": session.output.true_peak_db,
               "scope": session.output.loudness_scope} if session.output.loudness_lufs is not None else None)
    return _run(args, spec, album=album, device=resolved, target=target)


def _check_format(args) -> None:
    """``--format``, ``--codec``, ``--bitrate`` and ``--bit-depth`` together, refused before any work."""
    from .audio.files import OutputFormatError, check_output_format

    try:
        check_output_format(args.format, bit_depth=args.bit_depth, codec=args.codec, bitrate=args.bitrate)
    except OutputFormatError as exc:
        option = {"format": "--format", "codec": "--codec", "bitrate": "--bitrate", "bit_depth": "--bit-depth"}[exc.key]
        raise BridgeError(f"{option}: {exc}") from None


def _check_report() -> None:
    """``--report`` draws with matplotlib: refused before any work when it is missing."""
    from .render.preview import require_matplotlib

    require_matplotlib()


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


def _weights(args) -> tuple[float, ...] | None:
    """``--weights 2,1`` as numbers (checked against the method and models by the ensemble)."""
    if args.weights is None:
        return None
    if not args.ensemble:
        raise ModelError("--weights: weigh the models of an ensemble; add --ensemble avg_wave (or avg_fft)")
    try:
        return tuple(float(w) for w in args.weights.split(","))
    except ValueError:
        raise ModelError(f"--weights {args.weights}: expected numbers separated by commas, one per --model, "
                         "e.g. --weights 2,1") from None


def _check_model(args) -> None:
    """The model and settings of ``separate``, checked before any work without loading the model."""
    from .separation.models import resolve, verify_file
    from .separation import _check_settings, check_denoise_invert_fits, check_wiener_fits, families
    from .separation.mask import check_wiener

    wiener = check_wiener(args.wiener)
    _check_settings(overlap=args.overlap, batch_size=args.batch_size, threads=args.threads)
    models = args.model or ["default"]
    if args.ensemble or len(models) > 1 or args.residual:
        _check_ensemble(args, models)
        return
    card = resolve(models[0])
    check_wiener_fits(card, wiener)
    check_denoise_invert_fits(card, denoise=args.denoise, invert=args.invert)
    check_shifts(card, args.shifts)
    if families.family(card.family).weights:
        verify_file(card)


def _check_ensemble(args, models) -> None:
    """``separate --model A --model B --ensemble METHOD``: the method, weights and every model's file."""
    from .batch.jobs import RunSpec, separate_parts
    from .separation import families
    from .separation.models import resolve, verify_file

    if not args.ensemble:
        what = "--residual" if args.residual else f"{len(models)} --model values"
        raise ModelError(f"{what}: combining models needs --ensemble METHOD, e.g. --ensemble avg_wave")
    spec = RunSpec(kind="separate", out_dir=Path("."), models=tuple(models), ensemble=args.ensemble,
                   weights=_weights(args))
    separate_parts(spec)
    cards = [resolve(m) for m in models]
    if args.shifts is not None and not any(c.family == "demucs" for c in cards):
        raise ModelError("--shifts applies to Demucs models, and none of the --model values is one; drop --shifts")
    if args.wiener and not any(families.family(c.family).wiener for c in cards):
        raise ModelError(f"--wiener {args.wiener}: Wiener filtering needs a mask model (e.g. 'default'), and none of "
                         "the --model values is one; drop --wiener")
    for flag, asked in (("--denoise", args.denoise), ("--invert", args.invert)):
        if asked and not any(c.family == "mdx" for c in cards):
            raise ModelError(f"{flag} applies to MDX-Net models, and none of the --model values is one; drop {flag}")
    for card in cards:
        if families.family(card.family).weights:
            verify_file(card)


def check_shifts(card, shifts: int | None) -> None:
    """``--shifts``: a whole number of runs from 0 to 20, for a Demucs model only."""
    if shifts is None:
        return
    if card.family != "demucs":
        raise ModelError(f"--shifts applies to Demucs models, and '{card.name}' is a {card.family} model; drop --shifts")
    if not 0 <= shifts <= 20:
        raise ModelError(f"--shifts {shifts}: Demucs's shift trick takes 0 to 20 runs (1, as the demucs command, "
                         "is the default)")


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
    from .batch.jobs import check_session, separator_cards
    from .separation import families
    from .separation.models import verify_file
    from .preset.session import load

    session = load(preset, overrides=overrides)
    key = "separator.ensemble" if session.separator.ensemble is not None else "separator.model"
    for card in separator_cards(session).values():
        try:
            if families.family(card.family).weights:
                verify_file(card)
        except ModelError as exc:
            raise PresetError(f"{session.source}: {key}: {exc}") from exc
    check_session(session)
    return session


def _run(args, spec, *, album: bool = False, device=None, target: dict | None = None) -> int:
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
    if spec.report:
        from .batch.report import write_report

        page = write_report(report, Path(args.out), kind=spec.kind, target=target)
        if not args.quiet:
            console.say(f"report -> {page}")
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
    models = args.model or ["default"]
    if len(models) > 1 or args.ensemble or args.preset:
        return _eval_many(args, models)
    if args.weights:
        raise ModelError("--weights: weigh the models of an ensemble; add --ensemble avg_wave (or avg_fft)")
    args.model = models[0]
    if args.model == "oracle" and args.wiener:
        raise ModelError("--wiener applies to mask models; the oracle is the references' ideal ratio mask, "
                         "drop --wiener with --model oracle")
    if args.model == "no-split":
        from .quality.evaluate import NoSplit
        separator = NoSplit(load_separator("default", overlap=args.overlap, threads=args.threads, wiener=args.wiener,
                                           device=args.device))
    else:
        if args.model != "oracle":
            from .separation.models import resolve
            check_shifts(resolve(args.model), args.shifts)
        separator = "oracle" if args.model == "oracle" else load_separator(args.model, overlap=args.overlap,
                                                                            threads=args.threads, wiener=args.wiener,
                                                                            shifts=args.shifts, device=args.device)
    update, close = console.progress(f"eval {args.model}", sys.stderr.isatty() and not args.quiet)
    try:
        report = evaluate(separator, args.references, progress=update, stream=args.stream)
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


def _eval_many(args, models) -> int:
    """``eval`` of several models and ensembles of them: one table, each model run once per song."""
    from .batch.jobs import RunSpec, separate_parts
    from .preset.session import load
    from .quality.evaluate import compare
    from .separation import ensemble_cards, families, load_separator
    from .separation.ensemble import EnsembleSeparator
    from .separation.models import resolve

    if {"oracle", "no-split"} & set(models):
        raise ModelError("--model oracle and no-split are yardsticks scored alone; drop them from a comparison")
    weights = _weights(args)
    ensembles = {}  # name -> (parts, residual), checked before any model loads
    for method in args.ensemble or ():
        spec = RunSpec(kind="separate", out_dir=Path("."), models=tuple(models), ensemble=method,
                       weights=weights if method in ("avg_wave", "avg_fft") else None)
        parts = separate_parts(spec)
        ensembles[parts[0].label()] = (parts, None)
    for preset in args.preset or ():
        session = load(preset)
        if session.separator.ensemble is None:
            raise PresetError(f"{session.source}: separator.ensemble: --preset scores a preset's ensemble, and this "
                              "preset names a single model; pass it as --model instead")
        try:
            ensemble_cards(session.separator.ensemble, where="separator.ensemble")
        except ModelError as exc:
            raise PresetError(f"{session.source}: {exc}") from exc
        ensembles[Path(preset).stem] = (session.separator.ensemble, session.separator.residual)
    needed = list(dict.fromkeys([*models, *(m for parts, _ in ensembles.values() for p in parts for m in p.models)]))
    cards = {model: resolve(model) for model in needed}
    if args.shifts is not None and not any(c.family == "demucs" for c in cards.values()):
        raise ModelError("--shifts applies to Demucs models, and none of the models is one; drop --shifts")
    loaded = {}
    for model, card in cards.items():
        loaded[model] = load_separator(card, overlap=args.overlap, threads=args.threads,
                                       wiener=args.wiener if families.family(card.family).wiener else 0,
                                       shifts=args.shifts if card.family == "demucs" else None, device=args.device)
    built = {name: EnsembleSeparator({m: loaded[m] for p in parts for m in p.models}, parts, residual=residual,
                                     name=name) for name, (parts, residual) in ensembles.items()}
    update, close = console.progress(f"eval {', '.join(models)}", sys.stderr.isatty() and not args.quiet)
    try:
        result = compare(loaded, args.references, ensembles=built, progress=update, stream=args.stream)
    finally:
        close()
    print(result.table())
    if not args.quiet:
        for name, report in result.reports.items():
            for note in dict.fromkeys(report.notes):
                print(f"stembridge: note: {name}: {note}", file=sys.stderr)
    if args.json:
        target = result.write_json(args.json)
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

    vr = {k: getattr(args, k) for k in ("vr_params", "vr_nout", "vr_nout_lstm", "vr_primary")
          if getattr(args, k, None) is not None}
    done = import_model(args.path, config=args.config, name=args.name, force=args.force, bins=args.bins,
                        fp32=args.fp32, **vr)
    detail = (f"{done.architecture}, ONNX vs torch {done.parity_db:.1f} dB" if hasattr(done, "parity_db")
              else f"{done.bins} bins")
    print(f"{args.path}: imported as '{done.name}' ({len(done.stems)} stems: {', '.join(done.stems)}; "
          f"{detail}) in {done.seconds:.1f} s -> {done.card}")
    print(f"use it with: stembridge separate --model {done.name} SONG")
    return EXIT_OK


def cmd_models_scan(args) -> int:
    import json

    from .importers.scan import check_folders, default_locations, import_all, scan

    if args.folders:
        places = [("named", p) for p in check_folders(args.folders)]
    else:
        places = [(loc.what, loc.path) for loc in default_locations()]
    entries = scan([p for _, p in places])
    outcomes = []
    if args.do_import:
        def said(outcome):
            if args.json:
                return
            if outcome.error:
                console.error(outcome.error)
            elif outcome.skipped:
                print(f"{outcome.entry.path}: already imported as '{outcome.skipped}'")
            else:
                print(f"{outcome.entry.path}: imported as '{outcome.imported}'")

        outcomes = import_all(entries, on_outcome=said)
    if args.json:
        print(json.dumps({
            "folders": [{"what": what, "path": str(p), "exists": p.is_dir()} for what, p in places],
            "models": [e.as_json() for e in entries],
            "imported": [{"path": str(o.entry.path), "imported": o.imported, "skipped": o.skipped, "error": o.error}
                         for o in outcomes],
        }, indent=2))
    else:
        print("Looked in:")
        for what, path in places:
            print(f"  {what:<16} {path}" + ("" if path.is_dir() else "  (not there)"))
        if entries:
            print(f"Model files ({len(entries)}): status, family, stems, file; then the command")
            for e in entries:
                print(f"  {e.status:<12} {e.family or '?':<9} {'/'.join(e.stems) or '?':<32} {e.path}")
                if e.command:
                    print(f"      {e.command}")
        else:
            print("No model files found.")
    return EXIT_SOME_FAILED if any(o.error for o in outcomes) else EXIT_OK


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


#: Each subcommand of :func:`bridge.arguments.build_parser` (its ``handler``) and what runs it.
HANDLERS = {
    "separate": cmd_separate, "render": cmd_render, "eval": cmd_eval, "preset_check": cmd_preset_check,
    "effects": cmd_effects, "plugins": cmd_plugins, "models": cmd_models, "models_import": cmd_models_import,
    "models_scan": cmd_models_scan,
    "models_quantize": cmd_models_quantize, "doctor": cmd_doctor, "cache": cmd_cache,
}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    memory.keep_freed_memory()
    with console.captured_stderr() as captured:
        try:
            code = HANDLERS[args.handler](args)
        except BridgeError as exc:
            if args.debug:
                traceback.print_exc()
            console.error(str(exc))
            code = EXIT_FAILED
        except KeyboardInterrupt:
            console.error("interrupted; no partial output was left under a final name")
            code = EXIT_INTERRUPTED
        finally:
            _unload_plugins()  # plugins print as they are unloaded: while their stderr is still captured
    # The note is not an error: a failing command keeps its one line per error, and --quiet its silence.
    console.show_captured(captured, verbose=args.verbose, note=code == EXIT_OK and not getattr(args, "quiet", False))
    return code


def _unload_plugins() -> None:
    """Drop the run's loaded graph (its plugins) now rather than at interpreter exit.

    Nothing to do when this process loaded no plugin (``separate``, ``eval``, a render of
    built-in effects): a full garbage collection of a process that imported numpy, onnxruntime
    and scipy costs a tenth of a second.
    """
    import gc

    plugins = sys.modules.get("bridge.host.plugins")
    if plugins is None or not plugins.loaded_any:
        return
    jobs = sys.modules.get("bridge.batch.jobs")
    if jobs is not None:
        jobs._WORKERS.clear()
    gc.collect()


if __name__ == "__main__":
    sys.exit(main())
