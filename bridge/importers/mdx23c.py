"""Import MDX23C (TFC-TDF v3) checkpoints as ``mdx23c``-family ONNX models.

``stembridge models import MODEL.ckpt --config CONFIG.yaml`` reads the torch state dict (UVR's
"MDX23C" models, python-audio-separator's MDXC models other than RoFormers, ZFTurbo's
Music-Source-Separation-Training ``mdx23c`` type) and its YAML config, builds :mod:`.mdx23c_net`
strictly, exports the network between the STFT and its inverse to ONNX, checks the export
against torch on a fixed spectrogram (refused under :data:`MIN_PARITY_DB`), and writes
``NAME.onnx`` and its card ``NAME.yaml`` into the user model folder.

The ONNX interface the run time (``bridge/separation/mdx23c.py``) builds on:

- input float32 ``[batch, 2*channels, dim_f, dim_t]``: ``torch.stft(x, n_fft, hop,
  window=hann_window(n_fft) (periodic), center=True, pad_mode="reflect")`` of each channel of a
  ``chunk_size = hop * (dim_t - 1)`` chunk, real and imaginary parts as channels (L.re, L.im,
  R.re, R.im), the first ``dim_f`` bins; batch dynamic, the rest static;
- output float32 ``[batch, targets, 2*channels, dim_f, dim_t]``: each target's spectrogram in the
  same layout, padded back to ``n_fft//2+1`` bins with zeros before the inverse STFT.

The config is read as python-audio-separator reads it (``audio.hop_length``, ``inference.dim_t``
falling back to ``audio.dim_t``, ``inference.num_overlap``, ``training.target_instrument`` and
``training.instruments``). torch is needed here only (the ``import`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from pathlib import Path

from ..errors import ModelError
from ..render.records import file_sha256
from ..separation.mdx23c import TFC_TDF_KEYS, is_tfc_tdf_config
from .. import memory
from . import publish
from .publish import destination
from .roformer import (chunked_card, export_onnx, load_strictly, onnx_parity, pink_noise, read_state_dict,
                       require_parity)
from .roformer_config import read_config, stems_of, whole_number

#: Values of ``model.norm`` and ``model.act`` the network takes (see :mod:`.mdx23c_net`).
NORMS = ("BatchNorm", "InstanceNorm", "GroupNorm<N>", "null")


@dataclasses.dataclass(frozen=True)
class Mdx23cConfig:
    """What a config says about the network and how to run it. Units: samples, Hz, bins, frames."""

    num_channels: int
    growth: int
    num_scales: int
    num_blocks_per_scale: int
    num_subbands: int
    bottleneck_factor: int
    scale: tuple[int, int]
    act: str
    norm: str | None
    audio_channels: int
    n_fft: int
    hop: int
    dim_f: int
    dim_t: int
    sample_rate: int
    num_overlap: int
    outputs: tuple[str, ...]  # canonical names of the model's outputs, in order
    residual: str | None  # mix minus the output (a target_instrument model), or None

    @property
    def chunk_size(self) -> int:
        """Samples per chunk: ``hop * (dim_t - 1)``, as python-audio-separator and UVR cut them."""
        return self.hop * (self.dim_t - 1)

    @property
    def stems(self) -> tuple[str, ...]:
        return self.outputs + ((self.residual,) if self.residual else ())


@dataclasses.dataclass(frozen=True)
class ImportedMdx23c:
    """What :func:`import_mdx23c` wrote."""

    name: str
    card: Path
    model: Path
    architecture: str
    stems: tuple[str, ...]
    parity_db: float
    seconds: float


def parse_config(data: dict, *, source: str) -> Mdx23cConfig:
    """Validate a config's data (from :func:`.roformer_config.read_config`) into a :class:`Mdx23cConfig`."""
    if not is_tfc_tdf_config(data):
        model = data.get("model")
        keys = sorted(str(k) for k in model) if isinstance(model, dict) else []
        says = ("model keys " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")) if keys else \
            f"model: {model!r}"
        raise ModelError(f"{source}: not an MDX23C (TFC-TDF v3) config ({says}); model: needs "
                         f"{', '.join(TFC_TDF_KEYS)}; pass the config the checkpoint was trained with")
    model, audio = data["model"], data.get("audio")
    training, inference = data.get("training") or {}, data.get("inference") or {}
    for section, value in (("audio", audio), ("training", training), ("inference", inference)):
        if not isinstance(value, dict):
            raise ModelError(f"{source}: {section}: must be a mapping, got {type(value).__name__}")

    whole = functools.partial(whole_number, source)

    def text(key: str, default):
        value = model.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ModelError(f"{source}: model.{key} must be a name, got {value!r}")
        return value

    scale = model.get("scale")
    if (not isinstance(scale, list) or len(scale) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scale)):
        raise ModelError(f"{source}: model.scale must be two whole numbers [time, frequency], got {scale!r}")
    act, norm = text("act", "gelu"), text("norm", None)
    if act is None or not re.fullmatch(r"gelu|relu|elu\d+(\.\d*)?", act):
        raise ModelError(f"{source}: model.act {act!r} is not one of gelu, relu, elu<alpha>")
    if norm is not None and not re.fullmatch(r"BatchNorm|InstanceNorm|GroupNorm\d+", norm):
        raise ModelError(f"{source}: model.norm {norm!r} is not one of {', '.join(NORMS)}")
    n_fft = whole(audio, "n_fft", section="audio")
    hop = whole(audio, "hop_length", section="audio")
    dim_f = whole(audio, "dim_f", section="audio")
    dim_t = whole(inference, "dim_t", section="inference", default=audio.get("dim_t"))
    channels = whole(audio, "num_channels", section="audio", default=2)
    if channels != 2:
        raise ModelError(f"{source}: audio.num_channels {channels}: the published network is stereo (2); "
                         "other channel counts are not supported")
    if dim_f > n_fft // 2 + 1:
        raise ModelError(f"{source}: audio.dim_f {dim_f} is more than the {n_fft // 2 + 1} bins of n_fft {n_fft}")
    if hop > n_fft // 2:
        raise ModelError(f"{source}: audio.hop_length {hop} is more than half of n_fft {n_fft}; the inverse "
                         "STFT needs overlapping windows")
    k = whole(model, "num_subbands", section="model")
    scales = whole(model, "num_scales", section="model")
    if dim_f % (k * scale[1] ** scales) or dim_t % (scale[0] ** scales):
        raise ModelError(f"{source}: dim_f {dim_f} must divide by num_subbands x scale[1]^num_scales = "
                         f"{k * scale[1] ** scales} and dim_t {dim_t} by scale[0]^num_scales = {scale[0] ** scales}; "
                         "the config is inconsistent")
    hop_chunk = hop * (dim_t - 1)
    if hop_chunk <= n_fft // 2:
        raise ModelError(f"{source}: dim_t {dim_t} with hop_length {hop} gives {hop_chunk}-sample chunks, too short "
                         f"for n_fft {n_fft}")
    target = training.get("target_instrument")
    instruments = training.get("instruments")
    num_targets = 1 if target else (len(instruments) if isinstance(instruments, list) else 0)
    outputs, residual = stems_of(training, num_targets, source)
    return Mdx23cConfig(
        num_channels=whole(model, "num_channels", section="model"), growth=whole(model, "growth", section="model",
                                                                                  low=0),
        num_scales=scales, num_blocks_per_scale=whole(model, "num_blocks_per_scale", section="model"),
        num_subbands=k, bottleneck_factor=whole(model, "bottleneck_factor", section="model"),
        scale=(scale[0], scale[1]), act=act, norm=norm, audio_channels=channels, n_fft=n_fft, hop=hop,
        dim_f=dim_f, dim_t=dim_t, sample_rate=whole(audio, "sample_rate", section="audio", default=44100),
        num_overlap=whole(inference, "num_overlap", section="inference", default=8),
        outputs=outputs, residual=residual)


