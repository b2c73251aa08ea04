"""Run separations and sessions over files, streaming block by block, writing atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import __version__, io
from .audio import StreamResampler, db_to_gain
from .errors import AudioError, BridgeError, OutputError
from .graph import RenderGraph
from .loudness import LoudnessMeter
from .models import offered_stems
from .outputs import check_template, check_unique, expand
from .separation import ChunkedSeparator, with_sums
from .separation.runner import check_channels

#: Samples read per block; memory stays flat with song length.
BLOCK_SECONDS = 10.0
Progress = Callable[[int, int], None]  # (samples done, samples total)
Clipped = Callable[[Path, int], None]  # (file written, samples clipped)


class ClippingWarning(UserWarning):
    """Samples over full scale were clipped in a PCM output."""


def clipping_message(target: Path, count: int) -> str:
    return (f"{target}: {count} samples were over full scale and clipped; lower the input level or "
            "write 32-bit float (--bit-depth 32)")


@dataclasses.dataclass(frozen=True)
class SeparateOptions:
    """How :func:`separate_file` names and writes its outputs."""

    out_dir: Path
    template: str = "{track}/{stem}.{ext}"
    ext: str = "wav"
    bit_depth: io.BitDepth = 24
    stems: tuple[str, ...] | None = None


def separate_file(path, separator: ChunkedSeparator, options: SeparateOptions,
                  *, progress: Progress | None = None, on_clip: Clipped | None = None) -> dict[str, Path]:
    """Separate one file into one file per stem, streaming.

    A stem can exceed full scale where the mix does not (a mask rings around a full-scale
    square wave); PCM outputs are then clipped and reported to ``on_clip``, or as a
    :class:`ClippingWarning` without one, never silently.

    Returns
    -------
    dict of str to Path
        The files written, by stem. Nothing is left under a final name if anything fails.
    """
    path = Path(path)
    header = io.info(path)
    check_channels(header.channels, source=str(path))
    stems = options.stems or separator.stems
    offered = offered_stems(separator.stems)
    unknown = [s for s in stems if s not in offered]
    if unknown:
        raise BridgeError(f"stem '{unknown[0]}' is not produced by model '{separator.name}'; "
                          f"it gives {', '.join(offered)}")
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
        written = {stem: writer.close() for stem, writer in writers.items()}
    except BaseException:  # Ctrl-C while closing too: no partial file may outlive the run
        for writer in writers.values():
            writer.abort()
        raise
    for stem, writer in writers.items():
        if writer.clipped:
            _report_clipping(written[stem], writer.clipped, on_clip)
    return written


def _report_clipping(target: Path, count: int, on_clip: Clipped | None) -> None:
    if on_clip is not None:
        on_clip(target, count)
        return
    warnings.warn(clipping_message(target, count), ClippingWarning, stacklevel=3)


def _write(writers: dict, stems: dict) -> None:
    stems = with_sums(stems, writers)
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


#: Outputs at or below this loudness are treated as silence: no loudness gain is applied.
SILENCE_LUFS = -70.0


@dataclasses.dataclass
class _Output:
    """One file a render writes: where, how many channels, its resampler, meter and writer."""

    label: str
    path: Path
    channels: int
    resampler: StreamResampler
    meter: LoudnessMeter
    writer: io.AudioWriter | None = None


def render_file(path, graph: RenderGraph, out_dir, *, progress: Progress | None = None) -> dict[str, Path]:
    """Render one song through a session's graph, streaming, and write its outputs and manifest.

    The mix goes to ``output.files.mix`` and each processed stem (after its chain, gain, pan and
    routing; the audible ones sum to the mix before the master chain) to ``output.files.stems``.
    With a loudness target the song is rendered once to float temporary files beside the outputs,
    measured, and written again with one gain for every output, so stems still sum to the mix:
    ``gain = min(target - loudness, true_peak_ceiling - true_peak)``. Without one, samples over
    full scale are clipped in PCM files and counted in the manifest (never silently).

    Returns
    -------
    dict of str to Path
        Files written, by label (``mix``, stem names, ``manifest``).
    """
    path = Path(path)
    out_dir = Path(out_dir)
    header = io.info(path)
    check_channels(header.channels, source=str(path))
    session, separator = graph.session, graph.separator
    o = session.output
    rate = o.sample_rate or header.sample_rate
    names = dict(track=path.stem, ext=o.format, model=separator.name)
    targets: dict[str, Path] = {}
    if o.mix:
        targets["mix"] = expand(o.mix, out_dir, stem="mix", **names)
    if o.stems:
        for stem in session.separator.stems or separator.stems:
            targets[stem] = expand(o.stems, out_dir, stem=stem, **names)
    # Beside the mix and named after it, so renders of one song with several presets keep theirs.
    manifest = (targets["mix"].with_suffix(".manifest.json") if "mix" in targets
                else expand("{track}.manifest.json", out_dir, **names))
    try:
        check_unique({**targets, "manifest": manifest})
    except OutputError as exc:
        raise OutputError(f"{session.source}: output.files: {exc}") from None
    if io.same_file(manifest, path):
        raise OutputError(f"{manifest}: the manifest would overwrite the input; choose another output folder")

    outputs = [_Output(label, target, graph.channels,
                       StreamResampler(orig_sr=header.sample_rate, target_sr=rate, channels=graph.channels),
                       LoudnessMeter(sample_rate=rate, channels=graph.channels))
               for label, target in targets.items()]
    target_lufs = o.loudness_lufs
    with io.scratch_folder(out_dir) as scratch:
        try:
            for out in outputs:
                first_pass = scratch / f"{out.label}.wav" if target_lufs is not None else out.path
                out.writer = io.AudioWriter(first_pass, sample_rate=rate, channels=out.channels,
                                            bit_depth=32 if target_lufs is not None else o.bit_depth, inputs=[path])
            stream = graph.stream(sample_rate=header.sample_rate, channels=header.channels)
            done = 0
            block = max(1, int(BLOCK_SECONDS * header.sample_rate))
            for audio in io.stream(path, block_frames=block):
                _emit(outputs, *stream.process(audio))
                done += audio.shape[1]
                if progress:
                    progress(done, header.frames)
            _emit(outputs, *stream.finish(), last=True)
            gain_db = 0.0
            if target_lufs is None:
                written = {out.label: out.writer.close() for out in outputs}
            else:
                gain_db = _loudness_gain(outputs, target_lufs, o.true_peak_db)
                written = {out.label: _apply_gain(out, gain_db, bit_depth=o.bit_depth, inputs=[path])
                           for out in outputs}
        except BaseException:
            for out in outputs:
                if out.writer is not None:
                    out.writer.abort()
            raise
    report = {out.label: _measure(out, gain_db) for out in outputs}
    loudness = None if target_lufs is None else {"target_lufs": target_lufs, "true_peak_ceiling_db": o.true_peak_db,
                                                 "gain_db": round(gain_db, 3)}
    written["manifest"] = write_manifest(manifest, source=path, header=header, session=session,
                                         separator=separator, outputs=report, written=written, loudness=loudness)
    return written


def _emit(outputs: list[_Output], mix, stems, *, last: bool = False) -> None:
    for out in outputs:
        audio = out.resampler.process(mix if out.label == "mix" else stems[out.label], last=last)
        out.meter.process(audio)
        out.writer.write(audio)


def _loudness_gain(outputs: list[_Output], target: float, ceiling: float) -> float:
    """One gain (dB) for every output: the mix's loudness to ``target``, its true peak under ``ceiling``."""
    meter = next((out.meter for out in outputs if out.label == "mix"), None)
    if meter is None:  # stems only: aim their sum, approximated by the loudest stem
        meter = max((out.meter for out in outputs), key=lambda m: m.integrated)
    loudness = meter.integrated
    if not np.isfinite(loudness) or loudness <= SILENCE_LUFS:
        return 0.0
    return min(target - loudness, ceiling - meter.true_peak_db)


