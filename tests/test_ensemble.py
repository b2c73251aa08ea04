"""Ensembles (issue 22): per-stem model choice and several models combined, with every model's
stems in the stem cache.

The models are real: the weight-free ``dsp`` separator and tiny ONNX MDX models built in
conftest (``lowpass``, ``nonlinear``, ``identity-voc``, and a ``scale`` one built here). Every
method is checked against a direct numpy computation of the README's definition, written here
without the library's code (the STFT by explicit frame loops).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import onnx_models
from conftest import DIM_F, DIM_T, N_FFT, assert_streaming_equals_one_pass, noise
from bridge.audio import files
from bridge.batch.jobs import RunSpec, check_session, separate_parts
from bridge.errors import ModelError, PresetError
from bridge.preset.session import load, parse
from bridge.quality.evaluate import compare, evaluate
from bridge.separation import load_ensemble, load_separator
from bridge.separation.ensemble import METHODS, EnsembleSeparator, Part
from test_batch import audio_files, dask_cluster, run_record, stembridge, write_song  # noqa: F401 (a fixture)

SR = 44100


@pytest.fixture(scope="module")
def models(models_dir):
    """Three real separators giving vocals and instrumental, with different stems."""
    return {"dsp": load_separator("dsp"), "lowpass": load_separator(str(models_dir / "lowpass.yaml")),
            "nonlinear": load_separator(str(models_dir / "nonlinear.yaml"))}


@pytest.fixture(scope="module")
def song():
    rng = np.random.default_rng(2022)
    n = 3 * SR + 517  # not a multiple of the STFT hop, nor of a segment
    t = np.arange(n) / SR
    tone = 0.4 * np.sin(2 * np.pi * 330 * t)
    return np.stack([tone + 0.1 * rng.standard_normal(n), 0.7 * tone + 0.1 * rng.standard_normal(n)]).astype(np.float32)


# --- the definitions, computed directly ------------------------------------------------------------

def _hann(n):
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic


def stft(x, n_fft=2048, hop=1024):
    """Centred, zero-padded, periodic Hann: frames 0 .. len // hop, one at a time."""
    pad = np.pad(x.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)))
    return np.stack([np.fft.rfft(_hann(n_fft) * pad[:, t * hop:t * hop + n_fft], axis=-1)
                     for t in range(1 + x.shape[1] // hop)], axis=1)  # (channels, frames, bins)


def istft(spec, length, n_fft=2048, hop=1024):
    """Least squares: overlap-added window * irfft, divided by the summed squared window."""
    w = _hann(n_fft)
    out = np.zeros((spec.shape[0], (spec.shape[1] - 1) * hop + n_fft))
    norm = np.zeros(out.shape[1])
    for t in range(spec.shape[1]):
        out[:, t * hop:t * hop + n_fft] += w * np.fft.irfft(spec[:, t], n=n_fft, axis=-1)
        norm[t * hop:t * hop + n_fft] += w ** 2
    keep = slice(n_fft // 2, n_fft // 2 + length)
    return out[:, keep] / norm[keep]


def by_magnitude(specs, pick):
    """Per bin, the complex value of the model ``pick`` chooses from the magnitudes."""
    mags = np.abs(specs)
    index = pick(mags)
    return np.take_along_axis(specs, index[np.newaxis], axis=0)[0]


def uvr_fold(specs, smaller: bool):
    out = specs[0]
    for s in specs[1:]:
        out = np.where(np.abs(s) <= np.abs(out), s, out) if smaller else np.where(np.abs(s) >= np.abs(out), s, out)
    return out


def definition(method, stems, weights):
    x = np.stack(stems).astype(np.float64)
    w = np.ones(len(stems)) if weights is None else np.asarray(weights, np.float64)
    if method == "avg_wave":
        return (w[:, None, None] * x).sum(0) / w.sum()
    if method == "median_wave":
        return np.median(x, axis=0)
    if method in ("min_wave", "max_wave"):
        index = (np.argmin if method == "min_wave" else np.argmax)(np.abs(x), axis=0)
        return np.take_along_axis(x, index[np.newaxis], axis=0)[0]
    if method == "ensemble_wav":
        out = []
        for start in range(0, x.shape[2], SR):  # one-second segments, each whole from the quietest model
            seg = x[:, :, start:start + SR]
            out.append(seg[np.argmin([np.mean(np.abs(s)) for s in seg])])
        return np.concatenate(out, axis=1)
    specs = np.stack([stft(s) for s in x])
    combined = {
        "avg_fft": lambda: (w[:, None, None, None] * specs).sum(0) / w.sum(),
        "median_fft": lambda: np.median(specs.real, axis=0) + 1j * np.median(specs.imag, axis=0),
        "min_fft": lambda: by_magnitude(specs, lambda m: np.argmin(m, axis=0)),
        "max_fft": lambda: by_magnitude(specs, lambda m: np.argmax(m, axis=0)),
        "uvr_min_spec": lambda: uvr_fold(specs, smaller=True),
        "uvr_max_spec": lambda: uvr_fold(specs, smaller=False),
    }[method]()
    return istft(combined, x.shape[2])


CASES = [(m, None) for m in METHODS] + [("avg_wave", (2.0, 1.0, 0.5)), ("avg_fft", (0.0, 3.0, 1.0))]


@pytest.mark.parametrize("method,weights", CASES, ids=[f"{m}-{w}" for m, w in CASES])
def test_each_method_equals_its_definition_computed_directly(models, song, method, weights):
    own = {name: sep(song, SR) for name, sep in models.items()}
    ensemble = EnsembleSeparator(models, [Part(("vocals", "instrumental"), tuple(models), method, weights)])
    before = song.copy()
    got = ensemble(song, SR)
    np.testing.assert_array_equal(song, before)  # the caller's array is not changed
    for stem in ("vocals", "instrumental"):
        expected = definition(method, [own[m][stem] for m in models], weights)
        assert got[stem].dtype == np.float32 and got[stem].shape == song.shape
        # float32 stems in, float32 out: rounding of a few ulp of the stems' peak (~0.6)
        np.testing.assert_allclose(got[stem], expected, atol=2e-6, rtol=0)
    assert not np.allclose(got["vocals"], own["dsp"]["vocals"], atol=1e-3)  # the models do differ


def test_min_and_max_spectral_methods_take_magnitude_and_phase_from_one_model(models_dir, song, tmp_path):
    """A model giving -0.5 x against one giving x: opposite phase, half the magnitude in every bin.
    max keeps x whole (not x's magnitude with a mixed phase), min keeps -0.5 x whole."""
    scaled = onnx_models.mdx_model(tmp_path / "scale.onnx", dim_f=DIM_F, dim_t=DIM_T, kind="scale", gain=-0.5)
    card = onnx_models.mdx_card(tmp_path / "minus-half.yaml", scaled, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T,
                                primary="vocals")
    members = {"ident": load_separator(str(models_dir / "identity-voc.yaml")), "half": load_separator(str(card))}
    own = {name: sep(song, SR)["vocals"] for name, sep in members.items()}
    np.testing.assert_allclose(own["half"], -0.5 * own["ident"], atol=1e-5)  # the premise
    for method, winner in (("max_fft", "ident"), ("uvr_max_spec", "ident"), ("min_fft", "half"),
                           ("uvr_min_spec", "half")):
        got = EnsembleSeparator(members, [Part(("vocals",), ("ident", "half"), method)])(song, SR)["vocals"]
        np.testing.assert_allclose(got, own[winner], atol=2e-6)  # STFT round trip of one model's stem
    avg = EnsembleSeparator(members, [Part(("vocals",), ("ident", "half"), "avg_fft")])(song, SR)["vocals"]
    np.testing.assert_allclose(avg, 0.25 * own["ident"], atol=2e-6)  # (x - 0.5 x) / 2


def test_ties_go_to_the_first_model_except_in_uvr_s_methods(models_dir, song, tmp_path):
    """x against -x: equal magnitudes in every bin and sample, so only the tie rule decides."""
    flipped = onnx_models.mdx_model(tmp_path / "flip.onnx", dim_f=DIM_F, dim_t=DIM_T, kind="scale", gain=-1.0)
    card = onnx_models.mdx_card(tmp_path / "flip.yaml", flipped, n_fft=N_FFT, dim_f=DIM_F, dim_t=DIM_T, primary="vocals")
    members = {"ident": load_separator(str(models_dir / "identity-voc.yaml")), "flip": load_separator(str(card))}
    own = {name: sep(song, SR)["vocals"] for name, sep in members.items()}
    np.testing.assert_array_equal(own["flip"], -own["ident"])  # the premise: an exact tie everywhere
    for method, winner in (("max_fft", "ident"), ("min_fft", "ident"), ("max_wave", "ident"), ("min_wave", "ident"),
                           ("uvr_max_spec", "flip"), ("uvr_min_spec", "flip")):
        got = EnsembleSeparator(members, [Part(("vocals",), ("ident", "flip"), method)])(song, SR)["vocals"]
        np.testing.assert_allclose(got, own[winner], atol=2e-6, err_msg=method)


def test_each_stem_from_its_own_model_is_that_model_s_stem_bit_for_bit(models, song):
    own = {name: sep(song, SR) for name, sep in models.items()}
    ensemble = EnsembleSeparator(models, [Part(("vocals",), ("lowpass",)), Part(("instrumental",), ("nonlinear",))])
    got = ensemble(song, SR)
    np.testing.assert_array_equal(got["vocals"], own["lowpass"]["vocals"])
    np.testing.assert_array_equal(got["instrumental"], own["nonlinear"]["instrumental"])
    assert set(ensemble.members) == {"lowpass", "nonlinear"}  # dsp is not asked for anything: it never runs
    assert ensemble.made_by() == {"vocals": "lowpass", "instrumental": "nonlinear"}


@pytest.mark.parametrize("channels", [1, 2])
def test_with_a_residual_the_stems_sum_to_the_mix(models, song, channels):
    x = song[:channels]
    ensemble = EnsembleSeparator(models, [Part(("vocals",), ("dsp", "lowpass", "nonlinear"), "max_fft")],
                                 residual="instrumental")
    got = ensemble(x, SR)
    np.testing.assert_allclose(got["vocals"] + got["instrumental"], x, atol=1e-6)  # float32 rounding
    without = EnsembleSeparator(models, [Part(("vocals",), ("dsp", "lowpass", "nonlinear"), "max_fft"),
                                         Part(("instrumental",), ("dsp",))])(x, SR)
    assert np.abs(without["vocals"] + without["instrumental"] - x).max() > 1e-3  # it is the residual that does it


@pytest.mark.parametrize("method", ["avg_fft", "max_wave", "ensemble_wav", "uvr_max_spec"])
def test_streaming_equals_one_pass(models, song, method):
    ensemble = EnsembleSeparator(models, [Part(("vocals",), ("dsp", "nonlinear"), method),
                                          Part(("instrumental",), ("lowpass",))])
    assert_streaming_equals_one_pass(ensemble, song, SR, [1, 333, 4096, 1023, 44100, 7])
    with_residual = EnsembleSeparator(models, [Part(("vocals",), ("dsp", "nonlinear"), method)],
                                      residual="instrumental")
    assert_streaming_equals_one_pass(with_residual, song, SR, [5000, 1, 20000])


def test_silence_in_gives_silence_out(models):
    x = np.zeros((2, 5000), np.float32)
    for method in METHODS:
        got = EnsembleSeparator(models, [Part(("vocals",), tuple(models), method)], residual="instrumental")(x, SR)
        assert all(not np.any(v) for v in got.values()), method


# --- presets and the command line: one line before any work, naming the key -----------------------

PARTS = ("  ensemble:\n"
         "    - {model: dsp, stems: [vocals]}\n"
         "    - {models: [dsp, LOWPASS], stems: [instrumental], method: avg_fft, weights: [1, 2]}\n")


def preset_text(models_dir, body: str = PARTS, extra: str = "") -> str:
    return ("version: 1\nseparator:\n" + body.replace("LOWPASS", str(models_dir / "lowpass.yaml")) + extra
            + "output: {tail_seconds: 0, bit_depth: 32, files: {mix: '{track}.mix.{ext}', stems: '{track}/{stem}.{ext}'}}\n")


@pytest.mark.parametrize("body,key,words", [
    (PARTS.replace("avg_fft", "avg_ftt"), "separator.ensemble[1].method", "unknown method 'avg_ftt'; did you mean 'avg_fft'"),
    (PARTS.replace("[1, 2]", "[1, 2, 3]"), "separator.ensemble[1].weights", "3 weights for 2 models"),
    (PARTS.replace("method: avg_fft", "method: median_wave"), "separator.ensemble[1].weights",
     "method 'median_wave' takes no weights"),
    (PARTS.replace(", method: avg_fft, weights: [1, 2]", ""), "separator.ensemble[1].method", "2 models need a method"),
    (PARTS.replace("stems: [vocals]", "stems: [instrumental]"), "separator.ensemble[1].stems",
     "stem 'instrumental' is already given by separator.ensemble[0]"),
])
def test_a_bad_ensemble_is_one_line_naming_the_key_at_parse_time(models_dir, body, key, words):
    with pytest.raises(PresetError) as caught:
        parse(yaml.safe_load(preset_text(models_dir, body)), source="p.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"p.yaml: {key}: ") and words in message, message


def test_a_model_not_giving_a_stem_and_a_stem_no_model_gives_are_named_before_loading(models_dir, tmp_path):
    bad_model = tmp_path / "bad.yaml"
    bad_model.write_text(preset_text(models_dir, PARTS.replace("stems: [vocals]", "stems: [vocals, drums]")))
    with pytest.raises(PresetError, match=r"bad.yaml: separator.ensemble\[0\].stems: model 'dsp' does not give stem "
                                          r"'drums'; it gives vocals, instrumental$"):
        check_session(load(bad_model))
    no_model = tmp_path / "nomodel.yaml"
    no_model.write_text(preset_text(models_dir, extra="stems:\n  piano: {gain_db: -3}\n"))
    with pytest.raises(PresetError, match=r"nomodel.yaml: stems.piano: no part of separator.ensemble gives stem 'piano'"):
        check_session(load(no_model))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(preset_text(models_dir, PARTS.replace("{model: dsp,", "{model: nosuchmodel,")))
    with pytest.raises(PresetError, match=r"unknown.yaml: separator.ensemble\[0\]: .*nosuchmodel"):
        check_session(load(unknown))
    both = tmp_path / "both.yaml"
    both.write_text(preset_text(models_dir, "  model: dsp\n" + PARTS))
    result = stembridge("preset", "check", both, check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "separator.model: give either a model or an ensemble" in result.stderr


def test_a_preset_with_an_ensemble_reads_back_equal(models_dir, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(preset_text(models_dir, extra="  residual: other\n"))
    session = load(path)
    again = parse(yaml.safe_load(session.to_yaml()), source=str(path))
    assert again.separator == session.separator and session.separator.residual == "other"
    assert session.separator.ensemble[1] == Part(("instrumental",), ("dsp", str(models_dir / "lowpass.yaml")),
                                                 "avg_fft", (1.0, 2.0))


@pytest.mark.parametrize("argv,words", [
    (["--ensemble", "avg"], "--ensemble: unknown method 'avg'"),
    (["--ensemble", "avg_wave", "--weights", "1"], "--weights: 1 weight for 2 models"),
    (["--ensemble", "max_fft", "--weights", "1,2"], "--weights: method 'max_fft' takes no weights"),
    ([], "2 --model values: combining models needs --ensemble METHOD"),
    (["--ensemble", "avg_wave", "--weights", "1,x"], "--weights 1,x: expected numbers"),
    (["--ensemble", "avg_wave", "--denoise"], "--denoise applies to MDX-Net models, and none of the --model values"),
    (["--ensemble", "avg_wave", "--invert"], "--invert applies to MDX-Net models, and none of the --model values"),
])
def test_separate_refuses_a_bad_ensemble_in_one_line_before_any_work(tmp_path, argv, words):
    song = write_song(tmp_path / "s.wav", 0.5, seed=1)
    result = stembridge("separate", song, "--model", "dsp", "--model", "default", *argv, "--out", tmp_path / "out",
                        check=False)
    assert result.returncode == 2 and words in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "out").exists()


# --- the stem cache: each model on its own entry -------------------------------------------------------

def test_another_method_or_weights_runs_no_model_and_a_damaged_entry_recomputes_that_model_only(models_dir, tmp_path):
    song = write_song(tmp_path / "in" / "s.wav", 3.0, seed=7)
    cache = tmp_path / "cache"
    low = str(models_dir / "lowpass.yaml")

    def separate(out, *extra, cached=True):
        where = ["--cache-dir", cache] if cached else ["--no-cache"]
        stembridge("separate", song, "--model", "dsp", "--model", low, *extra, "--out", tmp_path / out,
                   "--bit-depth", "32", *where)
        return run_record(tmp_path / out)["models"], audio_files(tmp_path / out)

    stembridge("separate", song, "--model", "dsp", "--out", tmp_path / "alone", "--cache-dir", cache)
    dsp_entry = {p.parent for p in cache.rglob("entry.json")}
    assert len(dsp_entry) == 1  # the dsp model's own entry, which the ensemble reuses
    first, _ = separate("first", "--ensemble", "avg_wave")
    assert first == {"dsp": {"calls": 0, "cached": 1, "seconds": first["dsp"]["seconds"]},
                     "lowpass": {"calls": 1, "cached": 0, "seconds": first["lowpass"]["seconds"]}}
    for extra in (["--ensemble", "avg_wave", "--weights", "3,1"], ["--ensemble", "uvr_min_spec"],
                  ["--ensemble", "median_wave"]):
        counts, got = separate("again", *extra)
        assert [(m["calls"], m["cached"]) for m in counts.values()] == [(0, 1), (0, 1)], extra  # no model ran
        _, fresh = separate("fresh", *extra, cached=False)
        assert got == fresh  # from the cache, bit for bit what the models give
    # Damage the dsp entry: dsp runs again (with a warning), lowpass still comes from the cache.
    stem_file = next(next(iter(dsp_entry)).glob("*.f32"))
    stem_file.write_bytes(stem_file.read_bytes()[:-8])
    result = stembridge("separate", song, "--model", "dsp", "--model", low, "--ensemble", "max_wave", "--out",
                        tmp_path / "damaged", "--cache-dir", cache)
    counts = run_record(tmp_path / "damaged")["models"]
    assert [(m["calls"], m["cached"]) for m in counts.values()] == [(1, 0), (0, 1)]
    assert "damaged" in result.stderr
    assert "1 model call, 1 from the stem cache" in result.stdout


def test_a_render_says_which_model_made_each_stem_in_manifest_notes_and_bwf(models_dir, tmp_path):
    preset = tmp_path / "ens.yaml"
    preset.write_text(preset_text(models_dir).replace("bit_depth: 32,", "bit_depth: 32, project: reaper,"))
    song = write_song(tmp_path / "in" / "s.wav", 2.0, seed=3)
    result = stembridge("render", preset, song, "--out", tmp_path / "out", "--no-cache")
    assert "models: 2 model calls, 0 from the stem cache" in result.stdout
    assert re.search(r"dsp: 1 separated, 0 from the cache, \d+\.\d s", result.stdout)
    manifest = json.loads((tmp_path / "out" / "s.mix.manifest.json").read_text())
    made = {"vocals": "dsp", "instrumental": f"avg_fft(dsp, {models_dir / 'lowpass.yaml'}; 1, 2)"}
    assert manifest["model"]["made_by"] == made
    assert set(manifest["model"]["members"]) == {"dsp", str(models_dir / "lowpass.yaml")}
    project = (tmp_path / "out" / "s" / "s.rpp").read_text()
    for stem, who in made.items():
        assert f"Separated by {who}" in project
    head = (tmp_path / "out" / "s" / "instrumental.wav").read_bytes()[:4096]  # the bext chunk's Description
    assert b"stem instrumental (prefader); model avg_fft(dsp, " in head


def test_render_from_the_cache_equals_a_fresh_render_and_the_stems_match_the_models(models_dir, tmp_path):
    preset = tmp_path / "ens.yaml"
    preset.write_text(preset_text(models_dir))
    song = write_song(tmp_path / "in" / "s.wav", 2.0, seed=4)
    stembridge("render", preset, song, "--out", tmp_path / "a", "--cache-dir", tmp_path / "cache")
    second = stembridge("render", preset, song, "--out", tmp_path / "b", "--cache-dir", tmp_path / "cache")
    assert "from cached stems" in second.stdout and "0 model calls, 2 from the stem cache" in second.stdout
    assert audio_files(tmp_path / "a") == audio_files(tmp_path / "b")
    # The vocals of the ensemble are the dsp model's own, bit for bit.
    stembridge("separate", song, "--model", "dsp", "--out", tmp_path / "dsp", "--bit-depth", "32", "--no-cache")
    np.testing.assert_array_equal(files.read(tmp_path / "a" / "s" / "vocals.wav")[0],
                                  files.read(tmp_path / "dsp" / "s" / "vocals.wav")[0])


# --- batches: --jobs 2 and Dask give what one process gives ------------------------------------------

@pytest.fixture
def ensemble_album(tmp_path, models_dir):
    for i in range(3):
        write_song(tmp_path / "lib" / f"{i}.wav", 1.5, seed=30 + i)
    preset = tmp_path / "ens.yaml"
    body = "  ensemble:\n    - {models: [dsp, LOWPASS], stems: [vocals], method: avg_fft, weights: [1, 2]}\n"
    preset.write_text(preset_text(models_dir, body, extra="  residual: instrumental\n"))
    return tmp_path / "lib", preset


def test_two_jobs_equal_one_job(ensemble_album, tmp_path):
    lib, preset = ensemble_album
    stembridge("render", preset, lib, "--out", tmp_path / "one", "--no-cache", "--jobs", "1")
    stembridge("render", preset, lib, "--out", tmp_path / "two", "--no-cache", "--jobs", "2")
    one, two = audio_files(tmp_path / "one"), audio_files(tmp_path / "two")
    assert one == two and len(one) == 9  # 3 songs x (mix, vocals, instrumental)


def test_a_dask_run_equals_the_local_run(dask_cluster, ensemble_album, tmp_path):  # noqa: F811
    lib, preset = ensemble_album
    stembridge("render", preset, lib, "--out", tmp_path / "local", "--no-cache")
    result = stembridge("render", preset, lib, "--out", tmp_path / "remote", "--no-cache",
                        "--scheduler", dask_cluster.address)
    assert "3 rendered" in result.stdout
    assert audio_files(tmp_path / "local") == audio_files(tmp_path / "remote")
    assert {s["status"] for s in run_record(tmp_path / "remote")["songs"]} == {"rendered"}
    assert all(len(s["models"]) == 2 for s in run_record(tmp_path / "remote")["songs"])  # both models ran


# --- eval: models and ensembles in one table -----------------------------------------------------------

def test_eval_scores_each_model_and_ensemble_per_stem_in_one_table(models, tmp_path, song):
    refs = tmp_path / "refs" / "one"
    refs.mkdir(parents=True)
    vocals = 0.5 * song
    sf.write(str(refs / "mixture.wav"), song.T, SR, subtype="FLOAT")
    sf.write(str(refs / "vocals.wav"), vocals.T, SR, subtype="FLOAT")
    sf.write(str(refs / "instrumental.wav"), (song - vocals).T, SR, subtype="FLOAT")
    ensemble = EnsembleSeparator(models, [Part(("vocals", "instrumental"), ("dsp", "lowpass"), "avg_wave")])
    result = compare(models, tmp_path / "refs", ensembles={"avg": ensemble})
    table = result.table()
    for name in ("dsp", "lowpass", "nonlinear", "avg"):
        for stem in ("vocals", "instrumental"):
            assert re.search(rf"^{stem} +{name} ", table, re.M), (name, stem)
    # The ensemble scored from the models' stored stems equals the ensemble run on its own.
    alone = evaluate(ensemble, tmp_path / "refs")
    assert result.reports["avg"].medians() == alone.medians()
    assert result.reports["dsp"].medians() == evaluate(models["dsp"], tmp_path / "refs").medians()


def test_eval_command_takes_several_models_and_ensembles(models_dir, tmp_path, song):
    refs = tmp_path / "refs" / "one"
    refs.mkdir(parents=True)
    sf.write(str(refs / "mixture.wav"), song.T, SR, subtype="FLOAT")
    sf.write(str(refs / "vocals.wav"), (0.5 * song).T, SR, subtype="FLOAT")
    low = str(models_dir / "lowpass.yaml")
    result = stembridge("eval", "--model", "dsp", "--model", low, "--ensemble", "avg_wave", "--ensemble", "max_fft",
                        "--references", tmp_path / "refs", "--quiet", "--json", tmp_path / "scores.json")
    rows = [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("vocals")]
    assert rows == [["vocals", "dsp"], ["vocals", low], ["vocals", "avg_wave(dsp,"], ["vocals", "max_fft(dsp,"]]
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 4


def test_separate_parts_take_the_stems_every_model_gives(models_dir):
    parts = separate_parts(RunSpec(kind="separate", out_dir=Path("."), models=("default-4stems", "dsp"),
                                   ensemble="avg_wave"))
    assert parts == (Part(("vocals", "instrumental"), ("default-4stems", "dsp"), "avg_wave"),)
    with pytest.raises(ModelError, match="give --model twice or more"):
        separate_parts(RunSpec(kind="separate", out_dir=Path("."), models=("dsp",), ensemble="avg_wave"))


def test_load_ensemble_checks_every_part_before_loading_a_model(models_dir):
    with pytest.raises(ModelError, match=r"ens\[1\].stems: model 'dsp' does not give stem 'drums'"):
        load_ensemble([Part(("vocals",), ("dsp",)), Part(("drums",), ("dsp", "default"), "avg_wave")], where="ens")
    ensemble = load_ensemble([Part(("vocals",), ("dsp",)), Part(("instrumental",), ("default-4stems",))])
    x = noise(np.random.default_rng(3), 2, 20000)
    got = ensemble(x, SR)
    np.testing.assert_array_equal(got["instrumental"], _four_stem_instrumental(ensemble.members["default-4stems"], x))


def _four_stem_instrumental(separator, x):
    """A 4-stem model's instrumental: the sum of its other stems (a derived stem)."""
    stems = separator(x, SR)
    return np.sum([stems[s] for s in stems if s != "vocals"], axis=0, dtype=np.float32)
