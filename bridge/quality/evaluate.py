"""Separation quality against reference stems: BSS Eval v4 SDR, SIR, SAR, ISR and SI-SDR, per song and stem.

Conventions
-----------
- Reference songs are found and loaded by :mod:`bridge.quality.references` (its docstring says how a
  references folder is laid out and how lengths are trimmed).
- Every stem the model gives is scored against the reference of that name, and so are the sums
  the model gives (:func:`bridge.separation.models.derived_stems`: a 4-stem model's ``instrumental`` is
  drums + bass + other) wherever the song has that reference.
- **SDR** is BSS Eval v4 as museval computes it for SiSEC/MUSDB18: ``bss_eval`` images with
  one set of distortion filters (512 taps) for the whole song, on 1 s frames with a 1 s hop,
  then the median over frames, ignoring NaN frames (museval's marker for a frame where a
  reference or estimate of the group is silent). Per frame it equals
  ``10 log10(|s|^2 / |s_hat - s|^2)``: the filters only split the error into spatial,
  interference and artifact parts, so SDR is *not* scale-invariant (an estimate at half level
  scores 6.02 dB) and an exact estimate scores ``+inf`` (museval does not cap it).
  Stems are scored jointly as SiSEC does: the model's stems without ``instrumental`` form one
  group, and ``vocals`` with ``instrumental`` another (the instrumental is a sum of the other
  references, so it cannot be projected together with them); the vocals score comes from the
  vocals/instrumental pair.
- **SIR, SAR, ISR** come from the same ``bss_eval`` call, frames and median as SDR (Vincent et al.,
  "Performance measurement in blind audio source separation", 2006; SiSEC 2018's v4): the error
  split into interference from the other sources of the group (SIR), artifacts (SAR) and spatial
  distortion (ISR, the source image against its filtered self). A frame NaN for SDR is NaN for
  all four. A silent estimate scores ``-inf`` for all four; a silent reference ``nan``.
- **SI-SDR** (Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019) over the whole
  song, channels concatenated, without mean removal: ``+inf`` for an estimate that is an exact
  multiple of the reference.
- Non-finite scores: a stem whose whole estimate is silence gets ``-inf`` for both metrics
  (museval refuses all-zero estimates; ``-inf`` keeps the failure in the medians). A stem whose
  whole reference is silence, or whose every frame is NaN, gets ``nan`` (not measurable) and is
  left out of the median. Medians over songs use the stems' per-song scores.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..audio import partials
from ..errors import AudioError, BridgeError, ModelError
from ..separation import Separator, WholeSongStream
from ..separation.models import canonical_stem, derived_stems
from .references import Song, SongFiles, find_songs, load_song

#: Frame length and hop of the framewise SDR, in seconds (SiSEC 2018).
FRAME_SECONDS = 1.0
#: The oracle's STFT (window and hop in samples, as the Spleeter/MDX pipelines use).
ORACLE_N_FFT, ORACLE_HOP = 4096, 1024

Progress = Callable[[int, int], None]


# --- metrics -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _museval_bss_eval():
    """museval's ``metrics.bss_eval``, loaded without the museval package.

    ``import museval`` imports musdb and stempeg, and stempeg raises at import when ffmpeg is not
    installed; ``museval/metrics.py`` needs only numpy and scipy, so it is loaded from its file.
    """
    spec = importlib.util.find_spec("museval")
    if spec is None or not spec.submodule_search_locations:
        raise BridgeError("museval is not installed; install it with: pip install 'museval>=0.4.1,<0.5'")
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("_bridge_museval_metrics", path)
    if module_spec is None or not path.is_file():
        raise BridgeError(f"{path}: museval's metrics module is missing; reinstall museval (pip install 'museval>=0.4.1,<0.5')")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.bss_eval


def sources_samples_channels(stems: Sequence[np.ndarray]) -> np.ndarray:
    """``[(channels, samples), ...]`` -> ``(sources, samples, channels)`` float64, museval's layout."""
    return np.moveaxis(np.stack([np.asarray(s, dtype=np.float64) for s in stems]), 1, 2)


def _silent(audio: np.ndarray) -> bool:
    # museval's own test (metrics._any_source_silent): every sample's channel sum is zero.
    return not np.any(np.sum(audio, axis=0))


