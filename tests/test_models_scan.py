"""``stembridge models scan``: real model files, built here as the other tests build them, laid out
as UVR, python-audio-separator, torch hub and an MSST checkout lay them out, under a fake HOME
(the environment points every default location into tmp folders: the real machine's are never
read); unknown files with model-like names; the listing, --json, one command run, and --import
with its checksum skip."""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TORCH, need_module

torch = need_module("torch", TORCH)
need_module("demucs")
need_module("omegaconf")

import demucs_models as dm  # noqa: E402
import onnx_models  # noqa: E402
import tf_checkpoints  # noqa: E402
from test_roformer_import import BS_CONFIG, MEL_CONFIG, _checkpoint  # noqa: E402

from bridge.cli import main as cli  # noqa: E402
from bridge.importers import scan as scanning  # noqa: E402
from bridge.separation import models, peek  # noqa: E402

PWNED = "stembridge-scan-pwned"


class _Payload:
    """Pickles as a call of os.system: a file naming it must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _ckpt(folder: Path, text: str, seed: int, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    return _checkpoint(folder, text, seed=seed, **kw)


def _move(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dst)
    return dst


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A home with UVR, audio-separator, torch hub and MSST folders: ``{what: path}``."""
    root = tmp_path_factory.mktemp("machine")
    home = root / "home"
    made = tmp_path_factory.mktemp("made")
    p = {"home": home, "root": root}
    # UVR: an MDX-Net .onnx with its card beside it (ready), one whose parameters nobody knows, a
    # RoFormer .ckpt with its config in model_data/mdx_c_configs, a VR .pth (no family here yet).
    uvr = home / "ultimatevocalremovergui" / "models"
    mdx = uvr / "MDX_Net_Models"
    mdx.mkdir(parents=True)
    p["mdx_ready"] = onnx_models.mdx_model(mdx / "UVR-MDX-NET-Inst_HQ_3.onnx", dim_f=64, dim_t=32)
    onnx_models.mdx_card(mdx / "UVR-MDX-NET-Inst_HQ_3.yaml", p["mdx_ready"], n_fft=256, dim_f=64, dim_t=32)
    p["mdx_unknown"] = onnx_models.mdx_model(mdx / "UVR_MDXNET_9482.onnx", dim_f=48, dim_t=16, kind="scale", gain=0.5)
    ckpt, config = _ckpt(made / "uvr", BS_CONFIG, seed=3)
    p["uvr_roformer"] = _move(ckpt, mdx / "model_bs_roformer_ep_937_sdr_10.5309.ckpt")
    p["uvr_config"] = _move(config, mdx / "model_data" / "mdx_c_configs" / "model_bs_roformer_ep_937.yaml")
    vr = uvr / "VR_Models"
    vr.mkdir()
    p["vr"] = vr / "6_HP-Karaoke-UVR.pth"
    torch.save({"stg1_low_band_net.0.enc1.conv.0.weight": torch.zeros(4, 2, 3, 3)}, p["vr"])
    # UVR's Demucs v3/v4 repo: two reduced HTDemucs files and a bag of them.
    repo = uvr / "Demucs_Models" / "v3_v4_repo"
    repo.mkdir(parents=True)
    th1 = dm.save(dm.build(dm.reduced(), seed=1), repo, "aaaa1111")
    dm.save(dm.build(dm.reduced(), seed=2), repo, "bbbb2222")
    p["bag"] = dm.save_bag(repo, "tiny_ft", ["aaaa1111", "bbbb2222"])
    p["th_in_repo"] = th1
    # python-audio-separator: a RoFormer with its config of the same name beside it, and files
    # named like models that are not: a mask-shaped .onnx, a truncated .th, a pickle with a payload.
    sep = root / "audio-separator-models"
    sep.mkdir()
    ckpt, config = _ckpt(made / "sep", MEL_CONFIG, seed=4, wrap="state_dict")
    p["sep_roformer"] = _move(ckpt, sep / "mel_band_roformer_kim_ft_unwa.ckpt")
    _move(config, sep / "mel_band_roformer_kim_ft_unwa.yaml")
    p["fake_mdx"] = onnx_models.mask_model(sep / "UVR-MDX-NET-Voc_FT.onnx", bins=64, cutoff_bin=32, dim_t=32)
    p["fake_th"] = sep / "htdemucs.th"
    p["fake_th"].write_bytes(th1.read_bytes()[:5000])
    p["marker"] = root / PWNED
    p["evil"] = sep / "model_bs_roformer_ep_317_sdr_12.9755.ckpt"
    p["evil"].write_bytes(pickle.dumps({"state_dict": _Payload(p["marker"])}, protocol=2))
    (sep / "model_bs_roformer_ep_317_sdr_12.9755.yaml").write_text(BS_CONFIG)
    # torch hub: a Demucs file as torch hub keeps it.
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    p["hub_th"] = dm.save(dm.build(dm.reduced(), seed=5), hub, "955717e8")
    # An MSST checkout: configs/ beside inference.py; checkpoints elsewhere in it, and two configs of
    # which only one fits the weights (so the config is chosen by shape, not by name).
    msst = home / "Music-Source-Separation-Training"
    (msst / "configs").mkdir(parents=True)
    (msst / "inference.py").write_text("# MSST's entry point (its presence marks the checkout)\n")
    (msst / "configs" / "config_vocals_bs_roformer.yaml").write_text(BS_CONFIG)
    ckpt, config = _ckpt(made / "msst", MEL_CONFIG, seed=6)
    p["msst_roformer"] = _move(ckpt, msst / "results" / "model_mel_band_roformer_ep_3005_sdr_11.4360.ckpt")
    p["msst_config"] = _move(config, msst / "configs" / "viperx" / "config_mel_band_roformer.yaml")
    # A RoFormer with no config anywhere near it.
    lone = root / "downloads"
    ckpt, config = _ckpt(made / "lone", BS_CONFIG, seed=7)
    p["lone"] = _move(ckpt, lone / "bs_roformer_lone.ckpt")
    # Spleeter folders: the layer names of 4 U-Nets (tiny tensors: the scan reads names only), and
    # a TensorFlow checkpoint of something else.
    spleeter = root / "pretrained_models"
    tensors = {name: np.zeros((1,), np.float32) for name in tf_checkpoints.spleeter_tensors(4, _Tiny())}
    tf_checkpoints.write_checkpoint(spleeter / "4stems" / "model", tensors)
    p["spleeter"] = spleeter / "4stems"
    tf_checkpoints.write_checkpoint(spleeter / "other" / "model", {"dense/kernel": np.ones((4, 3), np.float32)})
    p["not_spleeter"] = spleeter / "other"
    return p


