"""Import Spleeter's own TensorFlow checkpoints (2, 4 or 5 stems) as mask-family ONNX models.

Spleeter (Hennequin et al., JOSS 2020) downloads ``pretrained_models/2stems``, ``4stems``,
``5stems`` (and ``-16kHz`` variants): ``model.index``, ``model.data-00000-of-00001``,
``model.meta``, ``checkpoint``, as a folder or its release ``.tar.gz``. No TensorFlow is needed:
:mod:`bridge.separation.tf_checkpoint` reads the tensors, :mod:`.unet_onnx` builds the graph.

Spleeter builds one U-Net per stem in its config's order, and Keras numbers the layers of all
nets in one sequence, so net ``n`` (from 0) holds ``conv2d_{7n}`` .. ``conv2d_{7n+5}`` (encoder),
``conv2d_{7n+6}`` (the 4x4 mask conv), ``conv2d_transpose_{6n}`` .. ``{6n+5}`` and
``batch_normalization_{12n}`` .. ``{12n+11}`` (6 encoder, 6 decoder); the first of each has no
suffix. Stem order by net count (Spleeter's configs): 2 ``vocals, accompaniment``; 4 ``vocals,
drums, bass, other``; 5 ``vocals, piano, drums, bass, other``.

The band the nets see (``F``: 1024 bins up to 11 kHz, or 1536 up to 16 kHz) is not in the
weights, which fit any width; it is read from ``model.meta``, where Spleeter's spectrogram cut
``[:, :, :F, :]`` is a ``strided_slice`` end constant ``[0, 0, F, 0]``. Without a ``.meta`` the
caller must say (``bins=``).
"""

from __future__ import annotations

import dataclasses
import re
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..render.records import file_sha256
from . import publish
from ..separation.models import known_cards, user_models_folder
from ..separation.mask import SPLEETER_STEMS, unet_layers
from ..separation.tf_checkpoint import Checkpoint, CheckpointError, checkpoint_prefix, checkpoint_sha256, message_fields

STEM_ORDER = SPLEETER_STEMS
ENCODER = (16, 32, 64, 128, 256, 512)
DECODER = (256, 128, 64, 32, 16, 1)
BANDS = (1024, 1536)
#: Names the import may not take: they would shadow the built-in models.
RESERVED = ("default", "dsp", "default-4stems", "spleeter-2stems")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class Imported:
    """What :func:`import_checkpoint` wrote."""

    name: str
    card: Path
    model: Path
    stems: tuple[str, ...]
    bins: int
    seconds: float


