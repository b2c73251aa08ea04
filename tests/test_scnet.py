"""The scnet family: ``stembridge models import`` of small random-weight SCNet checkpoints (MSST's
state-dict layout, built with the importer's own torch classes at reduced widths), the ONNX model
against torch, the separator against a torch run of MSST's chunk grid on real music, the streamed
grid against a whole-song one, the residual stem, bad input, and the family through the CLI
(separate, a preset render with the cache, eval).

That the classes are MSST's SCNet (same keys, same outputs) is checked against MSST's own code by
``tests/benchmarks/scnet.py``, which needs an MSST checkout; its code is not part of the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TORCH, need_module  # noqa: E402

torch = need_module("torch", TORCH)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

from bridge.cli import main as cli  # noqa: E402
from bridge.errors import ModelError  # noqa: E402
from bridge.importers.roformer import read_state_dict, snr_db  # noqa: E402
from bridge.importers.scnet import build_network, rect_stft  # noqa: E402
from bridge.importers.scnet_config import parse_config, read_config  # noqa: E402
from bridge.importers.scnet_net import Scnet  # noqa: E402
from bridge.separation import load_separator  # noqa: E402
from bridge.separation.families import registered  # noqa: E402
from bridge.separation.msst_grid import MsstOverlapAdd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROCK = DATA / "musdb7-80s-rock"
RATE = 44100
CHUNK = 22050  # 0.5 s

FOUR = f"""\
audio:
  chunk_size: {CHUNK}
  num_channels: 2
  sample_rate: {RATE}
  min_mean_abs: 0.000
model:
  sources: [drums, bass, other, vocals]
  audio_channels: 2
  dims: [4, 8, 12, 16]
  nfft: 512
  hop_size: 128
  win_size: 512
  normalized: True
  band_SR: [0.175, 0.392, 0.433]
  band_stride: [1, 4, 16]
  band_kernel: [3, 4, 16]
  conv_depths: [3, 2, 1]
  compress: 4
  conv_kernel: 3
  num_dplayer: 2
  expand: 1
training:
  instruments: [drums, bass, other, vocals]
  target_instrument: null
  use_amp: true
augmentations:
  mixup_probs: !!python/tuple
    - 0.2
    - 0.02
inference:
  batch_size: 8
  dim_t: 256
  num_overlap: 4
  normalize: false
"""

VOCALS = (FOUR.replace("sources: [drums, bass, other, vocals]", "sources: [vocals]")
          .replace("instruments: [drums, bass, other, vocals]\n  target_instrument: null",
                   "instruments: [vocals, other]\n  target_instrument: vocals")
          .replace("num_overlap: 4", "num_overlap: 2").replace("normalized: True", "normalized: False"))


def _checkpoint(folder: Path, text: str, seed: int, *, wrap: str | None = None):
    """A random-weight checkpoint for ``text``, saved as MSST saves one; returns (ckpt, config)."""
    config = folder / "config.yaml"
    config.write_text(text)
    net = Scnet(parse_config(read_config(config), source="test"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # torch's initialisation, shaken so that no layer is an exact default
        for p in net.parameters():
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=generator)).add_(0.02 * torch.randn(p.shape, generator=generator))
    ckpt = folder / "model.ckpt"
    state = net.state_dict()
    torch.save({wrap: state, "epoch": 3, "best_metric": 1.5} if wrap else state, ckpt)
    return ckpt, config


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread: the tiny networks' convolutions spend more in two threads' hand-offs
    than in arithmetic (measured under load: a forward 9.5 s on 2 threads, 0.6 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Both models imported once through the CLI: {kind: (ckpt, config, card, onnx path, folder)}."""
    folder = tmp_path_factory.mktemp("user-models")
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEMBRIDGE_MODELS", str(folder))
        for kind, text, wrap in (("four", FOUR, "model_state_dict"), ("vocals", VOCALS, None)):
            ckpt, config = _checkpoint(tmp_path_factory.mktemp(kind), text, seed=len(kind), wrap=wrap)
            assert cli(["models", "import", str(ckpt), "--config", str(config), "--name", f"tiny-{kind}"]) == 0
            card = yaml.safe_load((folder / f"tiny-{kind}.yaml").read_text())
            done[kind] = (ckpt, config, card, folder / f"tiny-{kind}.onnx", folder)
    return done


