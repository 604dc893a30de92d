"""The closing "What this shows" of each report, written from its numbers: a sentence changes when a number does.

Each function takes what its notebook computed and returns Markdown. TARGETS are the study's
goals; every report that measures one says whether it is met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd


@dataclass(frozen=True)
class Target:
    """A goal on one figure: `value >= goal` (or <= when not `higher_is_better`)."""

    name: str
    goal: float
    higher_is_better: bool = True

    def line(self, value: float) -> str:
        """"- name: 0.9757 against >= 0.98: missed by 0.0043." (Markdown list item)."""
        met = value >= self.goal if self.higher_is_better else value <= self.goal
        sign = ">=" if self.higher_is_better else "<="
        verdict = "met" if met else f"missed by {abs(value - self.goal):.4f}"
        return f"- {self.name}: {value:.4f} against {sign} {self.goal:g}: **{verdict}**."


TARGETS = {
    "cv_accuracy": Target("5-fold accuracy", 0.98),
    "cv_recall": Target("5-fold recall of without_mask", 0.96),
    "cv_auc": Target("5-fold ROC AUC", 0.996),
    "framing_loss": Target("worst framing re-cut, accuracy points lost", 1.0, higher_is_better=False),
    "incorrect_oof": Target("incorrectly worn masks called without_mask, out of fold", 0.85),
    "whole_photo": Target("fold 0, whole photos: faces found and classified right", 0.87),
    "whole_photo_32": Target("fold 0, whole photos: faces of 32 px and more found and classified right", 0.95),
    "found": Target("fold 0, whole photos: faces found", 0.90),
    "found_32": Target("fold 0, whole photos: faces of 32 px and more found", 0.97),
    "found_16": Target("fold 0, whole photos: faces under 16 px found", 0.75),
    "false_alarms": Target("fold 0, whole photos: false alarms per photo", 0.5, higher_is_better=False),
}
"""The study's targets, by the figure each is checked on."""


def share(part: int, whole: int) -> str:
    """"3,232 of 4,072 (79.4%)"."""
    return f"{part:,} of {whole:,} ({100 * part / whole:.1f}%)" if whole else f"{part:,} of 0"


def extraction(manifest: pd.DataFrame) -> str:
    """What the data set holds and how it was split."""
    n, photos = len(manifest), manifest["source_image"].nunique()
    without = int((manifest["label"] == "without_mask").sum())
    incorrect = int((manifest["original_label"] == "mask_weared_incorrect").sum())
    per_fold = manifest["fold"].value_counts()
    small = int((manifest[["width", "height"]].min(axis=1) < 16).sum())
    return (f"**What this shows.** {n:,} faces from {photos:,} photos; {share(without, n)} are without a mask, "
            f"{incorrect:,} of them masks worn incorrectly. {share(small, n)} faces are under 16 px. The "
            f"{len(per_fold)} folds, grouped by photo, hold {per_fold.min():,} to {per_fold.max():,} faces each.")


def training(comparison: pd.DataFrame) -> str:
    """How this run compares with the study's model (the ablation's first row) and against the targets."""
    if comparison.empty:
        return "**What this shows.** No cross-validation was run."
    first, this = comparison.iloc[0], comparison.iloc[-1]
    gain = 100 * (this["accuracy_mean"] - first["accuracy_mean"])
    lines = [f"**What this shows.** This run's 5-fold accuracy is {this['accuracy_mean']:.4f} ± "
             f"{this['accuracy_std']:.4f}, {gain:+.2f} points against {first.name!r} ({first['accuracy_mean']:.4f}); "
             f"it calls {this['incorrect_mask_recall']:.1%} of the incorrectly worn masks without_mask out of fold "
             f"(that row: {first['incorrect_mask_recall']:.1%}).", "",
             TARGETS["cv_accuracy"].line(this["accuracy_mean"]), TARGETS["cv_recall"].line(this["recall_without_mask_mean"]),
             TARGETS["cv_auc"].line(this["roc_auc_mean"]), TARGETS["incorrect_oof"].line(this["incorrect_mask_recall"])]
    return "\n".join(lines)


