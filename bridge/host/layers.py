"""MIDI instrument layers: stems that do not come from the separator, played by a VST3 instrument.

::

    layers:
      bass:
        instrument: {vst3: Nekobi, params: {cutoff: 40}}
        midi: bass.mid           # read by bridge.host.midi, on the file's tempo map
        track: 1                 # optional filters
        channel: 2
        transpose: -12           # semitones
        velocity: 0.8            # scale, result clipped to 1..127
        start: "2:1"             # offset of the file's time 0 in the song: seconds or bar:beat
        gain_db: -3              # and everything else a stem has: pan, mute, solo, invert,
        chain: [...]             # chain, upmix, duck; automation targets stems.bass.*

A layer streams block by block like the separator's stems: its instrument is called in fixed
blocks of :func:`block_size` samples (1 ms) with ``reset=False`` (pedalboard re-prepares a plugin
whose block grows, dropping its voices), and each call gets the messages that fall in it, timed in
seconds from the start of the call, so notes, note-offs and held notes (sustain is a CC and is
sent like one) carry across block edges. An instrument with a mono output is duplicated to
both channels.

Length: the output follows the song plus ``output.tail_seconds``; a layer longer than that is
cut there, and notes that would start after the end are not played (their count is in
:attr:`InstrumentLayer.dropped`). A shorter layer gives silence after its last note rings out.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pedalboard

from . import effects, midi, plugins
from .effects import EffectSpec
from ..errors import PluginError

#: Seconds per instrument call. Notes are placed to the sample inside a call, but pedalboard
#: (through JUCE's VST3 host, which turns MIDI controllers into parameter changes) applies a
#: controller such as the sustain pedal at the start of the call that holds it: 1 ms calls keep
#: pedal and controller timing within 1 ms, for ~1.6 % of real time (Kars, 2-core EPYC).
BLOCK_SECONDS = 0.001


def block_size(sample_rate: int) -> int:
    return max(1, int(sample_rate * BLOCK_SECONDS))
#: A layer whose instrument gives nothing for this long after its first note is reported.
SILENCE_CHECK_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class LayerSettings:
    """How a layer is played. ``start`` is in seconds; ``velocity`` a factor; ``channel`` 1-based."""

    instrument: EffectSpec
    midi: str
    track: int | None = None
    channel: int | None = None
    transpose: int = 0
    velocity: float = 1.0
    start: float = 0.0
    start_written: object = 0.0  # as the preset wrote it (seconds or "bar:beat"), for the round trip
    base: Path = Path(".")  # the folder a relative ``midi`` path is resolved against (the preset's)

    def path(self) -> Path:
        full = Path(self.midi).expanduser()
        return full if full.is_absolute() else self.base / full

    def to_yaml(self) -> dict:
        out = {"instrument": self.instrument.to_yaml(), "midi": self.midi}
        for key in ("track", "channel"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(transpose=self.transpose, velocity=self.velocity, start=self.start_written)
        return out


def arrange(played, *, transpose: int, velocity: float, start: float) -> list[tuple[float, bytes]]:
    """Messages as ``(song seconds, MIDI bytes)``: transposed, velocity-scaled and offset.

    Notes moved outside 0..127 by ``transpose`` are left out (note-on and note-off alike).
    """
    out = []
    for seconds, message in played:
        if message.type in ("note_on", "note_off", "polytouch"):
            note = message.note + transpose
            if not 0 <= note <= 127:
                continue
            message = message.copy(note=note)
            if message.type == "note_on" and message.velocity > 0:
                message = message.copy(velocity=int(min(127, max(1, round(message.velocity * velocity)))))
        out.append((seconds + start, bytes(message.bytes())))
    return out


def load_instrument(spec: EffectSpec, *, where: str) -> pedalboard.Plugin:
    """Build a layer's instrument; an effect given here is a one-line error naming ``where``."""
    if spec.kind != "vst3":
        raise PluginError(f"{where}: {spec.name} is a built-in effect; a layer needs a VST3 instrument")
    plugin = effects.build(spec, where=where)
    if not plugin.is_instrument:
        raise PluginError(f"{where}: {plugin.name} is an effect, not an instrument; put it in a chain, or "
                          "choose an instrument (stembridge plugins lists which is which)")
    return plugin


def open_layer(name: str, layer: LayerSettings, *, source: str, sample_rate: int) -> "InstrumentLayer":
    """A layer ready to stream: its instrument loaded (main thread) and its MIDI file arranged."""
    instrument = load_instrument(layer.instrument, where=f"{source}: layers.{name}.instrument")
    song = midi.read(layer.path(), where=f"{source}: layers.{name}.midi")
    played = midi.performance(song, track=layer.track, channel=layer.channel, where=f"{source}: layers.{name}")
    events = arrange(played, transpose=layer.transpose, velocity=layer.velocity, start=layer.start)
    return InstrumentLayer(instrument, events, sample_rate=sample_rate, name=f"{source}: layers.{name}")


