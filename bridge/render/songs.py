"""What every per-song job shares: where its outputs go, what it reports, how it cleans up.

:mod:`bridge.render.separate` (stems only) and :mod:`bridge.render.song` (a whole session) each run one song
with these; :mod:`bridge.batch` runs many.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable



#: Samples read per block; memory stays flat with song length.
BLOCK_SECONDS = 10.0
Progress = Callable[[int, int], None]  # (samples done, samples total)
Clipped = Callable[[Path, int], None]  # (file written, samples clipped)


@dataclasses.dataclass(frozen=True)
class Naming:
    """Where one song's outputs go: its name fields for the output templates.

    ``relpath`` is the song's folder below (and including) the folder named on the command line,
    ``""`` for a file named directly; ``album`` is the name of the folder the song is in.
    """

    track: str
    album: str = ""
    relpath: str = ""

    @classmethod
    def of(cls, path: Path) -> "Naming":
        return cls(track=path.stem, album=path.resolve().parent.name)

    def fields(self) -> dict:
        return {"track": self.track, "album": self.album, "relpath": self.relpath}


class ClippingWarning(UserWarning):
    """Samples over full scale were clipped in a PCM output."""


def clipping_message(target: Path, count: int) -> str:
    return (f"{target}: {count} samples were over full scale and clipped; lower the input level or "
            "write 32-bit float (--bit-depth 32)")


@dataclasses.dataclass
class SongResult:
    """What happened to one song: ``status`` is ``rendered``, ``cached`` (rendered from cached
    stems, no separation), ``skipped`` (up to date) or ``measured`` (album loudness: first pass
    done, waiting for the album's gain)."""

    path: Path
    status: str
    written: dict[str, Path] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # audio length
    pending: object = None  # a render.pipeline.PendingSong while the song waits for its album's gain
    #: Each model's ``{"ran": bool, "seconds": float}`` for this song (an ensemble has several).
    models: dict = dataclasses.field(default_factory=dict)
    preview: object = None  # a render.preview.SongPreview when the run writes a report


def missing_folders(targets, root: Path) -> list[Path]:
    """Folders between ``root`` and each target that do not exist yet, deepest first."""
    missing = set()
    for target in targets:
        folder = Path(target).parent
        while folder != root and root in folder.parents and not folder.exists():
            missing.add(folder)
            folder = folder.parent
        if folder == root and not root.exists():
            missing.add(root)
    return sorted(missing, key=lambda f: len(f.parts), reverse=True)


def remove_empty(folders: list[Path]) -> None:
    """A failed song leaves nothing behind: not even the empty folders made for its outputs."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def report_clipping(target: Path, count: int, on_clip: Clipped | None) -> None:
    if on_clip is not None:
        on_clip(target, count)
        return
    warnings.warn(clipping_message(target, count), ClippingWarning, stacklevel=3)
