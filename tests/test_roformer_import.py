"""``stembridge models import CHECKPOINT --config CONFIG.yaml``: small random-weight BS-RoFormer and
Mel-Band RoFormer checkpoints (built with the importer's own torch classes, saved as the published
ones are: a state dict and a YAML config) imported through the CLI; the card, torch == ONNX, and
every bad input as a one-line error that writes nothing.

That the classes load the *published* layouts (viperx's BS-RoFormer, Kim's Mel-Band RoFormer) is
proved against python-audio-separator by ``tests/benchmarks/roformer_network_parity.py``, which
needs its venv; here the layouts are the importer's own.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from conftest import TORCH, need_module  # noqa: E402

torch = need_module("torch", TORCH)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import yaml  # noqa: E402

from bridge import __version__  # noqa: E402
from bridge.cli import main as cli  # noqa: E402
from bridge.errors import ModelError  # noqa: E402
from bridge.importers.roformer import build_network, read_state_dict, snr_db  # noqa: E402
from bridge.importers.roformer_config import mel_bands, parse_config, read_config  # noqa: E402
from bridge.importers.roformer_net import Roformer  # noqa: E402

HOP, N_FFT, FRAMES = 128, 512, 24
CHUNK = HOP * (FRAMES - 1)

BS_CONFIG = f"""\
audio:
  chunk_size: {CHUNK}
  num_channels: 2
  sample_rate: 44100
model:
  dim: 32
  depth: 2
  stereo: true
  num_stems: 1
  time_transformer_depth: 1
  freq_transformer_depth: 1
  linear_transformer_depth: 0
  freqs_per_bands: !!python/tuple
  - 16
  - 16
  - 32
  - 64
  - 129
  dim_head: 16
  heads: 2
  flash_attn: true
  stft_n_fft: {N_FFT}
  stft_hop_length: {HOP}
  stft_win_length: {N_FFT}
  stft_normalized: false
  mask_estimator_depth: 2
  multi_stft_resolutions_window_sizes: !!python/tuple [4096, 2048]
training:
  instruments: [vocals, other]
  target_instrument: vocals
inference:
  num_overlap: 4
"""

MEL_CONFIG = f"""\
audio: {{chunk_size: {CHUNK}, num_channels: 1, sample_rate: 44100}}
model:
  dim: 32
  depth: 1
  stereo: false
  num_stems: 2
  time_transformer_depth: 1
  freq_transformer_depth: 1
  num_bands: 16
  dim_head: 16
  heads: 2
  sample_rate: 44100
  stft_n_fft: {N_FFT}
  stft_hop_length: {HOP}
  stft_win_length: {N_FFT}
  mask_estimator_depth: 1
training: {{instruments: [Vocals, accompaniment], target_instrument: null}}
"""


def _checkpoint(folder, text: str, seed: int, *, wrap: str | None = None):
    """A random-weight checkpoint for ``text`` (a config), saved as the releases are; returns (ckpt, config)."""
    config = folder / "model.yaml"
    config.write_text(text)
    net = Roformer(parse_config(read_config(config), source="test"), gates=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=generator)).add_(0.05 * torch.randn(p.shape, generator=generator))
    state = net.state_dict()
    ckpt = folder / "model.ckpt"
    torch.save({wrap: state} if wrap else state, ckpt)
    return ckpt, config


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Both models imported once through the CLI: {kind: (ckpt, config, card dict, onnx path)}."""
    folder = tmp_path_factory.mktemp("user-models")
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEMBRIDGE_MODELS", str(folder))
        for kind, text, wrap in (("bs", BS_CONFIG, None), ("mel", MEL_CONFIG, "state_dict")):
            ckpt, config = _checkpoint(tmp_path_factory.mktemp(kind), text, seed=len(kind), wrap=wrap)
            assert cli(["models", "import", str(ckpt), "--config", str(config), "--name", f"tiny-{kind}"]) == 0
            card = yaml.safe_load((folder / f"tiny-{kind}.yaml").read_text())
            done[kind] = (ckpt, config, card, folder / f"tiny-{kind}.onnx")
    return done


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bs_roformer_card(imported):
    ckpt, config, card, onnx_path = imported["bs"]
    assert card["name"] == "tiny-bs" and card["family"] == "roformer" and card["architecture"] == "bs_roformer"
    assert card["file"] == "tiny-bs.onnx" and card["sha256"] == _sha256(onnx_path)
    assert card["stems"] == ["vocals", "instrumental"] and card["residual"] == "instrumental"
    assert (card["sample_rate"], card["n_fft"], card["hop"], card["win_length"]) == (44100, N_FFT, HOP, N_FFT)
    assert (card["dim_t"], card["chunk_size"], card["num_overlap"], card["audio_channels"]) == (FRAMES, CHUNK, 4, 2)
    meta = card["imported"]
    assert meta["checkpoint"] == "model.ckpt" and meta["checkpoint_sha256"] == _sha256(ckpt)
    assert meta["config"] == yaml.load(BS_CONFIG.replace("!!python/tuple", ""), Loader=yaml.SafeLoader)
    assert meta["config"]["model"]["freqs_per_bands"] == [16, 16, 32, 64, 129]  # the tuple, as plain YAML
    assert meta["stembridge_version"] == __version__
    assert meta["parity_db"] >= 80 and "pink noise" in meta["parity"]
    assert "BS-RoFormer" in card["description"]
    assert not list(onnx_path.parent.glob(".*partial"))