class _Tiny:
    """An rng for tf_checkpoints.spleeter_tensors that draws nothing big (the values are dropped)."""

    def uniform(self, *args):
        return np.zeros(1, np.float32)

    normal = standard_normal = uniform


@pytest.fixture
def env(machine, tmp_path, monkeypatch):
    """Every default location inside the fake machine; the user model folder empty in tmp_path."""
    for key in ("LOCALAPPDATA", "XDG_CACHE_HOME", "STEMBRIDGE_MODELS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(machine["home"]))
    monkeypatch.setenv("TORCH_HOME", str(machine["root"] / "torch"))
    monkeypatch.setenv("AUDIO_SEPARATOR_MODEL_DIR", str(machine["root"] / "audio-separator-models"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "stembridge" / "models"


def _json(capsys, *argv) -> dict:
    assert cli(["models", "scan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _rows(listing: dict) -> dict[str, dict]:
    return {Path(m["path"]).name: m for m in listing["models"]}


def test_default_locations_follow_the_environment(env, machine):
    home = machine["home"]
    places = {(loc.what, loc.path) for loc in scanning.default_locations()}
    assert ("UVR", home / "ultimatevocalremovergui" / "models") in places
    assert ("audio-separator", machine["root"] / "audio-separator-models") in places
    assert ("torch hub", machine["root"] / "torch" / "hub" / "checkpoints") in places
    assert ("MSST", home / "Music-Source-Separation-Training") in places
    assert ("stembridge", env) in places
    windows = scanning.default_locations({"USERPROFILE": str(home), "LOCALAPPDATA": str(home / "AppData" / "Local")},
                                         platform="win32")
    assert windows[0].path == home / "AppData" / "Local" / "Programs" / "Ultimate Vocal Remover" / "models"
    assert windows[3].path == home / ".cache" / "torch" / "hub" / "checkpoints"  # torch hub without TORCH_HOME
    assert str(windows[2].path) == "/tmp/audio-separator-models"  # audio-separator's default


def test_scan_lists_what_each_tool_left(env, machine, capsys):
    listing = _json(capsys)
    rows = _rows(listing)
    assert {f["what"] for f in listing["folders"] if f["exists"]} == {"UVR", "audio-separator", "torch hub", "MSST"}
    assert [f["exists"] for f in listing["folders"] if f["what"] == "stembridge"] == [False]

    ready = rows["UVR-MDX-NET-Inst_HQ_3.onnx"]
    assert (ready["status"], ready["family"], ready["stems"]) == ("ready", "mdx", ["vocals", "instrumental"])
    assert ready["command"] == f"stembridge separate --model {machine['mdx_ready']} SONG"
    assert (rows["UVR_MDXNET_9482.onnx"]["status"], rows["UVR_MDXNET_9482.onnx"]["family"]) == ("needs card", "mdx")

    uvr = rows["model_bs_roformer_ep_937_sdr_10.5309.ckpt"]
    assert (uvr["status"], uvr["family"], uvr["stems"]) == ("import", "roformer", ["vocals", "instrumental"])
    assert uvr["config"] == str(machine["uvr_config"])
    sep = rows["mel_band_roformer_kim_ft_unwa.ckpt"]
    assert (sep["family"], sep["stems"]) == ("roformer", ["vocals", "instrumental"])
    msst = rows["model_mel_band_roformer_ep_3005_sdr_11.4360.ckpt"]
    assert msst["config"] == str(machine["msst_config"])  # the config whose shape fits, not the first one

    for name in ("aaaa1111", "bbbb2222", "955717e8"):
        th = next(r for n, r in rows.items() if n.startswith(name))
        assert (th["status"], th["family"], th["stems"]) == ("import", "demucs", dm.SOURCES_4)
    assert rows["tiny_ft.yaml"]["family"] == "demucs"
    assert rows["tiny_ft.yaml"]["command"] == f"stembridge models import {machine['bag']}"
    # Named like models, told by nothing: unknown, whatever the name says.
    for name in ("6_HP-Karaoke-UVR.pth", "UVR-MDX-NET-Voc_FT.onnx", "htdemucs.th",
                 "model_bs_roformer_ep_317_sdr_12.9755.ckpt"):
        assert (rows[name]["status"], rows[name]["family"], rows[name]["command"]) == ("unknown", None, ""), name
    assert not machine["marker"].exists()  # the payload's os.system never ran
    # Config files are read, never listed.
    assert not [n for n in rows if n.endswith(".yaml") and n != "tiny_ft.yaml"]


def test_named_folders_spleeter_and_a_lone_checkpoint(env, machine, capsys):
    listing = _json(capsys, str(machine["root"] / "pretrained_models"), str(machine["root"] / "downloads"),
                    str(machine["root"] / "gone"))
    rows = _rows(listing)
    spleeter = rows["4stems"]
    assert (spleeter["status"], spleeter["family"]) == ("import", "mask")
    assert spleeter["stems"] == ["vocals", "drums", "bass", "other"]
    assert rows["other"]["status"] == "unknown"
    lone = rows["bs_roformer_lone.ckpt"]
    assert (lone["status"], lone["family"], lone["config"]) == ("needs config", "roformer", None)
    assert [(f["path"], f["exists"]) for f in listing["folders"]][-1] == (str(machine["root"] / "gone"), False)
    # The human table says a missing folder once, and the exit code is 0.
    assert cli(["models", "scan", str(machine["root"] / "gone"), str(machine["root"] / "downloads")]) == 0
    out = capsys.readouterr().out
    assert out.count("gone") == 1 and "(not there)" in out and "needs config" in out


def test_a_file_named_as_a_folder_is_one_line(env, machine, capsys):
    assert cli(["models", "scan", str(machine["lone"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a file, not a folder" in err[0]


def test_uvr_hash_table_makes_an_onnx_ready(env, machine, tmp_path, monkeypatch, capsys):
    """A bare .onnx with no card beside it: ready when UVR's table has its hash and the table's
    dim_f/dim_t fit the graph, needing a card when they do not."""
    folder = tmp_path / "bare"
    folder.mkdir()
    fits = onnx_models.mdx_model(folder / "fits.onnx", dim_f=64, dim_t=32, batch=1)
    clash = onnx_models.mdx_model(folder / "clash.onnx", dim_f=48, dim_t=32, kind="scale", gain=0.5)
    table = {models.uvr_hash(fits): [1.0, 64, 32, 256, "Vocals", None, False],
             models.uvr_hash(clash): [1.0, 64, 32, 256, "Vocals", None, False]}
    monkeypatch.setattr(models, "uvr_table", lambda: table)
    assert peek.onnx_input_shape(fits) == [1, 4, 64, 32]
    rows = _rows(_json(capsys, str(folder)))
    assert (rows["fits.onnx"]["status"], rows["fits.onnx"]["stems"]) == ("ready", ["vocals", "instrumental"])
    assert rows["clash.onnx"]["status"] == "needs card"


def test_the_listed_command_imports_and_the_model_is_then_listed_ready(env, machine, tmp_path, capsys):
    folder = tmp_path / "one"
    ckpt, config = _ckpt(folder, BS_CONFIG, seed=9)
    command = _rows(_json(capsys, str(folder)))["model.ckpt"]["command"]
    argv = shlex.split(command)
    assert argv[:3] == ["stembridge", "models", "import"]
    assert cli(argv[1:]) == 0
    assert (env / "model.yaml").is_file() and (env / "model.onnx").is_file()
    capsys.readouterr()
    rows = _rows(_json(capsys, str(env)))
    assert (rows["model.onnx"]["status"], rows["model.onnx"]["model"]) == ("ready", "model")
    assert rows["model.onnx"]["command"] == "stembridge separate --model model SONG"


@pytest.mark.slow
def test_import_all_then_nothing_the_second_time(env, machine, tmp_path, capsys):
    folder = tmp_path / "sep"
    for kind, text in (("bs", BS_CONFIG), ("mel", MEL_CONFIG)):
        ckpt, config = _ckpt(tmp_path / kind, text, seed=11)
        _move(ckpt, folder / f"tiny-{kind}.ckpt")
        _move(config, folder / f"tiny-{kind}.yaml")
    onnx_models.mdx_model(folder / "UVR-MDX-NET-Inst_HQ_3.onnx", dim_f=64, dim_t=32)
    onnx_models.mdx_card(folder / "UVR-MDX-NET-Inst_HQ_3.yaml", folder / "UVR-MDX-NET-Inst_HQ_3.onnx", n_fft=256,
                         dim_f=64, dim_t=32)
    # Listing writes nothing: the user model folder is not even made.
    assert cli(["models", "scan", str(folder)]) == 0
    assert not env.exists()
    capsys.readouterr()
    first = _json(capsys, str(folder), "--import")["imported"]
    assert sorted((Path(o["path"]).name, o["imported"], o["skipped"]) for o in first) == [
        ("tiny-bs.ckpt", "tiny-bs", None), ("tiny-mel.ckpt", "tiny-mel", None)]
    cards = {p.name: yaml.safe_load(p.read_text()) for p in env.glob("*.yaml")}
    assert set(cards) == {"tiny-bs.yaml", "tiny-mel.yaml"}  # the ready MDX model needs no import
    written = {p: p.stat().st_mtime_ns for p in env.iterdir()}
    second = _json(capsys, str(folder), "--import")["imported"]
    assert sorted((Path(o["path"]).name, o["imported"], o["skipped"]) for o in second) == [
        ("tiny-bs.ckpt", None, "tiny-bs"), ("tiny-mel.ckpt", None, "tiny-mel")]
    assert {p: p.stat().st_mtime_ns for p in env.iterdir()} == written  # nothing rewritten
    # A copy under another name is the same checkpoint: skipped by checksum, not by name.
    (folder / "renamed.ckpt").write_bytes((folder / "tiny-bs.ckpt").read_bytes())
    (folder / "renamed.yaml").write_text(BS_CONFIG)
    third = _json(capsys, str(folder), "--import")["imported"]
    assert ("renamed.ckpt", None, "tiny-bs") in [(Path(o["path"]).name, o["imported"], o["skipped"]) for o in third]


def test_thousands_of_songs_are_not_opened(env, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "music"
    folder.mkdir()
    for i in range(3000):
        (folder / f"{i:04d} song.wav").write_bytes(b"")
    onnx_models.mdx_model(folder / "x.onnx", dim_f=64, dim_t=32)
    asked = []
    real = scanning.recognise
    monkeypatch.setattr(scanning, "recognise", lambda path: asked.append(path) or real(path))
    rows = _rows(_json(capsys, str(tmp_path)))
    assert [p.name for p in asked] == ["x.onnx"]
    assert list(rows) == ["x.onnx"]


def test_peek_reads_a_state_dict_and_runs_nothing(tmp_path):
    state = {"a.weight": torch.zeros(3, 4), "b": torch.zeros(2, dtype=torch.float16)}
    torch.save({"model": state}, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        assert peek.state_dict(peek.torch_object(tmp_path / name)) == {"a.weight": (3, 4), "b": (2,)}
    marker = tmp_path / PWNED
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    peek.torch_object(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    assert peek.torch_object(tmp_path / "junk.pt") is None
