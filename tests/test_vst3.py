"""Real VST3 plugins (built from tests/plugins/ with DPF) under pedalboard and under bridge.host.effects.

The plugins and their exact transfer functions are described in ``tests/vst3.py``.
"""

from __future__ import annotations

import base64
import platform
import time
from pathlib import Path

import mido
import numpy as np
import pedalboard
import pytest

import vst3
from bridge.audio import files
from bridge.host.effects import EffectSpec, build, latency
from bridge.errors import PluginError
from bridge.render.graph import RenderGraph
from bridge.render.mixer import StreamChain
from bridge.separation import load_separator
from bridge.preset.session import load as load_session

SR = 44100


@pytest.fixture
def load(vst3_plugins):
    """Load a test plugin by name, on the main thread, as pedalboard wants a str path."""
    def _load(name: str):
        return pedalboard.load_plugin(str(vst3_plugins[name]))
    return _load


@pytest.fixture
def noise():
    return (0.1 * np.random.default_rng(20261123).standard_normal((2, SR // 2))).astype(np.float32)


def stream(plugin, audio: np.ndarray, block: int) -> np.ndarray:
    """Run ``audio`` through ``plugin`` in blocks of ``block`` samples, keeping state between them."""
    return np.concatenate([plugin(audio[:, i:i + block], SR, reset=False)
                           for i in range(0, audio.shape[1], block)], axis=1)


def sine_peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / SR)[np.argmax(spectrum)])


# ---------------------------------------------------------------------------------------------
# The build


def test_bundles_are_laid_out_as_vst3_wants(vst3_plugins):
    assert sorted(vst3_plugins) == ["sbgain", "sblatency", "sbsine", "sbwiden"]
    for name, bundle in vst3_plugins.items():
        assert bundle.name == f"{name}.vst3"  # the bundle folder must match the .so name
        assert (bundle / "Contents" / f"{platform.machine()}-linux" / f"{name}.so").is_file()


def test_rebuild_is_skipped_when_sources_are_unchanged(vst3_plugins):
    start = time.perf_counter()
    again = vst3.build_plugins(vst3.CACHE)
    assert time.perf_counter() - start < 2.0
    assert again == vst3_plugins


def test_patches_fail_loudly_when_dpf_changes():
    source = vst3._build.patch_text('"MIDI Ch. %d CC %d"' + " rindex <= kVst3InternalParameterMidiCC_end" * 3)
    assert '"MIDI CC %d|%d"' in source and "<=" not in source
    with pytest.raises(vst3.BuildError, match=r"no longer applies.*MIDI Ch\. %d CC %d.*PATCHES"):
        vst3._build.patch_text("a DPF that fixed both bugs")


# ---------------------------------------------------------------------------------------------
# pedalboard hosting the plugins


@pytest.mark.parametrize(("name", "parameters", "instrument"), [
    ("sbgain", ["gain_db", "mix"], False),
    ("sblatency", ["latency_frames"], False),  # DPF's read-only latency output
    ("sbsine", ["level"], True),  # no 2080 "MIDI CC" parameters: patch 1
])
def test_loads_fast_with_its_parameters(vst3_plugins, name, parameters, instrument):
    start = time.perf_counter()
    plugin = pedalboard.load_plugin(str(vst3_plugins[name]))
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{name} took {elapsed:.1f} s to load"
    assert list(plugin.parameters) == parameters
    assert (plugin.is_instrument, plugin.is_effect) == (instrument, not instrument)


def test_defaults_read_back(load):
    gain, sine = load("sbgain"), load("sbsine")
    assert gain.gain_db == pytest.approx(0.0, abs=1e-5)  # float32 normalised round trip
    assert gain.mix == 1.0
    assert sine.level == 0.5  # the first real parameter of a MIDI plugin read 0 before patch 2


def test_gain_halves_noise(load, noise):
    plugin = load("sbgain")
    vst3.set_exact(plugin, "gain_db", -6.0206)  # 20 log10(1/2)
    before = noise.copy()
    out = plugin(noise, SR)
    np.testing.assert_array_equal(noise, before)
    assert out.shape == noise.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5 * noise, atol=1e-4 * 0.5)  # 1e-4 relative to the 0.1-rms noise scale


def test_mix_blends_dry_and_wet(load, noise):
    plugin = load("sbgain")
    vst3.set_exact(plugin, "gain_db", -6.0206)
    plugin.mix = 0.0
    np.testing.assert_array_equal(plugin(noise, SR), noise)
    plugin.mix = 0.5
    np.testing.assert_allclose(plugin(noise, SR), 0.75 * noise, atol=1e-6)


