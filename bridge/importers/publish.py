"""The last step of every import: the model and its card into the model folder, atomically.

An importer writes its ONNX file under :func:`partial_onnx`'s hidden name; :func:`publish` then
writes the card under a hidden name too, renames the model into place and the card last (the
card is what makes a model visible to ``stembridge models``), and removes both hidden files
whatever happens, so a failed or interrupted import leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import ModelError


#: What a model name may be, and the names the built-in models take.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESERVED = ("default", "dsp", "default-4stems")


def destination(name: str | None, *, stem: str, default: str, folder, force: bool) -> tuple[str, Path]:
    """``(name, folder)`` an import writes to, checked.

    ``name`` (or ``stem``, the file's name made safe, or ``default``) must be a valid model name and
    free in ``folder`` (default :func:`~bridge.separation.models.user_models_folder`) unless
    ``force`` replaces a model there; a built-in card's name is never free.
    """
    from importlib import resources

    from ..separation.models import user_models_folder

    name = name if name is not None else re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or default
    if not NAME.match(name) or name in RESERVED:
        raise ModelError(f"--name {name!r}: " + ("a built-in model has this name" if name in RESERVED
                                                 else "use letters, digits, '.', '_' and '-'") + "; choose another name")
    target = Path(folder) if folder is not None else user_models_folder()
    builtin = Path(str(resources.files("bridge._models"))) / f"{name}.yaml"
    existing = next((p for p in (target / f"{name}.yaml", target / f"{name}.onnx", builtin) if p.is_file()), None)
    if existing is not None and (not force or existing.parent != target):
        raise ModelError(f"a model named '{name}' exists ({existing}); "
                         + ("pass --force to replace it, or " if existing.parent == target else "")
                         + "--name to import under another name")
    return name, target


def paths(folder: Path, name: str) -> tuple[Path, Path]:
    """``(onnx, card)`` paths of model ``name`` in ``folder``."""
    return Path(folder) / f"{name}.onnx", Path(folder) / f"{name}.yaml"


def partial_onnx(folder: Path, name: str) -> Path:
    """Where an importer writes the ONNX file before :func:`publish` renames it."""
    onnx_path, _ = paths(folder, name)
    return onnx_path.with_name(f".{onnx_path.name}.partial")


def folder_error(folder: Path, exc: OSError) -> ModelError:
    return ModelError(f"{folder}: cannot write the model there ({exc.strerror or exc}); make it writable, or set "
                      "STEMBRIDGE_MODELS to a folder you can write")


@contextlib.contextmanager
def writing(folder: Path, name: str) -> Iterator[Path]:
    """Make ``folder`` and give the hidden path to write model ``name``'s ONNX file to; on any
    failure inside, that file is removed (an OSError becomes one :class:`ModelError` line)."""
    partial = partial_onnx(folder, name)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        yield partial
    except OSError as exc:
        _discard(partial)
        raise folder_error(folder, exc) from None
    except BaseException:
        _discard(partial)
        raise


def discard(path: Path) -> None:
    """Remove ``path`` if it is there."""
    _discard(path)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):  # e.g. the "folder" is a file: there is nothing to remove
        path.unlink()


def publish(folder: Path, name: str, card: dict, *, header: str, models=None) -> tuple[Path, Path]:
    """Rename the finished :func:`partial_onnx` file into place and write ``card`` beside it.

    ``header`` is the card's first comment line (what made it). ``models`` names the ONNX files
    (by model name) to rename into place, for a card with several (a Demucs bag); default
    ``[name]``. Returns ``(first onnx, card)`` paths.
    """
    models = list(models) if models is not None else [name]
    onnx_path, card_path = paths(folder, models[0])[0], paths(folder, name)[1]
    card_partial = card_path.with_name(f".{card_path.name}.partial")
    try:
        with open(card_partial, "w", encoding="utf-8") as handle:
            handle.write(f"# {header}\n" + yaml.safe_dump(card, sort_keys=False, width=100))
            handle.flush()
            os.fsync(handle.fileno())
        for model in models:
            os.replace(partial_onnx(folder, model), paths(folder, model)[0])
        os.replace(card_partial, card_path)
    except OSError as exc:
        raise folder_error(folder, exc) from None
    finally:
        for model in models:
            _discard(partial_onnx(folder, model))
        _discard(card_partial)
    return onnx_path, card_path
