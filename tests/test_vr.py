"""UVR VR models: the band split, the networks, the import and the run, against python-audio-separator.

Reduced sizes: the v5 network's width is fixed by UVR's size classes, so the v5 model is the
smallest class (31191 KB, ch 16, 7.9 M parameters) on the 256-row parameter set
``1band_sr44100_hl256``; the v5.1 network takes any ``nout``/``nout_lstm``, here 16/32 on the same set.
The band split itself (resampling, STFTs, channel mixing, filters) is compared on the 4-band and
3-band sets the published models use, without a network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from bridge.errors import ModelError
from tests.conftest import DATA, need_data, need_module

need_module("librosa")
need_module("torch")

from tests.vr_models import model_params, ref, reference_net, reference_separate, save_state  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = "1band_sr44100_hl256"


def snr_db(reference, estimate) -> float:
    reference = np.asarray(reference, np.complex128)
    error = np.sum(np.abs(reference - np.asarray(estimate, np.complex128)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(np.abs(reference) ** 2) / error))


def music(seconds: float, *, start: float = 1.0, folder: str = "musdb7-80s-rock") -> np.ndarray:
    path = need_data(DATA / folder / "mixture.flac")
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100
    return np.ascontiguousarray(x.T[:, int(start * rate):int((start + seconds) * rate)])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Random-weight models built with the reference's classes, saved as .pth and imported."""
    from bridge.importers.vr import import_vr

    folder = tmp_path_factory.mktemp("vr-models")
    v51 = reference_net(SMALL, v51=True, nout=16, nout_lstm=32, seed=1)
    v5 = reference_net(SMALL, v51=False, size=31191, seed=2)
    save_state(v51, folder / "echo51.pth")
    save_state(v5, folder / "vocals5.pth")
    cards = {
        "v51": import_vr(folder / "echo51.pth", folder=folder, params=SMALL, nout=16, nout_lstm=32,
                         primary="No Echo").card,
        "v5": import_vr(folder / "vocals5.pth", folder=folder, params=SMALL, primary="Vocals").card,
    }
    return {"folder": folder, "cards": cards, "nets": {"v51": v51, "v5": v5}}


# --- the band split ------------------------------------------------------------------------------

def _reference_spec(x, name, v51):
    import librosa

    su = ref("spec_utils")
    mp = model_params(name)
    n = len(mp.param["band"])
    waves, specs = {}, {}
    for d in range(n, 0, -1):
        bp = mp.param["band"][d]
        waves[d] = x if d == n else librosa.resample(waves[d + 1], orig_sr=mp.param["band"][d + 1]["sr"],
                                                    target_sr=bp["sr"], res_type="polyphase")
        specs[d] = su.wave_to_spectrogram(waves[d], bp["hl"], bp["n_fft"], mp, band=d, is_v51_model=v51)
    return su.combine_spectrograms(specs, mp, is_v51_model=v51), mp


@pytest.mark.parametrize("name,v51", [("4band_v3", False), ("4band_v4_ms_fullband", True), ("3band_44100_msb2", False),
                                      ("4band_v2_sn", True)])
