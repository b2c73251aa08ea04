"""The separation engine: exact chunking, sums, match-mix, masks, streaming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIM_T, N_FFT, assert_streaming_equals_one_pass, noise

from bridge import AudioError, ModelError, load_separator
from bridge.audio.buffers import power_db
from bridge.separation.chunking import ChunkPlan, OverlapAdd

CHUNK = (N_FFT // 4) * (DIM_T - 1)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    signal = np.sum(reference.astype(np.float64) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(signal / error)


def band_noise(rng, channels, samples, sample_rate=44100, low=200.0, high=15000.0):
    """Noise with nothing below ``low`` Hz or above ``high`` Hz, the band an MDX model sees."""
    spectrum = np.fft.rfft(rng.standard_normal((channels, samples)), axis=1)
    freqs = np.fft.rfftfreq(samples, 1 / sample_rate)
    spectrum[:, (freqs < low) | (freqs > high)] = 0
    return (0.1 * np.fft.irfft(spectrum, n=samples, axis=1)).astype(np.float32)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.75])
@pytest.mark.parametrize("samples", [1, 8, 11, 33, 999, 1000, 1001, 5003])
@pytest.mark.parametrize("block", [1, 7, 10_000])
def test_overlap_add_is_exact_for_identity(rng, overlap, samples, block):
    plan = ChunkPlan(chunk=120, trim=10, overlap=overlap)
    x = noise(rng, 2, samples)
    ola = OverlapAdd(plan, channels=2, stems=("a",), run=lambda c: {"a": c}, batch_size=3)
    parts = [ola.process(x[:, i:i + block]) for i in range(0, samples, block)] + [ola.finish()]
    y = np.concatenate([p["a"] for p in parts], axis=1)
    np.testing.assert_allclose(y, x, atol=1e-6)  # float32 weights summing to 1


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_batches_in_background_threads_give_the_same_samples(rng, depth):
    """With batches running in other threads (finishing out of order: earlier batches sleep
    longer), every sample equals the run with none in flight, and the chunks still reach ``run``
    once each, from threads other than the caller's."""
    import threading
    import time

    plan = ChunkPlan(chunk=120, trim=10, overlap=0.25)
    x = noise(rng, 2, 5003)
    seen, callers = [], set()

    def run(chunks):  # nonlinear and position-dependent, so a misplaced chunk shows
        seen.append(float(chunks[0, 0, 0]))
        callers.add(threading.get_ident())
        time.sleep(0.004 * (len(seen) % 3))
        return {"a": np.tanh(3 * chunks) * np.linspace(0.5, 1.5, chunks.shape[-1], dtype=np.float32)}

    def stems(depth):
        ola = OverlapAdd(plan, channels=2, stems=("a",), run=run, batch_size=2, depth=depth)
        parts = [ola.process(x[:, i:i + 333]) for i in range(0, x.shape[1], 333)] + [ola.finish()]
        return np.concatenate([p["a"] for p in parts], axis=1)

    inline = stems(0)
    calls = len(seen)
    assert callers == {threading.get_ident()}
    seen.clear(), callers.clear()
    assert np.array_equal(stems(depth), inline)
    assert len(seen) == calls and threading.get_ident() not in callers


def test_an_error_in_a_background_batch_reaches_the_caller(rng):
    def run(chunks):
        raise ModelError("the network failed")

    ola = OverlapAdd(ChunkPlan(chunk=120, trim=10, overlap=0.25), channels=2, stems=("a",), run=run, depth=2)
    with pytest.raises(ModelError, match="the network failed"):
        ola.process(noise(rng, 2, 5000))
        ola.finish()


@pytest.mark.parametrize("samples", [1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17,
                                     pytest.param(44100 * 150, marks=pytest.mark.slow)])
def test_identity_primary_equals_mix_at_every_length(models_dir, rng, samples):
    separator = load_separator(models_dir / "identity-inst.yaml", overlap=0.25, batch_size=4)
    x = band_noise(rng, 2, samples) if samples > 1000 else noise(rng, 2, samples)
    stems = separator(x, 44100)
    assert stems["instrumental"].shape == x.shape and stems["instrumental"].dtype == np.float32
    if samples > 1000:
        assert snr_db(x, stems["instrumental"]) > 80  # chunking and padding are exact
    np.testing.assert_allclose(stems["instrumental"] + stems["vocals"], x, atol=1e-6)


