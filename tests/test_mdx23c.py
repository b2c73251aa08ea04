"""MDX23C (TFC-TDF v3): import and run, against python-audio-separator 0.47.1's own network.

The reference is ``audio_separator.separator.uvr_lib_v5.tfc_tdf_v3.TFC_TDF_net`` from the PyPI
wheel (:mod:`reference_wheels`), built at a reduced width with random weights and saved as users'
checkpoints are (a state dict and a YAML config). Its chunk loop,
``audio_separator.separator.architectures.mdxc_separator.MDXCSeparator.demix``, imports
rotary_embedding_torch, tqdm, ml_collections, scipy and the whole ``CommonSeparator``, more than
torch and numpy, so :func:`reference_demix` below is that loop written again from the published
code (zero padding, every chunk's whole output added, divided by ``overlap``), in torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO, TORCH, need_module, noise  # noqa: E402

torch = need_module("torch", TORCH)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

from bridge.errors import ModelError  # noqa: E402
from bridge.importers import import_model  # noqa: E402
from bridge.importers.mdx23c import import_mdx23c, parse_config  # noqa: E402
from bridge.importers.mdx23c_net import TfcTdfNet  # noqa: E402
from bridge.importers.roformer import snr_db  # noqa: E402
from bridge.separation import load_separator  # noqa: E402
from bridge.separation.mdx23c import recognise  # noqa: E402
from reference_wheels import module  # noqa: E402

N_FFT, HOP, DIM_F, DIM_T = 1024, 256, 256, 32
CHUNK = HOP * (DIM_T - 1)  # 7936 samples, 0.18 s


def config_text(*, norm="InstanceNorm", act="gelu", target=None, instruments=("Vocals", "Instrumental"),
                num_channels=8, overlap=4) -> str:
    """A config as UVR's mdx_c_configs and MSST write them, at a reduced width."""
    return yaml.safe_dump({
        "audio": {"chunk_size": CHUNK, "dim_f": DIM_F, "dim_t": DIM_T, "hop_length": HOP, "n_fft": N_FFT,
                  "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.001},
        "model": {"act": act, "bottleneck_factor": 2, "growth": 4, "norm": norm, "num_blocks_per_scale": 1,
                  "num_channels": num_channels, "num_scales": 2, "num_subbands": 2, "scale": [2, 2]},
        "training": {"batch_size": 6, "instruments": list(instruments), "target_instrument": target,
                     "lr": 9.0e-05},
        "inference": {"batch_size": 1, "dim_t": DIM_T, "num_overlap": overlap},
    }, sort_keys=False) + "augmentations:\n  mixup_probs: !!python/tuple\n  - 0.2\n  - 0.02\n"


def namespace(data):
    """The config as the reference reads it (it takes an ml_collections ConfigDict: attributes)."""
    return types.SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v for k, v in data.items()})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these networks are small, and two threads on a busy machine wait on each
    other (a chunk took 3 s instead of 0.03 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref():
    return module("audio-separator", "0.47.1", "audio_separator.separator.uvr_lib_v5.tfc_tdf_v3")


def reference_net(ref, text: str, seed: int = 0):
    """The reference network of ``text`` with random weights (norm weights and statistics too)."""
    torch.manual_seed(seed)
    net = ref.TFC_TDF_net(namespace(yaml.load(text, Loader=_Loader)), "cpu").eval()
    with torch.no_grad():  # norm layers start as identities: give them random weights and statistics
        for name, tensor in net.state_dict().items():
            if name.endswith("running_mean") or (name.endswith(".bias") and tensor.ndim == 1):
                tensor.uniform_(-0.2, 0.2)
            elif name.endswith("running_var") or (name.endswith(".weight") and tensor.ndim == 1):
                tensor.uniform_(0.5, 1.5)
    return net


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def save(tmp: Path, name: str, net, text: str) -> tuple[Path, Path]:
    ckpt, config = tmp / f"{name}.ckpt", tmp / f"{name}.yaml"
    torch.save(net.state_dict(), ckpt)
    config.write_text(text)
    return ckpt, config


def reference_demix(net, mix: np.ndarray, *, chunk: int, overlap: int, batch_size: int = 1) -> np.ndarray:
    """python-audio-separator 0.47.1's ``MDXCSeparator.demix`` (non-RoFormer branch) written again:
    ``(2, samples)`` -> ``(targets, 2, samples)``; no normalisation, no pitch shift."""
    hop = chunk // overlap
    length = mix.shape[1]
    pad = hop - (length - chunk) % hop
    x = torch.cat([torch.zeros(2, chunk - hop), torch.from_numpy(mix), torch.zeros(2, pad + chunk - hop)], 1)
    chunks = x.unfold(1, chunk, hop).transpose(0, 1)
    out = torch.zeros((net.num_target_instruments,) + tuple(x.shape))
    count = 0
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            y = net(chunks[i:i + batch_size])
            if net.num_target_instruments == 1:
                y = y[:, None]
            for one in y:
                out[..., count * hop:count * hop + chunk] += one
                count += 1
    out /= overlap
    return out[..., chunk - hop:-(pad + chunk - hop)].numpy()


@pytest.fixture(scope="module")
def song():
    from conftest import DATA, need_data

    path = need_data(DATA / "musdb7-80s-rock" / "mixture.flac")
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100
    return np.ascontiguousarray(audio.T[:, : 3 * 44100])  # 3 s: 70 chunks at num_overlap 4


@pytest.fixture(scope="module")
def imported(ref, tmp_path_factory):
    """Two imported models: 'instvoc' (two instruments, as UVR's InstVoc) and 'vocals' (a
    target_instrument model), with their reference networks."""
    tmp = tmp_path_factory.mktemp("mdx23c")
    folder = tmp / "models"
    out = {"folder": folder}
    for name, text, seed in (("instvoc", config_text(), 1),
                             ("vocals", config_text(target="vocals", instruments=("vocals", "other"), overlap=2), 2)):
        net = reference_net(ref, text, seed)
        ckpt, config = save(tmp, name, net, text)
        done = import_mdx23c(ckpt, config=config, folder=folder)
        out[name] = (net, done, ckpt, config)
    return out


# --- the network ------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,act", [("InstanceNorm", "gelu"), ("BatchNorm", "relu"), ("GroupNorm2", "elu1.0"),
                                      (None, "gelu")])
