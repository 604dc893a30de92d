"""export: every format written into the run folder and answering like the Keras model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import draw_face
from tinymodel import solid

from maskclf.cli import main
from maskclf.export import (
    FORMATS, MAX_AUC_DIFF, MIN_AGREEMENT, export_run, load_check_crops, load_runner, parity,
)
from maskclf.runs import EXPORT_FILES, PARITY_FILE, load_run, read_json


@pytest.fixture
def run_dir(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory) -> Path:
    """Labelled crops as `extract` lays them out: faces/<label>/*.png, in varied sizes and shades."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for label in ("with_mask", "without_mask"):
        (root / label).mkdir()
        for i in range(30):
            crop = draw_face(int(rng.integers(12, 64)), label).astype(np.int16)
            crop = np.clip(crop + rng.integers(-25, 25, size=3), 0, 255).astype(np.uint8)
            Image.fromarray(crop).save(root / label / f"{label}_{i:02d}.png")
    Image.fromarray(solid((0, 220, 0))).save(root / "with_mask" / "green.png")
    (root / "without_mask" / "broken.png").write_text("not an image")
    return root


def test_parity_figures():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    same = parity(ref, ref, ["with_mask", "without_mask"], labels=np.array([0, 1, 0, 1]))
    assert same["agreement"] == 1.0 and same["auc_diff"] == 0.0 and same["passed"]
    flipped = ref.copy()
    flipped[2] = [0.4, 0.6]
    worse = parity(ref, flipped, ["with_mask", "without_mask"], labels=np.array([0, 1, 0, 1]))
    assert worse["agreement"] == 0.75 and worse["max_abs_diff"] == pytest.approx(0.2) and not worse["passed"]
    assert "auc_diff" not in parity(ref, ref, ["with_mask", "without_mask"])


def test_load_check_crops_from_folders_and_from_voc(crops_dir, voc_master):
    crops, labels, problems = load_check_crops(crops_dir, 32)
    assert crops.shape == (61, 32, 32, 3) and crops.dtype == np.float32
    assert labels.sum() == 30 and len(problems) == 1 and "broken.png" in problems[0]
    crops, labels, _ = load_check_crops(crops_dir, 32, limit=10)
    assert len(crops) == 10
    crops, labels, problems = load_check_crops(voc_master, 32)
    n_faces = sum(xml.read_text().count("<object>") for xml in (voc_master / "annotations").glob("*.xml"))
    assert len(crops) == n_faces and not problems
    assert 0 < labels.sum() < len(labels)  # mask_weared_incorrect counts as without_mask, as in extract


def test_export_every_format_with_parity(run_dir, crops_dir):
    model, config = load_run(run_dir)
    report = export_run(run_dir, model, config, FORMATS, crops_dir, limit=None)
    assert set(report["formats"]) == set(FORMATS)
    for fmt, entry in report["formats"].items():
        assert (run_dir / "export" / EXPORT_FILES[fmt]).is_file()
        p = entry["parity"]
        assert p["n"] == 61
        if fmt == "tflite-int8":  # quantised: close, not identical
            assert p["agreement"] >= 0.95 and p["auc_diff"] <= 0.02
        else:
            assert p["agreement"] >= MIN_AGREEMENT and p["auc_diff"] <= MAX_AUC_DIFF and p["passed"], (fmt, p)
            assert p["max_abs_diff"] < 1e-2
    saved = json.loads((run_dir / "export" / "parity.json").read_text())
    assert saved["formats"].keys() == report["formats"].keys()
    assert [p.name for p in (run_dir / "export").iterdir() if p.name.startswith(".")] == []


def test_runner_takes_any_batch_size(run_dir):
    model, config = load_run(run_dir)
    export_run(run_dir, model, config, ["tflite-fp32"], None)
    runner = load_runner(run_dir / "export" / "model_fp32.tflite")
    for n in (1, 5, 2):
        crops = np.random.default_rng(n).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
        np.testing.assert_allclose(runner(crops), model.predict_on_batch(crops), atol=1e-5)


def test_cli_prints_parity(run_dir, crops_dir, capsys):
    status = main(["export", "--model", str(run_dir), "--format", "tflite-fp32,onnx", "--check", str(crops_dir)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "tflite-fp32" in out and "onnx" in out and "agreement" in out
    assert "broken.png" in err


def test_cli_default_exports_the_formats_that_meet_parity_and_succeeds(run_dir, crops_dir, capsys):
    status = main(["export", "--model", str(run_dir), "--check", str(crops_dir)])
    out, err = capsys.readouterr()
    assert status == 0, err
    table = {line.split()[0] for line in out.splitlines()[2:]}
    assert table == {"tflite-fp32", "tflite-fp16", "onnx"}
    written = {p.name for p in (run_dir / "export").iterdir()}
    assert written == {EXPORT_FILES["tflite-fp32"], EXPORT_FILES["tflite-fp16"], EXPORT_FILES["onnx"], "parity.json"}
    assert set(read_json(run_dir, PARITY_FILE)["formats"]) == table


def test_cli_errors(run_dir, tmp_path, capsys):
    assert main(["export", "--model", str(run_dir), "--format", "tflite-int8", "--check", str(tmp_path / "none")]) == 2
    assert "no labelled crops" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing"), "--format", "tflite-fp32"]) == 2
    assert "missing: no such model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(run_dir), "--format", "tflite-fp64"])
    assert "unknown format" in capsys.readouterr().err
