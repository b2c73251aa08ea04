"""The PyAV reader: every audio stream FFmpeg's decoders read, behind :mod:`bridge.audio.files`.

AAC and ALAC in m4a/mp4, Opus, Vorbis, WMA, AC-3/E-AC-3, and the audio of video containers
(mov, mp4, mkv, webm, ...), decoded by the FFmpeg libraries inside the ``av`` wheel and streamed
block by block: memory stays flat whatever the length. libsndfile keeps what it reads (wav, flac,
ogg, mp3, aiff); :mod:`bridge.audio.files` decides which reader opens a file.

Sample-exact as the ``ffmpeg`` command: the decoders trim the encoder delay and padding that the
container signals (an MP4 edit list, Opus pre-skip, skip-samples side data) exactly as
``ffmpeg -i in.m4a out.wav`` does, and the samples are taken in decode order with no timestamp
padding, so both give the same samples, the same length and no offset. Integer formats become
float32 as FFmpeg converts them (``s16 / 32768``, ``s32 / 2**31``).

Streams are numbered among the file's *audio* streams, as ``ffmpeg -map 0:a:N`` counts them
(N = 0 is the first audio stream, whatever video streams come before it). Without a number the
container's default audio stream is read (its *default* disposition; the first audio stream when
none has it).

More than two channels (a 5.1 or 7.1 film mix) are down-mixed to stereo for the separators by the
ITU-R BS.775 matrix (:data:`DOWNMIX`): each front side as it is, the centre and each surround
side at -3 dB into its side, the LFE left out, no normalisation (as BS.775's Lo/Ro: a loud film
mix may peak above full scale; the float pipeline keeps it and the outputs count or limit it as
for any input).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import AudioError

#: Codec tags of encrypted audio (FairPlay ``drms``/``drmi``, Audible ``aavd``, Common Encryption
#: ``enca``): the samples cannot be decoded without the store's key, and FFmpeg would decode the
#: ciphertext into noise rather than fail.
DRM_TAGS = {"drms", "drmi", "aavd", "enca"}

#: -3 dB (1/sqrt 2): ITU-R BS.775-3, Table 2, the 3/2 -> 2/0 down-mix coefficient of the centre and
#: surround channels.
_MINUS_3DB = float(1.0 / np.sqrt(2.0))
#: FFmpeg channel name -> (gain into left, gain into right). BS.775 leaves the LFE out of a down-mix.
DOWNMIX = {
    "FL": (1.0, 0.0), "FR": (0.0, 1.0), "FC": (_MINUS_3DB, _MINUS_3DB), "LFE": (0.0, 0.0), "LFE2": (0.0, 0.0),
    "BL": (_MINUS_3DB, 0.0), "BR": (0.0, _MINUS_3DB), "SL": (_MINUS_3DB, 0.0), "SR": (0.0, _MINUS_3DB),
    "BC": (0.5, 0.5),  # one back surround, shared (-3 dB, then -3 dB per side)
    "FLC": (1.0, 0.0), "FRC": (0.0, 1.0),
}

#: Codecs whose packet durations add up to exactly the decoded samples (no encoder delay, no
#: padding): their length is read from the packets without decoding.
_EXACT_PACKETS = ("alac", "flac", "pcm_", "tta", "wavpack", "mlp", "truehd")


@dataclasses.dataclass(frozen=True)
class Probe:
    """One audio stream of a file, as :func:`probe` found it.

    ``channels`` is what :func:`blocks` yields (2 after a down-mix); ``layout`` the stream's own
    channel layout (FFmpeg's name, e.g. ``5.1(side)``), ``source_channels`` its channel count.
    """

    container: str
    codec: str
    sample_rate: int
    channels: int
    frames: int
    stream: int
    layout: str
    source_channels: int


def _av():
    import av  # a core dependency; imported when a file needs it, not at ``import bridge``

    return av


class Unopenable(Exception):
    """FFmpeg could not open the file at all; :mod:`.files` says why in one line (a folder, a
    missing or empty file, permissions, or not a media file)."""

    def __init__(self, cause: Exception):
        super().__init__(getattr(cause, "strerror", None) or str(cause) or type(cause).__name__)


def _open(path: Path):
    av = _av()
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise Unopenable(exc) from None


def _pick(path: Path, container, stream: int | None):
    """The audio stream to read: number ``stream`` among the audio streams, or the default one."""
    audio = list(container.streams.audio)
    if not audio:
        others = collections.Counter(s.type for s in container.streams)
        held = ", ".join(f"{n} {kind}" for kind, n in sorted(others.items())) or "nothing"
        raise AudioError(f"{path}: the file has no audio stream (it holds {held} stream"
                         f"{'s' if sum(others.values()) != 1 else ''}); there is nothing to separate")
    if stream is None:
        default = _av().stream.Disposition.default
        chosen = next((s for s in audio if s.disposition & default), audio[0])
    elif isinstance(stream, bool) or not isinstance(stream, int) or not 0 <= stream < len(audio):
        raise AudioError(f"{path}: --stream {stream!r} is out of range: the file has {len(audio)} audio stream"
                         f"{'s' if len(audio) != 1 else ''} (numbered from 0); pick one of "
                         f"{', '.join(map(str, range(len(audio))))}")
    else:
        chosen = audio[stream]
    context = chosen.codec_context
    number = audio.index(chosen)
    if context is None:
        raise AudioError(f"{path}: audio stream {number} uses a codec FFmpeg cannot decode (no decoder in this "
                         "build); convert it with a tool that reads it, or pick another stream with --stream")
    tag = (context.codec_tag or "").strip().lower()
    if tag in DRM_TAGS:
        raise AudioError(f"{path}: audio stream {number} is DRM-protected ({tag}: e.g. a FairPlay .m4p from a store); "
                         "its samples are encrypted and cannot be decoded: use a DRM-free copy")
    return chosen, number


def _check_rate(path: Path, rate) -> int:
    from .buffers import check_sample_rate

    return check_sample_rate(rate, name=str(path))


def _matrix(path: Path, names: list[str]) -> np.ndarray | None:
    """The (2, channels) down-mix matrix for a layout of more than two channels; None for mono/stereo."""
    if len(names) <= 2:
        return None
    unknown = [n for n in names if n not in DOWNMIX]
    if unknown:
        raise AudioError(f"{path}: cannot down-mix its {len(names)}-channel layout to stereo (channels "
                         f"{', '.join(unknown)} have no ITU-R BS.775 coefficient); pick a stereo stream with "
                         "--stream, or down-mix it first (ffmpeg -i IN -ac 2 OUT.wav)")
    return np.array([DOWNMIX[n] for n in names], dtype=np.float32).T


#: FFmpeg's default layout for a channel count (``av_channel_layout_default``), for a stream
#: that leaves its layout unspecified; mono and stereo need no names (they are not down-mixed).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}


def _names(path: Path, stream) -> list[str]:
    count = stream.codec_context.channels
    names = [c.name for c in stream.codec_context.layout.channels]
    if len(names) == count and not any(n in ("", "NONE") or n.startswith("USR") for n in names):
        return names
    if count in _DEFAULT_LAYOUTS:  # an unspecified layout ("6 channels"), read as ffmpeg -ac 2 reads it
        return [c.name for c in _av().AudioLayout(_DEFAULT_LAYOUTS[count]).channels]
    raise AudioError(f"{path}: its {count} channels have no layout, so there is no rule to down-mix them to "
                     "stereo; pick a stereo stream with --stream, or down-mix it first (ffmpeg -i IN -ac 2 OUT.wav)")


def probe(path, *, stream: int | None = None) -> Probe:
    """Read the container's header and count the stream's samples.

    The count is exact: for codecs with an encoder delay or padding (AAC, Opus, Vorbis, MP3,
    AC-3, ...) the container's duration is not, so the stream is decoded and its samples counted
    (a few hundred times faster than real time for AAC); lossless codecs without a delay
    (:data:`_EXACT_PACKETS`) are counted from their packets' durations without decoding.
    """
    path = Path(path)
    av = _av()
    with _open(path) as container:
        chosen, number = _pick(path, container, stream)
        context = chosen.codec_context
        rate = _check_rate(path, context.sample_rate)
        names = _names(path, chosen)
        _matrix(path, names)
        fmt = container.format.name.split(",")[0]
        layout = context.layout.name
        try:
            frames = _packet_count(container, chosen)
        except av.FFmpegError:
            frames = None
    if frames is None:
        try:
            with _open(path) as container:
                chosen, _ = _pick(path, container, stream)
                frames = sum(frame.samples for frame in container.decode(chosen))
        except av.FFmpegError as exc:
            raise AudioError(f"{path}: audio stream {number} ({context.name}) cannot be decoded ({exc}); "
                             "the file is damaged, or pick another stream with --stream") from None
    return Probe(container=fmt, codec=context.name, sample_rate=rate, channels=min(len(names), 2), frames=frames,
                 stream=number, layout=layout, source_channels=len(names))


def _packet_count(container, stream) -> int | None:
    """The samples of a codec without delay or padding, from its packets' durations; None otherwise."""
    if not stream.codec_context.name.startswith(_EXACT_PACKETS) or stream.time_base is None:
        return None
    total = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if not packet.duration:
            return None
        total += packet.duration
    return int(round(total * stream.time_base * stream.codec_context.sample_rate))


def _as_float(frame) -> np.ndarray:
    """One decoded frame as ``(channels, samples)`` float32, converted as FFmpeg converts."""
    data = frame.to_ndarray()
    fmt = frame.format
    if not fmt.is_planar:
        data = data.reshape(-1, len(frame.layout.channels)).T
    if data.dtype == np.float32:
        return data
    if data.dtype == np.int16:
        return data.astype(np.float32) * np.float32(1.0 / 32768.0)
    if data.dtype == np.int32:
        return (data.astype(np.float64) * (1.0 / 2147483648.0)).astype(np.float32)
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)
    return data.astype(np.float32)  # float64 (dbl, dblp)


