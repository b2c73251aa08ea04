"""Read a TensorFlow checkpoint (tensor bundle, V2 format) with numpy alone.

A checkpoint ``PREFIX`` is ``PREFIX.index`` and ``PREFIX.data-NNNNN-of-MMMMM`` shards
(TensorFlow's ``tensorflow/core/util/tensor_bundle``):

- ``.index`` is an SSTable in LevelDB's table format: data blocks of prefix-compressed
  ``key -> value`` entries (each followed by a 5-byte trailer: compression type and CRC), an
  index block pointing at them, and a 48-byte footer (two block handles, padding, the magic
  ``0xdb4775248b80fb57``). TensorFlow writes it uncompressed.
- The entry with the empty key is a ``BundleHeaderProto`` (``num_shards``, ``endianness``); every
  other key is a variable name whose value is a ``BundleEntryProto``: ``dtype``, ``shape``,
  ``shard_id``, ``offset`` and ``size`` of its raw little-endian bytes in that shard.

Protocol buffers are decoded here by hand (varints and length-delimited fields), so no
TensorFlow or protobuf package is needed. Every error names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER = 5
#: TensorFlow DataType enum values (types.proto) -> numpy little-endian dtypes.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}


class CheckpointError(ModelError):
    """A file that is not a readable TensorFlow checkpoint."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes are: ``shape``, numpy ``dtype``, shard and byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


def _varint(data: bytes, at: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise CheckpointError(f"{where}: truncated varint; the index file is damaged")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: malformed varint; the index file is damaged")


def message_fields(data: bytes, where: str) -> list[tuple[int, object]]:
    """Decode one protobuf message into ``[(field number, int or bytes), ...]``."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at, where)
        elif wire == 1:
            value, at = int.from_bytes(data[at:at + 8], "little"), at + 8
        elif wire == 2:
            length, at = _varint(data, at, where)
            value, at = data[at:at + length], at + length
        elif wire == 5:
            value, at = int.from_bytes(data[at:at + 4], "little"), at + 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire}; the index file is damaged")
        if at > len(data):
            raise CheckpointError(f"{where}: truncated protobuf field; the index file is damaged")
        out.append((number, value))
    return out


def _block(data: bytes, offset: int, size: int, where: str) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of one table block."""
    if offset + size + BLOCK_TRAILER > len(data):
        raise CheckpointError(f"{where}: a table block runs past the end of the file; the index is truncated")
    if data[offset + size] != 0:
        raise CheckpointError(f"{where}: compressed table block (type {data[offset + size]}); "
                              "TensorFlow writes checkpoint indexes uncompressed, so this is not one")
    block = data[offset:offset + size]
    if size < 4:
        raise CheckpointError(f"{where}: a table block is too short; the index is damaged")
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * restarts
    if end < 0:
        raise CheckpointError(f"{where}: a table block has a bad restart array; the index is damaged")
    entries, at, key = [], 0, b""
    while at < end:
        shared, at = _varint(block, at, where)
        unshared, at = _varint(block, at, where)
        length, at = _varint(block, at, where)
        key = key[:shared] + block[at:at + unshared]
        at += unshared
        entries.append((key, block[at:at + length]))
        at += length
    return entries


def _handle(data: bytes, at: int, where: str) -> tuple[int, int, int]:
    offset, at = _varint(data, at, where)
    size, at = _varint(data, at, where)
    return offset, size, at


def read_index(path) -> dict[str, TensorEntry]:
    """Every variable of a checkpoint's ``.index`` file, by name.

    Raises
    ------
    CheckpointError
        Not an SSTable (wrong magic), truncated, or entries that do not decode.
    """
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read the checkpoint index ({exc.strerror})") from None
    if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{where}: not a TensorFlow checkpoint index (no SSTable footer); "
                              "pass the folder holding model.index and model.data-00000-of-00001")
    footer = data[-FOOTER_BYTES:]
    _meta_offset, _meta_size, at = _handle(footer, 0, where)
    index_offset, index_size, _ = _handle(footer, at, where)
    entries: dict[str, TensorEntry] = {}
    header_seen = False
    for _last_key, handle in _block(data, index_offset, index_size, where):
        offset, size, _ = _handle(handle, 0, where)
        for key, value in _block(data, offset, size, where):
            if key == b"":
                header_seen = True
                header = dict(message_fields(value, where))
                if header.get(2, 0) != 0:
                    raise CheckpointError(f"{where}: a big-endian checkpoint; re-save it on a little-endian machine")
                continue
            name = key.decode("utf-8", "replace")
            entries[name] = _entry(name, value, where)
    if not header_seen:
        raise CheckpointError(f"{where}: the index has no bundle header; it is not a TensorFlow V2 checkpoint")
    return entries


