"""Training: a frozen backbone run once over the crops, a small head fitted on its cached outputs.

The flow, for one configuration:

1. `prepare_features` splits the backbone at the fine-tuning cut (or keeps it whole),
   runs the frozen lower part once per crop (and augmented view) and caches the result;
   several backbones ("a+b") each get their own cache and their features are concatenated;
2. `fit_heads` trains dropout + softmax on globally pooled features: with Adam and early
   stopping (the study), or as a logistic regression fitted to convergence with L-BFGS,
   every fold's in the same passes over the features;
3. `fine_tune` (optional) unfreezes the top blocks, BatchNorm kept in inference mode, and
   trains them with a low learning rate on the cached activations at the cut;
4. `end_to_end_model` assembles raw crop in -> probabilities out, the model that is saved.

Models are built and fitted inside `tf.distribute.get_strategy().scope()`: the default
strategy, or the one the caller entered (`with tf.distribute.MirroredStrategy().scope(): ...`),
so the same code runs on one CPU or several GPUs without a strategy argument anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from . import CLASS_NAMES
from .answers import INCORRECT, p_without_mask
from .augment import view_names
from .config import PARAM_CHOICES, resolve_params, stage_defaults
from .backbones import Weights, get_backbone, weights_id
from .data import DataError, face_size, hash_extraction, read_manifest, source_photos_dir
from .evaluate import binary_metrics, encode_labels, fold_metrics, summarize_folds
from .explain import FEATURE_MAP_LAYER
from .features import FEATURES_DIR, cache_key, cached_outputs
from . import detector_views
from .framing import jittered_loader
from .fsutil import OutputError, atomic_path, write_json_atomic
from .images import load_crop
from .layers import HorizontalBands, MergeClasses, Standardize
from .logreg import LinearFit, Subset, fit_logistic, standardisation
from .model import run_batched
from .paths import MODELS_DIR, project_path
from .runs import save_run
from .splits import early_stopping_split, train_val_indices

BLOCK_PATTERN = re.compile(r"^(block\d+[a-z]|conv\d_block\d+|block_\d+)_")
"""Block prefixes of EfficientNet(-Lite), ResNet and MobileNetV2 layer names."""

STAGE_OUTPUT_PATTERN = re.compile(r"^(block\d+)[a-z]_add$|^(conv\d)_block\d+_out$")
"""Residual outputs of EfficientNet(-Lite) and ResNet blocks; the last one of a stage is its output."""

POOLINGS = PARAM_CHOICES["pooling"]
BANDS = 4
"""Horizontal bands of each stage output pooled with pooling="bands"."""
HEADS = PARAM_CHOICES["head"]
LABEL_SETS = PARAM_CHOICES["labels"]


@dataclass
class TrainConfig:
    """Everything that defines one training run (also written to the run's config.json).

    No field has a default here: they live in notebooks/params.yaml (section `train`);
    build a configuration with `TrainConfig.from_params`, which fills in what is not given.
    """

    backbone: str  # a registry name, or several joined by "+" (features concatenated)
    weights: Weights  # "imagenet", a weights file, or None / "none" (random)
    image_size: int | None  # None: the backbone's native size (the largest, for several)
    epochs: int
    batch_size: int
    learning_rate: float
    dropout: float
    class_weight: bool
    incorrect_weight: float  # the incorrectly worn mask's loss weight, times class_weight's (labels="original")
    patience: int
    fine_tune_blocks: int  # top blocks to unfreeze; 0: frozen backbone only
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    augment_views: int  # augmented views per crop, cached (1: a horizontal flip)
    jitter_views: int  # re-cuts per face from its photo with a jittered box, cached (maskclf.framing)
    detector_views: int  # 1: a view cut with the default detector's box, for the faces it finds (maskclf.detector_views)
    pooling: str  # "avg": average of the last feature map; "stages": average and max of every stage's output;
    # "bands": "stages" plus average and max of BANDS horizontal bands of every stage output below the last
    head: str  # "adam": the study's training; "lbfgs": logistic regression fitted to convergence
    head_c: float  # inverse L2 strength of the "lbfgs" head, as scikit-learn's C
    labels: str  # "original": train on the 3 annotated classes, merge them into the two at the output
    min_face: int  # leave out faces whose short side is under this many pixels (the study's protocol: 32)
    val_fold: int
    train_seed: int  # weight initialisation, shuffling, augmented views, early-stopping split

    def __post_init__(self) -> None:
        specs = [get_backbone(name) for name in self.backbones]
        self.image_size = self.image_size or max(spec.image_size for spec in specs)
        if str(self.weights).lower() == "none":
            self.weights = None
        if self.weights not in (None, "imagenet"):
            self.weights = str(project_path(self.weights))
            if len(specs) > 1:
                raise ValueError("a weights file needs a single backbone")
        for name, value, allowed in (("pooling", self.pooling, POOLINGS), ("head", self.head, HEADS),
                                     ("labels", self.labels, LABEL_SETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.fine_tune_blocks and (len(specs) > 1 or self.pooling != "avg"):
            raise ValueError("fine-tuning needs a single backbone and pooling='avg'")

    @property
    def backbones(self) -> list[str]:
        """The backbone names, in order."""
        return self.backbone.split("+")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str | Path | None = None) -> TrainConfig:
        """A configuration from params.yaml's `train` section, updated with the non-None values of `params`."""
        resolved = resolve_params("02_train", params, path)
        return cls(**{f.name: resolved[f.name] for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FeatureSet:
    """The frozen parts of the backbone(s) and their cached outputs for every crop."""

    config: TrainConfig
    frozen: keras.Model  # raw 0-255 crop -> activations at the cut, or pooled features without fine-tuning
    upper: keras.Model | None  # activations at the cut -> last feature map (None: no fine-tuning)
    activations: np.ndarray  # (views, faces, ...) outputs of `frozen`
    pooled: np.ndarray  # (views, faces, features): the head's input, globally pooled
    data_sha256: str
    cache_hit: bool
    seconds: float
    views: list[str] = field(default_factory=list)
    view_weight: np.ndarray | None = None  # (views, faces) 1/0: whether a face has that view (None: every face)

    def available(self) -> np.ndarray:
        """(views, faces) 1.0 where the face has the view, 0.0 where it has none (a missed detector view)."""
        return np.ones(self.pooled.shape[:2]) if self.view_weight is None else self.view_weight


@dataclass
class TrainResult:
    """A trained model and what it measured on its validation fold."""

    model: keras.Model  # end to end: raw crops in, probabilities out
    head: keras.Model
    upper: keras.Model | None
    history: dict[str, dict[str, list[float]]]
    metrics: dict[str, Any]
    val_index: np.ndarray
    val_probabilities: np.ndarray


# --------------------------------------------------------------------------- reproducibility


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(y: Sequence[int], n_classes: int = 2) -> dict[int, float]:
    """Weights n / (n_classes * count) per class, so that every class weighs the same in the loss."""
    y = np.asarray(y)
    counts = np.bincount(y, minlength=n_classes)
    return {c: float(len(y) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def head_class_weights(y: Sequence[int], names: Sequence[str], config: TrainConfig) -> dict[int, float] | None:
    """Loss weight of each class of `names` for a head trained on labels `y`: balanced (`class_weight`), and the
    incorrectly worn mask's multiplied by `incorrect_weight`; None when every class weighs 1."""
    weights = class_weights(y, len(names)) if config.class_weight else {c: 1.0 for c in range(len(names))}
    if INCORRECT in names:
        weights[list(names).index(INCORRECT)] *= config.incorrect_weight
    return weights if config.class_weight or config.incorrect_weight != 1 else None


@dataclass
class TrainingLabels:
    """The classes a head is trained on and how they merge into the reported CLASS_NAMES."""

    names: list[str]
    values: np.ndarray  # (faces,) index into `names`
    merge: np.ndarray  # (len(names), len(CLASS_NAMES)) 0/1


def training_labels(manifest: pd.DataFrame, labels: str = "binary") -> TrainingLabels:
    """Binary labels, or the annotated classes (`original_label`) with the binary class each maps to."""
    if labels == "binary":
        return TrainingLabels(list(CLASS_NAMES), encode_labels(manifest["label"]), np.eye(len(CLASS_NAMES)))
    pairs = manifest[["original_label", "label"]].drop_duplicates()
    if pairs["original_label"].duplicated().any():
        raise DataError("an original label maps to more than one class in the manifest")
    order = pairs.assign(target=encode_labels(pairs["label"])).sort_values(["target", "original_label"])
    names = order["original_label"].tolist()
    merge = np.eye(len(CLASS_NAMES))[order["target"].to_numpy()]
    values = manifest["original_label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    return TrainingLabels(names, values, merge)


# --------------------------------------------------------------------------- model parts


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


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, sparse categorical cross-entropy, accuracy: the study's training set-up."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
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


def output_classes(labels: TrainingLabels) -> dict[str, Any]:
    """What the end-to-end model outputs, as config.json records it: `class_names` (the trained classes) and
    `reports_as` (each one -> the binary class it counts as), which maskclf.answers reads."""
    return {"class_names": labels.names,
            "reports_as": {name: CLASS_NAMES[int(np.argmax(row))] for name, row in zip(labels.names, labels.merge)}}


# --------------------------------------------------------------------------- features


def prepare_features(
    manifest: pd.DataFrame,
    faces_dir: str | Path,
    config: TrainConfig,
    cache_dir: str | Path = FEATURES_DIR,
    verbose: int = 1,
) -> FeatureSet:
    """Build the frozen backbone and get its outputs for every crop, from the cache when possible."""
    set_determinism(config.train_seed)  # random weights (weights=None) are then reproducible
    t0 = time.perf_counter()
    size = config.image_size
    with tf.distribute.get_strategy().scope():
        inputs = keras.Input((size, size, 3), name="crop_rgb_0_255")
        branches, supersets, upper, first = [], [], None, None
        for i, name in enumerate(config.backbones):
            spec = get_backbone(name)
            base = spec.build(config.weights, size)
            base.trainable = False
            preprocess = spec.preprocess("preprocess" if i == 0 else f"{name}_preprocess")
            if config.fine_tune_blocks:
                lower, upper, first = split_at_block(base, config.fine_tune_blocks)
                branches.append(lower(preprocess(inputs), training=False))
                supersets.append((None, None))  # the activations at the cut are cached as they are
            else:
                branches.append(pooled_features(name, base, preprocess, inputs, config.pooling, first=i == 0))
                supersets.append(_superset_branch(name, base, inputs, config.pooling))
        outputs = branches[0] if len(branches) == 1 else keras.layers.Concatenate(name="features")(branches)
        frozen = keras.Model(inputs, outputs, name="frozen")
    data_sha256 = hash_extraction(faces_dir)
    views = view_names(config.augment_views)
    jitter = [f"jitter{i}" for i in range(1, config.jitter_views + 1)]
    photos = source_photos_dir(faces_dir) if jitter else None
    loaders = {view: jittered_loader(manifest, photos, view, config.train_seed, size) for view in jitter}
    views += jitter
    recipes, view_weight = {}, None
    if config.detector_views not in (0, 1):
        raise ValueError(f"detector_views must be 0 or 1, got {config.detector_views!r}")
    if config.detector_views:
        photos = source_photos_dir(faces_dir)
        boxes = detector_views.detector_boxes(manifest, photos)
        loaders[detector_views.VIEW] = detector_views.detector_loader(manifest, photos, boxes, size)
        recipes[detector_views.VIEW] = detector_views.recipe()
        views.append(detector_views.VIEW)
        view_weight = np.ones((len(views), len(manifest)))
        view_weight[-1] = detector_views.available(boxes)
    parts, hits = [], []
    for name, branch, (superset, columns) in zip(config.backbones, branches, supersets):
        stored = branch if superset is None else superset
        key = {"backbone": name, "weights": weights_id(config.weights), "cut": first or "pooled",
               "pooling": config.pooling if superset is None else "bands", "data_sha256": data_sha256,
               "init_seed": config.train_seed if config.weights is None else None}
        acts, hit = cached_outputs(keras.Model(inputs, stored), list(manifest["crop_file"]), size, key, cache_dir,
                                   batch_size=config.batch_size, views=views, seed=config.train_seed, verbose=verbose,
                                   loaders=loaders, recipes=recipes)
        parts.append(acts if columns is None else np.ascontiguousarray(acts[..., columns]))
        hits.append(hit)
    acts = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    pooled = acts if upper is None else pool_upper(upper, acts, config.batch_size)
    return FeatureSet(config, frozen, upper, acts, pooled, data_sha256, all(hits), time.perf_counter() - t0, views,
                      view_weight)


def _superset_branch(name: str, base: keras.Model, inputs: keras.KerasTensor,
                     pooling: str) -> tuple[keras.KerasTensor | None, np.ndarray | None]:
    """What to cache for one backbone: its band-pooled features, of which every pooling is a column subset.

    One backbone pass per view then serves "avg", "stages" and "bands" alike. Returns the
    tensor to cache and the columns of `pooling` in it, or (None, None) when the pooled
    branch itself is cached ("bands" already, or a backbone without residual stages).
    """
    if pooling == "bands":
        return None, None
    try:
        channels = [base.get_layer(t).output.shape[-1] for t in stage_outputs(base)]
    except ValueError:
        return None, None
    preprocess = get_backbone(name).preprocess(f"{name}_cache_preprocess")
    return pooled_features(name, base, preprocess, inputs, "bands", first=True), pooling_columns(channels, pooling)


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


def restrict_faces(fs: FeatureSet, manifest: pd.DataFrame) -> tuple[FeatureSet, pd.DataFrame]:
    """Only the faces of at least `fs.config.min_face` pixels (short side), with their cached features.

    Folds stay as assigned (grouped by photo), so a restricted run is validated on the same photos.
    """
    if not fs.config.min_face:
        return fs, manifest
    keep = np.flatnonzero(face_size(manifest) >= fs.config.min_face)
    subset = dataclasses.replace(fs, activations=fs.activations[:, keep], pooled=fs.pooled[:, keep],
                                 view_weight=None if fs.view_weight is None else fs.view_weight[:, keep])
    return subset, manifest.iloc[keep].reset_index(drop=True)


def pool_upper(upper: keras.Model, activations: np.ndarray, batch_size: int) -> np.ndarray:
    """Globally pooled output of the (frozen) upper part for every view."""
    pooled = keras.Sequential([upper, keras.layers.GlobalAveragePooling2D()])
    # direct calls, not predict(): no tf.function retracing for every new model
    return np.stack([run_batched(lambda b: pooled(b, training=False), a, batch_size) for a in activations])


# --------------------------------------------------------------------------- fitting


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _train_views(values: np.ndarray, y: np.ndarray, idx: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every view of the training faces that they have (`available`: views x faces) as training samples."""
    keep = available[:, idx].reshape(-1) > 0
    x = values[:, idx].reshape((-1, *values.shape[2:]))[keep]
    return x, np.tile(y[idx], values.shape[0])[keep]


def _fit(model: keras.Model, x, y, xv, yv, config: TrainConfig, epochs: int, verbose: int,
         names: Sequence[str] = CLASS_NAMES) -> dict[str, list[float]]:
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = model.fit(
        _dataset(x, y, config.batch_size, config.train_seed, shuffle=True),
        validation_data=_dataset(xv, yv, config.batch_size, config.train_seed, shuffle=False),
        epochs=epochs, callbacks=[stop], verbose=verbose, shuffle=False,
        class_weight=head_class_weights(y, names, config),
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def fit_heads(fs: FeatureSet, labels: TrainingLabels, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
              verbose: int = 0) -> list[tuple[keras.Model, dict[str, list[float]]]]:
    """One head per (training faces, recorded faces) split, on pooled features (all views); they report CLASS_NAMES.

    `labels` are the classes the heads train on; `y` the binary labels. The recorded faces
    decide early stopping ("adam") or are only recorded per iteration ("lbfgs"). The "lbfgs"
    heads of all splits are fitted together, in shared passes over the features (maskclf.logreg).
    """
    if fs.config.head == "lbfgs":
        return [_logistic_head(fit, labels) for fit in _fit_logistic_heads(fs, labels, y, splits)]
    return [_adam_head(fs, labels, train_idx, val_idx, verbose) for train_idx, val_idx in splits]


def _fit_logistic_heads(fs: FeatureSet, labels: TrainingLabels, y: np.ndarray,
                        splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[LinearFit]:
    n_classes = len(labels.names)
    subsets = []
    for train_idx, val_idx in splits:
        weight = np.zeros(fs.pooled.shape[:2])
        per_class = head_class_weights(labels.values[train_idx], labels.names, fs.config)
        weight[:, train_idx] = 1.0 if per_class is None else np.array(list(per_class.values()))[labels.values[train_idx]]
        weight *= fs.available()
        subsets.append(Subset(weight, val_idx))
    return fit_logistic(fs.pooled, labels.values, n_classes, fs.config.head_c, subsets, val_labels=y, merge=labels.merge)


def _logistic_head(fit: LinearFit, labels: TrainingLabels) -> tuple[keras.Model, dict[str, list[float]]]:
    with tf.distribute.get_strategy().scope():
        core = build_head(len(fit.mean), 0.0, len(labels.names), (fit.mean, fit.scale))
        core.get_layer("head_softmax").set_weights([fit.kernel.astype("float32"), fit.bias.astype("float32")])
        return with_merge(core, labels.merge), fit.history


def _adam_head(fs: FeatureSet, labels: TrainingLabels, train_idx: np.ndarray, val_idx: np.ndarray,
               verbose: int) -> tuple[keras.Model, dict[str, list[float]]]:
    config = fs.config
    keras.utils.set_random_seed(config.train_seed)
    x, lt = _train_views(fs.pooled, labels.values, train_idx, fs.available())
    with tf.distribute.get_strategy().scope():
        standardization = standardisation(x) if config.pooling != "avg" else None
        core = compile_model(build_head(x.shape[-1], config.dropout, len(labels.names), standardization),
                             config.learning_rate)
        history = _fit(core, x, lt, fs.pooled[0, val_idx], labels.values[val_idx], config, config.epochs, verbose,
                       labels.names)
        return with_merge(core, labels.merge), history


def fine_tune(fs: FeatureSet, head: keras.Model, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
              verbose: int = 0) -> tuple[keras.Model, dict[str, list[float]]]:
    """Unfreeze the upper blocks (BatchNorm frozen and in inference mode) and train them with the head.

    Works on a copy of the upper part, so the pretrained weights stay available for other folds.
    """
    config = fs.config
    keras.utils.set_random_seed(config.train_seed)
    x, yt = _train_views(fs.activations, y, train_idx, fs.available())
    with tf.distribute.get_strategy().scope():
        upper = keras.models.clone_model(fs.upper)
        upper.set_weights(fs.upper.get_weights())
        upper.trainable = True
        for layer in upper.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        inputs = keras.Input(fs.activations.shape[2:])
        pooled = keras.layers.GlobalAveragePooling2D()(upper(inputs, training=False))
        model = compile_model(keras.Model(inputs, head(pooled)), config.fine_tune_learning_rate)
        history = _fit(model, x, yt, fs.activations[0, val_idx], y[val_idx], config, config.fine_tune_epochs, verbose)
    return upper, history


def train_folds(fs: FeatureSet, manifest: pd.DataFrame, val_folds: Sequence[int],
                verbose: int = 0) -> list[TrainResult]:
    """For each of `val_folds`, the head (and fine-tuning) with that fold held out; metrics on its faces.

    Early stopping watches a grouped tenth of the training photos, never the held-out fold;
    the "lbfgs" head does not stop early but also leaves that tenth out, so that both heads
    learn from the same faces and their curves are comparable. The "lbfgs" folds share their
    passes over the features, not their parameters: a fold trained with others reaches the
    optimum it reaches alone, to rounding.
    """
    y = encode_labels(manifest["label"])
    labels = training_labels(manifest, fs.config.labels)
    held_out, splits = [], []
    for k in val_folds:
        train_idx, val_idx = train_val_indices(manifest["fold"], k)
        held_out.append(val_idx)
        splits.append(early_stopping_split(manifest["label"], manifest["source_image"], train_idx,
                                           seed=fs.config.train_seed))
    results = []
    for val_idx, (fit_idx, stop_idx), (head, history) in zip(held_out, splits, fit_heads(fs, labels, y, splits, verbose)):
        histories = {"head": history}
        upper = None
        if fs.upper is not None:
            upper, histories["fine_tune"] = fine_tune(fs, head, y, fit_idx, stop_idx, verbose)
        results.append(_fold_result(fs, head, upper, histories, y, val_idx))
    return results


def _fold_result(fs: FeatureSet, head: keras.Model, upper: keras.Model | None, history: dict[str, Any],
                 y: np.ndarray, val_idx: np.ndarray) -> TrainResult:
    """A trained fold's end-to-end model and its metrics on the held-out faces `val_idx`."""
    p = predict_cached(fs, head, upper, val_idx)
    with tf.distribute.get_strategy().scope():
        model = end_to_end_model(fs, head, upper)
    return TrainResult(model, head, upper, history, binary_metrics(y[val_idx], p), val_idx, p)


def train_fold(fs: FeatureSet, manifest: pd.DataFrame, val_fold: int, verbose: int = 0) -> TrainResult:
    """`train_folds` for one fold."""
    return train_folds(fs, manifest, [val_fold], verbose)[0]


def predict_cached(fs: FeatureSet, head: keras.Model, upper: keras.Model | None, idx: np.ndarray) -> np.ndarray:
    """P(without_mask) for faces `idx` from cached outputs (original view)."""
    if upper is None:
        features = fs.pooled[0, idx]
    else:
        features = pool_upper(upper, fs.activations[:1, idx], fs.config.batch_size)[0]
    return run_batched(lambda b: head(b, training=False), features)[:, 1]


def cross_validate(
    fs: FeatureSet, manifest: pd.DataFrame, keep_fold: int | None = None,
) -> tuple[dict[str, Any], TrainResult | None]:
    """One model per grouped fold: per-fold metrics, mean and spread, out-of-fold scores.

    Returns the summary and the trained result of `keep_fold` (None if not asked for).
    """
    per_fold, oof, kept = [], np.full(len(manifest), np.nan), None
    folds = [int(k) for k in sorted(manifest["fold"].unique())]
    for k, result in zip(folds, train_folds(fs, manifest, folds)):
        oof[result.val_index] = result.val_probabilities
        kept = result if k == keep_fold else kept
        per_fold.append({"fold": k, **fold_metrics(result.metrics),
                         "epochs": sum(len(h["loss"]) for h in result.history.values())})
    table = summarize_folds(per_fold)
    summary = {"per_fold": per_fold, "mean": table.loc["mean"].to_dict(), "std": table.loc["std"].to_dict(),
               "oof_probability": oof.tolist()}
    return summary, kept


CV_FORMAT = 2
"""Bumped when cross-validation changes in a way its cached results cannot show (2: fold-batched L-BFGS)."""


NEUTRAL = {"incorrect_weight": 1.0, "detector_views": 0}
"""Options added after cross-validation caches were first made, at the value that computes what was computed
before they existed: left out of the cache key at that value, so those caches stay valid."""


def cv_key(fs: FeatureSet, manifest: pd.DataFrame) -> str:
    """What a cross-validation result depends on: the configuration, the cached features and the folds."""
    folds = hashlib.sha256(manifest[["crop_path", "fold"]].to_csv(index=False).encode()).hexdigest()
    config = {name: value for name, value in config_identity(fs.config).items()
              if name not in NEUTRAL or value != NEUTRAL[name]}
    return cache_key(kind="cv", cv_format=CV_FORMAT, config=config, data_sha256=fs.data_sha256, views=fs.views,
                     folds=folds, faces=len(manifest))


def cached_cross_validate(
    fs: FeatureSet, manifest: pd.DataFrame, keep_fold: int | None = None, cache_dir: str | Path = FEATURES_DIR,
) -> tuple[dict[str, Any], TrainResult | None]:
    """`cross_validate`, read from `cache_dir/cv/` when nothing it depends on changed.

    The cache holds the summary and the head of `keep_fold` (and its history), so a rerun
    trains nothing and gives the same model; with fine-tuning, the kept fold is trained
    again (the same seed gives the same model).
    """
    path = Path(cache_dir) / "cv" / f"{cv_key(fs, manifest)}.json"
    if path.is_file():
        summary = json.loads(path.read_text(encoding="utf-8"))
        kept = None if keep_fold is None else _cached_fold(fs, manifest, keep_fold, path)
        return summary, kept
    summary, kept = cross_validate(fs, manifest, keep_fold)
    if kept is not None and fs.upper is None:
        _save_fold_head(kept, path, keep_fold)
    write_json_atomic(path, summary)
    return summary, kept


def _fold_files(summary_path: Path, fold: int) -> tuple[Path, Path]:
    stem = summary_path.with_suffix("")
    return stem.with_name(f"{stem.name}-fold{fold}.keras"), stem.with_name(f"{stem.name}-fold{fold}-history.json")


def _save_fold_head(result: TrainResult, summary_path: Path, fold: int) -> None:
    head_file, history_file = _fold_files(summary_path, fold)
    with atomic_path(head_file, suffix=".keras") as tmp:
        result.head.save(tmp)
    write_json_atomic(history_file, result.history)


def _cached_fold(fs: FeatureSet, manifest: pd.DataFrame, fold: int, summary_path: Path) -> TrainResult:
    """The kept fold's result from its cached head, or trained again if there is none."""
    head_file, history_file = _fold_files(summary_path, fold)
    if fs.upper is not None or not (head_file.is_file() and history_file.is_file()):
        result = train_fold(fs, manifest, fold)
        if fs.upper is None:
            _save_fold_head(result, summary_path, fold)
        return result
    with tf.distribute.get_strategy().scope():
        head = keras.models.load_model(head_file, compile=False)
    _, val_idx = train_val_indices(manifest["fold"], fold)
    history = json.loads(history_file.read_text(encoding="utf-8"))
    return _fold_result(fs, head, None, history, encode_labels(manifest["label"]), val_idx)


# --------------------------------------------------------------------------- one call for notebooks and the CLI


@dataclass
class Study:
    """What `run_study` computed and saved, for the notebook to show and the CLI to print."""

    run_dir: Path
    saved: str
    """What happened to the run folder: created, unchanged, updated or retrained (runs.save_run)."""
    fs: FeatureSet
    manifest: pd.DataFrame
    result: TrainResult
    cv: dict[str, Any] | None
    end_to_end_crops: int
    end_to_end_gap: float
    """Largest |saved model - cached pipeline| in P(without_mask) over `end_to_end_crops` held-out crops."""
    comparison: pd.DataFrame


END_TO_END_CROPS = 64
END_TO_END_TOLERANCE = 1e-4
"""The saved model must give the cached pipeline's probabilities on held-out crops within this."""


def run_study(
    config: TrainConfig,
    faces_dir: str | Path,
    models_dir: str | Path = MODELS_DIR,
    run_name: str | None = None,
    cross_validate: bool = True,
    compare: Sequence[dict[str, Any]] = (),
    cache_dir: str | Path = FEATURES_DIR,
    verbose: int = 0,
) -> Study:
    """The whole training study, for 02_train and `python -m maskclf train` alike.

    In order: features (cached), 5-fold cross-validation keeping the model of
    `config.val_fold` (or that fold alone), the end-to-end check of the saved model against
    the cached pipeline (RuntimeError if it fails, before anything is saved), the comparison
    of `config` with each variant of `compare`, then the run folder `models_dir/run_name`
    (default: `default_run_name`, which names the configuration and the data by their hash;
    a folder of another configuration is never written into).
    """
    manifest = read_manifest(faces_dir)
    fs, manifest = restrict_faces(prepare_features(manifest, faces_dir, config, cache_dir, verbose), manifest)
    run_dir = Path(models_dir) / (run_name or default_run_name(config, fs.data_sha256))
    if cross_validate:
        cv, result = cached_cross_validate(fs, manifest, config.val_fold, cache_dir)
    else:
        cv, result = None, train_fold(fs, manifest, config.val_fold)
    check = result.val_index[:END_TO_END_CROPS]
    images = np.stack([load_crop(p, config.image_size) for p in manifest["crop_file"].iloc[check]]).astype("float32")
    classes = output_classes(training_labels(manifest, config.labels))
    gap = float(np.abs(p_without_mask(result.model.predict(images, verbose=0), classes)
                       - result.val_probabilities[:len(check)]).max())
    if not gap < END_TO_END_TOLERANCE:
        raise RuntimeError(f"the end-to-end model differs from the cached pipeline by {gap:.2e} (over "
                           f"{END_TO_END_TOLERANCE:g}) on {len(check)} validation crops: their preprocessing disagrees")
    variants = [c for c in compare if dataclasses.replace(config, **_overrides(c)) != config]
    rows = compare_configs(faces_dir, config, variants, cache_dir).reset_index().to_dict("records") if variants else []
    if cv:
        rows.append(cv_row(f"this run: {config_label(config)}", cv, manifest))
    comparison = pd.DataFrame(rows).set_index("configuration") if rows else pd.DataFrame()
    saved = save_result(run_dir, result, fs, manifest, classes, cv, comparison)
    return Study(run_dir, saved, fs, manifest, result, cv, len(check), gap, comparison)


def save_result(
    run_dir: str | Path,
    result: TrainResult,
    fs: FeatureSet,
    manifest: pd.DataFrame,
    classes: dict[str, Any],
    cv: dict[str, Any] | None = None,
    comparison: pd.DataFrame | None = None,
) -> str:
    """Write the run folder (`runs.save_run`): model, config (with `output_classes`), history, metrics, CV scores and
    comparison table; return what happened to it."""
    config = fs.config
    metrics = {**result.metrics, "val_fold": config.val_fold, "n_faces": len(manifest), "n_val": len(result.val_index),
               "data_sha256": fs.data_sha256}
    run_config = {**config.to_dict(), **classes, "data_sha256": fs.data_sha256, "run_id": run_id(config, fs.data_sha256),
                  "weights_id": weights_id(config.weights),
                  "fine_tune_from": fs.upper.name if fs.upper is not None else None}
    oof = None
    if cv is not None:
        metrics["cv"] = {k: cv[k] for k in ("per_fold", "mean", "std")}
        oof = manifest[["crop_path", "source_image", "label", "fold"]].assign(p_without_mask=cv["oof_probability"])
    return save_run(run_dir, result.model, run_config, history=result.history, metrics=metrics,
                    cv_predictions=oof, comparison=comparison)


def cv_row(name: str, cv: dict[str, Any], manifest: pd.DataFrame) -> dict[str, Any]:
    """One line of a comparison table: a configuration's 5-fold mean and spread, and the out-of-fold share of the
    incorrectly worn masks called without_mask (`manifest`: the faces of `cv`, in its order)."""
    row: dict[str, Any] = {"configuration": name}
    for metric in ("accuracy", "roc_auc", "recall_without_mask"):
        row[f"{metric}_mean"] = cv["mean"][metric]
        row[f"{metric}_std"] = cv["std"][metric]
    incorrect = (manifest["original_label"] == INCORRECT).to_numpy()
    row["incorrect_mask_recall"] = float((np.asarray(cv["oof_probability"])[incorrect] >= 0.5).mean()) \
        if incorrect.any() else float("nan")
    return row


def compare_configs(
    faces_dir: str | Path,
    base: TrainConfig,
    variants: Sequence[dict[str, Any]],
    cache_dir: str | Path = FEATURES_DIR,
) -> pd.DataFrame:
    """5-fold CV of `base` updated with each dict of `variants`: one table row per configuration, named by the
    variant's `label` when it has one."""
    manifest = read_manifest(faces_dir)
    rows = []
    for variant in variants:
        overrides = _overrides(variant)
        if "backbone" in overrides:  # another backbone brings its own native input size
            overrides = {"image_size": None, **overrides}
        config = dataclasses.replace(base, **overrides)
        fs, faces = restrict_faces(prepare_features(manifest, faces_dir, config, cache_dir, verbose=0), manifest)
        cv, _ = cached_cross_validate(fs, faces, None, cache_dir)
        rows.append(cv_row(variant.get("label") or config_label(config), cv, faces))
    return pd.DataFrame(rows).set_index("configuration")


def _overrides(variant: Mapping[str, Any]) -> dict[str, Any]:
    """A comparison variant's configuration changes: all of it but its `label`."""
    return {k: v for k, v in variant.items() if k != "label"}


def config_label(config: TrainConfig) -> str:
    """Short name of a configuration, e.g. `efficientnet_lite0-imagenet-ft2-aug1`.

    Non-default pooling, head and labels add `stages` or `bands`, `lbfgs` and `original`.
    """
    weights = "random" if config.weights is None else "imagenet" if config.weights == "imagenet" else "file"
    parts = [config.backbone, weights]
    if config.fine_tune_blocks:
        parts.append(f"ft{config.fine_tune_blocks}")
    if config.augment_views:
        parts.append(f"aug{config.augment_views}")
    if config.jitter_views:
        parts.append(f"jit{config.jitter_views}")
    if config.detector_views:
        parts.append("det")
    if config.min_face:
        parts.append(f"min{config.min_face}px")
    if config.incorrect_weight != 1:
        parts.append(f"incorrect{config.incorrect_weight:g}")
    parts += [value for value, default in ((config.pooling, "avg"), (config.head, "adam"), (config.labels, "binary"))
              if value != default]
    return "-".join(parts)


def config_identity(config: TrainConfig) -> dict[str, Any]:
    """Every field of a configuration as it identifies a result: a weights file by its contents, not its path."""
    return {**config.to_dict(), "weights": weights_id(config.weights)}


def run_id(config: TrainConfig, data_sha256: str) -> str:
    """Short hash of everything that makes a run: every field of the configuration (a weights file by its
    contents) and the extraction's hash. config.json records all of it."""
    blob = {**config_identity(config), "data_sha256": data_sha256}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_name(config: TrainConfig, data_sha256: str) -> str:
    """Run folder name: a readable label and the run's hash, e.g. `efficientnet_lite0-imagenet-ft2-aug1-fold0-3f9a2c1d`."""
    return f"{config_label(config)}-fold{config.val_fold}-{run_id(config, data_sha256)}"


# --------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration of `train`'s options: the ones not given take params.yaml's defaults."""
    return TrainConfig.from_params({**vars(args), "class_weight": False if args.no_class_weight else None})


def run(args: argparse.Namespace) -> int:
    """Run `train` from parsed arguments."""
    from .backbones import BackboneWeightsError
    from .data import DataNotFoundError

    try:
        config = config_from_args(args)
        study_params = stage_defaults("02_train")  # the study's steps: as in 02_train, unless switched off here
        out = Path(args.out) if args.out else None
        study = run_study(config, args.faces, out.parent if out else MODELS_DIR, out.name if out else None,
                          cross_validate=study_params["cross_validate"] and not args.no_cv,
                          compare=[] if args.no_compare else study_params["compare"] or [], verbose=1)
    except (BackboneWeightsError, DataError, DataNotFoundError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fs, m, cv = study.fs, study.result.metrics, study.cv
    print(f"features: {'cache hit' if fs.cache_hit else 'computed'} in {fs.seconds:.1f} s")
    print(f"fold {config.val_fold}: accuracy {m['accuracy']:.4f}, ROC AUC {m['roc_auc']:.4f}, "
          f"recall without_mask {m['recall']['without_mask']:.4f}")
    if cv:
        print("5-fold mean: " + ", ".join(f"{k} {v:.4f}" for k, v in cv["mean"].items()))
        print("5-fold std:  " + ", ".join(f"{k} {v:.4f}" for k, v in cv["std"].items()))
    print(f"end-to-end model vs cached pipeline: max difference {study.end_to_end_gap:.2e} "
          f"over {study.end_to_end_crops} validation crops")
    if len(study.comparison):
        print(study.comparison.round(4).to_string())
    print(f"model: {study.run_dir} ({study.saved})")
    return 0
