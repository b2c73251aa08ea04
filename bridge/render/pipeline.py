"""One song through a stream into its sinks: the steps every per-song job shares, written once.

:func:`run_song` opens the sinks, streams the song block by block through a :class:`Feed` into
them, ends them, and finishes them with the song's gain, or leaves them waiting for a gain known
later (album loudness: :class:`PendingSong`, finished by :func:`finish_pending`). On any failure,
Ctrl-C included, every sink is aborted, the stem cache entry being filled is dropped and the
folders made for the song are removed: nothing is left under a final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..audio import files, partials
from ..separation.runner import check_channels
from .sinks import AudioFiles, Block, Gain, Sink
from .songs import BLOCK_SECONDS, Naming, Progress, SongResult, missing_folders, remove_empty


class Feed(Protocol):
    """A song's audio, block by block, as the sinks see it; ``open`` builds what it runs (chains,
    plugins) once the sinks are open, so a failure there is cleaned up like any other."""

    def open(self) -> None: ...

    def process(self, audio: np.ndarray) -> Block: ...

    def finish(self) -> Block: ...


@dataclasses.dataclass(frozen=True)
class SongFile:
    """An input song, opened: its path, header and output naming."""

    path: Path
    header: files.AudioInfo
    naming: Naming

    @classmethod
    def open(cls, path, naming: Naming | None = None, *, stream: int | None = None) -> "SongFile":
        """Read the header and refuse what no separator takes (e.g. more than 2 channels).

        ``stream`` picks the file's audio stream (:func:`bridge.audio.files.info`); the header
        remembers it, and every later read of the song reads that stream.
        """
        path = Path(path)
        header = files.info(path, stream=stream)
        check_channels(header.channels, source=str(path))
        return cls(path, header, naming or Naming.of(path))

    def result(self, status: str, written=None, pending=None, models=None, preview=None) -> SongResult:
        return SongResult(self.path, status, written=dict(written or {}), seconds=self.header.seconds,
                          pending=pending, models=dict(models or {}), preview=preview)


@dataclasses.dataclass
class PendingSong:
    """A song whose sinks wait for a gain known later (album loudness). Picklable."""

    path: Path
    sinks: list
    seconds: float
    cached: bool

    @property
    def loudness(self) -> dict:
        """Each audio output's meter state, which the album's gain is measured from."""
        return next(s for s in self.sinks if isinstance(s, AudioFiles)).loudness

    @property
    def preview(self):
        """The report's pictures and levels, once finished (None without a report)."""
        return preview_of(self.sinks)


def preview_of(sinks) -> object:
    """The :class:`~bridge.render.preview.SongPreview` a song's report sink made, if it has one."""
    return next((s.result for s in sinks if getattr(s, "result", None) is not None), None)


def run_song(song: SongFile, sinks: Sequence[Sink], *, source, feed: Feed, out_dir: Path,
             gain: Callable[[], Gain], progress: Progress | None = None,
             defer_gain_to: Path | None = None) -> SongResult:
    """Stream ``song`` into ``sinks`` and finish them; see the module docstring.

    Parameters
    ----------
    source : StemSource
        Where the stems come from; committed to the stem cache once the song has ended.
    feed : Feed
        The song's blocks as the sinks see them; opened once the sinks are.
    gain : callable
        The song's :class:`Gain`, asked once the sinks have ended.
    defer_gain_to : Path, optional
        A scratch folder that outlives this call: if a sink needs the gain, return a
        ``measured`` result holding a :class:`PendingSong` instead of finishing.
    """
    created = missing_folders([t for sink in sinks for t in sink.targets], Path(out_dir))
    waits = any(sink.needs_gain for sink in sinks)  # only those keep first passes in a scratch folder
    deferred = defer_gain_to is not None and waits
    failed = []
    with contextlib.ExitStack() as stack:
        # Registered first, so it runs last: only once the scratch folder is gone are a failed
        # song's new folders empty (an unusable plugin must not leave an empty output folder).
        stack.callback(lambda: remove_empty(created) if failed else None)
        scratch = (defer_gain_to if deferred else
                   stack.enter_context(partials.scratch_folder(Path(out_dir))) if waits else None)
        try:
            for sink in sinks:
                sink.open(scratch)
            feed.open()
            _stream(song, feed, sinks, progress)
            for sink in sinks:
                sink.end()
            source.commit(song.path)
            if deferred:
                return song.result("measured", pending=PendingSong(song.path, list(sinks), song.header.seconds,
                                                                   source.cached), models=source.models)
            written = finish_sinks(sinks, gain())
        except BaseException:  # Ctrl-C too: no partial file may outlive the run
            for sink in sinks:
                sink.abort()
            source.abort()
            failed.append(True)
            raise
    return song.result("cached" if source.cached else "rendered", written, models=source.models,
                       preview=preview_of(sinks))


def _stream(song: SongFile, feed: Feed, sinks: Sequence[Sink], progress: Progress | None) -> None:
    done = 0
    block = max(1, int(BLOCK_SECONDS * song.header.sample_rate))
    for audio in files.stream(song.path, block_frames=block, stream=song.header.stream):
        out = feed.process(audio)
        for sink in sinks:
            sink.process(out)
        done += audio.shape[1]
        if progress:
            progress(done, song.header.frames)
    out = feed.finish()
    for sink in sinks:
        sink.process(out)


def finish_sinks(sinks: Sequence[Sink], gain: Gain) -> dict:
    """Finish every sink in order (each sees what the ones before it wrote); abort all on failure."""
    written: dict = {}
    try:
        for sink in sinks:
            written.update(sink.finish(gain, written))
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return written


def finish_pending(pending: PendingSong, gain: Gain) -> dict:
    """The second half of :func:`run_song` for a song that waited for its gain."""
    return finish_sinks(pending.sinks, gain)
