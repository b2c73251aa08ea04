"""``output.files.video``: the input film's picture, subtitles and chapters copied packet for
packet, the rendered mix as its audio (:mod:`bridge.daw.video`).

The film is built here with PyAV: H.264 video (libx264, with B-frames, so decode and presentation
order differ), AAC audio of a real song, mov_text subtitles, two chapters and a title. The
render's mix comes from a real render of the film's audio (decoded by PyAV in the test) and is
fed to the render's video sink as the render feeds it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main as cli
from bridge.daw import video
from bridge.render.sinks import Block, Gain, Video
from conftest import missing
from test_encoded_outputs import decode_av, lag, snr_db

SR = 44100
FPS = 25
SECONDS = 5
#: The film's audio against the rendered mix it carries, AAC at 192 kbit/s (the input's rate): measured
#: ~35 dB on this song; a one-sample shift of it gives about 15 dB.
MIX_SNR_DB = 25.0


def make_film(path: Path, music: Path, *, seconds: int = SECONDS, size=(64, 48), subtitles: bool = True) -> Path:
    """An mp4: H.264 video, AAC stereo audio of the real song, mov_text cues, chapters, a title."""
    audio = sf.read(str(music / "mixture.flac"), dtype="float32", always_2d=True)[0].T
    audio = np.ascontiguousarray(audio[:, :seconds * SR])
    with av.open(str(path), "w", format="mp4") as out:
        picture = out.add_stream("libx264", rate=FPS, options={"bframes": "2", "g": "25"})
        picture.width, picture.height, picture.pix_fmt = size[0], size[1], "yuv420p"
        sound = out.add_stream("aac", rate=SR, layout="stereo")
        sound.bit_rate = 192_000
        cues = None
        if subtitles:
            cues = out.add_mux_stream("mov_text")
            cues.time_base = Fraction(1, 1000)
        out.metadata["title"] = "A Film"
        out.set_chapters([{"id": 1, "start": 0, "end": 2000, "time_base": Fraction(1, 1000), "metadata": {"title": "One"}},
                          {"id": 2, "start": 2000, "end": seconds * 1000, "time_base": Fraction(1, 1000),
                           "metadata": {"title": "Two"}}])
        at = 0
        for index in range(seconds * FPS):
            ramp = np.linspace(0, 255, size[0] * size[1] * 3, dtype=np.float32).reshape(size[1], size[0], 3)
            frame = av.VideoFrame.from_ndarray(((ramp + 7 * index) % 256).astype(np.uint8), format="rgb24")
            frame.pts = index
            for packet in picture.encode(frame):
                out.mux(packet)
            while at < (index + 1) * SR // FPS:
                block = np.ascontiguousarray(audio[:, at:at + 1024])
                sound_frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                sound_frame.sample_rate, sound_frame.pts = SR, at
                at += block.shape[1]
                for packet in sound.encode(sound_frame):
                    out.mux(packet)
        for stream in (picture, sound):
            for packet in stream.encode(None):
                out.mux(packet)
        if cues is not None:
            for start, text in ((500, "hello"), (2500, "world")):
                packet = av.Packet(struct.pack(">H", len(text)) + text.encode())
                packet.stream, packet.time_base = cues, Fraction(1, 1000)
                packet.pts = packet.dts = start
                packet.duration = 1000
                out.mux(packet)
    return path


def packets(path: Path, kind: str) -> list[tuple[bytes, Fraction, Fraction | None]]:
    """A stream's packets as (bytes, pts in seconds, dts in seconds), in file order."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [(bytes(p), p.pts * p.time_base, p.dts * p.time_base if p.dts is not None else None)
                for p in container.demux(stream) if p.size]


@pytest.fixture(scope="module")
def film(tmp_path_factory, music):
    return make_film(tmp_path_factory.mktemp("film") / "film.mp4", music)


@pytest.fixture(scope="module")
def rendered_mix(tmp_path_factory, film) -> Path:
    """The film's audio (decoded by PyAV here) rendered by a real session: karaoke, vocals muted."""
    d = tmp_path_factory.mktemp("render")
    song = d / "film.wav"
    sf.write(str(song), decode_av(film)[:, :SECONDS * SR].T.astype(np.float32), SR, subtype="FLOAT")
    assert cli(["render", "presets/karaoke.yaml", str(song), "--set", "separator.model=dsp", "--set",
                "output.format=wav", "--set", "output.bit_depth=32", "--set", "output.bwf=false",
                "--out", str(d / "out"), "--no-cache", "--quiet"]) == 0
    return d / "out" / "film.karaoke.wav"


