"""Import Demucs models (htdemucs, htdemucs_ft, htdemucs_6s, hdemucs_mmi) as ``demucs``-family ONNX models.

``stembridge models import`` takes what Demucs users have on disk (torch hub keeps
``<signature>-<sha256[:8]>.th`` files in ``~/.cache/torch/hub/checkpoints/``; ``demucs --repo DIR``
reads such a folder with bag ``.yaml`` files):

- a ``.th`` file: one model;
- a bag ``.yaml`` (``models:`` signatures, optional ``weights:`` and ``segment:``), whose ``.th``
  files lie beside it (or in ``repo``);
- a folder and ``name``: ``<name>.yaml`` or ``<name>-*.th``/``<name>.th`` in it, found as Demucs's
  ``--repo`` finds them (a file's signature is its name before the last ``-``).

Each ``.th`` is read by :mod:`.demucs_pickle` (an allow-list; nothing in the file runs), its
checksum checked against the file name's ``-hash`` as Demucs checks it, and the network built
with the ``demucs`` package's own class (chosen here from the recorded class *name*: ``HTDemucs``
or ``HDemucs``) with the file's constructor arguments, its state loaded strictly. The export keeps
the STFT outside the graph, as peers do (sevagh/demucs.onnx): inputs are the waveform chunk and its
spectrogram (``_spec``, real/imaginary as channels), outputs the frequency branch's spectrogram
and the time branch's waveform, added after the inverse STFT at run time
(:mod:`bridge.separation.demucs`). Both branches are kept.

HTDemucs runs every chunk at its segment, so its graph has a fixed length. HDemucs (v3,
hdemucs_mmi) has no valid length: ``apply_model`` runs a song's last chunks at their own lengths,
and the network's normalisation, attention and BLSTM see that length. Its graph is exported with
free time axes, through :func:`free_length`, which makes the two places where Demucs's Python
decides by length (time-branch padding, BLSTM framing) length-free without changing a number.

Parity: each network's whole chunk (numpy STFT + ONNX + numpy inverse STFT) against the torch
model's ``forward`` on seeded noise (HDemucs: at several chunk lengths, from the segment down to
one sample, in each regime of the BLSTM's framing); under 60 dB SNR (worst stem and length) the
import is refused. One ONNX file per distinct network and one card are written, atomically, into
the user model folder.

Not supported (a one-line refusal): DiffQ-quantised states (``mdx_q``, ``mdx_extra_q``), the
MDX-challenge HDemucs variants (``hybrid_old``, Wiener filtering, split frequency bands, no
time branch), and v2 time-domain ``Demucs`` files (``mdx``, ``mdx_extra``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import re
import time
from pathlib import Path

import numpy as np
import yaml

from ..errors import ModelError
from ..render.records import file_sha256
from ..separation.models import canonical_stem
from ..version import __version__
from .. import memory
from . import publish
from .demucs_pickle import DemucsPackage, read_package
from .publish import destination
from .roformer import OPSET, require_parity, snr_db

SUPPORTED = "htdemucs, htdemucs_ft, htdemucs_6s (HTDemucs, Demucs v4) and hdemucs_mmi (HDemucs, v3 hybrid)"
#: The file's class name -> the ``demucs`` module defining it and the card's architecture.
CLASSES = {"HTDemucs": ("demucs.htdemucs", "htdemucs"), "HDemucs": ("demucs.hdemucs", "hdemucs")}


@dataclasses.dataclass(frozen=True)
class ImportedDemucs:
    """What :func:`import_demucs` wrote."""

    name: str
    card: Path
    models: tuple[Path, ...]
    architecture: str
    stems: tuple[str, ...]
    parity_db: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class Bag:
    """What to import: ``(signature, .th path)`` per model, the weights matrix, the segment override."""

    name: str
    files: tuple[tuple[str, Path], ...]
    weights: list | None
    segment: object
    source: Path


def signature(path: Path) -> str:
    """A ``.th`` file's signature: its name before the last ``-`` (Demucs's ``LocalRepo``)."""
    return path.stem.rsplit("-", 1)[0] if "-" in path.stem else path.stem


def _scan(folder: Path, source: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix == ".th":
            sig = signature(file)
            if sig in found:
                raise ModelError(f"{source}: two files for the signature '{sig}' ({found[sig].name}, {file.name}), "
                                 "as Demucs refuses too; delete all but one")
            found[sig] = file
    return found


def locate(path, *, name: str | None = None, repo=None) -> Bag:
    """What ``path`` (``.th``, bag ``.yaml``, or folder with ``name``) asks to import."""
    path = Path(path)
    if path.is_dir():
        if not name:
            raise ModelError(f"{path}: a folder of Demucs models needs --name (a bag such as htdemucs_ft, or a "
                             "model signature such as 955717e8)")
        bag_file = path / f"{name}.yaml"
        if bag_file.is_file():
            return locate(bag_file, repo=repo or path)
        models = _scan(path, str(path))
        if name in models:
            return Bag(name, ((name, models[name]),), None, None, models[name])
        raise ModelError(f"{path}: neither {name}.yaml nor {name}-*.th is there (signatures: "
                         f"{', '.join(sorted(models)) or 'none'})")
    if not path.is_file():
        raise ModelError(f"{path}: no such file or folder")
    if path.suffix == ".th":
        return Bag(signature(path), ((signature(path), path),), None, None, path)
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ModelError(f"{path}: cannot read the bag ({' '.join(str(exc).split())[:160]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"] \
                or not all(isinstance(s, str) for s in data["models"]):
            raise ModelError(f"{path}: a Demucs bag needs 'models:', a list of signatures")
        unknown = sorted(set(data) - {"models", "weights", "segment"})
        if unknown:
            raise ModelError(f"{path}: unknown bag key '{unknown[0]}' (a Demucs bag has models, weights, segment)")
        folder = Path(repo) if repo is not None else path.parent
        models = _scan(folder, str(path))
        files = []
        for sig in data["models"]:
            if sig not in models:
                raise ModelError(f"{path}: no {sig}-*.th for the bag's model '{sig}' in {folder}; put the bag's .th "
                                 "files beside it (Demucs keeps them in ~/.cache/torch/hub/checkpoints)")
            files.append((sig, models[sig]))
        segment = data.get("segment")
        if segment is not None and (isinstance(segment, bool) or not isinstance(segment, (int, float)) or segment <= 0):
            raise ModelError(f"{path}: segment must be a positive number of seconds, got {segment!r}")
        return Bag(path.stem, tuple(files), data.get("weights"), segment, path)
    raise ModelError(f"{path}: not a Demucs model: pass a .th file, a bag .yaml, or a folder with --name")


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError('importing Demucs models needs torch: pip install "stembridge[import]"') from None
    return torch


def check_checksum(path: Path) -> None:
    """Demucs's check: the ``-hash`` in the file name is the start of the file's sha256."""
    expected = path.stem.rsplit("-", 1)[1] if "-" in path.stem else ""
    if not re.fullmatch(r"[0-9a-f]{4,64}", expected):
        return  # no checksum in the name (a renamed file): nothing to check against
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise ModelError(f"{path}: the file's sha256 starts {digest[:len(expected)]}, its name says {expected}; the "
                         "file is damaged or truncated; download it again")


def check_supported(package: DemucsPackage) -> None:
    """Refuse, in one line, the Demucs files stembridge does not import."""
    source = package.path
    if package.quantized:
        raise ModelError(f"{source}: a DiffQ-quantised Demucs model (mdx_q, mdx_extra_q) is not supported; "
                         f"stembridge imports {SUPPORTED}")
    if package.klass == "Demucs":
        raise ModelError(f"{source}: a v2 time-domain Demucs model (mdx, mdx_extra) is not supported; "
                         f"stembridge imports {SUPPORTED}")
    if package.klass == "HDemucs":
        kwargs = package.kwargs
        # The export keeps the STFT outside the graph as hdemucs_mmi uses it: hybrid, complex as
        # channels, reflect padding. The MDX-challenge variants (hybrid_old's padding, Wiener
        # filtering, frequency-only, split frequency bands) are other transforms around the network.
        unlike = [f"{key}={kwargs[key]!r}" for key, ok in (
            ("hybrid", True), ("hybrid_old", False), ("cac", True), ("wiener_iters", 0))
            if key in kwargs and kwargs[key] != ok]
        if kwargs.get("multi_freqs"):
            unlike.append(f"multi_freqs={kwargs['multi_freqs']!r}")
        if unlike:
            raise ModelError(f"{source}: an HDemucs model with {', '.join(unlike)} (an MDX-challenge variant) is "
                             f"not supported; stembridge imports {SUPPORTED}")


def build_network(package: DemucsPackage, *, segment=None):
    """The ``demucs`` package's network for ``package``, its state loaded strictly."""
    check_supported(package)
    source = package.path
    _torch()
    import importlib

    module, _ = CLASSES[package.klass]
    try:
        klass = getattr(importlib.import_module(module), package.klass)
    except ImportError:
        raise ModelError('importing Demucs models needs the demucs package: pip install "stembridge[import]"') from None
    kwargs = dict(package.kwargs)
    # As demucs.states.load_model: arguments this version of the class does not take are dropped.
    known = inspect.signature(klass).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in known}
    try:
        net = klass(*package.args, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"{source}: the file's constructor arguments do not build an {package.klass} "
                         f"({' '.join(str(exc).split())[:160]})") from None
    # BagOfModels's override: an HTDemucs takes a bag's segment only if shorter (its positional
    # embedding was trained to that length); any other class always takes it.
    if segment is not None and (segment <= net.segment or package.klass != "HTDemucs"):
        net.segment = segment
    state = package.state
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        key = (missing or extra)[0]
        raise ModelError(f"{source}: the state {'lacks' if missing else 'has an unknown'} '{key}' "
                         f"({len(missing)} missing, {len(extra)} unknown); the file's arguments do not describe "
                         "its weights")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{source}: '{key}' is {list(state[key].shape)} in the state, {list(tensor.shape)} by "
                             "the file's arguments; the file is not consistent")
    with _torch().no_grad():
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


