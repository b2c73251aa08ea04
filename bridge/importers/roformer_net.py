"""BS-RoFormer and Mel-Band RoFormer as torch modules that load the published checkpoints strictly.

Imported only by :mod:`.roformer` (``stembridge models import``), never at run time: torch is the
``import`` extra. The networks are written here from the papers (BS-RoFormer: Lu et al. 2023,
"Music Source Separation with Band-Split RoPE Transformer"; Mel-Band RoFormer: Wang et al. 2023)
with the module tree and parameter names of lucidrains' ``BS-RoFormer`` package and ZFTurbo's
Music-Source-Separation-Training (which UVR and python-audio-separator also use), so that their
state dicts load with ``strict=True``: same names, same shapes, nothing left over.

What differs from those codes, on purpose: the STFT and its inverse are not in the module. The
input is the spectrogram ``[batch, channels, n_fft//2+1, frames, 2]`` (real, imaginary) and the
output the complex mask ``[batch, outputs, channels, n_fft//2+1, frames, 2]`` the run time
multiplies onto it, so the ONNX export holds only real-valued ops. Dropout, checkpointing and
the training loss are left out (inference only); the ``Sequential`` indices that the reference
gives its dropout and rearrange layers are kept with ``nn.Identity`` so the names still match.

Shape notation in comments: b batch, s audio channels, f STFT bins, t frames, k bands, d model
width, h heads, n stems (outputs), c real/imaginary.

Axes are given as positive numbers where the rank is known: the TorchScript exporter turned an
``unsqueeze(-1)`` on a tensor of unknown rank into an unsqueeze of axis 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .roformer_config import RoformerConfig, mel_bands


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(d) * gamma (the reference's RMSNorm, which normalises by the L2 norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) over the whole head width, interleaved pairs, as
    ``rotary_embedding_torch.RotaryEmbedding(dim=dim_head)`` applies it. Its ``freqs`` (theta
    10000) is a parameter in the checkpoints, so it is loaded, not recomputed."""

    def __init__(self, dim_head: int):
        super().__init__()
        inverse = 1.0 / (10000 ** (torch.arange(0, dim_head, 2)[: dim_head // 2].float() / dim_head))
        self.freqs = nn.Parameter(inverse, requires_grad=False)

    def forward(self, x):
        """x: [..., n, dim_head] with positions 0..n-1 along n."""
        heads, n, dim_head = (int(v) for v in x.shape[1:])  # static in the export; only the batch varies
        angles = torch.arange(n, dtype=torch.float32, device=x.device)[:, None] * self.freqs[None, :]
        angles = angles.repeat_interleave(2, dim=1)  # [n, dim_head]: each angle for an (even, odd) pair
        pairs = x.reshape(-1, heads, n, dim_head // 2, 2)
        rotated = torch.stack((-pairs[:, :, :, :, 1], pairs[:, :, :, :, 0]), dim=4).reshape(-1, heads, n, dim_head)
        return x * angles.cos() + rotated * angles.sin()


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with rotary positions and, in the newer checkpoints, a
    sigmoid gate per head (``to_gates``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: Rotary, gates: bool):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        if gates:
            self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))  # [1] was dropout
        # Shared by every attention of one kind, and stored under each of them in the checkpoints.
        self.rotary_embed = rotary

    def forward(self, x):  # x: [B, n, d]
        n = int(x.shape[1])
        x = self.norm(x)
        qkv = self.to_qkv(x).reshape(-1, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = self.rotary_embed(qkv[0]), self.rotary_embed(qkv[1]), qkv[2]  # [B, h, n, dh]
        out = F.scaled_dot_product_attention(q, k, v)  # scale dim_head^-0.5
        if hasattr(self, "to_gates"):
            out = out * self.to_gates(x).permute(0, 2, 1).unsqueeze(3).sigmoid()
        out = out.permute(0, 2, 1, 3).reshape(-1, n, self.heads * self.dim_head)
        return self.to_out(out)


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al. 2021, XCiT): attends across the features of
    each head over the whole sequence, with l2-normalised queries and keys, a learned
    temperature per head and a fixed scale of 8 (the reference's ``Attend(scale=8)``)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, 3 * heads * dim_head, bias=False))  # [1] was a rearrange
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(heads * dim_head, dim, bias=False))  # [0] was a rearrange

    def forward(self, x):  # x: [B, n, d]
        n = int(x.shape[1])
        x = self.norm(x)
        qkv = self.to_qkv(x).reshape(-1, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 4, 1)
        q, k, v = F.normalize(qkv[0], dim=-1), F.normalize(qkv[1], dim=-1), qkv[2]  # [B, h, dh, n]
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=8.0)  # [B, h, dh, n]
        return self.to_out(out.permute(0, 3, 1, 2).reshape(-1, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        # Indices 3 and 5 were dropout in the reference; the names of 0, 1 and 4 must match.
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(),
                                 nn.Linear(inner, dim), nn.Identity())

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, *, dim, depth, heads, dim_head, norm_output, rotary=None, gates=True, linear=False):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([LinearAttention(dim, heads, dim_head) if linear
                           else Attention(dim, heads, dim_head, rotary, gates), FeedForward(dim)])
            for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x):
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


