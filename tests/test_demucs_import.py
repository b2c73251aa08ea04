"""``stembridge models import`` of Demucs files: safe loading (crafted pickles refused before they
run), the card, one ONNX per distinct network, ONNX == torch, and every bad input as a one-line
error that writes nothing.

Model files are random-weight HTDemucs built with the ``demucs`` package and saved as Demucs saves
them (``tests/demucs_models.py``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("demucs")
pytest.importorskip("omegaconf")

import numpy as np  # noqa: E402

import demucs_models as dm  # noqa: E402
from bridge.cli import main as cli  # noqa: E402
from bridge.errors import ModelError  # noqa: E402
from bridge.importers.demucs_pickle import read_package  # noqa: E402
from bridge.separation.models import load_card  # noqa: E402


@pytest.fixture(scope="module")
def shared():
    """The Demucs repo and its import through the CLI (.th, bag .yaml, folder + --name), shared with
    tests/test_demucs.py (``demucs_models.shared_repo``)."""
    return dm.shared_repo()


@pytest.fixture(scope="module")
def files(shared):
    repo, _ = shared
    by_sig = {p.name.split("-")[0]: p for p in repo.glob("*.th")}
    return {"folder": repo, "single": by_sig["955717e8"], "a": by_sig["f7e0c4bc"], "b": by_sig["d12395a8"],
            "bag": repo / "tiny_ft.yaml"}


@pytest.fixture(scope="module")
def imported(shared):
    return shared[1]


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    return folder


def _error(capsys, *argv) -> str:
    assert cli(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


# -- safe loading -------------------------------------------------------------------------------

class _Payload:
    """Pickles as ``func(*args)``: what a malicious file runs under ``torch.load(weights_only=False)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _crafted(path, payload, *, inside_demucs: bool = True):
    """A torch file holding ``payload`` (inside an otherwise real Demucs package, or alone)."""
    if inside_demucs:
        model = dm.build(dm.reduced(), seed=0)
        from demucs.states import serialize_model
        from omegaconf import OmegaConf
        package = serialize_model(model, OmegaConf.create({}))
        package["training_args"] = {"note": payload}
    else:
        package = payload
    torch.save(package, path)
    return path


def _unknown_module_payload(tmp_path, marker):
    """A payload calling a function of a module that exists only while the file is written."""
    module_dir = tmp_path / "evil"
    module_dir.mkdir()
    (module_dir / "stembridge_evil_payload.py").write_text(
        "def run(path):\n    open(path, 'w').write('ran')\n")
    sys.path.insert(0, str(module_dir))
    try:
        import stembridge_evil_payload
        path = _crafted(tmp_path / "unknown_module.th", _Payload(stembridge_evil_payload.run, str(marker)))
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("stembridge_evil_payload", None)
    return path


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen", "unknown module"])
def test_a_file_that_would_run_code_is_refused_before_it_runs(kind, tmp_path, models_folder, capsys):
    marker = tmp_path / "marker"
    if kind == "os.system":
        path = _crafted(tmp_path / "x.th", _Payload(os.system, f"touch {marker}"))
        named = "system"  # pickled as posix.system
    elif kind == "builtins.eval":
        path = _crafted(tmp_path / "x.th", _Payload(eval, f"open({str(marker)!r}, 'w')"))
        named = "builtins.eval"
    elif kind == "subprocess.Popen":
        path = _crafted(tmp_path / "x.th", _Payload(subprocess.Popen, ["touch", str(marker)]))
        named = "Popen"  # pickled under its Python 2 name, commands.Popen (protocol 2's fix_imports)
    else:
        path = _unknown_module_payload(tmp_path, marker)
        named = "stembridge_evil_payload.run"
    with pytest.raises(ModelError, match="refused") as info:
        read_package(path)
    assert named in str(info.value) and str(path) in str(info.value)
    err = _error(capsys, "models", "import", str(path))
    assert named in err and "refused" in err
    assert not marker.exists()  # the payload never ran
    assert not models_folder.exists() or not any(models_folder.iterdir())


def test_a_bare_pickle_payload_outside_a_demucs_package_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "bare.th", _Payload(os.system, f"touch {marker}"), inside_demucs=False)
    with pytest.raises(ModelError, match="refused"):
        read_package(path)
    assert not marker.exists()
    # The same bytes do run under the plain unpickler: the test's payload is real.
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_real_file_reads_as_the_class_name_and_plain_values(files):
    package = read_package(files["single"])
    assert package.klass == "HTDemucs"
    assert package.kwargs["segment"] == Fraction(39, 20)
    assert package.kwargs["sources"] == dm.SOURCES_4
    assert not package.quantized
    assert all(t.dtype == torch.float16 for t in package.state.values())  # serialize_model's half=True
    assert "demucs.htdemucs" not in sys.modules or True  # the class is a name here, never called


