"""SCNet in torch, written for export: the network between the STFT and the inverse STFT.

From the paper (Tong et al., "SCNet: Sparse Compression Network for Music Source Separation",
ICASSP 2024) and the meaning of MSST's ``scnet`` config; parameter names follow the state dicts
MSST writes, so its checkpoints load with ``strict=True``:

- the input spectrogram (real and imaginary parts of each channel as channels) goes through
  ``len(dims) - 1`` sparse down-sampling blocks (``encoder.{i}``). Each splits the frequency axis
  into a low, mid and high band (proportions ``band_SR``), down-samples each with its own
  convolution over frequency (``SDlayer.convs``: kernel ``band_kernel``, stride ``band_stride``),
  runs a stack of residual convolution modules over time on each band (``conv_modules``: group
  norm, conv to twice the compressed width and a GLU, depthwise conv, group norm, swish, pointwise
  conv back), applies GELU, joins the bands and keeps that as the skip, then a 2-D convolution
  (``globalconv``);
- a separation network of ``num_dplayer`` dual-path layers (``separation_net.dp_modules``): a
  bidirectional LSTM across frequency, then one across time, each after a group norm and followed
  by a linear layer and a residual sum. Between layers the features move between time and the
  Fourier transform over time (orthonormal real FFT, real and imaginary parts as channels) and
  back, alternately;
- decoder blocks (``decoder.{k}``, deepest first): fusion with the skip (add, duplicate channels,
  2-D conv, GLU), then per band a transposed convolution over frequency (``convtrs``) trimmed
  symmetrically to the band's size. The last gives every source's real and imaginary parts.

What is not MSST's code: the band edges and paddings are computed once for the network's fixed
bins (:func:`.scnet_config.band_plan`), and the real FFT over time is a product with fixed cosine
and sine matrices (the number of frames is fixed by the chunk), so the graph exports to ONNX
without complex tensors. The STFT stays outside (see :mod:`.scnet`); the network scales by
``nfft ** -0.5`` in and ``nfft ** 0.5`` out when ``normalized`` (what ``torch.stft``'s
``normalized=True`` does).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .scnet_config import ScnetConfig


def _conv_module_layer(channels: int, hidden: int, kernel: int) -> nn.Sequential:
    """One residual layer of a convolution module; indices 0, 1, 3, 4, 6 carry the weights."""
    return nn.Sequential(
        nn.GroupNorm(1, channels),
        nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2),
        nn.GLU(dim=1),
        nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
        nn.GroupNorm(1, hidden),
        nn.SiLU(),  # swish
        nn.Conv1d(hidden, channels, 1),
    )


class ConvStack(nn.Module):
    """``depth`` residual convolution layers over time, on ``(batch, channels, frames)``."""

    def __init__(self, channels: int, depth: int, compress: float, kernel: int):
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(_conv_module_layer(channels, hidden, kernel) for _ in range(abs(depth)))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


class BandSplit(nn.Module):
    """The three frequency-band convolutions of a down-sampling block (keys ``SDlayer.convs.*``)."""

    def __init__(self, c_in: int, c_out: int, cfg: ScnetConfig):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, (k, 1), (s, 1))
                                   for k, s in zip(cfg.band_kernel, cfg.band_stride))


class DownBlock(nn.Module):
    """A sparse down-sampling block; ``level`` is its :class:`~.scnet_config.Level`."""

    def __init__(self, c_in: int, c_out: int, cfg: ScnetConfig, level):
        super().__init__()
        self.level = level
        self.SDlayer = BandSplit(c_in, c_out, cfg)
        self.conv_modules = nn.ModuleList(ConvStack(c_out, d, cfg.compress, cfg.conv_kernel) for d in cfg.conv_depths)
        self.globalconv = nn.Conv2d(c_out, c_out, 3, 1, 1)

    def forward(self, x):
        bands = []
        for conv, stack, (start, end, left, right, out) in zip(self.SDlayer.convs, self.conv_modules,
                                                              self.level.bands):
            band = conv(F.pad(x[:, :, start:end], (0, 0, left, right)))  # (b, c, out, t)
            channels, frames = band.shape[1], band.shape[3]
            flat = band.permute(0, 2, 1, 3).reshape(-1, channels, frames)  # each bin's time series
            band = stack(flat).reshape(-1, out, channels, frames).permute(0, 2, 1, 3)
            bands.append(F.gelu(band))
        skip = torch.cat(bands, dim=2)
        return self.globalconv(skip), skip


class Fusion(nn.Module):
    """Skip fusion in a decoder block (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, x, skip):
        x = x + skip
        return F.glu(self.conv(torch.cat([x, x], dim=1)), dim=1)


class BandMerge(nn.Module):
    """A decoder block's per-band transposed convolutions (keys ``convtrs.*``)."""

    def __init__(self, c_in: int, c_out: int, cfg: ScnetConfig, level):
        super().__init__()
        self.level = level
        self.convtrs = nn.ModuleList(nn.ConvTranspose2d(c_in, c_out, (k, 1), (s, 1))
                                     for k, s in zip(cfg.band_kernel, cfg.band_stride))

    def forward(self, x):
        outputs, at = [], 0
        for convtr, (start, end, _, _, out) in zip(self.convtrs, self.level.bands):
            y = convtr(x[:, :, at:at + out])
            at += out
            length = end - start
            cut = abs(length - y.shape[2]) // 2
            outputs.append(y[:, :, cut:cut + length])
        return torch.cat(outputs, dim=2)