def framewise_sdr(references: Sequence[np.ndarray], estimates: Sequence[np.ndarray], *,
                  sample_rate: int) -> np.ndarray:
    """BSS Eval v4 SDR on 1 s frames, as ``museval.evaluate(refs, ests, win=sr, hop=sr)``.

    Parameters
    ----------
    references, estimates : sequence of ndarray, shape (channels, samples)
        One per source, all the same shape; none all zeros.
    sample_rate : int
        In Hz; sets the frame length.

    Returns
    -------
    ndarray, shape (sources, frames), float64
        SDR in dB; NaN where a reference or an estimate of any source is silent in the frame.
    """
    return framewise_bss_eval(references, estimates, sample_rate=sample_rate)["sdr"]


#: The four BSS Eval v4 metrics, in the order the table and the JSON give them.
BSS_METRICS = ("sdr", "sir", "sar", "isr")


def framewise_bss_eval(references: Sequence[np.ndarray], estimates: Sequence[np.ndarray], *,
                       sample_rate: int) -> dict[str, np.ndarray]:
    """BSS Eval v4 SDR, SIR, SAR and ISR on 1 s frames (one ``bss_eval`` call, as museval's
    ``evaluate(refs, ests, win=sr, hop=sr)``); see :func:`framewise_sdr` for the arguments.

    Returns
    -------
    dict of str to ndarray, shape (sources, frames), float64
        By metric name (:data:`BSS_METRICS`), in dB; NaN where a reference or an estimate of any
        source is silent in the frame.
    """
    frame = int(round(FRAME_SECONDS * sample_rate))
    sdr, isr, sir, sar, _perm = _museval_bss_eval()(
        sources_samples_channels(references), sources_samples_channels(estimates),
        window=frame, hop=frame, compute_permutation=False, framewise_filters=False,
        bsseval_sources_version=False,
    )
    return {name: np.asarray(value, dtype=np.float64)
            for name, value in (("sdr", sdr), ("sir", sir), ("sar", sar), ("isr", isr))}


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB over the whole signal, channels concatenated.

    ``+inf`` for an exact multiple of the reference, ``-inf`` for a silent estimate, ``nan`` for
    a silent reference.
    """
    s = np.asarray(reference, dtype=np.float64).ravel()
    e = np.asarray(estimate, dtype=np.float64).ravel()
    energy = s @ s
    if energy == 0:
        return math.nan
    target = (e @ s) / energy * s
    error = e - target
    num, den = target @ target, error @ error
    if num == 0:
        return -math.inf
    if den == 0:
        return math.inf
    return float(10 * np.log10(num / den))


def _median(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else math.nan


# --- the oracle -----------------------------------------------------------------------------------

def ideal_ratio_mask(mixture: np.ndarray, sources: Mapping[str, np.ndarray], *, n_fft: int = ORACLE_N_FFT,
                     hop: int = ORACLE_HOP) -> dict[str, np.ndarray]:
    """The oracle: each source's Wiener-style mask ``|S_i|^2 / sum_j |S_j|^2`` applied to the mixture.

    Parameters
    ----------
    mixture : ndarray, shape (channels, samples), float32
    sources : mapping of str to ndarray, shape (channels, samples)
        The references that make up the mixture (no source may be the sum of others).
    n_fft, hop : int
        STFT window and hop in samples (periodic Hann, centred).

    Returns
    -------
    dict of str to ndarray, shape (channels, samples), float32
    """
    from ..separation.spectral import Stft

    samples = mixture.shape[-1]
    if samples <= n_fft // 2:
        raise AudioError(f"the oracle needs more than {n_fft // 2} samples per song, got {samples}")
    stft = Stft(n_fft, hop)
    mix = stft.forward(np.asarray(mixture, dtype=np.float32))
    powers = {name: np.abs(stft.forward(np.asarray(s, dtype=np.float32))) ** 2 for name, s in sources.items()}
    total = sum(powers.values())
    # Bins where every source is silent are shared equally, so the masks still sum to one.
    share = np.float32(1.0 / len(powers))
    out = {}
    for name, power in powers.items():
        mask = np.divide(power, total, out=np.full_like(power, share), where=total > 0)
        out[name] = stft.inverse(mix * mask, samples)
    return out


class Oracle:
    """Ideal-ratio-mask "separator" for one song, built from its references (a
    :class:`~bridge.separation.Separator` with no model card: never cached)."""

    name = "oracle"
    settings: dict = {}
    card = None
    residual = None  # the masks share the mix, but nothing is set to the mix minus the others

    def __init__(self, song: "Song"):
        self.song = song
        self.stems = tuple(song.references)

    def stream(self, *, sample_rate: int, channels: int) -> WholeSongStream:
        return WholeSongStream(self, sample_rate=sample_rate, channels=channels)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        atoms = {s: self.song.references[s] for s in self.song.atoms}
        out = ideal_ratio_mask(audio, atoms)
        if "instrumental" in self.song.references and "instrumental" not in out:
            out["instrumental"] = sum(a for s, a in out.items() if s != "vocals")
        return out


class NoSplit:
    """The no-split yardstick: a 2-stem separator's instrumental as the estimate of every other stem.

    What a 4-stem user gets without a split; a 4-stem separator has to beat it on drums, bass and
    other. Not a separator to render with: its stems do not sum to the mix.

    Parameters
    ----------
    separator : Separator
        Gives ``vocals`` and ``instrumental``.
    parts : tuple of str
        The stems that get the instrumental as their estimate.
    """

    card = None  # a yardstick, not a model's output: never cached
    residual = None

    def __init__(self, separator: Separator, parts: tuple[str, ...] = ("drums", "bass", "other")):
        if not {"vocals", "instrumental"} <= set(separator.stems):
            raise ModelError(f"no-split needs a vocals/instrumental model, '{separator.name}' "
                             f"gives {', '.join(separator.stems)}; use --model default")
        self.separator = separator
        self.parts = tuple(parts)
        self.name = f"no-split ({separator.name})"
        self.stems = ("vocals", "instrumental") + self.parts
        self.settings = dict(separator.settings)

    def stream(self, *, sample_rate: int, channels: int) -> WholeSongStream:
        return WholeSongStream(self, sample_rate=sample_rate, channels=channels)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        out = self.separator(audio, sample_rate)
        inst = out["instrumental"]
        return {"vocals": out["vocals"], "instrumental": inst, **{s: inst.copy() for s in self.parts}}


# --- reference folders ---------------------------------------------------------------------------

# --- the report ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StemScore:
    """One stem of one song. ``frames`` counts the 1 s frames the BSS Eval medians are taken over."""

    song: str
    stem: str
    sdr: float
    si_sdr: float
    frames: int
    sir: float = math.nan
    sar: float = math.nan
    isr: float = math.nan


#: The table's and the JSON's columns: BSS Eval v4's four, then SI-SDR.
_METRICS = (*BSS_METRICS, "si_sdr")
_LABELS = {"sdr": "SDR", "sir": "SIR", "sar": "SAR", "isr": "ISR", "si_sdr": "SI-SDR"}


def _json_number(value: float):
    return round(value, 4) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Report:
    """Scores of one model over a references folder.

    Attributes
    ----------
    model : str
    references : Path
    scores : tuple of StemScore
        In song order, then in the model's stem order.
    notes : tuple of str
        Trimmed files, unscored stems, silent references or estimates.
    seconds : float
        Wall time of the whole evaluation.
    settings : dict
        The separator's settings besides the model (overlap, Wiener iterations, ...).
    """

    model: str
    references: Path
    scores: tuple[StemScore, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.stem for s in self.scores))

    @property
    def songs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.song for s in self.scores))

    def medians(self) -> dict[str, dict[str, float]]:
        """Per stem: median SDR, SIR, SAR, ISR and SI-SDR over songs (NaN songs left out, per
        metric), and how many songs the stem was scored on."""
        out = {}
        for stem in self.stems:
            rows = [s for s in self.scores if s.stem == stem]
            out[stem] = {**{m: _median(getattr(s, m) for s in rows) for m in _METRICS}, "songs": len(rows)}
        return out

    def table(self) -> str:
        """Aligned plain text: song, stem, SDR, SIR, SAR, ISR, SI-SDR (dB), then a median row per stem."""
        width = max([len(s.song) for s in self.scores] + [len("median (999 songs)")])
        stem_width = max([len(s) for s in self.stems] + [len("stem")])

        def row(song: str, stem: str, values) -> str:
            return f"{song:<{width}}  {stem:<{stem_width}}" + "".join(f"  {v:7.2f}" for v in values)

        lines = [f"{'song':<{width}}  {'stem':<{stem_width}}" + "".join(f"  {_LABELS[m]:>7}" for m in _METRICS)]
        lines += [row(s.song, s.stem, [getattr(s, m) for m in _METRICS]) for s in self.scores]
        lines.append("-" * len(lines[0]))
        for stem, m in self.medians().items():
            label = f"median ({m['songs']} song{'s' if m['songs'] != 1 else ''})"
            lines.append(row(label, stem, [m[k] for k in _METRICS]))
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-ready dict; non-finite scores (see the module notes) become ``null``."""
        songs: dict[str, dict] = {}
        for s in self.scores:
            songs.setdefault(s.song, {})[s.stem] = {**{m: _json_number(getattr(s, m)) for m in _METRICS},
                                                    "frames": s.frames}
        return {
            "model": self.model,
            "settings": self.settings,
            "references": str(self.references),
            "metrics": {"sdr": "BSS Eval v4 (museval), median over 1 s frames, dB",
                        "sir": "BSS Eval v4 source-to-interference ratio, median over 1 s frames, dB",
                        "sar": "BSS Eval v4 source-to-artifacts ratio, median over 1 s frames, dB",
                        "isr": "BSS Eval v4 source-image-to-spatial-distortion ratio, median over 1 s frames, dB",
                        "si_sdr": "scale-invariant SDR over the whole song, dB"},
            "median": {stem: {**{k: _json_number(m[k]) for k in _METRICS}, "songs": m["songs"]}
                       for stem, m in self.medians().items()},
            "songs": songs,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 2),
        }

    def write_json(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a partial file renamed when complete)."""
        text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        return partials.write_text_atomic(path, text, what="report")


# --- evaluation --------------------------------------------------------------------------------------

def _groups(stems: Sequence[str]) -> list[list[str]]:
    """SiSEC's scoring groups: the stems without instrumental, and vocals + instrumental."""
    if "instrumental" not in stems or len([s for s in stems if s not in ("vocals", "instrumental")]) == 0:
        return [list(stems)]
    rest = [s for s in stems if s != "instrumental"]
    pair = [s for s in stems if s in ("vocals", "instrumental")]
    return [rest, pair]  # later groups win: vocals is scored with the instrumental


