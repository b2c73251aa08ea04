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


def roformer_model(path: Path, *, bins: int, dim_t: int | None, masks, channels: int = 2,
                   batch: int | None = None, extra_output: bool = False) -> Path:
    """A RoFormer-interface model: ``[batch, channels, bins, dim_t, 2]`` real/imag spectrogram ->
    ``[batch, len(masks), channels, bins, dim_t, 2]`` complex masks.

    Each entry of ``masks`` is one model stem: ``"identity"`` (1 + 0j), a complex number (that
    constant mask), ``("bandstop", lo, hi)`` (1 outside bins [lo, hi), 0 inside) or
    ``("context", frames)`` (real mask ``P / (P + mean(P) + 1e-8)``, with ``P`` the power summed over
    channels and ``mean`` a moving average over ``frames`` neighbouring frames: each frame's mask
    depends on its neighbours, so what a chunk edge cuts off changes the output).
    """
    x = helper.make_tensor_value_info("stft", TensorProto.FLOAT, [batch or "batch", channels, bins, dim_t or "frames", 2])
    y = helper.make_tensor_value_info("masks", TensorProto.FLOAT,
                                      [batch or "batch", len(masks), channels, bins, dim_t or "frames", 2])
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Unsqueeze", ["stft", "axis1"], ["xu"]),  # [B, 1, C, F, T, 2]
             helper.make_node("Mul", ["xu", "zero"], ["zeros"])]
    parts = []
    for i, kind in enumerate(masks):
        name = f"mask{i}"
        if isinstance(kind, tuple) and kind[0] == "context":
            frames = int(kind[1])
            inits += [numpy_helper.from_array(np.array([1, 4], np.int64), f"sum_axes{i}"),
                      numpy_helper.from_array(np.array([4], np.int64), f"last{i}"),
                      numpy_helper.from_array(np.array([1, 5], np.int64), f"unsq{i}"),
                      numpy_helper.from_array(np.array(1e-8, np.float32), f"eps{i}")]
            nodes += [helper.make_node("Mul", ["stft", "stft"], [f"sq{i}"]),
                      helper.make_node("ReduceSum", [f"sq{i}", f"sum_axes{i}"], [f"p5{i}"], keepdims=1),
                      helper.make_node("Squeeze", [f"p5{i}", f"last{i}"], [f"p{i}"]),  # [B, 1, F, T]
                      helper.make_node("AveragePool", [f"p{i}"], [f"avg{i}"], kernel_shape=[1, frames],
                                       pads=[0, frames // 2, 0, frames - 1 - frames // 2], count_include_pad=0),
                      helper.make_node("Add", [f"p{i}", f"avg{i}"], [f"den0{i}"]),
                      helper.make_node("Add", [f"den0{i}", f"eps{i}"], [f"den{i}"]),
                      helper.make_node("Div", [f"p{i}", f"den{i}"], [f"m{i}"]),
                      helper.make_node("Unsqueeze", [f"m{i}", f"unsq{i}"], [f"re{i}"]),  # [B, 1, 1, F, T, 1]
                      helper.make_node("Mul", [f"re{i}", "zero"], [f"im{i}"]),
                      helper.make_node("Concat", [f"re{i}", f"im{i}"], [f"c{i}"], axis=-1),
                      helper.make_node("Add", ["zeros", f"c{i}"], [name])]
        else:
            const = np.zeros((1, 1, 1, bins, 1, 2), np.float32)
            if isinstance(kind, tuple) and kind[0] == "bandstop":
                const[..., 0] = 1.0
                const[:, :, :, kind[1]:kind[2], :, 0] = 0.0
            else:
                value = complex(1.0 if kind == "identity" else kind)
                const[..., 0], const[..., 1] = value.real, value.imag
            inits.append(numpy_helper.from_array(const, f"const{i}"))
            nodes.append(helper.make_node("Add", ["zeros", f"const{i}"], [name]))
        parts.append(name)
    if len(parts) == 1:
        nodes.append(helper.make_node("Identity", parts, ["masks"]))
    else:
        nodes.append(helper.make_node("Concat", parts, ["masks"], axis=1))
    outputs = [y]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [batch or "batch", channels, bins, dim_t or "frames", 2]))
        nodes.append(helper.make_node("Identity", ["stft"], ["extra"]))
    return _save(helper.make_graph(nodes, "roformer_masks", [x], outputs, inits), path)


