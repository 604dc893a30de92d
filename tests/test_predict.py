"""predict + detect: pure functions, the CLI on crops and photos, and every bad input."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA
from finders import unscored
from synthetic import draw_face
from tinymodel import make_tiny_binary_run, make_tiny_incorrect_model, make_tiny_run, solid

from maskclf import CLASS_NAMES
from maskclf.cli import main
from maskclf.detect import clip_box, iou, make_detector
from maskclf.runs import RunFolderError, load_run
from maskclf import predict
from maskclf.predict import (
    COLOURS, annotate, classify_crops, classify_photo, crop_faces, drawn_names, expand_paths, face_answer,
    label_probabilities, predict_paths,
)

FACE_KEYS = {"type", "path", "face", "box", "label", "p_without_mask", "probabilities", "three_way", "three_way_probabilities"}
SMALL_FACE_KEYS = {"small_face", "warning"}
"""Added to a face under data.TINY_FACE px."""
BINARY_FACE_KEYS = FACE_KEYS - {"three_way", "three_way_probabilities"}
PHOTO_KEYS = {"type", "path", "faces", "with_mask", "without_mask", "everyone_masked", "mask_incorrect", "three_way"}
BINARY_PHOTO_KEYS = PHOTO_KEYS - {"mask_incorrect", "three_way"}


def photo_with_faces() -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[str]]:
    """A 200x120 RGB photo with a masked face and an unmasked one, their boxes and labels."""
    image = np.full((120, 200, 3), (90, 140, 90), np.uint8)
    image[20:60, 20:60] = draw_face(40, "with_mask")
    image[50:98, 120:168] = draw_face(48, "without_mask")
    return image, [(20, 20, 60, 60), (120, 50, 168, 98)], ["with_mask", "without_mask"]


def write_crops(folder: Path) -> dict[str, str]:
    """Crops of both classes in sub-folders; returns file name -> expected label."""
    expected = {}
    for label, crops in {
        "with_mask": [draw_face(40, "with_mask"), solid((0, 200, 0)), draw_face(17, "with_mask")],
        "without_mask": [draw_face(40, "without_mask"), solid((220, 10, 10), 64)],
    }.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(crops):
            Image.fromarray(crop).save(folder / label / f"{label}_{i}.png")
            expected[f"{label}_{i}.png"] = label
    return expected


def run_cli(capsys, *argv: str) -> tuple[int, list[dict], str]:
    """Exit status, the face lines (photo summary lines left out) and stderr of `predict`."""
    status, lines, err = run_cli_all_lines(capsys, *argv)
    return status, [line for line in lines if line["type"] == "face"], err


def run_cli_all_lines(capsys, *argv: str) -> tuple[int, list[dict], str]:
    status = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


# --------------------------------------------------------------------------- pure functions


def test_classify_crops_labels_and_probabilities(tiny):
    model, config = tiny
    crops = [solid((230, 0, 0)), solid((0, 230, 0)), draw_face(40, "without_mask"), draw_face(56, "with_mask")]
    results = classify_crops(model, config, crops)
    assert [r["label"] for r in results] == ["without_mask", "with_mask", "without_mask", "with_mask"]
    for r in results:
        assert set(r["probabilities"]) == set(CLASS_NAMES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["p_without_mask"] == r["probabilities"]["without_mask"]
    assert classify_crops(model, config, []) == []


def test_threshold_moves_the_label(tiny):
    model, config = tiny
    face = [draw_face(40, "without_mask")]
    p = classify_crops(model, config, face)[0]["p_without_mask"]
    assert classify_crops(model, config, face, threshold=p)[0]["label"] == "without_mask"
    assert classify_crops(model, config, face, threshold=min(1.0, p + 1e-3))[0]["label"] == "with_mask"


def test_label_probabilities_follows_config_class_order():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    flipped = label_probabilities(probs, {"class_names": ["without_mask", "with_mask"]})
    assert [r["label"] for r in flipped] == ["without_mask", "with_mask"]
    assert flipped[0]["p_without_mask"] == pytest.approx(0.9)
    assert "three_way" not in flipped[0]  # a binary model has no three-way answer


def test_three_answers_sum_the_incorrect_mask_into_without_and_agree_with_the_binary_label():
    from tinymodel import CLASS_NAMES, REPORTS_AS

    config = {"class_names": CLASS_NAMES, "reports_as": REPORTS_AS}  # with, incorrect, without
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6], [0.45, 0.35, 0.2]], np.float32)
    results = label_probabilities(probs, config, threshold=0.5)
    assert [r["p_without_mask"] for r in results] == pytest.approx([0.3, 0.7, 0.9, 0.55])
    assert [r["label"] for r in results] == ["with_mask", "without_mask", "without_mask", "without_mask"]
    assert [r["three_way"] for r in results] == ["with_mask", "mask_incorrect", "without_mask", "mask_incorrect"]
    assert results[1]["three_way_probabilities"] == pytest.approx(
        {"with_mask": 0.3, "mask_incorrect": 0.5, "without_mask": 0.2})
    assert label_probabilities(probs[3:], config, threshold=0.6)[0]["three_way"] == "with_mask"


def test_crop_faces_resizes_each_box():
    image, boxes, _ = photo_with_faces()
    crops = crop_faces(image, boxes, 32)
    assert crops.shape == (2, 32, 32, 3) and crops.dtype == np.float32
    assert crops.max() <= 255 and crops.min() >= 0
    assert crops[0, 28, 16].tolist() == [40, 90, 200]  # the mask half of the first face
    assert crop_faces(image, [], 32).shape == (0, 32, 32, 3)


def test_classify_photo_and_annotate(tiny):
    model, config = tiny
    image, boxes, labels = photo_with_faces()
    faces = classify_photo(model, config, image, boxes)
    assert [f["label"] for f in faces] == labels
    assert [tuple(f["box"]) for f in faces] == boxes
    before = image.copy()
    drawn = annotate(image, faces)
    assert np.array_equal(image, before), "annotate must not draw on its input"
    scale = drawn.shape[1] / image.shape[1]
    assert scale == pytest.approx(800 / 200)
    for face in faces:
        x0, y0, x1, y1 = (round(v * scale) for v in face["box"])
        assert drawn[(y0 + y1) // 2, x0].tolist() == list(COLOURS[face_answer(face)])  # left edge of the box
    same_size = annotate(image, faces, min_side=0)
    assert same_size.shape == image.shape


def test_photo_summary_and_caption():
    faces = [{"label": "with_mask"}, {"label": "without_mask"}, {"label": "with_mask"}]
    summary = predict.photo_summary(faces)
    assert summary == {"faces": 3, "with_mask": 2, "without_mask": 1, "everyone_masked": False}
    assert predict.summary_caption(summary) == "3 faces: 2 with mask, 1 without"
    assert predict.photo_summary(faces[:1])["everyone_masked"] is True
    assert predict.summary_caption(predict.photo_summary(faces[:1])) == "1 face: 1 with mask, 0 without"
    assert predict.photo_summary([]) == {"faces": 0, "with_mask": 0, "without_mask": 0, "everyone_masked": None}
    assert predict.summary_caption(predict.photo_summary([])) == "no face found"


def test_photo_summary_counts_the_three_answers():
    answers = [("with_mask", "with_mask"), ("without_mask", "mask_incorrect"), ("with_mask", "with_mask"),
               ("without_mask", "without_mask")]
    faces = [{"label": label, "three_way": three_way} for label, three_way in answers]
    summary = predict.photo_summary(faces, three_way=True)
    assert summary == {"faces": 4, "with_mask": 2, "without_mask": 2, "everyone_masked": False, "mask_incorrect": 1,
                       "three_way": {"with_mask": 2, "mask_incorrect": 1, "without_mask": 1}}
    assert predict.summary_caption(summary) == "4 faces: 2 with mask, 1 worn incorrectly, 1 without"
    assert predict.summary_caption(predict.photo_summary(faces[1:2], three_way=True)) == \
        "1 face: 0 with mask, 1 worn incorrectly, 0 without"
    assert predict.photo_summary([], three_way=True)["three_way"] == {"with_mask": 0, "mask_incorrect": 0,
                                                                       "without_mask": 0}


def test_drawn_names_keep_the_stem_unless_two_would_clash():
    names = drawn_names([Path(p) for p in ("grace_hopper.jpg", "a/x.png", "b/x.png", "c/y.jpg", "c/y.png",
                                           "d/z.jpg", "d/z.png", "d/z.jpg.png", "e/noext")])
    assert [n.as_posix() for n in names] == [
        "grace_hopper.drawn.png", "a/x.drawn.png", "b/x.drawn.png", "c/y.jpg.drawn.png", "c/y.png.drawn.png",
        "d/z.jpg.drawn.png", "d/z.png.drawn.png", "d/z.jpg.png.drawn.png", "e/noext.drawn.png"]
    assert len(set(names)) == len(names)


def test_annotate_adds_the_caption_strip_below(tiny):
    model, config = tiny
    image, boxes, _ = photo_with_faces()
    faces = classify_photo(model, config, image, boxes)
    plain = annotate(image, faces)
    captioned = annotate(image, faces, caption="2 faces: 1 with mask, 1 without")
    assert captioned.shape[1] == plain.shape[1] and captioned.shape[0] > plain.shape[0]
    assert np.array_equal(captioned[: plain.shape[0]], plain), "the photo part is unchanged"
    strip = captioned[plain.shape[0]:]
    assert strip.min() < 100 and strip.max() == 255, "dark text on white"


def test_clip_box_and_iou():
    assert clip_box((-3.4, 2.6, 401, 50), 400, 300) == (0, 3, 400, 50)
    assert clip_box((410, 0, 420, 10), 400, 300) is None
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("yolo")


@pytest.mark.parametrize("name", ["centerface", "haar", "mtcnn"])
def test_real_detector_finds_the_face_in_a_bundled_photo(name):
    """matplotlib ships a portrait (grace_hopper.jpg); every detector must box her face."""
    import matplotlib.cbook

    image = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    detect = make_detector(name)
    boxes = detect(image)
    face = (177, 113, 347, 331)  # by hand, 512x600 image
    assert max(iou(face, b) for b in boxes) >= 0.5
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
        assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
    assert detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detect(np.zeros((5, 5, 3), np.uint8)) == []


# --------------------------------------------------------------------------- files and the CLI


def test_predict_paths_with_a_detector_and_a_photo_without_faces(tiny, tmp_path):
    model, config = tiny
    image, boxes, labels = photo_with_faces()
    Image.fromarray(image).save(tmp_path / "two.png")
    Image.fromarray(np.full((50, 50, 3), 100, np.uint8)).save(tmp_path / "none.png")
    finder = unscored(lambda img: boxes if img.shape[1] == 200 else [])
    files, missing = expand_paths([tmp_path])
    results = {r.path.name: r for r in predict_paths(model, config, files, finder=finder)}
    assert not missing and set(results) == {"two.png", "none.png"}
    assert [f["label"] for f in results["two.png"].faces] == labels
    assert results["none.png"].faces == [] and results["none.png"].error is None


def test_cli_on_crop_folders_reports_every_bad_file(tiny_run, tmp_path, capsys):
    expected = write_crops(tmp_path / "crops")
    bad = tmp_path / "crops" / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("not an image at all")
    (bad / "empty.png").write_bytes(b"")
    good = (tmp_path / "crops" / "with_mask" / "with_mask_0.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    status, lines, err = run_cli(capsys, tmp_path / "crops", "--crops", "--model", tiny_run, "--batch-size", "2")
    assert status == 1
    assert {Path(line["path"]).name: line["label"] for line in lines} == expected
    for line in lines:
        assert set(line) == FACE_KEYS and line["face"] == 0
    for name in ("notes.png", "empty.png", "truncated.png"):
        assert name in err
    assert "3 files failed" in err


def test_cli_photos_with_ground_truth_boxes_every_image_mode(tiny_run, voc_dir, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    status, _, err = run_cli(capsys, voc_dir / "images", "--model", tiny_run, "--boxes-from", voc_dir,
                             "--jsonl", out, "--draw", tmp_path / "drawn")
    assert status == 0, err
    everything = [json.loads(line) for line in out.read_text().splitlines()]
    lines = [line for line in everything if line["type"] == "face"]
    assert lines and all(set(line) - SMALL_FACE_KEYS == FACE_KEYS | {"annotation"} for line in lines)
    photos = [line for line in everything if line["type"] == "photo"]
    assert all(set(line) == PHOTO_KEYS for line in photos) and len(photos) == len(list((voc_dir / "images").glob("*.png")))
    n_photos = len(list((voc_dir / "images").glob("*.png")))
    assert len(list((tmp_path / "drawn").glob("*.drawn.png"))) == n_photos
    colour = [line for line in lines if line["path"].endswith(("photo0.png", "photo5.png"))]  # RGB photos
    assert colour and all(line["label"] == line["annotation"] for line in colour if line["annotation"] != "mask_weared_incorrect")
    assert all(line["box"][2] <= 160 for line in lines), "boxes past the border must be clipped"


def test_cli_single_xml_and_missing_annotation(tiny_run, voc_dir, capsys):
    photo = voc_dir / "images" / "photo0.png"
    status, lines, _ = run_cli(capsys, photo, "--model", tiny_run, "--boxes-from", voc_dir / "annotations" / "photo0.xml")
    assert status == 0 and len(lines) == 2
    (voc_dir / "annotations" / "photo1.xml").unlink()
    status, _, err = run_cli(capsys, voc_dir / "images" / "photo1.png", "--model", tiny_run, "--boxes-from", voc_dir)
    assert status == 2 and "photo1.png: no annotation file" in err, "no face classified at all"


def test_cli_boxes_from_a_missing_path(tiny_run, voc_dir, tmp_path, capsys):
    status, _, err = run_cli(capsys, voc_dir / "images", "--model", tiny_run, "--boxes-from", tmp_path / "nowhere")
    assert status == 2 and "nowhere: no such annotation file or folder" in err


def test_cli_with_the_detector_photo_without_face(tiny_run, tmp_path, capsys, monkeypatch):
    image, boxes, labels = photo_with_faces()
    Image.fromarray(image).save(tmp_path / "two.png")
    Image.fromarray(np.full((50, 50, 3), 100, np.uint8)).save(tmp_path / "blank.png")
    finder = unscored(lambda img: boxes if img.shape[1] == 200 else [])
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: finder)
    status, lines, err = run_cli(capsys, tmp_path / "two.png", tmp_path / "blank.png", "--model", tiny_run)
    assert status == 0
    assert [line["label"] for line in lines] == labels
    assert "no face found in 1 file:" in err and "blank.png" in err


def test_cli_on_face_crops_without_crops_says_why_and_exits_2(tiny_run, tmp_path, capsys, monkeypatch):
    write_crops(tmp_path / "crops")
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(lambda img: []))  # a detector, on crops
    status, lines, err = run_cli(capsys, tmp_path / "crops", "--model", tiny_run)
    assert status == 2 and lines == []
    assert "no face found in 5 files" in err and "look like face crops" in err and "--crops" in err


def test_cli_photos_without_faces_exit_2_without_the_crops_hint(tiny_run, tmp_path, capsys, monkeypatch):
    Image.fromarray(np.full((300, 400, 3), 100, np.uint8)).save(tmp_path / "empty_room.png")
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(lambda img: []))
    status, _, err = run_cli(capsys, tmp_path / "empty_room.png", "--model", tiny_run)
    assert status == 2 and "no face found in 1 file:" in err and "--crops" not in err


def test_cli_writes_a_photo_summary_after_each_photos_faces(tiny_run, tmp_path, capsys, monkeypatch):
    image, boxes, _ = photo_with_faces()
    Image.fromarray(image).save(tmp_path / "two.png")
    Image.fromarray(np.full((50, 50, 3), 100, np.uint8)).save(tmp_path / "blank.png")
    finder = unscored(lambda img: boxes if img.shape[1] == 200 else [])
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: finder)
    status, lines, err = run_cli_all_lines(capsys, tmp_path / "two.png", tmp_path / "blank.png", "--model", tiny_run,
                                           "--draw", tmp_path / "drawn")
    assert status == 0 and "2 faces in 2 files" in err
    assert [line["type"] for line in lines] == ["face", "face", "photo", "photo"]
    assert lines[2] == {"type": "photo", "path": str(tmp_path / "two.png"), "faces": 2, "with_mask": 1,
                        "without_mask": 1, "everyone_masked": False, "mask_incorrect": 0,
                        "three_way": {"with_mask": 1, "mask_incorrect": 0, "without_mask": 1}}
    assert lines[3]["faces"] == 0 and lines[3]["everyone_masked"] is None
    status, lines, _ = run_cli_all_lines(capsys, tmp_path / "two.png", "--crops", "--model", tiny_run)
    assert [line["type"] for line in lines] == ["face"], "a crop is one face, not a photo"


@pytest.fixture(scope="module")
def incorrect_run(tmp_path_factory) -> Path:
    """The tiny run whose middle class beats its last: an unmasked face is `mask_incorrect`, at the same
    P(without_mask)."""
    return make_tiny_run(tmp_path_factory.mktemp("model") / "incorrect", make_tiny_incorrect_model())


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    """The tiny model trained, as it were, on the binary classes."""
    return make_tiny_binary_run(tmp_path_factory.mktemp("model") / "binary")


def edge_colours(drawn: np.ndarray, boxes, width: int) -> list[list[int]]:
    """The colour of each box's left edge, halfway down, on a drawing of a `width`-px photo."""
    scale = drawn.shape[1] / width
    return [drawn[round((y0 + y1) / 2 * scale), round(x0 * scale)].tolist() for x0, y0, x1, y1 in boxes]


