"""Model cards: what a model file is, how to run it, and where to find it.

A card is a small YAML file (``models/*.yaml``) that names the model's family and the
parameters its pipeline needs, so nothing is guessed from a file name::

    name: spleeter-2stems
    family: mask            # a registered family: mdx | mask | roformer | demucs (separation/families.py)
    file: spleeter-2stems.onnx
    sha256: 9f0c...         # checked on every load
    sample_rate: 44100
    n_fft: 4096
    hop: 1024
    ...

UVR's MDX-Net ``.onnx`` files need no card: they are recognised by the MD5 of their last
10,240,000 bytes, the key UVR itself uses (``models/uvr_mdx.yaml``).

Cards are looked up in the folders named by ``$STEMBRIDGE_MODELS`` (``os.pathsep``-separated),
then in the user model folder (``$XDG_DATA_HOME/stembridge/models``, where ``stembridge models
import`` writes when ``$STEMBRIDGE_MODELS`` is unset), then in the models shipped with the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from ..errors import ModelError, suggest
from . import families

#: Most EM iterations of the multichannel Wiener filter accepted (norbert's and Spleeter's usual is 1).
MAX_WIENER = 10

DEFAULT_MODEL = "spleeter-2stems"
#: The weight-free 4-stem split: the default model's vocals, the rest split by HPSS (separation/dsp4.py).
DEFAULT_4STEMS = "default-4stems"
UVR_HASH_BYTES = 10_000 * 1024
#: A registered family's name (:func:`bridge.separation.families.registered` lists them).
Family = str

#: Canonical stem names (demucs's, plus instrumental for 2-stem splits), and the spellings
#: model files use for them.
STEM_ALIASES = {"accompaniment": "instrumental", "no vocals": "instrumental", "no_vocals": "instrumental"}


def canonical_stem(name: str) -> str:
    key = name.strip().lower().replace("-", " ")
    key = STEM_ALIASES.get(key, key)
    return key.replace(" ", "_")


def derived_stems(stems) -> dict[str, tuple[str, ...]]:
    """Stems a separator can give as sums of its own: ``{name: parts}``.

    A model with vocals and at least two other stems (4- and 5-stem models) also gives
    ``instrumental``, the sum of every stem but the vocals, as a 2-stem model would.
    """
    stems = tuple(stems)
    others = tuple(s for s in stems if s != "vocals")
    if "vocals" in stems and "instrumental" not in stems and len(others) >= 2:
        return {"instrumental": others}
    return {}


def offered_stems(stems) -> tuple[str, ...]:
    """``stems`` and the sums :func:`derived_stems` adds: every name ``--stems`` may ask for."""
    return tuple(stems) + tuple(derived_stems(stems))


def complement_stem(primary: str) -> str:
    """The other stem of a 2-stem split whose model predicts ``primary``."""
    pairs = {"vocals": "instrumental", "instrumental": "vocals", "no_crowd": "crowd"}
    return pairs.get(primary, f"no_{primary}")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything a separator needs to know about a model, validated.

    Units: ``sample_rate`` in Hz; ``n_fft`` and ``hop`` in samples; ``dim_f`` and ``bins`` in
    frequency bins; ``dim_t`` in STFT frames per chunk.
    """

    name: str
    family: Family
    stems: tuple[str, ...]
    file: Path | None = None
    sha256: str | None = None
    sample_rate: int = 44100
    n_fft: int = 4096
    hop: int = 1024
    dim_t: int = 256
    # mdx
    dim_f: int | None = None
    compensate: float = 1.0
    primary: str | None = None
    # mask
    bins: int | None = None
    combine: Literal["ratio", "subtract"] = "ratio"
    outputs: tuple[str, ...] = ()
    # roformer (``dim_t`` above is ``chunk_size // hop + 1``; ``win_length`` defaults to ``n_fft``)
    architecture: str | None = None
    win_length: int | None = None
    chunk_size: int | None = None
    num_overlap: int | None = None
    audio_channels: int = 2
    residual: str | None = None
    #: How the importer made the model (checkpoint, its sha256, config, parity): kept as written,
    #: out of the hash and of comparisons (a dict is not hashable, and it does not change the output).
    imported: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    #: demucs: the networks (file, sha256, segment in samples, bag signature), the bag's weights
    #: matrix and the architecture, as ``stembridge models import`` writes them (separation/demucs.py).
    demucs: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    #: vr: UVR's parameter set (``band``, by name in ``params``), the network generation (``v51``) and
    #: its ``offset``, and the run settings ``window_size`` and ``aggression`` (separation/vr.py).
    vr: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    #: umx: openunmix's filter settings (``niter``, ``softmask``, ``wiener_win_len``; separation/umx.py).
    umx: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    #: For a ``stembridge models quantize`` variant: the float model's name and sha256, the method.
    quantized_from: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    #: For a ``stembridge models quantize --fp16`` variant: the float32 model's name and sha256, the method.
    converted_from: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    # provenance
    license: str | None = None
    credit: str | None = None
    description: str | None = None
    source: str = "built in"

    def describe(self) -> str:
        """This card's row in ``stembridge models``, as its family writes it."""
        return families.family(self.family).describe(self)


