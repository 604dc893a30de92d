"""Re-cut faces: jittered training views and the framing-robustness table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskclf import framing
from maskclf.data import extract_faces, read_manifest, source_photos_dir
from maskclf.evaluate import encode_labels
from maskclf.framing import (RECUTS, clip_to_photo, face_rng, framing_faces, framing_table, jitter_box,
                             jittered_loader, recut_box, recut_faces)


@pytest.fixture(scope="module")
def extracted(voc_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces") / "faces"
    extract_faces(voc_master, out, progress=False)
    return out


def test_jittered_boxes_stay_inside_the_photo_and_vary():
    width, height = 160, 96
    boxes = [(0, 0, 12, 12), (148, 84, 160, 96), (40, 20, 64, 44), (0, 0, 160, 96), (80, 50, 81, 51)]
    seen = set()
    for i, box in enumerate(boxes):
        for view in ("jitter1", "jitter2", "jitter3"):
            for key in range(40):
                x0, y0, x1, y1 = jitter_box(box, width, height, face_rng(42, view, f"face{i}_{key}"))
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
                seen.add((x0, y0, x1, y1))
    assert len(seen) > 200  # the jitter really moves the boxes


def test_jitter_is_seeded_per_face_and_view():
    box = (40, 20, 64, 44)
    same = [jitter_box(box, 160, 96, face_rng(42, "jitter1", "a.png")) for _ in range(3)]
    assert same[0] == same[1] == same[2]
    others = {jitter_box(box, 160, 96, face_rng(s, v, k))
              for s, v, k in ((43, "jitter1", "a.png"), (42, "jitter2", "a.png"), (42, "jitter1", "b.png"))}
    assert len(others) == 3 and same[0] not in others


def test_recuts_do_what_they_say():
    box, w, h = (40, 20, 80, 60), 160, 96
    assert recut_box(box, "annotated box", w, h) == box
    assert recut_box(box, "top 30% removed", w, h) == (40, 32, 80, 60)
    assert recut_box(box, "shifted 15% right and down", w, h) == (46, 26, 86, 66)
    assert recut_box(box, "10% tighter", w, h) == (44, 24, 76, 56)
    assert recut_box(box, "20% looser", w, h) == (32, 12, 88, 68)
    assert clip_to_photo((-5.0, -5.0, 170.0, 100.0), w, h) == (0, 0, 160, 96)
    assert clip_to_photo((159.6, 95.7, 170.0, 99.0), w, h) == (159, 95, 160, 96)  # one pixel is kept


def test_the_same_face_gives_the_same_views_on_a_rerun(extracted):
    manifest = read_manifest(extracted)
    photos = source_photos_dir(extracted)
    first = jittered_loader(manifest, photos, "jitter1", 42, 32)
    again = jittered_loader(manifest, photos, "jitter1", 42, 32)
    reverse = [again(i) for i in reversed(range(len(manifest)))][::-1]  # another order, a new loader
    for i in range(len(manifest)):
        np.testing.assert_array_equal(first(i), reverse[i])
    other = jittered_loader(manifest, photos, "jitter2", 42, 32)
    assert any(not np.array_equal(first(i), other(i)) for i in range(len(manifest)))


def test_jittered_views_are_cached_and_keyed_by_recipe(extracted, tmp_path, monkeypatch):
    import keras

    from maskclf.features import cached_outputs

    manifest = read_manifest(extracted)
    photos = source_photos_dir(extracted)
    loaders = {"jitter1": jittered_loader(manifest, photos, "jitter1", 42, 16)}
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    args = (model, list(manifest["crop_file"]), 16, {"backbone": "mean"}, tmp_path)
    kwargs = {"views": ["none", "jitter1"], "loaders": loaders, "verbose": 0}
    first, hit = cached_outputs(*args, **kwargs)
    assert not hit and first.shape == (2, len(manifest), 3)
    expected = np.stack([loaders["jitter1"](i).astype("float32").mean((0, 1)) for i in range(len(manifest))])
    np.testing.assert_allclose(first[1], expected, rtol=1e-5)
    again, hit = cached_outputs(*args, **kwargs)
    assert hit and np.array_equal(first, again)
    monkeypatch.setattr(framing, "JITTER_VERSION", framing.JITTER_VERSION + 1)
    _, hit = cached_outputs(*args, **kwargs)
    assert not hit  # a changed recipe never reads the old views
    assert len(list(tmp_path.glob("mean-16-jitter1-*.npz"))) == 2


def test_framing_table_on_a_known_answer(extracted):
    manifest = read_manifest(extracted)
    photos = source_photos_dir(extracted)
    faces = framing_faces(manifest, val_fold=0, min_size=24)
    assert len(faces) and (np.minimum(faces["width"], faces["height"]) >= 24).all()
    annotated = recut_faces(faces, photos, "annotated box", 32)
    y = encode_labels(faces["label"])

    def predict(crops: np.ndarray) -> np.ndarray:
        """Right on the annotator's box, 'with_mask' on anything else."""
        right = np.all(crops.reshape(len(crops), -1) == annotated.reshape(len(crops), -1), axis=1)
        return np.where(right, y, 0).astype(float)

    table = framing_table(predict, faces, photos, 32)
    assert list(table.index) == list(RECUTS)
    assert table.loc["annotated box", "accuracy"] == 1.0
    assert y.any() and table.loc["annotated box", "recall_without_mask"] == 1.0
    for kind in list(RECUTS)[1:]:
        assert table.loc[kind, "accuracy"] == pytest.approx(np.mean(y == 0))
        assert table.loc[kind, "accuracy_change"] == pytest.approx(np.mean(y == 0) - 1.0)


def test_a_cached_scorer_s_framing_check_is_read_back_without_cutting_a_face(extracted, tiny, monkeypatch):
    from maskclf import framing
    from maskclf.model import cached_scorer

    model, config = tiny
    faces = framing_faces(read_manifest(extracted), val_fold=0, min_size=24)
    photos = source_photos_dir(extracted)
    first = framing_table(cached_scorer(model, config, 4), faces, photos, config["image_size"])
    cut = framing.recut_faces

    def no_cut(*args, **kwargs):
        raise AssertionError("a cached re-cut's scores must not cut the faces again")

    monkeypatch.setattr(framing, "recut_faces", no_cut)
    pd.testing.assert_frame_equal(framing_table(cached_scorer(model, config, 4), faces, photos, config["image_size"]),
                                  first)
    with pytest.raises(AssertionError, match="cut the faces again"):  # other faces
        framing_table(cached_scorer(model, config, 4), faces.iloc[1:], photos, config["image_size"])
    with pytest.raises(AssertionError, match="cut the faces again"):  # another model's config
        framing_table(cached_scorer(model, {**config, "threshold_note": 1}, 4), faces, photos, config["image_size"])
    monkeypatch.setattr(framing, "recut_faces", cut)
    plain = framing_table(lambda crops: cached_scorer(model, config, 4)(crops), faces, photos, config["image_size"])
    pd.testing.assert_frame_equal(plain, first)