def build_network(config: Mdx23cConfig, state: dict, *, source: str):
    """The network of ``config`` with ``state`` loaded strictly; a mismatch names the first key."""
    from .mdx23c_net import TfcTdfNet

    try:
        net = TfcTdfNet(config).eval()
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    return load_strictly(net, state, source=source, hint="check model: num_scales, num_blocks_per_scale, norm")


def parity_spectrogram(config: Mdx23cConfig, *, seed: int = 23):
    """A fixed input for the parity check: the reference's STFT of seeded pink-ish noise, one chunk.

    Returns float32 ``[1, 2*channels, dim_f, dim_t]`` as the ONNX interface defines it.
    """
    import torch

    pink = pink_noise(config.audio_channels, config.chunk_size, seed=seed)
    spec = torch.stft(torch.from_numpy(pink), config.n_fft, config.hop, window=torch.hann_window(config.n_fft),
                      center=True, return_complex=True)[:, :config.dim_f]
    packed = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [channels, 2, dim_f, dim_t]
    return packed.reshape(1, 2 * config.audio_channels, config.dim_f, config.dim_t).contiguous()


def convert(path, *, config=None, **options) -> ImportedMdx23c:
    """``stembridge models import`` for the mdx23c family: refuses options of other importers."""
    path = Path(path)
    if config is None:
        raise ModelError(f"{path}: an MDX23C (TFC-TDF v3) checkpoint needs its YAML config: pass --config CONFIG.yaml "
                         "(UVR's mdx_c_configs, or the model's config_*.yaml)")
    spleeter_only = [f"--{k}" for k in ("bins", "fp32") if options.pop(k, None)]
    if spleeter_only:
        raise ModelError(f"{' and '.join(spleeter_only)}: only for Spleeter checkpoints; drop it for an MDX23C model")
    return import_mdx23c(path, config=config, **options)


