"""Import Demucs v4 models (htdemucs, htdemucs_ft, htdemucs_6s) as ``demucs``-family ONNX models.

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
with the ``demucs`` package's own class (chosen here from the recorded class *name*) with the
file's constructor arguments, its state loaded strictly. The export keeps the STFT outside the
graph, as peers do (sevagh/demucs.onnx): inputs are the waveform chunk and its spectrogram
(``HTDemucs._spec``, real/imaginary as channels), outputs the frequency branch's spectrogram and
the time branch's waveform, added after the inverse STFT at run time
(:mod:`bridge.separation.demucs`). Both branches are kept.

Parity: each network's whole chunk (numpy STFT + ONNX + numpy inverse STFT) against the torch
model's ``forward`` on seeded noise; under 60 dB SNR (worst stem) the import is refused. One
ONNX file per distinct network and one card are written, atomically, into the user model folder.

Not supported (a one-line refusal): DiffQ-quantised states (``mdx_q``, ``mdx_extra_q``), v3
hybrid ``HDemucs`` files (``hdemucs_mmi``: Demucs runs the last chunk of a song at its own length,
which a fixed-length ONNX graph cannot reproduce; see the README), and v2 time-domain ``Demucs``
files (``mdx``, ``mdx_extra``).
"""

from __future__ import annotations

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
from ..separation.models import canonical_stem, user_models_folder
from ..version import __version__
from . import publish
from .demucs_pickle import DemucsPackage, read_package
from .roformer import MIN_PARITY_DB, NAME, OPSET, RESERVED, _taken, snr_db

SUPPORTED = "htdemucs, htdemucs_ft, htdemucs_6s (HTDemucs, Demucs v4)"


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
    if package.klass != "HTDemucs":
        kind = {"HDemucs": "a v3 hybrid HDemucs model (hdemucs_mmi, mdx_extra hybrid)",
                "Demucs": "a v2 time-domain Demucs model (mdx, mdx_extra)"}[package.klass]
        raise ModelError(f"{source}: {kind} is not supported; stembridge imports {SUPPORTED}")


def build_network(package: DemucsPackage, *, segment=None):
    """The ``demucs`` package's network for ``package``, its state loaded strictly."""
    check_supported(package)
    source = package.path
    torch = _torch()
    try:
        from demucs.htdemucs import HTDemucs
    except ImportError:
        raise ModelError('importing Demucs models needs the demucs package: pip install "stembridge[import]"') from None
    kwargs = dict(package.kwargs)
    # As demucs.states.load_model: arguments this version of the class does not take are dropped.
    known = inspect.signature(HTDemucs).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in known}
    try:
        net = HTDemucs(*package.args, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"{source}: the file's constructor arguments do not build an HTDemucs "
                         f"({' '.join(str(exc).split())[:160]})") from None
    if segment is not None and segment <= net.segment:  # BagOfModels's override
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
    with torch.no_grad():
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


