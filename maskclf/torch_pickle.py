"""Read PyTorch state-dict files (`.pth`/`.pt`) into numpy arrays without torch.

Both serialisation formats written by `torch.save` are supported:

- legacy (`_use_new_zipfile_serialization=False`, torch < 1.6): back-to-back pickles
  (magic number, protocol version, sys info, the object, the list of storage keys),
  then each storage as an 8-byte element count followed by its raw bytes;
- zip (torch >= 1.6): `<name>/data.pkl` plus one raw `<name>/data/<key>` entry per storage.

Pickles are never loaded with plain `pickle.load`: the unpickler resolves only the
handful of globals a tensor state dict needs, mapped to numpy stand-ins, and raises
`UnsafePickleError` for anything else (`os.system`, `builtins.eval`, ...), before any
of it can run.

Nothing is allocated on a file's word: every pickle is scanned first (no length may
overrun the bytes present, no memo index may run ahead of the pickle), zip members are
read only up to their declared size and only if that fits `max_bytes`, and each
tensor's shape, strides and offset must fit inside the storage bytes actually present.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

MAX_BYTES = 1 << 30
"""Default limit on what one file may unpack to, for its storages and again for its tensors
(EfficientNet-Lite2's weights are 24 MB)."""

_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # widened to float32 when materialised
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TorchPickleError(ValueError):
    """A file is not a readable PyTorch state dict; the message names the file and the problem."""


class UnsafePickleError(TorchPickleError):
    """A pickle asked for a global that a tensor state dict never needs."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    storage_type: _StorageType
    offset: int  # in elements; non-zero only for legacy storage views


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor(_v2)`: records where the data lives."""
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor built from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, operator.index(offset), _ints(shape), _ints(stride))


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(operator.index(v) for v in values)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: a parameter is its data."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED_GLOBALS` and records referenced storages."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageType] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refusing to unpickle forbidden global {module}.{name} "
                "(only tensor state dicts are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) < 5 or _as_str(pid[0]) != "storage":
            raise ValueError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], _as_str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unexpected storage type {storage_type!r}")
        self.storages[key] = storage_type
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return _StorageRef(key, storage_type, 0)
        _view_key, offset, _size = view
        return _StorageRef(key, storage_type, operator.index(offset))


