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
