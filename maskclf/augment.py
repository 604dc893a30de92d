"""Augmented views of face crops: a fixed number per image, computed once and cached.

Fine-tuning and head training read cached backbone outputs, so augmentation is
done by caching a few seeded views of each crop (a horizontal flip and random
flip/rotation/zoom/brightness/contrast draws) instead of re-running the frozen
layers every epoch.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf


def view_names(n_views: int) -> list[str]:
    """The original plus `n_views` augmented views: the flip first, then random draws."""
    return ["none"] + (["flip"] if n_views >= 1 else []) + [f"random{i}" for i in range(1, n_views)]


def augmenter(seed: int) -> keras.Sequential:
    """Small, label-preserving changes: flip, +-5% rotation, +-10% zoom, brightness and contrast."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomContrast(0.1, seed=seed + 4),
        ],
        name=f"augment_{seed}",
    )


def view_fn(view: str, seed: int = 0) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function applying `view` to a batch of float 0-255 crops; its result stays in 0-255."""
    if view == "none":
        return lambda images: images
    if view == "flip":
        return lambda images: tf.reverse(images, axis=[2])
    aug = augmenter(seed)
    return lambda images: tf.clip_by_value(aug(images, training=True), 0.0, 255.0)
