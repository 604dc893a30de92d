"""Metrics of a binary mask classifier, computed from one aligned table of labels and scores.

Everything here takes `y_true` (1 = without_mask, the positive class) and `p` (the
model's probability of without_mask) for the same faces in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from . import CLASS_NAMES, POSITIVE
from .answers import ANNOTATED_AS, THREE_WAY
from .data import face_size, size_buckets


def encode_labels(labels: Sequence[str]) -> np.ndarray:
    """Binary label names to 0/1 (1 = without_mask); an unknown name is an error."""
    labels = np.asarray(labels)
    unknown = set(labels.tolist()) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}; expected {CLASS_NAMES}")
    return (labels == POSITIVE).astype(int)


def binary_metrics(y_true: Sequence[int], p: Sequence[float], threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, ROC AUC, AP, Brier, per-class and macro P/R/F1, confusion matrix."""
    y_true, p = np.asarray(y_true, dtype=int), np.asarray(p, dtype=float)
    if y_true.shape != p.shape:
        raise ValueError(f"{len(y_true)} labels but {len(p)} scores")
    y_pred = (p >= threshold).astype(int)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if both else float("nan"),
        "roc_auc": float(skm.roc_auc_score(y_true, p)) if both else float("nan"),
        "average_precision": float(skm.average_precision_score(y_true, p)) if both else float("nan"),
        "brier": float(skm.brier_score_loss(y_true, p)),
        "precision": dict(zip(CLASS_NAMES, map(float, precision))),
        "recall": dict(zip(CLASS_NAMES, map(float, recall))),
        "f1": dict(zip(CLASS_NAMES, map(float, f1))),
        "support": dict(zip(CLASS_NAMES, map(int, support))),
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
    }


FOLD_METRICS = ("accuracy", "roc_auc", "recall_without_mask", "balanced_accuracy")
"""What cross-validation records of each fold, and summarises."""


def fold_metrics(m: dict) -> dict[str, float]:
    """The FOLD_METRICS of one fold, from its `binary_metrics`."""
    flat = {**m, "recall_without_mask": m["recall"][POSITIVE]}
    return {k: flat[k] for k in FOLD_METRICS}


def summarize_folds(per_fold: list[dict], keys: Sequence[str] = FOLD_METRICS) -> pd.DataFrame:
    """Per-fold rows of `keys` plus mean and standard deviation rows."""
    table = pd.DataFrame([{k: f[k] for k in ("fold", *keys)} for f in per_fold]).set_index("fold")
    summary = pd.DataFrame([table.mean(), table.std(ddof=1)], index=["mean", "std"])
    return pd.concat([table, summary])


# --------------------------------------------------------------------------- predictions, aligned


class MisalignedPredictionsError(ValueError):
    """Predictions and labels do not describe the same faces in the same order."""


def prediction_table(faces: pd.DataFrame, seen_paths: Sequence[str], p: Sequence[float], threshold: float = 0.5,
                     three_way: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per face: its manifest fields, label, score and prediction (and the three-way label, when given;
    else None).

    Raises MisalignedPredictionsError unless `seen_paths` lists exactly the faces'
    `crop_file`s in the same order: the error behind a study that reported 0.71 for a
    model at 0.97 (labels and predictions read from two shuffled passes).
    """
    expected = [str(x) for x in faces["crop_file"]]
    if list(map(str, seen_paths)) != expected:
        mismatched = sum(a != b for a, b in zip(seen_paths, expected)) + abs(len(seen_paths) - len(expected))
        raise MisalignedPredictionsError(
            f"{mismatched} of {len(expected)} predictions are not aligned with their labels; "
            "predict over one unshuffled pass and keep each crop's path with its score"
        )
    table = faces.reset_index(drop=True).copy()
    table["y_true"] = encode_labels(table["label"])
    table["p_without_mask"] = np.asarray(p, dtype=float)
    table["predicted"] = np.where(table["p_without_mask"] >= threshold, CLASS_NAMES[1], CLASS_NAMES[0])
    table.attrs["threshold"] = float(threshold)  # the one threshold of every figure made from this table
    table["correct"] = table["predicted"] == table["label"]
    table["three_way"] = list(three_way) if three_way is not None else None
    table["face_px"] = face_size(table)
    table["size_bucket"] = size_buckets(table["face_px"])
    return table


# --------------------------------------------------------------------------- uncertainty


def table_threshold(table: pd.DataFrame, threshold: float | None = None) -> float:
    """The threshold of a `prediction_table` (0.5 for a table made otherwise); ValueError if `threshold`
    is given and differs: one threshold for every figure of an evaluation."""
    own = float(table.attrs.get("threshold", 0.5))
    if threshold is not None and float(threshold) != own:
        raise ValueError(f"threshold {threshold} differs from the prediction table's {own}; "
                         "make the table at the threshold of every figure")
    return own


def photo_resamples(table: pd.DataFrame, n_boot: int, seed: int, group: str = "source_image") -> Iterator[np.ndarray]:
    """`n_boot` bootstrap resamples of `table`'s rows as row indices: whole photos (`group`) drawn with
    replacement, each with all its faces."""
    rng = np.random.default_rng(seed)
    codes, groups = pd.factorize(table[group])
    members = [np.flatnonzero(codes == g) for g in range(len(groups))]
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(groups), len(groups))])


def bootstrap_ci(
    table: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    group: str = "source_image",
    threshold: float | None = None,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of accuracy, balanced accuracy and ROC AUC.

    Resamples source photos (with all their faces), not faces: faces of one photo are
    not independent, and resampling them one by one gives intervals that are too narrow.
    `threshold`: the table's (`table_threshold`); ValueError if another is given.
    """
    threshold = table_threshold(table, threshold)
    y, p = table["y_true"].to_numpy(), table["p_without_mask"].to_numpy()
    stats: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "roc_auc": []}
    for idx in photo_resamples(table, n_boot, seed, group):
        yb, pb = y[idx], p[idx]
        predb = (pb >= threshold).astype(int)
        stats["accuracy"].append(float((predb == yb).mean()))
        if 0 < yb.sum() < len(yb):
            stats["balanced_accuracy"].append(float(skm.balanced_accuracy_score(yb, predb)))
            stats["roc_auc"].append(float(skm.roc_auc_score(yb, pb)))
    tail = (1 - level) / 2 * 100
    return {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in stats.items() if v}


