"""Broadcast WAV: the ``bext`` chunk (EBU Tech 3285 v2) and an ``iXML`` chunk, added to a WAV file.

libsndfile writes the samples; this module adds the two chunks to the finished file before it is
renamed onto its final name (see :meth:`bridge.audio.files.AudioWriter.close`), so the output is still
written atomically. They go before the ``data`` chunk, where EBU Tech 3285 (section 2) and most
hosts expect them; readers that do not know them (libsndfile, pedalboard) skip unknown chunks as
RIFF requires.

``bext`` layout (EBU Tech 3285 v2, section 2.3, little-endian, 602 bytes plus CodingHistory)::

    Description[256] Originator[32] OriginatorReference[32] OriginationDate[10] OriginationTime[8]
    TimeReferenceLow u32  TimeReferenceHigh u32  Version u16 (= 2)  UMID[64]
    LoudnessValue i16  LoudnessRange i16  MaxTruePeakLevel i16  MaxMomentaryLoudness i16
    MaxShortTermLoudness i16  Reserved[180]  CodingHistory (ASCII, CR/LF-terminated rows)

The text fields are ASCII (Tech 3285 section 2.3); names with other characters are
transliterated there (``Beyoncé`` -> ``Beyonce``) and kept whole, in UTF-8, in the iXML chunk.
The loudness fields are hundredths of LUFS, LU or dBTP; a value that was not measured is
``0x7FFF`` (Tech 3285 v2, section 2.4).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import struct
import unicodedata
import uuid
from pathlib import Path
from xml.etree import ElementTree

from ..version import __version__
from ..errors import AudioError, OutputError

BEXT_VERSION = 2
#: EBU Tech 3285 v2, section 2.4: a loudness field that is not used holds 0x7FFF.
UNKNOWN_LOUDNESS = 0x7FFF
SECONDS_PER_DAY = 24 * 3600
#: iXML version this module writes (iXML specification 2.10, www.ixml.info).
IXML_VERSION = "2.10"
#: Channel names of the layouts stembridge writes (5.1 in WAVE_FORMAT_EXTENSIBLE order, mask 0x3F).
CHANNEL_NAMES = {1: ("M",), 2: ("L", "R"), 6: ("L", "R", "C", "LFE", "Ls", "Rs")}
_COPY_BLOCK = 1 << 22
#: Characters XML 1.0 cannot hold even escaped (a file name may); iXML text shows them as '?'.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclasses.dataclass(frozen=True)
class Loudness:
    """The bext v2 loudness fields; ``None`` where not measured.

    Units: ``integrated`` and the maxima in LUFS, ``range`` in LU, ``true_peak`` in dBTP.
    """

    integrated: float | None = None
    range: float | None = None
    true_peak: float | None = None
    max_momentary: float | None = None
    max_short_term: float | None = None


@dataclasses.dataclass(frozen=True)
class Broadcast:
    """What a Broadcast WAV output carries.

    Parameters
    ----------
    description : str
        Free text, at most 256 ASCII characters (longer is cut).
    sample_rate : int
        The file's rate in Hz; ``time_reference`` counts samples at this rate.
    channels : int
    time_reference : int
        Samples since midnight of the first sample (the timecode a DAW places the file at).
    project, take : str
        iXML PROJECT and TAKE (the song and the preset).
    track_names : tuple of str
        One iXML TRACK NAME per channel.
    loudness : Loudness
    bit_depth : int or None
        For the CodingHistory row (``W=``); None for float.
    origination : datetime.datetime
        Local creation time (OriginationDate/Time).
    """

    description: str
    sample_rate: int
    channels: int
    time_reference: int = 0
    project: str = ""
    take: str = ""
    track_names: tuple[str, ...] = ()
    loudness: Loudness = Loudness()
    bit_depth: int | None = 24
    originator: str = f"stembridge {__version__}"
    originator_reference: str = ""
    origination: datetime.datetime = dataclasses.field(default_factory=datetime.datetime.now)


def ascii_text(text: str, size: int) -> bytes:
    """``text`` as at most ``size`` ASCII bytes, NUL-padded: accents dropped, other characters '?'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c if " " <= c <= "~" else "?" for c in decomposed if not unicodedata.combining(c))
    return plain.encode("ascii")[:size].ljust(size, b"\0")


def _loudness_field(value: float | None) -> int:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return UNKNOWN_LOUDNESS
    return max(-32768, min(32766, int(round(value * 100))))


def bext_payload(info: Broadcast) -> bytes:
    """The ``bext`` chunk's payload (EBU Tech 3285 v2, section 2.3)."""
    reference = info.originator_reference or uuid.uuid4().hex[:32]
    when = info.origination
    low, high = info.time_reference & 0xFFFFFFFF, info.time_reference >> 32
    loud = info.loudness
    fields = struct.pack(
        "<256s32s32s10s8sIIH64s5h180s",
        ascii_text(info.description, 256), ascii_text(info.originator, 32), ascii_text(reference, 32),
        when.strftime("%Y-%m-%d").encode("ascii"), when.strftime("%H:%M:%S").encode("ascii"),
        low, high, BEXT_VERSION, b"\0" * 64,
        _loudness_field(loud.integrated), _loudness_field(loud.range), _loudness_field(loud.true_peak),
        _loudness_field(loud.max_momentary), _loudness_field(loud.max_short_term), b"\0" * 180)
    # EBU R 98: one row per process, "A=<algorithm>,F=<rate>,W=<word length>,M=<mode>,T=<text>", CR/LF.
    mode = {1: ",M=mono", 2: ",M=stereo"}.get(info.channels, "")
    word = f",W={info.bit_depth}" if info.bit_depth else ""
    history = f"A=PCM,F={info.sample_rate}{word}{mode},T={ascii_text(info.originator, 64).rstrip(bytes(1)).decode()}\r\n"
    return fields + history.encode("ascii")


