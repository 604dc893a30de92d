"""The notebooks: committed clean, parameterised, and runnable headless with papermill."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from maskclf.report import declared_parameters, export_html, network_references, run_notebook
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
    assert page.count("data:image/png;base64") >= 5 and "Folds" in page


def test_network_references_are_found():
    page = '<script src="https://cdn.x/y.js"></script><link href="//fonts.x/css"><img src="data:image/png;base64,AA">'
    assert network_references(page) == ["https://cdn.x/y.js", "//fonts.x/css"]


def test_progress_bar_redraws_are_collapsed_in_reports():
    from maskclf.report import collapse_carriage_returns

    assert collapse_carriage_returns("extract: 0%\rextract: 50%\rextract: 100%\nwrote 3 faces\n") == "extract: 100%\nwrote 3 faces\n"
    assert collapse_carriage_returns("windows line\r\nnext") == "windows line\nnext"