def test_mel_band_roformer_card_every_instrument_an_output(imported):
    _, _, card, onnx_path = imported["mel"]
    assert card["architecture"] == "mel_band_roformer" and card["audio_channels"] == 1
    assert card["stems"] == ["vocals", "instrumental"] and card["residual"] is None  # canonical names
    assert card["num_overlap"] == 2  # no inference: section: the training code's default
    assert card["imported"]["parity_db"] >= 80 and card["sha256"] == _sha256(onnx_path)


@pytest.mark.parametrize("kind", ["bs", "mel"])
def test_onnx_equals_torch_on_a_batch(imported, kind):
    """The ONNX model against the torch network with the checkpoint loaded strictly: a batch of two
    spectrograms (the batch axis is dynamic), not the import's own parity input."""
    ckpt, config, card, onnx_path = imported[kind]
    cfg = parse_config(read_config(config), source=str(config))
    net = build_network(cfg, read_state_dict(ckpt), source=str(ckpt))
    rng = np.random.default_rng(7)
    audio = torch.from_numpy(rng.standard_normal((2 * cfg.audio_channels, CHUNK)).astype(np.float32) * 0.1)
    spec = torch.stft(audio, N_FFT, HOP, N_FFT, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      normalized=False, return_complex=True)
    spec = torch.view_as_real(spec).reshape(2, cfg.audio_channels, N_FFT // 2 + 1, FRAMES, 2)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (_,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [cfg.audio_channels, N_FFT // 2 + 1, FRAMES, 2] and isinstance(inp.shape[0], str)
    mask = session.run(None, {inp.name: spec.numpy()})[0]
    with torch.no_grad():
        expected = net(spec).numpy()
    assert mask.shape == (2, cfg.num_stems, cfg.audio_channels, N_FFT // 2 + 1, FRAMES, 2) == expected.shape
    assert snr_db(expected, mask) >= 80
    assert np.abs(mask).max() > 0.01  # not a degenerate model


def test_mel_bands_match_librosa():
    """Bins per mel band as librosa 0.11's filters.mel draws them (recorded with librosa; the parity
    script compares the whole index buffers with Mel-Band RoFormer's own)."""
    kim = [7, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 9, 9, 9, 10, 10, 11, 13, 13, 13, 15, 16, 17, 19, 20,
           20, 22, 24, 26, 28, 29, 31, 33, 36, 39, 41, 44, 47, 50, 54, 57, 61, 66, 71, 76, 80, 86, 93, 99, 105, 113,
           122, 130]
    assert mel_bands(sample_rate=44100, n_fft=2048, num_bands=60).sum(axis=1).tolist() == kim
    small = [6, 6, 5, 5, 7, 9, 11, 14, 18, 23, 30, 37, 47, 61, 77, 99]
    assert mel_bands(sample_rate=44100, n_fft=512, num_bands=16).sum(axis=1).tolist() == small


def _error(capsys, *argv) -> str:
    assert cli(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stembridge: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    return folder


def _nothing_written(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_bad_input_is_a_one_line_error_naming_the_file(imported, models_folder, tmp_path, capsys):
    ckpt, config, _, _ = imported["bs"]
    # A checkpoint without --config.
    err = _error(capsys, "models", "import", str(ckpt))
    assert str(ckpt) in err and "pass --config CONFIG.yaml" in err
    # Truncated checkpoint.
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    err = _error(capsys, "models", "import", str(cut), "--config", str(config))
    assert str(cut) in err and "truncated" in err
    # A config whose shapes disagree with the checkpoint: the key and both shapes.
    wider = tmp_path / "wider.yaml"
    wider.write_text(BS_CONFIG.replace("mask_estimator_depth: 2", "mask_estimator_depth: 2\n  mlp_expansion_factor: 2"))
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(wider))
    assert str(ckpt) in err and "'mask_estimators.0.to_freqs.0.0.0.weight' is [128, 32] in the checkpoint but " \
                                "[64, 32] by the config" in err
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text(BS_CONFIG.replace("\n  depth: 2\n", "\n  depth: 3\n"))
    assert "has no 'layers.2.0.layers.0.0.norm.gamma'" in _error(
        capsys, "models", "import", str(ckpt), "--config", str(deeper))
    # Not a RoFormer: an MDX23C and an HTDemucs config (ZFTurbo's layouts).
    mdx = tmp_path / "mdx23c.yaml"
    mdx.write_text("audio: {chunk_size: 261120}\nmodel: {act: gelu, num_channels: 128, num_subbands: 4}\n"
                   "training: {instruments: [vocals, other]}\n")
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(mdx))
    assert str(mdx) in err and "not a BS-RoFormer or Mel-Band RoFormer config (model keys act, num_channels" in err
    demucs = tmp_path / "htdemucs.yaml"
    demucs.write_text("model: htdemucs\nhtdemucs: {channels: 48}\n")
    assert "(model: htdemucs)" in _error(capsys, "models", "import", str(ckpt), "--config", str(demucs))
    # Unsafe YAML: refused before anything is constructed.
    marker = tmp_path / "ran"
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text(BS_CONFIG.replace("flash_attn: true", f"flash_attn: !!python/object/apply:os.system "
                                                            f"['touch {marker}']"))
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(unsafe))
    assert str(unsafe) in err and "!!python/object/apply:os.system" in err and not marker.exists()
    # A key given twice: YAML would keep the last one silently.
    twice = tmp_path / "twice.yaml"
    twice.write_text(BS_CONFIG.replace("flash_attn: true", "flash_attn: true\n  flash_attn: false"))
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(twice))
    assert str(twice) in err and "the key 'flash_attn' is given twice" in err
    # Stems the importer cannot name.
    three = tmp_path / "three.yaml"
    three.write_text(BS_CONFIG.replace("instruments: [vocals, other]", "instruments: [vocals, drums, bass]"))
    assert "target_instrument 'vocals' with num_stems 1" in _error(
        capsys, "models", "import", str(ckpt), "--config", str(three))
    assert _nothing_written(models_folder)