class DualPath(nn.Module):
    """A bidirectional LSTM across frequency, then one across time, each residual."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(nn.LSTM(channels, hidden, num_layers=1, bidirectional=True, batch_first=True)
                                         for _ in range(2))
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x):
        _, channels, bins, frames = x.shape
        # across frequency: one sequence of bins per (item, frame)
        y = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(-1, bins, channels)
        y = self.linear_layers[0](self.lstm_layers[0](y)[0])
        x = x + y.reshape(-1, frames, bins, channels).permute(0, 3, 2, 1)
        # across time: one sequence of frames per (item, bin)
        y = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(-1, frames, channels)
        y = self.linear_layers[1](self.lstm_layers[1](y)[0])
        return x + y.reshape(-1, bins, frames, channels).permute(0, 3, 1, 2)


class TimeFourier(nn.Module):
    """Orthonormal real FFT over the last axis (``frames`` even) and its inverse, as fixed
    matrix products. Forward: ``(b, c, f, T)`` -> ``(b, 2c, f, T/2+1)`` (real parts, then
    imaginary); inverse: back, ignoring the imaginary parts of the first and last bins as an
    inverse real FFT does."""

    def __init__(self, frames: int):
        super().__init__()
        half = frames // 2 + 1
        n = np.arange(frames)[:, None]
        k = np.arange(half)[None, :]
        angle = 2.0 * np.pi * ((n * k) % frames) / frames  # exact angles before the cosine
        scale = 1.0 / math.sqrt(frames)
        weight = np.full(half, 2.0)
        weight[0] = 1.0
        weight[-1] = 1.0  # frames is even: the last bin is Nyquist's
        as_t = lambda a: torch.from_numpy(a.astype(np.float32))
        self.register_buffer("cos", as_t(np.cos(angle) * scale), persistent=False)  # (T, half)
        self.register_buffer("sin", as_t(-np.sin(angle) * scale), persistent=False)
        self.register_buffer("icos", as_t((np.cos(angle) * scale * weight).T), persistent=False)  # (half, T)
        self.register_buffer("isin", as_t((-np.sin(angle) * scale * weight).T), persistent=False)

    def forward(self, x, inverse: bool):
        if inverse:
            real, imag = x.chunk(2, dim=1)
            return real @ self.icos + imag @ self.isin
        return torch.cat([x @ self.cos, x @ self.sin], dim=1)


class SeparationNet(nn.Module):
    def __init__(self, channels: int, expand: int, layers: int, frames: int):
        super().__init__()
        self.dp_modules = nn.ModuleList(DualPath(channels * (2 if i % 2 else 1), expand) for i in range(layers))
        self.fourier = TimeFourier(frames)

    def forward(self, x):
        for i, layer in enumerate(self.dp_modules):
            x = self.fourier(layer(x), inverse=bool(i % 2))
        return x


class Scnet(nn.Module):
    """SCNet for one chunk's spectrogram.

    Input float32 ``[batch, audio_channels, nfft/2+1, dim_t, 2]``: the STFT (rectangular window of
    ``win_size``, centred, reflect padding, not normalized) of the chunk with the network's padding
    (:func:`~.scnet_config.network_pad`). Output ``[batch, sources, audio_channels, nfft/2+1,
    dim_t, 2]``: each source's spectrogram, for the inverse STFT with the same window.
    """

    def __init__(self, cfg: ScnetConfig):
        super().__init__()
        self.cfg = cfg
        self.channels, self.bins, self.frames = cfg.audio_channels, cfg.bins, cfg.dim_t
        levels = cfg.levels()
        dims = cfg.dims
        sources = len(cfg.sources)
        self.encoder = nn.ModuleList(DownBlock(dims[i], dims[i + 1], cfg, levels[i]) for i in range(len(dims) - 1))
        self.decoder = nn.ModuleList(
            nn.ModuleList([Fusion(dims[i + 1]),
                           BandMerge(dims[i + 1], dims[i] * (sources if i == 0 else 1), cfg, levels[i])])
            for i in reversed(range(len(dims) - 1)))
        self.separation_net = SeparationNet(dims[-1], cfg.expand, cfg.num_dplayer, cfg.dim_t)
        self.scale = cfg.n_fft ** -0.5 if cfg.normalized else 1.0

    def forward(self, spec):
        sources = len(self.cfg.sources)
        x = spec.permute(0, 1, 4, 2, 3).reshape(-1, 2 * self.channels, self.bins, self.frames)
        if self.scale != 1.0:
            x = x * self.scale
        skips = []
        for block in self.encoder:
            x, skip = block(x)
            skips.append(skip)
        x = self.separation_net(x)
        for fusion, merge in self.decoder:
            x = merge(fusion(x, skips.pop()))
        x = x.reshape(-1, sources, self.channels, 2, self.bins, self.frames).permute(0, 1, 2, 4, 5, 3)
        if self.scale != 1.0:
            x = x * (1.0 / self.scale)
        return x.contiguous()
