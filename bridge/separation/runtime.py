"""onnxruntime sessions, opened the same way for every model family."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .. import memory
from ..errors import ModelError
from .devices import Device, DeviceError, shorten


def default_threads() -> int:
    """Intra-op threads when none are given: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_SHARED_ARENA = False  # whether this process registered onnxruntime's shared CPU arena


def _share_cpu_arena() -> None:
    """Register one CPU arena in onnxruntime's environment (once per process) for sessions to share."""
    global _SHARED_ARENA
    if not _SHARED_ARENA:
        import onnxruntime as ort

        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, None)
        _SHARED_ARENA = True


def open_session(path: Path, *, threads: int | None = None, device: Device | None = None,
                 shared_arena: bool = False, lean: bool = False):
    """An onnxruntime session on ``device`` (default: the CPU), with explicit threading and full
    graph optimisation.

    ``shared_arena``: on the CPU, the session takes its intermediate tensors from one arena shared
    by every session opened so (instead of an arena of its own). For sessions that run one after
    another, such as a Demucs bag's four networks: each own arena grows to the network's peak and
    keeps it, so four hold four peaks; the shared one holds one. Measured on htdemucs_ft (4
    published-size networks, one 7.8-s chunk each, twice): 3.83 -> 1.65 GB peak, same output, same
    CPU time.

    ``lean``: on the CPU, no arena at all, and glibc's ``mmap`` threshold fixed at 1 MB for the
    rest of the process (:func:`bridge.memory.return_freed_memory`): every intermediate tensor is
    mapped when made and unmapped when freed, so the process holds what the network holds at that
    moment, not its arena's high-water mark and the heap's freed holes. It pays a page fault per
    4 KiB of every fresh tensor, which only a network doing much work per byte hides: measured on
    one published-size chunk, 1 thread, the MDX23C InstVoc HQ network 2479 -> 1938 MB peak and
    43.8 -> 40.6 s (no slower), but htdemucs 989 -> 876 MB at 15.4 -> 34.2 s and a UVR VR v5
    network 1069 -> 733 MB at 16.5 -> 22.9 s. So a family asks for it; MDX23C does.

    Raises
    ------
    ModelError
        The file is not a loadable ONNX model.
    DeviceError
        ``device``'s provider did not load (onnxruntime would run on the CPU instead: a named
        device never falls back silently), or onnxruntime refused the device (a bad index).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or default_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns pre-plan one block for every intermediate tensor; without them the arena
    # reuses freed blocks. Measured on 2 cores: a UVR-size MDX model 3.13 -> 1.72 GB peak and
    # 28.5 -> 25.5 s on a 20 s song; the default model 690 -> 558 MB, no slower.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    # onnxruntime's pool threads spin for a while after each op, waiting for the next: CPU the
    # FFT threads and the file writers (which run beside the network) then cannot have. Measured
    # on 2 cores, 4-minute song: the pipeline around a trivial MDX model 4.84 -> 3.29 s CPU, the
    # embedded model (2 minutes) 8.75 -> 6.77 s CPU; stems identical.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    device = device or Device("cpu")
    if lean and device.kind == "cpu":
        options.enable_cpu_mem_arena = False
        memory.return_freed_memory()
    elif shared_arena and device.kind == "cpu":
        _share_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=device.providers())
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        reason = shorten(str(exc), 200)
        if device.kind != "cpu" and _device_failure(str(exc)):
            raise DeviceError(f"--device {device}: onnxruntime cannot use it ({reason}); check the device index "
                              "(stembridge doctor lists the devices) or use --device cpu") from None
        raise ModelError(f"{path}: onnxruntime cannot load this model ({reason}); the file is damaged or not an ONNX model") from None
    if session.get_providers()[0] != device.provider:
        raise DeviceError(f"--device {device}: onnxruntime did not start its {device.provider} (the session runs on "
                          f"{', '.join(session.get_providers())}); stembridge doctor says why, or use --device cpu")
    return session


def _device_failure(message: str) -> bool:
    """Whether onnxruntime's message is about the device rather than the model file."""
    words = ("invalid device ordinal", "cuda", "cudnn", "device_id", "tensorrt", "directml", "dml", "openvino", "coreml")
    return any(w in message.lower() for w in words)


