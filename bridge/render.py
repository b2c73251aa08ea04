"""Run separations and sessions over files, streaming block by block, writing atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable

from . import io
from .errors import AudioError, BridgeError
from .outputs import check_template, check_unique, expand
from .separation import ChunkedSeparator

#: Samples read per block; memory stays flat with song length.
BLOCK_SECONDS = 10.0
Progress = Callable[[int, int], None]  # (samples done, samples total)


@dataclasses.dataclass(frozen=True)
class SeparateOptions:
    """How :func:`separate_file` names and writes its outputs."""

    out_dir: Path
    template: str = "{track}/{stem}.{ext}"
    ext: str = "wav"
    bit_depth: io.BitDepth = 24
    stems: tuple[str, ...] | None = None


def separate_file(path, separator: ChunkedSeparator, options: SeparateOptions,
                  *, progress: Progress | None = None) -> dict[str, Path]:
    """Separate one file into one file per stem, streaming.

    Returns
    -------
    dict of str to Path
        The files written, by stem. Nothing is left under a final name if anything fails.
    """
    path = Path(path)
    header = io.info(path)
    stems = options.stems or separator.stems
    unknown = [s for s in stems if s not in separator.stems]
    if unknown:
        raise BridgeError(f"stem '{unknown[0]}' is not produced by model '{separator.name}'; "
                          f"it gives {', '.join(separator.stems)}")
    check_template(options.template)
    targets = {s: expand(options.template, Path(options.out_dir), track=path.stem, stem=s,
                         ext=options.ext, model=separator.name) for s in stems}
    check_unique(targets)
    stream = separator.stream(sample_rate=header.sample_rate, channels=header.channels)
    writers = {}
    try:
        for stem, target in targets.items():
            writers[stem] = io.AudioWriter(target, sample_rate=header.sample_rate, channels=header.channels,
                                           bit_depth=options.bit_depth, inputs=[path])
        done = 0
        block = max(1, int(BLOCK_SECONDS * header.sample_rate))
        for audio in io.stream(path, block_frames=block):
            _write(writers, stream.process(audio))
            done += audio.shape[1]
            if progress:
                progress(done, header.frames)
        _write(writers, stream.finish())
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return {stem: writer.close() for stem, writer in writers.items()}


def _write(writers: dict, stems: dict) -> None:
    for stem, writer in writers.items():
        writer.write(stems[stem])


def run_many(paths: Iterable, job: Callable[[Path], object], *, fail_fast: bool = False,
             on_error: Callable[[Path, BridgeError], None] | None = None) -> tuple[list, list]:
    """Run ``job`` on each path; a bad file is reported and skipped unless ``fail_fast``.

    Returns ``(results, failures)`` where failures are ``(path, error)`` pairs.
    """
    results, failures = [], []
    for path in paths:
        try:
            results.append(job(Path(path)))
        except (BridgeError, AudioError) as exc:
            failures.append((Path(path), exc))
            if on_error:
                on_error(Path(path), exc)
            if fail_fast:
                break
    return results, failures
