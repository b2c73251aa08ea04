"""Run separations and sessions over files, streaming block by block, writing atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..version import __version__
from ..audio import files, partials
from ..audio.buffers import StreamResampler, db_to_gain
from .cache import StemCache
from ..daw import bwf, handoff as daw, nistems
from ..errors import OutputError
from .graph import RenderGraph
from ..audio.loudness import LoudnessMeter
from ..preset.templates import check_unique, expand
from .records import file_sha256, manifest_record, model_identity, read_json, write_manifest_record
from ..separation.runner import check_channels
from .songs import BLOCK_SECONDS, Naming, Progress, SongResult, missing_folders, remove_empty
from .stemsource import StemSource

#: Outputs at or below this loudness are treated as silence: no loudness gain is applied.
SILENCE_LUFS = -70.0


@dataclasses.dataclass
class _Output:
    """One file a render writes: where, how many channels, its resampler, meter and writer."""

    label: str
    path: Path
    channels: int
    resampler: StreamResampler
    meter: LoudnessMeter
    writer: files.AudioWriter | None = None


@dataclasses.dataclass
class PendingRender:
    """A song rendered to float scratch files, waiting for one gain (album loudness).

    Picklable: it crosses from the worker that rendered the song to whoever applies the gain.
    ``loudness`` holds each output's meter state (:meth:`LoudnessMeter.state`).
    """

    path: Path
    targets: dict[str, Path]
    scratch: dict[str, Path]
    manifest: Path
    record: dict
    report: dict
    loudness: dict
    bit_depth: int
    seconds: float
    cached: bool
    handoff: "daw.Deferred | None" = None  # the project and NI Stems, written with the gain


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
    record = read_json(manifest)
    if not isinstance(record, dict):
        return False
    try:
        same = (record["stembridge"] == __version__ and record["input"]["sha256"] == input_sha256
                and record["preset"]["session"] == json.loads(json.dumps(graph.session.to_dict()))
                and record["model"].get("sha256") == _model_sha(graph.separator)
                and record["model"].get("identity") == json.loads(json.dumps(model_identity(graph.separator))))
        if album is not None:
            same = same and (record.get("loudness") or {}).get("album", {}).get("songs") == album
        outputs = record["outputs"]
    except (KeyError, TypeError):
        return False
    handoff = record.get("handoff") or {}  # a deleted REAPER project or NI Stems file is rendered again
    return same and all(label in outputs and Path(outputs[label]["path"]) == target and target.is_file()
                        for label, target in targets.items()) and all(Path(p).is_file() for p in handoff.values())


def _model_sha(separator) -> str | None:
    card = getattr(getattr(separator, "engine", None), "card", None)
    return getattr(card, "sha256", None)


def render_song(path, graph: RenderGraph, out_dir, *, naming: Naming | None = None, cache: StemCache | None = None,
                force: bool = True, progress: Progress | None = None, defer_gain_to: Path | None = None,
                input_sha256: str | None = None, album: list[str] | None = None) -> SongResult:
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
        :class:`PendingRender` for :func:`finish_render`, instead of applying the song's own gain.
    album : list of str, optional
        The sorted input hashes of the song's album (album loudness), for the resume check.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    naming = naming or Naming.of(path)
    header = files.info(path)
    check_channels(header.channels, source=str(path))
    session, separator = graph.session, graph.separator
    o = session.output
    rate = o.sample_rate or header.sample_rate
    targets, manifest = render_targets(path, graph, out_dir, naming)
    digest = input_sha256 or file_sha256(path)
    if not force and up_to_date(manifest, input_sha256=digest, graph=graph, targets=targets, album=album):
        return SongResult(path, "skipped", written={**targets, "manifest": manifest}, seconds=header.seconds)
    hand = daw.plan(path, header=header, session=session, separator_name=separator.name, targets=targets, rate=rate,
                    separator_stems=separator.stems, out_dir=out_dir, track=naming.track)
    raw_channels = header.channels if hand.tap == "raw" else graph.channels  # raw stems keep the input's channels

    outputs = [_Output(label, target, graph.channels if label == "mix" else raw_channels,
                       StreamResampler(orig_sr=header.sample_rate, target_sr=rate,
                                       channels=graph.channels if label == "mix" else raw_channels),
                       LoudnessMeter(sample_rate=rate, channels=graph.channels if label == "mix" else raw_channels))
               for label, target in targets.items()]
    target_lufs = o.loudness_lufs
    two_pass = target_lufs is not None
    created = missing_folders([*targets.values(), manifest], out_dir)
    separation = None
    written: dict[str, Path] = {}
    feed = None
    failed: list[bool] = []
    with contextlib.ExitStack() as stack:
        # Registered first, so it runs last: only once the scratch folder is gone are a failed
        # song's new folders empty (an unusable plugin must not leave an empty output folder).
        stack.callback(lambda: remove_empty(created) if failed else None)
        scratch = defer_gain_to if defer_gain_to is not None else stack.enter_context(partials.scratch_folder(out_dir))
        try:
            if hand.nistems is not None:
                feed = nistems.RenderFeed(hand.nistems, scratch, orig_sr=header.sample_rate, sample_rate=rate,
                                          title=naming.track)
            for out in outputs:
                first_pass = scratch / f"{out.label}.wav" if two_pass else out.path
                out.writer = files.AudioWriter(first_pass, sample_rate=rate, channels=out.channels,
                                            bit_depth=32 if two_pass else o.bit_depth, inputs=[path])
            separation = StemSource(path, header, separator, cache=None if graph._pre is not None else cache,
                                     pre=session.pre, pre_lanes=session.lanes("pre"))
            stream = graph.stream(sample_rate=header.sample_rate, channels=header.channels,
                                  separation=separation.stream, taps=hand.taps)
            done = 0
            block = max(1, int(BLOCK_SECONDS * header.sample_rate))
            for audio in files.stream(path, block_frames=block):
                mix, stems = stream.process(audio)
                _emit(outputs, mix, stream.taps[hand.tap] if hand.tap else stems)
                if feed is not None:
                    feed.process(mix, stems)
                done += audio.shape[1]
                if progress:
                    progress(done, header.frames)
            mix, stems = stream.finish()
            _emit(outputs, mix, stream.taps[hand.tap] if hand.tap else stems, last=True)
            if feed is not None:
                feed.process(mix, stems, last=True)
            separation.commit(path)
            deferred = daw.Deferred(
                plan=hand, nistems=feed.close_scratch() if feed is not None else None,
                project=daw.session_project(hand, session=session, source=path, source_seconds=header.seconds,
                                            files={o_.label: o_.path for o_ in outputs if o_.label != "mix"},
                                            frames={o_.label: o_.writer.frames for o_ in outputs},
                                            channels={o_.label: o_.channels for o_ in outputs},
                                            layout_channels=graph.channels) if hand.project is not None else None)
            record = manifest_record(source=path, header=header, session=session, separator=separator,
                                     input_sha256=digest)
            if defer_gain_to is not None and two_pass:
                scratch_files = {out.label: out.writer.close() for out in outputs}
                report = {out.label: _measure(out, 0.0) for out in outputs}
                pending = PendingRender(path, targets, scratch_files, manifest, record, report,
                                        {out.label: out.meter.state() for out in outputs}, o.bit_depth,
                                        header.seconds, separation.cached, handoff=deferred)
                return SongResult(path, "measured", seconds=header.seconds, pending=pending)
            gain_db = _loudness_gain(outputs, target_lufs, o.true_peak_db) if two_pass else 0.0
            for out in outputs:
                finish = _finisher(hand, out, gain_db, o.bit_depth)
                if two_pass:
                    out.writer = _apply_gain(out.writer.close(), out.path, gain_db, channels=out.channels,
                                             bit_depth=o.bit_depth, inputs=[path], finish=finish)
                    written[out.label] = out.path
                else:
                    written[out.label] = out.writer.close(finish=finish)
            report = {out.label: _measure(out, gain_db) for out in outputs}
            written.update(deferred.write(gain_db))
            loudness = None if not two_pass else {"target_lufs": target_lufs, "true_peak_ceiling_db": o.true_peak_db,
                                                  "gain_db": round(gain_db, 3), "scope": "track"}
            written["manifest"] = write_manifest_record(manifest, record, outputs=report, written=written,
                                                        loudness=loudness)
        except BaseException:
            for out in outputs:
                if out.writer is not None:
                    out.writer.abort()
            if feed is not None:
                feed.abort()
            for label, final in written.items():  # outputs finished before the failure go too
                if label != "manifest":
                    Path(final).unlink(missing_ok=True)
            if separation is not None:
                separation.abort()
            remove_empty(created)
            failed.append(True)
            raise
    return SongResult(path, "cached" if separation.cached else "rendered", written=written, seconds=header.seconds)


def finish_render(pending: PendingRender, *, gain_db: float, album: dict) -> dict[str, Path]:
    """Album loudness, second pass: apply ``gain_db`` to a :class:`PendingRender`'s scratch files,
    write the final files and the manifest (recording the album's gain and loudness)."""
    written, report = {}, {}
    try:
        for label, target in pending.targets.items():
            shifted = _shift(pending.report[label], gain_db)
            finish = None
            if pending.handoff is not None:
                extra = pending.loudness[label].descriptors()
                finish = pending.handoff.plan.finisher(
                    label, target, channels=shifted["channels"], bit_depth=pending.bit_depth,
                    loudness=bwf.Loudness(integrated=shifted["loudness_lufs"], true_peak=shifted["true_peak_dbtp"],
                                          max_momentary=extra.max_momentary + gain_db,
                                          max_short_term=extra.max_short_term + gain_db,
                                          range=extra.loudness_range))
            writer = _apply_gain(pending.scratch[label], target, gain_db, channels=pending.report[label]["channels"],
                                 bit_depth=pending.bit_depth, inputs=[pending.path], finish=finish)
            written[label] = writer.path
            report[label] = {**shifted, "clipped_samples": writer.clipped, "peak_dbfs": _db(writer.peak)}
        if pending.handoff is not None:
            written.update(pending.handoff.write(gain_db))
    except BaseException:
        for path in written.values():
            Path(path).unlink(missing_ok=True)
        raise
    written["manifest"] = write_manifest_record(pending.manifest, pending.record, outputs=report, written=written,
                                                loudness={**album, "gain_db": round(gain_db, 3), "scope": "album"})
    return written


def _shift(stats: dict, gain_db: float) -> dict:
    out = dict(stats)
    for key in ("true_peak_dbtp", "loudness_lufs"):
        if out[key] is not None:
            out[key] = round(out[key] + gain_db, 3)
    return out


def _emit(outputs: list[_Output], mix, stems, *, last: bool = False) -> None:
    for out in outputs:
        audio = out.resampler.process(mix if out.label == "mix" else stems[out.label], last=last)
        out.meter.process(audio)
        out.writer.write(audio)


def _loudness_gain(outputs: list[_Output], target: float, ceiling: float) -> float:
    """One gain (dB) for every output: the mix's loudness to ``target``, its true peak under ``ceiling``."""
    meter = next((out.meter for out in outputs if out.label == "mix"), None)
    if meter is None:  # stems only: aim their sum, approximated by the loudest stem
        meter = max((out.meter for out in outputs), key=lambda m: m.integrated)
    return loudness_gain(meter.integrated, meter.true_peak_db, target=target, ceiling=ceiling)


def loudness_gain(loudness: float, true_peak_db: float, *, target: float, ceiling: float) -> float:
    """``min(target - loudness, ceiling - true_peak)`` in dB; 0 for silence."""
    if not np.isfinite(loudness) or loudness <= SILENCE_LUFS:
        return 0.0
    return min(target - loudness, ceiling - true_peak_db)


def _apply_gain(scratch: Path, target: Path, gain_db: float, *, channels: int, bit_depth, inputs,
                finish=None) -> files.AudioWriter:
    """Second pass: a float first-pass file, times the gain, into the final file (atomically).

    ``finish`` is passed to :meth:`files.AudioWriter.close` (Broadcast WAV chunks). Returns the
    closed writer (its ``path``, ``peak``, ``frames`` and ``clipped`` count).
    """
    gain = np.float32(db_to_gain(gain_db))
    rate = files.info(scratch).sample_rate
    writer = files.AudioWriter(target, sample_rate=rate, channels=channels, bit_depth=bit_depth, inputs=inputs)
    try:
        for block in files.stream(scratch):
            writer.write(block * gain)
    except BaseException:
        writer.abort()
        raise
    writer.close(finish=finish)
    return writer


def _finisher(hand: "daw.HandOff", out: _Output, gain_db: float, bit_depth):
    """Broadcast WAV chunks for ``out``, with the loudness measured on it (shifted by the loudness gain)."""
    def shifted(value: float) -> float | None:
        return value + gain_db if np.isfinite(value) else None

    extra = out.meter.descriptors()
    loudness = bwf.Loudness(integrated=shifted(out.meter.integrated), true_peak=shifted(out.meter.true_peak_db),
                            max_momentary=shifted(extra.max_momentary), max_short_term=shifted(extra.max_short_term),
                            range=extra.loudness_range)
    return hand.finisher(out.label, out.path, channels=out.channels, bit_depth=bit_depth, loudness=loudness)


def _measure(out: _Output, gain_db: float) -> dict:
    """Peak, true peak and loudness of what was written.

    The meters ran on the first pass; the loudness gain shifts their readings by exactly ``gain_db``.
    """
    def db(value: float, shift: float = 0.0) -> float | None:
        return round(value + shift, 3) if np.isfinite(value) else None

    return {"file": out.path.name, "channels": out.channels, "sample_rate": out.writer.sample_rate,
            "frames": out.writer.frames, "peak_dbfs": _db(out.writer.peak),
            "true_peak_dbtp": db(out.meter.true_peak_db, gain_db),
            "loudness_lufs": db(out.meter.integrated, gain_db), "clipped_samples": out.writer.clipped}


def _db(peak: float) -> float | None:
    return round(20 * float(np.log10(peak)), 3) if peak > 0 else None
