"""Albums (issue 11): folders in, the stem cache, resume, parallel jobs, Dask, album loudness.

Songs are synthesized (seeded noise and tones) or cut from the demo song; the separators are the
weight-free ``dsp`` one and a tiny ONNX mask model built in conftest. The Dask tests start a real
scheduler and real workers with the ``dask`` command line on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from bridge.audio import files
from conftest import missing, need_module
from bridge.audio.files import TEST_PAUSE_VARIABLE
from bridge.batch import RunSpec, discover, run_batch
from bridge.batch.jobs import _WORKERS
from bridge.render.cache import FORMAT_VERSION, CacheWarning, StemCache
from bridge.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo.flac"
SR = 44100
DSP_PRESET = "version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, bit_depth: 32, " \
             "files: {mix: '{track}.mix.{ext}', stems: '{track}/{stem}.{ext}'}}\n"


def write_song(path: Path, seconds: float, *, seed: int, level: float = 0.1, rate: int = SR) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.5 * np.sin(2 * np.pi * (220 + 20 * seed) * t)
    audio = level * np.stack([tone + 0.3 * rng.standard_normal(n), tone + 0.3 * rng.standard_normal(n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T.astype(np.float32), rate, subtype="PCM_24")
    return path


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def stembridge(*argv, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], capture_output=True, text=True,
                            env=env(), cwd=REPO, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def audio_files(folder: Path) -> dict[str, bytes]:
    """Every audio output below ``folder`` by relative path: its rate, shape and samples as bytes, for
    bit-identical comparisons (not the file's bytes: libsndfile stamps float WAVs' PEAK chunk with the time)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".wav", ".flac") and not path.name.startswith("."):
            audio, rate = files.read(path)
            found[str(path.relative_to(folder))] = f"{rate} {audio.shape}".encode() + audio.tobytes()
    return found


def hidden_leftovers(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.rglob(".*") if p.name.endswith(".partial")]
    except FileNotFoundError:  # a running render removed a folder while it was scanned
        return [Path(".partial")] if folder.exists() else []


def run_record(out: Path) -> dict:
    return json.loads((out / "stembridge-run.json").read_text())


@pytest.fixture
def preset(tmp_path) -> Path:
    path = tmp_path / "dsp.yaml"
    path.write_text(DSP_PRESET)
    return path


@pytest.fixture
def album(tmp_path) -> Path:
    """lib/ with two albums that both have a 01.wav, and a nested disc folder with another."""
    lib = tmp_path / "lib"
    write_song(lib / "first" / "01.wav", 1.0, seed=1)
    write_song(lib / "first" / "2.wav", 1.0, seed=2)
    write_song(lib / "first" / "10.wav", 1.0, seed=3)
    write_song(lib / "second" / "01.wav", 1.0, seed=4)
    write_song(lib / "second" / "disc 2" / "01.wav", 1.0, seed=5)
    (lib / "second" / ".hidden.wav").write_bytes(b"not audio")
    (lib / "second" / "notes.txt").write_text("liner notes")
    return lib


# --- inputs and output layout ----------------------------------------------------------------------

def test_discover_walks_folders_in_natural_order_and_keeps_each_file_once(album):
    songs, notes = discover([album, album / "first" / "01.wav", album / "first" / ".." / "first" / "2.wav"])
    rel = [s.path.relative_to(album).as_posix() for s in songs]
    assert rel == ["first/01.wav", "first/2.wav", "first/10.wav", "second/01.wav", "second/disc 2/01.wav"]
    assert [s.naming.relpath for s in songs] == ["lib/first", "lib/first", "lib/first", "lib/second",
                                                  "lib/second/disc 2"]
    assert [s.naming.album for s in songs][-1] == "disc 2" and notes == []


