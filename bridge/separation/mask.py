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

``wiener=N`` (off by default) refines the modelled bins with ``N`` EM iterations of the
multichannel Wiener filter, calling ``norbert.wiener`` as Spleeter's ``MWF`` option does
(Nugraha, Liutkus, Vincent, "Multichannel audio source separation with deep neural networks",
IEEE/ACM TASLP 2016): a soft mask of the model's magnitudes is the first estimate, then each stem
gets a power spectral density per frame and bin and a 2x2 spatial covariance per bin, fitted over
the chunk, and ``y_j = v_j R_j (sum_k v_k R_k + eps I)^-1 x``. The statistics are per chunk, so
streaming still holds one chunk at a time. The high band keeps its masks, and the residual stem
absorbs the filter's ``eps`` regularisation, so the stems sum to the mix as before. On a mono input
(both channels equal) the filter has no spatial cue and comes back to the ratio mask. Measured on
the reference songs it does not help (README, "Separating"), hence off by default.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ModelError
from .families import Family, Found, register, torch_checkpoint
from .models import MAX_WIENER, ModelCard, canonical_stem, verify_file
from .runtime import Runner, default_threads, open_session, static_dims
from .spectral import Stft
from .tf_checkpoint import checkpoint_prefix, read_index

#: Spleeter's EPSILON for its ratio masks.
EPS = 1e-10
HighBand = Literal["instrumental", "average"]


def check_wiener(iterations) -> int:
    """``iterations`` as an int in [0, MAX_WIENER], or a ModelError naming the value and the range."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or not 0 <= iterations <= MAX_WIENER:
        raise ModelError(f"wiener must be a whole number of EM iterations from 0 (off) to {MAX_WIENER}, "
                         f"got {iterations!r}; 1 or 2 is usual")
    return int(iterations)


class MaskEngine:
    """The model-specific part of a mask separator (see :class:`~.runner.Engine`)."""

    def __init__(self, card: ModelCard, *, threads: int | None = None, batch_size: int = 1,
                 high_band: HighBand = "instrumental", wiener: int = 0, device=None):
        wiener = check_wiener(wiener)
        path = verify_file(card)
        session = open_session(path, threads=threads, device=device)
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
        self.wiener = wiener
        self.options = {"high_band": high_band, "wiener": wiener}
        self.stft = Stft(card.n_fft, card.hop, workers=threads or default_threads())
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
        estimates = {stem: np.swapaxes(estimates[out], -1, -2) for stem, out in self._outputs.items()
                     if out in estimates}
        masks = self._masks(estimates, magnitude)
        if self.wiener:
            return self._wiener(estimates, masks, spec)
        return {stem: self.stft.inverse(self._extend(mask) * spec, self.chunk)
                for stem, mask in masks.items() if stem != self.residual_stem}

    def _wiener(self, estimates: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                spec: np.ndarray) -> dict[str, np.ndarray]:
        """Multichannel Wiener filter on the modelled bins, masks above.

        ``norbert.wiener(v, x, iterations)`` with its soft-mask start, as Spleeter's MWF calls it:
        ``v`` are the model's magnitude estimates (``(batch, 2, bins, frames)`` each; for
        ``combine: subtract`` the estimate and the rest of the mixture's magnitude), ``spec`` the
        mixture STFT ``(batch, 2, n_fft/2+1, frames)``.
        """
        import norbert

        bins = self.card.bins
        if self.card.combine == "subtract":
            (stem, mask), = masks.items()
            magnitude = np.abs(spec[:, :, :bins, :])
            estimates = {stem: mask * magnitude, self.residual_stem: (1.0 - mask) * magnitude}
        stems = list(estimates)
        wanted = [i for i, stem in enumerate(stems) if stem != self.residual_stem]
        low = np.empty((spec.shape[0], len(wanted), 2, bins, spec.shape[3]), np.complex64)
        for b in range(spec.shape[0]):
            # norbert's layout is (frames, bins, channels[, sources]). Double precision, as its docs
            # ask: the 2x2 inverse of a nearly singular mixture covariance (mono, or a source
            # panned hard) cancels catastrophically in complex64.
            x = np.transpose(spec[b, :, :bins, :], (2, 1, 0)).astype(np.complex128)
            v = np.stack([np.transpose(estimates[stem][b], (2, 1, 0)) for stem in stems], axis=-1)
            y = norbert.wiener(v.astype(np.float64), x, iterations=self.wiener, use_softmask=True)
            low[b] = np.transpose(y[..., wanted], (3, 2, 1, 0))
        out = {}
        for k, i in enumerate(wanted):
            full = self._extend(masks[stems[i]]) * spec
            full[:, :, :bins, :] = low[:, k]
            out[stems[i]] = self.stft.inverse(full, self.chunk)
        return out

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


def check_card(card: ModelCard, source: str) -> None:
    """A mask card's band and how its nets' masks are combined."""
    if not isinstance(card.bins, int) or not 0 < card.bins <= card.n_fft // 2 + 1:
        raise ModelError(f"{source}: a mask card needs bins from 1 to n_fft/2+1, got {card.bins!r}")
    if card.combine not in ("ratio", "subtract"):
        raise ModelError(f"{source}: combine must be 'ratio' or 'subtract', got {card.combine!r}")


def _imports(path, config) -> bool:
    """A Spleeter TensorFlow checkpoint: a folder, or the release's ``.tar.gz`` (never with ``--config``)."""
    import tarfile

    return config is None and (path.is_dir() or (not torch_checkpoint(path) and path.is_file() and tarfile.is_tarfile(path)))