def blocks(path, *, stream: int | None = None, block_frames: int = 262144) -> Iterator[np.ndarray]:
    """Decode the stream as ``(channels, samples)`` float32 blocks of ``block_frames`` samples
    (the last one shorter), down-mixed to stereo when it has more than two channels."""
    path = Path(path)
    av = _av()
    with _open(path) as container:
        chosen, number = _pick(path, container, stream)
        rate = chosen.codec_context.sample_rate
        names = _names(path, chosen)
        matrix = _matrix(path, names)
        pending: list[np.ndarray] = []
        held = 0
        read = 0
        try:
            for frame in container.decode(chosen):
                if frame.sample_rate != rate:
                    raise AudioError(f"{path}: audio stream {number} changes its sample rate from {rate} to "
                                     f"{frame.sample_rate} Hz after {read + held} samples; convert it first")
                audio = _as_float(frame)
                if audio.shape[0] != len(names):
                    raise AudioError(f"{path}: audio stream {number} changes from {len(names)} to {audio.shape[0]} "
                                     f"channels after {read + held} samples; convert it first")
                if matrix is not None:
                    audio = matrix @ audio
                pending.append(audio)
                held += audio.shape[1]
                while held >= block_frames:
                    whole = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
                    yield np.ascontiguousarray(whole[:, :block_frames])
                    read += block_frames
                    rest = whole[:, block_frames:]
                    pending, held = ([rest] if rest.shape[1] else []), rest.shape[1]
        except av.FFmpegError as exc:
            raise AudioError(f"{path}: decoding audio stream {number} failed after {read + held} samples ({exc}); "
                             "the file is damaged or truncated: re-export or re-download it") from None
        if held:
            yield np.ascontiguousarray(np.concatenate(pending, axis=1))