def test_discover_skips_outputs_and_takes_every_format_ffmpeg_reads(album, preset, tmp_path):
    out = album / "rendered"  # an output folder inside the input folder
    assert cli(["render", str(preset), str(album), "--out", str(out), "--quiet", "--no-cache"]) == 0
    for name in ("bonus.m4a", "live.opus", "clip.mov", "set.stem.mp4", "notes.txt"):
        (album / "first" / name).write_bytes(b"\0" * 100)
    songs, notes = discover([album], out_dir=tmp_path / "elsewhere")  # skipped as a run's output folder
    assert not any("rendered" in str(s.path) for s in songs) and notes == []
    assert sorted(s.path.name for s in songs if s.path.parent.name == "first") == [
        "01.wav", "10.wav", "2.wav", "bonus.m4a", "clip.mov", "live.opus", "set.stem.mp4"]


def test_colliding_names_in_nested_folders_render_to_distinct_mirrored_outputs(album, preset, tmp_path):
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(album), "--out", str(out), "--quiet", "--no-cache"]) == 0
    mixes = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mix.wav"))
    assert mixes == ["lib/first/01.mix.wav", "lib/first/10.mix.wav", "lib/first/2.mix.wav", "lib/second/01.mix.wav",
                     "lib/second/disc 2/01.mix.wav"]
    for mix in out.rglob("*.mix.wav"):  # each output is its own song, mirrored from its input
        source = album / mix.relative_to(out / "lib").parent / mix.name.replace(".mix.wav", ".wav")
        np.testing.assert_allclose(files.read(mix)[0], files.read(source)[0], atol=1e-6)  # dsp stems sum to the mix
    assert (out / "lib" / "second" / "disc 2" / "01" / "vocals.wav").is_file()


def test_album_and_relpath_template_fields(album, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, "
                      "files: {mix: 'by-album/{album}/{track}.{ext}'}}\n")
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(album / "second"), "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == [
        "by-album/disc 2/01.wav", "by-album/second/01.wav"]


def test_two_files_that_would_write_one_output_fail_the_second_and_render_the_first(tmp_path, preset, capsys):
    a = write_song(tmp_path / "a" / "song.wav", 0.5, seed=1)
    b = write_song(tmp_path / "b" / "song.wav", 0.5, seed=2)
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(a), str(b), "--out", str(out), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert f"{b}: its outputs" in err and "would overwrite those of song.wav" in err and "{relpath}" in err
    np.testing.assert_allclose(files.read(out / "song.mix.wav")[0], files.read(a)[0], atol=1e-6)


def test_a_failed_song_leaves_no_folder_behind(tmp_path, preset):
    good = write_song(tmp_path / "good.wav", 0.5, seed=1)
    bad = write_song(tmp_path / "bad.wav", 2.0, seed=2)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: fails half-way, after its outputs were opened
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(good), str(bad), "--out", str(out), "--quiet", "--no-cache"]) == 1
    assert (out / "good").is_dir() and not (out / "bad").exists()
    assert not hidden_leftovers(out)
    record = run_record(out)
    assert [s["status"] for s in record["songs"]] == ["rendered", "failed"]
    assert "truncated" in record["songs"][1]["error"]


