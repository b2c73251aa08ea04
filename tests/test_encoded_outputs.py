"""Encoded outputs (m4a AAC/ALAC, opus, mp3 through PyAV) and tags (mutagen) in every output format.

Stems and the mix are written by the render's own sink (:class:`bridge.render.sinks.AudioFiles`)
from a real song's stems, decoded back by PyAV and by the ffmpeg command, and held to the sample:
the cross-correlation peak of each decoded file against what was written is at lag 0, and the
decoded stems sum to the decoded mix within the codec's error. The tolerances are signal-to-error
ratios measured on this song at the default bit rates, with a margin, and every one is above the
~15 dB a one-sample shift of this music leaves (checked in the test), so none passes a misalignment.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import av
import mutagen
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC, Picture as FlacPicture
from mutagen.id3 import APIC, ID3, TALB, TCON, TDRC, TIT2, TPE1, TPE2, TPOS, TRCK
from mutagen.mp4 import MP4, MP4Cover
from mutagen.oggopus import OggOpus
from scipy.signal import correlate, resample_poly

from bridge.audio import files, tags
from bridge.cli import main as cli
from bridge.render.sinks import AudioFiles, Block, Gain
from conftest import missing

SR = 44100
STEMS = ("drums", "bass", "other", "vocals")
#: 5 s and 123 samples: not a whole number of AAC (1024) or MP3 (1152) frames, so the padding shows.
LENGTH = 5 * SR + 123

#: Decoded against written, in dB of signal to error, per codec at its default bit rate: measured on
#: this song at 34-51 dB (AAC 256k), 23-31 dB (Opus 160k, against an independent resampling to 48 kHz),
#: 48-72 dB (MP3 320k). A one-sample shift of this music gives about 15 dB.
SNR_DB = {"aac": 30.0, "opus": 20.0, "mp3": 40.0}
#: The decoded stems' sum against the decoded mix: measured 37 dB (AAC), 24 dB (Opus), 47 dB (MP3).
SUM_SNR_DB = {"aac": 30.0, "opus": 20.0, "mp3": 40.0}
#: ALAC is lossless: only the 24-bit quantisation (half an LSB, 2**-24) and the float sum's rounding.
ALAC_ATOL = 2.0 ** -23


@pytest.fixture(scope="module")
def rock(music):
    stems = {s: sf.read(str(music / f"{s}.flac"), dtype="float32", always_2d=True)[0].T[:, :LENGTH].copy()
             for s in STEMS}
    return sum(stems.values()), stems


def write_outputs(folder: Path, ext: str, mix, stems, *, codec=None, bitrate=None, tags_by_label=None,
                  sample_rate=SR, block=65536) -> AudioFiles:
    """The mix and the stems through the render's sink, streamed block by block."""
    labels = ("mix",) + tuple(stems)
    sink = AudioFiles([(label, folder / f"{label}.{ext}", mix.shape[0]) for label in labels], source_rate=SR,
                      sample_rate=sample_rate, bit_depth=24, codec=codec, bitrate=bitrate, tags=tags_by_label)
    sink.open(None)
    n = mix.shape[1]
    for at in range(0, n, block):
        sink.process(Block(mix[:, at:at + block], {s: x[:, at:at + block] for s, x in stems.items()},
                           last=at + block >= n))
    sink.end()
    sink.finish(Gain(), {})
    return sink


