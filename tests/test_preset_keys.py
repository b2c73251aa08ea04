"""A preset that names the same key twice is an error naming the key and both lines.

PyYAML keeps the last of two equal keys silently (checked below, so the test notices if that
ever changes); stembridge refuses the file, in every section, before anything is rendered.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml

from bridge.cli import main as cli
from bridge.errors import PresetError
from bridge.preset.safeyaml import load_yaml
from bridge.preset.session import load

BASE = """\
version: 1
separator: {model: dsp}
pre: [{effect: HighpassFilter, cutoff_frequency_hz: 30}]
stems:
  vocals:
    gain_db: 3
    chain:
      - {effect: Compressor, threshold_db: -18}
  instrumental: {pan: 0.1}
master: [{effect: Limiter}]
output:
  format: wav
  tail_seconds: 1
"""


def write(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_pyyaml_alone_keeps_the_last_key_silently():
    assert yaml.safe_load("a: 1\na: 2\n") == {"a": 2}


def test_the_base_preset_loads(tmp_path):
    assert load(write(tmp_path, BASE)).stem("vocals").gain_db == 3.0


@pytest.mark.parametrize(("edit", "where", "lines"), [
    (("version: 1\n", "version: 1\nversion: 1\n"), "version", (1, 2)),
    (("  format: wav\n", "  format: wav\n  format: flac\n"), "output.format", (12, 13)),
    (("    gain_db: 3\n", "    gain_db: 3\n    pan: 0\n    gain_db: -3\n"), "stems.vocals.gain_db", (6, 8)),
    (("  instrumental: {pan: 0.1}\n", "  instrumental: {pan: 0.1}\n  vocals: {mute: true}\n"), "stems.vocals",
     (5, 10)),
    (("- {effect: Compressor, threshold_db: -18}", "- {effect: Compressor, threshold_db: -18, threshold_db: -6}"),
     "stems.vocals.chain[0].threshold_db", (8, 8)),
    (("separator: {model: dsp}", "separator: {model: dsp, model: default}"), "separator.model", (2, 2)),
    (("version: 1\n", "version: 1\ninput: {stream: 0, stream: 1}\n"), "input.stream", (2, 2)),
    (("master: [{effect: Limiter}]", "master: [{effect: Limiter}]\nmaster: []"), "master", (10, 11)),
    (("pre: [{effect: HighpassFilter, cutoff_frequency_hz: 30}]",
      "pre: [{effect: HighpassFilter, cutoff_frequency_hz: 30, cutoff_frequency_hz: 40}]"),
     "pre[0].cutoff_frequency_hz", (3, 3)),
])
def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path, edit, where, lines):
    old, new = edit
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(PresetError) as caught:
        load(path)
    message = str(caught.value)
    key = where.rsplit(".", 1)[-1].split("[")[0]
    shown = f"twice on line {lines[0]}" if lines[0] == lines[1] else f"twice, at line {lines[0]} and line {lines[1]}"
    assert message == (f"{path}: {where}: the key '{key}' is given {shown}; YAML would silently keep the last one: "
                       "delete one of them")


def test_new_sections_are_checked_too(tmp_path):
    path = write(tmp_path, BASE + "automation:\n  stems.vocals.gain_db: [[0, 0]]\n  stems.vocals.gain_db: [[1, 0]]\n")
    with pytest.raises(PresetError, match=r"automation\.stems\.vocals\.gain_db: the key 'stems\.vocals\.gain_db' "
                                          r"is given twice, at line 15 and line 16"):
        load(path)


def test_the_cli_prints_one_line_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, BASE.replace("    gain_db: 3\n", "    gain_db: 3\n    gain_db: 4\n"))
    out = tmp_path / "out"
    assert cli(["render", str(path), str(tmp_path / "missing.wav"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"stembridge: error: {path}: stems.vocals.gain_db: the key 'gain_db' is given twice, at line 6 "
                   "and line 7; YAML would silently keep the last one: delete one of them\n")
    assert not out.exists()


def test_merge_keys_may_be_overridden_and_aliases_are_checked_once(tmp_path):
    data = load_yaml("base: &b {x: 1, y: 2}\nover: {<<: *b, x: 3}\nagain: *b\n", source="t.yaml", error=PresetError)
    assert data == {"base": {"x": 1, "y": 2}, "over": {"x": 3, "y": 2}, "again": {"x": 1, "y": 2}}
    with pytest.raises(PresetError, match=r"t\.yaml: base\.x: the key 'x' is given twice on line 1"):
        load_yaml("base: &b {x: 1, x: 2}\nagain: *b\n", source="t.yaml", error=PresetError)


def test_equal_text_with_different_types_is_not_a_duplicate():
    assert load_yaml("1: a\n'1': b\n", source="t.yaml", error=PresetError) == {1: "a", "1": "b"}
