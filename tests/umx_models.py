"""Open-Unmix reference code from the openunmix 1.3.0 wheel, and random-weight models built with it.

What runs as published: openunmix's ``model.py`` (``OpenUnmix``, ``Separator``), ``filtering.py``
(``wiener``, ``expectation_maximization``) and ``transforms.py`` (``TorchSTFT``, ``TorchISTFT``,
``ComplexNorm``, ``make_filterbanks``), imported from the wheel by :mod:`reference_wheels`, so
the reference separates exactly as ``openunmix.utils.load_separator`` builds it.

What does not: ``transforms.py`` imports torchaudio at its top, and openunmix needs a torchaudio
pinned to another torch than the test extra's. None of the code above calls torchaudio (only
``utils.preprocess`` resamples with it, and the tests feed audio at the model's rate, so that is
not needed). While ``transforms.py`` is imported, ``torchaudio`` is an empty module whose every
attribute raises: if any reference code did use it, the test would fail, never run a substitute.
It is removed from ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

from reference_wheels import module

VERSION = "1.3.0"


class _Absent(types.ModuleType):
    def __getattr__(self, name):
        raise AttributeError(f"torchaudio.{name}: torchaudio is not installed for the openunmix reference")


def reference():
    """openunmix's ``model`` module (and with it ``filtering`` and ``transforms``), as published."""
    if "openunmix.model" in sys.modules:
        return sys.modules["openunmix.model"]
    had = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = _Absent("torchaudio")
    try:
        return module("openunmix", VERSION, "openunmix.model")
    finally:
        if had is None:
            del sys.modules["torchaudio"]
        else:
            sys.modules["torchaudio"] = had


def max_bin(sample_rate: int, n_fft: int, bandwidth: float) -> int:
    """openunmix's ``utils.bandwidth_to_max_bin``, restated (utils.py imports torchaudio's audio I/O)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0]) + 1)


def random_target(*, hidden_size: int, nb_channels: int = 2, n_fft: int = 4096, sample_rate: int = 44100,
                  bandwidth: float = 16000, seed: int = 0):
    """An ``OpenUnmix`` of the reference with every parameter and statistic random (eval mode)."""
    import torch

    ref = reference()
    torch.manual_seed(seed)
    net = ref.OpenUnmix(nb_bins=n_fft // 2 + 1, nb_channels=nb_channels, hidden_size=hidden_size,
                        max_bin=max_bin(sample_rate, n_fft, bandwidth))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                values = rng.uniform(0.5, 2.0, tensor.shape)
            elif name == "input_mean":  # minus a mixture's mean magnitude per bin
                values = -rng.uniform(0.0, 0.5, tensor.shape)
            elif name in ("input_scale", "output_scale"):
                values = rng.uniform(0.5, 2.0, tensor.shape)
            elif name == "output_mean":
                values = rng.uniform(0.5, 1.5, tensor.shape)
            elif name.startswith("bn") and name.endswith("weight"):  # near 1, so that the input matters
                values = rng.uniform(0.5, 1.5, tensor.shape)
            elif name.startswith("bn") or name.endswith("bias_ih_l0"):
                values = rng.normal(0.0, 0.1, tensor.shape)
            else:
                continue  # the layers' own random initialisation
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))
    return net.eval()


def save_model(folder: Path, targets: dict, *, hidden_size: int, nb_channels: int = 2, n_fft: int = 4096,
               hop: int = 1024, sample_rate: int = 44100, bandwidth: float = 16000) -> Path:
    """Write ``targets`` ({name: OpenUnmix}) as openunmix's train.py leaves a model: ``NAME-hash.pth``
    state dicts, ``NAME.json`` with the training ``args``, and ``separator.json``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for name, net in targets.items():
        torch.save(net.state_dict(), folder / f"{name}-{abs(hash(name)) % 16 ** 8:08x}.pth")
        args = {"target": name, "nfft": n_fft, "nhop": hop, "hidden_size": hidden_size, "bandwidth": bandwidth,
                "nb_channels": nb_channels, "unidirectional": False, "seq_dur": 6.0, "lr": 0.001}
        (folder / f"{name}.json").write_text(json.dumps({"args": args, "epochs_trained": 1, "best_loss": 0.1}))
    (folder / "separator.json").write_text(json.dumps({"nfft": n_fft, "nhop": hop, "sample_rate": sample_rate,
                                                       "nb_channels": nb_channels}))
    return folder


def reference_separator(targets: dict, **options):
    """openunmix's ``Separator`` around ``targets``, with ``load_separator``'s defaults unless given."""
    ref = reference()
    settings = dict(niter=1, residual=False, wiener_win_len=300, sample_rate=44100.0, n_fft=4096, n_hop=1024,
                    nb_channels=2, filterbank="torch") | options
    separator = ref.Separator(target_models=targets, **settings)
    separator.freeze()
    return separator
