"""The stem cache: a song is separated once, then every preset renders from its stored stems.

An entry is keyed by what decides the separator's output and nothing else: the input's decoded
audio (a hash of its float32 samples, rate and channel count, so retagging a file keeps its
entry), the pre chain, the model (its card and the file's sha256), every separator setting
(overlap, Wiener iterations, denoise, inversion, high band, batch size) and
:data:`FORMAT_VERSION`.

Every stem but the separator's residual stem is stored as raw float32, exactly as separated;
the residual is rebuilt from the song as ``mix - sum(stored)``, the same expression the separator
uses, so stems from the cache are bit-identical to a fresh separation and still sum to the mix.
A stereo 44.1 kHz song costs 21.2 MB per minute per stored stem (one for a 2-stem model).

Entries are written into a private temporary folder and renamed into place when complete, so a
crash or a killed run never leaves an entry that looks finished, and of two processes filling
the same entry at once one wins the rename and the other discards its copy. ``entry.json``
holds each file's sha256; a reader checks sizes and hashes before using an entry, and a damaged
one is removed (with a warning) and computed again. Entries are evicted least recently used
beyond a size cap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ..audio import partials
from ..errors import BridgeError, OutputError

#: Bump when the stored layout or anything that decides stored samples changes.
FORMAT_VERSION = 1
DEFAULT_MAX_GB = 20.0
ENTRY = "entry.json"


class CacheWarning(UserWarning):
    """A cache entry was damaged and is being recomputed, or the cache could not be written."""


def default_location() -> Path:
    """``$STEMBRIDGE_CACHE``, else ``$XDG_CACHE_HOME/stembridge``, else ``~/.cache/stembridge``."""
    if os.environ.get("STEMBRIDGE_CACHE"):
        return Path(os.environ["STEMBRIDGE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "stembridge"
    return Path.home() / ".cache" / "stembridge"


def default_max_gb() -> float:
    """``$STEMBRIDGE_CACHE_MAX_GB``, else :data:`DEFAULT_MAX_GB`."""
    raw = os.environ.get("STEMBRIDGE_CACHE_MAX_GB")
    if not raw:
        return DEFAULT_MAX_GB
    try:
        return check_max_gb(float(raw))
    except ValueError:
        raise BridgeError(f"STEMBRIDGE_CACHE_MAX_GB={raw!r}: the cache cap must be a number of GB, e.g. 20") from None


def check_max_gb(value: float) -> float:
    if not np.isfinite(value) or value < 0:
        raise BridgeError(f"cache cap {value!r} GB: must be a number >= 0 (0 keeps nothing), e.g. --cache-max-gb 20")
    return float(value)


def audio_digest(blocks) -> str:
    """sha256 of decoded audio: the float32 samples of ``(channels, samples)`` blocks, frames first."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
    return digest.hexdigest()


def entry_key(*, audio: str, sample_rate: int, channels: int, frames: int, pre: list, model: dict,
              settings: dict, stems: tuple[str, ...], residual: str | None) -> str:
    """The cache key: sha256 of everything that decides the separated stems."""
    record = {"format": FORMAT_VERSION, "audio": audio, "sample_rate": sample_rate, "channels": channels,
              "frames": frames, "pre": pre, "model": model, "settings": settings, "stems": list(stems),
              "residual": residual}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheStats:
    location: Path
    entries: int
    bytes: int
    max_bytes: int


