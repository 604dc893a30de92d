"""Figures for the notebooks: each has a title and labelled axes, and returns its Figure.

Every figure is readable at 100% zoom in the HTML reports: at most REPORT_WIDTH_IN wide, so the
report shows it unscaled, and no text smaller than MIN_FONT_PT.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import CLASS_NAMES
from .data import TINY_FACE, face_size
from .images import load_crop, load_rgb

PALETTE = {"with_mask": "#2a9d8f", "without_mask": "#e76f51"}
REPORT_WIDTH_IN = 10.5
"""The reports' output column (1,090 px) at the inline backend's 100 dpi: a figure no wider is shown unscaled."""
MIN_FONT_PT = 9
"""The smallest text in any figure, in points at the figure's displayed size."""


def plot_class_counts(manifest: pd.DataFrame) -> plt.Figure:
    """Faces per original three-way class and per merged binary label."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    original = manifest["original_label"].value_counts()
    merged = manifest["label"].value_counts().reindex(CLASS_NAMES, fill_value=0)
    axes[0].bar(original.index, original.values, color="#8d99ae")
    axes[1].bar(merged.index, merged.values, color=[PALETTE[c] for c in merged.index])
    for ax, title, counts in ((axes[0], "Original classes", original), (axes[1], "After merging", merged)):
        ax.set_title(title)
        ax.set_xlabel("class")
        for i, v in enumerate(counts.values):
            ax.annotate(str(v), (i, v), ha="center", va="bottom")
    axes[0].set_ylabel("faces")
    fig.suptitle("Faces per class before and after merging mask_weared_incorrect into without_mask")
    fig.tight_layout()
    return fig


def plot_faces_per_photo(manifest: pd.DataFrame) -> plt.Figure:
    """Histogram of the number of annotated faces per photo."""
    per_photo = manifest.groupby("source_image").size()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bins = np.arange(1, per_photo.max() + 2) - 0.5 if per_photo.max() < 40 else 40
    ax.hist(per_photo, bins=bins, color="#8d99ae")
    ax.set_yscale("log")
    ax.set_title(f"Faces per photo ({len(per_photo)} photos, median {per_photo.median():.0f}, max {per_photo.max()})")
    ax.set_xlabel("faces in the photo")
    ax.set_ylabel("photos (log scale)")
    fig.tight_layout()
    return fig


def plot_face_sizes(manifest: pd.DataFrame) -> plt.Figure:
    """Histogram of face size (short side, log scale) by binary label, with the tiny-face line."""
    df = manifest.assign(size=face_size(manifest))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.histplot(data=df, x="size", hue="label", hue_order=list(CLASS_NAMES), palette=PALETTE,
                 log_scale=True, element="step", stat="count", common_norm=False, ax=ax)
    ax.axvline(TINY_FACE, color="black", linestyle="--", linewidth=1)
    tiny = (df["size"] < TINY_FACE).mean()
    ax.set_title(f"Face size by class: {tiny:.0%} of faces are under {TINY_FACE} px (dashed line)")
    ax.set_xlabel("short side of the box (pixels, log scale)")
    ax.set_ylabel("faces")
    fig.tight_layout()
    return fig


def plot_crop_grid(
    paths: Sequence[str],
    captions: Sequence[str],
    title: str,
    image_size: int = 224,
    ncols: int = 8,
    row_labels: Sequence[str] = (),
) -> plt.Figure:
    """Crops resized to the model's input size, as the model sees them, with one caption each
    and, optionally, a label left of each row."""
    nrows = max(1, int(np.ceil(len(paths) / ncols)))
    width = min(REPORT_WIDTH_IN, 1.25 * ncols + (0.4 if row_labels else 0))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.75 * nrows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, paths, captions):
        ax.imshow(load_crop(path, image_size))
        ax.set_title(caption, fontsize=MIN_FONT_PT)
    for ax, label in zip(axes[:, 0], row_labels):
        ax.text(-0.08, 0.5, label, transform=ax.transAxes, rotation=90, ha="right", va="center")
    fig.suptitle(title)
    return fig


def plot_samples_per_class(manifest: pd.DataFrame, n_per_class: int = 8, image_size: int = 224, seed: int = 0) -> plt.Figure:
    """A row of random crops per label, captioned with original class and size."""
    rows = []
    for label in CLASS_NAMES:
        group = manifest[manifest["label"] == label]
        rows.append(group.sample(min(n_per_class, len(group)), random_state=seed))
    sample = pd.concat(rows)
    captions = [f"{r.width}x{r.height} px" + ("\nworn incorrectly" if r.original_label == "mask_weared_incorrect" else "")
                for r in sample.itertuples()]
    return plot_crop_grid(list(sample["crop_file"]), captions,
                          f"Random crops per class, resized to {image_size}x{image_size} (caption: size in the photo)",
                          image_size, n_per_class, row_labels=[str(g["label"].iloc[0]) for g in rows if len(g)])


def plot_folds(table: pd.DataFrame) -> plt.Figure:
    """Faces per fold and class: grouped folds stay balanced."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(table.index.astype(str), table["with_mask"], color=PALETTE["with_mask"], label="with_mask")
    ax.bar(table.index.astype(str), table["without_mask"], bottom=table["with_mask"],
           color=PALETTE["without_mask"], label="without_mask")
    ax.set_title("Faces per fold (grouped by photo, stratified by class)")
    ax.set_xlabel("fold (fold 0 is the default validation set)")
    ax.set_ylabel("faces")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the bars, never over them
    fig.tight_layout()
    return fig


