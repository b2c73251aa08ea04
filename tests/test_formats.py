"""Inputs FFmpeg decodes (PyAV): m4a AAC/ALAC, Opus, video, 5.1 AC-3, NI Stems, and --stream.

Every input is built here with PyAV (the encoders inside the ``av`` wheel): no downloads. The
ffmpeg command (Debian's, installed by .ci/run) is the independent decoder the AAC decode is held
to; the other checks compare with the signal that was encoded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bridge.audio import files
from bridge.audio.avreader import DOWNMIX
from bridge.cli import main as cli
from bridge.daw.nistems import NiStemsWriter, STEMS, metadata
from bridge.errors import AudioError, PresetError
from bridge.preset.session import load

from conftest import missing

av = pytest.importorskip("av")  # a core dependency: always there where stembridge is installed

SR = 44100
SECONDS = 2.0
N = int(SR * SECONDS)
SONG_FAILED = 1  # the command's exit code when an input fails at its turn (bridge.cli)


def tones(freqs, n=N, sr=SR, amplitude=0.2) -> np.ndarray:
    """One channel per frequency: a sine each, float32 ``(len(freqs), n)``."""
    t = np.arange(n) / sr
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def music_like(n=N, sr=SR, channels=2, seed=0) -> np.ndarray:
    """A sum of 24 sines from 150 Hz to 6 kHz with random phases: broadband, so a sample of offset shows."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    out = np.zeros((channels, n))
    for f in np.geomspace(150, 6000, 24):
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (channels, 1)))
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def add_audio(container, codec: str, *, sr=SR, layout="stereo", bit_rate=None):
    stream = container.add_stream(codec, rate=sr, layout=layout)
    if bit_rate:
        stream.bit_rate = bit_rate
    return stream


def encode(container, stream, audio: np.ndarray, *, layout="stereo", sr=SR):
    """Encode ``audio`` (channels, n) float32 into ``stream``, frame by frame, and flush it."""
    codec_formats = [f.name for f in stream.codec_context.codec.audio_formats]
    fmt = next(f for f in ("fltp", "flt", "s16p", "s16") if f in codec_formats)
    size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, audio.shape[1], size):
        block = audio[:, start:start + size]
        if fmt.startswith("s16"):
            block = np.round(np.clip(block, -1, 1) * 32767).astype(np.int16)
        data = block if fmt.endswith("p") else block.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate = sr
        frame.pts = pts
        pts += block.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def audio_file(path: Path, codec: str, audio: np.ndarray, *, layout="stereo", sr=SR, fmt=None, bit_rate=None) -> Path:
    with av.open(str(path), "w", format=fmt) as container:
        stream = add_audio(container, codec, sr=sr, layout=layout, bit_rate=bit_rate)
        encode(container, stream, audio, layout=layout, sr=sr)
    return path


def video_file(path: Path, audios=(), *, default: int | None = None, seconds=SECONDS) -> Path:
    """An mp4 with a 64x64 H.264 video track and one AAC stream per entry of ``audios``."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        streams = [add_audio(container, "aac") for _ in audios]
        if default is not None:
            for i, s in enumerate(streams):
                s.disposition = av.stream.Disposition.default if i == default else 0
        for i in range(int(seconds * 10)):
            picture = np.full((64, 64, 3), (i * 9) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        for stream, audio in zip(streams, audios):
            encode(container, stream, audio)
    return path


def dominant_hz(audio: np.ndarray, sr=SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio.mean(axis=0)))
    return float(np.fft.rfftfreq(audio.shape[1], 1 / sr)[np.argmax(spectrum)])


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2)
                               / np.sum((estimate.astype(np.float64) - reference) ** 2)))


def ffmpeg_decode(path: Path, channels: int) -> np.ndarray:
    """``ffmpeg -i in out.wav`` as float32 (channels, n): the decoder the issue holds stembridge to."""
    if shutil.which("ffmpeg") is None:
        missing("the ffmpeg command is not installed (apt-get install ffmpeg; .ci/run installs it)")
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, channels).T


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input kind, 2 s each, built once."""
    d = tmp_path_factory.mktemp("formats")
    song = music_like()
    made = {
        "aac.m4a": audio_file(d / "aac.m4a", "aac", song, bit_rate=192_000),
        "alac.m4a": audio_file(d / "alac.m4a", "alac", song),
        "song.opus": audio_file(d / "song.opus", "libopus", song, sr=48000),
        "film.mp4": video_file(d / "film.mp4", [song]),
        "surround.ac3": audio_file(d / "surround.ac3", "ac3", music_like(channels=6, seed=3), layout="5.1(side)",
                                   bit_rate=448_000),
    }
    stems = {s: music_like(seed=10 + i) * 0.5 for i, s in enumerate(STEMS)}
    writer = NiStemsWriter(d / "set.stem.mp4", sample_rate=SR)
    writer.write(sum(stems.values()), stems)
    made["set.stem.mp4"] = writer.close()
    return made, song, stems