class StemCache:
    """A folder of cache entries.

    Parameters
    ----------
    root : path-like
        The cache folder; created when the first entry is written.
    max_gb : float
        Size cap in GB (10**9 bytes); least recently used entries beyond it are evicted.
    """

    def __init__(self, root, *, max_gb: float = DEFAULT_MAX_GB):
        self.root = Path(root)
        self.max_bytes = int(check_max_gb(max_gb) * 1e9)

    @property
    def _entries(self) -> Path:
        return self.root / f"v{FORMAT_VERSION}"

    def _folder(self, key: str) -> Path:
        return self._entries / key[:2] / key

    def open(self, key: str, *, stems: tuple[str, ...], frames: int, channels: int) -> "CacheEntry | None":
        """The complete, checked entry for ``key``, or None (absent, or damaged and removed)."""
        folder = self._folder(key)
        if not (folder / ENTRY).is_file():
            return None
        try:
            entry = CacheEntry.load(folder, stems=stems, frames=frames, channels=channels)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"stem cache: entry {folder} is damaged ({exc}); separating again", CacheWarning,
                          stacklevel=2)
            self._remove(folder)
            return None
        try:
            os.utime(folder / ENTRY)  # least recently *used*: reading counts
        except OSError:
            pass
        return entry

    def writer(self, key: str, *, stems: tuple[str, ...], sample_rate: int, channels: int) -> "EntryWriter":
        return EntryWriter(self, key, stems=stems, sample_rate=sample_rate, channels=channels)

    def stats(self) -> CacheStats:
        entries, size = 0, 0
        for folder in self._complete():
            entries += 1
            size += _folder_size(folder)
        return CacheStats(self.root, entries, size, self.max_bytes)

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        count = 0
        for folder in self._complete():
            self._remove(folder)
            count += 1
        shutil.rmtree(self._entries / "tmp", ignore_errors=True)
        return count

    def evict(self, *, keep: str | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits its cap; never ``keep``."""
        found = []
        for folder in self._complete():
            try:
                found.append(((folder / ENTRY).stat().st_mtime, folder, _folder_size(folder)))
            except OSError:
                continue
        total = sum(size for _, _, size in found)
        removed = []
        for _, folder, size in sorted(found, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            if keep is not None and folder.name == keep:
                continue
            self._remove(folder)
            removed.append(folder)
            total -= size
        return removed

    def _complete(self):
        if not self._entries.is_dir():
            return
        for shard in sorted(self._entries.iterdir()):
            if shard.name == "tmp" or not shard.is_dir():
                continue
            for folder in sorted(shard.iterdir()):
                if (folder / ENTRY).is_file():
                    yield folder

    def _remove(self, folder: Path) -> None:
        # Rename first: a reader never sees half an entry, and two removers do not collide.
        trash = self._entries / "tmp" / f"trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _folder_size(folder: Path) -> int:
    total = 0
    for item in folder.iterdir():
        try:
            total += item.stat().st_size
        except OSError:
            pass
    return total


class CacheEntry:
    """A checked entry: reads its stored stems block by block."""

    def __init__(self, folder: Path, meta: dict, handles: dict):
        self.folder = folder
        self.meta = meta
        self._handles = handles
        self.frames = int(meta["frames"])
        self.channels = int(meta["channels"])
        self.stems = tuple(meta["stems"])
        self._position = 0

    @classmethod
    def load(cls, folder: Path, *, stems, frames: int, channels: int) -> "CacheEntry":
        meta = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        if tuple(meta["stems"]) != tuple(stems) or meta["frames"] != frames or meta["channels"] != channels:
            raise ValueError("its stems or length do not match the song")
        handles = {}
        try:
            for stem in stems:
                path = folder / f"{stem}.f32"
                handle = open(path, "rb")
                handles[stem] = handle
                expected = frames * channels * 4
                size = os.fstat(handle.fileno()).st_size
                if size != expected:
                    raise ValueError(f"{path.name} holds {size} bytes, expected {expected} (truncated)")
                digest = hashlib.sha256()
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
                if digest.hexdigest() != meta["sha256"][stem]:
                    raise ValueError(f"{path.name} does not match its checksum")
                handle.seek(0)
        except BaseException:
            for handle in handles.values():
                handle.close()
            raise
        return cls(folder, meta, handles)

    def read(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` frames of every stored stem, ``(channels, count)`` float32."""
        out = {}
        for stem, handle in self._handles.items():
            raw = handle.read(count * self.channels * 4)
            frames = np.frombuffer(raw, dtype="<f4").reshape(-1, self.channels)
            if frames.shape[0] != count:
                raise BridgeError(f"stem cache: entry {self.folder} ended early; run again to recompute it")
            out[stem] = np.ascontiguousarray(frames.T, dtype=np.float32)
        self._position += count
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()


def _remove_dead_tmp(tmp: Path) -> None:
    """Remove the unfinished entries (``KEY.PID.*``) and trash (``trash-NAME-PID-NS``) of processes that
    are gone: a run killed mid-song leaves its private folder here, and nothing else would remove it."""
    for folder in tmp.iterdir():
        parts = folder.name.split("-") if folder.name.startswith("trash-") else folder.name.split(".")
        pid = parts[-2] if len(parts) >= 3 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not partials.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class EntryWriter:
    """Fills one entry in a private folder; :meth:`commit` renames it into place."""

    def __init__(self, cache: StemCache, key: str, *, stems, sample_rate: int, channels: int):
        self.cache = cache
        self.key = key
        self.stems = tuple(stems)
        self.sample_rate = sample_rate
        self.channels = channels
        self.frames = 0
        self._digests = {s: hashlib.sha256() for s in self.stems}
        tmp = cache._entries / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            _remove_dead_tmp(tmp)
            self.folder = Path(tempfile.mkdtemp(prefix=f"{key}.{os.getpid()}.", dir=tmp))
            self._files = {s: open(self.folder / f"{s}.f32", "wb") for s in self.stems}
        except OSError as exc:
            raise OutputError(f"stem cache {cache.root}: cannot write ({exc}); fix its permissions, "
                              "choose another with --cache-dir, or pass --no-cache") from None

    def write(self, stems: dict[str, np.ndarray]) -> None:
        count = None
        for stem in self.stems:
            raw = np.ascontiguousarray(stems[stem].T, dtype="<f4").tobytes()
            self._files[stem].write(raw)
            self._digests[stem].update(raw)
            count = stems[stem].shape[1]
        self.frames += count or 0

    def commit(self, *, extra: dict | None = None) -> bool:
        """Make the entry visible; False if another process completed it first (ours is dropped)."""
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        meta = {"format": FORMAT_VERSION, "key": self.key, "stems": list(self.stems), "frames": self.frames,
                "channels": self.channels, "sample_rate": self.sample_rate,
                "sha256": {s: d.hexdigest() for s, d in self._digests.items()}, "created": time.time(),
                **(extra or {})}
        with open(self.folder / ENTRY, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(meta, indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        final = self.cache._folder(self.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.folder, final)
        except OSError:  # another process put a complete entry there first
            self.abort()
            return False
        self.cache.evict(keep=self.key)
        return True

    def abort(self) -> None:
        for handle in self._files.values():
            if not handle.closed:
                handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class ReplayStream:
    """A separation stream that replays cached stems: same interface as ``SeparationStream``.

    ``process(mix_block)`` gives the stored stems for those frames and the residual stem as
    ``mix - sum(stored)``, computed exactly as the separator computes it.
    """

    def __init__(self, entry: CacheEntry, *, stems: tuple[str, ...], residual: str | None, channels: int):
        self.entry = entry
        self.stems = stems
        self.channels = channels
        self._residual = residual
        self._computed = tuple(s for s in stems if s != residual)
        self._fed = 0

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        count = block.shape[1]
        if self._fed + count > self.entry.frames:
            raise BridgeError(f"stem cache: the song is longer than its entry {self.entry.folder}; "
                              "run with --no-cache, or clear the cache (stembridge cache clear)")
        self._fed += count
        out = self.entry.read(count) if count else {s: np.zeros((self.channels, 0), np.float32) for s in self._computed}
        if self._residual is not None:
            mix = np.asarray(block, dtype=np.float32)
            out[self._residual] = mix - sum(out[s] for s in self._computed) if self._computed else mix.copy()
        return {stem: np.ascontiguousarray(out[stem], dtype=np.float32) for stem in self.stems}

    def finish(self) -> dict[str, np.ndarray]:
        self.entry.close()
        if self._fed != self.entry.frames:
            raise BridgeError(f"stem cache: the song is shorter than its entry {self.entry.folder}; "
                              "run with --no-cache, or clear the cache (stembridge cache clear)")
        return {stem: np.zeros((self.channels, 0), np.float32) for stem in self.stems}


class FillStream:
    """A separation stream that also writes the stems it computes into a cache entry."""

    def __init__(self, stream, writer: EntryWriter):
        self._stream = stream
        self.writer = writer
        self.stems = stream.stems

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        out = self._stream.process(block)
        self.writer.write(out)
        return out

    def finish(self) -> dict[str, np.ndarray]:
        out = self._stream.finish()
        self.writer.write(out)
        return out
