"""Import Open-Unmix models (umxhq, umxl, umxse and models trained with openunmix) as ``umx`` models.

``stembridge models import FOLDER`` takes a folder as openunmix's ``train.py`` leaves it and as
openunmix's own loader reads it (``openunmix.utils.load_target_models``): for each target a
``TARGET*.pth`` state dict (``vocals-b62c91ce.pth``) and a ``TARGET.json`` whose ``args`` hold the
training settings (``nfft``, ``nhop``, ``hidden_size``, ``bandwidth``, ``nb_channels``,
``unidirectional``), with ``separator.json`` beside them (``sample_rate``, ``nfft``, ``nhop``,
``nb_channels``). ``stembridge models import TARGET.pth`` takes one target of such a folder (its
JSON beside it). A flat JSON with the same keys (and ``sample_rate``) is read as well.

Each state dict is read with ``torch.load(weights_only=True)`` (checkpoints are untrusted; the
JSON is read as data), loaded strictly into :class:`.umx_net.TargetNet` built from the JSON (a
tensor that does not fit is named with both shapes), and all targets are exported as one ONNX
graph without the STFT: input float32 ``[batch, nb_channels, n_fft/2+1, frames]``, the mixture's
magnitude (for a mono model, ``nb_channels`` 1, the mean of the channels' magnitudes, as
openunmix's ``ComplexNorm(mono=True)``); output ``[batch, targets, nb_channels, n_fft/2+1,
frames]``, each target's magnitude estimate. Batch and frames are dynamic. The export is checked
against the torch networks on a fixed magnitude (refused under 60 dB) before anything is kept.

The card keeps openunmix's defaults for the filtering (``Separator``'s ``niter`` 1, ``softmask``
false, ``wiener_win_len`` 300, ``residual`` off for a model with two targets or more; a model of
one target gets the ``residual`` stem, since openunmix refuses the filter with a single source).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..render.records import file_sha256
from ..separation.umx import CHUNK_WINDOWS, DEFAULTS
from ..version import __version__
from .. import memory
from . import publish
from .roformer import export_onnx, require_parity, onnx_parity, read_state_dict, snr_db
from .umx_net import UmxConfig

#: The order openunmix's published models list their targets in; others follow by name.
TARGET_ORDER = ("vocals", "drums", "bass", "other", "speech", "noise")
#: The tensors the first published models (openunmix 1.0, umxhq and umx) carry beside the network:
#: the STFT window and the sample rate, which openunmix's loader skips (``strict=False``).
TRANSFORM_KEYS = ("stft.window", "transform.0.window", "sample_rate")


@dataclasses.dataclass(frozen=True)
class ImportedUmx:
    """What :func:`import_umx` wrote."""

    name: str
    card: Path
    model: Path
    stems: tuple[str, ...]
    parity_db: float
    seconds: float
    architecture: str = "open-unmix"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); it should be the JSON openunmix wrote with the model") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _settings(data: dict) -> dict:
    """A target JSON's training settings: under ``args`` (openunmix's train.py), or the object itself."""
    return data["args"] if isinstance(data.get("args"), dict) else data


def is_target_json(data: dict) -> bool:
    """Whether a JSON object describes an Open-Unmix target (train.py's ``args``)."""
    args = _settings(data)
    return "hidden_size" in args and ("nfft" in args or "n_fft" in args)


def _number(args: dict, keys: tuple[str, ...], source: Path, *, kind=int, what: str):
    for key in keys:
        if key in args:
            value = args[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            if kind is int:
                ok = ok and float(value).is_integer()
            if not ok:
                raise ModelError(f"{source}: {key} must be a positive {'whole ' if kind is int else ''}number, got {value!r}")
            return kind(value)
    raise ModelError(f"{source}: no {what} ('{keys[0]}'); write the JSON openunmix's train.py wrote with the model")


def target_config(target: str, json_path: Path, separator: dict | None, separator_path: Path | None) -> UmxConfig:
    """The :class:`UmxConfig` of one target from its JSON (and the folder's ``separator.json``)."""
    data = _read_json(json_path)
    if not is_target_json(data):
        raise ModelError(f"{json_path}: not an Open-Unmix target's JSON (no args.hidden_size/nfft); this is a config "
                         "for another kind of model, or not a model config")
    args = dict(_settings(data))
    if separator:  # separator.json: the transform the separator runs with
        for key in ("sample_rate", "nfft", "nhop", "nb_channels"):
            if key in separator and key in args and separator[key] != args[key]:
                raise ModelError(f"{json_path}: {key} {args[key]!r} disagrees with {separator_path.name}'s "
                                 f"{separator[key]!r}; they must describe the same model")
            args.setdefault(key, separator.get(key))
        args = {k: v for k, v in args.items() if v is not None}
    if not any(k in args for k in ("sample_rate", "rate")):
        raise ModelError(f"{json_path}: no sample rate; put separator.json (sample_rate, nfft, nhop, nb_channels), as "
                         "openunmix's train.py writes it, beside the model, or add \"sample_rate\" to the JSON")
    channels = _number(args, ("nb_channels",), json_path, what="channel count")
    if channels not in (1, 2):
        raise ModelError(f"{json_path}: nb_channels must be 1 or 2, got {channels}")
    unidirectional = args.get("unidirectional", False)
    if not isinstance(unidirectional, bool):
        raise ModelError(f"{json_path}: unidirectional must be true or false, got {unidirectional!r}")
    config = UmxConfig(
        target=target,
        sample_rate=_number(args, ("sample_rate", "rate"), json_path, what="sample rate"),
        n_fft=_number(args, ("nfft", "n_fft"), json_path, what="FFT size"),
        hop=_number(args, ("nhop", "n_hop", "hop"), json_path, what="hop size"),
        nb_channels=channels,
        hidden_size=_number(args, ("hidden_size",), json_path, what="hidden size"),
        bandwidth=_number(args, ("bandwidth",), json_path, kind=float, what="bandwidth"),
        nb_layers=_number(args, ("nb_layers",), json_path, what="layer count") if "nb_layers" in args else 3,
        unidirectional=unidirectional,
    )
    if config.hop > config.n_fft // 2:
        raise ModelError(f"{json_path}: nhop {config.hop} is more than half of nfft {config.n_fft}; not an STFT openunmix can invert")
    if not config.unidirectional and config.hidden_size % 2:
        raise ModelError(f"{json_path}: hidden_size {config.hidden_size} is odd; a bidirectional model halves it")
    return config


def _json_for(pth: Path) -> Path | None:
    """The target JSON of a state dict, as openunmix's loader pairs them: ``T.json`` beside a ``T*.pth``
    (the longest such ``T``)."""
    candidates = [j for j in pth.parent.glob("*.json") if j.name != "separator.json" and pth.name.startswith(j.stem)]
    return max(candidates, key=lambda j: len(j.stem)) if candidates else None


def find_targets(path: Path) -> dict[str, tuple[Path, Path]]:
    """``{target: (state dict, JSON)}`` of a folder, or of one ``.pth`` file, in openunmix's order."""
    if path.is_dir():
        pairs = {}
        for json_path in sorted(path.glob("*.json")):
            if json_path.name == "separator.json" or not is_target_json(_read_json(json_path)):
                continue
            files = sorted(p for p in path.glob(f"{json_path.stem}*.pth") if _json_for(p) == json_path)
            if not files:
                raise ModelError(f"{json_path}: no {json_path.stem}*.pth beside it; put the target's state dict in {path}")
            pairs[json_path.stem] = (files[0], json_path)
        orphans = sorted(p.name for p in path.glob("*.pth") if _json_for(p) is None)
        if orphans:
            raise ModelError(f"{path / orphans[0]}: no target JSON for it (e.g. {orphans[0].split('-')[0].split('.')[0]}.json, "
                             "as openunmix's train.py writes it); put it beside the model")
        if not pairs:
            raise ModelError(f"{path}: no Open-Unmix target in it (TARGET.json with TARGET*.pth, as openunmix's "
                             "train.py writes them)")
    else:
        json_path = _json_for(path)
        if json_path is None:
            raise ModelError(f"{path}: no target JSON beside it (e.g. {path.name.split('-')[0].split('.')[0]}.json with "
                             "args.nfft, nhop, hidden_size, bandwidth, nb_channels, as openunmix's train.py writes "
                             "it); put it beside the model")
        pairs = {json_path.stem: (path, json_path)}
    order = {t: i for i, t in enumerate(TARGET_ORDER)}
    return dict(sorted(pairs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def build_target(config: UmxConfig, state: dict, *, source: str):
    """The target's network with ``state`` loaded strictly; a tensor that does not fit is named."""
    import torch

    from .umx_net import TargetNet

    net = TargetNet(config).eval()
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelError(f"{source}: the state dict has no '{key}', which the JSON implies; the JSON does not "
                             "describe this model (check nb_layers, unidirectional)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{source}: '{key}' is {list(state[key].shape)} in the state dict but {list(tensor.shape)} "
                             "by the JSON; the JSON does not describe this model (check nfft, hidden_size, bandwidth, "
                             "nb_channels)")
    extra = sorted(set(state) - set(expected))
    for key in extra:
        if key not in TRANSFORM_KEYS:
            raise ModelError(f"{source}: the state dict has '{key}' (and {len(extra) - 1} more), which an Open-Unmix "
                             "network does not; it is not an Open-Unmix target or the JSON is another model's")
        value = state[key]
        if key == "sample_rate" and (value.numel() != 1 or float(value) != config.sample_rate):
            raise ModelError(f"{source}: the state dict says sample_rate {value.tolist()}, the JSON {config.sample_rate}")
        if key != "sample_rate" and tuple(value.shape) != (config.n_fft,):
            raise ModelError(f"{source}: '{key}' is {list(value.shape)} in the state dict but [{config.n_fft}] by the JSON's nfft")
    with torch.no_grad():
        net.load_state_dict({k: state[k].float() for k in expected}, strict=True)
    return net


def parity_magnitude(config: UmxConfig, *, seconds: float = 6.0, seed: int = 26):
    """A fixed input for the parity check: the magnitude STFT of seeded pink-ish noise."""
    import torch

    samples = int(seconds * config.sample_rate)
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((config.nb_channels, samples))
    freqs = np.fft.rfftfreq(samples)
    freqs[0] = freqs[1]
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(freqs / freqs[1]), n=samples)  # -3 dB/octave
    pink = torch.from_numpy((0.25 * pink / np.abs(pink).max()).astype(np.float32))
    spec = torch.stft(pink, config.n_fft, config.hop, window=torch.hann_window(config.n_fft), center=True,
                      pad_mode="reflect", normalized=False, return_complex=True)
    return spec.abs().unsqueeze(0).contiguous()


def convert(path, *, config=None, **options) -> ImportedUmx:
    """``stembridge models import`` for the umx family: refuses options of other importers."""
    if config is not None:
        raise ModelError(f"--config {config}: an Open-Unmix model takes its settings from the JSON beside it; drop --config")
    others = [f"--{k}" for k in ("bins", "fp32") if options.pop(k, None)]
    if others:
        raise ModelError(f"{' and '.join(others)}: only for Spleeter checkpoints; drop it for an Open-Unmix model")
    return import_umx(path, **options)


def import_umx(path, *, name: str | None = None, force: bool = False, folder=None) -> ImportedUmx:
    """Convert an Open-Unmix model (a folder of targets, or one target's ``.pth``) into ``NAME.onnx`` +
    ``NAME.yaml``.

    Parameters
    ----------
    path : path-like
        The folder (``TARGET.json`` + ``TARGET*.pth`` per target, ``separator.json``) or one ``.pth``.
    name : str, optional
        The model's name; default the folder's name (for one file, the file's name without suffix).
    force : bool
        Replace a model of the same name in the model folder.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Raises
    ------
    ModelError
        A missing JSON, a JSON for another kind of model, a state dict that does not fit it, a
        truncated file, targets with different transforms, a failed parity check (below 60 dB),
        an existing name without ``force``. Nothing is written then.
    """
    start = time.perf_counter()
    source = Path(path)
    if not source.exists():
        raise ModelError(f"{source}: no such file or folder")
    pairs = find_targets(source)
    separator_path = (source if source.is_dir() else source.parent) / "separator.json"
    separator = _read_json(separator_path) if separator_path.is_file() else None
    configs = {t: target_config(t, j, separator, separator_path) for t, (_, j) in pairs.items()}
    first = next(iter(configs.values()))
    for target, cfg in configs.items():
        if not cfg.same_transform(first):
            raise ModelError(f"{pairs[target][1]}: sample_rate/nfft/nhop/nb_channels differ from {pairs[first.target][1].name}'s; "
                             "the targets of one model share one transform")
    default = source.name if source.is_dir() else source.stem
    name, target_folder = publish.destination(name, stem=default, default="umx", folder=folder, force=force)
    import torch

    from .umx_net import Targets

    memory.return_freed_memory()  # before the first large allocation: see bridge.memory

    nets, checksums = {}, {}
    for target, (pth, json_path) in pairs.items():
        state = read_state_dict(pth)
        nets[target] = build_target(configs[target], state, source=f"{pth} with {json_path.name}")
        del state
        checksums[target] = file_sha256(pth)
    graph = Targets(nets).eval()
    del nets
    onnx_path, _ = publish.paths(target_folder, name)
    targets = tuple(configs)
    residual = "residual" if len(targets) == 1 else None
    chunk = CHUNK_WINDOWS * DEFAULTS["wiener_win_len"] * first.hop  # see separation/umx.py, "Chunking"
    with publish.writing(target_folder, name) as partial:
        magnitude = parity_magnitude(first)
        with torch.no_grad():
            expected = graph(magnitude).numpy()
        _export(graph, partial, first, source=str(source))
        del graph  # the torch weights and the onnxruntime session need not be in memory together
        db = onnx_parity(partial, magnitude.numpy(), expected)
        require_parity(db, source, "estimates")
        card = {
            "name": name, "family": "umx", "file": onnx_path.name, "sha256": file_sha256(partial),
            "stems": list(targets) + ([residual] if residual else []), "residual": residual,
            "sample_rate": first.sample_rate, "n_fft": first.n_fft, "hop": first.hop,
            "chunk_size": chunk, "dim_t": chunk // first.hop + 1, "audio_channels": first.nb_channels,
            "umx": dict(DEFAULTS),
            "imported": {
                "files": {t: {"state_dict": p.name, "sha256": checksums[t], "json": j.name} for t, (p, j) in pairs.items()},
                "config": {t: dataclasses.asdict(c) for t, c in configs.items()},
                "stembridge_version": __version__, "parity_db": round(db, 2),
                "parity": f"SNR of the ONNX estimates (onnxruntime) against the torch networks', on the magnitude STFT "
                          f"of {magnitude.shape[-1]} frames of seeded pink noise ({first.nb_channels} channels)",
            },
            "description": f"Open-Unmix ({', '.join(targets)}; hidden size {first.hidden_size}, "
                           f"{first.bandwidth:g} Hz bandwidth), imported from {source.name} by stembridge models import",
        }
    onnx_path, card_path = publish.publish(target_folder, name, card,
                                           header=f"Imported by: stembridge models import {source.name}")
    return ImportedUmx(name, card_path, onnx_path, tuple(card["stems"]), db,
                       time.perf_counter() - start)


def _export(graph, path: Path, config: UmxConfig, *, source: str) -> None:
    """Export ``graph`` with dynamic batch and frames (the chunk's frames are the run time's to choose)."""
    import torch

    example = torch.zeros(1, config.nb_channels, config.bins, 64)
    export_onnx(graph, path, source=source, example=example, input_name="magnitude", output_name="estimates",
                dynamic={"magnitude": {0: "batch", 3: "frames"}, "estimates": {0: "batch", 4: "frames"}})


__all__ = ["ImportedUmx", "build_target", "convert", "find_targets", "import_umx", "snr_db", "target_config"]
