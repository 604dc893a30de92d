"""Running the end-to-end model: batch by batch, and over crop files in one aligned pass.

The model itself (raw 0-255 RGB crops of `image_size` in, softmax probabilities over
`class_names` out) is stored in a run folder; `maskclf.runs` reads and writes it, and
`maskclf.answers` turns its outputs into answers.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np


def run_batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`fn` applied to `x` batch by batch, the outputs concatenated as one NumPy array."""
    return np.concatenate([np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def predict_probabilities(model: Any, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Softmax outputs (N, n_classes) of an end-to-end model (Keras, or an exported one) on raw 0-255 crops."""
    if len(crops) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return run_batched(model.predict_on_batch, crops, batch_size).astype(np.float32)


def cached_probabilities(model: Any, crops: np.ndarray, batch_size: int = 32, fingerprint: str | None = None) -> np.ndarray:
    """`predict_probabilities` of a Keras model, from the result cache (maskclf.memo) when it already scored these
    crops; `fingerprint`: the model's `model_fingerprint`, when the caller has it."""
    from .memo import array_fingerprint, cached_arrays, model_fingerprint

    key = {"model": fingerprint or model_fingerprint(model), "crops": array_fingerprint(crops), "batch_size": batch_size}
    return cached_arrays("probabilities", key, lambda: {"p": predict_probabilities(model, crops, batch_size)})["p"]


class CachedScorer:
    """P(without_mask) of raw crops (N, S, S, 3) by a run's model (Keras, or `as_deployed`'s), from the result
    cache when it already scored them. `identity` names what it computes (the model, its run config, the batch
    size), for caches of its scores keyed by how the crops were made rather than by the crops
    (maskclf.framing.recut_scores)."""

    def __init__(self, model: Any, config: dict[str, Any], batch_size: int = 32) -> None:
        from .memo import model_fingerprint

        self.model, self.config, self.batch_size = model, config, batch_size
        self.identity = {"model": model_fingerprint(model), "config": json.dumps(config, sort_keys=True, default=str),
                         "batch_size": batch_size}

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        from .answers import p_without_mask

        return p_without_mask(cached_probabilities(self.model, crops, self.batch_size, self.identity["model"]),
                              self.config)


def cached_scorer(model: Any, config: dict[str, Any], batch_size: int = 32) -> CachedScorer:
    """A run's Keras model as a CachedScorer."""
    return CachedScorer(model, config, batch_size)


class CompiledModel:
    """A run's Keras model compiled by OpenVINO in `precision` (maskclf.fastpass), behind the two Keras calls
    classification uses: what its bfloat16 `openvino` export computes, without writing the export. It is compiled at its
    first batch, so a rerun whose scores are all cached compiles nothing."""

    def __init__(self, model: Any, precision: str):
        self.model, self.precision, self.output_shape = model, precision, model.output_shape
        self._runner: Callable[[np.ndarray], np.ndarray] | None = None

    def predict_on_batch(self, crops: np.ndarray) -> np.ndarray:
        if self._runner is None:
            from .fastpass import compile_openvino

            self._runner = compile_openvino(self.model, self.precision)
        return self._runner(np.asarray(crops, np.float32))


def as_deployed(model: Any, config: dict[str, Any]) -> Any:
    """A run's model as its bfloat16 `openvino` export runs it, for the evaluation's large passes (re-cuts, whole
    photos): compiled in bfloat16 when the run's features were (`feature_precision` in its config) and this CPU
    computes bfloat16, else the Keras model itself. 02_train checks that the float32 saved model gives the bfloat16
    pipeline's labels; `export` keeps the bfloat16 file only when its own parity check passes."""
    from .fastpass import feature_precision

    if config.get("feature_precision", "float32") == "float32" or feature_precision() == "float32":
        return model
    return CompiledModel(model, config["feature_precision"])


def predict_crops(model: Any, paths: Sequence[str], image_size: int, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """Softmax outputs (N, n_classes) on each crop file, in one pass over an unshuffled set.

    Returns the paths in the order the pass saw them, together with the scores, so the
    caller can check alignment (`evaluate.prediction_table`) instead of trusting two
    separate iterations. The model runs as a compiled graph (`predict_on_batch`): called
    eagerly, the band-pooled ResNet-50 peaked at 10.6 GiB on batches of 64, compiled at 1.8 GiB.
    """
    import tensorflow as tf

    from .features import crop_dataset

    ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(list(map(str, paths))).batch(batch_size),
                             crop_dataset(paths, image_size, batch_size))
    seen, probs = [], []
    for batch_paths, images in ds:
        seen += [p.decode() for p in batch_paths.numpy()]
        probs.append(np.asarray(model.predict_on_batch(images)))
    return seen, np.concatenate(probs) if probs else np.zeros((0, model.output_shape[-1]), np.float32)


def cached_predict_crops(model: Any, paths: Sequence[str], image_size: int,
                         batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """`predict_crops`, from the result cache (maskclf.memo) when this model already scored these crop files."""
    from .fsutil import files_fingerprint
    from .memo import cached_arrays, model_fingerprint

    paths = list(map(str, paths))
    key = {"model": model_fingerprint(model), "crops": files_fingerprint(paths), "image_size": image_size,
           "batch_size": batch_size, "runner": "predict_on_batch", "output": "probabilities"}

    def compute() -> dict[str, np.ndarray]:
        seen, probs = predict_crops(model, paths, image_size, batch_size)
        position = {path: i for i, path in enumerate(paths)}
        return {"seen": np.array([position[path] for path in seen], dtype=np.int64), "probabilities": probs}

    stored = cached_arrays("crop-probabilities", key, compute)
    return [paths[i] for i in stored["seen"]], stored["probabilities"]

