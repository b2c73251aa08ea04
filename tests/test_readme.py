"""The README's snippets run, so they cannot rot: its Python, its session preset and every command line
of its bash blocks that can run offline (the others are listed in NOT_RUN, with the reason)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from bridge.audio import files

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
SR = 44100

#: Lines of the README's bash blocks that are not run here, and why.
NOT_RUN = {
    "pip install -e \".[test]\" && python -m pytest -q": "the test command itself",
    "pip install 'stembridge[import]'": "installs packages",
    "stembridge separate song.flac --model path/to/UVR-MDX-NET-Inst_HQ_3.onnx --overlap 0.25":
        "a placeholder model path",
    "stembridge eval --model default --references ../shared/data --json scores.json":
        "minutes over all of shared/data (test_eval scores the same code on an excerpt)",
    "stembridge eval --model default --model default-4stems --ensemble avg_wave --references ../shared/data":
        "minutes over a folder of songs (test_ensemble scores models and ensembles in one table)",
    "stembridge render presets/karaoke.yaml ~/Music/Album1 ~/Music/Album2 --out karaoke/ --jobs auto":
        "the user's music folders (test_batch runs folders with --jobs)",
    "stembridge render presets/upmix-5.1.yaml ~/Music/ --out upmix/ --set output.loudness_scope=album "
    "--set output.loudness_lufs=-16":
        "the user's music folder (test_batch runs album loudness)",
    "stembridge plugins ~/my-vst3 --json": "the user's plugin folder (test_plugins_host lists plugins as JSON)",
    "stembridge models import ~/pretrained_models/4stems": "Spleeter's checkpoint files (test_spleeter_import)",
    "stembridge separate song.flac --model spleeter-4stems": "needs the import above",
    "stembridge models import model_bs_roformer_ep_317_sdr_12.9755.ckpt":
        "a 600 MB checkpoint (test_roformer_import imports a tiny one)",
    "stembridge separate song.flac --model model_bs_roformer_ep_317_sdr_12.9755": "needs the import above",
    "stembridge models import model_scnet_ep_54_sdr_9.8051.ckpt":
        "a 200 MB checkpoint (test_scnet imports tiny ones through the CLI)",
    "stembridge separate song.flac --model model_scnet_ep_54_sdr_9.8051": "needs the import above",
    "stembridge models import ~/.cache/torch/hub/checkpoints": "Demucs's downloaded files (test_demucs_import "
                                                                "imports small ones by the same routes)",
    "stembridge models import htdemucs_6s.yaml": "a Demucs bag and its .th files (test_demucs_import)",
    "stembridge separate song.flac --model htdemucs_ft": "needs the import above",
    "stembridge models import UVR-DeEcho-DeReverb.pth": "UVR's model file (test_vr imports random-weight ones)",
    "stembridge models import my-vr-model.pth --vr-params 4band_v3 --vr-primary \"No Echo\" --vr-nout 48 "
    "--vr-nout-lstm 128": "a placeholder model (test_vr imports with --vr-params)",
    "stembridge render presets/vr/de-reverb.yaml dialogue.wav": "needs UVR-DeEcho-DeReverb imported",
    "stembridge models import ~/umx/umxhq": "an Open-Unmix model's files (test_umx imports small ones the same ways)",
    "stembridge separate song.flac --model umxhq": "needs the import above",
    "stembridge models import MDX23C-8KFFT-InstVoc_HQ.ckpt": "a 448 MB checkpoint (test_mdx23c imports a tiny one)",
    "stembridge separate song.flac --model MDX23C-8KFFT-InstVoc_HQ": "needs the import above",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def command_lines() -> list[str]:
    """Every command of the bash blocks: comments dropped, continuation lines joined."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                lines.append(re.sub(r"\s+", " ", line))
    return lines


def not_run(line: str) -> bool:
    return any(line.startswith(key) for key in NOT_RUN)


def test_every_not_run_entry_is_still_in_the_readme():
    lines = command_lines()
    for key in NOT_RUN:
        assert any(line.startswith(key) for line in lines), f"NOT_RUN lists a line the README no longer has: {key}"


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    """4 s of the demo song, (channels, samples) float32 at 44.1 kHz."""
    audio, rate = files.read(REPO / "examples" / "demo.flac")
    assert rate == SR
    return np.ascontiguousarray(audio[:, 5 * SR:9 * SR])


def test_the_python_snippet_runs_on_real_audio(song):
    (snippet,) = blocks("python")
    before = song.copy()
    scope = {"audio": song}
    exec(compile(snippet, "README.md (python)", "exec"), scope)  # noqa: S102 - the README's own code
    remix, split = scope["remix"], scope["split"]
    # As the comment in the snippet says: float32 (channels, samples), the mix out with its 2 s tail.
    assert remix.dtype == np.float32 and remix.shape == (2, song.shape[1] + 2 * SR)
    assert np.isfinite(remix).all() and np.abs(remix).max() > 0.01
    assert set(split.last_stems) == {"vocals", "instrumental"}
    np.testing.assert_array_equal(song, before)


