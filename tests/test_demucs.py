"""The demucs family against the ``demucs`` package itself, on real music.

Random-weight, reduced-width HTDemucs files (``tests/demucs_models.py``: the published arguments
with fewer channels, 2 transformer layers and a 1.95 s segment) are imported with
:func:`bridge.importers.demucs.import_demucs`; Demucs loads the same files from the same folder as
``demucs --repo`` does (``demucs.pretrained.get_model``) and runs ``apply_model`` (overlap 0.25).
SNRs are per stem, in float32, computed here.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("demucs")
pytest.importorskip("omegaconf")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402
from conftest import DATA  # noqa: E402

import demucs_models as dm  # noqa: E402
from bridge.errors import ModelError  # noqa: E402
from bridge.separation import load_separator, with_sums  # noqa: E402
from bridge.separation.demucs_apply import shift_delays  # noqa: E402
from bridge.separation.models import load_card  # noqa: E402

SR = 44100
MIN_DB = 60.0  # float32 ONNX + numpy STFT against torch


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


@pytest.fixture(scope="module")
def song():
    """4.3 s of real music (an awkward length: 189,630 samples, not a multiple of any stride)."""
    audio, rate = sf.read(DATA / "musdb7-80s-rock" / "mixture.flac", dtype="float32", always_2d=True)
    assert rate == SR
    return np.ascontiguousarray(audio.T[:, : int(4.3 * SR)])


@pytest.fixture(scope="module")
def repo():
    """A Demucs --repo folder (htdemucs, htdemucs_6s, a one-hot 2-model bag), imported into stembridge."""
    return dm.shared_repo()


def demucs_reference(folder, name, mix, *, shifts=0, prefix=0):
    """``apply_model`` of Demucs's own loader and code; ``prefix`` zeros before the mix, cut after."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    model = get_model(name, repo=folder)
    x = torch.from_numpy(np.pad(mix, ((0, 0), (prefix, 0))))[None]
    with torch.no_grad():
        out = apply_model(model, x, shifts=shifts, overlap=0.25, split=True)[0].numpy()
    return out[..., prefix:], list(model.sources)


@pytest.mark.parametrize("name", ["htdemucs", "htdemucs_6s", "tiny_ft", "hdemucs_mmi"])
def test_stems_equal_demucs_apply_model(repo, song, name):
    folder, models = repo
    reference, sources = demucs_reference(folder, name, song)
    separator = load_separator(load_card(models / f"{name}.yaml"), shifts=0, threads=2)
    before = song.copy()
    stems = separator(song, SR)
    np.testing.assert_array_equal(song, before)  # the caller's array is untouched
    assert separator.stems == tuple(sources)
    for k, stem in enumerate(sources):
        assert stems[stem].shape == song.shape and stems[stem].dtype == np.float32
        db = snr_db(reference[k], stems[stem])
        print(f"{name} {stem}: {db:.1f} dB")
        assert db >= MIN_DB, (name, stem, db)


def test_the_network_runs_through_the_io_binding_runner_bit_for_bit(repo, song, monkeypatch):
    """Demucs's two-input network goes through the same IO-binding Runner as the other families
    (the path a GPU run takes); on the CPU its stems equal session.run's bit for bit."""
    from bridge.separation import runtime

    _, models = repo
    separator = load_separator(load_card(models / "htdemucs.yaml"), shifts=0, threads=2)
    calls = []
    real = runtime.Runner._run
    monkeypatch.setattr(runtime.Runner, "_run", lambda self, feeds: calls.append(sorted(feeds)) or real(self, feeds))
    bound = separator(song[:, :2 * SR], SR)
    (network,) = separator.engine.networks
    assert calls and all(names == sorted([network.mix_name, network.spec_name]) for names in calls)
    monkeypatch.setattr(runtime.Runner, "_run", lambda self, feeds: self.session.run(None, feeds))
    plain = separator(song[:, :2 * SR], SR)
    for stem in separator.stems:
        np.testing.assert_array_equal(bound[stem], plain[stem])


@pytest.fixture(scope="module")
def long_song():
    """16 s of real music (Cristina Vane, "So Easy"): with the reduced hdemucs_mmi's 11 s segment, a
    whole chunk (both BLSTMs frame their input) and a last chunk of 7.75 s (only the first does)."""
    audio, rate = sf.read(DATA / "cristina-vane-so-easy" / "mixture.flac", dtype="float32", always_2d=True)
    assert rate == SR
    return np.ascontiguousarray(audio.T[:, 10 * SR: 26 * SR])


