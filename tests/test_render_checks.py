"""``stembridge render`` runs ``preset check``'s checks before the first song.

A preset that ``preset check`` refuses is a usage error found before any work: exit 2, one line,
nothing written (README, "Exit codes"), never the same failure once per song.
"""

from __future__ import annotations

import numpy as np

from bridge.audio import files
from bridge.cli import main as cli

SR = 44100


def songs(folder, rng, count=2):
    folder.mkdir()
    for i in range(count):
        files.write(folder / f"{i}.wav", (0.1 * rng.standard_normal((2, SR // 4))).astype(np.float32), SR,
                    bit_depth=24)
    return folder


def test_render_of_a_preset_that_preset_check_refuses_exits_2_in_one_line_and_writes_nothing(tmp_path, rng, capsys):
    preset = tmp_path / "dj.yaml"
    preset.write_text('version: 1\nseparator: {model: dsp}\noutput: {files: {nistems: "{track}.stem.mp4"}}\n')
    inputs = songs(tmp_path / "in", rng)
    out = tmp_path / "out"
    assert cli(["preset", "check", str(preset)]) == 2
    checked = capsys.readouterr().err.strip()
    assert cli(["render", str(preset), str(inputs), "--out", str(out), "--no-cache", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [checked]  # the same line as preset check, once, not once per song
    assert "dj.yaml: output.files.nistems: NI Stems holds the mix and exactly four stems" in err[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_render_of_a_preset_naming_a_stem_the_model_lacks_exits_2(tmp_path, rng, capsys):
    preset = tmp_path / "drums.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nstems: {drums: {gain_db: -3}}\n")
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(songs(tmp_path / "in", rng)), "--out", str(out), "--no-cache",
                "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drums.yaml: stems.drums: the model gives no stem 'drums'" in err[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_a_preset_that_passes_the_check_still_renders(tmp_path, rng, capsys):
    preset = tmp_path / "ok.yaml"
    preset.write_text("version: 1\nseparator: {model: dsp}\nstems: {vocals: {gain_db: -3}}\n"
                      "output: {tail_seconds: 0.1}\n")
    assert cli(["preset", "check", str(preset)]) == 0
    out = tmp_path / "out"
    assert cli(["render", str(preset), str(songs(tmp_path / "in", rng)), "--out", str(out), "--no-cache",
                "--quiet"]) == 0
    assert sorted(p.name for p in out.rglob("*.remix.wav")) == ["0.remix.wav", "1.remix.wav"]
