"""What the command line prints while a run goes: progress bars, one line per output, warnings.

Lines go through tqdm while bars are on the terminal (so the bars move down instead of being
overwritten), and to stdout or stderr otherwise. Nothing here runs a song; ``cli.py`` calls it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from .errors import BridgeError


def columns() -> int:
    """The terminal's width for the bars. A terminal that reports 0 columns (a pseudo-terminal
    nobody sized, some multiplexers while attaching) made tqdm cut every bar to nothing: 80 then."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


def progress(label: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, desc=label, unit="%", leave=False, file=sys.stderr, ncols=columns(),
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(done: int, total: int) -> None:
        bar.n = round(100 * done / max(total, 1))
        bar.refresh()

    return update, bar.close


#: True while progress bars are on the terminal: lines then go through tqdm, which moves the bars.
_BARS = {"on": False}


def say(line: str, *, file=None) -> None:
    if _BARS["on"]:
        from tqdm import tqdm

        tqdm.write(line, file=file or sys.stdout)
    else:
        print(line, file=file or sys.stdout)


def error(message: str) -> None:
    say(f"stembridge: error: {message}", file=sys.stderr)


def show_layer_warnings() -> None:
    """Print a layer's warnings (silent instrument, notes after the end) as one stembridge line."""
    import warnings

    from .host.layers import LayerWarning

    default = warnings.showwarning
    if getattr(default, "stembridge", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LayerWarning):
            say(f"stembridge: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.stembridge = True
    warnings.showwarning = show


def warn_clipped(target: Path, count: int) -> None:
    from .render.songs import clipping_message

    say(f"stembridge: warning: {clipping_message(target, count)}", file=sys.stderr)


def label(song) -> str:
    """A song as the user named it: its folders from the named one down, then its file name."""
    return f"{song.naming.relpath}/{song.path.name}" if song.naming.relpath else song.path.name


def seconds(path: Path) -> float:
    from .audio import files

    try:
        return files.info(path).seconds
    except BridgeError:
        return 0.0


class Overall:
    """The run's progress: songs done of total, audio minutes, ETA; a per-song bar below it."""

    def __init__(self, total: int, seconds: float, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.seconds = seconds
        self.done_seconds = 0.0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="songs", unit="song", position=0, leave=False, file=sys.stderr,
                            ncols=columns(), bar_format="{desc}: {n}/{total} |{bar}| {elapsed}<{remaining}{postfix}")
            self._postfix()
            _BARS["on"] = True

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"{self.done_seconds / 60:.1f} of {self.seconds / 60:.1f} min of audio", refresh=True)

    def done(self, outcome) -> None:
        if self.bar is not None:
            self.done_seconds += outcome.seconds
            self.bar.update(1)
            self._postfix()

    def song(self, label: str):
        from tqdm import tqdm

        bar = tqdm(total=100, desc=label, unit="%", position=1, leave=False, file=sys.stderr, ncols=columns(),
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

        def update(done: int, total: int) -> None:
            bar.n = round(100 * done / max(total, 1))
            bar.refresh()
            if done >= total:
                bar.close()

        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            _BARS["on"] = False


def report_song(name: str, outcome, kind: str) -> None:
    if outcome.status == "skipped":
        say(f"{name}: up to date, skipped")
        return
    source = " (from cached stems)" if outcome.status == "cached" else ""
    if kind == "separate":
        for stem, target in outcome.written.items():
            say(f"{name}: {stem} -> {target}{source}")
        return
    report_file(name, outcome.written, outcome.written["manifest"], suffix=source)


def report_file(name: str, written: dict, manifest_path, suffix: str = "") -> None:
    import json

    outputs = json.loads(Path(manifest_path).read_text(encoding="utf-8"))["outputs"]
    for label, target in written.items():
        if label not in outputs:  # the manifest, the DAW project
            if label != "manifest":
                say(f"{name}: {label} -> {target}")
            continue
        stats = outputs[label]
        loud = "-inf" if stats["loudness_lufs"] is None else f"{stats['loudness_lufs']:.1f}"
        peak = "-inf" if stats["true_peak_dbtp"] is None else f"{stats['true_peak_dbtp']:.1f}"
        say(f"{name}: {label} -> {target} ({loud} LUFS, true peak {peak} dBTP){suffix}")
        if stats["clipped_samples"]:
            say(f"stembridge: warning: {target}: {stats['clipped_samples']} samples were over full scale and "
                 "clipped; lower a gain, add a Limiter to master, or set output.loudness_lufs", file=sys.stderr)


class CapturedStderr:
    """What third-party code wrote to file descriptor 2 while :func:`captured_stderr` held it."""

    def __init__(self):
        self.text = ""

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


@contextlib.contextmanager
def captured_stderr():
    """Keep plugins' and native libraries' stderr chatter off the terminal.

    VST3 plugins write from C++ straight to file descriptor 2 (DPF prints "asked to delete
    component while still active" as each plugin is unloaded; JUCE prints assertion lines), so
    ``sys.stderr`` cannot catch it: fd 2 itself is pointed at a temporary file for the command's
    run (host processes started meanwhile inherit it), while Python's own ``sys.stderr`` (our
    errors, warnings and progress bars) is moved to a copy of the original descriptor and still
    reaches the terminal. Yields a :class:`CapturedStderr` filled on exit.
    """
    captured = CapturedStderr()
    try:
        python_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # already redirected in Python (a test's capture)
        python_fd = None
    sys.stderr.flush()
    saved = os.dup(2)
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 2)
    previous, stream = sys.stderr, None
    if python_fd == 2:
        stream = open(os.dup(saved), "w", encoding=getattr(previous, "encoding", None) or "utf-8",
                      errors="backslashreplace", buffering=1)
        sys.stderr = stream
    try:
        yield captured
    finally:
        if stream is not None:
            stream.flush()
            sys.stderr = previous
            stream.close()
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        captured.text = sink.read().decode("utf-8", errors="replace")
        sink.close()


def show_captured(captured: CapturedStderr, *, verbose: bool, note: bool = True) -> None:
    """With ``verbose`` what was captured, as written; otherwise, if ``note``, one line saying
    there was some."""
    lines = captured.lines
    if not lines:
        return
    if verbose:
        sys.stderr.write(captured.text if captured.text.endswith("\n") else captured.text + "\n")
        return
    if not note:
        return
    say(f"stembridge: note: plugins or native libraries wrote {len(lines)} line{'s' if len(lines) != 1 else ''} "
        "to stderr (hidden; --verbose shows them)", file=sys.stderr)
