"""MDX23C separators: TFC-TDF v3 networks (UVR's "MDX23C" models, MSST's ``mdx23c``) run from ONNX.

The network (Kim et al., "Sound Demixing Challenge 2023 Music Demixing Track Technical Report:
TFC-TDF-UNet v3", 2023) predicts each target's complex spectrogram from the mixture's. The
importer (``stembridge models import``) exports it without its STFT; this module does the rest,
per chunk of ``chunk_size = hop * (dim_t - 1)`` samples at the card's rate:

1. centred STFT of each channel (periodic Hann of ``n_fft``, reflect padding, ``torch.stft``'s
   conventions), the first ``dim_f`` bins, real and imaginary parts as channels (L.re, L.im,
   R.re, R.im) -> ``[batch, 4, dim_f, dim_t]`` float32, the model's input;
2. the model gives ``[batch, targets, 4, dim_f, dim_t]``: each target's spectrogram;
3. the bins above ``dim_f`` padded back with zeros, inverse STFT (divided by the summed squared
   window) back to ``chunk_size`` samples.

A card with a ``residual`` stem (a config with ``training.target_instrument``: one output) gets
that stem as the mix minus the target, so the two stems sum to the mix. A model that predicts
several instruments (``target_instrument: null``, e.g. UVR's InstVoc: Vocals and Instrumental)
gives each as predicted, as python-audio-separator and MSST do; those stems need not sum to the
mix.

Chunk grid
----------
By default the grid is python-audio-separator's (``MDXCSeparator.demix``, UVR's MDX-C loop):
chunks every ``step = chunk_size // num_overlap`` samples, the song preceded by ``chunk_size -
step`` zeros and followed by zeros, each chunk's whole output added with weight 1 and the sum
divided by the weights: the same samples as audio-separator's division by ``num_overlap``
wherever ``step`` divides ``chunk_size`` (every published config). Where it does not, a sample is
covered by ``num_overlap`` or ``num_overlap + 1`` chunks, and audio-separator's constant divisor
makes the latter ``(n+1)/n`` too loud; here each is divided by its own count. audio-separator
also runs chunks that lie wholly in the zeros after the song; they change no sample, and are not
run here. ``--overlap`` sets ``1 - step / chunk_size``. ZFTurbo's ``demix`` (MSST) differs: it
reflect-pads the song, and fades chunk edges linearly over ``chunk_size // 10`` samples; its grid
is not offered.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .chunking import OverlapAdd
from .families import Family, Found, register, torch_checkpoint
from .models import ModelCard, canonical_stem, verify_file, whole
from .peek import read_config
from .runtime import Runner, check_interface, default_threads, open_session
from .spectral import Stft, pack_mdx, unpack_mdx

#: ``model:`` keys that make a config a TFC-TDF v3 (MDX23C) config.
TFC_TDF_KEYS = ("num_channels", "growth", "num_scales", "num_blocks_per_scale", "num_subbands",
                "bottleneck_factor", "scale")
#: State-dict keys every TFC-TDF v3 checkpoint has, whatever its size.
TFC_TDF_STATE = ("first_conv.weight", "final_conv.0.weight", "final_conv.2.weight",
                 "encoder_blocks.0.tfc_tdf.blocks.0.tfc1.2.weight", "bottleneck_block.blocks.0.shortcut.weight")


def step_of(card: ModelCard) -> int:
    """Samples between chunk starts on the reference grid: ``chunk_size // num_overlap``."""
    return max(1, card.chunk_size // card.num_overlap)


class _RectangularOverlapAdd(OverlapAdd):
    """:class:`~.chunking.OverlapAdd` with the reference's weights: 1 over the whole chunk."""

    def __init__(self, plan, **kwargs):
        super().__init__(plan, **kwargs)
        self._window = np.ones(plan.keep, np.float32)
        self._first_window = self._window


class Mdx23cEngine:
    """The model-specific part of an MDX23C separator (see :class:`~.runner.Engine`).

    Parameters
    ----------
    card : ModelCard
        A ``family: mdx23c`` card.
    threads : int, optional
        onnxruntime intra-op threads (default: every core).
    batch_size : int
        Chunks per onnxruntime call.
    """

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, device=None):
        path = verify_file(card)
        # lean: the network's tensors are 16-128 MB each and its convolutions hide the page
        # faults (see open_session): 0.54 GB less at the published size, no slower.
        session = open_session(path, threads=threads, device=device, lean=True)
        self.model_stems = tuple(s for s in card.stems if s != card.residual)
        says = (f"its card ({card.source}) says input [batch, 4, dim_f={card.dim_f}, dim_t={card.dim_t}] and output "
                f"[batch, targets={len(self.model_stems)}, 4, {card.dim_f}, {card.dim_t}]")
        check_interface(session, path, expected_in=[None, 4, card.dim_f, card.dim_t],
                        expected_out=[None, len(self.model_stems), 4, card.dim_f, card.dim_t], family="mdx23c",
                        says=says, fix="dim_f, dim_t, stems, residual")
        self.card = card
        self.path = path
        self.runner = Runner(session, max_batch=batch_size)
        self.stft = Stft(card.n_fft, card.hop, workers=threads or default_threads())
        self.sample_rate = card.sample_rate
        self.chunk = card.chunk_size
        self.trim = 0  # every sample of a chunk's output is used, as in the reference
        self.default_overlap = 1.0 - step_of(card) / card.chunk_size
        self.stems = card.stems
        self.residual_stem = card.residual
        self.pad = "zeros"  # audio-separator pads the song with zeros
        self.options = {}

    def overlap_add(self, plan, *, channels, stems, run, batch_size):
        """The reference's overlap-add (see the module docstring), streaming as the others do."""
        return _RectangularOverlapAdd(plan, channels=channels, stems=stems, run=run, batch_size=batch_size,
                                      depth=1)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk_size)`` float32 -> ``{stem: (batch, 2, chunk_size)}``, residual excluded."""
        batch, card = chunks.shape[0], self.card
        spec = self.stft.forward(chunks)  # (b, 2, bins, frames) complex64
        packed = pack_mdx(spec, card.dim_f, low_cut=0)  # the network sees every bin from 0
        y = next(iter(self.runner(packed).values()))
        expected = (batch, len(self.model_stems), 4, card.dim_f, card.dim_t)
        if y.shape != expected:
            raise ModelError(f"{self.path}: the model returned shape {list(y.shape)} for input {list(packed.shape)}, "
                             f"expected {list(expected)}; fix stems/residual in {card.source}")
        targets = unpack_mdx(np.ascontiguousarray(y, np.float32).reshape(-1, 4, card.dim_f, card.dim_t),
                             self.stft.bins)
        audio = self.stft.inverse(targets, self.chunk).reshape(batch, len(self.model_stems), 2, self.chunk)
        return {stem: audio[:, i] for i, stem in enumerate(self.model_stems)}


# --- what a file is, without torch ------------------------------------------------------------

def is_tfc_tdf_config(data) -> bool:
    """Whether a config's data (a parsed YAML mapping) describes a TFC-TDF v3 network."""
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and all(key in model for key in TFC_TDF_KEYS)


