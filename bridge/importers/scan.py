"""``stembridge models scan``: find the model files other tools left on this machine.

:func:`default_locations` names where the tools keep their files (UVR's ``models`` folder,
python-audio-separator's model folder, torch hub's checkpoints, an MSST checkout, stembridge's own
model folders); :func:`scan` walks folders and asks each registered family's ``recognise``
(:class:`bridge.separation.families.Found`) about every candidate: a file whose suffix a model
file has (suffixes first, so a folder of thousands of songs costs one listing), a ``.yaml`` (a
Demucs bag; listed only when a family takes it), and a folder holding a TensorFlow ``.index``.
What no family tells is listed as unknown, never guessed from its name. A file a stembridge card
names is listed as that model. :func:`import_all` imports what needs it, skipping a file whose
checksum an imported card records (``imported.checkpoint_sha256``, ``imported.bag_sha256``,
``imported.files[].sha256``).

Nothing here imports torch; reading is the families' (:mod:`bridge.separation.peek`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

from ..errors import BridgeError, ModelError
from ..render.records import file_sha256
from ..separation import families
from ..separation.models import known_cards, search_paths
from ..separation.tf_checkpoint import checkpoint_prefix, checkpoint_sha256

#: Suffixes of model files: a file with one that no family tells is listed as unknown.
MODEL_SUFFIXES = (".onnx", ".ckpt", ".pth", ".pt", ".th", ".bin", ".safetensors")
#: Asked about, but listed only when a family takes it (configs are YAML too).
MAYBE_SUFFIXES = (".yaml", ".yml")
#: Folders never walked into.
SKIPPED_FOLDERS = {".git", "__pycache__", "node_modules", ".venv", "venv", "site-packages"}


@dataclasses.dataclass(frozen=True)
class Location:
    """A folder scanned: what it is (``"UVR"``, ``"torch hub"``, ...) and whether it is there."""

    what: str
    path: Path

    @property
    def exists(self) -> bool:
        return self.path.is_dir()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the scan: a recognised model (``found``), a stembridge card's model (``card``
    names it), or an unknown file (``found`` None and ``card`` None)."""

    path: Path
    found: families.Found | None = None
    card: str | None = None
    family: str | None = None
    stems: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``ready`` (runs as it is), ``import`` (``stembridge models import`` takes it), ``needs
        config``/``needs card`` (told, but the import or run lacks a file), or ``unknown``."""
        if self.card is not None or (self.found is not None and self.found.ready):
            return "ready"
        if self.found is None:
            return "unknown"
        if self.found.command:
            return "import"
        return "needs card" if self.found.family == "mdx" else "needs config"

    @property
    def command(self) -> str:
        if self.card is not None:
            return f"stembridge separate --model {shlex.quote(self.card)} SONG"
        if self.found is not None and self.found.command:
            return self.found.command
        if self.status == "needs card":
            return f"write a model card {self.path.with_suffix('.yaml').name} beside it (models/README.md)"
        if self.status == "needs config":
            return "stembridge models import FILE --config CONFIG.yaml (its training config was not found beside it)"
        return ""

    def as_json(self) -> dict:
        return {"path": str(self.path), "status": self.status, "family": self.family, "stems": list(self.stems),
                "config": str(self.found.config) if self.found is not None and self.found.config else None,
                "model": self.card, "command": self.command}


def default_locations(env=None, platform: str | None = None) -> list[Location]:
    """Where the other tools keep model files, as each documents it, for ``platform`` (``sys.platform``).

    - UVR (Ultimate Vocal Remover): its ``models`` folder (``MDX_Net_Models``, ``VR_Models``,
      ``Demucs_Models``) beside the program: ``%LOCALAPPDATA%\\Programs\\Ultimate Vocal Remover``
      (the Windows installer's default), ``/Applications/Ultimate Vocal Remover.app/Contents/MacOS``
      (macOS), ``~/ultimatevocalremovergui`` (a checkout of its repository, as on Linux);
    - python-audio-separator: ``$AUDIO_SEPARATOR_MODEL_DIR``, else its default
      ``/tmp/audio-separator-models`` (``--model_file_dir`` moves it: name that folder);
    - torch hub, where Demucs keeps its files: ``$TORCH_HOME/hub/checkpoints``, else
      ``$XDG_CACHE_HOME/torch/hub/checkpoints`` or ``~/.cache/torch/hub/checkpoints``;
    - MSST (Music-Source-Separation-Training): a checkout at ``~/Music-Source-Separation-Training``
      (its repository's name); a checkout elsewhere is scanned when named;
    - stembridge's own model folders: ``$STEMBRIDGE_MODELS`` and the user model folder.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    uvr = [home / "ultimatevocalremovergui" / "models"]
    if platform == "win32" and env.get("LOCALAPPDATA"):
        uvr.insert(0, Path(env["LOCALAPPDATA"]) / "Programs" / "Ultimate Vocal Remover" / "models")
    if platform == "darwin":
        uvr.insert(0, Path("/Applications/Ultimate Vocal Remover.app/Contents/MacOS/models"))
    separator = Path(env.get("AUDIO_SEPARATOR_MODEL_DIR") or "/tmp/audio-separator-models")
    torch_home = Path(env["TORCH_HOME"]) if env.get("TORCH_HOME") else (
        Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "torch")
    found = [Location("UVR", p) for p in uvr]
    found += [Location("audio-separator", separator), Location("torch hub", torch_home / "hub" / "checkpoints"),
              Location("MSST", home / "Music-Source-Separation-Training")]
    package = Path(search_paths()[-1])
    found += [Location("stembridge", p) for p in search_paths() if p != package]
    return found


def _card_files() -> dict[Path, str]:
    """Every model file a card on the search path names (Demucs members too): ``{path: model name}``."""
    named: dict[Path, str] = {}
    for name, card in known_cards().items():
        files = [card.file] if card.file else []
        for member in (card.demucs or {}).get("models", []) or []:
            if isinstance(member, dict) and member.get("file"):
                files.append(Path(card.source).parent / str(member["file"]))
        for file in files:
            named.setdefault(Path(file).resolve(), name)
    return named


def _candidates(root: Path):
    """Files and TensorFlow checkpoint folders under ``root`` worth asking about, by name only."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_FOLDERS)
        here = Path(folder)
        if any(f.endswith(".index") for f in files):
            yield here
        for name in sorted(files):
            suffix = os.path.splitext(name)[1].lower()
            if suffix in MODEL_SUFFIXES or suffix in MAYBE_SUFFIXES:
                yield here / name


def recognise(path: Path) -> families.Found | None:
    """The first family (in registry order) whose ``recognise`` tells ``path``; None for none."""
    for family in families.registered().values():
        if family.recognise is not None:
            found = family.recognise(path)
            if found is not None:
                return found
    return None


def scan(folders) -> list[Entry]:
    """Every model file under ``folders`` (each walked once; a file reached twice is listed once)."""
    named = _card_files()
    seen: set[Path] = set()
    entries: list[Entry] = []
    for root in folders:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in _candidates(root):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            if key in named:
                card = known_cards()[named[key]]
                entries.append(Entry(path, card=card.name, family=card.family, stems=card.stems))
                continue
            found = recognise(path)
            if found is not None:
                entries.append(Entry(path, found=found, family=found.family, stems=found.stems))
            elif path.is_dir() or path.suffix.lower() in MODEL_SUFFIXES:
                entries.append(Entry(path))
    return entries


def source_sha256(entry: Entry) -> str:
    """The checksum an imported card records for ``entry``'s file: its sha256, or for a TensorFlow
    checkpoint folder, that of its weights (:func:`~bridge.separation.tf_checkpoint.checkpoint_sha256`)."""
    if entry.path.is_dir():
        return checkpoint_sha256(checkpoint_prefix(entry.path))
    return file_sha256(entry.path)


def imported_checksums() -> dict[str, str]:
    """``{source checksum: model name}`` of every imported card on the search path."""
    sums: dict[str, str] = {}
    for name, card in known_cards().items():
        record = card.imported or {}
        values = [record.get("checkpoint_sha256"), record.get("bag_sha256")]
        values += [f.get("sha256") for f in record.get("files") or [] if isinstance(f, dict)]
        for value in values:
            if isinstance(value, str):
                sums.setdefault(value.lower(), name)
    return sums


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`import_all` did with one entry: ``imported`` (the new model's name), ``skipped``
    (the model that has it already), or ``error`` (one line)."""

    entry: Entry
    imported: str | None = None
    skipped: str | None = None
    error: str | None = None


def import_all(entries, *, on_outcome=None) -> list[Outcome]:
    """Import every entry ``stembridge models import`` takes, bags before their ``.th`` files,
    skipping those whose checksum an imported card records; the others' errors are kept, one line
    each, and the rest go on."""
    from . import import_model

    todo = sorted((e for e in entries if e.status == "import"),
                  key=lambda e: (e.path.suffix.lower() not in MAYBE_SUFFIXES, str(e.path)))
    outcomes = []
    for entry in todo:
        known = imported_checksums()  # again each time: a bag's import records its .th files
        try:
            digest = source_sha256(entry)
            if digest in known:
                outcome = Outcome(entry, skipped=known[digest])
            else:
                config = entry.found.config
                done = import_model(entry.path, config=config)
                outcome = Outcome(entry, imported=done.name)
        except BridgeError as exc:
            outcome = Outcome(entry, error=str(exc))
        except OSError as exc:
            outcome = Outcome(entry, error=f"{entry.path}: cannot read it ({exc.strerror or exc})")
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def check_folders(folders) -> list[Path]:
    """The named folders, each a folder; a file named is refused in one line."""
    paths = [Path(f) for f in folders]
    for path in paths:
        if path.is_file():
            raise ModelError(f"{path}: a file, not a folder; name the folder that holds it "
                             f"(or import it: stembridge models import {shlex.quote(str(path))})")
    return paths


__all__ = ["Entry", "Location", "Outcome", "default_locations", "scan", "import_all"]
