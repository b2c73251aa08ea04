"""Tags: the input's title, artist, album, album artist, track and disc numbers, date, genre and
cover art, read from it and written into every output in that format's own tag system, with
mutagen.

========  ==============================================================================
format    tags written
========  ==============================================================================
wav       an ``id3 `` chunk (ID3v2.3), after the Broadcast WAV ``bext``/``iXML`` chunks
aiff      an ``ID3 `` chunk (ID3v2.3)
mp3       ID3v2.3 at the start (APIC front cover)
flac      Vorbis comments and a PICTURE block
ogg/opus  Vorbis comments, the cover as METADATA_BLOCK_PICTURE (base64 FLAC picture)
m4a       iTunes atoms (``©nam``, ``©ART``, ``©alb``, ``aART``, ``trkn``, ``disk``, ``©day``,
          ``©gen``, ``covr``)
========  ==============================================================================

Read from: FLAC, Ogg Vorbis/Opus (Vorbis comments), MP3/WAV/AIFF (ID3), MP4/M4A (atoms) and a
WAV's RIFF ``LIST/INFO`` chunk (INAM, IART, IPRD, ICRD, IGNR, ITRK) when it has no ID3. A file
without tags gives empty :class:`Tags`; damaged tags are read as none (the audio is what
matters), never an error.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import struct
from pathlib import Path

from ..errors import OutputError

FRONT_COVER = 3  # ID3v2 APIC / FLAC PICTURE type "Cover (front)"


@dataclasses.dataclass(frozen=True)
class Picture:
    """An embedded image: its bytes, MIME type and picture type (3 = front cover)."""

    data: bytes
    mime: str = "image/jpeg"
    kind: int = FRONT_COVER
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Tags:
    """A song's tags; None where the file has none. ``date`` is kept as written (``2021`` or ``2021-04-30``)."""

    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_artist: str | None = None
    track: int | None = None
    track_total: int | None = None
    disc: int | None = None
    disc_total: int | None = None
    date: str | None = None
    genre: str | None = None
    cover: Picture | None = None

    def named(self, fallback: str, suffix: str | None) -> "Tags":
        """These tags for one output: the title (``fallback`` when the input has none) with
        `` (suffix)`` added, so the stems and remixes of a song do not show as one title."""
        title = self.title or fallback
        return dataclasses.replace(self, title=f"{title} ({suffix})" if suffix else title)


def output_suffix(label: str, *, take: str | None = None) -> str:
    """What an output's title gets: the stem (``vocals``), the preset (``karaoke``) for a render's
    mix, both (``vocals, karaoke``) for a render's stem."""
    if label == "mix":
        return take or "mix"
    return f"{label}, {take}" if take else label


# --- reading -------------------------------------------------------------------------------

def read(path) -> Tags:
    """The tags of ``path``; empty :class:`Tags` if it has none or they cannot be read."""
    import mutagen

    path = Path(path)
    try:
        audio = mutagen.File(str(path))
    except (mutagen.MutagenError, OSError, ValueError, struct.error):
        audio = None
    tags = getattr(audio, "tags", None)
    found = Tags()
    if tags is not None:
        kind = type(tags).__name__
        if hasattr(tags, "getall"):  # ID3: mp3, and the id3 chunk of wav and aiff
            found = _from_id3(tags)
        elif kind == "MP4Tags":
            found = _from_mp4(tags)
        elif hasattr(tags, "as_dict"):  # Vorbis comments: flac, ogg, opus
            found = _from_vorbis(tags, getattr(audio, "pictures", None))
    if found == Tags() and path.suffix.lower() == ".wav":
        found = _from_riff_info(path)
    return found


def _number_pair(text) -> tuple[int | None, int | None]:
    """``"3/12"`` -> (3, 12); ``"3"`` -> (3, None); anything else -> (None, None)."""
    match = re.match(r"\s*(\d+)\s*(?:/\s*(\d+))?", str(text or ""))
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


def _from_id3(tags) -> Tags:
    def text(frame_id):
        frame = tags.get(frame_id)
        return str(frame.text[0]) if frame is not None and getattr(frame, "text", None) else None

    track, track_total = _number_pair(text("TRCK"))
    disc, disc_total = _number_pair(text("TPOS"))
    date = text("TDRC") or text("TYER")
    pictures = tags.getall("APIC")
    cover = None
    if pictures:
        apic = next((p for p in pictures if p.type == FRONT_COVER), pictures[0])
        cover = Picture(bytes(apic.data), apic.mime or "image/jpeg", int(apic.type), apic.desc or "")
    return Tags(title=text("TIT2"), artist=text("TPE1"), album=text("TALB"), album_artist=text("TPE2"),
                track=track, track_total=track_total, disc=disc, disc_total=disc_total,
                date=str(date) if date else None, genre=text("TCON"), cover=cover)


