"""Inputs to songs: files and folders in any mix, folders walked recursively in natural order."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..audio.files import AV_EXTENSIONS
from ..errors import BridgeError
from ..render.songs import Naming

#: What a folder is searched for: libsndfile's formats, then what FFmpeg's decoders read (m4a,
#: opus, video files, NI Stems' .stem.mp4, ...; :data:`bridge.audio.files.AV_EXTENSIONS`).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif") + tuple(f".{e}" for e in AV_EXTENSIONS)
#: A folder holding this file is a stembridge output folder; walking skips it.
RUN_RECORD = "stembridge-run.json"


@dataclasses.dataclass(frozen=True)
class Song:
    """One input: its path, its output names, and the album (folder) it belongs to."""

    path: Path
    naming: Naming
    album: str  # the resolved folder the song is in: the unit of album loudness
    error: str | None = None  # known bad before any work (an empty folder, a clash): fails at its turn


def natural_key(path: Path) -> list:
    """Sort ``track2`` before ``track10``: digits compare as numbers, text case-insensitively."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", str(path))]


def discover(inputs, *, out_dir: Path | None = None) -> tuple[list[Song], list[str]]:
    """Expand files and folders into songs, each once.

    A folder is walked recursively for audio files (:data:`AUDIO_EXTENSIONS`) in natural sort
    order, skipping hidden files and folders (stembridge's partials, scratch and manifests are
    hidden), the output folder and any folder holding a :data:`RUN_RECORD`. Files named
    directly are taken as they are (an unreadable one fails on its own turn). The same file named
    twice, or through two paths, is kept once.

    Returns
    -------
    songs : list of Song
    notes : list of str
        Lines about files found but not taken (none today: every format found is read).

    A folder named on the command line that holds no audio file is a song with an ``error``:
    it is reported as a failed input at its turn, like a bad file, and the run goes on.
    """
    out = _resolved(out_dir) if out_dir is not None else None
    songs, notes, seen = [], [], set()

    def add(path: Path, naming: Naming) -> None:
        identity = _identity(path)
        if identity in seen:
            return
        seen.add(identity)
        songs.append(Song(path, naming, str(_resolved(path).parent)))

    for raw in inputs:
        named = Path(raw)
        if not named.is_dir():
            add(named, Naming.of(named))
            continue
        found = 0
        for path in _walk(named, out):
            suffix = path.suffix.lower()
            if suffix not in AUDIO_EXTENSIONS:
                continue
            found += 1
            below = path.parent.relative_to(named)
            relpath = Path(_resolved(named).name) / below
            add(path, Naming(track=path.stem, album=path.parent.resolve().name, relpath=relpath.as_posix()))
        if not found:
            songs.append(Song(named, Naming.of(named), str(_resolved(named).parent),
                              error=f"{named}: the folder holds no audio files "
                                    f"({', '.join(e[1:] for e in AUDIO_EXTENSIONS[:8])}, ...); check the path"))
    return songs, notes


def _walk(folder: Path, out: Path | None):
    entries = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: natural_key(Path(e.name)))
    except OSError as exc:
        raise BridgeError(f"{folder}: cannot list the folder ({exc.strerror}); check its permissions") from None
    if any(e.name == RUN_RECORD for e in entries):
        return
    files, folders = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            if out is not None and _resolved(path) == out:
                continue
            folders.append(path)
        elif entry.is_file():
            files.append(path)
    yield from files
    for sub in folders:
        yield from _walk(sub, out)


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(os.path.abspath(path))


def _identity(path: Path):
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return str(_resolved(path))
