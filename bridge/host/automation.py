"""Automation lanes: breakpoints in seconds or bars, curves, tempo, and block-wise parameter updates.

A preset's ``automation:`` section maps a *target* to a *lane*::

    tempo: {bpm: 120, time_signature: 4/4}
    automation:
      stems.vocals.gain_db: [[0, -6], ["3:1", 0]]          # [[time, value], ...], linear
      stems.drums.pan: {points: [[0, -1], [8, 1]], curve: hold}
      stems.vocals.chain[0].cutoff_frequency_hz: {points: [[0, 200], [4, 8000]], curve: exponential}
      master[0].threshold_db: {midi: song.mid, cc: 11, channel: 1, range: [-30, 0]}

Times are seconds, or ``"bar:beat"`` (1-based, the beat may be fractional: ``"2:3.5"``) counted
with ``tempo``: ``bpm`` beats of the time signature's note value per minute, so bar ``b`` beat
``k`` is at ``((b - 1) * beats_per_bar + (k - 1)) * 60 / bpm`` seconds. A lane holds its first
value before its first point and its last value after its last point.

Curves between two points ``(t0, v0)``, ``(t1, v1)``: ``linear`` interpolates the value;
``hold`` keeps ``v0`` until ``t1`` (MIDI controllers behave so, and it is their default);
``exponential`` interpolates ``log v`` (equal ratios in equal times, as a frequency sweep should
sound; values must be > 0).

Stem gain and pan lanes are evaluated at every sample. pedalboard has no per-sample parameter
automation, so a chain holding an automated plugin is run in blocks of :func:`update_block`
samples (at most :data:`MAX_UPDATE_SECONDS`), its parameters set between blocks to the lane's
value at the block's first sample; chains without automation keep their large blocks.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re

import numpy as np

CURVES = ("linear", "hold", "exponential")
#: Longest time a parameter holds one value while its lane moves: 5 ms, well below the ~10 ms
#: at which stepped gain changes start to be heard as zipper noise.
MAX_UPDATE_SECONDS = 0.005

_BAR_BEAT = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_TARGET = re.compile(r"^(?:stems\.(?P<stem>[^.\[\]]+)\.(?:(?P<mix>gain_db|pan)|chain\[(?P<ci>\d+)\]\.(?P<cp>\w+))"
                     r"|(?P<section>pre|master)\[(?P<si>\d+)\]\.(?P<sp>\w+))$")


@dataclasses.dataclass(frozen=True)
class Tempo:
    """A fixed tempo: ``bpm`` beats (of ``beat_unit`` notes) per minute, ``beats_per_bar`` to a bar."""

    bpm: float = 120.0
    beats_per_bar: int = 4
    beat_unit: int = 4

    def seconds(self, bar: float, beat: float) -> float:
        """Seconds from the start to ``bar:beat`` (both 1-based)."""
        return ((bar - 1) * self.beats_per_bar + (beat - 1)) * 60.0 / self.bpm

    def to_yaml(self) -> dict:
        return {"bpm": self.bpm, "time_signature": f"{self.beats_per_bar}/{self.beat_unit}"}


def parse_time(value, *, tempo: Tempo | None) -> float:
    """Seconds from a lane time: a number of seconds, or ``"bar:beat"`` with a tempo.

    Raises ``ValueError`` with the reason (the caller adds the preset key).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected seconds or \"bar:beat\", got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a time must be 0 or more seconds, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _BAR_BEAT.match(value)
        if match is None:
            raise ValueError(f"expected seconds or \"bar:beat\" like \"3:1\", got {value!r}")
        bar, beat = int(match[1]), float(match[2])
        if bar < 1 or beat < 1:
            raise ValueError(f"bars and beats count from 1, got {value!r}")
        if tempo is None:
            raise ValueError(f"{value!r} is in bars and beats but the preset has no tempo; add "
                             "'tempo: {bpm: 120, time_signature: 4/4}' at the top")
        if beat >= tempo.beats_per_bar + 1:
            raise ValueError(f"{value!r}: a bar of {tempo.beats_per_bar}/{tempo.beat_unit} has beats 1 to "
                             f"{tempo.beats_per_bar}")
        return tempo.seconds(bar, beat)
    raise ValueError(f"expected seconds or \"bar:beat\", got {value!r}")


@dataclasses.dataclass(frozen=True)
class MidiSource:
    """Where a lane's points came from: a controller of a MIDI file (see :mod:`bridge.host.midi`).

    ``kind`` is ``"cc"`` (with ``number``), ``"pitchbend"`` or ``"pressure"``; ``channel`` is
    1-based or None for any; ``track`` an index or None for all; the controller's 0..1 range is
    mapped linearly onto ``value_range``; ``default`` is used when the file has no such event.
    """

    path: str
    kind: str = "cc"
    number: int | None = None
    channel: int | None = None
    track: int | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    default: float | None = None

    def to_yaml(self, curve: str) -> dict:
        out: dict = {"midi": self.path}
        if self.kind == "cc":
            out["cc"] = self.number
        else:
            out[self.kind] = True
        if self.channel is not None:
            out["channel"] = self.channel
        if self.track is not None:
            out["track"] = self.track
        out["range"] = list(self.value_range)
        if self.default is not None:
            out["default"] = self.default
        out["curve"] = curve
        return out