def test_cli_answers_a_mask_worn_incorrectly_in_its_records_summary_and_drawing(incorrect_run, tiny_run, tmp_path,
                                                                                 capsys, monkeypatch):
    image, boxes, _ = photo_with_faces()
    Image.fromarray(image).save(tmp_path / "two.jpg", quality=95)
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(lambda img: boxes))
    status, lines, err = run_cli_all_lines(capsys, tmp_path / "two.jpg", "--model", incorrect_run,
                                           "--draw", tmp_path / "drawn")
    assert status == 0, err
    faces, photo = lines[:2], lines[2]
    assert all(set(face) == FACE_KEYS for face in faces)
    assert [face["label"] for face in faces] == ["with_mask", "without_mask"], "binary: incorrect counts as without"
    assert [face["three_way"] for face in faces] == ["with_mask", "mask_incorrect"]
    three = faces[1]["three_way_probabilities"]
    assert three["mask_incorrect"] > three["without_mask"] > 0
    assert three["mask_incorrect"] + three["without_mask"] == pytest.approx(faces[1]["p_without_mask"], abs=1e-5)
    _, plain, _ = run_cli_all_lines(capsys, tmp_path / "two.jpg", "--model", tiny_run)
    assert [face["label"] for face in plain[:2]] == [face["label"] for face in faces]
    assert [face["p_without_mask"] for face in plain[:2]] == pytest.approx([face["p_without_mask"] for face in faces],
                                                                           abs=1e-5), "the binary answer is unchanged"
    assert photo["with_mask"] == 1 and photo["without_mask"] == 1 and photo["mask_incorrect"] == 1
    assert photo["three_way"] == {"with_mask": 1, "mask_incorrect": 1, "without_mask": 0}
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["two.drawn.png"]
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "two.drawn.png"))
    assert edge_colours(drawn, boxes, image.shape[1]) == [list(COLOURS["with_mask"]), list(COLOURS["mask_incorrect"])]
    assert len({COLOURS["with_mask"], COLOURS["mask_incorrect"], COLOURS["without_mask"]}) == 3
    r, g, b = COLOURS["mask_incorrect"]
    assert r > 200 and 90 < g < 180 and b < 60, "orange, between the green and the red"


