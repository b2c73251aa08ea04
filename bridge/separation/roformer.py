"""RoFormer separators: BS-RoFormer and Mel-Band RoFormer models exported to ONNX.

The network (Lu et al., "Music source separation with band-split RoPE transformer", ICASSP 2024;
Wang et al., "Mel-band RoFormer for music source separation", 2023) predicts a complex mask per
stem from the complex STFT of a chunk. The importer (``stembridge models import``) exports it
without its STFT, so the ONNX model is the part in between, and this module does the rest, per
chunk of ``chunk_size`` samples at the card's rate:

1. centred STFT of each channel (periodic Hann of ``win_length`` zero-padded to ``n_fft``, reflect
   padding, ``torch.stft``'s conventions) -> ``[batch, audio_channels, n_fft/2+1, dim_t, 2]``
   real/imaginary float32, the model's input;
2. the model gives ``[batch, stems, audio_channels, n_fft/2+1, dim_t, 2]``: a complex mask per stem;
3. stem spectrogram = mask x mixture spectrogram (complex), inverse STFT (``torch.istft``: divided
   by the summed squared window) back to ``chunk_size`` samples.

The card's ``residual`` stem, if any, is not predicted: the runner sets it to the mix minus the
others, so the stems sum to the mix exactly. A mono model (``audio_channels: 1``) runs each
channel of the stereo chunk as its own batch item.

Chunk grid
----------
The reference tools cut the song into chunks of ``chunk_size`` every ``step = chunk_size //
num_overlap`` samples. ZFTurbo's ``demix`` (Music-Source-Separation-Training) reflect-pads the song
by ``chunk_size - step`` at both ends and overlap-adds with a window that fades linearly over
``chunk_size // 10`` samples at each chunk edge; python-audio-separator 0.47 starts at sample 0,
puts one last chunk flush with the end and weights chunks with a Hamming window over the whole
chunk. Both divide by the summed weights.

Here the grid is :class:`~.chunking.ChunkPlan`'s with the same step, so per minute of audio there
are exactly as many network calls as in both references at the card's ``num_overlap``; over a
whole song, at most one more than audio-separator's (for ``num_overlap`` up to 4; in general at
most ``ceil(num_overlap / 5)`` more) and about ``3 * num_overlap - 3`` fewer than ZFTurbo's, which
runs whole chunks over its padding (a 4-minute song at 8 s chunks: ``num_overlap`` 2, 60 calls,
audio-separator 59, ZFTurbo 62; ``num_overlap`` 4, 118, 117 and 126). What differs is where each output sample comes from:
``trim = chunk_size // 10`` samples at each chunk edge (0.8 s of an 8 s chunk, the length ZFTurbo
fades over) are never used, and the kept parts cross-fade with complementary raised-cosine fades
(``fade = chunk_size - 2 * trim - step``). So every output sample comes from chunks that see at
least ``trim`` samples of audio on both sides of it, and is weighted towards the chunk in which
it lies more centrally; the references give samples next to a chunk edge a small but non-zero
weight (Hamming: 0.08 at the edge itself). The song is mirrored beyond its ends
(``pad = "reflect"``), as ZFTurbo pads it and as the STFT pads a chunk, rather than zero-padded:
a model reading context then sees music-like input there. With ``num_overlap`` 1 there is no room
to trim and chunks abut (``trim = 0``), as in the references.

Measured with a context-dependent model (``tests/benchmarks/roformer_grid.py``: each frame's mask
depends on the power averaged over 0.31 s of neighbouring frames, so what a chunk edge cuts off
matters) on a 1-minute song at the real geometry (n_fft 2048, hop 441, 8 s chunks), as the SNR of
the output against the same model run on the whole song as one chunk, away from the song's ends /
over the whole song: ``num_overlap`` 2: stembridge 151.6 / 60.2 dB, ZFTurbo 56.7 / 55.4 dB,
audio-separator 53.5 / 54.2 dB; ``num_overlap`` 4: 147.1 / 60.2, 61.5 / 57.9, 55.5 / 54.2 dB.

``--overlap`` still sets the fraction of a chunk's kept part shared with the next; its default
for a roformer card is the fraction that gives ``step = chunk_size // num_overlap``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError, suggest
from .families import Family, register, torch_checkpoint
from .models import ModelCard, verify_file, whole
from .runtime import Runner, check_interface, default_threads, open_session
from .spectral import Stft


#: RoFormer variants a ``roformer`` card may name (the ONNX interface is the same for both).
ROFORMER_ARCHITECTURES = ("bs_roformer", "mel_band_roformer")


def grid(card: ModelCard) -> tuple[int, float]:
    """``(trim, overlap)`` of the chunk grid for ``card``: step ``chunk_size // num_overlap``."""
    chunk, step = card.chunk_size, max(1, card.chunk_size // card.num_overlap)
    trim = min(chunk // 10, (chunk - step) // 2)
    keep = chunk - 2 * trim
    return trim, 1.0 - step / keep


class RoformerEngine:
    """The model-specific part of a RoFormer separator (see :class:`~.runner.Engine`).

    Parameters
    ----------
    card : ModelCard
        A ``family: roformer`` card.
    threads : int, optional
        onnxruntime intra-op threads (default: every core).
    batch_size : int
        Chunks per onnxruntime call (a mono model's batch holds two items per chunk).
    """

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1, device=None):
        path = verify_file(card)
        session = open_session(path, threads=threads, device=device)
        self.model_stems = tuple(s for s in card.stems if s != card.residual)
        bins = card.n_fft // 2 + 1
        channels = card.audio_channels
        says = (f"its card ({card.source}) says input [batch, audio_channels={channels}, n_fft/2+1={bins}, "
                f"dim_t={card.dim_t}, 2] and output [batch, stems={len(self.model_stems)}, {channels}, {bins}, "
                f"{card.dim_t}, 2]")
        check_interface(session, path, expected_in=[None, channels, bins, card.dim_t, 2],
                        expected_out=[None, len(self.model_stems), channels, bins, card.dim_t, 2], family="roformer",
                        says=says, fix="n_fft, dim_t, audio_channels, stems, residual")
        self.card = card
        self.path = path
        self.runner = Runner(session, max_batch=batch_size * (2 if channels == 1 else 1))
        self.stft = Stft(card.n_fft, card.hop, card.win_length, workers=threads or default_threads())
        self.sample_rate = card.sample_rate
        self.chunk = card.chunk_size
        self.trim, self.default_overlap = grid(card)
        self.stems = card.stems
        self.residual_stem = card.residual
        self.pad = "reflect"  # the song mirrored beyond its ends, as the reference tools pad it
        self.options = {}

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk_size)`` float32 -> ``{stem: (batch, 2, chunk_size)}``, residual excluded."""
        batch = chunks.shape[0]
        x = chunks.reshape(batch * 2, 1, self.chunk) if self.card.audio_channels == 1 else chunks
        spec = np.ascontiguousarray(self.stft.forward(x))  # (b, c, bins, frames) complex64
        # complex64 is float32 pairs: the model's [..., 2] real/imaginary layout without a copy.
        packed = spec.view(np.float32).reshape(spec.shape + (2,))
        masks = self._model(packed)
        stem_spec = masks * spec[:, None]  # (b, stems, c, bins, frames)
        audio = self.stft.inverse(stem_spec, self.chunk)  # (b, stems, c, chunk)
        if self.card.audio_channels == 1:
            audio = audio.reshape(batch, 2, len(self.model_stems), self.chunk).swapaxes(1, 2)
        return {stem: audio[:, i] for i, stem in enumerate(self.model_stems)}

    def _model(self, packed: np.ndarray) -> np.ndarray:
        """``(b, c, bins, frames, 2)`` float32 -> complex masks ``(b, stems, c, bins, frames)`` complex64."""
        y = next(iter(self.runner(packed).values()))
        expected = (packed.shape[0], len(self.model_stems)) + packed.shape[1:]
        if y.shape != expected:
            raise ModelError(f"{self.path}: the model returned shape {list(y.shape)} for input "
                             f"{list(packed.shape)}, expected {list(expected)} ({len(self.model_stems)} stems: "
                             f"{', '.join(self.model_stems)}); fix stems/residual in {self.card.source}")
        y = np.ascontiguousarray(y, dtype=np.float32)
        return y.view(np.complex64)[..., 0]


# --- the family ----------------------------------------------------------------------------------

def _prepare(data: dict, fields: dict, source: str) -> None:
    """What a roformer card must say beyond its required keys (nothing about a RoFormer is guessed)."""
    if "residual" not in data:
        raise ModelError(f"{source}: a roformer card needs 'residual': the stem computed as the mix minus the "
                         "model's outputs, or null when the model predicts every stem")
    for key in ("imported", "quantized_from"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ModelError(f"{source}: {key} must be a mapping, got {type(data[key]).__name__}")
    fields.setdefault("win_length", data.get("n_fft"))


def check_card(card: ModelCard, source: str) -> None:
    """One-line errors for a roformer card whose numbers disagree with each other."""
    if card.architecture not in ROFORMER_ARCHITECTURES:
        raise ModelError(f"{source}: architecture '{card.architecture}' is not one of "
                         f"{', '.join(ROFORMER_ARCHITECTURES)}{suggest(str(card.architecture), ROFORMER_ARCHITECTURES)}")
    for key in ("chunk_size", "win_length", "num_overlap"):
        if not whole(getattr(card, key)):
            raise ModelError(f"{source}: {key} must be a positive whole number, got {getattr(card, key)!r}")
    if card.win_length > card.n_fft:
        raise ModelError(f"{source}: win_length {card.win_length} is longer than n_fft {card.n_fft}; "
                         "the window is zero-padded to n_fft, so win_length <= n_fft")
    if card.hop > card.win_length // 2:
        raise ModelError(f"{source}: hop {card.hop} is more than half of win_length {card.win_length}; "
                         "the inverse STFT needs overlapping windows")
    if card.dim_t != card.chunk_size // card.hop + 1:
        raise ModelError(f"{source}: dim_t {card.dim_t} does not match chunk_size {card.chunk_size} and hop "
                         f"{card.hop}: a centred STFT of a chunk has chunk_size // hop + 1 = "
                         f"{card.chunk_size // card.hop + 1} frames")
    if card.chunk_size <= card.n_fft // 2:
        raise ModelError(f"{source}: chunk_size {card.chunk_size} is too short for n_fft {card.n_fft} "
                         f"(the centred STFT reflects n_fft // 2 = {card.n_fft // 2} samples at each end)")
    if card.audio_channels not in (1, 2):
        raise ModelError(f"{source}: audio_channels must be 1 (a mono model) or 2, got {card.audio_channels!r}")
    if card.residual is not None and card.residual not in card.stems:
        raise ModelError(f"{source}: residual '{card.residual}' is not among the stems {list(card.stems)}; "
                         "name one of them, or null when the model predicts every stem")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and len(card.stems) < 2:
        raise ModelError(f"{source}: a residual stem needs at least one model stem beside it, got stems {list(card.stems)}")


def _details(card: ModelCard) -> list[str]:
    details = [card.architecture, f"{card.chunk_size / card.sample_rate:g} s chunks, num_overlap {card.num_overlap}"]
    if card.audio_channels == 1:
        details.append("mono")
    parity = (card.imported or {}).get("parity_db")
    if isinstance(parity, (int, float)) and not isinstance(parity, bool):
        details.append(f"parity {parity:.1f} dB")
    if card.quantized_from:
        details.append(f"int8 of {card.quantized_from.get('name')}")
    return details


def _imports(path, config) -> bool:
    """A torch checkpoint, or anything given with ``--config``: the RoFormer importer's to take or refuse."""
    return config is not None or torch_checkpoint(path)


FAMILY = register(Family(
    name="roformer",
    open_engine=lambda card, s: RoformerEngine(card, threads=s.threads, batch_size=s.batch_size, device=s.device),
    requires=("architecture", "n_fft", "hop", "chunk_size", "dim_t", "num_overlap", "sample_rate", "file"),
    requires_hint=" (stembridge models import writes it)",
    prepare=_prepare, check=check_card, details=_details,
    default_overlap=lambda card: grid(card)[1],
    importer="bridge.importers.roformer:convert", imports=_imports,
    import_help="BS-/Mel-Band RoFormer checkpoints (CHECKPOINT.ckpt --config CONFIG.yaml)",
))
