"""The mask family's opt-in multichannel Wiener filter (``wiener=N``): sums, streaming, effect, errors."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import yaml
from conftest import assert_streaming_equals_one_pass, noise
from onnx import TensorProto, helper, numpy_helper

from bridge import ModelError, PresetError, load_separator
from bridge.cli import main
from bridge.separation.spectral import Stft
from bridge.separation.models import MAX_WIENER
from bridge.preset.session import parse

# The oracle model's geometry: every bin modelled, one chunk of hop * (dim_t - 1) samples.
N_FFT, HOP, DIM_T, BINS = 256, 64, 64, 129
CHUNK = HOP * (DIM_T - 1)


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


@pytest.mark.parametrize("wiener", [1, 3])
@pytest.mark.parametrize("sample_rate, channels", [(44100, 2), (16000, 1)])
def test_stems_sum_to_the_mix_and_silence_stays_silent(panned_model, rng, wiener, sample_rate, channels):
    separator = load_separator(panned_model, wiener=wiener)
    x = noise(rng, channels, 23456, level=0.3)
    before = x.copy()
    stems = separator(x, sample_rate)
    np.testing.assert_array_equal(x, before)
    for y in stems.values():
        assert y.shape == x.shape and y.dtype == np.float32
    # The residual stem absorbs the filter's regularisation: equal to float32 rounding of the sum.
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)
    silent = separator(np.zeros((channels, 5000), np.float32), sample_rate)
    for y in silent.values():
        assert np.max(np.abs(y)) == 0.0


def test_streaming_equals_one_pass(panned_model, rng):
    separator = load_separator(panned_model, wiener=2, batch_size=3)
    x = noise(rng, 2, 30000, level=0.3)
    assert_streaming_equals_one_pass(separator, x, 44100, rng.integers(1, 4000, 15))


def save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def card(path, **fields):
    fields = dict(name=path.stem, family="mask", file=f"{path.stem}.onnx", sample_rate=44100, n_fft=256, hop=64,
                  bins=64, dim_t=32, stems=["vocals", "accompaniment"], combine="ratio") | fields
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.fixture(scope="module")
def panned_model(tmp_path_factory):
    """Soft masks that differ between the channels: the vocals take 80 % of the left channel's
    magnitude and 30 % of the right's. (mask.yaml's 0/1 split, or any mask that is the same in
    both channels and constant in time, is a fixed point of the filter.)"""
    d = tmp_path_factory.mktemp("wiener")
    shape = ["batch", 2, "frames", 64]
    x = helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vocals", "accompaniment")]
    weight = np.array([0.8, 0.3], np.float32).reshape(1, 2, 1, 1)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(1 - weight, "rest")]
    nodes = [helper.make_node("Mul", ["magnitude", "w"], ["vocals"]),
             helper.make_node("Mul", ["magnitude", "rest"], ["accompaniment"])]
    save(helper.make_graph(nodes, "panned", [x], outs, inits), d / "panned.onnx")
    card(d / "panned-subtract.yaml", file="panned.onnx", combine="subtract")
    return card(d / "panned.yaml")


def test_settings_name_the_filter_for_manifests_and_score_files(panned_model):
    separator = load_separator(panned_model, wiener=2, overlap=0.5)
    assert separator.settings == {"overlap": 0.5, "high_band": "instrumental", "wiener": 2}


def test_subtract_cards_get_the_filter_too(panned_model, rng):
    x = noise(rng, 2, 12000, level=0.3)
    x[1] = 0.6 * x[1] + 0.4 * x[0]
    subtract = panned_model.with_name("panned-subtract.yaml")
    plain = load_separator(subtract)(x, 44100)
    stems = load_separator(subtract, wiener=1)(x, 44100)
    assert sdr_db(plain["vocals"], stems["vocals"]) < 40
    np.testing.assert_allclose(stems["vocals"] + stems["instrumental"], x, atol=1e-6)


@pytest.mark.parametrize("high_band", ["instrumental", "average"])
def test_wiener_changes_the_modelled_bins_and_keeps_the_high_band(panned_model, rng, high_band):
    sr = 44100
    t = np.arange(30000) / sr
    air = 0.2 * np.sin(2 * np.pi * 16000 * t)  # above the model's 64 of 129 bins
    x = noise(rng, 2, t.size, level=0.3) + np.stack([air, 0.5 * air]).astype(np.float32)
    x[1] = 0.6 * x[1] + 0.4 * x[0]  # channels correlated, as music is
    plain = load_separator(panned_model, high_band=high_band)(x, sr)["vocals"]
    wiener = load_separator(panned_model, high_band=high_band, wiener=1)(x, sr)["vocals"]
    change = wiener - plain
    assert sdr_db(plain, wiener) < 40  # the option is not a no-op

    def above(y, hz=14000):  # energy above ``hz``, well clear of the 11 kHz model edge
        spectrum = np.fft.rfft(y.astype(np.float64), axis=1)
        return float(np.sum(np.abs(spectrum[:, np.fft.rfftfreq(y.shape[1], 1 / sr) > hz]) ** 2))

    assert above(change) < 1e-6 * above(x)  # the high band keeps its masks


def oracle_model(tmp_path, magnitudes):
    """A mask model whose two estimates are fixed magnitudes (batch 1, one chunk): an exact oracle split."""
    shape = [1, 2, DIM_T, BINS]
    x = helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vocals", "accompaniment")]
    inits = [numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    inits += [numpy_helper.from_array(m.astype(np.float32), n) for n, m in zip(("a", "b"), magnitudes)]
    nodes = [helper.make_node("Mul", ["magnitude", "zero"], ["nothing"]),  # the input must feed the graph
             helper.make_node("Add", ["nothing", "a"], ["vocals"]),
             helper.make_node("Add", ["nothing", "b"], ["accompaniment"])]
    save(helper.make_graph(nodes, "oracle", [x], outs, inits), tmp_path / "oracle.onnx")
    return card(tmp_path / "oracle.yaml", n_fft=N_FFT, hop=HOP, bins=BINS, dim_t=DIM_T)


def test_with_oracle_magnitudes_the_filter_is_not_worse(tmp_path):
    # Two sources that share every bin but sit at different places in the stereo field, where the
    # spatial covariance is what a per-channel ratio mask cannot use.
    rng = np.random.default_rng(7)
    swell = (0.5 + 0.5 * np.sin(2 * np.pi * np.arange(CHUNK) / 900)) ** 2
    a = 0.2 * rng.standard_normal(CHUNK) * swell
    b = 0.2 * np.convolve(rng.standard_normal(CHUNK + 7), np.ones(8) / 8, "valid")
    vocals = np.stack([0.9 * a, 0.25 * a]).astype(np.float32)
    rest = np.stack([0.3 * b, 0.9 * b]).astype(np.float32)
    mix = vocals + rest
    stft = Stft(N_FFT, HOP)
    oracle = oracle_model(tmp_path, [np.swapaxes(np.abs(stft.forward(s)), -1, -2)[None] for s in (vocals, rest)])
    inner = slice(N_FFT // 2, -N_FFT // 2)  # the chunk edges the runner trims
    scores = []
    for wiener in (0, 1):
        engine = load_separator(oracle, wiener=wiener).engine
        estimate = engine.run(mix[None])["vocals"][0]
        scores.append(sdr_db(vocals[:, inner], estimate[:, inner]))
    assert scores[0] > 10  # the oracle ratio mask already separates well
    assert scores[1] >= scores[0]  # measured: 15.5 -> 18.5 dB


@pytest.mark.parametrize("value", [-1, 1.5, True, "2", MAX_WIENER + 1])
def test_bad_values_are_refused(models_dir, value):
    with pytest.raises(ModelError, match=r"wiener must be a whole number of EM iterations from 0 \(off\)"):
        load_separator(models_dir / "mask.yaml", wiener=value)


@pytest.mark.parametrize("model", ["identity-inst.yaml", "dsp"])
def test_other_families_are_refused(models_dir, model):
    path = "dsp" if model == "dsp" else models_dir / model
    with pytest.raises(ModelError, match="Wiener filtering needs a mask model"):
        load_separator(path, wiener=1)
    load_separator(path, wiener=0)


def test_cli_flag_reports_one_line(models_dir, tmp_path, capsys):
    source = tmp_path / "in.wav"
    import soundfile as sf
    sf.write(source, np.zeros((4000, 2), np.float32), 44100)
    assert main(["separate", str(source), "--model", "dsp", "--wiener", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a mask model" in err[0]
    assert main(["separate", str(source), "--model", str(models_dir / "mask.yaml"), "--wiener", "1", "--quiet",
                 "--out", str(tmp_path / "o")]) == 0


def test_preset_key_round_trips_and_bad_values_name_the_path():
    loaded = parse({"version": 1, "separator": {"model": "default", "wiener": 2}}, source="p.yaml")
    assert loaded.separator.wiener == 2
    assert parse(yaml.safe_load(loaded.to_yaml()), source="p.yaml") == loaded
    assert parse({"version": 1}).separator.wiener == 0
    for value, message in [(-1, "separator.wiener: -1 is out of range [0, 10]"),
                           ("two", "separator.wiener: expected a whole number, got 'two'"),
                           (1.5, "separator.wiener: expected a whole number, got 1.5")]:
        with pytest.raises(PresetError, match=re.escape(f"p.yaml: {message}")):
            parse({"version": 1, "separator": {"wiener": value}}, source="p.yaml")
    with pytest.raises(PresetError, match="separator.wienr: unknown key 'wienr'; did you mean 'wiener'"):
        parse({"version": 1, "separator": {"wienr": 1}}, source="p.yaml")


def test_preset_with_wiener_on_a_non_mask_model_names_the_key(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp, wiener: 1}\n")
    assert main(["preset", "check", str(preset)]) == 2
    assert f"{preset}: separator.wiener: wiener=1: Wiener filtering needs a mask model" in capsys.readouterr().err
    source = tmp_path / "in.wav"
    import soundfile as sf
    sf.write(source, np.zeros((4000, 2), np.float32), 44100)
    assert main(["render", str(preset), str(source), "--out", str(tmp_path / "o")]) == 2
    assert f"{preset}: separator.wiener: wiener=1: Wiener filtering needs a mask model" in capsys.readouterr().err