#: Scratch memory one group of sequences may take in a transformer, in bytes per batch item.
#: The time transformer attends along the frames of every band at once: at the viperx size that
#: is 62 sequences x 8 heads x 801 x 801 float32 attention scores, 1.27 GB (and as much again for
#: the softmax), which made the onnxruntime run peak at 4.8 GB where torch's fused attention
#: needs 2.4 GB. The sequences are independent, so they go through in groups (unrolled in the
#: export, with static sizes) and the result is the same.
GROUP_BYTES = 128 << 20


def grouped(transformer: nn.Module, x, *, heads: int):
    """``transformer`` over ``x`` ``[b, m, n, d]``: ``m`` independent sequences of ``n`` tokens,
    in groups of sequences whose attention scores and feed-forward activations fit
    :data:`GROUP_BYTES`."""
    m, n, d = (int(v) for v in x.shape[1:])
    per_sequence = 4 * n * (heads * n + 4 * d)  # float32 scores + the 4x feed-forward width
    size = max(1, min(m, GROUP_BYTES // per_sequence))
    # Slices with constant bounds: the exporter once wrote torch.split's sizes for another length.
    parts = [transformer(x[:, start:start + size].reshape(-1, n, d)).reshape(-1, min(size, m - start), n, d)
             for start in range(0, m, size)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class BandSplit(nn.Module):
    """Each band's (bins x channels x re/im) features -> RMSNorm -> Linear to d."""

    def __init__(self, dim: int, widths: tuple[int, ...]):
        super().__init__()
        self.widths = widths
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(w), nn.Linear(w, dim)) for w in widths)

    def forward(self, x):  # [b, t, sum(widths)] -> [b, t, k, d]
        return torch.stack([net(part) for part, net in zip(x.split(self.widths, dim=2), self.to_features)], dim=2)


class GLU(nn.Module):
    """a * sigmoid(b) of the two halves of the last axis (``nn.GLU(dim=-1)``, written out: the
    TorchScript exporter declares wrong shapes for its Split)."""

    def forward(self, x):
        half = x.shape[-1] // 2
        return x[..., :half] * torch.sigmoid(x[..., half:])


def _mlp(dim_in: int, dim_out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` Linear layers with Tanh between them."""
    dims = (dim_in, *((hidden,) * (layers - 1)), dim_out)
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        modules.append(nn.Linear(a, b))
        if i < layers - 1:
            modules.append(nn.Tanh())
    return nn.Sequential(*modules)


class MaskEstimator(nn.Module):
    """Per band: MLP (Tanh) to twice the band's width, then GLU, back to the band's features."""

    def __init__(self, dim: int, widths: tuple[int, ...], layers: int, expansion: int):
        super().__init__()
        self.to_freqs = nn.ModuleList(nn.Sequential(_mlp(dim, 2 * w, dim * expansion, layers), GLU())
                                      for w in widths)

    def forward(self, x):  # [b, t, k, d] -> [b, t, sum(widths)]
        return torch.cat([net(band) for band, net in zip(x.unbind(dim=2), self.to_freqs)], dim=2)


class Roformer(nn.Module):
    """BS-RoFormer or Mel-Band RoFormer between the STFT and the mask (see the module notes).

    Parameters
    ----------
    config : RoformerConfig
    gates : bool
        Whether the attentions have ``to_gates`` (lucidrains added them in 2024; older
        checkpoints have none). :func:`.roformer.build_network` reads it from the keys.
    """

    def __init__(self, config: RoformerConfig, *, gates: bool = True):
        super().__init__()
        c = config
        self.config = c
        self.channels, self.bins, self.frames = c.audio_channels, c.bins, c.dim_t
        self.mel = c.architecture == "mel_band_roformer"
        if self.mel:
            covered = mel_bands(sample_rate=c.sample_rate, n_fft=c.n_fft, num_bands=c.num_bands)
            self._mel_indices(covered)
            band_bins = tuple(int(n) for n in covered.sum(axis=1))
        else:
            band_bins = c.freqs_per_bands
        widths = tuple(2 * n * c.audio_channels for n in band_bins)
        common = dict(dim=c.dim, heads=c.heads, dim_head=c.dim_head, norm_output=self.mel, gates=gates)
        time_rotary, freq_rotary = Rotary(c.dim_head), Rotary(c.dim_head)
        self.layers = nn.ModuleList()
        for _ in range(c.depth):
            block = []
            if c.linear_transformer_depth:
                block.append(Transformer(depth=c.linear_transformer_depth, linear=True, **common))
            block.append(Transformer(depth=c.time_transformer_depth, rotary=time_rotary, **common))
            block.append(Transformer(depth=c.freq_transformer_depth, rotary=freq_rotary, **common))
            self.layers.append(nn.ModuleList(block))
        if not self.mel:
            self.final_norm = RMSNorm(c.dim)  # BS-RoFormer only: Mel-Band's transformers norm their outputs
        self.band_split = BandSplit(c.dim, widths)
        # The MLP depth counts Linear layers in BS-RoFormer's code, hidden layers in Mel-Band's.
        layers = c.mask_estimator_depth + (1 if self.mel else 0)
        self.mask_estimators = nn.ModuleList(MaskEstimator(c.dim, widths, layers, c.mlp_expansion_factor)
                                             for _ in range(c.num_stems))

    def _mel_indices(self, covered: np.ndarray) -> None:
        """Index tables for the mel bands (not parameters: not in the state dict)."""
        s = self.channels
        bins = np.concatenate([np.flatnonzero(row) for row in covered])  # every band's bins, band after band
        # Rows of the (f s) layout: bin f of channel j is row f*s + j, as the reference interleaves them.
        rows = (bins[:, None] * s + np.arange(s)).reshape(-1)
        self.register_buffer("band_rows", torch.from_numpy(rows).long(), persistent=False)
        # The mask of a bin that several bands cover is their mean: for each row, the positions in
        # the band-major mask that belong to it, padded with a position that holds zero.
        count = np.bincount(rows, minlength=self.bins * s)
        width = int(count.max())
        gather = np.full((self.bins * s, width), len(rows), dtype=np.int64)
        fill = np.zeros(self.bins * s, dtype=np.int64)
        for position, row in enumerate(rows):
            gather[row, fill[row]] = position
            fill[row] += 1
        self.register_buffer("mask_gather", torch.from_numpy(gather.reshape(-1)), persistent=False)
        self.register_buffer("mask_count", torch.from_numpy(count.astype(np.float32)), persistent=False)
        self.cover = width

    def forward(self, spec):
        """spec: [b, s, f, t, 2] float32 -> complex mask [b, n, s, f, t, 2]."""
        s, f, t, d = self.channels, self.bins, self.frames, self.config.dim
        if self.config.stft_normalized:
            spec = spec * self.config.n_fft ** -0.5  # torch.stft(normalized=True) = frame_length^-0.5
        rows = spec.permute(0, 2, 1, 3, 4).reshape(-1, f * s, t, 2)  # [b, (f s), t, c]
        if self.mel:
            rows = rows.index_select(1, self.band_rows)
        x = rows.permute(0, 2, 1, 3).reshape(-1, t, int(rows.shape[1]) * 2)  # [b, t, (rows c)]
        x = self.band_split(x)  # [b, t, k, d]
        k = len(self.band_split.widths)
        outputs = []
        for block in self.layers:
            if len(block) == 3:
                linear, time, freq = block
                x = linear(x.reshape(-1, t * k, d)).reshape(-1, t, k, d)
            else:
                time, freq = block
            if self.config.skip_connection:  # ZFTurbo's option: every earlier block's output is added
                for earlier in outputs:
                    x = x + earlier
            x = grouped(time, x.permute(0, 2, 1, 3), heads=self.config.heads).permute(0, 2, 1, 3)
            x = grouped(freq, x, heads=self.config.heads)
            if self.config.skip_connection:
                outputs.append(x)
        if not self.mel:
            x = self.final_norm(x)
        mask = torch.stack([estimate(x) for estimate in self.mask_estimators], dim=1)  # [b, n, t, (rows c)]
        n = len(self.mask_estimators)
        if self.mel:
            mask = mask.reshape(-1, n, t, int(self.band_rows.shape[0]), 2)
            mask = torch.cat([mask, torch.zeros_like(mask[:, :, :, :1])], dim=3)
            mask = mask.index_select(3, self.mask_gather).reshape(-1, n, t, f * s, self.cover, 2).sum(dim=4)
            mask = mask / self.mask_count[:, None]
        return mask.reshape(-1, n, t, f, s, 2).permute(0, 1, 4, 3, 2, 5)  # [b, n, s, f, t, c]
