"""wholephoto: greedy matching and the end-to-end figures on a hand-made case with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskclf.plots import plot_whole_photo
from maskclf import detect, wholephoto
from maskclf.wholephoto import Photo, evaluate_photos, match_boxes, photo_stats, photos_from_manifest, recall_table


def test_match_is_greedy_by_iou_and_one_to_one():
    truth = np.array([[0, 0, 10, 10], [6, 0, 16, 10], [50, 50, 60, 60]])
    found = np.array([[5, 0, 15, 10], [0, 0, 9, 10]])
    # truth 0 - found 1 (IoU 0.9) first, then truth 1 - found 0 (0.82); found 0 overlaps truth 0 too (0.33)
    assert match_boxes(truth, found).tolist() == [1, 0, -1]
    assert match_boxes(truth, found[:1]).tolist() == [-1, 0, -1]
    assert match_boxes(truth, np.zeros((0, 4))).tolist() == [-1, -1, -1]
    half = np.array([[0, 0, 10, 20]])  # IoU exactly 0.5 with truth 0
    assert match_boxes(truth, half).tolist() == [0, -1, -1]
    assert match_boxes(truth, half, 0.51).tolist() == [-1, -1, -1]


def hand_made_photos(tmp_path) -> list[Photo]:
    """Two photos: five faces of known sizes and classes."""
    for name, value in (("a.png", 0), ("b.png", 1)):
        Image.fromarray(np.full((200, 300, 3), value, np.uint8)).save(tmp_path / name)
    a = Photo("a.png", tmp_path / "a.png", 0, np.array([[0, 0, 10, 10], [20, 20, 60, 60], [100, 100, 200, 180]]),
              ["with_mask", "without_mask", "with_mask"], ["with_mask", "mask_weared_incorrect", "with_mask"])
    b = Photo("b.png", tmp_path / "b.png", 1, np.array([[10, 10, 30, 30], [200, 0, 240, 40]]),
              ["without_mask", "with_mask"], ["without_mask", "with_mask"])
    return [a, b]


DETECTIONS = {
    # a: the 10-px face missed, the 40-px one found, the 80-px one found; one false alarm
    "a": [(20, 20, 60, 60), (100, 100, 200, 180), (250, 150, 290, 190)],
    # b: both found (the second a little off: IoU 0.90)
    "b": [(10, 10, 30, 30), (202, 0, 242, 40)],
}
LABELS = {  # what the classifier says of each detection, in order
    "a": ["with_mask", "with_mask", "without_mask"],  # the 40-px face wrongly called with_mask
    "b": ["without_mask", "with_mask"],
}


def test_end_to_end_figures_on_a_hand_made_case(tmp_path):
    photos = hand_made_photos(tmp_path)
    which = lambda image: "a" if image.max() == 0 else "b"  # noqa: E731
    find = lambda image: (DETECTIONS[which(image)], np.ones(len(DETECTIONS[which(image)])))  # noqa: E731
    classify = lambda image, boxes, scores: LABELS[which(image)]  # noqa: E731
    faces, per_photo = evaluate_photos(photos, find, classify)
    assert faces["detected"].tolist() == [False, True, True, True, True]
    assert faces["correct"].tolist() == [False, False, True, True, True]
    table = recall_table(faces)
    assert table.loc[("all", "all")].tolist() == pytest.approx([5, 0.8, 0.6])
    assert table.loc[("size_bucket", "<16 px"), "recall"] == 0
    assert table.loc[("size_bucket", "16-31 px"), ["faces", "recall", "detected_and_correct"]].tolist() == [1, 1, 1]
    assert table.loc[("size_bucket", "32-63 px"), ["faces", "recall", "detected_and_correct"]].tolist() == [2, 1, 0.5]
    assert table.loc[("label", "without_mask"), ["faces", "recall", "detected_and_correct"]].tolist() == [2, 1, 0.5]
    assert table.loc[("label", "with_mask"), ["faces", "recall", "detected_and_correct"]].tolist() == pytest.approx([3, 2 / 3, 2 / 3])
    assert table.loc[("original_label", "mask_weared_incorrect"), "detected_and_correct"] == 0
    assert per_photo["false_alarms"].tolist() == [1, 0]
    stats = photo_stats(per_photo)
    assert stats["false_alarms_per_photo"] == 0.5 and stats["precision"] == pytest.approx(4 / 5)
    assert stats["photos_per_s"] > 0
    assert "detected_and_correct" not in recall_table(faces, classified=False)
    fig = plot_whole_photo(table, "hand-made")
    ax = fig.axes[0]
    assert ax.get_title() == "hand-made" and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.patches) == 2 * 7, "two bars for all, four sizes and two labels (original classes left out)"


def test_detection_only_leaves_correct_false(tmp_path):
    photos = hand_made_photos(tmp_path)[:1]
    faces, _ = evaluate_photos(photos, lambda image: (DETECTIONS["a"], np.ones(3)))
    assert faces["detected"].sum() == 2 and not faces["correct"].any()


def test_boxes_the_verifier_drops_are_neither_found_nor_false_alarms(tmp_path):
    photos = hand_made_photos(tmp_path)[:1]
    labels = ["with_mask", None, None]  # the verifier keeps the 40-px face only
    faces, per_photo = evaluate_photos(photos, lambda image: (DETECTIONS["a"], np.ones(3)), lambda *_: labels)
    assert faces["detected"].tolist() == [False, True, False]
    assert per_photo.loc[0, ["candidates", "detections", "false_alarms"]].tolist() == [3, 1, 0]


class RuleFinder:
    """A finder with a verifier: photo a's three candidates, kept by the rule where P(face) > 0.5."""

    rule = {"kind": "test"}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return DETECTIONS["a"], np.array([0.9, 0.3, 0.5])

    def keep(self, scores, p_face):
        return np.asarray(p_face) > 0.5


