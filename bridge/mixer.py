"""The stem stage: per-stem chains, gain and automation, polarity, pan, mute/solo, routing, sum.

Streaming: every stage keeps its state between blocks (pedalboard's ``reset=False``), so a song
is mixed block by block. A chain's reported latency (VST3 plugins report theirs) is trimmed
from its output and made up with silence at the end, so stems stay sample-aligned.

Pan is constant-power and leaves a stem untouched at the centre: with ``theta = (pan + 1) pi/4``
the left gain is ``sqrt(2) cos(theta)`` and the right ``sqrt(2) sin(theta)`` (their squares sum to
2 at every position; hard left is +3 dB on the left channel and silence on the right).

5.1 (channel order L R C LFE Ls Rs, WAVE_FORMAT_EXTENSIBLE mask 0x3F) routes each stem by a role,
chosen so the ITU-R BS.775 fold-down ``Lo = L + C/sqrt(2) + Ls/sqrt(2)``,
``Ro = R + C/sqrt(2) + Rs/sqrt(2)`` (LFE omitted) gives back the stereo mix:

- ``center`` (vocals): the mid ``(l + r)/2`` goes to C times sqrt(2), the side ``(l - r)/2`` to
  L and, inverted, to R;
- ``front``: l and r to L and R;
- ``bass``: as front, plus the mid low-passed at 120 Hz on the LFE;
- ``ambience`` (drums, other, instrumental): the side, delayed 10 ms and 14 ms (decorrelated),
  to Ls and -Rs at -3 dB, and the same amount taken out of L and R so the fold-down is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pedalboard

from . import effects
from .errors import PluginError
from .separation import with_sums
from .session import Session, StemSettings

LAYOUT_CHANNELS = {"stereo": 2, "5.1": 6}
DEFAULT_ROLES = {"vocals": "center", "bass": "bass"}
AMBIENCE_GAIN = 10 ** (-3 / 20)
LFE_CUTOFF_HZ = 120.0
#: Samples per call into a pedalboard chain: always the same (see :class:`StreamChain`).
BLOCK = 8192


def pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power (left, right) gains, unity at the centre."""
    theta = (pan + 1.0) * math.pi / 4.0
    return math.sqrt(2.0) * math.cos(theta), math.sqrt(2.0) * math.sin(theta)


def gain_curve(gain_db, start: int, count: int, sample_rate: int) -> np.ndarray | float:
    """Linear gain for samples ``start .. start+count``: a constant, or breakpoints interpolated in dB."""
    if isinstance(gain_db, (int, float)):
        return 10.0 ** (gain_db / 20.0)
    times, values = zip(*gain_db)
    t = (start + np.arange(count)) / sample_rate
    return (10.0 ** (np.interp(t, times, values) / 20.0)).astype(np.float32)


class StreamChain:
    """A pedalboard chain run block by block, in fixed-size blocks, latency-compensated.

    pedalboard re-prepares a plugin (clearing reverb tails and delay lines) whenever a call
    brings a larger block than before, so the chain is always given exactly :data:`BLOCK`
    samples. After ``reset()`` pedalboard compensates reported latency itself (its first calls
    return fewer samples); at the end the chain is fed silence until every input sample has come
    out, so the output is exactly as long as the input and aligned with it.
    """

    def __init__(self, chain: pedalboard.Pedalboard, *, sample_rate: int, channels: int):
        self.chain = chain
        self.sample_rate = sample_rate
        self.channels = channels
        self.latency = effects.latency(chain)
        self._pending = np.zeros((channels, 0), np.float32)
        self._received = 0
        self._emitted = 0
        self._empty = len(chain) == 0
        if not self._empty:
            chain.reset()

    def process(self, block: np.ndarray, *, last: bool = False) -> np.ndarray:
        self._received += block.shape[1]
        if self._empty:
            return block
        self._pending = np.concatenate([self._pending, block], axis=1)
        outs = []
        while self._pending.shape[1] >= BLOCK:
            outs.append(self._run(self._pending[:, :BLOCK]))
            self._pending = self._pending[:, BLOCK:]
        if last:
            produced = sum(o.shape[1] for o in outs)
            budget = (self._pending.shape[1] + self.latency) // BLOCK + 2
            while self._emitted + produced < self._received and budget:
                todo = np.pad(self._pending, ((0, 0), (0, BLOCK - self._pending.shape[1])))
                self._pending = np.zeros((self.channels, 0), np.float32)
                outs.append(self._run(todo))
                produced += outs[-1].shape[1]
                budget -= 1
        out = np.concatenate(outs, axis=1) if outs else np.zeros((self.channels, 0), np.float32)
        out = out[:, : self._received - self._emitted]
        if last and self._emitted + out.shape[1] < self._received:
            raise PluginError(f"an effect chain returned {self._emitted + out.shape[1]} of {self._received} samples; "
                              "a plugin reports less latency than it has, or drops audio")
        self._emitted += out.shape[1]
        return out

    def _run(self, block: np.ndarray) -> np.ndarray:
        out = self.chain(block, self.sample_rate, reset=False)
        return np.asarray(out, dtype=np.float32).reshape(self.channels, -1)