@dataclasses.dataclass(frozen=True)
class Lane:
    """Breakpoints ``(seconds, value)``, increasing in time, and the curve between them.

    ``written`` keeps the times as the preset wrote them (seconds or ``"bar:beat"``) and
    ``source`` the MIDI file they were read from, so a session is written back as it was given.
    """

    times: tuple[float, ...]
    values: tuple[float, ...]
    curve: str = "linear"
    written: tuple = ()
    source: MidiSource | None = None

    def __post_init__(self):
        if len(self.times) != len(self.values) or not self.times:
            raise ValueError("a lane needs at least one point, with one value per time")
        if any(b < a for a, b in zip(self.times, self.times[1:])):
            raise ValueError("lane times must not decrease")
        if self.curve not in CURVES:
            raise ValueError(f"unknown curve '{self.curve}'; use one of {', '.join(CURVES)}")
        if self.curve == "exponential" and min(self.values) <= 0:
            raise ValueError("an exponential curve needs values above 0 (it interpolates their logarithm)")

    @property
    def minimum(self) -> float:
        return min(self.values)

    @property
    def maximum(self) -> float:
        return max(self.values)

    @property
    def constant(self) -> bool:
        return self.minimum == self.maximum

    def at(self, seconds: np.ndarray) -> np.ndarray:
        """The lane's values at ``seconds`` (any shape), float64."""
        t = np.asarray(seconds, dtype=np.float64)
        times = np.asarray(self.times)
        values = np.asarray(self.values, dtype=np.float64)
        if self.curve == "hold" or len(times) == 1:
            # Equal times make a jump: the later point wins from that instant on.
            return values[np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(values) - 1)]
        # np.interp (C, ~4x faster per sample) where times strictly increase; its result at a
        # repeated time is not specified, so a lane with jumps takes _interp.
        interp = np.interp if np.all(np.diff(times) > 0) else _interp
        if self.curve == "exponential":
            return np.exp(interp(t, times, np.log(values)))
        return interp(t, times, values)

    def value(self, seconds: float) -> float:
        """The value at one time, as :meth:`at` gives it, without numpy (it runs once per 5 ms block)."""
        times, values = self.times, self.values
        i = bisect.bisect_right(times, seconds)
        if i == 0:
            return float(values[0])
        if i == len(times) or self.curve == "hold":
            return float(values[i - 1])
        t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
        frac = (seconds - t0) / (t1 - t0)
        if self.curve == "exponential":
            return float(v0 * (v1 / v0) ** frac)
        return float(v0 + frac * (v1 - v0))

    def to_yaml(self):
        if self.source is not None:
            return self.source.to_yaml(self.curve)
        times = list(self.written) if self.written else list(self.times)
        points = [[t, v] for t, v in zip(times, self.values)]
        return points if self.curve == "linear" else {"points": points, "curve": self.curve}


def _interp(t: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.interp, with a jump (not an average) where two points share a time."""
    index = np.clip(np.searchsorted(times, t, side="right"), 1, len(times) - 1)
    t0, t1 = times[index - 1], times[index]
    v0, v1 = values[index - 1], values[index]
    span = np.where(t1 > t0, t1 - t0, 1.0)
    frac = np.clip((t - t0) / span, 0.0, 1.0)
    out = v0 + frac * (v1 - v0)
    out = np.where(t < times[0], values[0], out)
    return np.where(t >= times[-1], values[-1], out)


@dataclasses.dataclass(frozen=True)
class Target:
    """What a lane drives: a stem's ``gain_db``/``pan``, or parameter ``param`` of effect ``index``
    of a chain (``section`` ``"stems"`` with ``stem``, ``"pre"`` or ``"master"``)."""

    section: str
    param: str
    stem: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.section == "stems" and self.index is None:
            return f"stems.{self.stem}.{self.param}"
        if self.section == "stems":
            return f"stems.{self.stem}.chain[{self.index}].{self.param}"
        return f"{self.section}[{self.index}].{self.param}"

    @property
    def chain(self) -> str:
        """The chain's preset key, e.g. ``stems.vocals.chain`` or ``master``."""
        return f"stems.{self.stem}.chain" if self.section == "stems" else self.section


def parse_target(text) -> Target:
    """``stems.NAME.gain_db``, ``stems.NAME.pan``, ``stems.NAME.chain[i].PARAM``, ``pre[i].PARAM`` or
    ``master[i].PARAM``; raises ``ValueError`` otherwise."""
    match = _TARGET.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"unknown automation target {text!r}; targets are stems.NAME.gain_db, stems.NAME.pan, "
                         "stems.NAME.chain[i].PARAM, pre[i].PARAM and master[i].PARAM")
    if match["mix"]:
        return Target("stems", match["mix"], stem=match["stem"])
    if match["cp"]:
        return Target("stems", match["cp"], stem=match["stem"], index=int(match["ci"]))
    return Target(match["section"], match["sp"], index=int(match["si"]))


def update_block(sample_rate: int) -> int:
    """Samples per block where automation is active: at most :data:`MAX_UPDATE_SECONDS`."""
    return max(1, int(sample_rate * MAX_UPDATE_SECONDS))


class ParameterLane:
    """One lane bound to a parameter of linked plugin instances, set block by block.

    ``setters`` set the parameter on each instance (``set(value)``). A value is set only when it
    differs from the last one set, so a flat stretch of a lane costs nothing.
    """

    def __init__(self, setters, lane: Lane):
        self.setters = list(setters)
        self.lane = lane
        self._last = None

    def update(self, seconds: float) -> None:
        value = self.lane.value(seconds)
        if value != self._last:
            for setter in self.setters:
                setter(value)
            self._last = value
