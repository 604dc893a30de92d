"""The network's graph: the backbone cut for fine-tuning, pooled features, the head, the end-to-end model."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import keras
import numpy as np

from . import CLASS_NAMES
from .explain import FEATURE_MAP_LAYER
from .layers import HorizontalBands, MergeClasses, Standardize

if TYPE_CHECKING:  # featureset builds its graph from this module's parts
    from .featureset import FeatureSet

BLOCK_PATTERN = re.compile(r"^(block\d+[a-z]|conv\d_block\d+|block_\d+)_")
"""Block prefixes of EfficientNet(-Lite), ResNet and MobileNetV2 layer names."""

STAGE_OUTPUT_PATTERN = re.compile(r"^(block\d+)[a-z]_add$|^(conv\d)_block\d+_out$")
"""Residual outputs of EfficientNet(-Lite) and ResNet blocks; the last one of a stage is its output."""

BANDS = 4
"""Horizontal bands of each stage output pooled with pooling="bands"."""


def block_names(base: keras.Model) -> list[str]:
    """The backbone's blocks, in order (e.g. block1a ... block7a, or conv2_block1 ... conv5_block3)."""
    names: list[str] = []
    for layer in base.layers:
        m = BLOCK_PATTERN.match(layer.name)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def split_at_block(base: keras.Model, n_top_blocks: int) -> tuple[keras.Model, keras.Model | None, str | None]:
    """Split `base` before its last `n_top_blocks` blocks: (lower, upper, first upper block).

    With 0 the whole base is the lower part and there is no upper part.
    """
    if n_top_blocks <= 0:
        return base, None, None
    blocks = block_names(base)
    if n_top_blocks > len(blocks):
        raise ValueError(f"{base.name} has {len(blocks)} blocks; cannot fine-tune {n_top_blocks}")
    first = blocks[-n_top_blocks]
    cut = next(layer for layer in base.layers if layer.name.startswith(first + "_")).input
    lower = keras.Model(base.input, cut, name=f"{base.name}_below_{first}")
    upper = keras.Model(cut, base.output, name=f"{base.name}_from_{first}")
    return lower, upper, first


def stage_outputs(base: keras.Model) -> list[str]:
    """Layers pooled with pooling="stages" or "bands": each residual stage's last output, then the base's output."""
    last: dict[str, str] = {}
    for layer in base.layers:
        m = STAGE_OUTPUT_PATTERN.match(layer.name)
        if m:
            last[m.group(1) or m.group(2)] = layer.name
    top = base.layers[-1].name
    if not last:
        raise ValueError(f"{base.name}: no residual stages found for pooling='stages' or 'bands'")
    return [name for name in last.values() if name != top] + [top]


def pooled_features(name: str, base: keras.Model, preprocess: keras.layers.Layer, inputs: keras.KerasTensor,
                    pooling: str, first: bool) -> keras.KerasTensor:
    """One backbone's pooled features of `inputs` (raw 0-255 crops), built into the caller's graph.

    The average of the last feature map is the layer FEATURE_MAP_LAYER (`avg_pool`) for the
    first backbone (Grad-CAM reads its input) and `<name>_avg_pool` for the others. With
    pooling="bands", the stage outputs below the last are also pooled band by band.
    """
    x = preprocess(inputs)
    if pooling == "avg":
        maps, taps = [base(x, training=False)], [base.layers[-1].name]
    else:
        taps = stage_outputs(base)
        stages = keras.Model(base.input, [base.get_layer(t).output for t in taps], name=f"{name}_stages")
        maps = stages(x, training=False)
    pooled = []
    for tap, fmap in zip(taps, maps):
        top = tap == taps[-1]
        avg_name = (FEATURE_MAP_LAYER if first else f"{name}_avg_pool") if top else f"{name}_{tap}_avg"
        pooled.append(keras.layers.GlobalAveragePooling2D(name=avg_name)(fmap))
        if pooling != "avg":
            pooled.append(keras.layers.GlobalMaxPooling2D(name=f"{name}_{tap}_max")(fmap))
        if pooling == "bands" and not top:
            pooled.append(HorizontalBands(BANDS, name=f"{name}_{tap}_bands")(fmap))
    return pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name=f"{name}_features")(pooled)


def pooling_columns(channels: Sequence[int], pooling: str) -> np.ndarray:
    """Columns of the band-pooled features (stage by stage: average, max, bands below the top) forming `pooling`."""
    columns, start = [], 0
    for i, c in enumerate(channels):
        top = i == len(channels) - 1
        parts = [("avg", c), ("max", c)] + ([] if top else [("bands", 2 * BANDS * c)])
        for kind, width in parts:
            wanted = {"avg": pooling != "avg" or top, "max": pooling != "avg", "bands": pooling == "bands"}[kind]
            if wanted:
                columns.append(np.arange(start, start + width))
            start += width
    return np.concatenate(columns)


def build_head(feature_dim: int, dropout: float, n_classes: int = len(CLASS_NAMES),
               standardization: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Model:
    """[Standardisation,] dropout and a softmax over pooled features."""
    inputs = keras.Input((feature_dim,), name="pooled_features")
    x = inputs
    if standardization is not None:
        standardize = Standardize(feature_dim, name="head_standardize")
        x = standardize(x)
        standardize.set_weights([np.asarray(v, dtype="float32") for v in standardization])
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name="head")


def with_merge(head: keras.Model, merge: np.ndarray) -> keras.Model:
    """`head` followed by MergeClasses when it was trained on more classes than it reports."""
    if np.array_equal(merge, np.eye(len(CLASS_NAMES))):
        return head
    outputs = MergeClasses(merge.tolist(), name="head_merge")(head.output)
    return keras.Model(head.input, outputs, name="head")


STEPS_PER_CALL = 16


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, sparse categorical cross-entropy, accuracy: the study's training set-up. Keras runs STEPS_PER_CALL
    batches per call into the graph: the same steps and weights, a fifth less time for the study's small heads."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=STEPS_PER_CALL,
    )
    return model


def end_to_end_model(fs: FeatureSet, head: keras.Model, upper: keras.Model | None) -> keras.Model:
    """Raw 0-255 RGB crops in, probabilities of the trained classes out: preprocessing, backbone(s), pooling,
    head (without its merge into the binary classes; maskclf.answers does that from config.json's `reports_as`)."""
    x = fs.frozen.output
    if upper is not None:
        x = keras.layers.GlobalAveragePooling2D(name=FEATURE_MAP_LAYER)(upper(x, training=False))
    name = "maskclf_" + fs.config.backbone.replace("+", "_")
    return keras.Model(fs.frozen.input, trained_classes(head)(x, training=False), name=name)


def trained_classes(head: keras.Model) -> keras.Model:
    """`head` up to its softmax over the classes it was trained on (before any MergeClasses)."""
    if not any(isinstance(layer, MergeClasses) for layer in head.layers):
        return head
    return keras.Model(head.input, head.get_layer("head_softmax").output, name="head")
