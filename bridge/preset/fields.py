"""Reading a preset's values: the checks every key goes through, each failure naming the preset
file and the key path inside it, and the sections that hold lanes (tempo, ducking, automation).

:mod:`bridge.preset.session` walks the preset's structure and builds the session from what these give.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..host import automation, effects, midi
from ..host.automation import Lane, MidiSource, Target, Tempo
from ..host.ducking import DuckSettings
from ..errors import BridgeError, PresetError, suggest


class Reader:
    """Validates one preset, keeping the file name and the key path for every message."""

    def __init__(self, source: str, base: Path):
        self.source = source
        self.base = base

    def fail(self, where: str, message: str):
        raise PresetError(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def mapping(self, value, where: str, keys: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping with keys {', '.join(keys)}, got {kind_of(value)}")
        for key in value:
            if not isinstance(key, str) or key not in keys:
                shown = key if isinstance(key, str) and key.isprintable() else repr(key)  # one line, always
                self.fail(f"{where}.{shown}" if where else shown,
                          f"unknown key '{shown}'{suggest(str(key), keys)}")
        return value

    def number(self, value, where: str, *, low=-math.inf, high=math.inf, integer=False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.fail(where, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            self.fail(where, f"{value!r} is out of range [{low}, {high}]")
        return int(value) if integer else float(value)

    def boolean(self, value, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
        return value

    def choice(self, value, where: str, choices) -> str:
        if value not in choices:
            self.fail(where, f"'{value}' is not one of {', '.join(map(str, choices))}")
        return value

    def text(self, value, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def chain(self, value, where: str) -> tuple[effects.EffectSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(where, f"expected a list of effects, got {kind_of(value)}")
        return tuple(self.effect(item, f"{where}[{i}]") for i, item in enumerate(value))

    def effect(self, value, where: str) -> effects.EffectSpec:
        if not isinstance(value, dict):
            self.fail(where, f"expected an effect mapping like {{effect: Reverb, room_size: 0.3}}, got {kind_of(value)}")
        if "vst3" in value:
            spec = self.mapping(value, where, ("vst3", "params", "preset", "raw_state"))
            params = self.mapping(spec.get("params"), f"{where}.params", tuple(spec.get("params") or ()))
            for key, item in params.items():
                self.param_value(item, f"{where}.params.{key}")
            return effects.EffectSpec(
                kind="vst3", name=self.text(spec["vst3"], f"{where}.vst3"), params=tuple(params.items()),
                preset=self.text(spec["preset"], f"{where}.preset") if spec.get("preset") is not None else None,
                raw_state=self.text(spec["raw_state"], f"{where}.raw_state") if spec.get("raw_state") is not None else None,
                base=self.base)
        if "effect" not in value:
            self.fail(where, "an effect needs 'effect: <Name>' (a pedalboard built-in) or 'vst3: <path>'")
        name = value["effect"]
        if not isinstance(name, str):
            self.fail(f"{where}.effect", f"expected an effect name, got {name!r}")
        params = {k: v for k, v in value.items() if k != "effect"}
        for key, item in params.items():
            if not isinstance(key, str):
                self.fail(where, f"parameter names must be strings, got {key!r}")
            self.param_value(item, f"{where}.{key}")
        spec = effects.EffectSpec(kind="builtin", name=name, params=tuple(params.items()), base=self.base)
        try:
            effects.check(spec, where=f"{where}.effect" if name not in effects.builtin_effects() else where)
        except BridgeError as exc:
            raise PresetError(f"{self.source}: {exc}") from None
        return spec

    def param_value(self, value, where: str) -> None:
        if isinstance(value, bool) or isinstance(value, str):
            return
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f"expected a number, true/false or a string, got {kind_of(value)}")

    def gain(self, value, where: str):
        if isinstance(value, list):
            if not value:
                self.fail(where, "an automation list needs at least one [seconds, dB] point")
            points = []
            for i, point in enumerate(value):
                if not isinstance(point, list) or len(point) != 2:
                    self.fail(f"{where}[{i}]", f"expected [seconds, dB], got {point!r}")
                points.append((self.number(point[0], f"{where}[{i}][0]", low=0.0, high=86400.0),
                               self.number(point[1], f"{where}[{i}][1]", low=-150.0, high=48.0)))
            if any(b[0] <= a[0] for a, b in zip(points, points[1:])):
                self.fail(where, "automation times must increase")
            return tuple(points)
        return self.number(value, where, low=-150.0, high=48.0)


def kind_of(value) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else repr(value)


def duck_section(r: Reader, value, where: str, stem: str) -> DuckSettings | None:
    if value is None:
        return None
    d = r.mapping(value, where, ("by", "depth_db", "threshold_db", "attack_ms", "release_ms"))
    if "by" not in d:
        r.fail(where, "ducking needs 'by: <stem>', the stem whose level lowers this one")
    by = r.text(d["by"], f"{where}.by")
    if by == stem:
        r.fail(f"{where}.by", "a stem cannot duck itself; name another stem (a compressor does this to one stem)")
    defaults = DuckSettings(by=by)
    return DuckSettings(
        by=by,
        depth_db=r.number(d.get("depth_db", defaults.depth_db), f"{where}.depth_db", low=0.0, high=60.0),
        threshold_db=r.number(d.get("threshold_db", defaults.threshold_db), f"{where}.threshold_db",
                              low=-100.0, high=0.0),
        attack_ms=r.number(d.get("attack_ms", defaults.attack_ms), f"{where}.attack_ms", low=0.0, high=1000.0),
        release_ms=r.number(d.get("release_ms", defaults.release_ms), f"{where}.release_ms", low=0.0, high=10000.0))


def tempo_section(r: Reader, value) -> Tempo | None:
    if value is None:
        return None
    t = r.mapping(value, "tempo", ("bpm", "time_signature"))
    if "bpm" not in t:
        r.fail("tempo", "a tempo needs 'bpm', e.g. {bpm: 120, time_signature: 4/4}")
    signature = t.get("time_signature", "4/4")
    parts = signature.split("/") if isinstance(signature, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1 \
            or int(parts[1]) not in (1, 2, 4, 8, 16, 32):
        r.fail("tempo.time_signature", f"expected beats/note like 4/4, 3/4 or 6/8, got {signature!r}")
    return Tempo(bpm=r.number(t["bpm"], "tempo.bpm", low=1.0, high=999.0), beats_per_bar=int(parts[0]),
                 beat_unit=int(parts[1]))


#: Value ranges of the stem stage's own targets.
STEM_RANGES = {"gain_db": (-150.0, 48.0), "pan": (-1.0, 1.0)}


def automation_section(r: Reader, value, session, tempo: Tempo | None) -> tuple[tuple[Target, Lane], ...]:
    """Parse ``automation:``; targets are checked against ``session``'s chains (a
    :class:`bridge.preset.session.Session` without its lanes yet) and, for built-in effects, their
    parameters and ranges (VST3 parameters when the chain is prepared)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        r.fail("automation", f"expected a mapping of target to lane, got {kind_of(value)}")
    lanes = []
    for key, raw in value.items():
        where = f"automation.{key}"
        try:
            target = automation.parse_target(key)
        except ValueError as exc:
            r.fail(where, str(exc))
        lane = read_lane(r, raw, where, tempo)
        if target.index is None and target.section == "stems":
            low, high = STEM_RANGES[target.param]
            if lane.minimum < low or lane.maximum > high:
                r.fail(where, f"values {lane.minimum:g} .. {lane.maximum:g} are outside {target.param}'s range "
                              f"[{low:g}, {high:g}]")
            if target.param == "gain_db" and not isinstance(session.stem(target.stem).gain_db, (int, float)):
                r.fail(where, f"stems.{target.stem}.gain_db already has breakpoints; give the gain one way")
        else:
            chain = session.stem(target.stem).chain if target.section == "stems" else getattr(session, target.section)
            if target.index >= len(chain):
                r.fail(where, f"{target.chain} has {len(chain)} effect(s), so there is no [{target.index}]")
            try:
                effects.check_automation(chain[target.index], target.param, lane,
                                         where=f"{r.source}: {where}")
            except BridgeError as exc:
                raise PresetError(str(exc)) from None
        lanes.append((target, lane))
    return tuple(lanes)


