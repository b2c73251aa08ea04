"""SCNet separators: MSST's ``scnet`` models exported to ONNX by ``stembridge models import``.

SCNet (Tong et al., "SCNet: Sparse Compression Network for Music Source Separation", ICASSP 2024)
predicts each source's complex spectrogram from the mixture's (not a mask). The importer
(:mod:`bridge.importers.scnet`) exports the network without its STFT; this module does the rest,
per chunk of ``chunk_size`` samples at the card's rate, as MSST's SCNet does inside its forward:

1. the chunk is followed by ``pad`` zeros (whole hops, an odd number of them, so that the
   centred STFT has the even frame count ``dim_t`` the network's real FFT over time needs);
2. centred STFT with a *rectangular* window of ``win_length`` (MSST's SCNet gives torch.stft no
   window), reflect padding -> ``[batch, audio_channels, n_fft/2+1, dim_t, 2]``, the model's input
   (the model applies ``normalized`` itself);
3. the model gives ``[batch, stems, audio_channels, n_fft/2+1, dim_t, 2]``; inverse STFT with the
   same window, the first ``chunk_size`` samples kept.

Chunks follow MSST's own grid (:mod:`.msst_grid`: step ``chunk_size // num_overlap``, linear fades
of ``chunk_size // 10``, the song mirrored by ``chunk_size - step`` at both ends), streamed, so
the stems match MSST's ``inference.py`` on its grid. ``--overlap`` sets the step as
``chunk_size * (1 - overlap)``; the default is the card's ``num_overlap``.

The card's ``residual`` stem, if any (a config with ``training.target_instrument``), is the mix
minus the model's output, so the stems sum to the mix exactly. A mono model runs each channel of
the stereo chunk as its own batch item.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .families import Family, Found, register, torch_checkpoint
from .models import ModelCard, verify_file, whole
from .msst_grid import MsstOverlapAdd
from .peek import read_config
from .runtime import Runner, check_spectrogram_io, default_threads, open_session
from .spectral import Stft


def network_pad(length: int, hop: int) -> int:
    """Zeros MSST's SCNet appends to ``length`` samples: to whole hops, and an odd count of them."""
    pad = hop - length % hop
    return pad + hop if (length + pad) // hop % 2 == 0 else pad


