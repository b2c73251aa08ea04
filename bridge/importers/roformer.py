"""Import BS-RoFormer and Mel-Band RoFormer checkpoints as ``roformer``-family ONNX models.

``stembridge models import CHECKPOINT.ckpt --config CONFIG.yaml`` reads the torch state dict (the
files UVR, python-audio-separator and ZFTurbo's Music-Source-Separation-Training use) and its YAML
config (:mod:`.roformer_config`), loads the weights strictly into :mod:`.roformer_net`, exports the
network between the STFT and the mask to ONNX, checks the export against torch on a fixed
spectrogram, and writes ``NAME.onnx`` and its card ``NAME.yaml`` into the user model folder.

The ONNX interface the run time (``bridge/separation/roformer.py``) builds on:

- input float32 ``[batch, channels, n_fft//2+1, dim_t, 2]``: ``view_as_real(torch.stft(x, n_fft,
  hop, win_length, window=hann_window(win_length) (periodic), center=True, pad_mode="reflect",
  normalized=False, return_complex=True))`` of each channel of a ``chunk_size`` chunk;
  ``dim_t = chunk_size // hop + 1``; the batch is dynamic, ``dim_t`` static.
- output float32 ``[batch, outputs, channels, n_fft//2+1, dim_t, 2]``: the complex mask, multiplied
  (complex product) onto the input spectrogram before the inverse STFT (``length=chunk_size``).

torch is needed here only (the ``import`` extra), imported when an import runs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..version import __version__
from ..errors import ModelError
from ..render.records import file_sha256
from .. import memory
from . import publish
from .publish import destination
from .roformer_config import RoformerConfig, parse_config, read_config

#: Least SNR (dB) of the ONNX mask against torch's accepted at import.
MIN_PARITY_DB = 60.0
OPSET = 17


@dataclasses.dataclass(frozen=True)
class ImportedRoformer:
    """What :func:`import_roformer` wrote."""

    name: str
    card: Path
    model: Path
    architecture: str
    stems: tuple[str, ...]
    parity_db: float
    seconds: float


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError('importing RoFormer checkpoints needs torch: pip install "stembridge[import]"') from None
    return torch


def read_state_dict(path: Path) -> dict:
    """The checkpoint's tensors by name, read with ``weights_only=True`` (checkpoints are untrusted)."""
    torch = _torch()
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such checkpoint file") from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {reason}); it is truncated, "
                         "not a torch checkpoint, or holds more than tensors; download it again") from None
    # Training scripts save the bare state dict; some wrap it as {"state_dict": ...} or {"model": ...},
    # MSST's full checkpoints as {"model_state_dict": ..., "optimizer_state_dict": ..., "epoch": ...}.
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: the checkpoint is not a state dict of tensors; pass the model's .ckpt")
    # A model saved from inside torch.nn.DataParallel/DistributedDataParallel names every key "module.*".
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def build_network(config: RoformerConfig, state: dict, *, source: str):
    """The network of ``config`` with ``state`` loaded strictly; a mismatch names the key."""
    _torch()  # one line when torch is missing, before anything else
    from .roformer_net import Roformer

    # Attention output gates came with a later version of the code: use them if the checkpoint has them.
    gates = any(k.endswith(".to_gates.weight") for k in state)
    net = Roformer(config, gates=gates).eval()
    return load_strictly(net, state, source=source, hint="check model: depth, *_transformer_depth, num_stems")


def load_strictly(net, state: dict, *, source: str, hint: str):
    """``net`` with ``state`` loaded (as float32) when every key fits: one line naming the first
    key that is missing or differs in shape (both shapes), or the first one left over; ``hint``
    says which config keys decide the missing ones."""
    torch = _torch()
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelError(f"{source}: the checkpoint has no '{key}', which the config implies; the config does "
                             f"not describe this checkpoint ({hint})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{source}: '{key}' is {list(state[key].shape)} in the checkpoint but "
                             f"{list(tensor.shape)} by the config; the config does not describe this checkpoint")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModelError(f"{source}: the checkpoint has '{extra[0]}' (and {len(extra) - 1} more) that the config "
                         "does not describe; pass the config the checkpoint was trained with")
    with torch.no_grad():
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net