@pytest.fixture(scope="module")
def rock():
    audio, rate = sf.read(str(ROCK / "mixture.flac"), dtype="float32", always_2d=True)
    assert rate == RATE
    return np.ascontiguousarray(audio.T)


def test_cards(imported):
    _, _, card, onnx_path, _ = imported["four"]
    assert card["family"] == "scnet" and card["architecture"] == "scnet"
    assert card["stems"] == ["drums", "bass", "other", "vocals"] and card["residual"] is None
    assert (card["n_fft"], card["hop"], card["win_length"], card["chunk_size"]) == (512, 128, 512, CHUNK)
    # 22050 samples + SCNet's 94 zeros = 173 hops (odd: no extra hop), so 174 frames (even)
    assert card["dim_t"] == 174 and card["num_overlap"] == 4
    assert card["imported"]["parity_db"] >= 80 and card["imported"]["checkpoint"] == "model.ckpt"
    _, _, card, _, _ = imported["vocals"]
    assert card["stems"] == ["vocals", "instrumental"] and card["residual"] == "instrumental"
    assert card["num_overlap"] == 2 and card["imported"]["parity_db"] >= 80


def _torch_spec(audio: torch.Tensor, cfg) -> torch.Tensor:
    return rect_stft(torch.nn.functional.pad(audio, (0, cfg.pad)), cfg)


@pytest.mark.parametrize("kind", ["four", "vocals"])
def test_onnx_equals_torch_on_real_music(imported, rock, kind):
    """A batch of two chunks of real music (the batch axis is dynamic): ONNX vs the torch network
    with the checkpoint loaded strictly, >= 80 dB."""
    ckpt, config, _, onnx_path, _ = imported[kind]
    cfg = parse_config(read_config(config), source=str(config))
    net = build_network(cfg, read_state_dict(ckpt), source=str(ckpt))
    chunks = torch.from_numpy(np.stack([rock[:, RATE:RATE + CHUNK], rock[:, 4 * RATE:4 * RATE + CHUNK]]))
    spec = _torch_spec(chunks, cfg)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: spec.numpy()})[0]
    with torch.no_grad():
        expected = net(spec).numpy()
    assert got.shape == expected.shape == (2, len(cfg.sources), 2, 257, cfg.dim_t, 2)
    assert snr_db(expected, got) >= 80
    assert np.abs(expected).max() > 1e-3  # not a degenerate model


def _torch_demix(net, cfg, mix: np.ndarray, step: int) -> np.ndarray:
    """MSST's generic demix, whole song at once, with the torch network and torch's STFT:
    ``(sources, channels, samples)``. Written from MSST's description (see msst_grid.py)."""
    chunk, fade = cfg.chunk_size, cfg.chunk_size // 10
    border = chunk - step
    x = torch.from_numpy(mix)
    length = x.shape[-1]
    padded = length > 2 * border and border > 0
    if padded:
        x = torch.nn.functional.pad(x[None], (border, border), mode="reflect")[0]
    total = x.shape[-1]
    window = torch.ones(chunk)
    window[:fade] = torch.linspace(0, 1, fade)
    window[-fade:] = torch.linspace(1, 0, fade)
    result = torch.zeros(len(cfg.sources), 2, total)
    counter = torch.zeros(total)
    starts = list(range(0, total, step))
    parts = []
    for start in starts:
        part = x[:, start:start + chunk]
        n = part.shape[-1]
        if n < chunk:
            part = torch.nn.functional.pad(part[None], (0, chunk - n), mode="reflect" if n > chunk // 2 else "constant")[0]
        parts.append(part)
    with torch.no_grad():  # every chunk in one batch: the same numbers, in less time
        spec = torch.view_as_complex(net(_torch_spec(torch.stack(parts), cfg)).contiguous())
    outputs = torch.istft(spec.reshape(-1, *spec.shape[-2:]), cfg.n_fft, cfg.hop, cfg.win_length,
                          window=torch.ones(cfg.win_length), center=True)[:, :chunk].reshape(len(starts), -1, 2, chunk)
    for start, stems in zip(starts, outputs):
        n = min(chunk, total - start)
        w = window.clone()
        if start == 0:
            w[:fade] = 1
        elif start + step >= total:
            w[-fade:] = 1
        result[..., start:start + n] += stems[..., :n] * w[:n]
        counter[start:start + n] += w[:n]
    out = torch.nan_to_num(result / counter).numpy()
    return out[..., border:-border] if padded else out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["four", "vocals"])