def _layer(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def count_nets(ckpt: Checkpoint, where: str) -> int:
    """How many U-Nets the checkpoint holds, checked against Spleeter's layer counts."""
    convs, tconvs, norms = unet_layers(ckpt.entries)
    if not convs or convs % 7 or tconvs != 6 * (convs // 7) or norms != 12 * (convs // 7):
        raise ModelError(f"{where}: not a Spleeter U-Net checkpoint ({convs} conv2d, {tconvs} conv2d_transpose, "
                         f"{norms} batch_normalization layers; Spleeter has 7, 6 and 12 per stem); "
                         "only Spleeter's 2stems, 4stems and 5stems models can be imported")
    nets = convs // 7
    if nets not in STEM_ORDER:
        raise ModelError(f"{where}: a U-Net checkpoint with {nets} stems; Spleeter's models have 2, 4 or 5")
    return nets


def read_nets(ckpt: Checkpoint, where: str) -> list[dict[str, np.ndarray]]:
    """Every net's weights, renamed and transposed to the torch layout :mod:`.unet_onnx` takes."""
    nets = []
    for n in range(count_nets(ckpt, where)):
        w: dict[str, np.ndarray] = {}

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in ckpt:
                raise ModelError(f"{where}: {name} is missing; the checkpoint is not a complete Spleeter model")
            array = ckpt.tensor(name)
            if array.shape != shape or array.dtype != np.float32:
                raise ModelError(f"{where}: {name} is {array.dtype} {array.shape}, Spleeter's is float32 {shape}; "
                                 "not a Spleeter U-Net checkpoint")
            return array

        def norm(index: int, channels: int, prefix: str) -> None:
            layer = _layer("batch_normalization", index)
            for tf_name, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                        ("moving_variance", "running_var")):
                w[f"{prefix}.{torch_name}"] = get(f"{layer}/{tf_name}", (channels,))

        inputs = 2
        for i, out in enumerate(ENCODER):
            layer = _layer("conv2d", 7 * n + i)
            # TensorFlow kernels are [kh, kw, in, out]; torch's conv weights [out, in, kh, kw].
            w[f"down{i + 1}_conv.1.weight"] = get(f"{layer}/kernel", (5, 5, inputs, out)).transpose(3, 2, 0, 1)
            w[f"down{i + 1}_conv.1.bias"] = get(f"{layer}/bias", (out,))
            norm(12 * n + i, out, f"down{i + 1}_act.0")
            inputs = out
        for i, out in enumerate(DECODER):
            layer = _layer("conv2d_transpose", 6 * n + i)
            inputs = ENCODER[-1] if i == 0 else 2 * DECODER[i - 1]  # [skip, previous] after the first
            # Transposed: TensorFlow [kh, kw, out, in]; torch ConvTranspose [in, out, kh, kw].
            w[f"up{i + 1}.0.weight"] = get(f"{layer}/kernel", (5, 5, out, inputs)).transpose(3, 2, 0, 1)
            w[f"up{i + 1}.0.bias"] = get(f"{layer}/bias", (out,))
            norm(12 * n + 6 + i, out, f"up{i + 1}.3")
        layer = _layer("conv2d", 7 * n + 6)
        w["up7.0.weight"] = get(f"{layer}/kernel", (4, 4, 1, 2)).transpose(3, 2, 0, 1)
        w["up7.0.bias"] = get(f"{layer}/bias", (2,))
        nets.append(w)
    return nets


def band_from_meta(meta: Path) -> int | None:
    """Spleeter's ``F`` from ``model.meta`` (see the module notes), or None if the file has none."""
    if not meta.is_file():
        return None
    where = str(meta)
    found = set()
    for number, graph in message_fields(meta.read_bytes(), where):
        if number != 2:  # MetaGraphDef.graph_def
            continue
        for field, node in message_fields(graph, where):
            if field != 1:  # GraphDef.node
                continue
            fields = message_fields(node, where)
            name = next((v for f, v in fields if f == 1), b"")
            op = next((v for f, v in fields if f == 2), b"")
            if op != b"Const" or not name.startswith(b"strided_slice") or not name.endswith(b"/stack_1"):
                continue
            for f, attr in fields:
                if f != 5:  # NodeDef.attr entry: key 1, AttrValue 2
                    continue
                entry = dict(message_fields(attr, where))
                if entry.get(1) != b"value":
                    continue
                tensor = dict(message_fields(dict(message_fields(entry[2], where)).get(8, b""), where))  # AttrValue.tensor
                content = tensor.get(4, b"")  # TensorProto.tensor_content, int32
                if tensor.get(1) == 3 and len(content) == 16:
                    values = np.frombuffer(content, "<i4")
                    if values[0] == values[1] == values[3] == 0 and values[2] in BANDS:
                        found.add(int(values[2]))
    if len(found) > 1:
        raise ModelError(f"{where}: the graph cuts the spectrogram at {sorted(found)} bins; pass bins= (--bins)")
    return found.pop() if found else None


def _extract(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and re.search(r"(^|/)(checkpoint|[^/]+\.(index|meta)|[^/]+\.data-\d+-of-\d+)$", m.name)]
            if not members:
                raise ModelError(f"{archive}: the archive holds no TensorFlow checkpoint (no model.index)")
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+/3.11.4+: refuses links and paths outside
                tar.extractall(into, members=members, filter="data")
            else:
                for member in members:
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise ModelError(f"{archive}: member {member.name!r} points outside the archive; not extracted")
                tar.extractall(into, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelError(f"{archive}: cannot read the archive ({exc}); download Spleeter's release .tar.gz again") from None
    folders = sorted({p.parent for p in into.rglob("*.index")})
    if len(folders) != 1:
        raise ModelError(f"{archive}: expected one checkpoint in the archive, found {len(folders)}")
    return folders[0]


def default_name(stems: int, bins: int) -> str:
    # The embedded model is spleeter-2stems already: a 2-stem import is told apart as -tf.
    return f"spleeter-{stems}stems" + ("-16khz" if bins == 1536 else "") + ("-tf" if stems == 2 else "")


def convert(path, *, config=None, **options) -> "Imported":
    """``stembridge models import`` for the mask family (:mod:`bridge.separation.mask` claims
    TensorFlow checkpoint folders and archives, never with a config)."""
    return import_checkpoint(path, **options)


def import_checkpoint(path, *, name: str | None = None, force: bool = False, bins: int | None = None,
                      fp32: bool = False, folder=None) -> Imported:
    """Convert a Spleeter checkpoint into ``NAME.onnx`` and its card ``NAME.yaml`` in the model folder.

    Parameters
    ----------
    path : path-like
        A checkpoint folder (``model.index``, ``model.data-*``, ``model.meta``) or a ``.tar.gz`` of one.
    name : str, optional
        The model's name; default ``spleeter-{2,4,5}stems`` (``-16khz`` for 1536 bins). The
        embedded ``spleeter-2stems`` is reserved: give the 2-stem import another name.
    force : bool
        Replace a model of the same name in the model folder.
    bins : {1024, 1536}, optional
        The nets' band, if ``model.meta`` is missing (it is read from there otherwise).
    fp32 : bool
        Store the weights as float32 (79 MB for 2 stems). By default they are stored as float16 and
        cast to float32 at load, as the embedded model is: half the size, and the 2-stem import
        then gives exactly the embedded model's outputs (float32 storage differs from it by the
        embedded model's own float16 rounding, 58.7 dB SNR on vocals, measured).
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.

    Returns
    -------
    Imported

    Raises
    ------
    ModelError
        Not a Spleeter checkpoint, a missing shard, a truncated ``.data``, an existing name
        without ``force``, an unwritable folder. Nothing is written then.
    """
    start = time.perf_counter()
    source = Path(path)
    if not source.exists():
        raise ModelError(f"{source}: no such file or folder; pass Spleeter's model folder or its .tar.gz")
    if name is not None and (not NAME.match(name) or name in RESERVED):
        raise ModelError(f"--name {name!r}: " + ("a built-in model has this name" if name in RESERVED
                                                 else "use letters, digits, '.', '_' and '-'")
                         + "; choose another name, e.g. spleeter-4stems")
    if bins is not None and bins not in BANDS:
        raise ModelError(f"bins={bins!r}: Spleeter's models take 1024 bins (11 kHz) or 1536 (16 kHz)")
    target_folder = Path(folder) if folder is not None else user_models_folder()
    with tempfile.TemporaryDirectory(prefix="stembridge-import-") as scratch:
        where = source
        if source.is_file():
            if not tarfile.is_tarfile(source):
                raise ModelError(f"{source}: neither a checkpoint folder nor a .tar.gz; pass Spleeter's model "
                                 "folder (e.g. pretrained_models/4stems) or its release archive")
            where = _extract(source, Path(scratch))
        prefix = checkpoint_prefix(where)
        try:
            ckpt = Checkpoint(prefix)
        except CheckpointError as exc:
            raise ModelError(str(exc)) from None
        label = f"{source}" if source.is_dir() else f"{source} ({prefix.name})"
        nets = read_nets(ckpt, label)
        band = band_from_meta(prefix.with_name(prefix.name + ".meta"))
        if band is not None and bins is not None and band != bins:
            raise ModelError(f"{label}: model.meta says the nets take {band} bins, not {bins}; drop --bins")
        band = band or bins
        source_sha = checkpoint_sha256(prefix)
        if band is None:
            raise ModelError(f"{label}: no model.meta to read the nets' band from; pass --bins 1024 (Spleeter's "
                             "11 kHz models) or --bins 1536 (its -16kHz models)")
    stems = STEM_ORDER[len(nets)]
    name = name or default_name(len(nets), band)
    if name in RESERVED:
        raise ModelError(f"{label}: '{name}' is the embedded model's name; give the import another with --name, "
                         f"e.g. --name {name}-tf")
    existing = known_cards().get(name)
    if existing is not None and not force:
        raise ModelError(f"a model named '{name}' exists ({existing.source}); pass --force to replace it, "
                         "or --name to import under another name")
    from .unet_onnx import build_unets

    model = build_unets(dict(zip(stems, nets)), bins=band, fp16=not fp32,
                        doc=f"Deezer Spleeter {len(nets)}-stem U-Nets (MIT), imported by stembridge from {source.name}")
    onnx_path, card_path = _write(model, target_folder, name=name, stems=stems, bins=band, source=source,
                                  source_sha256=source_sha)
    return Imported(name, card_path, onnx_path, stems, band, time.perf_counter() - start)


def _write(model, folder: Path, *, name: str, stems, bins: int, source: Path, source_sha256: str) -> tuple[Path, Path]:
    """Write the model, then its card (the card makes it visible), each renamed into place when whole."""
    import onnx

    onnx_path, _ = publish.paths(folder, name)
    with publish.writing(folder, name) as partial:
        onnx.save(model, str(partial))
        card = {
            "name": name, "family": "mask", "file": onnx_path.name, "sha256": file_sha256(partial),
            "stems": list(stems), "sample_rate": 44100, "n_fft": 4096, "hop": 1024, "bins": bins, "dim_t": 512,
            "combine": "ratio",
            # The weights' checksum (the .data shards), so that stembridge models scan --import skips them.
            "imported": {"checkpoint": source.name, "checkpoint_sha256": source_sha256},
            "license": "MIT (Spleeter by Deezer Research)",
            "credit": "Hennequin, Khlif, Voituret, Moussallam: Spleeter: a fast and efficient music source separation "
                      "tool with pre-trained models, JOSS 5(50), 2020.",
            "description": f"Spleeter {len(stems)}-stem U-Nets, magnitude masks up to "
                           f"{'16' if bins == 1536 else '11'} kHz; imported from {source.name} by stembridge models import",
        }
    return publish.publish(folder, name, card, header=f"Imported by: stembridge models import {source}")