"""Shared fixtures: a synthetic VOC data set, made once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every default location (data/, models/, reports/, the feature cache, the remembered data location, the
# converted weights) points into a temporary work root, for this process, its subprocesses and the notebooks'
# kernels: the tests never read or write the checkout's own (tests/test_isolation.py checks it).
WORK_ROOT = tempfile.mkdtemp(prefix="maskclf-test-work-")
atexit.register(shutil.rmtree, WORK_ROOT, ignore_errors=True)
os.environ["MASKCLF_WORK_ROOT"] = WORK_ROOT
os.environ["MASKCLF_FEATURES_DIR"] = os.path.join(WORK_ROOT, "data", "processed", "features")
os.environ["MASKCLF_DATA_LOCATION_FILE"] = os.path.join(WORK_ROOT, "data", ".data_dir")
# The backbone pass in float32 on every CPU, so that the tests' figures do not depend on the machine's bfloat16;
# tests/test_fastpass.py runs the bfloat16 pass (the main job's default where the CPU has it).
os.environ["MASKCLF_PRECISION"] = "float32"

from synthetic import make_voc_dataset  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "face-mask-detection"


@pytest.fixture(autouse=True)
def private_data_location(tmp_path_factory, monkeypatch):
    """Commands that remember the data set's location write to a file of each test's own."""
    from maskclf import data

    location = tmp_path_factory.mktemp("location") / ".data_dir"
    monkeypatch.setattr(data, "DATA_LOCATION_FILE", location)
    monkeypatch.setenv("MASKCLF_DATA_LOCATION_FILE", str(location))  # for commands run as subprocesses


@pytest.fixture(scope="session")
def voc_master(tmp_path_factory) -> Path:
    """A read-only synthetic data set; copy it (`voc_dir`) before changing it."""
    return make_voc_dataset(tmp_path_factory.mktemp("voc"))


@pytest.fixture
def voc_dir(voc_master, tmp_path) -> Path:
    """A private, writable copy of the synthetic data set."""
    return Path(shutil.copytree(voc_master, tmp_path / "voc"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A read-only run folder of the tiny model (tests/tinymodel.py); copy it before changing it."""
    from tinymodel import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("model") / "run")


@pytest.fixture(scope="session")
def tiny(tiny_run):
    """The tiny run's (model, config)."""
    from maskclf.runs import load_run

    return load_run(tiny_run)


@pytest.fixture(scope="session")
def extracted_faces(tmp_path_factory, voc_master) -> Path:
    """A read-only extraction (crops and faces.csv) of the synthetic data set."""
    from maskclf.data import extract_faces

    out = tmp_path_factory.mktemp("faces") / "faces"
    extract_faces(voc_master, out, progress=False)
    return out


@pytest.fixture
def precision(monkeypatch):
    """Set MASKCLF_PRECISION for one test, with feature_precision's memory of it cleared before and after."""
    from maskclf import fastpass

    def choose(value: str | None) -> str:
        fastpass.feature_precision.cache_clear()
        if value is None:
            monkeypatch.delenv(fastpass.PRECISION_ENV, raising=False)
        else:
            monkeypatch.setenv(fastpass.PRECISION_ENV, value)
        return fastpass.feature_precision()

    yield choose
    fastpass.feature_precision.cache_clear()
