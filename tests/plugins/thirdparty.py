# SPDX-License-Identifier: GPL-3.0-or-later
"""Build real third-party VST3 plugins from Debian's source packages, headless, for the tests.

    python tests/plugins/thirdparty.py tests/.cache/thirdparty

Debian's ``dpf-plugins`` (1.6: Kars and Nekobi are instruments; MVerb, 3BandEQ, PingPongPan are
effects) and ``zam-plugins`` (4.1: ZamEQ2 and ZamDelay are mono; ZamCompX2 is stereo) are
fetched with ``apt-get source --download-only`` (needs a ``deb-src`` entry for the Debian archive
and ``apt-get update``; ``.ci/run`` adds both). Only the ``.orig`` tarball is used (the small
Debian tarball may be missing from the mirror, and apt then exits non-zero); it is checked
against the sha256 in the ``.dsc``. Each tree's empty ``dpf/`` is replaced by a copy of the
installed ``dpf-source`` with the same two VST3 patches as our own plugins (see ``build.py``),
and each plugin is made with ``make vst3`` without any UI.

The plugins are GPL/LGPL/ISC: they are built here and never committed. A plugin set is rebuilt
only when the tarballs, this script, ``build.py``, DPF or the compiler change.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# tests/vst3.py loads build.py under this name; share it, so there is one BuildError class.
_build = sys.modules.get("_stembridge_plugin_build")
if _build is None:
    sys.path.insert(0, str(HERE))
    import build as _build  # noqa: E402  (run as a script: this folder is not a package)

BuildError = _build.BuildError

#: Source package -> plugins built from it (bundle names, as their Makefiles give them).
PACKAGES = {
    "dpf-plugins": ("Kars", "Nekobi", "MVerb", "3BandEQ", "PingPongPan"),
    "zam-plugins": ("ZamEQ2", "ZamCompX2", "ZamDelay"),
}
#: BASE_OPTS replaces DPF's "-O3 -ffast-math ...": with -ffast-math, GCC 12 links crtfastmath.o into
#: the .so, and loading it switches the whole process to flush subnormal floats to zero (FTZ/DAZ),
#: which changes every later float computation of the test run (hypothesis refuses to run then).
MAKE_FLAGS = ("PKG_CONFIG=false", "HAVE_OPENGL=false", "HAVE_CAIRO=false", "UI_TYPE=none",
              "BASE_OPTS=-O2 -fdata-sections -ffunction-sections")


def build(cache_dir: str | os.PathLike, *, dpf: Path | None = None, log=None) -> dict[str, Path]:
    """Fetch, build (or reuse) every plugin of :data:`PACKAGES`; return ``{name: .vst3 bundle}``.

    Raises
    ------
    BuildError
        apt cannot fetch the sources (no ``deb-src`` entry?), a tool is missing, or make failed.
    """
    cache = Path(cache_dir).resolve()
    dpf = Path(dpf) if dpf is not None else _build.dpf_path()
    log = log or (lambda line: None)
    for tool in ("apt-get", "make", os.environ.get("CXX", "g++")):
        if shutil.which(tool) is None:
            raise BuildError(f"'{tool}' not found; the third-party test plugins need apt-get, make and g++")
    if not (dpf / _build.VST3_SOURCE).is_file():
        raise BuildError(f"DPF sources not found at {dpf}; install them (Debian: apt-get install dpf-source)")
    cache.mkdir(parents=True, exist_ok=True)
    with _build._locked(cache / ".lock"):
        compiler = subprocess.run([os.environ.get("CXX", "g++"), "--version"], capture_output=True, text=True,
                                  check=False).stdout
        common = _build._digest([Path(__file__).resolve(), HERE / "build.py",
                                 *sorted((dpf / "distrho").rglob("*"))], extra=compiler)
        out: dict[str, Path] = {}
        for package, names in PACKAGES.items():
            bundles = {name: cache / "vst3" / f"{name}.vst3" for name in names}
            stamp = cache / f"{package}.sha256"
            if stamp.is_file() and all(b.is_dir() for b in bundles.values()):
                tarball = _tarball(cache / "sources", package)
                if tarball is not None and stamp.read_text().strip() == _key(tarball, common):
                    log(f"{package}: up to date")
                    out.update(bundles)
                    continue
            tarball = _fetch(cache / "sources", package, log=log)
            _make(package, names, tarball, cache, dpf=dpf, common=common, log=log)
            stamp.write_text(_key(tarball, common) + "\n")
            out.update(bundles)
        return out


def _key(tarball: Path, common: str) -> str:
    return hashlib.sha256((tarball.name + common).encode()).hexdigest()


def _tarball(folder: Path, package: str) -> Path | None:
    found = sorted(folder.glob(f"{package}_*.orig.tar.*")) if folder.is_dir() else []
    return found[-1] if found else None


def _fetch(folder: Path, package: str, *, log) -> Path:
    """The package's ``.orig`` tarball, downloaded with apt-get if needed, checked against its .dsc."""
    folder.mkdir(parents=True, exist_ok=True)
    tarball = _tarball(folder, package)
    if tarball is None or not _verified(folder, tarball):
        log(f"{package}: apt-get source --download-only")
        proc = subprocess.run(["apt-get", "source", "--download-only", package], cwd=folder, capture_output=True,
                              text=True, check=False)
        tarball = _tarball(folder, package)
        if tarball is None:  # apt exits non-zero for the missing Debian tarball alone; the .orig is enough
            tail = " ".join((proc.stderr or proc.stdout).split())[-400:]
            raise BuildError(f"apt-get source --download-only {package} fetched no .orig tarball ({tail}); add a "
                             "'deb-src' entry for the Debian archive to /etc/apt/sources.list.d and run apt-get update")
        if not _verified(folder, tarball):
            raise BuildError(f"{tarball}: sha256 does not match {package}'s .dsc; delete it and retry")
    return tarball


def _verified(folder: Path, tarball: Path) -> bool:
    for dsc in folder.glob("*.dsc"):
        match = re.search(r"^ ([0-9a-f]{64}) \d+ " + re.escape(tarball.name) + r"$", dsc.read_text(), re.M)
        if match:
            return hashlib.sha256(tarball.read_bytes()).hexdigest() == match.group(1)
    return False


def _make(package: str, names, tarball: Path, cache: Path, *, dpf: Path, common: str, log) -> None:
    work = cache / f"{package}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="data")
        (tree,) = [p for p in work.iterdir() if p.is_dir()]
        shutil.rmtree(tree / "dpf", ignore_errors=True)
        _patched_tree(dpf, tree / "dpf")
        for name in names:
            started = time.monotonic()
            proc = subprocess.run(["make", "-C", str(tree / "plugins" / name), "vst3", *MAKE_FLAGS],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"{package}: make {name} vst3 failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
            bundle = tree / "bin" / f"{name}.vst3"
            if not bundle.is_dir():
                raise BuildError(f"{package}: make {name} vst3 made no {bundle}")
            target = cache / "vst3" / f"{name}.vst3"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(bundle), str(target))
            log(f"{name}: built in {time.monotonic() - started:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _patched_tree(dpf: Path, dest: Path) -> None:
    """A full copy of DPF (the Makefiles need it all) with the VST3 wrapper patched as in build.py."""
    shutil.copytree(dpf, dest, ignore=shutil.ignore_patterns("*.o", "*.d"))
    target = dest / _build.VST3_SOURCE
    target.write_text(_build.patch_text(target.read_text(encoding="utf-8"), source=str(dpf / _build.VST3_SOURCE)),
                      encoding="utf-8")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        bundles = build(args[0], log=print)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in bundles.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
