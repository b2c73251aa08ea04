"""Reliability corpus (issue 5): bad inputs and faults, generated here, run through the command line.

Every bad case must give one line on stderr (``stembridge: error: ...``) naming
the file (for presets, the key path inside it), what was wrong and the fix; no traceback; inputs
unchanged; nothing half-written under a final name. A bad file in a multi-file run is reported
and skipped (or stops the run with ``--fail-fast``) and the good files are all rendered. Cases
that legitimately succeed must give outputs of the right length, rate and channel count.

Audio is synthesized here (no binary blobs); the separator is the weight-free ``dsp`` one.
``STEMBRIDGE_RELIABILITY_TABLE=path pytest tests/test_reliability.py`` also writes the table of
observed behaviour that docs/reliability.md holds.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import pytest
import scipy.signal
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge.render.separate
import bridge.render.song
from bridge.audio.files import TEST_PAUSE_VARIABLE
from bridge.cli import main as cli
from bridge.host.ducking import DuckSettings
from bridge.errors import BridgeError
from bridge.render.songs import ClippingWarning
from bridge.preset.session import OutputSettings, SeparatorSettings, Session, StemSettings, load, parse

REPO = Path(__file__).resolve().parent.parent
SR = 44100
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PRESET = "version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0}\n"
HIDDEN_PARTIAL = re.compile(r"^\..+\.\d+\.partial$")
SCRATCH = re.compile(r"^\.stembridge-\d+-.*\.partial$")
#: A finished song's resume record beside its stems (complete, hidden, not a leftover).
SEPARATE_RECORD = re.compile(r"^\..+\.separate\.json$")

# --- observed behaviour, for docs/reliability.md ----------------------------------------------------

OBSERVED: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    target = os.environ.get("STEMBRIDGE_RELIABILITY_TABLE")
    if target and OBSERVED:
        rows = ["# What stembridge does with bad input", "",
                "Observed, not written by hand: `STEMBRIDGE_RELIABILITY_TABLE=docs/reliability.md "
                "python -m pytest tests/test_reliability.py` regenerates this table. Every case runs "
                "through the command line with the weight-free `dsp` separator; `<tmp>` is the test's "
                "temporary folder.", "",
                "| case | command | what stembridge gives |", "|---|---|---|"]
        for (case, command), result in sorted(OBSERVED.items()):
            rows.append(f"| {case} | {command} | {result.replace('|', '&#124;')} |")
        Path(target).write_text("\n".join(rows) + "\n", encoding="utf-8")


def record(case: str, command: str, result: str, *, tmp: Path | None = None) -> None:
    if tmp is not None:
        result = result.replace(str(tmp), "<tmp>")
    OBSERVED[(case, command)] = result


# --- helpers -------------------------------------------------------------------------------------------

def tone(frames: int, channels: int = 2, sample_rate: int = SR, level: float = 0.3) -> np.ndarray:
    """A sine per channel (440 Hz and up), as soundfile's (frames, channels) float32."""
    t = np.arange(frames) / sample_rate
    return np.stack([level * np.sin(2 * np.pi * 440 * (1 + 0.25 * c) * t) for c in range(channels)],
                    axis=1).astype(np.float32)


def write(path: Path, frames: np.ndarray, sample_rate: int = SR, **kwargs) -> Path:
    sf.write(str(path), frames, sample_rate, **kwargs)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<not a file>"


def run(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    err += "".join(f"stembridge: warning: {w.message}\n" for w in caught if issubclass(w.category, ClippingWarning))
    return code, out, err


#: Exit codes: a song that failed (the run went on) and a usage error found before any work.
SONG_FAILED, USAGE = 1, 2


def one_error(code: int, err: str, *needles: str, exit_code: int = USAGE) -> str:
    """Assert the error contract and return the message."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == exit_code, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("stembridge: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def final_files(folder: Path) -> list[Path]:
    """Every song output under a final name (the run's own record, stembridge-run.json, and its
    report, stembridge-report.html, are not one)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name not in ("stembridge-run.json", "stembridge-report.html"))


def leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if HIDDEN_PARTIAL.match(p.name) or SCRATCH.match(p.name))


def commands(kind: str, preset: Path, inputs, out: Path, *extra) -> list:
    if kind == "separate":
        return ["separate", *inputs, "--model", "dsp", "--out", out, *extra]
    return ["render", preset, *inputs, "--out", out, *extra]


@pytest.fixture
def preset(tmp_path) -> Path:
    path = tmp_path / "session.yaml"
    path.write_text(PRESET)
    return path


# --- the audio corpus ------------------------------------------------------------------------------

def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with(frames: np.ndarray, index, value) -> np.ndarray:
    frames = frames.copy()
    frames[index] = value
    return frames


