"""The classes a head is trained on, their loss weights, and what the saved model records about them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import CLASS_NAMES
from .answers import INCORRECT
from .data import DataError
from .evaluate import encode_labels
from .trainconfig import TrainConfig


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


def output_classes(labels: TrainingLabels) -> dict[str, Any]:
    """What the end-to-end model outputs, as config.json records it: `class_names` (the trained classes) and
    `reports_as` (each one -> the binary class it counts as), which maskclf.answers reads."""
    return {"class_names": labels.names,
            "reports_as": {name: CLASS_NAMES[int(np.argmax(row))] for name, row in zip(labels.names, labels.merge)}}
