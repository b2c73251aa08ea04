"""NI Stems (``.stem.mp4``): the mix and four stems as five stereo AAC streams in one MP4 file.

Native Instruments' format, read by Traktor and Mixxx: stream 0 is the mix (the only one an
ordinary player plays: it alone has the *default* disposition), streams 1-4 are the stems in the
order drums, bass, other, vocals, and ``moov/udta/stem`` holds JSON metadata (stem names and
colours, and the mastering DSP block), the layout stempeg's ``default_metadata.json`` shows and
``MP4Box -udta 0:type=stem:src=...`` writes. MP4Box (gpac) is not needed: PyAV (ffmpeg's
libraries) encodes and muxes, and :func:`add_movie_box` writes the atom
(:func:`bridge.audio.mp4boxes.movie_box` reads it back, for ``--model file-stems``).

Traps others hit, handled here: every stream holds the same number of samples, padded with
silence to whole AAC frames (1024 samples; a decoder gives back whole frames, and DJ software
compares stream lengths); the file is named ``*.stem.mp4``; the ``stem`` box goes into
``moov/udta``, and the muxer writes ``moov`` after ``mdat``, so growing it moves no chunk offset.

PyAV (a core dependency: it also reads m4a, Opus and video inputs) is imported only when a
session asks for this output. The file carries the input's tags (:mod:`bridge.audio.tags`) with
the song's own title: Traktor lists it as the song.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import numpy as np

from ..audio import files, partials, tags as song_tags
from ..audio.mp4boxes import BoxError, boxes
from ..audio.buffers import StreamResampler, db_to_gain
from ..errors import OutputError, PresetError

#: NI Stems' stem order after the mix.
STEMS = ("drums", "bass", "other", "vocals")
#: Names and colours Traktor shows (stempeg's default_metadata.json).
DISPLAY = {"drums": ("Drums", "#009E73"), "bass": ("Bass", "#D55E00"), "other": ("Other", "#CC79A7"),
           "vocals": ("Vocals", "#56B4E9")}
AAC_FRAME = 1024  # samples per AAC-LC frame (ISO/IEC 14496-3)
BIT_RATE = 256_000  # per stereo stream, bit/s: the rate NI's own Stem Creator uses for AAC
EXTENSION = ".stem.mp4"


def check_stems(stems, *, where: str) -> None:
    """Refuse a separator whose stems are not exactly drums, bass, other and vocals."""
    missing = [s for s in STEMS if s not in stems]
    extra = [s for s in stems if s not in STEMS]
    if missing or extra:
        found = ", ".join(stems)
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"not in NI Stems: {', '.join(extra)}" if extra else "") if part)
        raise PresetError(f"{where}: NI Stems holds the mix and exactly four stems (drums, bass, other, vocals); "
                          f"the model gives {found} ({detail}); use a 4-stem model or drop output.files.nistems")


def metadata(stems=STEMS) -> dict:
    """The ``stem`` atom's JSON: stempeg's default_metadata.json, mastering DSP off."""
    return {
        "mastering_dsp": {
            "compressor": {"enabled": False, "ratio": 3, "output_gain": 0.5, "release": 0.3, "attack": 0.003,
                           "input_gain": 0.5, "threshold": 0, "hp_cutoff": 300, "dry_wet": 50},
            "limiter": {"enabled": False, "release": 0.05, "threshold": 0, "ceiling": -0.35},
        },
        "version": 1,
        "stems": [{"name": DISPLAY[s][0], "color": DISPLAY[s][1]} for s in stems],
    }


def _import_av():
    from ..audio.encoders import import_av

    return import_av()


class NiStemsWriter:
    """Encode a mix and its four stems into a ``.stem.mp4`` file, atomically.

    Parameters
    ----------
    path : path-like
        Must end in ``.stem.mp4``.
    sample_rate : int
        In Hz.
    title : str
        The file's title tag (the song).
    tags : Tags, optional
        The input's tags (:mod:`bridge.audio.tags`), written as iTunes atoms after the ``stem`` atom.

    Feed equal-length blocks with :meth:`write`; :meth:`close` pads every stream to the same
    whole number of AAC frames, adds the ``stem`` atom and renames the partial file.
    """

    def __init__(self, path, *, sample_rate: int, title: str = "", tags: song_tags.Tags | None = None):
        self.path = Path(path)
        self.tags = tags
        if not self.path.name.endswith(EXTENSION):
            raise OutputError(f"{self.path}: NI Stems files must end in {EXTENSION}; Traktor and Mixxx look for it")
        av = _import_av()
        self._av = av
        self.sample_rate = sample_rate
        self.frames = 0
        self._partial = partials.partial_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partials.remove_stale_partials(self.path)
            self._container = av.open(str(self._partial), "w", format="mp4")
            if title:
                self._container.metadata["title"] = title
            self._streams = []
            for index in range(1 + len(STEMS)):
                stream = self._container.add_stream("aac", rate=sample_rate, layout="stereo")
                stream.bit_rate = BIT_RATE
                self._streams.append(stream)
        except BaseException as exc:
            Path(self._partial).unlink(missing_ok=True)
            if isinstance(exc, (OSError, ValueError, av.FFmpegError)) and not isinstance(exc, OutputError):
                raise OutputError(f"{self.path}: cannot create the NI Stems file ({exc})") from None
            raise
        self._pts = [0] * len(self._streams)
        self._pending = [np.zeros((2, 0), np.float32) for _ in self._streams]

    def write(self, mix: np.ndarray, stems: dict[str, np.ndarray]) -> None:
        """Append ``mix`` and ``stems[name]`` for each of :data:`STEMS`, all (2, n) float32, equal n."""
        blocks = [mix] + [stems[s] for s in STEMS]
        if len({b.shape for b in blocks}) != 1 or mix.shape[0] != 2:
            raise OutputError(f"{self.path}: the mix and the stems must be stereo blocks of one length, "
                              f"got {[b.shape for b in blocks]}")
        self.frames += mix.shape[1]
        for index, block in enumerate(blocks):
            self._pending[index] = np.concatenate([self._pending[index], block.astype(np.float32)], axis=1)
            whole = self._pending[index].shape[1] // AAC_FRAME * AAC_FRAME
            self._encode(index, self._pending[index][:, :whole])
            self._pending[index] = self._pending[index][:, whole:]

    def _encode(self, index: int, audio: np.ndarray) -> None:
        av, stream = self._av, self._streams[index]
        count = audio.shape[1] // AAC_FRAME  # whole frames only: write() and close() see to it
        # One copy into frame-major order, so that each frame is a contiguous (2, 1024) view
        # (from_ndarray wants one) instead of a copy of a strided slice per frame.
        frames = np.ascontiguousarray(audio[:, :count * AAC_FRAME].reshape(2, count, AAC_FRAME).transpose(1, 0, 2))
        for block in frames:
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts[index]
            self._pts[index] += AAC_FRAME
            for packet in stream.encode(frame):
                self._container.mux(packet)

    def close(self, *, metadata_json: dict | None = None) -> Path:
        """Pad to whole AAC frames, finish the streams, add the ``stem`` atom; return the final name."""
        try:
            for index, rest in enumerate(self._pending):
                if rest.shape[1]:
                    self._encode(index, np.pad(rest, ((0, 0), (0, AAC_FRAME - rest.shape[1]))))
            for stream in self._streams:
                for packet in stream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            payload = json.dumps(metadata_json or metadata(), separators=(",", ":")).encode("utf-8")
            add_movie_box(self._partial, b"stem", payload)
            if self.tags is not None:  # mutagen grows moov/udta in place: moov stays last, the stem atom kept
                song_tags.write(self._partial, self.tags, extension="m4a")
            with open(self._partial, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self._partial, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (OSError, ValueError, self._av.FFmpegError)) and not isinstance(exc, OutputError):
                raise OutputError(f"{self.path}: could not finish the NI Stems file ({exc}); "
                                  "check free space and permissions") from None
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the final name is left as it was."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - closing a half-written container may fail in any way; it is deleted
            pass
        Path(self._partial).unlink(missing_ok=True)


class RenderFeed:
    """A render's NI Stems output: the mix and the four audible stems go to float scratch files as
    the song streams, and are encoded (:meth:`ScratchStems.encode`) once the loudness gain is known.

    Parameters
    ----------
    target : Path
        The ``.stem.mp4`` file.
    scratch : Path
        A private folder for the scratch files.
    orig_sr, sample_rate : int
        The render's rate and the output rate, in Hz.
    title : str
    """

    def __init__(self, target: Path, scratch: Path, *, orig_sr: int, sample_rate: int, title: str,
                 tags: song_tags.Tags | None = None):
        _import_av()  # a missing PyAV is an error before any audio work
        self.target = Path(target)
        self.sample_rate = sample_rate
        self.title = title
        self.tags = tags
        self._labels = ("mix",) + STEMS
        self._resamplers = {label: StreamResampler(orig_sr=orig_sr, target_sr=sample_rate, channels=2)
                            for label in self._labels}
        self._scratch = {}
        try:
            for label in self._labels:
                self._scratch[label] = files.AudioWriter(scratch / f"nistems-{label}.wav", sample_rate=sample_rate,
                                                      channels=2, bit_depth=32)
        except BaseException:
            self.abort()
            raise

    def process(self, mix: np.ndarray, stems: dict[str, np.ndarray], *, last: bool = False) -> None:
        """One block of the render: the mix after the master chain and the stems after their faders."""
        for label in self._labels:
            audio = mix if label == "mix" else stems[label]
            self._scratch[label].write(self._resamplers[label].process(audio, last=last))

    def close_scratch(self) -> "ScratchStems":
        """Finish the scratch files; what :meth:`ScratchStems.encode` turns into the target."""
        files = {label: writer.close() for label, writer in self._scratch.items()}
        self._scratch = {}
        return ScratchStems(target=self.target, files=files, sample_rate=self.sample_rate, title=self.title,
                            tags=self.tags)

    def abort(self) -> None:
        for writer in self._scratch.values():
            writer.abort()


@dataclasses.dataclass(frozen=True)
class ScratchStems:
    """The float scratch files of a render's NI Stems output (``mix`` and each of :data:`STEMS`)."""

    target: Path
    files: dict
    sample_rate: int
    title: str = ""
    tags: song_tags.Tags | None = None

    def encode(self, gain_db: float = 0.0) -> Path:
        """Encode the scratch files times ``gain_db`` into :attr:`target`, atomically; return it."""
        gain = np.float32(db_to_gain(gain_db))
        encoder = NiStemsWriter(self.target, sample_rate=self.sample_rate, title=self.title, tags=self.tags)
        labels = ("mix",) + STEMS
        try:
            streams = [files.stream(self.files[label], block_frames=64 * AAC_FRAME) for label in labels]
            for blocks in zip(*streams, strict=True):
                encoder.write(blocks[0] * gain, {s: b * gain for s, b in zip(STEMS, blocks[1:])})
        except BaseException:
            encoder.abort()
            raise
        return encoder.close()


