"""The torch side of the RoFormer benchmarks: runs in python-audio-separator's own venv.

    VENV/bin/python roformer_torch.py build --config CFG --size mid|full --out DIR --probe SONG [--seed 0]
    VENV/bin/python roformer_torch.py forward --ckpt CKPT --config CFG --input X.npy --output Y.npz

``build`` instantiates python-audio-separator's own RoFormer class (through its ``RoformerLoader``,
exactly as ``Separator.load_model`` does, with no checkpoint on disk: random weights, seeded), at
the published configuration (``--size full``), a mid-size one (``--size mid``: dim 256, depth 6,
everything else as published) or a small one for memory-against-length runs (``--size small``), calibrates the mask estimators' last layers (below), and writes
``DIR/NAME.ckpt`` (the state dict, as the real checkpoints are) with ``DIR/NAME.yaml`` (the config
it was built from) and ``DIR/NAME.json`` (parameter count, calibration).

Calibration: a random network's mask estimators give masks of whatever scale the initialisation
happens to give. Each band's MLP ends in ``Linear(hidden, 2 * dim_in)`` and a GLU, so the complex
mask is ``a * sigmoid(b)``. The ``a`` rows of every last layer are scaled so that ``a`` has a
standard deviation of 1, and the ``b`` rows so that ``b`` has one of 2, both measured on 2 s of the
probe song (from 10 s in): masks with spread, neither all zero nor all one, and outputs about as
loud as the input. The scaling is in the saved weights, so every tool runs the same network.

``forward`` runs the checkpoint's network on one chunk (``X.npy``: (channels, samples) float32)
and saves its output and the intermediate tensors the network parity check compares (the STFT
given to band-split, the mask).

Only audio-separator's own dependencies are imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

#: Overrides of the published config per size ("full": none). "small" is for memory against song
#: length only (compute next to nothing, the same chunk geometry and I/O).
SIZES = {"full": {}, "mid": {"dim": 256, "depth": 6}, "small": {"dim": 64, "depth": 1, "heads": 2, "dim_head": 16}}


def load_config(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=yaml.FullLoader)  # the published configs use !!python/tuple


def create(config: dict, ckpt: Path | None = None):
    """The network as audio-separator 0.47.1 builds it (``RoformerLoader.load_model``)."""
    from audio_separator.separator.roformer.roformer_loader import RoformerLoader

    config = dict(config, is_roformer=True)
    path = str(ckpt) if ckpt else "/nonexistent/random.ckpt"  # no file: the loader keeps the random init
    result = RoformerLoader().load_model(model_path=path, config=config, device="cpu")
    if not result.success:
        raise RuntimeError(result.error_message)
    return result.model.eval(), result.model_info.get("model_type")


def read_song(path: Path, start_s: float, seconds: float) -> np.ndarray:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        f.seek(int(start_s * f.samplerate))
        x = f.read(int(seconds * f.samplerate), dtype="float32", always_2d=True)
    return np.ascontiguousarray(x.T)


def last_layers(model):
    """The ``Linear(hidden, 2 * dim_in)`` before each band's GLU, in every mask estimator."""
    from torch import nn

    out = []
    for estimator in model.mask_estimators:
        for seq in estimator.to_freqs:
            mlp = seq[0]
            linears = [m for m in mlp if isinstance(m, nn.Linear)]
            out.append(linears[-1])
    return out