def _core(net):
    """``net`` as ``(mix, spec) -> (frequency branch spectrogram, time branch waveform)``.

    Demucs's own ``forward`` runs unchanged; only its transforms are replaced on this instance:
    the spectrogram comes in as an input (``_spec``/``_magnitude``), the masking is ``cac``'s
    identity, and ``_ispec`` hands the frequency branch out instead of inverting it (and adds 0).
    """
    torch = _torch()

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, mix, spec):
            held = {}

            def ispec(z, length=None, scale=0):
                held["z"] = z
                return torch.zeros((), dtype=mix.dtype)

            self.net._spec = lambda x: spec
            self.net._magnitude = lambda z: z
            self.net._mask = lambda z, m: m
            self.net._ispec = ispec
            try:
                wave = self.net(mix)
            finally:
                for attr in ("_spec", "_magnitude", "_mask", "_ispec"):
                    self.net.__dict__.pop(attr, None)
            return held["z"], wave

    return Core().eval()


#: The length an HDemucs graph is traced at (10 s, or the segment if shorter): long enough that both
#: of its BLSTMs frame their input, so every operator of the general case is in the trace.
TRACE_SAMPLES = 441000


@contextlib.contextmanager
def free_length(net):
    """While inside, ``net`` (an HDemucs) runs the same numbers through length-free Python.

    Two places of Demucs's code decide by the chunk's length in Python, which a trace would freeze
    at the traced length: a time-branch encoder pads its input to a multiple of its stride only
    when it is not one (here it is always padded, by ``-length % stride``, 0 when it is one), and
    ``BLSTM`` runs its LSTM on the whole sequence up to ``max_steps`` steps and on overlapping
    frames of ``max_steps`` beyond (here both are one gather: ``n`` frames of ``w`` steps every
    ``max_steps // 2``, with ``n = 1, w = T`` up to ``max_steps``, and the output read back from
    the frame Demucs keeps for each step). Only the instances' ``forward`` is replaced, and put
    back on the way out; the modules' weights and Demucs's own operators run unchanged.
    """
    torch = _torch()
    from demucs.demucs import BLSTM
    from demucs.hdemucs import HEncLayer

    def padded_encoder(layer):
        forward = type(layer).forward

        def run(x, inject=None):
            return forward(layer, torch.nn.functional.pad(x, (0, -x.shape[-1] % layer.stride)), inject)
        return run

    def framed_blstm(blstm):
        width = blstm.max_steps
        stride, keep = width // 2, width // 4  # frames every width/2; each keeps all but width/4 per side

        def run(x):
            steps = torch._shape_as_tensor(x)[2]  # a tensor, so the trace keeps it free (ONNX Shape)
            framed = steps > width
            frames = torch.where(framed, (steps + stride - 1) // stride, torch.ones_like(steps))
            span = torch.minimum(steps, torch.full_like(steps, width))
            at = torch.arange(frames)[:, None] * stride + torch.arange(span)[None, :]  # (frames, span)
            chunks = torch.nn.functional.pad(x, (0, width))[:, :, at]  # unfold's zeros past the end
            batch, channels = x.shape[0], x.shape[1]
            y = chunks.permute(3, 2, 0, 1).reshape(span, -1, channels)  # (span, frames * batch, C)
            y = blstm.linear(blstm.lstm(y)[0])
            y = y.reshape(span, frames, batch, channels).permute(2, 3, 1, 0).reshape(batch, channels, -1)
            t = torch.arange(steps)
            k = torch.clamp(torch.clamp(t - keep, min=0) // stride, max=frames - 1)  # the frame kept at t
            out = y[:, :, k * span + t - k * stride]
            return out + x if blstm.skip else out
        return run

    patched = []
    for module in net.modules():
        if isinstance(module, HEncLayer) and not module.freq:
            module.forward = padded_encoder(module)
            patched.append(module)
        elif isinstance(module, BLSTM):
            if not module.max_steps:
                raise ModelError("a BLSTM without max_steps is not in any published HDemucs; not supported")
            module.forward = framed_blstm(module)
            patched.append(module)
    try:
        yield net
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _eyelike_as_float(path: Path) -> None:
    """onnxruntime has no boolean ``EyeLike`` (``LocalState``'s ``torch.eye(T, dtype=bool)`` for a
    free ``T``): compute it in float and cast the result back to bool."""
    import onnx

    model = onnx.load(str(path))
    nodes = []
    for node in model.graph.node:
        if node.op_type == "EyeLike":
            source, target = node.input[0], node.output[0]
            node.input[0], node.output[0] = f"{source}/float", f"{target}/float"
            nodes += [onnx.helper.make_node("Cast", [source], [node.input[0]], to=onnx.TensorProto.FLOAT,
                                            name=f"{node.name}/cast_in"),
                      node,
                      onnx.helper.make_node("Cast", [node.output[0]], [target], to=onnx.TensorProto.BOOL,
                                            name=f"{node.name}/cast_out")]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))


