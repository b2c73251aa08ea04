"""Prove by hand that stembridge's RoFormer networks are python-audio-separator's, weight for weight.

audio-separator is not a test dependency, so the suite cannot check the real checkpoint layout;
this script does, once, on a machine with the benchmark venv (``setup_audiosep.sh``):

1. In the audio-separator venv (``--reference`` mode, run by this script itself), build
   audio-separator's own ``BSRoformer`` from viperx's ep_317 config and its ``MelBandRoformer``
   from Kim's vocals config (``roformer_configs/``), plus small variants (linear attention, mono,
   two stems), give every parameter seeded random values (no calibration), save the state dicts
   (``torch.save``, as the published checkpoints are), run each forward on seeded pink noise and
   record what happens between its STFT and its inverse STFT: the spectrogram its ``torch.stft``
   returns and the masked spectrogram its ``torch.istft`` receives. For Mel-Band, also its band
   buffers (``freq_indices``, ``num_bands_per_freq``).
2. Here (system python, stembridge's importer): load each state dict strictly into stembridge's
   classes with the same config (``bridge.importers.roformer``), export to ONNX, run onnxruntime on
   the reference spectrogram, multiply the mask onto it, and compare with audio-separator's masked
   spectrogram (SNR, dB). The reference's mask is recovered as masked / spectrogram (complex
   division, float64) and compared with the ONNX mask too.

The published models run 8 s chunks (801 frames); ``--frames`` shortens the chunk (default 101
frames, 1 s) to keep torch time down: the weights and every other shape are the published ones.

    python tests/benchmarks/roformer_network_parity.py [--venv /work/venvs/audiosep] [--frames 101]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFIGS = HERE / "roformer_configs"
SEED = 15


def variants(frames: int) -> list[dict]:
    """Each: a name, a config file (or inline config) and the chunk in samples."""
    small = {"dim": 32, "depth": 2, "time_transformer_depth": 1, "freq_transformer_depth": 1, "heads": 2,
             "dim_head": 16, "stft_n_fft": 512, "stft_hop_length": 128, "stft_win_length": 512}
    return [
        {"name": "viperx BS-RoFormer ep_317", "file": "model_bs_roformer_ep_317_sdr_12.9755.yaml",
         "chunk": 441 * (frames - 1)},
        {"name": "Kim Mel-Band RoFormer vocals", "file": "config_vocals_mel_band_roformer_kj.yaml",
         "chunk": 441 * (frames - 1)},
        {"name": "BS small, linear attention, mono", "chunk": 128 * 40, "config": {
            "model": {**small, "stereo": False, "num_stems": 1, "linear_transformer_depth": 1,
                      "freqs_per_bands": [4] * 16 + [8] * 8 + [129], "mask_estimator_depth": 3,
                      "mlp_expansion_factor": 2},
            "audio": {"chunk_size": 128 * 40, "sample_rate": 44100},
            "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"}}},
        {"name": "Mel small, 2 stems, depth-1 masks", "chunk": 128 * 40, "config": {
            "model": {**small, "stereo": True, "num_stems": 2, "num_bands": 24, "sample_rate": 44100,
                      "mask_estimator_depth": 1},
            "audio": {"chunk_size": 128 * 40, "sample_rate": 44100},
            "training": {"instruments": ["vocals", "other"], "target_instrument": None}}},
    ]


def config_data(variant: dict) -> dict:
    sys.path.insert(0, str(REPO))
    from bridge.importers.roformer_config import read_config

    data = read_config(CONFIGS / variant["file"]) if "file" in variant else json.loads(json.dumps(variant["config"]))
    data["audio"]["chunk_size"] = variant["chunk"]
    return data


def pink(channels: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((channels, samples))
    shape = np.fft.rfftfreq(samples)
    shape[0] = shape[1]
    x = np.fft.irfft(np.fft.rfft(white) / np.sqrt(shape / shape[1]), n=samples)
    return (0.25 * x / np.abs(x).max()).astype(np.float32)


# --- step 1: audio-separator's networks (run in its venv) -------------------------------------------

def reference(out: Path, frames: int) -> None:
    import torch
    from audio_separator.separator.uvr_lib_v5.roformer.bs_roformer import BSRoformer
    from audio_separator.separator.uvr_lib_v5.roformer.mel_band_roformer import MelBandRoformer

    torch.set_num_threads(2)
    for i, variant in enumerate(variants(frames)):
        data = config_data(variant)
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in data["model"].items()}
        cls = BSRoformer if "freqs_per_bands" in model else MelBandRoformer
        accepted = set(inspect.signature(cls.__init__).parameters)
        net = cls(**{k: v for k, v in model.items() if k in accepted}).eval()
        generator = torch.Generator().manual_seed(SEED + i)
        with torch.no_grad():
            for p in net.parameters():  # every parameter, gammas and rotary freqs too: nothing left at its init
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=generator)).add_(
                    0.02 * torch.randn(p.shape, generator=generator))
        folder = out / str(i)
        folder.mkdir(parents=True)
        torch.save(net.state_dict(), folder / "model.ckpt")
        (folder / "config.json").write_text(json.dumps(data))
        channels = 2 if model.get("stereo") else 1
        audio = torch.from_numpy(pink(channels, variant["chunk"], SEED + i))[None]
        seen = {}
        stft, istft = torch.stft, torch.istft

        def spy_stft(*args, **kwargs):
            seen["spec"] = stft(*args, **kwargs)
            return seen["spec"]

        def spy_istft(spec, *args, **kwargs):
            seen["masked"] = spec
            return istft(spec, *args, **kwargs)

        torch.stft, torch.istft = spy_stft, spy_istft
        try:
            start = time.perf_counter()
            with torch.no_grad():
                net(audio)
            seconds = time.perf_counter() - start
        finally:
            torch.stft, torch.istft = stft, istft
        spec = seen["spec"].reshape(1, channels, *seen["spec"].shape[-2:])  # [(b s), f, t] -> [b, s, f, t]
        masked = seen["masked"].reshape(1, -1, channels, *seen["masked"].shape[-2:])  # [(b n s), f, t]
        np.save(folder / "spec.npy", torch.view_as_real(spec).numpy())
        np.save(folder / "masked.npy", masked.numpy())
        if hasattr(net, "freq_indices"):
            np.save(folder / "freq_indices.npy", net.freq_indices.numpy())
            np.save(folder / "num_bands_per_freq.npy", net.num_bands_per_freq.numpy())
        (folder / "seconds.txt").write_text(f"{seconds:.2f}")
        print(f"reference {variant['name']}: {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters, "
              f"forward {seconds:.1f} s", flush=True)


# --- step 2: stembridge's networks (system python) -------------------------------------------------

def compare(work: Path, frames: int) -> list[dict]:
    sys.path.insert(0, str(REPO))
    import onnxruntime as ort
    import torch
    import yaml

    from bridge.importers.roformer import build_network, export_onnx, read_state_dict, snr_db
    from bridge.importers.roformer_config import parse_config

    rows = []
    for i, variant in enumerate(variants(frames)):
        folder = work / str(i)
        data = json.loads((folder / "config.json").read_text())
        config_file = folder / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        cfg = parse_config(data, source=str(config_file))
        state = read_state_dict(folder / "model.ckpt")
        net = build_network(cfg, state, source=str(folder / "model.ckpt"))  # strict: every key, every shape
        spec = np.load(folder / "spec.npy")
        assert spec.shape == (1, cfg.audio_channels, cfg.bins, cfg.dim_t, 2), spec.shape
        onnx_path = folder / "model.onnx"
        start = time.perf_counter()
        export_onnx(net, onnx_path)
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        mask = session.run(None, {session.get_inputs()[0].name: spec})[0]
        ort_s = time.perf_counter() - start
        with torch.no_grad():
            mask_torch = net(torch.from_numpy(spec)).numpy()
        spec_c = spec[..., 0].astype(np.float64) + 1j * spec[..., 1]
        mask_c = mask[..., 0].astype(np.float64) + 1j * mask[..., 1]
        mine = spec_c[:, None] * mask_c  # [b, n, s, f, t]
        theirs = np.load(folder / "masked.npy").astype(np.complex128)
        their_mask = theirs / spec_c[:, None]

        def complex_snr(ref, est):
            return snr_db(np.stack([ref.real, ref.imag]), np.stack([est.real, est.imag]))

        row = {"variant": variant["name"], "architecture": cfg.architecture, "keys": len(state),
               "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
               "frames": cfg.dim_t, "outputs": cfg.num_stems, "gates": any(".to_gates." in k for k in state),
               "masked_spec_snr_db": round(complex_snr(theirs, mine), 1),
               "mask_snr_db": round(complex_snr(their_mask, mask_c), 1),
               "torch_vs_onnx_db": round(snr_db(mask_torch, mask), 1),
               "reference_forward_s": float((folder / "seconds.txt").read_text()),
               "export_s": round(export_s, 1), "onnx_run_s": round(ort_s, 1)}
        if (folder / "freq_indices.npy").is_file():
            row["mel_freq_indices_equal"] = bool(np.array_equal(np.load(folder / "freq_indices.npy"),
                                                                net.band_rows.numpy()))
            counts = np.repeat(np.load(folder / "num_bands_per_freq.npy"), cfg.audio_channels)
            row["mel_bands_per_freq_equal"] = bool(np.array_equal(counts, net.mask_count.numpy()))
        rows.append(row)
        print(json.dumps(row), flush=True)
        onnx_path.unlink()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default="/work/venvs/audiosep", help="python-audio-separator's venv")
    parser.add_argument("--frames", type=int, default=101, help="STFT frames per chunk for the published configs")
    parser.add_argument("--reference", metavar="DIR", help=argparse.SUPPRESS)  # step 1, inside the venv
    parser.add_argument("--min-db", type=float, default=80.0, help="least SNR accepted (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.reference:
        reference(Path(args.reference), args.frames)
        return 0
    with tempfile.TemporaryDirectory(prefix="roformer-parity-") as scratch:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run([str(Path(args.venv) / "bin" / "python"), __file__, "--reference", scratch,
                        "--frames", str(args.frames)], check=True, env=env)
        rows = compare(Path(scratch), args.frames)
    worst = min(min(r["masked_spec_snr_db"], r["mask_snr_db"]) for r in rows)
    print(f"worst SNR against audio-separator: {worst:.1f} dB (needed {args.min_db:.0f})")
    return 0 if worst >= args.min_db else 1


if __name__ == "__main__":
    sys.exit(main())