def test_stems_match_a_torch_run_of_msst_grid_on_real_music(imported, rock, kind, monkeypatch):
    """stembridge's separator (onnxruntime + numpy, streamed) against the torch network run on
    MSST's grid over the song's first 3 s: >= 60 dB per stem. The vocals model's instrumental is
    the mix minus its vocals, so the stems sum to the mix."""
    ckpt, config, card, _, folder = imported[kind]
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    cfg = parse_config(read_config(config), source=str(config))
    net = build_network(cfg, read_state_dict(ckpt), source=str(ckpt))
    mix = np.ascontiguousarray(rock[:, :3 * RATE])
    expected = _torch_demix(net, cfg, mix, CHUNK // cfg.num_overlap)
    separator = load_separator(f"tiny-{kind}", threads=2, batch_size=3)
    got = separator(mix, RATE)
    for i, stem in enumerate(cfg.outputs):
        assert got[stem].shape == mix.shape
        assert snr_db(expected[i], got[stem]) >= 60, stem
    if kind == "vocals":
        total = got["vocals"] + got["instrumental"]
        assert np.abs(total - mix).max() < 1e-5
        assert snr_db(mix - expected[0], got["instrumental"]) >= 60


def _whole_grid(x: np.ndarray, chunk: int, step: int, run) -> np.ndarray:
    """MSST's grid over a whole array with numpy, for the streaming test."""
    fade, border = chunk // 10, chunk - step
    n = x.shape[1]
    padded = n > 2 * border and border > 0
    if padded:
        x = np.pad(x, ((0, 0), (border, border)), mode="reflect")
    window = np.ones(chunk)
    window[:fade] = np.linspace(0, 1, fade)
    window[chunk - fade:] = np.linspace(1, 0, fade)
    out, weight = np.zeros(x.shape), np.zeros(x.shape[1])
    starts = list(range(0, x.shape[1], step))
    for start in starts:
        part = x[:, start:start + chunk]
        m = part.shape[1]
        if m < chunk:
            part = np.pad(part, ((0, 0), (0, chunk - m)), mode="reflect" if m > chunk // 2 else "constant")
        w = window.copy()
        if start == 0:
            w[:fade] = 1
        elif start == starts[-1]:
            w[chunk - fade:] = 1
        out[:, start:start + m] += run(part[None])["s"][0, :, :m] * w[:m]
        weight[start:start + m] += w[:m]
    result = np.divide(out, weight, out=np.zeros_like(out), where=weight > 0)
    return result[:, border:-border] if padded else result


def _context_model(chunks: np.ndarray) -> dict:
    """A model whose output depends on the whole chunk and on where each sample sits in it."""
    ramp = np.linspace(0.5, 1.5, chunks.shape[-1])
    return {"s": (np.tanh(chunks) * ramp + np.mean(np.abs(chunks), axis=-1, keepdims=True)).astype(np.float32)}


@pytest.mark.parametrize("samples", [1, 37, 99, 100, 161, 319, 320, 321, 1000, 1237])
@pytest.mark.parametrize("num_overlap", [1, 2, 4])
@pytest.mark.parametrize("block", [13, 100_000])
def test_streamed_grid_equals_the_whole_song_grid(samples, num_overlap, block):
    chunk = 100
    step = chunk // num_overlap
    x = np.random.default_rng(samples).standard_normal((2, samples)).astype(np.float32)
    grid = MsstOverlapAdd(chunk=chunk, step=step, channels=2, stems=["s"], run=_context_model, batch_size=3)
    parts = [grid.process(x[:, i:i + block])["s"] for i in range(0, samples, block)] + [grid.finish()["s"]]
    got = np.concatenate(parts, axis=1)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, _whole_grid(x.astype(np.float64), chunk, step, _context_model), atol=2e-6)


def test_memory_stays_flat_while_streaming():
    """After many blocks the grid holds about two chunks of input and output, not the song."""
    chunk = 1000
    grid = MsstOverlapAdd(chunk=chunk, step=250, channels=2, stems=["s"], run=_context_model)
    block = np.ones((2, 777), np.float32)
    for _ in range(300):
        grid.process(block)
    assert grid._input.shape[1] <= 2 * chunk and grid._weight.shape[0] <= 2 * chunk


def _error(capsys, *argv) -> str:
    assert cli(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stembridge: error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(imported, tmp_path, monkeypatch, capsys):
    ckpt, config, _, _, _ = imported["four"]
    folder = tmp_path / "models"
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    # A config of another family (a BS-RoFormer's) with an SCNet checkpoint: the RoFormer importer says so.
    roformer = tmp_path / "roformer.yaml"
    roformer.write_text("audio: {chunk_size: 22050}\nmodel: {dim: 32, depth: 1, freqs_per_bands: [128, 129], "
                        "stft_n_fft: 512, stft_win_length: 512, stft_hop_length: 128}\ntraining: {instruments: [vocals, other], target_instrument: vocals}\n")
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(roformer))
    assert str(ckpt) in err and "the checkpoint has no 'layers." in err and "the config does not describe" in err
    # An SCNet config of another variant (SCNet Masked's extra keys).
    masked = tmp_path / "masked.yaml"
    masked.write_text(FOUR.replace("expand: 1", "expand: 1\n  max_f: 2049"))
    assert "model.max_f is not a parameter of MSST's scnet" in _error(
        capsys, "models", "import", str(ckpt), "--config", str(masked))
    # A state dict that does not fit: the first differing key and both shapes.
    wider = tmp_path / "wider.yaml"
    wider.write_text(FOUR.replace("dims: [4, 8, 12, 16]", "dims: [4, 8, 12, 24]"))
    err = _error(capsys, "models", "import", str(ckpt), "--config", str(wider))
    assert "'encoder.2.SDlayer.convs.0.weight' is [16, 12, 3, 1] in the checkpoint but [24, 12, 3, 1] by the config" in err
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text(FOUR.replace("num_dplayer: 2", "num_dplayer: 4"))
    assert "has no 'separation_net.dp_modules.2.lstm_layers.0.weight_ih_l0'" in _error(
        capsys, "models", "import", str(ckpt), "--config", str(deeper))
    # A truncated checkpoint.
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert "truncated" in _error(capsys, "models", "import", str(cut), "--config", str(config))
    # Inconsistent configs, told before torch loads anything.
    odd = tmp_path / "odd.yaml"
    odd.write_text(FOUR.replace("num_dplayer: 2", "num_dplayer: 3"))
    assert "model.num_dplayer must be even" in _error(capsys, "models", "import", str(ckpt), "--config", str(odd))
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(FOUR.replace("band_SR: [0.175, 0.392, 0.433]", "band_SR: [0.0, 0.5, 0.5]"))
    assert "the low band has 0 bins, too few for band_kernel 3" in _error(
        capsys, "models", "import", str(ckpt), "--config", str(narrow))
    assert not folder.exists() or not any(folder.iterdir())


def test_recognise_tells_scnet_checkpoints_by_their_keys(imported, tmp_path):
    ckpt, config, _, _, _ = imported["four"]
    family = registered()["scnet"]
    found = family.recognise(ckpt)
    assert found is not None and found.family == "scnet" and found.config == config and not found.ready
    assert found.stems == ("drums", "bass", "other", "vocals") and f"--config {config}" in found.command
    # The same bytes under another name are still an SCNet; another model's checkpoint is not, whatever its name.
    renamed = tmp_path / "whatever.pth"
    renamed.write_bytes(ckpt.read_bytes())
    assert family.recognise(renamed).config is None
    other = tmp_path / "scnet_xl.ckpt"
    torch.save({"layers.0.weight": torch.zeros(2)}, other)
    assert family.recognise(other) is None


def test_torch_is_not_imported_at_run_time():
    code = ("import sys, bridge.separation.scnet, bridge.separation.msst_grid, bridge.importers.scnet, "
            "bridge.importers.scnet_config; from bridge.separation.families import registered; registered(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def _cli(*argv, models: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMBRIDGE_MODELS": str(models)}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *map(str, argv)], check=False, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_cli_separate_render_cache_and_eval(imported, tmp_path):
    """The family through the CLI unchanged: models, separate, a preset render (twice: the second from
    the cache, bit for bit) and eval against the song's reference stems."""
    _, _, _, _, folder = imported["four"]
    listing = _cli("models", models=folder)
    assert listing.returncode == 0, listing.stderr
    line = next(l for l in listing.stdout.splitlines() if l.strip().startswith("tiny-four "))
    assert "scnet" in line and "num_overlap 4" in line and "parity" in line
    song = tmp_path / "song.wav"
    mix, _ = sf.read(str(ROCK / "mixture.flac"), dtype="float32")
    sf.write(str(song), mix[: 3 * RATE], RATE, subtype="FLOAT")
    done = _cli("separate", song, "--model", "tiny-four", "--out", tmp_path / "sep", "--bit-depth", "32", "--no-cache",
                models=folder)
    assert done.returncode == 0, done.stderr
    stems = {s: sf.read(str(tmp_path / "sep" / "song" / f"{s}.wav"), dtype="float32")[0]
             for s in ("drums", "bass", "other", "vocals")}
    assert all(v.shape == mix[: 3 * RATE].shape for v in stems.values())
    preset = tmp_path / "no-drums.yaml"
    preset.write_text(yaml.safe_dump({"version": 1, "separator": {"model": "tiny-four"},
                                      "stems": {"drums": {"mute": True}},
                                      "output": {"format": "wav", "bit_depth": 32, "files": {"mix": "{track}.{ext}"}}}))
    cache = tmp_path / "cache"
    for out in ("fresh", "cached"):
        done = _cli("render", preset, song, "--out", tmp_path / out, "--cache-dir", cache, models=folder)
        assert done.returncode == 0, done.stderr
    assert "1 from cached stems" in done.stdout
    fresh = sf.read(str(tmp_path / "fresh" / "song.wav"), dtype="float32")[0]
    np.testing.assert_array_equal(fresh, sf.read(str(tmp_path / "cached" / "song.wav"), dtype="float32")[0])
    rest = stems["bass"] + stems["other"] + stems["vocals"]
    assert snr_db(rest, fresh[: len(rest)]) > 60  # the render is the sum of the stems it did not mute
    assert np.abs(fresh[len(rest):]).max(initial=0) < 1e-6  # (then the tail the render leaves for effects)
    refs = tmp_path / "refs" / "rock"
    refs.mkdir(parents=True)
    for name in ("mixture", "drums", "bass", "other", "vocals"):
        audio, _ = sf.read(str(ROCK / f"{name}.flac"), dtype="float32")
        sf.write(str(refs / f"{name}.wav"), audio[: 3 * RATE], RATE, subtype="FLOAT")
    scores = tmp_path / "scores.json"
    done = _cli("eval", "--model", "tiny-four", "--references", tmp_path / "refs", "--json", scores, models=folder)
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines()]
    assert {row[1] for row in table if row and row[0] == "rock"} >= {"drums", "bass", "other", "vocals"}
    assert "tiny-four" in scores.read_text() and "vocals" in scores.read_text()


def test_config_checks_without_torch_names():
    data = yaml.safe_load(FOUR.replace("!!python/tuple", ""))
    cfg = parse_config(data, source="c.yaml")
    assert cfg.stems == ("drums", "bass", "other", "vocals") and cfg.pad == 94 and cfg.dim_t == 174
    # 257 bins: low ceil(257 * .175) = 45 (stride 1), mid ceil(257 * .567) - 45 = 101 -> 104 / 4 = 26,
    # high 111 -> 112 / 16 = 7: 78; then 14 + 31 -> 32 / 4 = 8 + 33 -> 48 / 16 = 3: 25
    assert [lvl.bins for lvl in cfg.levels()] == [257, 78, 25] and cfg.levels()[1].out_bins == 14 + 8 + 3
    data["model"]["dims"] = [2, 8, 12, 16]
    with pytest.raises(ModelError, match="model.dims starts with 2"):
        parse_config(data, source="c.yaml")
