"""Render every shipped preset and a session with every output kind, and describe what was written.

The description (numbers in JSON, see :func:`describe`) is the golden that
``tests/test_render_outputs.py`` holds the current code to; regenerate it with

    python tests/goldens/render_outputs.py golden tests/goldens/render_outputs.json

only when a change of output is intended, and say why in the commit. Two checkouts' outputs can
also be compared byte for byte (``render OUT`` in each, then ``compare A B``): only the fields
that record when or with what a file was made are masked (bext reference, date and time, the REAPER
project's save time, the manifest's package versions).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
SONG_SECONDS = 4.0

#: A session with every output kind: stems and mix, Broadcast WAV chunks, a REAPER project with
#: automation, NI Stems and a loudness target.
FULL = """\
version: 1
separator: {model: default-4stems}
tempo: {bpm: 96, time_signature: 3/4}
stems:
  vocals: {gain_db: 2, pan: -0.3, chain: [{effect: Compressor, threshold_db: -18}]}
  drums: {gain_db: -1}
  bass: {invert: false}
  other: {duck: {by: vocals, depth_db: 4, threshold_db: -35}}
automation:
  stems.drums.gain_db: [[0, -6], ["2:1", 0]]
  stems.other.chain[0].cutoff_frequency_hz: {points: [[0, 2000], [3, 8000]], curve: exponential}
master: [{effect: Limiter, threshold_db: -2}]
output:
  format: wav
  bit_depth: 24
  files: {mix: "{track}.full.{ext}", stems: "{track}/{stem}.{ext}", nistems: "{track}.stem.mp4"}
  project: reaper
  loudness_lufs: -16
  tail_seconds: 0.5
"""
FULL_OTHER_CHAIN = [{"effect": "LowpassFilter", "cutoff_frequency_hz": 4000}]

ALBUM = """\
version: 1
separator: {model: default}
stems: {vocals: {gain_db: 3}}
output:
  format: wav
  bit_depth: 24
  files: {mix: "{track}.album.{ext}", stems: "{track}/{stem}.{ext}"}
  project: reaper
  loudness_lufs: -18
  loudness_scope: album
  tail_seconds: 0
"""


def songs(folder: Path) -> tuple[Path, Path, Path]:
    """The demo song's first seconds, and two album songs made from it (a quieter one too)."""
    audio, rate = sf.read(REPO / "examples" / "demo.flac", dtype="float32", always_2d=True)
    head = audio[: int(SONG_SECONDS * rate)]
    song = folder / "song.flac"
    sf.write(song, head, rate, subtype="PCM_24")
    album = folder / "album"
    album.mkdir()
    sf.write(album / "01 loud.wav", head, rate, subtype="PCM_24")
    sf.write(album / "02 quiet.wav", 0.3 * audio[int(SONG_SECONDS * rate): int(2 * SONG_SECONDS * rate)], rate,
             subtype="PCM_24")
    return song, album, folder


#: Where every render happens, so that two checkouts' files hold the same paths.
WORK = Path(tempfile.gettempdir()) / "stembridge-render-outputs"


def render(dest: Path, work: Path = WORK) -> None:
    """Everything the golden covers, rendered in ``work`` and moved to ``dest`` (replaced)."""
    import yaml

    from bridge.cli import main as cli

    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    (work / "in").mkdir()
    song, album, folder = songs(work / "in")
    for preset in sorted((REPO / "presets").glob("*.yaml")):
        code = cli(["render", str(preset), str(song), "--out", str(out / "presets" / preset.stem), "--no-cache",
                    "--quiet"])
        assert code == 0, preset
    full = yaml.safe_load(FULL)
    full["stems"]["other"]["chain"] = FULL_OTHER_CHAIN
    (folder / "full.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    assert cli(["render", str(folder / "full.yaml"), str(song), "--out", str(out / "full"), "--no-cache",
                "--quiet"]) == 0
    (folder / "album.yaml").write_text(ALBUM)
    assert cli(["render", str(folder / "album.yaml"), str(album), "--out", str(out / "album"), "--no-cache",
                "--quiet"]) == 0
    assert cli(["separate", str(song), "--out", str(out / "separate"), "--model", "default-4stems",
                "--stems", "vocals,drums,bass,other,instrumental", "--project", "reaper", "--no-cache",
                "--quiet"]) == 0
    for junk in out.rglob("stembridge-run.json"):  # wall times
        junk.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(out), str(dest))
    shutil.rmtree(work, ignore_errors=True)


