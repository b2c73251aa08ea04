"""A render host: a child process that runs songs on its main thread, fed over a pipe.

Used by ``--jobs N`` (N hosts) and by the Dask executor (one host per Dask worker process):
Dask runs tasks in worker threads, but pedalboard loads and resets VST3 plugins on the main
thread only, so the task hands its song to the host and waits. The host keeps the model and the
plugins loaded between songs (:func:`.jobs.worker_for`), and exits when its parent goes away,
so a killed worker leaves no orphan rendering on.

Protocol: length-prefixed pickles. Request ``(spec, song, kwargs)``, reply :class:`SongOutcome`.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time

_HEADER = struct.Struct("<Q")
_ENTRY = "import sys; from bridge.batch.host import main; sys.exit(main())"
#: Names the descriptor the parent's ``sys.stderr`` writes to when that is not fd 2: the command
#: line points fd 2 at a file to keep plugins' C++ chatter off the terminal
#: (:func:`bridge.console.captured_stderr`); a host does the same, so its Python warnings still
#: reach the terminal and its plugins' chatter joins the captured rest.
_STDERR_FD = "STEMBRIDGE_PYTHON_STDERR_FD"


def _python_stderr_fd() -> int | None:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if fd != 2 else None


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class HostDied(RuntimeError):
    """The host process ended while running a song."""


class Host:
    """The parent's handle on one host process (started on first use)."""

    def __init__(self, *, env: dict | None = None):
        self._env = env
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(self, spec, song, **kwargs):
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                fd = _python_stderr_fd()
                env = dict(self._env if self._env is not None else os.environ)
                env.pop(_STDERR_FD, None)
                if fd is not None:
                    env[_STDERR_FD] = str(fd)
                self._process = subprocess.Popen([sys.executable, "-c", _ENTRY], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, env=env,
                                                 pass_fds=(fd,) if fd is not None else ())
            try:
                _send(self._process.stdin, (spec, song, kwargs))
                reply = _receive(self._process.stdout)
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:
                code = self._process.wait()
                self._process = None
                raise HostDied(f"{song.path}: the render process ended with code {code} while rendering it")
            return reply

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                try:
                    self._process.stdin.close()
                    self._process.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    self._process.kill()
                self._process = None


def _watch_parent() -> None:
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def main() -> int:
    from .jobs import run_song

    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a plugin prints goes to stderr, never into the protocol
    python_fd = os.environ.get(_STDERR_FD)
    if python_fd and python_fd.isdigit():  # Python's own messages go where the parent's go
        try:
            sys.stderr = open(int(python_fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                              closefd=False)
        except OSError:
            pass
    threading.Thread(target=_watch_parent, daemon=True).start()
    while True:
        request = _receive(requests)
        if request is None:
            return 0
        spec, song, kwargs = request
        try:
            outcome = run_song(spec, song, **kwargs)
        except KeyboardInterrupt:
            return 130
        _send(replies, outcome)


if __name__ == "__main__":
    sys.exit(main())
