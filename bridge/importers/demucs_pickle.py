"""Read Demucs ``.th`` files without running anything they say.

A Demucs model file is ``torch.save`` of ``{'klass', 'args', 'kwargs', 'state', 'training_args'}``
(Demucs's ``states.serialize_model``): the model class as a pickled *global*, its constructor
arguments (plain values, the segment a ``fractions.Fraction``), the weights (fp16 tensors) and the
training config as plain containers. ``demucs.states.load_model`` reads it with
``torch.load(weights_only=False)``, which runs whatever callable the pickle names.

Here the file goes through torch's own ``weights_only`` unpickler (tensors, storages, plain
containers and nothing else), with an allow-list of exactly two more globals:

- the Demucs model classes, by *name* only: ``demucs.htdemucs.HTDemucs``, ``demucs.hdemucs.HDemucs``
  and ``demucs.demucs.Demucs`` resolve to inert placeholders defined here (:class:`ModelClass`),
  so the class is recorded, never imported or called;
- ``fractions.Fraction``, which the unpickler may call with the segment's text (``'39/5'``).

Any other global (``os.system``, ``builtins.eval``, an unknown module, ...) stops the unpickler at
the opcode that names it, before anything runs: :func:`read_package` raises one :class:`ModelError`
line naming the file and the global.
"""

from __future__ import annotations

import dataclasses
import fractions
import re
from pathlib import Path

from ..errors import ModelError


class ModelClass:
    """Placeholder for a Demucs model class named in a file: it records the name and does nothing."""

    name = "?"


class HTDemucs(ModelClass):
    name = "HTDemucs"


class HDemucs(ModelClass):
    name = "HDemucs"


class Demucs(ModelClass):
    name = "Demucs"


#: The globals a Demucs file may name besides torch's tensor machinery, by their pickled path.
ALLOWED = {
    "demucs.htdemucs.HTDemucs": HTDemucs,
    "demucs.hdemucs.HDemucs": HDemucs,
    "demucs.demucs.Demucs": Demucs,
    "fractions.Fraction": fractions.Fraction,
}

KEYS = ("klass", "args", "kwargs", "state")


@dataclasses.dataclass(frozen=True)
class DemucsPackage:
    """What a Demucs ``.th`` file holds, read safely.

    ``klass`` is the class *name* (``"HTDemucs"``, ``"HDemucs"`` or ``"Demucs"``); ``state`` maps
    parameter names to torch tensors as stored (fp16 by default); ``quantized`` is True for a DiffQ
    state (``mdx_q``, ``mdx_extra_q``).
    """

    path: Path
    klass: str
    args: tuple
    kwargs: dict
    state: dict
    training_args: object
    quantized: bool


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError('importing Demucs models needs torch: pip install "stembridge[import]"') from None
    return torch


def read_package(path) -> DemucsPackage:
    """Read a Demucs ``.th`` file with the allow-list above.

    Raises
    ------
    ModelError
        One line: the file is missing, truncated, not a torch file, names a global outside the
        allow-list (the message names it), or is not Demucs's ``serialize_model`` layout.
    """
    path = Path(path)
    torch = _torch()
    if not path.is_file():
        raise ModelError(f"{path}: no such Demucs model file")
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in ALLOWED.items()]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ... for bad files
        text = " ".join(str(exc).split())
        named = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ['`]?([\w.]+)", text)
        if named:
            glob = named.group(1).lstrip(".")
            glob = glob if "." in glob else f"builtins.{glob}"  # torch's message drops "builtins."
            raise ModelError(f"{path}: refused: the file names the global '{glob}', which a Demucs model "
                             f"file does not contain (allowed: {', '.join(ALLOWED)}, torch tensors); "
                             "nothing in it was run. Use the file Demucs downloaded, not this one") from None
        raise ModelError(f"{path}: cannot read the Demucs model file ({type(exc).__name__}: {text[:160]}); "
                         "it is truncated or not a torch file; download it again") from None
    if not isinstance(data, dict) or not all(k in data for k in KEYS):
        found = sorted(data)[:6] if isinstance(data, dict) else type(data).__name__
        raise ModelError(f"{path}: not a Demucs model file (expected the keys {', '.join(KEYS)} that Demucs's "
                         f"serialize_model writes, found {found}); for a bag pass its .yaml")
    klass = data["klass"]
    if not (isinstance(klass, type) and issubclass(klass, ModelClass)):
        raise ModelError(f"{path}: 'klass' is {klass!r}, not a Demucs model class; not a Demucs model file")
    args, kwargs, state = data["args"], data["kwargs"], data["state"]
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(state, dict):
        raise ModelError(f"{path}: args/kwargs/state are {type(args).__name__}/{type(kwargs).__name__}/"
                         f"{type(state).__name__}, not Demucs's list/dict/dict; not a Demucs model file")
    quantized = bool(state.get("__quantized"))
    if not quantized and not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: the state holds more than tensors; not a Demucs model file")
    return DemucsPackage(path, klass.name, tuple(args), dict(kwargs), state, data.get("training_args"), quantized)
