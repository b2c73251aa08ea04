"""bridge.quality.evaluate: metrics against hand-computable cases, reference folders, the oracle, real music."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import DATA, need_data, noise
from scipy import signal

from bridge.errors import AudioError, ModelError
from bridge.separation import WholeSongStream
from bridge.quality.evaluate import Report, evaluate, find_songs, framewise_sdr, si_sdr

SR = 8000
SECONDS = 3


class FakeSeparator:
    """Returns fixed estimates whatever the input (a separator is any callable with ``stems``)."""

    name, settings, card, residual = "fake", {}, None, None

    def __init__(self, estimates: dict[str, np.ndarray]):
        self.estimates = estimates
        self.stems = tuple(estimates)
        self.calls = 0

    def __call__(self, audio, sample_rate):
        self.calls += 1
        return {stem: a.copy() for stem, a in self.estimates.items()}

    def stream(self, *, sample_rate, channels):
        return WholeSongStream(self, sample_rate=sample_rate, channels=channels)


def write(path, audio, sample_rate=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    # float wav reads back bit-exact; flac (duplicate-stem case only) holds integers
    sf.write(str(path), audio.T, sample_rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")


def make_song(folder, stems: dict[str, np.ndarray], sample_rate=SR):
    for name, audio in stems.items():
        write(folder / f"{name}.wav", audio, sample_rate)
    write(folder / "mixture.wav", np.sum(list(stems.values()), axis=0).astype(np.float32), sample_rate)


@pytest.fixture
def two_stem(tmp_path, rng):
    """One stereo song: vocals + accompaniment of white noise."""
    stems = {"vocals": noise(rng, 2, SR * SECONDS), "accompaniment": noise(rng, 2, SR * SECONDS)}
    make_song(tmp_path / "refs" / "song", stems)
    return tmp_path / "refs", stems


def scores(report: Report) -> dict[str, tuple[float, float]]:
    return {s.stem: (s.sdr, s.si_sdr) for s in report.scores}


# --- metrics ----------------------------------------------------------------------------------------

def test_perfect_estimate_is_infinite(two_stem):
    refs, stems = two_stem
    fake = FakeSeparator({"vocals": stems["vocals"], "instrumental": stems["accompaniment"]})
    report = evaluate(fake, refs)
    # museval does not cap SDR: an exact estimate has zero error energy in every frame -> +inf;
    # SI-SDR likewise (the projection is exact in float64).
    for stem, (sdr, si) in scores(report).items():
        assert sdr == math.inf, stem
        assert si == math.inf, stem
    assert all(s.frames == SECONDS for s in report.scores)  # three 1 s frames, none NaN


def test_half_level_estimate(two_stem):
    refs, stems = two_stem
    fake = FakeSeparator({"vocals": 0.5 * stems["vocals"], "instrumental": stems["accompaniment"]})
    sdr, si = scores(evaluate(fake, refs))["vocals"]
    # BSS Eval v4 SDR = |s|^2 / |s_hat - s|^2 per frame: not scale-invariant, 20 log10(2) dB.
    assert sdr == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert si == math.inf  # 0.5 * s is an exact multiple: zero residual after projection


def test_known_snr(two_stem, rng):
    refs, stems = two_stem
    vocals = stems["vocals"].astype(np.float64)
    n = rng.standard_normal(vocals.shape)
    n *= np.sqrt(np.sum(vocals ** 2) / np.sum(n ** 2) / 10)  # 10 dB below the reference
    fake = FakeSeparator({"vocals": (vocals + n).astype(np.float32), "instrumental": stems["accompaniment"]})
    sdr, si = scores(evaluate(fake, refs))["vocals"]
    assert si == pytest.approx(10.0, abs=0.3)
    assert sdr == pytest.approx(10.0, abs=0.5)  # median of three 1 s frames, each ~10 dB


def test_silent_estimate_is_minus_inf(two_stem):
    refs, stems = two_stem
    fake = FakeSeparator({"vocals": np.zeros_like(stems["vocals"]), "instrumental": stems["accompaniment"]})
    report = evaluate(fake, refs)
    got = scores(report)
    assert got["vocals"] == (-math.inf, -math.inf)
    assert got["instrumental"] == (math.inf, math.inf)  # scored alone, unharmed by the silent stem
    assert any("vocals estimate is silence" in n for n in report.notes)
    data = report.to_json()
    json.dumps(data, allow_nan=False)
    assert data["songs"]["song"]["vocals"] == {"sdr": None, "sir": None, "sar": None, "isr": None, "si_sdr": None,
                                               "frames": 0}


def test_si_sdr_edge_cases(rng):
    s = noise(rng, 2, 1000)
    assert math.isnan(si_sdr(np.zeros_like(s), s))
    assert si_sdr(s, np.zeros_like(s)) == -math.inf
    assert si_sdr(s, -s) == math.inf  # scale invariance includes the sign
    # channels are concatenated: the sign of one channel matters
    flipped = s.copy()
    flipped[1] *= -1
    assert si_sdr(s, flipped) < -20


def test_framewise_sdr_layout_and_mono(rng):
    ref = noise(rng, 1, SR * 2)
    est = ref + noise(rng, 1, SR * 2, level=0.01)
    sdr = framewise_sdr([ref], [est], sample_rate=SR)
    assert sdr.shape == (1, 2)
    np.testing.assert_allclose(sdr, 20.0, atol=0.5)  # level 0.1 vs 0.01 noise


# --- folders ------------------------------------------------------------------------------------------

def test_instrumental_built_from_stems_and_nested_songs(tmp_path, rng):
    stems = {name: noise(rng, 2, SR * 2) for name in ("vocals", "drums", "bass", "other")}
    make_song(tmp_path / "set" / "deep" / "a", stems)
    make_song(tmp_path / "b", {"vocals": stems["vocals"], "accompaniment": stems["drums"]})
    songs = find_songs(tmp_path)
    assert [s.name for s in songs] == ["b", "set/deep/a"]
    assert set(songs[0].stems) == {"vocals", "instrumental"}
    inst = stems["drums"] + stems["bass"] + stems["other"]
    fake = FakeSeparator({"vocals": stems["vocals"], "instrumental": inst, "piano": stems["bass"]})
    report = evaluate(fake, tmp_path)
    got = {(s.song, s.stem): s for s in report.scores}
    assert got[("set/deep/a", "instrumental")].si_sdr > 100  # float32 sum vs float32 sum
    assert got[("b", "vocals")].sdr == math.inf
    assert any("no reference for piano" in n for n in report.notes)
    table = report.table()
    assert "median (2 songs)" in table and "set/deep/a" in table
    assert len({len(line) for line in table.splitlines()}) == 1  # aligned


def test_four_stem_model_scored_jointly(tmp_path, rng):
    # mono: four stereo sources make museval solve a 4096-unknown system, four mono ones 2048
    stems = {name: noise(rng, 1, SR * 2) for name in ("vocals", "drums", "bass", "other")}
    make_song(tmp_path / "s", stems)
    fake = FakeSeparator({k: 0.5 * v for k, v in stems.items()})
    got = scores(evaluate(fake, tmp_path))
    # the model's sum (drums + bass + other) is scored against the instrumental reference too
    assert set(got) == {"vocals", "drums", "bass", "other", "instrumental"}
    for sdr, _ in got.values():
        assert sdr == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_lengths_trimmed_with_note(tmp_path, rng):
    v, a = noise(rng, 2, SR * 2), noise(rng, 2, SR * 2)
    make_song(tmp_path / "s", {"vocals": v, "accompaniment": a})
    write(tmp_path / "s" / "vocals.wav", v[:, :-300])  # a lossy stem a little short
    fake = FakeSeparator({"vocals": v[:, :-300], "instrumental": a[:, :-300]})
    report = evaluate(fake, tmp_path)
    assert scores(report)["vocals"][0] == math.inf
    assert any("trimmed by up to 300 samples" in n for n in report.notes)


@pytest.mark.parametrize("case", ["missing", "empty", "no-mixture", "rate", "channels", "length", "duplicate"])
def test_folder_errors_name_the_file(tmp_path, rng, case):
    v = noise(rng, 2, SR * 3)
    root = tmp_path / "refs"
    if case != "missing":
        root.mkdir()
    if case == "no-mixture":
        write(root / "song" / "vocals.wav", v)
    if case in ("rate", "channels", "length", "duplicate"):
        make_song(root / "song", {"vocals": v, "accompaniment": v})
    if case == "rate":
        write(root / "song" / "vocals.wav", v, 16000)
    if case == "channels":
        write(root / "song" / "vocals.wav", v[:1])
    if case == "length":
        write(root / "song" / "vocals.wav", v[:, : SR])
    if case == "duplicate":
        write(root / "song" / "vocals.flac", v)
    with pytest.raises(AudioError) as info:
        evaluate(FakeSeparator({"vocals": v}), root)
    message = str(info.value)
    expected = {"missing": "no such folder", "empty": "no song found", "no-mixture": "no song found",
                "rate": "vocals.wav: sample rate 16000 Hz", "channels": "vocals.wav: 1 channel",
                "length": "differ in length", "duplicate": "a second file for stem 'vocals'"}[case]
    assert expected in message
    assert str(root) in message


def test_nothing_to_score_and_bad_shapes(two_stem):
    refs, stems = two_stem
    with pytest.raises(ModelError, match="no stem of fake has a reference"):
        evaluate(FakeSeparator({"piano": stems["vocals"]}), refs)
    with pytest.raises(ModelError, match="breaks the buffer contract"):
        evaluate(FakeSeparator({"vocals": stems["vocals"][:1]}), refs)


def test_json_and_write(two_stem, tmp_path):
    refs, stems = two_stem
    report = evaluate(FakeSeparator({"vocals": 0.5 * stems["vocals"]}), refs)
    target = report.write_json(tmp_path / "out" / "report.json")
    data = json.loads(target.read_text())
    assert data["model"] == "fake"
    assert data["median"]["vocals"]["sdr"] == pytest.approx(6.0206, abs=1e-3)
    assert data["median"]["vocals"]["si_sdr"] is None  # +inf
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no partial left


# --- the oracle ------------------------------------------------------------------------------------------

def test_oracle_separates_two_colours(tmp_path, rng):
    low = signal.butter(4, 800, "low", fs=SR, output="sos")
    high = signal.butter(4, 1600, "high", fs=SR, output="sos")
    vocals = signal.sosfilt(high, noise(rng, 2, SR * SECONDS)).astype(np.float32)
    accompaniment = signal.sosfilt(low, noise(rng, 2, SR * SECONDS)).astype(np.float32)
    make_song(tmp_path / "song", {"vocals": vocals, "accompaniment": accompaniment})
    report = evaluate("oracle", tmp_path)
    assert report.model == "oracle"
    for stem, (sdr, si) in scores(report).items():
        assert sdr > 10 and si > 10, (stem, sdr, si)


# --- real music -------------------------------------------------------------------------------------------

def test_dsp_on_real_excerpt(tmp_path):
    from bridge.separation import load_separator

    source = need_data(DATA / "cristina-vane-so-easy")
    song = tmp_path / "so-easy"
    song.mkdir()
    for name in ("mixture", "vocals", "accompaniment"):  # the first 5 s keep the test short
        audio, rate = sf.read(str(source / f"{name}.flac"), frames=5 * 44100, dtype="float32", always_2d=True)
        sf.write(str(song / f"{name}.wav"), audio, rate, subtype="FLOAT")
    report = evaluate(load_separator("dsp", overlap=0.4), tmp_path)
    assert report.to_json()["settings"] == {"overlap": 0.4}  # a score file says how it was made
    got = scores(report)
    assert set(got) == {"vocals", "instrumental"}
    # Measured (SDR, SI-SDR): vocals (5.10, 3.56), instrumental (7.52, 6.42) dB. Floors 2 dB under them:
    # a DSP regression of a few dB fails, and swapped stems (vocals scored as instrumental) score below 0 dB.
    floors = {"vocals": (3.1, 1.5), "instrumental": (5.5, 4.4)}
    for stem, (sdr, si) in got.items():
        assert sdr > floors[stem][0] and si > floors[stem][1], (stem, sdr, si)
    assert "median (1 song)" in report.table()



@pytest.mark.parametrize("channels, samples", [(1, 2049), (2, 8000), (2, 11111)])
def test_oracle_masks_sum_to_mix_and_leave_inputs(rng, channels, samples):
    from bridge.quality.evaluate import ideal_ratio_mask

    sources = {"vocals": noise(rng, channels, samples), "drums": noise(rng, channels, samples),
               "silent": np.zeros((channels, samples), np.float32)}
    mix = np.sum(list(sources.values()), axis=0)
    before = {k: v.copy() for k, v in sources.items()}, mix.copy()
    out = ideal_ratio_mask(mix, sources)
    assert {k: v.shape for k, v in out.items()} == {k: (channels, samples) for k in sources}
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(np.sum(list(out.values()), axis=0), mix, atol=1e-5)  # float32 STFT round trip
    assert np.max(np.abs(out["silent"])) < 1e-6  # a silent source gets a zero mask
    for k, v in before[0].items():
        np.testing.assert_array_equal(sources[k], v)
    np.testing.assert_array_equal(mix, before[1])


def test_eval_command_prints_a_table_and_writes_json(two_stem, tmp_path, capsys):
    from bridge.cli import main as cli

    refs, _ = two_stem
    assert cli(["eval", "--model", "oracle", "--references", str(refs), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "vocals" in out and "SI-SDR" in out
    data = json.loads((tmp_path / "s.json").read_text())
    # Two equal white noises: the ideal ratio mask only has chance fluctuations to work with (5.6 dB here).
    assert 3 < data["median"]["vocals"]["sdr"] < 9
    assert cli(["eval", "--model", "oracle", "--references", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_sir_sar_isr_follow_their_definitions(two_stem, rng):
    """Each BSS Eval v4 ratio isolates one kind of error (Vincent et al. 2006): mixing in 10 % of
    the other source costs SIR 20 dB and nothing else; adding 10 % of a noise no reference holds
    costs SAR 20 dB; halving the estimate is a pure spatial (gain) distortion, ISR 6.02 dB. The
    expected values come from the definitions (equal-power white noises), not from museval."""
    refs, stems = two_stem
    v, a = stems["vocals"], stems["accompaniment"]
    other = noise(rng, 2, v.shape[1])
    cases = {
        "interference": ({"vocals": v + 0.1 * a, "instrumental": a + 0.1 * v}, "sir"),
        "artifacts": ({"vocals": v + 0.1 * other, "instrumental": a + 0.1 * noise(rng, 2, v.shape[1])}, "sar"),
        "gain": ({"vocals": 0.5 * v, "instrumental": 0.5 * a}, "isr"),
    }
    expected = {"sir": 20.0, "sar": 20.0, "isr": 20 * math.log10(2)}
    for name, (estimates, metric) in cases.items():
        report = evaluate(FakeSeparator({k: e.astype(np.float32) for k, e in estimates.items()}), refs)
        row = next(s for s in report.scores if s.stem == "vocals")
        assert getattr(row, metric) == pytest.approx(expected[metric], abs=0.6), (name, row)
        for other_metric in {"sir", "sar", "isr"} - {metric}:  # the other kinds of error stay far smaller
            assert getattr(row, other_metric) > expected[metric] + 10, (name, other_metric, row)
        data = report.to_json()
        assert set(data["songs"]["song"]["vocals"]) == {"sdr", "sir", "sar", "isr", "si_sdr", "frames"}
        assert data["median"]["vocals"][metric] == pytest.approx(getattr(row, metric), abs=1e-3)
    header = report.table().splitlines()[0].split()
    assert header == ["song", "stem", "SDR", "SIR", "SAR", "ISR", "SI-SDR"]