@pytest.mark.parametrize("target", [None, "vocals"])
def test_the_network_loads_reference_checkpoints_strictly_and_computes_the_same(ref, rng, norm, act, target):
    text = config_text(norm=norm, act=act, target=target, instruments=("vocals", "other"))
    net = reference_net(ref, text)
    mine = TfcTdfNet(parse_config(yaml.load(text, Loader=_Loader), source="test")).eval()
    mine.load_state_dict(net.state_dict(), strict=True)
    x = torch.from_numpy(noise(rng, 2, CHUNK, level=0.3))[None]
    with torch.no_grad():
        expected = net(x).reshape(1, -1, 2, CHUNK)
        spec = mine(net.stft(x))  # [1, targets, 4, dim_f, dim_t]
        got = net.stft.inverse(spec.reshape(-1, 4, DIM_F, DIM_T)).reshape(1, -1, 2, CHUNK)
    assert snr_db(expected.numpy(), got.numpy()) >= 80


def test_one_chunk_through_onnx_and_numpy_matches_the_reference_network(imported, song):
    for name in ("instvoc", "vocals"):
        net, done, _, _ = imported[name]
        separator = load_separator(str(done.card), threads=1)
        chunk = song[:, 44100:44100 + CHUNK]
        got = separator.engine.run(chunk[None].copy())
        with torch.no_grad():
            expected = net(torch.from_numpy(chunk)[None]).reshape(1, -1, 2, CHUNK).numpy()
        outputs = separator.engine.model_stems
        for i, stem in enumerate(outputs):
            assert snr_db(expected[:, i], got[stem]) >= 80, (name, stem)


def test_the_network_runs_lean_with_the_stems_of_an_arena_session(imported, song, monkeypatch):
    """MDX23C opens its session lean (no arena; glibc maps each tensor and unmaps it when freed: see
    runtime.open_session), and the stems are those of an ordinary session bit for bit."""
    import onnxruntime as ort

    from bridge import memory
    from bridge.separation import runtime

    calls = []
    real = memory.return_freed_memory
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append(real()) or calls[-1])
    _, done, _, _ = imported["instvoc"]
    separator = load_separator(str(done.card), threads=1)
    session = separator.engine.runner.session
    assert session.get_session_options().enable_cpu_mem_arena is False
    assert calls == [True]  # glibc (Linux CI)
    chunk = song[None, :, 44100:44100 + CHUNK].copy()
    lean = separator.engine.run(chunk)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    separator.engine.runner.session = ort.InferenceSession(str(separator.engine.path), sess_options=options,
                                                           providers=["CPUExecutionProvider"])
    assert separator.engine.runner.session.get_session_options().enable_cpu_mem_arena is True
    plain = separator.engine.run(chunk)
    for stem in separator.engine.model_stems:
        np.testing.assert_array_equal(lean[stem], plain[stem])


# --- the stems, on the reference's grid ---------------------------------------------------------

