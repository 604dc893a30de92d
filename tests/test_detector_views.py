"""Detector views: faces cut with the face detector's own boxes, cached by its settings, absent where it misses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskclf import crossval, detect, detector_views, featureset, memo, trainconfig
from maskclf.data import read_manifest, source_photos_dir
from maskclf.framing import manifest_boxes

from conftest import REAL_DATA


@pytest.fixture
def faces(extracted_faces):
    return extracted_faces


@pytest.fixture
def fake(tmp_path, faces, monkeypatch):
    """A detector that finds every annotated face of a photo, boxed 4 px looser and clipped to the photo, except
    the first face of the manifest; it counts its calls. The result cache is the test's own."""
    manifest = read_manifest(faces)
    missed = manifest.index[0]
    calls = []

    def find(path):
        calls.append(path.name)
        mine = manifest[(manifest["source_image"] == path.name) & (manifest.index != missed)]
        if mine.empty:
            return []
        w, h = int(mine["image_width"].iloc[0]), int(mine["image_height"].iloc[0])
        return [(max(x0 - 4, 0), max(y0 - 4, 0), min(x1 + 4, w), min(y1 + 4, h)) for x0, y0, x1, y1 in manifest_boxes(mine)]

    monkeypatch.setattr(memo, "FEATURES_DIR", tmp_path / "cache")
    return manifest, missed, calls, find


def test_each_found_face_gets_the_detectors_box_inside_its_photo_and_a_missed_face_gets_none(faces, fake):
    manifest, missed, _, find = fake
    boxes = detector_views.detector_boxes(manifest, source_photos_dir(faces), find)
    assert boxes.shape == (len(manifest), 4)
    found = detector_views.available(boxes)
    assert found[missed] == 0 and found.sum() == len(manifest) - 1
    annotated = np.array(manifest_boxes(manifest), float)
    have = found > 0
    np.testing.assert_array_equal(boxes[have, :2], np.maximum(annotated[have, :2] - 4, 0))
    assert (boxes[have, 2] <= manifest["image_width"][have]).all() and (boxes[have, 3] <= manifest["image_height"][have]).all()
    load = detector_views.detector_loader(manifest, source_photos_dir(faces), boxes, 32)
    first_found = int(np.flatnonzero(have)[0])
    assert load(first_found).shape == (32, 32, 3) and load(missed).shape == (32, 32, 3)


def test_the_boxes_are_cached_and_keyed_by_the_detectors_settings(faces, fake, monkeypatch):
    manifest, _, calls, find = fake
    photos = source_photos_dir(faces)
    first = detector_views.detector_boxes(manifest, photos, find)
    n_photos = manifest["source_image"].nunique()
    assert len(calls) == n_photos
    np.testing.assert_array_equal(detector_views.detector_boxes(manifest, photos, find), first)
    assert len(calls) == n_photos, "a rerun reads the cache"
    recipe = detector_views.recipe()
    monkeypatch.setattr(detect, "CENTERFACE_SCORE", detect.CENTERFACE_SCORE + 0.1)
    assert detector_views.recipe() != recipe, "the view's backbone outputs are keyed by the detector's settings"
    detector_views.detector_boxes(manifest, photos, find)
    assert len(calls) == 2 * n_photos, "another detector setting is another cache entry"


def test_a_face_without_a_detector_view_is_kept_and_its_view_weighs_nothing(faces, fake, tmp_path, monkeypatch):
    manifest, missed, _, find = fake
    real = detector_views.detector_boxes
    monkeypatch.setattr(detector_views, "detector_boxes", lambda m, p: real(m, p, find))
    config = trainconfig.TrainConfig.from_params(dict(backbone="efficientnet_lite0", weights="imagenet", image_size=32,
                                                      batch_size=16, pooling="avg", head="lbfgs", labels="original",
                                                      augment_views=0, jitter_views=0, detector_views=1))
    fs = featureset.prepare_features(manifest, faces, config, cache_dir=tmp_path / "features", verbose=0)
    assert fs.views == ["none", detector_views.VIEW] and fs.pooled.shape[1] == len(manifest)
    weight = fs.available()
    assert weight[0].all(), "every face keeps its annotated view"
    assert weight[1, missed] == 0 and weight[1].sum() == len(manifest) - 1
    assert "det" in trainconfig.config_label(config)
    again = featureset.prepare_features(manifest, faces, config, cache_dir=tmp_path / "features", verbose=0)
    assert again.cache_hit
    np.testing.assert_array_equal(again.pooled, fs.pooled)
    cv, kept = crossval.cross_validate(fs, manifest, 0)
    assert kept is not None and not np.isnan(cv["oof_probability"]).any()


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "images" / "maksssksksss0.png").is_file(), reason=f"{REAL_DATA} not present")
def test_the_default_views_boxes_come_from_the_cached_candidates_and_are_the_default_detectors(tmp_path, monkeypatch):
    from maskclf.images import load_rgb

    monkeypatch.setattr(memo, "FEATURES_DIR", tmp_path / "cache")
    name = "maksssksksss0.png"
    manifest = pd.DataFrame({"source_image": [name], "fold": [0], "xmin": [0], "ymin": [0], "xmax": [8], "ymax": [8]})
    found = detector_views._default_finder(manifest, REAL_DATA / "images")(REAL_DATA / "images" / name)
    detected = detect.detect_faces(detect.make_detector(), np.asarray(load_rgb(REAL_DATA / "images" / name)))
    assert [tuple(box) for box in found.astype(int).tolist()] == detected and len(detected) > 0
    assert list((tmp_path / "cache").rglob("candidates*")), "read from the verifier's candidate cache, one pass for both"


