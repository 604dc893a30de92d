"""The main job: parameters, the papermill pipeline, and reports that survive a failure."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from maskclf import report
from maskclf.config import STAGES, ParamsError, load_params, parse_override, stage_defaults
from maskclf.report import NotebookFailed, run_reports


def _notebook(path: Path, body: str) -> None:
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_params_file_sections_and_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text("common:\n  faces_dir: null\ntrain:\n  epochs: 40\n  backbone: resnet50\n"
                                     "  compare:\n    - {fine_tune_blocks: 2}\n")
    params = load_params(tmp_path / "p.yaml", dict([parse_override("epochs=3"), parse_override("faces_dir=x")]))
    assert params == {"epochs": 3, "backbone": "resnet50", "faces_dir": "x", "compare": [{"fine_tune_blocks": 2}]}
    with pytest.raises(ParamsError, match=r"unknown parameter\(s\) \['epoch'\]"):
        load_params(tmp_path / "p.yaml", {"epoch": 3})
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: [1\n")
    with pytest.raises(ParamsError, match="bad.yaml"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "twice.yaml").write_text("train:\n  seed: 1\nevaluate:\n  seed: 2\n")
    with pytest.raises(ParamsError, match="'seed' is in both 'train' and 'evaluate'"):
        load_params(tmp_path / "twice.yaml")
    with pytest.raises(ParamsError, match="parameter file not found"):
        load_params(tmp_path / "missing.yaml")


def test_each_notebook_declares_exactly_its_parameters_all_defaulting_to_params_yaml():
    import nbformat

    for notebook, stage in STAGES.items():
        path = report.NOTEBOOKS_DIR / f"{notebook}.ipynb"
        assert report.declared_parameters(path) == set(stage_defaults(notebook)), notebook
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        namespace: dict = {}
        exec(cell.source, namespace)
        assert {k for k, v in namespace.items() if k != "__builtins__" and v is not None} == set(), notebook


@pytest.mark.slow
def test_a_failing_notebook_keeps_the_previous_reports(tmp_path):
    nbs, reports = tmp_path / "nbs", tmp_path / "reports"
    nbs.mkdir()
    _notebook(nbs / "01_ok.ipynb", "print('fine', x)")
    _notebook(nbs / "02_bad.ipynb", "raise RuntimeError('boom in cell')")
    (reports / "figures").mkdir(parents=True)
    (reports / "figures" / "example.png").write_bytes(b"made by predict --draw")
    run_reports({"x": 2}, notebooks=("01_ok",), reports_dir=reports, notebooks_dir=nbs, progress=False)
    assert (reports / "figures" / "example.png").read_bytes() == b"made by predict --draw"
    before = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file() and "_build" not in p.parts}
    assert Path("01_ok.html") in before and Path("index.html") in before
    assert set(json.loads((reports / "_build" / "timings.json").read_text())["seconds"]) == {"01_ok"}
    with pytest.raises(NotebookFailed) as info:
        run_reports({"x": 3}, notebooks=("01_ok", "02_bad"), reports_dir=reports, notebooks_dir=nbs, progress=False)
    message = str(info.value)
    assert "02_bad" in message and "RuntimeError: boom in cell" in message and "cell" in message
    failed = reports / "_build" / "02_bad.failed.ipynb"
    assert str(failed) in message and failed.is_file()
    after = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file() and "_build" not in p.parts}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reports") and p.is_dir()], "no temporary folder left behind"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PID_OF = "__import__('json').dump(__import__('os').getpid(), open({!r}, 'w'))"
"""Code that writes the kernel's process id to a file, binding no name."""


def test_the_notebook_after_an_overlapped_one_runs_in_a_kernel_preloaded_beside_it(tmp_path, monkeypatch):
    nbs, reports = tmp_path / "nbs", tmp_path / "reports"
    nbs.mkdir()
    monkeypatch.setattr(report, "PRELOAD", PID_OF.format("preloaded.json"))
    monkeypatch.setattr(report, "OVERLAPPED", ("01_first",))
    _notebook(nbs / "01_first.ipynb", PID_OF.format("first.json"))
    _notebook(nbs / "02_second.ipynb", PID_OF.format("second.json") + "\nprint(sorted(n for n in dir() if n[0] != '_'))")
    _notebook(nbs / "03_third.ipynb", PID_OF.format("third.json"))
    run_reports({"x": 2}, notebooks=("01_first", "02_second", "03_third"), reports_dir=reports, notebooks_dir=nbs,
                progress=False)
    pid = {name: json.loads((nbs / f"{name}.json").read_text()) for name in ("preloaded", "first", "second", "third")}
    assert pid["second"] == pid["preloaded"] != pid["first"], "02 ran in the kernel started while 01 ran"
    assert pid["third"] not in (pid["preloaded"], pid["first"]), "02 is not overlapped: 03 got its own kernel"
    executed = nbformat.read(reports / "executed" / "02_second.ipynb", as_version=4)
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code"]
    assert counts[0] == 1, "the preload takes no execution count"
    names = executed.cells[-1].outputs[0]["text"]
    assert "'x'" in names and "'json'" not in names and "'os'" not in names, "the preload binds no name"
    assert not any(_alive(p) for p in pid.values()), "every kernel is shut down"


