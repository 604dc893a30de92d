"""Crops in, frozen-backbone outputs out, computed once per image and configuration.

A cache file is keyed by backbone, weights, image size, cut point, pooling, augmentation
view and the content hash of the extraction (manifest + crops), so any change to
those recomputes and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import DTypeLike

from .fastpass import precision_key, release, run_pass
from .fsutil import atomic_path, reads_back
from .images import load_crop
from .paths import PROCESSED_DIR

FEATURE_FORMAT = 2
"""Bumped when the way features are computed changes, to invalidate old caches (2: band pooling reduces each row
first, which moves the features in their last bits)."""

CACHED_DTYPE = np.dtype(np.float32)
"""What a feature cache file holds, whatever the dtype its features are held in once read (`cached_outputs`)."""
READ_ROWS = 256
"""Rows of a cache file read at a time when they are converted to another dtype."""

FEATURES_DIR = Path(os.environ.get("MASKCLF_FEATURES_DIR") or PROCESSED_DIR / "features")
"""The cache of backbone outputs (and, under cv/, of cross-validation results); tests point it elsewhere."""


def crop_dataset(paths: Sequence[str], image_size: int, batch_size: int = 32) -> tf.data.Dataset:
    """Batches of float32 crops (0-255), in the order of `paths`, read in parallel and prefetched."""
    paths = list(map(str, paths))
    return face_dataset(lambda i: load_crop(paths[i], image_size), len(paths), image_size, batch_size)


def face_dataset(load: Callable[[int], np.ndarray], n: int, image_size: int, batch_size: int = 32) -> tf.data.Dataset:
    """Batches of float32 faces (0-255) `load(0) .. load(n - 1)`, read in parallel, in order, prefetched."""

    def read(index: tf.Tensor) -> tf.Tensor:
        img = tf.numpy_function(lambda i: load(int(i)), [index], tf.uint8, stateful=False)
        img.set_shape((image_size, image_size, 3))
        return tf.cast(img, tf.float32)

    ds = tf.data.Dataset.range(n)
    return untuned(ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
                   .prefetch(tf.data.AUTOTUNE))


def untuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning off. With it on (TensorFlow 2.21), deleting a finished iterator often waited,
    the CPU idle, until the tuner's timer ran out: a pass over 512 faces then took 20.5 s instead of about 11, 7-9 s
    of it in the `del`, and the study's views 144 s instead of about 100 (docs/performance.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def cache_names(paths: Sequence[str]) -> list[str]:
    """The names a view's cache file records for its crops `paths` (and checks before it is read): their file names."""
    return [Path(p).name for p in paths]


