"""Tiny real ONNX models, built with onnx.helper, and their model cards, for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mdx_model(path: Path, *, dim_f: int, dim_t: int | None, kind: str = "identity", gain: float = 1.0,
              cutoff_bin: int | None = None, batch: int | None = None) -> Path:
    """An MDX-shaped model: [batch, 4, dim_f, dim_t] -> same.

    kind: ``identity`` (y = x), ``scale`` (y = gain * x), ``lowpass`` (bins below ``cutoff_bin``
    pass, the rest are zeroed), ``nonlinear`` (y = 0.5 * tanh(3x), mixing nothing across chunks).
    """
    shape = [batch or "batch", 4, dim_f, dim_t or "frames"]
    x = helper.make_tensor_value_info("spec_in", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("spec_out", TensorProto.FLOAT, shape)
    inits, nodes = [], []
    if kind == "identity":
        nodes.append(helper.make_node("Identity", ["spec_in"], ["spec_out"]))
    elif kind == "scale":
        inits.append(numpy_helper.from_array(np.array(gain, np.float32), "gain"))
        nodes.append(helper.make_node("Mul", ["spec_in", "gain"], ["spec_out"]))
    elif kind == "lowpass":
        mask = np.zeros((1, 1, dim_f, 1), np.float32)
        mask[:, :, :cutoff_bin] = 1.0
        inits.append(numpy_helper.from_array(mask, "mask"))
        nodes.append(helper.make_node("Mul", ["spec_in", "mask"], ["spec_out"]))
    elif kind == "nonlinear":
        inits += [numpy_helper.from_array(np.array(3.0, np.float32), "k"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "h")]
        nodes += [helper.make_node("Mul", ["spec_in", "k"], ["a"]), helper.make_node("Tanh", ["a"], ["b"]),
                  helper.make_node("Mul", ["b", "h"], ["spec_out"])]
    else:
        raise ValueError(kind)
    return _save(helper.make_graph(nodes, f"mdx_{kind}", [x], [y], inits), path)


def mdx_card(path: Path, model: Path, *, n_fft: int, dim_f: int, dim_t: int, primary: str = "instrumental",
             compensate: float = 1.0, sample_rate: int = 44100, name: str | None = None, **extra) -> Path:
    card = dict(name=name or path.stem, family="mdx", file=model.name, sample_rate=sample_rate, n_fft=n_fft,
                hop=n_fft // 4, dim_f=dim_f, dim_t=dim_t, compensate=compensate, primary=primary,
                stems=["vocals", "instrumental"], **extra)
    path.write_text(yaml.safe_dump(card))
    return path


def mask_model(path: Path, *, bins: int, cutoff_bin: int, dim_t: int | None = None) -> Path:
    """A Spleeter-shaped model: magnitude [batch, 2, frames, bins] -> ``vocals`` (bins below
    ``cutoff_bin``) and ``accompaniment`` (the rest) estimates, as mask * input."""
    shape = ["batch", 2, dim_t or "frames", bins]
    x = helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vocals", "accompaniment")]
    low = np.zeros((1, 1, 1, bins), np.float32)
    low[..., :cutoff_bin] = 1.0
    inits = [numpy_helper.from_array(low, "low"), numpy_helper.from_array(1.0 - low, "high")]
    nodes = [helper.make_node("Mul", ["magnitude", "low"], ["vocals"]),
             helper.make_node("Mul", ["magnitude", "high"], ["accompaniment"])]
    return _save(helper.make_graph(nodes, "mask_split", [x], outs, inits), path)


def mask_card(path: Path, model: Path, *, n_fft: int, bins: int, dim_t: int, **extra) -> Path:
    card = dict(name=path.stem, family="mask", file=model.name, sample_rate=44100, n_fft=n_fft, hop=n_fft // 4,
                bins=bins, dim_t=dim_t, stems=["vocals", "accompaniment"], combine="ratio", **extra)
    path.write_text(yaml.safe_dump(card))
    return path
