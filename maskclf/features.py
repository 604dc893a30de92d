"""Crops in, frozen-backbone outputs out, computed once per image and configuration.

The cache file is keyed by backbone, weights, image size, cut point, augmentation
view and the content hash of the extraction (manifest + crops), so any change to
those recomputes and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from .fsutil import atomic_path
from .images import load_rgb, resize_crop
from .paths import PROCESSED_DIR

FEATURE_FORMAT = 1
"""Bumped when the way features are computed changes, to invalidate old caches."""

FEATURES_DIR = PROCESSED_DIR / "features"


def load_crop(path: str | Path, image_size: int) -> np.ndarray:
    """Read one crop file and resize it (uint8, image_size x image_size x 3)."""
    return resize_crop(load_rgb(path), image_size)


def crop_dataset(paths: Sequence[str], image_size: int, batch_size: int = 32) -> tf.data.Dataset:
    """Batches of float32 crops (0-255), in the order of `paths`, read in parallel and prefetched."""

    def read(path: tf.Tensor) -> tf.Tensor:
        img = tf.numpy_function(lambda p: load_crop(p.decode(), image_size), [path], tf.uint8, stateful=False)
        img.set_shape((image_size, image_size, 3))
        return tf.cast(img, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
) -> tuple[np.ndarray, bool]:
    """Outputs of `model` on every crop (and augmented view), from the cache when present.

    Returns an array of shape (len(views), len(paths), ...) and whether it was a cache hit.
    `key_parts` must identify `model` (backbone, weights, cut...) and the data (hash).
    """
    names = [Path(p).name for p in paths]
    key = cache_key(**key_parts, image_size=image_size, views=list(views), seed=seed,
                    crops=hashlib.sha256("\n".join(names).encode()).hexdigest())
    cache_file = Path(cache_dir) / f"{key_parts.get('backbone', 'model')}-{image_size}-{key}.npz"
    if cache_file.is_file():
        with np.load(cache_file) as stored:
            if stored["paths"].tolist() == names:
                return stored["outputs"], True
    from .augment import view_fn

    outputs = []
    for v, view in enumerate(views):
        ds = crop_dataset(paths, image_size, batch_size).map(view_fn(view, seed=seed + 10 * v))
        outputs.append(model.predict(ds, verbose=verbose))
    stacked = np.stack(outputs)
    with atomic_path(cache_file, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, outputs=stacked, paths=np.array(names), key=json.dumps(key_parts, default=str))
    return stacked, False
