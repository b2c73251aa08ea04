"""A 4-stem test separator: FFT bands per chunk (bass < 250 Hz, drums 250-2000 Hz, vocals
2-6 kHz) and the rest as "other", so the stems sum to the mix. The real 4-stem model is another
issue's; this satisfies the Separator protocol through ChunkedSeparator, as any engine does.
"""

from __future__ import annotations

import numpy as np

from bridge.separation import ChunkedSeparator

SR = 44100


class BandEngine:
    """An :class:`~bridge.separation.runner.Engine` that splits by frequency band."""

    sample_rate = SR
    chunk = 8192
    trim = 1024
    stems = ("vocals", "drums", "bass", "other")
    residual_stem = "other"

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        spectrum = np.fft.rfft(chunks, axis=-1)
        freqs = np.fft.rfftfreq(self.chunk, 1.0 / SR)

        def band(low, high):
            return np.fft.irfft(spectrum * ((freqs >= low) & (freqs < high)), n=self.chunk, axis=-1).astype(np.float32)

        return {"bass": band(0, 250), "drums": band(250, 2000), "vocals": band(2000, 6000)}


def four_stem_separator() -> ChunkedSeparator:
    return ChunkedSeparator(BandEngine(), overlap=0.25, name="bands")
