"""Outputs as sinks: everything a render writes, fed every block and finished or aborted together.

A sink is opened once a song's outputs are planned (:meth:`Sink.open`), is given every block of
the mix and the stems (:meth:`Sink.process`), is told when the song has ended (:meth:`Sink.end`)
and writes what waited for the song's gain (:meth:`Sink.finish`); :meth:`Sink.abort` removes
whatever it wrote, partial or final. After ``end`` a sink holds no open file and pickles, so a
gain that is known only later (album loudness, measured over every song) is one mechanism for
every kind of output: the song's sinks wait, and whoever knows the gain finishes them.
``needs_gain`` says whether a sink's files depend on the gain; those that do not are final at
``end``.

The sinks: :class:`AudioFiles` (the mix and stem files, with their Broadcast WAV chunks and tags,
one pass or two for a loudness target), :class:`NiStems`, :class:`Video` (the input video with the
mix as its audio), :class:`Project` (a REAPER project) and
:class:`Manifest` / :class:`Record` (what made the files, written last).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from ..audio import files, tags as song_tags
from ..audio.buffers import StreamResampler, db_to_gain
from ..audio.loudness import LoudnessMeter, MeterState
from ..daw import bwf, nistems, reaper, video
from .records import write_json, write_manifest_record


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a song as the sinks see it: the mix after the master chain (None when only
    stems are written), the stems after their faders, and the graph's taps (the stems before the
    fader, or straight from the separator; see :class:`bridge.render.graph.GraphStream`)."""

    mix: np.ndarray | None
    stems: Mapping[str, np.ndarray]
    taps: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    last: bool = False


@dataclasses.dataclass(frozen=True)
class Gain:
    """The song's final gain in dB, and the loudness facts the manifest records (None: no target)."""

    db: float = 0.0
    loudness: dict | None = None