@pytest.mark.slow
def test_stems_match_audio_separators_loop_on_real_music(imported, song):
    for name, stems in (("instvoc", ("vocals", "instrumental")), ("vocals", ("vocals",))):
        net, done, _, config = imported[name]
        cfg = parse_config(yaml.load(config.read_text(), Loader=_Loader), source=str(config))
        separator = load_separator(str(done.card), threads=1)
        before = song.copy()
        got = separator(song, 44100)
        np.testing.assert_array_equal(song, before)  # the caller's array is not changed
        expected = reference_demix(net, song, chunk=cfg.chunk_size, overlap=cfg.num_overlap)
        for i, stem in enumerate(stems):
            assert got[stem].shape == song.shape
            assert snr_db(expected[i], got[stem]) >= 60, (name, stem)
        if name == "vocals":  # audio-separator's secondary stem: the mix minus the target
            assert snr_db(song - expected[0], got["instrumental"]) >= 60


def test_a_target_model_stems_sum_to_the_mix_and_a_two_output_models_do_not(imported, song):
    x = song[:, :44100]
    out = load_separator(str(imported["vocals"][1].card), threads=1)(x, 44100)
    assert set(out) == {"vocals", "instrumental"}
    np.testing.assert_allclose(out["vocals"] + out["instrumental"], x, atol=2e-6)  # float32 rounding of mix - t
    both = load_separator(str(imported["instvoc"][1].card), threads=1)(x, 44100)
    assert snr_db(x, both["vocals"] + both["instrumental"]) < 20  # random weights: each predicted on its own


def test_streaming_in_blocks_gives_the_stems_of_one_pass(imported, song):
    from conftest import assert_streaming_equals_one_pass

    separator = load_separator(str(imported["vocals"][1].card), threads=1)
    assert_streaming_equals_one_pass(separator, song[:, :20000], 44100, [1, 999, 4000, 7937])


def test_the_card_says_what_the_config_said(imported):
    card = yaml.safe_load(imported["vocals"][1].card.read_text())
    assert card["family"] == "mdx23c" and card["stems"] == ["vocals", "instrumental"]
    assert card["residual"] == "instrumental" and card["num_overlap"] == 2 and card["chunk_size"] == CHUNK
    assert card["imported"]["parity_db"] >= 60
    card = yaml.safe_load(imported["instvoc"][1].card.read_text())
    assert card["stems"] == ["vocals", "instrumental"] and card["residual"] is None and card["num_overlap"] == 4


# --- bad input, one line each, nothing written -------------------------------------------------

ROFORMER_CONFIG = """\
audio: {chunk_size: 7936, num_channels: 2, sample_rate: 44100}
model: {dim: 32, depth: 1, stereo: true, num_stems: 1, freqs_per_bands: !!python/tuple [256, 257],
        stft_n_fft: 1024, stft_hop_length: 256, stft_win_length: 1024}
training: {instruments: [vocals, other], target_instrument: vocals}
"""


def _refused(tmp_path, path, config, *expected):
    folder = tmp_path / "out"
    with pytest.raises(ModelError) as err:
        import_model(path, config=config, folder=folder)
    message = str(err.value)
    assert "\n" not in message and all(e in message for e in expected), message
    assert not folder.exists() or not list(folder.iterdir())


def test_bad_input_is_one_line_and_writes_nothing(ref, tmp_path):
    text = config_text()
    ckpt, config = save(tmp_path, "model", reference_net(ref, text), text)
    roformer = tmp_path / "roformer.yaml"
    roformer.write_text(ROFORMER_CONFIG)
    _refused(tmp_path, ckpt, roformer, "not an MDX23C (TFC-TDF v3) config", "freqs_per_bands")
    _refused(tmp_path, ckpt, None, "needs its YAML config")
    wider = tmp_path / "wider.yaml"
    wider.write_text(config_text(num_channels=12))
    _refused(tmp_path, ckpt, wider, "'first_conv.weight' is [8, 8, 1, 1] in the checkpoint but [12, 8, 1, 1]")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _refused(tmp_path, truncated, config, "cannot read the checkpoint")
    bad_norm = tmp_path / "bad-norm.yaml"
    bad_norm.write_text(config_text(norm="LayerNorm"))
    _refused(tmp_path, ckpt, bad_norm, "model.norm 'LayerNorm'")


def test_an_export_under_60_db_is_refused_and_writes_nothing(ref, tmp_path, monkeypatch):
    import bridge.importers.mdx23c as importer

    text = config_text()
    ckpt, config = save(tmp_path, "model", reference_net(ref, text), text)
    monkeypatch.setattr(importer, "onnx_parity", lambda *args: 42.0)
    _refused(tmp_path, ckpt, config, str(ckpt), "42.0 dB SNR of the outputs, 60 dB needed", "nothing was written")