def _audio(path: Path) -> dict:
    info = sf.info(str(path))
    audio, _ = sf.read(str(path), dtype="float64", always_2d=True)
    return {"kind": "audio", "subtype": info.subtype, "sample_rate": info.samplerate, "channels": info.channels,
            "frames": info.frames, "rms": [float(np.sqrt(np.mean(c ** 2))) if len(c) else 0.0 for c in audio.T],
            "peak": [float(np.max(np.abs(c))) if len(c) else 0.0 for c in audio.T],
            "sum": [float(np.sum(c)) for c in audio.T]}


def _masked_manifest(path: Path) -> dict:
    """A manifest or record without what changes with the machine or the version: package versions,
    the device the model ran on, the stembridge version, folders (absolute paths keep their file
    names) and the hashes of the generated inputs (their FLAC bytes depend on the libsndfile that
    wrote them)."""
    record = json.loads(path.read_text())
    record.pop("versions", None)
    if isinstance(record.get("model"), dict):
        record["model"].pop("device", None)
    if isinstance(record.get("input"), dict):
        record["input"]["sha256"] = "<input>"
    if "input_sha256" in record:
        record["input_sha256"] = "<input>"
    return _mask(record)


def _mask(node):
    if isinstance(node, dict):
        return {key: ("<songs>" if key == "songs" else _mask(value)) for key, value in node.items()
                if key != "stembridge"}
    if isinstance(node, list):
        return [_mask(value) for value in node]
    if isinstance(node, str) and node.startswith("/"):
        return Path(node).name
    return node


def _nistems(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        streams = [{"channels": s.codec_context.channels, "sample_rate": s.codec_context.sample_rate,
                    "frames": s.frames} for s in container.streams.audio]
    return {"kind": "nistems", "streams": streams}


def describe(out: Path) -> dict:
    """Numbers for every file under ``out`` (see the module docstring)."""
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = str(path.relative_to(out))
        if name.endswith(".stem.mp4"):
            found[name] = _nistems(path)
        elif path.suffix in (".wav", ".flac", ".ogg", ".aiff", ".mp3"):
            found[name] = _audio(path)
        elif name.endswith(".json"):
            found[name] = {"kind": "record", "content": _masked_manifest(path)}
        elif path.suffix == ".rpp":
            found[name] = {"kind": "project", "lines": [_portable(line) for line in _masked_text(path).splitlines()]}
        else:
            found[name] = {"kind": "other", "bytes": path.stat().st_size}
    return found


def _portable(line: str) -> str:
    """A project line without what depends on where the files were: GUIDs (made from paths) and
    the folders of absolute paths."""
    line = re.sub(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}", "{GUID}", line)
    return re.sub(r'(?<![\w.])/(?:[^\s"/]+/)+', "", line)


def _masked_text(path: Path) -> str:
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("<REAPER_PROJECT"):
        lines[0] = "<REAPER_PROJECT"  # the version that wrote it and the save time
    return "\n".join(lines)


def _masked_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".rpp":
        return _masked_text(path).encode()
    if path.name.endswith(".json"):
        return json.dumps(_masked_manifest(path), sort_keys=True).encode()
    if path.suffix == ".wav":
        at = data.find(b"bext")
        if at >= 0:  # OriginatorReference[32] (unique per file), OriginationDate[10], OriginationTime[8]
            start = at + 8 + 256 + 32
            data = data[:start] + b"\0" * 50 + data[start + 50:]
        at = data.find(b"<BWFXML>")
        if at >= 0:
            end = data.find(b"</BWFXML>", at)
            text = data[at:end].decode("utf-8", "replace")
            text = re.sub(r"<(ORIGINATION_DATE|ORIGINATION_TIME|FILE_UID)>[^<]*<", r"<\1><", text)
            data = data[:at] + text.encode() + data[end:]
    return data


def compare(a: Path, b: Path) -> list[str]:
    """The files that differ between two ``render`` folders, masked as the module docstring says."""
    names_a = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    names_b = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    problems = [f"only in {a}: {n}" for n in sorted(names_a - names_b)]
    problems += [f"only in {b}: {n}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        if _masked_bytes(a / name) != _masked_bytes(b / name):
            problems.append(f"differs: {name}")
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["render"] and len(argv) == 2:
        render(Path(argv[1]))
        return 0
    if argv[:1] == ["golden"] and len(argv) == 2:
        with tempfile.TemporaryDirectory() as tmp:
            render(Path(tmp) / "out")
            text = json.dumps(describe(Path(tmp) / "out"), indent=1, sort_keys=True) + "\n"
        Path(argv[1]).write_text(text)
        return 0
    if argv[:1] == ["compare"] and len(argv) == 3:
        problems = compare(Path(argv[1]), Path(argv[2]))
        total = sum(1 for p in Path(argv[1]).rglob("*") if p.is_file())
        print("\n".join(problems) if problems else f"identical: {total} files (masked as documented)")
        return 1 if problems else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
