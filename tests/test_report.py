"""The run report (render/separate --report): the preview sink's numbers, and the page in a real browser.

The browser test opens the report in Debian's headless Chromium (``apt-get install chromium``; .ci/run
installs it): every picture must decode, and the page must carry the songs, outputs and levels that
the run's own records (stembridge-run.json, the manifests) hold.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
from conftest import missing, need_module

need_module("matplotlib", "; the report extra: pip install \"stembridge[report]\"")

from bridge.cli import main as cli  # noqa: E402
from bridge.render import preview  # noqa: E402
from bridge.render.preview import N_FFT, _Signal, band_edges  # noqa: E402

SR = 44100
ALBUM_PRESET = ("version: 1\nseparator: {model: dsp}\noutput: {tail_seconds: 0.5, bit_depth: 24, loudness_lufs: -20, "
                "true_peak_db: -1, loudness_scope: album, files: {mix: '{track}.mix.{ext}', stems: '{track}/{stem}.{ext}'}}\n")


def write_song(path: Path, seconds: float, *, seed: int, level: float) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.5 * np.sin(2 * np.pi * 330 * t)
    audio = level * np.stack([tone + 0.2 * rng.standard_normal(t.size), 0.5 * tone + 0.2 * rng.standard_normal(t.size)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T.astype(np.float32), SR, subtype="PCM_24")
    return path


# --- the preview sink's analysis -------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[SR * 10], [1, 8, 2047, 2049, 11111], [N_FFT] * 7])
def test_envelope_and_spectrum_do_not_depend_on_block_sizes(rng, sizes):
    """Streaming in any block sizes gives the buckets and columns of one pass, and the buckets hold
    the true min/max (computed here directly on the whole signal)."""
    audio = (0.3 * rng.standard_normal((2, 40000))).astype(np.float32)
    bucket, per_column = 997, 3
    whole = _Signal(bucket, per_column)
    whole.process(audio)
    whole.end()
    streamed = _Signal(bucket, per_column)
    at = 0
    for size in sizes + [audio.shape[1]]:
        streamed.process(audio[:, at:at + size])
        at += size
        if at >= audio.shape[1]:
            break
    streamed.end()
    lows = [audio[:, i:i + bucket].min() for i in range(0, audio.shape[1], bucket)]
    highs = [audio[:, i:i + bucket].max() for i in range(0, audio.shape[1], bucket)]
    np.testing.assert_array_equal(whole.lows, lows)
    np.testing.assert_array_equal(whole.highs, highs)
    np.testing.assert_array_equal(streamed.lows, lows)
    np.testing.assert_allclose(np.asarray(streamed.columns), np.asarray(whole.columns), rtol=1e-5)
    assert len(whole.columns) == math.ceil(math.ceil(40000 / N_FFT) / per_column)


def test_a_full_scale_sine_reads_0_db_in_its_band():
    """The colour scale says "full-scale sine = 0": a 1 kHz sine at amplitude 1 (bin-centred, so no
    scalloping) peaks at 0 dB in its FFT bin, computed from the columns the sink keeps."""
    k = round(1000 / (SR / N_FFT))
    t = np.arange(SR * 2) / SR
    sine = np.sin(2 * np.pi * k * SR / N_FFT * t).astype(np.float32)[None, :]
    signal = _Signal(bucket=4096, frames_per_column=4)
    signal.process(np.repeat(sine, 2, axis=0))
    signal.end()
    power = np.asarray(signal.columns)[:-1]  # the last column holds a zero-padded frame
    level = 10 * np.log10(power[:, k] / preview._FULL_SCALE)
    np.testing.assert_allclose(level, 0.0, atol=0.05)
    edges = band_edges(SR)
    assert edges[0] == 1 and edges[-1] == N_FFT // 2 + 1 and np.all(np.diff(edges) > 0)


def test_memory_stays_flat_with_song_length():
    """The pictures keep about WAVE_POINTS buckets and SPEC_COLUMNS columns per signal however
    long the song is: a minute and half an hour of audio leave the same amount of data."""
    sizes = []
    for minutes in (1, 30):
        frames = minutes * 60 * SR
        sink = preview.Preview(audio=None, sample_rate=SR, frames=frames)
        signal = _Signal(sink.bucket, sink.per_column)
        block = np.zeros((1, SR * 60), np.float32)
        for _ in range(minutes):
            signal.process(block)
        signal.end()
        sizes.append((len(signal.lows), len(signal.columns)))
    for buckets, columns in sizes:
        assert preview.WAVE_POINTS - 2 <= buckets <= preview.WAVE_POINTS
        assert preview.SPEC_COLUMNS * 0.8 <= columns <= preview.SPEC_COLUMNS * 1.25


# --- the page in a browser ------------------------------------------------------------------------

#: Appended to a copy of the report before the browser loads it (the report itself has no script):
#: after the load event, every image's decode state and every player's resolved source, as JSON.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  // Synchronous on purpose: --dump-dom may not wait for promises. At the load event every data URI
  // image has been decoded (or has failed: 0 x 0); Pillow checks the bytes to the last pixel.
  const images = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight, done: i.complete}));
  const audio = [...document.querySelectorAll("audio")].map(a => a.getAttribute("src"));
  const pre = document.createElement("pre");
  pre.id = "stembridge-check";
  pre.textContent = JSON.stringify({images, audio});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    missing("Chromium not found (apt-get install chromium)")


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--mute-audio", f"--user-data-dir={page.parent / '.chromium'}",
                           *args, page.as_uri()], capture_output=True, text=True, timeout=120)


class _Text(html.parser.HTMLParser):
    """The text of every table cell, row by row (with the song section it is in), and the check
    element's text."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.sections: list[str] = []  # each row's section heading ("" before the first song)
        self.check = ""
        self._cell = None
        self._in_check = False
        self._section = ""
        self._heading = None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._heading = ""
        elif tag == "tr":
            self.rows.append([])
            self.sections.append(self._section)
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "pre" and ("id", "stembridge-check") in attrs:
            self._in_check = True

    def handle_endtag(self, tag):
        if tag == "h2" and self._heading is not None:
            self._section, self._heading = self._heading.strip(), None
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join(self._cell.split()))
            self._cell = None
        elif tag == "pre":
            self._in_check = False

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell += data
        if self._in_check:
            self.check += data


