"""What a new user meets first: help text, refusals before any work, plugin chatter, progress bars."""

from __future__ import annotations

import argparse
import os
import pty
import select
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.arguments import build_parser
from bridge.errors import ModelError
from bridge.separation import families, load_separator

REPO = Path(__file__).resolve().parent.parent
SR = 44100


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def stembridge(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=300, **kwargs)


def write_song(path: Path, seconds: float, *, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    audio = 0.1 * rng.standard_normal((int(seconds * SR), 2))
    sf.write(str(path), audio.astype(np.float32), SR, subtype="PCM_24")
    return path


# --- help ------------------------------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser, path=("stembridge",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_help_is_written_for_people():
    """A purpose for every command, examples in each command's epilog, help for every option, and
    no developer markup (``literal``, :func:`role`) in what --help prints."""
    top = build_parser()
    for path, parser in _parsers(top):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, path
        assert parser.description and len(parser.description) > 20, path
        if len(path) > 1:
            assert parser.epilog and parser.epilog.startswith("examples:") and "stembridge " in parser.epilog, path
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (path, action.option_strings or action.dest)
    listing = top.format_help()
    for name in ("separate", "render", "eval", "preset", "effects", "plugins", "models", "doctor", "cache"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 15, line  # a one-line purpose in the command list


@pytest.mark.parametrize("argv, names", [(["preset"], "check"), ([], "separate, render")])
def test_a_missing_subcommand_names_the_choices(argv, names):
    result = stembridge(*argv)
    assert result.returncode == 2
    assert f"name a command: {names}" in result.stderr and "required:" not in result.stderr


# --- refusals before any work --------------------------------------------------------------------

def test_album_loudness_without_a_target_is_refused_before_any_work(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0}\n")
    song = write_song(tmp_path / "song.wav", 0.5)
    out = tmp_path / "out"
    result = stembridge("render", preset, song, "--out", out, "--set", "output.loudness_scope=album")
    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "album loudness needs a target" in lines[0] and "loudness_lufs" in lines[0]
    assert lines[0].startswith("stembridge: error: --set output.loudness_scope=album: ")
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {loudness_scope: album}\n")
    result = stembridge("preset", "check", preset)
    assert result.returncode == 2 and f"{preset}: output.loudness_scope: album loudness needs a target" in result.stderr
    with_target = stembridge("render", preset, song, "--out", out, "--set", "output.loudness_lufs=-16", "--quiet",
                             "--no-cache")
    assert with_target.returncode == 0, with_target.stderr


@pytest.mark.parametrize("option", ["--denoise", "--invert"])
def test_denoise_and_invert_are_refused_by_models_that_ignore_them(tmp_path, option):
    song = write_song(tmp_path / "song.wav", 0.5)
    result = stembridge("separate", song, "--out", tmp_path / "out", option)  # the default: a mask model
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and not (tmp_path / "out").exists()
    assert f"{option}: only MDX-Net models take it" in lines[0] and "is a mask model" in lines[0]


def test_every_family_but_mdx_refuses_denoise_and_mdx_keys_it(models_dir):
    """No family ignores the settings silently: each either refuses them or records them in its
    settings (which the stem cache key and the manifests hold)."""
    for name in families.registered():
        family = families.family(name)
        assert family.denoise_invert == (name == "mdx"), name
    with pytest.raises(ModelError, match="dsp model"):
        load_separator("dsp", denoise=True)
    plain = load_separator(str(models_dir / "identity-voc.yaml"))
    denoised = load_separator(str(models_dir / "identity-voc.yaml"), denoise=True)
    assert plain.settings["denoise"] is False and denoised.settings["denoise"] is True
    assert load_separator("default").settings == load_separator("default", wiener=0).settings


def test_a_set_value_that_is_not_yaml_names_the_argument_and_the_quoting(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\n")
    song = write_song(tmp_path / "song.wav", 0.5)
    for value in ("output.files.mix={track}.remix.{ext}", "output.files.mix={track}"):
        result = stembridge("render", preset, song, "--out", tmp_path / "out", "--set", value)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"stembridge: error: --set {value}: ")
        assert str(preset) not in lines[0]
        key, raw = value.split("=", 1)
        assert f"--set '{key}=\"{raw}\"'" in lines[0]  # the fix, ready to paste
    quoted = stembridge("render", preset, song, "--out", tmp_path / "out", "--quiet", "--no-cache", "--set",
                        'output.files.mix="{track}.remix.{ext}"')
    assert quoted.returncode == 0 and (tmp_path / "out" / "song.remix.wav").is_file()


# --- plugin chatter --------------------------------------------------------------------------------

def test_plugin_stderr_chatter_is_captured_and_shown_with_verbose(third_party, tmp_path):
    """DPF plugins print "DPF warning: asked to delete component while ... still active" from C++
    as they are unloaded: the terminal gets one line saying so, --verbose shows the lines."""
    folder = tmp_path / "vst3"
    folder.mkdir()
    for name in ("3BandEQ", "MVerb"):
        (folder / f"{name}.vst3").symlink_to(third_party[name])
    quiet = stembridge("plugins", folder)
    assert quiet.returncode == 0 and "3BandEQ" in quiet.stdout
    assert "DPF warning" not in quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stembridge: note: plugins or native libraries wrote ")
    assert "--verbose" in lines[0]
    for argv in (["--verbose", "plugins", folder], ["plugins", folder, "--verbose"]):
        loud = stembridge(*argv)
        assert loud.returncode == 0 and "DPF warning: asked to delete component" in loud.stderr
        assert "stembridge: note" not in loud.stderr


def test_our_own_errors_still_reach_the_terminal_while_plugins_are_captured(tmp_path):
    result = stembridge("render", tmp_path / "missing.yaml", tmp_path / "x.wav")
    assert result.returncode == 2 and "no such preset file" in result.stderr


# --- progress bars ---------------------------------------------------------------------------------

def _in_terminal(argv, *, columns: int) -> tuple[int, bytes]:
    """Run the command in a pseudo-terminal ``columns`` wide (0: a terminal that reports no size)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        os.chdir(REPO)
        os.execvpe(sys.executable, [sys.executable, "-m", "bridge.cli", *map(str, argv)], env())
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.parametrize("columns", [100, 0])
def test_progress_bars_show_in_a_terminal(tmp_path, columns):
    song = write_song(tmp_path / "song.wav", 25.0)  # three 10 s blocks: the bar moves
    code, out = _in_terminal(["separate", song, "--model", "dsp", "--out", tmp_path / "out", "--no-cache"],
                             columns=columns)
    assert code == 0, out.decode(errors="replace")
    text = out.decode("utf-8", errors="replace")
    assert "songs: 0/1 |" in text and "song.wav:" in text and "%|" in text  # both bars were drawn
    assert "100%|" in text


def test_no_bars_when_the_output_is_not_a_terminal(tmp_path):
    song = write_song(tmp_path / "song.wav", 25.0)
    result = stembridge("separate", song, "--model", "dsp", "--out", tmp_path / "out", "--no-cache")
    assert result.returncode == 0
    assert "%|" not in result.stderr and "\r" not in result.stderr and "\x1b[" not in result.stderr
    assert "1 song: 1 rendered" in result.stdout


def test_a_worker_process_warning_still_reaches_stderr_while_its_fd_2_is_captured(tmp_path):
    """--jobs 2 runs songs in host processes that inherit the captured fd 2: their Python warnings
    (a damaged stem cache entry here) must still be printed, not hidden with plugins' chatter."""
    songs = [write_song(tmp_path / f"song{i}.wav", 1.0, seed=i) for i in range(2)]
    cache = tmp_path / "cache"
    argv = ["separate", *songs, "--model", "dsp", "--cache-dir", cache, "--quiet"]
    assert stembridge(*argv, "--out", tmp_path / "fresh").returncode == 0
    for stored in sorted(cache.rglob("*.f32")):
        stored.write_bytes(stored.read_bytes()[:100])  # truncated: the cache warns and separates again
    result = stembridge(*argv, "--out", tmp_path / "again", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is damaged") >= 2, result.stderr
    assert "stembridge: note" not in result.stderr
