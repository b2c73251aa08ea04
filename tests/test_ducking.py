"""Sidechain ducking: depth while the key is loud, recovery at the release time, causal, streaming,
and the stems summing to the pre-duck mix wherever the ducker is at rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.audio import files
from bridge.host.ducking import DETECTOR_SECONDS, Ducker, DuckSettings
from bridge.errors import PresetError
from bridge.render.graph import RenderGraph
from bridge.separation import load_separator
from bridge.preset.session import load

SR = 44100
REPO = Path(__file__).resolve().parent.parent


def key_signal(on: float = 0.5, off: float = 1.5, total: float = 2.5) -> np.ndarray:
    """Silence, a 0.5-amplitude 300 Hz tone (about -9 dBFS RMS) from ``on`` to ``off`` s, silence."""
    t = np.arange(int(total * SR)) / SR
    tone = np.where((t >= on) & (t < off), 0.5 * np.sin(2 * np.pi * 300 * t), 0.0)
    return np.repeat(tone[np.newaxis], 2, axis=0).astype(np.float32)


def test_the_ducked_stem_drops_by_depth_and_recovers_at_the_release_time():
    settings = DuckSettings(by="vocals", depth_db=6.0, threshold_db=-30.0, attack_ms=10.0, release_ms=250.0)
    gain = Ducker(settings, sample_rate=SR)(key_signal())
    on, off = int(0.5 * SR), int(1.5 * SR)
    np.testing.assert_array_equal(gain[:on], 1.0)  # causal: nothing before the key starts
    depth = 10 ** (-6.0 / 20)
    # Full depth once the detector has heard the tone (a few ms) plus the attack ramp (10 ms).
    reached = on + np.flatnonzero(np.isclose(gain[on:off], depth, atol=1e-6))[0]
    assert (reached - on) / SR <= 0.010 + DETECTOR_SECONDS
    np.testing.assert_allclose(gain[reached:off], depth, atol=1e-6)
    # The ramp takes the attack time: 6 dB in 10 ms.
    ramp = 20 * np.log10(gain[reached - int(0.005 * SR)])
    assert ramp == pytest.approx(-3.0, abs=0.05)
    # Release: back to unity 250 ms after the detector stops hearing the key (within its 10 ms window).
    recovered = off + np.flatnonzero(gain[off:] == 1.0)[0]
    assert 0.250 <= (recovered - off) / SR <= 0.250 + DETECTOR_SECONDS + 1 / SR
    half = 20 * np.log10(gain[recovered - int(0.125 * SR)])
    assert half == pytest.approx(-3.0, abs=0.05)  # linear in dB: half-way in half the release time


def test_a_key_below_the_threshold_never_ducks():
    gain = Ducker(DuckSettings(by="vocals", threshold_db=-6.0), sample_rate=SR)(key_signal())
    np.testing.assert_array_equal(gain, 1.0)  # -9 dBFS RMS is below -6


@pytest.mark.parametrize("sizes", [[1], [100, 4410, 1], [SR // 7] * 20, [3000] * 40])
def test_streaming_equals_one_pass(sizes):
    key = key_signal()
    settings = DuckSettings(by="vocals", depth_db=12.0, attack_ms=3.0, release_ms=80.0)
    whole = Ducker(settings, sample_rate=SR)(key)
    ducker = Ducker(settings, sample_rate=SR)
    parts, at = [], 0
    for size in sizes:
        parts.append(ducker(key[:, at:at + size]))
        at += size
    parts.append(ducker(key[:, at:]))
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-7)


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    audio, rate = files.read(REPO / "examples" / "demo.flac")
    return audio[:, : 5 * SR]


def render(tmp_path, text: str, song: np.ndarray, sizes=(SR // 2,) * 20):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    graph = RenderGraph(load(preset), load_separator("dsp"))
    graph.check()
    stream = graph.stream(sample_rate=SR, channels=2)
    mixes, stems, at = [], [], 0
    for size in sizes:
        if at >= song.shape[1]:
            break
        mix, processed = stream.process(song[:, at:at + size])
        mixes.append(mix)
        stems.append(processed)
        at += size
    mix, processed = stream.finish()
    mixes.append(mix)
    stems.append(processed)
    return np.concatenate(mixes, axis=1), {k: np.concatenate([s[k] for s in stems], axis=1) for k in stems[0]}


def documented_gain(key: np.ndarray, *, depth_db, threshold_db, attack_ms, release_ms) -> np.ndarray:
    """The ducker as the module docstring states it, one sample at a time (independent of ``Ducker``):
    the key's RMS over the last 10 ms of all channels (zeros before the start) in dBFS; above the
    threshold the reduction grows by depth/attack dB per sample up to the depth, below it shrinks
    by depth/release dB per sample down to 0."""
    width = round(0.010 * SR)
    power = np.mean(key.astype(np.float64) ** 2, axis=0)
    total, reduction, gain = 0.0, 0.0, np.empty(power.size)
    up, down = depth_db / (attack_ms * 1e-3 * SR), depth_db / (release_ms * 1e-3 * SR)
    for i, p in enumerate(power.tolist()):
        total += p - (power[i - width] if i >= width else 0.0)
        loud = 10 * np.log10(max(total / width, 1e-30)) > threshold_db
        reduction = min(depth_db, reduction + up) if loud else max(0.0, reduction - down)
        gain[i] = 10 ** (-reduction / 20)
    return gain


def test_ducking_in_a_session_follows_the_key_after_its_chain_and_sums_where_inactive(tmp_path, song):
    base = """version: 1
