"""Spleeter's U-Net as an ONNX graph, built with ``onnx.helper`` (the mask family's model file).

One graph holds one U-Net per stem, all reading the input ``magnitude`` ``[batch, 2, frames,
bins]`` (|STFT| per stereo channel) and each writing its stem's estimated magnitude, same shape.
The layers follow Spleeter's TensorFlow ``apply_unet`` (Hennequin et al., JOSS 2020), as
``models/convert_spleeter.py`` does for the embedded model:

- encoder, 6 times: zero pad (1 before, 2 after: TensorFlow's ``same`` for stride 2, kernel 5),
  5x5 conv stride 2; the conv output is the skip connection; batch norm (eps 1e-3, Keras's
  default) and leaky ReLU 0.2 feed the next;
- decoder, 6 times: 5x5 transposed conv stride 2 on [skip, previous], crop 1 before and 2 after,
  ReLU, batch norm (dropout is off at inference); the first takes the last conv output;
- a 4x4 conv with dilation 2 and padding 3 to 2 channels, sigmoid: a mask, times the input.

Weights come in the torch layout (conv ``[out, in, kh, kw]``, transposed conv ``[in, out, kh,
kw]``) under the names :data:`LAYERS` lists; importers translate their own formats into it.
Needs the ``onnx`` package (``pip install 'stembridge[import]'``), at import time only.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError

BN_EPS = 1e-3
DOWN = (16, 32, 64, 128, 256, 512)
UP = (256, 128, 64, 32, 16, 1)
OPSET = 17


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ModelError("building the ONNX model needs the onnx package; install it with: "
                         "pip install 'stembridge[import]' (or pip install onnx)") from None
    return onnx, TensorProto, helper, numpy_helper


def build_unets(nets: dict[str, dict[str, np.ndarray]], *, bins: int, frames: int = 512, fp16: bool = False,
                doc: str = ""):
    """An ONNX model with one U-Net per stem.

    Parameters
    ----------
    nets : dict of str to dict of str to ndarray
        Per output name (e.g. ``vocals``), the net's weights in the torch layout: ``down{i}_conv.1.weight``
        / ``.bias``, ``down{i}_act.0.{weight,bias,running_mean,running_var}`` (i = 1..6), ``up{i}.0.weight`` /
        ``.bias`` and ``up{i}.3.*`` batch norm (i = 1..6), ``up7.0.weight`` / ``.bias``.
    bins : int
        Frequency bins the nets take (1024: up to 11 kHz; 1536: Spleeter's 16 kHz models).
    frames : int
        STFT frames per call (Spleeter's T = 512).
    fp16 : bool
        Store large weights as float16 and cast them at load (half the file; the nets run in float32).

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker``.
    """
    onnx, TensorProto, helper, numpy_helper = _onnx()
    nodes, inits = [], []

    def weight(name, array):
        array = np.ascontiguousarray(array, np.float32)
        if not fp16 or array.size < 1024:
            inits.append(numpy_helper.from_array(array, name))
            return name
        inits.append(numpy_helper.from_array(array.astype(np.float16), name + "_fp16"))
        nodes.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def batch_norm(x, w, prefix, out):
        args = [weight(f"{out}.{k}", w[f"{prefix}.{k}"]) for k in ("weight", "bias", "running_mean", "running_var")]
        return node("BatchNormalization", [x, *args], out, epsilon=BN_EPS)

    for stem, w in nets.items():
        inits += [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 2, 2], np.int64), f"{stem}/pads"),
                  numpy_helper.from_array(np.array([1, 1], np.int64), f"{stem}/crop_start"),
                  numpy_helper.from_array(np.array([-2, -2], np.int64), f"{stem}/crop_end"),
                  numpy_helper.from_array(np.array([2, 3], np.int64), f"{stem}/crop_axes")]
        skips, h = [], "magnitude"
        for i in range(1, len(DOWN) + 1):
            p = f"{stem}/down{i}"
            padded = node("Pad", [h, f"{stem}/pads"], f"{p}/pad")
            conv = node("Conv", [padded, weight(f"{p}.w", w[f"down{i}_conv.1.weight"]),
                                 weight(f"{p}.b", w[f"down{i}_conv.1.bias"])], f"{p}/conv",
                        kernel_shape=[5, 5], strides=[2, 2])
            skips.append(conv)
            h = node("LeakyRelu", [batch_norm(conv, w, f"down{i}_act.0", f"{p}/bn")], f"{p}/act", alpha=0.2)
        h = skips[-1]  # the decoder starts from the last conv output, before its norm
        for i in range(1, len(UP) + 1):
            p = f"{stem}/up{i}"
            if i > 1:
                h = node("Concat", [skips[len(DOWN) - i], h], f"{p}/cat", axis=1)
            t = node("ConvTranspose", [h, weight(f"{p}.w", w[f"up{i}.0.weight"]), weight(f"{p}.b", w[f"up{i}.0.bias"])],
                     f"{p}/tconv", kernel_shape=[5, 5], strides=[2, 2])
            cropped = node("Slice", [t, f"{stem}/crop_start", f"{stem}/crop_end", f"{stem}/crop_axes"], f"{p}/crop")
            h = batch_norm(node("Relu", [cropped], f"{p}/relu"), w, f"up{i}.3", f"{p}/bn")
        mask = node("Conv", [h, weight(f"{stem}/up7.w", w["up7.0.weight"]), weight(f"{stem}/up7.b", w["up7.0.bias"])],
                    f"{stem}/up7/conv", kernel_shape=[4, 4], dilations=[2, 2], pads=[3, 3, 3, 3])
        node("Mul", [node("Sigmoid", [mask], f"{stem}/mask"), "magnitude"], stem)
    shape = ["batch", 2, frames, bins]
    graph = helper.make_graph(nodes, f"spleeter_{len(nets)}stems",
                              [helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(stem, TensorProto.FLOAT, shape) for stem in nets],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stembridge")
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model
