"""Look inside model files cheaply and safely: what ``stembridge models scan`` reads to tell them.

Nothing here imports torch, onnx or TensorFlow, and nothing from a file runs:

- :func:`onnx_input_shape`: the first graph input's shape of an ``.onnx`` file, read from the
  protobuf by seeking past everything else (the weights are never read);
- :func:`torch_object`: the object a torch checkpoint pickles (the zip format's ``data.pkl``, or
  the legacy format's main pickle), through :class:`InertUnpickler`: every global the pickle names
  becomes an inert :class:`Global` placeholder that records its name and arguments, tensors become
  :class:`Tensor` (shape and storage type, no data), and the tensor data are never read;
- :func:`state_dict`: the ``{name: shape}`` of a checkpoint's state dict, bare or under
  ``state_dict``/``model``/``state`` (as the releases wrap them);
- :func:`read_config`: a training config (YAML) through ``yaml.SafeLoader`` plus ``!!python/tuple``
  read as a list (every other python tag is an error: the file is then not a config we read).

Each returns None for a file it cannot read as such, rather than raising: the scan asks them about
every candidate file and lists what none of the families tells as unknown.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import zipfile
from pathlib import Path

import yaml

#: Largest pickle (the object structure without tensor data) read from a torch file; a state dict's
#: is a few hundred kB even for a 160 M-parameter model.
MAX_PICKLE_BYTES = 64 << 20
#: Largest YAML config read.
MAX_CONFIG_BYTES = 1 << 20
#: torch's legacy (non-zip) serialisation starts with this pickled magic number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass(frozen=True)
class Global:
    """A global a pickle names (``module.name``), never imported; calling it records a :class:`Call`."""

    module: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


class Call:
    """What a pickle builds by calling (or instantiating) a :class:`Global`: its name and arguments."""

    def __init__(self, what: Global, args: tuple = ()):
        self.what, self.args, self.state, self.items = what, args, None, {}

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # SETITEMS on an object built by REDUCE (an OrderedDict subclass)
        self.items[key] = value

    def append(self, value):
        self.items[len(self.items)] = value

    def extend(self, values):
        for value in values:
            self.append(value)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor as a checkpoint pickles it: its shape and storage type name (``FloatStorage``, ...)."""

    shape: tuple[int, ...]
    storage: str


class _GlobalType(type):
    """Lets a :class:`Global` stand where the unpickler needs a class (NEWOBJ, BUILD)."""


def _rebuild_tensor(storage, offset, size, *rest):
    kind = storage[1].name if isinstance(storage, tuple) and len(storage) > 1 and isinstance(storage[1], Global) else "?"
    return Tensor(tuple(int(s) for s in size), kind)


class _OrderedDict(dict):
    """``collections.OrderedDict`` as a checkpoint pickles it: a dict whose extra state (a module
    state dict's ``_metadata``) is dropped."""

    def __setstate__(self, state):
        pass


#: Globals given a meaning; every other global is an inert :class:`Global`.
_KNOWN = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": lambda data, *rest: data,
    "collections.OrderedDict": _OrderedDict,
}


class InertUnpickler(pickle.Unpickler):
    """An unpickler that imports and calls nothing from the file (see the module notes)."""

    def find_class(self, module: str, name: str):
        known = _KNOWN.get(f"{module}.{name}")
        if known is not None:
            return known
        glob = Global(module, name)
        # A fresh class per global: NEWOBJ needs a class, and its instances record their arguments.
        return _GlobalType(name, (Call,), {"__new__": lambda cls, *args, **kw: Call(glob, args),
                                           "__init__": lambda self, *args, **kw: None,
                                           "glob": glob})

    def persistent_load(self, pid):
        return tuple(pid) if isinstance(pid, (tuple, list)) else pid


def _unpickle(handle) -> object:
    return InertUnpickler(handle).load()