def decode_av(path: Path) -> np.ndarray:
    """(channels, samples) float64, as PyAV (FFmpeg's decoders, edit lists and pre-skip) gives it."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        blocks = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if not frame.format.is_planar:
                data = data.reshape(-1, stream.channels).T
            scale = {np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}.get(data.dtype, 1.0)
            blocks.append(data / scale)
    return np.concatenate(blocks, axis=1)


def decode_ffmpeg(path: Path, channels: int = 2) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        missing("the ffmpeg command is not installed (apt-get install ffmpeg; .ci/run installs it)")
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", str(channels), "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, channels).T.astype(np.float64)


def lag(decoded: np.ndarray, reference: np.ndarray, search: int = 4096) -> int:
    """The shift of ``decoded`` against ``reference`` at their cross-correlation peak (left channel)."""
    n = min(decoded.shape[1], reference.shape[1])
    c = correlate(decoded[0, :n], reference[0, :n], mode="full", method="fft")
    middle = n - 1
    return int(np.argmax(c[middle - search:middle + search + 1])) - search


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    n = reference.shape[1]
    error = decoded[:, :n] - reference
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum(error ** 2), 1e-30)))


@pytest.mark.slow
@pytest.mark.parametrize("ext, codec", [("m4a", "aac"), ("m4a", "alac"), ("opus", None), ("mp3", None)])
def test_stems_and_mix_line_up_to_the_sample_after_decoding(tmp_path, rock, ext, codec):
    mix, stems = rock
    rate = files.encoders.output_rate(ext, SR)
    sink = write_outputs(tmp_path, ext, mix, stems, codec=codec, sample_rate=rate)
    written = {"mix": mix, **stems}
    if rate != SR:  # opus: the reference resampled to 48 kHz independently of the sink's resampler (soxr)
        written = {label: resample_poly(x, 160, 147, axis=1) for label, x in written.items()}
    frames = {f.label: f.frames for f in sink.files}
    name = codec or ext
    assert snr_db(mix[:, 1:], mix[:, :-1]) < 16.0  # what one sample of misalignment costs on this music
    decoded = {label: decode_av(tmp_path / f"{label}.{ext}") for label in written}
    for label, x in decoded.items():
        n = frames[label]
        assert abs(n - LENGTH * rate / SR) < 1.5  # the song's length (at 48 kHz for opus)
        if name == "aac":  # FFmpeg trims the priming (the edit list), not the end padding to a whole frame
            assert n <= x.shape[1] < n + 1024, (label, x.shape[1], n)
        else:
            assert x.shape[1] == n, (label, x.shape[1], n)
        reference = written[label][:, :min(n, written[label].shape[1])]
        assert lag(x, reference) == 0, label
        if name == "alac":
            np.testing.assert_allclose(x[:, :n], reference, atol=ALAC_ATOL)
        else:
            assert snr_db(reference, x) > SNR_DB[name], (label, snr_db(reference, x))
    total = sum(decoded[s][:, :frames["mix"]] for s in stems)
    if name == "alac":
        np.testing.assert_allclose(total, decoded["mix"][:, :frames["mix"]], atol=4 * ALAC_ATOL)
    else:
        assert snr_db(decoded["mix"][:, :frames["mix"]], total) > SUM_SNR_DB[name]
    # The ffmpeg command (another build of FFmpeg's decoders) finds the same start and length.
    for label in ("mix", "vocals"):
        by_ffmpeg = decode_ffmpeg(tmp_path / f"{label}.{ext}")
        assert by_ffmpeg.shape[1] == decoded[label].shape[1]
        assert lag(by_ffmpeg, written[label]) == 0


@pytest.mark.parametrize("ext, codec, kbps, expected", [
    ("m4a", None, None, ("aac", 256_000)), ("m4a", "aac", 128, ("aac", 128_000)), ("m4a", "alac", None, ("alac", None)),
    ("opus", None, 96, ("opus", 96_000)), ("mp3", None, None, ("mp3", 320_000)), ("mp3", None, 192, ("mp3", 192_000)),
])
def test_the_codec_and_bit_rate_asked_for_are_what_the_file_holds(tmp_path, rng, ext, codec, kbps, expected):
    rate = files.encoders.output_rate(ext, SR)
    # Noise: no encoder can spend less than it is given on it, so the file's average is the target.
    x = (0.3 * rng.standard_normal((2, 2 * rate))).astype(np.float32)
    path = files.write(tmp_path / f"noise.{ext}", x, rate, codec=codec, bitrate=kbps)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == expected[0] or (expected[0] == "mp3" and stream.codec_context.name
                                                            .startswith("mp3"))
        assert stream.rate == rate
        if expected[1] is not None and ext != "opus":  # Ogg records no bit rate
            assert abs(stream.bit_rate - expected[1]) < 0.15 * expected[1], stream.bit_rate
    assert not list(tmp_path.glob(".*partial")), "the partial file was renamed, none left"


def test_alac_keeps_24_bit_samples_exactly(tmp_path, rng):
    steps = np.round(rng.uniform(-1, 1, (2, 5000)) * 8388607) / 8388607  # exactly 24-bit values
    path = files.write(tmp_path / "exact.m4a", steps.astype(np.float32), SR, codec="alac", bit_depth=24)
    np.testing.assert_allclose(decode_av(path), steps.astype(np.float32), atol=2.0 ** -24)


# --- bad configuration: one line, exit 2, nothing written -------------------------------------

@pytest.mark.parametrize("options, words", [
    (["--format", "m4a", "--codec", "vorbis"], "--codec: codec 'vorbis' cannot be written as m4a"),
    (["--format", "opus", "--bitrate", "900"], "--bitrate: bit rate 900.0 kbit/s is out of range for opus: choose 6 to 510"),
    (["--format", "mp3", "--bitrate", "8"], "out of range for mp3: choose 32 to 320"),
    (["--format", "wav", "--bitrate", "128"], "a bit rate does not apply to wav"),
    (["--format", "m4a", "--codec", "alac", "--bitrate", "256"], "alac is lossless"),
    (["--format", "m4a", "--codec", "alac", "--bit-depth", "32"], "ALAC holds 16- or 24-bit"),
])
def test_bad_format_settings_are_one_line_before_any_work(tmp_path, capsys, options, words):
    song = tmp_path / "song.wav"
    sf.write(str(song), np.zeros((SR, 2), np.float32), SR)
    assert cli(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / "out"), *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, words", [
    (["output.format=m4a", "output.codec=flac"], "output.codec: codec 'flac' cannot be written as m4a"),
    (["output.format=opus", "output.bitrate=1000"], "output.bitrate: bit rate 1000.0 kbit/s is out of range"),
    (["output.format=opus", "output.sample_rate=44100"], "output.sample_rate: opus is decoded at 48000 Hz"),
    (["output.format=m4a", "output.codec=alac", "output.bit_depth=32"], "output.bit_depth: ALAC holds"),
    (["output.format=wav", "output.codec=aac"], "output.codec: codec 'aac' does not apply to wav"),
])
def test_bad_format_keys_in_a_preset_are_one_line(tmp_path, capsys, overrides, words):
    song = tmp_path / "song.wav"
    sf.write(str(song), np.zeros((SR, 2), np.float32), SR)
    argv = ["render", "presets/karaoke.yaml", str(song), "--out", str(tmp_path / "out")]
    for item in overrides:
        argv += ["--set", item]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


# --- tags -----------------------------------------------------------------------------------

def png(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny, red) PNG image, built by hand: signature, IHDR, IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


COVER = png()
SONG = tags.Tags(title="Rosé Wine", artist="Ана Artist", album="Album Ä", album_artist="Various Artists", track=3,
                 track_total=12, disc=1, disc_total=2, date="2021-04-30", genre="Rock",
                 cover=tags.Picture(COVER, "image/png"))


def encode_with_pyav(path: Path, codec: str, fmt: str, rate: int = SR, seconds: float = 0.5) -> Path:
    """A short stereo tone encoded by PyAV directly (no stembridge code)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        n = int(rate * seconds)
        tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.stack([tone, tone])), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        if stream.codec_context.name == "libopus":
            stream.codec_context.format = "flt"
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.stack([tone, tone]).T).reshape(1, -1),
                                               format="flt", layout="stereo")
            frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def tag_with_mutagen(path: Path, kind: str) -> Path:
    """Tag ``path`` with :data:`SONG` through mutagen directly, in ``kind``'s own tag system."""
    s = SONG
    if kind in ("mp3", "wav-id3"):
        id3 = ID3()
        id3.add(TIT2(encoding=3, text=s.title))
        id3.add(TPE1(encoding=3, text=s.artist))
        id3.add(TALB(encoding=3, text=s.album))
        id3.add(TPE2(encoding=3, text=s.album_artist))
        id3.add(TRCK(encoding=3, text="3/12"))
        id3.add(TPOS(encoding=3, text="1/2"))
        id3.add(TDRC(encoding=3, text=s.date))
        id3.add(TCON(encoding=3, text=s.genre))
        id3.add(APIC(encoding=3, mime="image/png", type=3, desc="", data=COVER))
        if kind == "mp3":
            id3.save(str(path))
        else:
            from mutagen.wave import WAVE

            audio = WAVE(str(path))
            audio.add_tags()
            for frame in id3.values():
                audio.tags.add(frame)
            audio.save()
    elif kind in ("flac", "opus"):
        audio = FLAC(str(path)) if kind == "flac" else OggOpus(str(path))
        if audio.tags is None:
            audio.add_tags()
        for key, value in (("title", s.title), ("artist", s.artist), ("album", s.album),
                           ("albumartist", s.album_artist), ("tracknumber", "3"), ("tracktotal", "12"),
                           ("discnumber", "1/2"), ("date", s.date), ("genre", s.genre)):
            audio[key] = value
        picture = FlacPicture()
        picture.data, picture.mime, picture.type = COVER, "image/png", 3
        if kind == "flac":
            audio.add_picture(picture)
        else:
            audio["metadata_block_picture"] = base64.b64encode(picture.write()).decode("ascii")
        audio.save()
    elif kind == "m4a":
        audio = MP4(str(path))
        if audio.tags is None:
            audio.add_tags()
        audio.tags.update({"\xa9nam": s.title, "\xa9ART": s.artist, "\xa9alb": s.album, "aART": s.album_artist,
                           "trkn": [(3, 12)], "disk": [(1, 2)], "\xa9day": s.date, "\xa9gen": s.genre,
                           "covr": [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_PNG)]})
        audio.save()
    return path


