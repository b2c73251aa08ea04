"""REAPER projects (``.rpp``): a session's stems as tracks, ready to open in REAPER.

An ``.rpp`` file is nested ``<CHUNK ...>`` ... ``>`` text, one chunk or one value line per line,
values separated by spaces. What this module writes, per track::

    <TRACK {guid}
      NAME "lead vocals"
      VOLPAN <linear volume> <pan -1 left .. +1 right> -1 -1 1
      MUTESOLO <mute 0|1> <solo 0|2 (solo in place)> 0
      IPHASE <polarity inverted 0|1>
      NCHAN <channels>
      AUTOMODE 0                                        trim/read: the fader scales the envelopes
      <VOLENV2 ...  PT <seconds> <linear volume> <shape> ...>   gain automation
      <PANENV2 ...  PT <seconds> <-pan> <shape> ...>            pan automation (REAPER: left positive)
      <ITEM POSITION 0  LENGTH <seconds>  <SOURCE WAVE FILE "relative/path.wav">>
    >

Strings are quoted when they hold spaces, quotes or nothing, with the first of ``"``, ``'`` and
`````` they do not contain (REAPER's own rule, as its files show); a string holding all three, or
a line break, cannot be written and is refused. Files are UTF-8, so any other character is fine.
Numbers are plain decimals (no exponent), as REAPER writes them.
"""

from __future__ import annotations

import os

import dataclasses
import math
import time
import uuid
from pathlib import Path

import numpy as np

from ..version import __version__
from ..host.automation import Lane
from ..errors import OutputError
from ..audio.partials import write_text_atomic

#: REAPER's source type per file extension (the word after ``<SOURCE``).
SOURCE_TYPES = {"wav": "WAVE", "aiff": "WAVE", "aif": "WAVE", "flac": "FLAC", "mp3": "MP3", "ogg": "VORBIS"}
#: Point shapes of REAPER envelopes (the third field of ``PT``): linear between this point and the
#: next, or square (this point's value until the next point: a lane's ``hold``).
LINEAR, SQUARE = 0, 1
#: Largest difference (dB) between REAPER's volume envelope and the session's gain lane. REAPER
#: interpolates volume points linearly in amplitude; the session's lanes are linear (or
#: exponential) in dB, so such a segment is split into equal-time pieces, as few as keep every
#: piece within this (checked on :data:`_CHECKS` points per piece; a 1 dB step of a dB-linear lane
#: is off by at most 0.0157 dB, 20 log10((1 + r) / (2 sqrt r)) with r = 10^(1/20), at its middle).
GAIN_TOLERANCE_DB = 0.02
#: Largest difference between REAPER's pan envelope and an exponential pan lane (pan runs -1..+1;
#: linear and hold pan lanes are exact).
PAN_TOLERANCE = 0.002
_CHECKS = 16
#: The REAPER version whose project format this module writes.
FORMAT_VERSION = "6.0"
_GUID_NAMESPACE = uuid.UUID("5b0d3c62-4f2e-4b8e-9d59-6a2f0d1e7c14")


@dataclasses.dataclass(frozen=True)
class Tempo:
    """Tempo in beats per minute and the time signature (``numerator/denominator``)."""

    bpm: float
    numerator: int = 4
    denominator: int = 4


@dataclasses.dataclass(frozen=True)
class Track:
    """One REAPER track holding one item, the whole of one file, at position 0.

    Parameters
    ----------
    name : str
    file : str
        The item's source, relative to the project file (or absolute).
    length : float
        The item's length in seconds (the file's exact length: frames / sample rate).
    channels : int
    volume : float
        Linear gain (1.0 = 0 dB).
    pan : float
        -1 (left) .. +1 (right).
    mute, solo, invert : bool
    volume_envelope : tuple of (seconds, linear gain[, shape])
        Breakpoints, shape :data:`LINEAR` (the default) or :data:`SQUARE`; empty for none.
    pan_envelope : tuple of (seconds, pan[, shape])
        Breakpoints in the session's sign (-1 left); empty for none.
    notes : str
        The track's notes (REAPER shows them in the track's notes window).
    """

    name: str
    file: str
    length: float
    channels: int = 2
    volume: float = 1.0
    pan: float = 0.0
    mute: bool = False
    solo: bool = False
    invert: bool = False
    volume_envelope: tuple[tuple, ...] = ()
    pan_envelope: tuple[tuple, ...] = ()
    notes: str = ""


@dataclasses.dataclass(frozen=True)
class Project:
    """A REAPER project: sample rate, master channels, tempo and the tracks, top to bottom."""

    sample_rate: int
    tracks: tuple[Track, ...]
    channels: int = 2
    tempo: Tempo | None = None
    notes: str = ""