def _as_str(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def load_torch_state_dict(path: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict (legacy or zip format) as `{name: numpy array}`.

    Arrays come back C-contiguous, in the file's dtype (bfloat16 widened to float32).
    Raises `UnsafePickleError` if the file's pickle references any global outside the
    tensor-state-dict allow-list, and `TorchPickleError` naming the file if it is truncated,
    corrupt, not a flat mapping of names to tensors, declares tensors that its bytes do not
    hold, or would unpack to more than `max_bytes` of storages or of tensors.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _read_zip(path, max_bytes)
        else:
            obj, storages = _read_legacy(path, max_bytes)
        return _materialise_state_dict(obj, storages, max_bytes)
    except TorchPickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        TypeError,
        ValueError,
    ) as exc:
        raise TorchPickleError(f"{path}: not a readable PyTorch state dict ({exc})") from exc


def _load_pickle(f: IO[bytes], path: Path) -> tuple[Any, dict[str, _StorageType]]:
    """Unpickle the next pickle of `f`, once a scan shows it declares nothing it does not hold.

    The unpickler allocates what a length or a memo index asks for before it reads; the scan
    reads instead (a seekable in-memory `f` returns only the bytes present).
    """
    start = f.tell()
    for count, (opcode, arg, _) in enumerate(pickletools.genops(f)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > count:
            raise ValueError(f"memo index {arg} at opcode {count} is out of range")
    f.seek(start)
    unpickler = _StateDictUnpickler(f, path)
    return unpickler.load(), unpickler.storages


def _read_zip(path: Path, max_bytes: int) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        obj, storage_types = _load_pickle(io.BytesIO(_read_member(archive, pickles[0], max_bytes)), path)
        order = _zip_byteorder(archive, prefix)
        members = {key: f"{prefix}data/{key}" for key in storage_types}
        declared = sum(archive.getinfo(name).file_size for name in members.values())
        if declared > max_bytes:
            raise ValueError(f"its storages declare {declared} bytes, over the limit of {max_bytes}")
        storages = {
            key: _storage_array(_read_member(archive, name, max_bytes), storage_types[key], order)
            for key, name in members.items()
        }
    return obj, storages


def _read_member(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    """A member's bytes, if its declared size fits `max_bytes` (zipfile reads no further than it)."""
    info = archive.getinfo(name)
    if info.file_size > max_bytes:
        raise ValueError(f"{name} declares {info.file_size} bytes, over the limit of {max_bytes}")
    return archive.read(info)


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    try:
        order = _read_member(archive, f"{prefix}byteorder", 16).decode("ascii").strip()
    except KeyError:  # written before torch recorded it: always little-endian
        return "<"
    if order not in ("little", "big"):
        raise ValueError(f"unknown byteorder {order!r}")
    return "<" if order == "little" else ">"


def _read_legacy(path: Path, max_bytes: int) -> tuple[Any, dict[str, np.ndarray]]:
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{size} bytes, over the limit of {max_bytes}")
    f = io.BytesIO(path.read_bytes())
    if _load_pickle(f, path)[0] != LEGACY_MAGIC_NUMBER:
        raise ValueError("bad magic number: not a PyTorch file")
    protocol = _load_pickle(f, path)[0]
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _load_pickle(f, path)[0]
    order = "<" if sys_info.get("little_endian", True) else ">"
    obj, storage_types = _load_pickle(f, path)
    keys = _load_pickle(f, path)[0]
    storages = {}
    for key in keys:
        storages[_as_str(key)] = _read_legacy_storage(f, storage_types[_as_str(key)], order)
    return obj, storages


def _read_legacy_storage(f: IO[bytes], storage_type: _StorageType, order: str) -> np.ndarray:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError("file ends inside a storage header (truncated)")
    (count,) = struct.unpack(f"{order}q", header)
    if count < 0:
        raise ValueError(f"negative storage size {count}")
    nbytes = count * storage_type.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"storage of {count} elements is truncated ({len(data)} of {nbytes} bytes)")
    return _storage_array(data, storage_type, order)


def _storage_array(data: bytes, storage_type: _StorageType, order: str) -> np.ndarray:
    dtype = storage_type.dtype
    if len(data) % dtype.itemsize:
        raise ValueError(f"{storage_type.name} of {len(data)} bytes is not whole elements")
    array = np.frombuffer(data, dtype=dtype.newbyteorder(order)).astype(dtype.newbyteorder("="))
    if storage_type.name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _materialise_state_dict(obj: Any, storages: dict[str, np.ndarray], max_bytes: int) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"top-level object is a {type(obj).__name__}, not a state dict")
    total = 0
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ValueError(f"entry {name!r} is a {type(ref).__name__}, not a tensor")
        storage = storages[ref.storage.key]
        total += _check_geometry(name, ref, storage) * storage.itemsize
        if total > max_bytes:
            raise ValueError(f"its tensors add up to more than the limit of {max_bytes} bytes")
    return {name: _materialise_tensor(ref, storages[ref.storage.key]) for name, ref in obj.items()}


def _check_geometry(name: str, ref: _TensorRef, storage: np.ndarray) -> int:
    """The element count of tensor `name`, once its shape, strides and offset fit in `storage`."""
    shape, stride = ref.shape, ref.stride
    start = ref.storage.offset + ref.offset
    if len(shape) != len(stride) or any(n < 0 for n in shape) or any(s < 0 for s in stride) or start < 0:
        raise ValueError(f"tensor {name!r}: invalid geometry: shape {shape}, stride {stride}, offset {start}")
    count = math.prod(shape)
    if count == 0:
        return 0
    last = start + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= storage.size or count > storage.size - start:
        raise ValueError(
            f"tensor {name!r} of shape {shape}, stride {stride} at offset {start} "
            f"overruns its storage of {storage.size} elements"
        )
    return count


def _materialise_tensor(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    if 0 in ref.shape:
        return np.empty(ref.shape, dtype=storage.dtype)
    start = ref.storage.offset + ref.offset
    strides = tuple(s * storage.itemsize for s in ref.stride)
    return np.lib.stride_tricks.as_strided(storage[start:], ref.shape, strides).copy()