def test_exit_codes_and_summary(tmp_path, preset, capsys):
    song = write_song(tmp_path / "song.wav", 0.5, seed=1)
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(song), "--out", str(out), "--no-cache"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("1 song: 1 rendered, 0 from cached stems, 0 up to date (skipped), 0 failed;")
    other = write_song(tmp_path / "other.wav", 0.5, seed=3)
    assert cli(["render", str(preset), str(song), str(other), "--out", str(out), "--no-cache"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("2 songs: 1 rendered, 0 from cached stems, 1 up to date (skipped), 0 failed;")
    assert cli(["render", str(tmp_path / "nope.yaml"), str(song), "--out", str(out)]) == 2  # usage: before any work
    assert cli(["render", str(preset), str(song), str(tmp_path / "missing.wav"), "--out", str(out), "--quiet"]) == 1
    assert cli(["render", str(preset), str(song), "--out", str(out), "--quiet"]) == 0
    assert "up to date" not in capsys.readouterr().out  # --quiet prints nothing


# --- the stem cache ------------------------------------------------------------------------------

@pytest.fixture
def counted(models_dir):
    """A real ONNX mask separator whose model calls are counted."""
    from bridge.separation import load_separator

    separator = load_separator(str(models_dir / "mask.yaml"))
    calls = []
    run = separator.engine.run

    def counting(chunks):
        calls.append(chunks.shape[0])
        return run(chunks)

    separator.engine.run = counting
    return separator, calls


def _render_spec(preset: Path, out: Path, cache: Path | None, **extra) -> RunSpec:
    return RunSpec(kind="render", out_dir=out, preset=str(preset), cache_dir=cache, **extra)


def _run_with(separator, spec: RunSpec, songs):
    from bridge.batch.jobs import session_graph

    _WORKERS.clear()
    _WORKERS[spec] = session_graph(spec.preset, spec.overrides, separator=separator)
    try:
        return run_batch(spec, songs)
    finally:
        _WORKERS.clear()


def test_a_second_preset_over_cached_stems_calls_the_model_zero_times(counted, models_dir, album, tmp_path):
    separator, calls = counted
    first = tmp_path / "first.yaml"
    first.write_text(f"version: 1\nseparator: {{model: {models_dir / 'mask.yaml'}}}\noutput: {{tail_seconds: 0, "
                     "bit_depth: 32, files: {mix: '{track}.{ext}', stems: '{track}/{stem}.{ext}'}}\n")
    second = tmp_path / "second.yaml"
    second.write_text(f"version: 1\nseparator: {{model: {models_dir / 'mask.yaml'}}}\nstems: {{vocals: {{gain_db: -6}}, "
                      "instrumental: {chain: [{effect: LowpassFilter, cutoff_frequency_hz: 2000}]}}\n"
                      "output: {tail_seconds: 0.5, bit_depth: 32, files: {mix: '{track}.remix.{ext}', "
                      "stems: '{track}/{stem}.{ext}'}}\n")
    songs, _ = discover([album])
    cache = tmp_path / "cache"
    report = _run_with(separator, _render_spec(first, tmp_path / "a", cache), songs)
    assert [o.status for o in report.outcomes] == ["rendered"] * 5 and calls
    calls.clear()
    report = _run_with(separator, _render_spec(second, tmp_path / "b", cache), songs)
    assert [o.status for o in report.outcomes] == ["cached"] * 5
    assert calls == []  # not one model call: every stem came from the cache
    # The cached stems are bit-identical to a fresh separation of the same song.
    fresh = _run_with(separator, _render_spec(first, tmp_path / "c", None), songs)
    assert [o.status for o in fresh.outcomes] == ["rendered"] * 5 and calls
    assert audio_files(tmp_path / "a") == audio_files(tmp_path / "c")
    replay = _run_with(separator, _render_spec(first, tmp_path / "d", cache), songs)
    assert [o.status for o in replay.outcomes] == ["cached"] * 5
    assert audio_files(tmp_path / "d") == audio_files(tmp_path / "c")
    for song in songs:  # and they still sum to the input exactly
        rel = song.naming.relpath
        stems = [files.read(tmp_path / "d" / rel / song.path.stem / f"{s}.wav")[0] for s in ("vocals", "instrumental")]
        np.testing.assert_allclose(stems[0] + stems[1], files.read(song.path)[0], atol=1e-6)


def test_a_flac_is_named_by_its_own_md5_of_the_samples_and_retagging_keeps_its_entry(tmp_path):
    song = tmp_path / "song.flac"
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal((SR, 2)) * 0.1 * 2 ** 23).astype(np.int32)
    sf.write(str(song), samples << 8, SR, subtype="PCM_24")
    packed = (samples.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()  # 24-bit little-endian
    import hashlib

    assert files.flac_audio_md5(song) == hashlib.md5(packed).hexdigest()
    cache = tmp_path / "cache"
    argv = ["separate", "--model", "dsp", "--quiet", "--cache-dir", str(cache)]
    assert cli([*argv, str(song), "--out", str(tmp_path / "a")]) == 0
    tagged = tmp_path / "tagged" / "song.flac"  # the same samples with a title: other bytes, same audio
    tagged.parent.mkdir()
    with sf.SoundFile(str(tagged), "w", samplerate=SR, channels=2, subtype="PCM_24") as f:
        f.title = "a new title"
        f.write(samples << 8)
    assert tagged.read_bytes() != song.read_bytes()
    assert cli([*argv, str(tagged), "--out", str(tmp_path / "b")]) == 0
    assert run_record(tmp_path / "b")["songs"][0]["status"] == "cached"
    assert files.flac_audio_md5(tmp_path / "cache") is None  # not a FLAC file: decoded and hashed instead


def test_separate_reads_and_fills_the_same_cache(tmp_path, capsys):
    song = write_song(tmp_path / "song.wav", 1.0, seed=7)
    cache = tmp_path / "cache"
    assert cli(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / "a"), "--cache-dir", str(cache),
                "--bit-depth", "32"]) == 0
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, bit_depth: 32, "
                      "files: {mix: '{track}.mix.{ext}', stems: 'stems/{stem}.{ext}'}}\n")
    capsys.readouterr()
    assert cli(["render", str(preset), str(song), "--out", str(tmp_path / "b"), "--cache-dir", str(cache)]) == 0
    assert "(from cached stems)" in capsys.readouterr().out
    for stem in ("vocals", "instrumental"):
        assert np.array_equal(files.read(tmp_path / "a" / "song" / f"{stem}.wav")[0],
                              files.read(tmp_path / "b" / "stems" / f"{stem}.wav")[0])