def build(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    config = load_config(args.config)
    config["model"].update(SIZES[args.size])
    model, model_type = create(config)
    params = sum(p.numel() for p in model.parameters())
    layers = last_layers(model)
    # Measure the pre-GLU outputs on the probe.
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o.detach())) for layer in layers]
    probe = torch.from_numpy(read_song(args.probe, 10.0, 2.0))[None]
    t = time.perf_counter()
    with torch.no_grad():
        model(probe)
    probe_s = time.perf_counter() - t
    for h in hooks:
        h.remove()
    a = torch.cat([o[..., : o.shape[-1] // 2].flatten() for o in captured])
    b = torch.cat([o[..., o.shape[-1] // 2:].flatten() for o in captured])
    sa, sb = float(a.std()), float(b.std())
    scale_a, scale_b = 1.0 / sa, 2.0 / sb
    with torch.no_grad():
        for layer in layers:
            half = layer.out_features // 2
            layer.weight[:half] *= scale_a
            layer.bias[:half] *= scale_a
            layer.weight[half:] *= scale_b
            layer.bias[half:] *= scale_b
    name = f"{model_type}_{args.size}_random"
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / f"{name}.ckpt"
    torch.save(model.state_dict(), ckpt)
    with open(args.out / f"{name}.yaml", "w", encoding="utf-8") as f:
        yaml.dump(config, f, sort_keys=False)
    # Check the calibration took: the mask on the probe after scaling.
    captured.clear()
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o.detach())) for layer in layers]
    with torch.no_grad():
        model(probe)
    for h in hooks:
        h.remove()
    mask = torch.cat([torch.nn.functional.glu(o, dim=-1).flatten() for o in captured])
    meta = {"model_type": model_type, "size": args.size, "seed": args.seed, "params": params,
            "ckpt_bytes": ckpt.stat().st_size, "config": str(args.config), "overrides": SIZES[args.size],
            "probe": f"{args.probe} 10-12 s", "probe_forward_s": probe_s, "pre_glu_std_before": {"a": sa, "b": sb},
            "scale": {"a": scale_a, "b": scale_b},
            "mask_after": {"std": float(mask.std()), "mean_abs": float(mask.abs().mean()),
                           "p01": float(torch.quantile(mask[:1_000_000], 0.01)),
                           "p99": float(torch.quantile(mask[:1_000_000], 0.99)),
                           "fraction_abs_below_0.01": float((mask.abs() < 0.01).float().mean())}}
    (args.out / f"{name}.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))


def forward(args) -> None:
    """One chunk through the checkpoint's network, recording what happens between its STFT and
    its inverse STFT: the spectrogram ``torch.stft`` returns (the ONNX model's input) and the
    masked spectrogram ``torch.istft`` receives (mask x spectrogram), and the output audio."""
    import torch

    config = load_config(args.config)
    model, _ = create(config, args.ckpt)
    x = torch.from_numpy(np.load(args.input))[None]
    if args.threads:
        torch.set_num_threads(args.threads)
    seen = {}
    stft, istft = torch.stft, torch.istft

    def spy_stft(*a, **k):
        seen["spec"] = stft(*a, **k)
        return seen["spec"]

    def spy_istft(spec, *a, **k):
        seen["masked"] = spec
        return istft(spec, *a, **k)

    torch.stft, torch.istft = spy_stft, spy_istft
    try:
        t = time.perf_counter()
        with torch.no_grad():
            y = model(x)[0]
        seconds = time.perf_counter() - t
    finally:
        torch.stft, torch.istft = stft, istft
    channels = x.shape[1]
    spec = torch.view_as_real(seen["spec"]).reshape(1, channels, *seen["spec"].shape[-2:], 2)  # [b s f t 2]
    masked = seen["masked"].reshape(1, -1, channels, *seen["masked"].shape[-2:])  # [b n s f t] complex
    np.savez(args.output, audio=y.numpy(), spec=spec.numpy(), masked=masked.numpy(), seconds=seconds,
             threads=torch.get_num_threads())
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def flops(args) -> None:
    """Matmul FLOPs of one forward on a chunk of ``--chunk`` samples, from torch's own counter.

    ``FlopCounterMode`` counts every matmul and linear FLOP (not the STFT, norms or activations);
    it does not count CPU ``scaled_dot_product_attention``, so the attention products (QK^T and
    AV: 4 n_q n_k d per head) are added from the shapes each ``Attend`` module is called with. Counting a whole 8-s chunk at full size would take a full forward (minutes on
    2 cores), so the network is counted on two short inputs, of T1 and T2 STFT frames, and the
    count extrapolated exactly: per frame the network is linear in T except the time
    transformer's attention scores, which are quadratic, so FLOPs(T) = a T + b T^2.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = load_config(args.config)
    config["model"].update(SIZES[args.size])
    model, model_type = create(config)
    hop = config["model"].get("stft_hop_length", 512)
    attention = [0]

    def count_attention(module, inputs, output):
        q, k = inputs[:2]
        attention[0] += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]

    for module in model.modules():
        if type(module).__name__ == "Attend":
            module.register_forward_hook(count_attention)
    counts, split = {}, {}
    for frames in (args.frames1, args.frames2):
        x = torch.randn(1, 2, hop * (frames - 1))
        attention[0] = 0
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        counts[frames] = counter.get_total_flops() + attention[0]
        split[frames] = {"counter": counter.get_total_flops(), "attention": attention[0]}
    (t1, f1), (t2, f2) = counts.items()
    b = (f2 / t2 - f1 / t1) / (t2 - t1)
    a = f1 / t1 - b * t1
    frames = args.chunk // hop + 1
    total = a * frames + b * frames * frames
    out = {"model_type": model_type, "size": args.size, "chunk": args.chunk, "frames": frames,
           "flops_per_chunk": total, "per_frame_linear": a, "per_frame_squared": b, "counted": counts, "counted_split": split,
           "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(out, indent=1))
    if args.result:
        Path(args.result).write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--size", choices=tuple(SIZES), required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--probe", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("forward")
    f.add_argument("--ckpt", type=Path, required=True)
    f.add_argument("--config", type=Path, required=True)
    f.add_argument("--input", type=Path, required=True)
    f.add_argument("--output", type=Path, required=True)
    f.add_argument("--threads", type=int)
    c = sub.add_parser("flops")
    c.add_argument("--config", type=Path, required=True)
    c.add_argument("--size", choices=tuple(SIZES), required=True)
    c.add_argument("--chunk", type=int, default=352800)
    c.add_argument("--frames1", type=int, default=41)
    c.add_argument("--frames2", type=int, default=81)
    c.add_argument("--result")
    args = parser.parse_args()
    {"build": build, "forward": forward, "flops": flops}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
