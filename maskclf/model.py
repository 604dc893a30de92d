"""Run folders: the end-to-end model a user deploys, with its config, history and metrics.

A run folder `models/<run>/` holds

- `model.keras`: raw 0-255 RGB crops of `image_size` in, softmax probabilities over
  `class_names` out; preprocessing lives inside the model;
- `config.json`: how it was made (backbone, weights, image size, class names, format);
- `history.json` and `metrics.json` when training wrote them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from . import __version__
from .fsutil import atomic_dir, write_json_atomic

FORMAT_VERSION = 1
"""Bumped whenever the model's input/output contract changes."""

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
MAX_IMAGE_SIZE = 1024
"""Largest `image_size` a config may name (the backbones take 224-300 px)."""
RUN_FILES = {
    MODEL_FILE: "the end-to-end model (train)",
    CONFIG_FILE: "how it was made (train)",
    "history.json": "learning curves (train)",
    "metrics.json": "validation and cross-validation metrics (train)",
    "cv_predictions.csv": "out-of-fold scores of every face (train)",
    "comparison.csv": "the ablation table (02_train)",
    "evaluation.json": "the headline metrics (03_evaluate)",
    "val_predictions.csv": "validation scores, one aligned pass (03_evaluate)",
    "export/": "TFLite and ONNX files with parity.json (export)",
}
"""Every file a run folder can hold, and what writes it."""


class RunFolderError(ValueError):
    """A model folder is missing, incomplete or from an incompatible version."""


def save_run(
    run_dir: str | Path,
    model: keras.Model,
    config: dict[str, Any],
    history: dict[str, list[float]] | None = None,
    metrics: dict[str, Any] | None = None,
    extras: dict[str, str] | None = None,
) -> Path:
    """Write a complete run folder atomically and return its path.

    A non-empty `run_dir` without `config.json` (not a run folder) is refused, never replaced.

    `config` must name at least `image_size` and `class_names`; `extras` maps further
    file names to their text (e.g. CSV tables).
    """
    for key in ("image_size", "class_names"):
        if key not in config:
            raise ValueError(f"run config needs {key!r}")
    config = {**config, "format_version": FORMAT_VERSION, "maskclf_version": __version__}
    run_dir = Path(run_dir)
    with atomic_dir(run_dir, marker=CONFIG_FILE) as tmp:
        model.save(tmp / MODEL_FILE)
        write_json_atomic(tmp / CONFIG_FILE, config)
        if history is not None:
            write_json_atomic(tmp / "history.json", history)
        if metrics is not None:
            write_json_atomic(tmp / "metrics.json", metrics)
        for name, text in (extras or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return run_dir


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and check `config.json` of a run folder."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no such model folder (train one with notebooks/02_train.ipynb)")
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {run_dir} is not a complete model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    found = config.get("format_version")
    if found != FORMAT_VERSION:
        raise RunFolderError(
            f"{path}: model format {found!r}, this maskclf reads format {FORMAT_VERSION}; "
            "retrain the model or use the maskclf version that wrote it"
        )
    check_config(path, config)
    return config


def check_config(path: Path, config: dict[str, Any]) -> None:
    """RunFolderError naming `path` unless `image_size` is a positive int and `class_names` two or more names."""
    size, names = config.get("image_size"), config.get("class_names")
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        raise RunFolderError(f"{path}: 'image_size' must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, "
                             f"got {size!r}")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise RunFolderError(f"{path}: 'class_names' must be a list of two or more distinct names, got {names!r}")


def check_model_matches(path: Path, model: keras.Model, config: dict[str, Any]) -> None:
    """RunFolderError naming `path` unless the model takes `image_size` crops and outputs one score per class."""
    size, n_classes = config["image_size"], len(config["class_names"])
    height, width = tuple(model.input_shape)[1:3]
    if (height, width) != (size, size) and (height, width) != (None, None):
        raise RunFolderError(f"{path}: 'image_size' is {size}, but the model takes {height}x{width} crops")
    if model.output_shape[-1] != n_classes:
        raise RunFolderError(f"{path}: 'class_names' has {n_classes} names, but the model outputs "
                             f"{model.output_shape[-1]} scores")


def load_run(run_dir: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """Load the end-to-end model and config of a run folder."""
    from . import layers  # noqa: F401  (registers the custom layers for deserialisation)

    config = read_config(run_dir)
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {run_dir} is not a complete model folder")
    if not zipfile.is_zipfile(path):
        raise RunFolderError(f"{path}: not a complete Keras archive (truncated or corrupt); copy it again or retrain")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt archive
        raise RunFolderError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    check_model_matches(Path(run_dir) / CONFIG_FILE, model, config)
    return model, config


def run_batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`fn` applied to `x` batch by batch, the outputs concatenated as one NumPy array."""
    return np.concatenate([np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def latest_run(models_dir: str | Path = "models") -> Path:
    """Return the most recently written complete run folder under `models_dir`."""
    models_dir = Path(models_dir)
    runs = [p.parent for p in models_dir.glob(f"*/{CONFIG_FILE}") if (p.parent / MODEL_FILE).is_file()]
    if not runs:
        raise RunFolderError(f"{models_dir}: no trained model found (run notebooks/02_train.ipynb or `python -m maskclf reports`)")
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """`metrics.json` of a run folder (validation metrics and cross-validation)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {run_dir} is not a complete model folder")
    return json.loads(path.read_text(encoding="utf-8"))
