"""Run folders: every file of `models/<run>/`, its format version, and how each is read and written.

This module is the only one that names a file of a run folder; training, evaluation,
export and the reports call it. `RUN_FILES` lists them all with what writes them. Every
write is atomic (the training files as one folder swapped in whole); every read first
checks `config.json`'s `format_version`, so a folder of another format is refused with
the file and the problem named, never half-read.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import POSITIVE, __version__
from .data import SIZE_LABELS
from .fsutil import atomic_dir, atomic_path, file_sha256, write_json_atomic

if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 1
"""Bumped whenever the model's input/output contract or a file's layout changes."""

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
CV_PREDICTIONS_FILE = "cv_predictions.csv"
COMPARISON_FILE = "comparison.csv"
EVALUATION_FILE = "evaluation.json"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
EXPORT_DIR = "export"
PARITY_FILE = f"{EXPORT_DIR}/parity.json"
EXPORT_FILES = {
    "tflite-fp32": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "onnx-int8": "model_int8.onnx",
}
"""Export format -> its file under `export/`."""

RUN_FILES = {
    MODEL_FILE: "the end-to-end model (train)",
    CONFIG_FILE: "how it was made (train)",
    HISTORY_FILE: "learning curves (train)",
    METRICS_FILE: "validation and cross-validation metrics (train)",
    CV_PREDICTIONS_FILE: "out-of-fold scores of every face (train)",
    COMPARISON_FILE: "the ablation table (train)",
    EVALUATION_FILE: "the headline metrics (03_evaluate)",
    VAL_PREDICTIONS_FILE: "validation scores, one aligned pass (03_evaluate)",
    f"{EXPORT_DIR}/": "TFLite and ONNX files with parity.json (export)",
}
"""Every file a run folder can hold, and what writes it."""

CV_PREDICTION_COLUMNS = ["crop_path", "source_image", "label", "fold", "p_without_mask"]
PREDICTION_COLUMNS = [
    "crop_path", "crop_file", "source_image", "face_index", "xmin", "ymin", "xmax", "ymax", "width", "height",
    "original_label", "label", "fold", "y_true", "p_without_mask", "predicted", "correct", "face_px", "size_bucket",
]
"""Columns of `val_predictions.csv`."""

MAX_JSON_ENTRY_BYTES = 16 << 20
"""Largest JSON file (config.json, metadata.json) a model.keras may hold: a ResNet-50's config is 90 kB."""
MAX_ENTRY_BYTES = 4 << 30
"""Largest entry of any other kind (the weights: 100 MB for a ResNet-50)."""
MAX_IMAGE_SIZE = 1024
"""Largest `image_size` a config may name (the backbones take 224-300 px)."""


class RunFolderError(ValueError):
    """A model folder is missing, incomplete or from an incompatible version."""


# --------------------------------------------------------------------------- write


def save_run(
    run_dir: str | Path,
    model: keras.Model,
    config: dict[str, Any],
    history: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    cv_predictions: pd.DataFrame | None = None,
    comparison: pd.DataFrame | None = None,
) -> Path:
    """Write a run folder's training files as one atomic swap and return its path.

    A non-empty `run_dir` without `config.json` (not a run folder) is refused, never replaced.
    `config` must name at least `image_size` and `class_names`; `cv_predictions` has
    CV_PREDICTION_COLUMNS, `comparison` one row per configuration (written when not empty).
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
            write_json_atomic(tmp / HISTORY_FILE, history)
        if metrics is not None:
            write_json_atomic(tmp / METRICS_FILE, metrics)
        if cv_predictions is not None:
            (tmp / CV_PREDICTIONS_FILE).write_text(cv_predictions[CV_PREDICTION_COLUMNS].to_csv(index=False), encoding="utf-8")
        if comparison is not None and len(comparison):
            (tmp / COMPARISON_FILE).write_text(comparison.to_csv(), encoding="utf-8")
    return run_dir


def write_evaluation(run_dir: str | Path, table: pd.DataFrame, headline: dict[str, Any],
                     metrics_path: str | Path | None = None) -> None:
    """Write `evaluation.json` and `val_predictions.csv` into a run folder (and the headline to `metrics_path`)."""
    run_dir = Path(run_dir)
    read_config(run_dir)
    write_json_atomic(run_dir / EVALUATION_FILE, headline)
    with atomic_path(run_dir / VAL_PREDICTIONS_FILE) as tmp:
        table[PREDICTION_COLUMNS].to_csv(tmp, index=False)
    if metrics_path:
        write_json_atomic(metrics_path, headline)


def export_path(run_dir: str | Path, name: str) -> Path:
    """Where the export file `name` of a run goes: an EXPORT_FILES format or PARITY_FILE."""
    if name == PARITY_FILE:
        return Path(run_dir) / PARITY_FILE
    if name not in EXPORT_FILES:
        raise ValueError(f"unknown export format {name!r}; choose from {', '.join(EXPORT_FILES)}")
    return Path(run_dir) / EXPORT_DIR / EXPORT_FILES[name]


def write_parity(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write the export's parity report, `export/parity.json`, atomically; its `keras_sha256` names the
    model.keras it was measured against (`model_sha256`): `read_parity` trusts no report without it."""
    return write_json_atomic(export_path(run_dir, PARITY_FILE), report)


