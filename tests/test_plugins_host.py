"""The plugin host: VST3 lookup by name, ``stembridge plugins``, channel adaptation, ``preset check``.

With real third-party plugins built from Debian's source packages (``third_party`` fixture:
ZamEQ2 and ZamDelay are mono, 3BandEQ and MVerb stereo, Kars an instrument) and our own DPF
test plugins (``vst3_plugins``: sblatency delays by 64 samples, sbwiden has a main bus of one
input and two outputs, which pedalboard cannot host).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pedalboard
import pytest

import vst3
from bridge.audio import files
from bridge.cli import main as cli
from bridge.errors import PluginError
from bridge.render.graph import RenderGraph, check_chains
from bridge.render.mixer import BLOCK
from bridge.host.plugins import find_bundles, groups_for, resolve, search_folders
from bridge.render.song import render_file
from bridge.separation import load_separator
from bridge.preset.session import load as load_session

SR = 44100
REPO = Path(__file__).resolve().parent.parent
#: A ZamEQ2 setting that changes the sound a lot: +12 dB around 1 kHz, -20 dB highs.
EQ = {"boost_cut_1_db": 12.0, "frequency_1_hz": 1000.0, "boost_cut_h_db": -20.0}


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    audio, rate = files.read(REPO / "examples" / "demo.flac")
    assert rate == SR
    return audio[:, : 3 * SR]


@pytest.fixture
def plugin_dir(third_party, vst3_plugins, tmp_path, monkeypatch) -> Path:
    """A VST3 folder holding every test plugin (by symlink), on $VST3_PATH."""
    folder = tmp_path / "vst3"
    folder.mkdir()
    for name, bundle in {**third_party, **vst3_plugins}.items():
        (folder / bundle.name).symlink_to(bundle)
    monkeypatch.setenv("VST3_PATH", str(folder))
    return folder


def run_graph(preset: Path, song: np.ndarray, *, check: bool = True) -> np.ndarray:
    graph = RenderGraph(load_session(preset), load_separator("dsp"))
    if check:
        graph.check()
    stream = graph.stream(sample_rate=SR, channels=song.shape[0])
    first, second = stream.process(song), stream.finish()
    return np.concatenate([first[0], second[0]], axis=1)


def zam_eq(bundle: Path, params=EQ):
    plugin = pedalboard.load_plugin(str(bundle))
    for key, value in params.items():
        vst3.set_exact(plugin, key, value)
    return plugin


def streamed(plugin, audio: np.ndarray) -> np.ndarray:
    """``audio`` through a plugin alone, in the mixer's fixed blocks, padded and trimmed back."""
    padded = np.pad(audio, ((0, 0), (0, -audio.shape[1] % BLOCK)))
    plugin.reset()
    out = np.concatenate([plugin(padded[:, i:i + BLOCK], SR, reset=False) for i in range(0, padded.shape[1], BLOCK)],
                         axis=1)
    return out[:, : audio.shape[1]]


# --- lookup by name -----------------------------------------------------------------------------

def test_a_name_is_found_on_vst3_path_first(plugin_dir, third_party, tmp_path, monkeypatch):
    assert resolve("ZamCompX2", base=tmp_path, where="k") == plugin_dir / "ZamCompX2.vst3"
    assert resolve("zamcompx2", base=tmp_path, where="k") == plugin_dir / "ZamCompX2.vst3"  # case folded
    assert search_folders()[0] == plugin_dir
    assert [str(f) for f in search_folders()[1:]] == [str(Path("~/.vst3").expanduser()), "/usr/lib/vst3",
                                                      "/usr/local/lib/vst3"]
    # A second folder later on the path holding the same name does not win.
    other = tmp_path / "other"
    other.mkdir()
    (other / "ZamCompX2.vst3").symlink_to(third_party["ZamEQ2"])
    monkeypatch.setenv("VST3_PATH", f"{plugin_dir}:{other}")
    assert resolve("ZamCompX2", base=tmp_path, where="k") == plugin_dir / "ZamCompX2.vst3"
    # A path is a path, relative to the preset's folder.
    assert resolve("sub/ZamEQ2.vst3", base=tmp_path, where="k") == tmp_path / "sub" / "ZamEQ2.vst3"