class ScnetEngine:
    """The model-specific part of an SCNet separator (see :class:`~.runner.Engine`)."""

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, device=None):
        path = verify_file(card)
        session = open_session(path, threads=threads, device=device)
        self.model_stems = tuple(s for s in card.stems if s != card.residual)
        channels = card.audio_channels
        check_spectrogram_io(session, path, card, channels=channels, outputs=len(self.model_stems), family="scnet")
        self.card = card
        self.path = path
        self.runner = Runner(session, max_batch=batch_size * (2 if channels == 1 else 1))
        self.stft = Stft(card.n_fft, card.hop, card.win_length, window="rectangular",
                         workers=threads or default_threads())
        self.sample_rate = card.sample_rate
        self.chunk = card.chunk_size
        self.pad_samples = network_pad(card.chunk_size, card.hop)
        self.trim = 0
        self.stems = card.stems
        self.residual_stem = card.residual
        self.options = {}

    def overlap_add(self, plan, *, channels: int, stems, run=None, batch_size: int = 1) -> MsstOverlapAdd:
        """MSST's grid (see :mod:`.msst_grid`) at the separator's overlap."""
        step = max(1, min(self.chunk, round(self.chunk * (1.0 - plan.overlap))))
        return MsstOverlapAdd(chunk=self.chunk, step=step, channels=channels, stems=stems,
                              run=run or self.run, batch_size=batch_size)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk_size)`` float32 -> ``{stem: (batch, 2, chunk_size)}``, residual excluded."""
        batch = chunks.shape[0]
        x = chunks.reshape(batch * 2, 1, self.chunk) if self.card.audio_channels == 1 else chunks
        x = np.pad(x, ((0, 0), (0, 0), (0, self.pad_samples)))
        spec = np.ascontiguousarray(self.stft.forward(x))  # (b, c, bins, frames) complex64
        packed = spec.view(np.float32).reshape(spec.shape + (2,))  # real/imaginary pairs, no copy
        y = next(iter(self.runner(packed).values()))
        expected = (packed.shape[0], len(self.model_stems)) + packed.shape[1:]
        if y.shape != expected:
            raise ModelError(f"{self.path}: the model returned shape {list(y.shape)} for input "
                             f"{list(packed.shape)}, expected {list(expected)}; fix stems/residual in {self.card.source}")
        stem_spec = np.ascontiguousarray(y, dtype=np.float32).view(np.complex64)[..., 0]
        audio = self.stft.inverse(stem_spec, self.chunk)  # (b, stems, c, chunk)
        if self.card.audio_channels == 1:
            audio = audio.reshape(batch, 2, len(self.model_stems), self.chunk).swapaxes(1, 2)
        return {stem: audio[:, i] for i, stem in enumerate(self.model_stems)}


def default_overlap(card: ModelCard) -> float:
    """The overlap that steps ``chunk_size // num_overlap`` samples, as MSST does."""
    return 1.0 - (card.chunk_size // card.num_overlap) / card.chunk_size


# --- the family ----------------------------------------------------------------------------------

def _prepare(data: dict, fields: dict, source: str) -> None:
    if "residual" not in data:
        raise ModelError(f"{source}: an scnet card needs 'residual': the stem computed as the mix minus the "
                         "model's outputs, or null when the model predicts every stem")
    if data.get("imported") is not None and not isinstance(data["imported"], dict):
        raise ModelError(f"{source}: imported must be a mapping, got {type(data['imported']).__name__}")
    fields.setdefault("win_length", data.get("n_fft"))


def check_card(card: ModelCard, source: str) -> None:
    """One-line errors for an scnet card whose numbers disagree with each other."""
    if card.architecture != "scnet":
        raise ModelError(f"{source}: architecture '{card.architecture}' is not 'scnet'")
    for key in ("chunk_size", "win_length", "num_overlap"):
        if not whole(getattr(card, key)):
            raise ModelError(f"{source}: {key} must be a positive whole number, got {getattr(card, key)!r}")
    if card.win_length > card.n_fft:
        raise ModelError(f"{source}: win_length {card.win_length} is longer than n_fft {card.n_fft}")
    if card.hop > card.win_length:
        raise ModelError(f"{source}: hop {card.hop} is longer than win_length {card.win_length}; the inverse STFT "
                         "needs every sample under a window")
    frames = (card.chunk_size + network_pad(card.chunk_size, card.hop)) // card.hop + 1
    if card.dim_t != frames:
        raise ModelError(f"{source}: dim_t {card.dim_t} does not match chunk_size {card.chunk_size} and hop "
                         f"{card.hop}: SCNet pads a chunk to an even frame count, {frames}")
    if card.chunk_size <= card.n_fft // 2:
        raise ModelError(f"{source}: chunk_size {card.chunk_size} is too short for n_fft {card.n_fft}")
    if card.audio_channels not in (1, 2):
        raise ModelError(f"{source}: audio_channels must be 1 (a mono model) or 2, got {card.audio_channels!r}")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and (card.residual not in card.stems or len(card.stems) < 2):
        raise ModelError(f"{source}: residual '{card.residual}' must be one of at least two stems {list(card.stems)}, "
                         "or null when the model predicts every stem")


def _details(card: ModelCard) -> list[str]:
    details = [f"{card.chunk_size / card.sample_rate:g} s chunks, num_overlap {card.num_overlap}"]
    if card.audio_channels == 1:
        details.append("mono")
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    return details


#: What only an SCNet config's model: has (MSST's SCNet constructor arguments).
_CONFIG_KEYS = re.compile(rb"^\s+(band_SR|num_dplayer)\s*:", re.MULTILINE)
#: State-dict key parts only MSST's SCNet has, as they appear in the checkpoint's pickle.
_STATE_KEYS = (b"separation_net.dp_modules.", b"SDlayer.convs.")


def _config_data(path: Path):
    """The config at ``path`` if it is an SCNet's (by its model: keys), else None. Read with a safe
    loader that takes MSST's ``!!python/tuple`` as a list and builds nothing else."""
    try:
        if path.stat().st_size > 1_000_000:
            return None
        text = path.read_bytes()
    except OSError:
        return None
    if len(_CONFIG_KEYS.findall(text)) < 2:
        return None
    data = read_config(path)  # the safe loader with !!python/tuple, as the scan reads configs
    model = data.get("model") if isinstance(data, dict) else None
    return data if isinstance(model, dict) and "band_SR" in model and "num_dplayer" in model else None


def _state_keys_are_scnet(path: Path) -> bool:
    """Whether a torch zip checkpoint's pickle names SCNet's layers (read as bytes, never unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1 or archive.getinfo(pickles[0]).file_size > 50_000_000:
                return False
            blob = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False
    return all(key in blob for key in _STATE_KEYS) and b"mask_layer" not in blob and b"pos_embed_f" not in blob


def recognise(path) -> Found | None:
    """An MSST SCNet checkpoint, told by its state dict's layer names; its config is the one SCNet
    config beside it (or in a ``configs`` folder next to its folder, as in an MSST checkout)."""
    path = Path(path)
    if not (path.is_file() and torch_checkpoint(path) and zipfile.is_zipfile(path)) or not _state_keys_are_scnet(path):
        return None
    candidates = []
    for folder in (path.parent, path.parent.parent / "configs"):
        if folder.is_dir():
            candidates += [p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".yaml", ".yml") and p.is_file()]
    configs = [(p, d) for p in candidates if (d := _config_data(p)) is not None]
    config, stems = None, ()
    if len(configs) == 1:
        config, data = configs[0]
        training = data.get("training") if isinstance(data.get("training"), dict) else {}
        names = training.get("instruments") or data["model"].get("sources") or []
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            stems = tuple(names)
    command = f"stembridge models import {path} --config {config if config else 'CONFIG.yaml'}"
    return Found(path=path, family="scnet", stems=stems, config=config, ready=False, command=command)


def _imports(path, config) -> bool:
    """A torch checkpoint given with an SCNet config (told by its keys)."""
    return config is not None and Path(config).is_file() and _config_data(Path(config)) is not None


FAMILY = register(Family(
    name="scnet",
    open_engine=lambda card, s: ScnetEngine(card, threads=s.threads, batch_size=s.batch_size, device=s.device),
    requires=("architecture", "n_fft", "hop", "chunk_size", "dim_t", "num_overlap", "sample_rate", "file"),
    requires_hint=" (stembridge models import writes it)",
    prepare=_prepare, check=check_card, details=_details, default_overlap=default_overlap,
    importer="bridge.importers.scnet:convert", imports=_imports, recognise=recognise,
    import_help="SCNet checkpoints of MSST's scnet type (CHECKPOINT.ckpt --config CONFIG.yaml)",
))