def test_hdemucs_runs_the_last_chunk_at_its_own_length_as_demucs(repo, long_song):
    """HDemucs has no valid length: Demucs runs the last chunk as it is (no padding to the segment).
    stembridge does the same; padding it to the segment as for HTDemucs would not match."""
    folder, models = repo
    reference, sources = demucs_reference(folder, "hdemucs_mmi", long_song)
    separator = load_separator(load_card(models / "hdemucs_mmi.yaml"), shifts=0, threads=2)
    stems = separator(long_song, SR)
    stride = int(0.75 * dm.HDEMUCS_SEGMENT * SR)
    assert 0 < long_song.shape[1] - stride < dm.HDEMUCS_SEGMENT * SR  # the last chunk is shorter
    for k, stem in enumerate(sources):
        db = snr_db(reference[k], stems[stem])
        print(f"hdemucs_mmi, 16 s, {stem}: {db:.1f} dB")
        assert db >= MIN_DB, (stem, db)
    (network,) = separator.engine.networks
    assert not network.fixed  # the graph takes any length
    network.fixed = True  # what HTDemucs does: the last chunk centred in a segment of audio and zeros
    try:
        padded = separator(long_song, SR)
    finally:
        network.fixed = False
    worst = min(snr_db(reference[k], padded[s]) for k, s in enumerate(sources))
    print(f"hdemucs_mmi, 16 s, last chunk padded to the segment: worst stem {worst:.1f} dB")
    assert worst < 40


