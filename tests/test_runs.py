"""The run folder: every file written and read back through maskclf.runs, and its format version checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinymodel import CLASS_NAMES as TINY_CLASSES, REPORTS_AS, make_tiny_model

from maskclf import CLASS_NAMES, runs
from maskclf.data import SIZE_LABELS


def _prediction_table(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({c: rng.integers(0, 50, n) for c in runs.PREDICTION_COLUMNS})
    table["size_bucket"] = pd.Categorical([SIZE_LABELS[i % 4] for i in range(n)], categories=SIZE_LABELS, ordered=True)
    return table.assign(extra_column="not written")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A run folder with every file of RUN_FILES, each written by the function of runs that owns it."""
    run = tmp_path_factory.mktemp("runs") / "run"
    oof = pd.DataFrame({"crop_path": ["a.png", "b.png"], "source_image": ["p.png", "p.png"], "label": list(CLASS_NAMES),
                        "fold": [0, 1], "p_without_mask": [0.25, 0.75]})
    comparison = pd.DataFrame({"configuration": ["x", "y"], "accuracy_mean": [0.9, 0.8]}).set_index("configuration")
    runs.save_run(run, make_tiny_model(), TINY_CONFIG,
                  history={"head": {"loss": [1.0, 0.5]}}, metrics={"accuracy": 0.5}, cv_predictions=oof,
                  comparison=comparison)
    runs.write_parity(run, {"formats": {}})
    return run


TINY_CONFIG = {"image_size": 32, "class_names": TINY_CLASSES, "reports_as": REPORTS_AS, "run_id": "a1"}


def test_every_file_of_a_run_folder_is_written_and_read_back_through_runs(full_run):
    written = {p.name + ("/" if p.is_dir() else "") for p in full_run.iterdir()}
    assert written == set(runs.RUN_FILES)
    model, config = runs.load_run(full_run)
    assert config["format_version"] == runs.FORMAT_VERSION and model.output_shape[-1] == 3
    assert runs.read_json(full_run, runs.HISTORY_FILE) == {"head": {"loss": [1.0, 0.5]}}
    assert runs.read_json(full_run, runs.METRICS_FILE) == {"accuracy": 0.5}
    assert runs.read_json(full_run, runs.PARITY_FILE) == {"formats": {}}
    oof = runs.read_table(full_run, runs.CV_PREDICTIONS_FILE)
    assert list(oof.columns) == runs.CV_PREDICTION_COLUMNS and oof["p_without_mask"].tolist() == [0.25, 0.75]
    assert runs.read_table(full_run, runs.COMPARISON_FILE)["accuracy_mean"].to_dict() == {"x": 0.9, "y": 0.8}
    assert [p.name for p in full_run.rglob(".*")] == [], "no temporary files left behind"


def test_an_evaluation_is_written_into_a_folder_of_its_own_keyed_by_run_fold_and_threshold(full_run, tmp_path):
    before = {p: p.read_bytes() for p in full_run.rglob("*") if p.is_file()}
    folder = runs.evaluation_folder(tmp_path / "evaluation", full_run, 0, 0.3)
    assert folder == tmp_path / "evaluation" / full_run.name / "fold0-threshold0.3"
    assert runs.evaluation_folder(tmp_path, full_run, 0, 0.5) != runs.evaluation_folder(tmp_path, full_run, 0, 0.3)
    with pytest.raises(runs.RunFolderError, match="val_predictions.csv: missing; run 03_evaluate first"):
        runs.read_evaluation_table(folder)
    runs.write_evaluation(folder, _prediction_table(), {"accuracy": 0.75}, tmp_path / "metrics.json")
    assert json.loads((folder / runs.EVALUATION_FILE).read_text()) == {"accuracy": 0.75}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": 0.75}
    val = runs.read_evaluation_table(folder)
    assert list(val.columns) == runs.PREDICTION_COLUMNS
    assert val["size_bucket"].cat.ordered and list(val["size_bucket"].cat.categories) == list(SIZE_LABELS)
    assert {p: p.read_bytes() for p in full_run.rglob("*") if p.is_file()} == before, "the run folder is untouched"


def _exported(run: Path) -> Path:
    (run / runs.EXPORT_DIR).mkdir(exist_ok=True)
    runs.export_path(run, "onnx").write_bytes(b"an export")
    return run / runs.EXPORT_DIR


def test_a_rerun_that_computes_the_same_model_leaves_the_run_folder_and_its_exports_as_they_are(tmp_path):
    run = tmp_path / "run"
    assert runs.save_run(run, make_tiny_model(), TINY_CONFIG, metrics={"accuracy": 0.5}) == "created"
    export = _exported(run)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file() and p.name != "config.json"}
    assert runs.save_run(run, make_tiny_model(), TINY_CONFIG, metrics={"accuracy": 0.5}) == "unchanged"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*")
            if p.is_file() and p.name != "config.json"} == files
    assert runs.save_run(run, make_tiny_model(), TINY_CONFIG, metrics={"accuracy": 0.6}) == "updated"
    assert runs.read_json(run, runs.METRICS_FILE) == {"accuracy": 0.6}
    assert (export / "model.onnx").read_bytes() == b"an export", "the same model keeps its exports"


def test_a_retrained_model_moves_the_old_exports_aside_and_another_configuration_is_refused(tmp_path):
    run = tmp_path / "run"
    runs.save_run(run, make_tiny_model(), TINY_CONFIG)
    _exported(run)
    old_model = runs.read_config(run)["weights_fingerprint"]
    retrained = make_tiny_model()
    retrained.get_layer("head").set_weights([w * 2 for w in retrained.get_layer("head").get_weights()])
    assert runs.save_run(run, retrained, TINY_CONFIG) == "retrained"
    assert not (run / runs.EXPORT_DIR).exists()
    assert (run / f"{runs.EXPORT_DIR}.stale-{old_model}" / "model.onnx").read_bytes() == b"an export"
    with pytest.raises(runs.RunFolderError, match="holds run 'a1', made by another configuration"):
        runs.save_run(run, make_tiny_model(), {**TINY_CONFIG, "run_id": "b2"})
    assert runs.read_config(run)["run_id"] == "a1"


def test_a_run_of_another_format_version_is_refused_by_every_reader(full_run, tmp_path):
    old = Path(shutil.copytree(full_run, tmp_path / "old"))
    config = json.loads((old / runs.CONFIG_FILE).read_text())
    (old / runs.CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    message = f"config.json: model format 99, this maskclf reads format {runs.FORMAT_VERSION}"
    for read in (runs.load_run, lambda r: runs.read_json(r, runs.METRICS_FILE),
                 lambda r: runs.read_table(r, runs.CV_PREDICTIONS_FILE)):
        with pytest.raises(runs.RunFolderError, match=message):
            read(old)


def test_a_missing_or_unknown_file_is_named(tmp_path):
    from tinymodel import make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    with pytest.raises(runs.RunFolderError, match=r"cv_predictions.csv: missing; it holds out-of-fold scores.*train"):
        runs.read_table(run, runs.CV_PREDICTIONS_FILE)
    with pytest.raises(ValueError, match="'notes.txt' is not a .json file of a run folder"):
        runs.read_json(run, "notes.txt")
    with pytest.raises(runs.RunFolderError, match="no such model folder"):
        runs.read_json(tmp_path / "nowhere", runs.METRICS_FILE)