def add_movie_box(path: Path, kind: bytes, payload: bytes) -> None:
    """Append box ``kind`` holding ``payload`` to ``moov/udta`` of the MP4 file ``path``, in place.

    The muxer writes ``moov`` last, after ``mdat``; growing it moves no sample data, so the chunk
    offsets (``stco``) stay right. A file with ``moov`` elsewhere is refused rather than broken.
    Only the top-level box headers and the ``moov`` box are read.
    """
    path = Path(path)
    with open(path, "r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        at, last = 0, None
        while at + 8 <= end:
            handle.seek(at)
            size, box_type = struct.unpack(">I4s", handle.read(8))
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0]
            elif size == 0:
                size = end - at
            if size < 8 or at + size > end:
                raise OutputError(f"{path}: malformed MP4 box {box_type!r} at byte {at}")
            last = (box_type, at, size)
            at += size
        if last is None or last[0] != b"moov":
            raise OutputError(f"{path}: the MP4 movie box is not at the end of the file; "
                              f"cannot add the {kind.decode()} atom")
        _, moov_at, moov_size = last
        handle.seek(moov_at)
        moov = bytearray(handle.read(moov_size))
        if struct.unpack(">I", moov[:4])[0] != moov_size:
            raise OutputError(f"{path}: a 64-bit-sized movie box is not supported")
        box = struct.pack(">I4s", 8 + len(payload), kind) + payload
        try:
            children = boxes(bytes(moov), 8, moov_size)
        except BoxError as exc:
            raise OutputError(f"{path}: {exc}") from None
        udta = next(((offset, size) for kind_, offset, _, size in children if kind_ == b"udta"), None)
        if udta is None:
            box = struct.pack(">I4s", 8 + len(box), b"udta") + box
            moov += box
        else:
            offset, size = udta
            moov[offset + size:offset + size] = box
            moov[offset:offset + 4] = struct.pack(">I", size + len(box))
        moov[:4] = struct.pack(">I", moov_size + len(box))
        handle.seek(moov_at)
        handle.write(moov)
