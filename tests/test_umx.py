"""Open-Unmix (the ``umx`` family): import, network and stems against openunmix 1.3.0, bad input, CLI.

The reference is openunmix's own code from its PyPI wheel (``tests/umx_models.py`` says exactly
what runs as published: ``model.py``, ``filtering.py`` and ``transforms.py`` all do; torchaudio,
which none of the code used here calls, is an empty module that raises if touched). The models are
umxhq's shape (4 targets, n_fft 4096, hop 1024, 16 kHz bandwidth, stereo, 3 bidirectional LSTM
layers) with the hidden size reduced from 512 to 32 for CI time, random weights and random
statistics, saved as openunmix's train.py saves a model. The audio is real music (MUSDB18's
"80s Rock" preview).
"""

from __future__ import annotations

import json

import pytest

from conftest import TORCH, need_data, need_module

torch = need_module("torch", TORCH)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

import umx_models  # noqa: E402
from bridge import load_separator  # noqa: E402
from bridge.cli import main as cli  # noqa: E402
from bridge.separation import umx  # noqa: E402
from bridge.separation.families import family  # noqa: E402
from bridge.separation.models import load_card  # noqa: E402

HIDDEN = 32
TARGETS = ("vocals", "drums", "bass", "other")
ROCK = Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb7-80s-rock"
#: The parity chunk: 1.1 s (48 frames), filtered in windows of 20 frames (openunmix's
#: wiener_win_len, 300 by default, made shorter than the chunk so that the windowing is compared too).
CHUNK, WINDOW = 47 * 1024, 20


def snr_db(reference, estimate) -> float:
    reference = np.asarray(reference, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


@pytest.fixture(scope="module")
def music():
    audio, rate = sf.read(str(need_data(ROCK / "mixture.flac")), dtype="float32", always_2d=True)
    assert rate == 44100
    return np.ascontiguousarray(audio.T)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """umxhq's shape at hidden 32 and a vocals-only model, imported through the CLI."""
    root = tmp_path_factory.mktemp("umx")
    nets = {t: umx_models.random_target(hidden_size=HIDDEN, seed=i) for i, t in enumerate(TARGETS)}
    folder = umx_models.save_model(root / "umxhq-small", nets, hidden_size=HIDDEN)
    vocals_only = umx_models.save_model(root / "vocals-only", {"vocals": nets["vocals"]}, hidden_size=HIDDEN)
    user = root / "user-models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEMBRIDGE_MODELS", str(user))
        assert cli(["models", "import", str(folder)]) == 0
        single = next(vocals_only.glob("vocals-*.pth"))
        assert cli(["models", "import", str(single), "--name", "umx-vocals"]) == 0
    return {"nets": nets, "folder": folder, "user": user, "single": single}


def card_with(models, model: str, tmp_path: Path, **changes) -> Path:
    """A copy of an imported card with ``changes`` (chunk_size also sets dim_t; umx options merge)."""
    data = yaml.safe_load((models["user"] / f"{model}.yaml").read_text())
    data["file"] = str(models["user"] / data["file"])
    if "chunk_size" in changes:
        changes["dim_t"] = changes["chunk_size"] // data["hop"] + 1
    data["umx"] = {**data["umx"], **changes.pop("umx", {})}
    data.update(changes)
    path = tmp_path / f"{model}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_import_writes_a_umx_card(models):
    card = yaml.safe_load((models["user"] / "umxhq-small.yaml").read_text())
    assert card["family"] == "umx" and card["stems"] == list(TARGETS) and card["residual"] is None
    assert (card["sample_rate"], card["n_fft"], card["hop"], card["audio_channels"]) == (44100, 4096, 1024, 2)
    assert card["umx"] == {"niter": 1, "softmask": False, "wiener_win_len": 300}  # openunmix's defaults
    assert card["imported"]["parity_db"] >= 60
    assert card["imported"]["config"]["vocals"]["hidden_size"] == HIDDEN
    single = yaml.safe_load((models["user"] / "umx-vocals.yaml").read_text())
    assert single["stems"] == ["vocals", "residual"] and single["residual"] == "residual"
    found = umx.recognise(models["folder"])
    assert found.family == "umx" and set(found.stems) == set(TARGETS)
    assert umx.recognise(models["single"]).stems == ("vocals",)


