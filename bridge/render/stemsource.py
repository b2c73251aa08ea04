"""Where a song's stems come from: the stem cache replayed, the separator filling the cache, or
the separator alone.

A cache entry is named by what decides the stems (:func:`~bridge.render.cache.entry_key`): the song's
decoded audio (FLAC's own MD5 of its samples where it has one), the pre chain with its automation
and its plugins' files, the model's identity and the separation settings.
"""

from __future__ import annotations

from pathlib import Path

from ..audio import files
from ..host import plugins
from .cache import FillStream, ReplayStream, StemCache, audio_digest, entry_key
from ..errors import BridgeError
from .records import model_identity

#: Seconds of audio decoded per block while hashing a song that has no MD5 of its own.
HASH_BLOCK_SECONDS = 10.0


class StemSource:
    """The separation stream for one song: replayed from the cache, filled into it, or plain."""

    def __init__(self, path: Path, header: files.AudioInfo, separator, *, cache: StemCache | None, pre=(),
                 pre_lanes=None):
        self.stream = None
        self.writer = None
        self.cached = False
        identity = model_identity(separator) if cache is not None else None
        if identity is None:
            self.stream = separator.stream(sample_rate=header.sample_rate, channels=header.channels)
            return
        residual = separator.residual
        computed = tuple(s for s in separator.stems if s != residual)
        key = entry_key(audio=_audio_identity(path, header), sample_rate=header.sample_rate,
                        channels=header.channels, frames=header.frames, pre=_pre_identity(pre, pre_lanes and pre_lanes.effects), model=identity,
                        settings=identity["settings"], stems=computed, residual=residual)
        entry = cache.open(key, stems=computed, frames=header.frames, channels=header.channels)
        if entry is not None:
            self.cached = True
            self.stream = ReplayStream(entry, stems=separator.stems, residual=residual, channels=header.channels)
            return
        fresh = separator.stream(sample_rate=header.sample_rate, channels=header.channels)
        self.writer = cache.writer(key, stems=computed, sample_rate=header.sample_rate, channels=header.channels)
        self.stream = FillStream(fresh, self.writer)

    def commit(self, source: Path) -> None:
        """The song was separated to its end: make the cache entry visible."""
        if self.writer is not None:
            self.writer.commit(extra={"source": str(source)})
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


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
    return audio_digest(files.stream(path, block_frames=block))
