"""A whole session over one song: the graph's mix and stems into files, atomically.

:func:`render_song` is the short story of a song: plan its outputs, open their sinks
(:mod:`bridge.render.sinks`), stream the song through the graph into them
(:func:`bridge.render.pipeline.run_song`), finish or abort them all. :func:`render_file` is the
plain form; :func:`finish_render` is album loudness's second half.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..audio import encoders, files, tags
from ..daw import handoff as daw
from ..errors import OutputError
from ..preset.templates import check_unique, expand
from ..version import __version__
from .cache import StemCache
from .graph import RenderGraph
from .pipeline import PendingSong, SongFile, finish_pending, run_song
from .preview import Preview
from .records import file_sha256, made_by, manifest_record, model_identity, read_manifest
from .sinks import AudioFiles, Block, Gain, Manifest, NiStems, Project, Video, loudness_gain
from .songs import Naming, Progress, SongResult
from .stemsource import StemSource

__all__ = ["PendingSong", "finish_render", "loudness_gain", "render_file", "render_song", "render_targets",
           "up_to_date"]


def render_file(path, graph: RenderGraph, out_dir, *, progress: Progress | None = None) -> dict[str, Path]:
    """Render one song through a session's graph, streaming, and write its outputs and manifest.

    The mix goes to ``output.files.mix`` and each processed stem (after its chain, gain, pan and
    routing; the audible ones sum to the mix before the master chain) to ``output.files.stems``.
    With a loudness target the song is rendered once to float temporary files beside the outputs,
    measured, and written again with one gain for every output, so stems still sum to the mix:
    ``gain = min(target - loudness, true_peak_ceiling - true_peak)``. Without one, samples over
    full scale are clipped in PCM files and counted in the manifest (never silently).

    Returns
    -------
    dict of str to Path
        Files written, by label (``mix``, stem names, ``manifest``).
    """
    return render_song(path, graph, out_dir, progress=progress).written


def render_targets(path: Path, graph: RenderGraph, out_dir: Path, naming: Naming) -> tuple[dict, Path]:
    """The files :func:`render_song` writes for ``path`` (by label) and its manifest."""
    session, separator = graph.session, graph.separator
    o = session.output
    names = dict(naming.fields(), ext=o.format, model=separator.name)
    targets: dict[str, Path] = {}
    if o.mix:
        targets["mix"] = expand(o.mix, out_dir, stem="mix", **names)
    if o.stems:
        for stem in tuple(session.separator.stems or separator.stems) + session.layer_names:
            targets[stem] = expand(o.stems, out_dir, stem=stem, **names)
    # Beside the mix and named after it, so renders of one song with several presets keep theirs.
    manifest = (targets["mix"].with_suffix(".manifest.json") if "mix" in targets
                else expand("{track}.manifest.json", out_dir, **names))
    try:
        check_unique({**targets, "manifest": manifest})
    except OutputError as exc:
        raise OutputError(f"{session.source}: output.files: {exc}") from None
    if files.same_file(manifest, path):
        raise OutputError(f"{manifest}: the manifest would overwrite the input; choose another output folder")
    return targets, manifest


def up_to_date(manifest: Path, *, input_sha256: str, graph: RenderGraph, targets: dict,
               album: list[str] | None = None) -> bool:
    """True if ``manifest`` records this input, preset, model and stembridge version, and every
    output it lists is there (and, for album loudness, the same songs in the album)."""
    record = read_manifest(manifest)
    if record is None:
        return False
    same = (record.stembridge == __version__ and record.input_sha256 == input_sha256
            and _without_report(record.session) == _without_report(json.loads(json.dumps(graph.session.to_dict())))
            and record.model_sha256 == (graph.separator.card.sha256 if graph.separator.card else None)
            and record.model_identity == json.loads(json.dumps(model_identity(graph.separator)))
            and (album is None or record.album_songs == album))
    outputs_there = all(record.outputs.get(label) == target and target.is_file() for label, target in targets.items())
    handoff_there = all(path.is_file() for path in record.handoff.values())  # a deleted .rpp is rendered again
    return same and outputs_there and handoff_there


def _without_report(session) -> object:
    """A session as a manifest records it, less ``output.report``: a report changes no output."""
    if isinstance(session, dict) and isinstance(session.get("output"), dict):
        return {**session, "output": {k: v for k, v in session["output"].items() if k != "report"}}
    return session


def render_song(path, graph: RenderGraph, out_dir, *, naming: Naming | None = None, cache: StemCache | None = None,
                force: bool = True, progress: Progress | None = None, defer_gain_to: Path | None = None,
                input_sha256: str | None = None, album: list[str] | None = None, report: bool = False) -> SongResult:
    """:func:`render_file` for batches: stem cache, resume, and album loudness.

    Parameters
    ----------
    naming : Naming, optional
        The song's template fields (default: from its file name).
    cache : StemCache, optional
        Replay the song's stems from here, or store them here after separating.
    force : bool
        False: a song whose manifest is :func:`up_to_date` is skipped.
    defer_gain_to : Path, optional
        Album loudness: render the first pass into float files in this folder and return a
        :class:`PendingSong` for :func:`finish_render`, instead of applying the song's own gain.
    album : list of str, optional
        The sorted input hashes of the song's album (album loudness), for the resume check.
    report : bool
        Also draw the song's pictures and keep its levels for the run report (the result's
        ``preview``; :mod:`bridge.render.preview`).
    """
    song = SongFile.open(path, naming, stream=graph.session.input.stream)
    out_dir = Path(out_dir)
    targets, manifest = render_targets(song.path, graph, out_dir, song.naming)
    digest = input_sha256 or file_sha256(song.path)
    if not force and up_to_date(manifest, input_sha256=digest, graph=graph, targets=targets, album=album):
        return song.result("skipped", {**targets, "manifest": manifest})
    session, o = graph.session, graph.session.output
    rate = encoders.output_rate(o.format, o.sample_rate or song.header.sample_rate)
    hand = daw.plan(song.path, header=song.header, session=session, separator_name=graph.separator.name,
                    targets=targets, rate=rate, separator_stems=graph.separator.stems, out_dir=out_dir,
                    track=song.naming.track, made_by=made_by(graph.separator))
    sinks = _sinks(song, graph, hand, targets, manifest, rate=rate, digest=digest, report=report)
    source = StemSource(song.path, song.header, graph.separator, cache=None if graph.pre_chain is not None else cache,
                        pre=session.pre, pre_lanes=session.lanes("pre"))
    feed = _GraphFeed(graph, song.header, separation=source.stream, taps=hand.taps)
    return run_song(song, sinks, source=source, feed=feed, out_dir=out_dir, progress=progress,
                    gain=lambda: _track_gain(sinks[0], o), defer_gain_to=defer_gain_to)


def _sinks(song: SongFile, graph: RenderGraph, hand: "daw.HandOff", targets: dict, manifest: Path, *, rate: int,
           digest: str, report: bool = False) -> list:
    """The song's outputs: its audio files, the hand-off (project, NI Stems) and the manifest, last."""
    session, o = graph.session, graph.session.output
    stem_channels = song.header.channels if hand.tap == "raw" else graph.channels  # raw stems keep the input's
    found = tags.read(song.path)
    audio = AudioFiles([(label, target, graph.channels if label == "mix" else stem_channels)
                        for label, target in targets.items()],
                       source_rate=song.header.sample_rate, sample_rate=rate, bit_depth=o.bit_depth,
                       codec=o.codec, bitrate=o.bitrate, inputs=[song.path], two_pass=o.loudness_lufs is not None,
                       hand=hand, view=hand.tap,
                       tags={label: found.named(song.naming.track, tags.output_suffix(label, take=hand.take))
                             for label in targets})
    sinks = [audio]
    if report:
        tail = round(o.tail_seconds * song.header.sample_rate)
        sinks.append(Preview(audio, sample_rate=song.header.sample_rate, frames=song.header.frames + tail,
                             view=hand.tap))
    if hand.project is not None:
        sinks.append(Project(hand.project, lambda: daw.session_project(
            hand, session=session, source=song.path, source_seconds=song.header.seconds,
            files={f.label: f.path for f in audio.files if f.label != "mix"},
            frames={f.label: f.frames for f in audio.files}, channels={f.label: f.channels for f in audio.files},
            layout_channels=graph.channels)))
    if hand.nistems is not None:
        sinks.append(NiStems(hand.nistems, source_rate=song.header.sample_rate, sample_rate=rate,
                             title=song.naming.track, tags=found.named(song.naming.track, None)))
    if hand.video is not None:
        sinks.append(Video(hand.video_source, hand.video, sample_rate=song.header.sample_rate, channels=graph.channels,
                           frames=song.header.frames))
    record = manifest_record(source=song.path, header=song.header, session=session, separator=graph.separator,
                             input_sha256=digest)
    return sinks + [Manifest(manifest, record, audio)]


