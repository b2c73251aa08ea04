# SPDX-License-Identifier: GPL-3.0-or-later
"""Build stembridge's test VST3 plugins from their DPF sources, headless, with g++ only.

    python tests/plugins/build.py tests/.cache/plugins

Each folder beside this file (``sbgain``, ``sblatency``, ``sbsine``, ``sbwiden``) holds a DPF plugin: a
``DistrhoPluginInfo.h`` and a ``Plugin.cpp``. They are compiled against Debian's ``dpf-source``
(DISTRHO Plugin Framework 1.6, ``/usr/share/dpf``, or ``$DPF_PATH``), which ships its own VST3
headers ("travesty"), so no Steinberg SDK is needed. Needs: ``dpf-source g++``.

DPF 1.6's VST3 wrapper has two bugs that matter under pedalboard, so the build compiles a patched
copy of ``distrho/`` (the patches are checked and fail loudly when they no longer apply):

1. The 2080 hidden MIDI-CC parameters of a plugin with MIDI input are titled "MIDI Ch. N CC M".
   pedalboard skips parameters whose name starts with "MIDI CC " but probes every other one, and
   ``load_plugin`` then takes ~25 s. They are renamed "MIDI CC N|M".
2. ``kVst3InternalParameterMidiCC_end`` is one past the last MIDI-CC id, i.e. the id of the first
   real parameter, but three tests use ``rindex <= ..._end``: the first real parameter reads back
   as 0 and cannot be set. They become ``<``.

A plugin is rebuilt only when the hash of its sources, this script, the DPF files and the
compiler version changes; the result is ``CACHE/<name>.vst3/Contents/<arch>-linux/<name>.so``
(a VST3 bundle's folder name must match the ``.so`` name).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGINS = ("sbgain", "sblatency", "sbsine", "sbwiden")
DEFAULT_DPF = Path("/usr/share/dpf")
VST3_SOURCE = Path("distrho/src/DistrhoPluginVST3.cpp")

#: (why, old text, new text, occurrences expected in DPF 1.6's DistrhoPluginVST3.cpp)
PATCHES = (
    ("hidden MIDI-CC parameter names must start with 'MIDI CC ' so pedalboard skips them",
     '"MIDI Ch. %d CC %d"', '"MIDI CC %d|%d"', 1),
    ("the MIDI-CC id range is half-open; '<=' swallows the first real parameter",
     "rindex <= kVst3InternalParameterMidiCC_end", "rindex < kVst3InternalParameterMidiCC_end", 3),
)

CXXFLAGS = ("-std=gnu++11", "-O2", "-pipe", "-fPIC", "-DPIC", "-DNDEBUG", "-fvisibility=hidden",
            "-fdata-sections", "-ffunction-sections", "-Wall", "-Wextra")
LDFLAGS = ("-shared", "-Wl,--no-undefined", "-Wl,-O1,--as-needed,--gc-sections", "-ldl")


class BuildError(RuntimeError):
    """The plugins could not be built; the message says what is missing or what failed."""


def dpf_path() -> Path:
    return Path(os.environ.get("DPF_PATH") or DEFAULT_DPF)


def build(cache_dir: str | os.PathLike, *, dpf: Path | None = None, jobs: int | None = None,
          log=None) -> dict[str, Path]:
    """Build (or reuse) every test plugin; return ``{name: path/to/name.vst3}``.

    Parameters
    ----------
    cache_dir : path
        Folder for the bundles, the patched DPF copy and the hash stamps; created if needed.
    dpf : Path, optional
        DPF source tree (default ``$DPF_PATH`` or ``/usr/share/dpf``).
    jobs : int, optional
        Parallel compiler processes (default: the CPU count).
    log : callable, optional
        Called with one line of progress text per step (e.g. ``print``).

    Raises
    ------
    BuildError
        A tool or DPF is missing, a DPF patch no longer applies, or the compiler failed.
    """
    cache = Path(cache_dir).resolve()
    dpf = Path(dpf) if dpf is not None else dpf_path()
    log = log or (lambda line: None)
    if not sys.platform.startswith("linux"):
        raise BuildError(f"the test plugins build on Linux only (this is {sys.platform})")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise BuildError(f"C++ compiler '{cxx}' not found; install it (Debian: apt-get install g++)")
    if not (dpf / VST3_SOURCE).is_file():
        raise BuildError(f"DPF sources not found at {dpf} (no {VST3_SOURCE}); install them "
                         "(Debian: apt-get install dpf-source) or set DPF_PATH")
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        compiler = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
        common = _digest([Path(__file__).resolve(), *sorted((dpf / "distrho").rglob("*"))], extra=compiler)
        patched = _patched_dpf(dpf, cache / f"dpf-{common[:12]}")
        out: dict[str, Path] = {}
        todo = []
        for name in PLUGINS:
            key = _digest(sorted((HERE / name).iterdir()), extra=common)
            bundle = cache / f"{name}.vst3"
            stamp = cache / f"{name}.sha256"
            out[name] = bundle
            if stamp.is_file() and stamp.read_text().strip() == key and _binary(bundle, name).is_file():
                log(f"{name}: up to date")
            else:
                todo.append((name, key))
        if todo:
            _compile_all(todo, cache, patched, cxx=cxx, jobs=jobs or os.cpu_count() or 1, log=log)
        for old in cache.glob("dpf-*"):  # patched copies of an older DPF or build.py
            if old != patched.parent:
                shutil.rmtree(old, ignore_errors=True)
        return out


def _binary(bundle: Path, name: str) -> Path:
    return bundle / "Contents" / f"{platform.machine()}-linux" / f"{name}.so"


def _digest(paths, *, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise builds into one cache (pytest-xdist workers, parallel CI jobs)."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def patch_text(text: str, *, source: str = str(VST3_SOURCE)) -> str:
    """Apply :data:`PATCHES` to the text of ``DistrhoPluginVST3.cpp``, checking each one."""
    for why, old, new, expected in PATCHES:
        found = text.count(old)
        if found != expected:
            raise BuildError(
                f"DPF patch no longer applies to {source}: expected {expected} occurrence(s) of "
                f"{old!r}, found {found} ({why}). The installed DPF is not the 1.6 this build was "
                "written for: check whether upstream fixed the bug and update PATCHES in "
                f"{Path(__file__).resolve()}")
        text = text.replace(old, new)
    return text


def _patched_dpf(dpf: Path, dest: Path) -> Path:
    """A copy of DPF's ``distrho/`` with the VST3 wrapper patched; returns its ``distrho`` folder."""
    if (dest / ".complete").is_file():
        return dest / "distrho"
    shutil.rmtree(dest, ignore_errors=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(dpf / "distrho", tmp / "distrho")
        shutil.copy2(dpf / "utils" / "symbols" / "vst3.version", tmp / "vst3.version")
        target = tmp / VST3_SOURCE
        target.write_text(patch_text(target.read_text(encoding="utf-8"), source=str(dpf / VST3_SOURCE)),
                          encoding="utf-8")
        (tmp / ".complete").write_text("")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest / "distrho"


def _compile_all(todo, cache: Path, distrho: Path, *, cxx: str, jobs: int, log) -> None:
    pending = list(todo)
    running: list[tuple[str, str, Path, subprocess.Popen, float]] = []
    failures = []
    while pending or running:
        while pending and len(running) < jobs:
            name, key = pending.pop(0)
            work = cache / f"{name}.partial"
            shutil.rmtree(work, ignore_errors=True)
            so = _binary(work / f"{name}.vst3", name)
            so.parent.mkdir(parents=True)
            cmd = [cxx, *CXXFLAGS, "-DDISTRHO_PLUGIN_TARGET_VST3", f"-I{HERE / name}", f"-I{distrho}",
                   str(HERE / name / "Plugin.cpp"), str(distrho / "DistrhoPluginMain.cpp"),
                   *LDFLAGS, f"-Wl,--version-script={distrho.parent / 'vst3.version'}", "-o", str(so)]
            log(f"{name}: compiling")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((name, key, work, proc, time.monotonic()))
        name, key, work, proc, started = running.pop(0)
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{name}: {cxx} exited with {proc.returncode}:\n{output[-4000:]}")
            shutil.rmtree(work, ignore_errors=True)
            continue
        bundle, stamp = cache / f"{name}.vst3", cache / f"{name}.sha256"
        stamp.unlink(missing_ok=True)
        shutil.rmtree(bundle, ignore_errors=True)
        (work / f"{name}.vst3").rename(bundle)
        shutil.rmtree(work, ignore_errors=True)
        stamp.write_text(key + "\n")
        log(f"{name}: built in {time.monotonic() - started:.1f} s")
    if failures:
        raise BuildError("building the test VST3 plugins failed\n" + "\n".join(failures))


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