def three_way_metrics(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, group: str = "source_image",
                      level: float = 0.95) -> dict:
    """The three-way answer against the annotated classes: 3x3 confusion matrix (rows: annotated, columns:
    predicted, in THREE_WAY order), recall of each annotated class with a percentile CI from a bootstrap over
    photos, and support. `table` needs `original_label` and `three_way` (prediction_table)."""
    truth = table["original_label"].map(ANNOTATED_AS)
    if truth.isna().any() or table["three_way"].isna().any():
        raise ValueError("three-way metrics need the three annotated classes and a three-way label for every face")
    t, q = truth.map(THREE_WAY.index).to_numpy(), table["three_way"].map(THREE_WAY.index).to_numpy()
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (t, q), 1)
    draws: dict[str, list[float]] = {name: [] for name in THREE_WAY}
    for idx in photo_resamples(table, n_boot, seed, group):
        for k, name in enumerate(THREE_WAY):
            mine = idx[t[idx] == k]
            if len(mine):
                draws[name].append(float((q[mine] == k).mean()))
    tail = (1 - level) / 2 * 100
    support = confusion.sum(axis=1)
    return {
        "labels": list(THREE_WAY),
        "confusion_matrix": confusion.tolist(),
        "recall": {name: float(confusion[k, k] / support[k]) if support[k] else float("nan")
                   for k, name in enumerate(THREE_WAY)},
        "support": {name: int(support[k]) for k, name in enumerate(THREE_WAY)},
        "ci95": {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
                 for name, v in draws.items() if v},
    }


# --------------------------------------------------------------------------- tables for the report


def three_way_recall_table(three_way: dict) -> pd.DataFrame:
    """One row per annotated class of `three_way_metrics`: recall, its 95% interval and the faces."""
    return pd.DataFrame({
        "recall": three_way["recall"],
        "ci95_low": {k: v[0] for k, v in three_way["ci95"].items()},
        "ci95_high": {k: v[1] for k, v in three_way["ci95"].items()},
        "faces": three_way["support"],
    }).reindex(three_way["labels"]).rename_axis("annotated class")


