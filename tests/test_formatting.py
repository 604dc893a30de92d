"""Numbers as people read them: one formatter for the notebooks' tables and the index page."""

from __future__ import annotations

import math

import nbformat
import numpy as np
import pandas as pd

from maskclf import formatting
from maskclf.report import export_html


def test_numbers_intervals_and_estimates():
    assert formatting.number(0.96932515) == "0.969"
    assert formatting.number(np.float32(1.0)) == "1.000"
    assert formatting.number(4072) == "4,072" and formatting.number(np.int64(1272)) == "1,272"
    assert formatting.number(0.0001) == "0.0001" and formatting.number(0.0) == "0.000"
    assert formatting.number(None) == formatting.number(math.nan) == "–"
    assert formatting.number(True) == "yes" and formatting.number("resnet50") == "resnet50"
    assert formatting.number((0.950571, 0.98466)) == "[0.951, 0.985]"
    assert formatting.with_ci(0.967, (0.950571, 0.98466)) == "0.967 [0.951, 0.985]"
    assert formatting.with_ci(0.9869, None) == "0.987"
    assert formatting.mean_std(0.97544, 0.0035) == "0.975 ± 0.004"


def test_table_formats_every_cell_merges_mean_std_and_lets_headers_wrap():
    df = pd.DataFrame({"faces": [1272, 424], "error_rate": [0.0393, 0.0094], "ci": [(0.950571, 0.98466), None],
                       "accuracy_mean": [0.97544, 0.9585], "accuracy_std": [0.0035, 0.0106], "support": [647.0, 815.0]},
                      index=pd.Index([0.1, 0.2], name="threshold"))
    page = formatting.table(df, counts=["support"]).to_html()
    for shown in ("1,272", "0.039", "0.009", "[0.951, 0.985]", "0.975 ± 0.004", "0.959 ± 0.011", ">647<", ">815<",
                  "error rate", "accuracy (mean ± std)", ">0.1<"):
        assert shown in page, shown
    for raw in ("0.0393", "(0.95", "error_rate", "accuracy_std", "647.0", "0.100000"):
        assert raw not in page, raw
    series = formatting.table(pd.Series({"backbone": "resnet50", "n_faces": 4072}))
    assert "dtype" not in series.to_html() and "4,072" in series.to_html()


def test_estimates_and_headline():
    m = {"accuracy": 0.9693, "roc_auc": 0.99508, "brier": 0.02135, "balanced_accuracy": 0.963, "backbone": "resnet50",
         "weights": "imagenet", "split": "grouped", "n_val": 815, "n_val_photos": 169, "n_faces": 4072,
         "ci95": {"accuracy": [0.95675, 0.984227], "roc_auc": [0.989615, 0.999071]}, "cv": {"mean": {"accuracy": 0.97544}}}
    page = formatting.estimates(m, m["ci95"], {"accuracy": "accuracy", "brier": "Brier score"}).to_html()
    assert "0.969 [0.957, 0.984]" in page and ">0.021<" in page
    page = formatting.headline_table(m).to_html()
    assert "0.969 [0.957, 0.984]" in page and "0.995 [0.990, 0.999]" in page and "0.975" in page
    assert "validation fold: 815 faces from 169 photos; cross-validation: all 4,072 faces" in page
    assert "dtype" not in page and "(0.9" not in page


def test_report_html_wraps_tables_in_a_scrolling_block(tmp_path):
    """The report template puts every HTML output (the tables) in a block that scrolls sideways."""
    wide = pd.DataFrame({f"a_long_column_name_{i}": [0.123456, 1234] for i in range(12)})
    cell = nbformat.v4.new_code_cell("display(formatting.table(wide))")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": formatting.table(wide).to_html(),
                                                                  "text/plain": "<Styler>"})]
    executed = tmp_path / "run.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), executed)
    page = export_html(executed, tmp_path / "run.html").read_text()
    assert 'class="maskclf-scroll"' in page and page.index('class="maskclf-scroll"') < page.index("<table")
    assert "div.maskclf-scroll { overflow-x: auto" in page
    assert "a long column name 11" in page and "0.123" in page and "1,234" in page and "0.123456" not in page
