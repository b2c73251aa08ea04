"""One short, prepared GPU check for a session that has a GPU (fits 10 minutes on one H100).

    python tests/benchmarks/gpu.py [--seconds 60] [--out gpu.json]

What it reports, per network (the trivial MDX-shaped model: the pipeline alone; an MDX-Net at
UVR size with random weights; the embedded default model), on a synthetic song of ``--seconds``:

- stems on the GPU vs stems on the CPU (onnxruntime CPUExecutionProvider, today's path): SNR per
  stem, which must be >= 60 dB (float rounding and TF32/cuDNN algorithm choices, not errors);
- the real-time factor (audio seconds per wall second) of the whole separation on each;
- peak GPU memory, and for the UVR-size network the memory per chunk at batch sizes 1, 2, 4, the
  figure ``--batch-size auto`` plans with (``bridge.separation.devices.ACTIVATION_FACTOR``).

It first asks onnxruntime what it offers (``onnxruntime.get_available_providers()``). With the
CUDA provider it runs stembridge itself with ``--device cuda`` (the real path). Without it (the
machines this workplace lends carry PyTorch and a CPU onnxruntime, and the onnxruntime-gpu wheel
is too big to carry there), it says so in one line and runs the *same networks* in PyTorch on
CUDA instead: each ONNX graph is executed op by op with torch (:class:`TorchSession`, the dozen
operators these networks use), inside stembridge's own pipeline, so the stems compare with the CPU
path exactly as the CUDA provider's would. Nothing here needs a package registry or a download.

No GPU figure in the README or in a report comes from anywhere but this script's output.
Checked on a CPU-only machine with ``--torch-device cpu`` (torch's CPU vs onnxruntime's CPU,
2026-12-07): trivial MDX identical, default model 96 dB, UVR-size MDX-Net 134 dB, so the
operator-by-operator torch execution is the same network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = np.sum((reference - estimate) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))


# --- ONNX graphs run by torch (the fallback without onnxruntime's CUDA provider) ------------------------------

class TorchSession:
    """The parts of ``onnxruntime.InferenceSession`` stembridge's Runner uses, executing the ONNX
    graph with torch on ``device``: Add, BatchNormalization, Cast, Concat, Conv, ConvTranspose,
    LeakyRelu, MatMul, Mul, Pad, Relu, Sigmoid, Slice, Transpose, Identity, Tanh."""

    def __init__(self, path: Path, device: str):
        import onnx
        import torch
        from onnx import numpy_helper

        self.torch = torch
        self.device = device
        self.model = onnx.load(str(path))
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()).to(device)
                       for i in self.model.graph.initializer}
        self.init_names = set(self.consts)
        graph = self.model.graph
        self._inputs = [_Arg(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
                        for i in graph.input if i.name not in self.init_names]
        self._outputs = [_Arg(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
                         for o in graph.output]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def get_providers(self):
        return [f"torch:{self.device}"]

    def run(self, names, feeds):
        import onnx

        torch = self.torch
        F = torch.nn.functional
        values = dict(self.consts)
        with torch.inference_mode():
            for name, array in feeds.items():
                values[name] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            for node in self.model.graph.node:
                a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
                ins = [values[i] if i else None for i in node.input]
                op = node.op_type
                if op in ("Add", "Mul", "Sub", "Div"):
                    out = {"Add": torch.add, "Mul": torch.mul, "Sub": torch.sub, "Div": torch.div}[op](ins[0], ins[1])
                elif op in ("Relu", "Sigmoid", "Tanh", "Identity"):
                    out = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
                           "Identity": lambda t: t}[op](ins[0])
                elif op == "LeakyRelu":
                    out = F.leaky_relu(ins[0], a.get("alpha", 0.01))
                elif op == "MatMul":
                    out = torch.matmul(ins[0], ins[1])
                elif op == "Transpose":
                    out = ins[0].permute(*a["perm"])
                elif op == "Cast":
                    out = ins[0].to({1: torch.float32, 10: torch.float16}[a["to"]])
                elif op == "Concat":
                    out = torch.cat(ins, dim=a["axis"])
                elif op == "BatchNormalization":
                    out = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], False, 0.0, a.get("epsilon", 1e-5))
                elif op == "Conv":
                    out = _conv(F, ins, a)
                elif op == "ConvTranspose":
                    out = _conv_transpose(F, ins, a)
                elif op == "Pad":
                    out = _pad(F, ins, a)
                elif op == "Slice":
                    out = _slice(ins)
                else:
                    raise NotImplementedError(f"TorchSession: operator {op} (add it above)")
                values[node.output[0]] = out
            return [values[o.name].float().cpu().numpy() for o in self._outputs]


class _Arg:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


def _pads_2d(a, ndim=2):
    pads = a.get("pads", [0] * (2 * ndim))
    return pads[:ndim], pads[ndim:]


def _conv(F, ins, a):
    begin, end = _pads_2d(a)
    x = ins[0]
    if begin != end:  # asymmetric: pad first (F.pad lists the last axis first)
        x = F.pad(x, [begin[1], end[1], begin[0], end[0]])
        begin = [0, 0]
    return F.conv2d(x, ins[1], ins[2] if len(ins) > 2 else None, stride=a.get("strides", [1, 1]), padding=begin,
                    dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))


def _conv_transpose(F, ins, a):
    torch_out = F.conv_transpose2d(ins[0], ins[1], None, stride=a.get("strides", [1, 1]),
                                   dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))
    begin, end = _pads_2d(a)
    extra = a.get("output_padding", [0, 0])
    h, w = torch_out.shape[-2:]
    out = torch_out[..., begin[0]:h - end[0], begin[1]:w - end[1]]
    if any(extra):
        out = F.pad(out, [0, extra[1], 0, extra[0]])
    if len(ins) > 2 and ins[2] is not None:
        out = out + ins[2].view(1, -1, 1, 1)
    return out


def _pad(F, ins, a):
    pads = [int(p) for p in ins[1].tolist()]
    n = len(pads) // 2
    torch_pads = []
    for axis in reversed(range(n)):
        torch_pads += [pads[axis], pads[axis + n]]
    while torch_pads and torch_pads[-2:] == [0, 0]:  # F.pad wants only the trailing axes
        torch_pads = torch_pads[:-2]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(ins[2].item()) if len(ins) > 2 and ins[2] is not None else 0.0
    return F.pad(ins[0], torch_pads, mode=mode, value=value) if mode == "constant" else F.pad(ins[0], torch_pads, mode=mode)


def _slice(ins):
    x = ins[0]
    starts, ends = ins[1].tolist(), ins[2].tolist()
    axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        size = x.shape[ax]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


# --- GPU memory ---------------------------------------------------------------------------------------------

class NvidiaSmiPeak:
    """Peak ``memory.used`` of GPU 0 polled every 50 ms from nvidia-smi (what onnxruntime's arena takes)."""

    def __init__(self):
        import shutil

        self.exe = shutil.which("nvidia-smi")
        self.peak = 0
        self._stop = threading.Event()

    def _used(self) -> int:
        import subprocess

        out = subprocess.run([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5).stdout
        return int(out.strip().splitlines()[0]) << 20

    def __enter__(self):
        if self.exe:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._used())
            except Exception:  # noqa: BLE001 - a missed sample
                pass
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        if self.exe:
            self._thread.join()


# --- the runs -------------------------------------------------------------------------------------------------

def build_models(folder: Path) -> dict[str, str]:
    """name -> model spec for load_separator: trivial MDX, UVR-size MDX-Net (random weights), default."""
    import models  # tests/benchmarks/models.py

    trivial = models.trivial_mdx(folder / "trivial.onnx")
    uvr = models.tfc_tdf_mdx(folder / "uvr.onnx")
    return {"trivial-mdx": str(models.write_card(folder / "trivial.yaml", trivial, name="trivial")),
            "uvr-mdx": str(models.write_card(folder / "uvr.yaml", uvr, name="uvr")),
            "default": "default"}


def separate(spec: str, audio: np.ndarray, rate: int, *, device: str, torch_device: str | None = None,
             batch_size: int = 1) -> tuple[dict, float]:
    """Stems and wall seconds; with ``torch_device`` the engine's session is a TorchSession."""
    from bridge.separation import load_separator, runtime

    separator = load_separator(spec, device=device, batch_size=batch_size)
    if torch_device is not None:
        runner = _find_runner(separator.engine)
        runner.session = TorchSession(_model_path(spec), torch_device)
        runner._run = lambda x, r=runner: r.session.run(None, {r.input.name: x})  # noqa: E731
    separator(audio[:, : rate * 2], rate)  # warm-up: cuDNN algorithm search, arena growth
    start = time.perf_counter()
    stems = separator(audio, rate)
    return stems, time.perf_counter() - start


def _find_runner(engine):
    for value in vars(engine).values():
        if type(value).__name__ == "Runner":
            return value
        if hasattr(value, "__dict__"):
            for inner in vars(value).values():
                if type(inner).__name__ == "Runner":
                    return inner
    raise RuntimeError(f"no Runner in {type(engine).__name__}")


def _model_path(spec: str) -> Path:
    from bridge.separation.models import resolve

    return resolve(spec).file


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="song length (default %(default)s)")
    parser.add_argument("--cpu-seconds", type=float, default=20.0,
                        help="audio for the UVR-size network's CPU reference (about 1 s of CPU per 1 s here)")
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--torch-device", default="cuda",
                        help="the PyTorch fallback's device; 'cpu' checks this script on a machine without a GPU")
    parser.add_argument("--networks", default="trivial-mdx,uvr-mdx,default")
    args = parser.parse_args()

    import onnxruntime as ort
    import soundfile as sf

    import inputs  # tests/benchmarks/inputs.py

    report = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "runs": []}
    cuda_ort = "CUDAExecutionProvider" in report["providers"]
    torch_device = None
    if cuda_ort:
        print(f"onnxruntime {ort.__version__} offers CUDA: running stembridge with --device cuda")
    else:
        import torch

        print(f"onnxruntime {ort.__version__} offers {', '.join(report['providers'])}, no CUDA: comparing the same "
              f"networks run by PyTorch {torch.__version__} on {args.torch_device} instead")
        torch_device = args.torch_device
        if torch_device.startswith("cuda") and not torch.cuda.is_available():
            print("no CUDA device for PyTorch either: nothing to measure on a GPU here")
            Path(args.out).write_text(json.dumps(report, indent=1))
            return 1
        report["torch"] = torch.__version__
        report["gpu"] = torch.cuda.get_device_name(0) if torch_device.startswith("cuda") else "none (torch on the CPU)"
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        specs = build_models(folder)
        song = inputs.song(folder / "song.wav", args.seconds / 60.0)
        audio, rate = sf.read(str(song), dtype="float32", always_2d=True)
        audio = np.ascontiguousarray(audio.T)
        for name, spec in specs.items():
            if name not in args.networks.split(","):
                continue
            clip = audio if name != "uvr-mdx" else audio[:, : int(args.cpu_seconds * rate)]
            seconds = clip.shape[1] / rate
            cpu_stems, cpu_wall = separate(spec, clip, rate, device="cpu")
            row = {"network": name, "audio_s": seconds, "cpu_wall_s": round(cpu_wall, 3),
                   "cpu_rtf": round(seconds / cpu_wall, 2)}
            if cuda_ort:
                with NvidiaSmiPeak() as peak:
                    gpu_stems, gpu_wall = separate(spec, clip, rate, device="cuda")
                row["gpu_peak_bytes"] = peak.peak
                row["gpu_path"] = "onnxruntime CUDAExecutionProvider"
            else:
                import torch

                on_gpu = torch_device.startswith("cuda")
                if on_gpu:
                    torch.cuda.reset_peak_memory_stats()
                gpu_stems, gpu_wall = separate(spec, clip, rate, device="cpu", torch_device=torch_device)
                row["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated()) if on_gpu else None
                row["gpu_path"] = f"torch {torch.__version__} on {report['gpu']}"
            row["gpu_wall_s"] = round(gpu_wall, 3)
            row["gpu_rtf"] = round(seconds / gpu_wall, 2)
            row["snr_db"] = {stem: round(snr_db(cpu_stems[stem], gpu_stems[stem]), 1) for stem in cpu_stems}
            row["snr_ok"] = all(v >= 60.0 for v in row["snr_db"].values())
            report["runs"].append(row)
            print(json.dumps(row))
        if not cuda_ort and torch_device.startswith("cuda") and "uvr-mdx" in args.networks:
            # memory per chunk, the figure --batch-size auto plans with
            import torch

            session = TorchSession(folder / "uvr.onnx", "cuda")
            per = {}
            for batch in (1, 2, 4):
                x = np.zeros((batch, 4, 3072, 256), np.float32)
                session.run(None, {"input": x})
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                session.run(None, {"input": x})
                per[batch] = int(torch.cuda.max_memory_allocated() - base)
            chunk_input = 261120 * 2 * 4
            report["uvr_peak_bytes_by_batch"] = per
            report["activation_factor_measured"] = round((per[4] - per[1]) / 3 / chunk_input, 1)
            print(f"UVR-size network, peak bytes by batch {per}; per chunk / chunk audio bytes = "
                  f"{report['activation_factor_measured']} (devices.ACTIVATION_FACTOR plans with 256)")
    Path(args.out).write_text(json.dumps(report, indent=1))
    ok = all(r["snr_ok"] for r in report["runs"])
    print(f"stems GPU vs CPU >= 60 dB: {'yes' if ok else 'NO'}; report -> {args.out}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
