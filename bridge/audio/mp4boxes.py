"""ISO/IEC 14496-12 (MP4) boxes: the few lines of the container stembridge reads itself.

FFmpeg does not expose a ``moov/udta`` box it does not know, such as NI Stems' ``stem`` box
(JSON: the stems' names and colours); :func:`movie_box` reads one back, and
:func:`bridge.daw.nistems.add_movie_box` writes it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path


class BoxError(ValueError):
    """A box whose size runs past its parent's end, or is smaller than its header."""


def boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """The boxes in ``data[start:end]``: ``(type, offset, header size, total size)`` each."""
    found, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        header = 8
        if size == 1:
            if at + 16 > end:
                raise BoxError(f"malformed MP4 box {kind!r} at byte {at}")
            size, header = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise BoxError(f"malformed MP4 box {kind!r} at byte {at}")
        found.append((kind, at, header, size))
        at += size
    return found


#: The largest ``moov`` box read into memory: sample tables of a long video are a few MB.
MAX_MOVIE_BOX = 256 << 20


def movie_box(path, kind: bytes) -> bytes | None:
    """The payload of box ``kind`` in ``moov/udta`` of the MP4 file ``path``, or None.

    Only the top-level box headers and the ``moov`` box are read.

    Raises
    ------
    BoxError
        The file's top-level boxes are malformed, or its ``moov`` box is implausibly large.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        at = 0
        while at + 8 <= end:
            handle.seek(at)
            head = handle.read(16)
            size, box_type = struct.unpack(">I4s", head[:8])
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", head[8:16])[0], 16
            elif size == 0:
                size = end - at
            if size < header or at + size > end:
                raise BoxError(f"malformed MP4 box {box_type!r} at byte {at}")
            if box_type == b"moov":
                if size > MAX_MOVIE_BOX:
                    raise BoxError(f"the movie box is {size} bytes, more than {MAX_MOVIE_BOX}")
                handle.seek(at)
                moov = handle.read(size)
                for child, offset, child_header, child_size in boxes(moov, header, size):
                    if child == b"udta":
                        for box, inner, inner_header, inner_size in boxes(moov, offset + child_header,
                                                                          offset + child_size):
                            if box == kind:
                                return moov[inner + inner_header:inner + inner_size]
                return None
            at += size
    return None
