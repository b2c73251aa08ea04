"""MIDI instrument layers: real instruments (sbsine, and Kars from dpf-plugins) played from MIDI files
written with mido, on the file's tempo map, across block edges, mixed like stems."""

from __future__ import annotations

import warnings
from pathlib import Path

import mido
import numpy as np
import pytest

from bridge.audio import files
from bridge.cli import main as cli
from bridge.errors import MidiError, PluginError, PresetError
from bridge.render.graph import RenderGraph, check_chains
from bridge.host.layers import LayerWarning, arrange, block_size
from bridge.render.song import render_file
from bridge.separation import load_separator
from bridge.preset.session import load

SR = 44100
TPQ = 480
REPO = Path(__file__).resolve().parent.parent
#: Tempo map (tick, microseconds per beat): 120 bpm, 90 bpm from tick 1920 (2.0 s), 200 bpm from tick 2880.
TEMPI = [(0, 500_000), (1920, 666_667), (2880, 300_000)]


def seconds(tick: int) -> float:
    """The tempo map above, by hand (independent of bridge.host.midi)."""
    if tick <= 1920:
        return tick * 0.5 / TPQ
    if tick <= 2880:
        return 2.0 + (tick - 1920) * 0.666667 / TPQ
    return 2.0 + 960 * 0.666667 / TPQ + (tick - 2880) * 0.3 / TPQ


#: (start tick, length in ticks, note): short notes with silence between, one held over many block edges.
NOTES = [(96, 96, 69), (700, 48, 72), (1580, 60, 64), (2100, 40, 76), (2500, 30, 69), (3000, 20, 81),
         (3300, 800, 57)]


def write_song(path: Path, notes=NOTES, *, channel: int = 0, extra=()) -> Path:
    mid = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    tempo = mido.MidiTrack()
    last = 0
    for tick, value in TEMPI:
        tempo.append(mido.MetaMessage("set_tempo", tempo=value, time=tick - last))
        last = tick
    events = [(t, mido.Message("note_on", channel=channel, note=n, velocity=100)) for t, _, n in notes]
    events += [(t + d, mido.Message("note_off", channel=channel, note=n, velocity=0)) for t, d, n in notes]
    events += list(extra)
    track, last = mido.MidiTrack(), 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        track.append(message.copy(time=tick - last))
        last = tick
    mid.tracks += [tempo, track]
    mid.save(path)
    return path


def onsets(audio: np.ndarray, *, floor: float = 1e-3) -> list[int]:
    """First sample of each sounding run after at least 5 ms of silence."""
    loud = np.abs(audio) > floor
    found, quiet = [], int(0.005 * SR)
    last = -quiet - 1
    for n in np.flatnonzero(loud):
        if n - last > quiet:
            found.append(int(n))
        last = n
    return found


def render(preset: Path, song: np.ndarray, sizes=None):
    graph = RenderGraph(load(preset), load_separator("dsp"))
    graph.check()
    stream = graph.stream(sample_rate=SR, channels=song.shape[0])
    mixes, stems, at = [], [], 0
    for size in list(sizes or []) + [song.shape[1]]:
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


@pytest.fixture
def silence() -> np.ndarray:
    return np.zeros((2, 6 * SR), np.float32)


def layer_preset(tmp_path, instrument, *, extra: str = "", layer: str = "", tail: float = 0.0) -> Path:
    preset = tmp_path / "p.yaml"
    preset.write_text(f"""version: 1
tempo: {{bpm: 120, time_signature: 4/4}}
layers:
  synth: {{instrument: {{vst3: {instrument}}}, midi: song.mid{layer}}}
output: {{tail_seconds: {tail}}}
{extra}""")
    return preset