#: name -> (build(folder) -> path, words the one-line error must hold)
BAD_AUDIO = {
    "zero-byte.wav": (lambda d: _raw(d / "zero-byte.wav", b""), ["empty (0 bytes)"]),
    "header-only.wav": (lambda d: _cut(write(d / "header-only.wav", tone(100)), 44 / (44 + 400)),
                        ["holds no samples"]),
    "truncated.wav": (lambda d: _cut(write(d / "truncated.wav", tone(2 * SR))), ["truncated", "re-download"]),
    "truncated.flac": (lambda d: _cut(write(d / "truncated.flac", tone(2 * SR))), ["truncated", "re-download"]),
    "truncated.mp3": (lambda d: _cut(write(d / "truncated.mp3", tone(2 * SR))), ["truncated", "re-download"]),
    "truncated.ogg": (lambda d: _cut(write(d / "truncated.ogg", tone(2 * SR))), ["cut off", "re-download"]),
    "random-bytes.wav": (lambda d: _raw(d / "random-bytes.wav", np.random.default_rng(5).bytes(5000)),
                         ["recognised", "convert it"]),
    "text.flac": (lambda d: _raw(d / "text.flac", b"not audio at all\n" * 50), ["cannot be read as audio", "convert it"]),
    "folder.wav": (lambda d: (d / "folder.wav").mkdir() or d / "folder.wav", ["holds no audio files", "check the path"]),
    "nan-samples.wav": (lambda d: write(d / "nan-samples.wav", _with(tone(4410), (100, 0), np.nan), subtype="FLOAT"),
                        ["sample 100", "NaN or Inf", "repair"]),
    "inf-samples.wav": (lambda d: write(d / "inf-samples.wav", _with(tone(4410), (200, 1), np.inf), subtype="FLOAT"),
                        ["sample 200", "NaN or Inf", "repair"]),
    "six-channels.wav": (lambda d: write(d / "six-channels.wav", tone(4410, 6)),
                         ["6 channels", "mono or stereo", "ffmpeg -i in.wav -ac 2"]),
}


@pytest.mark.parametrize("kind", ["separate", "render"])
@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_is_one_line_naming_the_file(case, kind, tmp_path, preset, capsys):
    build, needles = BAD_AUDIO[case]
    source = build(tmp_path)
    before = sha(source)
    out = tmp_path / "out"
    code, _, err = run(capsys, commands(kind, preset, [source], out))
    line = one_error(code, err, str(source), *needles, exit_code=SONG_FAILED)
    record(case, kind, f"exit 1: `{line}`", tmp=tmp_path)
    assert sha(source) == before
    assert not out.exists() or (not final_files(out) and not leftovers(out))