def roformer_card(path: Path, model: Path, *, n_fft: int, hop: int, chunk_size: int, stems=("vocals", "instrumental"),
                  residual: str | None = "instrumental", sample_rate: int = 44100, num_overlap: int = 2,
                  audio_channels: int = 2, win_length: int | None = None, sha256: bool = True, **extra) -> Path:
    """The card the importer writes for ``model`` (sha256 of the file included unless ``sha256=False``)."""
    import hashlib

    card = dict(name=path.stem, family="roformer", architecture="bs_roformer", file=model.name,
                stems=list(stems), residual=residual, sample_rate=sample_rate, n_fft=n_fft, hop=hop,
                win_length=win_length or n_fft, dim_t=chunk_size // hop + 1, chunk_size=chunk_size,
                num_overlap=num_overlap, audio_channels=audio_channels,
                imported={"checkpoint": "tiny.ckpt", "parity_db": 120.5, "config": {"dim": 8}}, **extra)
    if sha256:
        card["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def roformer_like(path: Path, *, bins: int, bands: int, dim: int = 32, depth: int = 1, heads: int = 2,
                  stems: int = 1, channels: int = 2, dim_t: int | None = None, seed: int = 0) -> Path:
    """A random-weight network with a RoFormer's shape and interface, for speed and quantization runs.

    ``[batch, channels, bins, frames, 2]`` -> ``[batch, stems, channels, bins, frames, 2]`` complex
    masks (tanh-bounded). ``bins`` split into ``bands`` equal bands, each projected to ``dim`` (one
    shared MatMul, where BS-RoFormer has one per band), then ``depth`` pairs of pre-norm transformer
    blocks (attention over time within each band, then over bands within each frame; ``heads`` x
    ``dim // heads``, feed-forward 4 x ``dim``), then a per-band mask estimator. Every weight is a
    MatMul initializer, as in an exported RoFormer; no rotary embedding (it adds no weights).
    """
    if bins % bands:
        raise ValueError(f"bands {bands} must divide bins {bins}")
    rng = np.random.default_rng(seed)
    width = bins // bands
    feats = width * channels * 2
    head = dim // heads
    g = _Graph()
    x = g.node("Transpose", ["stft"], perm=[0, 3, 2, 1, 4])  # [B, T, F, C, 2]
    x = g.node("Reshape", [x, g.const(np.array([0, 0, bands, feats], np.int64))])
    x = g.node("MatMul", [x, g.weight(rng, feats, dim)])  # [B, T, K, D]
    for _ in range(depth):
        x = g.node("Transpose", [x], perm=[0, 2, 1, 3])  # [B, K, T, D]: attention over time
        x = _block(g, rng, x, dim, heads, head)
        x = g.node("Transpose", [x], perm=[0, 2, 1, 3])  # [B, T, K, D]: attention over bands
        x = _block(g, rng, x, dim, heads, head)
    x = g.node("LayerNormalization", [x, g.const(np.ones(dim, np.float32)), g.const(np.zeros(dim, np.float32))], axis=-1)
    x = g.node("MatMul", [x, g.weight(rng, dim, stems * feats)])
    x = g.node("Tanh", [x])
    x = g.node("Reshape", [x, g.const(np.array([0, 0, bands, stems, width, channels, 2], np.int64))])
    x = g.node("Transpose", [x], perm=[0, 3, 5, 2, 4, 1, 6])  # [B, S, C, K, W, T, 2]
    g.node("Reshape", [x, g.const(np.array([0, stems, channels, bins, -1, 2], np.int64))], out="masks")
    frames = dim_t or "frames"
    inp = helper.make_tensor_value_info("stft", TensorProto.FLOAT, ["batch", channels, bins, frames, 2])
    out = helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["batch", stems, channels, bins, frames, 2])
    return _save(helper.make_graph(g.nodes, "roformer_like", [inp], [out], g.inits), path)


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def const(self, value: np.ndarray) -> str:
        name = self.name()
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, rng, rows: int, cols: int) -> str:
        return self.const((rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32))

    def node(self, op: str, inputs, out: str | None = None, **attrs) -> str:
        out = out or self.name()
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out


def _block(g: _Graph, rng, x: str, dim: int, heads: int, head: int) -> str:
    """Pre-norm transformer block over axis 2 of ``x`` ``[B, N, L, D]``."""
    ones, zeros = g.const(np.ones(dim, np.float32)), g.const(np.zeros(dim, np.float32))
    h = g.node("LayerNormalization", [x, ones, zeros], axis=-1)
    qkv = g.node("MatMul", [h, g.weight(rng, dim, 3 * heads * head)])
    qkv = g.node("Reshape", [qkv, g.const(np.array([0, 0, 0, 3, heads, head], np.int64))])
    qkv = g.node("Transpose", [qkv], perm=[3, 0, 1, 4, 2, 5])  # [3, B, N, H, L, dh]
    q, k, v = (g.name() for _ in range(3))
    g.nodes.append(helper.make_node("Split", [qkv, g.const(np.array([1, 1, 1], np.int64))], [q, k, v], axis=0))
    axis0 = g.const(np.array([0], np.int64))
    q, k, v = (g.node("Squeeze", [t, axis0]) for t in (q, k, v))
    scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 2, 4, 3])])
    scores = g.node("Mul", [scores, g.const(np.array(head ** -0.5, np.float32))])
    att = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])  # [B, N, H, L, dh]
    att = g.node("Transpose", [att], perm=[0, 1, 3, 2, 4])
    att = g.node("Reshape", [att, g.const(np.array([0, 0, 0, heads * head], np.int64))])
    x = g.node("Add", [x, g.node("MatMul", [att, g.weight(rng, heads * head, dim)])])
    h = g.node("LayerNormalization", [x, ones, zeros], axis=-1)
    f = g.node("MatMul", [h, g.weight(rng, dim, 4 * dim)])
    f = g.node("Mul", [f, g.node("Sigmoid", [g.node("Mul", [f, g.const(np.array(1.702, np.float32))])])])  # GELU
    return g.node("Add", [x, g.node("MatMul", [f, g.weight(rng, 4 * dim, dim)])])
