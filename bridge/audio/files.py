"""Audio files: the only module that opens them.

Reads any format libsndfile reads (wav, flac, ogg, mp3, aiff) at any sample rate and channel
count, and every other audio stream FFmpeg decodes (m4a/mp4 AAC and ALAC, Opus, WMA, AC-3, the
audio of video files: :mod:`.avreader`, PyAV), streams them block by block, and writes outputs
atomically (wav, flac, ogg and aiff through libsndfile; m4a, opus and mp3 through PyAV's
encoders, :mod:`bridge.audio.encoders`): samples go to a hidden
``.<name>.<pid>.partial`` file beside the target, which is fsynced and renamed onto the final name
only when complete, so a crash never leaves a half-written file under a finished-looking name.
Outputs never overwrite inputs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import os
import queue
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import soundfile as sf

from . import encoders
from .buffers import channels_first, check_finite, check_sample_rate, frames_first
from ..errors import AudioError, OutputError
from .partials import fsync_dir, partial_path, remove_stale_partials

BitDepth = Literal[16, 24, 32]

#: File extension -> libsndfile major format (what libsndfile reads; it writes all but mp3 here).
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3", "aiff": "AIFF", "aif": "AIFF"}
#: Inputs read by FFmpeg's decoders (:mod:`.avreader`): what a music library, a DJ and a film
#: editor hold besides :data:`FORMATS`. Folders are searched for these and :data:`FORMATS`; a file
#: named directly is read whatever its extension (FFmpeg tells its format from its contents).
AV_EXTENSIONS = ("m4a", "m4b", "mp4", "m4v", "aac", "alac", "opus", "oga", "wma", "wmv", "asf", "ac3", "eac3",
                 "mka", "mkv", "webm", "mov", "avi", "mts", "m2ts", "ts", "mpg", "mpeg", "3gp", "caf", "dts",
                 "amr", "ape", "wv", "mpc", "spx", "tta")
LOSSY = {"ogg", "mp3"}
#: The formats an output may have: libsndfile's, and the encoded ones (m4a, opus, mp3) PyAV writes.
OUTPUT_FORMATS = tuple(sorted(set(FORMATS) | set(encoders.FORMAT_CODECS)))
DEFAULT_BIT_DEPTH: BitDepth = 24


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    #: The audio stream read, numbered among the file's audio streams (PyAV inputs); None for a
    #: libsndfile file, which holds one.
    stream: int | None = None
    #: The stream's own channel layout when it was down-mixed to stereo (e.g. ``5.1(side)``), else None.
    downmixed_from: str | None = None

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _open_error(path: Path, exc: Exception, *, av: bool = False) -> AudioError:
    if path.is_dir():
        return AudioError(f"{path}: is a folder, not an audio file; pass the files inside it")
    if not path.exists():
        return AudioError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        return AudioError(f"{path}: the file is empty (0 bytes); re-export or re-download it")
    if not os.access(path, os.R_OK):
        return AudioError(f"{path}: permission denied; make the file readable (chmod u+r) or copy it")
    if av:
        return AudioError(f"{path}: cannot be read as audio or video ({exc}); re-export it, or check that it is "
                          "a media file")
    reason = str(exc).split(":")[-1].strip() or type(exc).__name__
    if "does not exist" in reason:  # libsndfile's words for a regular file it cannot identify
        reason = "format not recognised"
    return AudioError(
        f"{path}: cannot be read as audio ({reason}); "
        f"expected a wav, flac, ogg, mp3 or aiff file: re-export it or convert it with ffmpeg"
    )


_FD2_LOCK = threading.Lock()
#: What libsndfile's decoders (libmpg123) print while a damaged or odd file is opened.
_DECODER_NOISE = re.compile(rb"mpg123|libsndfile|MPEG|resync|Illegal|header", re.IGNORECASE)


@contextlib.contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Keep libsndfile's decoders (libmpg123) from printing to file descriptor 2.

    They write warnings about damaged mp3 or unknown data straight to the C ``stderr`` while a
    file is opened; the error we raise is the one line the user should see. File descriptor 2
    belongs to the whole process, so under threads (a Dask worker, a threaded executor) another
    thread may write to it meanwhile: what lands there is captured and written back afterwards,
    less the decoders' lines, instead of being lost. The lock keeps two opens from nesting.
    """
    with _FD2_LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        capture = tempfile.TemporaryFile()
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            try:
                capture.seek(0)
                kept = [line for line in capture.read().splitlines(keepends=True) if not _DECODER_NOISE.search(line)]
                if kept:
                    os.write(2, b"".join(kept))
            except OSError:
                pass
            finally:
                capture.close()