def torch_object(path: Path) -> object | None:
    """The object a torch checkpoint holds, read inertly; None if ``path`` is not one."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
                if len(pickles) != 1 or pickles[0].file_size > MAX_PICKLE_BYTES:
                    return None
                return _unpickle(io.BytesIO(archive.read(pickles[0])))
        with open(path, "rb") as handle:
            if handle.read(2)[:1] != b"\x80":  # a pickle's PROTO opcode
                return None
            handle.seek(0)
            if _unpickle(handle) != LEGACY_MAGIC:
                return None
            _unpickle(handle)  # protocol version
            _unpickle(handle)  # sys info
            return _unpickle(handle)
    except Exception:  # a damaged or foreign file: unpickling errors of every kind, zip errors, EOF
        return None


def state_dict(obj: object) -> dict[str, tuple[int, ...]] | None:
    """``{parameter name: shape}`` of a checkpoint object (:func:`torch_object`), bare or wrapped."""
    if isinstance(obj, Call) and obj.items:
        obj = obj.items
    if not isinstance(obj, dict) or not obj:
        return None
    if all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return {k: v.shape for k, v in obj.items()}
    for key in ("state_dict", "model", "state"):
        if key in obj:
            inner = state_dict(obj[key])
            if inner:
                return inner
    return None


def onnx_input_shape(path: Path) -> list | None:
    """The first graph input's shape of an ONNX file (ints, and strings for named axes); None if
    the file is not an ONNX model. Seeks past the weights: reads a few hundred bytes."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            graph = _field(handle, 0, size, 7)  # ModelProto.graph
            if graph is None:
                return None
            value_info = _field(handle, *graph, 11)  # GraphProto.input
            if value_info is None:
                return None
            handle.seek(value_info[0])
            info = handle.read(min(value_info[1] - value_info[0], 1 << 16))
    except OSError:
        return None
    try:
        type_proto = _message(info).get(2)  # ValueInfoProto.type
        tensor = _message(type_proto).get(1)  # TypeProto.tensor_type
        shape = _message(tensor).get(2)  # TypeProto.Tensor.shape
        dims = []
        for dim in _message(shape, repeated=1):
            fields = _message(dim)
            dims.append(fields.get(1) if 1 in fields else (fields.get(2) or b"").decode("utf-8", "replace") or None)
        return dims
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def _varint_at(handle) -> int:
    value = shift = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _field(handle, start: int, end: int, number: int) -> tuple[int, int] | None:
    """The byte span of the first length-delimited field ``number`` of the message in [start, end)."""
    try:
        handle.seek(start)
        while handle.tell() < end:
            tag = _varint_at(handle)
            kind = tag & 7
            if kind == 0:
                _varint_at(handle)
            elif kind == 1:
                handle.seek(8, os.SEEK_CUR)
            elif kind == 5:
                handle.seek(4, os.SEEK_CUR)
            elif kind == 2:
                length = _varint_at(handle)
                at = handle.tell()
                if at + length > end:
                    return None
                if tag >> 3 == number:
                    return at, at + length
                handle.seek(at + length)
            else:
                return None
    except ValueError:
        return None
    return None


def _message(data: bytes, repeated: int | None = None):
    """A small protobuf message's fields: ``{number: value}`` (the first of each), or with
    ``repeated`` every value of that field number, in order."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("not a message")
    handle = io.BytesIO(data)
    fields: dict[int, object] = {}
    every = []
    while handle.tell() < len(data):
        tag = _varint_at(handle)
        kind, number = tag & 7, tag >> 3
        if kind == 0:
            value: object = _varint_at(handle)
        elif kind == 2:
            value = handle.read(_varint_at(handle))
        elif kind == 1:
            value = handle.read(8)
        elif kind == 5:
            value = handle.read(4)
        else:
            raise ValueError("unknown wire type")
        fields.setdefault(number, value)
        if number == repeated:
            every.append(value)
    return every if repeated is not None else fields


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``!!python/tuple`` as a list (the published configs use it)."""


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def read_config(path: Path) -> dict | None:
    """A YAML config as plain data, or None (too big, not YAML, another python tag, not a mapping)."""
    try:
        if Path(path).stat().st_size > MAX_CONFIG_BYTES:
            return None
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_ConfigLoader)  # a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def global_name(value: object) -> str | None:
    """``module.name`` of a global a pickle stored as a value (a class), or of what it called."""
    glob = getattr(value, "glob", None) if isinstance(value, type) else getattr(value, "what", None)
    return glob.path if isinstance(glob, Global) else None
