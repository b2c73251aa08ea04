"""The model families stembridge runs, each declared once by its own module.

A family is everything that differs between kinds of model: which card keys it needs and how
they must agree (:func:`~.models.parse_card` asks the family), how to open its engine
(:func:`~bridge.separation.load_separator`), how ``stembridge models`` shows its cards, the
names it answers to without a card file (``dsp``, ``default-4stems``), and the importer that
converts its checkpoints (``stembridge models import``). Each family module in
``bridge/separation/`` ends with one :func:`register` call::

    FAMILY = register(Family(name="roformer", open_engine=_open, check=check_card,
                             importer="bridge.importers.roformer:convert", imports=_imports))

so a new family is one new module (plus its importer in ``bridge/importers/`` and a card), and
nothing else changes. Modules are found by listing this package the first time the registry is
asked (:func:`registered`), not at ``import bridge``: the registry costs nothing to a command
that never reads a card. Engines and importers load only when used; importers are named by a
dotted path (``"bridge.importers.roformer:convert"``) because they sit in a higher wing and
need torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..errors import ModelError

if TYPE_CHECKING:
    from .runner import Engine

#: A :class:`bridge.separation.models.ModelCard`. Not imported, not even for type checkers:
#: models.py reads cards through this registry, and the registry stays below it.
ModelCard = Any


#: Suffixes of torch checkpoints (the RoFormer releases use .ckpt and .pth): an importer for
#: other checkpoints leaves these to a torch family's importer, even when they are tar files.
TORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".th", ".bin")


def torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a torch checkpoint file by its suffix or its zip container."""
    import zipfile

    return path.is_file() and (path.suffix.lower() in TORCH_SUFFIXES or zipfile.is_zipfile(path))


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """What :func:`~bridge.separation.load_separator` passes to a family's engine, checked.

    Each family reads what applies to it: ``denoise``/``invert`` (MDX-Net), ``high_band`` and
    ``wiener`` (mask models), ``shifts``/``seed``/``leftover`` (Demucs); ``threads`` (onnxruntime
    intra-op threads, None for every core), ``batch_size`` (chunks per model call) and ``device`` (a
    :class:`~.devices.Device`, already checked; None for the CPU; pass it to
    :func:`~.runtime.open_session`) apply to every model.
    """

    threads: int | None = None
    batch_size: int = 1
    denoise: bool = False
    invert: bool = False
    high_band: Literal["instrumental", "average"] = "instrumental"
    wiener: int = 0
    shifts: int | None = None  # Demucs: random-shift runs averaged (None: the family's default)
    seed: int = 0  # Demucs: the shifts' seed
    leftover: str | None = None  # Demucs: the stem that also gets mix - sum(stems)
    device: Any = None


def _no_fields(data: dict, fields: dict, source: str) -> None:
    """The default :attr:`Family.prepare`: the card's fields as written."""


def _no_check(card: "ModelCard", source: str) -> None:
    """The default :attr:`Family.check`: nothing beyond the checks every card gets."""


def _no_details(card: "ModelCard") -> list[str]:
    return []


