"""Automation lanes: curves, bars and beats, MIDI CC lanes on the file's tempo map, VST3 parameter lanes.

MIDI files are written with mido in the tests; the DSP separator's stems sum to the mix, so a lane
applied to every stem scales the whole song and the expected output is known sample by sample.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mido
import numpy as np
import pytest

from bridge.audio import files
from bridge.host import midi
from bridge.host.automation import Lane, Tempo, parse_target, parse_time, update_block
from bridge.cli import main as cli
from bridge.errors import BridgeError, MidiError, PluginError, PresetError
from bridge.render.graph import RenderGraph, check_chains
from bridge.render.mixer import BLOCK
from bridge.separation import load_separator
from bridge.preset.session import load, parse

SR = 44100
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    audio, rate = files.read(REPO / "examples" / "demo.flac")
    return audio[:, : 4 * SR]


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    """4 s of a steady 220 Hz tone at 0.5, the same on both channels (a clean envelope to read)."""
    t = np.arange(4 * SR) / SR
    return np.repeat((0.5 * np.sin(2 * np.pi * 220 * t))[np.newaxis].astype(np.float32), 2, axis=0)


def render(preset: Path, audio: np.ndarray, sizes=None) -> np.ndarray:
    graph = RenderGraph(load(preset), load_separator("dsp"))
    graph.check()
    stream = graph.stream(sample_rate=SR, channels=audio.shape[0])
    parts, at = [], 0
    for size in sizes or []:
        parts.append(stream.process(audio[:, at:at + size])[0])
        at += size
    parts.append(stream.process(audio[:, at:])[0])
    parts.append(stream.finish()[0])
    return np.concatenate(parts, axis=1)


def write(tmp_path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- lanes ----------------------------------------------------------------------------------------

def test_curves_between_two_points():
    t = np.array([0.0, 1.0, 1.5, 2.0, 3.0])
    np.testing.assert_allclose(Lane((1.0, 2.0), (100.0, 400.0)).at(t), [100, 100, 250, 400, 400])
    np.testing.assert_allclose(Lane((1.0, 2.0), (100.0, 400.0), "hold").at(t), [100, 100, 100, 400, 400])
    np.testing.assert_allclose(Lane((1.0, 2.0), (100.0, 400.0), "exponential").at(t), [100, 100, 200, 400, 400],
                               rtol=1e-12)  # geometric mean half-way: sqrt(100 * 400)


@pytest.mark.parametrize("curve", ["linear", "hold", "exponential"])
def test_one_value_equals_the_vectorised_values(curve):
    lane = Lane((0.5, 1.0, 1.0, 2.0, 4.0), (100.0, 200.0, 50.0, 800.0, 800.0), curve)
    t = np.linspace(0.0, 5.0, 1001)
    np.testing.assert_allclose([lane.value(x) for x in t], lane.at(t), rtol=1e-12)


def test_equal_times_make_a_jump_not_an_average():
    lane = Lane((0.0, 1.0, 1.0, 2.0), (0.0, 0.0, 1.0, 1.0))
    np.testing.assert_allclose(lane.at(np.array([0.999, 1.0, 1.001])), [0.0, 1.0, 1.0])


def test_bars_and_beats_follow_the_tempo_and_time_signature():
    waltz = Tempo(bpm=90.0, beats_per_bar=3, beat_unit=4)
    assert parse_time("1:1", tempo=waltz) == 0.0
    assert parse_time("2:1", tempo=waltz) == pytest.approx(2.0)  # 3 beats at 90 bpm
    assert parse_time("3:2.5", tempo=waltz) == pytest.approx((6 + 1.5) * 60 / 90)
    assert parse_time(1.25, tempo=None) == 1.25
    with pytest.raises(ValueError, match="no tempo"):
        parse_time("2:1", tempo=None)
    with pytest.raises(ValueError, match="beats 1 to 3"):
        parse_time("2:4", tempo=waltz)


@pytest.mark.parametrize(("text", "shown"), [
    ("stems.vocals.gain_db", "stems.vocals.gain_db"),
    ("stems.drums.pan", "stems.drums.pan"),
    ("stems.vocals.chain[2].cutoff_frequency_hz", "stems.vocals.chain[2].cutoff_frequency_hz"),
    ("pre[0].gain_db", "pre[0].gain_db"),
    ("master[1].threshold_db", "master[1].threshold_db"),
])
def test_targets_round_trip(text, shown):
    assert str(parse_target(text)) == shown


@pytest.mark.parametrize("text", ["stems.vocals.volume", "master.threshold_db", "post[0].x", "stems.vocals.chain.x"])
def test_unknown_targets_are_refused(text):
    with pytest.raises(ValueError, match="unknown automation target"):
        parse_target(text)


def test_update_blocks_are_at_most_5_ms():
    for rate in (22050, 44100, 48000, 96000):
        assert update_block(rate) / rate <= 0.005
        assert update_block(rate) / rate > 0.0049
    assert update_block(48000) == 240  # at most 256 at 48 kHz, as the issue asks


# --- MIDI files ------------------------------------------------------------------------------------

TPQ = 480
#: set_tempo changes at ticks: 120 bpm from 0, 60 bpm from tick 960 (1.0 s), 240 bpm from tick 1920
#: (1.0 s + 2 beats at 1 s = 3.0 s).
TEMPI = [(0, 500_000), (960, 1_000_000), (1920, 250_000)]
#: CC 11 events (tick, value) on channel 2, and the seconds they fall at on that tempo map, by hand.
CC = [(0, 127), (240, 0), (960, 64), (1200, 32), (1920, 100), (2400, 12), (2880, 127)]
CC_SECONDS = [0.0, 0.25, 1.0, 1.5, 3.0, 3.25, 3.5]  # at 120 bpm throughout: 0, 0.25, 1, 1.25, 2, 2.5, 3


def write_midi(path: Path, *, cc=CC, channel=1, tempi=TEMPI, number=11) -> Path:
    """A type 1 file: the tempo map in track 0, CC events in track 1, a note in track 2 (mido delta ticks)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    tempo_track, cc_track, notes = mido.MidiTrack(), mido.MidiTrack(), mido.MidiTrack()
    last = 0
    for tick, tempo in tempi:
        tempo_track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=tick - last))
        last = tick
    last = 0
    for tick, value in cc:
        cc_track.append(mido.Message("control_change", channel=channel, control=number, value=value,
                                     time=tick - last))
        last = tick
    cc_track.append(mido.Message("pitchwheel", channel=channel, pitch=4096, time=10))
    notes.append(mido.Message("note_on", channel=0, note=60, velocity=90, time=0))
    notes.append(mido.Message("note_off", channel=0, note=60, velocity=0, time=TPQ))
    mid.tracks += [tempo_track, cc_track, notes]
    mid.save(path)
    return path


