"""UVR's VR networks in torch, for ``stembridge models import`` only (torch is not a run-time need).

Two generations, both U-Net cascades that turn a magnitude spectrogram ``[batch, 2, bins + 1,
frames]`` (stereo, the multi-band stack of :mod:`bridge.separation.vr_bands`, divided by the
song's largest magnitude) into a mask of the same shape minus ``offset`` frames at each end:

- **v5** (UVR's ``nets.py``, ``CascadedASPPNet``): a low-band and a high-band ASPP U-Net on the
  two halves of the bins, a full-band one on the input and their output, and a third on all of
  it; encoders of stride 2 with LeakyReLU, an ASPP bottleneck (global frequency pooling, a 1x1
  convolution and three to five dilated depthwise-separable ones), bilinear decoders with skips.
  Its width ``ch`` (16, 32 or 64) and ASPP depth come from the size class of the file (UVR's
  table: 31191 and 33966 KB ``ch=16``, 123812/123821 KB ``ch=32``, 537227/537238 KB ``ch=64``;
  33966 and 5372xx have two more ASPP branches, 129605 KB has a fifth encoder). ``offset`` 128.
- **v5.1** (``nets_new.py``, ``CascadedNet``): three stages of U-Nets whose decoder carries a
  bidirectional LSTM over time on one pooled channel, sized by ``nout`` and ``nout_lstm`` (UVR's
  hash table; 32/128 unless it says otherwise). ``offset`` 64.

Parameter names follow the published state dicts exactly, so ``load_state_dict(strict=True)``
checks a checkpoint against the architecture. The graph is written for export: every shape but
batch and time is fixed, frequency pooling is a mean (the reference's ``AdaptiveAvgPool2d((1,
None))``) broadcast back rather than interpolated from one row (the same values), and the time axis
stays symbolic, so one ONNX file takes any window of frames divisible by 16 (32 for the 129605
class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: UVR's size classes (KB, rounded up) and what they mean for a v5 network: (ch, ASPP branches, enc5).
V5_CLASSES = {31191: (16, 5, False), 33966: (16, 7, False), 123812: (32, 5, False), 123821: (32, 5, False),
              129605: (16, 6, True), 537227: (64, 7, False), 537238: (64, 7, False)}
#: Size classes the reference runs as v5.1 networks even without nout in the hash table.
V51_CLASSES = (56817, 218409)
ALL_CLASSES = sorted(V5_CLASSES) + sorted(V51_CLASSES)


def size_class(kilobytes: int) -> int:
    """The reference's class of a file of ``kilobytes`` (rounded up): the nearest in its table."""
    return min(ALL_CLASSES, key=lambda c: abs(c - kilobytes))


class ConvBnAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation, stored as ``conv.0/1``."""

    def __init__(self, nin, nout, k=3, stride=1, pad=1, dilation=1, act=nn.ReLU):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(nin, nout, k, stride, pad, dilation=dilation, bias=False),
                                  nn.BatchNorm2d(nout), act())

    def forward(self, x):
        return self.conv(x)


class SepConvBnAct(nn.Module):
    """Depthwise then pointwise Conv2d -> BatchNorm2d -> activation, stored as ``conv.0/1/2``."""

    def __init__(self, nin, nout, k=3, stride=1, pad=1, dilation=1, act=nn.ReLU):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(nin, nin, k, stride, pad, dilation=dilation, groups=nin, bias=False),
                                  nn.Conv2d(nin, nout, 1, bias=False), nn.BatchNorm2d(nout), act())

    def forward(self, x):
        return self.conv(x)


def _upsample(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def _pooled(conv, x):
    """The ASPP's image-level branch: mean over frequency, convolved, broadcast back."""
    return conv(x.mean(dim=2, keepdim=True)).expand(-1, -1, x.shape[2], -1)


# --- v5 ------------------------------------------------------------------------------------------

