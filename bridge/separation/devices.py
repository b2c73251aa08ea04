"""Where models run: ``--device`` and ``separator.device``, as onnxruntime execution providers.

A device is written ``auto``, ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``coreml``,
``directml[:N]`` or ``openvino``. ``auto`` takes the first provider of :data:`AUTO_ORDER` that
the installed onnxruntime offers: CUDA, then CoreML, DirectML, OpenVINO, then the CPU. TensorRT is
never chosen by ``auto``: it builds an engine for every input shape on its first run (minutes),
so it is asked for by name.

A named device that cannot run is refused before any work, in one line naming the fix
(:func:`check_device`); a named device never falls back to the CPU silently: a session whose
first provider is not the one asked for is refused too (:func:`~.runtime.open_session`).
``auto`` falls back to the CPU and says so (:attr:`Resolved.note`).

The device is a run-time setting, not part of what names a separation: it enters neither the
stem cache key nor the model identity in manifests (see the README, "Devices"). Nothing here
probes hardware at import.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import BridgeError

#: Device kinds, and the onnxruntime provider each means.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
#: What ``auto`` tries, in order; the CPU is always there.
AUTO_ORDER = ("cuda", "coreml", "directml", "openvino", "cpu")
#: Kinds that take a device index (``cuda:1``): onnxruntime's ``device_id`` provider option.
INDEXED = ("cuda", "tensorrt", "directml")
#: What to install for each kind.
EXTRAS = {
    "cuda": 'pip install "stembridge[cuda]" (onnxruntime-gpu; uninstall onnxruntime first)',
    "tensorrt": 'pip install "stembridge[cuda]" (onnxruntime-gpu) and NVIDIA TensorRT',
    "directml": 'pip install "stembridge[directml]" (onnxruntime-directml, Windows; uninstall onnxruntime first)',
    "openvino": 'pip install "stembridge[openvino]" (onnxruntime-openvino; uninstall onnxruntime first)',
    "coreml": "the macOS onnxruntime wheel from PyPI (pip install onnxruntime, on a Mac)",
    "cpu": "pip install onnxruntime",
}
#: onnxruntime builds that each install the module ``onnxruntime``: two at once overwrite each other.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-silicon", "onnxruntime-qnn", "onnxruntime-rocm")


class DeviceError(BridgeError, RuntimeError):
    """A device that cannot run here: unknown, missing from this onnxruntime, or not present."""


@dataclasses.dataclass(frozen=True)
class Device:
    """One device: a kind of :data:`PROVIDERS` and, for :data:`INDEXED` kinds, an index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def provider(self) -> str:
        return PROVIDERS[self.kind]

    @property
    def gpu(self) -> bool:
        """Whether this device is an accelerator (Dask tasks then ask for a ``GPU`` resource)."""
        return self.kind != "cpu"

    def providers(self) -> list:
        """onnxruntime's ``providers=`` list: this provider with its options, then the CPU for the
        operators it lacks (onnxruntime places each node; the session is refused if this provider
        did not load at all, see :func:`~.runtime.open_session`)."""
        if self.kind == "cpu":
            return ["CPUExecutionProvider"]
        options = {"device_id": str(self.index or 0)} if self.kind in INDEXED else {}
        return [(self.provider, options), "CPUExecutionProvider"]


def parse_device(text) -> Device | str:
    """``"auto"`` (returned as the string) or a :class:`Device`; a :class:`DeviceError` otherwise."""
    if isinstance(text, Device):
        return text
    if not isinstance(text, str):
        raise DeviceError(f"device {text!r}: expected a name such as auto, cpu, cuda or cuda:1")
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    kind, sep, index = value.partition(":")
    if kind not in PROVIDERS:
        raise DeviceError(f"device {text!r}: expected auto, cpu, cuda[:N], tensorrt[:N], coreml, directml[:N] "
                          "or openvino")
    if not sep:
        return Device(kind)
    if kind not in INDEXED:
        raise DeviceError(f"device {text!r}: {kind} takes no device index; write --device {kind}")
    if not index.isdigit():
        raise DeviceError(f"device {text!r}: the index after ':' is a whole number >= 0, e.g. {kind}:0")
    return Device(kind, int(index))


def choose_auto(available) -> Device:
    """What ``auto`` picks from onnxruntime's provider names (:data:`AUTO_ORDER`)."""
    offered = set(available)
    for kind in AUTO_ORDER:
        if PROVIDERS[kind] in offered:
            return Device(kind)
    return Device("cpu")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A device asked for and the device that runs, with what to tell the user (or None)."""

    asked: str
    device: Device
    note: str | None = None


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed in this environment (more than one is broken)."""
    from importlib import metadata

    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def side_by_side_warning(installed=None) -> str | None:
    """One line when several onnxruntime builds are installed at once, else None."""
    installed = installed_runtimes() if installed is None else list(installed)
    if len(installed) < 2:
        return None
    return (f"{' and '.join(installed)} are installed side by side; they share the module 'onnxruntime' and "
            f"overwrite each other's files: pip uninstall -y {' '.join(installed)}, then install only the one you "
            "need")