def score_song(song: Song, estimates: Mapping[str, np.ndarray], stems: Sequence[str]) -> tuple[list[StemScore], list[str]]:
    """Score ``stems`` of one song; return the scores (in ``stems`` order) and notes."""
    notes: list[str] = []
    result: dict[str, tuple[dict, int]] = {}
    for group in _groups(stems):
        live = []
        for stem in group:
            if _silent(song.references[stem]):
                result[stem] = (dict.fromkeys(BSS_METRICS, math.nan), 0)
                notes.append(f"{song.name}: the {stem} reference is silence; not scored (nan)")
            elif _silent(estimates[stem]):
                result[stem] = (dict.fromkeys(BSS_METRICS, -math.inf), 0)
                notes.append(f"{song.name}: the {stem} estimate is silence; scored -inf")
            else:
                live.append(stem)
        if not live:
            continue
        metrics = framewise_bss_eval([song.references[s] for s in live], [estimates[s] for s in live],
                                     sample_rate=song.sample_rate)
        for i, stem in enumerate(live):
            counted = int(np.count_nonzero(~np.isnan(metrics["sdr"][i])))
            result[stem] = ({m: _median(metrics[m][i]) for m in BSS_METRICS}, counted)
    scores = []
    for stem in stems:
        bss, frames = result[stem]
        scores.append(StemScore(song.name, stem, bss["sdr"], si_sdr(song.references[stem], estimates[stem]), frames,
                                sir=bss["sir"], sar=bss["sar"], isr=bss["isr"]))
    return scores, notes