def test_controller_times_follow_the_tempo_map_exactly(tmp_path):
    song = midi.read(write_midi(tmp_path / "cc.mid"), where="t")
    events = midi.controller(song, number=11, channel=2, where="t")
    np.testing.assert_allclose([t for t, _ in events], CC_SECONDS, atol=1e-12)
    np.testing.assert_allclose([v for _, v in events], [v / 127 for _, v in CC], atol=1e-12)
    bend = midi.controller(song, kind="pitchbend", channel=2, where="t")
    assert bend[0][1] == pytest.approx((4096 + 8192) / 16383)
    # The tempo may come from any track, and mido agrees with the seconds computed here.
    assert song.length == pytest.approx(sum(m.time for m in mido.MidiFile(tmp_path / "cc.mid")), abs=1e-9)


def test_a_missing_controller_lists_what_the_file_has(tmp_path):
    song = midi.read(write_midi(tmp_path / "cc.mid"), where="p.yaml: automation.x.midi")
    with pytest.raises(MidiError) as caught:
        midi.controller(song, number=7, channel=2, where="p.yaml: automation.x")
    assert str(caught.value) == (f"p.yaml: automation.x: {tmp_path / 'cc.mid'} has no CC 7 events on channel 2 (it has "
                                 "CC 11 ch 2, pitch bend ch 2); choose another controller or channel, or give the "
                                 "lane a 'default'")
    with pytest.raises(MidiError, match="no CC 11 events on channel 1"):
        midi.controller(song, number=11, channel=1, where="x")
    with pytest.raises(MidiError, match="has tracks 0 to 2, not 5"):
        midi.controller(song, number=11, track=5, where="x")


