"""VST3 plugins: lookup by name, listing, and channel adaptation, as a DAW does them.

Lookup. A preset's ``vst3:`` is a path (it holds a ``/`` or ends in ``.vst3``) or a plugin name,
the bundle's file name without ``.vst3`` (``vst3: ZamCompX2``). Names are looked up in
``$VST3_PATH`` (colon-separated, searched first), then in the standard Linux VST3 folders
``~/.vst3``, ``/usr/lib/vst3`` and ``/usr/local/lib/vst3`` (Steinberg's "Plug-in Locations");
the first match wins.

Channel adaptation. pedalboard refuses a buffer whose channel count the plugin's main bus cannot
take (``Plugin 'ZamEQ2' does not support 2-channel output``), and many real plugins are mono. A
chain is cut into *segments*; each runs its plugins on one arrangement of the channels:

- ``whole``: the plugins take the buffer as it is (every built-in; VST3s whose bus fits);
- per group: one linked instance per group of channels, e.g. a mono plugin on a stereo stem is
  two instances on ``(0,)`` and ``(1,)``; a stereo plugin on 5.1 is three, on the pairs
  ``(L, R)``, ``(C, LFE)``, ``(Ls, Rs)``; a stereo plugin on a mono buffer is one instance on
  ``(0, 0)`` (the channel duplicated) whose two outputs are averaged back into one.

Linked instances are built from the same spec, so they start from the same state, and every
parameter change is applied to all of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pedalboard

from ..errors import PluginError, suggest

#: Steinberg's VST3 "Plug-in Locations" on Linux, after $VST3_PATH.
STANDARD_FOLDERS = ("~/.vst3", "/usr/lib/vst3", "/usr/local/lib/vst3")
#: pedalboard's message for a main bus that does not fit (it names the bus the plugin offers).
_BUS = re.compile(r"expects (\d+) input channels and (\d+) output channels")
#: Samples of silence used to ask a plugin whether it takes a channel count.
_PROBE_SAMPLES = 64


def search_folders(extra: Iterable = ()) -> tuple[Path, ...]:
    """Folders searched for plugins by name, in order: ``extra``, ``$VST3_PATH``, the standard ones."""
    env = [p for p in os.environ.get("VST3_PATH", "").split(os.pathsep) if p]
    return tuple(Path(p).expanduser() for p in [*extra, *env, *STANDARD_FOLDERS])


def find_bundles(folders: Iterable) -> dict[str, Path]:
    """Every ``*.vst3`` bundle under ``folders`` (recursively), by name; the first folder wins.

    The search does not descend into a bundle (a bundle holds no other plugins).
    """
    found: dict[str, Path] = {}
    seen: set[str] = set()  # real paths walked: a symlink loop is followed once
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for root, dirs, _ in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            bundles = sorted(d for d in dirs if d.endswith(".vst3"))
            dirs[:] = sorted(d for d in dirs if not d.endswith(".vst3"))
            for bundle in bundles:
                found.setdefault(bundle[: -len(".vst3")], Path(root) / bundle)
    return found


def is_path(value: str) -> bool:
    """True if a preset's ``vst3:`` value is a path rather than a plugin name."""
    return "/" in value or value.endswith(".vst3") or value.startswith("~")


def resolve(value: str, *, base: Path, where: str) -> Path:
    """The bundle a ``vst3:`` value names: a path (relative to ``base``) or a plugin name.

    Raises
    ------
    PluginError
        An unknown name, with a did-you-mean and the names found.
    """
    if is_path(value):
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    folders = search_folders()
    bundles = find_bundles(folders)
    if value in bundles:
        return bundles[value]
    folded = {name.lower(): path for name, path in bundles.items()}
    if value.lower() in folded:
        return folded[value.lower()]
    shown = ", ".join(str(f) for f in folders)
    raise PluginError(f"{where}: no VST3 plugin named '{value}' in {shown}{suggest(value, sorted(bundles))}; "
                      "install it there, add its folder to VST3_PATH, or give its path")


#: Whether this process has loaded a plugin (the CLI then collects garbage before exiting, so
#: that plugins are unloaded, and print, while their output is still captured).
loaded_any = False