def test_band_split_and_back_equal_the_reference(name, v51):
    from bridge.separation.vr_bands import Bands, param_set

    x = music(3.0)
    bands = Bands(param_set(name), v51=v51, name=name)
    x = x[:, :x.shape[1] // bands.hop * bands.hop]
    expected, mp = _reference_spec(x, name, v51)
    got = bands.analyse(x)
    assert got.shape == expected.shape
    # The reference's polyphase resampling and STFT, computed the same way: equal to float32 rounding.
    assert snr_db(expected[:, :, :-bands.settle], got[:, :, :-bands.settle]) > 100
    su = ref("spec_utils")
    su.wav_resolution = "polyphase"
    wave = su.cmb_spectrogram_to_wave(expected.copy(), mp, is_v51_model=v51)
    start, back = bands.synthesise(expected, 0)
    assert start == 0 and back.shape[1] >= wave.shape[1] - bands.settle * bands.hop  # less the right edge
    n = min(back.shape[1], wave.shape[1])
    assert snr_db(wave[:, :n], back[:, :n]) > 100  # float64 both ways


def test_a_reverse_set_is_refused():
    from bridge.separation.vr_bands import Bands, param_set

    with pytest.raises(ModelError, match="reverse.*cannot be streamed"):
        Bands(param_set("4band_44100_reverse"), v51=False, name="4band_44100_reverse")


# --- the networks --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["v5", "v51"])
def test_network_and_onnx_equal_the_reference_network(imported, kind):
    import onnxruntime as ort
    import torch

    from bridge.importers.vr import build_network

    net = imported["nets"][kind]
    rng = np.random.default_rng(3)
    x = (rng.random((1, 2, 257, 512)) ** 2).astype(np.float32)
    with torch.no_grad():
        expected = net.predict_mask(torch.from_numpy(x)).numpy()
    entry = {"vr_model_param": SMALL, **({"nout": 16, "nout_lstm": 32} if kind == "v51" else {})}
    mine, _ = build_network(entry, net.state_dict(), kilobytes=31191, source="test")
    with torch.no_grad():
        assert snr_db(expected, mine(torch.from_numpy(x)).numpy()) > 80
    session = ort.InferenceSession(str(Path(imported["cards"][kind]).with_suffix(".onnx")))
    for window in (512, 320):  # one ONNX file for every window size
        xs = x[:, :, :, :window]
        with torch.no_grad():
            expected = net.predict_mask(torch.from_numpy(xs)).numpy()
        got = session.run(None, {session.get_inputs()[0].name: xs})[0]
        assert snr_db(expected, got) > 80


# --- the run -------------------------------------------------------------------------------------

def _separator(card):
    from bridge.separation import load_separator
    from bridge.separation.models import load_card

    return load_separator(load_card(card), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("kind,primary,stems", [("v51", "No Echo", ("no_echo", "echo")),
                                                 ("v5", "Vocals", ("vocals", "instrumental"))])
def test_stems_equal_the_reference(imported, kind, primary, stems):
    x = music(2.5)
    sep = _separator(imported["cards"][kind])
    assert sep.stems == stems and sep.residual is None
    before = x.copy()
    out = sep(x, 44100)
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched
    p, s = reference_separate(x, imported["nets"][kind], SMALL, v51=kind == "v51", primary=primary)
    n = p.shape[1]  # the reference stops at the last whole hop
    assert out[stems[0]].shape == x.shape and n <= x.shape[1]
    assert snr_db(p, out[stems[0]][:, :n]) > 60
    assert snr_db(s, out[stems[1]][:, :n]) > 60
    # Away from the song's end (where the reference's last window sees zeros) equal to rounding.
    assert snr_db(p[:, :n - 8192], out[stems[0]][:, :n - 8192]) > 90
    # The stems sum to the mix through the band split and back (the mask and its complement),
    # which for this 1-band set is the mix itself below its pre-filter (the top row).
    su = ref("spec_utils")
    whole = su.cmb_spectrogram_to_wave(_reference_spec(x, SMALL, kind == "v51")[0], model_params(SMALL),
                                       is_v51_model=kind == "v51")
    assert snr_db(whole[:, :n - 8192], (out[stems[0]] + out[stems[1]])[:, :n - 8192]) > 90


@pytest.mark.slow
def test_slices_equal_one_pass_once_the_peak_is_seen(imported, monkeypatch):
    """Many slices (one window each) give the reference's output when the song's loudest frame is
    in the first slice; a quieter start is the only thing slicing changes."""
    from bridge.separation import vr

    x = music(4.0)
    x[:, :2000] *= 3.0  # the loudest frame at the start: every slice divides by the song's peak
    monkeypatch.setattr(vr, "PATCHES", 1)
    card = yaml.safe_load(Path(imported["cards"]["v51"]).read_text())
    card["vr"]["window_size"] = 192  # windows of 64 output frames: slices of 0.37 s
    small = Path(imported["folder"]) / "echo51-w192.yaml"
    small.write_text(yaml.safe_dump(card))
    sep = _separator(small)
    assert x.shape[1] > 8 * (sep.engine.chunk - 2 * sep.engine.trim)  # many slices
    stream = sep.stream(sample_rate=44100, channels=2)
    parts = [stream.process(x[:, i:i + 30001]) for i in range(0, x.shape[1], 30001)] + [stream.finish()]
    got = np.concatenate([p["no_echo"] for p in parts], axis=1)
    p, _ = reference_separate(x, imported["nets"]["v51"], SMALL, v51=True, primary="No Echo", window=192)
    n = p.shape[1] - 8192
    assert snr_db(p[:, :n], got[:, :n]) > 90


# --- the import ----------------------------------------------------------------------------------

def test_import_refusals_are_one_line_and_write_nothing(imported, tmp_path):
    import torch

    from bridge.importers import import_model

    folder = tmp_path / "out"
    pth = imported["folder"] / "echo51.pth"
    cases = [
        # the hash is not in UVR's table and no parameter set is named
        (dict(path=pth), "not in UVR's table; pass --vr-params"),
        # a parameter set that does not exist
        (dict(path=pth, vr_params="4band_v9"), "unknown VR parameter set '4band_v9'"),
        # a state dict that does not fit: v5.1 weights with other nout
        (dict(path=pth, vr_params=SMALL, vr_nout=32, vr_nout_lstm=128),
         "is [8, 2, 3, 3] in the state dict but [16, 2, 3, 3]"),
        # half of the v5.1 sizes
        (dict(path=pth, vr_params=SMALL, vr_nout=16), "needs both --vr-nout and --vr-nout-lstm"),
        # a config for another family
        (dict(path=pth, config=REPO / "presets" / "karaoke.yaml"), None),
    ]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    cases.append((dict(path=truncated, vr_params=SMALL), "cannot read the checkpoint"))
    other = tmp_path / "roformer.pth"
    torch.save({"stg1_low_band_net.x": torch.zeros(1), "stg2_bridge.y": torch.zeros(1)}, other)
    cases.append((dict(path=other, vr_params=SMALL), "has no 'stg1_low_band_net.enc1.conv1.conv.0.weight'"))
    for options, message in cases:
        path = options.pop("path")
        with pytest.raises(ModelError) as caught:
            import_model(path, folder=folder, **options)
        text = str(caught.value)
        assert "\n" not in text, text
        if message:
            assert message in text, text
        assert not folder.exists() or not any(folder.iterdir())


def test_the_family_recognises_vr_files_by_their_weights(imported, tmp_path):
    import torch

    from bridge.separation.families import family

    fam = family("vr")
    found = fam.recognise(imported["folder"] / "echo51.pth")
    assert found is not None and found.family == "vr" and not found.ready and "--vr-params" in found.command
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    assert fam.recognise(other) is None and not fam.imports(other, None)
    assert fam.imports(imported["folder"] / "echo51.pth", None)


def test_card_is_checked(imported, tmp_path):
    from bridge.separation.models import load_card

    card = yaml.safe_load(Path(imported["cards"]["v51"]).read_text())
    for change, message in (({"window_size": 300}, "vr.window_size must be a multiple of 32"),
                            ({"aggression": 500}, "vr.aggression must be a number in [-100, 100]")):
        bad = dict(card, vr={**card["vr"], **change})
        path = Path(imported["folder"]) / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_card(path)


# --- sessions, the cache and eval ----------------------------------------------------------------

def _cli(*argv, models: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(models)}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], check=False, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_cli_imports_renders_a_preset_with_the_cache_and_evaluates(imported, tmp_path):
    models = tmp_path / "models"
    done = _cli("models", "import", imported["folder"] / "echo51.pth", "--vr-params", SMALL, "--vr-nout", "16",
                "--vr-nout-lstm", "32", "--vr-primary", "Vocals", "--name", "vr-vocals", models=models)
    assert done.returncode == 0, done.stderr
    listing = _cli("models", models=models)
    assert "vr-vocals" in listing.stdout and "v5.1 1band_sr44100_hl256" in listing.stdout
    song = tmp_path / "song.wav"
    x = music(1.5)
    sf.write(str(song), x.T, 44100, subtype="FLOAT")
    preset = tmp_path / "karaoke.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "vr-vocals"},
                                      "stems": {"vocals": {"mute": True}},
                                      "output": {"format": "wav", "bit_depth": 32,
                                                 "files": {"mix": "{track}.{ext}"}}}))
    cache = tmp_path / "cache"
    for out in ("fresh", "cached"):
        done = _cli("render", preset, song, "--out", tmp_path / out, "--cache-dir", cache, models=models)
        assert done.returncode == 0, done.stderr
    assert "1 from cached stems" in done.stdout
    fresh = sf.read(str(tmp_path / "fresh" / "song.wav"), dtype="float32")[0]
    np.testing.assert_array_equal(fresh, sf.read(str(tmp_path / "cached" / "song.wav"), dtype="float32")[0])
    direct = _separator(models / "vr-vocals.yaml")(x, 44100)["instrumental"]
    assert snr_db(direct, fresh.T[:, :x.shape[1]]) > 60  # the muted vocals leave the model's instrumental
    refs = tmp_path / "refs" / "so-easy"
    refs.mkdir(parents=True)
    for stem in ("mixture", "vocals", "accompaniment"):
        y = music(1.5, start=5.0, folder="cristina-vane-so-easy") if stem == "mixture" else None
        if y is None:
            path = need_data(DATA / "cristina-vane-so-easy" / f"{stem}.flac")
            y = sf.read(str(path), dtype="float32", always_2d=True)[0].T[:, 5 * 44100:5 * 44100 + 66150]
        sf.write(str(refs / f"{stem}.wav"), y.T, 44100, subtype="FLOAT")
    done = _cli("eval", "--model", "vr-vocals", "--references", tmp_path / "refs", models=models)
    assert done.returncode == 0, done.stderr
    assert "vocals" in done.stdout and "instrumental" in done.stdout