def _track_gain(audio: AudioFiles, o) -> Gain:
    """The song's own loudness gain, or none without a target."""
    if o.loudness_lufs is None:
        return Gain()
    gain_db = audio.gain_db(target=o.loudness_lufs, ceiling=o.true_peak_db)
    return Gain(gain_db, {"target_lufs": o.loudness_lufs, "true_peak_ceiling_db": o.true_peak_db,
                          "gain_db": round(gain_db, 3), "scope": "track"})


class _GraphFeed:
    """The render graph's output as the sinks see it."""

    def __init__(self, graph: RenderGraph, header: files.AudioInfo, *, separation, taps):
        self.graph, self.header, self.separation, self.taps = graph, header, separation, taps
        self.stream = None

    def open(self) -> None:
        self.stream = self.graph.stream(sample_rate=self.header.sample_rate, channels=self.header.channels,
                                        separation=self.separation, taps=self.taps)

    def process(self, audio) -> Block:
        mix, stems = self.stream.process(audio)
        return Block(mix, stems, self.stream.taps)

    def finish(self) -> Block:
        mix, stems = self.stream.finish()
        return Block(mix, stems, self.stream.taps, last=True)


def finish_render(pending: PendingSong, *, gain_db: float, album: dict) -> dict[str, Path]:
    """Album loudness, second pass: apply ``gain_db`` to a pending song's outputs and write them
    with the manifest (recording the album's gain and loudness)."""
    return finish_pending(pending, Gain(gain_db, {**album, "gain_db": round(gain_db, 3), "scope": "album"}))
