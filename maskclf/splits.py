"""Leak-free splits: every face of one photo falls on the same side, classes stay balanced."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

N_FOLDS = 5
"""Five folds: holding out one gives the study's 80/20 train/validation split."""


def assign_folds(labels: Sequence, groups: Sequence, n_folds: int = N_FOLDS, seed: int = 42) -> np.ndarray:
    """Fold index (0..n_folds-1) of each face, stratified by label and grouped by source photo."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(np.unique(groups)) < n_folds:
        raise ValueError(f"need at least {n_folds} source photos for {n_folds} folds, got {len(np.unique(groups))}")
    folds = np.full(len(labels), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val_idx] = k
    return folds


def train_val_indices(folds: Sequence[int], val_fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation faces when `val_fold` is held out."""
    folds = np.asarray(folds)
    if val_fold not in set(folds.tolist()):
        raise ValueError(f"fold {val_fold} does not exist (folds: {sorted(set(folds.tolist()))})")
    return np.flatnonzero(folds != val_fold), np.flatnonzero(folds == val_fold)


def fold_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Faces, photos and class shares per fold: the evidence that the split is balanced."""
    table = manifest.groupby("fold").agg(
        photos=("source_image", "nunique"),
        faces=("label", "size"),
        with_mask=("label", lambda s: int((s == "with_mask").sum())),
        without_mask=("label", lambda s: int((s == "without_mask").sum())),
    )
    table["share_faces"] = (table["faces"] / table["faces"].sum()).round(3)
    table["share_without_mask"] = (table["without_mask"] / table["faces"]).round(3)
    return table


def early_stopping_split(labels: Sequence, groups: Sequence, train_idx: np.ndarray, n_folds: int = 10,
                         seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Split training faces into fitting and early-stopping faces, grouped by photo and stratified.

    About 1/n_folds of the training photos decide when to stop, so the held-out fold that is
    reported never influences training (not even the choice of epoch).
    """
    labels, groups = np.asarray(labels)[train_idx], np.asarray(groups)[train_idx]
    inner = assign_folds(labels, groups, n_folds=min(n_folds, max(len(np.unique(groups)), 2)), seed=seed)
    return train_idx[inner != 0], train_idx[inner == 0]