def test_truncated_and_foreign_files_are_one_line_errors_that_write_nothing(files, tmp_path, models_folder, capsys):
    data = files["single"].read_bytes()
    cut = tmp_path / "cut.th"
    cut.write_bytes(data[: len(data) // 2])
    err = _error(capsys, "models", "import", str(cut))
    assert str(cut) in err and "truncated" in err
    foreign = tmp_path / "foreign.th"
    torch.save({"weight": torch.zeros(3)}, foreign)
    err = _error(capsys, "models", "import", str(foreign))
    assert str(foreign) in err and "not a Demucs model file" in err
    renamed = tmp_path / "955717e8-00000000.th"  # Demucs's checksum in the name does not match
    renamed.write_bytes(data)
    err = _error(capsys, "models", "import", str(renamed))
    assert "sha256" in err and "00000000" in err
    assert not models_folder.exists() or not any(models_folder.iterdir())


def test_diffq_mdx_hybrid_and_v2_files_are_refused_naming_what_is_supported(tmp_path, models_folder, capsys):
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    quantized = serialize_model(dm.build(dm.reduced(), seed=0), OmegaConf.create({}))
    quantized["state"] = {"__quantized": True, "quantized": [torch.zeros(4, dtype=torch.int8)]}
    torch.save(quantized, tmp_path / "mdx_q.th")
    torch.save(serialize_model(HDemucs(dm.SOURCES_4, channels=8, depth=2, hybrid_old=True), OmegaConf.create({})),
               tmp_path / "hdemucs.th")
    torch.save(serialize_model(Demucs(dm.SOURCES_4, channels=8, depth=2), OmegaConf.create({})),
               tmp_path / "v2.th")
    for name, says in (("mdx_q.th", "DiffQ"), ("hdemucs.th", "HDemucs model with hybrid_old=True"),
                       ("v2.th", "v2 time-domain")):
        err = _error(capsys, "models", "import", str(tmp_path / name))
        assert says in err and "htdemucs, htdemucs_ft, htdemucs_6s" in err and "hdemucs_mmi" in err, err
    assert not models_folder.exists() or not any(models_folder.iterdir())


# -- import ---------------------------------------------------------------------------------------

def test_a_single_file_imports_with_its_card(files, imported):
    models_folder = imported
    card = load_card(models_folder / "htdemucs.yaml")
    assert card.family == "demucs" and card.stems == ("drums", "bass", "other", "vocals")
    assert card.sample_rate == 44100 and card.audio_channels == 2 and card.n_fft == 4096 and card.hop == 1024
    members = card.demucs["models"]
    assert [m["segment"] for m in members] == [int(44100 * Fraction(39, 20))]  # 85995 samples
    onnx_file = models_folder / members[0]["file"]
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == members[0]["sha256"] == card.sha256
    record = card.imported["files"][0]
    assert record["file"] == files["single"].name
    assert record["sha256"] == hashlib.sha256(files["single"].read_bytes()).hexdigest()
    assert card.imported["parity_db"] >= 60
    assert {"htdemucs.onnx", "htdemucs.yaml"} <= {p.name for p in models_folder.iterdir()}
    assert not [p.name for p in models_folder.iterdir() if p.name.startswith(".")]  # no partial files left


def test_onnx_has_both_branches_and_equals_torch(files, imported):
    from bridge.importers.demucs import build_network
    from bridge.separation.demucs import DemucsNetwork

    models_folder = imported
    card = load_card(models_folder / "htdemucs.yaml")
    member = card.demucs["models"][0]
    network = DemucsNetwork(models_folder / member["file"], segment=member["segment"], n_fft=4096, stems=4,
                            channels=2)
    names = sorted(o.name for o in network.session.get_outputs())
    assert names == ["frequency", "time"]  # the frequency branch is kept
    net = build_network(read_package(files["single"]))
    rng = np.random.default_rng(7)
    x = (0.2 * rng.standard_normal((2, 2, member["segment"]))).astype(np.float32)  # a batch of two
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = network(x)
    for k in range(4):
        err = np.sum((got[:, k] - expected[:, k]) ** 2)
        assert 10 * np.log10(np.sum(expected[:, k] ** 2) / err) > 60
    # Without the frequency branch the chunk is far from torch's: both branches carry signal.
    spec = network.spectrogram.forward(x)
    (wave,) = network.session.run([network.wave_name], {network.mix_name: x, network.spec_name: spec})
    assert 10 * np.log10(np.sum(expected ** 2) / np.sum((wave - expected) ** 2)) < 20


def test_hdemucs_onnx_takes_any_length_and_equals_torch(shared):
    """The HDemucs graph's time axes are free: each length gives torch's chunk, on both sides of
    where a BLSTM starts framing its input (200 steps: 204,800 and 409,600 samples at hop 1024),
    for a batch of two, and for a chunk of one sample."""
    from bridge.importers.demucs import build_network
    from bridge.separation.demucs import DemucsNetwork

    repo, models = shared
    card = load_card(models / "hdemucs_mmi.yaml")
    assert card.demucs["architecture"] == "hdemucs" and card.imported["files"][0]["class"] == "HDemucs"
    member = card.demucs["models"][0]
    assert member["segment"] == dm.HDEMUCS_SEGMENT * 44100  # the bag's segment, as BagOfModels sets it
    network = DemucsNetwork(models / member["file"], segment=member["segment"], n_fft=4096, stems=4, channels=2,
                            fixed=False)
    (th,) = repo.glob("75fc33f5-*.th")
    net = build_network(read_package(th))
    rng = np.random.default_rng(8)
    for length, batch in ((204800, 1), (204801, 2), (409601, 1), (1, 1)):
        x = (0.2 * rng.standard_normal((batch, 2, length))).astype(np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        got = network(x)
        assert got.shape == expected.shape
        db = 10 * np.log10(np.sum(expected ** 2) / np.sum((got - expected) ** 2))
        print(f"hdemucs chunk of {length}: {db:.1f} dB")
        assert db > 60, (length, db)


def test_a_bag_from_its_yaml_and_from_the_folder_with_name(files, imported):
    from bridge.importers.demucs import locate

    models_folder = imported
    card = load_card(models_folder / "tiny_ft.yaml")
    assert [m["signature"] for m in card.demucs["models"]] == ["f7e0c4bc", "d12395a8"]
    assert card.demucs["weights"] == [[float(w) for w in row] for row in dm.BAG_WEIGHTS]
    assert [m["segment"] for m in card.demucs["models"]] == [int(dm.BAG_SEGMENT * 44100)] * 2
    written = {p.name for p in models_folder.iterdir()}
    assert {"tiny_ft-d12395a8.onnx", "tiny_ft-f7e0c4bc.onnx", "tiny_ft.yaml"} <= written
    assert "tiny_ft.onnx" not in written
    assert [r["file"] for r in card.imported["files"]] == [files["a"].name, files["b"].name]
    # The bag's .yaml finds the same files as the folder with --name (Demucs's --repo).
    assert locate(files["bag"]).files == locate(files["folder"], name="tiny_ft").files == (
        ("f7e0c4bc", files["a"]), ("d12395a8", files["b"]))


def test_a_bag_naming_one_file_twice_writes_one_onnx(files, tmp_path, models_folder):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / files["a"].name).write_bytes(files["a"].read_bytes())
    dm.save_bag(folder, "twice", ["f7e0c4bc", "f7e0c4bc"], segment=1.5)
    assert cli(["models", "import", str(folder / "twice.yaml")]) == 0
    card = load_card(models_folder / "twice.yaml")
    assert [m["file"] for m in card.demucs["models"]] == ["twice-f7e0c4bc.onnx"] * 2
    assert card.demucs["models"][0]["segment"] == int(1.5 * 44100)  # the bag's segment (shorter) applies
    assert sorted(p.name for p in models_folder.iterdir()) == ["twice-f7e0c4bc.onnx", "twice.yaml"]


def test_bag_errors_are_one_line(files, tmp_path, models_folder, capsys):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / files["a"].name).write_bytes(files["a"].read_bytes())
    bag = dm.save_bag(folder, "missing", ["f7e0c4bc", "0000dead"])
    assert "0000dead" in _error(capsys, "models", "import", str(bag))
    bad = dm.save_bag(folder, "badweights", ["f7e0c4bc"], weights=[[1, 0]])
    assert "weights" in _error(capsys, "models", "import", str(bad))
    ragged = folder / "ragged.yaml"
    ragged.write_text("models: [f7e0c4bc]\nweights: [[1, 0, 0], [1]]\n")
    assert "weights" in _error(capsys, "models", "import", str(ragged))
    assert "nope" in _error(capsys, "models", "import", str(folder), "--name", "nope")
    six = dm.save(dm.build(dm.reduced(dm.SOURCES_6), seed=4), folder, "5c90dfd2")
    mixed = dm.save_bag(folder, "mixed", ["f7e0c4bc", "5c90dfd2"])
    assert "sources" in _error(capsys, "models", "import", str(mixed))
    assert six.exists()
    assert not models_folder.exists() or not any(models_folder.iterdir())


def test_an_existing_name_needs_force(files, imported, monkeypatch, capsys):
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(imported))
    before = {p.name: p.stat().st_mtime_ns for p in imported.iterdir()}
    err = _error(capsys, "models", "import", str(files["single"]), "--name", "htdemucs")
    assert "--force" in err and "htdemucs" in err
    assert {p.name: p.stat().st_mtime_ns for p in imported.iterdir()} == before


def test_the_run_time_needs_neither_torch_nor_demucs(imported):
    code = ("import sys, numpy as np; from bridge.separation import load_separator; "
            "s = load_separator('htdemucs', shifts=0, threads=1); s(np.zeros((2, 5000), np.float32), 44100); "
            "bad = [m for m in ('torch', 'demucs') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in sys.path if p]),
               STEMBRIDGE_MODELS=str(imported))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
