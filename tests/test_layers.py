"""The custom layers that saved models carry."""

import keras
import numpy as np
import pytest

from maskclf.layers import HorizontalBands, MergeClasses


def test_horizontal_bands_pool_each_band_in_order():
    x = np.random.default_rng(0).random((2, 17, 5, 4)).astype("float32")
    got = keras.ops.convert_to_numpy(HorizontalBands(3)(x))
    rows = [(0, 6), (6, 11), (11, 17)]
    expected = np.concatenate([f(x[:, a:b], axis=(1, 2)) for a, b in rows for f in (np.mean, np.max)], axis=-1)
    assert got.shape == (2, 3 * 2 * 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("height", [1, 2, 4, 9])
def test_every_band_keeps_a_row_on_short_maps(height):
    rows = HorizontalBands(3).band_rows(height)
    assert len(rows) == 3 and all(0 <= start < stop <= height for start, stop in rows)
    assert rows[0][0] == 0 and rows[-1][1] == height
    x = np.ones((1, height, 2, 1), "float32")
    assert np.isfinite(keras.ops.convert_to_numpy(HorizontalBands(3)(x))).all()


def test_horizontal_bands_survive_save_and_load(tmp_path):
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, HorizontalBands(4, name="bands")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).random((3, 8, 8, 2)).astype("float32")
    assert loaded.get_layer("bands").bands == 4
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_horizontal_bands_refuse_zero_bands():
    with pytest.raises(ValueError, match="bands must be >= 1"):
        HorizontalBands(0)


def test_merged_probabilities_stay_within_one():
    merge = MergeClasses([[1, 0], [0, 1], [0, 1]])
    probabilities = np.array([[0.0, 0.5000001, 0.5], [0.2, 0.3, 0.5]], "float32")  # the first sums to 1 + 1.2e-7
    assert probabilities[0, 1] + probabilities[0, 2] > 1
    got = keras.ops.convert_to_numpy(merge(probabilities))
    np.testing.assert_array_equal(got[0], [0.0, 1.0])
    np.testing.assert_allclose(got[1], [0.2, 0.8], rtol=1e-6)