def evaluation(headline: Mapping[str, Any], framing: pd.DataFrame | None = None) -> str:
    """The validation fold's figures with their intervals, the framing check (`framing_table`, for the recall of
    without_mask under each re-cut) and the targets it measures."""
    ci = headline.get("ci95", {})
    acc = headline["accuracy"]
    low, high = ci.get("accuracy", (acc, acc))
    recuts = headline.get("framing_accuracy") or {}
    base = recuts.get("annotated box")
    lines = [f"**What this shows.** On the {headline['n_val']:,} faces of the validation photos the model is right on "
             f"{acc:.1%} (95% interval {low:.1%} to {high:.1%}, over photos); it finds "
             f"{headline['recall']['without_mask']:.1%} of the unmasked faces at threshold {headline['threshold']:g}."]
    if recuts and base is not None:
        worst_name, worst = min(recuts.items(), key=lambda kv: kv[1])
        loss = 100 * (base - worst)
        lines[0] += f" Re-cut the way a detector might, the worst case ({worst_name}) loses {loss:.2f} points."
    if framing is not None and "recall_without_mask" in framing:
        recall = framing["recall_without_mask"]
        worst = recall.drop("annotated box").idxmin()
        lines[0] += (f" The recall of without_mask falls most under {worst!r}: {recall['annotated box']:.1%} -> "
                     f"{recall[worst]:.1%}.")
    three = headline.get("three_way")
    if three:
        recall = three["recall"]["mask_incorrect"]
        lines[0] += (f" As three answers, {recall:.1%} of the {three['support']['mask_incorrect']} incorrectly worn "
                     f"masks are called mask_incorrect.")
    cv = headline.get("cv", {}).get("mean", {})
    lines.append("")
    if cv:
        lines += [TARGETS["cv_accuracy"].line(cv["accuracy"]), TARGETS["cv_recall"].line(cv["recall_without_mask"]),
                  TARGETS["cv_auc"].line(cv["roc_auc"])]
    if recuts and base is not None:
        lines.append(TARGETS["framing_loss"].line(100 * (base - min(recuts.values()))))
    return "\n".join(lines)


def error_analysis(by_size: pd.DataFrame, by_class: pd.DataFrame, whole: pd.DataFrame | None = None,
                   false_alarms: float | None = None, alone: pd.DataFrame | None = None,
                   alone_false_alarms: float | None = None) -> str:
    """Where the out-of-fold errors are (size, annotated class) and, when measured, the whole-photo figures: `whole`
    (wholephoto.recall_table of the default path) with its `false_alarms` per photo, against the detector `alone`."""
    worst_size = by_size["error_rate"].idxmax()
    lines = [f"**What this shows.** Out of fold, faces {worst_size} are wrong most often "
             f"({by_size.loc[worst_size, 'error_rate']:.1%} of {int(by_size.loc[worst_size, 'faces']):,})"]
    if "mask_weared_incorrect" in by_class.index:
        row = by_class.loc["mask_weared_incorrect"]
        lines[0] += (f"; incorrectly worn masks are called without_mask {row['accuracy']:.1%} of the time "
                     f"({int(row['faces'])} faces)")
    lines[0] += "."
    measured = whole is not None and ("all", "all") in whole.index
    if measured:
        found, right = whole.loc[("all", "all"), "recall"], whole.loc[("all", "all"), "detected_and_correct"]
        lines[0] += (f" On whole photos of fold 0 the default path finds {found:.1%} of the faces, and "
                     f"{right:.1%} are found and classified right")
        if alone is not None and false_alarms is not None and alone_false_alarms is not None:
            lines[0] += (f", with {false_alarms:.2f} false alarms per photo; the detector alone finds "
                         f"{alone.loc[('all', 'all'), 'recall']:.1%} ({alone.loc[('all', 'all'), 'detected_and_correct']:.1%} "
                         f"found and right) with {alone_false_alarms:.2f}")
        lines[0] += "."
    lines.append("")
    if "mask_weared_incorrect" in by_class.index:
        lines.append(TARGETS["incorrect_oof"].line(by_class.loc["mask_weared_incorrect", "accuracy"]))
    if measured:
        for key, group, column in (("found", ("all", "all"), "recall"), ("found_32", ("min_size", ">=32 px"), "recall"),
                                   ("found_16", ("size_bucket", "<16 px"), "recall"),
                                   ("whole_photo", ("all", "all"), "detected_and_correct"),
                                   ("whole_photo_32", ("min_size", ">=32 px"), "detected_and_correct")):
            if group in whole.index:
                lines.append(TARGETS[key].line(whole.loc[group, column]))
        if false_alarms is not None:
            lines.append(TARGETS["false_alarms"].line(false_alarms))
    return "\n".join(lines)
