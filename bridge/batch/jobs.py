"""One song, as any executor runs it: a picklable job spec and the worker side that runs it.

A worker process builds the session's graph (loading the model and every plugin) once, on its
main thread, and keeps it for every later song of the same spec (:func:`worker_for`): pedalboard
loads VST3 plugins and resets them on the main thread only, and loading the model once per
worker rather than once per song is most of what makes batches fast.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path

from ..render.cache import StemCache
from ..errors import BridgeError, ModelError, PresetError
from .discover import Song


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to run songs of one command; picklable, no loaded objects."""

    kind: str  # "render" | "separate"
    out_dir: Path
    # render
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    # separate
    model: str = "default"
    #: Several models combined (``--model A --model B --ensemble METHOD``): all of them, ``model``
    #: being the first; the method and its weights (None: one model).
    models: tuple[str, ...] = ()
    ensemble: str | None = None
    weights: tuple[float, ...] | None = None
    residual: str | None = None
    overlap: float | None = None
    batch_size: int | str = 1  # or "auto"
    denoise: bool = False
    invert: bool = False
    wiener: int = 0
    shifts: int | None = None  # Demucs models: random-shift runs averaged (None: the model's default)
    stems: tuple[str, ...] | None = None
    template: str = "{track}/{stem}.{ext}"
    ext: str = "wav"
    bit_depth: int = 24
    codec: str | None = None  # m4a: aac (None) or alac
    bitrate: float | None = None  # kbit/s of aac, opus, mp3
    bwf: bool = True  # Broadcast WAV chunks in the stems
    project: str | None = None  # "reaper": a REAPER project of the stems
    stream: int | None = None  # --stream: the inputs' audio stream (None: each file's default one)
    # both
    threads: int | None = None
    #: ``--device``: where the model runs (None: the preset's ``separator.device``; ``auto`` for
    #: separate). An executor gives each worker its own (:func:`~bridge.separation.devices.spread`).
    device: str | None = None
    cache_dir: Path | None = None
    cache_max_gb: float = 20.0
    force: bool = False
    report: bool = False  # draw each song's pictures for OUT/stembridge-report.html


@dataclasses.dataclass
class SongOutcome:
    """What a worker reports for one song; picklable."""

    path: Path
    status: str  # rendered | cached | skipped | measured | failed
    written: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # audio
    wall: float = 0.0
    error: str | None = None
    pending: object = None  # render.pipeline.PendingSong for album loudness
    worker: int = 0  # pid
    clipped: list = dataclasses.field(default_factory=list)  # (file, samples clipped)
    device: str | None = None  # where the model ran (cpu, cuda:0, ...)
    models: dict = dataclasses.field(default_factory=dict)  # model -> {"ran": bool, "seconds": float}
    model: str | None = None  # the separator's name
    preview: object = None  # render.preview.SongPreview when the run writes a report


_WORKERS: dict = {}


def worker_for(spec: RunSpec):
    """The built graph (render) or separator and options (separate) for ``spec``, built once per process."""
    key = dataclasses.replace(spec, force=False)
    if key not in _WORKERS:
        _WORKERS.clear()  # one spec at a time: a new one frees the last one's model
        _WORKERS[key] = build(spec)
    return _WORKERS[key]


def build(spec: RunSpec):
    from ..separation import load_ensemble, load_separator

    if spec.kind == "separate" and spec.ensemble is not None:
        separator = load_ensemble(separate_parts(spec), residual=spec.residual, name=ensemble_name(spec),
                                  where="--ensemble", overlap=spec.overlap, batch_size=spec.batch_size,
                                  threads=spec.threads, denoise=spec.denoise, invert=spec.invert,
                                  wiener=spec.wiener, shifts=spec.shifts, device=spec.device or "auto")
        return separator, separate_options(spec)
    if spec.kind == "separate":
        separator = load_separator(spec.model, overlap=spec.overlap, batch_size=spec.batch_size, threads=spec.threads,
                                   denoise=spec.denoise, invert=spec.invert, wiener=spec.wiener, shifts=spec.shifts,
                                   device=spec.device or "auto")
        return separator, separate_options(spec, report=spec.report)
    return session_graph(spec.preset, spec.overrides, threads=spec.threads, device=spec.device)


def separate_options(spec: RunSpec, *, report: bool = False):
    """How a ``separate`` run names and writes its stems, from its spec."""
    from ..render.separate import SeparateOptions

    return SeparateOptions(out_dir=Path(spec.out_dir), template=spec.template, ext=spec.ext, bit_depth=spec.bit_depth,
                           codec=spec.codec, bitrate=spec.bitrate, stems=spec.stems, bwf=spec.bwf,
                           project=spec.project, report=report, stream=spec.stream)