_CARD_KEYS = {f.name for f in dataclasses.fields(ModelCard)} - {"source", "outputs", "stems"} | {"stems"}


def user_models_folder() -> Path:
    """Where ``stembridge models import`` writes: the first ``$STEMBRIDGE_MODELS`` folder, else
    ``$XDG_DATA_HOME/stembridge/models`` (``~/.local/share/stembridge/models`` without it)."""
    first = next((p for p in os.environ.get("STEMBRIDGE_MODELS", "").split(os.pathsep) if p), None)
    if first:
        return Path(first)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "stembridge" / "models"


def search_paths() -> list[Path]:
    """Folders searched for model cards, in order: ``$STEMBRIDGE_MODELS``, the user model folder
    (:func:`user_models_folder`), the models shipped with the package."""
    paths = [Path(p) for p in os.environ.get("STEMBRIDGE_MODELS", "").split(os.pathsep) if p]
    if user_models_folder() not in paths:
        paths.append(user_models_folder())
    paths.append(Path(str(resources.files("bridge._models"))))
    return paths


def parse_card(data, *, source: str, folder: Path) -> ModelCard:
    """Build a :class:`ModelCard` from a card's parsed YAML, with errors naming ``source``."""
    if not isinstance(data, dict):
        raise ModelError(f"{source}: a model card must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _CARD_KEYS)
    if unknown:
        raise ModelError(f"{source}: unknown card key '{unknown[0]}'{suggest(unknown[0], sorted(_CARD_KEYS))}")
    for key in ("name", "family", "stems"):
        if key not in data:
            raise ModelError(f"{source}: the card needs '{key}'")
    try:
        family = families.family(data["family"])
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    raw_stems = data["stems"]
    if not isinstance(raw_stems, list) or not raw_stems or not all(isinstance(s, str) for s in raw_stems):
        raise ModelError(f"{source}: stems must be a list of names, got {raw_stems!r}")
    fields = dict(data)
    fields["stems"] = tuple(canonical_stem(s) for s in raw_stems)
    fields["outputs"] = tuple(raw_stems)
    if fields.get("file") is not None:
        fields["file"] = (folder / str(fields["file"])).resolve()
    if fields.get("primary") is not None:
        fields["primary"] = canonical_stem(str(fields["primary"]))
    if fields.get("residual") is not None:
        fields["residual"] = canonical_stem(str(fields["residual"]))
    for key in family.requires:
        if data.get(key) is None:
            raise ModelError(f"{source}: a {family.name} card needs '{key}'{family.requires_hint}")
    family.prepare(data, fields, source)
    try:
        card = ModelCard(source=source, **fields)
    except TypeError as exc:
        raise ModelError(f"{source}: {exc}") from None
    for key in ("sample_rate", "n_fft", "hop", "dim_t"):
        value = getattr(card, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelError(f"{source}: {key} must be a positive whole number, got {value!r}")
    family.check(card, source)
    return card


def whole(value, low: int = 1) -> bool:
    """``value`` is an int (not a bool) of at least ``low``: what card counts must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def load_card(path) -> ModelCard:
    """Read and validate a card file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model card ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: the model card is not valid YAML ({exc})") from None
    return parse_card(data, source=str(path), folder=path.parent)


def known_cards() -> dict[str, ModelCard]:
    """Every card found on the search path, by name (earlier folders win)."""
    cards: dict[str, ModelCard] = {}
    for folder in search_paths():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            if path.name == "uvr_mdx.yaml":
                continue
            card = load_card(path)
            cards.setdefault(card.name, card)
    return cards


def uvr_hash(path: Path) -> str:
    """UVR's model key: MD5 of the last 10,240,000 bytes (the whole file if smaller)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - UVR_HASH_BYTES))
        return hashlib.md5(handle.read()).hexdigest()


def uvr_table() -> dict[str, list]:
    table = Path(str(resources.files("bridge._models"))) / "uvr_mdx.yaml"
    return yaml.safe_load(table.read_text(encoding="utf-8"))


def card_for_onnx(path: Path) -> ModelCard:
    """A card for a bare ``.onnx`` file: a ``.yaml`` card beside it, or UVR's hash table."""
    beside = path.with_suffix(".yaml")
    if beside.is_file():
        return load_card(beside)
    key = uvr_hash(path)
    entry = uvr_table().get(key)
    if entry is None:
        raise ModelError(
            f"{path}: unknown ONNX model (UVR hash {key} is not in models/uvr_mdx.yaml); "
            f"write a model card {beside.name} beside it (family, stems, STFT settings: see models/README.md)"
        )
    compensate, dim_f, dim_t, n_fft, primary, name, _karaoke = entry
    primary = canonical_stem(primary)
    return ModelCard(name=name or path.stem, family="mdx", file=path.resolve(), sample_rate=44100, n_fft=n_fft,
                     hop=1024, dim_f=dim_f, dim_t=dim_t, compensate=float(compensate), primary=primary,
                     stems=(primary, complement_stem(primary)), source=f"UVR table ({key})")


def resolve(spec: str) -> ModelCard:
    """Find the card for ``spec``: ``default``, a card name, a card ``.yaml`` path or an ``.onnx`` path."""
    spec = str(spec)
    if spec == "default":
        spec = DEFAULT_MODEL if DEFAULT_MODEL in known_cards() else "dsp"
    builtin = families.builtin_card(spec)
    if builtin is not None:
        return builtin
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".onnx"):
        if not path.is_file():
            raise ModelError(f"{path}: no such model file; check the path, or run 'stembridge models' to list known models")
        return load_card(path) if path.suffix.lower() != ".onnx" else card_for_onnx(path)
    cards = known_cards()
    if spec in cards:
        return cards[spec]
    raise ModelError(f"unknown model '{spec}'{suggest(spec, sorted(cards) + list(families.builtin_names()))}; "
                     "or pass a path to a .onnx file or a card .yaml")


def verify_file(card: ModelCard) -> Path:
    """Return the card's model file after checking it exists and matches the card's sha256."""
    if card.file is None:
        raise ModelError(f"{card.source}: the card names no model file")
    path = Path(card.file)
    if not path.is_file():
        raise ModelError(f"{path}: the model file of '{card.name}' is missing; reinstall stembridge or fix 'file' in {card.source}")
    if card.sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != card.sha256.lower():
            raise ModelError(
                f"{path}: the model file is corrupt or truncated (sha256 {digest.hexdigest()[:12]}..., "
                f"the card {card.source} expects {card.sha256[:12]}...); reinstall or re-copy it"
            )
    return path