@pytest.fixture
def workdir(tmp_path, song, vst3_plugins) -> Path:
    """A folder the README's commands run in: song.flac, other.mp3, album/*.flac, examples/, presets/ (the
    repository's and the vocal.vstpreset the session snippet names), plugins/MyReverb.vst3 (the test plugin
    sbgain: it has the snippet's 'mix' parameter) and my-session.yaml (the README's session snippet)."""
    sf.write(str(tmp_path / "song.flac"), song.T, SR, subtype="PCM_24")
    sf.write(str(tmp_path / "other.mp3"), song[:, :2 * SR].T, SR, format="MP3")
    (tmp_path / "album").mkdir()
    sf.write(str(tmp_path / "album" / "track 1.flac"), song[:, SR:3 * SR].T, SR, subtype="PCM_16")
    _ffmpeg_inputs(tmp_path, song[:, :2 * SR])
    (tmp_path / "examples").symlink_to(REPO / "examples")
    presets = tmp_path / "presets"
    presets.mkdir()
    for preset in (REPO / "presets").iterdir():
        (presets / preset.name).symlink_to(preset)
    (tmp_path / "plugins").mkdir()
    bundle = shutil.copytree(vst3_plugins["sbgain"], tmp_path / "plugins" / "MyReverb.vst3")
    for binary in bundle.glob("Contents/*/sbgain.so"):  # a VST3 bundle's binary is named after the bundle
        binary.rename(binary.with_name("MyReverb.so"))
    from bridge.host.effects import build
    from bridge.preset.session import parse

    spec = parse({"version": 1, "pre": [{"vst3": str(tmp_path / "plugins" / "MyReverb.vst3")}]}).pre[0]
    (presets / "vocal.vstpreset").write_bytes(build(spec, where="readme").preset_data)
    session = next(b for b in blocks("yaml") if b.startswith("version: 1\nseparator:"))
    (tmp_path / "my-session.yaml").write_text(session)
    return tmp_path


def _ffmpeg_inputs(folder: Path, song: np.ndarray) -> None:
    """The Input formats section's files, made with PyAV: album/track 2.m4a (AAC), live.opus,
    film.mov (H.264 and two AAC streams: the song, then the song at half level) and set.stem.mp4."""
    import av

    from bridge.daw.nistems import NiStemsWriter

    def encode(container, stream, audio):
        size = stream.codec_context.frame_size or 1024
        for start in range(0, audio.shape[1], size):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + size].T.reshape(1, -1)
                                                                    if stream.codec_context.name == "libopus"
                                                                    else audio[:, start:start + size]),
                                               format="flt" if stream.codec_context.name == "libopus" else "fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts = SR if stream.codec_context.name != "libopus" else 48000, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

    for name, codec, rate in (("album/track 2.m4a", "aac", SR), ("live.opus", "libopus", 48000)):
        with av.open(str(folder / name), "w") as container:
            encode(container, container.add_stream(codec, rate=rate, layout="stereo"), song)
    with av.open(str(folder / "film.mov"), "w") as container:
        video = container.add_stream("libx264", rate=5)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        tracks = [container.add_stream("aac", rate=SR, layout="stereo") for _ in range(2)]
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        for track, level in zip(tracks, (1.0, 0.5)):
            encode(container, track, song * level)
    writer = NiStemsWriter(folder / "set.stem.mp4", sample_rate=SR)
    writer.write(song, {"drums": song * 0.4, "bass": song * 0.3, "other": song * 0.2, "vocals": song * 0.1})
    writer.close()


def test_the_session_snippet_is_the_session_it_describes(workdir):
    from bridge.preset.session import load

    session = load(workdir / "my-session.yaml")
    vocals = session.stem("vocals")
    assert (vocals.gain_db, vocals.pan, len(vocals.chain)) == (3, 0, 2)
    assert session.stem("instrumental").gain_db == -2
    assert (session.output.format, session.output.bit_depth, session.output.layout) == ("flac", 24, "stereo")
    assert yaml.safe_load((workdir / "my-session.yaml").read_text())["master"] == [
        {"effect": "Limiter", "threshold_db": -1}]


@pytest.mark.slow
def test_the_readme_command_lines_run(workdir):
    lines = command_lines()
    run = [line for line in lines if not not_run(line)]
    assert len(run) >= 13, run  # the README's runnable commands (a dropped block shows here)
    # `pip install -e . && stembridge ...`: the install is this checkout already; the rest runs as written.
    run = [line.split(" && ", 1)[1] if line.startswith("pip install -e . && ") else line for line in run]
    # `stembridge` is this checkout's command line, whatever is installed.
    script = f'set -e\nstembridge() {{ "{sys.executable}" -m bridge.cli "$@"; }}\n'
    script += "".join(f'echo "+ {i}"\n{line}\n' for i, line in enumerate(run))
    result = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    done = [int(m) for m in re.findall(r"^\+ (\d+)$", result.stdout, re.M)]
    failed = run[done[-1]] if done else run[0]
    assert result.returncode == 0, f"README line failed: {failed}\n{result.stderr[-3000:]}"
    # What the lines say they write is there (without --out: render writes to rendered/, separate to separated/).
    written = {"out/demo/vocals.wav": 20.0, "out/demo/instrumental.wav": 20.0,
               "remixes/song.vocal-up.wav": 4.0, "remixes/track 1.vocal-up.wav": 2.0,
               "rendered/song.karaoke.flac": 4.0, "rendered/song.drumless.flac": 4.0,
               "stems/song/vocals.wav": 4.0, "stems/other/instrumental.wav": 2.0,
               "separated/vocals/song.flac": 4.0, "separated/song/drums.wav": 4.0,
               "stems/track 2/vocals.wav": 2.0, "rendered/film.vocal-up.wav": 2.0,
               "rendered/set.stem.karaoke.flac": 2.0, "stems/set.stem/drums.wav": 2.0}
    for path, seconds in written.items():
        info = sf.info(str(workdir / path))
        assert info.samplerate == SR and info.frames >= seconds * SR, path  # the song, and any tail
    out = result.stdout
    assert "Compressor" in out and "threshold_db" in out  # stembridge effects
    assert "default-4stems" in out  # stembridge models