def test_notes_sound_at_their_onsets_across_block_edges_and_tempo_changes(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid")
    mix, stems = render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)
    expected = [seconds(t) * SR for t, _, _ in NOTES]
    # The onsets fall at many places inside the instrument's 1 ms blocks, not on their edges.
    assert len({round(x) % block_size(SR) for x in expected}) >= 5
    found = onsets(mix[0])
    assert len(found) == len(NOTES)
    # sbsine starts at sin(0) = 0, so its first audible sample is one after the onset.
    np.testing.assert_allclose(found, expected, atol=0.001 * SR)
    np.testing.assert_allclose(found, np.round(expected), atol=2)  # in fact to the sample
    np.testing.assert_array_equal(mix, stems["synth"])


def test_a_note_held_over_block_edges_is_one_unbroken_sine(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid")
    mix, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)
    start_tick, length, note = NOTES[-1]
    begin, end = round(seconds(start_tick) * SR), round(seconds(start_tick + length) * SR)
    assert (end - begin) > 100 * block_size(SR)  # held across many instrument block edges
    frequency = 440 * 2 ** ((note - 69) / 12)
    ideal = 0.5 * np.sin(2 * np.pi * frequency * np.arange(end - begin) / SR)
    np.testing.assert_allclose(mix[0, begin:end], ideal, atol=1e-4)  # no reset, no gap, no phase jump at the edges
    np.testing.assert_array_equal(mix[:, end + 64:], 0.0)  # and the note-off arrived


def test_the_sustain_pedal_holds_a_released_note_across_block_edges(tmp_path, vst3_plugins, silence):
    """CC 64 down before the note-off and up 0.8 s later: the note sounds until the pedal lifts."""
    pedal = [(600, mido.Message("control_change", control=64, value=127)),
             (1700, mido.Message("control_change", control=64, value=0))]
    write_song(tmp_path / "song.mid", [(96, 960, 69)], extra=pedal)
    mix, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)
    sounding = np.flatnonzero(np.abs(mix[0]) > 1e-3)
    assert abs(sounding[0] - seconds(96) * SR) <= 0.001 * SR
    assert abs(sounding[-1] - seconds(1700) * SR) <= 0.001 * SR  # the pedal's lift, not the note-off at 0.55 s
    gaps = np.diff(sounding)
    assert gaps.max() < 0.003 * SR  # one unbroken note (a 440 Hz sine is below 1e-3 for ~1 sample per cycle)
    write_song(tmp_path / "song.mid", [(96, 960, 69)])
    released, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)
    assert abs(np.flatnonzero(np.abs(released[0]) > 1e-3)[-1] - seconds(96 + 960) * SR) <= 0.001 * SR


def test_a_real_instrument_kars_plays_the_notes_on_time(tmp_path, third_party, silence):
    notes = [(96, 200, 60), (1500, 200, 64), (2100, 150, 67), (3000, 100, 72)]
    write_song(tmp_path / "song.mid", notes)
    mix, _ = render(layer_preset(tmp_path, third_party["Kars"]), silence)
    np.testing.assert_array_equal(mix[0], mix[1])  # Kars is mono: duplicated to both channels
    found = onsets(mix[0], floor=1e-2)
    np.testing.assert_allclose(found, [seconds(t) * SR for t, _, _ in notes], atol=0.001 * SR)


def test_streaming_equals_one_pass_with_layers_and_automation(tmp_path, vst3_plugins):
    write_song(tmp_path / "song.mid")
    song, _ = files.read(REPO / "examples" / "demo.flac")
    song = song[:, : 5 * SR]
    preset = layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", gain_db: -6, pan: 0.3, chain: [{effect: Reverb}]",
                          extra="automation:\n  stems.synth.gain_db: [[0, -20], [4, 0]]\n"
                                "  stems.synth.chain[0].room_size: [[0, 0.2], ['3:1', 0.8]]\n", tail=0.5)
    whole, _ = render(preset, song)
    for sizes in ([1000, 333, 50000], [SR // 4] * 30, [1]):
        again, _ = render(preset, song, sizes)
        np.testing.assert_allclose(again, whole, atol=1e-6)
    assert whole.shape == (2, song.shape[1] + SR // 2)


def test_a_layer_is_mixed_like_a_stem(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid")
    plain, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)
    quieter, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", gain_db: -6.0206"), silence)
    np.testing.assert_allclose(quieter, 0.5 * plain, atol=1e-6)
    muted, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", mute: true"), silence)
    np.testing.assert_array_equal(muted, 0.0)
    left, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", pan: -1"), silence)
    np.testing.assert_allclose(left[0], np.sqrt(2) * plain[0], atol=1e-6)
    np.testing.assert_array_equal(left[1], 0.0)
    chained, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"],
                                     layer=f", chain: [{{vst3: {vst3_plugins['sbgain']}, params: {{mix: 0.5, "
                                           "gain_db: -60}}]"), silence)
    np.testing.assert_allclose(chained, 0.5 * plain, atol=1e-3 * 0.5)  # dry half plus -60 dB wet half


