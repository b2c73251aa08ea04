"""``stembridge models quantize``: an opt-in int8 variant of a RoFormer, written as a new model.

onnxruntime's dynamic quantization (``quantize_dynamic``): the weights of every MatMul whose
second input is a constant (a RoFormer's projections, feed-forwards and mask estimators) are
stored as int8 with one scale per output channel, and activations are quantized per call; the
attention's activation-by-activation MatMuls stay float32, and so do the first and the last
weight layers on every path through the network (MatMuls with no weight MatMul before them, or
none after them: a RoFormer's band-split projections, which see the raw spectrogram with its huge
dynamic range, and its mask estimators' output layers), the usual rule for int8 networks. On the
roformer-shaped benchmark network that rule takes the int8 model's output from 18 to 39 dB SNR
against the float model at the same speed. On CPUs with AVX-512 VNNI (or AVX2)
the integer MatMuls run faster; the outputs differ from the float model by the quantization
noise, so the variant is a new model with its own name, card and sha256, and its card records
what it was made from (``quantized_from``). The float model is left as it is.

Measured figures (speed-up, SNR against the float model) are in
``tests/benchmarks/roformer_quantize.py``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from ..errors import ModelError
from ..render.records import file_sha256
from . import publish
from ..separation.models import known_cards, resolve, user_models_folder, verify_file
from .spleeter_tf import NAME, RESERVED


@dataclasses.dataclass(frozen=True)
class Quantized:
    """What :func:`quantize_model` (int8) or :func:`bridge.importers.fp16.fp16_model` (float16) wrote."""

    name: str
    card: Path
    onnx: Path
    bytes_before: int
    bytes_after: int
    seconds: float


def quantize_model(spec, *, name: str | None = None, force: bool = False, folder=None) -> Quantized:
    """Write an int8 (dynamic, per-channel MatMul weights) copy of the roformer model ``spec``.

    Parameters
    ----------
    spec : str
        A model name or card path (``stembridge models`` lists them); a ``family: roformer`` card.
    name : str, optional
        The new model's name; default ``<name>-int8``.
    force : bool
        Replace a model of that name.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Raises
    ------
    ModelError
        Unknown model, not a roformer, missing or corrupt file, an existing name without
        ``force``, onnxruntime cannot quantize it, an unwritable folder. Nothing is written then.
    """
    start = time.perf_counter()
    card = resolve(spec)
    if card.family != "roformer":
        raise ModelError(f"'{card.name}' is a {card.family} model; quantize takes roformer models "
                         "(their MatMul weights are what int8 speeds up)")
    if card.quantized_from:
        raise ModelError(f"'{card.name}' is already quantized (from '{card.quantized_from.get('name')}'); "
                         "quantize the float model instead")
    source = verify_file(card)
    name, (onnx_path, card_path) = write_variant(
        card, source, name=name, force=force, folder=folder, make=_quantize, suffix="int8", what="quantized",
        key="quantized_from", method="onnxruntime quantize_dynamic: MatMul weights int8, per channel; activations "
                                     "quantized per call",
        description="int8 variant", header=f"Written by: stembridge models quantize {card.name}")
    return Quantized(name, card_path, onnx_path, source.stat().st_size, onnx_path.stat().st_size,
                     time.perf_counter() - start)


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        model = onnx.load(str(source))
        for index, node in enumerate(model.graph.node):  # exclusions go by node name
            node.name = node.name or f"stembridge_node_{index}"
        named = target.with_name("named.onnx")
        onnx.save(model, str(named))
        quantize_dynamic(str(named), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=edge_layers(model.graph),
                         # Weights only: the attention's activation x activation MatMuls stay float.
                         extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # onnxruntime raises assorted types for a graph it cannot handle
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"{source}: onnxruntime cannot quantize this model ({reason})") from None


def write_variant(card, source: Path, *, name: str | None, force: bool, folder, make, suffix: str, what: str,
                  key: str, method: str, description: str, header: str) -> tuple[str, tuple[Path, Path]]:
    """A variant of ``card``'s model (int8, float16) as a new model: the name checked (default
    ``<name>-<suffix>``), ``make(source, target)`` run in a scratch folder, then the model and a
    card that records under ``key`` where it came from, each renamed into place when whole.

    Returns the name and the (model, card) paths; nothing is written if anything fails.
    """
    name = name or f"{card.name}-{suffix}"
    if not NAME.match(name) or name in RESERVED:
        raise ModelError(f"--name {name!r}: " + ("a built-in model has this name" if name in RESERVED
                                                 else "use letters, digits, '.', '_' and '-'")
                         + f"; e.g. --name {card.name}-{suffix}")
    existing = known_cards().get(name)
    if existing is not None and not force:
        raise ModelError(f"a model named '{name}' exists ({existing.source}); pass --force to replace it, "
                         f"or --name to write the {what} model under another name")
    target = Path(folder) if folder is not None else user_models_folder()
    with tempfile.TemporaryDirectory(prefix=f"stembridge-{suffix}-") as scratch:
        made = Path(scratch) / "model.onnx"
        make(source, made)
        onnx_path, _ = publish.paths(target, name)
        data = yaml.safe_load(Path(card.source).read_text(encoding="utf-8"))
        with publish.writing(target, name) as partial:
            shutil.copyfile(made, partial)
            data.update(name=name, file=onnx_path.name, sha256=file_sha256(partial),
                        **{key: {"name": card.name, "sha256": card.sha256, "method": method}})
        data["description"] = f"{description} of {card.name}" + (f" ({card.description})" if card.description else "")
        return name, publish.publish(target, name, data, header=header)


def edge_layers(graph) -> list[str]:
    """Names of the weight MatMuls with no weight MatMul before them or none after them."""
    weights = {init.name for init in graph.initializer}
    layers = {node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights}
    producer = {out: node for node in graph.node for out in node.output}

    def reach(start_nodes, step) -> set[str]:
        """Layers reachable from (not including) ``start_nodes`` along ``step``."""
        seen, found, todo = set(), set(), list(start_nodes)
        while todo:
            node = todo.pop()
            for nxt in step(node):
                if nxt.name in seen:
                    continue
                seen.add(nxt.name)
                if nxt.name in layers:
                    found.add(nxt.name)
                todo.append(nxt)
        return found

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {node.name: node for node in graph.node}
    before = lambda node: [producer[i] for i in node.input if i in producer]  # noqa: E731
    after = lambda node: [c for o in node.output for c in consumers.get(o, [])]  # noqa: E731
    edges = []
    for name in sorted(layers):
        node = by_name[name]
        if not reach([node], before) or not reach([node], after):
            edges.append(name)
    return edges
