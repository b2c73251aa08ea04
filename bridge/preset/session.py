"""Sessions: a YAML preset (``version: 1``) validated into frozen objects.

Every error names the preset file and the path inside it, e.g.
``presets/karaoke.yaml: stems.vocals.chain[1].effect: unknown effect 'Reverbb'; did you mean
'Reverb'?``. Loading uses ``yaml.safe_load`` only. A loaded session written back with
:meth:`Session.to_yaml` and loaded again is equal to the first.

Schema (every key but ``version`` may be left out)::

    version: 1
    input: {stream: null}                # the audio stream of each input (from 0, among its audio
                                         # streams); null: the container's default audio stream
    separator: {model: default, stems: [vocals, instrumental], overlap: 0.25, batch_size: 1, wiener: 0,
                device: auto}            # device: auto|cpu|cuda[:N]|...; batch_size: N or auto
    # or, instead of model, an ensemble (bridge.separation.ensemble lists the methods):
    #   separator: {ensemble: [{model: A, stems: [vocals]},
    #                          {models: [A, B], stems: [other], method: avg_fft, weights: [1, 1]}],
    #               residual: other}    # optional: the stem that takes mix - sum(others)
    pre: [<effect>, ...]                 # before separation
    stems:
      <stem>:
        gain_db: 0                       # or breakpoints [[seconds, dB], ...], linear in dB
        pan: 0                           # -1 left .. +1 right, constant power, unity at 0
        mute: false
        solo: false
        invert: false                    # polarity
        chain: [<effect>, ...]
        upmix: center                    # 5.1 role: center | front | bass | ambience
        duck: {by: vocals, depth_db: 6, threshold_db: -30, attack_ms: 10, release_ms: 250}
    master: [<effect>, ...]
    layers:                              # stems played by a VST3 instrument from a MIDI file
      <name>: {instrument: Nekobi, midi: bass.mid, channel: 1, transpose: 0, velocity: 1, start: 0, ...}
    tempo: {bpm: 120, time_signature: 4/4}    # for "bar:beat" times
    automation:                          # target -> lane (see bridge.host.automation)
      stems.vocals.chain[0].mix: [[0, 0.1], ["9:1", 0.6]]
      master[0].threshold_db: {midi: song.mid, cc: 11, channel: 1, range: [-30, 0], curve: hold}
    output:
      layout: stereo                     # or 5.1
      format: wav                        # wav flac ogg aiff m4a opus mp3
      codec: aac                         # m4a only: aac or alac (lossless)
      bitrate: 256                       # kbit/s for aac (32-512), opus (6-510), mp3 (32-320); default per codec
      bit_depth: 24                      # 16 24 32 (32 = float); ALAC and FLAC 16 or 24
      sample_rate: source                # or Hz
      files: {mix: "{track}.remix.{ext}", stems: null}   # stems: e.g. "{track}/{stem}.{ext}"
      loudness_lufs: null                # integrated loudness target (BS.1770)
      true_peak_db: -1.0                 # ceiling, dBTP
      tail_seconds: 2.0                  # let reverbs ring out
      loudness_scope: track              # or album: one gain for every song of a folder
      bwf: true                          # wav outputs carry bext (EBU Tech 3285 v2) and iXML chunks
      project: null                      # reaper: <track>.rpp beside the stems (files.stems defaults
                                         # to "{track}/{stem}.{ext}"), stems written before the fader
      project_stems: processed           # or raw: the separator's stems, chains listed in track notes
      report: false                      # true: OUT/stembridge-report.html (as render --report)
      # files.nistems: "{track}.stem.mp4" writes NI Stems from a vocals/drums/bass/other session
      # files.video: "{track}.remix.{ext}" a video input with the mix as its audio ({ext}: the input's)

An ``<effect>`` is ``{effect: Name, <param>: value, ...}`` (pedalboard built-ins) or
``{vst3: path.vst3 or a plugin name, params: {...}, preset: file.vstpreset, raw_state: base64}``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from ..host import automation, effects, midi
from ..host.automation import Lane, Target, Tempo
from ..host.ducking import DuckSettings
from ..host.layers import LayerSettings
from ..errors import BridgeError, ModelError, PresetError
from ..audio.files import OUTPUT_FORMATS, OutputFormatError, check_output_format
from ..audio.encoders import check_rate
from ..separation.ensemble import Part, check_method
from ..separation.models import MAX_WIENER
from . import fields
from .templates import check_template
from .safeyaml import check_size, load_yaml

VERSION = 1
ROLES = ("center", "front", "bass", "ambience")
# A stem's 5.1 role when its preset names none: vocals to the centre, bass to the centre and LFE,
# everything else to the surrounds.
DEFAULT_ROLES = {"vocals": "center", "bass": "bass"}
LAYOUTS = ("stereo", "5.1")
PROJECTS = ("reaper",)
PROJECT_STEMS = ("processed", "raw")
PROJECT_STEMS_TEMPLATE = "{track}/{stem}.{ext}"  # output.files.stems when a project is asked without it
SCOPES = ("track", "album")
MAX_BYTES = 1 << 20
MAX_WEIGHT = 1000.0  # ensemble weights are relative: 0 to 1000 says everything


@dataclasses.dataclass(frozen=True)
class SeparatorSettings:
    model: str = "default"
    stems: tuple[str, ...] | None = None
    overlap: float | None = None
    batch_size: int | str = 1  # or "auto" (bridge.separation.devices.auto_batch_size)
    wiener: int = 0  # EM iterations of the multichannel Wiener filter (mask models); 0 = off
    shifts: int | None = None  # Demucs models: random-shift runs averaged (None: the model's default, 1)
    leftover: str | None = None  # Demucs models: the stem that also gets mix - sum(stems)
    device: str = "auto"  # where the model runs; a preset names no hardware unless it must
    #: Instead of ``model``: the ensemble's parts (:class:`~bridge.separation.ensemble.Part`), and
    #: the stem that takes the mix minus the others (None: none does).
    ensemble: tuple[Part, ...] | None = None
    residual: str | None = None


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """How each input file is read: ``stream``, its audio stream (None: the default one)."""

    stream: int | None = None


@dataclasses.dataclass(frozen=True)
class StemSettings:
    """Units: gain in dB (a constant or ``((seconds, dB), ...)`` breakpoints); pan in [-1, 1]."""

    gain_db: float | tuple[tuple[float, float], ...] = 0.0
    pan: float = 0.0
    mute: bool = False
    solo: bool = False
    invert: bool = False
    chain: tuple[effects.EffectSpec, ...] = ()
    upmix: str | None = None
    duck: DuckSettings | None = None


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    layout: str = "stereo"
    format: str = "wav"
    bit_depth: int = 24
    codec: str | None = None  # m4a: "aac" (None) or "alac"
    bitrate: float | None = None  # kbit/s of aac, opus, mp3 (None: the codec's default)
    sample_rate: int | None = None  # None: the source's
    mix: str | None = "{track}.remix.{ext}"
    stems: str | None = None
    loudness_lufs: float | None = None
    true_peak_db: float = -1.0
    tail_seconds: float = 2.0
    loudness_scope: str = "track"  # "album": one loudness gain for all songs of a folder in a run
    bwf: bool = True  # Broadcast WAV chunks in wav outputs
    project: str | None = None  # "reaper": a DAW project of the session
    project_stems: str = "processed"  # or "raw"
    nistems: str | None = None  # NI Stems name template, e.g. "{track}.stem.mp4"
    video: str | None = None  # a video input remuxed with the mix, e.g. "{track}.remix.{ext}"
    report: bool = False  # OUT/stembridge-report.html for the run (changes no audio output)


@dataclasses.dataclass(frozen=True)
class ChainLanes:
    """The automation lanes of one chain, as :meth:`Session.lanes` gives them.

    Attributes
    ----------
    effects : dict of int to tuple of (str, Lane)
        ``{effect index: ((param, lane), ...)}``: lanes on the chain's effects, in preset order.
    mix : dict of str to Lane
        A stem's own lanes, ``"gain_db"`` (dB) and ``"pan"`` (-1 .. +1), where automated; empty
        for the pre and master chains.
    """

    effects: dict = dataclasses.field(default_factory=dict)
    mix: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Session:
    separator: SeparatorSettings = SeparatorSettings()
    pre: tuple[effects.EffectSpec, ...] = ()
    stems: tuple[tuple[str, StemSettings], ...] = ()
    master: tuple[effects.EffectSpec, ...] = ()
    output: OutputSettings = OutputSettings()
    source: str = "<session>"
    tempo: Tempo | None = None
    automation: tuple[tuple[Target, Lane], ...] = ()
    layers: tuple[tuple[str, LayerSettings, StemSettings], ...] = ()
    input: InputSettings = InputSettings()

    def stem(self, name: str) -> StemSettings:
        """A stem's or a layer's mixer settings (defaults for a stem the preset does not name)."""
        for layer, _, settings in self.layers:
            if layer == name:
                return settings
        return dict(self.stems).get(name, StemSettings())

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.layers)

    def lanes(self, section: str, stem: str | None = None) -> ChainLanes:
        """Lanes of one chain: ``section`` ``"pre"``, ``"master"``, or ``"stems"`` with ``stem``
        (a stem's ``gain_db`` and ``pan`` lanes in :attr:`ChainLanes.mix`)."""
        effects: dict = {}
        mix: dict = {}
        for target, lane in self.automation:
            if target.section != section or target.stem != stem:
                continue
            if target.index is None:  # the stem's own gain_db / pan, not an effect's parameter
                mix[target.param] = lane
            else:
                effects.setdefault(target.index, []).append((target.param, lane))
        return ChainLanes(effects={k: tuple(v) for k, v in effects.items()}, mix=mix)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict:
        sep = {"model": self.separator.model, "overlap": self.separator.overlap,
               "batch_size": self.separator.batch_size, "wiener": self.separator.wiener}
        if self.separator.ensemble is not None:  # only then: presets without one read back unchanged
            del sep["model"]
            sep["ensemble"] = [_part_yaml(p) for p in self.separator.ensemble]
            sep["residual"] = self.separator.residual
        if self.separator.stems is not None:
            sep["stems"] = list(self.separator.stems)
        sep["shifts"], sep["leftover"] = self.separator.shifts, self.separator.leftover
        if self.separator.device != "auto":  # presets written before devices read back unchanged
            sep["device"] = self.separator.device
        stems = {}
        for name, s in self.stems:
            gain = float(s.gain_db) if isinstance(s.gain_db, (int, float)) else [list(p) for p in s.gain_db]
            stems[name] = {"gain_db": gain, "pan": s.pan, "mute": s.mute, "solo": s.solo, "invert": s.invert,
                           "chain": [e.to_yaml() for e in s.chain], "upmix": s.upmix}
            if s.duck is not None:
                stems[name]["duck"] = s.duck.to_yaml()
        o = self.output
        out = {
            "version": VERSION, "separator": sep, "pre": [e.to_yaml() for e in self.pre], "stems": stems,
            "master": [e.to_yaml() for e in self.master],
            "output": {"layout": o.layout, "format": o.format, "bit_depth": o.bit_depth,
                       "sample_rate": o.sample_rate or "source", "files": {"mix": o.mix, "stems": o.stems, "nistems": o.nistems},
                       "loudness_lufs": o.loudness_lufs, "true_peak_db": o.true_peak_db,
                       "tail_seconds": o.tail_seconds, "loudness_scope": o.loudness_scope, "bwf": o.bwf,
                       "project": o.project, "project_stems": o.project_stems},
        }
        if self.input.stream is not None:  # only then: presets without one read back unchanged
            out["input"] = {"stream": self.input.stream}
        if o.report:  # written only when asked: a report changes no output, so older manifests stay current
            out["output"]["report"] = True
        # Written only when set, so the manifests of sessions without them stay current.
        out["output"].update({key: value for key, value in (("codec", o.codec), ("bitrate", o.bitrate))
                              if value is not None})
        if o.video is not None:
            out["output"]["files"]["video"] = o.video
        if self.tempo is not None:
            out["tempo"] = self.tempo.to_yaml()
        if self.automation:
            out["automation"] = {str(target): lane.to_yaml() for target, lane in self.automation}
        if self.layers:
            out["layers"] = {name: {**layer.to_yaml(), **_stem_yaml(s)} for name, layer, s in self.layers}
        return out


def _part_yaml(part: Part) -> dict:
    out = {"model": part.models[0]} if len(part.models) == 1 else {"models": list(part.models)}
    out["stems"] = list(part.stems)
    if part.method is not None:
        out["method"] = part.method
    if part.weights is not None:
        out["weights"] = list(part.weights)
    return out


def _ensemble(r: fields.Reader, s: dict) -> tuple[tuple[Part, ...] | None, str | None]:
    """``separator.ensemble`` and ``separator.residual``, checked as far as they can be without the
    models' cards (which models give which stems is checked when the cards are read)."""
    value, residual = s.get("ensemble"), s.get("residual")
    if value is None:
        if residual is not None:
            r.fail("separator.residual", "only with separator.ensemble (a single model's stems sum to the mix "
                                         "as its card says); drop it, or use leftover with a Demucs model")
        return None, None
    if "model" in s:
        r.fail("separator.model", "give either a model or an ensemble, not both; drop model")
    if s.get("leftover") is not None:
        r.fail("separator.leftover", "an ensemble takes residual: STEM instead; drop leftover")
    if not isinstance(value, list) or not value:
        r.fail("separator.ensemble", "expected a list of parts such as {model: NAME, stems: [vocals]} or "
                                     "{models: [A, B], stems: [other], method: avg_fft}")
    parts = []
    for i, raw in enumerate(value):
        at = f"separator.ensemble[{i}]"
        e = r.mapping(raw, at, ("model", "models", "stems", "method", "weights"))
        if ("model" in e) == ("models" in e):
            r.fail(at, "name one model (model: NAME) or several (models: [A, B])")
        if "model" in e:
            models = (r.text(e["model"], f"{at}.model"),)
        else:
            if not isinstance(e["models"], list) or len(e["models"]) < 2:
                r.fail(f"{at}.models", f"expected a list of two or more model names, got {e['models']!r}; "
                                       "for one model write model: NAME")
            models = tuple(r.text(m, f"{at}.models[{j}]") for j, m in enumerate(e["models"]))
        stems = e.get("stems")
        if not isinstance(stems, list) or not stems or not all(isinstance(x, str) and x for x in stems):
            r.fail(f"{at}.stems", f"expected a list of stem names, got {stems!r}")
        method, weights = e.get("method"), e.get("weights")
        if len(models) == 1 and (method is not None or weights is not None):
            r.fail(f"{at}.{'method' if method is not None else 'weights'}",
                   "one model's stems are taken as they are; drop method and weights, or list several models")
        if len(models) > 1:
            if method is None:
                r.fail(f"{at}.method", f"{len(models)} models need a method to combine them, e.g. avg_wave")
            if isinstance(weights, list):  # each a number in a sane range, named by its index
                weights = [r.number(w, f"{at}.weights[{j}]", low=0.0, high=MAX_WEIGHT) for j, w in enumerate(weights)]
            try:
                weights = check_method(method, weights=weights, models=len(models), where=at)
            except ModelError as exc:
                raise PresetError(f"{r.source}: {exc}") from None
        parts.append(Part(tuple(stems), models, method, weights))
    seen: dict[str, int] = {}
    for i, part in enumerate(parts):
        for stem in part.stems:
            if stem in seen:
                r.fail(f"separator.ensemble[{i}].stems", f"stem '{stem}' is already given by "
                                                         f"separator.ensemble[{seen[stem]}]; name each stem once")
            seen[stem] = i
    if residual is not None:
        r.text(residual, "separator.residual")
    return tuple(parts), residual


def _stem_yaml(s: StemSettings) -> dict:
    gain = float(s.gain_db) if isinstance(s.gain_db, (int, float)) else [list(p) for p in s.gain_db]
    out = {"gain_db": gain, "pan": s.pan, "mute": s.mute, "solo": s.solo, "invert": s.invert,
           "chain": [e.to_yaml() for e in s.chain], "upmix": s.upmix}
    if s.duck is not None:
        out["duck"] = s.duck.to_yaml()
    return out


def _stem_settings(r: fields.Reader, st: dict, where: str, name: str) -> StemSettings:
    """A stem's (or a layer's) mixer settings from its checked mapping."""
    return StemSettings(
        gain_db=r.gain(st.get("gain_db", 0.0), f"{where}.gain_db"),
        pan=r.number(st.get("pan", 0.0), f"{where}.pan", low=-1.0, high=1.0),
        mute=r.boolean(st.get("mute", False), f"{where}.mute"),
        solo=r.boolean(st.get("solo", False), f"{where}.solo"),
        invert=r.boolean(st.get("invert", False), f"{where}.invert"),
        chain=r.chain(st.get("chain"), f"{where}.chain"),
        upmix=r.choice(st["upmix"], f"{where}.upmix", ROLES) if st.get("upmix") is not None else None,
        duck=fields.duck_section(r, st.get("duck"), f"{where}.duck", name))


def parse(data, *, source: str = "<session>", base: Path = Path(".")) -> Session:
    """Validate parsed YAML into a :class:`Session`."""
    r = fields.Reader(source, base)
    if not isinstance(data, dict):
        r.fail("", f"a preset must be a YAML mapping with 'version: {VERSION}' at the top, got {fields.kind_of(data)}")
    check_size(data, source=r.source, what="preset", error=PresetError)
    top = r.mapping(data, "", ("version", "input", "separator", "pre", "stems", "master", "output", "tempo",
                               "automation", "layers"))
    if top.get("version") != VERSION:
        r.fail("version", f"expected {VERSION}, got {top.get('version')!r}; add 'version: {VERSION}' at the top")

    s = r.mapping(top.get("separator"), "separator", ("model", "stems", "overlap", "batch_size", "wiener", "shifts",
                                                      "leftover", "device", "ensemble", "residual"))
    ensemble, residual = _ensemble(r, s)
    stems_list = s.get("stems")
    if stems_list is not None and (not isinstance(stems_list, list) or not all(isinstance(x, str) for x in stems_list)):
        r.fail("separator.stems", f"expected a list of stem names, got {stems_list!r}")
    separator = SeparatorSettings(
        model=r.text(s.get("model", "default"), "separator.model"),
        stems=tuple(stems_list) if stems_list is not None else None,
        overlap=r.number(s["overlap"], "separator.overlap", low=0.0, high=0.99) if s.get("overlap") is not None else None,
        batch_size="auto" if s.get("batch_size") == "auto" else
        r.number(s.get("batch_size", 1), "separator.batch_size", low=1, high=64, integer=True),
        wiener=r.number(s.get("wiener", 0), "separator.wiener", low=0, high=MAX_WIENER, integer=True),
        shifts=r.number(s["shifts"], "separator.shifts", low=0, high=20, integer=True) if s.get("shifts") is not None else None,
        leftover=r.text(s["leftover"], "separator.leftover") if s.get("leftover") is not None else None,
        device=_device(r, s.get("device", "auto")), ensemble=ensemble, residual=residual)

    stems_raw = top.get("stems") or {}
    if not isinstance(stems_raw, dict):
        r.fail("stems", f"expected a mapping of stem name to settings, got {fields.kind_of(stems_raw)}")
    stems = []
    keys = ("gain_db", "pan", "mute", "solo", "invert", "chain", "upmix", "duck")
    for name, raw in stems_raw.items():
        where = f"stems.{name}"
        if not isinstance(name, str):
            r.fail("stems", f"stem names must be strings, got {name!r}")
        stems.append((name, _stem_settings(r, r.mapping(raw, where, keys), where, name)))

    o = r.mapping(top.get("output"), "output", ("layout", "format", "codec", "bitrate", "bit_depth", "sample_rate", "files",
                                                  "loudness_lufs", "true_peak_db", "tail_seconds", "loudness_scope",
                                                  "bwf", "project", "project_stems", "report"))
    files = r.mapping(o.get("files"), "output.files", ("mix", "stems", "nistems", "video"))
    templates = {}
    for key, default in (("mix", OutputSettings.mix), ("stems", None), ("nistems", None), ("video", None)):
        value = files.get(key, default) if key in files or key == "mix" else default
        if value is not None:
            r.text(value, f"output.files.{key}")
            try:
                check_template(value, where=f"output.files.{key}")
            except BridgeError as exc:
                raise PresetError(f"{source}: {exc}") from None
        templates[key] = value
    if all(templates[key] is None for key in ("mix", "stems", "nistems", "video")):
        r.fail("output.files", "nothing to write: give a 'mix' and/or a 'stems' name template")
    rate = o.get("sample_rate", "source")
    fmt = r.choice(o.get("format", "wav"), "output.format", OUTPUT_FORMATS)
    depth = r.choice(o.get("bit_depth", 24), "output.bit_depth", (16, 24, 32))
    codec = r.text(o["codec"], "output.codec") if o.get("codec") is not None else None
    bitrate = r.number(o["bitrate"], "output.bitrate") if o.get("bitrate") is not None else None
    try:
        check_output_format(fmt, bit_depth=depth, codec=codec, bitrate=bitrate)
    except OutputFormatError as exc:
        r.fail(f"output.{exc.key}", str(exc))
    try:
        check_rate(fmt, None if rate == "source" else rate)
    except BridgeError as exc:
        r.fail("output.sample_rate", str(exc))
    output = OutputSettings(
        layout=r.choice(str(o.get("layout", "stereo")), "output.layout", LAYOUTS),
        format=fmt, bit_depth=depth, codec=codec, bitrate=bitrate,
        sample_rate=None if rate == "source" else r.number(rate, "output.sample_rate", low=8000, high=192000, integer=True),
        mix=templates["mix"], stems=templates["stems"],
        loudness_lufs=r.number(o["loudness_lufs"], "output.loudness_lufs", low=-70.0, high=0.0)
        if o.get("loudness_lufs") is not None else None,
        true_peak_db=r.number(o.get("true_peak_db", -1.0), "output.true_peak_db", low=-20.0, high=0.0),
        tail_seconds=r.number(o.get("tail_seconds", 2.0), "output.tail_seconds", low=0.0, high=60.0),
        loudness_scope=r.choice(o.get("loudness_scope", "track"), "output.loudness_scope", SCOPES),
        bwf=r.boolean(o.get("bwf", True), "output.bwf"),
        project=r.choice(o["project"], "output.project", PROJECTS) if o.get("project") is not None else None,
        project_stems=r.choice(o.get("project_stems", "processed"), "output.project_stems", PROJECT_STEMS),
        nistems=templates["nistems"], video=templates["video"],
        report=r.boolean(o.get("report", False), "output.report"))
    if output.loudness_scope == "album" and output.loudness_lufs is None:
        r.fail("output.loudness_scope", "album loudness needs a target: set output.loudness_lufs too (e.g. "
                                        "--set output.loudness_lufs=-14), or leave loudness_scope at track")
    if output.project and not output.stems:  # a project needs stem files to reference
        output = dataclasses.replace(output, stems=PROJECT_STEMS_TEMPLATE)
    if output.nistems is not None and output.layout != "stereo":
        r.fail("output.files.nistems", "NI Stems files are stereo; use layout stereo for them")
    if output.nistems is not None and not output.nistems.endswith(".stem.mp4"):
        r.fail("output.files.nistems", f"'{output.nistems}' must end in .stem.mp4, the extension Traktor and "
                                       "Mixxx look for; e.g. \"{track}.stem.mp4\"")
    if output.layout == "5.1" and output.format == "mp3":
        r.fail("output.format", "mp3 holds at most 2 channels; use wav, flac, m4a or opus for 5.1")
    i = r.mapping(top.get("input"), "input", ("stream",))
    inputs = InputSettings(stream=r.number(i["stream"], "input.stream", low=0, high=1000, integer=True)
                           if i.get("stream") is not None else None)
    session = Session(separator=separator, pre=r.chain(top.get("pre"), "pre"), stems=tuple(stems),
                      master=r.chain(top.get("master"), "master"), output=output, source=source, input=inputs)
    tempo = fields.tempo_section(r, top.get("tempo"))
    session = dataclasses.replace(session, tempo=tempo, layers=_layers(r, top.get("layers"), tempo, session))
    lanes = fields.automation_section(r, top.get("automation"), session, tempo)
    return dataclasses.replace(session, automation=lanes)


_LAYER_KEYS = ("instrument", "midi", "track", "channel", "transpose", "velocity", "start")


def _layers(r: fields.Reader, value, tempo: Tempo | None, session: Session):
    """Parse ``layers:``; each MIDI file is read now, so a bad one fails before any audio work."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        r.fail("layers", f"expected a mapping of layer name to settings, got {fields.kind_of(value)}")
    out = []
    stem_keys = ("gain_db", "pan", "mute", "solo", "invert", "chain", "upmix", "duck")
    for name, raw in value.items():
        where = f"layers.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            r.fail("layers", f"layer names must be plain words (they name files and automation targets), got {name!r}")
        if name in dict(session.stems):
            r.fail(where, f"'{name}' is already a stem in 'stems:'; name the layer differently")
        st = r.mapping(raw, where, _LAYER_KEYS + stem_keys)
        for key in ("instrument", "midi"):
            if key not in st:
                r.fail(where, f"a layer needs '{key}:' (instrument: a VST3 instrument by name or path; midi: a .mid file)")
        instrument = st["instrument"]
        if isinstance(instrument, str):
            instrument = {"vst3": instrument}
        if not isinstance(instrument, dict) or "vst3" not in instrument:
            r.fail(f"{where}.instrument", "expected a VST3 instrument: a name, a path, or {vst3: ..., params: {...}}")
        spec = r.effect(instrument, f"{where}.instrument")
        try:
            start = automation.parse_time(st.get("start", 0.0), tempo=tempo)
        except ValueError as exc:
            r.fail(f"{where}.start", str(exc))
        path = r.text(st["midi"], f"{where}.midi")
        layer = LayerSettings(
            instrument=spec, midi=path,
            track=r.number(st["track"], f"{where}.track", low=0, high=65535, integer=True)
            if st.get("track") is not None else None,
            channel=r.number(st["channel"], f"{where}.channel", low=1, high=16, integer=True)
            if st.get("channel") is not None else None,
            transpose=r.number(st.get("transpose", 0), f"{where}.transpose", low=-48, high=48, integer=True),
            velocity=r.number(st.get("velocity", 1.0), f"{where}.velocity", low=0.0, high=4.0),
            start=start, start_written=st.get("start", 0.0), base=r.base)
        song = midi.read(layer.path(), where=f"{r.source}: {where}.midi")
        midi.performance(song, track=layer.track, channel=layer.channel, where=f"{r.source}: {where}")
        out.append((name, layer, _stem_settings(r, st, where, name)))
    return tuple(out)



def apply_overrides(data, overrides, *, source: str):
    """Apply ``key.path=value`` strings (values parsed as YAML) to parsed preset data."""
    for item in overrides:
        if "=" not in item:
            raise PresetError(f"--set {item}: expected key.path=value, e.g. stems.vocals.gain_db=6")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PresetError(f"--set {item}: the value is not valid YAML{_quote_hint(path, raw)}") from None
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            if not isinstance(node, dict):
                raise PresetError(f"{source}: --set {path}: '{key}' is not inside a mapping")
            node = node.setdefault(key, {})
            if node is None:
                node = {}
        if not isinstance(node, dict):
            raise PresetError(f"{source}: --set {path}: cannot set a key inside {fields.kind_of(node)}")
        node[keys[-1]] = value
    return data


def _quote_hint(path: str, raw: str) -> str:
    """A hint for a ``--set`` value YAML reads as a mapping or list: a name template's braces."""
    if not raw.lstrip().startswith(("{", "[")):
        return ""
    return (f"; YAML reads {{...}} and [...] as a mapping or a list: quote a name template inside the argument, "
            f"e.g. --set '{path.strip()}=\"{raw.strip()}\"'")


def _blame_override(exc: PresetError, overrides, source: str) -> PresetError:
    """A preset error at a key a ``--set`` argument wrote names that argument, not the preset file."""
    message = str(exc)
    for item in overrides:
        path, _, raw = item.partition("=")
        prefix = f"{source}: {path.strip()}"
        if message.startswith(prefix + ":") or message.startswith(prefix + "."):
            rest = message[len(source) + 2:]
            return PresetError(f"--set {item}: {rest}{_quote_hint(path, raw)}")
    return exc


def load(path, *, overrides=()) -> Session:
    """Read, override and validate a preset file."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise PresetError(f"{source}: the preset is larger than {MAX_BYTES} bytes; is it really a preset?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(f"{source}: no such preset file; check the path (ready presets are in presets/)") from None
    except IsADirectoryError:
        raise PresetError(f"{source}: is a folder; pass a preset .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        hint = "; save it as UTF-8" if isinstance(exc, UnicodeDecodeError) else "; check its permissions"
        raise PresetError(f"{source}: cannot read the preset ({exc}){hint}") from None
    try:
        data = load_yaml(text, source=source, error=PresetError)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, as every message
        raise PresetError(f"{source}: not valid YAML{at} ({reason})") from None
    except RecursionError:
        raise PresetError(f"{source}: the YAML is nested too deeply") from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, source=source)
    try:
        return parse(data, source=source, base=path.resolve().parent)
    except PresetError as exc:
        if not overrides:
            raise
        raise _blame_override(exc, overrides, source) from None
    except RecursionError:
        raise PresetError(f"{source}: the preset is nested too deeply (or refers to itself with YAML anchors)") from None


def _device(r, value) -> str:
    """``separator.device`` as written, checked for its form only (what this machine has is checked
    when the model loads: a preset may name a device another machine has)."""
    from ..separation.devices import DeviceError, parse_device

    try:
        parse_device(value)
    except DeviceError as exc:
        r.fail("separator.device", str(exc).replace("device ", "", 1))
    return value.strip().lower()