def _apply_gain(out: _Output, gain_db: float, *, bit_depth, inputs) -> Path:
    """Second pass: the float first-pass file, times the gain, into the final file (atomically)."""
    scratch = out.writer.close()
    gain = np.float32(db_to_gain(gain_db))
    out.writer = io.AudioWriter(out.path, sample_rate=out.writer.sample_rate, channels=out.channels,
                                bit_depth=bit_depth, inputs=inputs)
    for block in io.stream(scratch):
        out.writer.write(block * gain)
    return out.writer.close()


def _measure(out: _Output, gain_db: float) -> dict:
    """Peak, true peak and loudness of what was written.

    The meters ran on the first pass; the loudness gain shifts their readings by exactly ``gain_db``.
    """
    def db(value: float, shift: float = 0.0) -> float | None:
        return round(value + shift, 3) if np.isfinite(value) else None

    peak = 20 * np.log10(out.writer.peak) if out.writer.peak > 0 else float("-inf")
    return {"file": out.path.name, "channels": out.channels, "sample_rate": out.writer.sample_rate,
            "frames": out.writer.frames, "peak_dbfs": db(peak), "true_peak_dbtp": db(out.meter.true_peak_db, gain_db),
            "loudness_lufs": db(out.meter.integrated, gain_db), "clipped_samples": out.writer.clipped}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {}
    for package in ("stembridge", "numpy", "onnxruntime", "pedalboard", "soundfile", "soxr", "pyloudnorm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["python"] = platform.python_version()
    return found


def write_manifest(target: Path, *, source: Path, header, session, separator, outputs: dict, written: dict,
                   loudness) -> Path:
    """The render's record, written atomically: input and hash, preset, model, versions, outputs."""
    card = getattr(getattr(separator, "engine", None), "card", None)
    model = {"name": separator.name, "settings": getattr(separator, "settings", {})}
    if card is not None:
        model.update(file=str(card.file) if card.file else None, sha256=card.sha256, family=card.family,
                     card=card.source)
    record = {
        "stembridge": __version__,
        "input": {"path": str(source.resolve()), "sha256": file_sha256(source), "sample_rate": header.sample_rate,
                  "channels": header.channels, "frames": header.frames},
        "preset": {"source": session.source, "session": session.to_dict()},
        "model": model,
        "loudness": loudness,
        "outputs": {label: {**outputs[label], "path": str(written[label])} for label in outputs},
        "versions": versions(),
    }
    partial = io.partial_path(target)
    try:
        partial.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write the manifest ({exc}); check the output folder") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target