def read_lane(r: Reader, raw, where: str, tempo: Tempo | None) -> Lane:
    if isinstance(raw, list):
        raw = {"points": raw}
    if not isinstance(raw, dict) or not ("points" in raw or "midi" in raw):
        r.fail(where, "expected [[time, value], ...], {points: [...], curve: linear|hold|exponential} or "
                      "{midi: file.mid, cc: N, range: [low, high]}")
    if "midi" in raw:
        return read_midi_lane(r, raw, where)
    spec = r.mapping(raw, where, ("points", "curve"))
    curve = r.choice(spec.get("curve", "linear"), f"{where}.curve", automation.CURVES)
    points = spec["points"]
    if not isinstance(points, list) or not points:
        r.fail(f"{where}.points" if "curve" in spec else where, "a lane needs at least one [time, value] point")
    times, values, written = [], [], []
    for i, point in enumerate(points):
        at = f"{where}[{i}]"
        if not isinstance(point, list) or len(point) != 2:
            r.fail(at, f"expected [time, value], got {point!r}")
        try:
            times.append(automation.parse_time(point[0], tempo=tempo))
        except ValueError as exc:
            r.fail(f"{at}[0]", str(exc))
        written.append(point[0])
        values.append(r.number(point[1], f"{at}[1]"))
    if any(b < a for a, b in zip(times, times[1:])):
        r.fail(where, "lane times must not decrease")
    try:
        return Lane(tuple(times), tuple(values), curve, written=tuple(written))
    except ValueError as exc:
        r.fail(where, str(exc))


