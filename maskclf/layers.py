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
        # a gather, not ops.flip: OpenVINO runs a reversed axis (ReverseSequence) by its slow reference code
        bgr = ops.take(ops.cast(inputs, "float32"), [2, 1, 0], axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype="float32")


@keras.saving.register_keras_serializable(package="maskclf")
class MergeClasses(keras.layers.Layer):
    """Sums probabilities of the classes a head was trained on into the reported classes.

    `groups[i][j]` is 1 when training class i counts as reported class j (for example
    `mask_weared_incorrect` -> `without_mask`), else 0. A float32 sum can round above 1;
    the output is clipped to [0, 1] so that it stays a probability.
    """

    def __init__(self, groups: list[list[float]], **kwargs):
        super().__init__(**kwargs)
        self.groups = [[float(v) for v in row] for row in groups]

    def call(self, inputs):
        return ops.clip(ops.matmul(inputs, ops.convert_to_tensor(self.groups, dtype=inputs.dtype)), 0.0, 1.0)

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


@keras.saving.register_keras_serializable(package="maskclf")
class HorizontalBands(keras.layers.Layer):
    """Average and max of each of `bands` horizontal bands of a feature map, top to bottom.

    A face's eyes, nose and mouth lie in bands, and a mask covers the lower ones; global
    pooling throws that layout away. Band i spans rows round(H*i/bands) to
    round(H*(i+1)/bands); on a map with fewer rows than bands, each band keeps at least one row.
    Output: (batch, bands * 2 * channels), ordered band by band, average then max.
    """

    def __init__(self, bands: int = 3, **kwargs):
        super().__init__(**kwargs)
        if bands < 1:
            raise ValueError(f"bands must be >= 1, got {bands}")
        self.bands = int(bands)

    def band_rows(self, height: int) -> list[tuple[int, int]]:
        """(start, stop) rows of each band on a map `height` rows high."""
        rows = []
        for i in range(self.bands):
            start = min(round(height * i / self.bands), height - 1)
            rows.append((start, max(round(height * (i + 1) / self.bands), start + 1)))
        return rows

    def call(self, inputs):
        # each row is reduced once, then the bands from the rows: two passes over the map, where a band slice of it
        # each took a copy and a layout change (OpenVINO's bfloat16 pass ran 1.7 times faster so, docs/performance.md)
        row_means, row_maxes = ops.mean(inputs, axis=2), ops.max(inputs, axis=2)
        pooled = []
        for start, stop in self.band_rows(inputs.shape[1]):
            pooled += [ops.mean(row_means[:, start:stop], axis=1), ops.max(row_maxes[:, start:stop], axis=1)]
        return ops.concatenate(pooled, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bands * 2 * input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "bands": self.bands}