def riff_info_wav(path: Path) -> Path:
    """A WAV with a RIFF LIST/INFO chunk (no ID3), built chunk by chunk."""
    sf.write(str(path), np.zeros((1000, 2), np.int16), SR, subtype="PCM_16")
    data = path.read_bytes()

    def item(key: bytes, text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return key + struct.pack("<I", len(raw)) + raw + (b"\0" if len(raw) & 1 else b"")

    info = b"INFO" + b"".join(item(k, v) for k, v in ((b"INAM", SONG.title), (b"IART", SONG.artist),
                                                      (b"IPRD", SONG.album), (b"ICRD", SONG.date),
                                                      (b"IGNR", SONG.genre), (b"ITRK", "3")))
    body = data[12:] + b"LIST" + struct.pack("<I", len(info)) + info
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    return path


@pytest.fixture(scope="module")
def tagged_inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tagged")
    tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(SR // 2) / SR)).astype(np.float32)
    sf.write(str(d / "song.flac"), np.stack([tone, tone]).T, SR, subtype="PCM_24")
    sf.write(str(d / "song.wav"), np.stack([tone, tone]).T, SR, subtype="PCM_24")
    made = {"flac": d / "song.flac", "wav-id3": d / "song.wav",
            "mp3": encode_with_pyav(d / "song.mp3", "libmp3lame", "mp3"),
            "m4a": encode_with_pyav(d / "song.m4a", "aac", "ipod"),
            "opus": encode_with_pyav(d / "song.opus", "libopus", "ogg", rate=48000)}
    for kind, path in made.items():
        tag_with_mutagen(path, kind)
    made["wav-info"] = riff_info_wav(d / "info.wav")
    return made


@pytest.mark.parametrize("kind", ["flac", "mp3", "m4a", "opus", "wav-id3"])
def test_the_inputs_tags_are_read_from_its_own_tag_system(tagged_inputs, kind):
    assert tags.read(tagged_inputs[kind]) == SONG


def test_a_wav_without_id3_gives_its_riff_info_tags(tagged_inputs):
    assert tags.read(tagged_inputs["wav-info"]) == tags.Tags(title=SONG.title, artist=SONG.artist, album=SONG.album,
                                                              date=SONG.date, genre=SONG.genre, track=3)


def test_a_file_without_tags_or_with_damaged_ones_reads_as_none(tmp_path):
    plain = tmp_path / "plain.wav"
    sf.write(str(plain), np.zeros((100, 2), np.float32), SR)
    assert tags.read(plain) == tags.Tags()
    assert tags.read(plain).named("plain", "vocals").title == "plain (vocals)"  # the file name stands in


def read_back(path: Path) -> tuple[dict, bytes | None]:
    """An output's tags through mutagen directly, per format, as a player would see them:
    ``({field: text}, cover bytes)`` (independent of :mod:`bridge.audio.tags`)."""
    audio = mutagen.File(str(path))
    t = audio.tags
    if isinstance(t, ID3) or type(t).__name__ == "_WaveID3":
        def text(frame):
            return str(t[frame].text[0]) if frame in t else None
        found = {"title": text("TIT2"), "artist": text("TPE1"), "album": text("TALB"), "albumartist": text("TPE2"),
                 "track": text("TRCK"), "disc": text("TPOS"), "date": text("TDRC"), "genre": text("TCON")}
        cover = t.getall("APIC")[0].data if t.getall("APIC") else None
    elif isinstance(audio, MP4):
        def text(key):
            return str(t[key][0]) if key in t else None
        found = {"title": text("\xa9nam"), "artist": text("\xa9ART"), "album": text("\xa9alb"),
                 "albumartist": text("aART"), "track": "%d/%d" % t["trkn"][0], "disc": "%d/%d" % t["disk"][0],
                 "date": text("\xa9day"), "genre": text("\xa9gen")}
        cover = bytes(t["covr"][0])
    else:  # Vorbis comments: flac, ogg, opus
        def text(key):
            return t[key][0] if key in t else None
        found = {"title": text("title"), "artist": text("artist"), "album": text("album"),
                 "albumartist": text("albumartist"), "track": f"{text('tracknumber')}/{text('tracktotal')}",
                 "disc": f"{text('discnumber')}/{text('disctotal')}", "date": text("date"), "genre": text("genre")}
        if getattr(audio, "pictures", None):
            cover = audio.pictures[0].data
        else:
            cover = FlacPicture(base64.b64decode(t["metadata_block_picture"][0])).data
    return found, cover


EXPECTED = {"artist": SONG.artist, "album": SONG.album, "albumartist": SONG.album_artist, "track": "3/12",
            "disc": "1/2", "date": SONG.date, "genre": SONG.genre}


@pytest.mark.parametrize("ext, codec", [("wav", None), ("flac", None), ("ogg", None), ("aiff", None), ("m4a", "aac"),
                                        ("m4a", "alac"), ("opus", None), ("mp3", None)])
def test_tags_and_cover_art_survive_into_every_output_format(tmp_path, tagged_inputs, ext, codec):
    rate = files.encoders.output_rate(ext, SR)
    mix = (0.1 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
    mix = np.stack([mix, mix])
    stems = {"vocals": mix / 2, "instrumental": mix / 2}
    song = tags.read(tagged_inputs["mp3"])
    labels = {"mix": song.named("song", tags.output_suffix("mix", take="karaoke")),
              **{s: song.named("song", tags.output_suffix(s, take="karaoke")) for s in stems}}
    sink = write_outputs(tmp_path, ext, mix, stems, codec=codec, tags_by_label=labels, sample_rate=rate)
    titles = {}
    for label in ("mix", *stems):
        found, cover = read_back(tmp_path / f"{label}.{ext}")
        titles[label] = found.pop("title")
        assert found == EXPECTED, (label, found)
        assert cover == COVER
    # Players list the mix and each stem under their own titles, never three of one title.
    assert titles == {"mix": "Rosé Wine (karaoke)", "vocals": "Rosé Wine (vocals, karaoke)",
                      "instrumental": "Rosé Wine (instrumental, karaoke)"}
    # The audio is all there and decodes (the tags moved no audio; AAC pads to a whole frame). libsndfile
    # reads back what it wrote (FFmpeg decodes libsndfile's Ogg Vorbis 128 samples short, tags or not).
    path = tmp_path / f"mix.{ext}"
    decoded = decode_av(path) if ext in files.encoders.FORMAT_CODECS else sf.read(str(path), always_2d=True)[0].T
    frames = sink.files[0].frames
    assert frames <= decoded.shape[1] < frames + (1024 if ext == "m4a" and codec == "aac" else 1)


def riff_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    at, found = 12, []
    while at + 8 <= len(data):
        kind, size = struct.unpack("<4sI", data[at:at + 8])
        found.append(kind)
        at += 8 + size + (size & 1)
    return found


@pytest.mark.slow
def test_separate_writes_tagged_stems_and_keeps_broadcast_wav_chunks(tmp_path, tagged_inputs):
    from bridge.daw import bwf

    out = tmp_path / "out"
    song = tagged_inputs["flac"]
    assert cli(["separate", str(song), "--model", "dsp", "--out", str(out), "--no-cache", "--quiet"]) == 0
    assert cli(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / "m4a"), "--format", "m4a",
                "--codec", "alac", "--no-cache", "--quiet"]) == 0
    for stem in ("vocals", "instrumental"):
        wav = out / "song" / f"{stem}.wav"
        chunks = riff_chunks(wav)
        # bext and iXML before the samples (EBU Tech 3285), the id3 chunk after them.
        assert chunks.index(b"bext") < chunks.index(b"data") < chunks.index(b"id3 "), chunks
        assert b"iXML" in chunks
        assert bwf.read_time_reference(wav) == 0
        assert sf.info(str(wav)).frames == sf.info(str(song)).frames
        for path in (wav, tmp_path / "m4a" / "song" / f"{stem}.m4a"):
            found, cover = read_back(path)
            assert found.pop("title") == f"Rosé Wine ({stem})"
            assert found == EXPECTED and cover == COVER
