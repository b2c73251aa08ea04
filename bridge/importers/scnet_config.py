"""Read an SCNet training config (MSST's ``scnet`` model type) safely, without torch.

SCNet (Tong et al., "SCNet: Sparse Compression Network for Music Source Separation", ICASSP
2024) as ZFTurbo's Music-Source-Separation-Training (MSST) trains and ships it: the config's
``model:`` holds the network's constructor arguments (``sources, audio_channels, dims, nfft,
hop_size, win_size, normalized, band_SR, band_stride, band_kernel, conv_depths, compress,
conv_kernel, num_dplayer, expand``; MSST passes them as ``SCNet(**config.model)``, so any other key
is a config of another model), ``audio:`` the chunk and rate, ``training:`` the stem names and
``inference:`` the overlap. Read with the same safe loader as the RoFormer configs
(:func:`.roformer_config.read_config`).

Whether a config is an SCNet's is told from its keys: ``band_SR`` and ``num_dplayer`` together
are SCNet's alone among the model types stembridge imports.

The shapes the network takes at every level (the frequency bands of each sparse down-sampling
layer, as the reference computes them from the bins it is given) are computed here too, by
:func:`band_plan`, so that a config whose bands cannot be built is refused with one line before
torch is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from ..errors import ModelError
from ..separation.scnet import network_pad
from .roformer_config import read_config, stems_of, whole_number  # noqa: F401 (read_config: this module's too)

#: MSST's ``SCNet.__init__`` arguments and their defaults (the paper's small model).
DEFAULTS = {
    "sources": ["drums", "bass", "other", "vocals"], "audio_channels": 2, "dims": [4, 32, 64, 128],
    "nfft": 4096, "hop_size": 1024, "win_size": 4096, "normalized": True,
    "band_SR": [0.175, 0.392, 0.433], "band_stride": [1, 4, 16], "band_kernel": [3, 4, 16],
    "conv_depths": [3, 2, 1], "compress": 4, "conv_kernel": 3, "num_dplayer": 6, "expand": 1,
}

#: Keys that only SCNet configs have (both must be there).
SIGNATURE = ("band_SR", "num_dplayer")


def is_scnet_config(data) -> bool:
    """Whether a config's data (from :func:`read_config`) describes an SCNet, by its keys."""
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and all(k in model for k in SIGNATURE)


@dataclasses.dataclass(frozen=True)
class Level:
    """One encoder level's frequency layout (bins in, per band: start, end, padding, bins out)."""

    bins: int
    bands: tuple[tuple[int, int, int, int, int], ...]  # (start, end, pad_left, pad_right, out)

    @property
    def out_bins(self) -> int:
        return sum(b[4] for b in self.bands)


@dataclasses.dataclass(frozen=True)
class ScnetConfig:
    """What a config says about the network and how to run it. Units: samples, Hz, bins, frames."""

    sources: tuple[str, ...]
    audio_channels: int
    dims: tuple[int, ...]
    n_fft: int
    hop: int
    win_length: int
    normalized: bool
    band_sr: tuple[float, float, float]
    band_stride: tuple[int, int, int]
    band_kernel: tuple[int, int, int]
    conv_depths: tuple[int, int, int]
    compress: float
    conv_kernel: int
    num_dplayer: int
    expand: int
    sample_rate: int
    chunk_size: int
    num_overlap: int
    outputs: tuple[str, ...]  # canonical names of the network's outputs, in order
    residual: str | None  # mix minus the outputs, or None

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def pad(self) -> int:
        """Zeros the network appends to a chunk so that its STFT has an even number of frames."""
        return network_pad(self.chunk_size, self.hop)

    @property
    def dim_t(self) -> int:
        """Frames of the STFT of a chunk with the network's padding."""
        return (self.chunk_size + self.pad) // self.hop + 1

    @property
    def stems(self) -> tuple[str, ...]:
        return self.outputs + ((self.residual,) if self.residual else ())

    def levels(self) -> tuple[Level, ...]:
        return band_plan(self.bins, self.band_sr, self.band_stride, self.band_kernel, len(self.dims) - 1)