def state_keys(path: Path, *, limit: int = 16 << 20) -> set[str] | None:
    """The strings of a torch zip checkpoint's ``data.pkl`` (its state-dict keys among them), read
    with :mod:`pickletools` (which decodes opcodes and never builds an object), or None when
    ``path`` is not a torch zip file. Cheap: the tensors are not read."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1 or archive.getinfo(names[0]).file_size > limit:
                return None
            data = archive.read(names[0])
        return {arg for _, arg, _ in pickletools.genops(io.BytesIO(data)) if isinstance(arg, str)}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError):
        return None


def is_tfc_tdf_state(path: Path) -> bool:
    """Whether ``path`` is a torch zip checkpoint whose state dict has TFC-TDF v3's keys."""
    keys = state_keys(path) if Path(path).is_file() else None
    if keys is None:
        return False
    plain = {k[len("module."):] if k.startswith("module.") else k for k in keys}
    return all(k in plain for k in TFC_TDF_STATE)


def _imports(path, config) -> bool:
    """A TFC-TDF v3 checkpoint by its keys, or any checkpoint given with a TFC-TDF v3 config."""
    if is_tfc_tdf_state(Path(path)):
        return True
    return config is not None and is_tfc_tdf_config(read_config(Path(config)))


def _configs_near(path: Path) -> list[tuple[Path, dict]]:
    """TFC-TDF v3 configs beside ``path``, and in UVR's ``model_data/mdx_c_configs`` beside it."""
    found = []
    for folder in (path.parent, path.parent / "model_data" / "mdx_c_configs"):
        if folder.is_dir():
            for candidate in sorted(folder.iterdir()):
                data = read_config(candidate) if candidate.suffix.lower() in (".yaml", ".yml") else None
                if is_tfc_tdf_config(data):
                    found.append((candidate, data))
    return found