def test_torch_missing_says_which_extra(imported, models_folder, monkeypatch, capsys):
    ckpt, config, _, _ = imported["bs"]
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(config))
    assert 'pip install "stembridge[import]"' in err
    assert _nothing_written(models_folder)


@pytest.mark.slow
def test_an_existing_name_needs_force(imported, models_folder, capsys):
    ckpt, config, _, _ = imported["mel"]
    assert cli(["models", "import", str(ckpt), "--config", str(config)]) == 0  # default name: the file's
    assert "imported as 'model'" in capsys.readouterr().out
    first = (models_folder / "model.yaml").read_text()
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(config))
    assert "a model named 'model' exists" in err and "--force" in err
    assert (models_folder / "model.yaml").read_text() == first
    assert cli(["models", "import", str(ckpt), "--config", str(config), "--force"]) == 0
    assert sorted(p.name for p in models_folder.iterdir()) == ["model.onnx", "model.yaml"]


def test_stem_names_from_the_config():
    def stems(instruments, target, num_stems=1):
        data = yaml.safe_load(BS_CONFIG.replace("!!python/tuple", ""))
        data["training"] = {"instruments": instruments, "target_instrument": target}
        data["model"]["num_stems"] = num_stems
        cfg = parse_config(data, source="c.yaml")
        return list(cfg.stems), cfg.residual

    assert stems(["vocals", "other"], "vocals") == (["vocals", "instrumental"], "instrumental")
    assert stems(["vocals", "instrumental"], "instrumental") == (["instrumental", "vocals"], "vocals")
    assert stems(["drums", "other"], "drums") == (["drums", "other"], "other")
    assert stems(["vocals", "drums", "bass", "other"], None, 4) == (["vocals", "drums", "bass", "other"], None)
    with pytest.raises(ModelError, match="num_stems 2 but training.instruments lists 4"):
        stems(["vocals", "drums", "bass", "other"], None, 2)
    with pytest.raises(ModelError, match="target_instrument 'vocals' with num_stems 2"):
        stems(["vocals", "other"], "vocals", 2)