def threshold_table(y_true: Sequence[int], p: Sequence[float], thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> pd.DataFrame:
    """What moving the threshold on P(without_mask) trades: non-compliant faces caught vs false alarms."""
    y_true, p = np.asarray(y_true), np.asarray(p)
    rows = []
    for t in thresholds:
        flagged = p >= t
        tp, fp = int((flagged & (y_true == 1)).sum()), int((flagged & (y_true == 0)).sum())
        rows.append({
            "threshold": t,
            "flagged_faces": int(flagged.sum()),
            "non_compliant_caught": tp,
            "non_compliant_missed": int((y_true == 1).sum()) - tp,
            "false_alarms": fp,
            "recall_without_mask": tp / max(int((y_true == 1).sum()), 1),
            "precision_without_mask": tp / max(int(flagged.sum()), 1),
            "false_alarms_per_1000_masked": 1000 * fp / max(int((y_true == 0).sum()), 1),
            "accuracy": float(((p >= t).astype(int) == y_true).mean()),
        })
    return pd.DataFrame(rows).set_index("threshold")


def calibration_table(y_true: Sequence[int], p: Sequence[float], n_bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability vs observed frequency of without_mask, per probability bin."""
    y_true, p = np.asarray(y_true), np.asarray(p)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    rows = [{"bin": b, "mean_predicted": float(p[bins == b].mean()), "observed": float(y_true[bins == b].mean()),
             "faces": int((bins == b).sum())} for b in range(n_bins) if (bins == b).any()]
    return pd.DataFrame(rows).set_index("bin")


def metrics_by(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Faces, share without_mask, accuracy, error rate and (where defined) ROC AUC per value of `column`."""
    rows = []
    for value, g in table.groupby(column, observed=True):
        both = g["y_true"].nunique() == 2
        rows.append({column: value, "faces": len(g), "share_without_mask": g["y_true"].mean(),
                     "accuracy": g["correct"].mean(), "error_rate": 1 - g["correct"].mean(),
                     "roc_auc": skm.roc_auc_score(g["y_true"], g["p_without_mask"]) if both else np.nan})
    return pd.DataFrame(rows).set_index(column)


def confident_errors(table: pd.DataFrame, n: int | None = None, min_confidence: float = 0.5) -> pd.DataFrame:
    """Faces the model contradicts, most confident first (`confidence_against_label` > min_confidence).

    At 0.5 these are the misclassified faces; at 0.9 and above, candidates for a human to
    re-check as likely label errors.
    """
    confidence = np.where(table["y_true"] == 1, 1 - table["p_without_mask"], table["p_without_mask"])
    out = table.assign(confidence_against_label=confidence)
    out = out[out["confidence_against_label"] > min_confidence]
    out = out.sort_values("confidence_against_label", ascending=False)
    return out if n is None else out.head(n)


def oof_table(cv_predictions: pd.DataFrame, manifest: pd.DataFrame, faces_dir: str | Path, threshold: float = 0.5) -> pd.DataFrame:
    """Out-of-fold cross-validation scores of every face (the run's `cv_predictions.csv`) as a prediction table."""
    return prediction_table(manifest, [str(Path(faces_dir) / c) for c in cv_predictions["crop_path"]],
                            cv_predictions["p_without_mask"], threshold)


def headline_metrics(table: pd.DataFrame, ci: dict[str, tuple[float, float]], run_config: dict, run_metrics: dict,
                     framing: pd.DataFrame | None = None, run_name: str | None = None,
                     three_way: dict | None = None) -> dict:
    """The `reports/metrics.json` document: metrics with CIs, provenance, the CV summary, the framing check and
    (`three_way_metrics`) the three-way answer.

    Every figure is at the table's threshold (`table_threshold`), the one its CIs were computed at.
    """
    m = binary_metrics(table["y_true"], table["p_without_mask"], table_threshold(table))
    cv = run_metrics.get("cv", {})
    return {
        "backbone": run_config.get("backbone"),
        "weights": run_config.get("weights"),
        "split": f"StratifiedGroupKFold(5) by source photo; validation = fold {run_config.get('val_fold')}",
        "n_faces": run_metrics.get("n_faces"),
        "n_val": m["n"],
        "n_val_photos": int(table["source_image"].nunique()),
        "run_name": run_name,
        **{k: m[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "average_precision", "brier",
                             "precision", "recall", "f1", "macro", "confusion_matrix", "threshold")},
        "ci95": {k: list(v) for k, v in ci.items()},
        "cv": {"per_fold": cv.get("per_fold", []), "mean": cv.get("mean", {}), "std": cv.get("std", {})},
        "data_sha256": run_config.get("data_sha256"),
        "framing_accuracy": {} if framing is None else framing["accuracy"].round(4).to_dict(),
        **({"three_way": three_way} if three_way is not None else {}),
    }


# --------------------------------------------------------------------------- provenance


def check_same_data(run_config: dict, faces_dir: str | Path) -> None:
    """Refuse to evaluate a model on crops other than those it was trained and split on."""
    from .data import hash_extraction

    found = hash_extraction(faces_dir)
    if run_config.get("data_sha256") != found:
        raise ValueError(
            f"{faces_dir}: these crops (sha256 {found[:12]}…) are not those the model was trained on "
            f"({str(run_config.get('data_sha256'))[:12]}…); its folds would not be held out. Re-extract with the "
            "same parameters or retrain."
        )
