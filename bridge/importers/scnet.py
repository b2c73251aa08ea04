"""Import SCNet checkpoints (MSST's ``scnet`` model type) as ``scnet``-family ONNX models.

``stembridge models import CHECKPOINT.ckpt --config CONFIG.yaml`` reads the torch state dict
(``weights_only=True``; bare, or under ``model_state_dict``/``state_dict`` as MSST writes it) and
its YAML config (:mod:`.scnet_config`), loads the weights strictly into :mod:`.scnet_net`, exports
the network between the STFT and the inverse STFT to ONNX, checks the export against torch on a
fixed spectrogram, and writes ``NAME.onnx`` and its card ``NAME.yaml``.

The ONNX interface the run time (``bridge/separation/scnet.py``) builds on:

- input float32 ``[batch, audio_channels, nfft//2+1, dim_t, 2]``: ``view_as_real(torch.stft(x,
  nfft, hop_size, win_size, window=None (rectangular, as MSST's SCNet runs it), center=True,
  pad_mode="reflect", normalized=False, return_complex=True))`` of each channel of a
  ``chunk_size`` chunk followed by :func:`~.scnet_config.network_pad` zeros; ``dim_t`` frames
  (static, even), batch dynamic.
- output float32 ``[batch, sources, audio_channels, nfft//2+1, dim_t, 2]`` (``spectrogram_out``):
  each source's spectrogram, for the inverse STFT (same rectangular window) whose first
  ``chunk_size`` samples are the stem.

torch is needed here only (the ``import`` extra), imported when an import runs.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..render.records import file_sha256
from .. import memory
from . import publish
from .publish import destination
from .roformer import chunked_card, require_parity, export_onnx, onnx_parity, read_state_dict, snr_db
from .scnet_config import ScnetConfig, parse_config, read_config

#: Keys of MSST's other SCNet variants, which the plain network does not have.
VARIANT_KEYS = {"mask_layer": "SCNet Masked (scnet_masked)", "pos_embed_f": "SCNet Masked (scnet_masked)",
                "transformer": "SCNet Tran (scnet_tran)"}


@dataclasses.dataclass(frozen=True)
class ImportedScnet:
    """What :func:`import_scnet` wrote."""

    name: str
    card: Path
    model: Path
    stems: tuple[str, ...]
    parity_db: float
    seconds: float
    architecture: str = "scnet"


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError('importing SCNet checkpoints needs torch: pip install "stembridge[import]"') from None
    return torch


def build_network(cfg: ScnetConfig, state: dict, *, source: str):
    """The network of ``cfg`` with ``state`` loaded strictly; a mismatch names the first key."""
    torch = _torch()
    from .scnet_net import Scnet

    net = Scnet(cfg).eval()
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelError(f"{source}: the checkpoint has no '{key}', which the config implies; the config does "
                             "not describe this checkpoint (check model: dims, conv_depths, num_dplayer)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{source}: '{key}' is {list(state[key].shape)} in the checkpoint but "
                             f"{list(tensor.shape)} by the config; the config does not describe this checkpoint")
    extra = sorted(set(state) - set(expected))
    if extra:
        variant = next((v for k, v in VARIANT_KEYS.items() if any(k in e for e in extra)), None)
        if variant:
            raise ModelError(f"{source}: the checkpoint has '{extra[0]}': it is an MSST {variant} model, which "
                             "stembridge does not import; only the plain scnet model type")
        raise ModelError(f"{source}: the checkpoint has '{extra[0]}' (and {len(extra) - 1} more) that the config "
                         "does not describe; pass the config the checkpoint was trained with")
    with torch.no_grad():
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net


def rect_stft(audio, cfg: ScnetConfig):
    """``view_as_real`` STFT of ``audio`` (torch, ``(..., samples)``) as the ONNX input defines it."""
    torch = _torch()
    shape = audio.shape
    spec = torch.stft(audio.reshape(-1, shape[-1]), cfg.n_fft, cfg.hop, cfg.win_length,
                      window=torch.ones(cfg.win_length), center=True, pad_mode="reflect",
                      normalized=False, return_complex=True)
    return torch.view_as_real(spec).reshape(*shape[:-1], *spec.shape[-2:], 2)


def parity_spectrogram(cfg: ScnetConfig, *, seed: int = 15):
    """A fixed input for the parity check: the STFT of one padded chunk of seeded pink-ish noise,
    float32 ``[1, channels, bins, dim_t, 2]``."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    n = cfg.chunk_size
    white = rng.standard_normal((cfg.audio_channels, n))
    shape = np.fft.rfftfreq(n)
    shape[0] = shape[1]
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(shape / shape[1]), n=n)  # -3 dB/octave
    pink = np.pad(0.25 * pink / np.abs(pink).max(), ((0, 0), (0, cfg.pad))).astype(np.float32)
    return rect_stft(torch.from_numpy(pink), cfg).unsqueeze(0).contiguous()


