"""Grouped, stratified, reproducible folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskclf.splits import assign_folds, fold_table, train_val_indices


def _faces(n_photos: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_photos):
        for _ in range(int(rng.integers(1, 8))):
            rows.append({"source_image": f"p{p}.png", "label": "without_mask" if rng.random() < 0.2 else "with_mask"})
    return pd.DataFrame(rows)


def test_no_photo_in_two_folds_and_every_face_assigned():
    m = _faces()
    m["fold"] = assign_folds(m["label"], m["source_image"])
    assert set(m["fold"]) == {0, 1, 2, 3, 4}
    assert m.groupby("source_image")["fold"].nunique().max() == 1


def test_stratified_close_to_the_overall_share():
    m = _faces(400)
    m["fold"] = assign_folds(m["label"], m["source_image"])
    table = fold_table(m)
    overall = (m["label"] == "without_mask").mean()
    assert (table["share_without_mask"] - overall).abs().max() < 0.03
    assert (table["share_faces"] - 0.2).abs().max() < 0.03


def test_seeded_and_reproducible():
    m = _faces()
    a = assign_folds(m["label"], m["source_image"], seed=1)
    b = assign_folds(m["label"], m["source_image"], seed=1)
    c = assign_folds(m["label"], m["source_image"], seed=2)
    assert (a == b).all() and (a != c).any()


def test_train_val_indices_partition():
    folds = np.array([0, 1, 2, 0, 3, 4, 1])
    train, val = train_val_indices(folds, 0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(7))
    assert val.tolist() == [0, 3]
    with pytest.raises(ValueError, match="fold 7"):
        train_val_indices(folds, 7)


def test_too_few_photos():
    with pytest.raises(ValueError, match="source photos"):
        assign_folds(["a", "b", "a"], ["x", "y", "x"])


def test_early_stopping_split_stays_inside_training_photos():
    from maskclf.splits import early_stopping_split

    m = _faces(300)
    m["fold"] = assign_folds(m["label"], m["source_image"])
    train, val = train_val_indices(m["fold"], 0)
    fit, stop = early_stopping_split(m["label"], m["source_image"], train)
    assert sorted(np.concatenate([fit, stop]).tolist()) == sorted(train.tolist())
    assert not set(m["source_image"].iloc[stop]) & set(m["source_image"].iloc[fit])
    assert not set(stop) & set(val)
    assert 0.05 < len(stop) / len(train) < 0.15
