"""``file-stems``: the stems an NI Stems file (``.stem.mp4``) already holds, taken as the separation.

A Traktor user's ``.stem.mp4`` carries the mix (audio stream 0) and four stems (streams 1-4) in
NI's slot order drums, bass, other, vocals; its ``moov/udta/stem`` box names them (JSON, as
:mod:`bridge.daw.nistems` writes it). With ``separator: {model: file-stems}`` (or
``separate --model file-stems``) nothing is separated: the song read is the mix, and each stem
is decoded from its own stream, block for block beside it, so sessions remix those stems.

Names: when the box names the four slots drums, bass, other and vocals (any case, any order),
each stream is the stem its name says; any other names (a Stem Creator user's "Kick", "Synth")
leave each stream in its NI slot: stream 1 drums, 2 bass, 3 other, 4 vocals. A file without the
box is not an NI Stems file and is refused.

The seam: this family gives a whole separator (:attr:`Family.open_separator`), not a chunked
engine, and the separator reads the song's file itself (:meth:`FileStems.stems_from_input`,
which :class:`bridge.render.stemsource.StemSource` asks for), so the stem cache, jobs and
sessions stay as they are. Its stems are never cached: reading them again costs what reading
the cache would, and a cache entry is keyed by the mix, which two stem files may share.
"""

from __future__ import annotations

import json

import numpy as np

from ..audio import files
from ..audio.mp4boxes import BoxError, movie_box
from ..errors import AudioError, ModelError
from .families import Family, register
from .models import ModelCard

#: NI Stems' stem slots, streams 1 to 4 (stream 0 is the mix).
SLOTS = ("drums", "bass", "other", "vocals")
NAME = "file-stems"


def stem_streams(path) -> dict[str, int]:
    """``{stem: audio stream number}`` for the NI Stems file ``path``, named from its ``stem`` box.

    Raises
    ------
    AudioError
        No ``stem`` box (not an NI Stems file), an unreadable box, or fewer than five audio streams.
    """
    try:
        payload = movie_box(path, b"stem")
    except (BoxError, OSError) as exc:
        raise AudioError(f"{path}: cannot read its MP4 boxes ({exc}); file-stems reads NI Stems files (.stem.mp4)") from None
    if payload is None:
        raise AudioError(f"{path}: has no NI Stems 'stem' box (moov/udta/stem), so it is not an NI Stems file; "
                         "file-stems takes .stem.mp4 files: separate this one with a model instead")
    try:
        entries = json.loads(payload.decode("utf-8"))["stems"]
        names = [str(e["name"]).strip().lower() for e in entries]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise AudioError(f"{path}: its NI Stems 'stem' box is not the JSON NI Stems writes ({exc}); "
                         "re-export the file with Stem Creator or stembridge") from None
    if len(names) != len(SLOTS):
        raise AudioError(f"{path}: its 'stem' box names {len(names)} stems, NI Stems holds {len(SLOTS)}; "
                         "re-export the file")
    if sorted(names) == sorted(SLOTS):
        return {name: 1 + names.index(name) for name in SLOTS}
    return {name: 1 + index for index, name in enumerate(SLOTS)}


class FileStems:
    """A separator whose stems are an NI Stems input's own; satisfies the parts of
    :class:`~bridge.separation.Separator` a render and ``separate`` use."""

    name = NAME
    stems = SLOTS
    residual = None  # the stored stems need not sum to the mix
    device = "cpu"
    device_note = None
    batch_size = 1

    def __init__(self, card: ModelCard):
        self.card = card

    @property
    def settings(self) -> dict:
        return {}

    def stems_from_input(self, path, header: files.AudioInfo) -> "FileStemsStream":
        """The stream of ``path``'s stored stems, aligned with its mix as read by ``header``."""
        return FileStemsStream(path, header)

    def stream(self, *, sample_rate: int, channels: int):
        raise ModelError("file-stems takes the stems stored in an NI Stems input file; it separates no buffer: "
                         "render or separate a .stem.mp4 file with it")

    def __call__(self, audio, sample_rate):
        return self.stream(sample_rate=sample_rate, channels=audio.shape[0])


class FileStemsStream:
    """``process(block)`` gives each stored stem's next ``block.shape[1]`` samples; a stem stream
    shorter than the mix is padded with silence, a longer one cut to it (the mix is the song)."""

    def __init__(self, path, header: files.AudioInfo):
        self.stems = SLOTS
        self._channels = header.channels
        self._readers = {}
        self._held = {}
        for stem, number in stem_streams(path).items():
            found = files.info(path, stream=number)
            if found.sample_rate != header.sample_rate:
                raise AudioError(f"{path}: stem stream {number} ({stem}) is at {found.sample_rate} Hz and the mix at "
                                 f"{header.sample_rate} Hz; re-export the file")
            if found.channels not in (1, header.channels):
                raise AudioError(f"{path}: stem stream {number} ({stem}) has {found.channels} channels and the mix "
                                 f"{header.channels}; re-export the file")
            self._readers[stem] = files.stream(path, stream=number, block_frames=65536)
            self._held[stem] = np.zeros((found.channels, 0), np.float32)

    def _take(self, stem: str, count: int) -> np.ndarray:
        held = self._held[stem]
        while held.shape[1] < count:
            block = next(self._readers[stem], None)
            if block is None:
                held = np.pad(held, ((0, 0), (0, count - held.shape[1])))
                break
            held = np.concatenate([held, block], axis=1)
        out, self._held[stem] = held[:, :count], held[:, count:]
        if out.shape[0] != self._channels:  # a mono stem beside a stereo mix
            out = np.repeat(out, self._channels, axis=0)
        return np.ascontiguousarray(out, dtype=np.float32)

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        return {stem: self._take(stem, block.shape[1]) for stem in self.stems}

    def finish(self) -> dict[str, np.ndarray]:
        for reader in self._readers.values():
            reader.close()
        return {stem: np.zeros((self._channels, 0), np.float32) for stem in self.stems}


def _card(name: str) -> ModelCard:
    return ModelCard(name=NAME, family=NAME, stems=SLOTS,
                     description="the four stems stored in an NI Stems (.stem.mp4) input; nothing is separated")


def _no_engine(card, settings):
    raise ModelError("file-stems has no engine: it reads the stems stored in the input (Family.open_separator)")


FAMILY = register(Family(
    name=NAME,
    open_engine=_no_engine,
    open_separator=lambda card, settings: FileStems(card),
    weights=False,
    where=lambda card: "(no weights; the stems stored in a .stem.mp4 input)",
    builtin=(NAME,), builtin_card=_card,
))
