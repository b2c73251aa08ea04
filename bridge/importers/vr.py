"""Import UVR's VR models (``.pth`` state dicts) as ``vr``-family ONNX models.

``stembridge models import MODEL.pth`` reads the state dict (``weights_only=True``), finds the
model's parameters (the parameter set, the primary stem, ``nout``/``nout_lstm`` of a v5.1 network)
in UVR's hash table by the MD5 of the file's last 10,240,000 bytes (``models/uvr_vr.json``), or
from ``--vr-params NAME`` (with ``--vr-nout``/``--vr-nout-lstm`` for a v5.1 network and
``--vr-primary``) when the hash is unknown; picks the network class as the reference does (the
file's size class, or v5.1 where the table gives ``nout``), loads the weights strictly into
:mod:`.vr_net`, exports the network between the magnitude spectrogram and the mask to ONNX (time
axis symbolic), checks the export against torch on a fixed input, and writes ``NAME.onnx`` and its
card ``NAME.yaml`` (:mod:`bridge.separation.vr` runs it).

ONNX interface: input ``magnitude`` float32 ``[batch, 2, bins + 1, window]`` (the combined
magnitude spectrogram divided by its peak), output ``mask`` float32 ``[batch, 2, bins + 1, window -
2 * offset]`` in [0, 1].
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..render.records import file_sha256
from ..separation.models import UVR_HASH_BYTES, canonical_stem
from ..separation.vr_bands import Bands, param_set, secondary_stem, uvr_vr_table
from ..version import __version__
from .. import memory
from . import publish
from .roformer import ImportedRoformer, require_parity, onnx_parity, read_state_dict

DEFAULT_WINDOW = 512
DEFAULT_AGGRESSION = 5


#: What :func:`import_vr` wrote: the same record as a RoFormer import's.
ImportedVr = ImportedRoformer


def uvr_md5(path: Path) -> str:
    """UVR's key of a model file: MD5 of its last 10,240,000 bytes (the whole file if smaller)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - UVR_HASH_BYTES))
        return hashlib.md5(handle.read()).hexdigest()


def model_data(path: Path, *, params: str | None, nout: int | None, nout_lstm: int | None,
               primary: str | None) -> tuple[dict, str]:
    """The model's entry (``vr_model_param``, ``primary_stem``, maybe ``nout``/``nout_lstm``) and
    where it came from; the options given override the table."""
    key = uvr_md5(path)
    entry = dict(uvr_vr_table()["models"].get(key, {}))
    source = f"UVR hash table ({key})" if entry else ""
    if params is None and not entry:
        raise ModelError(f"{path}: a VR model whose hash {key} is not in UVR's table; pass --vr-params NAME "
                         f"(its parameter set, e.g. 4band_v3: {', '.join(sorted(uvr_vr_table()['params']))}) "
                         "and, for a v5.1 network, --vr-nout and --vr-nout-lstm")
    given = {k: v for k, v in (("vr_model_param", params), ("nout", nout), ("nout_lstm", nout_lstm),
                                ("primary_stem", primary)) if v is not None}
    if given:
        entry.update(given)
        source = (source + " with " if source else "") + "options " + ", ".join(f"{k}={v}" for k, v in given.items())
    if ("nout" in entry) != ("nout_lstm" in entry):
        raise ModelError(f"{path}: a v5.1 network needs both --vr-nout and --vr-nout-lstm (UVR's defaults are 32 and 128)")
    entry.setdefault("primary_stem", "Vocals")
    param_set(entry["vr_model_param"])  # a clear error for an unknown name
    return entry, source


def build_network(entry: dict, state: dict, *, kilobytes: int, source: str):
    """The network the reference would build for this file, with ``state`` loaded strictly."""
    import torch

    from .vr_net import V51_CLASSES, CascadedV5, CascadedV51, size_class

    params = param_set(entry["vr_model_param"])
    bins = int(params.get("n_bins", params.get("bins")))
    size = size_class(kilobytes)
    if "nout" in entry or size in V51_CLASSES:
        nout, nout_lstm = int(entry.get("nout", 32)), int(entry.get("nout_lstm", 128))
        nout = 64 if size == 218409 else nout  # as the reference: that size class is always 64 wide
        net, architecture = CascadedV51(bins, nout, nout_lstm), f"v5.1 (nout {nout}, nout_lstm {nout_lstm})"
    else:
        net, architecture = CascadedV5(bins, size), f"v5 ({size} KB class)"
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelError(f"{source}: the state dict has no '{key}' ({list(tensor.shape)}), which a {architecture} "
                             f"network for {entry['vr_model_param']} needs; pass the --vr-params/--vr-nout/"
                             "--vr-nout-lstm the model was trained with")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{source}: '{key}' is {list(state[key].shape)} in the state dict but {list(tensor.shape)} "
                             f"in a {architecture} network for {entry['vr_model_param']}; pass the --vr-params/"
                             "--vr-nout/--vr-nout-lstm the model was trained with")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModelError(f"{source}: the state dict has '{extra[0]}' (and {len(extra) - 1} more) that a {architecture} "
                         "network does not; not a VR model of this kind")
    with torch.no_grad():
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval(), architecture