def resolve_device(asked="auto", *, available=None) -> Resolved:
    """The device to run on; ``auto`` chosen from ``available`` (default: onnxruntime's providers).

    Does not check that a named device works: :func:`check_device` does.
    """
    parsed = parse_device(asked)
    if parsed != "auto":
        return Resolved(str(asked), parsed)
    available = available_providers() if available is None else list(available)
    device = choose_auto(available)
    if device.kind == "cpu":
        return Resolved("auto", device, "auto: this onnxruntime offers no accelerator, see stembridge doctor")
    return Resolved("auto", device, "auto")


def check_device(asked="auto", *, available=None, installed=None) -> Resolved:
    """Resolve ``asked`` and refuse, in one line, a named device that cannot run here.

    Raises
    ------
    DeviceError
        The provider is not in this onnxruntime build (naming what to install), its libraries
        (CUDA, cuDNN) do not load (onnxruntime's reason, shortened, and the fix), or the device
        index does not exist.
    """
    resolved = resolve_device(asked, available=available)
    if resolved.device.kind == "cpu":
        return resolved
    try:
        return _check_named(resolved, asked, available=available, installed=installed)
    except DeviceError as exc:
        if resolved.asked != "auto":
            raise
        # auto falls back, and says why (the summary shows the note)
        reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        return Resolved("auto", Device("cpu"), f"auto: {resolved.device} cannot run ({shorten(reason, 120)}); "
                                               "running on the CPU")


def _check_named(resolved: Resolved, asked, *, available, installed) -> Resolved:
    device = resolved.device
    available = available_providers() if available is None else list(available)
    if device.provider not in available:
        clash = side_by_side_warning(installed)
        why = f"; {clash}" if clash else ""
        raise DeviceError(f"--device {asked}: this onnxruntime has no {device.provider} (it offers "
                          f"{', '.join(available) or 'none'}); for {device.kind}: {EXTRAS[device.kind]}{why}")
    if device.kind in ("cuda", "tensorrt"):
        failure = cuda_library_failure()
        if failure:
            raise DeviceError(f"--device {asked}: onnxruntime's CUDA provider does not load ({failure}); install the "
                              "CUDA 12 and cuDNN 9 libraries it needs (pip install \"onnxruntime-gpu[cuda,cudnn]\" "
                              "puts them in this environment), or use --device cpu")
    count = device_count(device.kind)
    if device.index is not None and count is not None and device.index >= count:
        raise DeviceError(f"--device {asked}: there is no {device.kind} device {device.index}; this machine shows "
                          f"{count} ({', '.join(f'{device.kind}:{i}' for i in range(count)) or 'none'})")
    return resolved


def cuda_library_failure() -> str | None:
    """Why onnxruntime's CUDA provider library does not load, in its loader's words, or None.

    The provider is a shared library beside onnxruntime's module that links CUDA and cuDNN;
    loading it reports the first library missing (``libcudnn.so.9: cannot open shared object
    file``). onnxruntime itself would print this to stderr and run on the CPU instead.
    """
    import ctypes
    import sys

    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: CUDA/cuDNN from pip's nvidia-* wheels
            import contextlib
            import io

            # It prints what it fails to load; the refusal says it once, in one line, below.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    ort.preload_dlls(directory="")
                except Exception:  # noqa: BLE001 - only a help; the load below decides
                    pass
    except ImportError as exc:
        return str(exc)
    folder = Path(ort.__file__).parent / "capi"
    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    path = folder / name
    if not path.exists():
        return f"{name} is missing from {folder}"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return shorten(str(exc))
    return None


def shorten(message: str, limit: int = 160) -> str:
    """The first line of a library's message, cut to ``limit`` characters."""
    line = message.strip().splitlines()[0] if message.strip() else "no reason given"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def device_count(kind: str) -> int | None:
    """How many devices of ``kind`` this machine shows, or None when it cannot tell.

    CUDA/TensorRT: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``. Others: None.
    """
    if kind not in ("cuda", "tensorrt"):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    gpus = nvidia_smi()
    return None if gpus is None else len(gpus)