def test_torch_is_not_imported_at_run_time():
    code = ("import sys, bridge, bridge.cli, bridge.separation.models, bridge.separation, bridge.importers, "
            "bridge.importers.roformer, bridge.importers.roformer_config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_lists_the_imported_model(imported, monkeypatch, capsys):
    """``stembridge models`` lists cards; the run-time side teaches parse_card the roformer family."""
    from bridge.separation.models import load_card

    _, _, _, onnx_path = imported["bs"]
    assert load_card(onnx_path.with_suffix(".yaml")).family == "roformer"  # a ModelError here is a failure
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(onnx_path.parent))
    assert cli(["models"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-bs" in listing and "tiny-mel" in listing and "roformer" in listing


def test_older_checkpoints_without_gates_and_wrapped_state_dicts_load(tmp_path):
    """Checkpoints from before the attention gates, saved under "model" from a DataParallel model
    (every key "module.*"), load strictly into a network without gates."""
    config = tmp_path / "bs.yaml"
    config.write_text(BS_CONFIG)
    cfg = parse_config(read_config(config), source=str(config))
    state = Roformer(cfg, gates=False).state_dict()
    assert not any(".to_gates." in k for k in state)
    ckpt = tmp_path / "old.pth"
    torch.save({"model": {f"module.{k}": v.half() for k, v in state.items()}, "epoch": 3}, ckpt)
    net = build_network(cfg, read_state_dict(ckpt), source=str(ckpt))
    assert not hasattr(net.layers[0][0].layers[0][0], "to_gates")
    spec = torch.zeros(1, 2, N_FFT // 2 + 1, FRAMES, 2)
    with torch.no_grad():
        assert net(spec).shape == (1, 1, 2, N_FFT // 2 + 1, FRAMES, 2)


def test_an_export_under_60_db_is_refused(imported, models_folder, monkeypatch, capsys):
    import bridge.importers.roformer as roformer

    ckpt, config, _, _ = imported["bs"]
    monkeypatch.setattr(roformer, "onnx_parity", lambda *args: 42.0)
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(config))
    assert str(ckpt) in err and "42.0 dB SNR of the masks, 60 dB needed" in err
    assert not any(p.suffix in (".onnx", ".yaml") or "partial" in p.name for p in models_folder.glob("*")), \
        list(models_folder.glob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bs", "mel"])
def test_sequences_in_groups_give_the_same_mask_in_torch_and_onnx(imported, kind, monkeypatch, tmp_path):
    """With a scratch budget so small that every transformer runs its sequences one group at a
    time, the mask equals the whole-batch network's (torch), and the export of the grouped network
    equals it too (onnxruntime): grouping changes memory, not the result."""
    import bridge.importers.roformer_net as roformer_net
    from bridge.importers.roformer import export_onnx

    ckpt, config, card, _ = imported[kind]
    cfg = parse_config(read_config(config), source=str(config))
    net = build_network(cfg, read_state_dict(ckpt), source=str(ckpt))
    rng = np.random.default_rng(11)
    spec = torch.from_numpy(rng.standard_normal((1, cfg.audio_channels, N_FFT // 2 + 1, FRAMES, 2)).astype(np.float32))
    with torch.no_grad():
        whole = net(spec).numpy()
    calls = []
    original = roformer_net.grouped

    def counting(transformer, x, *, heads):
        calls.append(int(x.shape[1]))
        return original(transformer, x, heads=heads)

    monkeypatch.setattr(roformer_net, "GROUP_BYTES", 1)  # one sequence per group
    monkeypatch.setattr(roformer_net, "grouped", counting)
    with torch.no_grad():
        in_groups = net(spec).numpy()
    assert calls and all(m > 1 for m in calls)  # every transformer had several sequences to split
    np.testing.assert_allclose(in_groups, whole, atol=1e-5)  # float32: the same sums, other GEMM blocking
    path = tmp_path / "grouped.onnx"
    export_onnx(net, path, source="test")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = session.run(None, {session.get_inputs()[0].name: spec.numpy()})[0]
    assert snr_db(whole, mask) >= 80
