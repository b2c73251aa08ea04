"""Demucs separators: Hybrid Transformer Demucs (htdemucs, htdemucs_ft, htdemucs_6s) and Hybrid
Demucs (hdemucs_mmi) in ONNX.

HT-Demucs (Rouard, Massa and Défossez, "Hybrid Transformers for Music Source Separation", ICASSP
2023) has two branches: a time branch reading the waveform and a frequency branch reading its
complex spectrogram, joined by a cross-domain transformer; the output is the time branch's
waveform plus the inverse STFT of the frequency branch's spectrogram. ``stembridge models import``
(:mod:`bridge.importers.demucs`) exports the network between the transforms, so per chunk of
``segment`` samples this module:

1. computes Demucs's spectrogram of the chunk (``HTDemucs._spec``): reflect-pad by ``3 * hop / 2``
   (and up to a whole number of hops), centred STFT with a periodic Hann window of ``n_fft``,
   hop ``n_fft / 4``, scaled by ``1 / sqrt(n_fft)`` (``normalized=True``), the Nyquist bin and two
   frames at each end dropped; real and imaginary parts become channels (``cac``: L.re, L.im,
   R.re, R.im);
2. runs the model on ``(mix, spectrogram)``: it standardises both itself (``HTDemucs.forward``'s
   mean/std of the chunk) and returns the frequency branch's spectrogram and the time branch's
   waveform per stem;
3. inverts the spectrogram (``HTDemucs._ispec``: the Nyquist bin and edge frames padded back with
   zeros, ``torch.istft`` with ``normalized=True``) and adds the time branch.

Hybrid Demucs (Défossez, "Hybrid Spectrogram and Waveform Source Separation", MDX Workshop 2021;
``HDemucs``, card architecture ``hdemucs``) has the same two branches and transforms, merged by
convolutions instead of a transformer; its graph takes chunks of any length (free time axes).

Chunking (``demucs.apply.apply_model``)
---------------------------------------
Chunks of ``segment`` samples start every ``stride = int(0.75 * segment)`` samples from sample 0,
while the start lies inside the song; a chunk that runs past the end is, for HTDemucs, centred in a
window of ``segment`` samples (the audio before it, zeros after the end) and its output cut back to
its length; HDemucs has no valid length, so there it runs as it is, at its own length (the
network's standardisation, attention and BLSTM depend on that length). Outputs are weighted with
Demucs's triangle (transition power 1), added and divided by the summed weights. ``shifts`` N
(Demucs's shift trick) runs the whole split N times on the song delayed by a random
``0 <= s <= 0.5 s`` of zeros, drops the first ``s`` output samples and averages; here the delays come from
``numpy.random.default_rng(seed)``, so a rerun gives the same output. A bag (``htdemucs_ft``) runs
each model with its own delays and mixes the stems by the bag's ``weights`` (``sum_m w[m, k]
est_m[k] / sum_m w[m, k]``); a model whose weights are zero for every stem asked for is not run
(htdemucs_ft's one-hot matrix: each specialist for its own stem).

Everything streams: chunks run as soon as their samples arrive and output is given out as soon as
no later chunk covers it, so memory is flat in song length.

Normalisation: ``apply_model`` does not normalise; the model standardises each chunk itself.
Demucs's command line (``demucs.api.Separator``) additionally standardises the whole track by its
mean and std before ``apply_model`` and undoes it after, which needs the whole song before the
first chunk. That is not done here: the model's own per-chunk standardisation makes it nearly a
no-op (it differs only through the ``1e-5`` in the model's ``std`` and the zeros padded beyond the
song's ends; ``tests/test_demucs.py`` measures the difference on real music).

Stems are as Demucs gives them: they need not sum to the mix. ``leftover`` (preset key
``separator.leftover``, or ``residual`` in the card) names a stem that also receives the leftover,
``mix - sum(stems)``: that stem becomes ``mix - sum(other stems)`` (the runner's residual stem) and
a remix at 0 dB equals the input.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .families import Family, Found, register
from .models import ModelCard, canonical_stem, verify_file
from .peek import global_name, read_config, torch_object
from .demucs_apply import DemucsOverlapAdd
from .runtime import Runner, open_session, static_dims
from .spectral import Stft

#: Demucs's ``apply_model`` default overlap (the most a shift delays the song is in :mod:`.demucs_apply`).
OVERLAP = 0.25
#: ``htdemucs``: HTDemucs (v4), fixed-length chunks; ``hdemucs``: HDemucs (v3 hybrid), the last
#: chunks at their own length.
ARCHITECTURES = ("htdemucs", "hdemucs")


@dataclasses.dataclass(frozen=True)
class Member:
    """One network of a Demucs card: its ONNX file, sha256, segment (samples) and bag signature."""

    file: str
    sha256: str
    segment: int
    signature: str


def parse_members(card: ModelCard) -> tuple[tuple[Member, ...], np.ndarray]:
    """The card's networks and its weights matrix ``(models, stems)`` float64, validated."""
    data = card.demucs or {}
    source = card.source
    raw = data.get("models")
    if not isinstance(raw, list) or not raw:
        raise ModelError(f"{source}: a demucs card needs 'demucs: models:', a list of the networks' files")
    members = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not all(k in entry for k in ("file", "sha256", "segment")):
            raise ModelError(f"{source}: demucs.models[{i}] needs file, sha256 and segment")
        segment = entry["segment"]
        if not isinstance(segment, int) or isinstance(segment, bool) or segment <= card.n_fft:
            raise ModelError(f"{source}: demucs.models[{i}].segment must be a whole number of samples above "
                             f"n_fft {card.n_fft}, got {segment!r}")
        members.append(Member(str(entry["file"]), str(entry["sha256"]), segment, str(entry.get("signature", ""))))
    weights = data.get("weights")
    if weights is None:
        matrix = np.ones((len(members), len(card.stems)))
    else:
        try:
            matrix = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError(f"{source}: demucs.weights must be a matrix of numbers, got {weights!r}") from None
        if matrix.shape != (len(members), len(card.stems)):
            raise ModelError(f"{source}: demucs.weights is {list(matrix.shape)}, expected one row per model and "
                             f"one column per stem: [{len(members)}, {len(card.stems)}]")
    totals = matrix.sum(axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(totals == 0):
        bad = [s for s, t in zip(card.stems, totals) if t == 0]
        raise ModelError(f"{source}: demucs.weights gives stem(s) {bad} a total weight of 0 (or holds non-finite "
                         "numbers); every stem needs a model with a non-zero weight for it")
    return tuple(members), matrix


def check_card(card: ModelCard, source: str) -> None:
    """One-line errors for a demucs card whose numbers disagree (called by ``parse_card``)."""
    data = card.demucs
    if not isinstance(data, dict):
        raise ModelError(f"{source}: a demucs card needs a 'demucs:' mapping (architecture, models, weights); "
                         "stembridge models import writes it")
    if data.get("architecture") not in ARCHITECTURES:
        raise ModelError(f"{source}: demucs.architecture {data.get('architecture')!r} is not one of "
                         f"{', '.join(ARCHITECTURES)}")
    if card.hop * 4 != card.n_fft:
        raise ModelError(f"{source}: hop {card.hop} must be n_fft / 4 = {card.n_fft // 4}, as Demucs's STFT is")
    if card.audio_channels not in (1, 2):
        raise ModelError(f"{source}: audio_channels must be 1 or 2, got {card.audio_channels!r}")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and card.residual not in card.stems:
        raise ModelError(f"{source}: residual '{card.residual}' (the stem given the leftover, mix minus the sum "
                         f"of the stems) is not among the stems {list(card.stems)}; name one of them, or null")
    parse_members(dataclasses.replace(card, source=source))


def with_leftover(card: ModelCard, leftover: str | None) -> ModelCard:
    """``card`` with ``leftover`` as its residual stem (None keeps the card's)."""
    if leftover is None:
        return card
    from .models import canonical_stem

    stem = canonical_stem(str(leftover))
    if stem not in card.stems:
        raise ModelError(f"leftover '{leftover}': '{card.name}' gives {', '.join(card.stems)}; name one of them "
                         "(it also gets the mix minus the sum of the stems)")
    return dataclasses.replace(card, residual=stem)


class DemucsSpectrogram:
    """Demucs's ``_spec`` and ``_ispec`` for chunks of ``length`` samples (any length from 1), in numpy."""

    def __init__(self, n_fft: int, length: int):
        self.n_fft = n_fft
        self.hop = n_fft // 4
        self.length = length
        self.stft = Stft(n_fft, self.hop)
        self.frames = math.ceil(length / self.hop)
        self.pad = self.hop // 2 * 3
        self.scale = np.float32(1.0 / math.sqrt(n_fft))  # torch.stft(normalized=True)

    def forward(self, chunks: np.ndarray) -> np.ndarray:
        """``(b, c, length)`` float32 -> ``(b, 2c, n_fft/2, frames)`` float32 (re/im per channel)."""
        b, c, length = chunks.shape
        left, right = self.pad, self.pad + self.frames * self.hop - length
        if length <= max(left, right):
            # Demucs's pad1d: a chunk too short to reflect is first extended with zeros (to the
            # right as far as the right padding goes), so the reflection has enough samples.
            extra = max(left, right) - length + 1
            extra_right = min(right, extra)
            chunks = np.pad(chunks, ((0, 0), (0, 0), (extra - extra_right, extra_right)))
            left, right = left - (extra - extra_right), right - extra_right
        padded = np.pad(chunks, ((0, 0), (0, 0), (left, right)), mode="reflect")
        z = self.stft.forward(padded)[..., :-1, 2:2 + self.frames]  # (b, c, n_fft/2, frames)
        packed = np.empty((b, c, 2) + z.shape[-2:], np.float32)
        packed[:, :, 0] = z.real
        packed[:, :, 1] = z.imag
        packed *= self.scale
        return packed.reshape(b, 2 * c, *z.shape[-2:])

    def inverse(self, packed: np.ndarray) -> np.ndarray:
        """``(b, s, 2c, n_fft/2, frames)`` float32 -> ``(b, s, c, length)`` float32."""
        b, s, cc, bins, frames = packed.shape
        pairs = packed.reshape(b, s, cc // 2, 2, bins, frames)
        spec = np.zeros((b, s, cc // 2, bins + 1, frames + 4), np.complex64)
        spec.real[..., :bins, 2:2 + frames] = pairs[:, :, :, 0]
        spec.imag[..., :bins, 2:2 + frames] = pairs[:, :, :, 1]
        total = self.hop * self.frames + 2 * self.pad
        audio = self.stft.inverse(spec, total)[..., self.pad:self.pad + self.length]
        return audio * np.float32(math.sqrt(self.n_fft))  # torch.istft(normalized=True)


class DemucsNetwork:
    """One exported network: ``(b, c, n)`` float32 chunks -> ``(b, stems, c, n)``.

    ``fixed`` (HTDemucs): the graph takes chunks of exactly ``segment`` samples. Otherwise
    (HDemucs) its time axes are dynamic and a chunk of any length ``n`` runs at that length, as
    ``apply_model`` runs an HDemucs chunk (``segment`` is then the longest chunk).
    """

    def __init__(self, path, *, segment: int, n_fft: int, stems: int, channels: int, threads: int | None = None,
                 device=None, fixed: bool = True, shared_arena: bool = False):
        self.path = path
        self.session = open_session(path, threads=threads, device=device, shared_arena=shared_arena)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.segment = segment
        self.fixed = fixed
        self.n_fft = n_fft
        self.spectrogram = DemucsSpectrogram(n_fft, segment)
        bins = n_fft // 2
        frames = self.spectrogram.frames if fixed else None
        samples = segment if fixed else None
        t, f = (segment, frames) if fixed else ("samples", "frames")
        says = (f"a demucs model takes the waveform [batch, {channels}, {t}] and its spectrogram [batch, "
                f"{2 * channels}, {bins}, {f}] and returns the frequency branch [batch, {stems}, {2 * channels}, "
                f"{bins}, {f}] and the time branch [batch, {stems}, {channels}, {t}]")
        by_rank_in = {len(i.shape): i for i in inputs}
        by_rank_out = {len(o.shape): o for o in outputs}
        if len(inputs) != 2 or len(outputs) != 2 or set(by_rank_in) != {3, 4} or set(by_rank_out) != {4, 5}:
            raise ModelError(f"{path}: the model's inputs {[i.shape for i in inputs]} and outputs "
                             f"{[o.shape for o in outputs]} are not Demucs's; {says}")
        expected = {(by_rank_in[3], (None, channels, samples)), (by_rank_in[4], (None, 2 * channels, bins, frames)),
                    (by_rank_out[5], (None, stems, 2 * channels, bins, frames)),
                    (by_rank_out[4], (None, stems, channels, samples))}
        for node, shape in expected:
            dims = static_dims(node.shape)
            if any(d is not None and e is not None and d != e for d, e in zip(dims, shape)):
                raise ModelError(f"{path}: '{node.name}' is {node.shape}, but {says}; the card does not describe "
                                 "this model (segment, stems, audio_channels)")
            if not fixed and (dims[-1] is not None):
                raise ModelError(f"{path}: '{node.name}' is {node.shape}, a fixed length, but an hdemucs card "
                                 f"needs a model whose time axis is free; {says}")
        self.mix_name, self.spec_name = by_rank_in[3].name, by_rank_in[4].name
        self.freq_name, self.wave_name = by_rank_out[5].name, by_rank_out[4].name
        self.runner = Runner(self.session)

    def __call__(self, chunks: np.ndarray) -> np.ndarray:
        chunks = np.ascontiguousarray(chunks, dtype=np.float32)
        length = chunks.shape[-1]
        if length != self.segment and self.fixed:
            raise ModelError(f"{self.path}: chunks of {length} samples given to a model that takes {self.segment}")
        spectrogram = self.spectrogram if length == self.segment else DemucsSpectrogram(self.n_fft, length)
        spec = spectrogram.forward(chunks)
        out = self.runner({self.mix_name: chunks, self.spec_name: spec})
        return out[self.wave_name] + spectrogram.inverse(out[self.freq_name])


class DemucsEngine:
    """The model-specific part of a Demucs separator (see :class:`~.runner.Engine`).

    Parameters
    ----------
    card : ModelCard
        A ``family: demucs`` card.
    threads : int, optional
        onnxruntime intra-op threads (default: every core).
    shifts : int
        Demucs's shift trick: runs per model on the song delayed by random amounts up to 0.5 s,
        averaged; 0 runs once unshifted. Default 1, as the ``demucs`` command.
    seed : int
        Seed of the delays (``numpy.random.default_rng``): the same seed gives the same output.
    """

    default_overlap = OVERLAP

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, shifts: int = 1,
                 seed: int = 0, device=None):
        if isinstance(shifts, bool) or not isinstance(shifts, int) or not 0 <= shifts <= 20:
            raise ModelError(f"shifts={shifts!r}: Demucs's shift trick takes a whole number of runs from 0 to 20 "
                             "(1, as the demucs command, is the default)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelError(f"seed={seed!r}: the shifts' seed must be a whole number")
        members, self.weights = parse_members(card)
        self.card = card
        self.model_stems = card.stems
        self.networks = []
        for member in members:
            path = verify_file(dataclasses.replace(card, file=(_folder(card) / member.file).resolve(),
                                                   sha256=member.sha256))
            self.networks.append(DemucsNetwork(path, segment=member.segment, n_fft=card.n_fft,
                                               stems=len(card.stems), channels=card.audio_channels,
                                               threads=threads, device=device,
                                               fixed=card.demucs["architecture"] == "htdemucs",
                                               # A bag's networks run one after another: one arena
                                               # for all of them, not one each (runtime.open_session).
                                               shared_arena=len(members) > 1))
        self.sample_rate = card.sample_rate
        self.chunk = max(m.segment for m in members)
        self.trim = 0
        self.stems = card.stems
        self.residual_stem = card.residual
        self.shifts, self.seed = shifts, seed
        self.options = {"shifts": shifts, "seed": seed}
        if card.audio_channels != 2:
            raise ModelError(f"{card.source}: a {card.audio_channels}-channel Demucs model is not supported; "
                             "stembridge runs stereo Demucs models")

    def overlap_add(self, plan, *, channels: int, stems, run=None, batch_size: int = 1) -> DemucsOverlapAdd:
        """The runner's seam: Demucs's own chunking instead of :class:`~.chunking.OverlapAdd`."""
        return DemucsOverlapAdd(self, overlap=plan.overlap, channels=channels, stems=stems, batch_size=batch_size)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, segment)`` -> ``{stem: (batch, 2, segment)}``: the first network on whole chunks."""
        out = self.networks[0](chunks)
        return {s: out[:, i] for i, s in enumerate(self.model_stems) if s != self.residual_stem}


def _folder(card: ModelCard) -> Path:
    """Where the card's ONNX files are: beside its ``file`` (the card's folder)."""
    return Path(card.file).parent if card.file is not None else Path(card.source).parent


def _details(card: ModelCard) -> list[str]:
    data = card.demucs or {}
    members = data.get("models") or []
    details = [str(data.get("architecture"))]
    if members:
        count = len({m.get("file") for m in members if isinstance(m, dict)})
        segment = members[0].get("segment") if isinstance(members[0], dict) else None
        details.append(f"{count} network{'s' if count != 1 else ''}"
                       + (f", {segment / card.sample_rate:g} s segments" if isinstance(segment, int) else ""))
    if card.residual:
        details.append(f"leftover in {card.residual}")
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    return details


def _imports(path, config) -> bool:
    """A Demucs ``.th``, a bag ``.yaml``, or a folder of ``.th`` files, given without ``--config``.

    (``.th`` is also a torch suffix the roformer family claims; families are asked in name order,
    so ``demucs`` answers first, and a ``--config`` leaves the file to the RoFormer importer.)
    """
    path = Path(path)
    if config is not None:
        return False
    if path.is_file():
        return path.suffix in (".th", ".yaml", ".yml")
    return path.is_dir() and any(path.glob("*.th"))


#: The Demucs classes ``stembridge models import`` takes, as a ``.th`` file names them.
IMPORTED_CLASSES = ("demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs")


def th_stems(path: Path) -> tuple[str, ...] | None:
    """The sources of a Demucs ``.th`` file (``serialize_model``'s ``klass``/``args``/``kwargs``/
    ``state``, read inertly: the class is a name, never imported), or None if it is not one that
    the import takes (another class, a DiffQ-quantised state)."""
    package = torch_object(path)
    if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
        return None
    if global_name(package["klass"]) not in IMPORTED_CLASSES:
        return None
    state, args, kwargs = package["state"], package["args"], package["kwargs"]
    if not isinstance(state, dict) or state.get("__quantized") or not isinstance(kwargs, dict):
        return None
    sources = kwargs.get("sources", args[0] if isinstance(args, (list, tuple)) and args else None)
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        return None
    return tuple(canonical_stem(s) for s in sources)


def recognise(path: Path) -> Found | None:
    """A Demucs model: a ``.th`` file (HTDemucs or HDemucs, by its pickled class name), or a bag
    ``.yaml`` (``models:`` signatures, optional ``weights:``/``segment:``) whose ``.th`` files lie
    beside it."""
    command = f"stembridge models import {shlex.quote(str(path))}"
    suffix = path.suffix.lower()
    if suffix == ".th" and path.is_file():
        stems = th_stems(path)
        return Found(path, "demucs", stems, command=command) if stems is not None else None
    if suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    data = read_config(path)
    models = data.get("models") if data else None
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models) \
            or set(data) - {"models", "weights", "segment"}:
        return None
    files = [next(iter(sorted(path.parent.glob(f"{sig}-*.th"))), path.parent / f"{sig}.th") for sig in models]
    if not all(f.is_file() for f in files):
        return None
    stems = th_stems(files[0])
    return Found(path, "demucs", stems, command=command) if stems is not None else None


FAMILY = register(Family(
    name="demucs",
    open_engine=lambda card, s: DemucsEngine(with_leftover(card, s.leftover), threads=s.threads,
                                             batch_size=s.batch_size, shifts=1 if s.shifts is None else s.shifts,
                                             seed=s.seed, device=s.device),
    requires=("file", "demucs", "sample_rate", "n_fft", "hop"),
    requires_hint=" (stembridge models import writes it)",
    check=check_card, details=_details, default_overlap=lambda card: OVERLAP,
    importer="bridge.importers.demucs:convert", imports=_imports,
    import_help="Demucs v4 and v3 hybrid models (htdemucs.th, a bag such as htdemucs_ft.yaml or hdemucs_mmi.yaml, "
                "or a folder with --name)",
    recognise=recognise,
))
