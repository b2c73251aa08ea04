"""The one module that reads MIDI files (with mido): tempo maps, controller lanes, notes.

Times follow the file's tempo map exactly: every ``set_tempo`` meta event, from any track (in a
type 1 file the tempo track is conventionally the first, but the Standard MIDI File spec lets
any track carry them), changes the length of a tick from its tick on, so

    seconds(tick) = seconds(tick_k) + (tick - tick_k) * tempo_k / (1e6 * ticks_per_beat)

for the last tempo change ``k`` at or before ``tick`` (120 bpm = 500000 us per beat before the
first). Channels are 1-based here, as musicians and DAWs count them (mido counts from 0).
"""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MidiError

if TYPE_CHECKING:
    import mido

DEFAULT_TEMPO = 500_000  # microseconds per beat: 120 bpm, the Standard MIDI File default
KINDS = ("cc", "pitchbend", "pressure")


@dataclasses.dataclass(frozen=True)
class Song:
    """A MIDI file's events on one clock: ``(seconds, track, mido message)``, in time order."""

    path: Path
    events: tuple[tuple[float, int, object], ...]
    tracks: int

    @property
    def length(self) -> float:
        return self.events[-1][0] if self.events else 0.0


def read(path, *, where: str) -> Song:
    """Read a Standard MIDI File; every event gets its absolute time in seconds.

    Raises
    ------
    MidiError
        The file is missing, truncated, not MIDI, has a bad header (type other than 0/1/2,
        SMPTE or zero division) or a running-status error; the message starts with ``where``.
    """
    path = Path(path)
    if not path.is_file():
        raise MidiError(f"{where}: MIDI file {path} does not exist; fix the path")
    try:
        with open(path, "rb") as handle:
            head = handle.read(14)
        if len(head) < 14 or head[:4] != b"MThd":
            raise MidiError(f"{where}: {path} is not a MIDI file (no 'MThd' header); give a Standard MIDI File (.mid)")
        kind, division = int.from_bytes(head[8:10], "big"), int.from_bytes(head[12:14], "big")
        if kind not in (0, 1, 2):
            raise MidiError(f"{where}: {path} has a bad header: MIDI file type {kind}, expected 0, 1 or 2")
        if division == 0 or division & 0x8000:
            raise MidiError(f"{where}: {path} has a bad header: {'SMPTE' if division else 'zero'} time division; "
                            "save it with ticks per quarter note")
        if kind == 2:
            raise MidiError(f"{where}: {path} is a type 2 MIDI file (independent sequences, no common clock); "
                            "save it as type 0 or 1")
        import mido  # here, not at the top: its import costs ~45 ms of CPU, and most runs read no MIDI

        mid = mido.MidiFile(str(path), clip=False)
    except MidiError:
        raise
    except EOFError:
        raise MidiError(f"{where}: {path} is truncated (a track ends before its declared length)") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        hint = " (a data byte came before any status byte)" if "running status" in text else ""
        raise MidiError(f"{where}: {path} is not a valid MIDI file: {text}{hint}") from None
    return Song(path=path, events=tuple(_timed(mid)), tracks=len(mid.tracks))


def _timed(mid: mido.MidiFile) -> list[tuple[float, int, object]]:
    """Every message with its absolute seconds, through the tempo map of all tracks."""
    absolute = []  # (tick, track, order, message)
    for number, track in enumerate(mid.tracks):
        tick = 0
        for order, message in enumerate(track):
            tick += message.time
            absolute.append((tick, number, order, message))
    absolute.sort(key=lambda e: (e[0], e[1], e[2]))
    changes = [(0, 0.0, DEFAULT_TEMPO)]  # (tick, seconds at tick, tempo from tick on)
    for tick, _, _, message in absolute:
        if message.type == "set_tempo":
            last_tick, last_seconds, tempo = changes[-1]
            seconds = last_seconds + (tick - last_tick) * tempo / (1e6 * mid.ticks_per_beat)
            if tick == last_tick:
                changes[-1] = (tick, last_seconds, message.tempo)
            else:
                changes.append((tick, seconds, message.tempo))
    ticks = [c[0] for c in changes]

    def seconds(tick: int) -> float:
        k = bisect.bisect_right(ticks, tick) - 1
        start, at, tempo = changes[k]
        return at + (tick - start) * tempo / (1e6 * mid.ticks_per_beat)

    return [(seconds(tick), number, message) for tick, number, _, message in absolute]


