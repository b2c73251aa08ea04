"""Separators: ``separator(audio, sample_rate) -> {stem: audio}``.

Anything with the attributes and methods of :class:`Separator` satisfies it; no base class is
needed (a ten-line fake in a test is a separator too). :func:`load_separator` builds the real ones
from a model name, card or file, through the family its card names (:mod:`.families`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError
from . import devices, families
from .models import ModelCard, derived_stems, resolve
from .models import offered_stems
from .runner import ChunkedSeparator, SeparationStream

if TYPE_CHECKING:
    from .ensemble import EnsembleSeparator

if TYPE_CHECKING:
    from collections.abc import Mapping


@runtime_checkable
class SeparatorStream(Protocol):
    """One song fed block by block: concatenated outputs equal one call of the separator."""

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """``block`` (channels, n) float32 -> ``{stem: (channels, m)}`` for the samples that are final."""

    def finish(self) -> dict[str, np.ndarray]:
        """The rest of every stem: in total each stem has as many samples as were fed."""


@runtime_checkable
class Separator(Protocol):
    """Splits a buffer into named stems of the same shape.

    Stem names are demucs's (``vocals``, ``drums``, ``bass``, ``other``) plus ``instrumental``
    (everything but the vocals) for 2-stem models. ``stems`` partition the mix; a 4- or 5-stem
    separator also offers ``instrumental`` as a sum (:func:`with_sums`), never among ``stems``.

    Attributes
    ----------
    name : str
        What messages, manifests and score files call it.
    stems : tuple of str
        The stems every call returns, in order.
    settings : mapping of str to value
        What changes the output besides the model (overlap, denoise, ...); JSON-able values.
        With :attr:`card`, what names the separation for the stem cache and resume checks.
    card : ModelCard or None
        The model behind it (file, sha256, family); None for a separator without one (a fake,
        a yardstick): its stems are never cached.
    residual : str or None
        The stem set to the mix minus the others, so the stems sum to the input; None when
        they are not promised to.
    """

    name: str
    stems: tuple[str, ...]
    settings: "Mapping[str, object]"
    card: ModelCard | None
    residual: str | None

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
        """``audio`` (channels, samples) float32 -> ``{stem: (channels, samples) float32}``."""

    def stream(self, *, sample_rate: int, channels: int) -> SeparatorStream:
        """A stream that separates one song fed block by block (see :class:`SeparatorStream`)."""


class WholeSongStream:
    """:meth:`Separator.stream` for a separator that needs the whole song: it gathers the blocks
    and separates them at :meth:`finish` (memory grows with the song; real separators stream)."""

    def __init__(self, separator, *, sample_rate: int, channels: int):
        self._separator = separator
        self._sample_rate = sample_rate
        self._blocks: list[np.ndarray] = []
        self._channels = channels

    def process(self, block: np.ndarray) -> dict[str, np.ndarray]:
        self._blocks.append(np.array(block, dtype=np.float32))
        return {stem: np.zeros((self._channels, 0), np.float32) for stem in self._separator.stems}

    def finish(self) -> dict[str, np.ndarray]:
        audio = np.concatenate(self._blocks, axis=1) if self._blocks else np.zeros((self._channels, 0), np.float32)
        self._blocks = []
        if audio.shape[1] == 0:
            return {stem: audio.copy() for stem in self._separator.stems}
        out = self._separator(audio, self._sample_rate)
        return {stem: out[stem] for stem in self._separator.stems}


def load_separator(model: str | ModelCard = "default", *, overlap: float | None = None,
                   batch_size: int | Literal["auto"] = 1, threads: int | None = None, denoise: bool = False,
                   invert: bool = False, high_band: Literal["instrumental", "average"] = "instrumental",
                   wiener: int = 0, shifts: int | None = None, seed: int = 0, leftover: str | None = None,
                   device: str = "auto") -> ChunkedSeparator:
    """Build a separator.

    Parameters
    ----------
    model : str or ModelCard
        ``"default"`` (the embedded model), ``"dsp"`` (the weight-free fallback),
        ``"default-4stems"`` (the embedded model's vocals and a DSP split of the rest), a card name
        (``stembridge models`` lists them), or a path to a card ``.yaml`` or an ``.onnx`` file.
    overlap : float, optional
        Fraction of each chunk shared with the next, in [0, 1). Default: the family's (0.25 for
        MDX-Net, as UVR, and for mask models, 0.5 for the DSP fallback; for RoFormers, the
        fraction that steps ``chunk_size // num_overlap`` samples, as the card's ``num_overlap``
        asks, :mod:`.roformer`).
    batch_size : int or "auto"
        Chunks per onnxruntime call; ``"auto"``: 1 on the CPU, sized to the free memory on a GPU
        (:func:`.devices.auto_batch_size`).
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
    shifts, seed : int
        Demucs models only: runs on the song delayed by seeded random amounts up to 0.5 s,
        averaged (Demucs's ``--shifts``; default 1 as the demucs command, 0 runs once,
        unshifted), and the delays' seed.
    leftover : str, optional
        Demucs models only: the stem that also gets the mix minus the sum of the stems, so
        that the stems sum to the mix (default: the card's ``residual``, none for an import).
    device : str
        ``auto`` (default: the best provider this onnxruntime offers, :data:`.devices.AUTO_ORDER`),
        ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``coreml``, ``directml[:N]`` or ``openvino``.

    Raises
    ------
    ModelError
        Unknown model, missing or corrupt file, card and model disagree; ``overlap``,
        ``batch_size``, ``threads`` or ``wiener`` out of range, or ``wiener`` asked of a model that
        is not a mask model.
    DeviceError
        A named device that cannot run here (:func:`.devices.check_device`).
    """
    from .mask import check_wiener

    wiener = check_wiener(wiener)
    _check_settings(overlap=overlap, batch_size=batch_size, threads=threads)
    resolved = devices.check_device(device)
    card = model if isinstance(model, ModelCard) else resolve(model)
    check_wiener_fits(card, wiener)
    check_denoise_invert_fits(card, denoise=denoise, invert=invert)
    if card.family != "demucs" and (shifts is not None or leftover is not None):
        option = "shifts" if shifts is not None else "leftover"
        raise ModelError(f"{option}: only for Demucs models, and '{card.name}' is a {card.family} model; drop it")
    family = families.family(card.family)
    if family.open_separator is not None:
        return family.open_separator(card, families.EngineSettings(threads=threads))
    if batch_size == "auto":
        batch_size = devices.card_batch_size(resolved.device, card)
    settings = families.EngineSettings(threads=threads, batch_size=batch_size, denoise=denoise, invert=invert,
                                       high_band=high_band, wiener=wiener, shifts=shifts, seed=seed,
                                       leftover=leftover, device=resolved.device)
    try:
        engine = family.open_engine(card, settings)
    except devices.DeviceError as exc:
        if resolved.asked != "auto":
            raise
        resolved = devices.Resolved("auto", devices.Device("cpu"), f"auto: {exc}; running on the CPU")
        engine = family.open_engine(card, dataclasses.replace(settings, device=resolved.device))
    if overlap is None:
        overlap = family.default_overlap(card)
    return ChunkedSeparator(engine, overlap=overlap, batch_size=batch_size, name=card.name,
                            device=str(resolved.device), device_note=resolved.note)


def ensemble_cards(parts, *, where: str = "ensemble") -> dict[str, ModelCard]:
    """Every model an ensemble's parts name, resolved to its card (not loaded), and the parts
    checked against the cards' stems (:func:`.ensemble.check_parts`): errors name ``where``."""
    from .ensemble import check_parts

    cards = {}
    for i, part in enumerate(parts):
        for model in part.models:
            if model not in cards:
                try:
                    cards[model] = resolve(model)
                except ModelError as exc:
                    raise ModelError(f"{where}[{i}]: {exc}") from None
    check_parts(parts, {m: offered_stems(c.stems) for m, c in cards.items()}, residual=None, where=where)
    return cards


def load_ensemble(parts, *, residual: str | None = None, name: str = "ensemble", where: str = "ensemble",
                  overlap: float | None = None, batch_size: int | Literal["auto"] = 1, threads: int | None = None,
                  wiener: int = 0, shifts: int | None = None, seed: int = 0, device: str = "auto",
                  **options) -> "EnsembleSeparator":
    """An :class:`~.ensemble.EnsembleSeparator` over ``parts`` (:class:`~.ensemble.Part`), each model
    loaded once with :func:`load_separator`.

    Every card is resolved and every part checked before any model loads. ``wiener`` goes to the
    mask models only and ``shifts`` to the Demucs models only (the others take neither);
    ``overlap``, ``batch_size``, ``threads``, ``device`` and ``options`` (``denoise``, ``invert``,
    ``high_band``) go to every model that takes them.
    """
    from .ensemble import EnsembleSeparator

    cards = ensemble_cards(parts, where=where)
    live = {m for p in parts if any(s != residual for s in p.stems) for m in p.models}
    members = {}
    for model, card in cards.items():
        if model not in live:
            continue
        fam = families.family(card.family)
        members[model] = load_separator(card, overlap=overlap, batch_size=batch_size, threads=threads,
                                        wiener=wiener if fam.wiener else 0,
                                        shifts=shifts if card.family == "demucs" else None, seed=seed,
                                        device=device, **options)
    return EnsembleSeparator(members, parts, residual=residual, name=name)


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
    if wiener and not families.family(card.family).wiener:
        raise ModelError(f"wiener={wiener}: Wiener filtering needs a mask model (e.g. 'default'), "
                         f"but '{card.name}' is a {card.family} model; use wiener=0 (--wiener 0) with it")


def check_denoise_invert_fits(card: ModelCard, *, denoise: bool, invert: bool) -> None:
    """Refuse denoise or spectral inversion for a model whose family would ignore them: an ignored
    setting must neither pass silently nor change what a run records."""
    asked = [name for name, on in (("--denoise", denoise), ("--invert", invert)) if on]
    if asked and not families.family(card.family).denoise_invert:
        raise ModelError(f"{' and '.join(asked)}: only MDX-Net models take {'them' if len(asked) > 1 else 'it'}, "
                         f"and '{card.name}' is a {card.family} model; drop {' and '.join(asked)}")


def _check_settings(*, overlap, batch_size, threads) -> None:
    """Refuse settings out of range before any model is loaded (the CLI passes them through)."""
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))
                                or not 0.0 <= overlap < 1.0):
        raise ModelError(f"overlap={overlap!r}: the overlap is the fraction of each chunk shared with the next, "
                         "in [0, 1); 0.25 is the usual choice (--overlap 0.25)")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ModelError(f"batch_size={batch_size!r}: chunks per model call must be a whole number >= 1 or 'auto' "
                         "(--batch-size 1)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ModelError(f"threads={threads!r}: onnxruntime threads must be a whole number >= 1, "
                         "or left out for every core (--threads 2)")


__all__ = ["Separator", "SeparatorStream", "SeparationStream", "ChunkedSeparator", "WholeSongStream",
           "check_denoise_invert_fits", "check_wiener_fits", "ensemble_cards", "load_ensemble", "load_separator",
           "with_sums"]