@dataclasses.dataclass(frozen=True)
class Found:
    """A model file that :attr:`Family.recognise` knows, as ``stembridge models scan`` lists it.

    Attributes
    ----------
    path : Path
        The model file (or the folder, for a model that is one: a Spleeter checkpoint).
    family : str
        The family that runs it.
    stems : tuple of str
        Its stems, as far as the file (and its config) tell; empty when they cannot be told.
    config : Path, optional
        The config file found with it (a RoFormer or MDX23C YAML), when it needs one.
    ready : bool
        Whether it runs as it is, named by a card (a UVR MDX-Net ``.onnx``), or needs
        ``stembridge models import`` first.
    command : str
        The one command that imports it (or, for a ready file, that separates with it).
    """

    path: Path
    family: str
    stems: tuple[str, ...] = ()
    config: Path | None = None
    ready: bool = False
    command: str = ""


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of model, as its module declares it.

    Attributes
    ----------
    name : str
        What a card's ``family:`` says.
    open_engine : callable ``(card, settings: EngineSettings) -> Engine``
        The model behind a :class:`~.runner.ChunkedSeparator`; imports its heavy parts itself.
    requires : tuple of str
        Card keys that must be written out (not left to a default); a missing one is
        ``"<card>: a <family> card needs '<key>'<requires_hint>"``.
    prepare : callable ``(data, fields, source) -> None``
        Checks on the card's mapping before the card is built; may fill ``fields`` (defaults
        that depend on other keys).
    check : callable ``(card, source) -> None``
        Raises :class:`ModelError` naming ``source`` when the card's numbers disagree.
    details : callable ``(card) -> list of str``
        Extra words for the card's ``stembridge models`` row, shown in parentheses.
    where : callable ``(card) -> str``, optional
        What the row says instead of the model file.
    default_overlap : callable ``(card) -> float``
        The overlap when none is asked for.
    weights : bool
        Whether the card names a model file to verify (False: a weight-free DSP family).
    wiener : bool
        Whether the family takes multichannel Wiener filtering (``wiener=``).
    denoise_invert : bool
        Whether the family takes UVR's denoise and spectral inversion (``denoise=``, ``invert=``);
        other families refuse them rather than ignore them.
    builtin : tuple of str
        Names of models of this family that need no card file (``dsp``, ``default-4stems``).
    builtin_card : callable ``(name) -> ModelCard``
        The card of one of them, built when asked for.
    importer : str, optional
        ``"module:function"`` converting a checkpoint into this family, called as
        ``function(path, config=..., **options)``; loaded only when used.
    imports : callable ``(path, config) -> bool``, optional
        Whether ``path`` (with ``config``, a config file or None) is a checkpoint for ``importer``.
    import_help : str
        What the importer takes, for the message listing what can be imported.
    recognise : callable ``(path) -> Found | None``, optional
        Whether the file (or folder) ``path`` is a model of this family, told from its contents
        (keys, shapes, a config beside it, a known checksum), never from its name alone; used by
        ``stembridge models scan``. Reads as little as it can: it is asked about every file in
        the folders scanned.
    open_separator : callable ``(card, settings: EngineSettings) -> separator``, optional
        For a family that runs no chunked engine: the whole separator, which
        :func:`~bridge.separation.load_separator` returns as it is (``file-stems``: the stems an
        NI Stems input holds; its separator reads the input itself, see
        :class:`bridge.render.stemsource.StemSource`).
    """

    name: str
    open_engine: Callable[["ModelCard", EngineSettings], "Engine"]
    requires: tuple[str, ...] = ()
    requires_hint: str = ""
    prepare: Callable[[dict, dict, str], None] = _no_fields
    check: Callable[["ModelCard", str], None] = _no_check
    details: Callable[["ModelCard"], list[str]] = _no_details
    where: Callable[["ModelCard"], str] | None = None
    default_overlap: Callable[["ModelCard"], float] = lambda card: 0.25
    weights: bool = True
    wiener: bool = False
    denoise_invert: bool = False
    builtin: tuple[str, ...] = ()
    builtin_card: Callable[[str], "ModelCard"] | None = None
    importer: str | None = None
    imports: Callable[[Path, object], bool] | None = None
    import_help: str = ""
    recognise: Callable[[Path], Found | None] | None = None
    open_separator: Callable[["ModelCard", EngineSettings], Any] | None = None

    def describe(self, card: "ModelCard") -> str:
        """The card's row in ``stembridge models``: name, family, stems, file (and details)."""
        where = self.where(card) if self.where else str(card.file) if card.file else "(no weights)"
        line = f"{card.name:<28} {card.family:<8} {'/'.join(card.stems):<32} {where}"
        details = [d for d in self.details(card) if d]
        return f"{line} ({', '.join(details)})" if details else line

    def load_importer(self) -> Callable:
        """The importer function (imports its module, which may need torch)."""
        if self.importer is None:
            raise ModelError(f"the {self.name} family has no importer")
        module, _, function = self.importer.partition(":")
        return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, Family] = {}
_FOUND = False


def register(family: Family) -> Family:
    """Add ``family`` to the registry (a module calls this once, at its end); returns it.

    Raises
    ------
    ModelError
        Another family already took the name.
    """
    known = _REGISTRY.get(family.name)
    if known is not None and known is not family:
        raise ModelError(f"family '{family.name}' is registered twice ({known.open_engine.__module__} and "
                         f"{family.open_engine.__module__}); give the new family its own name")
    _REGISTRY[family.name] = family
    return family


def registered() -> dict[str, Family]:
    """Every family, by name, in name order: the order ``stembridge models import`` asks them in
    (demucs before roformer for a ``.th`` file), whichever module a program happened to import
    first."""
    _find()
    return dict(sorted(_REGISTRY.items()))


def family(name: str) -> Family:
    """The family called ``name``; a :class:`ModelError` listing the registered ones otherwise."""
    found = registered()
    if not isinstance(name, str) or name not in found:
        raise ModelError(f"family {name!r} is not one of {', '.join(found)}")
    return found[name]


def builtin_card(name: str) -> "ModelCard | None":
    """The card of a model a family offers without a card file (``dsp``), or None."""
    for fam in registered().values():
        if name in fam.builtin:
            return fam.builtin_card(name)
    return None


def builtin_names() -> tuple[str, ...]:
    """Every name :func:`builtin_card` answers to, in registry order."""
    return tuple(name for fam in registered().values() for name in fam.builtin)


def _find() -> None:
    """Import every module of this package once, so that each family module registers itself."""
    global _FOUND
    if _FOUND:
        return
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):  # sorted by name
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _FOUND = True