def test_transpose_and_start_offset_in_bars(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid", [(96, 480, 69)])
    mix, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", transpose: 12, start: '2:1'"), silence)
    begin = round((2.0 + seconds(96)) * SR)  # bar 2 at 120 bpm 4/4 = 2.0 s
    assert onsets(mix[0]) == [begin + 1]  # sbsine starts at sin(0) = 0: audible one sample later
    part = mix[0, begin:begin + 4096] * np.hanning(4096)
    peak = np.fft.rfftfreq(4096, 1 / SR)[np.argmax(np.abs(np.fft.rfft(part)))]
    assert abs(peak - 880.0) < 11  # an octave up; the FFT bins are 10.8 Hz wide


def test_arrange_scales_velocity_and_drops_notes_transposed_out_of_range():
    played = [(0.0, mido.Message("note_on", note=120, velocity=100)), (0.1, mido.Message("note_on", note=60,
                                                                                           velocity=100)),
              (0.2, mido.Message("note_on", note=61, velocity=1)), (0.3, mido.Message("note_off", note=120)),
              (0.4, mido.Message("control_change", control=64, value=127))]
    out = arrange(played, transpose=12, velocity=1.5, start=1.0)
    assert out == [(1.1, bytes([0x90, 72, 127])), (1.2, bytes([0x90, 73, 2])), (1.4, bytes([0xB0, 64, 127]))]


