"""A tiny end-to-end model with the run-folder contract and a predictable answer, for tests.

Its logit for `without_mask` grows with redness, R - (G + B) / 2, of the mean colour:
a red or skin-coloured crop (the synthetic unmasked face) -> without_mask; a green or
blue one (the synthetic masked face has a blue lower half) -> with_mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SIZE = 32


CLASS_NAMES = ["with_mask", "mask_weared_incorrect", "without_mask"]
"""The tiny model's outputs, as a real model trained on the three annotated classes."""
REPORTS_AS = {"with_mask": "with_mask", "mask_weared_incorrect": "without_mask", "without_mask": "without_mask"}


def make_tiny_model():
    """Input (N, 32, 32, 3) raw RGB -> softmax over CLASS_NAMES; P(without_mask) in the binary sense, the sum
    of the last two, is sigmoid(20 * redness - 2), and the last two are equal (the three-way label is then
    `without_mask`).

    It has the custom layers of the real models, so exporters meet them too: band pooling
    (whose two band averages give back the mean colour), a standardisation and a softmax over
    three training classes.
    """
    import keras

    from maskclf.layers import HorizontalBands, Standardize

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="identity")(x)
    x = HorizontalBands(2, name="bands")(x)  # (avg, max) of the top half, then of the bottom half
    x = keras.layers.Dense(3, use_bias=False, name="band_mean")(x)
    x = Standardize(3, name="standardize")(x)  # z = (x - 0.5) / 0.5
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("identity").set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    eye = np.eye(3, dtype="float32")
    model.get_layer("band_mean").set_weights([np.vstack([eye / 2, 0 * eye, eye / 2, 0 * eye])])
    model.get_layer("standardize").set_weights([np.full(3, 0.5, "float32"), np.full(3, 0.5, "float32")])
    kernel = np.zeros((3, 3), "float32")
    kernel[:, 1] = kernel[:, 2] = 10 * np.array([1.0, -0.5, -0.5])  # 20 * redness of x, on z
    bias = np.array([0.0, -2.0 - np.log(2), -2.0 - np.log(2)], "float32")  # two halves of one 2-way logit
    model.get_layer("head").set_weights([kernel, bias])
    return model


def make_tiny_run(run_dir: str | Path, model=None) -> Path:
    """Write the tiny model (or `model`, a three-class variant of it) as a complete run folder and return its path."""
    from maskclf.runs import save_run

    config = {"image_size": IMAGE_SIZE, "class_names": CLASS_NAMES, "reports_as": REPORTS_AS, "run_id": "tiny",
              "backbone": "tiny", "weights": None}
    save_run(run_dir, make_tiny_model() if model is None else model, config)
    return Path(run_dir)


def make_tiny_binary_run(run_dir: str | Path) -> Path:
    """The tiny model as a run trained on the two binary classes: its last two outputs summed (the same
    P(without_mask))."""
    import keras

    from maskclf import CLASS_NAMES as BINARY
    from maskclf.runs import save_run

    three = make_tiny_model()
    merge = keras.layers.Dense(2, use_bias=False, name="binary")
    model = keras.Model(three.input, merge(three.output))
    merge.set_weights([np.array([[1, 0], [0, 1], [0, 1]], "float32")])
    config = {"image_size": IMAGE_SIZE, "class_names": list(BINARY), "run_id": "tiny-binary", "backbone": "tiny",
              "weights": None}
    save_run(run_dir, model, config)
    return Path(run_dir)


def solid(colour: tuple[int, int, int], size: int = 40) -> np.ndarray:
    """A `size` x `size` RGB crop of one colour."""
    return np.full((size, size, 3), colour, np.uint8)


def make_tiny_incorrect_model():
    """The tiny model with its middle output (`mask_weared_incorrect`) three times its last: an unmasked (red) face is
    then `mask_incorrect` in the three-way sense, and P(without_mask) in the binary sense, their sum, is unchanged."""
    model = make_tiny_model()
    kernel, bias = model.get_layer("head").get_weights()
    bias[1:] = -2.0 + np.log([0.75, 0.25])  # e^b1 + e^b2 = e^-2 = 2 e^(-2 - log 2), as before
    model.get_layer("head").set_weights([kernel, bias])
    return model
