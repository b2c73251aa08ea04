"""stembridge: music source separation as a render-offline effect inside pedalboard chains.

Conventions
-----------
Buffers
    ``numpy.ndarray``, ``float32``, shape ``(channels, samples)``, nominally in [-1, 1], with
    ``sample_rate`` (Hz) passed beside it on every call: pedalboard's own contract. Every stage,
    separators included, has the call shape ``stage(audio, sample_rate)``.
Units
    Gains in dB, times in seconds, frequencies in Hz, pan from -1 (left) to +1 (right);
    MIDI channels count from 1, as DAWs count them (mido counts from 0).
Stems
    demucs's names: ``vocals``, ``drums``, ``bass``, ``other``; plus ``instrumental`` for
    everything but the vocals in 2-stem splits (Spleeter's "accompaniment"). A 4- or 5-stem
    separator's ``stems`` partition the mix; it also offers ``instrumental`` as the sum of all
    but the vocals (``bridge.separation.models.derived_stems``) to ``--stems``, presets and ``eval``.
Sums
    Unless a method says otherwise, a separator's stems sum to its input within float32
    rounding.
"""

import importlib

from .errors import AudioError, BridgeError, MidiError, ModelError, OutputError, PluginError, PresetError, ReportError
from .separation import Separator, load_separator
from .version import __version__

# The rest of the public face is imported on first use (PEP 562), so that ``import bridge`` and
# the command's start stay cheap: pedalboard and the render path load only when a script asks.
_LAZY = {
    "StemSplit": ("bridge.render.graph", "StemSplit"),
    "RenderGraph": ("bridge.render.graph", "RenderGraph"),
    "render_file": ("bridge.render.song", "render_file"),
    "separate_file": ("bridge.render.separate", "separate_file"),
    "SeparateOptions": ("bridge.render.separate", "SeparateOptions"),
    "load_session": ("bridge.preset.session", "load"),
    "parse_session": ("bridge.preset.session", "parse"),
    "Session": ("bridge.preset.session", "Session"),
    "StemSettings": ("bridge.preset.session", "StemSettings"),
    "OutputSettings": ("bridge.preset.session", "OutputSettings"),
    "evaluate": ("bridge.quality.evaluate", "evaluate"),
    "compare": ("bridge.quality.evaluate", "compare"),
    "load_ensemble": ("bridge.separation", "load_ensemble"),
    "EnsemblePart": ("bridge.separation.ensemble", "Part"),
}


def __getattr__(name: str):
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bridge' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AudioError", "BridgeError", "MidiError", "ModelError", "OutputError", "PluginError", "PresetError", "ReportError",
    "Separator", "load_separator", "__version__", *_LAZY,
]