class LayerWarning(UserWarning):
    """A layer that is silent where its first note should sound, or notes left unplayed at the end."""


class InstrumentLayer:
    """One layer's audio, block by block: ``layer.render(count) -> (2, count)`` float32.

    Parameters
    ----------
    instrument : pedalboard.Plugin
        A loaded VST3 instrument (main thread).
    events : list of (float, bytes)
        Song seconds and MIDI bytes, in time order (see :func:`arrange`).
    sample_rate : int
    """

    def __init__(self, instrument: pedalboard.Plugin, events, *, sample_rate: int, name: str = "layer"):
        self.name = name
        self.instrument = instrument
        self.sample_rate = sample_rate
        self.events = sorted(events, key=lambda e: e[0])
        # A freshly loaded instrument (no reset: see plugins.takes_channels) and stereo if it can.
        self.channels = 2 if plugins.takes_channels(instrument, 2, sample_rate=sample_rate) else 1
        self.block = block_size(sample_rate)
        self._samples = [int(round(t * sample_rate)) for t, _ in self.events]
        self._next = 0  # index of the next event to send
        self._rendered = 0  # samples made by the instrument
        self._delivered = 0  # samples handed to the mixer
        self._pending = np.zeros((2, 0), np.float32)
        onsets = [t for t, data in self.events if data[0] & 0xF0 == 0x90 and data[2] > 0]
        self.first_onset = onsets[0] if onsets else None
        self.silent_start: bool | None = None  # set once the first note's first 100 ms are rendered
        self._loudest = 0.0

    @property
    def dropped(self) -> int:
        """Note-ons at or after the end of what has been delivered: at the end, never played."""
        end = self._delivered
        return sum(1 for t, data in self.events if data[0] & 0xF0 == 0x90 and data[2] > 0
                   and int(round(t * self.sample_rate)) >= end)

    def render(self, count: int) -> np.ndarray:
        parts, have = [self._pending], self._pending.shape[1]
        while have < count:
            parts.append(self._block())
            have += parts[-1].shape[1]
        joined = np.concatenate(parts, axis=1) if len(parts) > 1 else self._pending
        out, self._pending = joined[:, :count], joined[:, count:]
        self._delivered += count
        return out

    def _block(self) -> np.ndarray:
        start, size = self._rendered, self.block
        messages = []
        while self._next < len(self.events):
            seconds, data = self.events[self._next]
            # Whole samples from the block start; +0.25 so pedalboard's seconds -> samples lands on it.
            offset = self._samples[self._next] - start
            if offset >= size:
                break
            messages.append((data, (max(offset, 0) + 0.25) / self.sample_rate))
            self._next += 1
        audio = self.instrument(messages, duration=size / self.sample_rate, sample_rate=self.sample_rate,
                                num_channels=self.channels, buffer_size=size, reset=False)
        audio = np.asarray(audio, np.float32).reshape(self.channels, -1)[:, :size]
        if audio.shape[1] < size:
            audio = np.pad(audio, ((0, 0), (0, size - audio.shape[1])))
        self._rendered += size
        self._watch(audio, start)
        return np.repeat(audio, 2, axis=0) if self.channels == 1 else audio

    def _watch(self, audio: np.ndarray, start: int) -> None:
        """Note whether the instrument stays silent for the first note's first 100 ms."""
        if self.first_onset is None or self.silent_start is not None:
            return
        begin = int(round(self.first_onset * self.sample_rate))
        end = begin + int(SILENCE_CHECK_SECONDS * self.sample_rate)
        if start + audio.shape[1] <= begin:
            return
        part = audio[:, max(begin - start, 0): max(min(end - start, audio.shape[1]), 0)]
        if part.size:
            self._loudest = max(self._loudest, float(np.max(np.abs(part))))
        if start + audio.shape[1] >= end:
            self.silent_start = self._loudest == 0.0
            if self.silent_start:
                warnings.warn(f"{self.name}: {self.instrument.name} gave silence for the first "
                              f"{SILENCE_CHECK_SECONDS * 1000:.0f} ms of its first note (at {self.first_onset:.3f} s); "
                              "check its MIDI channel, its volume and its program", LayerWarning, stacklevel=2)

    def finish(self) -> None:
        """Report notes that would start after the end of the render (they are not played)."""
        if self.dropped:
            warnings.warn(f"{self.name}: {self.dropped} note(s) start after the render ends at "
                          f"{self._delivered / self.sample_rate:.3f} s and are not played; lengthen "
                          "output.tail_seconds or move the layer's start", LayerWarning, stacklevel=2)
