"""Each report's closing sentences follow its numbers."""

from __future__ import annotations

import pandas as pd

from maskclf import conclusions


def _headline(accuracy: float, framing_worst: float) -> dict:
    return {"n_val": 815, "accuracy": accuracy, "ci95": {"accuracy": [accuracy - 0.01, accuracy + 0.01]},
            "recall": {"without_mask": 0.95}, "threshold": 0.5,
            "framing_accuracy": {"annotated box": 0.98, "top 30% removed": framing_worst, "10% tighter": 0.975},
            "cv": {"mean": {"accuracy": 0.9757, "recall_without_mask": 0.944, "roc_auc": 0.9938}},
            "three_way": {"recall": {"mask_incorrect": 0.4}, "support": {"mask_incorrect": 25}}}


def test_the_evaluation_conclusion_changes_with_its_numbers_and_says_which_targets_are_met():
    text = conclusions.evaluation(_headline(0.9706, 0.9671))
    assert "right on 97.1%" in text and "(top 30% removed) loses 1.29 points" in text
    assert "5-fold accuracy: 0.9757 against >= 0.98: **missed by 0.0043**" in text
    assert "accuracy points lost: 1.2900 against <= 1: **missed by 0.2900**" in text
    assert "40.0% of the 25 incorrectly worn masks" in text
    better = conclusions.evaluation(_headline(0.9806, 0.975))
    assert "right on 98.1%" in better and "loses 0.50 points" in better and "lost: 0.5000 against <= 1: **met**" in better
    framing = pd.DataFrame({"recall_without_mask": [0.957, 0.871, 0.95]},
                           index=["annotated box", "top 30% removed", "10% tighter"])
    assert "falls most under 'top 30% removed': 95.7% -> 87.1%" in conclusions.evaluation(_headline(0.97, 0.96), framing)


def test_the_training_and_error_conclusions_compare_with_the_study_and_check_the_incorrect_mask():
    comparison = pd.DataFrame(
        {"accuracy_mean": [0.9583, 0.9757], "accuracy_std": [0.004, 0.003], "recall_without_mask_mean": [0.90, 0.944],
         "roc_auc_mean": [0.985, 0.9938], "incorrect_mask_recall": [0.60, 0.756]},
        index=pd.Index(["the study's model", "this run"], name="configuration"))
    text = conclusions.training(comparison)
    assert "0.9757 ± 0.0030, +1.74 points against \"the study's model\"" in text and "75.6%" in text
    assert "incorrectly worn masks called without_mask, out of fold: 0.7560 against >= 0.85: **missed" in text
    by_size = pd.DataFrame({"faces": [1300, 900], "error_rate": [0.06, 0.01]}, index=["<16 px", ">=64 px"])
    by_class = pd.DataFrame({"faces": [123], "accuracy": [0.87]}, index=["mask_weared_incorrect"])
    whole = pd.DataFrame({"recall": [0.806], "detected_and_correct": [0.785]},
                         index=pd.MultiIndex.from_tuples([("all", "all")], names=["group", "value"]))
    errors = conclusions.error_analysis(by_size, by_class, whole)
    assert "faces <16 px are wrong most often (6.0% of 1,300)" in errors and "87.0% of the time" in errors
    assert "0.8700 against >= 0.85: **met**" in errors and "found and classified right: 0.7850 against >= 0.87" in errors
    manifest = pd.DataFrame({"source_image": ["a", "a", "b"], "label": ["with_mask", "without_mask", "without_mask"],
                             "original_label": ["with_mask", "mask_weared_incorrect", "without_mask"],
                             "fold": [0, 0, 1], "width": [10, 40, 40], "height": [12, 40, 40]})
    assert "3 faces from 2 photos; 2 of 3 (66.7%) are without a mask, 1 of them" in conclusions.extraction(manifest)