def band_plan(bins: int, band_sr, strides, kernels, depth: int, *, source: str = "config") -> tuple[Level, ...]:
    """Each encoder level's bands, as the reference splits them: band edges at
    ``ceil(F * SR_low)`` and ``ceil(F * (SR_low + SR_mid))`` of the level's ``F`` bins; each band
    padded (``kernel - 1`` bins for a stride of 1, else up to a multiple of the stride, split
    floor/ceil) and convolved with its kernel and stride."""
    levels = []
    size = bins
    for level in range(depth):
        low, mid = band_sr[0], band_sr[1]
        edges = (0, math.ceil(size * low), math.ceil(size * (low + mid)), size)
        bands = []
        for b, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
            length = end - start
            stride, kernel = strides[b], kernels[b]
            total = kernel - stride if stride == 1 else (stride - length % stride) % stride
            padded = length + total
            out = (padded - kernel) // stride + 1
            if length < 1 or padded < kernel or out < 1:
                raise ModelError(f"{source}: at encoder level {level + 1} the {('low', 'mid', 'high')[b]} band has "
                                 f"{length} bins, too few for band_kernel {kernel} with band_stride {stride}; "
                                 "the config's band_SR/band_kernel/band_stride do not fit nfft")
            # The decoder's transposed convolution gives (out - 1) * stride + kernel bins, trimmed to the band.
            if (out - 1) * stride + kernel < length:
                raise ModelError(f"{source}: at level {level + 1} the {('low', 'mid', 'high')[b]} band cannot be "
                                 f"rebuilt by the decoder (band_kernel {kernel} < band_stride {stride}); the "
                                 "config is not one the reference network can run")
            bands.append((start, end, total // 2, total - total // 2, out))
        levels.append(Level(size, tuple(bands)))
        size = sum(b[4] for b in bands)
    return tuple(levels)


def _describe(data: dict) -> str:
    model = data.get("model")
    if isinstance(model, dict):
        keys = sorted(str(k) for k in model)
        return "model keys " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return "top-level keys " + ", ".join(sorted(str(k) for k in data)[:8])


def parse_config(data: dict, *, source: str) -> ScnetConfig:
    """Validate a config's data (from :func:`read_config`) into a :class:`ScnetConfig`."""
    if not is_scnet_config(data):
        raise ModelError(f"{source}: not an SCNet config ({_describe(data)}); an SCNet config (MSST's scnet model "
                         "type) has model: band_SR, num_dplayer, dims, nfft, ...")
    model = data["model"]
    unknown = sorted(str(k) for k in model if k not in DEFAULTS)
    if unknown:
        raise ModelError(f"{source}: model.{unknown[0]} is not a parameter of MSST's scnet model type (an SCNet "
                         "Masked, Tran or unofficial config?); stembridge imports plain scnet checkpoints only")
    audio, training, inference = (data.get(k) or {} for k in ("audio", "training", "inference"))
    for section, value in (("audio", audio), ("training", training), ("inference", inference)):
        if not isinstance(value, dict):
            raise ModelError(f"{source}: {section}: must be a mapping, got {type(value).__name__}")

    def get(key):
        return model.get(key, DEFAULTS[key])

    whole = functools.partial(whole_number, source)

    def triple(key: str, kind, low) -> tuple:
        value = get(key)
        if (not isinstance(value, list) or len(value) != 3 or any(isinstance(v, bool) for v in value)
                or not all(isinstance(v, kind) and v >= low for v in value)):
            raise ModelError(f"{source}: model.{key} must be a list of 3 {'numbers' if kind is not int else 'whole numbers'}"
                             f" (low, mid, high band) >= {low}, got {value!r}")
        return tuple(value)

    sources = get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise ModelError(f"{source}: model.sources must be a list of stem names, got {sources!r}")
    channels = whole(model, "audio_channels", DEFAULTS["audio_channels"])
    if channels not in (1, 2):
        raise ModelError(f"{source}: model.audio_channels must be 1 or 2, got {channels}")
    dims = get("dims")
    if (not isinstance(dims, list) or len(dims) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
        raise ModelError(f"{source}: model.dims must be a list of at least 2 positive whole numbers, got {dims!r}")
    if dims[0] != 2 * channels:
        raise ModelError(f"{source}: model.dims starts with {dims[0]}, but the network's input is the real and "
                         f"imaginary parts of {channels} channel(s): {2 * channels}; the config is inconsistent")
    n_fft = whole(model, "nfft", DEFAULTS["nfft"], low=2)
    hop = whole(model, "hop_size", DEFAULTS["hop_size"])
    win = whole(model, "win_size", DEFAULTS["win_size"])
    if win > n_fft:
        raise ModelError(f"{source}: model.win_size {win} is longer than nfft {n_fft}")
    if hop > win:
        raise ModelError(f"{source}: model.hop_size {hop} is longer than win_size {win}; the inverse STFT needs "
                         "every sample covered by a window")
    normalized = get("normalized")
    if not isinstance(normalized, bool):
        raise ModelError(f"{source}: model.normalized must be true or false, got {normalized!r}")
    band_sr = triple("band_SR", (int, float), 0)
    strides = triple("band_stride", int, 1)
    kernels = triple("band_kernel", int, 1)
    depths = get("conv_depths")
    if (not isinstance(depths, list) or len(depths) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in depths)):
        raise ModelError(f"{source}: model.conv_depths must be a list of 3 whole numbers, got {depths!r}")
    compress = get("compress")
    if isinstance(compress, bool) or not isinstance(compress, (int, float)) or compress <= 0:
        raise ModelError(f"{source}: model.compress must be a positive number, got {compress!r}")
    if any(int(d / compress) < 1 for d in dims[1:]):
        raise ModelError(f"{source}: model.compress {compress} leaves no channels in a convolution module of "
                         f"dims {dims[1:]}")
    conv_kernel = whole(model, "conv_kernel", DEFAULTS["conv_kernel"])
    if conv_kernel % 2 != 1:
        raise ModelError(f"{source}: model.conv_kernel must be odd, got {conv_kernel}")
    num_dplayer = whole(model, "num_dplayer", DEFAULTS["num_dplayer"], low=0)
    if num_dplayer % 2:
        raise ModelError(f"{source}: model.num_dplayer must be even (the dual-path layers alternate between time "
                         f"and its Fourier transform), got {num_dplayer}")
    expand = whole(model, "expand", DEFAULTS["expand"])
    sample_rate = whole(audio, "sample_rate", 44100, section="audio")
    chunk_size = whole(audio, "chunk_size", section="audio")
    if chunk_size <= n_fft // 2:
        raise ModelError(f"{source}: audio.chunk_size {chunk_size} is too short for nfft {n_fft}")
    num_overlap = whole(inference, "num_overlap", 4, section="inference")
    if training.get("instruments") is None:  # MSST names the outputs by training.instruments
        training = {**training, "instruments": sources}
    outputs, residual = stems_of(training, len(sources), source, count="len(model.sources)")
    cfg = ScnetConfig(
        sources=tuple(sources), audio_channels=channels, dims=tuple(dims), n_fft=n_fft, hop=hop, win_length=win,
        normalized=normalized, band_sr=tuple(float(v) for v in band_sr), band_stride=strides, band_kernel=kernels,
        conv_depths=tuple(depths), compress=compress, conv_kernel=conv_kernel, num_dplayer=num_dplayer,
        expand=expand, sample_rate=sample_rate, chunk_size=chunk_size, num_overlap=num_overlap,
        outputs=outputs, residual=residual)
    band_plan(cfg.bins, cfg.band_sr, strides, kernels, len(dims) - 1, source=source)
    return cfg
