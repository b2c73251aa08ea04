"""MDX-Net separators: complex-spectrogram ONNX models as the UVR community ships them.

Per chunk of ``hop * (dim_t - 1)`` samples at 44.1 kHz (Kim et al., "KUIELab-MDX-Net",
MDX Workshop 2021; UVR's ``separate.py``):

1. centred STFT (periodic Hann, ``n_fft`` from the card, hop 1024) -> ``dim_t`` frames;
2. keep the first ``dim_f`` bins, zero the lowest 3, pack stereo real/imag as 4 channels;
3. run the model (optionally denoised: the mean of ``model(x)`` and ``-model(-x)``);
4. pad the cut bins back with zeros, inverse STFT, times ``compensate``.

The model predicts the card's *primary* stem. The other stem is the *match-mix* minus the
primary: the mix sent through steps 1, 2 and 4 without the model, so that whatever the transform
itself does (the zeroed and cut bins) cancels instead of leaking into the other stem. Content the
model never sees (below bin 3, above ``dim_f``) is given to the instrumental-side stem so the
stems still sum to the mix; with ``invert`` (UVR's spectral inversion: the other stem is
``max(|X|, |Y|) e^{i∠X} - Y``, keeping the mix phase) they are not promised to.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .families import Family, Found, register
from .models import ModelCard, card_for_onnx, verify_file
from .peek import onnx_input_shape
from .runtime import Runner, default_threads, open_session, static_dims
from .spectral import Stft, pack_mdx, unpack_mdx


class MdxEngine:
    """The model-specific part of an MDX-Net separator (see :class:`~.runner.Engine`)."""

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1,
                 denoise: bool = False, invert: bool = False, device=None):
        path = verify_file(card)
        session = open_session(path, threads=threads, device=device)
        dims = static_dims(session.get_inputs()[0].shape)
        expected = [None, 4, card.dim_f, card.dim_t]
        if len(dims) != 4 or any(d is not None and e is not None and d != e for d, e in zip(dims, expected)):
            raise ModelError(
                f"{path}: the model's input shape is {session.get_inputs()[0].shape}, but its card "
                f"({card.source}) says [batch, 4, dim_f={card.dim_f}, dim_t={card.dim_t}]; "
                "fix dim_f/dim_t (and n_fft) in the card to match the model"
            )
        self.card = card
        self.runner = Runner(session, max_batch=batch_size * (2 if denoise else 1))
        self.stft = Stft(card.n_fft, card.hop, workers=threads or default_threads())
        self.sample_rate = card.sample_rate
        self.chunk = card.hop * (card.dim_t - 1)
        self.trim = card.n_fft // 2
        self.denoise = denoise
        self.invert = invert
        self.options = {"denoise": denoise, "invert": invert}
        self.primary = card.primary
        self.secondary = next(s for s in card.stems if s != card.primary)
        self.stems = card.stems
        if invert:
            self.residual_stem = None
        else:
            self.residual_stem = "instrumental" if "instrumental" in card.stems else self.primary

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        card = self.card
        mix_spec = self.stft.forward(chunks)
        x = pack_mdx(mix_spec, card.dim_f)
        if self.denoise:
            y = self._model(np.concatenate([x, -x]))
            y = 0.5 * (y[: len(x)] - y[len(x):])
        else:
            y = self._model(x)
        if card.compensate != 1.0:
            y = y * np.float32(card.compensate)
        out = {}
        if self.invert:
            primary_spec = unpack_mdx(y, self.stft.bins)
            matched = unpack_mdx(x, self.stft.bins)
            magnitude = np.maximum(np.abs(matched), np.abs(primary_spec))
            other_spec = magnitude * np.exp(1j * np.angle(matched)) - primary_spec
            out[self.primary] = self.stft.inverse(primary_spec, self.chunk)
            out[self.secondary] = self.stft.inverse(other_spec.astype(np.complex64), self.chunk)
            return out
        if self.residual_stem != self.primary:
            return {self.primary: self.stft.inverse(unpack_mdx(y, self.stft.bins), self.chunk)}
        # Match-mix minus primary: packing and the inverse STFT are linear, so the difference
        # is taken on the packed spectrogram (as it is unpacked) and inverted once.
        return {self.secondary: self.stft.inverse(unpack_mdx(x, self.stft.bins, minus=y), self.chunk)}

    def _model(self, x: np.ndarray) -> np.ndarray:
        outputs = self.runner(x)
        return next(iter(outputs.values())).astype(np.float32, copy=False)


def check_card(card: ModelCard, source: str) -> None:
    """An mdx card's band and stems: ``dim_f`` bins of ``n_fft``, two stems, one of them primary."""
    if not isinstance(card.dim_f, int) or not 3 < card.dim_f <= card.n_fft // 2 + 1:
        raise ModelError(f"{source}: an mdx card needs dim_f from 4 to n_fft/2+1, got {card.dim_f!r}")
    if card.primary not in card.stems or len(card.stems) != 2:
        raise ModelError(f"{source}: an mdx card needs two stems and a primary stem among them, "
                         f"got stems {list(card.stems)} and primary {card.primary!r}")


def recognise(path: Path) -> Found | None:
    """A UVR MDX-Net ``.onnx``: its graph's input is ``[batch, 4, dim_f, dim_t]`` (stereo real and
    imaginary parts). It runs as it is when a card beside it or UVR's hash table gives its
    parameters and their ``dim_f``/``dim_t`` fit the graph; otherwise it needs a card."""
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    shape = onnx_input_shape(path)
    if shape is None or len(shape) != 4 or shape[1] != 4:
        return None
    try:
        card = card_for_onnx(path)
    except ModelError:
        return Found(path, "mdx")
    fits = card.family == "mdx" and all(not isinstance(d, int) or d == want
                                        for d, want in zip(shape[2:], (card.dim_f, card.dim_t)))
    if not fits:
        return Found(path, "mdx")
    return Found(path, "mdx", card.stems, ready=True,
                 command=f"stembridge separate --model {shlex.quote(str(path))} SONG")


FAMILY = register(Family(
    name="mdx",
    open_engine=lambda card, s: MdxEngine(card, threads=s.threads, batch_size=s.batch_size, denoise=s.denoise,
                                          invert=s.invert, device=s.device),
    check=check_card,
    denoise_invert=True,
    recognise=recognise,
))