def nvidia_smi() -> list[dict] | None:
    """Each NVIDIA GPU's name and total/free memory in bytes from ``nvidia-smi``, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append({"name": parts[0], "total": int(parts[1]) << 20, "free": int(parts[2]) << 20})
    return gpus


def free_memory(device: Device) -> int | None:
    """Free memory of ``device`` in bytes, or None when it cannot tell (only CUDA can, here)."""
    if device.kind not in ("cuda", "tensorrt"):
        return None
    gpus = nvidia_smi()
    index = device.index or 0
    if not gpus or index >= len(gpus):
        return None
    return gpus[index]["free"]


def spread(device: Device, worker: int, count: int | None) -> Device:
    """The device of worker ``worker`` (0-based) of ``--jobs N``: one device per worker process.

    An indexed kind named without an index, on a machine showing ``count`` devices, puts worker
    i on device ``i % count``; a device named with an index keeps every worker on it.
    """
    if device.kind not in INDEXED or device.index is not None or not count:
        return device
    return Device(device.kind, worker % count)


# Chunks per model call for ``--batch-size auto``.
#: Working memory of one chunk in the network, as a multiple of its input audio's float32 bytes.
#: An estimate until measured on a GPU (tests/benchmarks/gpu.py prints the measured ratio).
ACTIVATION_FACTOR = 256
#: Share of the free memory auto batching may plan to use (the rest: onnxruntime's arena, cuDNN
#: workspaces, other processes).
FREE_SHARE = 0.5
MAX_AUTO_BATCH = 16


def gpu_batch_size(*, free_bytes: int, chunk_samples: int, weights_bytes: int = 0) -> int:
    """Chunks per call that fit ``FREE_SHARE`` of ``free_bytes`` after the weights, 1 to 16."""
    per_chunk = chunk_samples * 2 * 4 * ACTIVATION_FACTOR
    budget = free_bytes * FREE_SHARE - 2 * weights_bytes
    return int(max(1, min(MAX_AUTO_BATCH, budget // per_chunk)))


def card_batch_size(device: Device, card) -> int:
    """:func:`auto_batch_size` for a model card: its chunk (``chunk_size``, else ``hop * (dim_t -
    1)``) and its file's size as the weights."""
    chunk = card.chunk_size if isinstance(card.chunk_size, int) and card.chunk_size > 0 else card.hop * (card.dim_t - 1)
    try:
        weights = card.file.stat().st_size if card.file else 0
    except OSError:
        weights = 0
    return auto_batch_size(device, chunk_samples=chunk, weights_bytes=weights)


def auto_batch_size(device: Device, *, chunk_samples: int, weights_bytes: int = 0, free_bytes: int | None = None) -> int:
    """``--batch-size auto``: 1 on the CPU (more is no faster on 2 cores, measured), else sized to
    the device's free memory (1 when it cannot be told)."""
    if device.kind == "cpu":
        return 1
    free_bytes = free_memory(device) if free_bytes is None else free_bytes
    if free_bytes is None:
        return 1
    return gpu_batch_size(free_bytes=free_bytes, chunk_samples=chunk_samples, weights_bytes=weights_bytes)


def doctor_lines(*, available=None, installed=None) -> list[str]:
    """What ``stembridge doctor`` prints: the onnxruntime build and version, its providers and
    what each sees, what ``auto`` would pick, and a side-by-side install warning."""
    installed = installed_runtimes() if installed is None else list(installed)
    lines = []
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return [f"onnxruntime: not importable ({shorten(str(exc))}); {EXTRAS['cpu']}"]
    builds = ", ".join(f"{name} {_version(name)}" for name in installed) or "unknown distribution"
    lines.append(f"onnxruntime {ort.__version__} ({builds}), device build: {ort.get_device()}")
    available = available_providers() if available is None else list(available)
    lines.append("providers (as --device):")
    by_provider = {v: k for k, v in PROVIDERS.items()}
    for provider in available:
        kind = by_provider.get(provider)
        lines.append(f"  {provider:<28} {kind or '(not used by stembridge)':<9} {_sees(kind) if kind else ''}".rstrip())
    for kind in PROVIDERS:
        if PROVIDERS[kind] not in available:
            lines.append(f"  {kind}: not in this build; {EXTRAS[kind]}")
    lines.append(f"--device auto picks: {choose_auto(available)} (order: {', '.join(AUTO_ORDER)})")
    clash = side_by_side_warning(installed)
    if clash:
        lines.append(f"warning: {clash}")
    return lines


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _sees(kind: str) -> str:
    """What a provider sees: device count and memory where it can tell, "unknown" otherwise."""
    if kind == "cpu":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 0
        return f"{cores} cores"
    if kind in ("cuda", "tensorrt"):
        failure = cuda_library_failure()
        if failure:
            return f"does not load: {failure}"
        gpus = nvidia_smi()
        if gpus is None:
            return "devices: unknown (no nvidia-smi)"
        return "; ".join(f"{kind}:{i} {g['name']} {g['free'] / 2**30:.1f} of {g['total'] / 2**30:.1f} GiB free"
                         for i, g in enumerate(gpus)) or "no devices"
    return "devices: unknown (this provider does not say)"
