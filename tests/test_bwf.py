"""Broadcast WAV outputs: bext (EBU Tech 3285 v2) and iXML chunks, read back by hand and by mediainfo.

The readers here are the test's own (struct over the RIFF chunks, following Tech 3285 section
2.3) and Debian's mediainfo, never bridge.daw.bwf's. Inputs are synthesized; a source bext chunk
is built by hand too.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pedalboard
import pyloudnorm
import pytest
import scipy.signal
import soundfile as sf

from bridge import __version__
from conftest import missing
from bridge.audio import files
from bridge.daw import bwf
from bridge.errors import AudioError, OutputError
from bridge.render.graph import RenderGraph
from bridge.render.song import render_file
from bridge.render.separate import SeparateOptions, separate_file
from bridge.separation import load_separator
from bridge.preset.session import parse

SR = 44100
TEN_AM = 10 * 3600 * SR  # a timecode of 10:00:00:00, in samples since midnight


def riff_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (id, payload) of a RIFF/WAVE file, in file order; checks the RIFF size and padding."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks, at = [], 12
    while at < len(data):
        tag, size = struct.unpack("<4sI", data[at:at + 8])
        chunks.append((tag, data[at + 8:at + 8 + size]))
        at += 8 + size + (size & 1)
    assert at == len(data)
    return chunks


def parse_bext(payload: bytes) -> dict:
    """EBU Tech 3285 v2, section 2.3, field by field."""
    text = lambda b: b.rstrip(b"\0").decode("ascii")  # noqa: E731
    fields = struct.unpack("<256s32s32s10s8sIIH64s5h180s", payload[:602])
    return {"description": text(fields[0]), "originator": text(fields[1]), "reference": text(fields[2]),
            "date": text(fields[3]), "time": text(fields[4]), "time_reference": fields[5] | (fields[6] << 32),
            "version": fields[7], "umid": fields[8], "loudness_value": fields[9], "loudness_range": fields[10],
            "max_true_peak": fields[11], "max_momentary": fields[12], "max_short_term": fields[13],
            "reserved": fields[14], "coding_history": payload[602:].rstrip(b"\0").decode("ascii")}


def wav_with_bext(path: Path, audio: np.ndarray, time_reference: int) -> Path:
    """A 16-bit WAV whose bext chunk (written here by hand) holds ``time_reference``."""
    sf.write(str(path), audio.T, SR, subtype="PCM_16")
    data = path.read_bytes()
    bext = struct.pack("<256s32s32s10s8sIIH64s5h180s", b"field recording", b"Recorder", b"", b"2026-11-30",
                       b"10:00:00", time_reference & 0xFFFFFFFF, time_reference >> 32, 1, b"", 0, 0, 0, 0, 0, b"")
    chunk = b"bext" + struct.pack("<I", len(bext)) + bext
    body = data[12:]
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunk) + len(body)) + b"WAVE" + chunk + body)
    return path


@pytest.fixture(scope="module")
def separator():
    return load_separator("dsp")


@pytest.fixture
def song(tmp_path) -> np.ndarray:
    t = np.arange(int(1.5 * SR)) / SR
    rng = np.random.default_rng(14)
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 220 * t + 0.3) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


def render(tmp_path, separator, source: Path, **output):
    files = {"mix": "{track}.remix.{ext}", "stems": "{track}/{stem}.{ext}"}
    session = parse({"version": 1, "output": {"files": files, "tail_seconds": 0.25, **output}},
                    source=str(tmp_path / "vocal-up.yaml"))
    return render_file(source, RenderGraph(session, separator), tmp_path / "out")


def measured(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file: pyloudnorm's BS.1770 meter, and the sample peak of the
    4x oversampled signal (BS.1770-4 annex 2's method).

    BS.1770 gates 400 ms blocks every 100 ms; samples after the last whole block are in none. pyloudnorm
    0.1-0.2 instead adds a last, partial block (zero-padded in effect: 0.2 LU low on 1.75 s), so it is
    given the samples up to the end of the last whole block.
    """
    audio, rate = sf.read(str(path), always_2d=True)
    step = rate // 10
    blocks = (len(audio) - 4 * step) // step
    loudness = pyloudnorm.Meter(rate).integrated_loudness(audio[:4 * step + blocks * step])
    peak = np.max(np.abs(scipy.signal.resample_poly(audio, 4, 1, axis=0)))
    return loudness, 20 * np.log10(peak)


