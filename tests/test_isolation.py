"""The tests never read or write the checkout's own data/, models/, reports/ or weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskclf import data, features, paths, weights

ROOT = Path(__file__).resolve().parents[1]


def test_every_default_location_is_outside_the_checkout():
    """conftest moves every default output under a temporary work root (MASKCLF_WORK_ROOT)."""
    defaults = {
        "data": paths.DATA_DIR, "models": paths.MODELS_DIR, "reports": paths.REPORTS_DIR,
        "crops": paths.DEFAULT_FACES_DIR, "weights": weights.WEIGHTS_DIR, "feature cache": features.FEATURES_DIR,
        "remembered data location": data.DATA_LOCATION_FILE,
    }
    inside = {name: path for name, path in defaults.items() if Path(path).resolve().is_relative_to(ROOT)}
    assert not inside, f"tests would use the checkout's {inside}"
    assert paths.NOTEBOOKS_DIR == ROOT / "notebooks", "the notebooks and params.yaml stay the checkout's"


def _populated_copy(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A copy of the checkout's files (those git does not ignore), with a (fake) extraction, model and converted weights in place."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = tmp_path / "checkout"
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    planted = {
        copy / "data" / "interim" / "face-mask-detection" / "faces.csv": b"crop_path,label\nx.png,with_mask\n",
        copy / "models" / "resnet50-fold0-0123abcd" / "config.json": b'{"format_version": 2}\n',
        copy / "models" / "resnet50-fold0-0123abcd" / "model.keras": b"not a model",
        copy / "data" / "external" / "weights" / "resnet50_imagenet_notop.weights.h5": b"not weights",
        copy / "data" / ".data_dir": b"/nowhere/face-mask-detection\n",
    }
    for path, content in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return copy, planted


@pytest.mark.slow
def test_the_suite_passes_on_a_checkout_that_holds_an_extraction_a_model_and_weights(tmp_path):
    """The tests that once read the checkout's extraction (export's default --check) and weights pass, and
    leave what a user made as it was."""
    copy, planted = _populated_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MASKCLF_WORK_ROOT", "MASKCLF_FEATURES_DIR",
                                                             "MASKCLF_DATA_LOCATION_FILE")}
    selected = ["tests/test_isolation.py::test_every_default_location_is_outside_the_checkout",
                "tests/test_export.py::test_cli_errors", "tests/test_data.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selected], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert {path: path.read_bytes() for path in planted} == planted