def _from_vorbis(tags, pictures) -> Tags:
    values = {}
    for key, value in tags:
        values.setdefault(key.lower(), value)

    def first(*keys):
        return next((values[k] for k in keys if values.get(k)), None)

    track, track_total = _number_pair(first("tracknumber"))
    disc, disc_total = _number_pair(first("discnumber"))
    track_total = track_total or _number_pair(first("tracktotal", "totaltracks"))[0]
    disc_total = disc_total or _number_pair(first("disctotal", "totaldiscs"))[0]
    found = list(pictures or [])
    if not found:
        from mutagen.flac import Picture as FlacPicture

        for encoded in tags.get("metadata_block_picture", []) if hasattr(tags, "get") else []:
            try:
                found.append(FlacPicture(base64.b64decode(encoded)))
            except (ValueError, TypeError, struct.error):
                continue
    cover = None
    if found:
        picture = next((p for p in found if p.type == FRONT_COVER), found[0])
        cover = Picture(bytes(picture.data), picture.mime or "image/jpeg", int(picture.type), picture.desc or "")
    return Tags(title=first("title"), artist=first("artist"), album=first("album"),
                album_artist=first("albumartist", "album artist", "album_artist"), track=track,
                track_total=track_total, disc=disc, disc_total=disc_total, date=first("date", "year"),
                genre=first("genre"), cover=cover)


def _from_mp4(tags) -> Tags:
    from mutagen.mp4 import MP4Cover

    def text(key):
        value = tags.get(key)
        return str(value[0]) if value else None

    def pair(key):
        value = tags.get(key)
        if not value:
            return None, None
        number, total = value[0]
        return number or None, total or None

    cover = None
    if tags.get("covr"):
        image = tags["covr"][0]
        mime = "image/png" if getattr(image, "imageformat", None) == MP4Cover.FORMAT_PNG else "image/jpeg"
        cover = Picture(bytes(image), mime)
    track, track_total = pair("trkn")
    disc, disc_total = pair("disk")
    return Tags(title=text("\xa9nam"), artist=text("\xa9ART"), album=text("\xa9alb"), album_artist=text("aART"),
                track=track, track_total=track_total, disc=disc, disc_total=disc_total, date=text("\xa9day"),
                genre=text("\xa9gen"), cover=cover)


#: RIFF INFO ids (the Multimedia Programming Interface and Data Specifications 1.0, 1991) -> Tags fields.
_INFO = {b"INAM": "title", b"IART": "artist", b"IPRD": "album", b"ICRD": "date", b"IGNR": "genre", b"ITRK": "track"}


def _from_riff_info(path: Path) -> Tags:
    """A WAV's ``LIST``/``INFO`` chunk, read chunk header by chunk header (the samples are skipped)."""
    values = {}
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
                return Tags()
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    break
                tag, size = struct.unpack("<4sI", header)
                if tag == b"LIST" and size >= 4 and size < 1 << 20:
                    body = handle.read(size)
                    if body[:4] == b"INFO":
                        at = 4
                        while at + 8 <= len(body):
                            key, length = struct.unpack("<4sI", body[at:at + 8])
                            raw = body[at + 8:at + 8 + length].split(b"\0")[0]
                            if key in _INFO and raw:
                                values[_INFO[key]] = raw.decode("utf-8", errors="replace").strip()
                            at += 8 + length + (length & 1)
                else:
                    handle.seek(size, 1)
                if size & 1:
                    handle.seek(1, 1)
    except OSError:
        return Tags()
    track, _ = _number_pair(values.pop("track", None))
    return Tags(**values, track=track)


# --- writing -------------------------------------------------------------------------------

def write(path, tags: Tags, *, extension: str) -> None:
    """Write ``tags`` into the audio file ``path`` (a partial file: the format comes from
    ``extension``, not from its name), keeping whatever else it holds (bext, iXML, the LAME frame).

    Raises
    ------
    OutputError
        mutagen cannot write them (a damaged file, a full disk).
    """
    import mutagen

    try:
        _write(str(path), tags, extension.lower().lstrip("."))
    except (mutagen.MutagenError, struct.error) as exc:
        raise OutputError(f"{path}: could not write its tags ({exc}); check free space and permissions") from None