def test_an_unknown_name_gets_did_you_mean_and_the_list(plugin_dir, tmp_path):
    with pytest.raises(PluginError) as caught:
        resolve("ZamComp2", base=tmp_path, where="p.yaml: stems.vocals.chain[0].vst3")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("p.yaml: stems.vocals.chain[0].vst3: no VST3 plugin named 'ZamComp2'")
    assert "did you mean 'ZamCompX2'?" in message
    for name in ("3BandEQ", "Kars", "ZamEQ2", "sbgain"):
        assert name in message
    assert "VST3_PATH" in message


def test_a_preset_names_a_plugin_and_renders(plugin_dir, tmp_path, song):
    preset = tmp_path / "named.yaml"
    preset.write_text("version: 1\nstems:\n  vocals: {chain: [{vst3: sblatency}]}\noutput: {tail_seconds: 0}\n")
    np.testing.assert_allclose(run_graph(preset, song), song, atol=1e-5)  # the DSP split sums back; delay compensated


# --- stembridge plugins ---------------------------------------------------------------------------

def test_plugins_lists_every_plugin_as_json(plugin_dir, capsys):
    fake = plugin_dir / "Broken.vst3" / "Contents" / f"{platform.machine()}-linux"
    fake.mkdir(parents=True)
    (fake / "Broken.so").write_text("not a shared library")
    assert cli(["plugins", str(plugin_dir), "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"Broken", "Kars", "Nekobi", "MVerb", "3BandEQ", "PingPongPan", "ZamEQ2", "ZamCompX2",
                           "ZamDelay", "sbgain", "sblatency", "sbsine", "sbwiden"}
    assert "could not be loaded" in listed["Broken"]["error"]
    assert "1 input and 2 output" in listed["sbwiden"]["error"]
    assert (listed["ZamEQ2"]["kind"], listed["ZamEQ2"]["channels"]) == ("effect", [1])
    assert (listed["3BandEQ"]["kind"], listed["3BandEQ"]["channels"]) == ("effect", [2])
    assert (listed["Kars"]["kind"], listed["Kars"]["channels"]) == ("instrument", [1])
    assert listed["sblatency"]["latency"] == vst3.LATENCY and listed["ZamEQ2"]["latency"] == 0
    params = {p["name"]: p for p in listed["ZamCompX2"]["parameters"]}
    assert params["threshold_db"]["unit"] == "dB"
    assert (params["threshold_db"]["minimum"], params["threshold_db"]["maximum"]) == (-80.0, 0.0)
    assert params["threshold_db"]["default"] == pytest.approx(0.0, abs=1e-4)
    assert params["current_program"]["choices"] and params["current_program"]["minimum"] is None
    gain = {p["name"]: p for p in listed["sbgain"]["parameters"]}["gain_db"]
    assert (gain["minimum"], gain["maximum"], gain["default"]) == (-60.0, 24.0, pytest.approx(0.0, abs=1e-5))


def test_plugins_lists_as_text_one_plugin_a_line_and_its_parameters(plugin_dir, capsys):
    assert cli(["plugins"]) == 0  # $VST3_PATH is searched by default
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("ZamEQ2 "))
    assert "effect" in line and "mono" in line and "latency     0" in line
    assert "boost_cut_1_db" in out and "-50 .. 20 dB" in out
    assert any("sbwiden" in x and "BROKEN" in x for x in out.splitlines())


def test_find_bundles_does_not_descend_into_bundles_and_survives_a_link_loop(plugin_dir):
    (plugin_dir / "vendor").mkdir()
    (plugin_dir / "vendor" / "loop").symlink_to(plugin_dir)  # ~/.vst3/vendor/loop -> ~/.vst3
    found = find_bundles([plugin_dir])
    assert set(found) >= {"ZamEQ2", "Kars"}
    assert all(path.parent == plugin_dir for path in found.values())


# --- channel adaptation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("channels", "accepted", "groups"), [
    (2, (1, 2), ((0, 1),)),
    (2, (1,), ((0,), (1,))),
    (1, (2,), ((0, 0),)),
    (6, (2,), ((0, 1), (2, 3), (4, 5))),
    (6, (1,), tuple((c,) for c in range(6))),
    (6, (1, 2), ((0, 1), (2, 3), (4, 5))),
    (2, (), None),
])
def test_groups_for_each_layout(channels, accepted, groups):
    assert groups_for(channels, accepted) == groups