def test_every_wav_output_carries_bext_v2_and_ixml_before_the_data(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "take 3.wav", song, TEN_AM)
    written = render(tmp_path, separator, source)
    manifest = json.loads(written["manifest"].read_text())
    for label in ("mix", "vocals", "instrumental"):
        chunks = riff_chunks(written[label])
        tags = [tag for tag, _ in chunks]
        assert tags.index(b"bext") < tags.index(b"data") and tags.index(b"iXML") < tags.index(b"data")
        bext = parse_bext(dict(chunks)[b"bext"])
        assert bext["version"] == 2
        assert bext["originator"] == f"stembridge {__version__}"
        assert "model dsp" in bext["description"] and "preset vocal-up" in bext["description"]
        assert ("mix" if label == "mix" else f"stem {label}") in bext["description"]
        assert len(bext["date"]) == 10 and bext["date"][4] == "-" and len(bext["time"]) == 8
        assert bext["time_reference"] == TEN_AM  # the stems land at the source's timecode
        assert bext["umid"] == bytes(64) and bext["reserved"] == bytes(180)
        stats = manifest["outputs"][label]
        # Tech 3285 v2 section 2.4: hundredths of LUFS / dBTP; 0x7FFF where not measured. The manifest and
        # bext share one meter, so both are checked against the file measured here, independently.
        lufs, true_peak = measured(written[label])
        assert bext["loudness_value"] == round(stats["loudness_lufs"] * 100)
        assert bext["loudness_value"] / 100 == pytest.approx(lufs, abs=0.02), label  # hundredths: 0.005
        assert bext["max_true_peak"] == round(stats["true_peak_dbtp"] * 100)
        assert bext["max_true_peak"] / 100 == pytest.approx(true_peak, abs=0.1), label  # 4x: within 0.1 dB
        # 1.75 s of audio: a momentary maximum, but no 3 s short-term window and so no range.
        assert bext["max_momentary"] >= bext["loudness_value"] and bext["max_momentary"] != 0x7FFF
        assert bext["loudness_range"] == bext["max_short_term"] == 0x7FFF
        assert bext["coding_history"] == f"A=PCM,F={SR},W=24,M=stereo,T=stembridge {__version__}\r\n"
        ixml = ElementTree.fromstring(dict(chunks)[b"iXML"].rstrip(b"\0").decode("utf-8"))
        assert ixml.findtext("PROJECT") == "take 3" and ixml.findtext("TAKE") == "vocal-up"
        assert int(ixml.findtext("SPEED/TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO")) == TEN_AM
        assert int(ixml.findtext("TRACK_LIST/TRACK_COUNT")) == 2
        assert [t.findtext("NAME") for t in ixml.findall("TRACK_LIST/TRACK")] == [f"{label} L", f"{label} R"]


