"""Reference songs for evaluation: folders of a mixture and its stems, checked and loaded.

Conventions
-----------
- A *references folder* holds songs, found recursively: every folder with a ``mixture.<ext>``
  file is a song, and the other audio files beside it are its reference stems, named by stem
  (``vocals.flac``, ``drums.wav``, ...). Names are canonicalised with
  :func:`bridge.separation.models.canonical_stem` (``accompaniment`` -> ``instrumental``). When a song has
  no ``instrumental`` reference but has vocals and other stems, the instrumental reference is
  the sum of the non-vocal stems (drums + bass + other); a song without vocals but with two or
  more stems (drums, bass, other) gets the same sum, which is then its mixture.
- Every file of a song must share the mixture's sample rate and channel count. Lossy-coded stems
  often end a few samples early, so all files are trimmed to the shortest (noted in the report);
  a difference over one second is an error, since it means files of different songs.
- Songs are loaded whole: reference folders hold short excerpts (seconds to a minute), and
  BSS Eval needs the whole song for its filters anyway. Do not point this at full albums.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..audio import files
from ..errors import AudioError
from ..separation.models import canonical_stem

#: Largest length difference between a song's files that is trimmed rather than refused, in seconds.
MAX_TRIM_SECONDS = 1.0
MIXTURE = "mixture"


@dataclasses.dataclass(frozen=True)
class SongFiles:
    """A song's files, checked from their headers: ``{stem: path}`` plus the common geometry."""

    name: str
    mixture: Path
    stems: dict[str, Path]
    sample_rate: int
    channels: int
    frames: int
    trimmed: int  # samples cut from the longest file to match the shortest
    stream: int | None = None  # the mixture's audio stream (None: its default one)


@dataclasses.dataclass
class Song:
    """A loaded song: mixture and references, all ``(channels, samples)`` float32, same length."""

    name: str
    sample_rate: int
    mixture: np.ndarray
    references: dict[str, np.ndarray]
    atoms: tuple[str, ...]  # references that partition the mixture (the oracle masks these)


def _readable(path: Path) -> bool:
    suffix = path.suffix.lstrip(".").lower()
    return suffix in files.FORMATS or suffix in files.AV_EXTENSIONS


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _readable(p))


def find_songs(references, *, stream: int | None = None) -> list[SongFiles]:
    """Every song under ``references`` (any folder holding a ``mixture.*``), checked from headers;
    ``stream`` picks the mixtures' audio stream (:func:`bridge.audio.files.info`).

    Raises
    ------
    AudioError
        Missing folder, no songs, two files for one stem, or files that disagree in sample rate,
        channels or length (over one second).
    """
    root = Path(references)
    if not root.is_dir():
        raise AudioError(f"{root}: no such folder; pass a folder of songs laid out as <song>/mixture.wav, <song>/vocals.wav, ...")
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file() and p.stem.lower() == MIXTURE
                      and _readable(p)})
    if not folders:
        raise AudioError(
            f"{root}: no song found (no mixture.wav/.flac/... in it or its subfolders); lay references out as "
            "<song>/mixture.<ext> with the stems beside it: <song>/vocals.<ext>, <song>/drums.<ext>, ..."
        )
    return [_song_files(root, folder, stream) for folder in folders]


def _song_files(root: Path, folder: Path, stream: int | None = None) -> SongFiles:
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    by_stem: dict[str, Path] = {}
    for path in _audio_files(folder):
        stem = canonical_stem(path.stem)
        if stem in by_stem:
            raise AudioError(f"{path}: a second file for stem '{stem}' (also {by_stem[stem].name}); keep one of them")
        by_stem[stem] = path
    mixture = by_stem.pop(MIXTURE)
    head = files.info(mixture, stream=stream)
    frames = [head.frames]
    for stem, path in by_stem.items():
        ref = files.info(path)
        if ref.sample_rate != head.sample_rate:
            raise AudioError(
                f"{path}: sample rate {ref.sample_rate} Hz, but the mixture {mixture.name} is {head.sample_rate} Hz; "
                f"resample the reference to {head.sample_rate} Hz (e.g. ffmpeg -i {path.name} -ar {head.sample_rate} ...)"
            )
        if ref.channels != head.channels:
            raise AudioError(
                f"{path}: {ref.channels} channel(s), but the mixture {mixture.name} has {head.channels}; "
                "export the stems with the mixture's channel layout"
            )
        frames.append(ref.frames)
    shortest, longest = min(frames), max(frames)
    if longest - shortest > MAX_TRIM_SECONDS * head.sample_rate:
        lengths = ", ".join(f"{p.name} {files.info(p).seconds:.2f} s" for p in [mixture, *by_stem.values()])
        raise AudioError(
            f"{folder}: the song's files differ in length by more than {MAX_TRIM_SECONDS:g} s ({lengths}); "
            "check that they are stems of the same song and the same edit"
        )
    return SongFiles(name, mixture, by_stem, head.sample_rate, head.channels, shortest, longest - shortest,
                     stream=head.stream)


def load_song(song_files: SongFiles) -> Song:
    """Read a song whole, trimmed to its shortest file, and derive the instrumental reference."""
    def read(path: Path, stream: int | None = None) -> np.ndarray:
        audio, _ = files.read(path, stream=stream)
        return audio[:, : song_files.frames]

    references = {stem: read(path) for stem, path in song_files.stems.items()}
    others = [s for s in references if s not in ("vocals", "instrumental")]
    atoms = tuple(s for s in references if not (s == "instrumental" and others))
    if "instrumental" not in references and others and ("vocals" in references or len(others) >= 2):
        references["instrumental"] = np.sum([references[s] for s in others], axis=0, dtype=np.float32)
    return Song(song_files.name, song_files.sample_rate, read(song_files.mixture, song_files.stream), references,
                atoms)
