"""Magnitude-mask separators: U-Nets that estimate each stem's magnitude spectrogram and reuse
the mixture's phase (Spleeter: Hennequin et al., "Spleeter: a fast and efficient music source
separation tool with pre-trained models", JOSS 2020).

Per chunk of ``hop * (dim_t - 1)`` samples: centred STFT (periodic Hann, ``n_fft``, ``hop``), the
magnitudes of the first ``bins`` bins go to the model as ``[batch, 2, dim_t, bins]``, and the model
returns one estimated magnitude per stem, same shape. With ``combine: ratio`` the estimates become
Spleeter's ratio masks ``(e_i^2 + eps/n) / (sum_j e_j^2 + eps)``; with ``combine: subtract`` a
single estimate becomes the mask ``min(e / |X|, 1)``. Masks multiply the complex mixture STFT.

Above ``bins`` (11 kHz for Spleeter) the model sees nothing. ``high_band`` chooses what happens
there: ``"instrumental"`` gives it all to the instrumental stem (Spleeter's ``mask_extension:
zeros`` for the vocal mask), ``"average"`` extends each stem's mask by its mean over the modelled
bins in that frame. Either way the stems sum to the mix: the instrumental stem is the residual.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import ModelError
from ..models import ModelCard, verify_file
from .runtime import Runner, open_session, static_dims
from .spectral import Stft

#: Spleeter's EPSILON for its ratio masks.
EPS = 1e-10
HighBand = Literal["instrumental", "average"]


class MaskEngine:
    """The model-specific part of a mask separator (see :class:`~.runner.Engine`)."""

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1,
                 high_band: HighBand = "instrumental"):
        path = verify_file(card)
        session = open_session(path, threads=threads)
        shape = session.get_inputs()[0].shape
        dims = static_dims(shape)
        expected = [None, 2, card.dim_t, card.bins]
        if len(dims) != 4 or any(d is not None and e is not None and d != e for d, e in zip(dims, expected)):
            raise ModelError(
                f"{path}: the model's input shape is {shape}, but its card ({card.source}) says "
                f"[batch, 2, dim_t={card.dim_t}, bins={card.bins}]; fix the card to match the model"
            )
        self.runner = Runner(session, max_batch=batch_size)
        wanted = card.outputs if card.combine == "ratio" else card.outputs[:1]
        missing = [o for o in wanted if o not in self.runner.outputs]
        if missing:
            raise ModelError(f"{path}: the card expects outputs {list(wanted)}, the model has {self.runner.outputs}")
        if high_band not in ("instrumental", "average"):
            raise ModelError(f"high_band must be 'instrumental' or 'average', got {high_band!r}")
        self.card = card
        self.high_band = high_band
        self.stft = Stft(card.n_fft, card.hop)
        self.sample_rate = card.sample_rate
        self.chunk = card.hop * (card.dim_t - 1)
        self.trim = card.n_fft // 2
        self.stems = card.stems
        self.residual_stem = "instrumental" if "instrumental" in card.stems else card.stems[-1]
        self._outputs = dict(zip(card.stems, card.outputs))

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        card = self.card
        spec = self.stft.forward(chunks)  # (batch, 2, n_fft/2+1, dim_t)
        magnitude = np.abs(spec[:, :, : card.bins, :])
        estimates = self.runner(np.ascontiguousarray(np.swapaxes(magnitude, -1, -2)))
        masks = self._masks({stem: np.swapaxes(estimates[out], -1, -2) for stem, out in self._outputs.items()
                             if out in estimates}, magnitude)
        return {stem: self.stft.inverse(self._extend(mask) * spec, self.chunk)
                for stem, mask in masks.items() if stem != self.residual_stem}

    def _masks(self, estimates: dict[str, np.ndarray], magnitude: np.ndarray) -> dict[str, np.ndarray]:
        if self.card.combine == "subtract":
            stem, estimate = next(iter(estimates.items()))
            return {stem: np.minimum(estimate / (magnitude + EPS), 1.0).astype(np.float32)}
        powers = {stem: np.square(e, dtype=np.float32) for stem, e in estimates.items()}
        total = sum(powers.values()) + EPS
        share = EPS / len(powers)
        return {stem: ((p + share) / total).astype(np.float32) for stem, p in powers.items()}

    def _extend(self, mask: np.ndarray) -> np.ndarray:
        """``(batch, 2, bins, frames)`` -> ``(batch, 2, n_fft/2+1, frames)`` for the full spectrum."""
        above = self.stft.bins - mask.shape[2]
        if self.high_band == "average":
            fill = np.broadcast_to(mask.mean(axis=2, keepdims=True), mask.shape[:2] + (above, mask.shape[3]))
        else:
            fill = np.zeros(mask.shape[:2] + (above, mask.shape[3]), np.float32)
        return np.concatenate([mask, fill], axis=2)