def test_readers_that_ignore_the_chunks_read_the_same_samples(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", song, TEN_AM)
    with_bwf = render(tmp_path / "a", separator, source)
    without = render(tmp_path / "b", separator, source, bwf=False)
    for label in ("mix", "vocals"):
        assert b"bext" not in [tag for tag, _ in riff_chunks(without[label])]
        plain, rate = sf.read(str(without[label]), dtype="float32")
        ours, rate2 = sf.read(str(with_bwf[label]), dtype="float32")
        assert rate == rate2 == SR
        np.testing.assert_array_equal(ours, plain)  # the same 24-bit samples, bit for bit
        with pedalboard.io.AudioFile(str(with_bwf[label])) as f, pedalboard.io.AudioFile(str(without[label])) as g:
            assert f.samplerate == SR and f.frames == g.frames == plain.shape[0]
            np.testing.assert_array_equal(f.read(f.frames), g.read(g.frames))  # its own 24-bit scaling


def test_time_reference_follows_the_output_sample_rate(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", song, TEN_AM + 441)  # 10 ms after 10:00:00
    written = render(tmp_path, separator, source, sample_rate=48000)
    bext = parse_bext(dict(riff_chunks(written["mix"]))[b"bext"])
    assert bext["time_reference"] == 10 * 3600 * 48000 + 480


def test_a_source_without_bext_starts_at_midnight(tmp_path, separator, song):
    source = tmp_path / "song.flac"
    sf.write(str(source), song.T, SR, subtype="PCM_24")
    written = render(tmp_path, separator, source)
    assert parse_bext(dict(riff_chunks(written["vocals"]))[b"bext"])["time_reference"] == 0


def test_a_time_reference_past_24_hours_is_refused_before_anything_is_written(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", song, 25 * 3600 * SR)
    with pytest.raises(AudioError, match=r"song\.wav: bext TimeReference .* 25\.0 h after midnight, past 24 h.*"
                                         r"output\.bwf: false"):
        render(tmp_path, separator, source)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    written = render(tmp_path, separator, source, bwf=False)  # the fix the message names works
    assert written["mix"].exists()


def test_mediainfo_reads_the_bext_fields(tmp_path, separator, song):
    if shutil.which("mediainfo") is None:
        missing("mediainfo is not installed (apt-get install mediainfo; .ci/run installs it)")
    source = wav_with_bext(tmp_path / "song.wav", song, TEN_AM)
    written = render(tmp_path, separator, source)
    report = json.loads(subprocess.run(["mediainfo", "--Output=JSON", str(written["vocals"])], check=True,
                                       capture_output=True, text=True).stdout)
    general = next(t for t in report["media"]["track"] if t["@type"] == "General")
    audio = next(t for t in report["media"]["track"] if t["@type"] == "Audio")
    assert "stem vocals" in general["Description"]
    assert general["Producer"] == f"stembridge {__version__}"  # mediainfo's name for Originator
    assert round(float(audio["Delay"]) * 1000) == 10 * 3600 * 1000  # TimeReference as a delay, ms
    assert audio["Format"] == "PCM" and int(audio["Channels"]) == 2


def test_non_ascii_names_are_transliterated_in_bext_and_kept_in_ixml(tmp_path, separator, song):
    source = tmp_path / "Beyoncé – Halo.wav"
    sf.write(str(source), song.T, SR, subtype="PCM_16")
    written = render(tmp_path, separator, source)
    chunks = dict(riff_chunks(written["mix"]))
    assert "song Beyonce ? Halo" in parse_bext(chunks[b"bext"])["description"]
    assert ElementTree.fromstring(chunks[b"iXML"].rstrip(b"\0").decode()).findtext("PROJECT") == "Beyoncé – Halo"


def test_separate_writes_broadcast_wav_stems_with_loudness_unknown(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", song, TEN_AM)
    written = separate_file(source, separator, SeparateOptions(out_dir=tmp_path / "sep"))
    bext = parse_bext(dict(riff_chunks(written["vocals"]))[b"bext"])
    assert bext["time_reference"] == TEN_AM and "stembridge separate: stem vocals" in bext["description"]
    assert bext["loudness_value"] == bext["max_true_peak"] == 0x7FFF  # separate measures nothing
    plain = separate_file(source, separator, SeparateOptions(out_dir=tmp_path / "plain", bwf=False))
    np.testing.assert_array_equal(sf.read(str(written["vocals"]))[0], sf.read(str(plain["vocals"]))[0])


@pytest.mark.parametrize("channels,subtype,bit_depth", [(6, "FLOAT", 32), (1, "PCM_16", 16), (2, "PCM_24", 24)])
def test_embed_keeps_every_chunk_and_sample(tmp_path, rng, channels, subtype, bit_depth):
    audio = (0.2 * rng.standard_normal((channels, 3001))).astype(np.float32)
    path = files.write(tmp_path / "x.wav", audio, SR, bit_depth=bit_depth)
    before = riff_chunks(path)
    info = bwf.Broadcast(description="x" * 300, sample_rate=SR, channels=channels, time_reference=2**33 + 5,
                         project="p", take="t", bit_depth=None if bit_depth == 32 else bit_depth)
    bwf.embed(path, info)
    after = riff_chunks(path)
    assert [c for c in after if c[0] not in (b"bext", b"iXML")] == before  # fmt, fact, PEAK, data untouched
    bext = parse_bext(dict(after)[b"bext"])
    assert bext["description"] == "x" * 256 and bext["time_reference"] == 2**33 + 5
    np.testing.assert_array_equal(sf.read(str(path), dtype="float32", always_2d=True)[0].T,
                                  files.read(path)[0])
    if channels == 6:
        ixml = ElementTree.fromstring(dict(after)[b"iXML"].rstrip(b"\0").decode())
        assert [t.findtext("NAME") for t in ixml.findall("TRACK_LIST/TRACK")] == ["L", "R", "C", "LFE", "Ls", "Rs"]


def test_a_failing_finish_leaves_neither_the_final_file_nor_the_partial(tmp_path, rng):
    target = tmp_path / "mix.wav"
    writer = files.AudioWriter(target, sample_rate=SR, channels=2)
    writer.write((0.1 * rng.standard_normal((2, 1000))).astype(np.float32))

    def broken(partial: Path) -> None:
        raise OutputError(f"{partial}: disk full")

    with pytest.raises(OutputError, match="disk full"):
        writer.close(finish=broken)
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_adding_chunks_leaves_no_finished_looking_file(tmp_path, separator, song, monkeypatch):
    source = wav_with_bext(tmp_path / "song.wav", song, TEN_AM)

    def crash(path, info):
        raise KeyboardInterrupt

    monkeypatch.setattr(bwf, "embed", crash)
    with pytest.raises(KeyboardInterrupt):
        render(tmp_path, separator, source)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_album_loudness_renders_carry_the_album_gain_in_bext_and_get_their_project(tmp_path, song):
    from bridge.cli import main as cli

    album = tmp_path / "album"
    album.mkdir()
    wav_with_bext(album / "one.wav", song, TEN_AM)
    wav_with_bext(album / "two.wav", 0.5 * song, TEN_AM + SR)
    preset = tmp_path / "album.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\noutput: {loudness_lufs: -20, loudness_scope: album, "
                      "tail_seconds: 0.1, project: reaper}\n")
    assert cli(["render", str(preset), str(album), "--out", str(tmp_path / "out"), "--no-cache", "--quiet"]) == 0
    manifests = sorted((tmp_path / "out").rglob("*.manifest.json"))
    assert len(manifests) == 2
    gains = set()
    for manifest in manifests:
        record = json.loads(manifest.read_text())
        assert record["loudness"]["scope"] == "album"
        gains.add(record["loudness"]["gain_db"])
        for label, stats in record["outputs"].items():
            bext = parse_bext(dict(riff_chunks(Path(stats["path"])))[b"bext"])
            assert bext["loudness_value"] == round(stats["loudness_lufs"] * 100), label
            assert bext["loudness_value"] / 100 == pytest.approx(measured(Path(stats["path"]))[0], abs=0.02), label
            assert bext["time_reference"] in (TEN_AM, TEN_AM + SR)
        assert Path(record["handoff"]["project"]).is_file()
    assert len(gains) == 1  # one gain for the album


def test_loudness_descriptors_follow_ebu_tech_3341_and_3342():
    """10 s of a 1 kHz tone, then 10 s of it 10 dB down: LRA 10 LU, maxima the loud part's loudness."""
    from bridge.audio.loudness import LoudnessMeter

    t = np.arange(10 * SR) / SR
    loud = np.stack([0.3 * np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32)
    signal = np.concatenate([loud, loud * np.float32(10 ** (-10 / 20))], axis=1)
    meter = LoudnessMeter(sample_rate=SR, channels=2)
    for start in range(0, signal.shape[1], 44100 // 3):  # odd block sizes, as a render feeds them
        meter.process(signal[:, start:start + 44100 // 3])
    extra = meter.descriptors()
    reference = pyloudnorm.Meter(SR).integrated_loudness(loud.T.astype(np.float64))  # independent: the loud part
    assert extra.max_momentary == pytest.approx(reference, abs=0.05)
    assert extra.max_short_term == pytest.approx(reference, abs=0.05)
    assert extra.loudness_range == pytest.approx(10.0, abs=0.1)
    assert meter.state().descriptors() == extra


def test_a_long_enough_output_carries_every_loudness_field(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", np.tile(song, 3), TEN_AM)  # 4.5 s of a steady signal
    written = render(tmp_path, separator, source, tail_seconds=0.0)
    bext = parse_bext(dict(riff_chunks(written["mix"]))[b"bext"])
    assert 0x7FFF not in (bext["loudness_value"], bext["loudness_range"], bext["max_true_peak"],
                          bext["max_momentary"], bext["max_short_term"])
    assert 0 <= bext["loudness_range"] < 100  # a steady signal: under 1 LU
    assert abs(bext["max_short_term"] - bext["loudness_value"]) < 50  # within 0.5 LU of the integrated
    assert bext["max_momentary"] >= bext["max_short_term"] - 1


def test_ixml_stays_well_formed_with_control_characters_in_a_name():
    info = bwf.Broadcast(description="d", sample_rate=SR, channels=2, project="a\x01b\x1fc & <d>", take="t\x0b")
    root = ElementTree.fromstring(bwf.ixml_payload(info).decode("utf-8"))  # an XML parser accepts it
    assert root.findtext("PROJECT") == "a?b?c & <d>" and root.findtext("TAKE") == "t?"


def test_separate_refuses_a_time_reference_past_24_hours_and_writes_nothing(tmp_path, separator, song):
    source = wav_with_bext(tmp_path / "song.wav", song, 24 * 3600 * SR)  # exactly midnight of the next day
    with pytest.raises(AudioError, match=r"song\.wav: bext TimeReference .* 24\.0 h after midnight"):
        separate_file(source, separator, SeparateOptions(out_dir=tmp_path / "sep"))
    assert not (tmp_path / "sep").exists() or [p for p in (tmp_path / "sep").rglob("*") if p.is_file()] == []
    written = separate_file(source, separator, SeparateOptions(out_dir=tmp_path / "sep", bwf=False))
    assert b"bext" not in [tag for tag, _ in riff_chunks(written["vocals"])]