def test_one_pass_serves_the_detector_alone_and_the_verifier(tmp_path, monkeypatch):
    photo = hand_made_photos(tmp_path)[0]
    manifest = pd.DataFrame({"source_image": photo.name, "face_index": range(3), "fold": 0,
                             **dict(zip(("xmin", "ymin", "xmax", "ymax"), photo.boxes.T)),
                             "label": photo.labels, "original_label": photo.original_labels})
    finder, labelled = RuleFinder(), []

    def labeller(model, config):
        def label(image, boxes):
            labelled.append(list(boxes))
            return ["without_mask", "with_mask", "without_mask"], np.array([0.9, 0.8, 0.2])
        return label

    monkeypatch.setattr(detect, "make_face_finder", lambda config: finder)
    monkeypatch.setattr(wholephoto, "model_labeller", labeller)
    figures = wholephoto.finder_figures(None, {}, manifest, tmp_path)
    assert finder.calls == 1 and labelled == [DETECTIONS["a"]], "each photo is found and classified once"
    assert list(figures) == [wholephoto.ALONE, wholephoto.VERIFIED]
    alone, alone_stats = figures[wholephoto.ALONE]  # the candidates scoring >= CENTERFACE_SCORE: 0 and 2
    assert alone.loc[("all", "all")].tolist() == pytest.approx([3, 1 / 3, 1 / 3])
    assert alone_stats["false_alarms_per_photo"] == 1
    verified, verified_stats = figures[wholephoto.VERIFIED]  # P(face) > 0.5: candidates 0 and 1
    assert verified.loc[("all", "all")].tolist() == pytest.approx([3, 2 / 3, 2 / 3])
    assert verified_stats["false_alarms_per_photo"] == 0


def test_a_run_without_a_verifier_scores_the_detector_alone_from_its_one_pass(tmp_path, monkeypatch):
    photo = hand_made_photos(tmp_path)[0]
    manifest = pd.DataFrame({"source_image": photo.name, "face_index": range(3), "fold": 0,
                             **dict(zip(("xmin", "ymin", "xmax", "ymax"), photo.boxes.T)),
                             "label": photo.labels, "original_label": photo.original_labels})
    calls = []

    def find(image):  # the default detector: its candidates all score at least CENTERFACE_SCORE
        calls.append(1)
        return DETECTIONS["a"], np.full(3, detect.CENTERFACE_SCORE, np.float32)

    def labeller(model, config):
        return lambda image, boxes: (["without_mask", "with_mask", "without_mask"], None)

    monkeypatch.setattr(detect, "make_face_finder", lambda config: detect.FaceFinder(find))
    monkeypatch.setattr(wholephoto, "model_labeller", labeller)
    figures = wholephoto.finder_figures(None, {}, manifest, tmp_path)
    assert calls == [1] and list(figures) == [wholephoto.ALONE]
    alone, alone_stats = figures[wholephoto.ALONE]
    expected, _ = evaluate_photos([photo], find, lambda image, boxes, scores: labeller(None, None)(image, boxes)[0])
    assert alone.loc[("all", "all")].tolist() == pytest.approx(recall_table(expected).loc[("all", "all")].tolist())
    assert alone_stats["false_alarms_per_photo"] == 1 and alone_stats["n_photos"] == 1