def test_zameq2_on_a_stereo_stem_equals_the_plugin_on_each_channel_alone(plugin_dir, third_party, tmp_path, song):
    """The issue's case: a mono plugin on a stereo stem runs as two linked instances."""
    params = ", ".join(f"{k}: {v}" for k, v in EQ.items())
    preset = tmp_path / "eq.yaml"
    preset.write_text(f"version: 1\nstems:\n  vocals: {{chain: [{{vst3: ZamEQ2, params: {{{params}}}}}]}}\n"
                      "  instrumental: {mute: true}\noutput: {tail_seconds: 0}\n")
    out = run_graph(preset, song)
    vocals = load_separator("dsp")(song, SR)["vocals"]
    for c in (0, 1):
        alone = streamed(zam_eq(third_party["ZamEQ2"]), vocals[c:c + 1])[0]
        np.testing.assert_allclose(out[c], alone, atol=1e-6)  # the same float32 filter, the same blocks
    assert np.abs(out - vocals).max() > 0.05  # and the EQ did change the sound
    assert np.abs(out[0] - out[1]).max() > 1e-3  # the channels were not collapsed to one


def test_zameq2_preset_checks_and_renders_from_the_cli(plugin_dir, tmp_path, capsys, song):
    """The issue's report, run again: `preset check` said ok and `render` died with a traceback."""
    preset = tmp_path / "eq.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nstems:\n  vocals: {chain: [{vst3: ZamEQ2}]}\n"
                      "output: {tail_seconds: 0.1}\n")
    assert cli(["preset", "check", str(preset)]) == 0
    assert "ok" in capsys.readouterr().out
    excerpt = tmp_path / "demo.wav"
    files.write(excerpt, song, SR, bit_depth=32)
    assert cli(["render", str(preset), str(excerpt), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    audio, rate = files.read(tmp_path / "out" / "demo.remix.wav")
    assert audio.shape == (2, song.shape[1] + SR // 10) and rate == SR


def test_a_stereo_plugin_on_a_mono_input_is_fed_the_channel_twice_and_folded(plugin_dir, third_party, tmp_path,
                                                                              song):
    preset = tmp_path / "mono.yaml"
    preset.write_text("version: 1\npre: [{vst3: 3BandEQ, params: {low_db: -12.0, high_db: 6.0}}]\n"
                      "output: {tail_seconds: 0}\n")
    mono = song[:1]
    out = run_graph(preset, mono)
    eq = pedalboard.load_plugin(str(third_party["3BandEQ"]))
    vst3.set_exact(eq, "low_db", -12.0)
    vst3.set_exact(eq, "high_db", 6.0)
    expected = streamed(eq, np.repeat(mono, 2, axis=0)).mean(axis=0)
    assert out.shape == (2, mono.shape[1])  # the mix is stereo; the pre chain ran on the mono song
    for c in (0, 1):
        np.testing.assert_allclose(out[c], expected, atol=1e-5)  # the DSP split sums back to its input


def test_master_chains_in_5_1_run_per_channel_pair_or_per_channel(plugin_dir, third_party, tmp_path, song):
    preset = tmp_path / "surround.yaml"
    preset.write_text("version: 1\nmaster: [{vst3: 3BandEQ, params: {high_db: -12.0}}, {vst3: ZamEQ2, params: "
                      "{boost_cut_1_db: 12.0}}]\noutput: {layout: '5.1', tail_seconds: 0}\n")
    out = run_graph(preset, song)
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\noutput: {layout: '5.1', tail_seconds: 0}\n")
    dry = run_graph(plain, song)
    assert out.shape == dry.shape == (6, song.shape[1])
    for pair in ((0, 1), (2, 3), (4, 5)):
        eq = pedalboard.load_plugin(str(third_party["3BandEQ"]))
        vst3.set_exact(eq, "high_db", -12.0)
        banded = streamed(eq, dry[list(pair)])
        for row, c in enumerate(pair):
            alone = streamed(zam_eq(third_party["ZamEQ2"], {"boost_cut_1_db": 12.0}), banded[row:row + 1])[0]
            np.testing.assert_allclose(out[c], alone, atol=1e-5, err_msg=f"channel {c}")


def test_latency_stays_aligned_through_adaptation(plugin_dir, tmp_path, song):
    """sblatency delays 64 samples and says so: in 5.1 it runs as three instances, on a mono input
    fed twice and folded; either way the output lines up with a render without it."""
    for layout, audio in (("'5.1'", song), ("stereo", song[:1])):
        with_delay = tmp_path / "delay.yaml"
        with_delay.write_text(f"version: 1\npre: [{{vst3: sblatency}}]\nmaster: [{{vst3: sblatency}}]\n"
                              f"output: {{layout: {layout}, tail_seconds: 0.2}}\n")
        without = tmp_path / "plain.yaml"
        without.write_text(f"version: 1\noutput: {{layout: {layout}, tail_seconds: 0.2}}\n")
        np.testing.assert_allclose(run_graph(with_delay, audio), run_graph(without, audio), atol=1e-5)


def test_linked_instances_start_from_the_same_preset_state(plugin_dir, third_party, tmp_path, song):
    source = zam_eq(third_party["ZamEQ2"])
    source(np.zeros((1, 256), np.float32), SR)  # state is stale until a buffer is processed
    (tmp_path / "eq.vstpreset").write_bytes(source.preset_data)
    with_preset = tmp_path / "p.yaml"
    with_preset.write_text("version: 1\nstems:\n  vocals: {chain: [{vst3: ZamEQ2, preset: eq.vstpreset}]}\n"
                           "output: {tail_seconds: 0}\n")
    params = ", ".join(f"{k}: {v}" for k, v in EQ.items())
    with_params = tmp_path / "q.yaml"
    with_params.write_text(f"version: 1\nstems:\n  vocals: {{chain: [{{vst3: ZamEQ2, params: {{{params}}}}}]}}\n"
                           "output: {tail_seconds: 0}\n")
    np.testing.assert_allclose(run_graph(with_preset, song), run_graph(with_params, song), atol=1e-6)


# --- layouts that cannot work: one line, naming the key, nothing written ------------------------

def test_a_plugin_no_arrangement_fits_is_one_line_naming_the_key(plugin_dir, tmp_path, capsys):
    preset = tmp_path / "wide.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nstems:\n  vocals: {chain: [{effect: Gain}, "
                      "{vst3: sbwiden}]}\n")
    out = tmp_path / "out"
    for argv in (["preset", "check", str(preset)],
                 ["render", str(preset), str(REPO / "examples" / "demo.flac"), "--out", str(out)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"stembridge: error: {preset}: stems.vocals.chain[1]: sbwiden.vst3 has 1 input and 2 "
                              "output channels")
    assert not out.exists()


def test_an_instrument_in_an_effect_chain_is_one_line(plugin_dir, tmp_path, capsys):
    preset = tmp_path / "kars.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nmaster: [{vst3: Kars}]\n")
    assert cli(["preset", "check", str(preset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"stembridge: error: {preset}: master[0]: Kars is an instrument, not an effect; play it from a "
                   "MIDI file in 'layers:' or choose an effect")


def test_render_file_that_cannot_fit_a_plugin_leaves_no_output_folder(plugin_dir, tmp_path):
    preset = tmp_path / "wide.yaml"
    preset.write_text("version: 1\nmaster: [{vst3: sbwiden}]\n")
    graph = RenderGraph(load_session(preset), load_separator("dsp"))  # not checked first
    with pytest.raises(PluginError, match=r"master\[0\]: sbwiden\.vst3 has 1 input"):
        render_file(REPO / "examples" / "demo.flac", graph, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_check_prepares_every_chain_at_its_real_channel_count(plugin_dir, tmp_path):
    """A stereo-only plugin fits everywhere (by duplication or pairs); what cannot fit is named."""
    preset = tmp_path / "all.yaml"
    preset.write_text("version: 1\npre: [{vst3: MVerb}]\nstems:\n  vocals: {chain: [{vst3: ZamDelay}]}\n"
                      "master: [{vst3: PingPongPan}]\noutput: {layout: '5.1'}\n")
    check_chains(load_session(preset))
    preset.write_text("version: 1\npre: [{vst3: sbwiden}]\n")
    with pytest.raises(PluginError, match=r"all\.yaml: pre\[0\]: sbwiden"):
        check_chains(load_session(preset))


def test_loading_the_third_party_plugins_leaves_subnormal_floats_alone(third_party):
    """Built with DPF's default -ffast-math, each .so switched the whole process to flush-to-zero
    on load (GCC links crtfastmath.o); thirdparty.py builds them without it."""
    import sys

    for bundle in third_party.values():
        pedalboard.load_plugin(str(bundle))
    assert sys.float_info.min / 2 > 0.0  # a subnormal double survives