def test_cli_with_a_binary_model_answers_as_before(binary_run, tmp_path, capsys, monkeypatch):
    image, boxes, labels = photo_with_faces()
    Image.fromarray(image).save(tmp_path / "two.png")
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(lambda img: boxes))
    status, lines, err = run_cli_all_lines(capsys, tmp_path / "two.png", "--model", binary_run,
                                           "--draw", tmp_path / "drawn")
    assert status == 0, err
    faces, photo = lines[:2], lines[2]
    assert all(set(face) == BINARY_FACE_KEYS for face in faces) and set(photo) == BINARY_PHOTO_KEYS
    assert [face["label"] for face in faces] == labels
    assert predict.summary_caption(photo) == "2 faces: 1 with mask, 1 without"
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "two.drawn.png"))
    assert edge_colours(drawn, boxes, image.shape[1]) == [list(COLOURS[label]) for label in labels]


def test_cli_counts_in_the_singular_and_shows_100_percent_once(tiny_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "crops").mkdir()
    Image.fromarray(solid((0, 200, 0))).save(tmp_path / "crops" / "a.png")
    (tmp_path / "crops" / "b.png").write_text("not an image")
    monkeypatch.setattr(predict, "tqdm", functools.partial(predict.tqdm, mininterval=0))  # every step shown
    status, lines, err = run_cli(capsys, tmp_path / "crops", "--crops", "--model", tiny_run, "--batch-size", "1")
    assert status == 1 and len(lines) == 1
    assert "1 face in 1 file\n" in err and "1 file failed:" in err
    assert err.count("100%") == 1 and "50%" in err, err