def test_network_matches_openunmix_on_real_music(models, music):
    """The ONNX graph against openunmix's OpenUnmix, on openunmix's own STFT magnitude: >= 80 dB."""
    reference = umx_models.reference_separator(models["nets"])
    with torch.no_grad():
        magnitude = reference.complexnorm(reference.stft(torch.from_numpy(music[None])))
        expected = {t: net(magnitude.clone()).numpy() for t, net in models["nets"].items()}
    session = ort.InferenceSession(str(models["user"] / "umxhq-small.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: magnitude.numpy()})[0]
    for i, target in enumerate(TARGETS):
        assert snr_db(expected[target], got[:, i]) >= 80, target


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("umxhq-small", dict(niter=1, softmask=False)),  # openunmix's defaults
    ("umxhq-small", dict(niter=0, softmask=True)),  # the ratio-mask start alone
    ("umx-vocals", dict(niter=2, softmask=False)),  # one target plus openunmix's residual, two EM iterations
])
def test_stems_match_openunmix_separator(models, music, tmp_path, name, options):
    """One chunk that openunmix's Separator runs whole: stems >= 60 dB against it."""
    path = card_with(models, name, tmp_path, chunk_size=CHUNK, umx={**options, "wiener_win_len": WINDOW})
    engine = umx.UmxEngine(load_card(path), threads=2)
    x = music[:, 44100: 44100 + CHUNK]
    targets = {t: models["nets"][t] for t in engine.targets}
    residual = engine.residual_stem is not None
    reference = umx_models.reference_separator(targets, niter=options["niter"], softmask=options["softmask"],
                                               residual=residual, wiener_win_len=WINDOW)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x[None])).numpy()[0]
    got = engine.run(x[None].copy())
    for i, target in enumerate(engine.targets):
        assert snr_db(expected[i], got[target][0]) >= 60, target
    if residual:
        # openunmix filters its residual as a source, and its stems then sum to the mix only up to
        # what the filter's regularisation (sqrt(1e-10) on the mixture covariance) drops, about
        # -45 dB here; stembridge's residual is the mix minus the targets, so it is openunmix's
        # plus that dropped part, and nothing else: the difference is what openunmix's sum misses.
        dropped = x - expected.sum(axis=0)
        ours = x - got["vocals"][0]
        assert snr_db(expected[-1] + dropped, ours) >= 60
        assert snr_db(x, expected.sum(axis=0)) > 30  # the dropped part is small


def test_stems_sum_to_the_mix_with_a_residual_and_the_input_is_kept(models, music, tmp_path):
    path = card_with(models, "umx-vocals", tmp_path, chunk_size=64 * 1024)
    separator = load_separator(str(path), threads=2)
    x = music[:, : 5 * 44100]
    before = x.copy()
    stems = separator(x, 44100)
    np.testing.assert_array_equal(x, before)
    assert set(stems) == {"vocals", "residual"} and all(s.shape == x.shape and s.dtype == np.float32 for s in stems.values())
    np.testing.assert_allclose(stems["vocals"] + stems["residual"], x, atol=1e-6)  # float32 rounding of the sum
    assert snr_db(x, stems["vocals"]) < 30  # and the vocals are not simply the mix


