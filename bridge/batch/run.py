"""A whole run: songs to outcomes, album loudness, the summary and ``OUT/stembridge-run.json``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from ..version import __version__
from ..audio import partials
from ..errors import BridgeError, OutputError
from .discover import RUN_RECORD, Song
from .executors import DaskExecutor, ProcessExecutor, SerialExecutor
from .jobs import RunSpec, SongOutcome



@dataclasses.dataclass
class RunReport:
    """Every song's outcome, in input order, and the run's wall time."""

    outcomes: list[SongOutcome]
    wall: float
    notes: list[str] = dataclasses.field(default_factory=list)
    device_note: str | None = None  # what --device auto said about its choice

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[SongOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def audio_seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes if o.status in ("rendered", "cached"))

    @property
    def realtime_factor(self) -> float | None:
        return self.audio_seconds / self.wall if self.wall > 0 and self.audio_seconds else None

    def summary(self) -> list[str]:
        rtf = self.realtime_factor
        songs = len(self.outcomes)
        lines = [f"{songs} song{'' if songs == 1 else 's'}: {self.count('rendered')} rendered, {self.count('cached')} from cached "
                 f"stems, {self.count('skipped')} up to date (skipped), {len(self.failed)} failed; "
                 f"{self.wall:.1f} s" + (f", {rtf:.1f}x real time" if rtf else "")
                 + (f"; model on {', '.join(self.devices)}" if self.devices else "")
                 + (f" ({self.device_note})" if self.device_note and self.devices else "")]
        lines += self.model_lines()
        lines += [f"  failed: {o.error}" for o in self.failed]
        return lines

    def models(self) -> dict[str, dict]:
        """Per model over the run: ``{"calls": songs it separated, "cached": songs replayed from the
        stem cache, "seconds": wall seconds in its stream}``, in order of first use."""
        found: dict[str, dict] = {}
        for outcome in self.outcomes:
            for name, use in (outcome.models or {}).items():
                row = found.setdefault(name, {"calls": 0, "cached": 0, "seconds": 0.0})
                row["calls" if use["ran"] else "cached"] += 1
                row["seconds"] = round(row["seconds"] + use["seconds"], 3)
        return found

    def model_lines(self) -> list[str]:
        """One line per model when the run used several (an ensemble): model calls, cache hits, time."""
        models = self.models()
        if len(models) < 2:
            return []
        calls = sum(m["calls"] for m in models.values())
        hits = sum(m["cached"] for m in models.values())
        lines = [f"  models: {calls} model call{'s' if calls != 1 else ''}, {hits} from the stem cache"]
        lines += [f"    {name}: {m['calls']} separated, {m['cached']} from the cache, {m['seconds']:.1f} s"
                  for name, m in models.items()]
        return lines

    @property
    def devices(self) -> list[str]:
        """Where the model ran, every device once, in order of first use."""
        return list(dict.fromkeys(o.device for o in self.outcomes if o.device))

    def record(self) -> dict:
        return {"stembridge": __version__, "wall_seconds": round(self.wall, 3), "devices": self.devices,
                "audio_seconds": round(self.audio_seconds, 3), "realtime_factor": self.realtime_factor,
                "counts": {s: self.count(s) for s in ("rendered", "cached", "skipped", "failed")},
                "notes": self.notes, "models": self.models(),
                "songs": [{"input": str(o.path), "status": o.status, "audio_seconds": round(o.seconds, 3),
                           "wall_seconds": round(o.wall, 3), "error": o.error, "worker_pid": o.worker or None,
                           "device": o.device, "model": o.model, "models": o.models,
                           "outputs": {k: str(v) for k, v in o.written.items()}} for o in self.outcomes]}


Event = Callable[[str, Song | None, SongOutcome | None], None]


def run_batch(spec: RunSpec, songs: list[Song], *, jobs: int = 1, scheduler: str | None = None,
              album_loudness: bool = False, fail_fast: bool = False, on_event: Event | None = None,
              progress_for=None) -> RunReport:
    """Run every song of a command and write ``OUT/stembridge-run.json``.

    Parameters
    ----------
    jobs : int
        Songs at once on this machine (1: in this process; more: host processes).
    scheduler : str, optional
        A Dask scheduler address: the songs go to that cluster instead.
    album_loudness : bool
        ``output.loudness_scope: album`` with a loudness target: songs of one folder get one gain.
    on_event : callable, optional
        ``on_event("done", song, outcome)`` as each song finishes.
    """
    started = time.perf_counter()
    out_dir = Path(spec.out_dir)
    sweep(out_dir)
    check_writable(out_dir)
    if scheduler:
        executor = DaskExecutor(spec, scheduler)
    elif jobs > 1:
        executor = ProcessExecutor(spec, jobs)
    else:
        executor = SerialExecutor(spec)
    by_path = {}
    scratch = None
    try:
        if album_loudness:
            scratch = _album_scratch(out_dir)
            hashes = {song.path: _sha(song.path) for song in songs}
            albums = defaultdict(list)
            for song in songs:
                albums[song.album].append(song)
            members = {a: sorted(h for h in (hashes[s.path] for s in group) if h) for a, group in albums.items()}

            def kwargs(song, index, force=None):
                return {"defer_gain_to": scratch / str(index), "album": members[song.album],
                        "input_sha256": hashes[song.path], **({} if force is None else {"force": force})}
        else:
            def kwargs(song, index, force=None):
                return {} if force is None else {"force": force}

        index = {song.path: i for i, song in enumerate(songs)}
        for outcome in _drive(executor, [(s, kwargs(s, index[s.path])) for s in songs], songs, fail_fast,
                              on_event if not album_loudness else None, progress_for):
            by_path[outcome.path] = outcome
        if album_loudness:
            # An album whose songs are partly up to date gets the rest measured again: one gain needs all.
            again = [s for s in songs if by_path.get(s.path) and by_path[s.path].status == "skipped"
                     and any(by_path.get(o.path) and by_path[o.path].status == "measured" for o in albums[s.album])]
            for outcome in _drive(executor, [(s, kwargs(s, index[s.path], force=True)) for s in again], again,
                                  fail_fast, None, progress_for):
                by_path[outcome.path] = outcome
            _finish_albums(spec, albums, members, by_path, on_event)
    finally:
        executor.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        sweep(out_dir)
    outcomes = [by_path[s.path] for s in songs if s.path in by_path]
    report = RunReport(outcomes, time.perf_counter() - started)
    return report


def _drive(executor, jobs, songs, fail_fast, on_event, progress_for):
    songs_by_path = {s.path: s for s in songs}
    for outcome in executor.map(jobs, progress_for=progress_for):
        if on_event:
            on_event("done", songs_by_path.get(outcome.path), outcome)
        yield outcome
        if fail_fast and outcome.status == "failed":
            executor.stop.set()
            return


def _finish_albums(spec: RunSpec, albums, members, by_path, on_event) -> None:
    from ..audio.loudness import album_loudness
    from ..render.song import finish_render, loudness_gain
    o = _session(spec).output
    for album, group in albums.items():
        pending = [by_path[s.path].pending for s in group if by_path.get(s.path) and by_path[s.path].status == "measured"]
        if pending:
            states = [p.loudness["mix"] if "mix" in p.loudness else max(p.loudness.values(), key=_loudness)
                      for p in pending]
            lufs, peak = album_loudness(states)
            gain = loudness_gain(lufs, peak, target=o.loudness_lufs, ceiling=o.true_peak_db)
            facts = {"target_lufs": o.loudness_lufs, "true_peak_ceiling_db": o.true_peak_db,
                     "album": {"folder": album, "loudness_lufs": _rounded(lufs), "true_peak_dbtp": _rounded(peak),
                               "gain_db": round(gain, 3), "songs": members[album]}}
            for song in group:
                outcome = by_path.get(song.path)
                if outcome is None or outcome.status != "measured":
                    continue
                try:
                    outcome.written = finish_render(outcome.pending, gain_db=gain, album=facts)
                    outcome.status = "cached" if outcome.pending.cached else "rendered"
                    outcome.preview = outcome.pending.preview
                except BridgeError as exc:
                    outcome.status, outcome.error = "failed", str(exc)
                outcome.pending = None
        for song in group:
            if on_event and song.path in by_path:
                on_event("done", song, by_path[song.path])


def _rounded(value: float) -> float | None:
    return round(value, 3) if value > -1e9 else None


def _loudness(state) -> float:
    from ..audio.loudness import album_loudness

    return album_loudness([state])[0]


def _session(spec: RunSpec):
    from ..preset.session import load

    return load(spec.preset, overrides=spec.overrides or ())


def _sha(path: Path) -> str | None:
    from ..render.records import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def _album_scratch(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = out_dir / f".stembridge-{os.getpid()}-album{partials.PARTIAL_SUFFIX}"
    folder.mkdir(exist_ok=True)
    return folder


def check_writable(out_dir: Path) -> None:
    """One error before any work when the output folder cannot take files (read-only, not ours):
    otherwise every song fails on it and then the run record does too."""
    probe = out_dir / f".stembridge-probe.{os.getpid()}{partials.PARTIAL_SUFFIX}"  # a partial: a killed run's is swept
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write into the output folder ({exc.strerror or exc}); "
                          "fix its permissions or choose another --out") from None


def sweep(out_dir: Path) -> None:
    """Remove what killed runs left in ``out_dir``: pid-named partial files and scratch folders."""
    if out_dir.is_dir():
        partials.remove_dead_partials(out_dir)


def write_record(report: RunReport, out_dir: Path) -> Path:
    from ..render.records import write_json

    return write_json(Path(out_dir) / RUN_RECORD, report.record())
