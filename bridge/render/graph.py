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

from ..audio.buffers import validate
from ..errors import PresetError
from ..host.layers import load_instrument, open_layer
from .mixer import LAYOUT_CHANNELS, ChainStream, Mixer, StreamChain
from ..separation.models import derived_stems, offered_stems
from ..separation import Separator
from ..preset.session import Session, StemSettings


def referenced_stems(session: Session) -> dict[str, str]:
    """Every stem name the session refers to, with the preset key that first names it."""
    found: dict[str, str] = {}
    for name, stem in session.stems:
        found.setdefault(name, f"stems.{name}")
    for name in session.separator.stems or ():
        found.setdefault(name, "separator.stems")
    for name, stem in session.stems:
        if stem.duck is not None:
            found.setdefault(stem.duck.by, f"stems.{name}.duck.by")
    for target, _ in session.automation:
        if target.stem is not None:
            found.setdefault(target.stem, f"automation.{target}")
    for name in session.layer_names:  # a layer is a stem the separator does not give
        found.pop(name, None)
    return found


#: Sample rates :func:`check_chains` prepares chains at when the song's is not known yet.
CHECK_RATES = (44100, 48000)


def check_chains(session: Session, *, sample_rates=CHECK_RATES, input_channels=(1, 2)) -> None:
    """Build and prepare every chain at the channel counts and rates a render runs it at.

    The pre chain runs at the input's channels (``input_channels``), stem chains on stereo, the
    master chain at the output layout's channels; every VST3 is loaded and asked which channel
    counts it takes, so a preset that passes renders. Raises :class:`PluginError` naming the
    preset key of the first chain that cannot be built.
    """
    s = session
    stems = {name for name, _ in s.stems} | {t.stem for t, _ in s.automation if t.stem is not None} \
        | set(s.layer_names)
    for name, layer, _ in s.layers:
        load_instrument(layer.instrument, where=f"{s.source}: layers.{name}.instrument")
    for rate in sample_rates:
        for channels in input_channels:
            _chain(s, s.pre, "pre", None, channels=channels, sample_rate=rate)
        for name in sorted(stems):
            _chain(s, s.stem(name).chain, f"stems.{name}.chain", name, channels=2, sample_rate=rate)
        _chain(s, s.master, "master", None, channels=LAYOUT_CHANNELS[s.output.layout], sample_rate=rate)


def _chain(session: Session, specs, key: str, stem, *, channels: int, sample_rate: int) -> ChainStream:
    """One of the session's chains, prepared and with its automation lanes bound."""
    section = "stems" if stem is not None else key
    lanes = session.lanes(section, stem).effects
    shown = f"layers.{stem}.chain" if stem in session.layer_names else key
    return ChainStream.build(specs, where=f"{session.source}: {shown}", sample_rate=sample_rate, channels=channels,
                             lanes=lanes, lane_where=f"{session.source}: automation.{key}")


class RenderGraph:
    """A session bound to a loaded separator.

    Parameters
    ----------
    session : Session
    separator : Separator
        Must produce every stem the session names.
    """

    def __init__(self, session: Session, separator: Separator, *, chains=None, pre=None, master=None):
        check_stem_names(session, separator.stems, model=separator.name)
        self.session = session
        self.separator = separator
        self._chains = chains
        self._pre = pre
        self._master = master

    @property
    def channels(self) -> int:
        return LAYOUT_CHANNELS[self.session.output.layout]

    @property
    def pre_chain(self) -> pedalboard.Pedalboard | None:
        """The ready-made pre chain this graph was given (``pre=``), or None: each song then
        builds the session's own pre chain from its specs (``session.pre``)."""
        return self._pre

    def check(self, *, sample_rates=CHECK_RATES, input_channels=(1, 2)) -> None:
        """Prepare every chain as a render would (see :func:`check_chains`), without rendering."""
        check_chains(self.session, sample_rates=sample_rates, input_channels=input_channels)

    def stream(self, *, sample_rate: int, channels: int, separation=None, taps=()) -> "GraphStream":
        """One song through the graph.

        ``separation`` replaces the separator's own stream (anything with ``process(block)`` and
        ``finish()`` returning ``{stem: audio}``, e.g. a replay of cached stems). ``taps``: see
        :class:`GraphStream`.
        """
        return GraphStream(self, sample_rate=sample_rate, channels=channels, separation=separation, taps=taps)