def _error(capsys, *argv) -> str:
    assert cli(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stembridge: error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, monkeypatch, capsys):
    user = tmp_path / "user"
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(user))
    single = models["single"]
    # A target without its JSON: the state dict alone is recognised, and refused.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / single.name).write_bytes(single.read_bytes())
    err = _error(capsys, "models", "import", alone / single.name)
    assert single.name in err and "no target JSON beside it (e.g. vocals.json" in err
    orphan = tmp_path / "orphan"
    umx_models.save_model(orphan, {"vocals": models["nets"]["vocals"], "bass": models["nets"]["bass"]}, hidden_size=HIDDEN)
    (orphan / "bass.json").unlink()
    assert "bass-" in (err := _error(capsys, "models", "import", orphan)) and "no target JSON for it" in err
    # A state dict that does not fit its JSON: the first differing key and both shapes.
    wider = tmp_path / "wider"
    umx_models.save_model(wider, {"vocals": models["nets"]["vocals"]}, hidden_size=HIDDEN)
    args = json.loads((wider / "vocals.json").read_text())
    args["args"]["hidden_size"] = 2 * HIDDEN
    (wider / "vocals.json").write_text(json.dumps(args))
    err = _error(capsys, "models", "import", wider)
    assert "'fc1.weight' is [32, 2974] in the state dict but [64, 2974] by the JSON" in err
    # A config for another family: a UVR VR model's parameters, and a RoFormer YAML given as --config.
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocals.pth").write_bytes(single.read_bytes())
    (other / "vocals.json").write_text(json.dumps({"bins": 768, "unstable_bins": 9, "sr": 44100, "band": {}}))
    err = _error(capsys, "models", "import", other / "vocals.pth")
    assert "vocals.json" in err and "not an Open-Unmix target's JSON" in err
    roformer = tmp_path / "config.yaml"
    roformer.write_text("model: {dim: 384, depth: 12}\naudio: {chunk_size: 352800}\n")
    # An Open-Unmix target given a --config (a RoFormer's): the family that knows the file says so,
    # before the RoFormer importer (asked last) could call the YAML a bad RoFormer config.
    err = _error(capsys, "models", "import", single, "--config", roformer)
    assert str(roformer) in err and "Open-Unmix model takes its settings from the JSON beside it; drop --config" in err
    # A truncated state dict.
    cut = tmp_path / "cut"
    umx_models.save_model(cut, {"vocals": models["nets"]["vocals"]}, hidden_size=HIDDEN)
    pth = next(cut.glob("*.pth"))
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    err = _error(capsys, "models", "import", cut)
    assert pth.name in err and "truncated" in err
    assert not user.exists() or not any(user.iterdir())


@pytest.mark.slow
def test_session_preset_cache_and_eval(models, tmp_path, monkeypatch, capsys):
    """The family through the CLI unchanged: a preset that mutes the vocals, the stem cache, eval."""
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(models["user"]))
    card = card_with(models, "umxhq-small", tmp_path, chunk_size=64 * 1024, name="umx-short")
    (models["user"] / "umx-short.yaml").write_text(card.read_text())
    assert cli(["models"]) == 0
    assert "umx-short" in (out := capsys.readouterr().out) and "niter 1" in out
    song = tmp_path / "song.wav"
    x, rate = sf.read(str(need_data(ROCK / "mixture.flac")), dtype="float32", frames=4 * 44100)
    sf.write(str(song), x, rate, subtype="FLOAT")
    preset = tmp_path / "no-vocals.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "umx-short"},
                                      "stems": {"vocals": {"mute": True}},
                                      "output": {"format": "wav", "bit_depth": 32, "files": {"mix": "{track}.{ext}",
                                                                                            "stems": "{stem}.{ext}"}}}))
    cache = tmp_path / "cache"
    for out in ("fresh", "cached"):
        assert cli(["render", str(preset), str(song), "--out", str(tmp_path / out), "--cache-dir", str(cache)]) == 0
    assert "1 from cached stems" in capsys.readouterr().out
    fresh = {p.name: sf.read(str(p))[0] for p in (tmp_path / "fresh").rglob("*.wav")}
    assert {"song.wav", "drums.wav", "bass.wav", "other.wav"} <= set(fresh)
    for p in (tmp_path / "cached").rglob("*.wav"):
        np.testing.assert_array_equal(sf.read(str(p))[0], fresh[p.name])
    stems = load_separator("umx-short", threads=2)(np.ascontiguousarray(x.T), rate)
    mixed = stems["drums"] + stems["bass"] + stems["other"]
    rendered = fresh["song.wav"].T
    assert snr_db(mixed, rendered[:, : mixed.shape[1]]) > 60  # the render is the three stems (and a silent tail)
    assert np.max(np.abs(rendered[:, mixed.shape[1]:])) < 1e-6
    assert cli(["eval", "--model", "umx-short", "--references", str(ROCK), "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert set(scores["median"]) >= set(TARGETS)


def test_family_is_registered_with_its_importer():
    fam = family("umx")
    assert fam.importer == "bridge.importers.umx:convert" and fam.recognise is umx.recognise
