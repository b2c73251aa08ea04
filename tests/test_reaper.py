"""REAPER projects: parsed with the independent PyPI parser ``rpp``, checked against the session,
and played back by hand (the audible tracks' files times their volume envelopes) against the mix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rpp
import soundfile as sf

from bridge import __version__
from bridge.audio import partials
from bridge.cli import main as cli
from bridge.daw import handoff, reaper
from bridge.errors import OutputError
from bridge.render.graph import RenderGraph
from bridge.render.mixer import gain_curve
from bridge.render.song import render_file
from bridge.separation import load_separator
from bridge.preset.session import parse

SR = 44100


@pytest.fixture(scope="module")
def separator():
    return load_separator("dsp")


def synth(seconds: float = 1.5, seed: int = 14) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    centre = 0.25 * np.sin(2 * np.pi * 440 * t)  # the dsp separator's "vocals"
    sides = 0.1 * rng.standard_normal((2, t.size))
    return (centre + sides).astype(np.float32)


def write_song(path: Path, seconds: float = 1.5) -> Path:
    sf.write(str(path), synth(seconds).T, SR, subtype="FLOAT")
    return path


def render(tmp_path, separator, source, *, stems=None, extra=None, **output):
    session = parse({"version": 1, "stems": stems or {}, **(extra or {}),
                     "output": {"files": {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}"},
                                "bit_depth": 32, "tail_seconds": 0.25, "project": "reaper", **output}},
                    source=str(tmp_path / "session.yaml"))
    return render_file(source, RenderGraph(session, separator), tmp_path / "out"), session


def children(element, tag: str) -> list:
    return [c for c in element if isinstance(c, rpp.Element) and c.tag == tag]


def value(element, key: str) -> list[str]:
    found = [c for c in element if isinstance(c, list) and c[0] == key]
    assert len(found) == 1, f"{key}: {len(found)} lines"
    return found[0][1:]


def load(path: Path):
    text = path.read_text(encoding="utf-8")
    project = rpp.loads(text)
    assert rpp.loads(rpp.dumps(project)) == project  # round trip through the independent parser
    return project


def envelope(track, tag: str) -> np.ndarray | None:
    found = children(track, tag)
    if not found:
        return None
    return np.array([[float(v) for v in c[1:4]] for c in found[0] if isinstance(c, list) and c[0] == "PT"])


def reaper_curve(points: np.ndarray, t: np.ndarray) -> np.ndarray:
    """An envelope as REAPER plays it, from its ``PT time value shape`` rows: shape 0 linear to the
    next point, shape 1 square (held until the next point); the first value before the first
    point, the last after the last; of two points at one time the later wins from then on."""
    times, values, shapes = points[:, 0], points[:, 1], points[:, 2]
    assert set(shapes.tolist()) <= {0.0, 1.0}
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
    j = np.minimum(i + 1, len(times) - 1)
    span = times[j] - times[i]
    f = np.clip((t - times[i]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    out = values[i] + np.where(shapes[i] == 0, f * (values[j] - values[i]), 0.0)
    return np.where(t < times[0], values[0], out)


def track_named(project, name: str):
    return [t for t in children(project, "TRACK") if value(t, "NAME") == [name]][0]


def playback(project, folder: Path, frames: int, channels: int) -> np.ndarray:
    """What REAPER plays: audible tracks (unmuted; the soloed ones if any), polarity, the fader
    volume times the volume envelope (trim/read, a new track's mode), pan and the pan envelope
    (stored with left positive) at stembridge's pan law, the setting the project's notes name
    (stereo tracks only: the 5.1 tracks here have their pan in the file)."""
    tracks = children(project, "TRACK")
    soloed = any(int(value(t, "MUTESOLO")[1]) for t in tracks)
    out = np.zeros((channels, frames))
    for track in tracks:
        mute, solo = int(value(track, "MUTESOLO")[0]), int(value(track, "MUTESOLO")[1])
        if mute or (soloed and not solo):
            continue
        source = children(children(track, "ITEM")[0], "SOURCE")[0]
        audio = sf.read(str(folder / value(source, "FILE")[0]), dtype="float64", always_2d=True)[0].T
        points = envelope(track, "VOLENV2")
        t = np.arange(audio.shape[1]) / SR
        gain = float(value(track, "VOLPAN")[0]) * (reaper_curve(points, t) if points is not None else 1.0)
        assert value(track, "AUTOMODE") == ["0"]  # trim/read, as this playback models it
        sign = -1.0 if int(value(track, "IPHASE")[0]) else 1.0
        pan_points = envelope(track, "PANENV2")
        pan = float(value(track, "VOLPAN")[1]) + (-reaper_curve(pan_points, t) if pan_points is not None else 0.0)
        if audio.shape[0] == 2:
            theta = (pan + 1) * np.pi / 4 + np.zeros_like(t)
            audio = audio * np.sqrt(2) * np.stack([np.cos(theta), np.sin(theta)])
        else:
            assert pan_points is None and float(value(track, "VOLPAN")[1]) == 0.0
        out[:, : audio.shape[1]] += sign * gain * audio
    return out


def test_tracks_items_and_sources_match_the_session(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"gain_db": 4.5, "pan": -0.4, "solo": True, "invert": True},
             "instrumental": {"gain_db": -7.25, "pan": 0.75, "mute": True}}
    written, session = render(tmp_path, separator, source, stems=stems)
    project_file = written["project"]
    assert project_file == tmp_path / "out" / "song" / "song.rpp"  # beside the stem files
    assert json.loads(written["manifest"].read_text())["handoff"] == {"project": str(project_file)}
    project = load(project_file)
    assert project.tag == "REAPER_PROJECT"
    assert project.attrib[:2] == ["0.1", f"6.0/stembridge-{__version__}"] and int(project.attrib[2]) > 1.7e9
    assert "|" + handoff.PAN_LAW_NOTE in children(project, "NOTES")[0]  # panned tracks: how to match the law
    assert value(project, "SAMPLERATE")[0] == str(SR) and value(project, "MASTER_NCH")[0] == "2"
    tracks = children(project, "TRACK")
    assert [value(t, "NAME")[0] for t in tracks] == ["original mix (reference)", "vocals", "instrumental"]
    reference = tracks[0]
    assert value(reference, "MUTESOLO")[0] == "1"
    ref_source = children(children(reference, "ITEM")[0], "SOURCE")[0]
    # The input lies in the folder that holds the output folder: referenced relatively, as the stems are.
    assert value(ref_source, "FILE")[0] == "../../song.wav"
    assert (project_file.parent / value(ref_source, "FILE")[0]).resolve() == source.resolve()
    assert float(value(children(reference, "ITEM")[0], "LENGTH")[0]) == pytest.approx(1.5, abs=1e-12)
    for track in tracks[1:]:
        name = value(track, "NAME")[0]
        s = session.stem(name)
        volume, pan = (float(v) for v in value(track, "VOLPAN")[:2])
        assert volume == pytest.approx(10 ** (s.gain_db / 20), rel=1e-12)
        assert pan == pytest.approx(s.pan, abs=1e-12)
        assert value(track, "MUTESOLO")[:2] == [str(int(s.mute)), "2" if s.solo else "0"]
        assert value(track, "IPHASE") == [str(int(s.invert))]
        assert value(track, "NCHAN") == ["2"]
        item = children(track, "ITEM")
        assert len(item) == 1
        assert float(value(item[0], "POSITION")[0]) == 0.0 and float(value(item[0], "SOFFS")[0]) == 0.0
        src = children(item[0], "SOURCE")[0]
        assert src.attrib == ["WAVE"]
        relative = value(src, "FILE")[0]
        assert not Path(relative).is_absolute()  # the folder can be moved
        assert (project_file.parent / relative) == written[name]
        info = sf.info(str(written[name]))
        assert float(value(item[0], "LENGTH")[0]) == pytest.approx(info.frames / info.samplerate, abs=1e-12)


def test_the_reference_track_is_relative_under_the_output_folders_tree_and_absolute_elsewhere(tmp_path, separator):
    """An album folder with --out inside it moves whole with its project; an input elsewhere keeps
    its absolute path, so the output folder alone can be moved on the same machine."""
    album = tmp_path / "album"
    (album / "disc 1").mkdir(parents=True)
    inside = write_song(album / "disc 1" / "song.wav", seconds=0.5)
    session = parse({"version": 1, "output": {"files": {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}"},
                                               "bit_depth": 32, "tail_seconds": 0, "project": "reaper"}},
                    source=str(tmp_path / "session.yaml"))
    written = render_file(inside, RenderGraph(session, separator), album / "remixes")
    ref = children(children(children(load(written["project"]), "TRACK")[0], "ITEM")[0], "SOURCE")[0]
    assert value(ref, "FILE")[0] == "../../disc 1/song.wav"
    moved = tmp_path / "moved album"
    album.rename(moved)
    project = moved / written["project"].relative_to(album)
    assert (project.parent / value(ref, "FILE")[0]).resolve() == (moved / "disc 1" / "song.wav").resolve()

    elsewhere = tmp_path / "nas" / "music"
    elsewhere.mkdir(parents=True)
    outside = write_song(elsewhere / "song.wav", seconds=0.5)
    written = render_file(outside, RenderGraph(session, separator), tmp_path / "work" / "remixes")
    ref = children(children(children(load(written["project"]), "TRACK")[0], "ITEM")[0], "SOURCE")[0]
    assert value(ref, "FILE")[0] == str(outside.resolve())


def test_processed_stems_are_before_the_fader_so_the_project_plays_the_mix(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"gain_db": [[0.0, 0.0], [0.5, -9.0], [1.2, 3.0]], "invert": True,
                        "chain": [{"effect": "Gain", "gain_db": -2.0}]},
             "instrumental": {"gain_db": -3.0}}
    written, _ = render(tmp_path, separator, source, stems=stems)
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    played = playback(load(written["project"]), written["project"].parent, mix.shape[1], 2)
    # float32 files; the envelope's 1 dB steps follow the dB-linear session curve within 0.015 dB
    # (0.17 %), on signals under 0.6 peak.
    np.testing.assert_allclose(played, mix, atol=0.6 * 0.0018)
    assert np.max(np.abs(mix)) > 0.1


def test_gain_automation_becomes_a_volume_envelope_within_0_02_db(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    lane = [[0.0, -20.0], [0.3, 0.0], [0.9, 6.0], [1.1, -60.0]]
    written, session = render(tmp_path, separator, source, stems={"vocals": {"gain_db": lane}})
    track = [t for t in children(load(written["project"]), "TRACK") if value(t, "NAME") == ["vocals"]][0]
    points = envelope(track, "VOLENV2")
    assert points[0].tolist() == [0.0, pytest.approx(0.1, rel=1e-12), 0.0]  # linear
    assert [p for p in lane if not np.any(np.isclose(points[:, 0], p[0], atol=1e-12))] == []  # every breakpoint
    rate = 5000 / 1.6  # a dense grid: 5000 points over 1.6 s
    grid = np.arange(5000) / rate
    expected_db = 20 * np.log10(gain_curve(session.stem("vocals").gain_db, 0, 5000, rate))
    got_db = 20 * np.log10(np.interp(grid, points[:, 0], points[:, 1]))
    np.testing.assert_allclose(got_db, expected_db, atol=0.02)


def test_5_1_tracks_are_six_channel_and_play_the_5_1_mix(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"gain_db": [[0.0, -6.0], [1.0, 0.0]], "pan": 0.3}, "instrumental": {"gain_db": -2.0}}
    written, _ = render(tmp_path, separator, source, stems=stems, layout="5.1")
    project = load(written["project"])
    assert value(project, "MASTER_NCH")[0] == "6"
    tracks = children(project, "TRACK")
    assert [value(t, "NCHAN")[0] for t in tracks] == ["2", "6", "6"]  # the reference is the stereo input
    for track in tracks[1:]:
        name = value(track, "NAME")[0]
        assert sf.info(str(written[name])).channels == 6
    assert "pan +0.3 is applied in the file" in "".join(children(tracks[1], "NOTES")[0])
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    assert mix.shape[0] == 6
    played = playback(project, written["project"].parent, mix.shape[1], 6)
    np.testing.assert_allclose(played, mix, atol=0.6 * 0.0018)


def test_raw_stems_are_the_separator_s_and_the_chains_go_to_the_notes(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"gain_db": 2.0, "chain": [{"effect": "Reverb", "room_size": 0.7},
                                                  {"effect": "Compressor", "threshold_db": -20}]}}
    written, _ = render(tmp_path, separator, source, stems=stems, project_stems="raw", tail_seconds=0.0)
    raw = separator(synth(), SR)
    for name in ("vocals", "instrumental"):
        audio = sf.read(str(written[name]), dtype="float32", always_2d=True)[0].T
        np.testing.assert_allclose(audio, raw[name], atol=1e-6)  # untouched by chain, gain or pan
    track = [t for t in children(load(written["project"]), "TRACK") if value(t, "NAME") == ["vocals"]][0]
    notes = children(track, "NOTES")[0]
    assert "|1. Reverb(room_size=0.7)" in notes and "|2. Compressor(threshold_db=-20)" in notes
    assert float(value(track, "VOLPAN")[0]) == pytest.approx(10 ** 0.1, rel=1e-12)


@pytest.mark.parametrize("name", ["my song", 'the "live" take', "it's \"it\"", "Ünïcødé – ボーカル", "tab\there"])
def test_names_with_spaces_quotes_and_non_ascii_parse_back_exactly(tmp_path, separator, name):
    source = write_song(tmp_path / f"{name}.wav", seconds=0.5)
    written, _ = render(tmp_path, separator, source)
    project = load(written["project"])
    ref = children(children(children(project, "TRACK")[0], "ITEM")[0], "SOURCE")[0]
    assert value(ref, "FILE")[0] == f"../../{name}.wav"
    assert written["project"].name == f"{name}.rpp"


def test_quoting_follows_reaper_and_refuses_what_it_cannot_carry():
    assert reaper.quote("vocals") == "vocals"
    assert reaper.quote("a b") == '"a b"' and reaper.quote('a "b"') == "'a \"b\"'"
    assert reaper.quote("""it's "x" """) == """`it's "x" `""" and reaper.quote("") == '""'
    with pytest.raises(OutputError, match="all three quote characters"):
        reaper.quote("""`it's` "x\"""")
    with pytest.raises(OutputError, match="line break"):
        reaper.quote("a\nb")
    assert [reaper.number(x) for x in (1.0, 0.5, -0.0, 1e-8, 123.456)] == ["1", "0.5", "0", "0.00000001", "123.456"]


def test_a_name_reaper_cannot_carry_is_refused_before_anything_is_written(tmp_path, separator):
    source = write_song(tmp_path / """`it's` "x".wav""", seconds=0.5)
    with pytest.raises(OutputError, match=r"output\.project: the input's path .* all three quote characters"):
        render(tmp_path, separator, source)
    assert not (tmp_path / "out").exists() or [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_project_path_that_collides_with_a_stem_file_is_refused(tmp_path, separator):
    source = write_song(tmp_path / "vocals.wav", seconds=0.5)
    session = parse({"version": 1, "output": {"project": "reaper", "files": {"stems": "{track}/{stem}.rpp"}}},
                    source="clash.yaml")
    with pytest.raises(OutputError, match=r"clash\.yaml: output\.project: the REAPER project .*vocals\.rpp would be "
                                          r"written over the stem vocals file"):
        render_file(source, RenderGraph(session, separator), tmp_path / "out")
    assert not (tmp_path / "out").exists() or [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_writer_tempo_pan_envelope_and_numbers():
    project = reaper.Project(sample_rate=48000, channels=2, tempo=reaper.Tempo(bpm=92.5, numerator=7, denominator=8),
                             tracks=(reaper.Track(name="bass", file="bass.flac", length=3.25,
                                                  pan_envelope=((0.0, -1.0), (2.0, 0.5))),))
    parsed = rpp.loads(reaper.dumps(project))
    assert value(parsed, "TEMPO") == ["92.5", "7", "8"]
    track = children(parsed, "TRACK")[0]
    assert children(children(track, "ITEM")[0], "SOURCE")[0].attrib == ["FLAC"]
    # REAPER keeps pan envelope points with left positive.
    assert envelope(track, "PANENV2").tolist() == [[0.0, 1.0, 0.0], [2.0, -0.5, 0.0]]


def test_project_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "song.rpp"
    target.write_text("old")
    project = reaper.Project(sample_rate=SR, tracks=(reaper.Track(name="x", file="x.wav", length=1.0),))

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(partials.os, "replace", crash)  # the rename of partials.write_text_atomic
    with pytest.raises(KeyboardInterrupt):
        reaper.write(target, project)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["song.rpp"]


def test_separate_and_render_take_project_reaper_on_the_command_line(tmp_path, capsys):
    source = write_song(tmp_path / "song.wav", seconds=0.5)
    assert cli(["separate", str(source), "--model", "dsp", "--out", str(tmp_path / "sep"), "--project", "reaper"]) == 0
    project = load(tmp_path / "sep" / "song" / "song.rpp")
    names = [value(t, "NAME")[0] for t in children(project, "TRACK")]
    assert names == ["original mix (reference)", "vocals", "instrumental"]
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0}\n")
    assert cli(["render", str(preset), str(source), "--out", str(tmp_path / "ren"), "--project", "reaper"]) == 0
    out = capsys.readouterr().out
    assert f"song.wav: project -> {tmp_path / 'ren' / 'song' / 'song.rpp'}" in out
    assert (tmp_path / "ren" / "song" / "vocals.wav").exists()  # files.stems defaults with a project
    assert math.isclose(float(value(children(children(load(tmp_path / "ren" / "song" / "song.rpp"), "TRACK")[1],
                                             "ITEM")[0], "LENGTH")[0]), 0.5, abs_tol=1e-12)


def test_resume_writes_a_project_that_is_missing_or_newly_asked_for(tmp_path):
    source = write_song(tmp_path / "song.wav", seconds=0.5)
    sep = ["separate", str(source), "--model", "dsp", "--out", str(tmp_path / "sep"), "--no-cache", "--quiet"]
    assert cli(sep) == 0
    project = tmp_path / "sep" / "song" / "song.rpp"
    assert not project.exists()
    assert cli([*sep, "--project", "reaper"]) == 0  # not "up to date": the project is new
    assert project.is_file()
    project.unlink()
    assert cli([*sep, "--project", "reaper"]) == 0
    assert project.is_file()
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, project: reaper}\n")
    ren = ["render", str(preset), str(source), "--out", str(tmp_path / "ren"), "--no-cache", "--quiet"]
    assert cli(ren) == 0
    rendered = tmp_path / "ren" / "song" / "song.rpp"
    before = rendered.stat().st_mtime_ns
    assert cli(ren) == 0 and rendered.stat().st_mtime_ns == before  # up to date: skipped
    rendered.unlink()
    assert cli(ren) == 0 and rendered.is_file()  # gone: rendered again


def test_the_readme_hand_off_snippet_is_a_valid_output_section():
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## DAW hand-off", 1)[1]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    output = parse({"version": 1, **yaml.safe_load(snippet)}, source="README.md").output
    assert (output.bwf, output.project, output.project_stems) == (True, "reaper", "processed")
    assert output.nistems == "{track}.stem.mp4"


def test_guids_are_unique_in_a_project_and_differ_between_songs():
    import re
    from collections import Counter

    def project(song: str) -> str:
        tracks = tuple(reaper.Track(name=n, file=f"{song}/{n}.wav", length=1.0,
                                    volume_envelope=((0.0, 1.0), (1.0, 0.5))) for n in ("a", "b"))
        return reaper.dumps(reaper.Project(sample_rate=SR, tracks=tracks))

    one, two = project("one"), project("two")
    counts = Counter(re.findall(r"\{[0-9A-F-]{36}\}", one))
    # Per track: TRACK and TRACKID share one GUID; the item, the take and the envelope have their own.
    assert sorted(counts.values()) == [1] * 6 + [2] * 2
    assert not set(counts) & set(re.findall(r"\{[0-9A-F-]{36}\}", two))
    assert one.split("\n", 1)[1] == project("one").split("\n", 1)[1]  # the same song: the same GUIDs


# --- automation lanes and tempo (issue 12's sessions) ---------------------------------------------

def lane_of(session, target: str):
    return dict((str(t), lane) for t, lane in session.automation)[target]


def assert_follows(points: np.ndarray, lane, *, gain: bool, tolerance: float, end: float = 1.6) -> float:
    """REAPER's envelope against the session's own evaluation of the lane on a dense grid; returns
    the largest difference (dB for gain, pan units for pan)."""
    grid = np.linspace(0.0, end, 32001)
    want = lane.at(grid)
    got = reaper_curve(points, grid)
    error = np.abs(20 * np.log10(got) - want) if gain else np.abs(-got - want)
    assert error.max() <= tolerance
    return float(error.max())


def test_lanes_in_seconds_and_bars_follow_the_session_tempo_and_play_the_mix(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    # 160 bpm in 3/4: a beat is 0.375 s, so "1:3" is at 0.75 s and "2:1.5" at (3 + 0.5) * 0.375 = 1.3125 s.
    extra = {"tempo": {"bpm": 160, "time_signature": "3/4"},
             "automation": {"stems.vocals.gain_db": [[0, -12], ["1:3", 0], ["2:1.5", -6]],
                            "stems.instrumental.pan": [[0.1, -0.8], [1.2, 0.6]]}}
    stems = {"vocals": {"gain_db": 5.0, "chain": [{"effect": "Gain", "gain_db": -1.0}]}, "instrumental": {"pan": 0.9}}
    written, session = render(tmp_path, separator, source, stems=stems, extra=extra)
    project = load(written["project"])
    assert value(project, "TEMPO") == ["160", "3", "4"]
    vocals, instrumental = track_named(project, "vocals"), track_named(project, "instrumental")
    # The lane replaces the constant gain and pan, as in the mixer; the faders stay at unity.
    assert [float(v) for v in value(vocals, "VOLPAN")[:2]] == [1.0, 0.0]
    assert [float(v) for v in value(instrumental, "VOLPAN")[:2]] == [1.0, 0.0]
    volume = envelope(vocals, "VOLENV2")
    for t, db in [(0.0, -12.0), (0.75, 0.0), (1.3125, -6.0)]:  # every breakpoint, at its bar:beat time
        row = volume[np.isclose(volume[:, 0], t, atol=1e-12)]
        assert row.shape[0] == 1 and row[0, 1] == pytest.approx(10 ** (db / 20), rel=1e-12)
    assert set(volume[:, 2]) == {0.0}
    assert_follows(volume, lane_of(session, "stems.vocals.gain_db"), gain=True, tolerance=reaper.GAIN_TOLERANCE_DB)
    pan = envelope(instrumental, "PANENV2")
    assert pan.tolist() == [[0.1, 0.8, 0.0], [1.2, -0.6, 0.0]]  # point for point, REAPER's sign (left positive)
    assert_follows(pan, lane_of(session, "stems.instrumental.pan"), gain=False, tolerance=1e-12)
    assert children(instrumental, "VOLENV2") == []
    assert "Its automation is in the file" not in "".join(children(vocals, "NOTES")[0])
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    played = playback(project, written["project"].parent, mix.shape[1], 2)
    np.testing.assert_allclose(played, mix, atol=0.6 * 0.0025)  # 0.02 dB (0.23 %) on signals under 0.6


def test_a_pan_lane_keeps_its_sign_left_is_left(tmp_path, separator):
    source = write_song(tmp_path / "song.wav", seconds=1.0)
    extra = {"automation": {"stems.vocals.pan": [[0, -1], [1, 1]]}}
    written, _ = render(tmp_path, separator, source, stems={"instrumental": {"mute": True}}, extra=extra)
    project = load(written["project"])
    points = envelope(track_named(project, "vocals"), "PANENV2")
    assert points[0, 1] == 1.0 and points[-1, 1] == -1.0  # REAPER stores hard left as +1
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    early = slice(0, SR // 100)  # the session starts hard left: the right channel is near silent
    assert np.sum(mix[1, early] ** 2) < 0.01 * np.sum(mix[0, early] ** 2)
    np.testing.assert_allclose(playback(project, written["project"].parent, mix.shape[1], 2), mix, atol=1e-5)


def test_hold_lanes_are_square_points_and_linear_lanes_linear(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    extra = {"automation": {"stems.vocals.gain_db": {"points": [[0, -6], [0.4, 0], [0.9, -20]], "curve": "hold"},
                            "stems.instrumental.pan": {"points": [[0, -1], [0.5, 1], [1.0, 0]], "curve": "hold"}}}
    written, session = render(tmp_path, separator, source, extra=extra)
    project = load(written["project"])
    volume = envelope(track_named(project, "vocals"), "VOLENV2")
    np.testing.assert_allclose(volume, [[0, 10 ** (-6 / 20), 1], [0.4, 1, 1], [0.9, 0.1, 1]], rtol=1e-12)
    pan = envelope(track_named(project, "instrumental"), "PANENV2")
    assert pan.tolist() == [[0.0, 1.0, 1.0], [0.5, -1.0, 1.0], [1.0, 0.0, 1.0]]
    lane = lane_of(session, "stems.vocals.gain_db")
    assert assert_follows(volume, lane, gain=True, tolerance=1e-9) < 1e-9  # exact
    assert_follows(pan, lane_of(session, "stems.instrumental.pan"), gain=False, tolerance=1e-12)
    grid = np.linspace(0, 1.6, 1601)  # read as linear, the same points would be far off: the shape matters
    assert np.abs(20 * np.log10(np.interp(grid, volume[:, 0], volume[:, 1])) - lane.at(grid)).max() > 5
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    np.testing.assert_allclose(playback(project, written["project"].parent, mix.shape[1], 2), mix, atol=1e-5)


def test_exponential_lanes_are_split_to_stay_within_the_stated_tolerance(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    extra = {"automation": {"stems.vocals.gain_db": {"points": [[0, 0.5], [1.0, 24], [1.4, 1]],
                                                     "curve": "exponential"},
                            "stems.instrumental.pan": {"points": [[0.2, 0.01], [1.2, 1]], "curve": "exponential"}}}
    written, session = render(tmp_path, separator, source, extra=extra)
    project = load(written["project"])
    gain_lane, pan_lane = lane_of(session, "stems.vocals.gain_db"), lane_of(session, "stems.instrumental.pan")
    volume = envelope(track_named(project, "vocals"), "VOLENV2")
    pan = envelope(track_named(project, "instrumental"), "PANENV2")
    assert assert_follows(volume, gain_lane, gain=True, tolerance=reaper.GAIN_TOLERANCE_DB) > 0.005
    assert assert_follows(pan, pan_lane, gain=False, tolerance=reaper.PAN_TOLERANCE) > 0.0005
    assert len(volume) < 250 and len(pan) < 60  # split where needed, not sampled every few ms
    for points, lane in ((volume[:, :2], gain_lane), (pan[:, :2], pan_lane)):
        for t in lane.times:  # every breakpoint is kept
            assert np.isclose(points[:, 0], t, atol=1e-12).sum() == 1
    grid = np.linspace(0, 1.6, 16001)  # the breakpoints alone would miss by far more
    only = np.array([[t, 10 ** (v / 20), 0] for t, v in zip(gain_lane.times, gain_lane.values)])
    assert np.abs(20 * np.log10(reaper_curve(only, grid)) - gain_lane.at(grid)).max() > 1.0
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    played = playback(project, written["project"].parent, mix.shape[1], 2)
    # +24 dB on the vocals: signals up to ~4; 0.02 dB is 0.23 %; the pan's 0.002 moves a gain by < 0.3 %.
    np.testing.assert_allclose(played, mix, atol=4 * 0.0055)


def test_a_midi_cc_lane_becomes_the_same_points(tmp_path, separator):
    import mido

    tpq, tempo = 480, 600_000  # 100 bpm: a tick is 0.6 / 480 s
    events = [(0, 1, 7, 0), (240, 1, 7, 64), (300, 0, 7, 5), (720, 1, 7, 127), (1000, 1, 7, 32),
              (0, 1, 10, 0), (600, 1, 10, 127), (1200, 1, 10, 64)]  # (tick, channel 0-based, cc, value)
    mid = mido.MidiFile(type=0, ticks_per_beat=tpq)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo, time=0)])
    last = 0
    for tick, channel, cc, val in sorted(events):
        track.append(mido.Message("control_change", channel=channel, control=cc, value=val, time=tick - last))
        last = tick
    mid.tracks.append(track)
    mid.save(tmp_path / "cc.mid")
    extra = {"automation": {
        "stems.vocals.gain_db": {"midi": str(tmp_path / "cc.mid"), "cc": 7, "channel": 2, "range": [-40, 0]},
        "stems.instrumental.pan": {"midi": str(tmp_path / "cc.mid"), "cc": 10, "range": [-1, 1], "curve": "linear"}}}
    source = write_song(tmp_path / "song.wav")
    written, session = render(tmp_path, separator, source, extra=extra)
    project = load(written["project"])
    volume = envelope(track_named(project, "vocals"), "VOLENV2")
    expected = [[tick * 0.6 / tpq, 10 ** ((-40 + 40 * val / 127) / 20), 1] for tick, ch, cc, val in events
                if ch == 1 and cc == 7]  # by hand: channel 2 only, held (a controller's default curve)
    np.testing.assert_allclose(volume, expected, rtol=1e-12, atol=1e-15)
    pan = envelope(track_named(project, "instrumental"), "PANENV2")
    np.testing.assert_allclose(pan, [[tick * 0.6 / tpq, -(-1 + 2 * val / 127), 0] for tick, ch, cc, val in events
                                     if cc == 10], rtol=1e-12, atol=1e-15)
    assert_follows(volume, lane_of(session, "stems.vocals.gain_db"), gain=True, tolerance=1e-9)
    assert_follows(pan, lane_of(session, "stems.instrumental.pan"), gain=False, tolerance=1e-12)


def test_a_5_1_session_with_automation_and_tempo(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    # 140 bpm: "1:3" is at 2 * 60 / 140 = 0.857142... s.
    extra = {"tempo": {"bpm": 140, "time_signature": "4/4"},
             "automation": {"stems.vocals.gain_db": {"points": [[0, -6], ["1:3", 0]], "curve": "hold"},
                            "stems.vocals.pan": [[0, -0.5], [1.2, 0.5]],
                            "stems.instrumental.gain_db": [[0, -3], [1.5, -1]],
                            "stems.instrumental.pan": [[0, 0.3], ["1:3.5", -0.3]]}}
    written, session = render(tmp_path, separator, source, extra=extra, layout="5.1")
    project = load(written["project"])
    assert value(project, "TEMPO") == ["140", "4", "4"] and value(project, "MASTER_NCH")[0] == "6"
    for name in ("vocals", "instrumental"):
        track = track_named(project, name)
        assert value(track, "NCHAN") == ["6"] and sf.info(str(written[name])).channels == 6
        assert [float(v) for v in value(track, "VOLPAN")[:2]] == [1.0, 0.0]
        assert children(track, "PANENV2") == []  # the pan comes before the 5.1 routing: it is in the file
        assert "The pan lane (linear, 2 points 0 s to " in "".join(children(track, "NOTES")[0])
        assert_follows(envelope(track, "VOLENV2"), lane_of(session, f"stems.{name}.gain_db"), gain=True,
                       tolerance=reaper.GAIN_TOLERANCE_DB)
    assert envelope(track_named(project, "vocals"), "VOLENV2")[1, 0] == pytest.approx(120 / 140, abs=1e-12)
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    played = playback(project, written["project"].parent, mix.shape[1], 6)
    # The gain after the routing instead of before it: the ambience's 10-14 ms delays see a gain
    # up to 0.02 dB off (1.3 dB/s), besides the envelope's own 0.02 dB.
    np.testing.assert_allclose(played, mix, atol=0.6 * 0.0025)


def test_raw_notes_list_the_lanes_and_the_ducking_redone_in_the_daw(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"chain": [{"effect": "Gain", "gain_db": -2.0}, {"effect": "Compressor", "threshold_db": -20}]},
             "instrumental": {"duck": {"by": "vocals", "depth_db": 8}}}
    extra = {"master": [{"effect": "Limiter", "threshold_db": -3}],
             "automation": {"stems.vocals.chain[0].gain_db": [[0, -6], [1, 0]],
                            "stems.vocals.gain_db": [[0, -3], [1, 0]],
                            "master[0].threshold_db": {"points": [[0, -6], [1, -1]], "curve": "hold"}}}
    written, session = render(tmp_path, separator, source, stems=stems, extra=extra, project_stems="raw",
                              tail_seconds=0.0)
    raw = separator(synth(), SR)
    for name in ("vocals", "instrumental"):
        audio = sf.read(str(written[name]), dtype="float32", always_2d=True)[0].T
        np.testing.assert_allclose(audio, raw[name], atol=1e-6)  # before chains, lanes and ducking
    project = load(written["project"])
    vocals, instrumental = track_named(project, "vocals"), track_named(project, "instrumental")
    notes = children(vocals, "NOTES")[0]
    assert "|1. Gain(gain_db=-2.0)" in notes and "|2. Compressor(threshold_db=-20)" in notes
    assert "|- chain[0].gain_db: linear, 2 points 0 s to 1 s, values -6 to 0" in notes
    # The stem's own gain lane is a REAPER envelope, not a note.
    assert_follows(envelope(vocals, "VOLENV2"), lane_of(session, "stems.vocals.gain_db"), gain=True,
                   tolerance=reaper.GAIN_TOLERANCE_DB)
    assert not any("stems.vocals.gain_db" in line or "chain[1]" in line for line in notes if isinstance(line, str))
    assert any(line.startswith("|then ducked: by vocals, depth 8 dB") for line in children(instrumental, "NOTES")[0])
    project_notes = "".join(children(project, "NOTES")[0])
    assert "master chain Limiter(threshold_db=-3) (automation: [0].threshold_db: hold, 2 points" in project_notes


def test_processed_notes_say_what_is_baked_into_the_file(tmp_path, separator):
    source = write_song(tmp_path / "song.wav")
    stems = {"vocals": {"chain": [{"effect": "Gain", "gain_db": -2.0}]},
             "instrumental": {"duck": {"by": "vocals", "depth_db": 8}}}
    extra = {"automation": {"stems.vocals.chain[0].gain_db": [[0, -6], [1, 0]]}}
    written, _ = render(tmp_path, separator, source, stems=stems, extra=extra)
    project = load(written["project"])
    notes = "".join(children(track_named(project, "vocals"), "NOTES")[0])
    assert "Its automation is in the file: chain[0].gain_db: linear, 2 points" in notes
    assert "Ducking is in the file: by vocals, depth 8 dB" in "".join(children(track_named(project, "instrumental"),
                                                                              "NOTES")[0])
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    np.testing.assert_allclose(playback(project, written["project"].parent, mix.shape[1], 2), mix, atol=1e-5)


def test_a_layer_is_a_track_like_any_stem(tmp_path, separator, vst3_plugins):
    import mido

    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    mid.tracks.append(mido.MidiTrack([mido.Message("note_on", note=69, velocity=100, time=0),
                                      mido.Message("note_off", note=69, velocity=0, time=480)]))
    mid.save(tmp_path / "synth.mid")
    source = write_song(tmp_path / "song.wav", seconds=1.0)
    extra = {"layers": {"synth": {"instrument": {"vst3": str(vst3_plugins["sbsine"])}, "midi": str(tmp_path / "synth.mid"),
                                  "gain_db": -4.0, "pan": 0.25}},
             "automation": {"stems.synth.gain_db": [[0, -10], [0.8, 0]]}}
    written, session = render(tmp_path, separator, source, extra=extra)
    project = load(written["project"])
    assert [value(t, "NAME")[0] for t in children(project, "TRACK")] == ["original mix (reference)", "vocals",
                                                                         "instrumental", "synth"]
    synth_track = track_named(project, "synth")
    assert (written["project"].parent / value(children(children(synth_track, "ITEM")[0], "SOURCE")[0], "FILE")[0]
            == written["synth"])
    assert float(value(synth_track, "VOLPAN")[1]) == 0.25
    assert_follows(envelope(synth_track, "VOLENV2"), lane_of(session, "stems.synth.gain_db"), gain=True,
                   tolerance=reaper.GAIN_TOLERANCE_DB)
    mix = sf.read(str(written["mix"]), dtype="float64", always_2d=True)[0].T
    np.testing.assert_allclose(playback(project, written["project"].parent, mix.shape[1], 2), mix, atol=0.6 * 0.0025)


def test_raw_stems_in_a_5_1_session_are_stereo_tracks_with_their_lanes_as_envelopes(tmp_path, separator):
    source = write_song(tmp_path / "song.wav", seconds=1.0)
    extra = {"automation": {"stems.vocals.pan": [[0, -0.5], [1, 0.5]], "stems.vocals.gain_db": [[0, -6], [1, 0]]}}
    written, session = render(tmp_path, separator, source, extra=extra, layout="5.1", project_stems="raw")
    project = load(written["project"])
    assert value(project, "MASTER_NCH")[0] == "6"
    vocals = track_named(project, "vocals")
    assert value(vocals, "NCHAN") == ["2"] and sf.info(str(written["vocals"])).channels == 2
    # Not routed: the pan stays a stereo pan envelope for the DAW to redo with its own up-mix.
    assert envelope(vocals, "PANENV2")[:, 1].tolist() == [0.5, -0.5]
    assert_follows(envelope(vocals, "VOLENV2"), lane_of(session, "stems.vocals.gain_db"), gain=True,
                   tolerance=reaper.GAIN_TOLERANCE_DB)
    assert "5.1: this raw stereo stem plays on the front pair; stembridge routed it to the center role" in "".join(
        children(vocals, "NOTES")[0])


@pytest.mark.parametrize("curve", ["linear", "exponential", "hold"])
def test_envelopes_follow_lanes_with_jumps_and_the_whole_gain_range(curve):
    from bridge.host.automation import Lane

    values = (-150.0, 48.0, 48.0, -20.0, 0.0) if curve != "exponential" else (0.01, 48.0, 48.0, 3.0, 0.5)
    lane = Lane((0.1, 0.5, 0.5, 0.9, 0.9), values, curve)  # two jumps: equal times, the later point wins
    points = np.array(reaper.gain_envelope(lane), dtype=np.float64)
    assert_follows(points, lane, gain=True, tolerance=reaper.GAIN_TOLERANCE_DB, end=1.2)
    assert len(points) < 600  # equal-time pieces: a 4800-fold exponential ramp needs ~370 of them
    assert (np.diff(points[:, 0]) >= 0).all()
    text = reaper.dumps(reaper.Project(sample_rate=SR, tracks=(reaper.Track(name="x", file="x.wav", length=1.2,
                                                                               volume_envelope=tuple(map(tuple, points))),)))
    parsed = envelope(children(rpp.loads(text), "TRACK")[0], "VOLENV2")
    np.testing.assert_array_equal(parsed, points)  # every number reads back as the same double
