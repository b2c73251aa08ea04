"""A weight-free fallback separator, so stembridge always runs. It is not a model.

It keeps what is panned to the centre and coherent between the channels, in the band where
voices live, as "vocals" (a soft centre-channel extraction: the mask is the inter-channel
similarity ``2|L R*| / (|L|^2 + |R|^2)`` raised to a power, as in Avendano & Jot, "A frequency-
domain approach to multichannel upmix", JAES 2004), and everything else as "instrumental". Expect
centred bass, kick and snare in its vocals, and any reverb or hard-panned voice in its
instrumental: use a real model (the default) for anything that matters. Mono input has no
stereo cue, so its vocals are only the voice band of the mix.
"""

from __future__ import annotations

import numpy as np

from .families import Family, register
from .models import ModelCard
from .spectral import Stft

SAMPLE_RATE = 44100
N_FFT = 4096
HOP = 1024
#: Voice band, Hz: below it sits the kick and bass, above it cymbals and air.
LOW_HZ, HIGH_HZ = 150.0, 8000.0
#: Sharpness of the centre mask.
POWER = 8.0


class DspEngine:
    """See the module docstring; satisfies :class:`~.runner.Engine`."""

    sample_rate = SAMPLE_RATE
    chunk = HOP * 255
    trim = N_FFT // 2
    stems = ("vocals", "instrumental")
    residual_stem = "instrumental"

    def __init__(self, card: ModelCard | None = None):
        self.card = card  # the built-in "dsp" card: no file, but what names this split in caches and manifests
        self.stft = Stft(N_FFT, HOP)
        freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
        ramp = np.clip((freqs - LOW_HZ * 0.5) / (LOW_HZ * 0.5), 0, 1) * np.clip((HIGH_HZ * 1.5 - freqs) / (HIGH_HZ * 0.5), 0, 1)
        self.band = ramp.astype(np.float32)[:, np.newaxis]

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.stft.forward(chunks)  # (batch, 2, bins, frames)
        left, right = spec[:, 0], spec[:, 1]
        cross = np.abs(left * np.conj(right))
        power = np.abs(left) ** 2 + np.abs(right) ** 2
        similarity = np.where(power > 1e-12, 2.0 * cross / np.maximum(power, 1e-12), 1.0)
        mask = (similarity ** POWER).astype(np.float32) * self.band
        vocals = self.stft.inverse(spec * mask[:, np.newaxis], self.chunk)
        return {"vocals": vocals}


def _card(name: str) -> ModelCard:
    return ModelCard(name="dsp", family="dsp", stems=DspEngine.stems, description="weight-free centre-channel fallback")


FAMILY = register(Family(
    name="dsp",
    open_engine=lambda card, settings: DspEngine(card),
    default_overlap=lambda card: 0.5, weights=False,
    where=lambda card: "(no weights; weight-free fallback)",
    builtin=("dsp",), builtin_card=_card,
))