@pytest.mark.slow
def test_the_vr_presets_render_with_their_models(imported, tmp_path):
    """presets/vr/ name UVR's DeEcho-DeReverb and 6_HP-Karaoke-UVR (imported by the user first;
    the golden renders of presets/ cannot have them): with random-weight models imported under
    those names and primary stems, each preset renders, its muted stem left out of its mix."""
    models = tmp_path / "models"
    for name, primary in (("UVR-DeEcho-DeReverb", "No Reverb"), ("6_HP-Karaoke-UVR", "Instrumental")):
        done = _cli("models", "import", imported["folder"] / "echo51.pth", "--vr-params", SMALL, "--vr-nout", "16",
                    "--vr-nout-lstm", "32", "--vr-primary", primary, "--name", name, models=models)
        assert done.returncode == 0, done.stderr
    song = tmp_path / "song.wav"
    x = music(1.5)
    sf.write(str(song), x.T, 44100, subtype="FLOAT")
    for preset, mix, kept in (("de-reverb", "song.dry.flac", "no_reverb"),
                              ("karaoke-backing-vocals", "song.karaoke-bv.flac", "instrumental")):
        out = tmp_path / preset
        done = _cli("render", REPO / "presets" / "vr" / f"{preset}.yaml", song, "--out", out, "--no-cache",
                    models=models)
        assert done.returncode == 0, done.stderr
        rendered = sf.read(str(out / mix), dtype="float32")[0].T
        stem = sf.read(str(out / "song" / f"{kept}.flac"), dtype="float32")[0].T
        n = min(rendered.shape[1], stem.shape[1], x.shape[1])
        assert snr_db(stem[:, :n], rendered[:, :n]) > 40  # the mix is the kept stem (24-bit flac rounding)
