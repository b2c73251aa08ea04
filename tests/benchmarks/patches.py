"""Proposed changes to stembridge's MDX pipeline, applied as monkeypatches so they can be measured
side by side with the code as it is, without editing ``bridge/``.

Each patch has the same results as the code it replaces (to float32 rounding; run.py checks the
outputs' SNR against the unpatched run). The diff each one stands for is in README.md.

- ``one_istft``: for a model whose primary stem is the residual one (instrumental-primary models
  such as Inst_HQ_3), ``MdxEngine.run`` computes ``istft(matched) - istft(primary)`` with two
  inverse STFTs per chunk; the inverse STFT is linear, so ``istft(matched - primary)`` is the
  same with one.
- ``fast_unpack``: ``unpack_mdx`` builds its complex array as ``re + 1j * im``, which goes through
  complex128 temporaries (``1j * float32`` is complex128) four times the size of the result;
  writing the real and imaginary parts in place avoids them.
- ``no_copies``: two full-size copies per chunk that change nothing: ``Runner.__call__``
  concatenates the output of a single ``session.run`` (``np.concatenate`` of one part copies it),
  and ``pack_mdx`` ends in ``.astype(np.float32)`` on an array that is already float32.
- ``scipy_fft``: ``numpy.fft.rfft`` on float32 frames is ~3.5x slower than ``scipy.fft.rfft`` on the
  same data here (numpy 2.4: 34 ms vs 10 ms for 2 x 256 frames of 6144); scipy is already installed
  (museval depends on it).
"""

from __future__ import annotations

import numpy as np


def _fast_unpack(packed: np.ndarray, bins: int) -> np.ndarray:
    batch, _, dim_f, frames = packed.shape
    pairs = packed.reshape(batch, 2, 2, dim_f, frames)
    spec = np.zeros((batch, 2, bins, frames), np.complex64)
    spec.real[:, :, :dim_f, :] = pairs[:, :, 0]
    spec.imag[:, :, :dim_f, :] = pairs[:, :, 1]
    return spec


def patch_fast_unpack() -> None:
    from bridge.separation import mdx, spectral

    spectral.unpack_mdx = _fast_unpack
    mdx.unpack_mdx = _fast_unpack


def patch_one_istft() -> None:
    from bridge.separation import mdx

    original = mdx.MdxEngine.run

    def run(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        if self.invert or self.denoise or self.residual_stem != self.primary:
            return original(self, chunks)
        card = self.card
        x = mdx.pack_mdx(self.stft.forward(chunks), card.dim_f)
        y = self._model(x)
        other = mdx.unpack_mdx(x, self.stft.bins)
        other -= mdx.unpack_mdx(y, self.stft.bins) * np.float32(card.compensate)
        return {self.secondary: self.stft.inverse(other, self.chunk)}

    mdx.MdxEngine.run = run


def patch_scipy_fft() -> None:
    import scipy.fft

    from bridge.separation import spectral

    def forward(self, audio: np.ndarray) -> np.ndarray:
        pad = self.n_fft // 2
        if audio.shape[-1] <= pad:
            raise ValueError(f"reflect padding needs more than {pad} samples, got {audio.shape[-1]}")
        widths = [(0, 0)] * (audio.ndim - 1) + [(pad, pad)]
        padded = np.pad(audio, widths, mode="reflect")
        frames = spectral.sliding_window_view(padded, self.n_fft, axis=-1)[..., :: self.hop, :]
        spec = scipy.fft.rfft(frames * self.window, axis=-1)
        return np.swapaxes(spec, -1, -2).astype(np.complex64, copy=False)

    def inverse(self, spec: np.ndarray, length: int) -> np.ndarray:
        n_frames = spec.shape[-1]
        frames = scipy.fft.irfft(np.swapaxes(spec, -1, -2), n=self.n_fft, axis=-1).astype(np.float32, copy=False)
        frames *= self.window
        signal = spectral._overlap_add(frames, self.hop)
        signal /= self._norm(n_frames)
        pad = self.n_fft // 2
        out = signal[..., pad:pad + length]
        if out.shape[-1] < length:
            widths = [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])]
            out = np.pad(out, widths)
        return np.ascontiguousarray(out)

    spectral.Stft.forward = forward
    spectral.Stft.inverse = inverse


def patch_no_copies() -> None:
    from bridge.separation import mdx, runtime

    def call(self, x: np.ndarray) -> dict[str, np.ndarray]:
        step = self.max_batch or x.shape[0]
        parts = [self.session.run(None, {self.input.name: np.ascontiguousarray(x[i:i + step])})
                 for i in range(0, x.shape[0], step)]
        if len(parts) == 1:
            return dict(zip(self.outputs, parts[0]))
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(self.outputs)}

    def pack_mdx(spec: np.ndarray, dim_f: int) -> np.ndarray:
        cut = spec[:, :, :dim_f, :]
        packed = np.stack([cut.real, cut.imag], axis=2)
        packed = packed.reshape(spec.shape[0], 4, dim_f, spec.shape[-1]).astype(np.float32, copy=False)
        packed[:, :, :3, :] = 0.0
        return packed

    runtime.Runner.__call__ = call
    mdx.pack_mdx = pack_mdx


PATCHES = {"fast_unpack": patch_fast_unpack, "one_istft": patch_one_istft, "scipy_fft": patch_scipy_fft}
#: Not in "all" (measured separately, after the first full run): name -> patch.
EXTRA = {"no_copies": patch_no_copies}


def apply(name: str) -> None:
    """Apply one patch by name, or ``all``."""
    names = list(PATCHES) if name == "all" else [name]
    for n in names:
        {**PATCHES, **EXTRA}[n]()
