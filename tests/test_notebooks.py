"""The notebooks: committed clean, parameterised, and runnable headless with papermill."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from maskclf.report import declared_parameters, export_html, hide_machine_paths, network_references, run_notebook
from maskclf.paths import NOTEBOOKS_DIR

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_extract", "02_train", "03_evaluate", "04_error_analysis"][: len(NOTEBOOKS)]
    assert NOTEBOOKS, "no numbered notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: strip them"
    assert declared_parameters(path), f"{path.name} has no cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.slow
def test_01_extract_runs_headless_on_fixtures(voc_dir, tmp_path):
    executed = tmp_path / "01.ipynb"
    faces = tmp_path / "faces"
    run_notebook(NOTEBOOKS_DIR / "01_extract.ipynb", executed,
                 {"data_dir": str(voc_dir), "faces_dir": str(faces), "margin": 0.1, "image_size": 32}, cwd=tmp_path, progress=False)
    assert (faces / "faces.csv").is_file()
    nb = nbformat.read(executed, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "photos in more than one fold: 0" in text
    figures = sum(o.get("data", {}).get("image/png") is not None for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 5
    page = export_html(executed, tmp_path / "01.html").read_text()
    assert network_references(page) == [] and "<script" not in page
    assert "share without mask" in page and "row_0" not in page  # the fold and size tables, formatted
    assert page.count("data:image/png;base64") >= 5 and "Folds" in page


def test_network_references_are_found():
    page = '<script src="https://cdn.x/y.js"></script><link href="//fonts.x/css"><img src="data:image/png;base64,AA">'
    assert network_references(page) == ["https://cdn.x/y.js", "//fonts.x/css"]


def test_progress_bar_redraws_are_collapsed_in_reports(tmp_path):
    from maskclf.report import collapse_carriage_returns

    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=t)
                    for t in ("extract:   0%|\r", "extract:  50%|\r", "extract: 100%|\n")]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="wrote 3 faces\n"))
    executed = tmp_path / "run.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), executed)
    page = export_html(executed, tmp_path / "run.html").read_text()
    assert page.count("extract:") == 1 and "extract: 100%" in page and "wrote 3 faces" in page

    assert collapse_carriage_returns("extract: 0%\rextract: 50%\rextract: 100%\nwrote 3 faces\n") == "extract: 100%\nwrote 3 faces\n"
    assert collapse_carriage_returns("windows line\r\nnext") == "windows line\nnext"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory, voc_master):
    """01 and 02 run once on the synthetic set with tiny parameters; later notebooks reuse them."""
    root = tmp_path_factory.mktemp("pipeline")
    params = {
        "data_dir": str(voc_master), "faces_dir": str(root / "faces"), "models_dir": str(root / "models"),
        "run_name": "tiny", "backbone": "efficientnet_lite0", "pooling": "avg", "head": "adam", "labels": "binary",
        "augment_views": 0, "jitter_views": 0, "detector_views": 0, "incorrect_weight": 1.0, "verifier": 0, "image_size": 32,
        "epochs": 2,
        "fine_tune_blocks": 1, "fine_tune_epochs": 1,
        "batch_size": 16, "compare": [{"fine_tune_blocks": 0}], "train_seed": 1,
    }
    executed = {}
    for name in ("01_extract", "02_train"):
        executed[name] = root / f"{name}.ipynb"
        run_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", executed[name], params, cwd=root, progress=False)
    return root, params, executed


@pytest.mark.slow
def test_02_train_runs_headless_and_writes_the_run_folder(tiny_pipeline):
    root, params, executed = tiny_pipeline
    run = root / "models" / "tiny"
    assert {"model.keras", "config.json", "history.json", "metrics.json", "cv_predictions.csv", "comparison.csv"} <= {
        p.name for p in run.iterdir()}
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(executed["02_train"], as_version=4).cells])
    assert "max |end-to-end - cached|" in text
    assert json.dumps("accuracy (mean ± std)")[1:-1] in text and "dtype: object" not in text  # the comparison, formatted
    comparison = (run / "comparison.csv").read_text()
    assert "efficientnet_lite0-imagenet-ft1" in comparison and "efficientnet_lite0-imagenet," in comparison


@pytest.mark.slow
def test_03_and_04_run_headless_and_export_readable_html(tiny_pipeline, tmp_path):
    root, params, executed = tiny_pipeline
    params = {**params, "n_bootstrap": 50, "worst_n": 4, "n_gradcam": 2, "metrics_path": str(tmp_path / "metrics.json")}
    sections = {
        "03_evaluate": ["Confusion matrix", "ROC and precision-recall", "Moving the threshold", "Calibration",
                        "Accuracy by face size", "Framing", "Cross-validation summary", "Headline metrics"],
        "04_error_analysis": ["most confident first", "Grad-CAM", "By original class", "By photo", "Likely label errors",
                              "On whole photos: the detector alone, and with the face verifier"],
    }
    for name, expected in sections.items():
        out = tmp_path / f"{name}.ipynb"
        run_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", out, params, cwd=root, progress=False)
        page = export_html(out, tmp_path / f"{name}.html").read_text()
        assert network_references(page) == [] and "<script" not in page
        for section in expected:
            assert section in page, f"{name}: section {section!r} missing"
        # numbers as people read them, and tables that scroll rather than run off the page
        assert "dtype: object" not in page and not re.search(r"\(0\.\d{3,}, 0\.\d{3,}\)", page), f"{name}: a raw repr"
        assert 0 < page.count("<table") <= page.count('<div class="maskclf-scroll">'), f"{name}: a table outside the scroller"
        assert page.count("data:image/png;base64") + page.count("data:image/jpeg;base64") >= 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"backbone", "weights", "split", "n_faces", "n_val", "accuracy", "balanced_accuracy", "roc_auc",
            "average_precision", "precision", "recall", "f1", "ci95", "cv", "data_sha256"} <= set(metrics)
    assert set(metrics["ci95"]) >= {"accuracy", "roc_auc"} and len(metrics["cv"]["per_fold"]) == 5


def test_native_tensorflow_logs_are_dropped_from_reports():
    from maskclf.native_logs import drop_native_logs

    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795683842.199327    5339 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1795680911.855431    7569 cuda_platform.cc:52] failed call to cuInit\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate flags.\n"
        "UserWarning: something the reader should see\n"
    )
    assert drop_native_logs(text) == "UserWarning: something the reader should see\n"


@pytest.mark.slow
def test_a_warm_rerun_is_byte_identical_and_a_changed_parameter_recomputes_only_what_depends_on_it(tiny_pipeline, tmp_path):
    """03 twice with nothing changed: the same metrics.json to the byte, and no new cached result; a changed
    threshold changes the metrics but reuses the cached scores; a changed head parameter is a new
    cross-validation entry on the same cached features."""
    import os
    from pathlib import Path

    root, params, _ = tiny_pipeline
    cache = Path(os.environ["MASKCLF_FEATURES_DIR"])

    def cached() -> dict[str, set[str]]:
        return {kind: {p.name for p in (cache / kind).glob("*") if not p.name.startswith(".")}
                for kind in ("results", "cv", ".")}

    def evaluate(name: str, **changes) -> tuple[bytes, bytes]:
        """metrics.json and the report's HTML of 03 written into tmp_path/name, as the main job writes them."""
        out = tmp_path / name
        out.mkdir()
        run_notebook(NOTEBOOKS_DIR / "03_evaluate.ipynb", out / "03.ipynb",
                     {**params, "n_bootstrap": 50, "metrics_path": str(out / "metrics.json"), **changes}, cwd=root,
                     progress=False)
        hide_machine_paths(out / "03.ipynb", [(str(out), "reports")])
        return (out / "metrics.json").read_bytes(), export_html(out / "03.ipynb", out / "03.html").read_bytes()

    run = root / "models" / "tiny"
    run_files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    first = evaluate("first")
    before = cached()
    assert evaluate("again") == first, "the same metrics.json and the same HTML, to the byte"
    assert cached() == before, "a warm rerun computes nothing new"
    assert evaluate("stricter", threshold=0.7)[0] != first[0]
    assert cached()["results"] == before["results"], "the scores do not depend on the threshold"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == run_files, "evaluating never writes the run"
    run_notebook(NOTEBOOKS_DIR / "02_train.ipynb", tmp_path / "02.ipynb",
                 {**params, "run_name": "tiny-dropout", "dropout": 0.4, "compare": []}, cwd=root, progress=False)
    after = cached()
    assert after["."] == before["."], "the same backbone features serve a changed head"
    assert len(after["cv"] - before["cv"]) >= 1, "a changed head parameter is cross-validated again"
