"""The records a run leaves beside its outputs: manifests, resume records, and what names a model.

A manifest (``<mix>.manifest.json``) holds the input and its sha256, the preset as rendered, the
model's identity, package versions and per-output levels; ``separate`` leaves a smaller hidden
record of the same kind. Both are written atomically (:func:`~bridge.audio.partials.write_text_atomic`) and
read back by the resume checks, which compare them with what a new run would write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import threading
from importlib import metadata
from pathlib import Path

from ..version import __version__
from ..audio import partials


def model_identity(separator) -> dict | None:
    """What names the separator's model for the cache and for resume checks, or None if unknown.

    None (a separator without a card, e.g. one written in Python): its stems are never cached.
    """
    members = getattr(separator, "members", None)
    if members is not None:  # an ensemble: its parts and each model's own identity
        identities = {name: model_identity(member) for name, member in members.items()}
        return {"ensemble": separator.settings["ensemble"], "residual": separator.residual,
                "members": identities, "stembridge": __version__}
    card = separator.card
    if card is None:
        return None
    # batch_size is a ChunkedSeparator's knob (onnxruntime may round differently per batch);
    # a separator that does not batch has none.
    settings = {**separator.settings, "batch_size": getattr(separator, "batch_size", 1)}
    fields = dataclasses.asdict(card)
    for provenance in ("file", "license", "credit", "description", "source", "imported", "quantized_from",
                       "converted_from"):
        fields.pop(provenance, None)
    # A family's own card section added since the identity was first recorded is left out when
    # empty, so that adding a family changes no other card's identity (stem caches, resume records).
    for section in LATER_SECTIONS:
        if fields.get(section) is None:
            fields.pop(section, None)
    return {"family": card.family, "stembridge": __version__, "settings": settings, "card": fields}


#: Card sections of families added after the identities in use were recorded (see model_identity).
LATER_SECTIONS = ("umx", "vr")


def made_by(separator) -> dict | None:
    """An ensemble's :meth:`~bridge.separation.ensemble.EnsembleSeparator.made_by`; None for one model."""
    return separator.made_by() if getattr(separator, "members", None) is not None else None


def member_record(separator) -> dict:
    """One model of an ensemble, as a manifest names it: its card's file, sha256 and family."""
    card = separator.card
    out = {"settings": dict(separator.settings), "device": getattr(separator, "device", None)}
    if card is not None:
        out.update(file=str(card.file) if card.file else None, sha256=card.sha256, family=card.family, card=card.source)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BackgroundSha256:
    """:func:`file_sha256` of ``path`` computed in a thread of its own, started now.

    For a digest needed only when a run ends (``separate --force``'s record of its input):
    hashlib hashes without the GIL, so a 4-minute WAV's 42 MB are hashed while the model loads
    and the song separates instead of before. :meth:`result` waits for it (and raises what
    reading the file raised).
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sha256 {self._path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = file_sha256(self._path)
        except BaseException as exc:  # handed to result()
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def versions() -> dict[str, str]:
    found = {}
    for package in ("stembridge", "numpy", "onnxruntime", "pedalboard", "soundfile", "soxr", "pyloudnorm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["python"] = platform.python_version()
    return found


def manifest_record(*, source: Path, header, session, separator, input_sha256: str | None = None) -> dict:
    """Everything a manifest holds but the outputs and the loudness gain."""
    card = separator.card
    model = {"name": separator.name, "settings": dict(separator.settings), "identity": model_identity(separator)}
    if card is not None:
        model.update(file=str(card.file) if card.file else None, sha256=card.sha256, family=card.family,
                     card=card.source)
    # Where it ran: a record of the run, not of the separation (not in the identity, see
    # bridge.separation.devices), so a resume check on another device still matches.
    model["device"] = getattr(separator, "device", None)
    if getattr(separator, "members", None) is not None:
        model["made_by"] = separator.made_by()
        model["members"] = {name: member_record(member) for name, member in separator.members.items()}
    return {
        "stembridge": __version__,
        "input": {"path": str(source.resolve()), "sha256": input_sha256 or file_sha256(source),
                  "sample_rate": header.sample_rate, "channels": header.channels, "frames": header.frames},
        "preset": {"source": session.source, "session": session.to_dict()},
        "model": model,
    }


def write_manifest_record(target: Path, record: dict, *, outputs: dict, written: dict, loudness) -> Path:
    """A manifest from :func:`manifest_record` plus what was written, atomically."""
    full = {**record, "loudness": loudness,
            "outputs": {label: {**outputs[label], "path": str(written[label])} for label in outputs},
            "handoff": {label: str(written[label]) for label in ("project", "nistems", "video") if label in written},
            "versions": versions()}
    text = json.dumps(full, indent=2, allow_nan=False, default=str) + "\n"
    return partials.write_text_atomic(target, text, what="manifest")


@dataclasses.dataclass(frozen=True)
class ManifestRecord:
    """What a resume check reads back from a manifest (:func:`read_manifest`)."""

    stembridge: str
    input_sha256: str
    session: dict
    model_sha256: str | None
    model_identity: dict | None
    album_songs: list | None  # album loudness: the album's sorted input hashes
    outputs: dict  # label -> Path
    handoff: dict  # "project" / "nistems" / "video" -> Path


def read_manifest(path: Path) -> ManifestRecord | None:
    """A manifest written by :func:`write_manifest_record`, or None when it is missing, unreadable
    or not one (a resume check then renders the song again)."""
    record = read_json(path)
    try:
        loudness = record.get("loudness") or {}
        return ManifestRecord(
            stembridge=record["stembridge"], input_sha256=record["input"]["sha256"],
            session=record["preset"]["session"], model_sha256=record["model"].get("sha256"),
            model_identity=record["model"].get("identity"), album_songs=(loudness.get("album") or {}).get("songs"),
            outputs={label: Path(out["path"]) for label, out in record["outputs"].items()},
            handoff={label: Path(p) for label, p in (record.get("handoff") or {}).items()})
    except (AttributeError, KeyError, TypeError):
        return None


def write_json(target: Path, data) -> Path:
    """``data`` as JSON at ``target``, atomically (:func:`~bridge.audio.partials.write_text_atomic`)."""
    text = json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
    return partials.write_text_atomic(target, text, what="JSON record")


def read_json(path: Path):
    """A JSON record, or None when it is missing or unreadable (a resume check then redoes the work)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
