"""Custom Keras layers that saved models need; importing this module registers them."""

from __future__ import annotations

import keras
from keras import ops

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="maskclf")
class CaffePreprocess(keras.layers.Layer):
    """ResNet-50's "caffe" preprocessing as a layer: RGB 0-255 -> BGR minus the ImageNet mean.

    Same numbers as `keras.applications.resnet50.preprocess_input`, but inside the graph
    and without overwriting the caller's array.
    """

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, "float32"), axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype="float32")


@keras.saving.register_keras_serializable(package="maskclf")
class MergeClasses(keras.layers.Layer):
    """Sums probabilities of the classes a head was trained on into the reported classes.

    `groups[i][j]` is 1 when training class i counts as reported class j (for example
    `mask_weared_incorrect` -> `without_mask`), else 0.
    """

    def __init__(self, groups: list[list[float]], **kwargs):
        super().__init__(**kwargs)
        self.groups = [[float(v) for v in row] for row in groups]

    def call(self, inputs):
        return ops.matmul(inputs, ops.convert_to_tensor(self.groups, dtype=inputs.dtype))

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="maskclf")
class Standardize(keras.layers.Layer):
    """(x - mean) / scale with fixed, non-trainable per-feature statistics stored as weights.

    Unlike `keras.layers.Normalization(mean=..., variance=...)`, whose statistics become
    captured constants that some converters (tf2onnx) take for missing inputs, these are
    ordinary variables, saved with the model and frozen by every exporter.
    """

    def __init__(self, n_features: int, **kwargs):
        super().__init__(**kwargs)
        self.n_features = int(n_features)
        self.mean = self.add_weight(shape=(self.n_features,), initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=(self.n_features,), initializer="ones", trainable=False, name="scale")

    def call(self, inputs):
        return (inputs - self.mean) / self.scale

    def get_config(self) -> dict:
        return {**super().get_config(), "n_features": self.n_features}