def test_cli_huge_image_is_refused_by_name(tiny_run, tmp_path, capsys):
    Image.new("L", (8100, 8000)).save(tmp_path / "huge.png")  # 64.8 Mpx, over the 64 Mpx limit
    status, lines, err = run_cli(capsys, tmp_path / "huge.png", "--crops", "--model", tiny_run)
    assert status == 2 and not lines, "the only file failed: no face classified"
    assert "huge.png" in err and "exceeds the limit" in err


def test_cli_missing_model_folder(tmp_path, capsys):
    Image.fromarray(solid((0, 200, 0))).save(tmp_path / "a.png")
    status, _, err = run_cli(capsys, tmp_path / "a.png", "--crops", "--model", tmp_path / "no-such-run")
    assert status == 2 and "no-such-run: no such model folder" in err


def test_cli_model_of_another_format_version(tiny_run, tmp_path, capsys):
    other = Path(shutil.copytree(tiny_run, tmp_path / "old-run"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "format_version": 0}))
    with pytest.raises(RunFolderError, match="format"):
        load_run(other)
    Image.fromarray(solid((0, 200, 0))).save(tmp_path / "a.png")
    status, _, err = run_cli(capsys, tmp_path / "a.png", "--crops", "--model", other)
    assert status == 2 and "config.json: model format 0" in err


