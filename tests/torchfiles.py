"""PyTorch state-dict files written by hand (no torch here), for the torch-free reader's tests."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from maskclf.torch_pickle import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION


def write_legacy(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray] | None = None):
    """Legacy `torch.save` layout around `main_pickle`: header pickles, keys, raw storages."""
    storages = storages or {}
    with path.open("wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                       {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(main_pickle)
        pickle.dump(list(storages), f, protocol=2)
        for array in storages.values():
            f.write(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    return path


def write_zip(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray] | None = None):
    """Zip `torch.save` layout: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", main_pickle)
        archive.writestr("archive/byteorder", "little")
        for key, array in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", array.astype("<" + array.dtype.str[1:]).tobytes())
    return path


WRITERS = {"legacy": write_legacy, "zip": write_zip}


def global_call_pickle(module: str, name: str, argument: str) -> bytes:
    """Protocol-2 pickle whose loading calls `module.name(argument)`."""
    arg = pickle.dumps(argument, protocol=2)[2:-1]  # drop PROTO header and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + arg + b"\x85R."


def state_dict_pickle(tensors: dict[str, tuple]) -> bytes:
    """Pickle `{name: (key, storage type, offset, shape, stride)}` the way torch.save does.

    Stand-in `torch` modules exist only while pickling, so the pickle names the real
    `torch._utils._rebuild_tensor_v2` and `torch.<Type>Storage` globals.
    """
    torch, torch_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for type_name in {t[1] for t in tensors.values()}:
        setattr(torch, type_name, type(type_name, (), {"__module__": "torch"}))

    class Tensor:
        def __init__(self, key, type_name, offset, shape, stride):
            storage = ("storage", getattr(torch, type_name), key, "cpu", 0)
            self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None

    buffer = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", torch_utils)
        state = collections.OrderedDict((name, Tensor(*spec)) for name, spec in tensors.items())
        Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


