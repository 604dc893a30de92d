"""Every figure of maskclf.plots is readable at 100% zoom in a report: titled, labelled, sized, no overlaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from maskclf import evaluate, plots, splits  # noqa: E402


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[pd.DataFrame, str]:
    """A manifest of 40 faces in 8 photos, with crops and photos on disk."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        photo = f"maksssksksss{i % 8}.png"
        if not (root / photo).exists():
            Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(root / photo)
        crop = root / f"crop{i}.png"
        Image.fromarray(rng.integers(0, 255, (30, 24, 3), dtype=np.uint8)).save(crop)
        original = ("with_mask", "without_mask", "mask_weared_incorrect")[i % 3]
        label = "with_mask" if original == "with_mask" else "without_mask"
        rows.append({"crop_file": str(crop), "source_image": photo, "original_label": original, "label": label,
                     "xmin": 10, "ymin": 10, "xmax": 34, "ymax": 40, "width": 24 + i, "height": 30 + i, "fold": i % 5})
    return pd.DataFrame(rows), str(root)


def figures(manifest: pd.DataFrame, photos: str) -> dict[str, plt.Figure]:
    rng = np.random.default_rng(1)
    y = np.array([0] * 30 + [1] * 10)
    p = np.clip(y * 0.7 + rng.random(40) * 0.4, 0, 1)
    table = manifest.assign(y_true=y, p_without_mask=p, correct=(p >= 0.5) == y,
                            size_bucket=pd.cut(manifest["width"], [0, 32, 48, 100], labels=["<32", "32-47", ">=48"]))
    cv = pd.DataFrame({"accuracy": [0.97, 0.98, 0.96, 0.97, 0.98], "roc_auc": [0.99] * 5, "recall_without_mask": [0.94] * 5})
    framing = pd.DataFrame({"faces": [365] * 3, "accuracy": [0.978, 0.967, 0.986], "accuracy_change": [0, -0.011, 0.008]},
                           index=["annotated box", "top 30% removed", "20% looser"])
    whole = pd.DataFrame({"faces": [815, 281, 534], "recall": [0.78, 0.52, 0.9], "detected_and_correct": [0.76, 0.5, 0.88]},
                         index=pd.MultiIndex.from_tuples([("all", "all"), ("size_bucket", "<16 px"), ("size_bucket", ">=16 px")],
                                                                     names=["group", "value"]))
    errors = table.assign(p_without_mask=1 - table["y_true"])
    history = {"head": {"loss": [1, 0.5], "val_loss": [1, 0.6], "accuracy": [0.6, 0.9], "val_accuracy": [0.6, 0.85]}}
    images = rng.integers(0, 255, (8, 32, 32, 3)).astype("float32")
    return {
        "class_counts": plots.plot_class_counts(manifest),
        "faces_per_photo": plots.plot_faces_per_photo(manifest),
        "face_sizes": plots.plot_face_sizes(manifest),
        "samples_per_class": plots.plot_samples_per_class(manifest, n_per_class=8, image_size=32),
        "folds": plots.plot_folds(splits.fold_table(manifest)),
        "history": plots.plot_history(history),
        "cv": plots.plot_cv(cv),
        "confusion": plots.plot_confusion([[630, 17], [8, 160]]),
        "roc_pr": plots.plot_roc_pr(y, p),
        "thresholds": plots.plot_thresholds(evaluate.threshold_table(y, p)),
        "reliability": plots.plot_reliability(evaluate.calibration_table(y, p), 0.02),
        "accuracy_by": plots.plot_metric_by(evaluate.metrics_by(table, "size_bucket"), "size_bucket"),
        "error_rate_by": plots.plot_metric_by(evaluate.metrics_by(table, "size_bucket"), "size_bucket", "error_rate"),
        "framing": plots.plot_framing(framing),
        "errors_in_context": plots.plot_errors_in_context(errors, photos, "Misclassified validation faces (12 of 40)"),
        "gradcam": plots.plot_gradcam(images, rng.random((8, 7, 7)), [f"with_mask\nP(without)=0.{i}" for i in range(8)], "Grad-CAM"),
        "whole_photo": plots.plot_whole_photo(whole),
    }


@pytest.fixture(scope="module")
def all_figures(faces):
    made = figures(*faces)
    yield made
    for fig in made.values():
        plt.close(fig)


def _texts(fig: plt.Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _displayed_scale(fig: plt.Figure) -> float:
    """How much the report shrinks the figure: 1 unless its saved (tight) width exceeds the output column."""
    width_in = fig.get_tightbbox(fig.canvas.get_renderer()).width
    return min(1.0, plots.REPORT_WIDTH_IN / width_in)


def test_every_plot_function_is_checked(all_figures):
    functions = {name for name in dir(plots) if name.startswith("plot_") and name != "plot_crop_grid"}
    assert len(all_figures) >= len(functions), sorted(functions)


@pytest.mark.parametrize("name", ["class_counts", "faces_per_photo", "face_sizes", "samples_per_class", "folds", "history",
                                  "cv", "confusion", "roc_pr", "thresholds", "reliability", "accuracy_by", "error_rate_by",
                                  "framing", "errors_in_context", "gradcam", "whole_photo"])
def test_figure_has_a_title_labels_and_text_readable_at_100_percent(all_figures, name):
    fig = all_figures[name]
    fig.canvas.draw()
    assert fig.get_figwidth() <= plots.REPORT_WIDTH_IN, f"{name}: {fig.get_figwidth()} in is shrunk in the report"
    titled = bool(fig.get_suptitle()) or any(ax.get_title() for ax in fig.axes)
    assert titled, f"{name}: no title"
    for ax in fig.axes:
        if ax.axison:
            ylabel = any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax))  # a shared axis is labelled once
            assert ax.get_xlabel() and ylabel, f"{name}: an axis without a label"
    scale = _displayed_scale(fig)
    small = [(t.get_text()[:30], t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() * scale < plots.MIN_FONT_PT - 1e-6]
    assert not small, f"{name}: text under {plots.MIN_FONT_PT} pt at its displayed size: {small[:5]}"


@pytest.mark.parametrize("name", ["samples_per_class", "errors_in_context", "gradcam", "confusion", "class_counts"])
def test_suptitle_and_captions_do_not_overlap(all_figures, name):
    fig = all_figures[name]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    captions = [ax.title for ax in fig.axes if ax.get_title()]
    assert captions
    for caption in captions:
        assert not title.overlaps(caption.get_window_extent(renderer)), f"{name}: the title overlaps {caption.get_text()!r}"
    boxes = [c.get_window_extent(renderer) for c in captions]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"{name}: two captions overlap"


def test_gallery_captions_are_at_least_9_pt_at_displayed_size(all_figures):
    fig = all_figures["errors_in_context"]
    scale = _displayed_scale(fig)
    sizes = [ax.title.get_fontsize() * scale for ax in fig.axes if ax.get_title()]
    assert sizes and min(sizes) >= 9


def test_error_rate_axis_is_zoomed_to_the_data_and_values_are_on_the_bars():
    table = pd.DataFrame({"faces": [1272, 1599, 777, 424], "error_rate": [0.039, 0.016, 0.026, 0.014]},
                         index=["<16 px", "16-31 px", "32-63 px", ">=64 px"])
    fig = plots.plot_metric_by(table, "size_bucket", "error_rate")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low == 0 and 0.039 < high < 0.1, (low, high)
    labels = [t.get_text() for t in ax.texts]
    assert any("0.039" in s and "1,272" in s for s in labels), labels
    plt.close(fig)