stems:
  vocals: {gain_db: -40, chain: [{effect: Gain, gain_db: 12}]}
  instrumental: {DUCK}
output: {tail_seconds: 0}
"""
    plain_mix, plain = render(tmp_path, base.replace("{DUCK}", "{gain_db: 0}"), song)
    duck = "{duck: {by: vocals, depth_db: 9, threshold_db: -6, attack_ms: 5, release_ms: 120}}"
    mix, stems = render(tmp_path, base.replace("{DUCK}", duck), song)
    # The detector reads the vocals after their chain (+12 dB) and before their fader (-40 dB).
    key = load_separator("dsp")(song, SR)["vocals"] * np.float32(10 ** (12 / 20))
    gain = documented_gain(key, depth_db=9, threshold_db=-6, attack_ms=5, release_ms=120)
    assert gain.min() == pytest.approx(10 ** (-9 / 20), abs=1e-6) and gain.max() == 1.0
    assert 0.05 < np.mean(gain < 1.0) < 0.95  # the vocals (median -6 dBFS after the chain) come and go
    np.testing.assert_allclose(stems["instrumental"], plain["instrumental"] * gain, atol=1e-6)
    np.testing.assert_array_equal(stems["vocals"], plain["vocals"])
    at_rest = gain == 1.0
    np.testing.assert_allclose(mix[:, at_rest], plain_mix[:, at_rest], atol=1e-6)
    np.testing.assert_allclose(mix, stems["vocals"] + stems["instrumental"], atol=1e-6)
    # Streaming in other blocks gives the same.
    again, _ = render(tmp_path, base.replace("{DUCK}", duck), song, sizes=[777, 10000, 1] + [SR] * 10)
    np.testing.assert_allclose(again, mix, atol=1e-6)


@pytest.mark.parametrize(("duck", "message"), [
    ("{depth_db: 6}", r"stems\.instrumental\.duck: ducking needs 'by: <stem>'"),
    ("{by: instrumental}", r"stems\.instrumental\.duck\.by: a stem cannot duck itself"),
    ("{by: vocals, depth_db: 90}", r"stems\.instrumental\.duck\.depth_db: 90 is out of range \[0\.0, 60\.0\]"),
    ("{by: vocals, hold_ms: 5}", r"stems\.instrumental\.duck\.hold_ms: unknown key 'hold_ms'"),
])
def test_bad_duck_settings_name_the_key(tmp_path, duck, message):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nstems:\n  instrumental: {{duck: {duck}}}\n")
    with pytest.raises(PresetError, match=message):
        load(preset)


def test_a_key_stem_the_model_does_not_give_names_the_key(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nstems:\n  instrumental: {duck: {by: drums}}\n")
    with pytest.raises(PresetError, match=r"p\.yaml: stems\.instrumental\.duck\.by: the model gives no stem 'drums'"):
        RenderGraph(load(preset), load_separator("dsp"))


def test_duck_round_trips(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nstems:\n  instrumental: {duck: {by: vocals, depth_db: 4.5}}\n")
    session = load(preset)
    preset.write_text(session.to_yaml())
    assert load(preset) == session