def test_a_layer_stem_file_is_written_and_sums_to_the_mix(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid", [(96, 480, 69)])
    preset = tmp_path / "p.yaml"
    preset.write_text(f"""version: 1
layers:
  synth: {{instrument: {{vst3: {vst3_plugins['sbsine']}}}, midi: song.mid}}
output: {{tail_seconds: 0, bit_depth: 32, files: {{mix: "{{track}}.mix.wav", stems: "{{track}}/{{stem}}.wav"}}}}
""")
    song, _ = files.read(REPO / "examples" / "demo.flac")
    source = tmp_path / "demo.wav"
    files.write(source, song[:, : 2 * SR], SR, bit_depth=32)
    graph = RenderGraph(load(preset), load_separator("dsp"))
    written = render_file(source, graph, tmp_path / "out")
    assert set(written) == {"mix", "vocals", "instrumental", "synth", "manifest"}
    mix, _ = files.read(written["mix"])
    parts = [files.read(written[k])[0] for k in ("vocals", "instrumental", "synth")]
    np.testing.assert_allclose(sum(parts), mix, atol=1e-6)
    assert np.abs(parts[2]).max() == pytest.approx(0.5, abs=1e-3)


def test_notes_after_the_end_are_not_played_and_reported(tmp_path, vst3_plugins):
    write_song(tmp_path / "song.mid")  # its last note starts at ~3.4 s
    short = np.zeros((2, 2 * SR), np.float32)
    with pytest.warns(LayerWarning, match=r"layers\.synth: 3 note\(s\) start after the render ends at 2\.500 s"):
        mix, _ = render(layer_preset(tmp_path, vst3_plugins["sbsine"], tail=0.5), short)
    assert mix.shape == (2, int(2.5 * SR))  # the song plus its tail, not the layer's length


def test_a_silent_instrument_is_reported(tmp_path, vst3_plugins, silence):
    write_song(tmp_path / "song.mid")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nlayers:\n  synth: {{instrument: {{vst3: {vst3_plugins['sbsine']}, "
                      "params: {level: 0.0}}, midi: song.mid}\noutput: {tail_seconds: 0}\n")
    with pytest.warns(LayerWarning, match=r"layers\.synth: sbsine gave silence for the first 100 ms of its first "
                                          r"note \(at 0\.100 s\)"):
        render(preset, silence)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerWarning)
        render(layer_preset(tmp_path, vst3_plugins["sbsine"]), silence)  # a sounding one is not


def test_the_cli_prints_a_layer_warning_as_one_line(tmp_path, vst3_plugins, capsys):
    write_song(tmp_path / "song.mid")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nseparator: {{model: dsp}}\nlayers:\n  synth: {{instrument: "
                      f"{vst3_plugins['sbsine']}, midi: song.mid}}\noutput: {{tail_seconds: 0}}\n")
    song = tmp_path / "short.wav"
    files.write(song, np.zeros((2, SR), np.float32), SR)
    import warnings as w
    with w.catch_warnings():
        w.simplefilter("always")
        assert cli(["render", str(preset), str(song), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == (f"stembridge: warning: {preset}: layers.synth: 5 note(s) start after the render ends at 1.000 s "
                   "and are not played; lengthen output.tail_seconds or move the layer's start\n")


@pytest.mark.parametrize(("instrument", "message"), [
    ("{vst3: SBGAIN}", r"layers\.synth\.instrument: sbgain is an effect, not an instrument"),
    ("{effect: Reverb}", r"layers\.synth\.instrument: expected a VST3 instrument"),
])
def test_an_effect_where_an_instrument_is_expected_is_one_line(tmp_path, vst3_plugins, instrument, message):
    write_song(tmp_path / "song.mid")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nlayers:\n  synth: {{instrument: {instrument.replace('SBGAIN', str(vst3_plugins['sbgain']))}, "
                      "midi: song.mid}\n")
    with pytest.raises((PluginError, PresetError), match=message):
        check_chains(load(preset))


def test_layer_midi_and_names_are_checked_with_their_key(tmp_path, vst3_plugins):
    write_song(tmp_path / "song.mid", channel=3)
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nlayers:\n  synth: {{instrument: {vst3_plugins['sbsine']}, midi: song.mid, "
                      "channel: 1}\n")
    with pytest.raises(MidiError, match=r"p\.yaml: layers\.synth: .* has no notes on channel 1 \(notes are on "
                                        r"channel\(s\) 4\)"):
        load(preset)
    (tmp_path / "bad.mid").write_bytes(b"MThd\x00\x00")
    preset.write_text(f"version: 1\nlayers:\n  synth: {{instrument: {vst3_plugins['sbsine']}, midi: bad.mid}}\n")
    with pytest.raises(MidiError, match=r"p\.yaml: layers\.synth\.midi: .*bad\.mid is not a MIDI file"):
        load(preset)
    preset.write_text(f"version: 1\nlayers:\n  vocals: {{instrument: {vst3_plugins['sbsine']}, midi: song.mid}}\n")
    with pytest.raises(PresetError, match=r"p\.yaml: layers\.vocals: the model already gives a stem 'vocals'"):
        RenderGraph(load(preset), load_separator("dsp"))


def test_layers_round_trip(tmp_path, vst3_plugins):
    write_song(tmp_path / "song.mid")
    preset = layer_preset(tmp_path, vst3_plugins["sbsine"], layer=", transpose: -3, velocity: 0.5, start: '1:3', "
                                                                  "gain_db: -2, duck: {by: vocals}")
    session = load(preset)
    preset.write_text(session.to_yaml())
    assert load(preset) == session