def export_onnx(net, path: Path, *, segment: int, source: str) -> None:
    """Export ``net``'s core to ``path``: for chunks of ``segment`` samples (HTDemucs), or of any
    length (HDemucs: the time axes are free, traced through :func:`free_length`); dynamic batch."""
    import tempfile
    import warnings
    import os

    torch = _torch()
    from ..separation.demucs import DemucsSpectrogram

    free = not _is_htdemucs(net)
    length = min(segment, TRACE_SAMPLES) if free else segment
    spectrogram = DemucsSpectrogram(net.nfft, length)
    mix = torch.zeros(1, net.audio_channels, length)
    if free:  # a trace of zeros would divide 0 by 0 in the standardisation; any audio traces the same graph
        mix = 0.1 * torch.randn(1, net.audio_channels, length, generator=torch.Generator().manual_seed(0))
    spec = torch.from_numpy(spectrogram.forward(mix.numpy()))
    axes = {"mix": {0: "batch"}, "spectrogram": {0: "batch"}, "frequency": {0: "batch"}, "time": {0: "batch"}}
    if free:
        axes = {"mix": {0: "batch", 2: "samples"}, "spectrogram": {0: "batch", 3: "frames"},
                "frequency": {0: "batch", 4: "frames"}, "time": {0: "batch", 3: "samples"}}
    with tempfile.TemporaryDirectory(prefix=".demucs-export-", dir=path.parent) as scratch:
        exported = Path(scratch) / "model.onnx"
        fastpath = torch.backends.mha.get_fastpath_enabled()
        with torch.no_grad(), warnings.catch_warnings(), (free_length(net) if free else contextlib.nullcontext()):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # The fused attention kernel (aten::_native_multi_head_attention) has no ONNX form;
            # with the fast path off, nn.MultiheadAttention runs (and exports) as plain operators.
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                torch.onnx.export(_core(net), (mix, spec), str(exported), dynamo=False, opset_version=OPSET,
                                  input_names=["mix", "spectrogram"], output_names=["frequency", "time"],
                                  dynamic_axes=axes)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ModelError(f"{source}: the ONNX export failed ({' '.join(str(exc).split())[:200]})") from None
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
        if len(list(Path(scratch).iterdir())) != 1:
            raise ModelError(f"{source}: the network is over 2 GB, more than one ONNX file can hold; not supported")
        if free:
            _eyelike_as_float(exported)
        os.replace(exported, path)


