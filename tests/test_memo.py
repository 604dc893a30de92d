"""Cached results: computed once per key, a changed input recomputes, a reread gives the same numbers."""

from __future__ import annotations

import keras
import pytest
import numpy as np

from maskclf import memo


def test_an_array_is_computed_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"p": (np.arange(5) / 3).astype(np.float32), "seen": np.array(["a.jpg", "b.jpg"])}

    first = memo.cached_arrays("probabilities", {"model": "a", "faces": "x"}, compute, tmp_path)
    again = memo.cached_arrays("probabilities", {"model": "a", "faces": "x"}, compute, tmp_path)
    assert len(calls) == 1
    assert again["p"].dtype == np.float32 and again["seen"].tolist() == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(first["p"], again["p"])
    memo.cached_arrays("probabilities", {"model": "b", "faces": "x"}, compute, tmp_path)
    assert len(calls) == 2, "another model is another entry"
    assert len(list((tmp_path / "results").glob("*.npz"))) == 2 and not list((tmp_path / "results").glob(".*"))
    assert memo.stored_arrays("probabilities", {"model": "c", "faces": "x"}, tmp_path) is None, "a miss computes nothing"
    np.testing.assert_array_equal(memo.stored_arrays("probabilities", {"model": "a", "faces": "x"}, tmp_path)["p"], first["p"])
    assert len(calls) == 2


def test_json_results_read_back_equal_to_the_last_digit(tmp_path):
    value = {"ci": [0.1 + 0.2, 1 / 3], "n": 815, "rows": [["a", 2.5e-17]]}
    first = memo.cached_json("bootstrap", {"seed": 42}, lambda: value, tmp_path)
    again = memo.cached_json("bootstrap", {"seed": 42}, lambda: {"other": True}, tmp_path)
    assert first == again == value
    assert memo.cached_json("bootstrap", {"seed": 43}, lambda: {"other": True}, tmp_path) == {"other": True}


def test_model_fingerprint_follows_the_weights(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    model = build()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert memo.model_fingerprint(model) == memo.model_fingerprint(loaded)
    kernel, bias = loaded.get_weights()
    loaded.set_weights([kernel, bias + 1e-6])
    assert memo.model_fingerprint(loaded) != memo.model_fingerprint(model)


def test_array_fingerprint_sees_contents_shape_and_type():
    a = np.zeros((2, 3), np.uint8)
    b = a.copy()
    b[1, 2] = 1
    prints = {memo.array_fingerprint(x) for x in (a, b, a.reshape(3, 2), a.astype(np.float32))}
    assert len(prints) == 4 and memo.array_fingerprint(a.copy()) == memo.array_fingerprint(a)


def test_files_fingerprint_sees_names_and_contents(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = memo.files_fingerprint([a, b])
    assert memo.files_fingerprint([b, a]) != first
    b.write_bytes(b"two!")
    assert memo.files_fingerprint([a, b]) != first


def test_evaluation_scores_are_cached_by_model_and_crops(tiny, tmp_path, monkeypatch):
    from PIL import Image
    from synthetic import draw_face

    from maskclf import model as model_module

    model, config = tiny
    size = config["image_size"]
    paths = []
    for i, cls in enumerate(["with_mask", "without_mask", "with_mask"]):
        paths.append(str(tmp_path / f"face{i}.png"))
        Image.fromarray(draw_face(40 + 7 * i, cls)).save(paths[-1])
    seen, scores = model_module.cached_predict_crops(model, paths, size, batch_size=2)
    crops = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    score = model_module.cached_scorer(model, config, batch_size=2)
    fresh = score(crops)

    def no_model(*args, **kwargs):
        raise AssertionError("a cached result must not run the model")

    monkeypatch.setattr(model_module, "predict_crops", no_model)
    monkeypatch.setattr(model_module, "predict_probabilities", no_model)
    again_seen, again = model_module.cached_predict_crops(model, paths, size, batch_size=2)
    assert again_seen == seen == paths
    np.testing.assert_array_equal(again, scores)
    np.testing.assert_array_equal(model_module.cached_scorer(model, config, batch_size=2)(crops), fresh)
    Image.fromarray(draw_face(44, "without_mask")).save(paths[0])  # a changed crop is scored again
    with pytest.raises(AssertionError, match="must not run the model"):
        model_module.cached_predict_crops(model, paths, size, batch_size=2)
    with pytest.raises(AssertionError, match="must not run the model"):
        score(crops[:2])


def test_finder_figures_are_cached_by_model_photos_and_faces(tiny, tmp_path, monkeypatch):
    import pandas as pd

    from maskclf import wholephoto

    model, config = tiny
    (tmp_path / "p1.png").write_bytes(b"photo one")
    manifest = pd.DataFrame({"source_image": ["p1.png"], "face_index": [0], "fold": [0], "xmin": [1], "ymin": [1],
                             "xmax": [9], "ymax": [9], "label": ["with_mask"], "original_label": ["with_mask"]})
    calls = []

    def figures(*args, **kwargs):
        calls.append(1)
        table = pd.DataFrame([{"group": "all", "value": "all", "faces": 1, "recall": 1 / 3}]).set_index(["group", "value"])
        return {wholephoto.ALONE: (table, {"photos_per_s": 2 / 3}), wholephoto.VERIFIED: (table, {"photos_per_s": 0.5})}

    monkeypatch.setattr(wholephoto, "finder_figures", figures)
    first = wholephoto.cached_finder_figures(model, config, manifest, tmp_path)
    again = wholephoto.cached_finder_figures(model, config, manifest, tmp_path)
    assert len(calls) == 1 and list(again) == list(first) == [wholephoto.ALONE, wholephoto.VERIFIED]
    assert again[wholephoto.VERIFIED][1] == first[wholephoto.VERIFIED][1] == {"photos_per_s": 0.5}
    pd.testing.assert_frame_equal(again[wholephoto.ALONE][0], first[wholephoto.ALONE][0])
    wholephoto.cached_finder_figures(model, config, manifest.assign(xmax=[8]), tmp_path)
    (tmp_path / "p1.png").write_bytes(b"photo one, edited")
    wholephoto.cached_finder_figures(model, config, manifest, tmp_path)
    assert len(calls) == 3, "changed faces or a changed photo are computed again"


def test_files_fingerprint_never_opens_what_is_not_a_regular_file(tmp_path):
    import os

    from maskclf.fsutil import files_fingerprint

    fifo = tmp_path / "a.xml"
    os.mkfifo(fifo)  # opening it for reading would block forever
    (tmp_path / "b.xml").write_bytes(b"<annotation/>")
    assert files_fingerprint([fifo, tmp_path / "b.xml"]) != files_fingerprint([tmp_path / "b.xml"])
