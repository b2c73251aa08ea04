"""The stem stage: per-stem chains, ducking, gain and automation, polarity, pan, mute/solo, routing, sum.

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

from ..host import automation, effects
from ..host.ducking import Ducker
from ..errors import PluginError
from ..separation import with_sums
from ..preset.session import DEFAULT_ROLES, Session, StemSettings

LAYOUT_CHANNELS = {"stereo": 2, "5.1": 6}
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

    def __init__(self, chain: pedalboard.Pedalboard, *, sample_rate: int, channels: int, block: int = BLOCK,
                 lanes=()):
        self.chain = chain
        self.sample_rate = sample_rate
        self.channels = channels
        self.block = block
        self.lanes = list(lanes)  # ParameterLanes, set before each block from the time of its first sample
        self._fed = 0
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
        while self._pending.shape[1] >= self.block:
            outs.append(self._run(self._pending[:, :self.block]))
            self._pending = self._pending[:, self.block:]
        if last:
            produced = sum(o.shape[1] for o in outs)
            budget = (self._pending.shape[1] + self.latency) // self.block + 2
            while self._emitted + produced < self._received and budget:
                todo = np.pad(self._pending, ((0, 0), (0, self.block - self._pending.shape[1])))
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
        for lane in self.lanes:
            lane.update(self._fed / self.sample_rate)
        self._fed += block.shape[1]
        out = self.chain(block, self.sample_rate, reset=False)
        return np.asarray(out, dtype=np.float32).reshape(self.channels, -1)


class ChainStream:
    """A preset's chain, adapted to the buffer's channels, streamed: a :class:`StreamChain` per segment.

    Each segment (see :mod:`bridge.host.plugins`) compensates its own latency, so the chain's output
    stays aligned with its input however its plugins are laid over the channels.
    """

    def __init__(self, segments, *, sample_rate: int, channels: int, lanes=None):
        self.segments = list(segments)
        lanes = lanes or {}
        # Only a segment with automation runs in short blocks; the others keep BLOCK (no cost).
        self.stages = [StreamChain(s, sample_rate=sample_rate, channels=channels, lanes=lanes.get(n, ()),
                                   block=automation.update_block(sample_rate) if n in lanes else BLOCK)
                       for n, s in enumerate(self.segments)]
        self.latency = sum(stage.latency for stage in self.stages)

    @classmethod
    def build(cls, specs, *, where: str, sample_rate: int, channels: int, lanes=None,
              lane_where: str = "automation") -> "ChainStream":
        """Prepare ``specs`` for ``channels`` at ``sample_rate`` and bind ``lanes``
        (``{chain index: ((param, Lane), ...)}``, errors named from ``lane_where``)."""
        segments = effects.prepare_chain(specs, where=where, channels=channels, sample_rate=sample_rate)
        bound = effects.automate(segments, lanes or {}, where=lane_where)
        return cls(segments, sample_rate=sample_rate, channels=channels, lanes=bound)

    def process(self, block: np.ndarray, *, last: bool = False) -> np.ndarray:
        for stage in self.stages:
            block = stage.process(block, last=last)
        return block


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
    prefader : bool
        Also keep each stem before its fader (after the chain and any ducking; for 5.1 panned and
        routed at unity gain) in :attr:`prefader_out`, sample-aligned with what :meth:`process`
        returns: the stems a DAW project references, its tracks carrying the gain, mute and solo.
    """

    def __init__(self, session: Session, stems, *, sample_rate: int, channels: int, chains=None,
                 prefader: bool = False):
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
        lanes = {name: session.lanes("stems", name) for name in self.stems}
        self.chains = {name: StreamChain(chains[name], sample_rate=sample_rate, channels=2) if name in chains
                       else ChainStream.build(settings[name].chain, where=f"{session.source}: "
                                              f"{'layers' if name in session.layer_names else 'stems'}.{name}.chain",
                                              sample_rate=sample_rate, channels=2,
                                              lanes=lanes[name].effects,
                                              lane_where=f"{session.source}: automation.stems.{name}.chain")
                       for name in self.stems}
        self.mix_lanes = {name: dict(lanes[name].mix) for name in self.stems}  # gain_db / pan lanes
        self.roles = {name: s.upmix or DEFAULT_ROLES.get(name, "ambience") for name, s in settings.items()}
        self._fifo = {name: np.zeros((2, 0), np.float32) for name in self.stems}  # chain outputs, stereo
        self.duckers = {name: Ducker(s.duck, sample_rate=sample_rate) for name, s in settings.items()
                        if s.duck is not None}
        self._position = {name: 0 for name in self.stems}
        self._routers = {name: _Router(self.roles[name], sample_rate) for name in self.stems} if self.layout == "5.1" else {}
        self.prefader = prefader
        self.prefader_out: dict[str, np.ndarray] = {}
        self._pre_routers = ({name: _Router(self.roles[name], sample_rate) for name in self.stems}
                             if self.layout == "5.1" and prefader else {})

    def process(self, stems: dict[str, np.ndarray], *, last: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Take one block per stem (equal lengths); return ``(mix, processed stems)`` that are ready."""
        for name in self.stems:
            audio = stems[name]
            if audio.shape[0] == 1:
                audio = np.repeat(audio, 2, axis=0)
            out = self.chains[name].process(audio, last=last)
            self._fifo[name] = np.concatenate([self._fifo[name], out], axis=1)
        # Chains hand back different amounts per call; the stems are placed once every stem's
        # chain output covers the same samples, which is also what a ducker's key needs.
        ready = min(f.shape[1] for f in self._fifo.values())
        chained = {}
        for name in self.stems:
            chained[name] = self._fifo[name][:, :ready]
            self._fifo[name] = self._fifo[name][:, ready:]
        processed = {}
        for name in self.stems:
            audio = chained[name]
            if name in self.duckers:
                audio = audio * self.duckers[name](chained[self.settings[name].duck.by])
            processed[name] = self._place(name, audio)
            if self.prefader:
                self.prefader_out[name] = self._unity(name, audio)
        mix = np.zeros((self.channels, ready), np.float32)
        for name, audio in processed.items():
            if self.audible[name]:
                mix += audio
        if self.prefader:
            self.prefader_out = with_sums(self.prefader_out, self.session.separator.stems or ())
        # A 4-stem split's instrumental, if a preset writes it: the sum of the processed parts.
        return mix, with_sums(processed, self.session.separator.stems or ())

    def _place(self, name: str, audio: np.ndarray) -> np.ndarray:
        """Gain, polarity, pan and routing of one stem's chain output."""
        s: StemSettings = self.settings[name]
        count = audio.shape[1]
        lanes = self.mix_lanes[name]
        if lanes:
            t = (self._position[name] + np.arange(count)) / self.sample_rate
        if "gain_db" in lanes:  # per sample: a gain lane is as smooth as its curve
            gain = (10.0 ** (lanes["gain_db"].at(t) / 20.0)).astype(np.float32)
        else:
            gain = gain_curve(s.gain_db, self._position[name], count, self.sample_rate)
        self._position[name] += count
        if s.invert:
            gain = -gain
        left, right = self._pan_gains(name, t if "pan" in lanes else None)
        stereo = np.stack([audio[0] * left, audio[1] * right]) * gain
        stereo = stereo.astype(np.float32)
        if not self.audible[name]:
            stereo = np.zeros_like(stereo)
        if self.layout == "stereo":
            return stereo
        return self._routers[name](stereo)

    def _pan_gains(self, name: str, t: np.ndarray | None):
        """(left, right) pan gains: the pan lane's at times ``t`` (seconds), or the constant pan."""
        if t is None:
            return pan_gains(self.settings[name].pan)
        theta = (self.mix_lanes[name]["pan"].at(t) + 1.0) * (math.pi / 4.0)
        return (math.sqrt(2.0) * np.cos(theta)).astype(np.float32), (math.sqrt(2.0) * np.sin(theta)).astype(np.float32)

    def _unity(self, name: str, audio: np.ndarray) -> np.ndarray:
        """A stem before its fader: the chain's output; in 5.1 also panned (its pan lane too) and
        routed (a DAW's 5.1 track cannot redo the stereo pan that comes before the routing)."""
        if self.layout == "stereo":
            return audio.astype(np.float32, copy=True)
        count = audio.shape[1]
        # _place has moved this stem's position past this block already.
        t = (self._position[name] - count + np.arange(count)) / self.sample_rate \
            if "pan" in self.mix_lanes[name] else None
        left, right = self._pan_gains(name, t)
        return self._pre_routers[name](np.stack([audio[0] * left, audio[1] * right]).astype(np.float32))


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