def ixml_payload(info: Broadcast) -> bytes:
    """The ``iXML`` chunk's payload: UTF-8 XML with PROJECT, TAKE, SPEED and a TRACK_LIST."""
    root = ElementTree.Element("BWFXML")

    def add(parent, tag, text=None):
        node = ElementTree.SubElement(parent, tag)
        if text is not None:
            node.text = _XML_INVALID.sub("?", str(text))
        return node

    add(root, "IXML_VERSION", IXML_VERSION)
    add(root, "PROJECT", info.project)
    add(root, "TAKE", info.take)
    add(root, "NOTE", info.description)
    speed = add(root, "SPEED")
    add(speed, "FILE_SAMPLE_RATE", info.sample_rate)
    add(speed, "TIMESTAMP_SAMPLE_RATE", info.sample_rate)
    add(speed, "TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI", info.time_reference >> 32)
    add(speed, "TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO", info.time_reference & 0xFFFFFFFF)
    tracks = add(root, "TRACK_LIST")
    names = info.track_names or CHANNEL_NAMES.get(info.channels, tuple(str(i + 1) for i in range(info.channels)))
    add(tracks, "TRACK_COUNT", len(names))
    for index, name in enumerate(names, start=1):
        track = add(tracks, "TRACK")
        add(track, "CHANNEL_INDEX", index)
        add(track, "INTERLEAVE_INDEX", index)
        add(track, "NAME", name)
    body = ElementTree.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def _chunk(tag: bytes, payload: bytes) -> bytes:
    pad = b"\0" if len(payload) % 2 else b""  # RIFF: chunks start on even offsets
    return tag + struct.pack("<I", len(payload)) + payload + pad


def _chunks(handle) -> list[tuple[bytes, int, int]]:
    """``(id, header offset, payload size)`` of every chunk of an open RIFF/WAVE file."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    handle.seek(0)
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return []
    found, at = [], 12
    while at + 8 <= end:
        handle.seek(at)
        tag, size = struct.unpack("<4sI", handle.read(8))
        found.append((tag, at, size))
        at += 8 + size + (size & 1)
    return found


def embed(path: Path, info: Broadcast) -> None:
    """Insert ``bext`` and ``iXML`` chunks before the ``data`` chunk of the WAV file ``path``, in place.

    Meant for a finished partial file before its rename: the samples after the insertion point
    move up by the chunks' size, in blocks from the end, so no second copy of the file is made.
    """
    path = Path(path)
    insert = _chunk(b"bext", bext_payload(info)) + _chunk(b"iXML", ixml_payload(info))
    with open(path, "r+b") as handle:
        chunks = _chunks(handle)
        data = next((offset for tag, offset, _ in chunks if tag == b"data"), None)
        if data is None:
            raise OutputError(f"{path}: not a RIFF/WAVE file with a data chunk; cannot add the bext chunk")
        if any(tag in (b"bext", b"iXML") for tag, _, _ in chunks):
            raise OutputError(f"{path}: already has a bext or iXML chunk")
        end = handle.seek(0, os.SEEK_END)
        if end - 8 + len(insert) > 0xFFFFFFFF:
            raise OutputError(f"{path}: with the bext chunk the file would pass the 4 GiB RIFF limit; "
                              "set output.bwf: false or write flac")
        position = end
        while position > data:
            start = max(data, position - _COPY_BLOCK)
            handle.seek(start)
            block = handle.read(position - start)
            handle.seek(start + len(insert))
            handle.write(block)
            position = start
        handle.seek(data)
        handle.write(insert)
        handle.seek(4)
        handle.write(struct.pack("<I", end - 8 + len(insert)))


def read_time_reference(path: Path) -> int | None:
    """The TimeReference of a RIFF/WAVE file's ``bext`` chunk (samples since midnight), or None
    without one (and for other formats: FLAC, MP3, RF64 are not searched)."""
    try:
        with open(path, "rb") as handle:
            for tag, offset, size in _chunks(handle):
                if tag == b"bext" and size >= 346:
                    handle.seek(offset + 8 + 338)  # Description..OriginationTime: 256+32+32+10+8 bytes
                    low, high = struct.unpack("<II", handle.read(8))
                    return (high << 32) | low
    except OSError:
        return None
    return None


def source_time_reference(path: Path, *, source_rate: int, target_rate: int) -> int:
    """The input's TimeReference converted to the output's sample rate; 0 when it has none.

    Raises
    ------
    AudioError
        If the input's TimeReference lies 24 hours or more after midnight (not a time of day).
    """
    reference = read_time_reference(path)
    if reference is None:
        return 0
    if reference >= SECONDS_PER_DAY * source_rate:
        hours = reference / source_rate / 3600
        raise AudioError(f"{path}: bext TimeReference {reference} samples is {hours:.1f} h after midnight, "
                         "past 24 h; fix the timecode in the source (bwfmetaedit --Timereference=...) "
                         "or set output.bwf: false")
    return int(round(reference * target_rate / source_rate))


def channel_names(stem: str, channels: int) -> tuple[str, ...]:
    """iXML track names: the stem and the channel, e.g. ``vocals L``."""
    return tuple(f"{stem} {c}" for c in CHANNEL_NAMES.get(channels, tuple(str(i + 1) for i in range(channels))))
