"""Four stems without 4-stem weights: the embedded 2-stem model's vocals, and a signal-processing
split of its instrumental into drums, bass and other. It is a DSP split, not a 4-stem model.

Per chunk, the vocal model (:class:`~.mask.MaskEngine`) gives the vocals; the instrumental chunk
``x - vocals`` is split by harmonic/percussive separation with median filters (Fitzgerald,
"Harmonic/percussive separation using median filtering", DAFx 2010):

- ``P`` is the magnitude STFT averaged over the two channels (one mask for both keeps the stereo
  image); ``H = median over time`` (a horizontal filter: sustained partials survive, clicks do
  not) and ``Q = median over frequency`` (a vertical filter: broadband onsets survive);
- soft masks ``M_h = H^p / (H^p + Q^p)`` and ``M_p = 1 - M_h``. Fitzgerald's Wiener-like masks
  use ``p = 2`` (so does librosa's ``decompose.hpss``); ``p = 1`` measured better here;
- *bass* is the harmonic part below a crossover: ``M_b = M_h * L(f)`` where ``L`` falls from 1 at
  :data:`BASS_HZ`/2 to 0 at 2 :data:`BASS_HZ`, linear in log frequency (an octave either side);
- *drums* is the percussive part, ``M_d = M_p`` (the kick's low band too);
- *other* is the residual stem ``x - vocals - drums - bass`` (:mod:`.runner`): the harmonic part
  above the crossover, and anything the transforms do not give back.

Constants were chosen on the two 4-stem songs in ``../shared/data`` (README, "Four stems"), SDR
on (rock, koronium): a 31-frame (0.72 s) harmonic kernel (librosa's default size) beat 17 frames
by +0.7/+0.8 dB on drums and +0.9/+2.0 dB on bass; 45 and 61 frames were worse on drums. The
crossover: 150 Hz lost bass and other, 350 Hz gained on rock but cost koronium's other 0.5 dB. Each chunk is trimmed by the STFT's half window plus half
the harmonic kernel, so the medians never see the edge of a chunk's reflection padding in the
output that is kept.
"""

from __future__ import annotations

import numpy as np

from .families import Family, register
from .models import DEFAULT_4STEMS, DEFAULT_MODEL, ModelCard, resolve
from .spectral import Stft

#: STFT of the split, in samples at 44.1 kHz (Fitzgerald 2010 uses 4096-point frames, 1/4 hop).
N_FFT, HOP = 4096, 1024
#: Median filter lengths: harmonic across frames, percussive across bins (both odd).
HARMONIC_FRAMES, PERCUSSIVE_BINS = 31, 31
#: Exponent of the soft masks (Fitzgerald 2010 and librosa use 2; 1 measured better on both songs:
#: drums +0.1/+0.6 dB, bass +0.2/+0.8 dB with the 17-sized kernels).
POWER = 1.0
#: Centre of the bass crossover, Hz (half gain); full bass an octave below, none an octave above.
BASS_HZ = 250.0
#: Floor under the mask denominators, in linear magnitude squared.
EPS = 1e-12


