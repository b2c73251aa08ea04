"""Encoded outputs through PyAV (FFmpeg's libraries in its wheel): AAC and ALAC in ``.m4a``, Opus
in ``.opus`` (Ogg) and MP3.

:class:`bridge.audio.files.AudioWriter` writes through :class:`Encoder` for these formats and
through libsndfile for the others (wav, flac, ogg Vorbis, aiff). Which encoder writes what:

========  =========  ==============================  ===========================  =================
format    codec      FFmpeg encoder (muxer)          bit rate, kbit/s (default)   encoder delay
========  =========  ==============================  ===========================  =================
m4a       aac        FFmpeg's native ``aac`` (ipod)  32-512 (256 per 2 channels)  1024 samples
m4a       alac       ``alac`` (ipod), 16 or 24 bit   lossless                     none
opus      opus       ``libopus`` (ogg), 48 kHz       6-510 (160 per 2 channels)   312 samples
mp3       mp3        ``libmp3lame`` (mp3)            32-320 (320), CBR            576 + 529 samples
========  =========  ==============================  ===========================  =================

Every lossy encoder starts its output late (the *encoder delay*: the frames a decoder needs to
prime its transform) and pads its end to a whole frame. The muxers record both, so a decoder that
reads them gives back the samples at their original positions: the MP4 muxer writes an edit list
(``elst``) that starts the track 1024 samples in, the Ogg muxer writes Opus's pre-skip into its
header, and the MP3 muxer writes a LAME/Xing info frame with the delay and the padding (LAME's
576 samples plus the 529 of the MP3 decoder's own filter bank: the 1105 samples an MP3 written
without that frame, e.g. by pedalboard, comes out late by). FFmpeg (and so PyAV) and libmpg123
(libsndfile) trim by them; every stem and the mix are encoded alike, so they stay aligned with
each other even in a player that ignores them. AAC's end padding (up to 1023 samples of
silence) is recorded as the track's duration, which FFmpeg's decoder does not trim: a decoded
m4a can be that much longer than the wav, never shifted.

PyAV is imported when the first encoder is made.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import OutputError


@dataclasses.dataclass(frozen=True)
class Codec:
    """One encoder as outputs use it; bit rates in kbit/s (None for lossless)."""

    name: str
    encoder: str  # FFmpeg's encoder
    muxer: str  # FFmpeg's container format
    bitrates: tuple[int, int] | None = None  # the range a user may ask for
    default_kbps: int | None = None  # per 2 channels (scaled with the channel count, within the range)
    max_channels: int = 8
    rates: tuple[int, ...] | None = None  # sample rates it takes (None: any)
    sample_format: str = "fltp"

    @property
    def lossless(self) -> bool:
        return self.bitrates is None


CODECS = {
    "aac": Codec("aac", "aac", "ipod", (32, 512), 256),
    "alac": Codec("alac", "alac", "ipod"),
    # Opus always decodes at 48 kHz (RFC 7845 section 5.1): outputs are written at that rate.
    "opus": Codec("opus", "libopus", "opus", (6, 510), 160, rates=(48000,), sample_format="flt"),
    # ISO/IEC 11172-3 Layer III holds one or two channels, 32 to 320 kbit/s.
    "mp3": Codec("mp3", "libmp3lame", "mp3", (32, 320), 320, max_channels=2),
}
#: Channel count -> FFmpeg layout; FFmpeg's 5.1 is FL FR FC LFE BL BR, the order of WAVEX's mask 0x3F.
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
#: Output format (file extension) -> the codecs it may hold, the default first.
FORMAT_CODECS = {"m4a": ("aac", "alac"), "opus": ("opus",), "mp3": ("mp3",)}
#: The rate each format is written at when the session keeps the source's, or None to keep it.
FIXED_RATE = {"opus": 48000}


def codec_for(extension: str, codec: str | None = None) -> Codec:
    """The codec an output of this format uses (``codec`` chooses among the format's)."""
    extension = extension.lower()
    names = FORMAT_CODECS.get(extension)
    if names is None:
        raise OutputError(f"output format '{extension}' is not written by an encoder; "
                          f"encoded formats: {', '.join(FORMAT_CODECS)}")
    name = codec or names[0]
    if name not in names:
        raise OutputError(f"codec '{name}' cannot be written as {extension}; {extension} holds "
                          + " or ".join(names) + (" (output.codec)" if len(names) > 1 else ""))
    return CODECS[name]


def check_bitrate(codec: Codec, kbps) -> None:
    """Refuse a bit rate the codec cannot take, in one line."""
    if kbps is None:
        return
    if codec.lossless:
        raise OutputError(f"{codec.name} is lossless: it takes no bit rate; leave output.bitrate out")
    low, high = codec.bitrates
    if isinstance(kbps, bool) or not isinstance(kbps, (int, float)) or not low <= kbps <= high:
        raise OutputError(f"bit rate {kbps!r} kbit/s is out of range for {codec.name}: choose {low} to {high}")


def bit_rate(codec: Codec, kbps: float | None, channels: int) -> int | None:
    """The bit rate in bit/s: ``kbps``, or the codec's default scaled to the channel count."""
    if codec.lossless:
        return None
    if kbps is None:
        low, high = codec.bitrates
        kbps = min(high, max(low, codec.default_kbps * max(1, channels) / 2))
    return int(round(kbps * 1000))


def output_rate(extension: str, sample_rate: int) -> int:
    """The rate an output of this format is written at, given the session's."""
    return FIXED_RATE.get(extension.lower(), sample_rate)


def check_rate(extension: str, sample_rate: int | None) -> None:
    """Refuse an explicit output rate the format cannot hold."""
    fixed = FIXED_RATE.get(extension.lower())
    if sample_rate is not None and fixed is not None and sample_rate != fixed:
        raise OutputError(f"{extension} is decoded at {fixed} Hz whatever it was encoded from; "
                          f"set output.sample_rate to {fixed} or to source")


def import_av():
    try:
        import av
    except ImportError:  # a core dependency; a broken install says so in one line
        raise OutputError("PyAV is not installed (stembridge needs it for m4a, opus, mp3, NI Stems and video "
                          "outputs): pip install av") from None
    return av


class Encoder:
    """Encode ``(channels, samples)`` float32 blocks into one file.

    Parameters
    ----------
    path : Path
        Where the file is written (the caller's partial name; the format is not guessed from it).
    codec : Codec
    sample_rate : int
        In Hz; must be one the codec takes.
    channels : int
    bit_depth : {16, 24, 32}
        ALAC only: 16 or 24 bit (32 is refused, as for FLAC).
    kbps : float, optional
        The bit rate of a lossy codec; None for its default.
    """

    def __init__(self, path: Path, *, codec: Codec, sample_rate: int, channels: int, bit_depth: int = 24,
                 kbps: float | None = None):
        av = import_av()
        self._av = av
        if channels > codec.max_channels:
            raise OutputError(f"{path}: {codec.name} holds at most {codec.max_channels} channels, this output has "
                              f"{channels}; use wav or flac")
        if codec.rates is not None and sample_rate not in codec.rates:
            raise OutputError(f"{codec.name} is written at {codec.rates[0]} Hz, not {sample_rate} Hz")
        sample_format = codec.sample_format
        if codec.name == "alac":
            if bit_depth not in (16, 24):
                raise OutputError("ALAC holds 16- or 24-bit integer samples; use bit depth 16 or 24")
            sample_format = "s16p" if bit_depth == 16 else "s32p"  # FFmpeg's ALAC: s32p is 24-bit
        self.codec, self.sample_rate, self.channels, self.bit_depth = codec, sample_rate, channels, bit_depth
        self._format = sample_format
        if channels not in LAYOUTS:
            raise OutputError(f"{path}: {codec.name} outputs are mono, stereo or 5.1, not {channels} channels; "
                              "use wav or flac")
        self._layout = LAYOUTS[channels]
        self._pts = 0
        self.closed = False
        self._container = av.open(str(path), "w", format=codec.muxer)
        try:
            self._stream = self._container.add_stream(codec.encoder, rate=sample_rate, layout=self._layout)
            self._stream.codec_context.format = sample_format
            rate = bit_rate(codec, kbps, channels)
            if rate is not None:
                self._stream.bit_rate = rate
        except BaseException:
            self._container.close()
            raise

    def own(self, block: np.ndarray) -> np.ndarray:
        """``block`` (channels, samples) float32 as a new array in the encoder's sample format:
        planar ``(channels, n)``, or packed ``(1, n * channels)``; :meth:`write` takes it."""
        if self._format == "flt":
            return np.array(block.T, dtype=np.float32, order="C").reshape(1, -1)  # always a copy
        if self._format == "s16p":
            return np.round(np.clip(block, -1.0, 1.0) * 32767.0).astype(np.int16, order="C")
        if self._format == "s32p":  # 24-bit samples in the top bits of 32, as FFmpeg's ALAC reads them
            return np.ascontiguousarray(np.round(np.clip(block, -1.0, 1.0) * 8388607.0).astype(np.int32) << 8)
        return np.array(block, dtype=np.float32, order="C")

    def write(self, samples: np.ndarray) -> None:
        """Encode and mux ``samples`` as :meth:`own` gives them (any number of samples)."""
        try:
            frame = self._av.AudioFrame.from_ndarray(samples, format=self._format, layout=self._layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += frame.samples
            for packet in self._stream.encode(frame):  # PyAV cuts the frames to the encoder's frame size
                self._container.mux(packet)
        except (self._av.FFmpegError, ValueError) as exc:
            raise RuntimeError(f"{self.codec.encoder}: {exc}") from None

    def close(self) -> None:
        """Flush the encoder (the last, short frame) and finish the container."""
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except self._av.FFmpegError as exc:
            raise RuntimeError(f"{self.codec.encoder}: {exc}") from None
        finally:
            self.closed = True

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - a half-written container may fail to close in any way; it is deleted
            pass
        self.closed = True