def convert(path, *, config=None, **options) -> ImportedScnet:
    """``stembridge models import`` for the scnet family: refuses options of other importers."""
    path = Path(path)
    if config is None:
        raise ModelError(f"{path}: an SCNet checkpoint needs its YAML config: pass --config CONFIG.yaml")
    other = [f"--{k}" for k in ("bins", "fp32") if options.pop(k, None)]
    if other:
        raise ModelError(f"{' and '.join(other)}: only for Spleeter checkpoints; drop it for an SCNet")
    return import_scnet(path, config=config, **options)


def import_scnet(path, *, config, name: str | None = None, force: bool = False, folder=None) -> ImportedScnet:
    """Convert an SCNet checkpoint and its config into ``NAME.onnx`` + ``NAME.yaml``.

    Parameters are those of :func:`.roformer.import_roformer`.

    Raises
    ------
    ModelError
        A missing or unsafe config, a config that is not an SCNet's or does not describe the
        checkpoint, a truncated checkpoint, torch missing, a failed parity check (below 60 dB),
        an existing name without ``force``, an unwritable folder. Nothing is written then.
    """
    start = time.perf_counter()
    source, config_path = Path(path), Path(config)
    if not source.is_file():
        raise ModelError(f"{source}: no such checkpoint file")
    cfg_data = read_config(config_path)
    cfg = parse_config(cfg_data, source=str(config_path))
    name, target = destination(name, stem=source.stem, default="scnet", folder=folder, force=force)
    torch = _torch()
    memory.return_freed_memory()  # before the first large allocation: see bridge.memory
    state = read_state_dict(source)
    net = build_network(cfg, state, source=f"{source} with {config_path.name}")
    del state  # the network holds its own copy of the weights
    checkpoint_sha = file_sha256(source)
    onnx_path, _ = publish.paths(target, name)
    with publish.writing(target, name) as partial:
        spec = parity_spectrogram(cfg)
        with torch.no_grad():
            expected = net(spec).numpy()
        export_onnx(net, partial, source=str(source), output_name="spectrogram_out")
        del net  # the torch weights and the onnxruntime session need not be in memory together
        gc.collect()
        db = onnx_parity(partial, spec.numpy(), expected)
        require_parity(db, source, "stem spectrograms")
        card = chunked_card(cfg, name=name, family="scnet", architecture="scnet", title="SCNet",
                            file=onnx_path.name, sha256=file_sha256(partial), source=source,
                            checkpoint_sha=checkpoint_sha, cfg_data=cfg_data, db=db, compared="stem spectrograms")
    onnx_path, card_path = publish.publish(
        target, name, card, header=f"Imported by: stembridge models import {source.name} --config {config_path.name}")
    return ImportedScnet(name, card_path, onnx_path, cfg.stems, db, time.perf_counter() - start)


__all__ = ["ImportedScnet", "build_network", "convert", "import_scnet", "parity_spectrogram", "rect_stft", "snr_db"]