def parity_spectrogram(config: RoformerConfig, *, seed: int = 15):
    """A fixed input for the parity check: the model's STFT of seeded pink-ish noise, one chunk.

    Returns float32 ``[1, channels, n_fft//2+1, dim_t, 2]`` as the ONNX interface defines it.
    """
    torch = _torch()
    pink = pink_noise(config.audio_channels, config.chunk_size, seed=seed)
    spec = torch.stft(torch.from_numpy(pink), config.n_fft, config.hop, config.win_length,
                      window=torch.hann_window(config.win_length), center=True, pad_mode="reflect",
                      normalized=False, return_complex=True)
    return torch.view_as_real(spec).unsqueeze(0).contiguous()


def pink_noise(channels: int, samples: int, *, seed: int) -> np.ndarray:
    """Seeded noise falling 3 dB per octave, peak 0.25, float32 ``(channels, samples)``: the parity input."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((channels, samples))
    shape = np.fft.rfftfreq(samples)
    shape[0] = shape[1]
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(shape / shape[1]), n=samples)
    return (0.25 * pink / np.abs(pink).max()).astype(np.float32)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    error = float(np.sum((reference - estimate) ** 2))
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference ** 2) / error))


def chunked_card(cfg, *, name: str, family: str, architecture: str, title: str, file: str, sha256: str,
                 source: Path, checkpoint_sha: str, cfg_data: dict, db: float, compared: str,
                 stft: tuple[str, ...] = ("n_fft", "hop", "win_length")) -> dict:
    """The card of an imported STFT-domain model run on a chunk grid (RoFormer, SCNet, MDX23C): its
    STFT (the ``cfg`` attributes named in ``stft``) and grid from ``cfg``, where it came from, and
    the import's parity (``compared``: what the network outputs, e.g. ``"mask"``)."""
    return {
        "name": name, "family": family, "architecture": architecture, "file": file,
        "sha256": sha256, "stems": list(cfg.stems), "residual": cfg.residual,
        "sample_rate": cfg.sample_rate, **{key: getattr(cfg, key) for key in stft},
        "dim_t": cfg.dim_t, "chunk_size": cfg.chunk_size, "num_overlap": cfg.num_overlap,
        "audio_channels": cfg.audio_channels,
        "imported": {
            "checkpoint": source.name, "checkpoint_sha256": checkpoint_sha, "config": cfg_data,
            "stembridge_version": __version__, "parity_db": round(db, 2),
            "parity": f"SNR of the ONNX {compared} (onnxruntime) against the torch network's, on the STFT of "
                      f"{cfg.chunk_size} samples of seeded pink noise ({cfg.audio_channels} channels)",
        },
        "description": f"{title} ({', '.join(cfg.outputs)}"
                       + (f"; {cfg.residual} = mix minus the model's output" if cfg.residual else "")
                       + f"), imported from {source.name} by stembridge models import",
    }