def cache_key(**parts: object) -> str:
    """Hex digest identifying one feature configuration."""
    blob = json.dumps({"format": FEATURE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_outputs(
    model: keras.Model,
    paths: Sequence[str],
    image_size: int,
    key_parts: dict[str, object],
    cache_dir: str | Path = FEATURES_DIR,
    batch_size: int = 32,
    views: Sequence[str] = ("none",),
    seed: int = 0,
    verbose: int = 1,
    loaders: Mapping[str, Callable[[int], np.ndarray]] | None = None,
    recipes: Mapping[str, object] | None = None,
    precision: str = "float32",
    dtype: DTypeLike = np.float32,
    known: Mapping[str, KnownRows] | None = None,
) -> tuple[np.ndarray, bool]:
    """Outputs of `model` on every crop (and augmented view), from the cache when present.

    Each view has its own cache file, so configurations that share views share their cost.
    Returns an array of shape (len(views), len(paths), ...) and whether every view was a cache hit.
    `key_parts` must identify `model` (backbone, weights, cut, pooling...) and the data (hash).
    `loaders` reads the faces of views that are not made from the crop files (index -> uint8
    face, e.g. the jittered re-cuts of maskclf.framing); their recipe enters the key: `recipes[view]`, else
    the jitter recipe's version. `precision` is the pass's (maskclf.fastpass), in the key too. The pass compiled
    for `model` is released at the end (`fastpass.release`): the views share it, and nothing after them needs it.
    `dtype`: what the returned array holds, float32 or the bfloat16 pass's `fastpass.feature_dtype`; the cache
    files hold float32 either way, so a bfloat16 pass's cached views serve both.
    `known[view]`: rows of a loader's view that another cache file already holds (`KnownRows`), read from it instead
    of computed.
    """
    loaders, known = loaders or {}, known or {}
    names = cache_names(paths)
    files = view_cache_files(paths, image_size, key_parts, cache_dir, views, seed, loaders, recipes, precision)
    stacked, hits = None, []
    try:
        for v, (view, cache_file) in enumerate(zip(views, files)):
            layout = _cached_layout(cache_file, names)
            if layout is not None and stacked is not None and layout[1] != stacked.shape[1:]:
                layout = None  # not of this model's outputs: computed again
            hits.append(layout is not None)
            if layout is not None:  # read straight into its place: no second copy of the view
                offset, shape = layout
                stacked = np.empty((len(views), *shape), dtype) if stacked is None else stacked
                _read_into(cache_file, offset, stacked[v])
                continue
            if stacked is None:  # each view computed into its place: no second copy of it, nor of every view
                stacked = np.empty((len(views), len(paths), *model.output.shape[1:]), dtype)
            if view in loaders:
                _loaded_view(model, loaders[view], image_size, batch_size, precision, verbose, stacked[v],
                             known.get(view))
            else:
                run_pass(model, _view_dataset(paths, image_size, batch_size, view, seed + 10 * v), precision, verbose,
                         out=stacked[v])
            with atomic_path(cache_file, suffix=".npz", check=reads_back("npz")) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, outputs=np.asarray(stacked[v], CACHED_DTYPE), paths=np.array(names),
                             key=json.dumps(key_parts, default=str))
    finally:
        release(model)
    return stacked, all(hits)


def view_cache_files(
    paths: Sequence[str],
    image_size: int,
    key_parts: dict[str, object],
    cache_dir: str | Path = FEATURES_DIR,
    views: Sequence[str] = ("none",),
    seed: int = 0,
    loaders: Mapping[str, Callable[[int], np.ndarray]] | None = None,
    recipes: Mapping[str, object] | None = None,
    precision: str = "float32",
) -> list[Path]:
    """The cache file of each of `views`, as `cached_outputs` (same arguments) reads and writes them."""
    from .framing import JITTER_VERSION

    crops = hashlib.sha256("\n".join(cache_names(paths)).encode()).hexdigest()
    files = []
    for v, view in enumerate(views):
        recipe = {"recipe": (recipes or {}).get(view, JITTER_VERSION)} if view in (loaders or {}) else {}
        key = cache_key(**key_parts, image_size=image_size, view=view, seed=seed + 10 * v, crops=crops, **recipe,
                        **precision_key(precision))
        files.append(Path(cache_dir) / f"{key_parts.get('backbone', 'model')}-{image_size}-{view}-{key}.npz")
    return files


@dataclass(frozen=True)
class KnownRows:
    """Rows of a view whose faces another cache file holds, computed by the same pass: `rows` of the view are
    `file_rows` of `file`, whose crops are `file_names` (checked before it is read). Only a pass that gives each face
    the same outputs whatever it is batched with (`fastpass.batch_invariant`) may copy them: they are then the very
    numbers the pass would give."""

    rows: np.ndarray
    file: Path
    file_rows: np.ndarray
    file_names: list[str]


def _loaded_view(model: keras.Model, load: Callable[[int], np.ndarray], image_size: int, batch_size: int,
                 precision: str, verbose: int, out: np.ndarray, known: KnownRows | None) -> None:
    """Fill `out` with `model`'s outputs on faces `load(0) .. load(len(out) - 1)`: the `known` rows read from their
    file (when it still holds them), only the others computed."""
    layout = None if known is None else _cached_layout(known.file, known.file_names)
    if layout is not None and layout[1][1:] != out.shape[1:]:
        layout = None  # not of this model's outputs: every row computed
    rows = np.arange(len(out))
    todo = rows if layout is None else np.setdiff1d(rows, known.rows)
    if len(todo):
        run_pass(model, face_dataset(lambda j: load(int(todo[j])), len(todo), image_size, batch_size), precision,
                 verbose, out=out[:len(todo)])
    if layout is None:
        return
    for j in range(len(todo) - 1, -1, -1):  # each computed row to its place; todo[j] >= j, so none is overwritten unread
        out[todo[j]] = out[j]
    _read_rows(known.file, layout, known.file_rows, out, known.rows)


def _read_rows(cache_file: Path, layout: tuple[int, tuple[int, ...]], rows: np.ndarray, out: np.ndarray,
               out_rows: np.ndarray) -> None:
    """`out[out_rows[i]]` = row `rows[i]` of the CACHED_DTYPE array of `cache_file` (at `layout`, `_cached_layout`)."""
    offset, shape = layout
    row = np.empty(shape[1:], CACHED_DTYPE)
    with open(cache_file, "rb") as f:
        for source, target in zip(rows, out_rows):
            f.seek(offset + int(source) * row.nbytes)
            _read_exactly(f, row, cache_file)
            out[target] = row


def _cached_layout(cache_file: Path, names: list[str]) -> tuple[int, tuple[int, ...]] | None:
    """Where a cache file's outputs lie (byte offset, shape) when it holds the outputs of `names`; None when it is
    missing, is of other crops, or is not an uncompressed, C-ordered CACHED_DTYPE array filling its member.

    np.savez stores its arrays uncompressed, so the outputs can be read in place (`_read_into`): about five times
    faster than through np.load, which copies them through the zip reader and then once more into the stack."""
    if not cache_file.is_file():
        return None
    with zipfile.ZipFile(cache_file) as archive:
        with archive.open("paths.npy") as stored_paths:
            if np.lib.format.read_array(stored_paths, allow_pickle=False).tolist() != names:
                return None
        info = archive.getinfo("outputs.npy")
    with open(cache_file, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if info.compress_type != zipfile.ZIP_STORED or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        member_start = info.header_offset + 30 + name_length + extra_length
        f.seek(member_start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if fortran_order or dtype != CACHED_DTYPE or offset + size != member_start + info.file_size:
        return None
    return offset, tuple(shape)


def _read_into(cache_file: Path, offset: int, out: np.ndarray) -> None:
    """Fill `out` (C-contiguous) with the CACHED_DTYPE values of `cache_file` from `offset` (`_cached_layout`): their
    bytes straight into place, or for another dtype (bfloat16), converted READ_ROWS rows at a time."""
    with open(cache_file, "rb") as f:
        f.seek(offset)
        if out.dtype == CACHED_DTYPE:
            _read_exactly(f, out, cache_file)
            return
        block = np.empty((min(READ_ROWS, len(out)), *out.shape[1:]), CACHED_DTYPE)
        for start in range(0, len(out), READ_ROWS):
            rows = block[:len(out) - start]
            _read_exactly(f, rows, cache_file)
            out[start:start + len(rows)] = rows


def _read_exactly(f: BinaryIO, out: np.ndarray, cache_file: Path) -> None:
    """Fill C-contiguous `out` with the next `out.nbytes` bytes of the open file `f` (of `cache_file`)."""
    if f.readinto(memoryview(out).cast("B")) != out.nbytes:
        raise OSError(f"{cache_file}: truncated while it was read")


def _view_dataset(paths: Sequence[str], image_size: int, batch_size: int, view: str, seed: int) -> tf.data.Dataset:
    """Batches of the crop files seen through augmentation view `view` (maskclf.augment)."""
    from .augment import view_fn

    return crop_dataset(paths, image_size, batch_size).map(view_fn(view, seed=seed))