def evaluate(separator, references, *, progress: Progress | None = None, stream: int | None = None) -> Report:
    """Separate every song under ``references`` and score each stem that has a reference.

    Songs are loaded whole (reference folders hold short excerpts; see the module notes).

    Parameters
    ----------
    separator : Separator or "oracle" or str
        A separator (``separator(audio, sample_rate) -> {stem: audio}`` with a ``stems`` tuple),
        ``"oracle"`` for the ideal ratio mask of each song's own references (an upper yardstick,
        not a model), or a model name for :func:`bridge.separation.load_separator`.
    references : path-like
        Folder of songs: ``<song>/mixture.<ext>`` and ``<song>/<stem>.<ext>``, found recursively.
    progress : callable, optional
        Called as ``progress(songs_done, songs_total)``.
    stream : int, optional
        The mixtures' audio stream (``--stream``; default: each file's default one).

    Returns
    -------
    Report

    Raises
    ------
    AudioError
        No songs, unreadable files, files of a song that disagree (named in the message).
    ModelError
        A separator returning stems of the wrong shape; no stem of the model has a reference.
    """
    start = time.perf_counter()
    oracle = isinstance(separator, str) and separator == "oracle"
    if isinstance(separator, str) and not oracle:
        from ..separation import load_separator
        separator = load_separator(separator)
    model = "oracle" if oracle else separator.name
    songs = find_songs(references, stream=stream)  # every header checked before any separation
    notes = [f"{s.name}: files trimmed by up to {s.trimmed} samples to the shortest ({s.frames} samples)"
             for s in songs if s.trimmed]
    scores: list[StemScore] = []
    if progress:
        progress(0, len(songs))
    for done, files in enumerate(songs, 1):
        song = load_song(files)
        run = Oracle(song) if oracle else separator
        song_scores, song_notes = _score_estimates(model, song, files, run(song.mixture, song.sample_rate))
        scores += song_scores
        notes += song_notes
        if progress:
            progress(done, len(songs))
    if not scores:
        held = sorted({s for f in songs for s in f.stems})
        raise ModelError(
            f"{references}: no stem of {model} has a reference (the references hold {', '.join(held) or 'no stems'}); "
            "add <song>/<stem>.<ext> files named like the model's stems (vocals, drums, bass, other, instrumental)"
        )
    return Report(model, Path(references), tuple(scores), tuple(notes), time.perf_counter() - start,
                  settings={} if oracle else dict(separator.settings))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Several models and ensembles scored on the same songs (:func:`compare`): one :class:`Report`
    each, by name, in the order given (models first)."""

    reports: dict

    def table(self) -> str:
        """Per stem, each model and ensemble's median SDR, SIR, SAR, ISR and SI-SDR over the songs;
        ``*`` marks the best SDR of the stem."""
        names = list(self.reports)
        stems = list(dict.fromkeys(s for r in self.reports.values() for s in r.stems))
        width = max([len(n) for n in names] + [len("model / ensemble")])
        stem_width = max([len(s) for s in stems] + [len("stem")])
        header = (f"{'stem':<{stem_width}}  {'model / ensemble':<{width}}  {'SDR':>7} "
                  + "".join(f" {_LABELS[k]:>7}" for k in _METRICS if k != "sdr") + "  songs")
        lines = [header, "-" * len(header)]
        for stem in stems:
            rows = [(name, self.reports[name].medians().get(stem)) for name in names]
            rows = [(name, m) for name, m in rows if m is not None]
            finite = [m["sdr"] for _, m in rows if math.isfinite(m["sdr"])]
            best = max(finite) if finite else None
            for name, m in rows:
                mark = "*" if best is not None and m["sdr"] == best else " "
                lines.append(f"{stem:<{stem_width}}  {name:<{width}}  {m['sdr']:7.2f}{mark}"
                             + "".join(f" {m[k]:7.2f}" for k in _METRICS if k != "sdr") + f"  {m['songs']}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {name: report.to_json() for name, report in self.reports.items()}

    def write_json(self, path) -> Path:
        text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        return partials.write_text_atomic(path, text, what="report")


def compare(models: Mapping[str, Separator], references, *, ensembles: Mapping[str, object] = (),
            progress: Progress | None = None, stream: int | None = None) -> Comparison:
    """Score several models and ensembles of them on every song under ``references``.

    Each model separates each song once; every ensemble (an
    :class:`~bridge.separation.ensemble.EnsembleSeparator` whose models are among ``models``, by
    the same names) is computed from those stems, so trying many combinations costs one run of
    each model.

    Parameters
    ----------
    models : mapping of str to Separator
        By the name the ensembles use for them.
    ensembles : mapping of str to EnsembleSeparator
        By the name the table shows.
    stream : int, optional
        The mixtures' audio stream, as :func:`evaluate`.
    """
    from ..separation.ensemble import StoredStream

    start = time.perf_counter()
    ensembles = dict(ensembles or {})
    for name, ensemble in ensembles.items():
        unknown = [m for m in ensemble.members if m not in models]
        if unknown:
            raise ModelError(f"ensemble '{name}': model '{unknown[0]}' is not among the models scored "
                             f"({', '.join(models)}); add --model {unknown[0]}")
    songs = find_songs(references, stream=stream)
    trims = tuple(f"{s.name}: files trimmed by up to {s.trimmed} samples to the shortest ({s.frames} samples)"
                  for s in songs if s.trimmed)
    names = {n: n for n in [*models, *ensembles]}
    scores = {n: [] for n in names}
    notes = {n: list(trims) for n in names}
    if progress:
        progress(0, len(songs))
    for done, files in enumerate(songs, 1):
        song = load_song(files)
        raw = {m: sep(song.mixture, song.sample_rate) for m, sep in models.items()}
        for e, ensemble in ensembles.items():
            stream = ensemble.stream(sample_rate=song.sample_rate, channels=song.mixture.shape[0],
                                     member_streams={m: StoredStream(raw[m]) for m in ensemble.members})
            parts = [stream.process(song.mixture), stream.finish()]
            raw[e] = {s: np.concatenate([p[s] for p in parts], axis=1) for s in ensemble.stems}
        for name in names:
            got, got_notes = _score_estimates(names[name], song, files, raw[name])
            scores[name] += got
            notes[name] += got_notes
        if progress:
            progress(done, len(songs))
    seconds = time.perf_counter() - start
    reports = {}
    for name in names:
        if not scores[name]:
            raise ModelError(f"{references}: no stem of {names[name]} has a reference; add <song>/<stem>.<ext> "
                             "files named like its stems (vocals, drums, bass, other, instrumental)")
        source = models.get(name) or ensembles[name]
        reports[names[name]] = Report(names[name], Path(references), tuple(scores[name]), tuple(notes[name]), seconds,
                                      settings=dict(getattr(source, "settings", {})))
    return Comparison(reports)


def _score_estimates(model: str, song, files, raw: Mapping[str, np.ndarray]) -> tuple[list, list]:
    """One separator's stems of one song, scored where the song has references (as :func:`evaluate`)."""
    notes = []
    estimates = {canonical_stem(k): v for k, v in raw.items()}
    for name, parts in derived_stems(tuple(estimates)).items():
        if name in song.references:
            estimates[name] = np.sum([estimates[p] for p in parts], axis=0, dtype=np.float32)
    for stem, audio in estimates.items():
        if audio.shape != song.mixture.shape:
            raise ModelError(f"{model}: stem '{stem}' of {files.mixture} has shape {audio.shape}, "
                             f"expected the mixture's {song.mixture.shape}; the separator breaks the buffer contract")
    stems = [s for s in estimates if s in song.references]
    missing = [s for s in estimates if s not in song.references]
    if missing:
        notes.append(f"{files.name}: no reference for {', '.join(missing)}; not scored")
    got, song_notes = score_song(song, estimates, stems)
    return got, notes + song_notes


__all__ = ["Comparison", "compare", "Report", "StemScore", "Song", "SongFiles", "evaluate", "find_songs", "load_song",
           "score_song", "framewise_sdr", "framewise_bss_eval", "BSS_METRICS", "si_sdr", "ideal_ratio_mask", "Oracle",
           "NoSplit", "sources_samples_channels"]
