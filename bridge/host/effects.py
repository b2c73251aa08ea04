"""Effects: a YAML spec <-> a pedalboard plugin, for pedalboard's built-ins and VST3 plugins.

A built-in is written ``{effect: Compressor, threshold_db: -18, ratio: 3}``; a VST3 plugin is
written ``{vst3: path/to/Plugin.vst3, params: {mix: 0.2}, preset: file.vstpreset}`` or with
``raw_state: <base64>``; ``vst3:`` may also be a plugin name, looked up by :mod:`bridge.host.plugins`. Parameter names are checked here, because pedalboard silently accepts
any attribute name on a plugin; values are checked by pedalboard and its errors are reworded to
name the preset path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from pathlib import Path
from typing import Any

import pedalboard

from . import plugins
from .automation import ParameterLane
from ..errors import PluginError, suggest

#: pedalboard classes that are containers, bases or need arguments no YAML can give.
_NOT_EFFECTS = {"Plugin", "PluginContainer", "Pedalboard", "Chain", "Mix", "ExternalPlugin", "VST3Plugin",
                "AudioUnitPlugin", "IIRFilter"}
_PATH_PARAMS = {"impulse_response_filename"}


def builtin_effects() -> dict[str, type]:
    """Every pedalboard built-in effect usable from a preset, by class name."""
    found = {}
    for name in dir(pedalboard):
        cls = getattr(pedalboard, name)
        if isinstance(cls, type) and issubclass(cls, pedalboard.Plugin) and not name.startswith("_") \
                and name not in _NOT_EFFECTS:
            found[name] = cls
    return dict(sorted(found.items()))


def builtin_parameters(cls: type) -> list[str]:
    """The settable parameters of a built-in effect class."""
    names = []
    for klass in cls.__mro__:
        for key, value in vars(klass).items():
            if isinstance(value, property) and not key.startswith("_") and value.fset is not None \
                    and key not in names and key not in ("is_effect", "is_instrument", "impulse_response"):
                names.append(key)
    return names


@dataclasses.dataclass(frozen=True)
class EffectSpec:
    """One effect of a chain, as written in a preset.

    ``name`` is a built-in class name, or for VST3 the plugin path as written; ``base`` is the
    folder relative paths are resolved against (the preset's).
    """

    kind: str  # "builtin" | "vst3"
    name: str
    params: tuple[tuple[str, Any], ...] = ()
    preset: str | None = None
    raw_state: str | None = None
    base: Path = Path(".")

    def to_yaml(self) -> dict:
        if self.kind == "builtin":
            return {"effect": self.name, **dict(self.params)}
        out: dict[str, Any] = {"vst3": self.name}
        if self.params:
            out["params"] = dict(self.params)
        if self.preset:
            out["preset"] = self.preset
        if self.raw_state:
            out["raw_state"] = self.raw_state
        return out

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path


def check(spec: EffectSpec, *, where: str) -> None:
    """Check names without building anything (built-in effect and parameter names)."""
    if spec.kind != "builtin":
        return
    effects = builtin_effects()
    if spec.name not in effects:
        raise PluginError(f"{where}: unknown effect '{spec.name}'{suggest(spec.name, effects)}")
    known = builtin_parameters(effects[spec.name]) + (sorted(_PATH_PARAMS) if spec.name == "Convolution" else [])
    defaults = _defaults(effects[spec.name])
    for key, value in spec.params:
        if key not in known:
            raise PluginError(f"{where}: {spec.name} has no parameter '{key}'{suggest(key, known)}")
        if key in defaults:
            _check_value(value, defaults[key], where=f"{where}.{key}")


#: Physical limits by unit suffix, for parameters pedalboard itself does not range-check.
_LIMITS = {"_hz": (1e-3, 384000.0), "_db": (-150.0, 48.0), "_ms": (0.0, 60000.0), "_seconds": (0.0, 3600.0)}


def _defaults(cls: type) -> dict[str, Any]:
    """Default parameter values of a built-in (their types tell what a value must be)."""
    try:
        plugin = cls()
    except (TypeError, ValueError, RuntimeError):
        return {}
    return {key: getattr(plugin, key) for key in builtin_parameters(cls)
            if isinstance(getattr(plugin, key, None), (bool, int, float))}


def _check_value(value, default, *, where: str) -> None:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise PluginError(f"{where}: expected true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = (" (YAML reads 1e9 as text: write 1.0e+9)" if isinstance(value, str) and _looks_numeric(value) else "")
        raise PluginError(f"{where}: expected a number, got {value!r}{hint}")
    name = where.rsplit(".", 1)[-1]
    for suffix, (low, high) in _LIMITS.items():
        if name.endswith(suffix) and not low <= value <= high:
            raise PluginError(f"{where}: {value!r} is out of range [{low:g}, {high:g}]")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build(spec: EffectSpec, *, where: str) -> pedalboard.Plugin:
    """Create the plugin a spec describes. VST3 plugins load on the calling (main) thread."""
    check(spec, where=where)
    if spec.kind == "builtin":
        cls = builtin_effects()[spec.name]
        params = {k: (str(spec.resolve(v)) if k in _PATH_PARAMS else v) for k, v in spec.params}
        try:
            return cls(**params)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise PluginError(f"{where}: {spec.name}: {_reason(exc)}") from None
    return _load_vst3(spec, where=where)


def _load_vst3(spec: EffectSpec, *, where: str) -> pedalboard.Plugin:
    path = plugins.resolve(spec.name, base=spec.base, where=f"{where}.vst3")
    plugin = plugins.load(path, where=where)
    if spec.preset:
        preset = spec.resolve(spec.preset)
        if not preset.is_file():
            raise PluginError(f"{where}.preset: {preset} does not exist; fix the path")
        try:
            plugin.load_preset(str(preset))
        except (RuntimeError, ValueError) as exc:
            raise PluginError(f"{where}.preset: {preset} could not be loaded ({_reason(exc)})") from None
    if spec.raw_state:
        try:
            plugin.raw_state = base64.b64decode(spec.raw_state, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PluginError(f"{where}.raw_state: not valid base64 ({exc})") from None
    known = list(plugin.parameters)
    for key, value in spec.params:
        if key not in plugin.parameters:
            raise PluginError(f"{where}.params.{key}: {path.name} has no parameter '{key}'{suggest(key, known)}")
        try:
            _set_parameter(plugin, key, value)
        except (ValueError, TypeError) as exc:
            raise PluginError(f"{where}.params.{key}: {_reason(exc)}") from None
    return plugin


def _set_parameter(plugin: pedalboard.Plugin, key: str, value: Any) -> None:
    """Set one VST3 parameter; a number exactly, as far as the plugin can parse its own text.

    pedalboard 0.9's setter checks the type and range, then snaps a number in the upper half of
    one of its 1/1000 raw steps to the start of the next step (-6.0 on a -60..24 dB range becomes
    -5.988 dB). The plugin's own text-to-value conversion gives the exact raw value; it is used
    when it lands within about a step of pedalboard's choice, so a plugin whose parser is broken
    keeps pedalboard's value.
    """
    setattr(plugin, key, value)  # raises ValueError naming the valid range
    parameter = plugin.parameters[key]
    if parameter.type is not float or isinstance(value, (bool, str)):
        return
    try:
        raw = float(parameter.get_raw_value_for_text(str(float(value))))
    except (RuntimeError, ValueError, TypeError):
        return
    if 0.0 <= raw <= 1.0 and abs(raw - parameter.raw_value) <= 1.5e-3:
        parameter.raw_value = raw


def prepare_chain(specs, *, where: str, channels: int, sample_rate: int) -> list[plugins.Segment]:
    """Build a chain for a buffer of ``channels`` at ``sample_rate``, adapted to each plugin's bus.

    Returns the chain cut into :class:`bridge.host.plugins.Segment` s (one per channel arrangement);
    a mono VST3 on a stereo buffer becomes two linked instances built from the same spec.
    Raises :class:`PluginError` naming ``where[i]`` for a plugin no arrangement fits.
    """
    return plugins.build_segments(specs, lambda spec, i: build(spec, where=f"{where}[{i}]"), channels=channels,
                                  sample_rate=sample_rate, where=where)


def check_automation(spec: EffectSpec, param: str, lane, *, where: str) -> None:
    """A lane on a built-in's parameter: the name exists, takes numbers, and the lane's values are
    accepted (by our unit limits and by pedalboard itself). VST3 lanes are checked against the
    loaded plugin by :func:`automate`."""
    if spec.kind != "builtin":
        return
    cls = builtin_effects()[spec.name]
    known = builtin_parameters(cls)
    if param not in known:
        raise PluginError(f"{where}: {spec.name} has no parameter '{param}'{suggest(param, known)}")
    default = _defaults(cls).get(param)
    if default is None or isinstance(default, bool):
        raise PluginError(f"{where}: {spec.name}'s '{param}' does not take numbers, so it cannot be automated")
    plugin = build(spec, where=where)
    for value in (lane.minimum, lane.maximum):
        _check_value(value, default, where=where)
        try:
            setattr(plugin, param, value)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise PluginError(f"{where}: {value:g} is not accepted by {spec.name}.{param} ({_reason(exc)})") from None


def automate(segments, lanes: dict, *, where: str) -> dict:
    """Bind lanes to the plugins of prepared segments.

    ``lanes`` is ``{chain index: ((param, Lane), ...)}``; ``where`` the automation key prefix of
    the chain (e.g. ``"p.yaml: automation.master"``). Returns ``{segment index: [ParameterLane]}``;
    every linked instance of a plugin gets the same values.
    """
    bound: dict = {}
    for index, pairs in lanes.items():
        found = [(n, s) for n, s in enumerate(segments) if index in s.indices]
        if not found:
            raise PluginError(f"{where}[{index}]: the chain has no effect [{index}]")
        number, segment = found[0]
        linked = segment.linked(segment.indices.index(index))
        for param, lane in pairs:
            at = f"{where}[{index}].{param}"
            if isinstance(linked[0], pedalboard.ExternalPlugin):
                plugins.check_parameter(linked[0], param, lane.minimum, lane.maximum, where=at)
            setters = [plugins.parameter_setter(p, param, probe=(lane.minimum, lane.maximum)) for p in linked]
            bound.setdefault(number, []).append(ParameterLane(setters, lane))
    return bound


def latency(chain: pedalboard.Pedalboard) -> int:
    """Samples of delay the chain's plugins report (VST3 plugins report theirs)."""
    return int(sum(getattr(p, "reported_latency_samples", 0) or 0 for p in chain))


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