class Sink(Protocol):
    """Something a render writes; see the module docstring."""

    needs_gain: bool

    @property
    def targets(self) -> tuple[Path, ...]:
        """The final files it writes (their folders are made for the song and removed if it fails)."""

    def open(self, scratch: Path | None) -> None:
        """Open its files; ``scratch`` is a private folder for first passes (None unless some
        sink of the song ``needs_gain``)."""

    def process(self, block: Block) -> None: ...

    def end(self) -> None: ...

    def finish(self, gain: Gain, written: Mapping[str, Path]) -> dict[str, Path]:
        """Write the final files; ``written`` holds what the sinks before this one wrote."""

    def abort(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class OutputStats:
    """What a manifest records of one audio output; levels in dB (None for silence)."""

    file: str
    channels: int
    sample_rate: int
    frames: int
    peak_dbfs: float | None
    true_peak_dbtp: float | None
    loudness_lufs: float | None
    clipped_samples: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _File:
    """One audio output: where, how many channels, and while the song streams its resampler,
    meter and writer; after the song, what was measured."""

    label: str
    path: Path
    channels: int
    resampler: StreamResampler | None = None
    meter: LoudnessMeter | None = None
    writer: files.AudioWriter | None = None
    scratch: Path | None = None  # the float first pass, two-pass loudness only
    loudness: MeterState | None = None
    sample_rate: int = 0
    frames: int = 0
    peak: float = 0.0
    clipped: int = 0
    final: bool = False


class AudioFiles:
    """The mix and stem files, streamed, atomic, with Broadcast WAV chunks where the hand-off asks.

    Parameters
    ----------
    outputs : sequence of (label, path, channels)
        ``label`` is ``mix`` or a stem name.
    source_rate, sample_rate : int
        The song's rate and the output rate (Hz); outputs are resampled between them.
    bit_depth : {16, 24, 32}
    inputs : sequence of Path
        Files no output may replace.
    two_pass : bool
        A loudness target: write float files to the scratch folder first and the final files
        once the gain is known (the sink then ``needs_gain``).
    hand : HandOff, optional
        Adds Broadcast WAV chunks (:meth:`bridge.daw.handoff.HandOff.finisher`).
    view : str, optional
        Write the stems of this graph tap instead of the stems after their faders.
    measure : bool
        Meter loudness and true peak (for the manifest, the gain and the bext chunk); off, the
        bext loudness fields say "unknown".
    kind : str
        ``render`` or ``separate``, for the bext description.
    bext_loudness : bool
        Write the measured loudness into the bext chunk (False: "not measured", as when
        ``measure`` is off; ``separate`` meters only for the run report, which must not change
        the files it writes).
    codec, bitrate : optional
        The encoded formats' codec and bit rate (kbit/s); see :class:`bridge.audio.files.AudioWriter`.
    tags : mapping of label to Tags, optional
        What each output's tags say (:mod:`bridge.audio.tags`), written before its rename.
    """

    def __init__(self, outputs, *, source_rate: int, sample_rate: int, bit_depth, inputs=(), two_pass: bool = False,
                 hand=None, view: str | None = None, measure: bool = True, kind: str = "render",
                 bext_loudness: bool = True, codec: str | None = None, bitrate: float | None = None,
                 tags: Mapping[str, song_tags.Tags] | None = None):
        self.files = [_File(label, Path(path), channels) for label, path, channels in outputs]
        self.source_rate = source_rate
        self.sample_rate = sample_rate
        self.bit_depth = bit_depth
        self.inputs = tuple(inputs)
        self.needs_gain = two_pass
        self.hand = hand
        self.view = view
        self.measure = measure
        self.kind = kind
        self.bext_loudness = bext_loudness
        self.codec, self.bitrate = codec, bitrate
        self.tags = dict(tags or {})

    @property
    def targets(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    def open(self, scratch: Path) -> None:
        for f in self.files:
            f.resampler = StreamResampler(orig_sr=self.source_rate, target_sr=self.sample_rate, channels=f.channels)
            if self.measure:
                f.meter = LoudnessMeter(sample_rate=self.sample_rate, channels=f.channels)
            if self.needs_gain:
                f.scratch = scratch / f"{f.label}.wav"
            if self.needs_gain:  # the first pass, in float
                f.writer = files.AudioWriter(f.scratch, sample_rate=self.sample_rate, channels=f.channels, bit_depth=32,
                                             inputs=self.inputs)
            else:
                f.writer = self._writer(f)

    def process(self, block: Block) -> None:
        stems = block.taps[self.view] if self.view else block.stems
        for f in self.files:
            audio = f.resampler.process(block.mix if f.label == "mix" else stems[f.label], last=block.last)
            if f.meter is not None:
                f.meter.process(audio)
            f.writer.write(audio)

    def end(self) -> None:
        for f in self.files:
            if f.meter is not None:
                f.loudness = f.meter.state()

        def close(f: _File) -> None:
            if self.needs_gain:
                f.writer.close()
            else:
                f.writer.close(finish=self._finisher(f, 0.0))
                f.final = True
            self._keep(f, f.writer)
            f.resampler = f.meter = f.writer = None

        # A file's close is disk work of its own (its last queued blocks, the Broadcast WAV
        # chunks moved in, the fsync): the files are closed side by side.
        _side_by_side(close, self.files)

    def finish(self, gain: Gain, written: Mapping[str, Path]) -> dict[str, Path]:
        if self.needs_gain:
            for f in self.files:
                self._keep(f, self._apply_gain(f, gain.db))
                f.final = True
        return {f.label: f.path for f in self.files}

    def abort(self) -> None:
        for f in self.files:
            if f.writer is not None:
                f.writer.abort()
            if f.final:  # finished before something else failed: the song's outputs go together
                f.path.unlink(missing_ok=True)

    def stats(self, gain_db: float) -> dict[str, OutputStats]:
        """Per output: peak, true peak and loudness of what was written. The meters ran on the
        first pass; the loudness gain shifts their readings by exactly ``gain_db``."""
        def db(value: float) -> float | None:
            return round(value + gain_db, 3) if np.isfinite(value) else None

        return {f.label: OutputStats(file=f.path.name, channels=f.channels, sample_rate=f.sample_rate,
                                     frames=f.frames, peak_dbfs=_db(f.peak),
                                     true_peak_dbtp=db(f.loudness.true_peak_db), loudness_lufs=db(f.loudness.integrated),
                                     clipped_samples=f.clipped)
                for f in self.files}

    @property
    def loudness(self) -> dict[str, MeterState]:
        """Each output's meter state, once the song has ended (album loudness pools them)."""
        return {f.label: f.loudness for f in self.files}

    def gain_db(self, *, target: float, ceiling: float) -> float:
        """One gain for every output: the mix's loudness to ``target`` and its true peak under
        ``ceiling``; without a mix, the loudest output stands for the sum of the stems."""
        state = self.loudness.get("mix") or max(self.loudness.values(), key=lambda s: s.integrated)
        return loudness_gain(state.integrated, state.true_peak_db, target=target, ceiling=ceiling)

    def _keep(self, f: _File, writer: files.AudioWriter) -> None:
        f.sample_rate, f.frames, f.peak, f.clipped = writer.sample_rate, writer.frames, writer.peak, writer.clipped

    def _writer(self, f: _File) -> files.AudioWriter:
        return files.AudioWriter(f.path, sample_rate=self.sample_rate, channels=f.channels, bit_depth=self.bit_depth,
                                 codec=self.codec, bitrate=self.bitrate, inputs=self.inputs)

    def _finisher(self, f: _File, gain_db: float) -> Callable[[Path], None] | None:
        """What is added to ``f`` before its rename: Broadcast WAV chunks (its measured loudness
        shifted by the gain), then its tags (after them: mutagen appends its ``id3 `` chunk)."""
        steps = [step for step in (self._broadcast(f, gain_db), self._tagger(f)) if step is not None]
        if not steps:
            return None

        def finish(partial: Path) -> None:
            for step in steps:
                step(partial)
        return finish

    def _tagger(self, f: _File) -> Callable[[Path], None] | None:
        tags = self.tags.get(f.label)
        if tags is None:
            return None
        return lambda partial: song_tags.write(partial, tags, extension=f.path.suffix)

    def _broadcast(self, f: _File, gain_db: float) -> Callable[[Path], None] | None:
        """Broadcast WAV chunks for ``f``, with its measured loudness shifted by the gain."""
        if self.hand is None:
            return None
        loudness = bwf.Loudness()
        if f.loudness is not None and self.bext_loudness:
            def shifted(value: float) -> float | None:
                return value + gain_db if np.isfinite(value) else None

            extra = f.loudness.descriptors()
            loudness = bwf.Loudness(integrated=shifted(f.loudness.integrated),
                                    true_peak=shifted(f.loudness.true_peak_db),
                                    max_momentary=shifted(extra.max_momentary),
                                    max_short_term=shifted(extra.max_short_term), range=extra.loudness_range)
        return self.hand.finisher(f.label, f.path, channels=f.channels, bit_depth=self.bit_depth, loudness=loudness,
                                  kind=self.kind)

    def _apply_gain(self, f: _File, gain_db: float) -> files.AudioWriter:
        """Second pass: the float first pass times the gain into the final file, atomically."""
        gain = np.float32(db_to_gain(gain_db))
        f.writer = self._writer(f)
        for block in files.stream(f.scratch):
            f.writer.write(block * gain)
        writer, f.writer = f.writer, None
        writer.close(finish=self._finisher(f, gain_db))
        return writer


def _side_by_side(call: Callable[[object], None], items) -> None:
    """``call(item)`` for every item, each in a thread of its own; when all are done, the first
    error (in item order) is raised."""
    items = list(items)
    if len(items) < 2:
        for item in items:
            call(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="close") as pool:
        futures = [pool.submit(call, item) for item in items]
    for future in futures:
        future.result()


class _EncodedAtEnd:
    """A sink whose one file is encoded from scratch files once the song's gain is known: ``open``
    makes ``self._feed``, :meth:`_encode` writes the target; ``abort`` removes what it made."""

    needs_gain = True
    key = ""  # the label of the file it writes

    def __init__(self, target: Path):
        self.target = Path(target)
        self._feed = None
        self._written = False

    @property
    def targets(self) -> tuple[Path, ...]:
        return (self.target,)

    def _encode(self, gain_db: float) -> Path:
        raise NotImplementedError

    def finish(self, gain: Gain, written: Mapping[str, Path]) -> dict[str, Path]:
        path = self._encode(gain.db)
        self._written = True
        return {self.key: path}

    def abort(self) -> None:
        if self._feed is not None:
            self._feed.abort()
        if self._written:
            self.target.unlink(missing_ok=True)


class NiStems(_EncodedAtEnd):
    """The NI Stems file: the mix and four stems encoded at the end, times the gain."""

    key = "nistems"

    def __init__(self, target: Path, *, source_rate: int, sample_rate: int, title: str,
                 tags: song_tags.Tags | None = None):
        super().__init__(target)
        self.source_rate, self.sample_rate, self.title, self.tags = source_rate, sample_rate, title, tags
        self._scratch = None

    def open(self, scratch: Path) -> None:
        self._feed = nistems.RenderFeed(self.target, scratch, orig_sr=self.source_rate, sample_rate=self.sample_rate,
                                        title=self.title, tags=self.tags)

    def process(self, block: Block) -> None:
        self._feed.process(block.mix, block.stems, last=block.last)

    def end(self) -> None:
        self._scratch, self._feed = self._feed.close_scratch(), None

    def _encode(self, gain_db: float) -> Path:
        return self._scratch.encode(gain_db)


class Video(_EncodedAtEnd):
    """The input video with the mix as its audio (:mod:`bridge.daw.video`), remuxed at the end,
    times the gain."""

    key = "video"

    def __init__(self, source: video.VideoSource, target: Path, *, sample_rate: int, channels: int, frames: int):
        super().__init__(target)
        self.source = source
        self.sample_rate, self.channels, self.frames = sample_rate, channels, frames

    def open(self, scratch: Path) -> None:
        self._feed = video.VideoFeed(self.source, self.target, scratch, sample_rate=self.sample_rate,
                                     channels=self.channels, frames=self.frames)

    def process(self, block: Block) -> None:
        self._feed.process(block.mix)

    def end(self) -> None:
        self._feed.close_scratch()

    def _encode(self, gain_db: float) -> Path:
        return self._feed.finish(gain_db)


class _OneFile:
    """A sink that writes one file when it is finished and takes no audio (the rest of the
    protocol is a no-op); ``abort`` removes the file once it is written."""

    needs_gain = False
    key: str | None = None  # the label it adds to the files written

    def __init__(self, target: Path):
        self.target = Path(target)
        self._written = False

    @property
    def targets(self) -> tuple[Path, ...]:
        return (self.target,)

    def open(self, scratch: Path | None) -> None:
        pass

    def process(self, block: Block) -> None:
        pass

    def end(self) -> None:
        pass

    def finish(self, gain: Gain, written: Mapping[str, Path]) -> dict[str, Path]:
        path = self._write(gain, written)
        self._written = True
        return {self.key: path} if self.key else {}

    def _write(self, gain: Gain, written: Mapping[str, Path]) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        if self._written:
            self.target.unlink(missing_ok=True)


class Project(_OneFile):
    """A REAPER project, built when the song ends (every length is known then) by ``build``,
    written with the final files."""

    key = "project"

    def __init__(self, target: Path, build: Callable[[], reaper.Project]):
        super().__init__(target)
        self._build = build
        self._project = None

    def end(self) -> None:
        self._project, self._build = self._build(), None  # the builder may hold unpicklable state

    def _write(self, gain: Gain, written: Mapping[str, Path]) -> Path:
        return reaper.write(self.target, self._project)


class Manifest(_OneFile):
    """A render's manifest (:mod:`bridge.render.records`), written last: the record of the input,
    preset and model, and each output's levels from ``audio``."""

    needs_gain = True  # it records the gain and the levels after it
    key = "manifest"

    def __init__(self, target: Path, record: dict, audio: AudioFiles):
        super().__init__(target)
        self.record = record
        self.audio = audio

    def _write(self, gain: Gain, written: Mapping[str, Path]) -> Path:
        stats = {label: s.to_json() for label, s in self.audio.stats(gain.db).items()}
        return write_manifest_record(self.target, self.record, outputs=stats, written=dict(written),
                                     loudness=gain.loudness)


class Record(_OneFile):
    """``separate``'s hidden resume record: ``expected`` (what made the stems) and the files
    written. Not among the files a song reports. ``late`` gives values of ``expected`` known
    only when the record is written (a digest computed meanwhile), by key."""

    def __init__(self, target: Path, expected: dict, source: Path, *, late: Mapping[str, Callable[[], object]] = {}):
        super().__init__(target)
        self.expected = expected
        self.late = dict(late)
        self.source = Path(source)

    @property
    def targets(self) -> tuple[Path, ...]:
        return ()  # beside the stems, never in a folder of its own

    def _write(self, gain: Gain, written: Mapping[str, Path]) -> Path:
        late = {key: value() for key, value in self.late.items()}
        return write_json(self.target, {**self.expected, **late, "input": str(self.source.resolve()),
                                        "outputs": {label: str(path) for label, path in written.items()}})


#: Outputs at or below this loudness are treated as silence: no loudness gain is applied.
SILENCE_LUFS = -70.0


def loudness_gain(loudness: float, true_peak_db: float, *, target: float, ceiling: float) -> float:
    """``min(target - loudness, ceiling - true_peak)`` in dB; 0 for silence."""
    if not np.isfinite(loudness) or loudness <= SILENCE_LUFS:
        return 0.0
    return min(target - loudness, ceiling - true_peak_db)


def _db(peak: float) -> float | None:
    return round(20 * float(np.log10(peak)), 3) if peak > 0 else None