# --- decoding ----------------------------------------------------------------------------------------

def test_an_aac_m4a_decodes_to_the_samples_of_the_ffmpeg_command(inputs):
    made, _, _ = inputs
    path = made["aac.m4a"]
    ours, _ = files.read(path)
    theirs = ffmpeg_decode(path, 2)
    assert ours.shape == theirs.shape == (2, files.info(path).frames)
    # Debian's ffmpeg (5.1) and the wheel's FFmpeg are different builds of one decoder: their float
    # IMDCTs round apart by a few ULPs (2**-23 = 1.2e-7 at full scale); 1e-6 is 8 ULPs. Any offset
    # or trimming difference on this broadband signal would be errors of order 0.1.
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("name", ["aac.m4a", "song.opus", "film.mp4"])
def test_lossy_inputs_start_on_the_first_sample_with_no_offset(inputs, name):
    made, song, _ = inputs
    path = made[name]
    audio, _ = files.read(path)
    reference = song  # the samples encoded (for Opus, the same samples at 48 kHz)
    n = min(audio.shape[1], reference.shape[1])
    # AAC at 192 kbit/s and Opus at its default rate give these 24 sines back at 22-24 dB SNR (measured);
    # a delay left in (AAC's 1024 priming samples, Opus' 312 of pre-skip) gives below 0 dB, and the
    # same signal shifted by one sample either way 9-10 dB: lag 0 must be best, by 10 dB or more.
    def at(lag):
        return snr_db(audio[:, max(lag, 0):n + min(lag, 0)], reference[:, max(-lag, 0):n - max(lag, 0)])

    others = [at(lag) for lag in (-2, -1, 1, 2)]
    assert at(0) > 20 and at(0) > max(others) + 10, (at(0), others)