def bad_midi_files(tmp_path) -> dict[str, tuple[Path, str]]:
    good = write_midi(tmp_path / "good.mid").read_bytes()
    files = {
        "truncated": (good[:-9], "is truncated"),
        "not MIDI": (b"RIFF....WAVEfmt not a midi file", "is not a MIDI file"),
        "bad header": (good[:8] + (7).to_bytes(2, "big") + good[10:], "bad header: MIDI file type 7"),
        "SMPTE division": (good[:12] + bytes([0xE7, 0x28]) + good[14:], "bad header: SMPTE time division"),
        "running status": (good[:14] + b"MTrk" + (7).to_bytes(4, "big") + b"\x00\x40\x40\x00\xff\x2f\x00",
                           "running status"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = tmp_path / f"{name.replace(' ', '-')}.mid"
        path.write_bytes(data)
        out[name] = (path, message)
    return out


@pytest.mark.parametrize("case", ["truncated", "not MIDI", "bad header", "SMPTE division", "running status"])
def test_bad_midi_files_are_one_line_naming_the_file_and_key(tmp_path, capsys, case):
    path, message = bad_midi_files(tmp_path)[case]
    preset = write(tmp_path, "version: 1\nseparator: {model: dsp}\nautomation:\n  stems.vocals.gain_db: "
                             f"{{midi: {path.name}, cc: 11, range: [-30, 0]}}\n")
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(REPO / "examples" / "demo.flac"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"stembridge: error: {preset}: automation.stems.vocals.gain_db.midi: {path} ")
    assert message in err
    assert not out.exists()


def test_a_missing_cc_is_an_error_unless_the_lane_has_a_default(tmp_path):
    write_midi(tmp_path / "cc.mid")
    text = "version: 1\nautomation:\n  stems.vocals.gain_db: {{midi: cc.mid, cc: 1, channel: 2, range: [-30, 0]{}}}\n"
    with pytest.raises(MidiError, match=r"p\.yaml: automation\.stems\.vocals\.gain_db: .*no CC 1 events on channel 2"):
        load(write(tmp_path, text.format("")))
    session = load(write(tmp_path, text.format(", default: -6")))
    assert session.automation[0][1].at(np.array([0.0, 10.0])).tolist() == [-6.0, -6.0]


# --- lanes in a render ----------------------------------------------------------------------------

def test_a_cc_lane_on_gain_follows_the_cc_curve_after_tempo_changes(tmp_path, tone):
    """Gain from CC 11 (0..127 -> -30..0 dB, held between events): within 0.1 dB at every event."""
    write_midi(tmp_path / "cc.mid")
    lane = "{midi: cc.mid, cc: 11, channel: 2, range: [-30, 0]}"
    preset = write(tmp_path, f"version: 1\nautomation:\n  stems.vocals.gain_db: {lane}\n"
                             f"  stems.instrumental.gain_db: {lane}\noutput: {{tail_seconds: 0}}\n")
    out = render(preset, tone)
    assert out.shape == tone.shape
    window = int(0.005 * SR)
    for seconds, (_, value) in zip(CC_SECONDS, CC):
        start = math.ceil(seconds * SR)
        part = slice(start, start + window)
        loud = np.abs(tone[0, part]) > 0.1  # the ratio is exact where the tone is not near a zero crossing
        measured = 20 * np.log10(np.abs(out[:, part][:, loud]) / np.abs(tone[:, part][:, loud]))
        expected = -30 + 30 * value / 127
        np.testing.assert_allclose(measured, expected, atol=0.1, err_msg=f"CC event at {seconds} s")


def test_a_vst3_parameter_lane_changes_the_output_where_it_changes_and_nowhere_else(tmp_path, vst3_plugins, song):
    plugin = vst3_plugins["sbgain"]
    base = f"version: 1\nstems:\n  vocals: {{chain: [{{vst3: {plugin}}}]}}\noutput: {{tail_seconds: 0}}\n"
    plain = render(write(tmp_path, base, "plain.yaml"), song)
    automated = render(write(tmp_path, base + "automation:\n  stems.vocals.chain[0].gain_db: "
                                              "{points: [[0, 0], [1.5, -12.0412]], curve: hold}\n"), song)
    change = int(1.5 * SR)
    step = update_block(SR)
    changed = np.flatnonzero(np.any(np.abs(automated - plain) > 1e-6, axis=0))
    assert changed[0] >= change - 1 and changed[0] < change + step  # at the lane's change, within one update block
    np.testing.assert_array_equal(automated[:, :change - 1], plain[:, :change - 1])
    vocals = load_separator("dsp")(song, SR)
    expected = 0.25 * vocals["vocals"] + vocals["instrumental"]  # -12.0412 dB = 1/4
    np.testing.assert_allclose(automated[:, change + step:], expected[:, change + step:], atol=1e-5)


def test_a_real_plugin_lane_on_linked_instances(tmp_path, third_party, monkeypatch, song):
    """ZamEQ2 (mono) on a stereo stem: both linked instances follow the lane."""
    monkeypatch.setenv("VST3_PATH", str(third_party["ZamEQ2"].parent))
    base = ("version: 1\nstems:\n  vocals: {chain: [{vst3: ZamEQ2, params: {boost_cut_1_db: 6.0}}]}\n"
            "  instrumental: {mute: true}\noutput: {tail_seconds: 0}\n")
    plain = render(write(tmp_path, base, "plain.yaml"), song)
    automated = render(write(tmp_path, base + "automation:\n  stems.vocals.chain[0].master_gain_db: "
                                              "{points: [[0, 0], [2.0, 0], [2.5, 6]]}\n"), song)
    start = int(2.0 * SR)
    np.testing.assert_array_equal(automated[:, :start], plain[:, :start])
    after = slice(int(2.6 * SR), int(3.5 * SR))
    for c in (0, 1):
        gain_db = 10 * np.log10(np.mean(automated[c, after] ** 2) / np.mean(plain[c, after] ** 2))
        assert gain_db == pytest.approx(6.0, abs=0.1), f"channel {c} did not follow the lane"


def test_a_pan_lane_moves_the_stem_per_sample(tmp_path, tone):
    preset = write(tmp_path, "version: 1\nstems:\n  instrumental: {mute: true}\nautomation:\n  stems.vocals.pan: "
                             "[[0, -1], [2, 1]]\noutput: {tail_seconds: 0}\n")
    out = render(preset, tone)
    vocals = load_separator("dsp")(tone, SR)["vocals"]
    t = np.arange(tone.shape[1]) / SR
    theta = (np.clip(t - 1.0, -1, 1) + 1) * np.pi / 4  # pan = t - 1 for t in [0, 2], then 1
    np.testing.assert_allclose(out[0], vocals[0] * np.sqrt(2) * np.cos(theta), atol=1e-6)
    np.testing.assert_allclose(out[1], vocals[1] * np.sqrt(2) * np.sin(theta), atol=1e-6)


def test_builtin_lanes_and_streaming_equals_one_pass(tmp_path, vst3_plugins, song):
    body = f"""version: 1
tempo: {{bpm: 120, time_signature: 4/4}}
pre: [{{effect: LowpassFilter, cutoff_frequency_hz: 8000}}]
stems:
  vocals: {{chain: [{{vst3: {vst3_plugins['sbgain']}}}, {{effect: Reverb}}]}}
master: [{{effect: Gain}}]
output: {{tail_seconds: 0.5}}
"""
    preset = write(tmp_path, body + """automation:
  pre[0].cutoff_frequency_hz: {points: [[0, 300], ["2:1", 12000]], curve: exponential}
  stems.vocals.chain[0].gain_db: [[0, 0], [1, -20], [3, 6]]
  stems.vocals.chain[1].room_size: [[0, 0.1], [3, 0.9]]
  master[0].gain_db: {points: [[0, -3], ["1:3", 0]], curve: hold}
  stems.instrumental.gain_db: [[0, -10], [2, 0]]
""")
    whole = render(preset, song)
    for sizes in ([1000, 777, 30000], [SR // 3] * 5, [1]):
        np.testing.assert_allclose(render(preset, song, sizes), whole, atol=1e-6)
    # The same preset, chains and all, without its automation: only the lanes differ between the two.
    static = render(write(tmp_path, body, "static.yaml"), song)
    assert np.abs(whole - static).max() > 0.05  # the lanes did something


def test_only_automated_segments_run_in_short_blocks(tmp_path, vst3_plugins):
    preset = write(tmp_path, f"""version: 1
stems:
  vocals: {{chain: [{{effect: Gain}}, {{vst3: {vst3_plugins['sbgain']}}}]}}
master: [{{effect: Gain}}]
automation:
  stems.vocals.chain[0].gain_db: [[0, 0], [1, -6]]
""")
    graph = RenderGraph(load(preset), load_separator("dsp"))
    stream = graph.stream(sample_rate=48000, channels=2)
    vocals = stream._mixer.chains["vocals"]
    assert [stage.block for stage in vocals.stages] == [240]  # one segment: Gain and sbgain both take stereo
    assert [stage.block for stage in stream._mixer.chains["instrumental"].stages] == []
    assert [stage.block for stage in stream._master.stages] == [BLOCK]


# --- bad targets and values: one line naming the key ----------------------------------------------

@pytest.mark.parametrize(("automation", "message"), [
    ("stems.vocals.volume: [[0, 1]]", r"automation\.stems\.vocals\.volume: unknown automation target"),
    ("stems.vocals.chain[3].gain_db: [[0, 1]]", r"automation\.stems\.vocals\.chain\[3\]\.gain_db: "
                                                r"stems\.vocals\.chain has 1 effect\(s\), so there is no \[3\]"),
    ("stems.vocals.chain[0].cutoff: [[0, 100]]", r"automation\.stems\.vocals\.chain\[0\]\.cutoff: LowpassFilter has "
                                                 r"no parameter 'cutoff'; known: cutoff_frequency_hz"),
    ("stems.vocals.chain[0].cutoff_frequency_hz: [[0, 100], [1, -5]]",
     r"automation\.stems\.vocals\.chain\[0\]\.cutoff_frequency_hz: -5\.0 is out of range \[0\.001, 384000\]"),
    ("stems.vocals.gain_db: [[0, 0], [1, 60]]", r"automation\.stems\.vocals\.gain_db: values 0 \.\. 60 are outside "
                                               r"gain_db's range \[-150, 48\]"),
    ("stems.vocals.pan: {points: [[0, 0]], curve: smooth}", r"automation\.stems\.vocals\.pan\.curve: 'smooth' is not "
                                                            r"one of linear, hold, exponential"),
    ("master[0].cutoff_frequency_hz: {points: [[0, 0], [1, 100]], curve: exponential}",
     r"automation\.master\[0\]\.cutoff_frequency_hz: an exponential curve needs values above 0"),
    ("stems.vocals.gain_db: [['2:1', 0]]", r"automation\.stems\.vocals\.gain_db\[0\]\[0\]: '2:1' is in bars and "
                                          r"beats but the preset has no tempo"),
    ("stems.vocals.gain_db: [[1, 0], [0.5, 0]]", r"automation\.stems\.vocals\.gain_db: lane times must not decrease"),
])
def test_bad_lanes_name_the_key(tmp_path, automation, message):
    preset = write(tmp_path, "version: 1\nstems:\n  vocals: {chain: [{effect: LowpassFilter}]}\n"
                             f"master: [{{effect: HighpassFilter}}]\nautomation:\n  {automation}\n")
    with pytest.raises(PresetError, match=r"^" + str(preset).replace(".", r"\.") + ": " + message):
        load(preset)


@pytest.mark.parametrize(("lane", "message"), [
    ("stems.vocals.chain[0].gain: [[0, 0]]", r"automation\.stems\.vocals\.chain\[0\]\.gain: sbgain has no "
                                             r"parameter 'gain'; did you mean 'gain_db'\? Known: gain_db, mix"),
    ("stems.vocals.chain[0].gain_db: [[0, 0], [1, 30]]", r"automation\.stems\.vocals\.chain\[0\]\.gain_db: values "
                                                         r"0 \.\. 30 are outside sbgain's 'gain_db' range \[-60, 24\] dB"),
    ("master[0].mix: [[0, 0], [1, 1.5]]", r"automation\.master\[0\]\.mix: values 0 \.\. 1\.5 are outside"),
])
def test_vst3_lanes_are_checked_against_the_real_parameter(tmp_path, vst3_plugins, capsys, lane, message):
    plugin = vst3_plugins["sbgain"]
    preset = write(tmp_path, f"version: 1\nseparator: {{model: dsp}}\nstems:\n  vocals: {{chain: [{{vst3: {plugin}}}]}}\n"
                             f"master: [{{vst3: {plugin}}}]\nautomation:\n  {lane}\n")
    with pytest.raises(PluginError, match=r"^" + str(preset).replace(".", r"\.") + ": " + message):
        check_chains(load(preset))
    assert cli(["preset", "check", str(preset)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_gain_breakpoints_and_a_gain_lane_together_are_refused(tmp_path):
    preset = write(tmp_path, "version: 1\nstems:\n  vocals: {gain_db: [[0, 0], [1, -6]]}\nautomation:\n"
                             "  stems.vocals.gain_db: [[0, 0]]\n")
    with pytest.raises(PresetError, match="already has breakpoints; give the gain one way"):
        load(preset)


def test_sessions_with_lanes_round_trip(tmp_path):
    write_midi(tmp_path / "cc.mid")
    preset = write(tmp_path, """version: 1
tempo: {bpm: 96, time_signature: 6/8}
stems:
  vocals: {chain: [{effect: Reverb}]}
automation:
  stems.vocals.gain_db: [[0, -6], ["2:4.5", 0]]
  stems.vocals.chain[0].room_size: {midi: cc.mid, cc: 11, channel: 2, range: [0.1, 0.9], curve: linear}
  stems.vocals.pan: {points: [[0, 0], [1, 0.5]], curve: hold}
""")
    session = load(preset)
    again = parse(__import__("yaml").safe_load(session.to_yaml()), source=str(preset), base=tmp_path)
    assert again == session
    assert session.automation[0][1].times == (0.0, (6 + 3.5) * 60 / 96)


def test_errors_are_bridge_errors():
    assert issubclass(MidiError, BridgeError) and issubclass(MidiError, ValueError)


def test_the_stem_cache_tells_pre_chain_lanes_apart(tmp_path):
    """Stems separated after an automated pre chain depend on its lanes: a changed lane is not a cache hit."""
    song = tmp_path / "song.wav"
    audio, _ = files.read(REPO / "examples" / "demo.flac")
    files.write(song, audio[:, : 2 * SR], SR, bit_depth=32)
    base = ("version: 1\nseparator: {model: dsp}\npre: [{effect: Gain}]\noutput: {tail_seconds: 0}\n"
            "automation:\n  pre[0].gain_db: [[0, 0], [1, DEPTH]]\n")
    statuses = []
    for run, depth in enumerate((-6, -6, -12)):
        preset = write(tmp_path, base.replace("DEPTH", str(depth)))
        out = tmp_path / f"out{run}"
        assert cli(["render", str(preset), str(song), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                    "--quiet"]) == 0
        statuses.append(json.loads((out / "stembridge-run.json").read_text())["songs"][0]["status"])
    assert statuses == ["rendered", "cached", "rendered"]
