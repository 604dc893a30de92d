"""Cached results: computed once per key, a changed input recomputes, a reread gives the same numbers."""

from __future__ import annotations

import keras
import numpy as np

from maskclf import memo


def test_an_array_is_computed_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(5) / 3

    first = memo.cached_array("probabilities", {"model": "a", "faces": "x"}, compute, tmp_path)
    again = memo.cached_array("probabilities", {"model": "a", "faces": "x"}, compute, tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    memo.cached_array("probabilities", {"model": "b", "faces": "x"}, compute, tmp_path)
    assert len(calls) == 2, "another model is another entry"
    assert len(list((tmp_path / "results").glob("*.npy"))) == 2 and not list((tmp_path / "results").glob(".*"))


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
