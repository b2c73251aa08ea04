"""The roformer family at run time: STFT parity with torch, masks, sums, streaming, cards, CLI.

Tiny models with the importer's interface are built here with onnx.helper (``onnx_models.roformer_model``):
n_fft 256, hop 64, chunks of 2560 samples (41 frames), so a test runs in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_models
import pytest
import soundfile as sf
import yaml
from conftest import REPO, TORCH, assert_streaming_equals_one_pass, need_module, noise

from bridge import ModelError, load_separator
from bridge.audio.buffers import power_db
from bridge.separation.models import load_card
from bridge.separation.roformer import grid
from bridge.separation.spectral import Stft

N_FFT, HOP, CHUNK = 256, 64, 2560
BINS, DIM_T = N_FFT // 2 + 1, CHUNK // HOP + 1


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / error))


def band_noise(rng, channels, samples, sample_rate=44100, low=100.0, high=15000.0):
    spectrum = np.fft.rfft(rng.standard_normal((channels, samples)), axis=1)
    freqs = np.fft.rfftfreq(samples, 1 / sample_rate)
    spectrum[:, (freqs < low) | (freqs > high)] = 0
    return (0.1 * np.fft.irfft(spectrum, n=samples, axis=1)).astype(np.float32)


@pytest.fixture(scope="module")
def rf(tmp_path_factory) -> Path:
    """Cards and models: identity (vocals + residual instrumental), bandstop, context (stereo and mono),
    two-stem without residual, four stems with residual ``other``, static batch 1."""
    d = tmp_path_factory.mktemp("roformer")
    geometry = {"n_fft": N_FFT, "hop": HOP, "chunk_size": CHUNK}
    model = onnx_models.roformer_model(d / "identity.onnx", bins=BINS, dim_t=DIM_T, masks=["identity"])
    onnx_models.roformer_card(d / "identity.yaml", model, **geometry)
    model = onnx_models.roformer_model(d / "bandstop.onnx", bins=BINS, dim_t=DIM_T, masks=[("bandstop", 40, 80)])
    onnx_models.roformer_card(d / "bandstop.yaml", model, **geometry)
    model = onnx_models.roformer_model(d / "context.onnx", bins=BINS, dim_t=None, masks=[("context", 9)])
    onnx_models.roformer_card(d / "context.yaml", model, **geometry)
    model = onnx_models.roformer_model(d / "context-mono.onnx", bins=BINS, dim_t=DIM_T, masks=[("context", 9)],
                                       channels=1)
    onnx_models.roformer_card(d / "context-mono.yaml", model, audio_channels=1, **geometry)
    model = onnx_models.roformer_model(d / "halves.onnx", bins=BINS, dim_t=DIM_T, masks=[0.5, 0.25 + 0.5j])
    onnx_models.roformer_card(d / "halves.yaml", model, residual=None, **geometry)
    model = onnx_models.roformer_model(d / "three.onnx", bins=BINS, dim_t=DIM_T,
                                       masks=[("context", 5), 0.3 - 0.2j, ("bandstop", 0, 30)])
    onnx_models.roformer_card(d / "four.yaml", model, stems=["vocals", "drums", "bass", "other"], residual="other",
                              num_overlap=4, **geometry)
    model = onnx_models.roformer_model(d / "batch1.onnx", bins=BINS, dim_t=DIM_T, masks=[("context", 9)], batch=1)
    onnx_models.roformer_card(d / "batch1.yaml", model, **geometry)
    return d


# --- the transform ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_fft,hop,win_length", [(256, 64, 256), (2048, 441, 2048), (256, 50, 200), (512, 100, 301)])
def test_stft_and_inverse_equal_torch(rng, n_fft, hop, win_length):
    torch = need_module("torch", TORCH)
    x = noise(rng, 3, 20 * hop + 7, level=0.5)
    window = torch.hann_window(win_length)
    expected = torch.stft(torch.from_numpy(x), n_fft, hop, win_length, window=window, center=True,
                          pad_mode="reflect", normalized=False, return_complex=True).numpy()
    stft = Stft(n_fft, hop, win_length)
    spec = stft.forward(x)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(spec, expected, atol=2e-6 * scale, rtol=0)  # float32 FFT rounding
    # Any complex spectrogram (not only a consistent one): a mask times the mix.
    mask = (rng.standard_normal(spec.shape) + 1j * rng.standard_normal(spec.shape)).astype(np.complex64)
    masked = mask * spec
    length = x.shape[1]
    back = torch.istft(torch.from_numpy(masked), n_fft, hop, win_length, window=window, center=True,
                       normalized=False, length=length).numpy()
    ours = stft.inverse(masked, length)
    np.testing.assert_allclose(ours, back, atol=2e-6 * np.max(np.abs(back)), rtol=0)
    np.testing.assert_allclose(stft.inverse(spec, length), x, atol=2e-6)  # round trip


def test_fft_threads_share_out_frames_without_changing_a_bit(rng):
    """The engines hand the STFT their thread count; each frame is still one transform, so a
    two-thread forward and inverse equal the one-thread ones bit for bit (and torch, above)."""
    x = noise(rng, 4, 300 * 1024 + 5, level=0.5).reshape(2, 2, -1)
    one, two = Stft(6144, 1024, workers=1), Stft(6144, 1024, workers=2)
    spec = one.forward(x)
    assert np.array_equal(two.forward(x), spec)
    assert np.array_equal(two.inverse(spec * np.complex64(0.5 - 0.25j), x.shape[-1]),
                          one.inverse(spec * np.complex64(0.5 - 0.25j), x.shape[-1]))
    assert load_separator("default", threads=2).engine.stft.workers == 2  # the embedded model's engine


def test_engine_chunk_equals_the_torch_pipeline(rf, rng):
    """One chunk through the engine = torch.stft -> complex masks -> torch.istft, as the importer's
    parity check runs the original model."""
    torch = need_module("torch", TORCH)
    engine = load_separator(rf / "halves.yaml").engine
    chunks = noise(rng, 3, CHUNK * 2, level=0.3).reshape(3, 2, CHUNK)
    out = engine.run(chunks)
    window = torch.hann_window(N_FFT)
    spec = torch.stft(torch.from_numpy(chunks.reshape(6, CHUNK)), N_FFT, HOP, N_FFT, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    for stem, mask in (("vocals", 0.5), ("instrumental", 0.25 + 0.5j)):
        expected = torch.istft(spec * mask, N_FFT, HOP, N_FFT, window=window, center=True, length=CHUNK)
        np.testing.assert_allclose(out[stem], expected.numpy().reshape(3, 2, CHUNK), atol=2e-6)


# --- separation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 20 * CHUNK + 5])
@pytest.mark.parametrize("channels", [1, 2])
def test_identity_mask_gives_the_mix_at_every_length(rf, rng, samples, channels):
    separator = load_separator(rf / "identity.yaml", batch_size=3)
    x = band_noise(rng, channels, samples) if samples > 1000 else noise(rng, channels, samples)
    stems = separator(x, 44100)
    assert set(stems) == {"vocals", "instrumental"}
    for y in stems.values():
        assert y.shape == x.shape and y.dtype == np.float32
    assert snr_db(x, stems["vocals"]) > 80  # chunking, padding and the STFT round trip are exact
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


@pytest.mark.parametrize("sample_rate", [8000, 11025, 22050, 32000, 48000, 96000])
def test_identity_mask_gives_the_mix_at_any_rate(rf, rng, sample_rate):
    separator = load_separator(rf / "identity.yaml")
    x = band_noise(rng, 2, int(sample_rate * 0.5), sample_rate=sample_rate, high=0.4 * min(sample_rate, 44100))
    # Fade in and out over 10 ms: a step from silence rings in any resampler's filter (~50 dB here).
    fade = np.sin(0.5 * np.pi * np.arange(sample_rate // 100) / (sample_rate // 100)) ** 2
    x[:, :fade.size] *= fade
    x[:, -fade.size:] *= fade[::-1]
    stems = separator(x, sample_rate)
    assert stems["vocals"].shape == x.shape
    assert snr_db(x, stems["vocals"]) > 80  # soxr's round trip to 44.1 kHz and back, in band
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


def test_bandstop_mask_separates_low_from_high(rf):
    sr = 44100
    t = np.arange(sr) / sr
    low = 0.3 * np.sin(2 * np.pi * (10 * sr / N_FFT) * t)  # bin 10: passed
    high = 0.2 * np.sin(2 * np.pi * (60 * sr / N_FFT) * t)  # bin 60: inside the stop band [40, 80)
    x = np.stack([low + high, low - high]).astype(np.float32)
    stems = load_separator(rf / "bandstop.yaml")(x, sr)
    edge = N_FFT  # the tones start and stop with a click, a broadband transient the mask splits
    inner = slice(edge, -edge)
    assert snr_db(np.stack([low, low])[:, inner], stems["vocals"][:, inner]) > 60
    assert snr_db(np.stack([high, -high])[:, inner], stems["instrumental"][:, inner]) > 60


def test_stems_sum_to_the_mix_with_a_residual(rf, rng):
    x = noise(rng, 2, 5 * CHUNK + 3, level=0.3)
    stems = load_separator(rf / "four.yaml", batch_size=2)(x, 48000)
    assert list(stems) == ["vocals", "drums", "bass", "other"]
    # Every model stem at its measured level relative to the mix (context, constant 0.3-0.2j and bandstop
    # masks: -6.0, -9.5, -1.8 dB), within 1 dB.
    for stem, level in (("vocals", -6.0), ("drums", -9.5), ("bass", -1.8)):
        assert power_db(stems[stem]) - power_db(x) == pytest.approx(level, abs=1.0), stem
    np.testing.assert_allclose(sum(stems.values()), x, atol=1e-6)


def test_without_a_residual_the_stems_are_the_models(rf, rng):
    x = band_noise(rng, 2, 3 * CHUNK + 17)
    separator = load_separator(rf / "halves.yaml")
    assert separator.engine.residual_stem is None
    stems = separator(x, 44100)
    assert list(stems) == ["vocals", "instrumental"]
    assert snr_db(0.5 * x, stems["vocals"]) > 80
    # A constant complex mask c is a*x - b*H(x) (H: the Hilbert transform): equal energy, not x/4.
    assert abs(power_db(stems["instrumental"]) - power_db(np.abs(0.25 + 0.5j) * x)) < 0.1
    assert snr_db(x, stems["vocals"] + stems["instrumental"]) < 20  # nothing forces a sum


@pytest.mark.parametrize("model", ["context", "four", "context-mono"])
def test_streaming_equals_one_pass(rf, rng, model):
    separator = load_separator(rf / f"{model}.yaml", batch_size=2)
    x = noise(rng, 2, 7 * CHUNK + 11, level=0.3)
    assert_streaming_equals_one_pass(separator, x, 44100, rng.integers(1, 3000, 30))


def test_callers_array_untouched_and_silence_stays_silent(rf, rng):
    separator = load_separator(rf / "context.yaml")
    x = noise(rng, 2, 2 * CHUNK)
    before = x.copy()
    separator(x, 44100)
    np.testing.assert_array_equal(x, before)
    for y in separator(np.zeros((2, 2 * CHUNK), np.float32), 44100).values():
        assert np.max(np.abs(y)) == 0.0


def test_mono_model_runs_each_channel_alone(rf, rng):
    separator = load_separator(rf / "context-mono.yaml", batch_size=2)
    x = noise(rng, 2, 4 * CHUNK, level=0.3)
    x[1] *= np.linspace(0, 3, x.shape[1], dtype=np.float32)  # channels differ
    stereo = separator(x, 44100)
    for channel in (0, 1):
        alone = separator(x[channel:channel + 1], 44100)
        np.testing.assert_allclose(stereo["vocals"][channel], alone["vocals"][0], atol=1e-6)
    # A stereo model whose mask reads both channels' power does couple them: the test can tell.
    coupled = load_separator(rf / "context.yaml")(x, 44100)
    assert snr_db(stereo["vocals"], coupled["vocals"]) < 40


def test_static_batch_of_one_takes_any_batch_size(rf, rng):
    x = noise(rng, 2, 6 * CHUNK, level=0.3)
    one = load_separator(rf / "batch1.yaml", batch_size=4)(x, 44100)
    dynamic = load_separator(rf / "context.yaml", batch_size=4)(x, 44100)
    np.testing.assert_allclose(one["vocals"], dynamic["vocals"], atol=1e-6)


def test_default_grid_steps_as_the_reference_does(rf):
    for name, overlap in (("identity", 2), ("four", 4)):
        separator = load_separator(rf / f"{name}.yaml")
        card = separator.engine.card
        assert card.num_overlap == overlap
        assert separator.plan.step == CHUNK // overlap  # network calls per minute: the reference's
        assert separator.plan.trim == min(CHUNK // 10, (CHUNK - CHUNK // overlap) // 2)
    card = load_card(rf / "identity.yaml")
    assert grid(dataclasses.replace(card, num_overlap=1)) == (0, 0.0)  # no room to trim: chunks abut
    assert load_separator(rf / "identity.yaml", overlap=0.5).plan.overlap == 0.5  # --overlap still wins


# --- cards and models that disagree ---------------------------------------------------------------

def _card(rf: Path, tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((rf / "identity.yaml").read_text())
    data["file"] = str(rf / "identity.onnx")
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes,message", [
    ({"dim_t": DIM_T + 1}, rf"dim_t {DIM_T + 1} does not match chunk_size {CHUNK} and hop {HOP}"),
    ({"residual": "drums"}, r"residual 'drums' is not among the stems \['vocals', 'instrumental'\]"),
    ({"residual": ...}, r"a roformer card needs 'residual'"),
    ({"architecture": "bs_roformr"}, (r"architecture 'bs_roformr' is not one of bs_roformer, mel_band_roformer; "
                                      r"did you mean 'bs_roformer'")),
    ({"win_length": 512}, r"win_length 512 is longer than n_fft 256"),
    ({"audio_channels": 3}, r"audio_channels must be 1 \(a mono model\) or 2, got 3"),
    ({"num_overlap": 0}, r"num_overlap must be a positive whole number, got 0"),
    ({"chunk_size": 100.5}, r"chunk_size must be a positive whole number"),
    ({"chunk_size": ...}, r"a roformer card needs 'chunk_size'"),
    ({"stems": ["vocals", "Vocals", "instrumental"]}, r"name a stem twice"),
])
def test_bad_cards_are_one_clear_line(rf, tmp_path, changes, message):
    path = _card(rf, tmp_path, **changes)
    with pytest.raises(ModelError, match=message) as info:
        load_card(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_card_and_model_that_disagree_are_refused(rf, tmp_path, rng):
    # bins: the card's n_fft 512 gives 257 bins, the model takes 129.
    card = _card(rf, tmp_path, n_fft=512, hop=128, win_length=512, dim_t=CHUNK // 128 + 1)
    with pytest.raises(ModelError, match=r"input shape is \['batch', 2, 129, 41, 2\], but its card .* says input "
                                         r"\[batch, audio_channels=2, n_fft/2\+1=257, dim_t=21, 2\]"):
        load_separator(card)
    # stems: the card says two model stems (no residual), the model gives one.
    with pytest.raises(ModelError, match=r"output shape is \['batch', 1, 2, 129, 41, 2\], but .* output "
                                         r"\[batch, stems=2,"):
        load_separator(_card(rf, tmp_path, residual=None))
    with pytest.raises(ModelError, match=r"audio_channels=1"):
        load_separator(_card(rf, tmp_path, audio_channels=1))
    extra = onnx_models.roformer_model(tmp_path / "extra.onnx", bins=BINS, dim_t=DIM_T, masks=["identity"],
                                       extra_output=True)
    card = onnx_models.roformer_card(tmp_path / "extra.yaml", extra, n_fft=N_FFT, hop=HOP, chunk_size=CHUNK)
    with pytest.raises(ModelError, match=r"one input and one output, this one has \['stft'\] and \['masks', 'extra'\]"):
        load_separator(card)


def test_missing_or_corrupt_model_file(rf, tmp_path):
    with pytest.raises(ModelError, match=r"nowhere\.onnx: the model file of 'identity' is missing"):
        load_separator(_card(rf, tmp_path, file=str(tmp_path / "nowhere.onnx")))
    with pytest.raises(ModelError, match=r"corrupt or truncated \(sha256 .*expects 000000000000"):
        load_separator(_card(rf, tmp_path, sha256="0" * 64))


def test_card_keeps_the_import_record_and_stays_hashable(rf):
    card = load_card(rf / "four.yaml")
    assert card.imported == {"checkpoint": "tiny.ckpt", "parity_db": 120.5, "config": {"dim": 8}}
    assert hash(card) == hash(dataclasses.replace(card, imported={"other": 1}))
    assert card.architecture == "bs_roformer" and card.win_length == N_FFT and card.residual == "other"
    assert "bs_roformer" in card.describe() and "parity 120.5 dB" in card.describe()
    from bridge.render.records import model_identity
    identity = model_identity(load_separator(card))
    assert "imported" not in identity["card"] and identity["settings"]["overlap"] == pytest.approx(1 - 640 / 2048)
    # The identity goes into JSON records as it is: JSON types only (a Path or an object raises TypeError here,
    # where default=str turned anything into a string), and it reads back as the card's values.
    back = json.loads(json.dumps(identity, allow_nan=False))
    assert back["card"]["stems"] == list(card.stems) and back["card"]["sha256"] == card.sha256
    assert back["settings"] == identity["settings"] and back["family"] == identity["family"] == "roformer"


# --- command line ---------------------------------------------------------------------------------

def _cli(*argv, models: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(models)}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], check=False, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.slow
def test_cli_separates_and_renders_with_a_roformer_card(rf, tmp_path, rng):
    song = tmp_path / "song.wav"
    x = band_noise(rng, 2, 3 * CHUNK + 5)
    sf.write(str(song), x.T, 44100, subtype="FLOAT")
    listing = _cli("models", models=rf)
    assert listing.returncode == 0, listing.stderr
    line = next(l for l in listing.stdout.splitlines() if l.strip().startswith("four "))
    assert "roformer" in line and "bs_roformer" in line and "parity 120.5 dB" in line and "num_overlap 4" in line
    for model, out in ((rf / "identity.yaml", "by-path"), ("identity", "by-name")):
        done = _cli("separate", song, "--model", model, "--out", tmp_path / out, "--bit-depth", "32", "--no-cache",
                    models=rf)
        assert done.returncode == 0, done.stderr
        vocals, rate = sf.read(str(tmp_path / out / "song" / "vocals.wav"), dtype="float32")
        assert rate == 44100 and snr_db(x, vocals.T) > 80
    preset = tmp_path / "karaoke.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "identity"},
                                      "stems": {"vocals": {"mute": True}},
                                      "output": {"format": "wav", "bit_depth": 32, "files": {"mix": "{track}.{ext}"}}}))
    done = _cli("render", preset, song, "--out", tmp_path / "rendered", "--no-cache", models=rf)
    assert done.returncode == 0, done.stderr
    mix, _ = sf.read(str(tmp_path / "rendered" / "song.wav"), dtype="float32")
    assert power_db(mix.T) - power_db(x) < -70  # the vocals stem was the whole mix, and it is muted
    cache = tmp_path / "cache"
    for out in ("fresh", "cached"):  # the second render takes the stems from the cache, bit for bit
        done = _cli("render", preset, song, "--out", tmp_path / out, "--cache-dir", cache, models=rf)
        assert done.returncode == 0, done.stderr
    assert "1 from cached stems" in done.stdout
    np.testing.assert_array_equal(sf.read(str(tmp_path / "fresh" / "song.wav"))[0],
                                  sf.read(str(tmp_path / "cached" / "song.wav"))[0])
    bad = _card(rf, tmp_path, dim_t=7)
    failed = _cli("separate", song, "--model", bad, "--out", tmp_path / "bad", models=rf)
    assert failed.returncode != 0
    assert failed.stderr.strip().count("\n") == 0 and "dim_t 7 does not match" in failed.stderr


@pytest.mark.parametrize("overlap", [0.0, 0.375, 0.75])
@pytest.mark.parametrize("samples", [1, 2, 11, 99, 100, 101, 119, 1000, 1001, 5003])
@pytest.mark.parametrize("block", [1, 7, 10_000])
def test_reflect_padded_overlap_add_is_exact_for_identity(rng, overlap, samples, block):
    from bridge.separation.chunking import ChunkPlan, OverlapAdd

    plan = ChunkPlan(chunk=120, trim=10, overlap=overlap, pad="reflect")
    x = noise(rng, 2, samples)
    seen = []

    def run(chunks):
        seen.append(chunks.copy())
        return {"a": chunks}

    ola = OverlapAdd(plan, channels=2, stems=("a",), run=run, batch_size=3)
    parts = [ola.process(x[:, i:i + block]) for i in range(0, samples, block)] + [ola.finish()]
    y = np.concatenate([p["a"] for p in parts], axis=1)
    np.testing.assert_allclose(y, x, atol=1e-6)  # float32 weights, normalised at the song's ends
    assert sum(len(c) for c in seen) == plan.chunks_for(samples)
    if samples > plan.lead:  # the model saw the song mirrored before its start, not zeros
        np.testing.assert_array_equal(seen[0][0, :, :plan.lead], x[:, plan.lead:0:-1])


# --- int8 variants --------------------------------------------------------------------------------

def test_quantize_writes_a_new_int8_model_beside_the_float_one(tmp_path, rng, monkeypatch):
    pytest.importorskip("onnxruntime.quantization")
    folder = tmp_path / "models"
    folder.mkdir()
    model = onnx_models.roformer_like(folder / "like.onnx", bins=BINS, bands=43, dim=32, depth=1, heads=2)
    onnx_models.roformer_card(folder / "like.yaml", model, n_fft=N_FFT, hop=HOP, chunk_size=CHUNK)
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    done = _cli("models", "quantize", "like", models=folder)
    assert done.returncode == 0, done.stderr
    assert "quantized as 'like-int8'" in done.stdout
    card = load_card(folder / "like-int8.yaml")
    assert card.quantized_from["name"] == "like" and card.quantized_from["sha256"] == load_card(folder / "like.yaml").sha256
    assert card.file == (folder / "like-int8.onnx").resolve() and card.imported["parity_db"] == 120.5
    assert not list(folder.glob(".*partial"))
    import onnx
    ops = {n.op_type for n in onnx.load(str(card.file)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    x = noise(rng, 2, 3 * CHUNK, level=0.3)
    exact = load_separator("like")(x, 44100)["vocals"]
    quantized = load_separator("like-int8")(x, 44100)["vocals"]
    assert 15 < snr_db(exact, quantized) < 80  # int8 noise: close, not equal
    from bridge.importers.quantize import quantize_model
    with pytest.raises(ModelError, match="a model named 'like-int8' exists .*--force"):
        quantize_model("like")
    with pytest.raises(ModelError, match="already quantized"):
        quantize_model("like-int8", name="again")
    with pytest.raises(ModelError, match="'dsp' is a dsp model; quantize takes roformer models"):
        quantize_model("dsp")
    assert quantize_model("like", force=True, folder=folder).name == "like-int8"
