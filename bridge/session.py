"""Sessions: a YAML preset (``version: 1``) validated into frozen objects.

Every error names the preset file and the path inside it, e.g.
``presets/karaoke.yaml: stems.vocals.chain[1].effect: unknown effect 'Reverbb'; did you mean
'Reverb'?``. Loading uses ``yaml.safe_load`` only. A loaded session written back with
:meth:`Session.to_yaml` and loaded again is equal to the first.

Schema (every key but ``version`` may be left out)::

    version: 1
    separator: {model: default, stems: [vocals, instrumental], overlap: 0.25, batch_size: 1, wiener: 0}
    pre: [<effect>, ...]                 # before separation
    stems:
      <stem>:
        gain_db: 0                       # or breakpoints [[seconds, dB], ...], linear in dB
        pan: 0                           # -1 left .. +1 right, constant power, unity at 0
        mute: false
        solo: false
        invert: false                    # polarity
        chain: [<effect>, ...]
        upmix: center                    # 5.1 role: center | front | bass | ambience
    master: [<effect>, ...]
    output:
      layout: stereo                     # or 5.1
      format: wav                        # wav flac ogg mp3 aiff
      bit_depth: 24                      # 16 24 32 (32 = float)
      sample_rate: source                # or Hz
      files: {mix: "{track}.remix.{ext}", stems: null}   # stems: e.g. "{track}/{stem}.{ext}"
      loudness_lufs: null                # integrated loudness target (BS.1770)
      true_peak_db: -1.0                 # ceiling, dBTP
      tail_seconds: 2.0                  # let reverbs ring out
      loudness_scope: track              # or album: one gain for every song of a folder

An ``<effect>`` is ``{effect: Name, <param>: value, ...}`` (pedalboard built-ins) or
``{vst3: path.vst3, params: {...}, preset: file.vstpreset, raw_state: base64}``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import yaml

from . import effects
from .errors import BridgeError, PresetError, suggest
from .io import FORMATS
from .models import MAX_WIENER
from .outputs import check_template

VERSION = 1
ROLES = ("center", "front", "bass", "ambience")
LAYOUTS = ("stereo", "5.1")
SCOPES = ("track", "album")
MAX_DEPTH = 12
MAX_BYTES = 1 << 20
MAX_NODES = 100_000


@dataclasses.dataclass(frozen=True)
class SeparatorSettings:
    model: str = "default"
    stems: tuple[str, ...] | None = None
    overlap: float | None = None
    batch_size: int = 1
    wiener: int = 0  # EM iterations of the multichannel Wiener filter (mask models); 0 = off


@dataclasses.dataclass(frozen=True)
class StemSettings:
    """Units: gain in dB (a constant or ``((seconds, dB), ...)`` breakpoints); pan in [-1, 1]."""

    gain_db: float | tuple[tuple[float, float], ...] = 0.0
    pan: float = 0.0
    mute: bool = False
    solo: bool = False
    invert: bool = False
    chain: tuple[effects.EffectSpec, ...] = ()
    upmix: str | None = None


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    layout: str = "stereo"
    format: str = "wav"
    bit_depth: int = 24
    sample_rate: int | None = None  # None: the source's
    mix: str | None = "{track}.remix.{ext}"
    stems: str | None = None
    loudness_lufs: float | None = None
    true_peak_db: float = -1.0
    tail_seconds: float = 2.0
    loudness_scope: str = "track"  # "album": one loudness gain for all songs of a folder in a run


@dataclasses.dataclass(frozen=True)
class Session:
    separator: SeparatorSettings = SeparatorSettings()
    pre: tuple[effects.EffectSpec, ...] = ()
    stems: tuple[tuple[str, StemSettings], ...] = ()
    master: tuple[effects.EffectSpec, ...] = ()
    output: OutputSettings = OutputSettings()
    source: str = "<session>"

    def stem(self, name: str) -> StemSettings:
        return dict(self.stems).get(name, StemSettings())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict:
        sep = {"model": self.separator.model, "overlap": self.separator.overlap,
               "batch_size": self.separator.batch_size, "wiener": self.separator.wiener}
        if self.separator.stems is not None:
            sep["stems"] = list(self.separator.stems)
        stems = {}
        for name, s in self.stems:
            gain = float(s.gain_db) if isinstance(s.gain_db, (int, float)) else [list(p) for p in s.gain_db]
            stems[name] = {"gain_db": gain, "pan": s.pan, "mute": s.mute, "solo": s.solo, "invert": s.invert,
                           "chain": [e.to_yaml() for e in s.chain], "upmix": s.upmix}
        o = self.output
        return {
            "version": VERSION, "separator": sep, "pre": [e.to_yaml() for e in self.pre], "stems": stems,
            "master": [e.to_yaml() for e in self.master],
            "output": {"layout": o.layout, "format": o.format, "bit_depth": o.bit_depth,
                       "sample_rate": o.sample_rate or "source", "files": {"mix": o.mix, "stems": o.stems},
                       "loudness_lufs": o.loudness_lufs, "true_peak_db": o.true_peak_db,
                       "tail_seconds": o.tail_seconds, "loudness_scope": o.loudness_scope},
        }


class _Reader:
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
            self.fail(where, f"expected a mapping with keys {', '.join(keys)}, got {_kind(value)}")
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
            self.fail(where, f"expected a list of effects, got {_kind(value)}")
        return tuple(self.effect(item, f"{where}[{i}]") for i, item in enumerate(value))

    def effect(self, value, where: str) -> effects.EffectSpec:
        if not isinstance(value, dict):
            self.fail(where, f"expected an effect mapping like {{effect: Reverb, room_size: 0.3}}, got {_kind(value)}")
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
            self.fail(where, f"expected a number, true/false or a string, got {_kind(value)}")

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


def _kind(value) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else repr(value)


def _check_size(value, reader: _Reader) -> None:
    """Refuse deep nesting and alias bombs (anchors that expand to millions of nodes) up front."""
    budget = [MAX_NODES]

    def walk(node, level):
        budget[0] -= 1
        if budget[0] < 0:
            reader.fail("", f"the preset expands to more than {MAX_NODES} values (YAML anchors and aliases?); "
                            "write it out plainly")
        if level > MAX_DEPTH:
            reader.fail("", f"the preset is nested deeper than {MAX_DEPTH} levels; flatten it")
        children = value_children(node)
        for child in children:
            walk(child, level + 1)

    walk(value, 0)


def value_children(node):
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return node
    return ()


def parse(data, *, source: str = "<session>", base: Path = Path(".")) -> Session:
    """Validate parsed YAML into a :class:`Session`."""
    r = _Reader(source, base)
    if not isinstance(data, dict):
        r.fail("", f"a preset must be a YAML mapping with 'version: {VERSION}' at the top, got {_kind(data)}")
    _check_size(data, r)
    top = r.mapping(data, "", ("version", "separator", "pre", "stems", "master", "output"))
    if top.get("version") != VERSION:
        r.fail("version", f"expected {VERSION}, got {top.get('version')!r}; add 'version: {VERSION}' at the top")

    s = r.mapping(top.get("separator"), "separator", ("model", "stems", "overlap", "batch_size", "wiener"))
    stems_list = s.get("stems")
    if stems_list is not None and (not isinstance(stems_list, list) or not all(isinstance(x, str) for x in stems_list)):
        r.fail("separator.stems", f"expected a list of stem names, got {stems_list!r}")
    separator = SeparatorSettings(
        model=r.text(s.get("model", "default"), "separator.model"),
        stems=tuple(stems_list) if stems_list is not None else None,
        overlap=r.number(s["overlap"], "separator.overlap", low=0.0, high=0.99) if s.get("overlap") is not None else None,
        batch_size=r.number(s.get("batch_size", 1), "separator.batch_size", low=1, high=64, integer=True),
        wiener=r.number(s.get("wiener", 0), "separator.wiener", low=0, high=MAX_WIENER, integer=True))

    stems_raw = top.get("stems") or {}
    if not isinstance(stems_raw, dict):
        r.fail("stems", f"expected a mapping of stem name to settings, got {_kind(stems_raw)}")
    stems = []
    keys = ("gain_db", "pan", "mute", "solo", "invert", "chain", "upmix")
    for name, raw in stems_raw.items():
        where = f"stems.{name}"
        if not isinstance(name, str):
            r.fail("stems", f"stem names must be strings, got {name!r}")
        st = r.mapping(raw, where, keys)
        stems.append((name, StemSettings(
            gain_db=r.gain(st.get("gain_db", 0.0), f"{where}.gain_db"),
            pan=r.number(st.get("pan", 0.0), f"{where}.pan", low=-1.0, high=1.0),
            mute=r.boolean(st.get("mute", False), f"{where}.mute"),
            solo=r.boolean(st.get("solo", False), f"{where}.solo"),
            invert=r.boolean(st.get("invert", False), f"{where}.invert"),
            chain=r.chain(st.get("chain"), f"{where}.chain"),
            upmix=r.choice(st["upmix"], f"{where}.upmix", ROLES) if st.get("upmix") is not None else None)))

    o = r.mapping(top.get("output"), "output", ("layout", "format", "bit_depth", "sample_rate", "files",
                                                  "loudness_lufs", "true_peak_db", "tail_seconds", "loudness_scope"))
    files = r.mapping(o.get("files"), "output.files", ("mix", "stems"))
    templates = {}
    for key, default in (("mix", OutputSettings.mix), ("stems", None)):
        value = files.get(key, default) if key in files or key == "mix" else default
        if value is not None:
            r.text(value, f"output.files.{key}")
            try:
                check_template(value, where=f"output.files.{key}")
            except BridgeError as exc:
                raise PresetError(f"{source}: {exc}") from None
        templates[key] = value
    if templates["mix"] is None and templates["stems"] is None:
        r.fail("output.files", "nothing to write: give a 'mix' and/or a 'stems' name template")
    rate = o.get("sample_rate", "source")
    fmt = r.choice(o.get("format", "wav"), "output.format", tuple(sorted(FORMATS)))
    depth = r.choice(o.get("bit_depth", 24), "output.bit_depth", (16, 24, 32))
    if fmt == "flac" and depth == 32:
        r.fail("output.bit_depth", "FLAC holds 16 or 24-bit samples; use 24, or format wav for 32-bit float")
    output = OutputSettings(
        layout=r.choice(str(o.get("layout", "stereo")), "output.layout", LAYOUTS),
        format=fmt, bit_depth=depth,
        sample_rate=None if rate == "source" else r.number(rate, "output.sample_rate", low=8000, high=192000, integer=True),
        mix=templates["mix"], stems=templates["stems"],
        loudness_lufs=r.number(o["loudness_lufs"], "output.loudness_lufs", low=-70.0, high=0.0)
        if o.get("loudness_lufs") is not None else None,
        true_peak_db=r.number(o.get("true_peak_db", -1.0), "output.true_peak_db", low=-20.0, high=0.0),
        tail_seconds=r.number(o.get("tail_seconds", 2.0), "output.tail_seconds", low=0.0, high=60.0),
        loudness_scope=r.choice(o.get("loudness_scope", "track"), "output.loudness_scope", SCOPES))
    if output.layout == "5.1" and output.format == "mp3":
        r.fail("output.format", "mp3 holds at most 2 channels; use wav or flac for 5.1")
    return Session(separator=separator, pre=r.chain(top.get("pre"), "pre"), stems=tuple(stems),
                   master=r.chain(top.get("master"), "master"), output=output, source=source)


def apply_overrides(data, overrides, *, source: str):
    """Apply ``key.path=value`` strings (values parsed as YAML) to parsed preset data."""
    for item in overrides:
        if "=" not in item:
            raise PresetError(f"--set {item}: expected key.path=value, e.g. stems.vocals.gain_db=6")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PresetError(f"--set {item}: the value is not valid YAML") from None
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            if not isinstance(node, dict):
                raise PresetError(f"{source}: --set {path}: '{key}' is not inside a mapping")
            node = node.setdefault(key, {})
            if node is None:
                node = {}
        if not isinstance(node, dict):
            raise PresetError(f"{source}: --set {path}: cannot set a key inside {_kind(node)}")
        node[keys[-1]] = value
    return data


def load(path, *, overrides=()) -> Session:
    """Read, override and validate a preset file."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise PresetError(f"{source}: the preset is larger than {MAX_BYTES} bytes; is it really a preset?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(f"{source}: no such preset file; check the path (ready presets are in presets/)") from None
    except IsADirectoryError:
        raise PresetError(f"{source}: is a folder; pass a preset .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        hint = "; save it as UTF-8" if isinstance(exc, UnicodeDecodeError) else "; check its permissions"
        raise PresetError(f"{source}: cannot read the preset ({exc}){hint}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, as every message
        raise PresetError(f"{source}: not valid YAML{at} ({reason})") from None
    except RecursionError:
        raise PresetError(f"{source}: the YAML is nested too deeply") from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, source=source)
    try:
        return parse(data, source=source, base=path.resolve().parent)
    except RecursionError:
        raise PresetError(f"{source}: the preset is nested too deeply (or refers to itself with YAML anchors)") from None