def quote(text: str, *, what: str = "a name") -> str:
    """``text`` as one REAPER value: bare if it can be, else in the first quote it does not hold."""
    if any(c in text for c in "\r\n\0"):
        raise OutputError(f"{what} {text!r} holds a line break, which a REAPER project cannot carry; rename it")
    if text and not any(c.isspace() for c in text) and text[0] not in "\"'`" and not text.startswith(("<", ">", "|")):
        return text
    for mark in "\"'`":
        if mark not in text:
            return f"{mark}{text}{mark}"
    raise OutputError(f"{what} {text!r} holds all three quote characters (\" ' `), which a REAPER project cannot "
                      "carry; rename it without one of them")


def number(value: float) -> str:
    """A plain decimal as REAPER writes numbers: no exponent, no trailing zeros; the shortest that
    reads back as the same double, so an envelope point sits on the very sample the session's does
    (a hold lane's jump at a bar line falls on a sample boundary), and -150 dB keeps its digits."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = np.format_float_positional(float(value), trim="-")
    return "0" if text == "-0" else text


def guid(*parts: str) -> str:
    """A GUID in REAPER's ``{...}`` form, the same for the same names (so projects diff well)."""
    return "{" + str(uuid.uuid5(_GUID_NAMESPACE, "\0".join(parts))).upper() + "}"


def gain_envelope(lane: Lane) -> tuple[tuple[float, float, int], ...]:
    """A gain lane (values in dB) as volume envelope points ``(seconds, linear gain, shape)``.

    ``hold`` lanes keep their breakpoints, square-shaped. ``linear`` and ``exponential`` lanes
    keep their breakpoints too, and each segment between two of them is split into equal-time
    pieces, as few as keep REAPER's amplitude-linear interpolation within
    :data:`GAIN_TOLERANCE_DB` of the lane (:meth:`bridge.host.automation.Lane.at`).
    """
    return _follow(lane, scale=lambda db: 10.0 ** (np.asarray(db, dtype=np.float64) / 20.0),
                   error=lambda got, want: np.abs(20.0 * np.log10(got) - want), tolerance=GAIN_TOLERANCE_DB)


def pan_envelope(lane: Lane) -> tuple[tuple[float, float, int], ...]:
    """A pan lane (-1 left .. +1 right) as pan envelope points ``(seconds, pan, shape)``, in the
    session's sign (:func:`dumps` writes REAPER's). Linear and hold lanes map point for point;
    exponential segments are split as in :func:`gain_envelope`, within :data:`PAN_TOLERANCE`."""
    return _follow(lane, scale=lambda v: np.asarray(v, dtype=np.float64), error=lambda got, want: np.abs(got - want),
                   tolerance=PAN_TOLERANCE, exact_linear=True)


def _shape(curve: str, v0: float, v1: float, f):
    """A lane's value a fraction ``f`` (0..1) of the way between breakpoints valued ``v0`` and ``v1``."""
    if curve == "exponential":
        return v0 * (v1 / v0) ** np.asarray(f, dtype=np.float64)
    return v0 + np.asarray(f, dtype=np.float64) * (v1 - v0)


def _follow(lane: Lane, *, scale, error, tolerance: float, exact_linear: bool = False):
    """Envelope points ``(seconds, scale(value), shape)`` whose linear interpolation follows ``lane``
    within ``tolerance`` (``error(interpolated, lane value)``); see :func:`gain_envelope`."""
    times, values, curve = lane.times, lane.values, lane.curve
    if curve == "hold":
        return tuple((float(t), float(scale(v)), SQUARE) for t, v in zip(times, values))
    out = [(float(times[0]), float(scale(values[0])), LINEAR)]
    for t0, t1, v0, v1 in zip(times, times[1:], values, values[1:]):
        # A jump (two points at one time) and a flat or exactly mapped segment need no pieces.
        if t1 > t0 and v1 != v0 and not (exact_linear and curve == "linear"):
            pieces = _pieces(curve, v0, v1, scale=scale, error=error, tolerance=tolerance)
            for k in range(1, pieces):
                out.append((t0 + k / pieces * (t1 - t0), float(scale(_shape(curve, v0, v1, k / pieces))), LINEAR))
        out.append((float(t1), float(scale(v1)), LINEAR))
    return tuple(out)


def _pieces(curve: str, v0: float, v1: float, *, scale, error, tolerance: float) -> int:
    """The fewest equal-time pieces whose linear interpolation (after ``scale``) stays within
    ``tolerance`` of the segment's curve, checked on :data:`_CHECKS` points per piece."""
    def worst(n: int) -> float:
        f = np.linspace(0.0, 1.0, n * _CHECKS + 1)
        knots = np.linspace(0.0, 1.0, n + 1)
        return float(np.max(error(np.interp(f, knots, scale(_shape(curve, v0, v1, knots))), _shape(curve, v0, v1, f))))

    high = 1
    while worst(high) > tolerance:
        high *= 2
    low = high // 2  # too few (or 0); the answer is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        if worst(middle) <= tolerance:
            high = middle
        else:
            low = middle
    return high


