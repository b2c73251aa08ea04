"""The render graph: pre chain -> separator -> per-stem stage -> bus -> master chain.

Every stage keeps pedalboard's call shape and its state between blocks, so one song streams
through in blocks of any size. A :class:`RenderGraph` is built once per session and called one
song at a time (:meth:`RenderGraph.stream`), which is what a batch scheduler needs.
:class:`StemSplit` wraps the same graph as a single in-memory effect for remixing scripts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pedalboard

from . import effects
from .audio import validate
from .errors import PresetError
from .mixer import LAYOUT_CHANNELS, Mixer, StreamChain
from .models import derived_stems, offered_stems
from .separation import Separator
from .session import Session, StemSettings


class RenderGraph:
    """A session bound to a loaded separator.

    Parameters
    ----------
    session : Session
    separator : Separator
        Must produce every stem the session names.
    """

    def __init__(self, session: Session, separator: Separator, *, chains=None, pre=None, master=None):
        check_stem_names(session, separator.stems, model=getattr(separator, "name", "the separator"))
        self.session = session
        self.separator = separator
        self._chains = chains
        self._pre = pre
        self._master = master

    @property
    def channels(self) -> int:
        return LAYOUT_CHANNELS[self.session.output.layout]

    def check(self) -> None:
        """Build every chain once (loads VST3 plugins), so a preset can be checked without rendering."""
        s = self.session
        effects.build_chain(s.pre, where=f"{s.source}: pre")
        effects.build_chain(s.master, where=f"{s.source}: master")
        for name, stem in s.stems:
            effects.build_chain(stem.chain, where=f"{s.source}: stems.{name}.chain")

    def stream(self, *, sample_rate: int, channels: int, separation=None) -> "GraphStream":
        """One song through the graph.

        ``separation`` replaces the separator's own stream (anything with ``process(block)`` and
        ``finish()`` returning ``{stem: audio}``, e.g. a replay of cached stems).
        """
        return GraphStream(self, sample_rate=sample_rate, channels=channels, separation=separation)


def check_stem_names(session: Session, stems, *, model: str) -> None:
    """Every stem a preset names must come from the model: settings need one of its ``stems``,
    ``separator.stems`` (what to write) may also name a sum such as a 4-stem ``instrumental``."""
    offered = offered_stems(stems)
    for name in list(session.separator.stems or ()):
        if name not in offered:
            raise PresetError(f"{session.source}: separator.stems: the model gives no stem '{name}'; "
                              f"it gives {', '.join(offered)} (model '{model}')")
    for name, _ in session.stems:
        parts = derived_stems(stems).get(name)
        if parts:
            raise PresetError(f"{session.source}: stems.{name}: with model '{model}' the {name} is the sum of "
                              f"{', '.join(parts)}; give those stems their settings instead")
        if name not in stems:
            raise PresetError(f"{session.source}: stems.{name}: the model gives no stem '{name}'; "
                              f"it gives {', '.join(stems)} (model '{model}')")


class GraphStream:
    """One song through the graph: ``process(block)`` and ``finish()`` return ``(mix, stems)``.

    The output is ``tail_seconds`` longer than the input: silence is fed to the stem chains after
    the separated song so reverbs and delays ring out. The separator sees exactly the song (after
    the pre chain), so its stems do not depend on the preset's tail and can be cached and shared
    between presets; a pre chain's own tail past the end of the song is not separated.
    """

    def __init__(self, graph: RenderGraph, *, sample_rate: int, channels: int, separation=None):
        s = graph.session
        self.sample_rate = sample_rate
        pre = graph._pre if graph._pre is not None else effects.build_chain(s.pre, where=f"{s.source}: pre")
        master = graph._master if graph._master is not None else effects.build_chain(s.master, where=f"{s.source}: master")
        for chain in [pre, master, *(graph._chains or {}).values()]:
            chain.reset()  # ready-made chains are shared between songs: no tail of the last one
        self._pre = StreamChain(pre, sample_rate=sample_rate, channels=channels)
        self._separation = separation if separation is not None else \
            graph.separator.stream(sample_rate=sample_rate, channels=channels)
        self._mixer = Mixer(s, graph.separator.stems, sample_rate=sample_rate, channels=channels, chains=graph._chains)
        self._master = StreamChain(master, sample_rate=sample_rate, channels=graph.channels)
        self._tail = int(round(s.output.tail_seconds * sample_rate))
        self._channels = channels

    def process(self, block: np.ndarray):
        return self._run(self._separation.process(self._pre.process(block)), last=False)

    def finish(self):
        empty = np.zeros((self._channels, 0), np.float32)
        stems = _join(self._separation.process(self._pre.process(empty, last=True)), self._separation.finish())
        tail = np.zeros((self._channels, self._tail), np.float32)
        return self._run({k: np.concatenate([v, tail], axis=1) for k, v in stems.items()}, last=True)

    def _run(self, stems, *, last: bool):
        mix, processed = self._mixer.process(stems, last=last)
        return self._master.process(mix, last=last), processed


def _join(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]], axis=1) for k in a}


class StemSplit:
    """A separator and per-stem chains as one effect: ``StemSplit(...)(audio, sample_rate) -> audio``.

    Parameters
    ----------
    separator : Separator
    chains : dict of str to pedalboard.Pedalboard or list of plugins, optional
        Effects per stem.
    gain_db, pan : dict of str to float, optional
        Per stem; gain may also be ``[(seconds, dB), ...]`` breakpoints.
    mute, solo, invert : iterable of str, optional
        Stems to mute, solo, or flip in polarity.
    master : pedalboard.Pedalboard or list of plugins, optional
    layout : {"stereo", "5.1"}
    tail_seconds : float
        Silence rendered after the input so effects ring out.

    Examples
    --------
    >>> split = StemSplit(load_separator("default"), chains={"vocals": [Reverb(room_size=0.6)]},
    ...                   gain_db={"vocals": 3.0})                                 # doctest: +SKIP
    >>> remix = split(audio, 44100)                                                 # doctest: +SKIP
    """

    def __init__(self, separator: Separator, *, chains=None, gain_db=None, pan=None, mute=(), solo=(), invert=(),
                 master=None, layout: str = "stereo", tail_seconds: float = 0.0):
        chains = {k: v if isinstance(v, pedalboard.Pedalboard) else pedalboard.Pedalboard(list(v))
                  for k, v in (chains or {}).items()}
        gain_db, pan = dict(gain_db or {}), dict(pan or {})
        names = set(chains) | set(gain_db) | set(pan) | set(mute) | set(solo) | set(invert)
        stems = tuple((name, StemSettings(gain_db=_gain(gain_db.get(name, 0.0)), pan=float(pan.get(name, 0.0)),
                                          mute=name in mute, solo=name in solo, invert=name in invert))
                      for name in sorted(names))
        from .session import OutputSettings
        session = Session(stems=stems, output=dataclasses.replace(OutputSettings(), layout=layout,
                                                                   tail_seconds=float(tail_seconds)),
                          source="StemSplit")
        master = master if isinstance(master, pedalboard.Pedalboard) or master is None else pedalboard.Pedalboard(list(master))
        self.graph = RenderGraph(session, separator, chains={k: chains.get(k, pedalboard.Pedalboard([]))
                                                             for k in separator.stems},
                                 pre=pedalboard.Pedalboard([]), master=master or pedalboard.Pedalboard([]))
        self.last_stems: dict[str, np.ndarray] | None = None

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Render ``audio`` (channels, samples) float32; returns the mix, ``tail_seconds`` longer.

        Chains keep no state between calls (each call is a new song). The processed stems of the
        last call are kept in :attr:`last_stems`.
        """
        audio = validate(audio, sample_rate)
        stream = self.graph.stream(sample_rate=sample_rate, channels=audio.shape[0])
        first, second = stream.process(audio), stream.finish()
        self.last_stems = {k: np.concatenate([first[1][k], second[1][k]], axis=1) for k in first[1]}
        return np.concatenate([first[0], second[0]], axis=1)


def _gain(value):
    return float(value) if isinstance(value, (int, float)) else tuple((float(t), float(g)) for t, g in value)