def test_photos_from_manifest_groups_faces_by_photo_and_filters_folds(tmp_path):
    manifest = pd.DataFrame({
        "source_image": ["p10.png", "p2.png", "p2.png"], "face_index": [0, 1, 0], "fold": [1, 0, 0],
        "xmin": [1, 5, 0], "ymin": [1, 5, 0], "xmax": [9, 15, 4], "ymax": [9, 15, 4],
        "label": ["with_mask", "without_mask", "with_mask"],
        "original_label": ["with_mask", "mask_weared_incorrect", "with_mask"],
    })
    photos = photos_from_manifest(manifest, tmp_path)
    assert [p.name for p in photos] == ["p2.png", "p10.png"]  # numeric order
    assert photos[0].boxes.tolist() == [[0, 0, 4, 4], [5, 5, 15, 15]] and photos[0].path == tmp_path / "p2.png"
    assert photos[0].original_labels == ["with_mask", "mask_weared_incorrect"]
    assert [p.name for p in photos_from_manifest(manifest, tmp_path, folds=[1])] == ["p10.png"]


def test_faces_of_many_photos_classified_in_shared_batches_equal_one_at_a_time(tiny):
    """classify_photos (one batch over several photos' faces, split across model calls) gives each face
    the probabilities it gets alone, in each photo's order, with its box."""
    from synthetic import draw_face

    from maskclf.predict import classify_photo, classify_photos

    model, config = tiny
    photos = []
    for k, classes in enumerate([["with_mask", "without_mask"], [], ["without_mask", "with_mask", "with_mask"]]):
        image = np.full((100, 260, 3), (90, 140, 90), np.uint8)
        boxes = []
        for i, cls in enumerate(classes):
            side = 20 + 10 * i + 3 * k
            x0, y0 = 10 + 80 * i, 10 + 5 * k
            image[y0:y0 + side, x0:x0 + side] = draw_face(side, cls)
            boxes.append((x0, y0, x0 + side, y0 + side))
        photos.append((image, boxes))
    together = classify_photos(model, config, photos, batch_size=2)  # 5 faces: three model calls
    alone = [[classify_photo(model, config, image, [box])[0] for box in boxes] for image, boxes in photos]
    assert [len(faces) for faces in together] == [2, 0, 3]
    assert [[f["label"] for f in faces] for faces in together] == [["with_mask", "without_mask"], [],
                                                                   ["without_mask", "with_mask", "with_mask"]]
    for faces, single in zip(together, alone):
        assert [f["box"] for f in faces] == [f["box"] for f in single]
        assert [f["p_without_mask"] for f in faces] == pytest.approx([f["p_without_mask"] for f in single], abs=1e-5)
    assert classify_photos(model, config, []) == []


def test_predict_classifies_with_a_good_export_and_falls_back_to_keras(tmp_path):
    """fastest_runtime: the ONNX export when its parity passed against this model.keras (its SHA-256; same
    probabilities), Keras when the check failed, the export was made for another model or there is none."""
    import json

    from tinymodel import make_tiny_run

    from maskclf.export import export_model
    from maskclf.model import predict_probabilities
    from maskclf.runs import PARITY_FILE, RunFolderError, export_path, load_run, model_sha256
    from maskclf.runtime import ExportedModel, fastest_runtime

    run = make_tiny_run(tmp_path / "run")
    model, config = load_run(run)
    assert fastest_runtime(model, run) is model, "no export: Keras"
    crops = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    keras_probs = predict_probabilities(model, crops)  # also builds the model, which the exporter needs
    onnx = export_model(model, "onnx", export_path(run, "onnx"))
    parity = export_path(run, PARITY_FILE)

    def report(passed: bool, sha256: str = model_sha256(run)) -> str:
        return json.dumps({"keras_sha256": sha256, "formats": {"onnx": {"parity": {"passed": passed}}}})

    parity.write_text(report(True))
    fast = fastest_runtime(model, run)
    assert isinstance(fast, ExportedModel) and fast.path.name == "model.onnx"
    assert predict_probabilities(fast, crops, batch_size=2) == pytest.approx(keras_probs, abs=1e-5)
    parity.write_text(report(False))
    assert fastest_runtime(model, run) is model, "a failed parity check: Keras"
    parity.write_text(report(True, sha256="0" * 64))
    assert fastest_runtime(model, run) is model, "an export of another model.keras: Keras"
    for broken in ("[1, 2]", '{"formats": {"onnx": "passed"}}', "not json"):
        parity.write_text(broken)
        assert fastest_runtime(model, run) is model, f"a malformed parity.json ({broken}): Keras"
    parity.write_text(report(True))
    onnx.write_bytes(b"not a model")
    with pytest.raises(RunFolderError, match="model.onnx: cannot be loaded"):
        fastest_runtime(model, run)