def _entry(name: str, value: bytes, where: str) -> TensorEntry:
    fields = message_fields(value, f"{where}: {name}")
    get = {}
    for number, v in fields:
        get.setdefault(number, v)
    if 7 in get:
        raise CheckpointError(f"{where}: {name} is stored in slices (a partitioned variable); not supported")
    dims = []
    if 2 in get:
        for number, dim in message_fields(get[2], where):
            if number == 2:  # TensorShapeProto.dim
                dims.append(int(dict(message_fields(dim, where)).get(1, 0)))
    dtype = DTYPES.get(int(get.get(1, 0)))
    return TensorEntry(name=name, dtype=dtype or f"tf-dtype-{get.get(1, 0)}", shape=tuple(dims),
                       shard=int(get.get(3, 0)), offset=int(get.get(4, 0)), size=int(get.get(5, 0)))


class Checkpoint:
    """A checkpoint ``PREFIX``: its index read at once, tensors read from the shards on demand.

    Parameters
    ----------
    prefix : path-like
        ``folder/model`` for ``folder/model.index`` and ``folder/model.data-*``.

    Raises
    ------
    CheckpointError
        Unreadable index, a missing shard, or a shard shorter than the index says.
    """

    def __init__(self, prefix):
        self.prefix = Path(prefix)
        index = self.prefix.with_name(self.prefix.name + ".index")
        self.entries = read_index(index)
        shards = {e.shard for e in self.entries.values()}
        total = max(shards, default=0) + 1
        self.shards: dict[int, Path] = {}
        for shard in range(total):
            path = self.prefix.with_name(f"{self.prefix.name}.data-{shard:05d}-of-{total:05d}")
            if not path.is_file():
                raise CheckpointError(f"{path}: missing checkpoint shard {shard + 1} of {total} (named by {index.name}); "
                                      "copy the whole checkpoint folder")
            self.shards[shard] = path
        for entry in self.entries.values():
            size = self.shards[entry.shard].stat().st_size
            if entry.offset + entry.size > size:
                raise CheckpointError(
                    f"{self.shards[entry.shard]}: truncated ({size} bytes, but {entry.name} ends at byte "
                    f"{entry.offset + entry.size}); download or copy the checkpoint again")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def tensor(self, name: str) -> np.ndarray:
        """One variable as a numpy array of its own dtype and shape."""
        entry = self.entries[name]
        if entry.dtype.startswith("tf-dtype"):
            raise CheckpointError(f"{self.prefix}: {name} has an unsupported type ({entry.dtype})")
        count = int(np.prod(entry.shape)) if entry.shape else 1
        if count * np.dtype(entry.dtype).itemsize != entry.size:
            raise CheckpointError(f"{self.prefix}: {name}: {entry.size} bytes do not hold a {entry.dtype} "
                                  f"tensor of shape {entry.shape}; the checkpoint is damaged")
        with open(self.shards[entry.shard], "rb") as handle:
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
        return np.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape).copy()


def checkpoint_prefix(folder: Path) -> Path:
    """The checkpoint in ``folder``: the prefix its ``checkpoint`` file names, else ``model``."""
    pointer = folder / "checkpoint"
    if pointer.is_file():
        match = re.search(r'model_checkpoint_path:\s*"([^"]+)"', pointer.read_text(errors="replace"))
        if match:
            prefix = Path(match.group(1))
            return prefix if prefix.is_absolute() else folder / prefix.name
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise ModelError(f"{folder}: no TensorFlow checkpoint here (no model.index); pass Spleeter's model folder "
                         "(e.g. pretrained_models/4stems) or its .tar.gz")
    raise ModelError(f"{folder}: several checkpoints ({', '.join(p.name for p in indexes)}) and no 'checkpoint' "
                     "file saying which; keep one")


def checkpoint_sha256(prefix: Path) -> str:
    """The sha256 of a checkpoint's weights: its ``.data`` shards, read in name order as one stream
    (what ``stembridge models scan`` compares with an imported card's ``imported.checkpoint_sha256``)."""
    digest = hashlib.sha256()
    for shard in sorted(prefix.parent.glob(f"{prefix.name}.data-*")):
        with open(shard, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
