"""TFC-TDF v3 (MDX23C) as a torch module that loads the published checkpoints strictly.

Imported only by :mod:`.mdx23c` (``stembridge models import``), never at run time. The network is
the U-Net of Kim et al.'s TFC-TDF v3 ("Sound Demixing Challenge 2023 Music Demixing Track
Technical Report: TFC-TDF-UNet v3", 2023), written here from the paper and the config's meaning,
with the module tree and parameter names of the published code (python-audio-separator's and
UVR's ``tfc_tdf_v3.py``, ZFTurbo's ``mdx23c_tfc_tdf_v3.py``), so that their state dicts load with
``strict=True``: same names, same shapes, nothing left over.

What differs from those codes, on purpose: the STFT and its inverse are not in the module. The
input is the spectrogram as the reference computes it, ``[batch, 2*channels, dim_f, dim_t]``
float32 (channel order L.re, L.im, R.re, R.im; the first ``dim_f`` bins of a centred STFT with a
periodic Hann window of ``n_fft``), and the output the predicted spectrograms ``[batch, targets,
2*channels, dim_f, dim_t]`` in the same layout, which the run time pads back to ``n_fft//2+1``
bins with zeros and inverts. The network predicts spectrograms, not masks.

Shape notation: b batch, c feature channels, k sub-bands, f bins (per sub-band), t frames.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError


def norm_layer(kind: str | None, channels: int) -> nn.Module:
    """The config's ``model.norm``: None, BatchNorm, InstanceNorm (affine) or GroupNorm<groups>."""
    if kind is None:
        return nn.Identity()
    if kind == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if kind == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind.startswith("GroupNorm"):
        return nn.GroupNorm(num_groups=int(kind[len("GroupNorm"):]), num_channels=channels)
    raise ModelError(f"model.norm {kind!r} is not one of BatchNorm, InstanceNorm, GroupNorm<N> or null")


def activation(kind: str) -> nn.Module:
    """The config's ``model.act``: gelu, relu or elu<alpha> (e.g. ``elu1.0``)."""
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU()
    if kind.startswith("elu"):
        return nn.ELU(float(kind[3:]))
    raise ModelError(f"model.act {kind!r} is not one of gelu, relu, elu<alpha>")


def _pre(norm: str | None, act: str, channels: int, layer: nn.Module) -> nn.Sequential:
    """norm -> activation -> layer, indices 0, 1, 2 as the checkpoints name them."""
    return nn.Sequential(norm_layer(norm, channels), activation(act), layer)


class TfcTdfStack(nn.Module):
    """``blocks`` TFC-TDF blocks: a 3x3 conv (TFC), a bottlenecked dense layer across frequency
    added to it (TDF), another 3x3 conv, and a 1x1 shortcut around the whole block."""

    def __init__(self, in_channels: int, channels: int, blocks: int, bins: int, bottleneck: int,
                 norm: str | None, act: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            block = nn.Module()
            block.tfc1 = _pre(norm, act, in_channels, nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False))
            block.tdf = nn.Sequential(
                norm_layer(norm, channels), activation(act), nn.Linear(bins, bins // bottleneck, bias=False),
                norm_layer(norm, channels), activation(act), nn.Linear(bins // bottleneck, bins, bias=False))
            block.tfc2 = _pre(norm, act, channels, nn.Conv2d(channels, channels, 3, 1, 1, bias=False))
            block.shortcut = nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False)
            self.blocks.append(block)
            in_channels = channels

    def forward(self, x):  # [b, c, t, f]: the dense layers act on the last axis, frequency
        for block in self.blocks:
            skip = block.shortcut(x)
            x = block.tfc1(x)
            x = x + block.tdf(x)
            x = block.tfc2(x) + skip
        return x


class _Scale(nn.Module):
    """A strided (transposed) convolution between scales, under the checkpoints' name ``conv``."""

    def __init__(self, layer: nn.Module, channels: int, norm: str | None, act: str):
        super().__init__()
        self.conv = _pre(norm, act, channels, layer)

    def forward(self, x):
        return self.conv(x)


class TfcTdfNet(nn.Module):
    """TFC-TDF v3 between the STFT and its inverse (see the module docstring for the interface).

    Parameters
    ----------
    config : Mdx23cConfig
        From :func:`.mdx23c.parse_config`.
    """

    def __init__(self, config):
        super().__init__()
        self.targets = len(config.outputs)
        self.subbands = k = config.num_subbands
        self.spec_channels = 2 * config.audio_channels
        self.dim_f, self.dim_t = config.dim_f, config.dim_t
        dim_c = k * self.spec_channels  # sub-bands stacked as channels
        c, growth, scale = config.num_channels, config.growth, tuple(config.scale)
        f = config.dim_f // k
        norm, act, blocks, bn = config.norm, config.act, config.num_blocks_per_scale, config.bottleneck_factor
        self.first_conv = nn.Conv2d(dim_c, c, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(config.num_scales):
            block = nn.Module()
            block.tfc_tdf = TfcTdfStack(c, c, blocks, f, bn, norm, act)
            block.downscale = _Scale(nn.Conv2d(c, c + growth, scale, scale, bias=False), c, norm, act)
            self.encoder_blocks.append(block)
            c, f = c + growth, f // scale[1]
        self.bottleneck_block = TfcTdfStack(c, c, blocks, f, bn, norm, act)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(config.num_scales):
            block = nn.Module()
            block.upscale = _Scale(nn.ConvTranspose2d(c, c - growth, scale, scale, bias=False), c, norm, act)
            c, f = c - growth, f * scale[1]
            block.tfc_tdf = TfcTdfStack(2 * c, c, blocks, f, bn, norm, act)
            self.decoder_blocks.append(block)
        self.final_conv = nn.Sequential(nn.Conv2d(c + dim_c, c, 1, 1, 0, bias=False), activation(act),
                                        nn.Conv2d(c, self.targets * dim_c, 1, 1, 0, bias=False))

    def forward(self, spec):
        """``[b, 2*channels, dim_f, dim_t]`` -> ``[b, targets, 2*channels, dim_f, dim_t]``."""
        b, k = spec.shape[0], self.subbands
        # Sub-bands to channels: bins [0, dim_f/k) of every channel first, then the next band...
        mix = spec.reshape(b, self.spec_channels * k, self.dim_f // k, self.dim_t)
        first = self.first_conv(mix)
        x = first.transpose(2, 3)  # [b, c, t, f]
        skips = []
        for block in self.encoder_blocks:
            x = block.tfc_tdf(x)
            skips.append(x)
            x = block.downscale(x)
        x = self.bottleneck_block(x)
        for block in self.decoder_blocks:
            x = block.tfc_tdf(torch.cat([block.upscale(x), skips.pop()], 1))
        x = x.transpose(2, 3) * first  # gated by the first conv's features, as the published net does
        x = self.final_conv(torch.cat([mix, x], 1))
        return x.reshape(b, self.targets, self.spec_channels, self.dim_f, self.dim_t)
