"""The family registry (bridge/separation/families.py) and the Separator protocol.

A family declared in one module, outside the package, is what the card loader, load_separator
and ``stembridge models`` use; a hand-written separator that satisfies the protocol renders
through a RenderGraph and names itself in the manifest.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from bridge.errors import ModelError
from bridge.separation import Separator, WholeSongStream, families, load_separator
from bridge.separation.models import load_card

SR = 44100

TOY_FAMILY = '''
"""A toy family: vocals are half the mix. Declared as a family module would declare itself."""
from bridge.errors import ModelError
from bridge.separation.families import Family, register


class HalfEngine:
    sample_rate = 44100
    chunk = 8192
    trim = 1024
    stems = ("vocals", "instrumental")
    residual_stem = "instrumental"

    def __init__(self, card):
        self.card = card
        self.options = {"share": card.compensate}

    def run(self, chunks):
        return {"vocals": chunks * self.card.compensate}


def check_card(card, source):
    if not 0 < card.compensate < 1:
        raise ModelError(f"{source}: a toy card needs compensate between 0 and 1, got {card.compensate}")


FAMILY = register(Family(name="toy", open_engine=lambda card, settings: HalfEngine(card), check=check_card,
                         weights=False, details=lambda card: [f"{card.compensate:g} of the mix"]))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy family registered from its own module, and a folder with one card of it."""
    monkeypatch.setattr(families, "_REGISTRY", dict(families.registered()))  # undone after the test
    module = tmp_path / "toyfamily.py"
    module.write_text(TOY_FAMILY)
    spec = importlib.util.spec_from_file_location("toyfamily", module)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "toy-half.yaml").write_text("name: toy-half\nfamily: toy\nstems: [vocals, instrumental]\n"
                                          "compensate: 0.5\n")
    monkeypatch.setenv("STEMBRIDGE_MODELS", str(folder))
    return folder


def test_the_built_in_families_register_themselves():
    assert {"mdx", "mask", "roformer", "dsp", "hpss"} <= set(families.registered())


def test_a_card_of_an_unknown_family_lists_the_registered_ones(tmp_path):
    card = tmp_path / "bandit.yaml"  # (this test named demucs, then scnet, until those families came)
    card.write_text("name: bandit\nfamily: bandit\nstems: [speech, music, effects]\n")
    with pytest.raises(ModelError) as info:
        load_card(card)
    message = str(info.value)
    assert message.startswith(f"{card}: family 'bandit' is not one of ") and "\n" not in message
    assert all(name in message for name in families.registered())


def test_a_family_registered_from_its_module_is_what_the_card_loader_uses(toy):
    card = load_card(toy / "toy-half.yaml")
    assert card.family == "toy" and card.stems == ("vocals", "instrumental")
    bad = toy / "bad.yaml"
    bad.write_text("name: toy-bad\nfamily: toy\nstems: [vocals, instrumental]\ncompensate: 2\n")
    with pytest.raises(ModelError, match=r"bad\.yaml: a toy card needs compensate between 0 and 1, got 2"):
        load_card(bad)


def test_a_family_registered_from_its_module_is_what_load_separator_uses(toy, rng):
    separator = load_separator("toy-half")
    assert isinstance(separator, Separator)
    assert separator.card.name == "toy-half" and separator.residual == "instrumental"
    assert separator.settings == {"overlap": 0.25, "share": 0.5}
    x = (0.1 * rng.standard_normal((2, SR))).astype(np.float32)
    out = separator(x, SR)
    np.testing.assert_allclose(out["vocals"], 0.5 * x, atol=1e-5)  # overlap-add of a linear engine
    np.testing.assert_allclose(out["vocals"] + out["instrumental"], x, atol=1e-6)  # float32 sums


def test_a_family_registered_from_its_module_is_listed_by_stembridge_models(toy, capsys):
    from bridge.cli import main as cli

    assert cli(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "toy-half" in line)
    assert row.split()[:3] == ["toy-half", "toy", "vocals/instrumental"] and "(0.5 of the mix)" in row


def test_a_family_name_is_taken_once():
    with pytest.raises(ModelError, match="family 'mask' is registered twice"):
        families.register(families.Family(name="mask", open_engine=lambda card, settings: None))


def test_the_built_in_names_come_from_their_families():
    assert families.builtin_card("dsp").family == "dsp"
    assert families.builtin_card("default-4stems").family == "hpss"
    assert families.builtin_card("no-such-model") is None


# --- the Separator protocol ------------------------------------------------------------------------

