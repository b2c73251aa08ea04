"""ONNX models for the benchmarks, built with onnx.helper (no torch, no downloads).

- :func:`trivial_mdx`: MDX-shaped, ``[batch, 4, 3072, 256] -> same``, output = input * constant:
  the model costs nothing, so a run measures the pipeline around it.
- :func:`tfc_tdf_mdx`: a random-weight U-Net in the style of UVR's MDX-Net (TFC-TDF: blocks of
  3x3 convolutions over time-frequency, then a bottlenecked fully connected layer along the
  frequency axis, with strided down/up-sampling and skip connections), at UVR size: ~15 M
  parameters, ~775 GFLOP per 256-frame chunk. Normalisation is left out, as if BatchNorm had been
  folded into the convolutions. The output is the input times a mask in (0, 1)
  (``sigmoid`` of a 1x1 convolution), so its numbers stay as sane as a real separator's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
DIM_F, DIM_T, N_FFT, HOP = 3072, 256, 6144, 1024


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def trivial_mdx(path: Path, *, gain: float = 0.5) -> Path:
    """``spec_out = gain * spec_in``, shape ``[batch, 4, 3072, 256]``."""
    shape = ["batch", 4, DIM_F, DIM_T]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)
    inits = [numpy_helper.from_array(np.array(gain, np.float32), "gain")]
    nodes = [helper.make_node("Mul", ["input", "gain"], ["output"])]
    return _save(helper.make_graph(nodes, "mdx_trivial", [x], [y], inits), path)


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []
        self.params = 0
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def weight(self, array: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        self.params += array.size
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int, *, stride: int = 1, gain: float = 2.0) -> str:
        # He initialisation: activations keep their scale through ReLU layers.
        w = self.rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(gain / (c_in * k * k))
        b = np.zeros(c_out)
        pads = [k // 2] * 4 if stride == 1 else [0] * 4
        return self.node("Conv", [x, self.weight(w, "w"), self.weight(b, "b")], kernel_shape=[k, k],
                         strides=[stride, stride], pads=pads)

    def up(self, x: str, c_in: int, c_out: int) -> str:
        w = self.rng.standard_normal((c_in, c_out, 2, 2)) * np.sqrt(2.0 / (c_in * 4))
        return self.node("ConvTranspose", [x, self.weight(w, "w"), self.weight(np.zeros(c_out), "b")],
                         kernel_shape=[2, 2], strides=[2, 2])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def tfc(self, x: str, c: int, layers: int = 3) -> str:
        for _ in range(layers):
            x = self.relu(self.conv(x, c, c, 3))
        return x

    def tdf(self, x: str, f: int, bn: int = 8) -> str:
        """Bottlenecked dense layer along frequency (the last axis here), added back (residual)."""
        w1 = self.rng.standard_normal((f, f // bn)) * np.sqrt(2.0 / f)
        w2 = self.rng.standard_normal((f // bn, f)) * np.sqrt(1.0 / (f // bn))
        h = self.relu(self.node("MatMul", [x, self.weight(w1, "fc")]))
        h = self.node("MatMul", [h, self.weight(w2, "fc")])
        # Halve the sum so the residual does not double the scale at every block.
        return self.node("Mul", [self.node("Add", [x, h]), self.weight(np.array(0.5), "half")])


def tfc_tdf_mdx(path: Path, *, c0: int = 40, growth: int = 64, levels: int = 4, seed: int = 0,
                mask_scale: float = 1.0, extra_output: bool = False) -> Path:
    """A TFC-TDF U-Net, ``[batch, 4, 3072, 256] -> same``, random weights (see the module doc).

    ``mask_scale`` scales the 1x1 convolution before the sigmoid (calibrated by
    :func:`calibrate_mask_scale` so the mask is neither saturated nor flat); ``extra_output``
    adds the pre-sigmoid logits as a second output, for that calibration.
    """
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    shape = ["batch", 4, DIM_F, DIM_T]
    # Work as [batch, channels, time, frequency] so the frequency-wise dense layers are plain
    # MatMuls over the last axis.
    xt = b.node("Transpose", ["input"], perm=[0, 1, 3, 2])
    h = b.relu(b.conv(xt, 4, c0, 1))
    skips = []
    for level in range(levels):
        c = c0 + level * growth
        h = b.tdf(b.tfc(h, c), DIM_F >> level)
        skips.append(h)
        h = b.relu(b.conv(h, c, c + growth, 2, stride=2))
    h = b.tfc(h, c0 + levels * growth)
    for level in reversed(range(levels)):
        c = c0 + level * growth
        h = b.relu(b.up(h, c + growth, c))
        h = b.node("Mul", [b.node("Add", [h, skips[level]]), b.weight(np.array(0.5), "half")])
        h = b.tdf(b.tfc(h, c), DIM_F >> level)
    logits = b.conv(h, c0, 4, 1, gain=mask_scale ** 2)
    mask = b.node("Sigmoid", [logits])
    yt = b.node("Mul", [xt, mask])
    b.nodes.append(helper.make_node("Transpose", [yt], ["output"], perm=[0, 1, 3, 2]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)]
    if extra_output:
        b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, DIM_T, DIM_F]))
    graph = helper.make_graph(b.nodes, "mdx_tfc_tdf_random", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              outputs, b.inits)
    _save(graph, path)
    return path


def count_params(path: Path) -> int:
    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def write_card(path: Path, model: Path, *, name: str, compensate: float = 1.0) -> Path:
    """A stembridge model card for an MDX-shaped model at UVR's Inst_HQ_3 geometry."""
    import yaml

    card = dict(name=name, family="mdx", file=model.name, sample_rate=44100, n_fft=N_FFT, hop=HOP,
                dim_f=DIM_F, dim_t=DIM_T, compensate=compensate, primary="instrumental",
                stems=["instrumental", "vocals"])
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path
