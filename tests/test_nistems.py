"""NI Stems files, read back with PyAV (ffmpeg's demuxer and AAC decoder) and the ``stem`` atom
parsed by hand (ISO/IEC 14496-12 box headers), never with bridge.daw.nistems's own reader.

The 4-stem separator is a test fake (tests/four_stems.py: FFT bands, the rest as "other"), since
the real 4-stem model is another issue's.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import pytest
import soundfile as sf

from conftest import need_module  # noqa: E402

av = need_module("av", "; pip install -e \".[test]\"")

from bridge.daw import nistems  # noqa: E402
from bridge.errors import PresetError  # noqa: E402
from bridge.render.graph import RenderGraph
from bridge.render.song import render_file
from bridge.separation import load_separator  # noqa: E402
from four_stems import four_stem_separator  # noqa: E402
from bridge.preset.session import parse

SR = 44100


@pytest.fixture(scope="module")
def four_stems():
    return four_stem_separator()


def song(path: Path, seconds: float = 2.0) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    tones = [(110, 0.3), (880, 0.2), (3520, 0.15), (9000, 0.05)]
    fade_in = np.minimum(1.0, t / 0.05)  # songs start from silence; an AAC encoder's first frame is poor on a step
    left = fade_in * sum(a * np.sin(2 * np.pi * f * t) for f, a in tones)
    right = fade_in * sum(a * np.sin(2 * np.pi * f * t + 0.5) for f, a in tones)
    sf.write(str(path), np.stack([left, right]).T.astype(np.float32), SR, subtype="FLOAT")
    return path


GAINS = {"vocals": {"gain_db": -3.0}, "bass": {"gain_db": 2.0}}


def render(tmp_path, separator, source, stems=GAINS, **output):
    session = parse({"version": 1, "stems": stems,
                     "output": {"files": {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}",
                                          "nistems": "{track}.stem.mp4"},
                                "bit_depth": 32, "tail_seconds": 0.1, **output}},
                    source=str(tmp_path / "dj.yaml"))
    return render_file(source, RenderGraph(session, separator), tmp_path / "out")


def boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    found, at = {}, start
    while at < end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        found[kind] = (at, size)
        at += size
    assert at == end
    return found


def decode(path: Path) -> list[np.ndarray]:
    streams = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            container.seek(0)
            frames = [f.to_ndarray() for f in container.decode(stream)]
            streams.append(np.concatenate(frames, axis=1))
    return streams


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return 10 * math.log10(np.sum(reference.astype(np.float64) ** 2) / max(error, 1e-30))


def test_five_stereo_aac_streams_of_equal_whole_frame_length_decode_to_mix_and_stems(tmp_path, four_stems):
    written = render(tmp_path, four_stems, song(tmp_path / "track one.wav"))
    target = written["nistems"]
    assert target.name == "track one.stem.mp4"
    with av.open(str(target)) as container:
        audio = container.streams.audio
        assert len(container.streams) == len(audio) == 5
        assert {s.codec_context.name for s in audio} == {"aac"}
        assert {s.codec_context.channels for s in audio} == {2} and {s.codec_context.sample_rate for s in audio} == {SR}
        assert [bool(s.disposition & av.stream.Disposition.default) for s in audio] == [True] + [False] * 4
        assert container.metadata.get("title") == "track one"
    decoded = decode(target)
    frames = sf.info(str(written["mix"])).frames
    whole = math.ceil(frames / 1024) * 1024
    assert [d.shape for d in decoded] == [(2, whole)] * 5  # same count, padded to whole AAC frames
    references = [written["mix"]] + [written[s] for s in ("drums", "bass", "other", "vocals")]
    for got, file in zip(decoded, references):
        expected = sf.read(str(file), dtype="float32", always_2d=True)[0].T
        # ffmpeg's AAC-LC at 256 kbit/s: measured 31.5-38.8 dB SNR per stream on this signal. 28 dB
        # fails a wrong stream order, a priming trim off by one frame or a 0.5 dB gain error.
        assert snr_db(expected, got[:, :frames]) > 28, file.name
        assert snr_db(expected[:, :-1024], got[:, 1024:frames]) < 28  # the check fails a one-frame shift
        assert np.max(np.abs(got[:, frames + 256:])) < 0.01  # the padding is silence


def test_the_stem_atom_holds_traktor_s_json_in_moov_udta(tmp_path, four_stems):
    written = render(tmp_path, four_stems, song(tmp_path / "song.wav", seconds=0.5))
    data = written["nistems"].read_bytes()
    top = boxes(data, 0, len(data))
    assert b"ftyp" in top and b"mdat" in top
    moov_at, moov_size = top[b"moov"]
    udta_at, udta_size = boxes(data, moov_at + 8, moov_at + moov_size)[b"udta"]
    stem_at, stem_size = boxes(data, udta_at + 8, udta_at + udta_size)[b"stem"]
    meta = json.loads(data[stem_at + 8:stem_at + stem_size].decode("utf-8"))
    assert [s["name"] for s in meta["stems"]] == ["Drums", "Bass", "Other", "Vocals"]
    assert all(len(s["color"]) == 7 and s["color"].startswith("#") for s in meta["stems"])
    assert meta["version"] == 1 and set(meta["mastering_dsp"]) == {"compressor", "limiter"}
    assert meta["mastering_dsp"]["limiter"]["enabled"] is False


def test_the_input_s_tags_and_cover_go_into_the_stem_file_beside_the_stem_atom(tmp_path, four_stems):
    from mutagen.flac import FLAC, Picture
    from mutagen.mp4 import MP4

    source = tmp_path / "song.flac"
    sf.write(str(source), sf.read(str(song(tmp_path / "song.wav", seconds=0.5)))[0], SR, subtype="PCM_24")
    tagged = FLAC(str(source))
    tagged.update({"title": "Night Drive", "artist": "The Band", "album": "Roads", "tracknumber": "4/9"})
    cover = Picture()
    cover.data, cover.mime, cover.type = b"\xff\xd8\xff\xe0 a jpeg, as far as tags care", "image/jpeg", 3
    tagged.add_picture(cover)
    tagged.save()
    written = render(tmp_path, four_stems, source)
    tags = MP4(str(written["nistems"])).tags
    assert tags["\xa9nam"] == ["Night Drive"] and tags["\xa9ART"] == ["The Band"] and tags["\xa9alb"] == ["Roads"]
    assert tags["trkn"] == [(4, 9)] and bytes(tags["covr"][0]) == cover.data
    data = written["nistems"].read_bytes()  # Traktor's atom is still in moov/udta, and moov still last
    top = boxes(data, 0, len(data))
    moov_at, moov_size = top[b"moov"]
    assert moov_at + moov_size == len(data)
    udta_at, udta_size = boxes(data, moov_at + 8, moov_at + moov_size)[b"udta"]
    assert b"stem" in boxes(data, udta_at + 8, udta_at + udta_size)
    assert len(decode(written["nistems"])) == 5


def test_a_two_stem_session_is_refused_naming_the_missing_stems(tmp_path):
    source = song(tmp_path / "song.wav", seconds=0.5)
    with pytest.raises(PresetError, match=r"dj\.yaml: output\.files\.nistems: .* the model gives vocals, "
                                          r"instrumental \(missing drums, bass, other; not in NI Stems: instrumental\)"):
        render(tmp_path, load_separator("dsp"), source, stems={})
    assert not (tmp_path / "out").exists() or [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("output,message", [
    ({"files": {"nistems": "{track}.mp4"}}, r"output\.files\.nistems: '\{track\}\.mp4' must end in \.stem\.mp4"),
    ({"layout": "5.1", "files": {"nistems": "{track}.stem.mp4"}}, r"output\.files\.nistems: NI Stems files are stereo"),
])
def test_bad_nistems_settings_are_preset_errors(output, message):
    with pytest.raises(PresetError, match=message):
        parse({"version": 1, "output": output}, source="p.yaml")


def test_a_crash_while_finishing_leaves_no_stem_file(tmp_path, four_stems, monkeypatch):
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(nistems, "add_movie_box", crash)
    with pytest.raises(KeyboardInterrupt):
        render(tmp_path, four_stems, song(tmp_path / "song.wav", seconds=0.5))
    assert [p.name for p in (tmp_path / "out").rglob("*") if ".stem.mp4" in p.name] == []


def test_the_loudness_gain_applies_to_every_stream(tmp_path, four_stems):
    source = song(tmp_path / "song.wav", seconds=1.0)
    first = render(tmp_path / "a", four_stems, source)
    plain = decode(first["nistems"])
    written = render(tmp_path / "b", four_stems, source, loudness_lufs=-30.0)
    loud = decode(written["nistems"])
    # The gain that output.loudness_lufs -30 needs, from the unnormalised mix measured with pyloudnorm.
    mix, rate = sf.read(str(first["mix"]), always_2d=True)
    gain_db = -30.0 - pyln.Meter(rate).integrated_loudness(mix)
    assert abs(gain_db) > 3  # the test song is not at -30 LUFS already
    mix, rate = sf.read(str(written["mix"]), always_2d=True)
    assert pyln.Meter(rate).integrated_loudness(mix) == pytest.approx(-30.0, abs=0.05)  # 32-bit float mix
    manifest = json.loads(next((tmp_path / "b" / "out").glob("*.manifest.json")).read_text())
    assert manifest["loudness"]["gain_db"] == pytest.approx(gain_db, abs=0.05)
    assert manifest["handoff"] == {"nistems": str(tmp_path / "b" / "out" / "song.stem.mp4")}
    gain = 10 ** (gain_db / 20)
    for a, b in zip(plain, loud):
        assert snr_db(a * gain, b) > 28  # as above: AAC precision


def test_add_movie_box_creates_udta_when_the_file_has_none(tmp_path):
    path = tmp_path / "x.mp4"
    mvhd = struct.pack(">I4s", 16, b"mvhd") + bytes(8)
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    path.write_bytes(struct.pack(">I4s", 16, b"ftyp") + b"isom" + bytes(4) + struct.pack(">I4s", 12, b"mdat")
                     + b"abcd" + moov)
    nistems.add_movie_box(path, b"stem", b'{"a":1}')
    data = path.read_bytes()
    moov_at, moov_size = boxes(data, 0, len(data))[b"moov"]
    udta_at, udta_size = boxes(data, moov_at + 8, moov_at + moov_size)[b"udta"]
    stem_at, stem_size = boxes(data, udta_at + 8, udta_at + udta_size)[b"stem"]
    assert data[stem_at + 8:stem_at + stem_size] == b'{"a":1}' and data[24:28] == b"abcd"  # mdat untouched


def test_preset_check_refuses_nistems_for_a_two_stem_model(tmp_path, capsys):
    from bridge.cli import main as cli

    preset = tmp_path / "dj.yaml"
    preset.write_text('version: 1\nseparator: {model: dsp}\noutput: {files: {nistems: "{track}.stem.mp4"}}\n')
    assert cli(["preset", "check", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dj.yaml: output.files.nistems: NI Stems holds the mix and exactly four stems" in err[0]
    assert "missing drums, bass, other" in err[0]


def test_album_loudness_encodes_the_stem_file_with_the_album_gain(tmp_path, four_stems):
    """The deferred path: the first pass keeps the streams as scratch, the album's gain comes later."""
    from bridge.render.song import finish_render, render_song

    source = song(tmp_path / "song.wav", seconds=1.0)
    plain = decode(render(tmp_path / "a", four_stems, source)["nistems"])
    session = parse({"version": 1, "stems": GAINS,
                     "output": {"files": {"mix": "{track}.remix.{ext}", "nistems": "{track}.stem.mp4"},
                                "bit_depth": 32, "tail_seconds": 0.1, "loudness_lufs": -30.0,
                                "loudness_scope": "album"}}, source=str(tmp_path / "dj.yaml"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = render_song(source, RenderGraph(session, four_stems), tmp_path / "b", defer_gain_to=scratch)
    assert result.status == "measured" and not (tmp_path / "b" / "song.stem.mp4").exists()
    written = finish_render(result.pending, gain_db=-6.0, album={"folder": "x"})
    deferred = decode(written["nistems"])
    for a, b in zip(plain, deferred):
        assert snr_db(a * 10 ** (-6 / 20), b) > 28  # AAC precision, as above
    assert json.loads(written["manifest"].read_text())["handoff"] == {"nistems": str(written["nistems"])}


def test_a_48_khz_render_writes_48_khz_streams(tmp_path, four_stems):
    written = render(tmp_path, four_stems, song(tmp_path / "song.wav", seconds=0.5), sample_rate=48000)
    with av.open(str(written["nistems"])) as container:
        assert {s.codec_context.sample_rate for s in container.streams.audio} == {48000}
    frames = sf.info(str(written["mix"])).frames
    assert {d.shape[1] for d in decode(written["nistems"])} == {math.ceil(frames / 1024) * 1024}


def test_without_pyav_the_error_names_the_pip_command_and_nothing_is_written(tmp_path, four_stems, monkeypatch):
    import sys

    from bridge.errors import OutputError

    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(OutputError, match=r"PyAV is not installed .*NI Stems.*: pip install av"):
        render(tmp_path, four_stems, song(tmp_path / "song.wav", seconds=0.5))
    assert not (tmp_path / "out").exists() or [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_song_name_with_quotes_and_non_ascii_is_the_title_as_it_is(tmp_path, four_stems):
    name = """Ünïcødé – "ボーカル" it's `x`"""
    written = render(tmp_path, four_stems, song(tmp_path / f"{name}.wav", seconds=0.5))
    assert written["nistems"].name == f"{name}.stem.mp4"
    with av.open(str(written["nistems"])) as container:
        assert container.metadata.get("title") == name  # UTF-8 in the MP4 tag, nothing to escape