def plot_history(history: dict[str, dict[str, list[float]]], title: str = "Learning curves") -> plt.Figure:
    """Accuracy and loss per epoch (or L-BFGS iteration), training vs validation, phases one after the other.

    The validation curve is the early-stopping set: a grouped tenth of the training photos.
    """
    fig, axes = plt.subplots(1, 2, figsize=(REPORT_WIDTH_IN, 3.8))
    offset = 0
    for phase, h in history.items():
        epochs = np.arange(offset + 1, offset + len(h["loss"]) + 1)
        for ax, metric in zip(axes, ("accuracy", "loss")):
            ax.plot(epochs, h[metric], marker=".", label=f"train ({phase})")
            ax.plot(epochs, h[f"val_{metric}"], marker=".", linestyle="--", label=f"early-stopping photos ({phase})")
        offset += len(h["loss"])
        if offset and phase != list(history)[-1]:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", linewidth=0.8)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.set_xlabel("epoch (L-BFGS head: iteration)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric.capitalize()} per epoch")
        ax.legend(fontsize=MIN_FONT_PT)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cv(table: pd.DataFrame, title: str = "Cross-validation over grouped folds") -> plt.Figure:
    """Per-fold accuracy, ROC AUC and recall of without_mask, with the mean as a line."""
    folds = table.drop(index=["mean", "std"], errors="ignore")
    metrics = [c for c in ("accuracy", "roc_auc", "recall_without_mask") if c in folds]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(metrics)
    x = np.arange(len(folds))
    for i, metric in enumerate(metrics):
        bars = ax.bar(x + i * width, folds[metric], width, label=metric)
        ax.axhline(folds[metric].mean(), color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, [f"fold {f}" for f in folds.index])
    ax.set_ylim(max(0.0, float(folds[metrics].min().min()) - 0.1), 1.0)
    ax.set_xlabel("held-out fold")
    ax.set_ylabel("score")
    ax.set_title(title + " (dashed: mean)")
    ax.legend(fontsize=MIN_FONT_PT, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- evaluation


def plot_confusion(cm: Sequence[Sequence[int]], title: str = "Confusion matrix",
                   labels: Sequence[str] = CLASS_NAMES) -> plt.Figure:
    """Counts and row-normalised rates side by side; `labels` name the rows and columns in order."""
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4 if len(labels) == 2 else 4.6))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0], xticklabels=labels, yticklabels=labels)
    sns.heatmap(rates, annot=True, fmt=".3f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=axes[1],
                xticklabels=labels, yticklabels=labels)
    for ax, sub in zip(axes, ("counts", "share of each true class")):
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_roc_pr(y_true: Sequence[int], p: Sequence[float], title: str = "Ranking quality") -> plt.Figure:
    """ROC curve with AUC and precision-recall curve with average precision (positive: without_mask)."""
    from sklearn import metrics as skm

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fpr, tpr, _ = skm.roc_curve(y_true, p)
    axes[0].plot(fpr, tpr, label=f"AUC = {skm.roc_auc_score(y_true, p):.3f}")
    axes[0].plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes[0].set_xlabel("false positive rate (masked faces flagged)")
    axes[0].set_ylabel("true positive rate (unmasked faces caught)")
    axes[0].set_title("ROC curve")
    precision, recall, _ = skm.precision_recall_curve(y_true, p)
    axes[1].plot(recall, precision, label=f"AP = {skm.average_precision_score(y_true, p):.3f}")
    axes[1].axhline(np.mean(y_true), linestyle="--", color="grey", label="chance (prevalence)")
    axes[1].set_xlabel("recall of without_mask")
    axes[1].set_ylabel("precision of without_mask")
    axes[1].set_title("Precision-recall curve")
    for ax in axes:
        ax.legend(loc="lower right" if ax is axes[0] else "lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_thresholds(table: pd.DataFrame, chosen: float = 0.5) -> plt.Figure:
    """Unmasked faces caught vs false alarms as the threshold on P(without_mask) moves."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(table.index, table["recall_without_mask"], marker="o", label="unmasked faces caught (recall)")
    ax.plot(table.index, table["precision_without_mask"], marker="o", label="flags that are right (precision)")
    ax.plot(table.index, table["accuracy"], marker="o", label="accuracy")
    ax.axvline(chosen, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("threshold on P(without_mask)")
    ax.set_ylabel("rate")
    ax.set_title(f"Moving the threshold (dashed: {chosen})")
    ax.legend(fontsize=MIN_FONT_PT)
    fig.tight_layout()
    return fig


def plot_reliability(table: pd.DataFrame, brier: float) -> plt.Figure:
    """Reliability diagram: observed share of without_mask per predicted-probability bin."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(table["mean_predicted"], table["observed"], marker="o", label="model")
    for row in table.itertuples():
        ax.annotate(str(row.faces), (row.mean_predicted, row.observed), fontsize=MIN_FONT_PT, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("mean predicted P(without_mask)")
    ax.set_ylabel("observed share without_mask")
    ax.set_title(f"Reliability diagram (Brier score {brier:.4f}; labels: faces per bin)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_metric_by(table: pd.DataFrame, column: str, metric: str = "accuracy") -> plt.Figure:
    """One rate per group (e.g. per face-size bucket), its value and number of faces on each bar.

    The axis is zoomed to the data: from 0 for small rates (error rates of a few percent), from a
    little below the lowest bar for rates near 1 (the axis label then says where it starts).
    """
    from .formatting import number

    values = table[metric].astype(float)
    top, bottom = float(np.nanmax(values)) if len(values) else 1.0, float(np.nanmin(values)) if len(values) else 0.0
    low = 0.0 if bottom < 0.5 else max(0.0, np.floor((bottom - 0.05) * 20) / 20)
    high = min(1.0, top) + 0.3 * (min(1.0, top) - low) if top > 0 else 1.0  # room for the two-line labels
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.bar(table.index.astype(str), values.fillna(low) - low, bottom=low, color="#8d99ae")
    for bar, value, n in zip(bars, values, table["faces"]):
        ax.annotate(f"{number(value)}\n(n={number(n)})", (bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height()),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=MIN_FONT_PT)
    ax.set_ylim(low, high)
    name = metric.replace("_", " ")
    ax.set_xlabel(column.replace("_", " "))
    ax.set_ylabel(name if low == 0 else f"{name} (axis from {low:.2f})")
    ax.set_title(f"{name.capitalize()} by {column.replace('_', ' ')} (label: value and faces)")
    fig.tight_layout()
    return fig


def plot_framing(table: pd.DataFrame) -> plt.Figure:
    """Accuracy per re-cut of the validation faces (maskclf.framing.framing_table), zoomed to the range used."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.2))
    acc = table["accuracy"]
    colors = ["#8d99ae" if kind == "annotated box" else ("#e76f51" if change < -0.01 else "#2a9d8f")
              for kind, change in zip(table.index, table["accuracy_change"])]
    ax.barh(table.index[::-1], acc[::-1], color=colors[::-1])
    low = max(0.0, float(acc.min()) - 0.05)
    ax.set_xlim(low, 1.0)
    for y, (value, change) in enumerate(zip(acc[::-1], table["accuracy_change"][::-1])):
        ax.annotate(f"{value:.3f} ({change:+.3f})", (value, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.axvline(acc.loc["annotated box"] - 0.01, color="#e76f51", ls="--", lw=1, label="1 point below the annotated box")
    ax.set_xlabel(f"accuracy (axis from {low:.2f})")
    ax.set_ylabel("how the face is cut from the photo")
    ax.set_title(f"Framing robustness: {int(table['faces'].iloc[0])} validation faces re-cut from their photos")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.45 / len(table)), fontsize=MIN_FONT_PT, frameon=False)
    fig.tight_layout()  # the legend sits under the axis label, never over the bars
    return fig


def plot_errors_in_context(rows: pd.DataFrame, photos_dir: str, title: str, max_rows: int = 12, per_row: int = 2) -> plt.Figure:
    """Each face beside its source photo with the box drawn, captioned with label and score."""
    from matplotlib.patches import Rectangle

    rows = rows.head(max_rows)
    nrows = max(1, int(np.ceil(len(rows) / per_row)))
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(REPORT_WIDTH_IN, 2.9 * nrows + 0.5), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.2] * per_row}, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    pairs = axes.reshape(nrows * per_row, 2)
    for (ax_crop, ax_photo), r in zip(pairs, rows.itertuples()):
        ax_crop.imshow(load_rgb(r.crop_file))
        ax_crop.set_title(f"true {r.label}\n({r.original_label})\nP(without) = {r.p_without_mask:.2f}", fontsize=MIN_FONT_PT)
        ax_photo.imshow(load_rgb(f"{photos_dir}/{r.source_image}"))
        ax_photo.add_patch(Rectangle((r.xmin, r.ymin), r.xmax - r.xmin, r.ymax - r.ymin, fill=False, color="yellow", linewidth=1.5))
        ax_photo.set_title(f"{r.source_image}\n{r.width}x{r.height} px face", fontsize=MIN_FONT_PT)
    fig.suptitle(title)
    return fig


def plot_gradcam(images: np.ndarray, heatmaps: np.ndarray, captions: Sequence[str], title: str, ncols: int = 6) -> plt.Figure:
    """Crops with their Grad-CAM heatmap overlaid."""
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    width = min(REPORT_WIDTH_IN, 1.75 * ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, width / ncols * 1.3 * nrows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, heat, caption in zip(axes.flat, images, heatmaps, captions):
        ax.imshow(np.asarray(img, dtype=np.uint8))
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=MIN_FONT_PT)
    fig.suptitle(title)
    return fig


def plot_whole_photo(table: pd.DataFrame, title: str = "Annotated faces found by the detector, and then classified right") -> plt.Figure:
    """Per face size and class: the share of annotated faces detected, and detected and correctly classified.

    `table` is `wholephoto.recall_table` (index (group, value); columns faces, recall, detected_and_correct).
    """
    rows = table.drop(index=["original_label", "min_size"], level="group", errors="ignore")
    names = [f"{value}\n(n={n})" for (_, value), n in zip(rows.index, rows["faces"])]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.bar(x - 0.2, rows["recall"], 0.4, label="detected (IoU >= 0.5)", color="#8d99ae")
    ax.bar(x + 0.2, rows["detected_and_correct"], 0.4, label="detected and correctly classified", color="#2a9d8f")
    ax.set_xticks(x, names, fontsize=MIN_FONT_PT)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("annotated faces: all, by face size (short side), by label")
    ax.set_ylabel("share of annotated faces")
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=2, fontsize=MIN_FONT_PT)
    fig.tight_layout()
    return fig
