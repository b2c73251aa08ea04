"""Outputs written whole or not at all: hidden partial names, scratch folders, and the leftovers
of killed runs.

Every output goes to ``.<name>.<pid>.partial`` beside its target and is renamed when complete;
intermediate files live in ``.stembridge-<pid>-*.partial`` folders. The process id in the name
tells a later run which leftovers belong to a process that is gone, so it can remove them
without touching a live run's. :mod:`bridge.audio.files` writes audio this way; text outputs use
:func:`write_text_atomic`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A private folder for intermediate files inside ``parent``, removed afterwards.

    Its name carries the process id, so a folder a killed run left behind is removed by the next
    run that writes there.
    """
    parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^\.stembridge-(\d+)-.*{re.escape(PARTIAL_SUFFIX)}$")
    for candidate in parent.iterdir():
        match = pattern.match(candidate.name)
        if match and candidate.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(candidate, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f".stembridge-{os.getpid()}-", suffix=PARTIAL_SUFFIX, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_partials(final: Path) -> list[Path]:
    """Delete partial files a crashed earlier run left for ``final``; return what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+){re.escape(PARTIAL_SUFFIX)}$")
    if not final.parent.is_dir():
        return removed
    for candidate in final.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and not _pid_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def remove_dead_partials(folder: Path) -> list[Path]:
    """Delete, anywhere below ``folder``, the partial files and scratch folders of processes that
    are gone (a killed run's); return what was removed. Live processes' files are left alone."""
    removed = []
    partial = re.compile(rf"^\..+\.(\d+){re.escape(PARTIAL_SUFFIX)}$")
    scratch = re.compile(rf"^\.stembridge-(\d+)-.*{re.escape(PARTIAL_SUFFIX)}$")
    for root, dirs, files in os.walk(folder):
        for name in list(dirs):
            match = scratch.match(name)
            if match and not _pid_alive(int(match.group(1))):
                shutil.rmtree(Path(root) / name, ignore_errors=True)
                removed.append(Path(root) / name)
                dirs.remove(name)
        for name in files:
            match = partial.match(name)
            if match and not _pid_alive(int(match.group(1))):
                (Path(root) / name).unlink(missing_ok=True)
                removed.append(Path(root) / name)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether a partial named by ``pid`` may still be in use (never one named by this process:
    it was left by an earlier process that had the same id)."""
    return pid != os.getpid() and process_alive(pid)


def process_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (ours included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone: its files are as stale as any dead one's
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_text_atomic(path, text: str, *, what: str = "file") -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically: a hidden partial file beside
    it, fsynced, then renamed, so a crash never leaves a half-written file under the final name.

    Raises
    ------
    OutputError
        The folder cannot be created or written; the message names ``what`` and ``path``.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the {what} ({exc.strerror or exc}); "
                          "check the folder exists and is writable") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
