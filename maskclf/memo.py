"""Results that are expensive and deterministic, cached by everything they depend on.

A result lives in `<feature cache>/results/<kind>-<key>.<ext>`, where the key hashes its
inputs: the model's architecture and weights, the faces (by content), the parameters. A
changed input is another key, so a stale entry is never read; writes are atomic. Arrays
are stored as .npz, everything else as JSON, both of which give back exactly what was
stored (JSON floats round-trip), so a rerun that reads the cache reports the same numbers
to the last digit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar

import numpy as np

from .fastpass import precision_key
from .features import FEATURES_DIR, cache_key
from .fsutil import atomic_path, files_fingerprint, reads_back, write_json_atomic
from .model import CompiledModel

T = TypeVar("T")


def model_fingerprint(model: Any) -> str:
    """Hex digest of a Keras model's architecture (layer names included) and weights: equal for a model and its saved copy.
    A model compiled in another precision (maskclf.model.CompiledModel) has its own."""
    if isinstance(model, CompiledModel):
        isa = precision_key(model.precision).get("isa")
        precision = model.precision if isa is None else f"{model.precision}-{isa}"
        return hashlib.sha256(f"{model_fingerprint(model.model)}-{precision}".encode()).hexdigest()[:20]
    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:20]


def weights_fingerprint(model: Any) -> str:
    """Hex digest of a Keras model's weights in order (shapes, types and values), without the names Keras makes
    up: equal for the same model built twice in one process (model_fingerprint is not). The run's
    configuration, hashed apart (`run_id`), stands for the rest of the architecture."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:20]


def array_fingerprint(array: np.ndarray) -> str:
    """Hex digest of an array's shape, dtype and contents."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(array.reshape(-1).view(np.uint8))  # the bytes in place: no copy of a large array
    return digest.hexdigest()[:20]


def source_fingerprint(*modules: ModuleType) -> str:
    """Hex digest of modules' source files: a code change there is a new key."""
    return files_fingerprint(Path(m.__file__) for m in modules)


def _path(kind: str, key_parts: dict[str, Any], suffix: str, cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or FEATURES_DIR) / "results" / f"{kind}-{cache_key(kind=kind, **key_parts)}{suffix}"


def cached_arrays(kind: str, key_parts: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]],
                  cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """`compute()`, named arrays, from the cache when an entry of the same kind and key exists."""
    stored = stored_arrays(kind, key_parts, cache_dir)
    if stored is not None:
        return stored
    path = _path(kind, key_parts, ".npz", cache_dir)
    result = {name: np.asarray(value) for name, value in compute().items()}
    with atomic_path(path, suffix=".npz", check=reads_back("npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **result)
    return result


def stored_arrays(kind: str, key_parts: dict[str, Any], cache_dir: str | Path | None = None) -> dict[str, np.ndarray] | None:
    """What `cached_arrays` stored under this kind and key, or None: nothing is computed."""
    path = _path(kind, key_parts, ".npz", cache_dir)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def cached_json(kind: str, key_parts: dict[str, Any], compute: Callable[[], T],
                cache_dir: str | Path | None = None) -> T:
    """`compute()`, made of JSON types, from the cache when an entry of the same kind and key exists.

    What is returned is always the JSON round trip, so a first run and a rerun return equal values.
    """
    path = _path(kind, key_parts, ".json", cache_dir)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = json.loads(json.dumps(compute(), sort_keys=True))
    write_json_atomic(path, result)
    return result