def export_onnx(net, path: Path, *, source: str = "the network", example=None, input_name: str = "spectrogram",
                output_name: str = "mask", dynamic: dict | None = None) -> None:
    """Export ``net`` to ``path`` (opset 17); errors name ``source``.

    By default a RoFormer's interface: input ``spectrogram`` shaped as ``example`` (default the
    RoFormer's chunk), output ``mask``, the batch dynamic and the frames static; other families
    pass their own ``example``, names and ``dynamic`` axes (``torch.onnx.export``'s ``dynamic_axes``).
    """
    torch = _torch()
    import warnings

    if example is None:
        example = torch.zeros(1, net.channels, net.bins, net.frames, 2)
    if dynamic is None:
        dynamic = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    # Exported in a scratch folder of its own: a model over protobuf's 2 GB would come out as a
    # graph plus external weight files, which the card's one file and sha256 cannot describe.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as scratch:
        exported = Path(scratch) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # dynamo=False: the TorchScript exporter needs no onnxscript and writes one self-contained file.
            try:
                torch.onnx.export(net, (example,), str(exported), dynamo=False, opset_version=OPSET,
                                  input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{source}: the ONNX export failed ({' '.join(str(exc).split())[:200]})") from None
        if len(list(Path(scratch).iterdir())) != 1:
            raise ModelError(f"{source}: the network is over 2 GB, more than one ONNX file can hold; not supported")
        os.replace(exported, path)


def require_parity(db: float, source, what: str | None = None) -> None:
    """Refuse an export whose parity ``db`` (SNR of ``what`` the network outputs) is under
    :data:`MIN_PARITY_DB`, in one line naming ``source``: every importer's last check."""
    if not db >= MIN_PARITY_DB:
        raise ModelError(f"{source}: the ONNX export disagrees with torch ({db:.1f} dB SNR"
                         + (f" of the {what}" if what else "") + f", {MIN_PARITY_DB:.0f} dB needed); nothing was written")


def onnx_parity(onnx_path: Path, spec: np.ndarray, expected: np.ndarray) -> float:
    """SNR (dB) of the ONNX model's mask on ``spec`` against ``expected`` (the torch network's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: spec})[0]
    if got.shape != expected.shape:
        raise ModelError(f"{onnx_path}: the exported model gives {got.shape}, torch {expected.shape}; export failed")
    return snr_db(expected, got)


def convert(path, *, config=None, **options) -> "ImportedRoformer":
    """``stembridge models import`` for the roformer family (:mod:`bridge.separation.roformer`
    claims torch checkpoints and anything given a config): refuses options of other importers."""
    import tarfile

    path = Path(path)
    if config is None:
        raise ModelError(f"{path}: a torch checkpoint (BS-RoFormer or Mel-Band RoFormer) needs its YAML config: "
                         "pass --config CONFIG.yaml")
    spleeter_only = [f"--{k}" for k in ("bins", "fp32") if options.pop(k, None)]
    if spleeter_only:
        raise ModelError(f"{' and '.join(spleeter_only)}: only for Spleeter checkpoints; drop it for a RoFormer")
    if path.is_dir() or (path.is_file() and tarfile.is_tarfile(path)):
        raise ModelError(f"{path}: a Spleeter checkpoint takes no --config; drop --config")
    return import_roformer(path, config=config, **options)


def import_roformer(path, *, config, name: str | None = None, force: bool = False, folder=None) -> ImportedRoformer:
    """Convert a RoFormer checkpoint and its config into ``NAME.onnx`` + ``NAME.yaml``.

    Parameters
    ----------
    path : path-like
        The checkpoint: a torch state dict (``.ckpt``/``.pth``), bare or under ``state_dict``/``model``.
    config : path-like
        Its YAML training config (``model:``, ``audio:``, ``training:``, ``inference:``).
    name : str, optional
        The model's name; default the checkpoint's file name without its suffix.
    force : bool
        Replace a model of the same name in the model folder.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Raises
    ------
    ModelError
        A missing or unsafe config, a config that is not a RoFormer's or does not describe the
        checkpoint, a truncated checkpoint, torch missing, a failed parity check (below 60 dB),
        an existing name without ``force``, an unwritable folder. Nothing is written then.
    """
    start = time.perf_counter()
    source, config_path = Path(path), Path(config)
    if not source.is_file():
        raise ModelError(f"{source}: no such checkpoint file")
    cfg_data = read_config(config_path)
    cfg = parse_config(cfg_data, source=str(config_path))
    name, target = destination(name, stem=source.stem, default="roformer", folder=folder, force=force)
    torch = _torch()
    memory.return_freed_memory()  # before the first large allocation: see bridge.memory
    net = build_network(cfg, read_state_dict(source), source=f"{source} with {config_path.name}")
    checkpoint_sha = file_sha256(source)
    onnx_path, _ = publish.paths(target, name)
    title = "BS-RoFormer" if cfg.architecture == "bs_roformer" else "Mel-Band RoFormer"
    with publish.writing(target, name) as partial:
        spec = parity_spectrogram(cfg)
        with torch.no_grad():
            expected = net(spec).numpy()
        export_onnx(net, partial, source=str(source))
        del net  # the torch weights and the onnxruntime session need not be in memory together
        memory.trim()
        db = onnx_parity(partial, spec.numpy(), expected)
        require_parity(db, source, "masks")
        card = chunked_card(cfg, name=name, family="roformer", architecture=cfg.architecture, title=title,
                            file=onnx_path.name, sha256=file_sha256(partial), source=source,
                            checkpoint_sha=checkpoint_sha, cfg_data=cfg_data, db=db, compared="mask")
    onnx_path, card_path = publish.publish(
        target, name, card, header=f"Imported by: stembridge models import {source.name} --config {config_path.name}")
    return ImportedRoformer(name, card_path, onnx_path, cfg.architecture, cfg.stems, db, time.perf_counter() - start)
