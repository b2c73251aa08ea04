"""One song into its sinks: resume for ``separate``, the failure path written once, and songs that
wait for an album's gain crossing processes."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from bridge.cli import main as cli
from bridge.errors import OutputError
from bridge.preset.session import parse
from bridge.render.graph import RenderGraph
from bridge.render.song import finish_render, render_song
from bridge.separation import load_separator

SR = 44100


def write_song(path: Path, seconds: float = 1.0, *, seed: int = 1, level: float = 0.2) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = np.sin(2 * np.pi * 330 * t)
    audio = level * np.stack([tone + 0.2 * rng.standard_normal(t.size), tone + 0.2 * rng.standard_normal(t.size)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T.astype(np.float32), SR, subtype="PCM_24")
    return path


def mtimes(folder: Path) -> dict[str, int]:
    """Modification times of a run's outputs (the run record is written by every run)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.name != "stembridge-run.json"}


@pytest.mark.parametrize("model", ["default", "dsp"])
def test_a_separate_rerun_says_up_to_date_and_rewrites_nothing(tmp_path, capsys, model):
    """The stored record holds the model's card as JSON lists; the check compares it as JSON too
    (it compared tuples with lists, so every rerun separated again)."""
    song = write_song(tmp_path / "song.wav")
    out = tmp_path / "out"
    base = ["separate", str(song), "--out", str(out), "--model", model, "--no-cache"]
    assert cli(base) == 0
    before = mtimes(out)
    capsys.readouterr()
    assert cli(base) == 0
    text = capsys.readouterr().out
    assert "song.wav: up to date, skipped" in text and "1 up to date (skipped)" in text
    assert mtimes(out) == before
    # A setting that changes the stems separates again.
    assert cli([*base, "--overlap", "0.4", "--quiet"]) == 0
    assert mtimes(out)["song/vocals.wav"] > before["song/vocals.wav"]


def test_a_forced_separate_records_the_input_digest_hashed_meanwhile(tmp_path, capsys):
    """A first or forced run hashes the input in a thread while it separates; the record must
    still hold the input's sha256 (computed here with hashlib), so that the next run is up to
    date, and a changed input is not."""
    import hashlib

    song = write_song(tmp_path / "song.wav", seconds=2.0)
    out = tmp_path / "out"
    base = ["separate", str(song), "--out", str(out), "--model", "dsp", "--no-cache", "--quiet"]
    assert cli([*base, "--force"]) == 0
    record = json.loads((out / "song" / ".song.dsp.separate.json").read_text())
    assert record["input_sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()
    before = mtimes(out)
    assert cli([*base[:-1]]) == 0
    assert "up to date, skipped" in capsys.readouterr().out and mtimes(out) == before
    write_song(song, seconds=2.0, seed=2)  # same length and header, other samples
    assert cli([*base[:-1]]) == 0
    assert "up to date, skipped" not in capsys.readouterr().out
    record = json.loads((out / "song" / ".song.dsp.separate.json").read_text())
    assert record["input_sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()


def test_a_sink_that_fails_last_takes_the_whole_song_with_it(tmp_path, monkeypatch, capsys):
    """The project fails after the audio files are final: they go too, with the folders the song made,
    and nothing hidden is left behind."""
    from bridge.daw import reaper

    def broken(target, project):
        raise OutputError(f"{target}: disk full (simulated)")

    monkeypatch.setattr(reaper, "write", broken)
    song = write_song(tmp_path / "in" / "song.wav")
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, project: reaper, "
                      "files: {mix: 'mix/{track}.{ext}', stems: 'stems/{track}/{stem}.{ext}'}}\n")
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(song), "--out", str(out), "--no-cache", "--quiet"]) == 1
    assert "disk full (simulated)" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["stembridge-run.json"]  # the run record names the failure


def test_a_song_waiting_for_its_album_gain_pickles_and_finishes_elsewhere(tmp_path):
    """Album loudness: the first pass ends with every sink closed; pickled (as it crosses from a
    worker process) and finished with a gain, it writes what a song's own gain would have."""
    song = write_song(tmp_path / "song.wav", seconds=2.0)
    session = parse({"version": 1, "separator": {"model": "dsp"}, "output": {
        "files": {"mix": "{track}.mix.{ext}", "stems": "{track}/{stem}.{ext}"}, "project": "reaper",
        "bit_depth": 32, "tail_seconds": 0, "loudness_lufs": -20.0, "loudness_scope": "album"}},
        source=str(tmp_path / "album.yaml"))
    graph = RenderGraph(session, load_separator("dsp"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = render_song(song, graph, tmp_path / "out", defer_gain_to=scratch)
    assert result.status == "measured" and not (tmp_path / "out" / "song.mix.wav").exists()
    pending = pickle.loads(pickle.dumps(result.pending))
    written = finish_render(pending, gain_db=-3.0, album={"folder": "x"})
    mix, rate = sf.read(str(written["mix"]), dtype="float64")
    # Independent of the meters inside: the written mix is the song (the DSP stems sum to it) at -3 dB.
    source, _ = sf.read(str(song), dtype="float64")
    np.testing.assert_allclose(mix, source * 10 ** (-3 / 20), atol=1e-5)
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["loudness"]["scope"] == "album" and manifest["loudness"]["gain_db"] == -3.0
    lufs = pyloudnorm.Meter(rate).integrated_loudness(mix)
    assert manifest["outputs"]["mix"]["loudness_lufs"] == pytest.approx(lufs, abs=0.05)
    assert written["project"].is_file() and set(written) == {"mix", "vocals", "instrumental", "project", "manifest"}


def test_a_cache_fill_left_by_a_killed_run_is_removed_by_the_next_fill(tmp_path):
    """SIGKILL mid-song leaves ``tmp/<key>.<pid>.<random>`` in the stem cache; the next fill removes
    it, and never a fill of a process that still runs."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    cache = tmp_path / "cache"
    tmp = cache / "v1" / "tmp"
    left = tmp / f"{'a' * 64}.{dead_pid}.x1y2"
    running = tmp / f"{'b' * 64}.{os.getppid()}.z3"
    for folder in (left, running):
        folder.mkdir(parents=True)
        (folder / "vocals.f32").write_bytes(b"\0" * 16)
    song = write_song(tmp_path / "song.wav")
    assert cli(["separate", str(song), "--out", str(tmp_path / "out"), "--model", "dsp", "--cache-dir", str(cache),
                "--quiet"]) == 0
    assert not left.exists() and running.is_dir()