def test_pedalboard_setter_snaps_floats_to_thousandths(load):
    """A pedalboard 0.9 quirk that bridge.host.effects has to work around (vst3.set_exact).

    The setter picks the 1/1000 raw step whose display value is nearest and, when the plugin's
    parsed value is not inside that step, uses the step's start: -6.0206 dB becomes -5.988 dB.
    If this starts failing, pedalboard fixed it and the workaround can go.
    """
    plugin = load("sbgain")
    plugin.gain_db = -6.0206
    assert plugin.gain_db == pytest.approx(-60 + 84 * 0.643, abs=1e-4)


def test_latency_is_reported_and_compensated_by_pedalboard(load, noise):
    plugin = load("sblatency")
    assert plugin.reported_latency_samples == vst3.LATENCY
    # One call with reset=True: pedalboard feeds extra samples and trims the delay itself.
    np.testing.assert_array_equal(plugin(noise, SR), noise)


def test_latency_is_left_in_when_streaming(load, noise):
    """reset=False on a freshly loaded plugin with equal blocks: the delay is the caller's to trim."""
    plugin = load("sblatency")
    out = stream(plugin, noise, 4096)
    assert out.shape == noise.shape
    np.testing.assert_array_equal(out[:, :vst3.LATENCY], 0.0)
    np.testing.assert_array_equal(out[:, vst3.LATENCY:], noise[:, :-vst3.LATENCY])


def test_streaming_state_is_lost_when_blocks_grow(load, noise):
    """A pedalboard + DPF quirk: a reset=False call with more samples than any before re-prepares
    the plugin (JUCE prepareToPlay -> VST3 setupProcessing -> DPF deactivate/activate), and the
    plugin clears its state (here the delay line) on activation: 64 zeros reappear mid-stream.
    Streaming callers must never grow the block after the first call (or always pass >= 8192).
    """
    plugin = load("sblatency")
    first = plugin(noise[:, :1000], SR, reset=False)
    second = plugin(noise[:, 1000:3000], SR, reset=False)
    np.testing.assert_array_equal(first[:, vst3.LATENCY:], noise[:, :1000 - vst3.LATENCY])
    np.testing.assert_array_equal(second[:, :vst3.LATENCY], 0.0)  # not noise[:, 936:1000]


def test_sine_plays_the_held_note(load):
    plugin = load("sbsine")
    out = plugin([mido.Message("note_on", note=69, velocity=100)], duration=1.0, sample_rate=SR)
    assert out.shape == (2, SR) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[1])
    assert abs(sine_peak_hz(out[0]) - 440.0) < 2.0
    assert np.abs(out).max() == pytest.approx(0.5, abs=1e-3)  # level 0.5
    plugin.level = 0.25
    quieter = plugin([mido.Message("note_on", note=81, velocity=100)], duration=1.0, sample_rate=SR)
    assert abs(sine_peak_hz(quieter[0]) - 880.0) < 2.0
    assert np.abs(quieter).max() == pytest.approx(0.25, abs=1e-3)


