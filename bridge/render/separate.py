"""Separate songs into stem files, streaming block by block, writing atomically.

``stembridge separate``: the separator's stems (and the sums asked for), with the stem cache,
resume, Broadcast WAV chunks and a REAPER project; no session, no mixing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..audio import encoders, files, tags
from ..daw import handoff as daw
from ..errors import BridgeError
from ..preset.templates import check_template, check_unique, expand
from ..separation import ChunkedSeparator, with_sums
from ..separation.models import offered_stems
from ..version import __version__
from .cache import StemCache
from .pipeline import SongFile, run_song
from .preview import Preview
from .records import BackgroundSha256, made_by, model_identity, read_json
from .sinks import AudioFiles, Block, Gain, Project, Record
from .songs import Clipped, Naming, Progress, SongResult, report_clipping
from .stemsource import StemSource


@dataclasses.dataclass(frozen=True)
class SeparateOptions:
    """How :func:`separate_file` names and writes its outputs."""

    out_dir: Path
    template: str = "{track}/{stem}.{ext}"
    ext: str = "wav"
    bit_depth: files.BitDepth = 24
    codec: str | None = None  # m4a: aac (None) or alac
    bitrate: float | None = None  # kbit/s of aac, opus, mp3 (None: the codec's default)
    stems: tuple[str, ...] | None = None
    bwf: bool = True  # wav stems carry bext (EBU Tech 3285 v2) and iXML chunks
    project: str | None = None  # "reaper": <track>.rpp beside the stems
    report: bool = False  # meter the stems and draw their pictures for the run report
    stream: int | None = None  # the inputs' audio stream (None: each file's default one)


def separate_file(path, separator: ChunkedSeparator, options: SeparateOptions,
                  *, progress: Progress | None = None, on_clip: Clipped | None = None) -> dict[str, Path]:
    """Separate one file into one file per stem, streaming.

    A stem can exceed full scale where the mix does not (a mask rings around a full-scale
    square wave); PCM outputs are then clipped and reported to ``on_clip``, or as a
    :class:`ClippingWarning` without one, never silently.

    Returns
    -------
    dict of str to Path
        The files written, by stem. Nothing is left under a final name if anything fails.
    """
    return separate_song(path, separator, options, progress=progress, on_clip=on_clip).written


def separate_targets(path: Path, separator, options: SeparateOptions, naming: Naming) -> tuple[dict, Path]:
    """The stem files and the manifest :func:`separate_song` writes for ``path``."""
    stems = options.stems or separator.stems
    offered = offered_stems(separator.stems)
    unknown = [s for s in stems if s not in offered]
    if unknown:
        raise BridgeError(f"stem '{unknown[0]}' is not produced by model '{separator.name}'; "
                          f"it gives {', '.join(offered)}")
    check_template(options.template)
    fields = dict(naming.fields(), ext=options.ext, model=separator.name)
    targets = {s: expand(options.template, Path(options.out_dir), stem=s, **fields) for s in stems}
    check_unique(targets)
    first = next(iter(targets.values()))
    manifest = first.parent / f".{naming.track}.{separator.name}.separate.json"
    return targets, manifest


def separate_song(path, separator: ChunkedSeparator, options: SeparateOptions, *, naming: Naming | None = None,
                  cache: StemCache | None = None, force: bool = True, progress: Progress | None = None,
                  on_clip: Clipped | None = None) -> SongResult:
    """:func:`separate_file` with a stem cache, resume (``force=False`` skips an up-to-date song)
    and a hidden manifest beside the stems recording what made them."""
    song = SongFile.open(path, naming, stream=options.stream)
    targets, manifest = separate_targets(song.path, separator, options, song.naming)
    # The input's digest decides whether a song is up to date when it has a record; otherwise
    # (a forced run, a first run) it is needed only in the record written at the end, and is
    # hashed meanwhile.
    digest = BackgroundSha256(song.path)
    expected = {"kind": "separate", "input_sha256": None,
                "model": model_identity(separator) or separator.name, "stems": list(targets), "ext": options.ext,
                "bit_depth": options.bit_depth, "stembridge": __version__, "bwf": options.bwf,
                "project": options.project}
    if options.codec is not None or options.bitrate is not None:  # recorded only when set: older records stay current
        expected.update(codec=options.codec, bitrate=options.bitrate)
    if made_by(separator) is not None:  # an ensemble: which model (or method) made each stem
        expected["made_by"] = made_by(separator)
    hand = daw.separation_plan(song.path, header=song.header, options=options, separator_name=separator.name,
                               targets=targets, track=song.naming.track, made_by=made_by(separator))
    handoff = {"project": hand.project} if hand.project is not None else {}
    if not force and manifest.is_file():
        expected["input_sha256"] = digest.result()
    if not force and _separate_up_to_date(manifest, expected, {**targets, **handoff}):
        return song.result("skipped", {**targets, **handoff})
    header = song.header
    found = tags.read(song.path)
    rate = encoders.output_rate(options.ext, header.sample_rate)  # the source's, but opus's 48 kHz
    audio = AudioFiles([(stem, target, header.channels) for stem, target in targets.items()],
                       source_rate=header.sample_rate, sample_rate=rate,
                       bit_depth=options.bit_depth, codec=options.codec, bitrate=options.bitrate,
                       inputs=[song.path], hand=hand, measure=options.report, kind="separate",
                       bext_loudness=False,
                       tags={stem: found.named(song.naming.track, tags.output_suffix(stem)) for stem in targets})
    sinks = [audio]
    if options.report:
        sinks.append(Preview(audio, sample_rate=header.sample_rate, frames=header.frames))
    if hand.project is not None:
        sinks.append(Project(hand.project, lambda: daw.separation_project(
            hand.project, source=song.path, source_seconds=header.seconds,
            files={f.label: f.path for f in audio.files}, frames={f.label: f.frames for f in audio.files},
            channels=header.channels, sample_rate=rate, model=separator.name, tree=hand.tree,
            made_by=hand.made_by)))
    sinks.append(Record(manifest, expected, song.path, late={"input_sha256": digest.result}))
    source = StemSource(song.path, header, separator, cache=cache)
    result = run_song(song, sinks, source=source, feed=_StemsFeed(source.stream, tuple(targets)),
                      out_dir=Path(options.out_dir), gain=Gain, progress=progress)
    for f in audio.files:
        if f.clipped:
            report_clipping(f.path, f.clipped, on_clip)
    return result


def _separate_up_to_date(manifest: Path, expected: dict, targets: dict) -> bool:
    """True if the hidden record holds what this run would write (JSON-typed, as read back) and
    every file is there."""
    record = read_json(manifest)
    expected = json.loads(json.dumps(expected))  # tuples become lists, as they were stored
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return False
    outputs = record.get("outputs")
    return isinstance(outputs, dict) and all(Path(p).is_file() and Path(outputs.get(s, "")) == Path(p)
                                             for s, p in targets.items())


class _StemsFeed:
    """A separation stream's stems, with the sums asked for (a 4-stem ``instrumental``)."""

    def __init__(self, stream, wanted: tuple[str, ...]):
        self.stream = stream
        self.wanted = wanted

    def open(self) -> None:
        pass

    def process(self, audio) -> Block:
        return Block(None, with_sums(self.stream.process(audio), self.wanted))

    def finish(self) -> Block:
        return Block(None, with_sums(self.stream.finish(), self.wanted), last=True)