def _open(path: Path) -> sf.SoundFile:
    try:
        with _quiet_decoders():
            return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise _open_error(path, exc) from None


def by_sndfile(path) -> bool:
    """Whether libsndfile reads ``path`` (by its extension); FFmpeg's decoders read the rest."""
    return Path(path).suffix.lower().lstrip(".") in FORMATS


#: Recent :func:`info` answers for PyAV inputs, by (path, size, mtime, stream): their exact length
#: costs a decode (:func:`.avreader.probe`), and one song is asked about several times.
_PROBED: "collections.OrderedDict[tuple, AudioInfo]" = collections.OrderedDict()
_PROBED_MAX = 64
_PROBED_LOCK = threading.Lock()


def _av_info(path: Path, stream: int | None) -> AudioInfo:
    from . import avreader

    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, stream)
    except OSError:
        key = None
    with _PROBED_LOCK:
        if key in _PROBED:
            _PROBED.move_to_end(key)
            return dataclasses.replace(_PROBED[key], path=path)
    try:
        found = avreader.probe(path, stream=stream)
    except avreader.Unopenable as exc:
        raise _open_error(path, exc, av=True) from None
    result = AudioInfo(path, found.sample_rate, found.channels, found.frames, found.container.upper(),
                       found.codec.upper(), stream=found.stream,
                       downmixed_from=found.layout if found.source_channels > 2 else None)
    if key is not None:
        with _PROBED_LOCK:
            _PROBED[key] = result
            while len(_PROBED) > _PROBED_MAX:
                _PROBED.popitem(last=False)
    return result


def info(path, *, stream: int | None = None) -> AudioInfo:
    """Read a file's header.

    Parameters
    ----------
    stream : int, optional
        The audio stream to read, numbered among the file's audio streams from 0 (as
        ``ffmpeg -map 0:a:N``); default: the container's default audio stream. A libsndfile file
        holds one stream, 0.

    Raises
    ------
    AudioError
        Missing, empty, a folder, not audio, an unsupported sample rate, or no samples; no audio
        stream, ``stream`` out of range, DRM-protected or undecodable.
    """
    path = Path(path)
    if not by_sndfile(path):
        result = _av_info(path, stream)
    else:
        _check_single_stream(path, stream)
        with _open(path) as f:
            result = AudioInfo(path, f.samplerate, f.channels, f.frames, f.format, f.subtype)
    check_sample_rate(result.sample_rate, name=str(path))
    if result.frames == 0:
        raise AudioError(f"{path}: the file holds no samples (a header without audio, or cut off before its "
                         "first samples); re-export or re-download it")
    return result


def _check_single_stream(path: Path, stream: int | None) -> None:
    if stream not in (None, 0):
        raise AudioError(f"{path}: --stream {stream!r} is out of range: a {path.suffix.lstrip('.').lower()} file "
                         "holds one audio stream, 0")


def stream(path, *, block_frames: int = 262144, stream: int | None = None) -> Iterator[np.ndarray]:
    """Yield a file's audio as ``(channels, samples)`` float32 blocks of ``block_frames`` samples.

    Every block is checked for NaN/Inf, and a file that ends before its header says it should
    (a truncated download) is an error after the last block, so nothing downstream mistakes a
    cut-off song for a finished one. ``stream`` picks an audio stream as in :func:`info`; a
    stream of more than two channels comes down-mixed to stereo (:data:`.avreader.DOWNMIX`).
    """
    path = Path(path)
    header = info(path, stream=stream)
    if not by_sndfile(path):
        yield from _av_stream(path, header, block_frames)
        return
    read = 0
    with _open(path) as f:
        while True:
            try:
                frames = f.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(
                    f"{path}: decoding failed after {read} of {header.frames} samples ({exc}); "
                    "the file is damaged or truncated: re-export or re-download it"
                ) from None
            if not len(frames):
                break
            block = channels_first(frames)
            check_finite(block, name=str(path), sample_rate=header.sample_rate, offset=read)
            read += block.shape[1]
            yield block
            if len(frames) < block_frames:
                break
    _check_complete(path, header, read)