def test_a_failure_shuts_down_the_kernel_started_for_the_next_notebook(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    monkeypatch.setattr(report, "PRELOAD", PID_OF.format("preloaded.json"))
    monkeypatch.setattr(report, "OVERLAPPED", ("01_bad",))
    _notebook(nbs / "01_bad.ipynb", "import time\nwhile not __import__('os').path.exists('preloaded.json'): time.sleep(0.1)\n"
                                    "raise RuntimeError('boom')")
    _notebook(nbs / "02_never.ipynb", "print('never')")
    with pytest.raises(NotebookFailed, match="01_bad"):
        run_reports({}, notebooks=("01_bad", "02_never"), reports_dir=tmp_path / "r", notebooks_dir=nbs, progress=False)
    assert not _alive(json.loads((nbs / "preloaded.json").read_text()))


@pytest.mark.slow
def test_reports_show_no_machine_paths(tmp_path):
    from maskclf.paths import PROJECT_ROOT

    nbs, reports = tmp_path / "nbs", tmp_path / "reports"
    nbs.mkdir()
    data = PROJECT_ROOT.parent / "shared" / "datasets" / "face-mask-detection"
    _notebook(nbs / "01_paths.ipynb", f"print({str(PROJECT_ROOT / 'data')!r}, {str(data)!r}, x)")
    run_reports({"x": str(PROJECT_ROOT / "models" / "run")}, notebooks=("01_paths",), reports_dir=reports,
                notebooks_dir=nbs, progress=False)
    for page in (reports / "01_paths.html", reports / "index.html", reports / "executed" / "01_paths.ipynb"):
        text = page.read_text()
        assert str(PROJECT_ROOT) not in text and str(PROJECT_ROOT.parent) not in text and ".reports.tmp-" not in text
    assert "../shared/datasets/face-mask-detection" in (reports / "01_paths.html").read_text()
    assert "models/run" in (reports / "index.html").read_text()


def test_missing_notebook_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="99_nope.ipynb"):
        run_reports({}, notebooks=("99_nope",), reports_dir=tmp_path / "r", notebooks_dir=tmp_path)


@pytest.mark.slow
def test_main_job_regenerates_all_reports_on_fixtures(voc_master, tmp_path):
    from maskclf.cli import main

    overrides = {
        "faces_dir": tmp_path / "faces", "models_dir": tmp_path / "models", "backbone": "efficientnet_lite0",
        "image_size": 32, "epochs": 2, "verifier": 0,  # the synthetic photos hold no false alarms to learn from
        "fine_tune_blocks": 0, "compare": [], "batch_size": 16, "n_bootstrap": 20, "worst_n": 3, "n_gradcam": 2,
    }
    args = ["reports", "--data", str(voc_master), "--reports-dir", str(tmp_path / "reports")]
    for k, v in overrides.items():
        args += ["-p", f"{k}={json.dumps(str(v)) if isinstance(v, Path) else json.dumps(v)}"]
    assert main(args) == 0
    out = tmp_path / "reports"
    for name in report.PIPELINE:
        assert (out / f"{name}.html").is_file() and (out / "executed" / f"{name}.ipynb").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "efficientnet_lite0" and metrics["n_faces"] > 0
    index = (out / "index.html").read_text()
    assert "95% CI" in index and "01_extract.html" in index and metrics["data_sha256"][:16] in index
    assert report.network_references(index) == []
    from maskclf.native_logs import NATIVE_LOG

    for name in report.PIPELINE:  # kernels print no TensorFlow C++ lines, tqdm warnings or progress bars
        assert '<a href="index.html">' in (out / f"{name}.html").read_text()
        nb = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
        stderr = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr")
        assert not [line for line in stderr.splitlines() if NATIVE_LOG.match(line)], (name, stderr[:500])
        assert "TqdmWarning" not in stderr and "it/s]" not in stderr and "photo/s]" not in stderr, (name, stderr[:500])


def test_index_headline_reads_as_numbers_with_intervals():
    metrics = json.loads(json.dumps({
        "accuracy": 0.9693251533742331, "roc_auc": 0.9950872157209096, "balanced_accuracy": 0.9630529182306616,
        "recall": {"without_mask": 0.9523809523809523}, "backbone": "resnet50", "weights": "imagenet", "split": "grouped",
        "n_val": 815, "n_val_photos": 169, "n_faces": 4072, "run_name": "run", "data_sha256": "ab" * 32,
        "ci95": {"accuracy": [0.9567498529750186, 0.9842270934466019], "roc_auc": [0.9896147855138312, 0.9990712019548146],
                 "balanced_accuracy": [0.9436428105367513, 0.9822150087352369]},
        "cv": {"mean": {"accuracy": 0.9754422677765252, "roc_auc": 0.9937786986143718}},
    }))
    page = report.render_index([], {}, metrics)
    assert "0.969 [0.957, 0.984]" in page and "0.995 [0.990, 0.999]" in page and "0.963 [0.944, 0.982]" in page
    assert "815 faces from 169 photos" in page and "all 4,072 faces" in page
    assert "0.9567" not in page and "(0.9" not in page