def feed(sink, mix: np.ndarray, scratch: Path, block: int = 50_000) -> dict:
    """Stream ``mix`` through a sink as the render does, and finish it at 0 dB."""
    sink.open(scratch)
    for at in range(0, mix.shape[1], block):
        sink.process(Block(mix[:, at:at + block], {}, last=at + block >= mix.shape[1]))
    sink.end()
    return sink.finish(Gain(), {})


@pytest.mark.slow
def test_the_video_is_copied_packet_for_packet_and_its_audio_is_the_mix(tmp_path, film, rendered_mix):
    mix = sf.read(str(rendered_mix), dtype="float32", always_2d=True)[0].T
    assert mix.shape[1] > SECONDS * SR  # the render's reverb tail, which the video cuts
    source = video.check_source(film)
    target = tmp_path / "out" / "film.remix.mp4"
    sink = Video(source, target, sample_rate=SR, channels=2, frames=SECONDS * SR)
    (tmp_path / "scratch").mkdir()
    assert feed(sink, mix, tmp_path / "scratch") == {"video": target}
    assert not list(target.parent.glob(".*partial"))

    # Picture: every packet's bytes, presentation and decoding times are the input's.
    assert packets(target, "video") == packets(film, "video")
    # Subtitles: the cues are the input's (the mp4 muxer adds zero-length empty samples in the gaps).
    def cues(path):
        return [(data, pts) for data, pts, _ in packets(path, "subtitle") if len(data) > 2]
    assert cues(target) == cues(film) and len(cues(film)) == 2
    with av.open(str(film)) as a, av.open(str(target)) as b:
        assert [(c["start"], c["end"], c["metadata"]) for c in b.chapters()] == \
               [(c["start"], c["end"], c["metadata"]) for c in a.chapters()]
        assert b.metadata["title"] == "A Film"
        assert len(b.streams.audio) == 1 and b.streams.audio[0].codec_context.name == "aac"  # the input's codec
        for kind in ("video", "audio"):
            x, y = (next(s for s in c.streams if s.type == kind) for c in (a, b))
            assert y.duration * y.time_base == x.duration * x.time_base, kind

    # Audio: the rendered mix, cut at the input audio's length, at lag 0.
    heard = decode_av(target)
    assert SECONDS * SR <= heard.shape[1] < SECONDS * SR + 1024  # AAC's end padding, see bridge.audio.encoders
    expected = mix[:, :SECONDS * SR].astype(np.float64)
    assert lag(heard, expected) == 0
    assert snr_db(expected, heard) > MIX_SNR_DB, snr_db(expected, heard)
    original = decode_av(film)[:, :SECONDS * SR]
    assert snr_db(original, heard) < 10.0  # not the film's own audio: the vocals are muted in the mix
    if shutil.which("ffmpeg") is None:
        missing("the ffmpeg command is not installed (apt-get install ffmpeg; .ci/run installs it)")
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(target), "-map", "0:a", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    by_ffmpeg = np.frombuffer(raw, np.float32).reshape(-1, 2).T.astype(np.float64)
    assert by_ffmpeg.shape[1] == heard.shape[1] and lag(by_ffmpeg, expected) == 0


def test_a_gain_scales_the_video_audio(tmp_path, film):
    tone = (0.25 * np.sin(2 * np.pi * 500 * np.arange(SECONDS * SR) / SR)).astype(np.float32)
    mix = np.stack([tone, tone])
    levels = {}
    for gain in (0.0, -6.0):
        sink = Video(video.check_source(film), tmp_path / f"g{gain}.mp4", sample_rate=SR, channels=2,
                     frames=SECONDS * SR)
        sink.open(tmp_path)
        sink.process(Block(mix, {}, last=True))
        sink.end()
        sink.finish(Gain(gain), {})
        heard = decode_av(tmp_path / f"g{gain}.mp4")[:, SR:4 * SR]
        levels[gain] = 20 * np.log10(np.sqrt(np.mean(heard ** 2)))
    assert abs(levels[-6.0] - levels[0.0] + 6.0) < 0.1  # 0.1 dB: AAC's level error on a steady tone


