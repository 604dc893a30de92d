"""Metrics of a binary mask classifier, computed from one aligned table of labels and scores.

Everything here takes `y_true` (1 = without_mask, the positive class) and `p` (the
model's probability of without_mask) for the same faces in the same order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from . import CLASS_NAMES

POSITIVE = CLASS_NAMES[1]


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


def summarize_folds(per_fold: list[dict], keys: Sequence[str] = ("accuracy", "roc_auc", "recall_without_mask")) -> pd.DataFrame:
    """Per-fold rows of `keys` plus mean and standard deviation rows."""
    table = pd.DataFrame([{k: f[k] for k in ("fold", *keys)} for f in per_fold]).set_index("fold")
    summary = pd.DataFrame([table.mean(), table.std(ddof=1)], index=["mean", "std"])
    return pd.concat([table, summary])