def model_sha256(run_dir: str | Path) -> str:
    """SHA-256 of the run's model.keras: what ties an export to the model it was made from (not file times)."""
    return file_sha256(Path(run_dir) / MODEL_FILE)


def read_parity(run_dir: str | Path, keras_sha256: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """`export/parity.json` if it was measured against the run's model.keras (`keras_sha256`, default: computed
    now), else None; and why it is not used (None when there is none)."""
    path = export_path(run_dir, PARITY_FILE)
    if not path.is_file():
        return None, None
    try:
        report = read_json(run_dir, PARITY_FILE)
    except (OSError, ValueError) as exc:  # RunFolderError is a ValueError
        return None, f"{path}: unreadable ({exc})"
    if not isinstance(report, dict) or not isinstance(report.get("formats"), dict):
        return None, f"{path}: not a parity report"
    if report.get("keras_sha256") != (keras_sha256 or model_sha256(run_dir)):
        return None, (f"{path}: measured against another model.keras (its SHA-256 differs from "
                      f"{Path(run_dir) / MODEL_FILE}'s): the exports are stale")
    return report, None


# --------------------------------------------------------------------------- read


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and check `config.json` of a run folder (its format version first)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no such model folder (train one with notebooks/02_train.ipynb)")
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {run_dir} is not a complete model folder")
    config = _load_json(path)
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
                             f"got {size!r:.40}")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise RunFolderError(f"{path}: 'class_names' must be a list of two or more distinct names, got {names!r:.200}")
    if POSITIVE not in names:
        raise RunFolderError(f"{path}: 'class_names' {names!r:.200} lacks {POSITIVE!r}, the class the model answers for")


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
    import keras

    from . import layers  # noqa: F401  (registers the custom layers for deserialisation)

    config = read_config(run_dir)
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {run_dir} is not a complete model folder")
    if not zipfile.is_zipfile(path):
        raise RunFolderError(f"{path}: not a complete Keras archive (truncated or corrupt); copy it again or retrain")
    check_archive(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt archive
        raise RunFolderError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    check_model_matches(Path(run_dir) / CONFIG_FILE, model, config)
    return model, config


def check_archive(path: Path) -> None:
    """RunFolderError naming `path` when an entry of the Keras archive declares more uncompressed bytes than
    MAX_JSON_ENTRY_BYTES (its JSON files) or MAX_ENTRY_BYTES (any other): a zip bomb, refused before Keras
    reads it. Python's zipfile never inflates an entry past its declared size."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: not a complete Keras archive ({exc}); copy it again or retrain") from None
    for entry in entries:
        limit = MAX_JSON_ENTRY_BYTES if entry.filename.endswith(".json") else MAX_ENTRY_BYTES
        if entry.file_size > limit:
            raise RunFolderError(f"{path}: its entry {entry.filename!r:.100} declares {entry.file_size} bytes "
                                 f"uncompressed, over the limit of {limit}; refusing to load it")


def latest_run(models_dir: str | Path = "models") -> Path:
    """Return the most recently written complete run folder under `models_dir`."""
    models_dir = Path(models_dir)
    runs = [p.parent for p in models_dir.glob(f"*/{CONFIG_FILE}") if (p.parent / MODEL_FILE).is_file()]
    if not runs:
        raise RunFolderError(f"{models_dir}: no trained model found (run notebooks/02_train.ipynb or `python -m maskclf reports`)")
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of a run folder (`metrics.json`, `history.json`, `evaluation.json`, PARITY_FILE)."""
    return _load_json(_existing(run_dir, name, ".json"))


def _load_json(path: Path) -> Any:
    """A run folder's JSON file; RunFolderError naming it when it is not JSON Python can hold (nested too
    deep, a number of more digits than int() converts, bad UTF-8)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise RunFolderError(f"{path}: not valid JSON ({problem})") from None


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """A CSV file of a run folder; `size_bucket` (val_predictions.csv) comes back as ordered categories."""
    table = pd.read_csv(_existing(run_dir, name, ".csv"), index_col=0 if name == COMPARISON_FILE else None)
    if "size_bucket" in table:
        table["size_bucket"] = pd.Categorical(table["size_bucket"], categories=SIZE_LABELS, ordered=True)
    return table


def _existing(run_dir: str | Path, name: str, suffix: str) -> Path:
    """The path of the run file `name`, after checking the folder's format; RunFolderError naming what writes it."""
    what = RUN_FILES.get(name) or (RUN_FILES[f"{EXPORT_DIR}/"] if name == PARITY_FILE else None)
    if what is None or not name.endswith(suffix):
        raise ValueError(f"{name!r} is not a {suffix} file of a run folder; known: {', '.join(RUN_FILES)}")
    read_config(run_dir)
    path = Path(run_dir) / name
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; it holds {what}")
    return path