def test_the_candidates_that_are_detector_view_crops_are_named_as_rows_of_that_views_cache(monkeypatch, tmp_path):
    """The verifier's candidates include the detector view's crops (same photo, same box, same cut): those are read
    from the view's cache file, matched by photo and box; a face the detector missed matches nothing."""
    from types import SimpleNamespace

    from maskclf.candidates import candidate_name, detector_view_rows

    manifest = pd.DataFrame({"source_image": ["p.png", "p.png", "q.png"],
                             "crop_file": [str(tmp_path / f"c{i}.png") for i in range(3)]})
    boxes = np.array([[1, 2, 3, 4], [np.nan] * 4, [5, 6, 7, 8]])
    monkeypatch.setattr(detector_views, "detector_boxes", lambda m, photos: boxes)
    fs = SimpleNamespace(views=["none", detector_views.VIEW], view_files=[tmp_path / "none.npz", tmp_path / "det.npz"])
    names = [candidate_name("q.png", (5, 6, 7, 8)), candidate_name("p.png", (9, 9, 19, 19)),
             candidate_name("p.png", (1, 2, 3, 4)), candidate_name("q.png", (1, 2, 3, 4))]
    known = detector_view_rows(fs, names, manifest, tmp_path)
    assert known.file == tmp_path / "det.npz" and known.file_names == ["c0.png", "c1.png", "c2.png"]
    assert known.rows.tolist() == [0, 2] and known.file_rows.tolist() == [2, 0]
    assert detector_view_rows(SimpleNamespace(views=fs.views, view_files=None), names, manifest, tmp_path) is None
    assert detector_view_rows(SimpleNamespace(views=["none"], view_files=fs.view_files[:1]), names, manifest,
                              tmp_path) is None
    assert detector_view_rows(fs, names[1:2], manifest, tmp_path) is None, "no candidate is a detector-view crop"


def test_a_missed_faces_placeholder_is_read_from_the_original_view_when_the_crops_have_no_margin(faces, fake, tmp_path,
                                                                                                  monkeypatch, precision):
    """A face the detector missed is cut with its annotated box: with no extraction margin, its crop file. The
    bfloat16 pass gives a face the same numbers in any batch, so that row is read from the original view's cache, not
    passed again; with a margin it is computed, and is the same."""
    from maskclf import data

    if precision("bfloat16") != "bfloat16":
        pytest.skip("this CPU has no native bfloat16: the float32 pass lends no rows")
    manifest, missed, _, find = fake
    real_boxes, real_loader = detector_views.detector_boxes, detector_views.detector_loader
    monkeypatch.setattr(detector_views, "detector_boxes", lambda m, p: real_boxes(m, p, find))
    asked = []

    def loader(*args):
        load = real_loader(*args)
        return lambda i: asked.append(i) or load(i)

    monkeypatch.setattr(detector_views, "detector_loader", loader)
    config = trainconfig.TrainConfig.from_params(dict(backbone="efficientnet_lite0", weights="imagenet", image_size=32,
                                                      batch_size=16, pooling="avg", head="lbfgs", labels="original",
                                                      augment_views=0, jitter_views=0, detector_views=1))
    row = manifest.index.get_loc(missed)
    fs = featureset.prepare_features(manifest, faces, config, cache_dir=tmp_path / "read", verbose=0)
    assert sorted(asked) == [i for i in range(len(manifest)) if i != row]
    np.testing.assert_array_equal(fs.pooled[1, row], fs.pooled[0, row])
    asked.clear()
    info = data.read_extraction_info(faces)
    monkeypatch.setattr(data, "read_extraction_info", lambda d: {**info, "margin": 0.1})
    computed = featureset.prepare_features(manifest, faces, config, cache_dir=tmp_path / "computed", verbose=0)
    assert sorted(asked) == list(range(len(manifest))), "with a margin the crop is not the cut: every row computed"
    np.testing.assert_array_equal(computed.pooled, fs.pooled)