def controller(song: Song, *, kind: str = "cc", number: int | None = None, channel: int | None = None,
               track: int | None = None, where: str) -> list[tuple[float, float]]:
    """One controller's events as ``(seconds, value in 0..1)``.

    ``cc`` values are ``value / 127``; ``pitchbend`` maps -8192..8191 to 0..1 with the centre at
    8192/16383; ``pressure`` (channel aftertouch) is ``value / 127``.

    Raises
    ------
    MidiError
        The file has no such event (naming what it does have), or the track does not exist.
    """
    if track is not None and not 0 <= track < song.tracks:
        raise MidiError(f"{where}.track: {song.path} has tracks 0 to {song.tracks - 1}, not {track}")
    found = []
    for seconds, number_of_track, message in song.events:
        if track is not None and number_of_track != track:
            continue
        if not hasattr(message, "channel") or (channel is not None and message.channel != channel - 1):
            continue
        if kind == "cc" and message.type == "control_change" and message.control == number:
            found.append((seconds, message.value / 127.0))
        elif kind == "pitchbend" and message.type == "pitchwheel":
            found.append((seconds, (message.pitch + 8192) / 16383.0))
        elif kind == "pressure" and message.type == "aftertouch":
            found.append((seconds, message.value / 127.0))
    if not found:
        what = f"CC {number}" if kind == "cc" else {"pitchbend": "pitch bend", "pressure": "channel pressure"}[kind]
        scope = (f" on channel {channel}" if channel is not None else "") + (f" in track {track}" if track is not None
                                                                             else "")
        raise MidiError(f"{where}: {song.path} has no {what} events{scope} ({_inventory(song, track)}); "
                        "choose another controller or channel, or give the lane a 'default'")
    return found


def _inventory(song: Song, track: int | None) -> str:
    seen = set()
    for _, number, message in song.events:
        if track is not None and number != track:
            continue
        if message.type == "control_change":
            seen.add(f"CC {message.control} ch {message.channel + 1}")
        elif message.type == "pitchwheel":
            seen.add(f"pitch bend ch {message.channel + 1}")
        elif message.type == "aftertouch":
            seen.add(f"pressure ch {message.channel + 1}")
    return "it has " + ", ".join(sorted(seen)) if seen else "it has no controller events"


#: Channel messages a layer sends its instrument (notes, controllers such as sustain, bends).
PLAYED = ("note_on", "note_off", "control_change", "pitchwheel", "aftertouch", "polytouch", "program_change")


def performance(song: Song, *, track: int | None = None, channel: int | None = None,
                where: str) -> list[tuple[float, object]]:
    """The channel messages a layer plays, as ``(seconds, mido message)`` in time order.

    Raises
    ------
    MidiError
        The track does not exist, or the filter leaves no notes (naming the channels that have some).
    """
    if track is not None and not 0 <= track < song.tracks:
        raise MidiError(f"{where}.track: {song.path} has tracks 0 to {song.tracks - 1}, not {track}")
    played = [(seconds, message) for seconds, number, message in song.events
              if message.type in PLAYED and (track is None or number == track)
              and (channel is None or message.channel == channel - 1)]
    if not any(m.type == "note_on" and m.velocity > 0 for _, m in played):
        channels = sorted({m.channel + 1 for _, n, m in song.events if m.type == "note_on" and m.velocity > 0
                           and (track is None or n == track)})
        scope = (f" on channel {channel}" if channel is not None else "") + (f" in track {track}" if track is not None
                                                                             else "")
        found = f"notes are on channel(s) {', '.join(map(str, channels))}" if channels else "it has no notes at all"
        raise MidiError(f"{where}: {song.path} has no notes{scope} ({found}); fix the track or channel filter")
    return played
