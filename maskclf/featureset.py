"""The feature set: the frozen backbone(s) built for a configuration and their cached outputs for every crop
(the cache itself is maskclf.features)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from . import detector_views
from .augment import view_names
from .backbones import get_backbone, weights_id
from .data import face_size, hash_extraction, source_photos_dir
from .fastpass import batch_invariant, feature_dtype, feature_precision
from .features import FEATURES_DIR, KnownRows, cached_outputs, view_cache_files
from .framing import jittered_loader
from .model import run_batched
from .network import pooled_features, pooling_columns, split_at_block, stage_outputs
from .trainconfig import TrainConfig


@dataclass
class FeatureSet:
    """The frozen parts of the backbone(s) and their cached outputs for every crop."""

    config: TrainConfig
    frozen: keras.Model  # raw 0-255 crop -> activations at the cut, or pooled features without fine-tuning
    upper: keras.Model | None  # activations at the cut -> last feature map (None: no fine-tuning)
    activations: np.ndarray | None  # (views, faces, ...) outputs of `frozen`; None once released (without_arrays)
    pooled: np.ndarray | None  # (views, faces, features): the head's input, globally pooled; None once released
    data_sha256: str
    cache_hit: bool
    seconds: float
    views: list[str] = field(default_factory=list)
    view_weight: np.ndarray | None = None  # (views, faces) 1/0: whether a face has that view (None: every face)
    precision: str = "float32"  # of the backbone pass (maskclf.fastpass)
    view_files: list[Path] | None = None
    """Each view's cache file, of every face of the extraction, where it holds exactly `frozen`'s outputs and a face's
    outputs stand for it in any pass (one backbone, its pooling cached as it is, no fine-tuning, a batch-invariant
    pass): a later pass over crops that are the same reads them there (`features.KnownRows`). None elsewhere."""

    def available(self) -> np.ndarray:
        """(views, faces) 1.0 where the face has the view, 0.0 where it has none (a missed detector view)."""
        return np.ones(self.pooled.shape[:2]) if self.view_weight is None else self.view_weight

    def original_view(self, idx: np.ndarray) -> np.ndarray:
        """The pooled features of faces `idx` in their original view, in float32 (widened where they are held in
        bfloat16): what a Keras head takes."""
        return np.asarray(self.pooled[0, idx], np.float32)

    def summary(self) -> str:
        """The cached array's shape and size, the pooled features' shape and the views, in words."""
        return (f"cached array {self.activations.shape} ({self.activations.nbytes / 2**20:.0f} MiB); "
                f"pooled features {self.pooled.shape}; views {self.views}")

    def without_arrays(self) -> FeatureSet:
        """This feature set without its cached arrays (`activations` and `pooled` None), which are then freed
        unless held elsewhere: the backbone, configuration and provenance stay."""
        return dataclasses.replace(self, activations=None, pooled=None)


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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
    views = config_views(config)
    jitter = [view for view in views if view.startswith("jitter")]
    photos = source_photos_dir(faces_dir) if jitter else None
    loaders = {view: jittered_loader(manifest, photos, view, config.train_seed, size) for view in jitter}
    recipes, view_weight, boxes = {}, None, None
    if config.detector_views:
        photos = source_photos_dir(faces_dir)
        boxes = detector_views.detector_boxes(manifest, photos)
        loaders[detector_views.VIEW] = detector_views.detector_loader(manifest, photos, boxes, size)
        recipes[detector_views.VIEW] = detector_views.recipe()
        view_weight = np.ones((len(views), len(manifest)))
        view_weight[-1] = detector_views.available(boxes)
    parts, hits, precision, view_files = [], [], feature_precision(), None
    paths = list(manifest["crop_file"])
    for name, branch, (superset, columns) in zip(config.backbones, branches, supersets):
        stored = branch if superset is None else superset
        key = {"backbone": name, "weights": weights_id(config.weights), "cut": first or "pooled",
               "pooling": config.pooling if superset is None else "bands", "data_sha256": data_sha256,
               "init_seed": config.train_seed if config.weights is None else None}
        where = {"cache_dir": cache_dir, "views": views, "seed": config.train_seed, "loaders": loaders,
                 "recipes": recipes, "precision": precision}
        files = view_cache_files(paths, size, key, **where) if batch_invariant(precision) else None
        acts, hit = cached_outputs(keras.Model(inputs, stored), paths, size, key,
                                   batch_size=config.batch_size, verbose=verbose,
                                   dtype=np.float32 if upper is not None else feature_dtype(precision),
                                   known=_placeholders_known(manifest, faces_dir, views, files, boxes), **where)
        parts.append(acts if columns is None else np.ascontiguousarray(acts[..., columns]))
        hits.append(hit)
        if len(branches) == 1 and superset is None and upper is None:
            view_files = files
    acts = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    pooled = acts if upper is None else pool_upper(upper, acts, config.batch_size)
    return FeatureSet(config, frozen, upper, acts, pooled, data_sha256, all(hits), time.perf_counter() - t0, views,
                      view_weight, precision, view_files)


def _placeholders_known(manifest: pd.DataFrame, faces_dir: str | Path, views: list[str], files: list[Path] | None,
                        boxes: np.ndarray | None) -> dict[str, KnownRows]:
    """`cached_outputs`' known rows for one model: the detector view's placeholders, read from the original view's
    cache file (`detector_views.placeholder_rows`). `files`: the views' cache files, None where the pass may not lend
    rows (`fastpass.batch_invariant`)."""
    if files is None or boxes is None or "none" not in views:
        return {}
    known = detector_views.placeholder_rows(manifest, boxes, faces_dir, files[views.index("none")])
    return {} if known is None else {detector_views.VIEW: known}


def config_views(config: TrainConfig) -> list[str]:
    """The views `config` caches for every crop, in their order: the original, the augmented views, the jittered
    re-cuts, the detector's view."""
    if config.detector_views not in (0, 1):
        raise ValueError(f"detector_views must be 0 or 1, got {config.detector_views!r}")
    return (view_names(config.augment_views) + [f"jitter{i}" for i in range(1, config.jitter_views + 1)]
            + [detector_views.VIEW] * config.detector_views)


