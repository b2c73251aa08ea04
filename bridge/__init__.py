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
    but the vocals (``bridge.models.derived_stems``) to ``--stems``, presets and ``eval``.
Sums
    Unless a method says otherwise, a separator's stems sum to its input within float32
    rounding.
"""

from .errors import AudioError, BridgeError, MidiError, ModelError, OutputError, PluginError, PresetError
from .separation import Separator, load_separator

__version__ = "0.1.0"

__all__ = [
    "AudioError", "BridgeError", "MidiError", "ModelError", "OutputError", "PluginError", "PresetError",
    "Separator", "load_separator", "__version__",
]