def test_alac_is_lossless_and_exactly_the_source_length(inputs):
    made, song, _ = inputs
    audio, rate = files.read(made["alac.m4a"])
    expected = np.round(np.clip(song, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768
    assert rate == SR and audio.shape == song.shape
    np.testing.assert_array_equal(audio, expected)  # s16 -> float as FFmpeg converts: x / 32768, exact


def test_opus_is_exactly_the_source_length(inputs):
    made, _, _ = inputs
    header = files.info(made["song.opus"])
    assert (header.frames, header.sample_rate, header.subtype) == (N, 48000, "OPUS")  # pre-skip and end trimmed


def test_a_5_1_ac3_film_mix_reads_as_stereo_down_mixed(inputs):
    made, _, _ = inputs
    header = files.info(made["surround.ac3"])
    assert (header.subtype, header.channels, header.downmixed_from) == ("AC3", 2, "5.1(side)")
    assert files.read(made["surround.ac3"])[0].shape == (2, header.frames)


def test_a_5_1_stream_is_downmixed_by_itu_r_bs_775(tmp_path):
    six = music_like(channels=6, seed=7) * 0.5
    path = audio_file(tmp_path / "six.mov", "pcm_s16le", six, layout="5.1(side)")
    header = files.info(path)
    assert (header.channels, header.downmixed_from) == (2, "5.1(side)")
    audio, _ = files.read(path)
    pcm = np.round(six * 32767).astype(np.int16).astype(np.float64) / 32768
    fl, fr, fc, lfe, sl, sr = pcm
    k = 0.70710678  # ITU-R BS.775-3 Table 2: centre and surrounds into their side at 1/sqrt(2) (-3 dB)
    left, right = fl + k * fc + k * sl, fr + k * fc + k * sr
    np.testing.assert_allclose(audio, np.stack([left, right]), atol=1e-6)  # float32 sums of three terms
    assert DOWNMIX["LFE"] == (0.0, 0.0)  # the LFE is left out, as BS.775 leaves it


def test_memory_of_a_read_does_not_hold_the_file(inputs):
    """Blocks come as they are decoded: a 2 s file read in 4096-sample blocks gives whole blocks
    and one shorter last block, never the whole file at once."""
    made, _, _ = inputs
    sizes = [b.shape[1] for b in files.stream(made["aac.m4a"], block_frames=4096)]
    assert set(sizes[:-1]) == {4096} and 0 < sizes[-1] <= 4096
    assert sum(sizes) == files.info(made["aac.m4a"]).frames


# --- --stream ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_languages(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    low, high = tones([440, 440]), tones([1000, 1000])
    return (video_file(d / "film.mp4", [low, high]), video_file(d / "dubbed.mp4", [low, high], default=1))


def test_stream_picks_an_audio_stream_and_the_default_is_the_container_s(two_languages):
    film, dubbed = two_languages
    assert dominant_hz(files.read(film)[0]) == pytest.approx(440, abs=1)
    assert dominant_hz(files.read(film, stream=1)[0]) == pytest.approx(1000, abs=1)
    assert files.info(film).stream == 0 and files.info(film, stream=1).stream == 1
    assert files.info(dubbed).stream == 1  # its second audio stream carries the default disposition
    assert dominant_hz(files.read(dubbed)[0]) == pytest.approx(1000, abs=1)
    with pytest.raises(AudioError, match=r"--stream 2 is out of range: the file has 2 audio streams"):
        files.info(film, stream=2)


@pytest.mark.slow
def test_separate_and_render_stream_option_and_preset_key(two_languages, tmp_path):
    film, _ = two_languages
    out = tmp_path / "sep"
    assert cli(["separate", str(film), "--model", "dsp", "--stream", "1", "--out", str(out), "--quiet",
                "--no-cache", "--bit-depth", "32"]) == 0
    stems = [files.read(out / "film" / f"{s}.wav")[0] for s in ("vocals", "instrumental")]
    np.testing.assert_allclose(stems[0] + stems[1], files.read(film, stream=1)[0], atol=1e-5)  # dsp sums to its mix
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0, bit_depth: 32}\n")
    for extra in (["--stream", "1"], ["--set", "input.stream=1"]):
        rendered = tmp_path / f"ren{len(extra[0])}"
        assert cli(["render", str(preset), str(film), "--out", str(rendered), "--quiet", "--no-cache", *extra]) == 0
        mix, _ = files.read(rendered / "film.remix.wav")
        assert dominant_hz(mix) == pytest.approx(1000, abs=1)


def test_the_input_stream_preset_key_round_trips_and_is_checked(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ninput: {stream: 2}\n")
    session = load(path)
    assert session.input.stream == 2 and session.to_dict()["input"] == {"stream": 2}
    path.write_text("version: 1\n")
    assert "input" not in load(path).to_dict()  # presets without it read back unchanged
    path.write_text("version: 1\ninput: {stream: -1}\n")
    with pytest.raises(PresetError, match=r"p\.yaml: input\.stream: -1 is out of range"):
        load(path)
    path.write_text("version: 1\ninput: {streem: 1}\n")
    with pytest.raises(PresetError, match=r"input\.streem: unknown key 'streem'; did you mean 'stream'"):
        load(path)


# --- each format separates and renders ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["aac.m4a", "alac.m4a", "song.opus", "film.mp4", "surround.ac3", "set.stem.mp4"])
def test_each_input_format_separates_and_renders_at_its_own_length(inputs, name, tmp_path):
    made, _, _ = inputs
    path = made[name]
    header = files.info(path)
    out = tmp_path / "sep"
    assert cli(["separate", str(path), "--model", "dsp", "--out", str(out), "--quiet", "--no-cache"]) == 0
    for stem in ("vocals", "instrumental"):
        written = files.info(out / path.stem / f"{stem}.wav")
        assert (written.frames, written.sample_rate, written.channels) == (header.frames, header.sample_rate, 2)
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nstems: {vocals: {gain_db: -6}}\n"
                      "output: {tail_seconds: 0, format: flac}\n")
    rendered = tmp_path / "ren"
    assert cli(["render", str(preset), str(path), "--out", str(rendered), "--quiet", "--no-cache"]) == 0
    mix = files.info(rendered / f"{path.stem}.remix.flac")
    assert (mix.frames, mix.sample_rate) == (header.frames, header.sample_rate)


def test_album_discovery_takes_m4a_opus_and_video_files(inputs, tmp_path):
    made, _, _ = inputs
    album = tmp_path / "album"
    album.mkdir()
    for name in ("aac.m4a", "song.opus", "film.mp4"):
        shutil.copy(made[name], album / name)
    out = tmp_path / "out"
    assert cli(["separate", str(album), "--model", "dsp", "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert sorted(p.parent.name for p in out.rglob("vocals.wav")) == ["aac", "film", "song"]


# --- refusals: one line naming the file, nothing written ----------------------------------------------

def _patched(source: Path, target: Path, *swaps) -> Path:
    data = source.read_bytes()
    for old, new in swaps:
        assert data.count(old) == 1, old
        data = data.replace(old, new)
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("case", ["no audio", "drm", "undecodable"])
def test_refused_inputs_are_one_line_naming_the_file(inputs, case, tmp_path, capsys):
    made, _, _ = inputs
    if case == "no audio":
        path = video_file(tmp_path / "silent.mp4", [])
        needle = "has no audio stream (it holds 1 video stream)"
    elif case == "drm":  # FairPlay's sample entry: 'drms' where a plain AAC track says 'mp4a'
        path = _patched(made["aac.m4a"], tmp_path / "bought.m4p", (b"mp4a", b"drms"))
        needle = "DRM-protected (drms"
    else:  # MPEG-H 3D Audio, which this FFmpeg has no decoder for (and no AAC descriptor to fall back on)
        path = _patched(made["aac.m4a"], tmp_path / "mpegh.m4a", (b"mp4a", b"mha1"), (b"esds", b"zesd"))
        needle = "uses a codec FFmpeg cannot decode"
    out = tmp_path / "out"
    code = cli(["separate", str(path), "--model", "dsp", "--out", str(out), "--quiet", "--no-cache"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == SONG_FAILED and len(lines) == 1 and str(path) in lines[0] and needle in lines[0], lines
    assert not list(out.rglob("*.wav"))


# --- NI Stems input ----------------------------------------------------------------------------------

def _stream_decode(path: Path, index: int) -> np.ndarray:
    """An independent decode of audio stream ``index`` (PyAV's decoder, not stembridge's reader)."""
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(container.streams.audio[index])], axis=1)


def test_an_ni_stems_file_reads_as_its_mix(inputs):
    made, _, stems = inputs
    path = made["set.stem.mp4"]
    header = files.info(path)
    assert header.stream == 0 and header.frames % 1024 == 0 and header.frames >= N
    np.testing.assert_array_equal(files.read(path)[0], _stream_decode(path, 0))


def test_file_stems_gives_back_the_stems_written_into_the_file(inputs, tmp_path):
    made, _, stems = inputs
    path = made["set.stem.mp4"]
    out = tmp_path / "out"
    assert cli(["separate", str(path), "--model", "file-stems", "--out", str(out), "--quiet", "--bit-depth", "32",
                "--stems", "drums,bass,other,vocals,instrumental"]) == 0
    for index, stem in enumerate(STEMS, start=1):
        got, _ = files.read(out / "set.stem" / f"{stem}.wav")
        # Exactly the stream's own decode: float32 wav keeps every bit of it.
        np.testing.assert_array_equal(got, _stream_decode(path, index))
        # And what was written, within AAC at 256 kbit/s per stereo stream: measured 40-50 dB SNR on
        # these broadband sines, a swapped or shifted stem would be below 0 dB.
        assert snr_db(got[:, :N], stems[stem]) > 30, stem
    instrumental, _ = files.read(out / "set.stem" / "instrumental.wav")
    np.testing.assert_allclose(instrumental, sum(_stream_decode(path, i) for i in (1, 2, 3)), atol=1e-6)


def test_file_stems_names_streams_from_the_stem_atom(tmp_path):
    signals = {s: tones([f, f], n=SR // 2) for s, f in zip(STEMS, (100, 300, 900, 2700))}
    reordered = metadata()
    # The streams hold drums, bass, other, vocals (the writer's order), but this atom names them in
    # another order: the atom decides which stem each stream is.
    names = ["Vocals", "Bass", "Other", "Drums"]
    reordered["stems"] = [{"name": n, "color": "#000000"} for n in names]
    writer = NiStemsWriter(tmp_path / "odd.stem.mp4", sample_rate=SR)
    writer.write(sum(signals.values()), signals)
    path = writer.close(metadata_json=reordered)
    out = tmp_path / "out"
    assert cli(["separate", str(path), "--model", "file-stems", "--out", str(out), "--quiet"]) == 0
    for slot, name in zip(STEMS, names):
        got, _ = files.read(out / "odd.stem" / f"{name.lower()}.wav")
        assert dominant_hz(got) == pytest.approx(dominant_hz(signals[slot]), abs=2), name


def test_a_session_remixes_file_stems_without_separating(inputs, tmp_path):
    made, _, _ = inputs
    path = made["set.stem.mp4"]
    preset = tmp_path / "p.yaml"
    preset.write_text("version: 1\nseparator: {model: file-stems}\nstems: {vocals: {mute: true}}\n"
                      "output: {tail_seconds: 0, bit_depth: 32}\n")
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(path), "--out", str(out), "--quiet"]) == 0
    mix, _ = files.read(out / "set.stem.remix.wav")
    expected = sum(_stream_decode(path, i) for i in (1, 2, 3))  # drums + bass + other, vocals muted
    np.testing.assert_allclose(mix, expected, atol=1e-5)


def test_file_stems_refuses_a_file_that_is_not_ni_stems(inputs, tmp_path, capsys):
    made, _, _ = inputs
    path = made["aac.m4a"]
    code = cli(["separate", str(path), "--model", "file-stems", "--out", str(tmp_path / "out"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == SONG_FAILED and len(lines) == 1 and str(path) in lines[0] and "not an NI Stems file" in lines[0]


def test_the_stem_atom_reader_reads_what_the_writer_wrote(inputs):
    from bridge.audio.mp4boxes import movie_box

    made, _, _ = inputs
    assert json.loads(movie_box(made["set.stem.mp4"], b"stem")) == metadata()
    assert movie_box(made["aac.m4a"], b"stem") is None


@pytest.mark.slow
def test_eval_reads_the_mixture_stream_asked_for(tmp_path, capsys):
    song = tmp_path / "refs" / "song"
    song.mkdir(parents=True)
    vocals, other = tones([330, 330]), tones([2500, 2500])  # apart in frequency: the oracle's masks split them
    files.write(song / "vocals.wav", vocals, SR, bit_depth=32)
    files.write(song / "instrumental.wav", other, SR, bit_depth=32)
    with av.open(str(song / "mixture.mov"), "w") as container:  # stream 0: a stranger; stream 1: the mix
        streams = [add_audio(container, "pcm_f32le") for _ in range(2)]
        for stream, audio in zip(streams, [tones([800, 800]), vocals + other]):
            encode(container, stream, audio)
    scores = {}
    for stream in ("0", "1"):
        target = tmp_path / f"scores{stream}.json"
        assert cli(["eval", "--model", "oracle", "--references", str(song.parent), "--stream", stream,
                    "--json", str(target), "--quiet"]) == 0
        scores[stream] = {stem: m["sdr"] for stem, m in json.loads(target.read_text())["median"].items()}
    # The oracle masks the mixture with the references: on the real mix (stream 1) it scores high,
    # on the stranger (stream 0) it cannot.
    assert min(scores["1"].values()) > 15 and max(scores["0"].values()) < 0, scores


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("junk.m4a", bytes(range(256)) * 12, "cannot be read as audio or video"),
    ("empty.opus", b"", "the file is empty (0 bytes)"),
])
def test_a_file_ffmpeg_cannot_open_is_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError) as caught:
        files.info(path)
    assert str(caught.value).startswith(f"{path}: {needle}") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "codec", "fmt"), [
    ("speech.wma", "wmav2", "asf"), ("film.eac3", "eac3", "eac3"), ("clip.webm", "libopus", "webm"),
])
def test_other_codecs_decode_as_the_ffmpeg_command_does(tmp_path, name, codec, fmt):
    """WMA (whose stream leaves its channel layout unspecified), E-AC-3, and Opus in WebM."""
    rate = 48000 if codec == "libopus" else SR
    path = audio_file(tmp_path / name, codec, music_like(n=SR), sr=rate, fmt=fmt, bit_rate=128_000)
    ours, got_rate = files.read(path)
    theirs = ffmpeg_decode(path, 2)
    assert got_rate == rate and ours.shape == theirs.shape == (2, files.info(path).frames)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # two FFmpeg builds' float rounding, as for AAC
