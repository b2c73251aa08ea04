"""The error hierarchy.

Every error stembridge raises on purpose is a :class:`BridgeError`, and also inherits the
builtin a caller would expect (as soundfile does), so ``except ValueError`` keeps working.
A message names the value, what was expected, and how to fix it; the CLI prints it on one line.
"""

import difflib


class BridgeError(Exception):
    """Base class of every error stembridge raises on purpose."""


class AudioError(BridgeError, ValueError):
    """Audio that cannot be used: wrong shape or dtype, NaN/Inf samples, unreadable files."""


class OutputError(BridgeError, OSError):
    """An output that cannot be written: bad template, collision, would overwrite an input."""


class ModelError(BridgeError, RuntimeError):
    """A model card or model file that is missing, corrupt or inconsistent, or a setting of how
    a model runs (overlap, batch size, threads, Wiener iterations) out of range."""


class PresetError(BridgeError, ValueError):
    """A session preset that does not validate; the message names the file and the key path."""


class PluginError(BridgeError, RuntimeError):
    """An effect or VST3 plugin that cannot be created, loaded or configured."""


class MidiError(BridgeError, ValueError):
    """A MIDI file that cannot be used: missing, truncated, not MIDI, a bad header or running
    status, or without the controller a lane asks for."""


class ReportError(BridgeError, RuntimeError):
    """The run report cannot be drawn (matplotlib, its plotting library, is not installed)."""


def suggest(name: str, choices) -> str:
    """The tail of an unknown-name message: the nearest choice if one is close, then all of them."""
    choices = [str(c) for c in choices]
    hint = difflib.get_close_matches(name, choices, n=1)
    known = ", ".join(choices) or "(none)"
    return f"; did you mean '{hint[0]}'? Known: {known}" if hint else f"; known: {known}"