@pytest.mark.parametrize("fail_fast", [False, True], ids=["skip", "fail-fast"])
@pytest.mark.parametrize("kind", ["separate", "render"])
def test_multi_file_run_skips_every_bad_file_and_renders_the_good(kind, fail_fast, tmp_path, preset, capsys):
    bad = [build(tmp_path) for build, _ in BAD_AUDIO.values()]
    good = [write(tmp_path / f"good{i}.wav", tone(SR // 4)) for i in range(2)]
    inputs = [good[0], *bad, good[1]]
    hashes = {p: sha(p) for p in inputs}
    out = tmp_path / "out"
    code, _, err = run(capsys, commands(kind, preset, inputs, out, *(["--fail-fast"] if fail_fast else [])))
    assert code == SONG_FAILED and "Traceback" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith("stembridge: error: ") for line in lines), err
    if fail_fast:
        assert len(lines) == 2 and str(bad[0]) in lines[0] and f"1 of {len(inputs)} inputs failed" in lines[1]
        expected_good = good[:1]
    else:
        assert len(lines) == len(bad) + 1 and f"{len(bad)} of {len(inputs)} inputs failed" in lines[-1]
        for path in bad:
            assert sum(str(path) in line for line in lines) == 1, path
        expected_good = good
    for path in expected_good:
        targets = ([out / path.stem / "vocals.wav", out / path.stem / "instrumental.wav"] if kind == "separate"
                   else [out / f"{path.stem}.remix.wav"])
        for target in targets:
            assert sf.info(str(target)).frames == SR // 4
    assert {p: sha(p) for p in inputs} == hashes
    assert not leftovers(out)
    record(f"multi-file run (2 good + {len(bad)} bad)", kind + (" --fail-fast" if fail_fast else ""),
           f"exit 1; {'stops at the first bad file' if fail_fast else 'one line per bad file'}, "
           f"then `{lines[-1].replace(str(tmp_path), '<tmp>')}`; good files rendered")


#: name -> (frames as written, sample rate, soundfile subtype, file name)
GOOD_AUDIO = {
    "1 sample": (tone(1), SR, "PCM_16", "one.wav"),
    "shorter than one chunk (100 samples)": (tone(100), SR, "PCM_16", "short.wav"),
    "silence": (np.zeros((SR // 2, 2), np.float32), SR, "PCM_16", "silence.wav"),
    "8 kHz": (tone(4000, sample_rate=8000), 8000, "PCM_16", "rate8000.wav"),
    "11.025 kHz": (tone(5512, sample_rate=11025), 11025, "PCM_16", "rate11025.wav"),
    "96 kHz": (tone(48000, sample_rate=96000), 96000, "PCM_24", "rate96000.wav"),
    "192 kHz": (tone(96000, sample_rate=192000), 192000, "PCM_24", "rate192000.wav"),
    "mono": (tone(SR // 2, 1), SR, "PCM_16", "mono.wav"),
    "24-bit": (tone(SR // 2), SR, "PCM_24", "pcm24.wav"),
    "32-bit float": (tone(SR // 2), SR, "FLOAT", "float.wav"),
    "8-bit unsigned": (tone(SR // 2), SR, "PCM_U8", "u8.wav"),
    "non-ASCII name with spaces": (tone(SR // 2), SR, "PCM_16", "Ünïcödé sóng 名前 (live).wav"),
    "DC offset 0.5": (np.full((SR // 2, 2), 0.5, np.float32), SR, "PCM_16", "dc.wav"),
}


@pytest.mark.parametrize("kind", ["separate", "render"])
@pytest.mark.parametrize("case", list(GOOD_AUDIO))
def test_awkward_but_valid_audio_renders_with_the_right_length_and_rate(case, kind, tmp_path, preset, capsys):
    frames, rate, subtype, name = GOOD_AUDIO[case]
    source = write(tmp_path / name, frames, rate, subtype=subtype)
    before = sha(source)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, commands(kind, preset, [source], out))
    assert code == 0 and err == "", err
    channels = frames.shape[1]
    if kind == "separate":
        targets = [out / source.stem / "vocals.wav", out / source.stem / "instrumental.wav"]
    else:
        targets = [out / f"{source.stem}.remix.wav"]
        channels = 2  # a session mixes to its layout (stereo)
    for target in targets:
        audio, got_rate = sf.read(str(target), always_2d=True, dtype="float32")
        assert (audio.shape, got_rate) == ((frames.shape[0], channels), rate)
        assert np.isfinite(audio).all()
        if case == "silence":
            assert not audio.any()
    if kind == "separate":  # the stems sum back to the mix (24-bit outputs: about 1e-7 per stem)
        total = sum(sf.read(str(t), always_2d=True, dtype="float32")[0] for t in targets)
        np.testing.assert_allclose(total, sf.read(str(source), always_2d=True, dtype="float32")[0], atol=1e-5)
    assert sha(source) == before and not leftovers(out)
    record(case, kind, f"exit 0; {len(targets)} file(s) of {frames.shape[0]} samples at {rate} Hz, {channels} ch")


def _square(frames: int) -> np.ndarray:
    wave = np.sign(np.sin(2 * np.pi * 100 * np.arange(frames) / SR)).astype(np.float32)
    return np.stack([wave, wave], axis=1)


#: (case, kind) -> the outputs that clip. The dsp vocals of a full-scale square ring over full scale
#: (the instrumental peaks at 0.94); a DC offset of 0.5 is no vocal and stays under full scale in both
#: stems, but the session's +12 dB takes it (and the square) to 2.0 on every sample.
CLIPS = {("full-scale square", "separate"): {"vocals.wav"}, ("full-scale square", "render"): {"hot.remix.wav"},
         ("DC offset 0.5", "separate"): set(), ("DC offset 0.5", "render"): {"hot.remix.wav"}}
FULL_SCALE_24 = 1 - 2.0 ** -23  # the largest 24-bit PCM sample


@pytest.mark.parametrize("kind", ["separate", "render"])
@pytest.mark.parametrize("case", ["full-scale square", "DC offset 0.5"])
def test_hot_signals_render_and_clipping_is_reported(case, kind, tmp_path, preset, capsys):
    frames = _square(SR // 2) if case == "full-scale square" else np.full((SR // 2, 2), 0.5, np.float32)
    source = write(tmp_path / "hot.wav", frames, subtype="FLOAT")
    out = tmp_path / "out"
    hot = ["--set", "stems.vocals.gain_db=12", "--set", "stems.instrumental.gain_db=12"] if kind == "render" else []
    code, _, err = run(capsys, commands(kind, preset, [source], out, *hot))
    assert code == 0 and "Traceback" not in err
    targets = [t for t in final_files(out) if t.suffix == ".wav"]
    audio = {t: sf.read(str(t), always_2d=True)[0] for t in targets}
    assert audio and all(a.shape[0] == frames.shape[0] for a in audio.values())
    clips = CLIPS[case, kind]
    for target, a in audio.items():
        count = int(np.sum(np.abs(a) >= FULL_SCALE_24))  # clipped samples, counted in the file itself
        if target.name in clips:
            assert count > 0 and f"{target}: {count} samples were over full scale and clipped" in err, (count, err)
        else:
            assert count == 0 and str(target) not in err, (target, count, err)
    if not clips:  # nothing clipped: nothing said, and the stems sum back to the mix (24-bit outputs)
        assert err == ""
        np.testing.assert_allclose(sum(audio.values()), frames, atol=1e-5)
    if kind == "render":
        manifest = json.loads((out / "hot.remix.manifest.json").read_text())
        assert manifest["outputs"]["mix"]["clipped_samples"] == int(np.sum(np.abs(audio[out / "hot.remix.wav"]) >= FULL_SCALE_24))
    record(case, kind + (" +12 dB" if hot else ""),
           f"exit 0; {'`' + err.strip().splitlines()[0].replace(str(tmp_path), '<tmp>') + '`' if err else 'no clipping'}")


@pytest.mark.parametrize("kind", ["separate", "render"])
def test_a_file_that_disappears_mid_run_is_skipped(kind, tmp_path, preset, capsys, monkeypatch):
    """Deleted before its turn (as root, chmod 000 does not stop reads); else made unreadable."""
    inputs = [write(tmp_path / f"song{i}.wav", tone(SR // 4)) for i in range(3)]
    victim = inputs[1]
    module, name = (bridge.render.separate, "separate_song") if kind == "separate" else (bridge.render.song, "render_song")
    original = getattr(module, name)

    def job(path, *args, **kwargs):
        result = original(path, *args, **kwargs)
        if Path(path) == inputs[0]:
            if IS_ROOT:
                victim.unlink()
            else:
                victim.chmod(0)
        return result

    monkeypatch.setattr(module, name, job)
    out = tmp_path / "out"
    try:
        code, _, err = run(capsys, commands(kind, preset, inputs, out))
    finally:
        if victim.exists():
            victim.chmod(0o644)
    lines = err.strip().splitlines()
    assert code == SONG_FAILED and len(lines) == 2 and "Traceback" not in err
    assert str(victim) in lines[0] and ("no such file" if IS_ROOT else "permission denied") in lines[0]
    assert "1 of 3 inputs failed" in lines[1]
    for path in (inputs[0], inputs[2]):
        assert any(path.stem in str(p) for p in final_files(out))
    assert not leftovers(out)
    record("input deleted (root) / chmod 000 before its turn", kind, f"exit 1: `{lines[0].replace(str(tmp_path), '<tmp>')}`; "
           "the other files rendered")


def _denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def act_as_non_root(monkeypatch, *, unreadable=(), read_only=()) -> None:
    """For root, who reads and writes anything: what a normal user meets on a chmod 000 file
    (``unreadable``) or in a chmod 555 folder (``read_only``), simulated in-process at the calls that
    reach the OS (Python's open, os.open, os.mkdir, os.access, libsndfile's open). A normal user gets
    the real errors from the chmod, and nothing is patched."""
    if not IS_ROOT:
        return
    unreadable = {os.path.abspath(p) for p in unreadable}
    read_only = {os.path.abspath(p) for p in read_only}

    def refused(path, writing: bool) -> bool:
        if isinstance(path, int):
            return False
        path = os.path.abspath(os.fspath(path))
        return path in unreadable or (writing and os.path.dirname(path) in read_only)

    def writes(mode) -> bool:
        return any(c in str(mode) for c in "wax+")

    real_open, real_os_open, real_mkdir, real_access = io.open, os.open, os.mkdir, os.access
    real_soundfile = sf.SoundFile.__init__

    def fake_open(file, mode="r", *args, **kwargs):
        if refused(file, writes(mode)):
            raise _denied(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if refused(path, bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
            raise _denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if refused(path, True) and not os.path.isdir(path):
            raise _denied(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_access(path, mode, *args, **kwargs):
        return not refused(path, bool(mode & os.W_OK)) and real_access(path, mode, *args, **kwargs)

    def fake_soundfile(self, file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and refused(file, writes(mode)):
            raise sf.LibsndfileError(2, prefix=f"Error opening {str(file)!r}: ")  # SFE_SYSTEM: "System error."
        return real_soundfile(self, file, mode, *args, **kwargs)

    for target, name, fake in ((io, "open", fake_open), (builtins, "open", fake_open), (os, "open", fake_os_open),
                               (os, "mkdir", fake_mkdir), (os, "access", fake_access),
                               (sf.SoundFile, "__init__", fake_soundfile)):
        monkeypatch.setattr(target, name, fake)


def test_an_unreadable_file_is_named(tmp_path, preset, capsys, monkeypatch):
    source = write(tmp_path / "locked.wav", tone(100))
    source.chmod(0)
    act_as_non_root(monkeypatch, unreadable=[source])
    try:
        code, _, err = run(capsys, commands("separate", preset, [source], tmp_path / "out"))
    finally:
        source.chmod(0o644)
    one_error(code, err, str(source), "permission denied", exit_code=SONG_FAILED)


# --- the preset corpus -----------------------------------------------------------------------------

def full_preset() -> dict:
    """A preset that sets every key the schema has, built from the schema's own dataclasses."""
    effect = {"effect": "Gain", "gain_db": 0.0}
    session = Session(
        separator=SeparatorSettings(model="dsp", stems=("vocals", "instrumental"), overlap=0.5, batch_size=1,
                                    device="cpu"),
        stems=(("vocals", StemSettings(gain_db=1.0, pan=0.1, chain=(_spec(effect),), upmix="center")),
               ("instrumental", StemSettings(gain_db=((0.0, 0.0), (1.0, -6.0)), duck=DuckSettings(by="vocals")))),
        pre=(_spec(effect),), master=(_spec(effect),),
        output=OutputSettings(sample_rate=44100, stems="{track}/{stem}.{ext}", loudness_lufs=-14.0, report=True))
    data = session.to_dict()
    # Every field of every settings class is in the dict (files.mix/stems are output's mix/stems);
    # a preset names a model or an ensemble: the ensemble's keys are in full_ensemble_preset().
    keys = {k for k in _walk_keys(data)}
    for cls in (SeparatorSettings, StemSettings, OutputSettings):
        assert {f.name for f in dataclasses.fields(cls)} - ENSEMBLE_KEYS - ENCODED_KEYS <= keys, cls
    return data


#: The keys only a preset with ``separator.ensemble`` has.
ENSEMBLE_KEYS = {"ensemble", "residual"}
#: The keys only an encoded format (m4a) or a video input take: in full_encoded_preset(), which the
#: wav render of the full preset does not run.
ENCODED_KEYS = {"codec", "bitrate", "video"}


def full_encoded_preset() -> dict:
    """:func:`full_preset` writing m4a with a codec and bit rate, and a video output."""
    data = full_preset()
    data["output"].update(format="m4a", codec="aac", bitrate=256.0)
    data["output"]["files"]["video"] = "{track}.video.{ext}"
    session = parse(data)
    assert ENCODED_KEYS <= set(_walk_keys(session.to_dict()))
    return session.to_dict()


def full_ensemble_preset() -> dict:
    """:func:`full_preset` with an ensemble instead of a model: every key of the ensemble schema."""
    data = full_preset()
    data["separator"].pop("model")
    data["separator"]["ensemble"] = [{"model": "dsp", "stems": ["vocals"]},
                                     {"models": ["dsp", "default"], "stems": ["instrumental"], "method": "avg_wave",
                                      "weights": [1.0, 2.0]}]
    data["separator"]["residual"] = "instrumental"
    session = parse(data)
    keys = set(_walk_keys(session.to_dict()))
    assert ENSEMBLE_KEYS | {"model", "models", "stems", "method", "weights"} <= keys
    return session.to_dict()


def _corpus():
    """(data, path) for every key of the schema: the full preset's, then the ensemble's own."""
    data = full_preset()
    yield from ((data, path, value) for path, value in _paths(data))
    ensemble = full_ensemble_preset()
    yield from ((ensemble, path, value) for path, value in _paths(ensemble)
                if path[:2] in (("separator", "ensemble"), ("separator", "residual")))
    encoded = full_encoded_preset()
    yield from ((encoded, path, value) for path, value in _paths(encoded)
                if path in (("output", "codec"), ("output", "bitrate"), ("output", "files", "video")))


def _spec(effect: dict):
    return parse({"version": 1, "pre": [effect]}).pre[0]


def _walk_keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_keys(item)


def _paths(node, path=()):
    """Every (path, value) in the tree; a path is a tuple of keys and list indices."""
    yield path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield from _paths(value, path + (key,))


def _where(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _copy_to_parent(data: dict, path) -> tuple[dict, dict]:
    """A deep copy of ``data`` and, inside the copy, the node that holds ``path[-1]``."""
    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    return data, node


def _set(data: dict, path, value) -> dict:
    data, node = _copy_to_parent(data, path)
    node[path[-1]] = value
    return data


def _rename(data: dict, path, new_key) -> dict:
    data, node = _copy_to_parent(data, path)
    node[new_key] = node.pop(path[-1])
    return data


def misspell(key: str) -> str:
    return key + key[-1]


def _misspelled_cases():
    for data, path, _ in _corpus():
        if not path or isinstance(path[-1], int):
            continue
        wrong = misspell(path[-1])
        where = _where(path[:-1] + (wrong,))
        if path[:-1] == ("stems",):  # a stem name: valid YAML, refused once the model is known
            expect = where
        elif path[-1] == "effect" or (len(path) >= 2 and isinstance(path[-2], int)):
            expect = _where(path[:-1])  # an effect's keys are its parameters: the effect is named
        else:
            expect = where
        yield pytest.param(_rename(data, path, wrong), expect, id=_where(path))


def _strip_index(where: str) -> str:
    return re.sub(r"(\[\d+\])+$", "", where)


def _wrong_value_cases():
    for data, path, value in _corpus():
        if not path or value is None:
            continue
        where = _strip_index(_where(path))
        if isinstance(value, bool):
            wrong = {"type": "yes"}
        elif isinstance(value, (int, float)):
            wrong = {"type": "loud", "negative": -1e9, "huge": 1e308, "huge-int": 10 ** 30}
        elif isinstance(value, str):
            wrong = {"type": 42}
        elif isinstance(value, list):
            wrong = {"type": {"a": 1}}
        else:
            wrong = {"type": [1]}
        for label, bad in wrong.items():
            yield pytest.param(_set(data, path, bad), where, id=f"{_where(path)}={label}")


def _check_preset_error(tmp_path, preset_data, where, capsys, label, *needles):
    preset = tmp_path / "preset.yaml"
    if isinstance(preset_data, bytes):
        preset.write_bytes(preset_data)
    else:
        preset.write_text(preset_data if isinstance(preset_data, str) else yaml.safe_dump(preset_data, sort_keys=False))
    before = sha(preset)
    song = write(tmp_path / "song.wav", tone(SR // 10))
    code, _, err = run(capsys, ["render", preset, song, "--out", tmp_path / "out"])
    line = one_error(code, err, f"{preset}: {where}" if where else str(preset), *needles)
    assert sha(preset) == before and not (tmp_path / "out").exists()
    record(label, "render", f"exit 2: `{line.replace(str(tmp_path), '<tmp>')}`")
    return line


def test_the_full_preset_is_valid_and_renders(tmp_path, capsys):
    data = full_preset()
    preset = tmp_path / "full.yaml"
    preset.write_text(yaml.safe_dump(data))
    song = write(tmp_path / "song.wav", tone(SR // 10))
    out = tmp_path / "out"
    code, _, err = run(capsys, ["render", preset, song, "--out", out])
    assert code == 0, err
    assert sorted(str(p.relative_to(out)) for p in final_files(out)) == [
        "song.remix.manifest.json", "song.remix.wav", "song/instrumental.wav", "song/vocals.wav"]
    assert (out / "stembridge-report.html").is_file()  # output.report: true
    output = data["output"]
    frames = SR // 10 + round(output["tail_seconds"] * output["sample_rate"])  # the song, then the tail
    for target in ("song.remix.wav", "song/instrumental.wav", "song/vocals.wav"):
        info = sf.info(str(out / target))
        assert (info.frames, info.channels, info.samplerate, info.subtype) == (frames, 2, 44100, "PCM_24"), target
        assert b"bext" in (out / target).read_bytes()[:4096], f"{target}: output.bwf is true but there is no bext chunk"
    mix, rate = sf.read(str(out / "song.remix.wav"), always_2d=True)
    # output.loudness_lufs, measured independently (pyloudnorm's BS.1770 meter); 0.1 LU: 24-bit rounding.
    assert pyln.Meter(rate).integrated_loudness(mix) == pytest.approx(output["loudness_lufs"], abs=0.1)
    # output.true_peak_db: the sample peak of the 4x oversampled mix (BS.1770 true peak), 0.1 dB margin.
    true_peak = 20 * np.log10(np.max(np.abs(scipy.signal.resample_poly(mix, 4, 1, axis=0))))
    assert true_peak <= output["true_peak_db"] + 0.1


@pytest.mark.parametrize("data, where", list(_misspelled_cases()))
def test_every_misspelled_key_is_named_with_its_path(data, where, tmp_path, capsys):
    _check_preset_error(tmp_path, data, where, capsys, f"misspelled key → {where}")


@pytest.mark.parametrize("data, where", list(_wrong_value_cases()))
def test_every_wrong_type_negative_or_huge_value_is_named_with_its_path(data, where, tmp_path, capsys, request):
    label = request.node.callspec.id
    _check_preset_error(tmp_path, data, where, capsys, f"value {label}")


DEEP = "version: 1\npre: " + "[" * 50 + "]" * 50 + "\n"
BOMB = "version: 1\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))

#: name -> (preset text or data, key path named, words the message must hold)
BAD_PRESETS = {
    "not a mapping (a list)": ("- version: 1\n", "", ["must be a YAML mapping"]),
    "not a mapping (a number)": ("42\n", "", ["must be a YAML mapping"]),
    "empty file": ("", "", ["must be a YAML mapping"]),
    "not YAML (tab)": ("version: 1\n\tpre: []\n", "", ["not valid YAML at line 2"]),
    "python tag": ("version: 1\npre: !!python/object/apply:os.system [ls]\n", "", ["not valid YAML"]),
    "not UTF-8": (b"version: 1\n# caf\xe9\n", "", ["save it as UTF-8"]),
    "billion laughs (anchors)": (BOMB, "", ["expands to more than", "anchors"]),
    "nested 50 deep": (DEEP, "", ["nested deeper than"]),
    "nested 5000 deep": ("version: 1\npre: " + "[" * 5000 + "]" * 5000 + "\n", "", ["nested too deeply"]),
    "unknown effect": ({"version": 1, "master": [{"effect": "Reverbb"}]}, "master[0].effect", ["did you mean 'Reverb'"]),
    "unknown parameter": ({"version": 1, "master": [{"effect": "Reverb", "room_sise": 0.2}]}, "master[0]",
                          ["did you mean 'room_size'"]),
    "parameter out of pedalboard's range": ({"version": 1, "master": [{"effect": "Reverb", "room_size": 9}]},
                                            "master[0]", ["between 0.0 and 1.0"]),
    "VST3 path that does not exist": ({"version": 1, "pre": [{"vst3": "no/Such.vst3"}]}, "pre[0]",
                                      ["does not exist", "fix the path"]),
    "VST3 path that is not a plugin": ({"version": 1, "pre": [{"vst3": "Fake.vst3"}]}, "pre[0]",
                                       ["could not be loaded as a VST3 plugin"]),
    "output name with ../": ({"version": 1, "output": {"files": {"mix": "../{track}.{ext}"}}}, "output.files.mix",
                             ["relative name inside the output folder"]),
    "output name a/../../": ({"version": 1, "output": {"files": {"mix": "a/../../{track}.{ext}"}}},
                             "output.files.mix", ["relative name inside"]),
    "absolute output name": ({"version": 1, "output": {"files": {"stems": "/tmp/{stem}.{ext}"}}},
                             "output.files.stems", ["relative name inside"]),
    "home output name": ({"version": 1, "output": {"files": {"mix": "~/{track}.{ext}"}}}, "output.files.mix",
                         ["relative name inside"]),
    "format spec in a name": ({"version": 1, "output": {"files": {"mix": "{track:>300}.{ext}"}}}, "output.files.mix",
                              ["format spec"]),
    "unknown field in a name": ({"version": 1, "output": {"files": {"mix": "{trak}.{ext}"}}}, "output.files.mix",
                                ["unknown field {trak}"]),
    "two outputs to one name": ({"version": 1, "output": {"files": {"mix": "{track}.{ext}", "stems": "{track}.{ext}"}}},
                                "output.files", ["would both be written to", "include {stem}"]),
    "stems without {stem}": ({"version": 1, "output": {"files": {"stems": "{track}.x.{ext}"}}}, "output.files",
                             ["would both be written to"]),
    # Found by the fuzzer: a key holding a newline made the message two lines.
    "unknown key with a newline": ({"version": 1, "a\nb": None}, "'a\\nb'", ["unknown key"]),
    "unknown model": ({"version": 1, "separator": {"model": "nosuch"}}, None,
                      ["preset.yaml: separator.model: unknown model 'nosuch'"]),
}


@pytest.mark.parametrize("case", list(BAD_PRESETS))
def test_bad_presets_are_one_line_naming_the_file_and_key(case, tmp_path, capsys):
    text, where, needles = BAD_PRESETS[case]
    (tmp_path / "Fake.vst3").write_text("not a plugin")
    if isinstance(text, dict):
        text = {**text, "separator": {"model": "dsp", **text.get("separator", {})}}
        text = yaml.safe_dump(text)
    if where is None:  # model errors are checked when the separator loads; the command names the preset key
        song = write(tmp_path / "song.wav", tone(100))
        (tmp_path / "preset.yaml").write_text(text)
        code, _, err = run(capsys, ["render", tmp_path / "preset.yaml", song, "--out", tmp_path / "out"])
        line = one_error(code, err, *needles)
        record(case, "render", f"exit 2: `{line.replace(str(tmp_path), '<tmp>')}`")
        return
    _check_preset_error(tmp_path, text, where, capsys, case, *needles)


@pytest.mark.parametrize("kind", ["separate", "render"])
def test_an_output_never_overwrites_an_input(kind, tmp_path, capsys):
    song = write(tmp_path / "song.wav", tone(SR // 10))
    before = sha(song)
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {files: {mix: '{track}.{ext}'}}\n")
    argv = (["separate", song, "--model", "dsp", "--stems", "vocals", "--name", "{track}.{ext}", "--out", tmp_path]
            if kind == "separate" else ["render", preset, song, "--out", tmp_path])
    code, _, err = run(capsys, argv)
    line = one_error(code, err, str(song), "would overwrite the input", exit_code=SONG_FAILED)
    assert sha(song) == before and not leftovers(tmp_path)
    record("output name = the input", kind, f"exit 1: `{line.replace(str(tmp_path), '<tmp>')}`")


@pytest.mark.parametrize("kind", ["separate", "render"])
def test_a_full_disk_fails_cleanly(kind, tmp_path, preset, capsys, monkeypatch):
    """ENOSPC from every write, simulated in-process (a real full disk needs a mount)."""
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    inputs = [write(tmp_path / f"song{i}.wav", tone(SR // 10)) for i in range(2)]
    monkeypatch.setattr(sf.SoundFile, "write", full)
    out = tmp_path / "out"
    code, _, err = run(capsys, commands(kind, preset, inputs, out))
    lines = err.strip().splitlines()
    assert code == SONG_FAILED and len(lines) == 3 and "Traceback" not in err, err
    for line, path in zip(lines, inputs):
        assert line.startswith("stembridge: error: ") and str(out) in line and path.stem in line
        assert "No space left on device" in line and "free space" in line
    assert not final_files(out) and not leftovers(out)
    record("output disk full (ENOSPC on write)", kind, f"exit 1: `{lines[0].replace(str(tmp_path), '<tmp>')}`")


def test_a_write_refused_by_the_system_fails_cleanly(tmp_path):
    """A real failing write, not a simulated one: the file-size limit (RLIMIT_FSIZE, 256 KiB) makes
    the kernel refuse a write in the middle of the song, in the thread that writes behind the
    separation. The command must say so in one line, exit 1, and leave nothing under a final name
    and no partial file (the stems would be about 1.6 MB each)."""
    import resource

    song = write(tmp_path / "song.wav", tone(3 * SR))
    out = tmp_path / "out"
    limit = 256 * 1024

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG

    result = subprocess.run([sys.executable, "-m", "bridge.cli", "separate", str(song), "--model", "dsp",
                             "--out", str(out), "--no-cache"], capture_output=True, text=True,
                            preexec_fn=limited, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == SONG_FAILED and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("stembridge: error: ") and "writing failed" in lines[0], lines[0]
    assert not final_files(out) and not leftovers(out), final_files(out) + leftovers(out)


@pytest.mark.parametrize("kind", ["separate", "render"])
def test_a_read_only_output_folder_fails_cleanly(kind, tmp_path, preset, capsys, monkeypatch):
    song = write(tmp_path / "song.wav", tone(SR // 10))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    act_as_non_root(monkeypatch, read_only=[out])
    try:
        code, _, err = run(capsys, commands(kind, preset, [song], out))
    finally:
        out.chmod(0o755)
    # Before any work, one line (the songs and then the run record each failed on it before).
    one_error(code, err, str(out), "Permission denied", "cannot write into the output folder")
    assert list(out.iterdir()) == []


# --- command-line settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["--overlap", "1.5"], ["overlap=1.5", "[0, 1)"]),
    (["--overlap", "-0.1"], ["overlap=-0.1", "[0, 1)"]),
    (["--batch-size", "0"], ["batch_size=0", ">= 1"]),
    (["--threads", "0"], ["threads=0", ">= 1"]),
])
def test_out_of_range_settings_are_one_line_before_any_work(argv, needles, tmp_path, capsys):
    song = write(tmp_path / "song.wav", tone(SR // 10))
    out = tmp_path / "out"
    code, _, err = run(capsys, ["separate", song, "--model", "dsp", "--out", out, *argv])
    line = one_error(code, err, *needles)
    assert not out.exists()
    record(" ".join(argv), "separate", f"exit 2: `{line}`; nothing created")


def test_preset_check_names_the_model_key_of_an_unknown_model(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: nosuch}\n")
    code, _, err = run(capsys, ["preset", "check", preset])
    one_error(code, err, "p.yaml: separator.model: unknown model 'nosuch'")


def test_ctrl_c_while_an_output_is_being_created_leaves_no_partial(tmp_path, monkeypatch):
    """The window the SIGINT test hits now and then: the partial exists, the writer is not returned yet."""
    from bridge.audio import files

    real = files.sf.SoundFile

    def created_then_interrupted(*args, **kwargs):
        real(*args, **kwargs).close()
        raise KeyboardInterrupt

    monkeypatch.setattr(files.sf, "SoundFile", created_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.AudioWriter(tmp_path / "vocals.wav", sample_rate=SR, channels=2)
    assert list(tmp_path.iterdir()) == []


# --- models --------------------------------------------------------------------------------------------

@pytest.fixture
def broken_models(models_dir, tmp_path) -> dict[str, Path]:
    """A card whose sha256 does not match its model, and a card for a truncated model."""
    model = tmp_path / "identity.onnx"
    shutil.copy(models_dir / "identity.onnx", model)
    card = yaml.safe_load((models_dir / "identity-voc.yaml").read_text())
    wrong = tmp_path / "wrong-sha.yaml"
    wrong.write_text(yaml.safe_dump({**card, "file": model.name, "sha256": "0" * 64}))
    cut = tmp_path / "truncated.onnx"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    truncated = tmp_path / "truncated.yaml"
    truncated.write_text(yaml.safe_dump({**card, "file": cut.name}))
    return {"model card with a wrong sha256": wrong, "truncated .onnx": truncated}


@pytest.mark.parametrize("kind", ["separate", "render"])
@pytest.mark.parametrize("case, needles", [("model card with a wrong sha256", ["corrupt or truncated", "re-copy"]),
                                           ("truncated .onnx", ["cannot load this model", "damaged"])])
def test_a_corrupt_model_is_refused_before_any_audio_work(case, needles, kind, broken_models, tmp_path, capsys):
    card = broken_models[case]
    song = write(tmp_path / "song.wav", tone(SR // 10))
    preset = tmp_path / "p.yaml"
    preset.write_text(f"version: 1\nseparator: {{model: {json.dumps(str(card))}}}\n")
    out = tmp_path / "out"
    argv = ["separate", song, "--model", card, "--out", out] if kind == "separate" else ["render", preset, song, "--out", out]
    code, _, err = run(capsys, argv)
    line = one_error(code, err, ".onnx", *needles, *(["p.yaml: separator.model:"] if kind == "render" else []))
    assert not out.exists()
    record(case, kind, f"exit 2: `{line.replace(str(tmp_path), '<tmp>')}`; nothing created")


# --- fuzzing the preset loader -----------------------------------------------------------------------

SCHEMA_KEYS = sorted(set(_walk_keys(full_preset())) | ENCODED_KEYS | {"vst3", "params", "preset", "raw_state", "effect"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["dsp", "Reverb", "Gain", "wav", "5.1", "{track}.{ext}", "../x", "center"]))
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=8), st.integers(), st.booleans())
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


def _mutations():
    data = full_preset()
    paths = [p for p, _ in _paths(data) if p]
    return st.tuples(st.sampled_from(paths), trees).map(lambda pv: _set(data, *pv))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(trees, st.dictionaries(keys, trees, max_size=6).map(lambda d: {"version": 1, **d}), _mutations()))
def test_fuzz_parse_only_raises_bridge_errors(data):
    try:
        session = parse(data, source="fuzz.yaml")
    except BridgeError as exc:
        assert str(exc).startswith("fuzz.yaml") and "\n" not in str(exc)
    else:
        assert parse(yaml.safe_load(session.to_yaml()), source="fuzz.yaml") == session


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200),
                 _mutations().map(lambda d: yaml.safe_dump(d)),
                 st.lists(st.sampled_from(["version: 1\n", "pre: [", "]", "{", "}", "&a ", "*a ", "- ", ": ", "\t",
                                           "!!binary ", "!!python/name:os.system ", "'", '"', "\n", "stems:\n  v:",
                                           "output: {files: {mix: "]), max_size=30).map("".join)))
def test_fuzz_load_only_raises_bridge_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load(path)
        except BridgeError as exc:
            assert str(exc).startswith(str(path)) or str(exc).startswith("--set")
            assert "\n" not in str(exc), str(exc)


# --- signals -------------------------------------------------------------------------------------------

LONG_SECONDS = 10  # the run pauses at a point the test picks (no race), so the songs can be short


@pytest.fixture(scope="module")
def long_songs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("long")
    frames = tone(LONG_SECONDS * SR, level=0.2)
    return [write(folder / f"long{i}.wav", frames, subtype="PCM_16") for i in range(2)]


def _launch(argv, **extra_env) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra_env}
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def wait_for(marker: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    """Wait until a writer paused by the test hook (:data:`bridge.audio.files.TEST_PAUSE_VARIABLE`) made ``marker``."""
    deadline = time.monotonic() + seconds
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists() and process.poll() is None, "the run never paused in the second song's write"


def _expected_outputs(kind: str, out: Path, songs) -> list[Path]:
    if kind == "separate":
        return [out / s.stem / f"{stem}.wav" for s in songs for stem in ("vocals", "instrumental")]
    return [p for s in songs for p in (out / f"{s.stem}.remix.wav", out / f"{s.stem}.remix.manifest.json")]


def _check_finals(out: Path) -> None:
    """Every file under a final name is complete: full length audio, or a whole manifest."""
    for path in final_files(out):
        if path.suffix == ".json":
            assert json.loads(path.read_text())["outputs"]
        else:
            assert sf.info(str(path)).frames == LONG_SECONDS * SR, path
            assert np.isfinite(sf.read(str(path), dtype="float32")[0]).all()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("kind", ["separate", "render"])
def test_an_interrupted_run_leaves_no_partial_file_under_a_final_name(kind, sig, long_songs, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(PRESET)
    out = tmp_path / "out"
    before = {p: sha(p) for p in long_songs}
    # Interrupt while the second song is being written (the first is done): its writer pauses after a block.
    marker = tmp_path / "paused"
    process = _launch(commands(kind, preset, long_songs, out),
                      **{TEST_PAUSE_VARIABLE: f"1:{marker}:{out / long_songs[1].stem}*"})
    wait_for(marker, process)
    assert int(marker.read_text()) == process.pid
    assert all(p.exists() for p in _expected_outputs(kind, out, long_songs[:1]))
    second = [p for p in out.rglob(f".*.{process.pid}.partial") if long_songs[1].stem in str(p.relative_to(out))]
    assert second, list(out.rglob("*"))  # mid-write: the second song's output is a partial so far
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines() == ["stembridge: error: interrupted; no partial output was left under a final name"]
        assert not leftovers(out)
    else:
        assert process.returncode == -signal.SIGKILL
        assert all(HIDDEN_PARTIAL.match(p.name) or SCRATCH.match(p.name) or SCRATCH.match(p.parent.name)
                   or SEPARATE_RECORD.match(p.name)
                   for p in out.rglob(".*")), list(out.rglob(".*"))
    _check_finals(out)
    left = leftovers(out)
    # The rerun completes the rest and cleans what the interrupted run left behind.
    rerun = subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, commands(kind, preset, long_songs, out,
                                                                                      "--quiet"))],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    _check_finals(out)
    assert set(final_files(out)) == set(_expected_outputs(kind, out, long_songs))
    assert not leftovers(out), leftovers(out)
    assert {p: sha(p) for p in long_songs} == before
    record(f"{sig.name} mid-run (2 × {LONG_SECONDS} s)", kind,
           (f"exit 130: `{err.strip()}`; " if sig == signal.SIGINT else "killed; ") +
           f"{len(left)} hidden partial(s)/scratch left, removed by the rerun; finals complete; rerun exit 0")