def test_sine_is_silent_without_notes_and_after_note_off(load):
    plugin = load("sbsine")
    np.testing.assert_array_equal(plugin([], duration=0.5, sample_rate=SR), 0.0)
    notes = [mido.Message("note_on", note=60, velocity=100, time=0.0),
             mido.Message("note_off", note=60, velocity=0, time=0.25)]
    out = plugin(notes, duration=0.5, sample_rate=SR)
    assert np.abs(out[:, :SR // 4 - 64]).max() > 0.4
    np.testing.assert_array_equal(out[:, SR // 4 + 64:], 0.0)


def settle(plugin) -> None:
    """raw_state / preset_data can be stale after a parameter change until a buffer is processed."""
    if plugin.is_instrument:
        plugin([], duration=0.01, sample_rate=SR)
    else:
        plugin(np.zeros((2, 256), np.float32), SR)


def test_raw_state_is_stale_until_a_buffer_is_processed(load):
    plugin = load("sbgain")
    plugin.mix = 0.25
    stale = plugin.raw_state
    settle(plugin)
    assert plugin.raw_state != stale
    fresh = load("sbgain")
    fresh.raw_state = stale
    assert fresh.mix == 1.0


@pytest.mark.parametrize(("name", "values"), [
    ("sbgain", {"gain_db": -7.3, "mix": 0.35}),
    ("sbsine", {"level": 0.125}),
])
def test_raw_state_round_trips(load, name, values):
    plugin = load(name)
    for key, value in values.items():
        vst3.set_exact(plugin, key, value)
    settle(plugin)
    restored = load(name)
    restored.raw_state = plugin.raw_state
    for key in values:
        assert getattr(restored, key) == getattr(plugin, key)
        assert restored.parameters[key].raw_value == plugin.parameters[key].raw_value


@pytest.mark.parametrize(("name", "values"), [
    ("sbgain", {"gain_db": -7.3, "mix": 0.35}),
    ("sbsine", {"level": 0.125}),
])
def test_vstpreset_written_by_pedalboard_restores_parameters(load, tmp_path, name, values):
    plugin = load(name)
    for key, value in values.items():
        vst3.set_exact(plugin, key, value)
    settle(plugin)
    path = tmp_path / f"{name}.vstpreset"
    path.write_bytes(plugin.preset_data)
    assert path.read_bytes()[:4] == b"VST3"  # Steinberg's preset file magic
    restored = load(name)
    restored.load_preset(str(path))
    for key, value in values.items():
        assert getattr(restored, key) == getattr(plugin, key) == pytest.approx(value, abs=1e-5)
        assert restored.parameters[key].raw_value == plugin.parameters[key].raw_value


def test_garbage_raw_state_is_silently_ignored(load):
    plugin = load("sbgain")
    plugin.raw_state = b"not a VST3 state"
    assert plugin.mix == 1.0


# ---------------------------------------------------------------------------------------------
# stembridge's loader


def vst3_spec(path, **fields) -> EffectSpec:
    return EffectSpec(kind="vst3", name=str(path), **{"params": (), "preset": None, "raw_state": None, **fields})


def test_bridge_builds_and_configures_a_vst3(vst3_plugins, noise):
    plugin = build(vst3_spec(vst3_plugins["sbgain"], params=(("gain_db", -6.0), ("mix", 0.5))),
                   where="test.chain[0]")
    assert plugin.mix == 0.5
    gain = 10 ** (-6.0 / 20)  # what the preset asked for, not what the plugin reports back
    np.testing.assert_allclose(plugin(noise, SR), (0.5 + 0.5 * gain) * noise, atol=1e-6)


@pytest.mark.parametrize("value", [-6.0, -6.0206, 3.3])  # each in the upper half of a 1/1000 step
def test_bridge_sets_vst3_parameters_exactly(vst3_plugins, value):
    plugin = build(vst3_spec(vst3_plugins["sbgain"], params=(("gain_db", value),)), where="test.chain[0]")
    assert plugin.gain_db == pytest.approx(value, abs=1e-4)


def test_bridge_names_the_valid_parameters(vst3_plugins):
    spec = vst3_spec(vst3_plugins["sbgain"], params=(("gain", -6.0),))
    with pytest.raises(PluginError, match=r"test\.chain\[0\]\.params\.gain: .*'gain'.*gain_db.*mix"):
        build(spec, where="test.chain[0]")


def test_bridge_rejects_out_of_range_values(vst3_plugins):
    spec = vst3_spec(vst3_plugins["sbgain"], params=(("gain_db", 30.0),))
    with pytest.raises(PluginError, match=r"params\.gain_db: .*out of range"):
        build(spec, where="test.chain[0]")


def test_bridge_rejects_missing_and_non_plugin_paths(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        build(vst3_spec(tmp_path / "Nope.vst3"), where="test.chain[0]")
    fake = tmp_path / "Fake.vst3"
    (fake / "Contents" / f"{platform.machine()}-linux").mkdir(parents=True)
    (fake / "Contents" / f"{platform.machine()}-linux" / "Fake.so").write_text("not a shared library")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (fake, text):
        with pytest.raises(PluginError, match="could not be loaded as a VST3 plugin"):
            build(vst3_spec(path), where="test.chain[0]")


def test_bridge_restores_a_preset_and_a_raw_state(load, vst3_plugins, tmp_path):
    source = load("sbgain")
    vst3.set_exact(source, "gain_db", -9.5)
    source.mix = 0.75
    settle(source)
    (tmp_path / "warm.vstpreset").write_bytes(source.preset_data)
    from_preset = build(vst3_spec(vst3_plugins["sbgain"], preset="warm.vstpreset", base=tmp_path), where="t[0]")
    encoded = base64.b64encode(source.raw_state).decode()
    from_state = build(vst3_spec(vst3_plugins["sbgain"], raw_state=encoded), where="t[0]")
    for plugin in (from_preset, from_state):
        assert (plugin.gain_db, plugin.mix) == (source.gain_db, source.mix)


def test_bridge_rejects_a_bad_preset_file(vst3_plugins, tmp_path):
    (tmp_path / "bad.vstpreset").write_bytes(b"VST3 but not really")
    with pytest.raises(PluginError, match=r"t\[0\]\.preset: .*bad\.vstpreset could not be loaded"):
        build(vst3_spec(vst3_plugins["sbgain"], preset="bad.vstpreset", base=tmp_path), where="t[0]")


def test_bridge_latency_sums_reported_latency(load):
    assert latency(pedalboard.Pedalboard([load("sblatency")])) == vst3.LATENCY
    assert latency(pedalboard.Pedalboard([load("sbgain"), load("sblatency"), pedalboard.Gain(0)])) == vst3.LATENCY


def run_stream_chain(plugin, audio: np.ndarray, blocks) -> np.ndarray:
    chain = StreamChain(pedalboard.Pedalboard([plugin]), sample_rate=SR, channels=2)
    out, start, sizes = [], 0, iter(blocks)
    size = next(sizes)
    while start < audio.shape[1]:
        block = audio[:, start:start + size]
        start += block.shape[1]
        out.append(chain.process(block, last=start >= audio.shape[1]))
        size = next(sizes, size)
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("samples", [30, 22050, 2 * 8192])  # shorter than the latency; odd; whole blocks
@pytest.mark.parametrize("blocks", [[4096], [1000], [4096, 100], [100, 4096], [4096, 4096, 8192, 20000]])
def test_mixer_stream_chain_compensates_vst3_latency(load, blocks, samples):
    """Whatever the block sizes, the stem comes out aligned and as long as it went in."""
    audio = (0.1 * np.random.default_rng(samples).standard_normal((2, samples))).astype(np.float32)
    out = run_stream_chain(load("sblatency"), audio, blocks)
    np.testing.assert_array_equal(out, audio)


def test_mixer_stream_chain_after_the_plugin_was_used(load, noise):
    plugin = load("sblatency")
    plugin(noise, SR)  # a full render before, e.g. the previous song of a batch
    stream(plugin, noise, 1000)  # and a stream left half-way
    out = run_stream_chain(plugin, noise, [4096])
    np.testing.assert_array_equal(out, noise)


# --- VST3 plugins inside sessions -----------------------------------------------------------------

def _render(tmp_path, preset_text: str, song: np.ndarray) -> np.ndarray:
    preset = tmp_path / "session.yaml"
    preset.write_text(preset_text)
    graph = RenderGraph(load_session(preset), load_separator("dsp"))
    graph.check()
    stream = graph.stream(sample_rate=SR, channels=2)
    first, second = stream.process(song), stream.finish()
    return np.concatenate([first[0], second[0]], axis=1)


@pytest.fixture
def song():
    audio, rate = files.read(Path(__file__).resolve().parent.parent / "examples" / "demo.flac")
    return audio[:, : 4 * SR]


def test_session_sets_vst3_parameters_by_name(tmp_path, vst3_plugins, song):
    out = _render(tmp_path, f"""version: 1
stems:
  vocals: {{chain: [{{vst3: {vst3_plugins['sbgain']}, params: {{gain_db: -6.0206}}}}]}}
  instrumental: {{chain: [{{vst3: {vst3_plugins['sbgain']}, params: {{gain_db: -6.0206, mix: 1.0}}}}]}}
output: {{tail_seconds: 0}}
""", song)
    np.testing.assert_allclose(out, 0.5 * song, atol=2e-6)


def test_session_restores_a_vstpreset_relative_to_the_preset_file(tmp_path, vst3_plugins, song):
    plugin = pedalboard.load_plugin(str(vst3_plugins["sbgain"]))
    plugin.gain_db = 0.0
    plugin.mix = 0.0  # dry: the plugin passes audio unchanged
    plugin(np.zeros((2, 512), np.float32), SR)  # state is stale until a buffer has been processed
    (tmp_path / "dry.vstpreset").write_bytes(plugin.preset_data)
    out = _render(tmp_path, f"""version: 1
stems:
  vocals: {{chain: [{{vst3: {vst3_plugins['sbgain']}, preset: dry.vstpreset}}]}}
  instrumental: {{gain_db: -120}}
output: {{tail_seconds: 0}}
""", song)
    vocals = load_separator("dsp")(song, SR)["vocals"]
    np.testing.assert_allclose(out, vocals, atol=1e-5)


def test_a_stem_chain_with_latency_stays_aligned_with_the_others(tmp_path, vst3_plugins, song):
    """sblatency delays by 64 samples and says so; the vocals must still line up with the backing."""
    out = _render(tmp_path, f"""version: 1
stems:
  vocals: {{chain: [{{vst3: {vst3_plugins['sblatency']}}}]}}
output: {{tail_seconds: 0.5}}
""", song)
    assert out.shape[1] == song.shape[1] + SR // 2
    np.testing.assert_allclose(out[:, : song.shape[1]], song, atol=1e-5)  # a 64-sample slip would be ~0.1 off