def _write(path: str, tags: Tags, extension: str) -> None:
    if extension in ("wav", "aiff", "aif"):
        from mutagen.aiff import AIFF
        from mutagen.wave import WAVE

        audio = (WAVE if extension == "wav" else AIFF)(path)
        if audio.tags is None:
            audio.add_tags()
        _to_id3(audio.tags, tags)
        audio.save(v2_version=3)
    elif extension == "mp3":
        from mutagen.id3 import ID3, ID3NoHeaderError

        try:
            id3 = ID3(path)
        except ID3NoHeaderError:
            id3 = ID3()
        _to_id3(id3, tags)
        id3.save(path, v2_version=3)
    elif extension in ("flac", "ogg", "opus"):
        from mutagen.flac import FLAC
        from mutagen.oggopus import OggOpus
        from mutagen.oggvorbis import OggVorbis

        audio = {"flac": FLAC, "ogg": OggVorbis, "opus": OggOpus}[extension](path)
        if audio.tags is None:
            audio.add_tags()
        _to_vorbis(audio, tags, flac=extension == "flac")
        audio.save()
    elif extension == "m4a":
        from mutagen.mp4 import MP4

        audio = MP4(path)
        if audio.tags is None:
            audio.add_tags()
        _to_mp4(audio.tags, tags)
        audio.save()
    else:
        raise ValueError(f"no tag writer for {extension}")


def _total(number, total) -> str:
    return f"{number}/{total}" if total else str(number)


def _to_id3(id3, tags: Tags) -> None:
    from mutagen import id3 as frames

    for frame, value in (("TIT2", tags.title), ("TPE1", tags.artist), ("TALB", tags.album),
                         ("TPE2", tags.album_artist), ("TCON", tags.genre), ("TDRC", tags.date)):
        if value:
            id3.setall(frame, [getattr(frames, frame)(encoding=3, text=[value])])
    if tags.track:
        id3.setall("TRCK", [frames.TRCK(encoding=3, text=[_total(tags.track, tags.track_total)])])
    if tags.disc:
        id3.setall("TPOS", [frames.TPOS(encoding=3, text=[_total(tags.disc, tags.disc_total)])])
    if tags.cover is not None:
        c = tags.cover
        id3.setall("APIC", [frames.APIC(encoding=3, mime=c.mime, type=c.kind, desc=c.description, data=c.data)])


def _to_vorbis(audio, tags: Tags, *, flac: bool) -> None:
    from mutagen.flac import Picture as FlacPicture

    comments = audio.tags
    for key, value in (("title", tags.title), ("artist", tags.artist), ("album", tags.album),
                       ("albumartist", tags.album_artist), ("date", tags.date), ("genre", tags.genre),
                       ("tracknumber", tags.track), ("tracktotal", tags.track_total),
                       ("discnumber", tags.disc), ("disctotal", tags.disc_total)):
        if value:
            comments[key] = [str(value)]
    if tags.cover is not None:
        picture = FlacPicture()
        picture.data, picture.mime, picture.type, picture.desc = (tags.cover.data, tags.cover.mime, tags.cover.kind,
                                                                  tags.cover.description)
        if flac:
            audio.clear_pictures()
            audio.add_picture(picture)
        else:  # the Xiph convention for Ogg: a base64 FLAC picture block in a comment
            comments["metadata_block_picture"] = [base64.b64encode(picture.write()).decode("ascii")]


def _to_mp4(mp4, tags: Tags) -> None:
    from mutagen.mp4 import MP4Cover

    for key, value in (("\xa9nam", tags.title), ("\xa9ART", tags.artist), ("\xa9alb", tags.album),
                       ("aART", tags.album_artist), ("\xa9day", tags.date), ("\xa9gen", tags.genre)):
        if value:
            mp4[key] = [value]
    if tags.track:
        mp4["trkn"] = [(tags.track, tags.track_total or 0)]
    if tags.disc:
        mp4["disk"] = [(tags.disc, tags.disc_total or 0)]
    if tags.cover is not None:
        kind = MP4Cover.FORMAT_PNG if "png" in tags.cover.mime else MP4Cover.FORMAT_JPEG
        mp4["covr"] = [MP4Cover(tags.cover.data, imageformat=kind)]