def test_a_bag_with_one_hot_weights_runs_each_specialist_for_its_own_stems(repo, song):
    folder, models = repo
    card = load_card(models / "tiny_ft.yaml")
    separator = load_separator(card, shifts=0, threads=2)
    stream = separator.stream(sample_rate=SR, channels=2)
    assert len(stream._ola._passes) == 2  # one split per model, no shifts
    # drums/other come from the first specialist alone: its own output, not a mix of both.
    dm.save_bag(folder, "first_alone", ["f7e0c4bc"], segment=1.5)
    alone, _ = demucs_reference(folder, "first_alone", song)
    stems = separator(song, SR)
    assert snr_db(alone[0], stems["drums"]) >= MIN_DB and snr_db(alone[2], stems["other"]) >= MIN_DB
    assert snr_db(alone[1], stems["bass"]) < 20  # bass is the other model's
    # A vocals specialist (htdemucs_ft's last row) with the leftover in vocals has nothing left to
    # do: it is not run.
    demucs = dict(card.demucs, weights=[[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    leftover = _with_card(models, "tiny_ft", "tiny_ft_left", residual="vocals", demucs=demucs)
    stream = load_separator(leftover, shifts=0, threads=2).stream(sample_rate=SR, channels=2)
    assert len(stream._ola._passes) == 1


def test_demucs_shifted_run_is_the_mix_delayed_by_zeros(repo, song):
    """Demucs's shift trick, read from its code: offset o = randint(0, 0.5 s) means the split runs on
    0.5 s - o zeros followed by the song, and that much is cut from the output. Checked on Demucs itself,
    so the reference of the next test is Demucs's definition."""
    folder, _ = repo
    mix = song[:, : SR * 2]
    random.seed(3)
    shifted, _ = demucs_reference(folder, "htdemucs", mix, shifts=1)
    random.seed(3)
    delay = int(0.5 * SR) - random.randint(0, int(0.5 * SR))
    assert delay > 0
    by_hand, _ = demucs_reference(folder, "htdemucs", mix, prefix=delay)
    np.testing.assert_allclose(shifted, by_hand, atol=1e-6)


@pytest.mark.parametrize("name", ["htdemucs", "hdemucs_mmi"])
def test_shifts_average_the_shifted_runs_and_a_seed_repeats(repo, song, name):
    folder, models = repo
    mix = song[:, : SR * 2]
    card = load_card(models / f"{name}.yaml")
    delays = shift_delays(5, 2, 1, SR)[0]
    assert len(set(delays)) == 2 and all(0 <= d <= SR // 2 for d in delays)
    runs = [demucs_reference(folder, name, mix, prefix=int(d))[0] for d in delays]
    expected = np.mean(runs, axis=0)
    stems = load_separator(card, shifts=2, seed=5, threads=2)(mix, SR)
    for k, stem in enumerate(card.stems):
        assert snr_db(expected[k], stems[stem]) >= MIN_DB, stem
    again = load_separator(card, shifts=2, seed=5, threads=2)(mix, SR)
    other_seed = load_separator(card, shifts=2, seed=6, threads=2)(mix, SR)
    for stem in card.stems:
        np.testing.assert_array_equal(again[stem], stems[stem])  # same seed, same output
    assert any(not np.array_equal(other_seed[s], stems[s]) for s in card.stems)


def test_streaming_equals_one_pass(repo, song):
    _, models = repo
    separator = load_separator(load_card(models / "tiny_ft.yaml"), shifts=1, seed=2, threads=2)
    whole = separator(song, SR)
    stream = separator.stream(sample_rate=SR, channels=2)
    parts, at = [], 0
    for size in (1, 4095, 30000, 70001, 7):
        parts.append(stream.process(song[:, at:at + size]))
        at += size
    parts.append(stream.process(song[:, at:]))
    parts.append(stream.finish())
    for stem in whole:
        np.testing.assert_array_equal(np.concatenate([p[stem] for p in parts], axis=1), whole[stem])
    # Memory is flat: what a stream holds is bounded by the segment, not the song.
    split = stream._ola._passes[0][0]
    assert split._input.shape[1] <= 2 * split.segment + SR and split._acc.shape[-1] <= 2 * split.segment


def test_hdemucs_streaming_equals_one_pass(repo, long_song):
    """The last chunks at their own lengths, whole chunks batched, fed in odd blocks."""
    _, models = repo
    separator = load_separator(load_card(models / "hdemucs_mmi.yaml"), shifts=0, threads=2, batch_size=2)
    whole = separator(long_song, SR)
    stream = separator.stream(sample_rate=SR, channels=2)
    parts, at = [], 0
    for size in (3, 300001, 7, 99999):
        parts.append(stream.process(long_song[:, at:at + size]))
        at += size
    parts.append(stream.process(long_song[:, at:]))
    parts.append(stream.finish())
    for stem in whole:
        np.testing.assert_array_equal(np.concatenate([p[stem] for p in parts], axis=1), whole[stem])


def test_leftover_stem_makes_the_stems_sum_to_the_mix(repo, song):
    _, models = repo
    plain = load_separator(load_card(models / "htdemucs.yaml"), shifts=0, threads=2)(song, SR)
    assert np.max(np.abs(sum(plain.values()) - song)) > 1e-2  # Demucs's stems do not sum to the mix
    card = _with_card(models, "htdemucs", "htdemucs_left", residual="other")
    stems = load_separator(card, shifts=0, threads=2)(song, SR)
    np.testing.assert_allclose(sum(stems.values()), song, atol=2e-6)  # float32 rounding of a 4-term sum
    for stem in ("drums", "bass", "vocals"):
        np.testing.assert_array_equal(stems[stem], plain[stem])
    np.testing.assert_allclose(stems["other"], plain["other"] + song - sum(plain.values()), atol=2e-6)


def test_instrumental_is_the_sum_of_the_non_vocal_stems(repo, song):
    _, models = repo
    stems = load_separator(load_card(models / "htdemucs_6s.yaml"), shifts=0, threads=2)(song[:, :SR], SR)
    summed = with_sums(stems, ["instrumental"])
    parts = [stems[s] for s in ("drums", "bass", "other", "guitar", "piano")]
    np.testing.assert_allclose(summed["instrumental"], np.sum(parts, axis=0), atol=1e-6)


def test_whole_track_normalisation_of_demucs_cli_is_nearly_a_no_op(repo, song):
    """``demucs.api`` standardises the whole track before apply_model; stembridge streams without it
    (the model standardises each chunk). The difference, measured on real music, stays small."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    folder, models = repo
    model = get_model("htdemucs", repo=folder)
    wav = torch.from_numpy(song)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        cli = apply_model(model, ((wav - mean) / std)[None], shifts=0, overlap=0.25)[0] * std + mean
    stems = load_separator(load_card(models / "htdemucs.yaml"), shifts=0, threads=2)(song, SR)
    for k, stem in enumerate(model.sources):
        db = snr_db(cli[k].numpy(), stems[stem])
        print(f"whole-track normalisation, {stem}: {db:.1f} dB")
        assert db >= 40, (stem, db)


def test_card_errors_are_one_line(repo, tmp_path):
    _, models = repo
    data = yaml.safe_load((models / "tiny_ft.yaml").read_text())
    for change, says in ((lambda d: d["demucs"].update(weights=[[1, 0, 0, 0]]), "weights"),
                         (lambda d: d["demucs"].update(weights=[[1, 0, 0, 0], [0, 0, 1, 1]]), "bass"),
                         (lambda d: d.update(residual="piano"), "residual"),
                         (lambda d: d["demucs"]["models"][0].update(segment=100), "segment"),
                         (lambda d: d.pop("demucs"), "demucs")):
        bad = yaml.safe_load(yaml.safe_dump(data))
        change(bad)
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ModelError, match=says) as info:
            load_card(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ModelError, match="shifts"):
        load_separator(load_card(models / "htdemucs.yaml"), shifts=-1)
    with pytest.raises(ModelError, match="leftover 'guitar'"):
        load_separator(load_card(models / "htdemucs.yaml"), leftover="guitar")
    with pytest.raises(ModelError, match="only for Demucs models"):
        load_separator("dsp", shifts=2)


def _with_card(models, name, new, **changes):
    """A copy of card ``name`` as ``new`` with ``changes`` (the ONNX files are shared)."""
    data = yaml.safe_load((models / f"{name}.yaml").read_text())
    data.update(changes, name=new)
    path = models / f"{new}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_card(path)


def test_mono_input_gives_mono_stems(repo, song):
    _, models = repo
    mono = song[:1, :SR]
    stems = load_separator(load_card(models / "htdemucs.yaml"), shifts=0, threads=2)(mono, SR)
    assert all(s.shape == mono.shape for s in stems.values())


@pytest.mark.parametrize("name", ["no-guitar", "piano-only"])
def test_six_stem_presets_render_with_an_imported_htdemucs_6s(repo, song, name, tmp_path, monkeypatch, capsys):
    from bridge.audio import files
    from bridge.cli import main as cli
    from conftest import REPO

    _, models = repo
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(models))  # the reduced htdemucs_6s, imported under that name
    preset = REPO / "presets" / "6stems" / f"{name}.yaml"
    assert cli(["preset", "check", str(preset)]) == 0
    assert "htdemucs_6s" in capsys.readouterr().out
    path = tmp_path / "song.wav"
    files.write(path, song[:, :SR], SR, bit_depth=32)
    assert cli(["render", str(preset), str(path), "--out", str(tmp_path / "out"), "--set", "output.format=wav",
                "--set", "output.bit_depth=32", "--quiet"]) == 0
    (out,) = (tmp_path / "out").rglob("*.wav")
    mix, rate = files.read(out)
    card = load_card(models / "htdemucs_6s.yaml")
    if name == "no-guitar":  # leftover in other: everything but the guitar estimate
        stems = load_separator(card, leftover="other", threads=2)(song[:, :SR], SR)
        expected = song[:, :SR] - stems["guitar"]
    else:
        expected = load_separator(card, threads=2)(song[:, :SR], SR)["piano"]
    np.testing.assert_allclose(mix, expected, atol=1e-5)  # float32 sums, float WAV


def test_separate_takes_shifts_on_the_command_line(repo, song, tmp_path, monkeypatch, capsys):
    """``--shifts N`` is Demucs's shift trick with the default seed, as the Python API's ``shifts``;
    for another family, or out of range, it is one line and exit 2 before any work."""
    from bridge.audio import files
    from bridge.cli import main as cli

    _, models = repo
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(models))
    path = tmp_path / "song.wav"
    files.write(path, song[:, :SR], SR, bit_depth=32)
    out = tmp_path / "out"
    assert cli(["separate", str(path), "--model", "htdemucs", "--shifts", "2", "--bit-depth", "32", "--out", str(out),
                "--no-cache", "--quiet"]) == 0
    expected = load_separator(load_card(models / "htdemucs.yaml"), shifts=2)(song[:, :SR], SR)
    one = load_separator(load_card(models / "htdemucs.yaml"), shifts=1)(song[:, :SR], SR)
    for stem in ("drums", "vocals"):
        written, _ = files.read(out / "song" / f"{stem}.wav")
        np.testing.assert_allclose(written, expected[stem], atol=1e-6)  # float WAV of the same run
        assert snr_db(one[stem], written) < 80  # and not the default single shift
    capsys.readouterr()
    assert cli(["separate", str(path), "--model", "dsp", "--shifts", "2", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith("'dsp' is a dsp model; drop --shifts")
    assert cli(["separate", str(path), "--model", "htdemucs", "--shifts", "21", "--out", str(tmp_path / "x")]) == 2
    assert "0 to 20 runs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