def _av_stream(path: Path, header: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    from . import avreader

    read = 0
    try:
        for block in avreader.blocks(path, stream=header.stream, block_frames=block_frames):
            check_finite(block, name=str(path), sample_rate=header.sample_rate, offset=read)
            read += block.shape[1]
            yield block
    except avreader.Unopenable as exc:  # gone or replaced since info()
        raise _open_error(path, exc, av=True) from None
    if read != header.frames:  # the file changed since info(), or the packet count was wrong
        raise AudioError(f"{path}: decoded {read} samples where {header.frames} were counted; "
                         "the file changed while it was read, or is damaged: re-export it")


def _check_complete(path: Path, header: AudioInfo, read: int) -> None:
    # libsndfile shortens a truncated WAV/AIFF's frame count silently and notes it in its log.
    if read < header.frames or _declares_more_data(path):
        raise AudioError(
            f"{path}: the file is truncated (its header promises more audio than it holds; "
            f"{read} samples could be read); re-export or re-download it"
        )


def _declares_more_data(path: Path) -> bool:
    """True if a WAV/AIFF header declares more sample data than the file holds.

    libsndfile notes ``data : <declared> (should be <present>)`` in its log and reads what is
    there. A streaming writer's placeholder size (0 or 0xFFFFFFFF) is not a truncation.
    """
    try:
        with _quiet_decoders(), sf.SoundFile(str(path)) as f:
            log = f.extra_info
    except (sf.LibsndfileError, RuntimeError):
        return False
    for declared, present in re.findall(r"(?m)^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", log):
        if int(present) < int(declared) < 0xFFFFFFF0:
            return True
    return False


def flac_audio_md5(path) -> str | None:
    """The MD5 of the decoded samples that a FLAC file's STREAMINFO block records, or None.

    Every FLAC encoder stores it (all zeros when it did not compute one); it names the audio
    content without decoding it, and stays the same when the tags change.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4 + 4 + 34)
    except OSError:
        return None
    # 'fLaC', then the first metadata block, which is always STREAMINFO (type 0) of 34 bytes.
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") != 34:
        return None
    md5 = head[8 + 18:8 + 34]
    return None if md5 == bytes(16) else md5.hex()


def read(path, *, stream: int | None = None) -> tuple[np.ndarray, int]:
    """Read a whole file: ``(audio, sample_rate)``, audio ``(channels, samples)`` float32.

    Prefer :func:`stream` for songs; this is for short files and tests.
    """
    blocks = list(_stream(path, stream=stream))
    return np.concatenate(blocks, axis=1), info(path, stream=stream).sample_rate


_stream = stream  # for functions whose parameter named ``stream`` hides this one


def subtype_for(extension: str, bit_depth: BitDepth) -> str | None:
    """The libsndfile subtype for a format and bit depth, or an :class:`OutputError` saying why not."""
    extension = extension.lower()
    if extension not in FORMATS or extension in encoders.FORMAT_CODECS:
        raise OutputError(f"output format '{extension}' is not written by libsndfile; it writes "
                          + ", ".join(sorted(set(FORMATS) - set(encoders.FORMAT_CODECS))))
    if extension == "ogg":
        return "VORBIS"
    if bit_depth not in (16, 24, 32):
        raise OutputError(f"bit depth {bit_depth!r} is not supported; choose 16, 24 or 32 (32 = float)")
    if extension == "flac":
        if bit_depth == 32:
            raise OutputError("FLAC holds 16- or 24-bit integer samples; use bit depth 24, or wav for 32-bit float")
        return f"PCM_{bit_depth}"
    return "FLOAT" if bit_depth == 32 else f"PCM_{bit_depth}"


class OutputFormatError(OutputError):
    """An output format that cannot take the bit depth, codec or bit rate asked for; ``key`` names
    the setting (``codec``, ``bitrate``, ``bit_depth``), as a preset's ``output.<key>``."""

    def __init__(self, message: str, *, key: str):
        super().__init__(message)
        self.key = key


def check_output_format(extension: str, *, bit_depth: BitDepth = DEFAULT_BIT_DEPTH, codec: str | None = None,
                        bitrate: float | None = None) -> None:
    """Refuse, in one line (an :class:`OutputFormatError`), an output format with a bit depth,
    codec or bit rate it cannot take.

    ``codec`` picks among an encoded format's codecs (m4a: ``aac`` or ``alac``); ``bitrate`` is
    in kbit/s, for the lossy encoded codecs only (:mod:`bridge.audio.encoders`).
    """
    extension = extension.lower()
    if extension not in OUTPUT_FORMATS:
        raise OutputFormatError(f"output format '{extension}' is not supported; choose one of "
                                f"{', '.join(OUTPUT_FORMATS)}", key="format")
    if extension in encoders.FORMAT_CODECS:
        try:
            chosen = encoders.codec_for(extension, codec)
        except OutputError as exc:
            raise OutputFormatError(str(exc), key="codec") from None
        try:
            encoders.check_bitrate(chosen, bitrate)
        except OutputError as exc:
            raise OutputFormatError(str(exc), key="bitrate") from None
        if chosen.name == "alac" and bit_depth not in (16, 24):
            raise OutputFormatError("ALAC holds 16- or 24-bit integer samples; use bit depth 16 or 24, or wav for "
                                    "32-bit float", key="bit_depth")
        return
    if codec is not None:
        raise OutputFormatError(f"codec '{codec}' does not apply to {extension} (only m4a has a choice: aac or alac); "
                                "leave the codec out", key="codec")
    if bitrate is not None:
        raise OutputFormatError(f"a bit rate does not apply to {extension}; it applies to m4a (aac), opus and mp3",
                                key="bitrate")
    try:
        subtype_for(extension, bit_depth)
    except OutputError as exc:
        raise OutputFormatError(str(exc), key="bit_depth") from None


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


#: Test hook, for the tests of interrupted runs only: ``STEMBRIDGE_TEST_PAUSE_AFTER_BLOCKS="N:MARKER[:PATTERN]"``.
#: A writer whose final path matches the fnmatch ``PATTERN`` (any, when left out), after its ``N``-th
#: block, creates the file ``MARKER`` holding its pid and sleeps there until it is killed (or
#: interrupted, or its parent process is gone, when it exits). One pause per marker: a writer that
#: finds ``MARKER`` already there goes on, so a song retried elsewhere runs through. Tests wait for the
#: marker and kill the process in the middle of a write instead of racing the run. Read once per writer.
TEST_PAUSE_VARIABLE = "STEMBRIDGE_TEST_PAUSE_AFTER_BLOCKS"


def _test_pause(path: Path) -> tuple[int, Path] | None:
    value = os.environ.get(TEST_PAUSE_VARIABLE)
    if not value:
        return None
    blocks, marker, *pattern = value.split(":", 2)
    if pattern and not fnmatch.fnmatch(str(path), pattern[0]):
        return None
    return int(blocks), Path(marker)


def _pause_for_test(marker: Path) -> None:
    """Create ``marker`` (exclusively, holding this pid) and sleep until killed; see :data:`TEST_PAUSE_VARIABLE`."""
    staged = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    staged.write_text(str(os.getpid()))
    try:
        os.link(staged, marker)  # atomic and exclusive: the marker appears with the pid in it
    except FileExistsError:
        return  # paused once already
    finally:
        staged.unlink()
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(70)  # orphaned (the process that ran this one was killed): nothing is left to wait for


class _WriteBehind:
    """A thread that hands queued blocks to ``write``, so that libsndfile's sample conversion and
    the disk (which run without the GIL) overlap the caller's work on the next blocks.

    At most ``depth`` blocks wait, so memory stays bounded; blocks are written in the order given.
    The first error stops the writing and is raised to the caller by the next :meth:`put`,
    :meth:`drain` or :meth:`stop`.
    """

    def __init__(self, write: Callable[[np.ndarray], object], name: str, depth: int = 2):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"write {name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            block = self._queue.get()
            try:
                if block is None:
                    return
                if self._error is None:
                    self._write(block)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, block: np.ndarray) -> None:
        self._raise()
        self._queue.put(block)

    def drain(self) -> None:
        """Wait until every queued block is written."""
        self._queue.join()
        self._raise()

    def stop(self) -> None:
        """Write what is queued, end the thread, and raise its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


class _LibsndfileBackend:
    """wav, flac, ogg Vorbis and aiff through libsndfile."""

    def __init__(self, path: Path, *, extension: str, sample_rate: int, channels: int, bit_depth: BitDepth):
        subtype = subtype_for(extension, bit_depth)
        major = FORMATS[extension]
        if major == "WAV" and channels > 2:
            major = "WAVEX"  # libsndfile writes the speaker mask (0x3F for 6 channels = 5.1)
        self.pcm = subtype.startswith("PCM")
        self._file = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=channels, format=major,
                                  subtype=subtype)

    def own(self, block: np.ndarray) -> np.ndarray:
        """A copy of ``block`` the writing thread owns, frames first as libsndfile wants it."""
        return np.array(frames_first(block), order="C")

    def write(self, frames: np.ndarray) -> None:
        self._file.write(frames)

    def close(self) -> None:
        self._file.close()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()


class AudioWriter:
    """Write ``(channels, samples)`` blocks to a file, atomically.

    Samples go to a partial file beside ``path``; :meth:`close` flushes, fsyncs and renames it
    onto ``path``. Leaving a ``with`` block by an exception removes the partial file instead.
    PCM outputs (and ALAC) are clipped to [-1, 1] (never wrapped) and :attr:`clipped` counts the
    samples that were, so a caller can report them. Blocks are encoded and written by a thread of
    the writer's own (two blocks queued at most) while the caller goes on; an error in it is
    raised by the next :meth:`write` or by :meth:`close`.

    Parameters
    ----------
    path : path-like
        The final name; its extension picks the format (wav, flac, ogg, aiff through libsndfile;
        m4a, opus, mp3 through PyAV, :mod:`bridge.audio.encoders`).
    sample_rate : int
        In Hz (opus: 48000 only; see :func:`bridge.audio.encoders.output_rate`).
    channels : int
        6 channels in wav are written as WAVE_FORMAT_EXTENSIBLE with the 5.1 mask 0x3F, in m4a and
        opus with FFmpeg's 5.1 layout (the same order).
    bit_depth : {16, 24, 32}
        Integer PCM, or 32-bit float for 32 (wav, aiff); 16 or 24 for FLAC and ALAC. Ignored by the
        lossy formats.
    codec : str, optional
        m4a only: ``aac`` (default) or ``alac``.
    bitrate : float, optional
        kbit/s, for aac, opus and mp3 (default: the codec's, :data:`bridge.audio.encoders.CODECS`).
    inputs : iterable of path-like
        Files this output must never replace.
    """

    def __init__(self, path, *, sample_rate: int, channels: int, bit_depth: BitDepth = DEFAULT_BIT_DEPTH,
                 codec: str | None = None, bitrate: float | None = None, inputs: Iterable = ()):
        self.path = Path(path)
        extension = self.path.suffix.lstrip(".").lower()
        check_output_format(extension, bit_depth=bit_depth, codec=codec, bitrate=bitrate)
        for source in inputs:
            if same_file(self.path, Path(source)):
                raise OutputError(f"{self.path}: this output would overwrite the input {source}; choose another output folder or name")
        encoded = encoders.codec_for(extension, codec) if extension in encoders.FORMAT_CODECS else None
        if encoded is not None and channels > encoded.max_channels:
            raise OutputError(f"{self.path}: {extension} holds at most {encoded.max_channels} channels, this output "
                              f"has {channels}; use wav or flac")
        self.channels = channels
        self.sample_rate = sample_rate
        self.clipped = 0
        self.frames = 0
        self.peak = 0.0
        self._partial = partial_path(self.path)
        self._pause = _test_pause(self.path)  # None unless a test asks for a pause (see TEST_PAUSE_VARIABLE)
        self._behind: _WriteBehind | None = None  # started by the first block
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(self.path)
            if encoded is not None:
                self._file = encoders.Encoder(self._partial, codec=encoded, sample_rate=sample_rate, channels=channels,
                                              bit_depth=bit_depth, kbps=bitrate)
                self._pcm = encoded.name == "alac"
            else:
                self._file = _LibsndfileBackend(self._partial, extension=extension, sample_rate=sample_rate,
                                                channels=channels, bit_depth=bit_depth)
                self._pcm = self._file.pcm
        except BaseException as exc:  # Ctrl-C here too: the caller never gets a writer to abort
            Path(self._partial).unlink(missing_ok=True)
            if isinstance(exc, OutputError):
                raise
            if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError, ValueError)):
                raise OutputError(f"{self.path}: cannot create the output ({exc}); "
                                  "check that the folder is writable and has space") from None
            raise

    def write(self, block: np.ndarray) -> None:
        """Append ``block``, shape (channels, samples), float32."""
        if block.shape[0] != self.channels:
            raise OutputError(f"{self.path}: got a block of {block.shape[0]} channels for a {self.channels}-channel file")
        if not block.shape[1]:
            return
        peak = float(np.max(np.abs(block)))
        self.peak = max(self.peak, peak)
        if self._pcm and peak > 1.0:
            self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
            block = np.clip(block, -1.0, 1.0)
        owned = self._file.own(block)  # a copy the thread owns (the caller may reuse its block)
        with self._writing():
            if self._behind is None:
                self._behind = _WriteBehind(self._file.write, self.path.name)
            self._behind.put(owned)
        self.frames += block.shape[1]
        if self._pause is not None:
            blocks, marker = self._pause
            self._pause = (blocks - 1, marker) if blocks > 1 else None
            if blocks <= 1:
                with self._writing():
                    self._behind.drain()
                _pause_for_test(marker)

    @contextlib.contextmanager
    def _writing(self):
        """Turn the encoders' and the disk's errors (raised here or by the writing thread) into one line."""
        try:
            yield
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self.abort()
            raise OutputError(f"{self.path}: writing failed ({exc}); check free space on the output disk") from None

    def close(self, *, finish: Callable[[Path], None] | None = None) -> Path:
        """Finish the file and move it to its final name; return that name.

        ``finish(partial)`` runs on the complete partial file before the fsync and the rename
        (e.g. to add Broadcast WAV chunks or tags), so what it adds is part of the atomic write.
        """
        if self._behind is not None:
            with self._writing():
                self._behind.stop()
        try:
            with self._writing():
                self._file.close()
            if finish is not None:
                finish(self._partial)
            with open(self._partial, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self._partial, self.path)
        except OutputError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise OutputError(f"{self.path}: could not finish the output ({exc}); check free space and permissions") from None
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the final name is left as it was."""
        behind, self._behind = self._behind, None
        if behind is not None:
            try:
                behind.stop()
            except (OSError, sf.LibsndfileError, RuntimeError):
                pass  # the file goes anyway
        try:
            self._file.abort()
        except (OSError, RuntimeError):
            pass
        Path(self._partial).unlink(missing_ok=True)

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write(path, audio: np.ndarray, sample_rate: int, *, bit_depth: BitDepth = DEFAULT_BIT_DEPTH,
          codec: str | None = None, bitrate: float | None = None, inputs: Iterable = ()) -> Path:
    """Write a whole buffer atomically; see :class:`AudioWriter`."""
    with AudioWriter(path, sample_rate=sample_rate, channels=audio.shape[0], bit_depth=bit_depth, codec=codec,
                     bitrate=bitrate, inputs=inputs) as w:
        w.write(audio)
    return Path(path)
