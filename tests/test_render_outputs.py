"""A render's outputs stay as they were: every shipped preset, a session with every output kind
(stems, BWF chunks, a REAPER project with automation, NI Stems, a loudness target), album
loudness and ``separate``, held to numbers in JSON (``tests/goldens/render_outputs.json``,
made by ``tests/goldens/render_outputs.py`` before outputs became sinks).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

GOLDENS = Path(__file__).resolve().parent / "goldens"
sys.path.insert(0, str(GOLDENS))

import render_outputs  # noqa: E402

#: Manifests round levels to 0.001 dB; album levels used to be rounded twice (see the golden
#: script), which moves the last digit by one.
RECORD_ATOL = 1.5e-3
#: Per-channel RMS and peak of 24-bit files: far below one LSB (6e-8) of drift is allowed for, a
#: changed gain of 0.001 dB (1e-4 relative) is not.
LEVEL_ATOL = 1e-6
#: Sums of 4 s of samples: a polarity or channel swap moves them by far more.
SUM_ATOL = 1e-3


def _compare(found, golden, where: str, problems: list, atol: float) -> None:
    if isinstance(golden, dict):
        if not isinstance(found, dict) or sorted(found) != sorted(golden):
            problems.append(f"{where}: keys {sorted(found) if isinstance(found, dict) else found} != {sorted(golden)}")
            return
        for key in golden:
            tol = SUM_ATOL if key == "sum" else atol
            _compare(found[key], golden[key], f"{where}.{key}", problems, tol)
    elif isinstance(golden, list):
        if not isinstance(found, list) or len(found) != len(golden):
            problems.append(f"{where}: {found!r} != {golden!r}")
            return
        for i, (a, b) in enumerate(zip(found, golden)):
            _compare(a, b, f"{where}[{i}]", problems, atol)
    elif isinstance(golden, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        if not math.isclose(found, golden, rel_tol=0, abs_tol=atol):
            problems.append(f"{where}: {found!r} != {golden!r} (within {atol:g})")
    elif found != golden:
        problems.append(f"{where}: {found!r} != {golden!r}")


def test_every_output_matches_the_golden(tmp_path):
    render_outputs.render(tmp_path / "out", work=tmp_path / "work")
    found = render_outputs.describe(tmp_path / "out")
    golden = json.loads((GOLDENS / "render_outputs.json").read_text())
    assert sorted(found) == sorted(golden)
    problems: list[str] = []
    for name, expected in golden.items():
        _compare(found[name], expected, name, problems,
                 RECORD_ATOL if expected["kind"] == "record" else LEVEL_ATOL)
    assert not problems, "\n".join(problems[:30])