def test_match_mix_silences_the_other_stem_where_subtraction_would_not(models_dir, rng):
    x = noise(rng, 2, 44100 * 3)  # white: energy below bin 3 and at Nyquist, which the model never sees
    matched = load_separator(models_dir / "identity-inst.yaml")(x, 44100)
    assert power_db(matched["vocals"]) - power_db(x) < -100
    # With the model predicting vocals, the instrumental is plain subtraction: the cut bins remain.
    plain = load_separator(models_dir / "identity-voc.yaml")(x, 44100)
    assert power_db(plain["instrumental"]) - power_db(x) > -60
    for stems in (matched, plain):
        np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


#: Measured vocals level of the nonlinear model on seeded noise, dB relative to the mix, per sample rate.
VOCALS_DB = {8000: -24.5, 11025: -23.0, 22050: -20.0, 44100: -16.7, 48000: -16.9, 96000: -17.0, 192000: -17.2}


@pytest.mark.parametrize("sample_rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("channels", [1, 2])
def test_stems_sum_to_mix_for_a_nonlinear_model_at_any_rate(models_dir, rng, sample_rate, channels):
    separator = load_separator(models_dir / "nonlinear.yaml", overlap=0.5, batch_size=2)
    x = noise(rng, channels, int(sample_rate * 0.7), level=0.3)
    stems = separator(x, sample_rate)
    assert set(stems) == {"vocals", "instrumental"}
    for y in stems.values():
        assert y.shape == x.shape and y.dtype == np.float32
    # The model's vocals, relative to the mix: measured -24.5 (8 kHz) to -16.7 dB (44.1 kHz), the same for 1 and 2
    # channels (less of the noise's band reaches the model at low rates). Within 2 dB of that: a model that does
    # nothing, or everything, or at a wrong rate, is far outside.
    assert power_db(stems["vocals"]) - power_db(x) == pytest.approx(VOCALS_DB[sample_rate], abs=2.0)
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


def test_lowpass_model_separates_low_from_high(models_dir):
    # Bins below 24 of a 512-point STFT at 44.1 kHz: below 2067 Hz.
    sr = 44100
    t = np.arange(sr * 2) / sr
    low = 0.3 * np.sin(2 * np.pi * 441 * t)
    high = 0.3 * np.sin(2 * np.pi * 6615 * t)
    x = np.stack([low + high, low - high]).astype(np.float32)
    stems = load_separator(models_dir / "lowpass.yaml")(x, sr)
    expected = np.stack([low, low]).astype(np.float32)
    edge = 2048  # the sines start and stop with a click, a broadband transient the mask splits
    assert snr_db(expected[:, edge:-edge], stems["vocals"][:, edge:-edge]) > 50
    assert snr_db((x - expected)[:, edge:-edge], stems["instrumental"][:, edge:-edge]) > 50


def test_mask_family_ratio_masks(models_dir):
    sr = 44100
    t = np.arange(sr * 2) / sr
    low = 0.3 * np.sin(2 * np.pi * 689 * t)  # bin 4 of 256 points, below the cutoff bin 12
    high = 0.3 * np.sin(2 * np.pi * 5168 * t)  # bin 30: modelled, above the cutoff
    air = 0.05 * np.sin(2 * np.pi * 15000 * t)  # above the 64 modelled bins: to the instrumental
    x = np.stack([low + high + air, low + high + air]).astype(np.float32)
    stems = load_separator(models_dir / "mask.yaml")(x, sr)
    edge = 1024
    assert snr_db(np.stack([low, low])[:, edge:-edge], stems["vocals"][:, edge:-edge]) > 40
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


def test_streaming_equals_one_pass(models_dir, rng):
    separator = load_separator(models_dir / "nonlinear.yaml", overlap=0.25, batch_size=3)
    x = noise(rng, 2, 48000 * 2, level=0.3)
    assert_streaming_equals_one_pass(separator, x, 48000, rng.integers(1, 20000, 50))


def test_callers_array_untouched_and_silence_stays_silent(models_dir, rng):
    separator = load_separator(models_dir / "nonlinear.yaml")
    x = noise(rng, 2, 20000)
    before = x.copy()
    separator(x, 44100)
    np.testing.assert_array_equal(x, before)
    silent = separator(np.zeros((2, 20000), np.float32), 44100)
    for y in silent.values():
        assert np.max(np.abs(y)) == 0.0


def test_dsp_fallback_sums_and_finds_the_centre(rng):
    sr = 44100
    t = np.arange(sr * 3) / sr
    centre = 0.2 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    side = noise(rng, 2, t.size, level=0.05)  # uncorrelated between channels
    x = (np.stack([centre, centre]) + side).astype(np.float32)
    stems = load_separator("dsp")(x, sr)
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)
    assert snr_db(np.stack([centre, centre]), stems["vocals"]) > snr_db(np.stack([centre, centre]), x) + 6