def _envelope(tag: str, points, *, pad: str, seed: str) -> list[str]:
    lines = [f"{pad}<{tag}", f"{pad}  EGUID {guid(seed, tag)}", f"{pad}  ACT 1 -1", f"{pad}  VIS 1 1 1",
             f"{pad}  LANEHEIGHT 0 0", f"{pad}  ARM 0", f"{pad}  DEFSHAPE 0 -1 -1"]
    lines += [f"{pad}  PT {number(p[0])} {number(p[1])} {p[2] if len(p) > 2 else LINEAR}" for p in points]
    return lines + [f"{pad}>"]


def _track(track: Track, index: int, seed: str) -> list[str]:
    name = quote(track.name, what="track name")
    source = SOURCE_TYPES.get(Path(track.file).suffix.lstrip(".").lower())
    if source is None:
        raise OutputError(f"{track.file}: REAPER takes wav, aiff, flac, mp3 or ogg sources here; "
                          "write the stems in one of those formats")
    ident = guid(seed, "track", str(index), track.name)
    lines = [f"  <TRACK {ident}", f"    NAME {name}", f"    TRACKID {ident}",
             f"    VOLPAN {number(track.volume)} {number(track.pan)} -1 -1 1",
             f"    MUTESOLO {int(track.mute)} {2 if track.solo else 0} 0",
             f"    IPHASE {int(track.invert)}", f"    NCHAN {track.channels}",
             "    AUTOMODE 0"]  # trim/read: envelopes play, the fader scales them
    if track.notes:
        lines += ["    <NOTES 0 2"] + [f"      |{line}" for line in track.notes.splitlines()] + ["    >"]
    if track.volume_envelope:
        lines += _envelope("VOLENV2", track.volume_envelope, pad="    ", seed=ident)
    if track.pan_envelope:
        # REAPER keeps pan envelope points with left positive (its lane draws L at the top).
        lines += _envelope("PANENV2", tuple((p[0], -p[1], *p[2:]) for p in track.pan_envelope), pad="    ",
                           seed=ident)
    lines += ["    <ITEM", "      POSITION 0", "      SNAPOFFS 0", f"      LENGTH {number(track.length)}",
              "      LOOP 0", "      ALLTAKES 0", "      FADEIN 1 0 0 1 0 0 0", "      FADEOUT 1 0 0 1 0 0 0",
              "      MUTE 0 0", f"      IGUID {guid(seed, 'item', str(index), track.name)}", f"      NAME {name}",
              "      VOLPAN 1 0 1 -1", "      SOFFS 0", "      PLAYRATE 1 1 0 -1 0 0.0025", "      CHANMODE 0",
              f"      GUID {guid(seed, 'take', str(index), track.name)}",
              f"      <SOURCE {source}", f"        FILE {quote(track.file, what='file name')}", "      >",
              "    >", "  >"]
    return lines


def dumps(project: Project) -> str:
    """The ``.rpp`` text of ``project``."""
    # REAPER reads the leading number of the version field to decide which format rules apply (old
    # projects get legacy pan and mixing behaviour); the chunks here are REAPER 6's.
    lines = [f"<REAPER_PROJECT 0.1 {quote(f'{FORMAT_VERSION}/stembridge-{__version__}')} {int(time.time())}",
             "  RIPPLE 0", f"  SAMPLERATE {project.sample_rate} 1 0"]
    if project.tempo is not None:
        t = project.tempo
        lines.append(f"  TEMPO {number(t.bpm)} {t.numerator} {t.denominator}")
    lines += [f"  MASTER_NCH {project.channels} 2", "  MASTER_VOLUME 1 0 -1 -1 1"]
    if project.notes:
        lines += ["  <NOTES 0 2"] + [f"    |{line}" for line in project.notes.splitlines()] + ["  >"]
    seed = "\0".join(t.file for t in project.tracks)  # GUIDs differ between songs, not between runs
    for index, track in enumerate(project.tracks):
        lines += _track(track, index, seed)
    return "\n".join(lines + [">"]) + "\n"


def write(path, project: Project) -> Path:
    """Write ``project`` to ``path`` atomically (a hidden partial file, fsynced, then renamed)."""
    text = dumps(project)  # every refusal happens before anything is written
    return write_text_atomic(path, text, what="REAPER project")


def relative_source(file: Path, project: Path, *, tree: Path | None = None) -> str:
    """How the project names ``file``: relative (forward slashes) when it is inside the project's
    folder, so the folder can be moved; relative with ``..`` when both lie under ``tree`` (the
    folder that holds the run's output folder: an album folder with ``--out remixes`` inside it),
    so that tree can be moved whole; absolute otherwise (an input elsewhere stays reachable when
    the output folder alone is moved on the same machine). A ``tree`` that is a filesystem root
    counts as none: ``../../../home/...`` would tie the project to the folder depth it sits at."""
    file, folder = Path(file).resolve(), Path(project).resolve().parent
    if folder in file.parents:
        return file.relative_to(folder).as_posix()
    if tree is not None:
        tree = Path(tree).resolve()
        if tree != Path(tree.anchor) and tree in file.parents and (tree == folder or tree in folder.parents):
            return Path(os.path.relpath(file, folder)).as_posix()
    return str(file)