class V5Encoder(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.conv1 = ConvBnAct(nin, nout, 3, 1, 1, act=nn.LeakyReLU)
        self.conv2 = ConvBnAct(nout, nout, 3, 2, 1, act=nn.LeakyReLU)

    def forward(self, x):
        skip = self.conv1(x)
        return self.conv2(skip), skip


class V5Decoder(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.conv = ConvBnAct(nin, nout, 3, 1, 1)

    def forward(self, x, skip):
        return self.conv(torch.cat([_upsample(x), skip], dim=1))


class V5Aspp(nn.Module):
    def __init__(self, nin, nout, branches, dilations=(4, 8, 16)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Identity(), ConvBnAct(nin, nin, 1, 1, 0))  # [0] stands for the pooling
        self.conv2 = ConvBnAct(nin, nin, 1, 1, 0)
        self.conv3 = SepConvBnAct(nin, nin, 3, 1, dilations[0], dilations[0])
        self.conv4 = SepConvBnAct(nin, nin, 3, 1, dilations[1], dilations[1])
        self.conv5 = SepConvBnAct(nin, nin, 3, 1, dilations[2], dilations[2])
        self.extra = branches - 5
        if self.extra:
            # The reference builds one more branch and registers it as conv6 (and again as conv7):
            # the same weights, so the extra branches compute the same features.
            shared = SepConvBnAct(nin, nin, 3, 1, dilations[2], dilations[2])
            self.conv6 = shared
            if self.extra == 2:
                self.conv7 = shared
        self.bottleneck = nn.Sequential(ConvBnAct(nin * branches, nout, 1, 1, 0), nn.Identity())

    def forward(self, x):
        feats = [_pooled(self.conv1[1], x), self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        if self.extra:
            six = self.conv6(x)
            feats += [six] * self.extra
        return self.bottleneck(torch.cat(feats, dim=1))


class V5Net(nn.Module):
    def __init__(self, nin, ch, branches, enc5):
        super().__init__()
        self.enc1 = V5Encoder(nin, ch)
        self.enc2 = V5Encoder(ch, ch * 2)
        self.enc3 = V5Encoder(ch * 2, ch * 4)
        self.enc4 = V5Encoder(ch * 4, ch * 8)
        self.has_enc5 = enc5
        if enc5:
            self.enc5 = V5Encoder(ch * 8, ch * 16)
            self.aspp = V5Aspp(ch * 16, ch * 32, branches)
            self.dec5 = V5Decoder(ch * (16 + 32), ch * 16)
        else:
            self.aspp = V5Aspp(ch * 8, ch * 16, branches)
        self.dec4 = V5Decoder(ch * (8 + 16), ch * 8)
        self.dec3 = V5Decoder(ch * (4 + 8), ch * 4)
        self.dec2 = V5Decoder(ch * (2 + 4), ch * 2)
        self.dec1 = V5Decoder(ch * (1 + 2), ch)

    def forward(self, x):
        h, s1 = self.enc1(x)
        h, s2 = self.enc2(h)
        h, s3 = self.enc3(h)
        h, s4 = self.enc4(h)
        if self.has_enc5:
            h, s5 = self.enc5(h)
            h = self.dec5(self.aspp(h), s5)
        else:
            h = self.aspp(h)
        return self.dec1(self.dec2(self.dec3(self.dec4(h, s4), s3), s2), s1)


class CascadedV5(nn.Module):
    """The v5 cascade for ``bins`` rows (``bins + 1`` in and out)."""

    offset = 128

    def __init__(self, bins: int, size: int):
        super().__init__()
        ch, branches, enc5 = V5_CLASSES[size]
        self.bins = bins
        self.stg1_low_band_net = V5Net(2, ch, branches, enc5)
        self.stg1_high_band_net = V5Net(2, ch, branches, enc5)
        self.stg2_bridge = ConvBnAct(ch + 2, ch // 2, 1, 1, 0)
        self.stg2_full_band_net = V5Net(ch // 2, ch, branches, enc5)
        self.stg3_bridge = ConvBnAct(2 * ch + 2, ch, 1, 1, 0)
        self.stg3_full_band_net = V5Net(ch, ch * 2, branches, enc5)
        self.out = nn.Conv2d(ch * 2, 2, 1, bias=False)
        self.aux1_out = nn.Conv2d(ch, 2, 1, bias=False)  # training heads, kept for a strict load
        self.aux2_out = nn.Conv2d(ch, 2, 1, bias=False)

    def forward(self, x):
        x = x[:, :, :self.bins]
        half = self.bins // 2
        aux1 = torch.cat([self.stg1_low_band_net(x[:, :, :half]), self.stg1_high_band_net(x[:, :, half:])], dim=2)
        h = torch.cat([x, aux1], dim=1)
        aux2 = self.stg2_full_band_net(self.stg2_bridge(h))
        h = self.stg3_full_band_net(self.stg3_bridge(torch.cat([x, aux1, aux2], dim=1)))
        return _finish(torch.sigmoid(self.out(h)), self.offset)


# --- v5.1 ----------------------------------------------------------------------------------------

class V51Encoder(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.conv1 = ConvBnAct(nin, nout, 3, 2, 1, act=nn.LeakyReLU)
        self.conv2 = ConvBnAct(nout, nout, 3, 1, 1, act=nn.LeakyReLU)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class V51Decoder(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.conv1 = ConvBnAct(nin, nout, 3, 1, 1)

    def forward(self, x, skip):
        return self.conv1(torch.cat([_upsample(x), skip], dim=1))


class V51Aspp(nn.Module):
    def __init__(self, nin, nout, dilations=((4, 2), (8, 4), (12, 6))):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Identity(), ConvBnAct(nin, nout, 1, 1, 0))
        self.conv2 = ConvBnAct(nin, nout, 1, 1, 0)
        self.conv3 = ConvBnAct(nin, nout, 3, 1, dilations[0], dilations[0])
        self.conv4 = ConvBnAct(nin, nout, 3, 1, dilations[1], dilations[1])
        self.conv5 = ConvBnAct(nin, nout, 3, 1, dilations[2], dilations[2])
        self.bottleneck = ConvBnAct(nout * 5, nout, 1, 1, 0)

    def forward(self, x):
        feats = [_pooled(self.conv1[1], x), self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        return self.bottleneck(torch.cat(feats, dim=1))


class V51Lstm(nn.Module):
    """One pooled channel per frame through a bidirectional LSTM over time, back to ``bins`` rows."""

    def __init__(self, nin_conv, bins, hidden):
        super().__init__()
        self.conv = ConvBnAct(nin_conv, 1, 1, 1, 0)
        self.lstm = nn.LSTM(input_size=bins, hidden_size=hidden // 2, bidirectional=True)
        self.dense = nn.Sequential(nn.Linear(hidden, bins), nn.BatchNorm1d(bins), nn.ReLU())

    def forward(self, x):
        n, _, bins, frames = x.shape
        h = self.conv(x)[:, 0].permute(2, 0, 1)  # frames, batch, bins
        h, _ = self.lstm(h)
        h = self.dense(h.reshape(-1, h.shape[-1]))
        return h.reshape(frames, n, 1, bins).permute(1, 2, 3, 0)


class V51Net(nn.Module):
    def __init__(self, nin, nout, bins_lstm, nout_lstm):
        super().__init__()
        self.enc1 = ConvBnAct(nin, nout, 3, 1, 1)
        self.enc2 = V51Encoder(nout, nout * 2)
        self.enc3 = V51Encoder(nout * 2, nout * 4)
        self.enc4 = V51Encoder(nout * 4, nout * 6)
        self.enc5 = V51Encoder(nout * 6, nout * 8)
        self.aspp = V51Aspp(nout * 8, nout * 8)
        self.dec4 = V51Decoder(nout * (6 + 8), nout * 6)
        self.dec3 = V51Decoder(nout * (4 + 6), nout * 4)
        self.dec2 = V51Decoder(nout * (2 + 4), nout * 2)
        self.lstm_dec2 = V51Lstm(nout * 2, bins_lstm, nout_lstm)
        self.dec1 = V51Decoder(nout * (1 + 2) + 1, nout)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        h = self.aspp(self.enc5(e4))
        h = self.dec2(self.dec3(self.dec4(h, e4), e3), e2)
        h = torch.cat([h, self.lstm_dec2(h)], dim=1)
        return self.dec1(h, e1)


class CascadedV51(nn.Module):
    """The v5.1 cascade for ``bins`` rows, ``nout`` wide with LSTMs of ``nout_lstm``."""

    offset = 64

    def __init__(self, bins: int, nout: int = 32, nout_lstm: int = 128):
        super().__init__()
        self.bins = bins
        quarter = bins // 4  # LSTM width of a half band at the decoder's level (bins / 2 / 2)
        self.stg1_low_band_net = nn.Sequential(V51Net(2, nout // 2, quarter, nout_lstm),
                                               ConvBnAct(nout // 2, nout // 4, 1, 1, 0))
        self.stg1_high_band_net = V51Net(2, nout // 4, quarter, nout_lstm // 2)
        self.stg2_low_band_net = nn.Sequential(V51Net(nout // 4 + 2, nout, quarter, nout_lstm),
                                               ConvBnAct(nout, nout // 2, 1, 1, 0))
        self.stg2_high_band_net = V51Net(nout // 4 + 2, nout // 2, quarter, nout_lstm // 2)
        self.stg3_full_band_net = V51Net(3 * nout // 4 + 2, nout, bins // 2, nout_lstm)
        self.out = nn.Conv2d(nout, 2, 1, bias=False)
        self.aux_out = nn.Conv2d(3 * nout // 4, 2, 1, bias=False)  # training head, kept for a strict load

    def forward(self, x):
        x = x[:, :, :self.bins]
        half = self.bins // 2
        low, high = x[:, :, :half], x[:, :, half:]
        l1, h1 = self.stg1_low_band_net(low), self.stg1_high_band_net(high)
        l2 = self.stg2_low_band_net(torch.cat([low, l1], dim=1))
        h2 = self.stg2_high_band_net(torch.cat([high, h1], dim=1))
        aux1, aux2 = torch.cat([l1, h1], dim=2), torch.cat([l2, h2], dim=2)
        f3 = self.stg3_full_band_net(torch.cat([x, aux1, aux2], dim=1))
        return _finish(torch.sigmoid(self.out(f3)), self.offset)


def _finish(mask, offset):
    """The last row repeated once (``bins + 1`` rows, as the input) and ``offset`` frames cut at each end."""
    mask = torch.cat([mask, mask[:, :, -1:]], dim=2)
    return mask[:, :, :, offset:mask.shape[3] - offset]
