"""Fitting heads on cached features (Adam with early stopping, or L-BFGS for every fold at once), and
fine-tuning the top blocks."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from . import CLASS_NAMES
from .features import untuned
from .featureset import FeatureSet
from .labels import TrainingLabels, head_class_weights
from .logreg import LinearFit, Subset, fit_logistic, standardisation
from .network import build_head, compile_model, with_merge
from .trainconfig import TrainConfig


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return untuned(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _train_views(values: np.ndarray, y: np.ndarray, idx: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every view of the training faces that they have (`available`: views x faces) as training samples, in float32."""
    keep = available[:, idx].reshape(-1) > 0
    x = values[:, idx].reshape((-1, *values.shape[2:]))[keep]
    return x.astype(np.float32, copy=False), np.tile(y[idx], values.shape[0])[keep]


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


Split = tuple[np.ndarray, np.ndarray]
"""(training faces, recorded faces) of one head."""


def fit_heads(fs: FeatureSet, labels: TrainingLabels, y: np.ndarray, splits: Sequence[Split],
              verbose: int = 0) -> list[tuple[keras.Model, dict[str, list[float]]]]:
    """One head per (training faces, recorded faces) split, on pooled features (all views); they report CLASS_NAMES.

    `labels` are the classes the heads train on; `y` the binary labels. The recorded faces
    decide early stopping ("adam") or are only recorded per iteration ("lbfgs"). The "lbfgs"
    heads of all splits are fitted together, in shared passes over the features (maskclf.logreg).
    """
    return fit_heads_together([(fs, labels, y, splits)], verbose)[0]


def fit_heads_together(tasks: Sequence[tuple[FeatureSet, TrainingLabels, np.ndarray, Sequence[Split]]],
                       verbose: int = 0) -> list[list[tuple[keras.Model, dict[str, list[float]]]]]:
    """`fit_heads` of several (feature set, labels, y, splits): the "lbfgs" heads of feature sets that are the
    first views of one array, with the same faces, classes and C, are all fitted in the same passes over it."""
    heads: list[list | None] = [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}
    for i, (fs, labels, y, splits) in enumerate(tasks):
        if fs.config.head != "lbfgs":
            heads[i] = [_adam_head(fs, labels, train_idx, val_idx, verbose) for train_idx, val_idx in splits]
            continue
        key = (id(_whole_array(fs.pooled)), fs.config.head_c, tuple(labels.names), labels.values.tobytes(),
               labels.merge.tobytes(), y.tobytes())
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        fits = iter(_fit_logistic_heads([tasks[i] for i in members]))
        for i in members:
            labels = tasks[i][1]
            heads[i] = [_logistic_head(next(fits), labels) for _ in tasks[i][3]]
    return heads


def _whole_array(a: np.ndarray) -> np.ndarray:
    """The array that `a` is the first views of (`a` itself when it owns its data)."""
    whole = a.base if isinstance(a.base, np.ndarray) else a
    same_start = whole.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    return whole if same_start and whole.shape[1:] == a.shape[1:] and whole.flags.c_contiguous else a


def _fit_logistic_heads(tasks: Sequence[tuple[FeatureSet, TrainingLabels, np.ndarray, Sequence[Split]]]
                        ) -> list[LinearFit]:
    """The "lbfgs" heads of every split of `tasks` (first views of one array, same labels and C), in order."""
    fs, labels, y, _ = tasks[0]
    x = _whole_array(fs.pooled)
    subsets = []
    for task_fs, task_labels, _, splits in tasks:
        n_views = task_fs.pooled.shape[0]
        for train_idx, val_idx in splits:
            weight = np.zeros(x.shape[:2])
            per_class = head_class_weights(task_labels.values[train_idx], task_labels.names, task_fs.config)
            weight[:n_views, train_idx] = 1.0 if per_class is None else \
                np.array(list(per_class.values()))[task_labels.values[train_idx]]
            weight[:n_views] *= task_fs.available()
            subsets.append(Subset(weight, val_idx))
    return fit_logistic(x, labels.values, len(labels.names), fs.config.head_c, subsets, val_labels=y,
                        merge=labels.merge)


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
        history = _fit(core, x, lt, fs.original_view(val_idx), labels.values[val_idx], config, config.epochs, verbose,
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