def check_spectrogram_io(session, path, card, *, channels: int, outputs: int, family: str) -> None:
    """Refuse a spectrogram model whose ONNX input ``[batch, channels, n_fft/2+1, dim_t, 2]`` or
    output ``[batch, outputs, channels, n_fft/2+1, dim_t, 2]`` disagrees with its card."""
    bins = card.n_fft // 2 + 1
    says = (f"its card ({card.source}) says input [batch, audio_channels={channels}, n_fft/2+1={bins}, "
            f"dim_t={card.dim_t}, 2] and output [batch, stems={outputs}, {channels}, {bins}, {card.dim_t}, 2]")
    check_interface(session, path, expected_in=[None, channels, bins, card.dim_t, 2],
                    expected_out=[None, outputs, channels, bins, card.dim_t, 2], family=family, says=says,
                    fix="n_fft, dim_t, audio_channels, stems, residual")


def static_dims(shape) -> list[int | None]:
    """An ONNX input shape with symbolic dimensions as None."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def check_interface(session, path, *, expected_in: list, expected_out: list, family: str, says: str,
                    fix: str) -> None:
    """Refuse a model that has not one input and one output of the shapes its card implies (None:
    any size), in one line naming ``path``, what the card ``says`` and which card keys to ``fix``."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: a {family} model has one input and one output, this one has "
                         f"{[i.name for i in inputs]} and {[o.name for o in outputs]}; {says}")
    for kind, node, expected in (("input", inputs[0], expected_in), ("output", outputs[0], expected_out)):
        dims = static_dims(node.shape)
        if len(dims) != len(expected) or any(d is not None and e is not None and d != e
                                             for d, e in zip(dims, expected)):
            raise ModelError(f"{path}: the model's {kind} shape is {node.shape}, but {says}; "
                             f"fix the card ({fix}) to match the model")


class Runner:
    """Run a model over a batch, split into calls of at most ``max_batch``.

    Input and output names are read from the session, never assumed. A one-input model is called
    with its array; a model of several inputs (Demucs: the waveform and its spectrogram) with
    ``{name: array}``, every array batched along its first axis. Every call goes through
    onnxruntime's IO binding, on the CPU too, so the path a GPU run takes is the one the tests
    run: the inputs are bound from host memory (onnxruntime copies them to the device once),
    outputs are allocated on the session's device and copied back once. On the CPU the stems equal
    ``session.run``'s bit for bit (the same kernels on the same buffers; tested).

    One call runs at a time: a separator keeps two batches in flight (one's STFT beside the
    other's network, see :class:`~.runner.ChunkedSeparator`), and two networks running at once
    would hold two sets of activations and split the cores between them for no gain.
    """

    def __init__(self, session, *, max_batch: int | None = None):
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        fixed = static_dims(session.get_inputs()[0].shape)[0]
        self.max_batch = fixed if fixed else max_batch
        self.device_type, self.device_id = _output_device(session)
        self._lock = threading.Lock()

    def __call__(self, x) -> dict[str, np.ndarray]:
        """``x``: the array of a one-input model, or ``{input name: array}``; ``{output name: array}``."""
        feeds = x if isinstance(x, dict) else {self.inputs[0]: x} if len(self.inputs) == 1 else None
        if feeds is None or set(feeds) != set(self.inputs):
            given = list(feeds) if feeds is not None else "one array"
            raise ModelError(f"the model's inputs are {self.inputs}; it was given {given}")
        batch = next(iter(feeds.values())).shape[0]
        step = self.max_batch or batch
        with self._lock:
            parts = [self._run({name: np.ascontiguousarray(a[i:i + step]) for name, a in feeds.items()})
                     for i in range(0, batch, step)]
        if len(parts) == 1:  # the usual case: no copy
            return dict(zip(self.outputs, parts[0]))
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(self.outputs)}

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name in self.outputs:
            binding.bind_output(name, self.device_type, self.device_id)
        if self.device_type == "cpu":
            # Zero copies: the inputs wrap the arrays, the outputs are onnxruntime's own buffers
            # handed to numpy. (bind_cpu_input + copy_outputs_to_cpu copy both: 5.4 vs 2.2 ms per
            # UVR-size chunk measured, session.run 2.2 ms.)
            for name, x in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x))
            self.session.run_with_iobinding(binding)
            return [value.numpy() for value in binding.get_outputs()]
        for name, x in feeds.items():
            binding.bind_cpu_input(name, x)  # copied to the device once
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _output_device(session) -> tuple[str, int]:
    """Where the session's first provider keeps its outputs, for :meth:`Runner._run`'s binding."""
    provider = session.get_providers()[0]
    options = session.get_provider_options().get(provider, {})
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        return "cuda", int(options.get("device_id", 0) or 0)
    if provider == "DmlExecutionProvider":
        return "dml", int(options.get("device_id", 0) or 0)
    return "cpu", 0  # CoreML and OpenVINO hand outputs back in host memory