def test_cli_rejects_a_threshold_outside_0_1(tiny_run, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--threshold", "1.5"])
    assert "not in [0, 1]" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} not present")
def test_real_photo_with_ground_truth_boxes(tiny_run, tmp_path, capsys):
    status, lines, _ = run_cli(capsys, REAL_DATA / "images" / "maksssksksss5.png", "--model", tiny_run,
                               "--boxes-from", REAL_DATA, "--draw", tmp_path)
    assert status == 0
    assert [line["annotation"] for line in lines] == ["with_mask", "without_mask", "without_mask", "with_mask"]
    assert lines[1]["box"] == [364, 30, 400, 66]  # xmax=401 in the XML, clipped to the 400-px image
    width, height = Image.open(tmp_path / "maksssksksss5.drawn.png").size
    assert width == 800 and 532 < height < 532 + 60, "upscaled to 800 px, with the caption strip below"


def test_predict_names_the_run_and_the_runtime_and_suggests_an_export(tiny_run, tmp_path, capsys):
    """Which model answers is never a guess: the run's name and runtime on stderr, and the way to a faster one."""
    from PIL import Image

    from maskclf.cli import main
    from maskclf.runs import export_path

    crop = tmp_path / "face.png"
    Image.fromarray(draw_face(40, "without_mask")).save(crop)
    assert main(["predict", "--model", str(tiny_run), "--crops", str(crop)]) == 0
    err = capsys.readouterr().err
    assert f"model: {tiny_run.name} (Keras; `python -m maskclf export --model {tiny_run}`" in err
    assert not export_path(tiny_run, "onnx").exists()