def test_bad_buffers_are_refused(models_dir):
    separator = load_separator(models_dir / "identity-inst.yaml")
    with pytest.raises(AudioError, match="mono or stereo"):
        separator(np.zeros((6, 1000), np.float32), 44100)
    bad = np.zeros((2, 1000), np.float32)
    bad[1, 500] = np.nan
    with pytest.raises(AudioError, match="sample 500"):
        separator(bad, 44100)
    with pytest.raises(AudioError, match="channels, samples"):
        separator(np.zeros(1000, np.float32), 44100)
    with pytest.raises(AudioError, match="sample rate"):
        separator(np.zeros((2, 1000), np.float32), 100)


def test_model_errors_are_clear(models_dir, tmp_path):
    import onnx_models
    with pytest.raises(ModelError, match="unknown model 'spleter'"):
        load_separator("spleter")
    wrong = onnx_models.mdx_model(tmp_path / "wrong.onnx", dim_f=128, dim_t=DIM_T)
    card = onnx_models.mdx_card(tmp_path / "wrong.yaml", wrong, n_fft=N_FFT, dim_f=256, dim_t=DIM_T)
    with pytest.raises(ModelError, match=r"input shape .* says \[batch, 4, dim_f=256"):
        load_separator(card)
    lone = onnx_models.mdx_model(tmp_path / "lone.onnx", dim_f=128, dim_t=DIM_T)
    with pytest.raises(ModelError, match="unknown ONNX model .*write a model card"):
        load_separator(lone)
    sealed = onnx_models.mdx_card(tmp_path / "sealed.yaml", wrong, n_fft=N_FFT, dim_f=128, dim_t=DIM_T, sha256="0" * 64)
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_separator(sealed)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model" * 100)
    onnx_models.mdx_card(tmp_path / "garbage.yaml", garbage, n_fft=N_FFT, dim_f=128, dim_t=DIM_T)
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load_separator(tmp_path / "garbage.yaml")


def test_uvr_hash_is_md5_of_the_last_10240000_bytes(tmp_path):
    import hashlib

    from bridge.separation.models import uvr_hash
    small = tmp_path / "small.onnx"
    small.write_bytes(b"abc" * 1000)
    assert uvr_hash(small) == hashlib.md5(small.read_bytes()).hexdigest()
    big = tmp_path / "big.onnx"
    data = np.random.default_rng(1).integers(0, 255, 10_240_000 + 4096, dtype=np.uint8).tobytes()
    big.write_bytes(data)
    assert uvr_hash(big) == hashlib.md5(data[4096:]).hexdigest()


def test_unpacking_a_difference_equals_unpacking_it_after_subtracting():
    """MDX's residual stem is unpacked as ``unpack(x, minus=y)``, subtracting while it copies:
    the spectrogram must equal unpacking ``x - y`` bit for bit (and have the packing's layout:
    the cut bins zero, complex64), and the plain unpack must invert the packing."""
    from bridge.separation.spectral import pack_mdx, unpack_mdx

    rng = np.random.default_rng(5)
    bins, dim_f, frames = 257, 200, 33
    spec = (rng.standard_normal((2, 2, bins, frames)) + 1j * rng.standard_normal((2, 2, bins, frames))).astype(np.complex64)
    x = pack_mdx(spec, dim_f)
    y = rng.standard_normal(x.shape).astype(np.float32)
    fused = unpack_mdx(x, bins, minus=y)
    plain = unpack_mdx(x - y, bins)
    assert fused.dtype == np.complex64 and fused.shape == (2, 2, bins, frames)
    np.testing.assert_array_equal(fused.real, plain.real)
    np.testing.assert_array_equal(fused.imag, plain.imag)
    assert not fused[:, :, dim_f:].any()
    back = unpack_mdx(x, bins)
    np.testing.assert_array_equal(back[:, :, 3:dim_f], spec[:, :, 3:dim_f])
    assert not back[:, :, :3].any()