def _metrics(run: str = "run") -> dict:
    return {
        "accuracy": 0.97, "roc_auc": 0.995, "balanced_accuracy": 0.96, "recall": {"without_mask": 0.95},
        "backbone": "resnet50", "weights": "imagenet", "split": "grouped", "n_val": 815, "n_val_photos": 169,
        "n_faces": 4072, "run_name": run, "data_sha256": "ab" * 32,
        "ci95": {"accuracy": [0.95, 0.98], "roc_auc": [0.99, 0.999], "balanced_accuracy": [0.94, 0.98]},
        "cv": {"mean": {"accuracy": 0.975, "roc_auc": 0.993}},
    }


def test_index_reads_headline_then_reports_then_folded_parameters(tmp_path):
    runs = [report.NotebookRun(name, tmp_path / f"{name}.ipynb", tmp_path / f"{name}.html", 12.0) for name in report.PIPELINE]
    params = {f"param_{i:02d}": i for i in range(41)}
    page = report.render_index(runs, params, _metrics())
    for name in report.PIPELINE:
        assert f'<a href="{name}.html">{name}</a>: {report.REPORT_SUMMARIES[name]}' in page
    assert page.index("<h2>Headline</h2>") < page.index("<h2>Reports</h2>") < page.index("<details>")
    details = page[page.index("<details>"):page.index("</details>")]
    assert "the 41 parameters" in details and details.count("<tr>") == 41 and "param_40" in details
    assert "param_" not in page[:page.index("<details>")]
    assert report.network_references(page) == []
    assert "12 s" not in page and "Generated" not in page, "no run time or date: a rerun writes the same bytes"


def test_index_links_the_run_folder_files_that_exist_only(tmp_path):
    from maskclf.runs import CONFIG_FILE, EXPORT_DIR, MODEL_FILE

    folder = tmp_path / "models" / "run-1"
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(b"m")
    (folder / CONFIG_FILE).write_text("{}")
    page = report.render_index([], {}, _metrics("run-1"), run_folder=folder, run_href="../models/run-1")
    assert f'href="../models/run-1/{MODEL_FILE}"' in page and f'href="../models/run-1/{CONFIG_FILE}"' in page
    assert f"{EXPORT_DIR}/" not in page, "no export was made: no link to it"
    (folder / EXPORT_DIR).mkdir()
    page = report.render_index([], {}, _metrics("run-1"), run_folder=folder, run_href="../models/run-1")
    assert f'href="../models/run-1/{EXPORT_DIR}/"' in page
    gone = report.render_index([], {}, _metrics("run-2"), run_folder=tmp_path / "models" / "run-2",
                               run_href="../models/run-2")
    assert "../models/run-2/" not in gone and "run-2" in gone and 'href="metrics.json"' in gone


def test_each_report_links_back_to_the_index(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A report"), nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    page = report.export_html(tmp_path / "01_x.ipynb", tmp_path / "01_x.html").read_text()
    back = page.index('<a href="index.html">')
    assert "all reports (index.html)" in page[back:back + 200]
    assert back < page.index("A report"), "the link is at the top"
    assert report.network_references(page) == []


def test_an_executed_notebook_keeps_no_run_noise():
    """Times, random cell ids and memory addresses change on every run though the work does not."""
    import nbformat

    cell = nbformat.v4.new_code_cell("table", id="random-1234")
    cell.metadata["papermill"] = {"start_time": "2026-01-01T00:00:00", "duration": 1.5, "status": "completed"}
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    cell.outputs = [nbformat.v4.new_output("execute_result", data={
        "text/plain": "<pandas.io.formats.style.Styler at 0x7fbea0e22a50>", "text/html": "<table></table>"})]
    nb = nbformat.v4.new_notebook(cells=[cell], metadata={"papermill": {"end_time": "x", "parameters": {"a": 1}}})
    clean = report.without_run_noise(nb)
    assert clean.cells[0].id == "cell-0" and "execution" not in clean.cells[0].metadata
    assert clean.cells[0].metadata["papermill"] == {"status": "completed"}
    assert clean.metadata["papermill"] == {"parameters": {"a": 1}}
    assert clean.cells[0].outputs[0]["data"]["text/plain"] == "<pandas.io.formats.style.Styler>"


def test_a_data_set_reached_through_a_link_keeps_the_links_path(voc_master, tmp_path, monkeypatch):
    """`reports --data` passes the notebooks an absolute path with symlinks kept, so that a data set linked beside
    the project shows as ../ in the reports, not as the link's target."""
    import argparse
    import os

    link = tmp_path / "shared"
    link.symlink_to(voc_master, target_is_directory=True)
    seen = {}
    monkeypatch.setattr(report, "run_reports", lambda params, reports_dir: seen.update(params) or [])
    args = argparse.Namespace(param=[], data=str(link), params=None, reports_dir=str(tmp_path / "reports"))
    assert report.run(args) == 0
    assert seen["data_dir"] == os.path.abspath(link) != str(Path(voc_master).resolve())