def load(path: Path, *, where: str) -> pedalboard.Plugin:
    """Load a VST3 bundle (on the calling thread, which must be the main one)."""
    global loaded_any
    if not path.exists():
        raise PluginError(f"{where}: VST3 plugin {path} does not exist; install it or fix the path")
    loaded_any = True
    try:
        return pedalboard.load_plugin(str(path))
    except ValueError as exc:
        bus = _BUS.search(str(exc))
        if bus is None:
            raise PluginError(f"{where}: {path} could not be loaded as a VST3 plugin ({reason(exc)})") from None
        raise PluginError(f"{where}: {path.name} has {bus[1]} input and {bus[2]} output channels on its main bus; "
                          "pedalboard hosts only plugins with as many inputs as outputs, so no channel "
                          "arrangement can run it; choose another plugin") from None
    except (ImportError, RuntimeError) as exc:
        raise PluginError(f"{where}: {path} could not be loaded as a VST3 plugin ({reason(exc)}); "
                          "check that it is a VST3 bundle built for this platform") from None


def reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# --- what a plugin is ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ParameterInfo:
    """One parameter, by the name presets use. ``minimum``/``maximum`` are in ``unit``.

    ``choices`` is set for a parameter that takes one of a list of strings (then the range is None).
    """

    name: str
    label: str
    unit: str
    minimum: float | None
    maximum: float | None
    default: float | bool | str | None
    choices: tuple[str, ...] | None = None

    def span(self) -> str:
        """The values it takes, as ``stembridge plugins`` shows them: ``-50 .. 20 dB`` or ``one of a, b``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        low = "?" if self.minimum is None else f"{self.minimum:g}"
        high = "?" if self.maximum is None else f"{self.maximum:g}"
        return f"{low} .. {high} {self.unit}".rstrip()


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """A VST3 plugin as :func:`describe` found it; ``error`` is set when it could not be loaded.

    ``channels`` are the channel counts its main bus takes (of 1 and 2), ``latency`` is in samples.
    """

    name: str
    path: Path
    kind: str = ""  # "effect" | "instrument"
    channels: tuple[int, ...] = ()
    latency: int = 0
    parameters: tuple[ParameterInfo, ...] = ()
    error: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["parameters"] = [dataclasses.asdict(p) for p in self.parameters]
        return out

    def line(self) -> str:
        """One line for ``stembridge plugins``: name, kind, layout, latency, path."""
        if self.error:
            return f"{self.name:<16} BROKEN: {self.error} ({self.path})"
        layout = "/".join({1: "mono", 2: "stereo"}.get(c, f"{c}ch") for c in self.channels) or "no usable layout"
        return f"{self.name:<16} {self.kind:<10} {layout:<11} latency {self.latency:>5}  {self.path}"


def parameters(plugin: pedalboard.Plugin) -> tuple[ParameterInfo, ...]:
    """The parameters of a loaded plugin; defaults are its current values (a fresh load's)."""
    out = []
    for name, p in plugin.parameters.items():
        value = getattr(plugin, name)
        if p.type is str:
            out.append(ParameterInfo(name, p.name, "", None, None, str(value),
                                     tuple(str(v) for v in p.valid_values)))
            continue
        low, high, _ = p.range
        out.append(ParameterInfo(name, p.name, (p.label or "").strip(), _number(low), _number(high),
                                 value if isinstance(value, bool) else _number(value)))
    return tuple(out)


def _number(value) -> float | None:
    return None if value is None else float(value)


def describe(path: Path, *, sample_rate: int = 48000) -> PluginInfo:
    """Load one bundle and say what it is. A plugin that fails to load gives ``error``, never raises."""
    name = path.name[: -len(".vst3")] if path.name.endswith(".vst3") else path.name
    try:
        plugin = load(path, where=str(path))
        info = PluginInfo(name=name, path=path, kind="instrument" if plugin.is_instrument else "effect",
                          latency=int(plugin.reported_latency_samples or 0), parameters=parameters(plugin))
        return dataclasses.replace(info, channels=accepted_channels(plugin, sample_rate=sample_rate))
    except (PluginError, RuntimeError, ValueError, TypeError) as exc:
        return PluginInfo(name=name, path=path, error=reason(exc))


def listing(folders: Iterable) -> list[PluginInfo]:
    """Every plugin under ``folders``, described; broken ones are listed with their error."""
    return [describe(path) for path in find_bundles(folders).values()]


def listing_json(infos: Sequence[PluginInfo]) -> str:
    return json.dumps([i.to_json() for i in infos], indent=2, allow_nan=False)


def takes_channels(plugin: pedalboard.Plugin, channels: int, *, sample_rate: int) -> bool:
    """True if the plugin's main bus takes ``channels`` at ``sample_rate`` (asked with silence).

    Leaves an effect reset. pedalboard raises ``ValueError: ... does not support N-channel
    output`` for a bus that does not fit; any other error is the plugin's and is raised.
    An instrument is asked without a reset: pedalboard's reset of an instrument that stays
    silent waits its whole 10 s initialisation timeout, and a call without notes leaves no state.
    """
    try:
        if plugin.is_instrument:
            plugin([], duration=_PROBE_SAMPLES / sample_rate, sample_rate=sample_rate, num_channels=channels,
                   reset=False)
        else:
            plugin(np.zeros((channels, _PROBE_SAMPLES), np.float32), sample_rate, reset=True)
    except ValueError as exc:
        if "does not support" in str(exc):
            return False
        raise
    finally:
        if not plugin.is_instrument:
            plugin.reset()
    return True


def accepted_channels(plugin: pedalboard.Plugin, *, sample_rate: int) -> tuple[int, ...]:
    return tuple(c for c in (1, 2) if takes_channels(plugin, c, sample_rate=sample_rate))


def groups_for(channels: int, accepted: Sequence[int]) -> tuple[tuple[int, ...], ...] | None:
    """How to lay ``channels`` over instances that each take one of ``accepted`` channel counts.

    ``None`` if there is no way. All channels in one instance when it fits; else pairs (2) or
    single channels (1); a mono buffer on a stereo-only plugin is duplicated: ``((0, 0),)``.
    """
    if channels in accepted:
        return (tuple(range(channels)),)
    if 2 in accepted and channels % 2 == 0:
        return tuple((i, i + 1) for i in range(0, channels, 2))
    if 1 in accepted:
        return tuple((i,) for i in range(channels))
    if 2 in accepted and channels == 1:
        return ((0, 0),)
    return None


class Segment:
    """Plugins run on one arrangement of the channels, called like a pedalboard chain.

    Parameters
    ----------
    instances : sequence of pedalboard.Pedalboard
        One chain per group, built from the same specs.
    groups : sequence of tuple of int
        The buffer channels each instance takes, in its channel order. A channel may appear in
        several groups or twice in one (duplicated); its output is the mean of what comes back.
    channels : int
        Channels of the buffer.
    indices : sequence of int
        The chain index (in the preset) of each plugin of an instance.
    """

    def __init__(self, instances: Sequence[pedalboard.Pedalboard], groups, *, channels: int, indices=()):
        self.instances = list(instances)
        self.indices = tuple(indices)  # each plugin's index in the preset's chain
        self.groups = [tuple(g) for g in groups]
        self.channels = channels
        counts = np.zeros(channels)
        for group in self.groups:
            for c in group:
                counts[c] += 1
        self._scale = None if np.all(counts == 1) else (1.0 / counts).astype(np.float32)[:, np.newaxis]
        self._whole = len(self.groups) == 1 and self.groups[0] == tuple(range(channels))

    @property
    def plugins(self) -> list:
        """The plugins of the first instance (for latency and display)."""
        return list(self.instances[0])

    def linked(self, index: int) -> list:
        """Plugin ``index`` of this segment in every instance (to set a parameter on all)."""
        return [instance[index] for instance in self.instances]

    def __len__(self) -> int:
        return len(self.instances[0])

    def __iter__(self):
        return iter(self.instances[0])

    def reset(self) -> None:
        for instance in self.instances:
            instance.reset()

    def __call__(self, audio: np.ndarray, sample_rate: int, reset: bool = False) -> np.ndarray:
        """``audio`` (channels, samples) float32 -> the same shape (fewer samples while latency fills)."""
        if self._whole:
            return self.instances[0](audio, sample_rate, reset=reset)
        outs = [np.asarray(instance(audio[list(group)], sample_rate, reset=reset), np.float32)
                for instance, group in zip(self.instances, self.groups)]
        out = np.zeros((self.channels, min(o.shape[1] for o in outs)), np.float32)
        for result, group in zip(outs, self.groups):
            for row, c in enumerate(group):
                out[c] += result[row, : out.shape[1]]
        return out * self._scale if self._scale is not None else out


def build_segments(specs: Sequence, factory: Callable[[object, int], pedalboard.Plugin], *, channels: int,
                   sample_rate: int, where: str) -> list[Segment]:
    """Cut a chain into :class:`Segment` s for a buffer of ``channels`` at ``sample_rate``.

    ``factory(spec, index)`` builds one configured plugin (it is called again for each linked
    instance). Plugins that take the buffer as it is share a segment.

    Raises
    ------
    PluginError
        A plugin that no arrangement fits, or an instrument in an effect chain, naming ``where[i]``.
    """
    segments: list[Segment] = []
    run: list = []
    run_indices: list[int] = []

    def close_run():
        if run:
            segments.append(Segment([pedalboard.Pedalboard(list(run))], [tuple(range(channels))], channels=channels,
                                    indices=run_indices))
            run.clear()
            run_indices.clear()

    for index, spec in enumerate(specs):
        plugin = factory(spec, index)
        if getattr(plugin, "is_instrument", False):
            raise PluginError(f"{where}[{index}]: {plugin.name} is an instrument, not an effect; "
                              "play it from a MIDI file in 'layers:' or choose an effect")
        if not isinstance(plugin, pedalboard.ExternalPlugin):
            run.append(plugin)  # built-ins take any channel count
            run_indices.append(index)
            continue
        accepted = accepted_channels(plugin, sample_rate=sample_rate)
        groups = groups_for(channels, accepted)
        if groups is None:
            shown = " or ".join(f"{c}-channel" for c in accepted) or "no"
            raise PluginError(f"{where}[{index}]: {plugin.name} takes {shown} audio at {sample_rate} Hz, which "
                              f"cannot be fitted to {channels} channels; choose a plugin with a mono or stereo "
                              "main bus")
        if groups == (tuple(range(channels)),):
            run.append(plugin)
            run_indices.append(index)
            continue
        close_run()
        instances = [plugin] + [factory(spec, index) for _ in groups[1:]]
        segments.append(Segment([pedalboard.Pedalboard([p]) for p in instances], groups, channels=channels,
                                indices=(index,)))
    close_run()
    return segments


def check_parameter(plugin: pedalboard.Plugin, name: str, low: float, high: float, *, where: str) -> None:
    """A VST3 parameter that exists, takes numbers, and whose range holds ``low .. high``."""
    if name not in plugin.parameters:
        raise PluginError(f"{where}: {plugin.name} has no parameter '{name}'{suggest(name, list(plugin.parameters))}")
    parameter = plugin.parameters[name]
    if parameter.type is not float:
        raise PluginError(f"{where}: {plugin.name}'s '{name}' takes one of {', '.join(map(str, parameter.valid_values))}"
                          ", not numbers, so it cannot be automated")
    minimum, maximum, _ = parameter.range
    slack = 1e-6 * (maximum - minimum)  # float32 ranges read back as float64
    if low < minimum - slack or high > maximum + slack:
        raise PluginError(f"{where}: values {low:g} .. {high:g} are outside {plugin.name}'s '{name}' range "
                          f"[{minimum:g}, {maximum:g}] {parameter.label or ''}".rstrip())


def parameter_setter(plugin: pedalboard.Plugin, name: str, probe=()) -> Callable[[float], None]:
    """A fast, exact setter for one number parameter: ``set(value)``.

    For a VST3 the raw (0..1) value comes from the plugin's own text parser (7 us, where
    pedalboard's attribute setter takes ~200 us and snaps to 1/1000 steps). If the parser
    disagrees with pedalboard's choice for any of the ``probe`` values by more than a step, the
    plugin's parser is not trusted and pedalboard's setter is used.
    """
    if not isinstance(plugin, pedalboard.ExternalPlugin):
        return lambda value: setattr(plugin, name, value)
    parameter = plugin.parameters[name]

    def by_text(value: float) -> None:
        parameter.raw_value = float(parameter.get_raw_value_for_text(str(float(value))))

    try:
        for value in probe:
            setattr(plugin, name, value)
            chosen = parameter.raw_value
            if abs(float(parameter.get_raw_value_for_text(str(float(value)))) - chosen) > 1.5e-3:
                return lambda value: setattr(plugin, name, value)
    except (RuntimeError, ValueError, TypeError):
        return lambda value: setattr(plugin, name, value)
    return by_text


def latency(segment) -> int:
    """Samples of delay a segment's (or chain's) plugins report."""
    return int(sum(getattr(p, "reported_latency_samples", 0) or 0 for p in segment))