@pytest.mark.parametrize("codec, muxer, encoder", [("aac", "mp4", "aac"), ("ac3", "matroska", "ac3"),
                                                   ("opus", "webm", "libopus"), ("vorbis", "matroska", "aac"),
                                                   ("vorbis", "webm", "libopus"), ("dts", "mp4", "aac"),
                                                   ("pcm_s16le", "mov", "pcm_s16le"), (None, "mp4", "aac")])
def test_the_mix_is_encoded_in_the_inputs_codec_where_ffmpeg_can_else_aac(codec, muxer, encoder):
    assert video.audio_encoder(codec, muxer) == encoder


def test_a_video_output_for_an_audio_only_input_is_one_line(tmp_path, capsys):
    song = tmp_path / "song.wav"
    sf.write(str(song), np.zeros((SR, 2), np.float32), SR)
    out = tmp_path / "out"
    code = cli(["render", "presets/karaoke.yaml", str(song), "--set", "separator.model=dsp", "--set",
                'output.files.video="{track}.remix.{ext}"', "--out", str(out), "--no-cache", "--quiet"])
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no video stream (an audio-only input)" in lines[0] and "song.wav" in lines[0], lines
    assert not [p for p in out.rglob("*") if p.suffix in (".wav", ".flac", ".mp4")] if out.exists() else True


def test_a_video_template_is_checked_with_the_preset(tmp_path, capsys):
    song = tmp_path / "song.wav"
    sf.write(str(song), np.zeros((SR, 2), np.float32), SR)
    assert cli(["render", "presets/karaoke.yaml", str(song), "--set", 'output.files.video="../{track}.{ext}"',
                "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.files.video" in err[0] and "relative name" in err[0], err


def test_the_remux_takes_the_audio_stream_the_render_read(tmp_path):
    """--stream N (input.stream) picks the audio the render reads; the remux must replace that
    stream's codec and place, not the container's default one. A film with AAC (default) then
    MP3 audio: stream 1 is the MP3, counted among the audio streams as ffmpeg -map 0:a:1."""
    from bridge.daw import video

    path = tmp_path / "two.mp4"
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as out:
        picture = out.add_stream("mpeg4", rate=FPS)
        picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
        sounds = [out.add_stream(codec, rate=SR, layout="stereo") for codec in ("aac", "libmp3lame")]
        for index in range(FPS):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 9 % 256, np.uint8), format="rgb24")
            frame.pts = index
            for packet in picture.encode(frame):
                out.mux(packet)
        for sound in sounds:
            size = sound.codec_context.frame_size or 1024
            for at in range(0, SR - size + 1, size):
                block = np.ascontiguousarray(np.stack([tone[at:at + size]] * 2))
                planar = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                planar.sample_rate, planar.pts = SR, at
                for packet in sound.encode(planar):
                    out.mux(packet)
        for stream in (picture, *sounds):
            for packet in stream.encode(None):
                out.mux(packet)
    with av.open(str(path)) as container:
        indices = [s.index for s in container.streams.audio]
    assert video.check_source(path).audio_codec == "aac"
    second = video.check_source(path, stream=1)
    assert second.audio_codec.startswith("mp3") and second.audio_index == indices[1]  # decoder: mp3float


def test_a_render_of_a_film_writes_the_remuxed_film(tmp_path, film):
    """End to end through the CLI: the film is the render's input (its AAC decoded by the PyAV
    reader) and output.files.video remuxes it: the video packets are the input's, the audio is
    the rendered mix (compared with the mix file written beside it) and as long as the film's."""
    preset = tmp_path / "p.yaml"
    preset.write_text('version: 1\nseparator: {model: dsp}\nstems:\n  vocals: {mute: true}\n'
                      'output: {tail_seconds: 0, format: wav, bit_depth: 32, bwf: false,\n'
                      '         files: {mix: "{track}.mix.{ext}", video: "{track}.remix.{ext}"}}\n')
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(film), "--out", str(out), "--no-cache", "--quiet"]) == 0
    remuxed = out / "film.remix.mp4"
    assert packets(remuxed, "video") == packets(film, "video")
    mix = sf.read(str(out / "film.mix.wav"), dtype="float32", always_2d=True)[0].T
    audio = decode_av(remuxed)
    assert abs(audio.shape[1] - decode_av(film).shape[1]) < 1024  # AAC's end padding, never a shift
    n = min(audio.shape[1], mix.shape[1])
    assert lag(audio[:, :n], mix[:, :n]) == 0 and snr_db(mix[:, :n], audio[:, :n]) > 25