def export_onnx(net, path: Path, *, segment: int, source: str) -> None:
    """Export ``net``'s core for chunks of ``segment`` samples (dynamic batch) to ``path``."""
    import tempfile
    import warnings
    import os

    torch = _torch()
    from ..separation.demucs import DemucsSpectrogram

    spectrogram = DemucsSpectrogram(net.nfft, segment)
    mix = torch.zeros(1, net.audio_channels, segment)
    spec = torch.zeros(1, 2 * net.audio_channels, net.nfft // 2, spectrogram.frames)
    with tempfile.TemporaryDirectory(prefix=".demucs-export-", dir=path.parent) as scratch:
        exported = Path(scratch) / "model.onnx"
        fastpath = torch.backends.mha.get_fastpath_enabled()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # The fused attention kernel (aten::_native_multi_head_attention) has no ONNX form;
            # with the fast path off, nn.MultiheadAttention runs (and exports) as plain operators.
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                torch.onnx.export(_core(net), (mix, spec), str(exported), dynamo=False, opset_version=OPSET,
                                  input_names=["mix", "spectrogram"], output_names=["frequency", "time"],
                                  dynamic_axes={n: {0: "batch"} for n in ("mix", "spectrogram", "frequency", "time")})
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ModelError(f"{source}: the ONNX export failed ({' '.join(str(exc).split())[:200]})") from None
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
        if len(list(Path(scratch).iterdir())) != 1:
            raise ModelError(f"{source}: the network is over 2 GB, more than one ONNX file can hold; not supported")
        os.replace(exported, path)


def parity_db(net, onnx_path: Path, *, segment: int, seed: int = 25) -> float:
    """Worst stem's SNR (dB) of the run-time chunk (numpy STFT + ONNX) against ``net(mix)`` (torch)."""
    torch = _torch()
    from ..separation.demucs import DemucsNetwork

    rng = np.random.default_rng(seed)
    mix = (0.1 * rng.standard_normal((1, net.audio_channels, segment))).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(mix)).numpy()
    got = DemucsNetwork(onnx_path, segment=segment, n_fft=net.nfft, stems=len(net.sources),
                        channels=net.audio_channels, threads=None)(mix)
    return min(snr_db(expected[0, k], got[0, k]) for k in range(expected.shape[1]))


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
    name = name or re.sub(r"[^A-Za-z0-9._-]", "_", bag.name).lstrip("._-") or "demucs"
    if not NAME.match(name) or name in RESERVED:
        raise ModelError(f"--name {name!r}: " + ("a built-in model has this name" if name in RESERVED
                                                 else "use letters, digits, '.', '_' and '-'") + "; choose another name")
    target = Path(folder) if folder is not None else user_models_folder()
    existing = _taken(name, target)
    if existing is not None and (not force or existing.parent != target):
        raise ModelError(f"a model named '{name}' exists ({existing}); "
                         + ("pass --force to replace it, or " if existing.parent == target else "")
                         + "--name to import under another name")
    _torch()  # before any work: the import extra is missing, one line says so
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
        for sig, file, package in packages:
            if file in files_done:
                members.append(dict(files_done[file]))
                continue
            net = build_network(package, segment=segment_override)
            net_info = net
            segment = int(net.segment * net.samplerate)
            onnx_name = name if single else f"{name}-{sig}"
            with publish.writing(target, onnx_name) as partial:
                export_onnx(net, partial, segment=segment, source=str(file))
                db = parity_db(net, partial, segment=segment)
                if not db >= MIN_PARITY_DB:
                    raise ModelError(f"{file}: the ONNX export disagrees with torch ({db:.1f} dB SNR, "
                                     f"{MIN_PARITY_DB:.0f} dB needed); nothing was written")
            partials.append(onnx_name)
            worst = min(worst, db)
            entry = {"file": f"{onnx_name}.onnx", "sha256": file_sha256(partial), "segment": segment,
                     "signature": sig}
            files_done[file] = entry
            members.append(dict(entry))
            records.append({"file": file.name, "sha256": file_sha256(file), "class": package.klass,
                            "parity_db": round(db, 2)})
            del net
        card = {
            "name": name, "family": "demucs", "file": members[0]["file"], "sha256": members[0]["sha256"],
            "stems": stems, "residual": None, "sample_rate": int(net_info.samplerate),
            "audio_channels": int(net_info.audio_channels), "n_fft": int(net_info.nfft),
            "hop": int(net_info.hop_length),
            "demucs": {"architecture": "htdemucs", "models": members, "weights": weights,
                       "overlap": 0.25, "transition_power": 1.0},
            "imported": {
                "files": records, "bag": bag.source.name if bag.source.suffix in (".yaml", ".yml") else None,
                "segment_override": str(segment_override) if segment_override is not None else None,
                "stembridge_version": __version__, "parity_db": round(worst, 2),
                "parity": "worst stem's SNR of the run-time chunk (numpy STFT + onnxruntime + inverse STFT) "
                          "against the torch model's forward, on one segment of seeded noise",
            },
            "description": f"Demucs v4 (HTDemucs, {len(members)} network{'s' if len(members) > 1 else ''}: "
                           f"{', '.join(stems)}), imported from {bag.source.name} by stembridge models import",
        }
        onnx_path, card_path = publish.publish(target, name, card, header=header, models=partials)
    finally:
        for onnx_name in partials:
            publish.discard(publish.partial_onnx(target, onnx_name))
    paths = tuple(target / m for m in dict.fromkeys(m["file"] for m in members))
    return ImportedDemucs(name, card_path, paths, "htdemucs", tuple(stems), worst, time.perf_counter() - start)
