"""glibc's malloc settings for stembridge's processes: a command's pipeline, a large network's
run, an import (issues 21 and 26).

A command sets :func:`keep_freed_memory` first: its pipeline reuses a few arrays of 6-13 MB per
chunk, and keeping freed blocks in the process saves a page fault per 4 KiB of each (see there).
An import, or a run of a large network (:func:`return_freed_memory`, when
:mod:`bridge.separation.runtime` opens a session for a large model file), wants the opposite: what
it frees should leave the process.

Imports: keep an import's resident memory near what it actually holds.

An import allocates and frees gigabytes in a few large steps: the checkpoint, the network, the
TorchScript tracer's forward pass, the ONNX proto and its serialised bytes, the onnxruntime
session. glibc's malloc serves a large block with ``mmap`` (given back to the system when freed)
only above a threshold that it raises, by default, to the size of each ``mmap``-ed block freed, up
to 32 MB; below it, blocks come from the heap, and freed heap memory stays in the process as long
as anything above it is in use. The tracer's many 1-32 MB temporaries then piled up: a viperx-size
BS-RoFormer import peaked at 11.3 GB while holding under 2 GB, and 1.3 of the 1.8 GB that tracing
a 38 M-parameter network took was freed memory still resident (``malloc_trim`` gave it back).

:func:`return_freed_memory` fixes the threshold at :data:`MMAP_THRESHOLD` (a fixed threshold is
never raised), so every block from 1 MB up is mapped on its own and unmapped when freed: the
process's resident size follows its live data. It stays so for the rest of the process (glibc has
no way back to the moving threshold); the cost is a page fault per fresh page of such blocks.
Elsewhere than glibc (macOS, Windows, musl) it does nothing: their allocators behave otherwise.
"""

from __future__ import annotations

import ctypes
import gc
import sys

#: Blocks of this many bytes and more are ``mmap``-ed, and unmapped when freed.
MMAP_THRESHOLD = 1 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl has mallopt, but as a no-op
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks instead of handing them back to the kernel (a command's setting).

    Each chunk allocates a few arrays of 6-13 MB and frees them; by default glibc returns such
    blocks to the kernel, and the next chunk pays a page fault for every 4 KiB of them again
    (about 0.5 s of system time per 4 minutes of audio with an MDX model). Peak memory grows by
    a few MB (253 -> 262 MB measured); the command owns its process, so it may choose. A no-op
    where glibc is not the C library.
    """
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for this setting on 64-bit
    libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    # Grow a heap 64 MB at a time: the separation threads' arenas otherwise grew (and faulted
    # in) each chunk's arrays a step at a time. 4-minute trivial-model run: 0.82 -> 0.59 s of
    # system time, 0.93x the CPU time, peak +5 MB (at load 20: a ratio, not a timing).
    libc.mallopt(_M_TOP_PAD, 64 << 20)


def return_freed_memory() -> bool:
    """Fix glibc's ``mmap`` threshold at :data:`MMAP_THRESHOLD` for this process; True if set."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Collect garbage (the torch modules' reference cycles) and give free heap pages back."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
