"""Grad-CAM: which part of a face crop drove the model's decision."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

FEATURE_MAP_LAYER = "avg_pool"
"""The end-to-end model pools the last feature map in this layer; Grad-CAM reads its input."""


def gradcam(model: keras.Model, images: np.ndarray, class_index: int | None = None,
            pool_layer: str = FEATURE_MAP_LAYER) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1], one per image, at the images' height and width.

    `class_index` None explains each image's predicted class. The heatmap is the
    ReLU of the feature maps weighted by the spatially averaged gradients of the class
    probability, upsampled bilinearly to the crop.
    """
    images = np.asarray(images, dtype="float32")
    feature_map = model.get_layer(pool_layer).input
    grad_model = keras.Model(model.inputs, [feature_map, model.output])
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(x)  # records the whole graph, frozen (non-trainable) layers included
        maps, probs = grad_model(x, training=False)
        classes = tf.argmax(probs, axis=1) if class_index is None else tf.fill([len(images)], class_index)
        score = tf.gather(probs, tf.cast(classes, tf.int32), axis=1, batch_dims=1)
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None]
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)


def cached_gradcam(model: keras.Model, images: np.ndarray, class_index: int | None = None,
                   pool_layer: str = FEATURE_MAP_LAYER) -> np.ndarray:
    """`gradcam`, from the result cache (maskclf.memo) when this model already explained these images with this
    module's code."""
    import sys

    from .memo import array_fingerprint, cached_arrays, model_fingerprint, source_fingerprint

    images = np.asarray(images, dtype="float32")
    key = {"model": model_fingerprint(model), "images": array_fingerprint(images), "class_index": class_index,
           "pool_layer": pool_layer, "code": source_fingerprint(sys.modules[__name__])}
    return cached_arrays("gradcam", key, lambda: {"heat": gradcam(model, images, class_index, pool_layer)})["heat"]
