"""Evaluation metrics, alignment of labels and predictions, photo-level bootstrap, Grad-CAM."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from maskclf import CLASS_NAMES, evaluate
from maskclf.evaluate import MisalignedPredictionsError, binary_metrics, prediction_table
from maskclf.explain import gradcam
from maskclf.model import predict_crops


def test_binary_metrics_match_scikit_learn_on_a_hand_made_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.05, 0.6, 0.3])
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]  # worked out by hand
    assert m["accuracy"] == pytest.approx(0.8) == skm.accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["precision"]["without_mask"] == pytest.approx(0.75) and m["recall"]["without_mask"] == pytest.approx(0.75)
    assert m["recall"]["with_mask"] == pytest.approx(5 / 6)
    assert m["f1"]["with_mask"] == pytest.approx(skm.f1_score(y, pred, pos_label=0))
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


def _faces(n_photos=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_photos):
        for j in range(int(rng.integers(1, 6))):
            label = "without_mask" if rng.random() < 0.3 else "with_mask"
            rows.append({"crop_file": f"/x/p{i}_{j}.png", "source_image": f"p{i}.png", "label": label,
                         "width": int(rng.integers(5, 80)), "height": int(rng.integers(5, 80)), "original_label": label})
    return pd.DataFrame(rows)


def test_shuffled_second_pass_is_detected():
    faces = _faces()
    p = np.where(faces["label"] == "without_mask", 0.9, 0.1)
    table = prediction_table(faces, faces["crop_file"].tolist(), p)
    assert table["correct"].all()
    shuffled = faces.sample(frac=1, random_state=1)
    with pytest.raises(MisalignedPredictionsError, match="not aligned"):
        prediction_table(faces, shuffled["crop_file"].tolist(), p)
    with pytest.raises(MisalignedPredictionsError):
        prediction_table(faces, faces["crop_file"].tolist()[:-1], p[:-1])


def test_predict_crops_keeps_each_score_with_its_crop(tmp_path):
    """A model whose output depends on the image: scores must follow their crops, not positions."""
    from PIL import Image

    paths, labels = [], []
    for i in range(37):  # not a multiple of the batch size
        red = i % 3 == 0
        Image.new("RGB", (12, 10), (250, 10, 10) if red else (10, 250, 10)).save(tmp_path / f"c{i}.png")
        paths.append(str(tmp_path / f"c{i}.png"))
        labels.append("without_mask" if red else "with_mask")
    inputs = keras.Input((8, 8, 3))
    redness = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax",
                                                   kernel_initializer=keras.initializers.Constant([[0, 0.1], [0.1, 0], [0, 0]]))(redness))
    faces = pd.DataFrame({"crop_file": paths, "label": labels, "width": 12, "height": 10, "source_image": "s.png"})
    seen, probs = predict_crops(model, paths, 8, batch_size=8)
    assert probs.shape == (37, 2)
    table = prediction_table(faces, seen, probs[:, 1])
    assert table["correct"].all()


def test_bootstrap_resamples_photos_not_faces():
    faces = _faces(80)
    rng = np.random.default_rng(3)
    # all faces of a photo right or wrong together: face-level resampling would understate the spread
    photo_ok = {s: rng.random() < 0.8 for s in faces["source_image"].unique()}
    y = (faces["label"] == "without_mask").astype(int).to_numpy()
    p = np.array([0.9 if (yy == 1) == photo_ok[s] else 0.1 for yy, s in zip(y, faces["source_image"])])
    table = prediction_table(faces, faces["crop_file"].tolist(), p)
    by_photo = evaluate.bootstrap_ci(table, n_boot=400, seed=0)
    by_face = evaluate.bootstrap_ci(table.assign(face_id=np.arange(len(table))), n_boot=400, seed=0, group="face_id")
    lo, hi = by_photo["accuracy"]
    assert lo < table["correct"].mean() < hi
    assert (hi - lo) > 1.3 * (by_face["accuracy"][1] - by_face["accuracy"][0])
    assert evaluate.bootstrap_ci(table, n_boot=50, seed=5) == evaluate.bootstrap_ci(table, n_boot=50, seed=5)


def test_threshold_and_calibration_tables():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.95, 0.2])
    t = evaluate.threshold_table(y, p, thresholds=(0.3, 0.5))
    assert t.loc[0.5, "non_compliant_caught"] == 2 and t.loc[0.5, "false_alarms"] == 1
    assert t.loc[0.3, "non_compliant_caught"] == 3 and t.loc[0.3, "non_compliant_missed"] == 0
    c = evaluate.calibration_table(y, p, n_bins=2)
    assert c["faces"].sum() == 6 and c.loc[1, "observed"] == pytest.approx(2 / 3)


def test_metrics_by_size_and_label_error_candidates():
    faces = _faces()
    p = np.where(faces["label"] == "without_mask", 0.8, 0.2)
    p[0] = 0.99 if faces.loc[0, "label"] == "with_mask" else 0.01  # a confident contradiction
    table = prediction_table(faces, faces["crop_file"].tolist(), p)
    by_size = evaluate.metrics_by(table, "size_bucket")
    assert by_size["faces"].sum() == len(table)
    suspects = evaluate.confident_errors(table, n=5, min_confidence=0.9)
    assert suspects.index[0] == 0 and len(suspects) == 1
    errors = evaluate.confident_errors(table)
    assert set(errors.index) == set(table.index[~table["correct"]]) == {0}


def _red_detector() -> keras.Model:
    """Conv feature map = redness; class 1 (without_mask) = much red."""
    inputs = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(1, 1, activation="relu", name="redness",
                               kernel_initializer=keras.initializers.Constant([[[[1.0], [-1.0], [-1.0]]]]))(inputs)
    conv = keras.layers.MaxPooling2D(4, name="down")(conv)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(conv)
    out = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.Constant([[-0.05, 0.05]]))(pooled)
    model = keras.Model(inputs, out)
    model.trainable = False  # as the frozen backbone of a real model
    return model


def test_gradcam_highlights_a_planted_pattern():
    images = np.zeros((2, 32, 32, 3), "float32")
    images[0, 2:10, 20:30, 0] = 255  # red patch top right
    images[1, 20:30, 2:12, 0] = 255  # red patch bottom left
    heat = gradcam(_red_detector(), images, class_index=1)
    assert heat.shape == (2, 32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat[0, 2:10, 20:30].mean() > 5 * heat[0, 20:, :12].mean()
    assert heat[1, 20:30, 2:12].mean() > 5 * heat[1, :12, 20:].mean()


def test_gradcam_is_read_back_from_the_result_cache_for_the_same_model_and_images(monkeypatch):
    from maskclf import explain

    images = np.zeros((2, 32, 32, 3), "float32")
    images[0, 2:10, 20:30, 0] = 255
    model = _red_detector()
    fresh = explain.cached_gradcam(model, images, class_index=1)
    np.testing.assert_array_equal(fresh, gradcam(model, images, class_index=1))

    def no_gradient(*args, **kwargs):
        raise AssertionError("a cached heatmap must not be computed again")

    monkeypatch.setattr(explain, "gradcam", no_gradient)
    np.testing.assert_array_equal(explain.cached_gradcam(model, images, class_index=1), fresh)
    with pytest.raises(AssertionError, match="computed again"):
        explain.cached_gradcam(model, images[:1], class_index=1)  # other images
    with pytest.raises(AssertionError, match="computed again"):
        explain.cached_gradcam(model, images, class_index=0)  # another class


def test_three_way_confusion_matrix_and_recall_on_known_labels():
    """Rows: the annotated class; columns: the three-way answer. Known labels give a known matrix, and the
    recall intervals come from a bootstrap over photos."""
    truth = ["with_mask"] * 6 + ["mask_weared_incorrect"] * 4 + ["without_mask"] * 5
    said = (["with_mask"] * 5 + ["mask_incorrect"]                       # 5 of 6 masked faces right
            + ["mask_incorrect"] * 2 + ["with_mask", "without_mask"]       # 2 of 4 incorrect masks right
            + ["without_mask"] * 4 + ["mask_incorrect"])                   # 4 of 5 bare faces right
    faces = pd.DataFrame({"crop_file": [f"/x/{i}.png" for i in range(15)], "source_image": [f"p{i % 5}.png" for i in range(15)],
                          "original_label": truth, "label": [CLASS_NAMES[t != "with_mask"] for t in truth],
                          "width": 40, "height": 40})
    p = np.array([0.9 if s != "with_mask" else 0.1 for s in said])
    table = prediction_table(faces, faces["crop_file"].tolist(), p, three_way=said)
    m = evaluate.three_way_metrics(table, n_boot=200, seed=0)
    assert m["labels"] == ["with_mask", "mask_incorrect", "without_mask"]
    assert m["confusion_matrix"] == [[5, 1, 0], [1, 2, 1], [0, 1, 4]]
    assert m["recall"] == pytest.approx({"with_mask": 5 / 6, "mask_incorrect": 0.5, "without_mask": 0.8})
    assert m["support"] == {"with_mask": 6, "mask_incorrect": 4, "without_mask": 5}
    for name, (low, high) in m["ci95"].items():
        assert 0 <= low <= m["recall"][name] <= high <= 1
    assert m["ci95"]["mask_incorrect"][0] < m["ci95"]["mask_incorrect"][1]
    recall = evaluate.three_way_recall_table(m)
    assert list(recall.index) == m["labels"] and recall["faces"].tolist() == [6, 4, 5]
    with pytest.raises(ValueError, match="three-way label for every face"):
        evaluate.three_way_metrics(prediction_table(faces, faces["crop_file"].tolist(), p))