def _one(value) -> str:
    return "–" if value is None else f"{value:.1f}"


@pytest.mark.slow
def test_report_opens_in_a_browser_with_every_song_output_and_number(tmp_path):
    preset = tmp_path / "album.yaml"
    preset.write_text(ALBUM_PRESET)
    songs = tmp_path / "in" / "My Album"
    write_song(songs / "01 first.wav", 4.0, seed=1, level=0.1)
    write_song(songs / "02 second & loud.wav", 3.0, seed=2, level=0.6)
    bad = write_song(songs / "03 broken.wav", 3.0, seed=3, level=0.1)
    bad.write_bytes(bad.read_bytes()[:20000])  # truncated: fails half-way
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(tmp_path / "in"), "--out", str(out), "--report", "--quiet",
                "--no-cache"]) == 1
    report = out / "stembridge-report.html"
    assert report.is_file() and not [p for p in out.rglob(".*partial")]
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing to fetch: it opens offline

    # Moved whole, the report still finds its outputs: the players link relatively.
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    page = moved / "check.html"
    page.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = browse(page, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Text()
    parsed.feed(dom.stdout)
    assert parsed.check, "the check script did not run"
    check = json.loads(parsed.check)
    assert len(check["images"]) == 4  # waveforms and spectrograms of the two good songs
    for image in check["images"]:  # a broken data URI decodes to 0 x 0
        assert image["done"] and image["w"] > 600 and image["h"] > 100, image
    # The browser also shows a truncated picture (from its header, as far as it goes): Pillow, another
    # decoder, must read every embedded picture to its last pixel, at the size the browser reports.
    from PIL import Image

    uris = re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', text)
    assert len(uris) == len(check["images"])
    for (kind, data), seen in zip(uris, check["images"]):
        picture = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        picture.load()  # raises on a truncated or corrupt file
        assert picture.format.lower() == kind and picture.size == (seen["w"], seen["h"])

    record = json.loads((moved / "stembridge-run.json").read_text())
    cells = [row for row in parsed.rows if row]
    flat = " | ".join(" ".join(row) for row in cells)
    run = {row[0]: row[1] for row in cells if len(row) == 2}
    assert run["songs"] == "3" and run["rendered"] == str(record["counts"]["rendered"]) == "2"
    assert run["failed"] == "1" and run["wall time"] == f"{record['wall_seconds']:.1f} s"
    assert run["real-time factor"] == f"{record['realtime_factor']:.1f}x"
    assert run["models"] == "dsp" and run["devices"] == ", ".join(record["devices"])
    failed = next(s for s in record["songs"] if s["status"] == "failed")
    assert failed["error"] in unescape_text(dom.stdout)

    players = [unquote(src) for src in check["audio"]]
    for song in (s for s in record["songs"] if s["status"] == "rendered"):
        name = Path(song["input"]).name
        assert name in flat
        manifest = json.loads((moved / Path(song["outputs"]["manifest"]).relative_to(out)).read_text())
        for label, stats in manifest["outputs"].items():
            target = moved / Path(song["outputs"][label]).relative_to(out)
            rel = target.relative_to(moved).as_posix()
            assert rel in players and (page.parent / rel).is_file()  # the player's file, at its relative path
            row = next(r for r, where in zip(parsed.rows, parsed.sections)
                       if where == name and len(r) >= 6 and r[0] == label and r[1] == target.name)
            assert row[2:4] == [_one(stats["loudness_lufs"]), _one(stats["true_peak_dbtp"])], (label, row)
            assert row[5] == str(stats["clipped_samples"])
        album_gain = manifest["loudness"]["album"]["gain_db"]
        assert f"album gain {album_gain:+.1f} dB" in unescape_text(dom.stdout)
        album_row = next(r for r in cells if r and r[0] == name)  # the album view's row
        mix = manifest["outputs"]["mix"]
        assert album_row[3] == _one(mix["loudness_lufs"]) and album_row[4] == f"{mix['loudness_lufs'] + 20:+.1f}"
    assert all(src and not src.startswith(("/", "file:", "http")) for src in check["audio"])

    shot = moved / "report.png"
    browse(moved / "stembridge-report.html", "--window-size=1280,3000", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 50_000
    keep = os.environ.get("STEMBRIDGE_REPORT_SHOT")
    if keep:  # for a person to look at
        shutil.copy(shot, keep)


def unescape_text(markup: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


@pytest.mark.slow
def test_separate_report_meters_the_stems(tmp_path):
    song = write_song(tmp_path / "song.wav", 3.0, seed=5, level=0.2)
    out = tmp_path / "out"
    assert cli(["separate", str(song), "--model", "dsp", "--out", str(out), "--report", "--quiet", "--no-cache"]) == 0
    text = (out / "stembridge-report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1 and text.count("data:image/jpeg;base64,") == 1
    for stem in ("vocals", "instrumental"):
        audio, rate = sf.read(str(out / "song" / f"{stem}.wav"), always_2d=True)
        import pyloudnorm

        lufs = pyloudnorm.Meter(rate).integrated_loudness(audio)  # an independent meter
        assert f'src="song/{stem}.wav"' in text
        row = re.search(rf"<td>{stem}</td><td><a [^>]+>{stem}.wav</a></td><td class=\"n\">(-?[\d.]+)</td>", text)
        assert row and float(row.group(1)) == pytest.approx(lufs, abs=0.11), (stem, lufs)


def _bext_loudness(path: Path) -> bytes:
    """The five loudness fields of a WAV's bext chunk (EBU Tech 3285 v2: offset 412, 5 x int16)."""
    data = path.read_bytes()
    at = 12
    while at < len(data):
        tag, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        if tag == b"bext":
            return data[at + 8 + 412:at + 8 + 422]
        at += 8 + size + (size & 1)
    raise AssertionError(f"{path}: no bext chunk")


def test_a_report_changes_no_output_of_separate(tmp_path):
    """Metering the stems for the report leaves the files as they are without it: same samples,
    and the bext loudness fields still say "not measured" (0x7FFF), as separate always wrote."""
    song = write_song(tmp_path / "song.wav", 3.5, seed=6, level=0.2)
    for name, extra in (("plain", []), ("report", ["--report"])):
        assert cli(["separate", str(song), "--model", "dsp", "--out", str(tmp_path / name), "--quiet", "--no-cache",
                    *extra]) == 0
    for stem in ("vocals", "instrumental"):
        plain, report = tmp_path / "plain" / "song" / f"{stem}.wav", tmp_path / "report" / "song" / f"{stem}.wav"
        np.testing.assert_array_equal(sf.read(str(plain))[0], sf.read(str(report))[0])
        assert _bext_loudness(plain) == _bext_loudness(report) == (0x7FFF).to_bytes(2, "little") * 5
