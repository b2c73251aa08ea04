"""Video output: the input video, its picture and subtitles copied packet for packet, with the
rendered mix as its audio (``output.files.video``).

:func:`remux` opens the input container with PyAV and writes a new one of the same kind (mp4,
mov, mkv, webm; the template's ``{ext}`` is the input's): every video stream (cover pictures
aside) and subtitle stream is copied packet by packet, never decoded or re-encoded, the chapters
and the container's tags are copied, and the mix (from the render's float scratch file, times
the song's gain) is encoded as the one audio stream. Its codec is the input audio's where FFmpeg
can encode it (:data:`ENCODERS`: AAC, MP3, Opus, AC-3, E-AC-3, FLAC, ALAC, PCM), else AAC (Opus
in WebM, which holds no AAC); its rate is the input's, its length the input audio's (the render's
reverb tail is cut: the picture ends there), and it starts where the input's audio started.
Other audio streams (a second language, a commentary) are not copied: the mix replaces the audio.

Packets are read in the input's order and the audio is encoded just ahead of each one, so the
muxer's interleaving queue stays short and memory is flat however long the film is.
"""

from __future__ import annotations

import dataclasses
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..audio import files, partials
from ..audio.buffers import db_to_gain
from ..audio.encoders import import_av
from ..errors import OutputError

#: File extension -> FFmpeg muxer: the containers a video output can be written as.
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
#: The input audio's codec (FFmpeg's codec name) -> the encoder that writes the mix in it.
ENCODERS = {"aac": "aac", "mp3": "libmp3lame", "opus": "libopus", "ac3": "ac3", "eac3": "eac3", "flac": "flac",
            "alac": "alac", "pcm_s16le": "pcm_s16le", "pcm_s24le": "pcm_s24le", "pcm_s32le": "pcm_s32le",
            "pcm_f32le": "pcm_f32le", "pcm_s16be": "pcm_s16be", "pcm_s24be": "pcm_s24be"}
#: kbit/s per 2 channels when the input stream records no bit rate.
DEFAULT_KBPS = 256
#: Audio is encoded this far (seconds) ahead of the packet being copied.
LEAD_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class VideoSource:
    """What :func:`check_source` found in a video input."""

    path: Path
    extension: str  # with the dot, lower case: the output's too
    audio_codec: str | None  # FFmpeg's codec name of the audio the render decoded
    audio_index: int | None


def check_source(path: Path, *, where: str = "output.files.video", stream: int | None = None) -> VideoSource:
    """Refuse, in one line, an input that has no video to remux or a container we do not write.

    ``stream`` is the audio stream the render reads (``--stream``, counted among the audio
    streams as ``ffmpeg -map 0:a:N``); None: the container's default one."""
    av = import_av()
    path = Path(path)
    extension = path.suffix.lower()
    try:
        with av.open(str(path)) as container:
            pictures = [s for s in container.streams.video if not _is_cover(s)]
            streams = list(container.streams.audio)
            audio = _default_audio(container) if stream is None else (
                streams[stream] if 0 <= stream < len(streams) else None)
            codec = audio.codec_context.name if audio is not None else None
            index = audio.index if audio is not None else None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise OutputError(f"{where}: {path} cannot be opened as a video ({exc}); drop output.files.video") from None
    if not pictures:
        raise OutputError(f"{where}: {path} has no video stream (an audio-only input); drop output.files.video "
                          "or give a video file")
    if extension not in MUXERS:
        raise OutputError(f"{where}: {path}: video outputs are written as {', '.join(MUXERS)}; "
                          f"'{extension}' is not one of them: convert the input's container first")
    return VideoSource(path, extension, codec, index)


def _is_cover(stream) -> bool:
    return bool(stream.disposition & 0x400)  # AV_DISPOSITION_ATTACHED_PIC: a cover picture, not the film


def _default_audio(container):
    audio = list(container.streams.audio)
    return next((s for s in audio if s.disposition & 0x1), audio[0] if audio else None)  # AV_DISPOSITION_DEFAULT


def audio_encoder(source_codec: str | None, muxer: str) -> str:
    """The encoder for the mix: the input audio's codec where FFmpeg encodes it, else AAC (Opus in WebM)."""
    encoder = ENCODERS.get(source_codec or "")
    if encoder is not None and not (muxer == "webm" and encoder not in ("libopus",)):
        return encoder
    return "libopus" if muxer == "webm" else "aac"


def remux(source: Path, mix: Path, target: Path, *, gain_db: float = 0.0, frames: int | None = None,
          audio_index: int | None = None) -> Path:
    """Write ``target``: ``source``'s video and subtitles copied, ``mix`` (a float WAV) times
    ``gain_db`` as its audio, cut to ``frames`` samples; atomically. Returns ``target``.

    Raises
    ------
    OutputError
        The input cannot be read, or the output cannot be written.
    """
    av = import_av()
    source, target = Path(source), Path(target)
    muxer = MUXERS.get(target.suffix.lower())
    if muxer is None:
        raise OutputError(f"{target}: video outputs are written as {', '.join(MUXERS)}")
    partial = partials.partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partials.remove_stale_partials(target)
    header = files.info(mix)
    try:
        with av.open(str(source)) as inp:
            out = av.open(str(partial), "w", format=muxer)
            try:
                _remux(av, inp, out, mix=mix, header=header, gain=np.float32(db_to_gain(gain_db)), frames=frames,
                       audio_index=audio_index, muxer=muxer)
            finally:
                out.close()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException as exc:
        Path(partial).unlink(missing_ok=True)
        if isinstance(exc, (av.FFmpegError, OSError, ValueError)) and not isinstance(exc, OutputError):
            raise OutputError(f"{target}: could not write the video ({exc}); check free space and the input") from None
        raise
    partials.fsync_dir(target.parent)
    return target