def test_cli_refuses_a_roformer_config_for_an_mdx23c_checkpoint_in_one_line(ref, tmp_path):
    text = config_text()
    ckpt, _ = save(tmp_path, "model", reference_net(ref, text), text)
    roformer = tmp_path / "roformer.yaml"
    roformer.write_text(ROFORMER_CONFIG)
    done = _cli("models", "import", ckpt, "--config", roformer, models=tmp_path / "models")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "not an MDX23C" in done.stderr and not (tmp_path / "models").exists()


# --- found by its contents ----------------------------------------------------------------------

def test_recognised_by_its_keys_and_the_config_beside_it_never_by_its_name(ref, tmp_path):
    text = config_text(target="vocals", instruments=("vocals", "other"))
    ckpt, config = save(tmp_path, "anything", reference_net(ref, text), text)
    found = recognise(ckpt)
    assert found.family == "mdx23c" and found.config == config and found.stems == ("vocals", "instrumental")
    assert "--config" in found.command and not found.ready
    uvr = tmp_path / "uvr"
    (uvr / "model_data" / "mdx_c_configs").mkdir(parents=True)
    ckpt.rename(uvr / "MDX23C-8KFFT-InstVoc_HQ.ckpt")
    config.rename(uvr / "model_data" / "mdx_c_configs" / "model_2_stem_full_band_8k.yaml")
    assert recognise(uvr / "MDX23C-8KFFT-InstVoc_HQ.ckpt").config.name == "model_2_stem_full_band_8k.yaml"
    impostor = tmp_path / "MDX23C-InstVoc.ckpt"  # the name says MDX23C, the keys do not
    torch.save({"band_split.weight": torch.zeros(2)}, impostor)
    assert recognise(impostor) is None


# --- the family in the product ----------------------------------------------------------------

def _cli(*argv, models: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(models), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], check=False, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_cli_imports_separates_renders_caches_and_evaluates(ref, tmp_path):
    from conftest import DATA, need_data

    text = config_text(target="vocals", instruments=("vocals", "other"))
    ckpt, config = save(tmp_path, "MDX23C-tiny", reference_net(ref, text, seed=5), text)
    models = tmp_path / "models"
    done = _cli("models", "import", ckpt, "--config", config, models=models)
    assert done.returncode == 0, done.stderr
    assert "imported as 'MDX23C-tiny'" in done.stdout and "tfc_tdf_v3" in done.stdout
    listing = _cli("models", models=models)
    assert "mdx23c" in listing.stdout and "num_overlap 4" in listing.stdout
    music = need_data(DATA / "musdb7-80s-rock")
    song = tmp_path / "song.wav"
    x, rate = sf.read(str(music / "mixture.flac"), dtype="float32")
    sf.write(str(song), x[: 2 * rate], rate, subtype="FLOAT")
    preset = tmp_path / "karaoke.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "MDX23C-tiny"},
                                      "stems": {"vocals": {"mute": True}},
                                      "output": {"format": "wav", "bit_depth": 32,
                                                 "files": {"mix": "{track}.{ext}", "stems": "{track}-{stem}.{ext}"}}}))
    cache = tmp_path / "cache"
    for out in ("fresh", "cached"):
        done = _cli("render", preset, song, "--out", tmp_path / out, "--cache-dir", cache, "--threads", "1",
                    models=models)
        assert done.returncode == 0, done.stderr
    assert "1 from cached stems" in done.stdout
    mix, _ = sf.read(str(tmp_path / "fresh" / "song.wav"), dtype="float32")
    instrumental, _ = sf.read(str(tmp_path / "fresh" / "song-instrumental.wav"), dtype="float32")
    np.testing.assert_allclose(mix, instrumental, atol=1e-6)  # vocals muted: the mix is the instrumental
    np.testing.assert_array_equal(mix, sf.read(str(tmp_path / "cached" / "song.wav"), dtype="float32")[0])
    refs = tmp_path / "refs" / "rock"
    refs.mkdir(parents=True)
    stems = {name: sf.read(str(music / f"{name}.flac"), dtype="float32")[0][: 2 * rate]
             for name in ("mixture", "vocals", "drums", "bass", "other")}
    stems["instrumental"] = stems.pop("drums") + stems.pop("bass") + stems.pop("other")
    for name, audio in stems.items():
        sf.write(str(refs / f"{name}.wav"), audio, rate, subtype="FLOAT")
    done = _cli("eval", "--model", "MDX23C-tiny", "--references", refs.parent, "--threads", "1", models=models)
    assert done.returncode == 0, done.stderr
    assert "vocals" in done.stdout and "SI-SDR" in done.stdout