class Mixer:
    """Mix separated stems to the output layout, block by block.

    Parameters
    ----------
    session : Session
    stems : sequence of str
        The stems the separator gives, in order.
    sample_rate : int
    channels : int
        Channels of the stems (1 or 2).
    chains : dict of str to pedalboard.Pedalboard, optional
        Ready chains by stem, instead of building them from the session's effect specs.
    """

    def __init__(self, session: Session, stems, *, sample_rate: int, channels: int, chains=None):
        self.session = session
        self.stems = tuple(stems)
        self.sample_rate = sample_rate
        self.in_channels = channels
        self.layout = session.output.layout
        self.channels = LAYOUT_CHANNELS[self.layout]
        settings = {name: session.stem(name) for name in self.stems}
        soloed = any(s.solo for s in settings.values())
        self.settings = settings
        self.audible = {name: (s.solo if soloed else True) and not s.mute for name, s in settings.items()}
        chains = dict(chains or {})
        for name, s in settings.items():
            if name not in chains:
                chains[name] = effects.build_chain(s.chain, where=f"{session.source}: stems.{name}.chain")
        self.chains = {name: StreamChain(chains[name], sample_rate=sample_rate, channels=2) for name in self.stems}
        self.roles = {name: s.upmix or DEFAULT_ROLES.get(name, "ambience") for name, s in settings.items()}
        self._fifo = {name: np.zeros((self.channels, 0), np.float32) for name in self.stems}
        self._position = {name: 0 for name in self.stems}
        self._routers = {name: _Router(self.roles[name], sample_rate) for name in self.stems} if self.layout == "5.1" else {}

    def process(self, stems: dict[str, np.ndarray], *, last: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Take one block per stem (equal lengths); return ``(mix, processed stems)`` that are ready."""
        for name in self.stems:
            audio = stems[name]
            if audio.shape[0] == 1:
                audio = np.repeat(audio, 2, axis=0)
            out = self.chains[name].process(audio, last=last)
            routed = self._place(name, out)
            self._fifo[name] = np.concatenate([self._fifo[name], routed], axis=1)
        ready = min(f.shape[1] for f in self._fifo.values())
        processed = {}
        for name in self.stems:
            processed[name] = self._fifo[name][:, :ready]
            self._fifo[name] = self._fifo[name][:, ready:]
        mix = np.zeros((self.channels, ready), np.float32)
        for name, audio in processed.items():
            if self.audible[name]:
                mix += audio
        # A 4-stem split's instrumental, if a preset writes it: the sum of the processed parts.
        return mix, with_sums(processed, self.session.separator.stems or ())

    def _place(self, name: str, audio: np.ndarray) -> np.ndarray:
        """Gain, polarity, pan and routing of one stem's chain output."""
        s: StemSettings = self.settings[name]
        count = audio.shape[1]
        gain = gain_curve(s.gain_db, self._position[name], count, self.sample_rate)
        self._position[name] += count
        if s.invert:
            gain = -gain
        left, right = pan_gains(s.pan)
        stereo = np.stack([audio[0] * left, audio[1] * right]) * gain
        stereo = stereo.astype(np.float32)
        if not self.audible[name]:
            stereo = np.zeros_like(stereo)
        if self.layout == "stereo":
            return stereo
        return self._routers[name](stereo)


class _Router:
    """Stereo -> 5.1 for one role, with the filters and delays it needs kept between blocks."""

    def __init__(self, role: str, sample_rate: int):
        self.role = role
        self.sample_rate = sample_rate
        self.lfe = pedalboard.LowpassFilter(cutoff_frequency_hz=LFE_CUTOFF_HZ)
        self.delay_left = pedalboard.Delay(delay_seconds=0.010, feedback=0.0, mix=1.0)
        self.delay_right = pedalboard.Delay(delay_seconds=0.014, feedback=0.0, mix=1.0)

    def __call__(self, stereo: np.ndarray) -> np.ndarray:
        left, right = stereo
        out = np.zeros((6, stereo.shape[1]), np.float32)
        mid, side = 0.5 * (left + right), 0.5 * (left - right)
        if self.role == "center":
            out[0], out[1], out[2] = side, -side, math.sqrt(2.0) * mid
            return out
        out[0], out[1] = left, right
        if self.role == "bass" and stereo.shape[1]:
            out[3] = _process_mono(self.lfe, mid, self.sample_rate)
        if self.role == "ambience" and stereo.shape[1]:
            surround_left = AMBIENCE_GAIN * _process_mono(self.delay_left, side, self.sample_rate)
            surround_right = -AMBIENCE_GAIN * _process_mono(self.delay_right, side, self.sample_rate)
            out[4], out[5] = surround_left, surround_right
            out[0] -= surround_left / math.sqrt(2.0)
            out[1] -= surround_right / math.sqrt(2.0)
        return out


def _process_mono(plugin, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    return np.asarray(plugin(signal[np.newaxis, :].astype(np.float32), sample_rate, reset=False), np.float32)[0]


def fold_down(surround: np.ndarray) -> np.ndarray:
    """ITU-R BS.775 5.1 -> stereo: ``Lo = L + 0.7071 C + 0.7071 Ls``, ``Ro = R + 0.7071 C + 0.7071 Rs``."""
    k = 1.0 / math.sqrt(2.0)
    left = surround[0] + k * surround[2] + k * surround[4]
    right = surround[1] + k * surround[2] + k * surround[5]
    return np.stack([left, right]).astype(np.float32)