def read_midi_lane(r: Reader, raw, where: str) -> Lane:
    spec = r.mapping(raw, where, ("midi", "cc", "pitchbend", "pressure", "channel", "track", "range", "curve",
                                  "default"))
    kinds = [k for k in ("cc", "pitchbend", "pressure") if spec.get(k) not in (None, False)]
    if len(kinds) != 1:
        r.fail(where, "a MIDI lane reads one source: 'cc: N', 'pitchbend: true' or 'pressure: true'")
    kind = kinds[0]
    number = r.number(spec["cc"], f"{where}.cc", low=0, high=127, integer=True) if kind == "cc" else None
    channel = r.number(spec["channel"], f"{where}.channel", low=1, high=16, integer=True) \
        if spec.get("channel") is not None else None
    track = r.number(spec["track"], f"{where}.track", low=0, high=65535, integer=True) \
        if spec.get("track") is not None else None
    span = spec.get("range")
    if not isinstance(span, list) or len(span) != 2:
        r.fail(f"{where}.range", f"expected [low, high], the values the controller's 0 and maximum give, got {span!r}")
    low, high = r.number(span[0], f"{where}.range[0]"), r.number(span[1], f"{where}.range[1]")
    default = r.number(spec["default"], f"{where}.default") if spec.get("default") is not None else None
    curve = r.choice(spec.get("curve", "hold"), f"{where}.curve", automation.CURVES)
    path = r.text(spec["midi"], f"{where}.midi")
    source = MidiSource(path=path, kind=kind, number=number, channel=channel, track=track,
                        value_range=(low, high), default=default)
    full = Path(path).expanduser()
    song = midi.read(full if full.is_absolute() else r.base / full, where=f"{r.source}: {where}.midi")
    try:
        events = midi.controller(song, kind=kind, number=number, channel=channel, track=track,
                                 where=f"{r.source}: {where}")
    except BridgeError:
        if default is None:
            raise
        return Lane((0.0,), (default,), curve, source=source)  # the file has no such event: the default holds
    try:
        return Lane(tuple(t for t, _ in events), tuple(low + v * (high - low) for _, v in events), curve,
                    source=source)
    except ValueError as exc:
        r.fail(where, str(exc))