def session_graph(preset, overrides=(), *, threads=None, separator=None, device=None):
    """A session preset bound to its separator, every plugin loaded once (errors name preset keys)."""
    from ..render.graph import RenderGraph
    from ..separation import load_separator
    from ..preset.session import load

    session = load(preset, overrides=overrides or ())
    card = separator_card(session)
    if separator is None and session.separator.ensemble is not None:
        separator = session_ensemble(session, threads=threads, device=device)
    if separator is None:
        sep = session.separator
        try:
            separator = load_separator(card, overlap=sep.overlap, batch_size=sep.batch_size, threads=threads,
                                       wiener=sep.wiener, shifts=sep.shifts, leftover=sep.leftover,
                                       device=device or sep.device)
        except ModelError as exc:  # a missing or corrupt model file: the model key's
            raise PresetError(f"{session.source}: separator.model: {exc}") from exc
    graph = RenderGraph(session, separator)
    graph.check()  # every plugin loads before any audio work
    return graph


def session_ensemble(session, *, threads=None, device=None):
    """The session's ensemble, every model loaded once (errors name ``separator.ensemble``)."""
    from ..separation import load_ensemble

    sep = session.separator
    try:
        return load_ensemble(sep.ensemble, residual=sep.residual, name="ensemble", where="separator.ensemble",
                             overlap=sep.overlap, batch_size=sep.batch_size, threads=threads, wiener=sep.wiener,
                             shifts=sep.shifts, device=device or sep.device)
    except ModelError as exc:
        raise PresetError(f"{session.source}: {exc}" if "separator." in str(exc)
                          else f"{session.source}: separator.ensemble: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Planned:
    """An ensemble before its models load: its name, stems and each model's card."""

    name: str
    stems: tuple[str, ...]
    cards: dict
    family: str = "ensemble"


def separator_cards(session) -> dict:
    """Each model the session runs, by name, as cards (not loaded)."""
    card = separator_card(session)
    return dict(card.cards) if isinstance(card, Planned) else {card.name: card}


def separator_card(session):
    """The session's model card, with model errors named by the preset key they come from; for an
    ensemble a :class:`Planned` (each part checked against its models' cards)."""
    from ..separation.models import resolve
    from ..separation import check_wiener_fits, ensemble_cards
    from ..separation.ensemble import ensemble_stems

    sep = session.separator
    if sep.ensemble is not None:
        try:
            cards = ensemble_cards(sep.ensemble, where="separator.ensemble")
        except ModelError as exc:
            raise PresetError(f"{session.source}: {exc}") from exc
        return Planned("ensemble", ensemble_stems(sep.ensemble, sep.residual), cards)
    try:
        card = resolve(session.separator.model)
    except ModelError as exc:
        raise PresetError(f"{session.source}: separator.model: {exc}") from exc
    try:
        check_wiener_fits(card, session.separator.wiener)
    except ModelError as exc:
        raise PresetError(f"{session.source}: separator.wiener: {exc}") from exc
    return card


def check_session(session):
    """Everything ``stembridge preset check`` checks, without loading the model; the model's card.

    The stems the preset names come from the model, an NI Stems output has its four stems, and
    every chain builds at the channel counts and rates a render runs it at (every VST3 loaded,
    lanes bound). ``stembridge render`` runs this before the first song, so a preset that
    ``preset check`` refuses is a usage error (exit 2), never a failure of every song.

    Raises
    ------
    PresetError, PluginError
        Naming the preset file and the key.
    """
    from ..render.graph import check_chains, check_stem_names, referenced_stems

    card = separator_card(session)
    if isinstance(card, Planned):  # a stem no part gives: named by the key that asks for it
        for name, key in referenced_stems(session).items():
            if name not in card.stems and key != "separator.stems":
                raise PresetError(f"{session.source}: {key}: no part of separator.ensemble gives stem '{name}' "
                                  f"(it gives {', '.join(card.stems)}); add a part for it, or make it "
                                  "separator.residual")
    check_stem_names(session, card.stems, model=card.name)
    if session.output.nistems is not None:
        from ..daw.nistems import check_stems

        check_stems(card.stems, where=f"{session.source}: output.files.nistems")
    check_chains(session)  # at the real channel counts and rates: "ok" means it renders
    return card


def open_cache(spec: RunSpec) -> StemCache | None:
    return None if spec.cache_dir is None else StemCache(spec.cache_dir, max_gb=spec.cache_max_gb)


def run_song(spec: RunSpec, song: Song, *, force: bool | None = None, defer_gain_to: Path | None = None,
             album: list[str] | None = None, input_sha256: str | None = None, progress=None) -> SongOutcome:
    """Run one song; a bad song is reported in the outcome, never raised (Ctrl-C is)."""
    if song.error:
        return SongOutcome(song.path, "failed", error=song.error, worker=os.getpid())
    started = time.perf_counter()
    force = spec.force if force is None else force
    clipped = []
    try:
        if spec.kind == "separate":
            from ..render.separate import separate_song

            separator, options = worker_for(spec)
            device, model = separator.device, separator.name
            result = separate_song(song.path, separator, options, naming=song.naming, cache=open_cache(spec),
                                          force=force, progress=progress,
                                          on_clip=lambda target, count: clipped.append((target, count)))
        else:
            from ..render.song import render_song  # the mixer and the effects host: renders only

            graph = worker_for(spec)
            device, model = getattr(graph.separator, "device", None), graph.separator.name
            result = render_song(song.path, graph, spec.out_dir, naming=song.naming, cache=open_cache(spec),
                                 force=force, progress=progress, defer_gain_to=defer_gain_to, album=album,
                                 input_sha256=input_sha256, report=spec.report)
    except BridgeError as exc:
        return SongOutcome(song.path, "failed", error=str(exc), wall=time.perf_counter() - started, worker=os.getpid())
    except (OSError, ValueError, RuntimeError) as exc:  # a fault we did not foresee: still one line, and go on
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return SongOutcome(song.path, "failed", error=f"{song.path}: {detail}", wall=time.perf_counter() - started,
                           worker=os.getpid())
    return SongOutcome(song.path, result.status, written=result.written, seconds=result.seconds,
                       wall=time.perf_counter() - started, pending=result.pending, worker=os.getpid(),
                       clipped=clipped, device=device, models=result.models, model=model, preview=result.preview)


@dataclasses.dataclass(frozen=True)
class _Named:
    """A separator's name and stems, for planning output names without loading its model."""

    name: str
    stems: tuple[str, ...]


def ensemble_name(spec: RunSpec) -> str:
    """What ``separate --ensemble`` calls its ensemble (file names, manifests): ``A+B.METHOD``."""
    from ..separation.models import resolve

    return f"{'+'.join(resolve(m).name for m in spec.models)}.{spec.ensemble}"


def separate_parts(spec: RunSpec):
    """``separate --model A --model B --ensemble METHOD``: one part, every stem all the models give
    (in the first model's order), combined by the method. Errors name the options."""
    from ..separation.ensemble import Part, check_method
    from ..separation.models import offered_stems, resolve

    if len(spec.models) < 2:
        raise ModelError(f"--ensemble {spec.ensemble}: combines two or more models; give --model twice or more")
    if len(set(spec.models)) != len(spec.models):
        raise ModelError(f"--model: {', '.join(spec.models)} names a model twice; name each once")
    weights = check_method(spec.ensemble, weights=spec.weights, models=len(spec.models), where="--ensemble",
                           method_key="--ensemble", weights_key="--weights")
    offered = [offered_stems(resolve(m).stems) for m in spec.models]
    common = tuple(s for s in offered[0] if all(s in o for o in offered[1:]))
    if not common:
        raise ModelError(f"--model: {', '.join(spec.models)} give no stem in common; an ensemble combines "
                         "the stems every model gives")
    return (Part(common, tuple(spec.models), spec.ensemble, weights),)


def plan(spec: RunSpec, songs: list[Song]) -> list[Song]:
    """Every song's output names, before any work.

    Returns
    -------
    list of Song
        The songs, where one that would write a file an earlier song of the run writes carries
        an ``error``: it fails at its turn, the others run.

    Raises
    ------
    BridgeError
        A template that cannot be expanded, or two outputs of one song that would write one
        file: a usage error, so nothing is rendered.
    """
    from ..separation.models import resolve
    from ..render.separate import separate_targets

    if spec.kind == "render":
        # Here, not above: the render graph brings the mixer and the effects host (pedalboard),
        # which a separate run never needs.
        from ..render.graph import RenderGraph
        from ..render.song import render_targets
        from ..preset.session import load

        session = load(spec.preset, overrides=spec.overrides or ())
        card = separator_card(session)
        graph = RenderGraph(session, _Named(card.name, card.stems))

        def names(song):
            return render_targets(song.path, graph, Path(spec.out_dir), song.naming)
    elif spec.ensemble is not None:
        from ..separation import ensemble_cards
        from ..separation.ensemble import ensemble_stems

        parts = separate_parts(spec)
        ensemble_cards(parts, where="--ensemble")
        card = _Named(ensemble_name(spec), ensemble_stems(parts, spec.residual))
        options = separate_options(spec)
        named = card

        def names(song):
            return separate_targets(song.path, named, options, song.naming)
    else:
        card = resolve(spec.model)
        options = separate_options(spec)
        named = _Named(card.name, card.stems)

        def names(song):
            return separate_targets(song.path, named, options, song.naming)

    seen: dict[Path, Path] = {}
    planned = []
    for song in songs:
        if song.error:
            planned.append(song)
            continue
        targets, manifest = names(song)
        paths = [*targets.values(), manifest]
        other = next((seen[p] for p in paths if p in seen), None)
        if other is not None:
            song = dataclasses.replace(song, error=(
                f"{song.path}: its outputs ({paths[0]}) would overwrite those of {other.name}, named earlier; "
                "name their folders instead of the files (outputs then mirror the folders), or add {album} or "
                "{relpath} to the name template"))
        else:
            seen.update({p: song.path for p in paths})
        planned.append(song)
    return planned