#: Spleeter's stems by number of U-Nets, in its configs' order (one net per stem).
SPLEETER_STEMS = {2: ("vocals", "accompaniment"), 4: ("vocals", "drums", "bass", "other"),
                  5: ("vocals", "piano", "drums", "bass", "other")}


def unet_layers(names) -> tuple[int, int, int]:
    """How many ``conv2d``, ``conv2d_transpose`` and ``batch_normalization`` layers the checkpoint
    variable ``names`` hold (Keras numbers the layers of all of Spleeter's nets in one sequence)."""
    def count(kind: str, variable: str) -> int:
        return sum(1 for n in names if re.fullmatch(rf"{kind}(_\d+)?/{variable}", n))

    return count("conv2d", "kernel"), count("conv2d_transpose", "kernel"), count("batch_normalization", "gamma")


def spleeter_nets(names) -> int | None:
    """The number of Spleeter U-Nets the variable ``names`` make (7 conv2d, 6 conv2d_transpose and
    12 batch_normalization layers each, 2, 4 or 5 nets), or None."""
    convs, tconvs, norms = unet_layers(names)
    nets = convs // 7
    ok = convs and not convs % 7 and tconvs == 6 * nets and norms == 12 * nets and nets in SPLEETER_STEMS
    return nets if ok else None


def recognise(path: Path) -> Found | None:
    """A Spleeter TensorFlow checkpoint folder, told by its index's layer names (the ``.index`` is
    read, a few kB; the weights are not)."""
    if not path.is_dir():
        return None
    try:
        prefix = checkpoint_prefix(path)
        names = read_index(prefix.with_name(prefix.name + ".index"))
    except (ModelError, OSError):
        return None
    nets = spleeter_nets(names)
    if nets is None or not any(prefix.parent.glob(f"{prefix.name}.data-*")):
        return None
    return Found(path, "mask", tuple(canonical_stem(s) for s in SPLEETER_STEMS[nets]),
                 command=f"stembridge models import {shlex.quote(str(path))}")


FAMILY = register(Family(
    name="mask",
    open_engine=lambda card, s: MaskEngine(card, threads=s.threads, batch_size=s.batch_size, high_band=s.high_band,
                                           wiener=s.wiener, device=s.device),
    check=check_card, wiener=True,
    importer="bridge.importers.spleeter_tf:convert", imports=_imports,
    import_help="Spleeter TensorFlow checkpoints (a folder with model.index and model.data-00000-of-00001, "
                "or the release .tar.gz)",
    recognise=recognise,
))
