"""Training on grouped folds: one fold's model and metrics, 5-fold cross-validation, and its cache under
`cache_dir/cv/` (the summary and the kept fold's head)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from .evaluate import binary_metrics, encode_labels, fold_metrics, summarize_folds
from .fastpass import precision_key
from .features import FEATURES_DIR, cache_key
from .featureset import FeatureSet, config_views, pool_upper
from .fsutil import atomic_path, write_json_atomic
from .heads import fine_tune, fit_heads_together
from .labels import training_labels
from .model import run_batched
from .network import end_to_end_model
from .splits import early_stopping_split, train_val_indices
from .trainconfig import TrainConfig, config_identity


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


def train_folds(fs: FeatureSet, manifest: pd.DataFrame, val_folds: Sequence[int],
                verbose: int = 0) -> list[TrainResult]:
    """For each of `val_folds`, the head (and fine-tuning) with that fold held out; metrics on its faces.

    Early stopping watches a grouped tenth of the training photos, never the held-out fold;
    the "lbfgs" head does not stop early but also leaves that tenth out, so that both heads
    learn from the same faces and their curves are comparable. The "lbfgs" folds share their
    passes over the features, not their parameters: a fold trained with others reaches the
    optimum it reaches alone, to rounding.
    """
    return train_folds_together([(fs, manifest, val_folds)], verbose)[0]


def train_folds_together(studies: Sequence[tuple[FeatureSet, pd.DataFrame, Sequence[int]]],
                         verbose: int = 0) -> list[list[TrainResult]]:
    """`train_folds` of several (feature set, faces, folds); the "lbfgs" folds of feature sets that are the first
    views of one array share their passes over it (heads.fit_heads_together)."""
    tasks, held_out, stopping = [], [], {}
    for fs, manifest, val_folds in studies:
        splits, validation = [], []
        faces = (tuple(manifest["label"]), tuple(manifest["source_image"]))
        for k in val_folds:
            train_idx, val_idx = train_val_indices(manifest["fold"], k)
            validation.append(val_idx)
            key = (faces, train_idx.tobytes(), fs.config.train_seed)  # configurations on the same faces share it
            if key not in stopping:
                stopping[key] = early_stopping_split(manifest["label"], manifest["source_image"], train_idx,
                                                     seed=fs.config.train_seed)
            splits.append(stopping[key])
        tasks.append((fs, training_labels(manifest, fs.config.labels), encode_labels(manifest["label"]), splits))
        held_out.append(validation)
    results = []
    for (fs, _, y, splits), validation, heads in zip(tasks, held_out, fit_heads_together(tasks, verbose)):
        results.append([])
        for val_idx, (fit_idx, stop_idx), (head, history) in zip(validation, splits, heads):
            histories = {"head": history}
            upper = None
            if fs.upper is not None:
                upper, histories["fine_tune"] = fine_tune(fs, head, y, fit_idx, stop_idx, verbose)
            results[-1].append(_fold_result(fs, head, upper, histories, y, val_idx))
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
        features = fs.original_view(idx)
    else:
        features = pool_upper(upper, fs.activations[:1, idx], fs.config.batch_size)[0]
    return run_batched(lambda b: head(b, training=False), features)[:, 1]


def cross_validate(
    fs: FeatureSet, manifest: pd.DataFrame, keep_fold: int | None = None,
) -> tuple[dict[str, Any], TrainResult | None]:
    """One model per grouped fold: per-fold metrics, mean and spread, out-of-fold scores.

    Returns the summary and the trained result of `keep_fold` (None if not asked for).
    """
    return cross_validate_together([(fs, manifest, keep_fold)])[0]


def cross_validate_together(
    studies: Sequence[tuple[FeatureSet, pd.DataFrame, int | None]],
) -> list[tuple[dict[str, Any], TrainResult | None]]:
    """`cross_validate` of several (feature set, faces, kept fold), their "lbfgs" folds sharing passes where they
    can (train_folds_together)."""
    folds = [[int(k) for k in sorted(manifest["fold"].unique())] for _, manifest, _ in studies]
    trained = train_folds_together([(fs, manifest, k) for (fs, manifest, _), k in zip(studies, folds)])
    return [_summary(manifest, keep_fold, k, results)
            for (_, manifest, keep_fold), k, results in zip(studies, folds, trained)]


def _summary(manifest: pd.DataFrame, keep_fold: int | None, folds: list[int],
             results: list[TrainResult]) -> tuple[dict[str, Any], TrainResult | None]:
    per_fold, oof, kept = [], np.full(len(manifest), np.nan), None
    for k, result in zip(folds, results):
        oof[result.val_index] = result.val_probabilities
        kept = result if k == keep_fold else kept
        per_fold.append({"fold": k, **fold_metrics(result.metrics),
                         "epochs": sum(len(h["loss"]) for h in result.history.values())})
    table = summarize_folds(per_fold)
    summary = {"per_fold": per_fold, "mean": table.loc["mean"].to_dict(), "std": table.loc["std"].to_dict(),
               "oof_probability": oof.tolist()}
    return summary, kept


CV_FORMAT = 5
"""Bumped when cross-validation changes in a way its cached results cannot show (2: fold-batched L-BFGS; 3: L-BFGS
keeps 50 correction pairs; 4: the folds' standardisations and the gradient's sums by matrix products; 5: the pairs
are kept in float32, logreg.PAIRS_DTYPE)."""


NEUTRAL = {"incorrect_weight": 1.0, "detector_views": 0}
"""Options added after cross-validation caches were first made, at the value that computes what was computed
before they existed: left out of the cache key at that value, so those caches stay valid."""


NOT_CROSS_VALIDATED = {"verifier"}
"""Options that change the saved model but not the cross-validation of the mask head: never in its cache key."""


def cv_key(config: TrainConfig, data_sha256: str, precision: str, manifest: pd.DataFrame) -> str:
    """What a cross-validation result depends on: the configuration (its views among it), the extraction's hash, the
    backbone pass's precision (with them, the cached features) and the folds of `manifest`'s faces."""
    folds = hashlib.sha256(manifest[["crop_path", "fold"]].to_csv(index=False).encode()).hexdigest()
    identity = {name: value for name, value in config_identity(config).items()
                if name not in NOT_CROSS_VALIDATED and (name not in NEUTRAL or value != NEUTRAL[name])}
    return cache_key(kind="cv", cv_format=CV_FORMAT, config=identity, data_sha256=data_sha256,
                     views=config_views(config), folds=folds, faces=len(manifest), **precision_key(precision))


def _summary_path(config: TrainConfig, data_sha256: str, precision: str, manifest: pd.DataFrame,
                  cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "cv" / f"{cv_key(config, data_sha256, precision, manifest)}.json"


def cached_summary(config: TrainConfig, data_sha256: str, precision: str, manifest: pd.DataFrame,
                   cache_dir: str | Path = FEATURES_DIR) -> dict[str, Any] | None:
    """The cached cross-validation summary of `config` on `manifest`'s faces (None: not cached), without its
    features: a comparison row that is cached reads no feature cache."""
    return _read_summary(_summary_path(config, data_sha256, precision, manifest, cache_dir))


def _read_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def cached_cross_validate(
    fs: FeatureSet, manifest: pd.DataFrame, keep_fold: int | None = None, cache_dir: str | Path = FEATURES_DIR,
) -> tuple[dict[str, Any], TrainResult | None]:
    """`cross_validate`, read from `cache_dir/cv/` when nothing it depends on changed.

    The cache holds the summary and the head of `keep_fold` (and its history), so a rerun
    trains nothing and gives the same model; with fine-tuning, the kept fold is trained
    again (the same seed gives the same model).
    """
    return cached_cross_validate_together([(fs, manifest, keep_fold)], cache_dir)[0]


def cached_cross_validate_together(
    studies: Sequence[tuple[FeatureSet, pd.DataFrame, int | None]], cache_dir: str | Path = FEATURES_DIR,
) -> list[tuple[dict[str, Any], TrainResult | None]]:
    """`cached_cross_validate` of several (feature set, faces, kept fold): those not cached are cross-validated
    together (`cross_validate_together`), each cached on its own."""
    paths = [_summary_path(fs.config, fs.data_sha256, fs.precision, manifest, cache_dir) for fs, manifest, _ in studies]
    done: list[tuple[dict[str, Any], TrainResult | None] | None] = [None] * len(studies)
    for i, ((fs, manifest, keep_fold), path) in enumerate(zip(studies, paths)):
        summary = _read_summary(path)
        if summary is not None:
            done[i] = summary, None if keep_fold is None else _cached_fold(fs, manifest, keep_fold, path)
    missing = [i for i, result in enumerate(done) if result is None]
    fresh = cross_validate_together([studies[i] for i in missing]) if missing else []
    for i, (summary, kept) in zip(missing, fresh):
        fs, _, keep_fold = studies[i]
        if kept is not None and fs.upper is None:
            _save_fold_head(kept, paths[i], keep_fold)
        write_json_atomic(paths[i], summary)
        done[i] = summary, kept
    return done


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
