"""Run folders: every file of `models/<run>/`, its format version, and how each is read and written.

This module is the only one that names a file of a run folder; training, evaluation,
export and the reports call it. `RUN_FILES` lists them all with what writes them. Every
write is atomic (the training files as one folder swapped in whole); every read first
checks `config.json`'s `format_version`, so a folder of another format is refused with
the file and the problem named, never half-read.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import POSITIVE, __version__
from .answers import RULE_KEYS, check_reports_as, output_width, reports_as
from .data import SIZE_LABELS
from .fsutil import atomic_dir, atomic_path, file_sha256, json_text, write_json_atomic

if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 2
"""Bumped whenever the model's input/output contract or a file's layout changes (2: the model outputs the
probabilities of the classes it was trained on, and `reports_as` maps them to the binary classes)."""

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
    "openvino": "model_openvino.xml",  # OpenVINO IR; its weights: the same name with `.bin` (WEIGHTS_SUFFIX)
}
"""Export format -> its file under `export/`."""

RUN_FILES = {
    MODEL_FILE: "the end-to-end model (train)",
    CONFIG_FILE: "how it was made (train)",
    HISTORY_FILE: "learning curves (train)",
    METRICS_FILE: "validation and cross-validation metrics (train)",
    CV_PREDICTIONS_FILE: "out-of-fold scores of every face (train)",
    COMPARISON_FILE: "the ablation table (train)",
    f"{EXPORT_DIR}/": "OpenVINO, ONNX and TFLite files with parity.json (export)",
}
"""Every file a run folder can hold, and what writes it. Evaluating a run never writes here: 03_evaluate writes
EVALUATION_FILE and VAL_PREDICTIONS_FILE into an `evaluation_folder` of its own."""

CV_PREDICTION_COLUMNS = ["crop_path", "source_image", "label", "fold", "p_without_mask"]
PREDICTION_COLUMNS = [
    "crop_path", "crop_file", "source_image", "face_index", "xmin", "ymin", "xmax", "ymax", "width", "height",
    "original_label", "label", "fold", "y_true", "p_without_mask", "predicted", "correct", "three_way", "face_px",
    "size_bucket",
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
) -> str:
    """Write a run folder's training files as one atomic swap; return what happened to the folder.

    `config` must name `image_size`, `class_names` and `run_id` (the hash of the configuration and data
    that made the run); a folder holding another `run_id`, or a non-empty folder without `config.json`,
    is refused, never replaced. `cv_predictions` has CV_PREDICTION_COLUMNS, `comparison` one row per
    configuration (written when not empty). Nothing already produced is lost:

    - "unchanged": every file would be the same (the model compared by its fingerprint); the folder is
      left as it is, exports included, and only `config.json`'s time is renewed (`latest_run`);
    - "updated": the same model with other figures; the exports stay;
    - "retrained": another model; the old exports move to `export.stale-<old weights fingerprint>/`;
    - "created": a new folder.
    """
    from .memo import weights_fingerprint

    for key in ("image_size", "class_names", "run_id"):
        if key not in config:
            raise ValueError(f"run config needs {key!r}")
    config = {**config, "format_version": FORMAT_VERSION, "maskclf_version": __version__,
              "weights_fingerprint": weights_fingerprint(model)}
    run_dir = Path(run_dir)
    previous = _previous_config(run_dir, config["run_id"])
    same_model = previous is not None and previous.get("weights_fingerprint") == config["weights_fingerprint"]
    files = {CONFIG_FILE: json_text(config).encode("utf-8")}
    if history is not None:
        files[HISTORY_FILE] = json_text(history).encode("utf-8")
    if metrics is not None:
        files[METRICS_FILE] = json_text(metrics).encode("utf-8")
    if cv_predictions is not None:
        files[CV_PREDICTIONS_FILE] = cv_predictions[CV_PREDICTION_COLUMNS].to_csv(index=False).encode("utf-8")
    if comparison is not None and len(comparison):
        files[COMPARISON_FILE] = comparison.to_csv().encode("utf-8")
    if same_model and _holds(run_dir, files):
        (run_dir / CONFIG_FILE).touch()
        return "unchanged"
    with atomic_dir(run_dir, marker=CONFIG_FILE) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if same_model:
            shutil.copy2(run_dir / MODEL_FILE, tmp / MODEL_FILE)
        else:
            model.save(tmp / MODEL_FILE)
        _carry_exports(run_dir, tmp, None if same_model or previous is None else previous.get("weights_fingerprint"))
    return "created" if previous is None else "updated" if same_model else "retrained"


def _previous_config(run_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The config of the run already in `run_dir` (None: none); RunFolderError if another configuration made it."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    previous = _load_json(path)
    found = previous.get("run_id") if isinstance(previous, dict) else None
    if found != run_id:
        raise RunFolderError(f"{run_dir}: holds run {found!r}, made by another configuration or version (this one is "
                             f"{run_id!r}); never overwritten: give another run_name, or move that folder aside")
    return previous


def _holds(run_dir: Path, files: dict[str, bytes]) -> bool:
    """Whether `run_dir` has the model and each of `files` with the same bytes."""
    return (run_dir / MODEL_FILE).is_file() and all(
        (run_dir / name).is_file() and (run_dir / name).read_bytes() == data for name, data in files.items())


def _carry_exports(run_dir: Path, staged: Path, stale_model: str | None) -> None:
    """Copy `run_dir`'s exports into the staged folder: as they are, or, when the model they were made from
    (`stale_model`) is replaced, to `export.stale-<stale_model>/`. Earlier stale exports are kept too."""
    for old in sorted(run_dir.glob(f"{EXPORT_DIR}*")) if run_dir.is_dir() else []:
        if not old.is_dir() or old.is_symlink():
            continue
        name = f"{EXPORT_DIR}.stale-{stale_model}" if old.name == EXPORT_DIR and stale_model else old.name
        shutil.copytree(old, staged / name, symlinks=True)


def evaluation_folder(root: str | Path, run_dir: str | Path, fold: int, threshold: float) -> Path:
    """Where the evaluation of run `run_dir` on `fold` at `threshold` lives: `root/<run>/fold<k>-threshold<t>/`.

    Keyed by what the evaluation depends on, so that evaluating with another threshold never replaces
    what the reports show, and never touches the run folder.
    """
    return Path(root) / Path(run_dir).name / f"fold{int(fold)}-threshold{float(threshold):g}"


def write_evaluation(folder: str | Path, table: pd.DataFrame, headline: dict[str, Any],
                     metrics_path: str | Path | None = None) -> Path:
    """Write `evaluation.json` and `val_predictions.csv` into an `evaluation_folder` (and the headline to
    `metrics_path`)."""
    folder = Path(folder)
    write_json_atomic(folder / EVALUATION_FILE, headline)
    with atomic_path(folder / VAL_PREDICTIONS_FILE) as tmp:
        table[PREDICTION_COLUMNS].to_csv(tmp, index=False)
    if metrics_path:
        write_json_atomic(metrics_path, headline)
    return folder


def read_evaluation_table(folder: str | Path) -> pd.DataFrame:
    """`val_predictions.csv` of an `evaluation_folder`, `size_bucket` as ordered categories; RunFolderError naming
    the folder when 03_evaluate has not written it."""
    path = Path(folder) / VAL_PREDICTIONS_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; run 03_evaluate first with the same run, fold and threshold")
    return _with_size_buckets(pd.read_csv(path))


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
    """RunFolderError naming `path` unless `image_size` is a positive int, `class_names` two or more names and
    `reports_as` maps each of them to a binary class."""
    size, names = config.get("image_size"), config.get("class_names")
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        raise RunFolderError(f"{path}: 'image_size' must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, "
                             f"got {size!r:.40}")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise RunFolderError(f"{path}: 'class_names' must be a list of two or more distinct names, got {names!r:.200}")
    if POSITIVE not in names:
        raise RunFolderError(f"{path}: 'class_names' {names!r:.200} lacks {POSITIVE!r}, the class the model answers for")
    problem = check_reports_as(names, reports_as(config))
    if problem:
        raise RunFolderError(f"{path}: {problem:.300}")
    if (problem := check_verifier(config.get("face_verifier"))) is not None:
        raise RunFolderError(f"{path}: {problem:.300}")


def check_verifier(verifier: Any) -> str | None:
    """The problem with a run's `face_verifier` record, or None: absent, or a candidate score in (0, 1) and a rule of
    finite numbers (maskclf.detect.FaceFinder applies them)."""
    if verifier is None:
        return None
    rule = verifier.get("rule") if isinstance(verifier, dict) else None
    score = verifier.get("candidate_score") if isinstance(verifier, dict) else None
    numbers = [score, *(rule.get(k) for k in RULE_KEYS)] if isinstance(rule, dict) else [None]
    if not all(type(v) in (int, float) and math.isfinite(v) for v in numbers) or not 0 < score < 1:
        return (f"'face_verifier' must hold a 'candidate_score' in (0, 1) and a 'rule' of finite numbers "
                f"{list(RULE_KEYS)}, got {verifier!r}")
    return None


def check_model_matches(path: Path, model: keras.Model, config: dict[str, Any]) -> None:
    """RunFolderError naming `path` unless the model takes `image_size` crops and outputs one score per class (and
    P(face) with a verifier)."""
    size, n_classes = config["image_size"], output_width(config)
    height, width = tuple(model.input_shape)[1:3]
    if (height, width) != (size, size) and (height, width) != (None, None):
        raise RunFolderError(f"{path}: 'image_size' is {size}, but the model takes {height}x{width} crops")
    if model.output_shape[-1] != n_classes:
        wanted = (f"'class_names' has {len(config['class_names'])} names" if not config.get("face_verifier") else
                  f"'class_names' and 'face_verifier' call for {n_classes} scores (P(face) last)")
        raise RunFolderError(f"{path}: {wanted}, but the model outputs {model.output_shape[-1]} scores")


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
    """Return the complete run folder under `models_dir` most recently written or confirmed by training (a rerun
    that changes nothing renews its `config.json`'s time)."""
    models_dir = Path(models_dir)
    runs = [p.parent for p in models_dir.glob(f"*/{CONFIG_FILE}") if (p.parent / MODEL_FILE).is_file()]
    if not runs:
        raise RunFolderError(f"{models_dir}: no trained model found (run notebooks/02_train.ipynb or `python -m maskclf reports`)")
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of a run folder (`metrics.json`, `history.json`, PARITY_FILE)."""
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
    """A CSV file of a run folder (`cv_predictions.csv`, `comparison.csv`)."""
    return _with_size_buckets(pd.read_csv(_existing(run_dir, name, ".csv"), index_col=0 if name == COMPARISON_FILE else None))


def _with_size_buckets(table: pd.DataFrame) -> pd.DataFrame:
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
