"""Two ways to tell a face from a false alarm on the same backbone features, measured on training folds only.

For the model validated on `--val-fold` (default 0, never read): the detector's candidates in
the other folds' photos (maskclf.candidates), inner 4-fold cross-validation over those folds.

- "verifier": the saved configuration's way, a separate logistic model, face or not;
- "4th class": one logistic model over with_mask, mask_weared_incorrect, without_mask and
  not a face (a candidate face takes its matched face's annotated class), P(face) = 1 - P(not a face).

Each gets: the ROC AUC of its out-of-fold P(face), faces against negatives; then the decision
rule fitted on those out-of-fold scores (candidates.fit_rule) and what it keeps on the training
photos: faces found and false alarms per photo, beside the detector alone.

    python scripts/verifier_attempts.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf.answers import keep_by_rule  # noqa: E402
from maskclf.candidates import balanced_weights, candidate_features, face_probability, fit_rule, photo_candidates  # noqa: E402
from maskclf.data import read_manifest, source_photos_dir  # noqa: E402
from maskclf.detect import CENTERFACE_SCORE  # noqa: E402
from maskclf.features import FEATURES_DIR  # noqa: E402
from maskclf.featureset import prepare_features  # noqa: E402
from maskclf.logreg import Subset, fit_logistic  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.trainconfig import TrainConfig  # noqa: E402

CLASSES = ("with_mask", "mask_weared_incorrect", "without_mask", "not a face")


def out_of_fold_p_face(features: np.ndarray, table: pd.DataFrame, c: float, four_classes: bool) -> np.ndarray:
    """P(face) of every candidate from the inner fit that did not see its fold."""
    folds = sorted(table["fold"].unique())
    example = table["role"].isin(["face", "negative"]).to_numpy()
    is_face = (table["role"] == "face").to_numpy()
    labels = table["class"].to_numpy() if four_classes else is_face.astype(int)
    n_classes = len(CLASSES) if four_classes else 2
    subsets = []
    for j in folds:
        rows = example & (table["fold"] != j).to_numpy()
        if four_classes:
            weight = np.zeros(len(table))
            for k in range(n_classes):
                chosen = rows & (labels == k)
                weight[chosen] = rows.sum() / (n_classes * max(chosen.sum(), 1))
        else:
            weight = balanced_weights(is_face, rows)
        subsets.append(Subset(weight[None]))
    fits = fit_logistic(features, labels, n_classes, c, subsets)
    p_face = np.full(len(table), np.nan)
    for j, fit in zip(folds, fits):
        rows = (table["fold"] == j).to_numpy()
        p = fit.probabilities(np.asarray(features[rows], np.float64))
        p_face[rows] = 1 - p[:, -1] if four_classes else face_probability(fit, features[rows])
    return p_face


def row(name: str, table: pd.DataFrame, p_face: np.ndarray, faces: int, photos: int, seconds: float) -> dict:
    """AUC of P(face) and what the rule fitted on it keeps."""
    is_face = (table["role"] == "face").to_numpy()
    example = table["role"].isin(["face", "negative"]).to_numpy()
    scores = table["score"].to_numpy()
    kept = keep_by_rule(scores, p_face, fit_rule(scores, p_face, is_face, photos))
    return {"way": name, "auc_p_face": roc_auc_score(is_face[example], p_face[example]),
            "faces_found": (kept & is_face).sum() / faces, "false_alarms_per_photo": (kept & ~is_face).sum() / photos,
            "fit_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR), help="extracted faces (default: %(default)s)")
    parser.add_argument("--val-fold", type=int, default=0, help="the held-out fold, never read (default: %(default)s)")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.faces)
    config = TrainConfig.from_params({})
    fs = prepare_features(manifest, args.faces, config, FEATURES_DIR, verbose=0)
    table = photo_candidates(manifest, source_photos_dir(args.faces))
    features = candidate_features(fs, table, source_photos_dir(args.faces), FEATURES_DIR)
    train = np.flatnonzero((table["fold"] != args.val_fold).to_numpy())
    table, features = table.iloc[train].reset_index(drop=True), features[train]
    matched = manifest["original_label"].to_numpy()[table["face_row"].clip(lower=0)]
    table["class"] = np.where(table["role"] == "face", [CLASSES.index(m) for m in matched], len(CLASSES) - 1)
    kept_faces = manifest[manifest["fold"] != args.val_fold]
    faces, photos = len(kept_faces), kept_faces["source_image"].nunique()
    is_face = (table["role"] == "face").to_numpy()
    alone = table["score"].to_numpy() >= CENTERFACE_SCORE
    rows = [{"way": "detector alone", "auc_p_face": float("nan"), "faces_found": (alone & is_face).sum() / faces,
             "false_alarms_per_photo": (alone & ~is_face).sum() / photos, "fit_seconds": 0.0}]
    for name, four in (("verifier (face or not)", False), ("not a face as a 4th class", True)):
        start = time.perf_counter()
        p_face = out_of_fold_p_face(features, table, config.head_c, four)
        rows.append(row(name, table, p_face, faces, photos, time.perf_counter() - start))
    print(f"training folds of fold {args.val_fold}: {photos} photos, {faces} faces, {len(table)} candidates "
          f"({int(is_face.sum())} faces, {int((table['role'] == 'negative').sum())} negatives)\n")
    print(pd.DataFrame(rows).set_index("way").round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
