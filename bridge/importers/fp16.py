"""``stembridge models quantize NAME --fp16``: an opt-in float16 variant of any ONNX model, as a new model.

The graph's float32 weights and arithmetic become float16 (``onnxconverter_common``'s
``convert_float_to_float16``, the converter onnxruntime's own tools use) with ``keep_io_types``:
the model still takes and returns float32, so every family's pipeline around it is unchanged.
On a GPU float16 halves the memory and runs on tensor cores; on a CPU onnxruntime has few
float16 kernels and inserts casts around the rest, so it is usually slower there (measured in
the README, "Devices"). The outputs differ from the float model by float16 rounding, so the
variant is a new model with its own name, card and sha256, and its card records what it was
made from (``converted_from``). The float model is left as it is; the parity of the two on real
music is measured, not assumed (``tests/test_fp16.py``, ``tests/benchmarks/gpu.py``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..errors import ModelError
from ..separation.models import resolve, verify_file
from .quantize import Quantized, write_variant

METHOD = "onnxconverter_common convert_float_to_float16, keep_io_types (float32 in and out)"


#: What :func:`fp16_model` wrote (the model's name, card and file, sizes, seconds).
Converted = Quantized


def fp16_model(spec, *, name: str | None = None, force: bool = False, folder=None) -> Converted:
    """Write a float16 copy of model ``spec`` (any family with an ONNX file) as a new model.

    Parameters
    ----------
    spec : str
        A model name or card path.
    name : str, optional
        The new model's name; default ``<name>-fp16``.
    force : bool
        Replace a model of that name.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Raises
    ------
    ModelError
        Unknown model, a model without weights, already converted or quantized, an existing name
        without ``force``, ``onnxconverter-common`` missing or failing, an unwritable folder.
        Nothing is written then.
    """
    start = time.perf_counter()
    card = resolve(spec)
    if card.file is None:
        raise ModelError(f"'{card.name}' has no model file to convert (a {card.family} model without weights)")
    if card.converted_from or card.quantized_from:
        made = card.converted_from or card.quantized_from
        raise ModelError(f"'{card.name}' is already a variant of '{made.get('name')}'; convert the float model instead")
    source = verify_file(card)
    name, (onnx_path, card_path) = write_variant(
        card, source, name=name, force=force, folder=folder, make=convert, suffix="fp16", what="float16",
        key="converted_from", method=METHOD, description="float16 variant",
        header=f"Written by: stembridge models quantize {card.name} --fp16")
    return Quantized(name, card_path, onnx_path, source.stat().st_size, onnx_path.stat().st_size,
                     time.perf_counter() - start)


def convert(source: Path, target: Path) -> None:
    """``source`` ONNX (float32) -> ``target`` with float16 weights and arithmetic, float32 IO."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ModelError('--fp16 needs onnxconverter-common: pip install "stembridge[fp16]"') from None
    try:
        model = widen_stored_weights(onnx.load(str(source)))
        # min_positive_val: float16's smallest subnormal, so that weights float16 can hold (the
        # embedded model's) keep their values; the converter's default (1e-7) would move them.
        with warnings.catch_warnings():  # one line per clamped value; the clamp is what min_positive_val asks
            warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
            half = float16.convert_float_to_float16(model, keep_io_types=True, min_positive_val=2.0 ** -24)
        onnx.checker.check_model(half)
        onnx.save(half, str(target))
    except Exception as exc:  # the converter and onnx raise assorted types for graphs they cannot handle
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"{source}: cannot convert this model to float16 ({reason})") from None


def widen_stored_weights(model):
    """Weights stored as float16 and cast to float32 at load (the embedded model's storage) become
    float32 initializers, so the converter sees one float32 graph (it refuses a graph holding
    float16 already) and makes every weight float16 alike. The values are unchanged: float16 ->
    float32 is exact."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    stored = {init.name: init for init in model.graph.initializer if init.data_type == TensorProto.FLOAT16}
    keep = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == TensorProto.FLOAT and node.input[0] in stored:
            wide = numpy_helper.to_array(stored[node.input[0]]).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(wide, node.output[0]))
            continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {name for node in keep for name in node.input}
    unused = [init for init in model.graph.initializer if init.name in stored and init.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)
    return model
