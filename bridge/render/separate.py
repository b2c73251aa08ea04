"""Separate songs into stem files, streaming block by block, writing atomically.

``stembridge separate``: the separator's stems (and the sums asked for), with the stem cache,
resume, Broadcast WAV chunks and a REAPER project; no session, no mixing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..version import __version__
from ..audio import files
from .cache import StemCache
from ..daw import bwf, handoff as daw
from ..errors import BridgeError
from ..separation.models import offered_stems
from ..preset.templates import check_template, check_unique, expand
from .records import file_sha256, model_identity, read_json, write_json
from ..separation import ChunkedSeparator, with_sums
from ..separation.runner import check_channels
from .songs import BLOCK_SECONDS, Clipped, Naming, Progress, SongResult, missing_folders, remove_empty, report_clipping
from .stemsource import StemSource


@dataclasses.dataclass(frozen=True)
class SeparateOptions:
    """How :func:`separate_file` names and writes its outputs."""

    out_dir: Path
    template: str = "{track}/{stem}.{ext}"
    ext: str = "wav"
    bit_depth: files.BitDepth = 24
    stems: tuple[str, ...] | None = None
    bwf: bool = True  # wav stems carry bext (EBU Tech 3285 v2) and iXML chunks
    project: str | None = None  # "reaper": <track>.rpp beside the stems


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
    path = Path(path)
    naming = naming or Naming.of(path)
    header = files.info(path)
    check_channels(header.channels, source=str(path))
    targets, manifest = separate_targets(path, separator, options, naming)
    digest = file_sha256(path)
    expected = {"kind": "separate", "input_sha256": digest, "model": model_identity(separator) or separator.name,
                "stems": list(targets), "ext": options.ext, "bit_depth": options.bit_depth, "stembridge": __version__,
                "bwf": options.bwf, "project": options.project}
    hand = daw.separation_plan(path, header=header, options=options, separator_name=separator.name, targets=targets,
                               track=naming.track)
    handoff = {"project": hand.project} if hand.project is not None else {}
    if not force and _separate_up_to_date(manifest, expected, {**targets, **handoff}):
        return SongResult(path, "skipped", written={**targets, **handoff}, seconds=header.seconds)
    created = missing_folders([*targets.values()], Path(options.out_dir))
    separation = None
    writers = {}
    written: dict[str, Path] = {}
    try:
        separation = StemSource(path, header, separator, cache=cache)
        stream = separation.stream
        for stem, target in targets.items():
            writers[stem] = files.AudioWriter(target, sample_rate=header.sample_rate, channels=header.channels,
                                           bit_depth=options.bit_depth, inputs=[path])
        done = 0
        block = max(1, int(BLOCK_SECONDS * header.sample_rate))
        for audio in files.stream(path, block_frames=block):
            _write(writers, stream.process(audio))
            done += audio.shape[1]
            if progress:
                progress(done, header.frames)
        _write(writers, stream.finish())
        separation.commit(path)
        written = {stem: writer.close(finish=hand.finisher(stem, writer.path, channels=writer.channels,
                                                           bit_depth=options.bit_depth, loudness=bwf.Loudness(),
                                                           kind="separate"))
                   for stem, writer in writers.items()}
        if hand.project is not None:
            project = daw.separation_project(hand.project, source=path, source_seconds=header.seconds,
                                             files=dict(written), frames={s: w.frames for s, w in writers.items()},
                                             channels=header.channels, sample_rate=header.sample_rate,
                                             model=separator.name)
            written["project"] = daw.reaper.write(hand.project, project)
        write_json(manifest, {**expected, "input": str(path.resolve()),
                              "outputs": {s: str(p) for s, p in written.items()}})
    except BaseException:  # Ctrl-C while closing too: no partial file may outlive the run
        for writer in writers.values():
            writer.abort()
        for final in written.values():  # stems finished before a failure in the project go too
            Path(final).unlink(missing_ok=True)
        if separation is not None:
            separation.abort()
        remove_empty(created)
        raise
    for stem, writer in writers.items():
        if writer.clipped:
            report_clipping(written[stem], writer.clipped, on_clip)
    return SongResult(path, "cached" if separation.cached else "rendered", written=written, seconds=header.seconds)


def _separate_up_to_date(manifest: Path, expected: dict, targets: dict) -> bool:
    record = read_json(manifest)
    if record is None or any(record.get(k) != v for k, v in expected.items()):
        return False
    return all(Path(p).is_file() and Path(record["outputs"].get(s, "")) == Path(p) for s, p in targets.items())


def _write(writers: dict, stems: dict) -> None:
    stems = with_sums(stems, writers)
    for stem, writer in writers.items():
        writer.write(stems[stem])