def _remux(av, inp, out, *, mix: Path, header, gain, frames, audio_index, muxer) -> None:
    copied = {}
    for stream in inp.streams:
        if (stream.type == "video" and not _is_cover(stream)) or stream.type == "subtitle":
            copy = out.add_stream_from_template(stream)
            for key in ("language", "title", "handler_name"):
                if key in stream.metadata:
                    copy.metadata[key] = stream.metadata[key]
            copied[stream.index] = copy
    source_audio = (inp.streams[audio_index] if audio_index is not None else _default_audio(inp))
    encoder = audio_encoder(source_audio.codec_context.name if source_audio is not None else None, muxer)
    rate, channels = header.sample_rate, header.channels
    layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(channels)
    if layout is None:
        raise OutputError(f"the mix has {channels} channels; a video's audio is mono, stereo or 5.1")
    audio = out.add_stream(encoder, rate=rate, layout=layout)
    if encoder not in ("flac", "alac") and not encoder.startswith("pcm_"):
        known = source_audio.bit_rate if source_audio is not None and source_audio.bit_rate else 0
        audio.bit_rate = known or DEFAULT_KBPS * 1000 * max(1, channels) // 2
    if source_audio is not None and "language" in source_audio.metadata:
        audio.metadata["language"] = source_audio.metadata["language"]
    for key, value in inp.metadata.items():
        if key not in ("encoder", "major_brand", "minor_version", "compatible_brands"):
            out.metadata[key] = value
    chapters = inp.chapters()
    if chapters:
        out.set_chapters(chapters)
    start = 0
    if source_audio is not None and source_audio.start_time and source_audio.start_time > 0:
        start = round(source_audio.start_time * source_audio.time_base * rate)  # the audio began late: keep it there
    total = header.frames if frames is None else min(frames, header.frames)
    feed = _AudioFeed(av, audio, out, files.stream(mix, block_frames=8192), gain=gain, total=total, start=start,
                      rate=rate, layout=layout)
    for packet in inp.demux(*[inp.streams[index] for index in copied]):
        if packet.dts is None and packet.pts is None:
            continue  # the demuxer's end-of-stream marker
        at = packet.dts if packet.dts is not None else packet.pts
        feed.until(float(at * packet.time_base) + LEAD_SECONDS)
        packet.stream = copied[packet.stream.index]
        out.mux(packet)
    feed.until(math.inf)
    feed.flush()


class _AudioFeed:
    """The mix, encoded and muxed up to a given time as the copied packets go by."""

    def __init__(self, av, stream, out, blocks, *, gain, total: int, start: int, rate: int, layout: str):
        self.av, self.stream, self.out, self.blocks = av, stream, out, blocks
        self.gain, self.total, self.rate, self.layout = gain, total, rate, layout
        self.pts = start
        self.start = start
        self.done = 0

    def until(self, seconds: float) -> None:
        while self.done < self.total and (self.pts / self.rate) < seconds:
            block = next(self.blocks, None)
            if block is None:
                self.total = self.done
                break
            block = block[:, :self.total - self.done] * self.gain
            frame = self.av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=np.float32), format="fltp",
                                                    layout=self.layout)
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self.pts
            self.pts += block.shape[1]
            self.done += block.shape[1]
            for packet in self.stream.encode(frame):  # PyAV converts to the encoder's sample format and frame size
                self.out.mux(packet)

    def flush(self) -> None:
        for packet in self.stream.encode(None):
            self.out.mux(packet)
        self.blocks.close()


class VideoFeed:
    """A render's video output: the mix goes to a float scratch file as the song streams, and is
    remuxed with the input's video (:meth:`finish`) once the song's gain is known.

    Parameters
    ----------
    source : VideoSource
        The input, as :func:`check_source` found it.
    target : Path
    scratch : Path
        A private folder for the scratch file.
    sample_rate : int
        The render's rate (the input audio's), in Hz.
    channels : int
        The mix's.
    frames : int
        The input audio's length in samples: the mix is cut there.
    """

    def __init__(self, source: VideoSource, target: Path, scratch: Path, *, sample_rate: int, channels: int,
                 frames: int):
        self.source, self.target, self.frames = source, Path(target), frames
        self._writer = files.AudioWriter(scratch / "video-mix.wav", sample_rate=sample_rate, channels=channels,
                                         bit_depth=32)
        self._scratch: Path | None = None

    def process(self, mix: np.ndarray) -> None:
        self._writer.write(mix)

    def close_scratch(self) -> None:
        self._scratch, self._writer = self._writer.close(), None

    def finish(self, gain_db: float) -> Path:
        return remux(self.source.path, self._scratch, self.target, gain_db=gain_db, frames=self.frames,
                     audio_index=self.source.audio_index)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
