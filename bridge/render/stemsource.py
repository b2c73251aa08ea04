"""Where a song's stems come from: the stem cache replayed, the separator filling the cache, or
the separator alone.

A cache entry is named by what decides the stems (:func:`~bridge.render.cache.entry_key`): the song's
decoded audio (FLAC's own MD5 of its samples where it has one), the pre chain with its automation
and its plugins' files, the model's identity and the separation settings.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..audio import files
from .cache import FillStream, ReplayStream, StemCache, audio_digest, entry_key
from ..errors import BridgeError
from .records import model_identity

#: Seconds of audio decoded per block while hashing a song that has no MD5 of its own.
HASH_BLOCK_SECONDS = 10.0


class StemSource:
    """The separation stream for one song: replayed from the cache, filled into it, or plain.

    An ensemble (a separator with ``members``) gets one source per model, each on its own cache
    entry, so another method, other weights or another per-stem choice replays every model's
    stems and runs none; the ensemble combines their streams.

    Attributes
    ----------
    cached : bool
        Every model's stems came from the cache (no model ran).
    models : dict of str to dict
        Once the song has streamed: each model's ``{"ran": bool, "seconds": float}`` (seconds in
        its stream: separating, or reading the cache).
    """

    def __init__(self, path: Path, header: files.AudioInfo, separator, *, cache: StemCache | None, pre=(),
                 pre_lanes=None, _audio: str | None = None):
        self.writer = None
        self.cached = False
        self._parts: dict[str, StemSource] = {}
        self.name = separator.name
        members = getattr(separator, "members", None)
        if members is not None:
            audio = _audio_identity(path, header) if cache is not None else None
            self._parts = {name: StemSource(path, header, member, cache=cache, pre=pre, pre_lanes=pre_lanes,
                                            _audio=audio) for name, member in members.items()}
            self.stream = separator.stream(sample_rate=header.sample_rate, channels=header.channels,
                                           member_streams={n: p.stream for n, p in self._parts.items()})
            self.cached = all(p.cached for p in self._parts.values())
            return
        self.stream = _Timed(self._open(path, header, separator, cache, pre, pre_lanes, _audio))

    def _open(self, path, header, separator, cache, pre, pre_lanes, audio):
        from_input = getattr(separator, "stems_from_input", None)
        if from_input is not None:  # stems the input file holds (file-stems): read, never cached
            return from_input(path, header)
        identity = model_identity(separator) if cache is not None else None
        if identity is None:
            return separator.stream(sample_rate=header.sample_rate, channels=header.channels)
        residual = separator.residual
        computed = tuple(s for s in separator.stems if s != residual)
        key = entry_key(audio=audio or _audio_identity(path, header), sample_rate=header.sample_rate,
                        channels=header.channels, frames=header.frames,
                        pre=_pre_identity(pre, pre_lanes and pre_lanes.effects), model=identity,
                        settings=identity["settings"], stems=computed, residual=residual)
        entry = cache.open(key, stems=computed, frames=header.frames, channels=header.channels)
        if entry is not None:
            self.cached = True
            return ReplayStream(entry, stems=separator.stems, residual=residual, channels=header.channels)
        fresh = separator.stream(sample_rate=header.sample_rate, channels=header.channels)
        self.writer = cache.writer(key, stems=computed, sample_rate=header.sample_rate, channels=header.channels)
        return FillStream(fresh, self.writer)

    @property
    def models(self) -> dict[str, dict]:
        if self._parts:
            timings = getattr(self.stream, "timings", {})
            return {part.name: {"ran": not part.cached, "seconds": round(timings.get(name, 0.0), 3)}
                    for name, part in self._parts.items()}
        return {self.name: {"ran": not self.cached, "seconds": round(self.stream.seconds, 3)}}

    def commit(self, source: Path) -> None:
        """The song was separated to its end: make the cache entries visible."""
        for part in self._parts.values():
            part.commit(source)
        if self.writer is not None:
            self.writer.commit(extra={"source": str(source)})
            self.writer = None

    def abort(self) -> None:
        for part in self._parts.values():
            part.abort()
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class _Timed:
    """A separation stream that counts the seconds spent in it (for the run summary)."""

    def __init__(self, stream):
        self._stream = stream
        self.seconds = 0.0

    def process(self, block):
        started = time.perf_counter()
        try:
            return self._stream.process(block)
        finally:
            self.seconds += time.perf_counter() - started

    def finish(self):
        started = time.perf_counter()
        try:
            return self._stream.finish()
        finally:
            self.seconds += time.perf_counter() - started


def _pre_identity(specs, lanes=None) -> list:
    """The pre chain as the cache sees it: its specs, for plugins their files' sizes and times,
    and the automation lanes on its effects (``{index: ((param, Lane), ...)}``), as evaluated."""
    out = []
    for index, spec in enumerate(specs):
        item = spec.to_yaml()
        if (lanes or {}).get(index):
            item["automation"] = [[param, lane.curve, list(lane.times), list(lane.values)]
                                  for param, lane in lanes[index]]
        if spec.kind == "vst3":
            from ..host import plugins  # here: the plugin host imports pedalboard, which separate never needs

            try:  # a name is looked up as a render would; an unknown one fails the render later
                bundle = plugins.resolve(spec.name, base=spec.base, where="pre")
            except BridgeError:
                bundle = spec.resolve(spec.name)
            bundle_files = sorted(p for p in bundle.rglob("*") if p.is_file()) if bundle.is_dir() else [bundle]
            item["files"] = [(str(p.relative_to(bundle)) if bundle.is_dir() else p.name, *_stat(p)) for p in bundle_files]
        out.append(item)
    return out


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _audio_identity(path: Path, header: files.AudioInfo) -> str:
    """A hash of the song's decoded audio: FLAC's own MD5 of its samples where the file has one
    (no decoding needed), else sha256 of the decoded float32 samples."""
    md5 = files.flac_audio_md5(path) if header.format == "FLAC" else None
    if md5 is not None:
        return f"flac-md5:{md5}:{header.subtype}"
    block = max(1, int(HASH_BLOCK_SECONDS * header.sample_rate))
    return audio_digest(files.stream(path, block_frames=block, stream=header.stream))
