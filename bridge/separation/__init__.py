"""Separators: ``separator(audio, sample_rate) -> {stem: audio}``.

Anything with that call, a ``stems`` tuple and a ``stream()`` satisfies :class:`Separator`; no
base class is needed (a ten-line fake in a test is a separator too). :func:`load_separator`
builds the real ones from a model name, card or file.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError
from .models import DEFAULT_MODEL, ModelCard, derived_stems, resolve
from .runner import ChunkedSeparator, SeparationStream


@runtime_checkable
class Separator(Protocol):
    """Splits a buffer into named stems of the same shape.

    Stem names are demucs's (``vocals``, ``drums``, ``bass``, ``other``) plus ``instrumental``
    (everything but the vocals) for 2-stem models. ``stems`` partition the mix; a 4- or 5-stem
    separator also offers ``instrumental`` as a sum (:func:`with_sums`), never among ``stems``.
    """

    stems: tuple[str, ...]

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        """``audio`` (channels, samples) float32 -> ``{stem: (channels, samples) float32}``."""


def load_separator(model: str | ModelCard = "default", *, overlap: float | None = None, batch_size: int = 1,
                   threads: int | None = None, denoise: bool = False, invert: bool = False,
                   high_band: Literal["instrumental", "average"] = "instrumental",
                   wiener: int = 0) -> ChunkedSeparator:
    """Build a separator.

    Parameters
    ----------
    model : str or ModelCard
        ``"default"`` (the embedded model), ``"dsp"`` (the weight-free fallback),
        ``"default-4stems"`` (the embedded model's vocals and a DSP split of the rest), a card name
        (``stembridge models`` lists them), or a path to a card ``.yaml`` or an ``.onnx`` file.
    overlap : float, optional
        Fraction of each chunk shared with the next, in [0, 1). Default: 0.25 for MDX-Net
        (as UVR), 0.25 for mask models, 0.5 for the DSP fallback; for RoFormers, the fraction that
        steps ``chunk_size // num_overlap`` samples, as the card's ``num_overlap`` asks
        (:mod:`.roformer`).
    batch_size : int
        Chunks per onnxruntime call.
    threads : int, optional
        onnxruntime intra-op threads; default: every core this process may use.
    denoise, invert : bool
        MDX-Net only: UVR's denoise (mean of model(x) and -model(-x)) and spectral inversion.
    high_band : {"instrumental", "average"}
        Mask models only: who gets the band the model does not cover.
    wiener : int
        Mask models only: EM iterations of the multichannel Wiener filter over the model's
        estimates (norbert, as Spleeter's MWF option), in [0, 10]; 0 (default) keeps the ratio
        masks with the mixture phase.

    Raises
    ------
    ModelError
        Unknown model, missing or corrupt file, card and model disagree; ``overlap``,
        ``batch_size``, ``threads`` or ``wiener`` out of range, or ``wiener`` asked of a model that
        is not a mask model.
    """
    from .mask import check_wiener

    wiener = check_wiener(wiener)
    _check_settings(overlap=overlap, batch_size=batch_size, threads=threads)
    card = model if isinstance(model, ModelCard) else resolve(model)
    check_wiener_fits(card, wiener)
    if card.family == "mdx":
        from .mdx import MdxEngine
        engine = MdxEngine(card, threads=threads, batch_size=batch_size, denoise=denoise, invert=invert)
    elif card.family == "mask":
        from .mask import MaskEngine
        engine = MaskEngine(card, threads=threads, batch_size=batch_size, high_band=high_band, wiener=wiener)
    elif card.family == "roformer":
        from .roformer import RoformerEngine
        engine = RoformerEngine(card, threads=threads, batch_size=batch_size)
    elif card.family == "hpss":
        from .dsp4 import Dsp4Engine
        from .mask import MaskEngine
        engine = Dsp4Engine(MaskEngine(resolve(DEFAULT_MODEL), threads=threads, batch_size=batch_size,
                                       high_band=high_band))
    else:
        from .dsp import DspEngine
        engine = DspEngine()
    if overlap is None:
        overlap = getattr(engine, "default_overlap", 0.5 if card.family == "dsp" else 0.25)
    return ChunkedSeparator(engine, overlap=overlap, batch_size=batch_size, name=card.name)


def with_sums(stems: dict[str, np.ndarray], wanted) -> dict[str, np.ndarray]:
    """``stems`` plus each sum of :func:`~bridge.separation.models.derived_stems` that ``wanted`` names.

    ``stems`` maps names to equal-shape float32 buffers; a 4-stem split's ``instrumental`` is
    ``drums + bass + other`` (so ``vocals + instrumental`` is the mix, as for a 2-stem model).
    """
    out = dict(stems)
    for name, parts in derived_stems(tuple(stems)).items():
        if name in wanted:
            out[name] = np.sum([stems[p] for p in parts], axis=0, dtype=np.float32)
    return out


def check_wiener_fits(card: ModelCard, wiener: int) -> None:
    """Refuse Wiener filtering for a model that is not a mask model."""
    if wiener and card.family != "mask":
        raise ModelError(f"wiener={wiener}: Wiener filtering needs a mask model (e.g. 'default'), "
                         f"but '{card.name}' is a {card.family} model; use wiener=0 (--wiener 0) with it")


def _check_settings(*, overlap, batch_size, threads) -> None:
    """Refuse settings out of range before any model is loaded (the CLI passes them through)."""
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))
                                or not 0.0 <= overlap < 1.0):
        raise ModelError(f"overlap={overlap!r}: the overlap is the fraction of each chunk shared with the next, "
                         "in [0, 1); 0.25 is the usual choice (--overlap 0.25)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModelError(f"batch_size={batch_size!r}: chunks per model call must be a whole number >= 1 (--batch-size 1)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ModelError(f"threads={threads!r}: onnxruntime threads must be a whole number >= 1, "
                         "or left out for every core (--threads 2)")


__all__ = ["Separator", "SeparationStream", "ChunkedSeparator", "check_wiener_fits", "load_separator", "with_sums"]
