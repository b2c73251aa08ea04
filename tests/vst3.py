"""Real VST3 plugins for the tests, compiled from ``tests/plugins/`` (see ``tests/plugins/build.py``).

- ``sbgain``: stereo effect, ``gain_db`` (-60..+24 dB, default 0) and ``mix`` (0..1, default 1);
  ``out = (1 - mix) * dry + mix * 10**(gain_db / 20) * dry``.
- ``sblatency``: stereo effect that delays by :data:`LATENCY` samples and reports them as latency
  (DPF also exposes its read-only ``latency_frames`` parameter).
- ``sbsine``: MIDI instrument, ``level * sin(2 pi f t)`` on both channels while a note is held,
  ``f = 440 * 2**((note - 69) / 12)``; ``level`` is 0..1, default 0.5; the sustain pedal (CC 64
  >= 64) holds a released note until it is lifted.
- ``sbwiden``: one input copied to two outputs, a main bus pedalboard cannot host at all.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CACHE = TESTS / ".cache" / "plugins"
LATENCY = 64

_spec = importlib.util.spec_from_file_location("_stembridge_plugin_build", TESTS / "plugins" / "build.py")
_build = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _build
_spec.loader.exec_module(_build)

BuildError = _build.BuildError
PLUGINS = _build.PLUGINS

_spec = importlib.util.spec_from_file_location("_stembridge_thirdparty", TESTS / "plugins" / "thirdparty.py")
_thirdparty = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _thirdparty
_spec.loader.exec_module(_thirdparty)

THIRD_PARTY_CACHE = TESTS / ".cache" / "thirdparty"


def build_plugins(cache_dir: str | os.PathLike = CACHE) -> dict[str, Path]:
    """Build (or reuse, when their sources are unchanged) the test plugins.

    Returns ``{"sbgain": .../sbgain.vst3, "sblatency": ..., "sbsine": ...}``; raises
    :class:`BuildError` naming what is missing (``dpf-source``, ``g++``) or what failed.
    """
    return _build.build(cache_dir)


def build_third_party(cache_dir: str | os.PathLike = THIRD_PARTY_CACHE) -> dict[str, Path]:
    """Build (or reuse) real third-party plugins from Debian's ``dpf-plugins`` and ``zam-plugins``.

    Returns ``{"ZamEQ2": .../ZamEQ2.vst3, "Kars": ..., ...}`` (see ``tests/plugins/thirdparty.py``);
    raises :class:`BuildError` naming what is missing (a ``deb-src`` entry, ``make``) or what failed.
    """
    return _thirdparty.build(cache_dir)


def in_ci() -> bool:
    """True on CI, where a plugin build failure must fail the run rather than skip tests."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def set_exact(plugin, name: str, value: float) -> None:
    """Set a float parameter to exactly ``value`` through the plugin's own text parser.

    pedalboard 0.9's attribute setter snaps a value in the upper half of one of its 1/1000 raw
    steps to the start of the next step (``gain_db = -6.0206`` gives -5.988 on a -60..24 range);
    the plugin's text-to-value conversion gives the exact raw value.
    """
    parameter = plugin.parameters[name]
    parameter.raw_value = parameter.get_raw_value_for_text(str(value))