SAME_PASS = ("backbone", "weights", "image_size", "pooling", "train_seed", "fine_tune_blocks")
"""The options that decide a cached view's features: configurations equal on these share the views they both have
(a view's seed is its place in `config_views`)."""


def derived_features(base: FeatureSet, config: TrainConfig) -> FeatureSet | None:
    """`config`'s feature set as a slice of `base`'s arrays (no backbone pass, no read, no copy), when its views are
    the first of `base`'s and its backbone pass is the same (SAME_PASS, no fine-tuning); else None.

    `base` must hold every face of the extraction (not `restrict_faces`'d)."""
    same = all(getattr(config, name) == getattr(base.config, name) for name in SAME_PASS)
    views = config_views(config)
    if not same or base.upper is not None or views != base.views[:len(views)]:
        return None
    k = len(views)
    weight = None if base.view_weight is None or detector_views.VIEW not in views else base.view_weight[:k]
    return dataclasses.replace(base, config=config, activations=base.activations[:k], pooled=base.pooled[:k],
                               cache_hit=True, seconds=0.0, views=views, view_weight=weight,
                               view_files=None if base.view_files is None else base.view_files[:k])


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


def restrict_faces(fs: FeatureSet, manifest: pd.DataFrame) -> tuple[FeatureSet, pd.DataFrame]:
    """Only the faces of at least `fs.config.min_face` pixels (short side), with their cached features.

    Folds stay as assigned (grouped by photo), so a restricted run is validated on the same photos.
    """
    if not fs.config.min_face:
        return fs, manifest
    keep = kept_faces(manifest, fs.config.min_face)
    subset = dataclasses.replace(fs, activations=fs.activations[:, keep], pooled=fs.pooled[:, keep],
                                 view_weight=None if fs.view_weight is None else fs.view_weight[:, keep])
    return subset, manifest.iloc[keep].reset_index(drop=True)


def kept_faces(manifest: pd.DataFrame, min_face: int) -> np.ndarray:
    """The rows of `manifest` whose faces are at least `min_face` pixels (short side); every row for 0."""
    return np.flatnonzero(face_size(manifest) >= min_face) if min_face else np.arange(len(manifest))


def pool_upper(upper: keras.Model, activations: np.ndarray, batch_size: int) -> np.ndarray:
    """Globally pooled output of the (frozen) upper part for every view."""
    pooled = keras.Sequential([upper, keras.layers.GlobalAveragePooling2D()])
    # direct calls, not predict(): no tf.function retracing for every new model
    return np.stack([run_batched(lambda b: pooled(b, training=False), a, batch_size) for a in activations])
