"""Output names: templates like ``{track}/{stem}.{ext}`` expanded safely inside an output folder."""

from __future__ import annotations

import string
from pathlib import Path, PurePosixPath

from ..errors import OutputError

FIELDS = {"track", "stem", "ext", "model", "album", "relpath"}
#: Fields that place a song's outputs by its folders; a template without them is put under the
#: song's mirrored folder (``relpath``) automatically.
PLACING = {"album", "relpath"}


def check_template(template: str, *, where: str = "output name") -> str:
    """Raise :class:`OutputError` unless ``template`` only uses known fields and stays relative."""
    try:
        parts = [(f, spec, conversion) for _, f, spec, conversion in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise OutputError(f"{where}: '{template}' is not a valid template ({exc}); use fields like {{track}}/{{stem}}.{{ext}}") from None
    fields = {f for f, _, _ in parts}
    if any(spec or conversion for _, spec, conversion in parts):
        raise OutputError(f"{where}: '{template}' uses a format spec or conversion ('{{field:...}}', '{{field!r}}'); "
                          "write plain fields like {track}/{stem}.{ext}")
    unknown = fields - FIELDS
    if unknown:
        raise OutputError(f"{where}: unknown field {{{sorted(unknown)[0]}}} in '{template}'; known: "
                          + ", ".join("{" + f + "}" for f in sorted(FIELDS)))
    probe = PurePosixPath(template.replace("\\", "/"))
    if probe.is_absolute() or ".." in probe.parts or template.startswith("~"):
        raise OutputError(f"{where}: '{template}' must be a relative name inside the output folder (no '..', no absolute path)")
    return template


def expand(template: str, out_dir: Path, **fields) -> Path:
    """``out_dir / template.format(**fields)``, refusing anything that lands outside ``out_dir``.

    ``relpath`` (a song's folder below the folder named on the command line, ``a/b`` style) keeps
    its slashes; every other field is one name. A template that uses neither ``{relpath}`` nor
    ``{album}`` is placed under ``relpath``, so the outputs mirror the input folders.
    """
    relpath = str(fields.pop("relpath", "") or "")
    parts = [_clean(part) for part in relpath.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    safe = {k: _clean(str(v)) for k, v in fields.items()}
    safe.setdefault("album", "")
    safe["relpath"] = "/".join(parts) or "."
    used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if parts and not used & PLACING:
        template = "{relpath}/" + template
    relative = template.format(**safe)
    path = (out_dir / relative).resolve()
    root = out_dir.resolve()
    if root != path and root not in path.parents:
        raise OutputError(f"output name '{relative}' lands outside the output folder {out_dir}; fix the template")
    return path


def check_unique(paths: dict[str, Path]) -> None:
    """Raise if two outputs would be written to one file."""
    seen: dict[Path, str] = {}
    for label, path in paths.items():
        if path in seen:
            raise OutputError(f"outputs '{seen[path]}' and '{label}' would both be written to {path}; "
                              "make the name template tell them apart (e.g. include {stem})")
        seen[path] = label


def _clean(value: str) -> str:
    # A track name comes from a file name: keep it, but never let it climb out of its folder.
    return value.replace("/", "_").replace("\\", "_").replace("\x00", "") .strip() or "_"