def _entry_files(cache: Path) -> list[Path]:
    return sorted(cache.glob(f"v{FORMAT_VERSION}/??/*/*.f32"))


@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "no-checksum"])
def test_a_damaged_cache_entry_is_detected_and_recomputed(damage, tmp_path):
    song = write_song(tmp_path / "song.wav", 1.0, seed=8)
    cache = tmp_path / "cache"
    argv = ["separate", str(song), "--model", "dsp", "--bit-depth", "32", "--cache-dir", str(cache), "--quiet"]
    assert cli([*argv, "--out", str(tmp_path / "fresh")]) == 0
    (stored,) = _entry_files(cache)
    data = bytearray(stored.read_bytes())
    if damage == "truncated":
        stored.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "bit-flip":
        data[len(data) // 2] ^= 0x10
        stored.write_bytes(bytes(data))
    else:
        (stored.parent / "entry.json").write_text("{\"format\": 1, \"stems\": [")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli([*argv, "--out", str(tmp_path / "again")]) == 0
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and "damaged" in messages[0] and "separating again" in messages[0]
    assert audio_files(tmp_path / "again") == audio_files(tmp_path / "fresh")
    (restored,) = _entry_files(cache)  # computed again and stored whole
    assert restored.stat().st_size == len(data)
    record = run_record(tmp_path / "again")
    assert record["songs"][0]["status"] == "rendered"


def test_two_processes_racing_on_one_song_with_one_cache_both_succeed(tmp_path):
    song = write_song(tmp_path / "song.wav", 20.0, seed=9)
    cache = tmp_path / "cache"
    runs = [subprocess.Popen([sys.executable, "-m", "bridge.cli", "separate", str(song), "--model", "dsp",
                              "--bit-depth", "32", "--quiet", "--cache-dir", str(cache), "--out", str(tmp_path / k)],
                             stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO) for k in ("a", "b")]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert errors == ["", ""]
    assert audio_files(tmp_path / "a") == audio_files(tmp_path / "b")
    assert len(_entry_files(cache)) == 1 and not list(cache.glob(f"v{FORMAT_VERSION}/tmp/*"))
    assert cli(["separate", str(song), "--model", "dsp", "--bit-depth", "32", "--quiet", "--cache-dir", str(cache),
                "--out", str(tmp_path / "c")]) == 0
    assert run_record(tmp_path / "c")["songs"][0]["status"] == "cached"  # the entry left behind is sound
    assert audio_files(tmp_path / "c") == audio_files(tmp_path / "a")


def test_cache_command_and_lru_cap(tmp_path, capsys):
    cache = tmp_path / "cache"
    songs = [write_song(tmp_path / f"s{i}.wav", 1.0, seed=10 + i) for i in range(3)]
    used = time.time() - 3600
    for i, song in enumerate(songs):
        before = set(cache.glob(f"v{FORMAT_VERSION}/??/*/entry.json"))
        assert cli(["separate", str(song), "--model", "dsp", "--quiet", "--cache-dir", str(cache),
                    "--out", str(tmp_path / "out")]) == 0
        (new,) = set(cache.glob(f"v{FORMAT_VERSION}/??/*/entry.json")) - before
        os.utime(new, (used + 10 * i, used + 10 * i))  # distinct use times, 10 s apart, on any file system
    entry = _entry_files(cache)[0].stat().st_size
    assert entry == SR * 2 * 4  # 1 s stereo float32: the residual stem is not stored
    capsys.readouterr()
    assert cli(["cache", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert str(cache) in text and "3 entries" in text and "20.00 GB cap" in text
    # A cap that holds two entries evicts the least recently used (the first song).
    stats = StemCache(cache).stats()
    capped = StemCache(cache, max_gb=(2.5 * stats.bytes / 3) / 1e9)
    removed = capped.evict()
    assert len(removed) == 1 and capped.stats().entries == 2
    assert cli(["separate", str(songs[0]), "--model", "dsp", "--quiet", "--cache-dir", str(cache),
                "--out", str(tmp_path / "again")]) == 0
    assert run_record(tmp_path / "again")["songs"][0]["status"] == "rendered"
    assert cli(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 3 entries" in capsys.readouterr().out and StemCache(cache).stats().entries == 0


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    from bridge.render.cache import default_location, default_max_gb

    monkeypatch.delenv("STEMBRIDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_location() == tmp_path / "xdg" / "stembridge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_location() == Path.home() / ".cache" / "stembridge"
    monkeypatch.setenv("STEMBRIDGE_CACHE", str(tmp_path / "mine"))
    assert default_location() == tmp_path / "mine"
    monkeypatch.setenv("STEMBRIDGE_CACHE_MAX_GB", "1.5")
    assert default_max_gb() == 1.5


# --- resume ----------------------------------------------------------------------------------------

def test_a_rerun_skips_what_is_up_to_date_and_renders_what_changed(album, preset, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    base = ["render", str(preset), str(album), "--out", str(out), "--cache-dir", str(cache)]
    assert cli(base) == 0
    first = audio_files(out)
    capsys.readouterr()
    assert cli(base) == 0
    text = capsys.readouterr().out
    assert text.count("up to date, skipped") == 5 and "5 up to date (skipped)" in text
    assert [s["status"] for s in run_record(out)["songs"]] == ["skipped"] * 5
    write_song(album / "first" / "2.wav", 1.0, seed=99)  # one input changes
    assert cli([*base, "--quiet"]) == 0
    assert [s["status"] for s in run_record(out)["songs"]] == ["skipped", "rendered", "skipped", "skipped", "skipped"]
    assert cli([*base, "--quiet", "--set", "stems.vocals.gain_db=-3"]) == 0  # the preset changes: from cache
    assert {s["status"] for s in run_record(out)["songs"]} == {"cached"}
    assert cli([*base, "--quiet", "--set", "stems.vocals.gain_db=-3", "--force"]) == 0
    assert {s["status"] for s in run_record(out)["songs"]} == {"cached"}  # rendered again, stems from the cache
    assert audio_files(out).keys() == first.keys()


def test_sigkill_mid_album_then_a_rerun_completes_only_what_is_missing(tmp_path, preset):
    songs = [write_song(tmp_path / "album" / f"{i:02d}.wav", 5.0, seed=20 + i) for i in range(3)]
    out, cache, marker = tmp_path / "out", tmp_path / "cache", tmp_path / "paused"
    argv = [sys.executable, "-m", "bridge.cli", "render", str(preset), str(tmp_path / "album"), "--out", str(out),
            "--cache-dir", str(cache), "--quiet"]
    # The third song's mix pauses after its first block (the test hook): killed there, not by a race.
    process = subprocess.Popen(argv, env={**env(), TEST_PAUSE_VARIABLE: f"1:{marker}:{out}/album/02.mix*"}, cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not marker.exists():
        time.sleep(0.01)
    assert marker.exists() and process.poll() is None, "the run never paused in the third song"
    assert (out / "album" / "01.mix.manifest.json").exists() and hidden_leftovers(out)
    process.kill()
    process.communicate(timeout=60)
    for path in out.rglob("*.wav"):  # every final file is complete
        if not path.name.startswith("."):
            assert sf.info(str(path)).frames == 5 * SR, path
    rerun = stembridge("render", preset, tmp_path / "album", "--out", out, "--cache-dir", cache, "--quiet")
    assert rerun.stderr == ""
    statuses = [s["status"] for s in run_record(out)["songs"]]
    assert statuses == ["skipped", "skipped", "rendered"]  # killed in the third song: only it is missing
    assert not hidden_leftovers(out) and not list(cache.glob(f"v{FORMAT_VERSION}/tmp/*"))
    clean = tmp_path / "clean"
    stembridge("render", preset, tmp_path / "album", "--out", clean, "--no-cache", "--quiet")
    assert audio_files(out) == audio_files(clean)
    for song in songs:
        np.testing.assert_allclose(files.read(out / "album" / f"{song.stem}.mix.wav")[0], files.read(song)[0], atol=1e-6)


# --- parallel jobs ---------------------------------------------------------------------------------

def _vst3_preset(tmp_path: Path, vst3_plugins) -> Path:
    preset = tmp_path / "vst3.yaml"
    preset.write_text(
        "version: 1\nseparator: {model: dsp}\n"
        f"stems:\n  vocals: {{gain_db: 2, chain: [{{vst3: '{vst3_plugins['sbgain']}', params: {{gain_db: -6.0, mix: 0.5}}}}]}}\n"
        f"  instrumental: {{chain: [{{vst3: '{vst3_plugins['sblatency']}'}}, {{effect: Reverb, room_size: 0.3}}]}}\n"
        "master: [{effect: Compressor, threshold_db: -20}]\n"
        "output: {tail_seconds: 0.5, bit_depth: 32, files: {mix: '{track}.mix.{ext}', stems: '{track}/{stem}.{ext}'}}\n")
    return preset


@pytest.mark.slow
def test_jobs_2_equals_jobs_1_also_with_vst3_chains(album, tmp_path, vst3_plugins, models_dir):
    """Bit-identical: the dsp separator has no onnxruntime, and each song's chains start from reset."""
    preset = _vst3_preset(tmp_path, vst3_plugins)
    one, two = tmp_path / "one", tmp_path / "two"
    stembridge("render", preset, album, "--out", one, "--no-cache", "--quiet")
    stembridge("render", preset, album, "--out", two, "--no-cache", "--quiet", "--jobs", "2")
    assert audio_files(one) == audio_files(two) and len(audio_files(one)) == 15
    songs = run_record(two)["songs"]
    assert {s["status"] for s in songs} == {"rendered"}
    assert len({s["worker_pid"] for s in songs}) == 2  # two workers, each loaded once for its songs
    # An ONNX model with 2 onnxruntime threads (--jobs 1) and 1 thread each (--jobs 2).
    model = tmp_path / "onnx.yaml"
    model.write_text(f"version: 1\nseparator: {{model: {models_dir / 'mask.yaml'}}}\noutput: {{tail_seconds: 0, "
                     "bit_depth: 32, files: {mix: '{track}.{ext}', stems: '{track}/{stem}.{ext}'}}\n")
    stembridge("render", model, album, "--out", tmp_path / "o1", "--no-cache", "--quiet", "--threads", "2")
    stembridge("render", model, album, "--out", tmp_path / "o2", "--no-cache", "--quiet", "--jobs", "2")
    a, b = audio_files(tmp_path / "o1"), audio_files(tmp_path / "o2")
    assert a.keys() == b.keys()
    for key in a:  # onnxruntime's thread count may change its summation order: 1e-6, not bits
        x = files.read(tmp_path / "o1" / key)[0]
        y = files.read(tmp_path / "o2" / key)[0]
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_decoder_silencing_keeps_other_threads_output(tmp_path):
    """fd 2 is redirected while a file opens; what another thread writes meanwhile still arrives."""
    song = write_song(tmp_path / "song.wav", 0.1, seed=1)
    script = (
        "import os, sys, threading\n"
        "from bridge.audio import files\n"
        "stop = threading.Event()\n"
        "def talk():\n"
        "    for i in range(400):\n"
        "        os.write(2, f'line {i}\\n'.encode())\n"
        "threads = [threading.Thread(target=talk)]\n"
        "threads[0].start()\n"
        f"for _ in range(200): files.info({str(song)!r})\n"
        "threads[0].join()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stderr.splitlines(), key=lambda line: int(line.split()[1])) == [f"line {i}" for i in range(400)]


# --- album loudness --------------------------------------------------------------------------------

def test_album_loudness_gives_every_song_of_a_folder_one_gain(tmp_path):
    albums = {"quiet": [0.05, 0.02], "loud": [0.3, 0.1, 0.2]}
    for name, levels in albums.items():
        for i, level in enumerate(levels):
            write_song(tmp_path / "in" / name / f"{i}.wav", 3.0, seed=30 + i, level=level)
    base = "version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, bit_depth: 32, files: {mix: '{track}.{ext}'}"
    plain, target = tmp_path / "plain.yaml", tmp_path / "album.yaml"
    plain.write_text(base + "}\n")
    target.write_text(base + ", loudness_lufs: -20, true_peak_db: -0.5, loudness_scope: album}\n")
    stembridge("render", plain, tmp_path / "in", "--out", tmp_path / "plain", "--quiet", "--no-cache")
    stembridge("render", target, tmp_path / "in", "--out", tmp_path / "album", "--quiet", "--no-cache", "--jobs", "2")
    meter = pyloudnorm.Meter(SR)
    for name, levels in albums.items():
        gains, outputs = [], []
        for i in range(len(levels)):
            ref = files.read(tmp_path / "plain" / "in" / name / f"{i}.wav")[0]
            out = files.read(tmp_path / "album" / "in" / name / f"{i}.wav")[0]
            gains.append(20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2) / np.mean(ref.astype(np.float64) ** 2))))
            outputs.append(out)
            manifest = json.loads((tmp_path / "album" / "in" / name / f"{i}.manifest.json").read_text())
            assert manifest["loudness"]["scope"] == "album"
            assert manifest["loudness"]["gain_db"] == pytest.approx(gains[-1], abs=0.01)
            assert manifest["loudness"]["album"]["loudness_lufs"] is not None
        assert max(gains) - min(gains) < 0.05, gains  # every song moves by the same gain
        whole = np.concatenate(outputs, axis=1)
        assert meter.integrated_loudness(whole.T.astype(np.float64)) == pytest.approx(-20.0, abs=0.1)
    # The albums keep their own gains: the quiet one is raised more.
    quiet = json.loads((tmp_path / "album" / "in" / "quiet" / "0.manifest.json").read_text())["loudness"]["gain_db"]
    loud = json.loads((tmp_path / "album" / "in" / "loud" / "0.manifest.json").read_text())["loudness"]["gain_db"]
    assert quiet > loud + 6


def test_album_loudness_meets_the_true_peak_ceiling_with_the_loudest_song(tmp_path):
    for i, level in enumerate([0.02, 0.6]):
        write_song(tmp_path / "in" / "a" / f"{i}.wav", 2.0, seed=40 + i, level=level)
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, bit_depth: 32, "
                      "files: {mix: '{track}.{ext}'}, loudness_lufs: -5, true_peak_db: -1, loudness_scope: album}\n")
    assert cli(["render", str(preset), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet",
                "--no-cache"]) == 0
    peaks = [json.loads((tmp_path / "out" / "in" / "a" / f"{i}.manifest.json").read_text())["outputs"]["mix"]
             ["true_peak_dbtp"] for i in range(2)]
    assert max(peaks) == pytest.approx(-1.0, abs=0.05) and peaks[0] < -20


# --- Dask --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real scheduler and two one-thread worker processes, started with the dask command line."""
    need_module("distributed", "; pip install -e \".[test]\"")
    dask = shutil.which("dask")
    if dask is None:
        missing("the dask command is not installed (pip install 'stembridge[dask]')")
    folder = tmp_path_factory.mktemp("dask")
    # The workers' song 0 mix pauses after a block once its marker is gone (the test hook); made here: disarmed.
    pause = folder / "paused"
    pause.write_text("disarmed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [open(folder / name, "w") for name in ("scheduler.log", "worker.log")]
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=logs[0], stderr=subprocess.STDOUT, env=env(), start_new_session=True)
    worker = subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                               "--host", "127.0.0.1", "--local-directory", str(folder)],
                              stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True,
                              env={**env(), TEST_PAUSE_VARIABLE: f"1:{pause}:*/in/0.mix.wav"})
    from distributed import Client

    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield SimpleNamespace(address=address, pause=pause)
    finally:
        for process in (worker, scheduler):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (worker, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def test_dask_run_equals_the_local_run_also_with_vst3_chains(dask_cluster, album, tmp_path, vst3_plugins):
    preset = _vst3_preset(tmp_path, vst3_plugins)
    local, remote = tmp_path / "local", tmp_path / "remote"
    stembridge("render", preset, album, "--out", local, "--no-cache", "--quiet")
    result = stembridge("render", preset, album, "--out", remote, "--no-cache", "--scheduler", dask_cluster.address)
    assert "5 rendered" in result.stdout
    assert audio_files(local) == audio_files(remote) and len(audio_files(local)) == 15
    songs = run_record(remote)["songs"]
    assert {s["status"] for s in songs} == {"rendered"}
    # One render host per worker process, reused song after song (the model and plugins load once each).
    assert len({s["worker_pid"] for s in songs}) <= 2


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def test_a_dask_worker_that_dies_mid_song_has_it_retried_elsewhere(dask_cluster, tmp_path, preset):
    songs = [write_song(tmp_path / "in" / f"{i}.wav", 5.0, seed=50 + i) for i in range(2)]
    out = tmp_path / "out"
    dask_cluster.pause.unlink()  # armed: the first render host to write song 0's mix pauses there
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "render", str(preset), str(tmp_path / "in"),
                                "--out", str(out), "--no-cache", "--quiet", "--scheduler", dask_cluster.address],
                               env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and not dask_cluster.pause.exists():
        time.sleep(0.01)
    assert dask_cluster.pause.exists() and process.poll() is None, "song 0 never paused in a worker"
    host = int(dask_cluster.pause.read_text())  # the render host writing song 0, paused mid-song
    worker = _parent(host)
    os.kill(worker, signal.SIGKILL)  # the Dask worker process rendering this song, mid-song
    os.kill(host, signal.SIGKILL)  # and its render host (orphaned, it would exit by itself within 50 ms)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert not hidden_leftovers(out)
    # Retried elsewhere: song 0 was rendered, by another render host than the one killed, and is complete.
    record = {Path(s["input"]).name: s for s in run_record(out)["songs"]}
    assert {name: s["status"] for name, s in record.items()} == {"0.wav": "rendered", "1.wav": "rendered"}
    assert record["0.wav"]["worker_pid"] not in (None, host)
    for song in songs:
        mix = files.read(out / "in" / f"{song.stem}.mix.wav")[0]
        assert mix.shape == (2, 5 * SR)
        np.testing.assert_allclose(mix, files.read(song)[0], atol=1e-6)  # the dsp preset's mix is the song
