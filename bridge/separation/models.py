"""Model cards: what a model file is, how to run it, and where to find it.

A card is a small YAML file (``models/*.yaml``) that names the model's family and the
parameters its pipeline needs, so nothing is guessed from a file name::

    name: spleeter-2stems
    family: mask            # mdx | mask | dsp
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

#: Most EM iterations of the multichannel Wiener filter accepted (norbert's and Spleeter's usual is 1).
MAX_WIENER = 10

DEFAULT_MODEL = "spleeter-2stems"
#: The weight-free 4-stem split: the default model's vocals, the rest split by HPSS (separation/dsp4.py).
DEFAULT_4STEMS = "default-4stems"
UVR_HASH_BYTES = 10_000 * 1024
Family = Literal["mdx", "mask", "roformer", "dsp", "hpss"]
#: RoFormer variants a ``roformer`` card may name (the ONNX interface is the same for both).
ROFORMER_ARCHITECTURES = ("bs_roformer", "mel_band_roformer")

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
    #: For a ``stembridge models quantize`` variant: the float model's name and sha256, the method.
    quantized_from: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    # provenance
    license: str | None = None
    credit: str | None = None
    description: str | None = None
    source: str = "built in"

    def describe(self) -> str:
        where = str(self.file) if self.file else "(no weights)"
        line = f"{self.name:<28} {self.family:<8} {'/'.join(self.stems):<32} {where}"
        if self.family == "roformer":
            details = [self.architecture, f"{self.chunk_size / self.sample_rate:g} s chunks, num_overlap {self.num_overlap}"]
            if self.audio_channels == 1:
                details.append("mono")
            parity = (self.imported or {}).get("parity_db")
            if isinstance(parity, (int, float)) and not isinstance(parity, bool):
                details.append(f"parity {parity:.1f} dB")
            if self.quantized_from:
                details.append(f"int8 of {self.quantized_from.get('name')}")
            line += f" ({', '.join(details)})"
        return line


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
    family = data["family"]
    if family not in ("mdx", "mask", "roformer", "dsp"):
        raise ModelError(f"{source}: family '{family}' is not one of mdx, mask, roformer, dsp")
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
    if family == "roformer":
        _check_roformer_keys(data, source)
        fields.setdefault("win_length", data.get("n_fft"))
    try:
        card = ModelCard(source=source, **fields)
    except TypeError as exc:
        raise ModelError(f"{source}: {exc}") from None
    for key in ("sample_rate", "n_fft", "hop", "dim_t"):
        value = getattr(card, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelError(f"{source}: {key} must be a positive whole number, got {value!r}")
    if family == "mdx":
        if not isinstance(card.dim_f, int) or not 3 < card.dim_f <= card.n_fft // 2 + 1:
            raise ModelError(f"{source}: an mdx card needs dim_f from 4 to n_fft/2+1, got {card.dim_f!r}")
        if card.primary not in card.stems or len(card.stems) != 2:
            raise ModelError(f"{source}: an mdx card needs two stems and a primary stem among them, "
                             f"got stems {list(card.stems)} and primary {card.primary!r}")
    if family == "mask":
        if not isinstance(card.bins, int) or not 0 < card.bins <= card.n_fft // 2 + 1:
            raise ModelError(f"{source}: a mask card needs bins from 1 to n_fft/2+1, got {card.bins!r}")
        if card.combine not in ("ratio", "subtract"):
            raise ModelError(f"{source}: combine must be 'ratio' or 'subtract', got {card.combine!r}")
    if family == "roformer":
        _check_roformer(card, source)
    return card


def _whole(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_roformer_keys(data: dict, source: str) -> None:
    """The keys a roformer card must spell out (nothing about a RoFormer is guessed)."""
    for key in ("architecture", "n_fft", "hop", "chunk_size", "dim_t", "num_overlap", "sample_rate", "file"):
        if data.get(key) is None:
            raise ModelError(f"{source}: a roformer card needs '{key}' (stembridge models import writes it)")
    if "residual" not in data:
        raise ModelError(f"{source}: a roformer card needs 'residual': the stem computed as the mix minus the "
                         "model's outputs, or null when the model predicts every stem")
    for key in ("imported", "quantized_from"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ModelError(f"{source}: {key} must be a mapping, got {type(data[key]).__name__}")


def _check_roformer(card: ModelCard, source: str) -> None:
    """One-line errors for a roformer card whose numbers disagree with each other."""
    if card.architecture not in ROFORMER_ARCHITECTURES:
        raise ModelError(f"{source}: architecture '{card.architecture}' is not one of "
                         f"{', '.join(ROFORMER_ARCHITECTURES)}{suggest(str(card.architecture), ROFORMER_ARCHITECTURES)}")
    for key in ("chunk_size", "win_length", "num_overlap"):
        if not _whole(getattr(card, key)):
            raise ModelError(f"{source}: {key} must be a positive whole number, got {getattr(card, key)!r}")
    if card.win_length > card.n_fft:
        raise ModelError(f"{source}: win_length {card.win_length} is longer than n_fft {card.n_fft}; "
                         "the window is zero-padded to n_fft, so win_length <= n_fft")
    if card.hop > card.win_length // 2:
        raise ModelError(f"{source}: hop {card.hop} is more than half of win_length {card.win_length}; "
                         "the inverse STFT needs overlapping windows")
    if card.dim_t != card.chunk_size // card.hop + 1:
        raise ModelError(f"{source}: dim_t {card.dim_t} does not match chunk_size {card.chunk_size} and hop "
                         f"{card.hop}: a centred STFT of a chunk has chunk_size // hop + 1 = "
                         f"{card.chunk_size // card.hop + 1} frames")
    if card.chunk_size <= card.n_fft // 2:
        raise ModelError(f"{source}: chunk_size {card.chunk_size} is too short for n_fft {card.n_fft} "
                         f"(the centred STFT reflects n_fft // 2 = {card.n_fft // 2} samples at each end)")
    if card.audio_channels not in (1, 2):
        raise ModelError(f"{source}: audio_channels must be 1 (a mono model) or 2, got {card.audio_channels!r}")
    if card.residual is not None and card.residual not in card.stems:
        raise ModelError(f"{source}: residual '{card.residual}' is not among the stems {list(card.stems)}; "
                         "name one of them, or null when the model predicts every stem")
    if len(set(card.stems)) != len(card.stems):
        raise ModelError(f"{source}: stems {list(card.stems)} name a stem twice")
    if card.residual is not None and len(card.stems) < 2:
        raise ModelError(f"{source}: a residual stem needs at least one model stem beside it, got stems {list(card.stems)}")


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
    if spec == "dsp":
        return ModelCard(name="dsp", family="dsp", stems=("vocals", "instrumental"),
                         description="weight-free centre-channel fallback")
    if spec == DEFAULT_4STEMS:
        # The file and its checksum are the vocal model's: what there is to verify and to cache by.
        vocals = resolve(DEFAULT_MODEL)
        return ModelCard(name=DEFAULT_4STEMS, family="hpss", stems=("vocals", "drums", "bass", "other"),
                         file=vocals.file, sha256=vocals.sha256, license=vocals.license, credit=vocals.credit,
                         description=f"DSP split, not a 4-stem model: {DEFAULT_MODEL} vocals, the rest split "
                                     "into drums/bass/other by median-filter HPSS")
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".onnx"):
        if not path.is_file():
            raise ModelError(f"{path}: no such model file; check the path, or run 'stembridge models' to list known models")
        return load_card(path) if path.suffix.lower() != ".onnx" else card_for_onnx(path)
    cards = known_cards()
    if spec in cards:
        return cards[spec]
    raise ModelError(f"unknown model '{spec}'{suggest(spec, sorted(cards) + ['dsp', DEFAULT_4STEMS])}; "
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