def import_mdx23c(path, *, config, name: str | None = None, force: bool = False, folder=None) -> ImportedMdx23c:
    """Convert an MDX23C checkpoint and its config into ``NAME.onnx`` + ``NAME.yaml``.

    Parameters
    ----------
    path : path-like
        The checkpoint: a torch state dict (``.ckpt``), bare or under ``state_dict``/``model``.
    config : path-like
        Its YAML config (``audio:``, ``model:``, ``training:``, ``inference:``).
    name : str, optional
        The model's name; default the checkpoint's file name without its suffix.
    force : bool
        Replace a model of the same name in the model folder.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Raises
    ------
    ModelError
        A missing or unsafe config, a config of another family or one that does not describe the
        checkpoint, a truncated checkpoint, torch missing, a failed parity check (below 60 dB),
        an existing name without ``force``, an unwritable folder. Nothing is written then.
    """
    start = time.perf_counter()
    source, config_path = Path(path), Path(config)
    if not source.is_file():
        raise ModelError(f"{source}: no such checkpoint file")
    cfg_data = read_config(config_path)
    cfg = parse_config(cfg_data, source=str(config_path))
    name, target = destination(name, stem=source.stem, default="mdx23c", folder=folder, force=force)
    import torch

    memory.return_freed_memory()  # before the first large allocation: see bridge.memory
    net = build_network(cfg, read_state_dict(source), source=f"{source} with {config_path.name}")
    checkpoint_sha = file_sha256(source)
    onnx_path, _ = publish.paths(target, name)
    with publish.writing(target, name) as partial:
        spec = parity_spectrogram(cfg)
        with torch.no_grad():
            expected = net(spec).numpy()
        example = torch.zeros(1, net.spec_channels, net.dim_f, net.dim_t)
        export_onnx(net, partial, source=str(source), example=example, input_name="spectrogram", output_name="spectrograms")
        del net  # the torch weights and the onnxruntime session need not be in memory together
        db = onnx_parity(partial, spec.numpy(), expected)
        require_parity(db, source, "outputs")
        card = chunked_card(cfg, name=name, family="mdx23c", architecture="tfc_tdf_v3", title="MDX23C, TFC-TDF v3",
                            file=onnx_path.name, sha256=file_sha256(partial), source=source,
                            checkpoint_sha=checkpoint_sha, cfg_data=cfg_data, db=db, compared="output",
                            stft=("n_fft", "hop", "dim_f"))
    onnx_path, card_path = publish.publish(
        target, name, card, header=f"Imported by: stembridge models import {source.name} --config {config_path.name}")
    return ImportedMdx23c(name, card_path, onnx_path, "tfc_tdf_v3", cfg.stems, db, time.perf_counter() - start)



