"""Where things live, derived from the package location (never a machine-specific path)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
INTERIM_DIR = DATA_DIR / "interim"
PROCESSED_DIR = DATA_DIR / "processed"
MODELS_DIR = PROJECT_ROOT / "models"
REPORTS_DIR = PROJECT_ROOT / "reports"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

DATASET_NAME = "face-mask-detection"
DEFAULT_FACES_DIR = INTERIM_DIR / DATASET_NAME
"""Default output of `extract`: crops under `faces/<label>/` and the manifest `faces.csv`."""