def parity_input(bins: int, window: int, *, seed: int = 15) -> np.ndarray:
    """A fixed network input: seeded magnitudes with a falling spectrum, peak 1, one window."""
    rng = np.random.default_rng(seed)
    tilt = 1.0 / np.sqrt(1.0 + np.arange(bins + 1))[None, :, None]
    mag = np.abs(rng.standard_normal((1, 2, bins + 1, window))) * tilt
    return (mag / mag.max()).astype(np.float32)


def convert(path, *, config=None, name=None, force=False, bins=None, fp32=False, vr_params=None, vr_nout=None,
            vr_nout_lstm=None, vr_primary=None, **options) -> ImportedVr:
    """The vr family's importer (``stembridge models import MODEL.pth``)."""
    spleeter_only = [flag for flag, given in (("--bins", bins), ("--fp32", fp32)) if given]
    if spleeter_only:
        raise ModelError(f"{' and '.join(spleeter_only)}: only for Spleeter checkpoints; drop it for a VR model")
    if config is not None:
        raise ModelError(f"{path}: a VR model takes no --config; its parameters come from UVR's table or --vr-params")
    return import_vr(path, name=name, force=force, params=vr_params, nout=vr_nout, nout_lstm=vr_nout_lstm,
                     primary=vr_primary, **options)


def import_vr(path, *, name: str | None = None, force: bool = False, folder=None, params: str | None = None,
              nout: int | None = None, nout_lstm: int | None = None, primary: str | None = None) -> ImportedVr:
    """Convert a VR ``.pth`` into ``NAME.onnx`` + ``NAME.yaml`` (see the module docstring).

    Raises
    ------
    ModelError
        A missing or truncated file, an unknown hash without ``params``, a state dict that does not
        fit the network (first differing key and both shapes), torch missing, a failed parity check
        (below 60 dB), an existing name without ``force``. Nothing is written then.
    """
    start = time.perf_counter()
    source = Path(path)
    if not source.is_file():
        raise ModelError(f"{source}: no such VR model file")
    name, target = publish.destination(name, stem=source.stem, default="vr", folder=folder, force=force)
    entry, found = model_data(source, params=params, nout=nout, nout_lstm=nout_lstm, primary=primary)
    memory.return_freed_memory()  # before the first large allocation: see bridge.memory
    state = read_state_dict(source)
    if not any(k.startswith("stg1_low_band_net.") for k in state):
        raise ModelError(f"{source}: not a UVR VR model (no stg1_low_band_net.* weights); for a RoFormer pass --config")
    kilobytes = math.ceil(source.stat().st_size / 1024)
    net, architecture = build_network(entry, state, kilobytes=kilobytes, source=str(source))
    del state
    import torch

    set_name = entry["vr_model_param"]
    bands = Bands(param_set(set_name), v51=architecture.startswith("v5.1"), name=set_name)  # refuses what cannot run
    checkpoint_sha = file_sha256(source)
    onnx_path, _ = publish.paths(target, name)
    with publish.writing(target, name) as partial:
        x = parity_input(bands.bins, DEFAULT_WINDOW)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        _export(net, partial, bands.bins, source=str(source))
        offset = net.offset
        del net
        db = onnx_parity(partial, x, expected)
        require_parity(db, source, "masks")
        primary_name = entry["primary_stem"]
        stems = [primary_name, secondary_stem(primary_name)]
        card = {
            "name": name, "family": "vr", "file": onnx_path.name, "sha256": file_sha256(partial),
            "stems": stems, "primary": primary_name, "sample_rate": bands.sr,
            "vr": {"params": set_name, "v51": architecture.startswith("v5.1"), "offset": offset,
                   "window_size": DEFAULT_WINDOW, "aggression": DEFAULT_AGGRESSION,
                   "is_karaoke": bool(entry.get("is_karaoke", False)), "band": param_set(set_name)},
            "imported": {
                "checkpoint": source.name, "checkpoint_sha256": checkpoint_sha, "model_data": entry,
                "model_data_from": found, "architecture": architecture, "stembridge_version": __version__,
                "parity_db": round(db, 2),
                "parity": f"SNR of the ONNX mask (onnxruntime) against the torch network's on one seeded "
                          f"{DEFAULT_WINDOW}-frame window",
            },
            "credit": uvr_vr_table()["credit"],
            "description": f"UVR VR model, {architecture}, {set_name} ({primary_name} / {stems[1]}), imported from "
                           f"{source.name} by stembridge models import",
        }
    onnx_path, card_path = publish.publish(target, name, card,
                                           header=f"Imported by: stembridge models import {source.name}")
    return ImportedVr(name, card_path, onnx_path, architecture, tuple(canonical_stem(s) for s in stems), db,
                      time.perf_counter() - start)


def _export(net, path: Path, bins: int, *, source: str) -> None:
    """ONNX with symbolic batch and time."""
    import os
    import tempfile
    import warnings

    import torch

    example = torch.zeros(1, 2, bins + 1, DEFAULT_WINDOW)
    with tempfile.TemporaryDirectory(prefix=".vr-export-", dir=path.parent) as scratch:
        exported = Path(scratch) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(net, (example,), str(exported), dynamo=False, opset_version=17,
                                  input_names=["magnitude"], output_names=["mask"],
                                  dynamic_axes={"magnitude": {0: "batch", 3: "frames"},
                                                "mask": {0: "batch", 3: "frames_out"}})
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{source}: the ONNX export failed ({' '.join(str(exc).split())[:200]})") from None
        os.replace(exported, path)
