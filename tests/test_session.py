"""Sessions: presets, the render graph (pre -> split -> stem stage -> bus -> master), rendering.

The separator here is the weight-free fallback: its stems sum to the mix, which is what the
identities below need. Real music: the demo excerpt in examples/ (CC BY, always in the repo).
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pedalboard
import pyloudnorm
import pytest
import yaml

from bridge.audio import files
from bridge.audio.buffers import resample
from bridge.cli import main as cli
from bridge.errors import PluginError, PresetError
from bridge.render.graph import RenderGraph, StemSplit
from bridge.render.mixer import StreamChain, fold_down, gain_curve, pan_gains
from bridge.render.records import file_sha256
from bridge.render.song import render_file
from bridge.separation import load_separator
from bridge.preset.session import Session, load, parse

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo.flac"
PRESETS = sorted((REPO / "presets").glob("*.yaml"))
SR = 44100


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return 10 * math.log10(np.sum(reference.astype(np.float64) ** 2) / max(error, 1e-30))


@pytest.fixture(scope="module")
def separator():
    return load_separator("dsp")


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    audio, rate = files.read(DEMO)
    assert rate == SR
    return audio[:, : 6 * SR]


@pytest.fixture(scope="module")
def stems(separator, song):
    return separator(song, SR)


def split(separator, **kwargs) -> StemSplit:
    return StemSplit(separator, **kwargs)


def session(**top) -> Session:
    return parse({"version": 1, **top}, source="test.yaml")


# --- the mixing identities -----------------------------------------------------------------------

def test_unity_render_equals_input(separator, song):
    out = split(separator)(song, SR)
    assert out.shape == song.shape
    assert snr_db(song, out) > 100  # float32 rounding of a separation round trip


def test_muting_one_stem_gives_the_other(separator, song, stems):
    out = split(separator, mute={"vocals"})(song, SR)
    np.testing.assert_allclose(out, stems["instrumental"], atol=1e-6)
    out = split(separator, solo={"vocals"})(song, SR)
    np.testing.assert_allclose(out, stems["vocals"], atol=1e-6)


def test_minus_6_02_db_on_every_stem_halves_the_output(separator, song):
    out = split(separator, gain_db={"vocals": -6.0206, "instrumental": -6.0206})(song, SR)
    np.testing.assert_allclose(out, 0.5 * song, atol=1e-6)


def test_polarity_invert_on_every_stem_negates(separator, song):
    out = split(separator, invert={"vocals", "instrumental"})(song, SR)
    np.testing.assert_allclose(out, -song, atol=1e-6)


@pytest.mark.parametrize("pan", [-1.0, -0.5, 0.0, 0.3, 1.0])
def test_pan_law_is_constant_power_and_unity_at_centre(pan):
    left, right = pan_gains(pan)
    assert left ** 2 + right ** 2 == pytest.approx(2.0, abs=1e-12)
    if pan == 0.0:
        assert (left, right) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_hard_pan_moves_a_stem_to_one_side(separator, song, stems):
    out = split(separator, pan={"vocals": 1.0, "instrumental": 1.0})(song, SR)
    assert np.max(np.abs(out[0])) < 1e-6
    np.testing.assert_allclose(out[1], math.sqrt(2) * song[1], atol=1e-5)


def test_gain_automation_interpolates_in_db():
    curve = gain_curve(((0.0, 0.0), (1.0, -20.0)), 0, 44101, SR)
    assert 20 * math.log10(curve[22050]) == pytest.approx(-10.0, abs=1e-3)
    assert 20 * math.log10(curve[-1]) == pytest.approx(-20.0, abs=1e-4)


def test_automation_starts_where_the_last_block_ended(separator, song):
    """Streaming in blocks applies the same curve as one call."""
    automation = {"vocals": [(0.0, 0.0), (5.0, -30.0)], "instrumental": [(1.0, 0.0), (2.0, 6.0)]}
    whole = split(separator, gain_db=automation)(song, SR)
    graph = split(separator, gain_db=automation).graph
    stream = graph.stream(sample_rate=SR, channels=2)
    parts = [stream.process(song[:, i:i + 30000])[0] for i in range(0, song.shape[1], 30000)]
    parts.append(stream.finish()[0])
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-6)


def test_chains_stream_in_blocks_as_they_run_whole(separator, song):
    def chains():
        return {"vocals": [pedalboard.Compressor(threshold_db=-20, ratio=4), pedalboard.Reverb(room_size=0.7)],
                "instrumental": [pedalboard.Chorus()]}
    whole = split(separator, chains=chains(), tail_seconds=1.0)(song, SR)
    graph = split(separator, chains=chains(), tail_seconds=1.0).graph
    stream = graph.stream(sample_rate=SR, channels=2)
    parts = [stream.process(song[:, i:i + 12345])[0] for i in range(0, song.shape[1], 12345)]
    parts.append(stream.finish()[0])
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


def test_stream_chain_matches_one_call_whatever_the_block_sizes(rng):
    """pedalboard clears a plugin's state when a call brings a larger block; StreamChain must not let it."""
    x = (0.1 * rng.standard_normal((2, 3 * SR))).astype(np.float32)
    whole = pedalboard.Pedalboard([pedalboard.Reverb(room_size=0.8), pedalboard.Delay(delay_seconds=0.05)])(x, SR)
    chain = StreamChain(pedalboard.Pedalboard([pedalboard.Reverb(room_size=0.8), pedalboard.Delay(delay_seconds=0.05)]),
                        sample_rate=SR, channels=2)
    cuts = [0, 1000, 4000, 6000, 14000, 14500, 40000, 90000, x.shape[1]]
    parts = [chain.process(x[:, a:b], last=b == x.shape[1]) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


def test_reverb_tail_is_not_cut(separator, song):
    reverb = {"vocals": [pedalboard.Reverb(room_size=0.9, wet_level=0.5)]}
    out = split(separator, chains=reverb, tail_seconds=2.0)(song, SR)
    assert out.shape[1] == song.shape[1] + 2 * SR
    tail = out[:, song.shape[1] + SR // 10: song.shape[1] + SR // 2]
    # Still ringing 0.1-0.5 s after the end: measured -13.4 dBFS RMS there; 3 dB under that.
    assert 20 * math.log10(np.sqrt(np.mean(tail ** 2))) > -16.4


def test_mono_input_renders_a_stereo_mix(separator, song):
    mono = song.mean(axis=0, keepdims=True)
    out = split(separator)(mono, SR)
    assert out.shape == (2, mono.shape[1])
    np.testing.assert_allclose(out, np.repeat(mono, 2, axis=0), atol=1e-5)


def test_the_5_1_fold_down_gives_back_the_stereo_mix(separator, song):
    out = split(separator, layout="5.1")(song, SR)
    assert out.shape == (6, song.shape[1])
    assert snr_db(song, fold_down(out)) > 100
    vocals_only = split(separator, layout="5.1", solo={"vocals"})(song, SR)
    centre, sides = vocals_only[2], vocals_only[:2]
    assert np.sum(centre ** 2) > 10 * np.sum(sides ** 2)  # the (centred) vocals go to C


def test_bass_role_feeds_the_lfe_with_lows_only(separator, rng):
    t = np.arange(3 * SR) / SR
    tones = np.stack([0.3 * np.sin(2 * np.pi * 60 * t) + 0.3 * np.sin(2 * np.pi * 2000 * t)] * 2).astype(np.float32)
    graph = RenderGraph(session(stems={"instrumental": {"upmix": "bass"}}, output={"layout": "5.1", "tail_seconds": 0}),
                        separator)
    stream = graph.stream(sample_rate=SR, channels=2)
    first, second = stream.process(tones), stream.finish()
    lfe = np.concatenate([first[0], second[0]], axis=1)[3, SR:]
    spectrum = np.abs(np.fft.rfft(lfe))
    freqs = np.fft.rfftfreq(lfe.size, 1 / SR)
    assert spectrum[np.argmin(np.abs(freqs - 60))] > 100 * spectrum[np.argmin(np.abs(freqs - 2000))]


# --- presets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_round_trip(preset):
    loaded = load(preset)
    again = parse(yaml.safe_load(loaded.to_yaml()), source=loaded.source, base=preset.parent)
    assert again == loaded


def test_overrides_set_values_by_path(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nstems: {vocals: {gain_db: 0}}\n")
    loaded = load(preset, overrides=["stems.vocals.gain_db=6", "output.format=flac", "stems.instrumental.mute=true"])
    assert loaded.stem("vocals").gain_db == 6.0 and loaded.output.format == "flac"
    assert loaded.stem("instrumental").mute is True


@pytest.mark.parametrize("data, where, hint", [
    ({"version": 1, "stems": {"vocals": {"gian_db": 3}}}, "stems.vocals.gian_db", "did you mean 'gain_db'"),
    ({"version": 1, "outptu": {}}, "outptu", "did you mean 'output'"),
    ({"version": 1, "stems": {"vocals": {"pan": 2}}}, "stems.vocals.pan", "out of range"),
    ({"version": 1, "stems": {"vocals": {"mute": "yes"}}}, "stems.vocals.mute", "true or false"),
    ({"version": 1, "stems": {"vocals": {"chain": [{"effect": "Reverbb"}]}}}, "stems.vocals.chain[0]", "did you mean 'Reverb'"),
    ({"version": 1, "pre": [{"effect": "Reverb", "room": 1}]}, "pre[0]", "did you mean 'room_size'"),
    ({"version": 1, "pre": [{"effect": "Reverb", "wet_level": "a"}]}, "pre[0].wet_level", "expected a number"),
    ({"version": 1, "pre": [{"effect": "LowpassFilter", "cutoff_frequency_hz": -100}]}, "pre[0].cutoff_frequency_hz",
     "out of range"),
    ({"version": 1, "master": [{"effect": "Gain", "gain_db": "1e9"}]}, "master[0].gain_db", "write 1.0e+9"),
    ({"version": 1, "output": {"layout": "7.1"}}, "output.layout", "stereo, 5.1"),
    ({"version": 1, "output": {"format": "flac", "bit_depth": 32}}, "output.bit_depth", "24"),
    ({"version": 1, "output": {"files": {"mix": "../{track}.{ext}"}}}, "output.files.mix", "inside the output folder"),
    ({"version": 1, "output": {"files": {"mix": "/tmp/{track}.{ext}"}}}, "output.files.mix", "relative"),
    ({"version": 1, "stems": {"vocals": {"gain_db": [[1, 0], [0, 3]]}}}, "stems.vocals.gain_db", "must increase"),
    ({"version": 2}, "version", "expected 1"),
    ([1, 2], "", "YAML mapping"),
])
def test_preset_errors_name_the_path_and_the_fix(data, where, hint):
    with pytest.raises(PresetError) as caught:
        parse(data, source="my.yaml")
    message = str(caught.value)
    assert message.startswith("my.yaml: ")
    assert where in message and hint in message


def test_unknown_stem_for_the_model_is_an_error(separator):
    with pytest.raises(PresetError, match="stems.drums: the model gives no stem 'drums'; it gives vocals, instrumental"):
        RenderGraph(session(stems={"drums": {"gain_db": 1}}), separator)


def test_missing_vst3_plugin_is_an_error_naming_the_path(tmp_path, separator):
    graph = RenderGraph(session(stems={"vocals": {"chain": [{"vst3": "nowhere/Gone.vst3"}]}}), separator)
    with pytest.raises(PluginError, match=r"stems\.vocals\.chain\[0\]: VST3 plugin .*Gone\.vst3 does not exist"):
        graph.check()
    not_a_plugin = tmp_path / "Fake.vst3"
    not_a_plugin.write_text("not a plugin")
    graph = RenderGraph(session(stems={"vocals": {"chain": [{"vst3": str(not_a_plugin)}]}}), separator)
    with pytest.raises(PluginError, match="could not be loaded as a VST3 plugin"):
        graph.check()


def test_yaml_bombs_and_deep_nesting_are_refused(tmp_path):
    bomb = "version: 1\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join(f"*{chr(96 + i)}" for _ in range(10)) + "]\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    with pytest.raises(PresetError, match="bomb.yaml"):
        load(path)
    path.write_text("version: 1\nstems: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PresetError, match="bomb.yaml"):
        load(path)


# --- rendering files ----------------------------------------------------------------------------

def render(tmp_path, separator, **top) -> dict[str, Path]:
    return render_file(DEMO, RenderGraph(session(**top), separator), tmp_path / "out")


def test_render_of_a_unity_session_equals_the_input_file(tmp_path, separator):
    written = render(tmp_path, separator, output={"bit_depth": 32, "tail_seconds": 0,
                                                  "files": {"mix": "{track}.{ext}", "stems": "{track}/{stem}.{ext}"}})
    source, _ = files.read(DEMO)
    mix, rate = files.read(written["mix"])
    assert rate == SR and snr_db(source, mix) > 100
    vocals, _ = files.read(written["vocals"])
    instrumental, _ = files.read(written["instrumental"])
    assert snr_db(source, vocals + instrumental) > 100  # the stems sum to the mix


def test_manifest_records_input_preset_model_and_outputs(tmp_path, separator):
    written = render(tmp_path, separator, stems={"vocals": {"gain_db": -2}})
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["input"]["sha256"] == file_sha256(DEMO)
    assert manifest["preset"]["session"]["stems"]["vocals"]["gain_db"] == -2.0
    assert manifest["model"]["name"] == "dsp"
    assert manifest["model"]["settings"] == {"overlap": separator.plan.overlap}
    assert set(manifest["versions"]) >= {"stembridge", "numpy", "onnxruntime", "pedalboard"}
    mix = manifest["outputs"]["mix"]
    audio, _ = files.read(written["mix"])
    assert mix["frames"] == audio.shape[1] == 20 * SR + 2 * SR  # the 2 s default tail
    assert mix["peak_dbfs"] == pytest.approx(20 * math.log10(np.max(np.abs(audio))), abs=0.01)
    reference = pyloudnorm.Meter(SR).integrated_loudness(audio.T.astype(np.float64))
    assert mix["loudness_lufs"] == pytest.approx(reference, abs=0.05)


def test_loudness_target_is_met_under_the_true_peak_ceiling(tmp_path, separator):
    written = render(tmp_path, separator, output={"loudness_lufs": -20.0, "true_peak_db": -1.0, "bit_depth": 32,
                                                  "files": {"mix": "{track}.{ext}", "stems": "{track}/{stem}.{ext}"}})
    mix, _ = files.read(written["mix"])
    assert pyloudnorm.Meter(SR).integrated_loudness(mix.T.astype(np.float64)) == pytest.approx(-20.0, abs=0.05)
    vocals, _ = files.read(written["vocals"])
    instrumental, _ = files.read(written["instrumental"])
    assert snr_db(mix, vocals + instrumental) > 100  # one gain for every output keeps the sum


def test_true_peak_ceiling_wins_over_a_loud_target(tmp_path, separator):
    written = render(tmp_path, separator, output={"loudness_lufs": -3.0, "true_peak_db": -2.0})
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["outputs"]["mix"]["true_peak_dbtp"] == pytest.approx(-2.0, abs=0.01)
    assert manifest["outputs"]["mix"]["loudness_lufs"] < -3.5
    assert manifest["outputs"]["mix"]["clipped_samples"] == 0


def test_clipping_is_reported_not_silent(tmp_path, separator, capsys):
    preset = tmp_path / "hot.yaml"
    preset.write_text("version: 1\nstems: {vocals: {gain_db: 24}, instrumental: {gain_db: 24}}\n")
    assert cli(["render", str(preset), str(DEMO), "--out", str(tmp_path / "out"), "--set", "separator.model=dsp"]) == 0
    err = capsys.readouterr().err
    assert "samples were over full scale and clipped" in err
    manifest = json.loads((tmp_path / "out" / "demo.remix.manifest.json").read_text())
    assert manifest["outputs"]["mix"]["clipped_samples"] > 1000


def test_output_sample_rate_is_converted(tmp_path, separator):
    written = render(tmp_path, separator, output={"sample_rate": 48000, "tail_seconds": 0, "bit_depth": 32})
    audio, rate = files.read(written["mix"])
    source, _ = files.read(DEMO)
    assert rate == 48000 and audio.shape[1] == pytest.approx(source.shape[1] * 48000 / SR, abs=2)
    back = resample(audio, orig_sr=48000, target_sr=SR)
    assert snr_db(source[:, SR:-SR], back[:, SR:source.shape[1] - SR]) > 60


def test_5_1_file_is_extensible_with_mask_0x3f_and_folds_down_to_the_input(tmp_path, separator):
    written = render(tmp_path, separator, output={"layout": "5.1", "bit_depth": 32, "tail_seconds": 0})
    header = written["mix"].read_bytes()[:80]
    fmt = header.index(b"fmt ")
    tag, channels = struct.unpack("<HH", header[fmt + 8: fmt + 12])
    mask = struct.unpack("<I", header[fmt + 28: fmt + 32])[0]
    assert (tag, channels, mask) == (0xFFFE, 6, 0x3F)
    surround, _ = files.read(written["mix"])
    source, _ = files.read(DEMO)
    assert snr_db(source, fold_down(surround)) > 100


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_checks_and_renders_the_demo(preset, tmp_path, capsys):
    assert cli(["preset", "check", str(preset)]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli(["render", str(preset), str(DEMO), "--out", str(tmp_path)]) == 0
    outputs = [p for p in tmp_path.rglob("*") if p.suffix in (".wav", ".flac")]
    assert outputs, "the preset wrote nothing"
    for path in outputs:
        audio, rate = files.read(path)
        assert rate == SR and np.isfinite(audio).all() and np.max(np.abs(audio)) > 1e-3
    assert not list(tmp_path.rglob("*.partial"))


def test_preset_check_reports_one_line_with_the_path_inside_the_file(tmp_path, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("version: 1\nstems:\n  vocals:\n    chain:\n      - {effect: Compressor, treshold_db: -10}\n")
    assert cli(["preset", "check", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "bad.yaml: stems.vocals.chain[0]: Compressor has no parameter 'treshold_db'; did you mean 'threshold_db'?" in err[0]


def test_render_refuses_to_overwrite_its_input(tmp_path, capsys):
    song = tmp_path / "song.wav"
    files.write(song, files.read(DEMO)[0][:, :SR], SR)
    before = song.read_bytes()
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {files: {mix: '{track}.{ext}'}}\n")
    assert cli(["render", str(preset), str(song), "--out", str(tmp_path)]) == 1  # the song failed (exit 1); nothing else was asked
    assert "would overwrite the input" in capsys.readouterr().err
    assert song.read_bytes() == before


def test_effects_lists_builtins_with_parameters(capsys):
    assert cli(["effects"]) == 0
    out = capsys.readouterr().out
    assert "Compressor" in out and "threshold_db" in out and "Reverb" in out and "room_size" in out


def test_remix_example_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "remix.py"), str(DEMO), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    audio, rate = files.read(tmp_path / "demo.remix.flac")
    assert rate == SR and audio.shape == (2, 22 * SR)