class Halves:
    """A separator written by hand: no base class, no engine, no card."""

    name = "halves"
    stems = ("vocals", "instrumental")
    settings = {"share": 0.5}
    card = None
    residual = "instrumental"

    def __call__(self, audio, sample_rate):
        vocals = (0.5 * audio).astype(np.float32)
        return {"vocals": vocals, "instrumental": audio - vocals}

    def stream(self, *, sample_rate, channels):
        return WholeSongStream(self, sample_rate=sample_rate, channels=channels)


def test_every_separator_satisfies_the_protocol():
    from bridge.quality.evaluate import NoSplit

    dsp = load_separator("dsp")
    for separator in (Halves(), dsp, NoSplit(dsp)):
        assert isinstance(separator, Separator), separator
        assert isinstance(separator.name, str) and isinstance(dict(separator.settings), dict)
    assert dsp.card.family == "dsp" and dsp.residual == "instrumental" and NoSplit(dsp).settings == dsp.settings
    assert NoSplit(dsp).card is None  # a yardstick: never cached


def test_a_hand_written_separator_renders_and_names_itself_in_the_manifest(tmp_path, rng):
    from bridge.audio import files
    from bridge.preset.session import parse
    from bridge.render.graph import RenderGraph
    from bridge.render.song import render_file

    x = (0.1 * rng.standard_normal((2, SR // 2))).astype(np.float32)
    source = tmp_path / "song.wav"
    files.write(source, x, SR, bit_depth=32)
    session = parse({"version": 1, "stems": {"vocals": {"gain_db": -6.0206}},  # 20 log10(1/2)
                     "output": {"bit_depth": 32, "tail_seconds": 0.0}}, source="halves.yaml")
    written = render_file(source, RenderGraph(session, Halves()), tmp_path / "out")
    mix, _ = files.read(written["mix"])
    np.testing.assert_allclose(mix, 0.25 * x + 0.5 * x, atol=1e-5)  # vocals at half, the rest as is
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["model"]["name"] == "halves" and manifest["model"]["settings"] == {"share": 0.5}


# --- a chain's lanes -------------------------------------------------------------------------------

def test_session_lanes_keep_a_stems_own_lanes_apart_from_its_effects():
    from bridge.preset.session import ChainLanes, parse

    session = parse({"version": 1, "separator": {"model": "dsp"},
                     "stems": {"vocals": {"chain": [{"effect": "Gain"}, {"effect": "Reverb"}]}},
                     "pre": [{"effect": "Gain"}],
                     "automation": {"stems.vocals.gain_db": [[0, -6], [1, 0]], "stems.vocals.pan": [[0, -1], [1, 1]],
                                    "stems.vocals.chain[1].wet_level": [[0, 0.1], [1, 0.5]],
                                    "pre[0].gain_db": [[0, 0], [1, 3]]}}, source="lanes.yaml")
    vocals = session.lanes("stems", "vocals")
    assert isinstance(vocals, ChainLanes)
    assert set(vocals.mix) == {"gain_db", "pan"} and vocals.mix["gain_db"].values == (-6.0, 0.0)
    assert list(vocals.effects) == [1] and [p for p, _ in vocals.effects[1]] == ["wet_level"]
    pre = session.lanes("pre")
    assert list(pre.effects) == [0] and pre.mix == {}
    assert session.lanes("master") == ChainLanes() and session.lanes("stems", "instrumental") == ChainLanes()


def test_families_are_asked_in_name_order_whatever_registered_first(monkeypatch, tmp_path):
    """A ``.th`` file without a config is Demucs's, although the RoFormer importer also takes torch
    checkpoints: the registry lists families by name, not by which module was imported first (the
    whole suite imported roformer first and sent Demucs files to the RoFormer importer)."""
    found = families.registered()
    shuffled = {name: found[name] for name in ["roformer", *[n for n in found if n != "roformer"]]}
    monkeypatch.setattr(families, "_REGISTRY", shuffled)
    assert list(families.registered()) == sorted(found)
    path = tmp_path / "955717e8-8726e21a.th"
    path.write_bytes(b"not a pickle")
    claims = [f.name for f in families.registered().values() if f.importer is not None and f.imports(path, None)]
    assert claims[0] == "demucs"


def test_finding_the_families_imports_no_heavy_module():
    """Every run asks the registry, which imports every family module: a family's heavy imports
    (scipy.signal pulls in scipy.stats: 0.6 s; torch; onnxruntime) wait until its engine runs."""
    code = ("import sys; from bridge.separation import families; families.registered(); "
            "heavy = [m for m in ('scipy.signal', 'scipy.stats', 'torch', 'onnxruntime', 'av', 'pedalboard') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