def _stems(data: dict) -> tuple[str, ...]:
    """The stems an import of ``data`` gives, as far as the config says (the importer checks it)."""
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    instruments = training.get("instruments")
    if not isinstance(instruments, list) or not all(isinstance(i, str) for i in instruments):
        return ()
    names = [canonical_stem(i) for i in instruments]
    target = training.get("target_instrument")
    if not isinstance(target, str):
        return tuple(names)
    primary = canonical_stem(target)
    rest = [n for n in names if n != primary]
    return (primary, *(["instrumental"] if primary == "vocals" and rest == ["other"] else rest))


def recognise(path: Path) -> Found | None:
    """``path`` as ``stembridge models scan`` lists it, when its state dict is TFC-TDF v3's.

    The family is told by the checkpoint's keys (read without loading a tensor). Its config is
    the TFC-TDF v3 YAML beside it (or in UVR's ``model_data/mdx_c_configs``): the one named as the
    checkpoint if there are several, the only one otherwise; with none (or several and none
    named so) the file is listed as needing ``--config``.
    """
    import shlex

    path = Path(path)
    if not torch_checkpoint(path) or not is_tfc_tdf_state(path):
        return None
    configs = _configs_near(path)
    chosen = [c for c in configs if c[0].stem == path.stem] or (configs if len(configs) == 1 else [])
    command = f"stembridge models import {shlex.quote(str(path))} --config "
    if not chosen:
        return Found(path=path, family="mdx23c", command=command + "CONFIG.yaml")
    config, data = chosen[0]
    return Found(path=path, family="mdx23c", stems=_stems(data), config=config,
                 command=command + shlex.quote(str(config)))


# --- the family ---------------------------------------------------------------------------------

def _prepare(data: dict, fields: dict, source: str) -> None:
    if "residual" not in data:
        raise ModelError(f"{source}: an mdx23c card needs 'residual': the stem computed as the mix minus the "
                         "model's output, or null when the model predicts every stem")
    if data.get("imported") is not None and not isinstance(data["imported"], dict):
        raise ModelError(f"{source}: imported must be a mapping, got {type(data['imported']).__name__}")


def check_card(card: ModelCard, source: str) -> None:
    """One-line errors for an mdx23c card whose numbers disagree with each other."""
    for key in ("chunk_size", "num_overlap", "dim_f"):
        if not whole(getattr(card, key)):
            raise ModelError(f"{source}: {key} must be a positive whole number, got {getattr(card, key)!r}")
    if card.architecture != "tfc_tdf_v3":
        raise ModelError(f"{source}: architecture {card.architecture!r}: an mdx23c card's is tfc_tdf_v3")
    if card.chunk_size != card.hop * (card.dim_t - 1):
        raise ModelError(f"{source}: chunk_size {card.chunk_size} is not hop x (dim_t - 1) = "
                         f"{card.hop * (card.dim_t - 1)}; the model's STFT of a chunk has dim_t frames")
    if card.dim_f > card.n_fft // 2 + 1:
        raise ModelError(f"{source}: dim_f {card.dim_f} is more than the {card.n_fft // 2 + 1} bins of "
                         f"n_fft {card.n_fft}")
    if card.hop > card.n_fft // 2 or card.chunk_size <= card.n_fft // 2:
        raise ModelError(f"{source}: hop {card.hop} and chunk_size {card.chunk_size} do not fit n_fft {card.n_fft} "
                         "(hop at most n_fft/2, chunks longer than n_fft/2)")
    if card.audio_channels != 2:
        raise ModelError(f"{source}: audio_channels must be 2 (the network is stereo), got {card.audio_channels!r}")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and (card.residual not in card.stems or len(card.stems) != 2):
        raise ModelError(f"{source}: residual {card.residual!r} must be the second of two stems (a "
                         f"target_instrument model), got stems {list(card.stems)}")


def _details(card: ModelCard) -> list[str]:
    details = [f"{card.chunk_size / card.sample_rate:g} s chunks, num_overlap {card.num_overlap}"]
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    return details


FAMILY = register(Family(
    name="mdx23c",
    open_engine=lambda card, s: Mdx23cEngine(card, threads=s.threads, batch_size=s.batch_size, device=s.device),
    requires=("architecture", "n_fft", "hop", "dim_f", "dim_t", "chunk_size", "num_overlap", "sample_rate", "file"),
    requires_hint=" (stembridge models import writes it)",
    prepare=_prepare, check=check_card, details=_details,
    default_overlap=lambda card: 1.0 - step_of(card) / card.chunk_size,
    importer="bridge.importers.mdx23c:convert", imports=_imports,
    import_help="MDX23C / TFC-TDF v3 checkpoints (MODEL.ckpt --config CONFIG.yaml)",
    recognise=recognise,
))