def check_stem_names(session: Session, stems, *, model: str) -> None:
    """Every stem a preset names must come from the model, named by the key that names it.

    Settings, ducking keys and automation need one of its ``stems``; ``separator.stems`` (what to
    write) may also name a sum such as a 4-stem ``instrumental``; a layer must not take the name
    of a stem the model gives.
    """
    stems = tuple(stems)
    offered, derived = offered_stems(stems), derived_stems(stems)
    for name, key in referenced_stems(session).items():
        if key == "separator.stems":
            if name not in offered:
                raise PresetError(f"{session.source}: separator.stems: the model gives no stem '{name}'; "
                                  f"it gives {', '.join(offered)} (model '{model}')")
            continue
        if name in derived:
            raise PresetError(f"{session.source}: {key}: with model '{model}' the {name} is the sum of "
                              f"{', '.join(derived[name])}; give those stems their settings instead")
        if name not in stems:
            raise PresetError(f"{session.source}: {key}: the model gives no stem '{name}'; "
                              f"it gives {', '.join(stems)} (model '{model}')")
    for name in session.layer_names:
        if name in stems:
            raise PresetError(f"{session.source}: layers.{name}: the model already gives a stem '{name}'; "
                              "name the layer differently")


class GraphStream:
    """One song through the graph: ``process(block)`` and ``finish()`` return ``(mix, stems)``.

    The output is ``tail_seconds`` longer than the input: silence is fed to the stem chains after
    the separated song so reverbs and delays ring out. The separator sees exactly the song (after
    the pre chain), so its stems do not depend on the preset's tail and can be cached and shared
    between presets; a pre chain's own tail past the end of the song is not separated.

    ``taps`` asks for more views of each call's stems, left in :attr:`taps`: ``"raw"`` (the
    separator's stems, as many samples as it gave) and ``"prefader"`` (after the chains, before
    gain, mute and solo; aligned with the processed stems).
    """

    def __init__(self, graph: RenderGraph, *, sample_rate: int, channels: int, separation=None, taps=()):
        s = graph.session
        self.sample_rate = sample_rate
        for chain in [graph._pre, graph._master, *(graph._chains or {}).values()]:
            if chain is not None:
                chain.reset()  # ready-made chains are shared between songs: no tail of the last one
        self._pre = (StreamChain(graph._pre, sample_rate=sample_rate, channels=channels) if graph._pre is not None
                     else _chain(s, s.pre, "pre", None, channels=channels, sample_rate=sample_rate))
        self._separation = separation if separation is not None else \
            graph.separator.stream(sample_rate=sample_rate, channels=channels)
        self._layers = {name: open_layer(name, layer, source=s.source, sample_rate=sample_rate)
                        for name, layer, _ in s.layers}
        self._mixer = Mixer(s, tuple(graph.separator.stems) + s.layer_names, sample_rate=sample_rate,
                            channels=channels, chains=graph._chains, prefader="prefader" in taps)
        self._taps = tuple(taps)
        self.taps: dict[str, dict[str, np.ndarray]] = {}
        self._master = (StreamChain(graph._master, sample_rate=sample_rate, channels=graph.channels)
                        if graph._master is not None
                        else _chain(s, s.master, "master", None, channels=graph.channels, sample_rate=sample_rate))
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
        if self._layers:
            count = next(iter(stems.values())).shape[1]  # layers follow the song, block for block
            stems = {**stems, **{name: layer.render(count) for name, layer in self._layers.items()}}
            if last:
                for layer in self._layers.values():
                    layer.finish()
        mix, processed = self._mixer.process(stems, last=last)
        if "raw" in self._taps:
            self.taps["raw"] = stems
        if "prefader" in self._taps:
            self.taps["prefader"] = self._mixer.prefader_out
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
        from ..preset.session import OutputSettings
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
