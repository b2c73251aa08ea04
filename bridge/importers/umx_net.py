"""Open-Unmix's network in torch, written from its paper and its state dicts' layout, for export.

Open-Unmix (Stöter, Uhlich, Liutkus, Mitsufuji, "Open-Unmix - A Reference Implementation for Music
Source Separation", JOSS 2019) trains one network per target. Each maps the mixture's magnitude
spectrogram to the target's: the lowest ``max_bin`` bins (the model's bandwidth, 16 kHz for the
published music models) are shifted and scaled by learned per-bin statistics, encoded by a
bias-free dense layer and batch norm into ``hidden_size`` values per frame, squashed by tanh, run
through a 3-layer bidirectional LSTM (``hidden_size / 2`` per direction) whose output is
concatenated with its input (a skip connection), decoded by two dense + batch-norm stages back to
every bin and channel, scaled and shifted per bin, rectified, and multiplied onto the mixture
magnitude: a non-negative mask over the whole spectrum.

The module and parameter names are those of the published state dicts (``fc1.weight``,
``bn1.running_var``, ``lstm.weight_ih_l0_reverse``, ``input_mean``, ...), so a checkpoint loads
strictly; :class:`Targets` stacks one network per target into the graph that is exported.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class UmxConfig:
    """One target network's shape and the transform it was trained with.

    ``max_bin`` is the number of bins the network reads: every bin whose centre frequency is at
    most ``bandwidth`` Hz (openunmix's ``bandwidth_to_max_bin``).
    """

    target: str
    sample_rate: int
    n_fft: int
    hop: int
    nb_channels: int
    hidden_size: int
    bandwidth: float
    nb_layers: int = 3
    unidirectional: bool = False

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def max_bin(self) -> int:
        # Bin k is at k * sample_rate / n_fft Hz: the bins up to and including the bandwidth,
        # counted on the same float grid openunmix counts them on (numpy's linspace).
        freqs = np.linspace(0, self.sample_rate / 2, self.bins, endpoint=True)
        return max(1, int(np.count_nonzero(freqs <= self.bandwidth)))

    def same_transform(self, other: "UmxConfig") -> bool:
        return (self.sample_rate, self.n_fft, self.hop, self.nb_channels) == \
            (other.sample_rate, other.n_fft, other.hop, other.nb_channels)


class TargetNet(nn.Module):
    """One target: ``(batch, channels, bins, frames)`` magnitude -> the target's, same shape."""

    def __init__(self, config: UmxConfig):
        super().__init__()
        hidden, channels = config.hidden_size, config.nb_channels
        self.max_bin, self.bins, self.channels, self.hidden = config.max_bin, config.bins, channels, hidden
        self.fc1 = nn.Linear(self.max_bin * channels, hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.lstm = nn.LSTM(hidden, hidden if config.unidirectional else hidden // 2, num_layers=config.nb_layers,
                            bidirectional=not config.unidirectional)
        self.fc2 = nn.Linear(2 * hidden, hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, self.bins * channels, bias=False)
        self.bn3 = nn.BatchNorm1d(self.bins * channels)
        self.input_mean = nn.Parameter(torch.zeros(self.max_bin))
        self.input_scale = nn.Parameter(torch.ones(self.max_bin))
        self.output_scale = nn.Parameter(torch.ones(self.bins))
        self.output_mean = nn.Parameter(torch.ones(self.bins))

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        frames_first = magnitude.permute(3, 0, 1, 2)  # (frames, batch, channels, bins): the LSTM's order
        x = (frames_first[..., : self.max_bin] + self.input_mean) * self.input_scale
        x = torch.tanh(self.bn1(self.fc1(x.reshape(-1, self.channels * self.max_bin))))
        x = x.reshape(frames_first.shape[0], -1, self.hidden)
        x = torch.cat([x, self.lstm(x)[0]], dim=-1)
        x = F.relu(self.bn2(self.fc2(x.reshape(-1, 2 * self.hidden))))
        x = self.bn3(self.fc3(x)).reshape(frames_first.shape)
        mask = F.relu(x * self.output_scale + self.output_mean)
        return (mask * frames_first).permute(1, 2, 3, 0)


class Targets(nn.Module):
    """Every target's network on one magnitude: ``(batch, channels, bins, frames)`` ->
    ``(batch, targets, channels, bins, frames)``, in the order given."""

    def __init__(self, nets: dict[str, TargetNet]):
        super().__init__()
        self.names = tuple(nets)
        self.nets = nn.ModuleList(nets.values())

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(magnitude) for net in self.nets], dim=1)