def _is_htdemucs(net) -> bool:
    return type(net).__name__ == "HTDemucs"


def parity_lengths(segment: int) -> list[int]:
    """The chunk lengths an HDemucs import is checked at: the segment, and up to it one chunk in each
    of the BLSTMs' regimes at hop 1024 (over 9.3 s both frame their input, from 4.6 s only the first,
    below neither), down to one sample."""
    return sorted({n for n in (segment, 300001, 4097, 1) if n <= segment}, reverse=True)


def torch_references(net, *, segment: int, seed: int = 25) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(mix, net(mix))`` pairs the export is checked against: seeded noise of one segment
    (HTDemucs), or of each of :func:`parity_lengths` (HDemucs); torch's outputs as numpy.

    Computed before the ONNX session opens, so that the torch network can be freed first: the
    two are never in memory together (issue 26: hdemucs_mmi's import peaked at 4.19 GB)."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    pairs = []
    for length in [segment] if _is_htdemucs(net) else parity_lengths(segment):
        mix = (0.1 * rng.standard_normal((1, net.audio_channels, length))).astype(np.float32)
        with torch.no_grad():
            pairs.append((mix, net(torch.from_numpy(mix)).numpy()))
    return pairs


def parity_db(onnx_path: Path, references, *, segment: int, n_fft: int, fixed: bool) -> float:
    """Worst stem's SNR (dB) of the run-time chunk (numpy STFT + ONNX) against the torch network's
    output, over :func:`torch_references`' pairs."""
    from ..separation.demucs import DemucsNetwork

    stems, channels = references[0][1].shape[1:3]
    network = DemucsNetwork(onnx_path, segment=segment, n_fft=n_fft, stems=stems, channels=channels, threads=None,
                            fixed=fixed)
    worst = float("inf")
    for mix, expected in references:
        got = network(mix)
        worst = min([worst] + [snr_db(expected[0, k], got[0, k]) for k in range(expected.shape[1])])
    return worst


def convert(path, *, config=None, name=None, force=False, bins=None, fp32=False, **options) -> ImportedDemucs:
    """The demucs family's importer (``stembridge models import``): ``name`` is also the bag or
    signature to find when ``path`` is a folder, as ``demucs -n NAME --repo FOLDER``."""
    spleeter_only = [flag for flag, given in (("--bins", bins), ("--fp32", fp32)) if given]
    if spleeter_only:
        raise ModelError(f"{' and '.join(spleeter_only)}: only for Spleeter checkpoints; drop it for Demucs")
    if config is not None:
        raise ModelError(f"{path}: a Demucs model takes no --config; drop it")
    path = Path(path)
    return import_demucs(path, name=name, force=force, bag_name=name if path.is_dir() else None, **options)


def import_demucs(path, *, name: str | None = None, force: bool = False, folder=None, repo=None,
                  bag_name: str | None = None) -> ImportedDemucs:
    """Convert a Demucs ``.th`` file, bag ``.yaml``, or folder + ``bag_name`` into ``NAME.yaml`` + ONNX files.

    Parameters
    ----------
    path : path-like
        A ``.th`` file, a bag ``.yaml``, or a folder holding them (then ``bag_name`` names the bag or
        model signature to import, as ``demucs -n NAME --repo FOLDER``).
    name : str, optional
        The model's name in stembridge; default the bag's or signature's.
    force : bool
        Replace a model of the same name.
    folder : path-like, optional
        Where to write; default :func:`bridge.separation.models.user_models_folder`.
    repo : path-like, optional
        The folder of a bag's ``.th`` files (default: the bag's folder).

    Raises
    ------
    ModelError
        Unsafe, truncated or foreign files, unsupported Demucs versions, a state that does not fit,
        a failed parity check (under 60 dB), an existing name without ``force``. Nothing is
        written then.
    """
    start = time.perf_counter()
    bag = locate(path, name=bag_name, repo=repo)
    name, target = destination(name or None, stem=bag.name, default="demucs", folder=folder, force=force)
    _torch()  # before any work: the import extra is missing, one line says so
    memory.return_freed_memory()  # before the first large allocation: see bridge.memory
    from fractions import Fraction

    segment_override = Fraction(bag.segment).limit_denominator(1000) if bag.segment is not None else None
    packages, distinct = [], {}
    for sig, file in bag.files:
        if file not in distinct:
            check_checksum(file)
            distinct[file] = read_package(file)
            check_supported(distinct[file])
        packages.append((sig, file, distinct[file]))
    first = packages[0][2]
    sources = [str(s) for s in first.kwargs.get("sources", [])]
    for sig, file, package in packages:
        if [str(s) for s in package.kwargs.get("sources", [])] != sources or not sources:
            raise ModelError(f"{file}: its sources {package.kwargs.get('sources')} differ from {sources} of "
                             f"{packages[0][1].name}; a bag's models must separate the same stems")
        if package.klass != first.klass:
            raise ModelError(f"{file}: an {package.klass} in a bag whose first model ({packages[0][1].name}) is an "
                             f"{first.klass}; stembridge imports bags of one class")
    architecture, klass = CLASSES[first.klass][1], first.klass
    first = package = None  # the packages list holds the states until each network is built
    stems = [canonical_stem(s) for s in sources]
    weights = bag.weights
    if weights is not None:
        try:
            matrix = np.asarray(weights, dtype=np.float64) if isinstance(weights, list) else None
        except (TypeError, ValueError):  # ragged rows, text
            matrix = None
        if matrix is None or matrix.shape != (len(packages), len(stems)) or not np.all(np.isfinite(matrix)):
            raise ModelError(f"{bag.source}: weights must be numbers, one row per model ({len(packages)}) and one "
                             f"column per source ({len(stems)}), got {weights!r}")
        weights = [[float(v) for v in row] for row in matrix]
    single = len(packages) == 1
    members, records, worst = [], [], float("inf")
    header = f"Imported by: stembridge models import {Path(path).name}"
    files_done: dict[Path, dict] = {}
    net_info = None
    partials = []
    try:
        for index, (sig, file, package) in enumerate(packages):
            if file in files_done:
                members.append(dict(files_done[file]))
                continue
            net = build_network(package, segment=segment_override)
            # The network holds the weights now: the file's copy of them goes (a bag's other files too,
            # once built), so that no two copies of a network's weights are in memory together.
            distinct[file] = package = packages[index] = None
            net_info = {"samplerate": int(net.samplerate), "audio_channels": int(net.audio_channels),
                        "nfft": int(net.nfft), "hop_length": int(net.hop_length)}
            segment, fixed = int(net.segment * net.samplerate), _is_htdemucs(net)
            onnx_name = name if single else f"{name}-{sig}"
            with publish.writing(target, onnx_name) as partial:
                export_onnx(net, partial, segment=segment, source=str(file))
                references = torch_references(net, segment=segment)
                del net  # before the ONNX session opens: torch's weights and onnxruntime's are never both held
                memory.trim()
                db = parity_db(partial, references, segment=segment, n_fft=net_info["nfft"], fixed=fixed)
                del references
                require_parity(db, file)
            partials.append(onnx_name)
            worst = min(worst, db)
            entry = {"file": f"{onnx_name}.onnx", "sha256": file_sha256(partial), "segment": segment,
                     "signature": sig}
            files_done[file] = entry
            members.append(dict(entry))
            records.append({"file": file.name, "sha256": file_sha256(file), "class": klass,
                            "parity_db": round(db, 2)})
        card = {
            "name": name, "family": "demucs", "file": members[0]["file"], "sha256": members[0]["sha256"],
            "stems": stems, "residual": None, "sample_rate": net_info["samplerate"],
            "audio_channels": net_info["audio_channels"], "n_fft": net_info["nfft"], "hop": net_info["hop_length"],
            "demucs": {"architecture": architecture, "models": members, "weights": weights,
                       "overlap": 0.25, "transition_power": 1.0},
            "imported": {
                "files": records, "bag": bag.source.name if bag.source.suffix in (".yaml", ".yml") else None,
                "bag_sha256": file_sha256(bag.source) if bag.source.suffix in (".yaml", ".yml") else None,
                "segment_override": str(segment_override) if segment_override is not None else None,
                "stembridge_version": __version__, "parity_db": round(worst, 2),
                "parity": "worst stem's SNR of the run-time chunk (numpy STFT + onnxruntime + inverse STFT) "
                          "against the torch model's forward, on seeded noise: one segment (htdemucs), or "
                          "chunks of several lengths from the segment down to one sample (hdemucs)",
            },
            "description": f"Demucs {'v4' if architecture == 'htdemucs' else 'v3'} ({klass}, {len(members)} "
                           f"network{'s' if len(members) > 1 else ''}: "
                           f"{', '.join(stems)}), imported from {bag.source.name} by stembridge models import",
        }
        onnx_path, card_path = publish.publish(target, name, card, header=header, models=partials)
    finally:
        for onnx_name in partials:
            publish.discard(publish.partial_onnx(target, onnx_name))
    paths = tuple(target / m for m in dict.fromkeys(m["file"] for m in members))
    return ImportedDemucs(name, card_path, paths, architecture, tuple(stems), worst, time.perf_counter() - start)