def bass_weights(n_fft: int, sample_rate: int, *, centre_hz: float = BASS_HZ) -> np.ndarray:
    """``L(f)``: 1 below ``centre/2``, 0 above ``2 centre``, linear in log2 f between; shape (bins, 1)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    with np.errstate(divide="ignore"):
        octaves = np.log2(np.maximum(freqs, 1e-9) / centre_hz)
    return np.clip(0.5 - 0.5 * octaves, 0.0, 1.0).astype(np.float32)[:, np.newaxis]


def hpss_masks(magnitude: np.ndarray, *, harmonic_frames: int = HARMONIC_FRAMES,
               percussive_bins: int = PERCUSSIVE_BINS, power: float = POWER) -> tuple[np.ndarray, np.ndarray]:
    """Fitzgerald's soft harmonic and percussive masks.

    Parameters
    ----------
    magnitude : ndarray, shape (..., bins, frames), float32
        A magnitude spectrogram.

    Returns
    -------
    harmonic, percussive : ndarray, same shape, float32
        Masks in [0, 1] that sum to 1 in every bin (equal shares where both medians are 0).
    """
    from scipy.ndimage import median_filter  # here: the family registry imports this module cheaply

    lead = (1,) * (magnitude.ndim - 2)
    harmonic = median_filter(magnitude, size=lead + (1, harmonic_frames), mode="reflect")
    percussive = median_filter(magnitude, size=lead + (percussive_bins, 1), mode="reflect")
    h, q = harmonic.astype(np.float64) ** power, percussive.astype(np.float64) ** power
    total = h + q
    mask = np.divide(h, total, out=np.full_like(h, 0.5), where=total > EPS)
    mask = mask.astype(np.float32)
    return mask, (1.0 - mask).astype(np.float32)


class Dsp4Engine:
    """Vocals from a mask engine, drums and bass by HPSS of the rest; satisfies :class:`~.runner.Engine`.

    Parameters
    ----------
    vocals : MaskEngine
        The 2-stem engine (the embedded default model) whose ``vocals`` output is kept.
    """

    stems = ("vocals", "drums", "bass", "other")
    residual_stem = "other"

    def __init__(self, vocals):
        if "vocals" not in vocals.stems:
            raise ValueError(f"the vocal engine gives {vocals.stems}, not vocals")
        self.vocals = vocals
        self.card = vocals.card  # the model file behind the split (cache keys, manifests)
        self.sample_rate = vocals.sample_rate
        self.chunk = vocals.chunk
        self.trim = max(vocals.trim, N_FFT // 2 + (HARMONIC_FRAMES // 2) * HOP)
        self.options = {**vocals.options, "split": "hpss"}
        self.stft = Stft(N_FFT, HOP)
        self.bass = bass_weights(N_FFT, self.sample_rate)

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """``(batch, 2, chunk)`` float32 -> vocals, drums and bass, each ``(batch, 2, chunk)``."""
        vocals = self.vocals.run(chunks)["vocals"]
        drums, bass = self.split(chunks - vocals)
        return {"vocals": vocals, "drums": drums, "bass": bass}

    def split(self, instrumental: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(batch, 2, samples)`` -> ``(drums, bass)``, same shape; ``other`` is what is left."""
        spec = self.stft.forward(instrumental)  # (batch, 2, bins, frames)
        magnitude = np.abs(spec).mean(axis=1)  # (batch, bins, frames)
        harmonic, percussive = hpss_masks(magnitude)
        samples = instrumental.shape[-1]
        drums = self.stft.inverse(spec * percussive[:, np.newaxis], samples)
        bass = self.stft.inverse(spec * (harmonic * self.bass)[:, np.newaxis], samples)
        return drums, bass


def _card(name: str) -> ModelCard:
    # The file and its checksum are the vocal model's: what there is to verify and to cache by.
    vocals = resolve(DEFAULT_MODEL)
    return ModelCard(name=DEFAULT_4STEMS, family="hpss", stems=Dsp4Engine.stems,
                     file=vocals.file, sha256=vocals.sha256, license=vocals.license, credit=vocals.credit,
                     description=f"DSP split, not a 4-stem model: {DEFAULT_MODEL} vocals, the rest split "
                                 "into drums/bass/other by median-filter HPSS")


def _open(card: ModelCard, settings) -> Dsp4Engine:
    from .mask import MaskEngine

    return Dsp4Engine(MaskEngine(resolve(DEFAULT_MODEL), threads=settings.threads, batch_size=settings.batch_size,
                                 high_band=settings.high_band, device=settings.device))


FAMILY = register(Family(
    name="hpss",
    open_engine=_open,
    where=lambda card: (f"({DEFAULT_MODEL} vocals + a DSP split of the rest by HPSS; not a 4-stem model; "
                        "also gives instrumental = drums+bass+other)"),
    builtin=(DEFAULT_4STEMS,), builtin_card=_card,
))
