"""The main job: run the numbered notebooks with papermill and regenerate `reports/`.

All notebooks get one shared set of parameters (`notebooks/params.yaml` plus overrides,
read by maskclf.config); each receives the ones its `parameters` cell declares. Everything is built in a
temporary folder that replaces `reports/` only when every notebook has succeeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from . import formatting
from .config import ParamsError, load_params
from .data import DataNotFoundError, remember_data_dir, resolve_data_dir
from .fsutil import OutputError, atomic_dir, write_json_atomic, write_text_atomic
from .native_logs import drop_native_logs
from .paths import EVALUATION_DIR, MODELS_DIR, NOTEBOOKS_DIR, PROJECT_ROOT, REPORTS_DIR, project_path

PIPELINE = ("01_extract", "02_train", "03_evaluate", "04_error_analysis")
TEMPLATE_DIR = Path(__file__).parent / "templates"
BUILD_DIR_NAME = "_build"  # failed executed notebooks are kept here (git-ignored)
FIGURES_DIR_NAME = "figures"  # figures for the README, written by commands such as `predict --draw`
EVALUATION_DIR_NAME = EVALUATION_DIR.name  # 03_evaluate's folders, one per run, fold and threshold (git-ignored)


PRELOAD = "__import__('maskclf'); __import__('keras')"
"""Run, silently, in the next notebook's kernel while the current notebook runs: TensorFlow's import (about 4 s
on 2 cores) then overlaps the other notebook's work. `maskclf` first, which keeps TensorFlow's C++ lines out
(maskclf.native_logs); `__import__` binds no name, so a notebook still runs only on what it imports itself."""
OVERLAPPED = ("01_extract", "03_evaluate")
"""The notebooks light enough in memory (under 1 GiB) for the next notebook's kernel to start beside them;
02_train's kernel holds several GiB, so 03's kernel starts after it."""
KERNEL = "python3"

REPORTS_MARKERS = ("index.html", "executed")
"""What a folder written by `reports` holds; any other non-empty folder is not replaced."""


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the cell and the executed notebook to open."""


@dataclass
class NotebookRun:
    """One executed notebook of the pipeline."""

    name: str
    executed: Path
    html: Path
    seconds: float


# --------------------------------------------------------------------------- parameters


def check_params(params: dict[str, Any], notebooks: list[Path]) -> None:
    """ParamsError unless every parameter is declared by one of `notebooks`, has a JSON-like
    value of bounded size, and the parameters together make a pipeline that can finish."""
    declared = set().union(*(declared_parameters(nb) for nb in notebooks))
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ParamsError(f"unknown parameter {', '.join(map(repr, unknown))}; the notebooks take {', '.join(sorted(declared))}")
    if "cross_validate" in params and not params["cross_validate"] and any(nb.stem == "04_error_analysis" for nb in notebooks):
        raise ParamsError(
            "parameter 'cross_validate' is off, but 04_error_analysis needs the out-of-fold predictions "
            "(cv_predictions.csv) that cross-validation writes; keep cross_validate=true"
        )


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged `parameters`."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            return set(re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, flags=re.M))
    return set()


# --------------------------------------------------------------------------- running


def preloaded_kernel(cwd: Path) -> Any:
    """A started kernel (a jupyter_client KernelManager) in `cwd` that is running PRELOAD, or None when none starts
    (papermill then starts one itself, and reports why it cannot)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=KERNEL)
    try:
        km.start_kernel(cwd=str(cwd))
        client = km.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            client.execute(PRELOAD, silent=True, store_history=False)  # no output, no execution count
        finally:
            client.stop_channels()
    except Exception:  # noqa: BLE001 - any failure to start: the notebook's own kernel start reports it
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        return None
    return km


def run_notebook(notebook: Path, executed: Path, params: dict[str, Any], cwd: Path, progress: bool = True,
                 kernel: Any = None) -> None:
    """Execute `notebook` with the parameters it declares; raise NotebookFailed on an error. `kernel`: a started
    kernel's manager (`preloaded_kernel`) to run it in, shut down after it; None: papermill starts one."""
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellControlSignal, DeadKernelError
    from papermill.exceptions import PapermillException, PapermillExecutionError

    mine = {k: v for k, v in params.items() if k in declared_parameters(notebook)}
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=mine, kernel_name=KERNEL,
            cwd=str(cwd), progress_bar=progress, **({"km": kernel} if kernel is not None else {}),
        )
    except PapermillExecutionError as exc:
        raise NotebookFailed(
            f"{notebook.name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
            f"executed notebook: {executed}"
        ) from exc
    except (PapermillException, CellControlSignal, NoSuchKernel, RuntimeError, TimeoutError) as exc:
        # the kernel died (DeadKernelError, a RuntimeError), timed out, or could not start
        hint = "; the kernel died, most often for lack of memory" if isinstance(exc, DeadKernelError) else ""
        raise NotebookFailed(
            f"{notebook.name} failed{_in_cell(executed)} ({type(exc).__name__}: {exc}){hint}; "
            f"executed notebook: {executed}"
        ) from exc
    finally:
        if kernel is not None and kernel.has_kernel:
            kernel.shutdown_kernel(now=True)


def _in_cell(executed: Path) -> str:
    """' in cell N' for the last cell the kernel started in the executed notebook, if any."""
    try:
        counts = [c.get("execution_count") for c in nbformat.read(executed, as_version=4).cells]
    except (OSError, ValueError):  # not written, or written half
        return ""
    started = [n for n in counts if isinstance(n, int)]
    return f" in cell {max(started)}" if started else ""


def export_html(executed: str | Path, target: str | Path) -> Path:
    """Export an executed notebook to self-contained HTML: images embedded, no scripts, code folded."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="report", embed_images=True,
        exclude_input_prompt=True, exclude_output_prompt=True,
    )
    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        cell["outputs"] = merge_streams(cell.get("outputs", []))
        for output in cell["outputs"]:
            if output.get("output_type") == "stream":
                output["text"] = drop_native_logs(collapse_carriage_returns(output["text"]))
        cell["outputs"] = [o for o in cell["outputs"] if o.get("output_type") != "stream" or o["text"].strip()]
    body, _ = exporter.from_notebook_node(nb)
    remote = network_references(body)
    if remote:
        raise RuntimeError(f"{executed}: the HTML export would fetch from the network: {remote[:3]}")
    return write_text_atomic(target, body)


def merge_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive outputs of one stream: a progress bar's redraws arrive as separate outputs."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == output.get("name")):
            last["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def collapse_carriage_returns(text: str) -> str:
    """Keep what a terminal would show: for each line, the text after its last carriage return.

    Progress bars redraw one line with '\r'; a saved notebook keeps every redraw.
    """
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in text.split("\n"))


def network_references(page: str) -> list[str]:
    """URLs that a browser would fetch when opening `page` (scripts, styles, images, frames)."""
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed)\b[^>]*>", page, flags=re.I)
    urls = [u for tag in tags for u in re.findall(r"""(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", tag, flags=re.I)]
    urls += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')\s]+)""", page)
    urls += re.findall(r"""url\(\s*["']?((?:https?:)?//[^"')\s]+)""", page)
    return urls


def run_reports(
    params: dict[str, Any],
    notebooks: tuple[str, ...] = PIPELINE,
    reports_dir: str | Path = REPORTS_DIR,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    progress: bool = True,
) -> list[NotebookRun]:
    """Run `notebooks` in order and replace `reports_dir` with their HTML, index and metrics.

    On a failure the previous `reports_dir` is left as it was and the failed executed
    notebook is kept under `reports_dir/_build/`.
    """
    reports_dir, notebooks_dir = Path(reports_dir), Path(notebooks_dir)
    missing = [str(notebooks_dir / f"{n}.ipynb") for n in notebooks if not (notebooks_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"notebooks not found: {', '.join(missing)}")
    check_params(params, [notebooks_dir / f"{n}.ipynb" for n in notebooks])
    _refuse_foreign_output(reports_dir)
    runs: list[NotebookRun] = []
    cells: dict[str, list[tuple[float, str]]] = {}
    with atomic_dir(reports_dir) as tmp:
        for kept in (FIGURES_DIR_NAME, EVALUATION_DIR_NAME):  # made outside this run (the README's figures,
            if (reports_dir / kept).is_dir():                # evaluations at other thresholds): they stay
                shutil.copytree(reports_dir / kept, tmp / kept)
        (tmp / "executed").mkdir()
        # 03_evaluate writes the headline and its evaluation folder here, 04 reads it
        params = {**params, "metrics_path": str(tmp / "metrics.json"), "evaluation_dir": str(tmp / EVALUATION_DIR_NAME)}
        upcoming = None  # the next notebook's kernel, started while an OVERLAPPED notebook runs
        try:
            for i, name in enumerate(notebooks, 1):
                if progress:
                    print(f"[{i}/{len(notebooks)}] {name}", file=sys.stderr, flush=True)
                executed = tmp / "executed" / f"{name}.ipynb"
                t0 = time.perf_counter()
                kernel, upcoming = upcoming, None
                if name in OVERLAPPED and i < len(notebooks):
                    upcoming = preloaded_kernel(notebooks_dir)
                try:
                    run_notebook(notebooks_dir / f"{name}.ipynb", executed, params, cwd=notebooks_dir,
                                 progress=progress, kernel=kernel)
                except NotebookFailed as exc:
                    kept = _keep_failed(executed, reports_dir)
                    raise NotebookFailed(str(exc).replace(str(executed), str(kept))) from exc
                cells[name] = cell_seconds(executed)  # before hide_machine_paths drops papermill's times
                hide_machine_paths(executed, _path_replacements(tmp, reports_dir))
                runs.append(NotebookRun(name, executed, export_html(executed, tmp / f"{name}.html"),
                                        time.perf_counter() - t0))
        finally:
            if upcoming is not None:  # a notebook before it failed
                upcoming.shutdown_kernel(now=True)
        metrics_file = tmp / "metrics.json"
        metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
        shown = {k: v for k, v in params.items() if k not in ("metrics_path", "evaluation_dir")}
        run_folder = _run_folder(params, metrics)
        run_href = os.path.relpath(run_folder, reports_dir.resolve()) if run_folder is not None else None
        page = render_index(runs, shown, metrics, run_folder=run_folder, run_href=run_href)
        (tmp / "index.html").write_text(_replace_all(page, _path_replacements(tmp, reports_dir)), encoding="utf-8")
    # the runs' paths pointed into the temporary folder, which is now reports_dir
    write_json_atomic(reports_dir / BUILD_DIR_NAME / "timings.json",
                      {"finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "seconds": {r.name: round(r.seconds, 1) for r in runs}, "cells": cells})
    return [NotebookRun(r.name, reports_dir / "executed" / r.executed.name, reports_dir / r.html.name, r.seconds) for r in runs]


def _run_folder(params: dict[str, Any], metrics: dict[str, Any] | None) -> Path | None:
    """The evaluated model's run folder (`models_dir`/`run_name` of metrics.json), or None without metrics."""
    run = (metrics or {}).get("run_name")
    if not run:
        return None
    models_dir = project_path(params.get("models_dir"), MODELS_DIR)
    return (models_dir / str(run)).resolve()


def _path_replacements(tmp: Path, reports_dir: Path) -> list[tuple[str, str]]:
    """Machine paths -> what a reader should see: the final reports folder, paths from the project root."""
    final = os.path.relpath(reports_dir.resolve(), PROJECT_ROOT)
    return [(str(tmp.resolve()), final), (str(tmp), final), (str(PROJECT_ROOT) + os.sep, ""),
            (str(PROJECT_ROOT), "."), (str(PROJECT_ROOT.parent) + os.sep, ".." + os.sep)]


def _replace_all(text: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def hide_machine_paths(executed: Path, replacements: list[tuple[str, str]]) -> None:
    """Rewrite an executed notebook so that no machine path shows in a report (sources, outputs, papermill's
    metadata) and a rerun with nothing changed writes the same bytes (`without_run_noise`)."""
    text = _replace_all(executed.read_text(encoding="utf-8"), [(json.dumps(a)[1:-1], json.dumps(b)[1:-1])
                                                                for a, b in replacements])
    nb = without_run_noise(nbformat.reads(text, as_version=4))
    nbformat.validate(nb)
    write_text_atomic(executed, nbformat.writes(nb) + "\n")


def cell_seconds(executed: Path) -> list[tuple[float, str]]:
    """(seconds, first line) of each code cell of an executed notebook, from papermill's metadata."""
    timed = []
    for cell in nbformat.read(executed, as_version=4).cells:
        seconds = cell.metadata.get("papermill", {}).get("duration")
        if cell.cell_type == "code" and seconds is not None:
            lines = cell.source.strip().splitlines()
            timed.append((round(float(seconds), 2), lines[0][:70] if lines else ""))
    return timed


RUN_NOISE = ("start_time", "end_time", "duration")
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")
"""papermill's per-run metadata: times that change on every run."""


def without_run_noise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """`nb` without what changes on every run though the work does not: papermill's times, nbclient's timing
    metadata, cell ids (papermill gives its injected cell a random one: cells are numbered instead) and the
    memory addresses in objects' plain-text reprs."""
    for key in RUN_NOISE:
        nb.metadata.get("papermill", {}).pop(key, None)
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        for key in RUN_NOISE:
            cell.metadata.get("papermill", {}).pop(key, None)
        cell["id"] = f"cell-{i}"
        for output in cell.get("outputs", []):
            plain = output.get("data", {}).get("text/plain")
            if plain is not None:  # an object's repr names its memory address: <Styler at 0x7f...>
                output["data"]["text/plain"] = MEMORY_ADDRESS.sub(">", "".join(plain))
    return nb


def _refuse_foreign_output(reports_dir: Path) -> None:
    """Never replace a file, a link or a non-empty folder that `reports` did not write."""
    if reports_dir.is_symlink() or (reports_dir.exists() and not reports_dir.is_dir()):
        raise FileExistsError(f"{reports_dir}: exists and is not a folder written by `maskclf reports`; refusing to replace it")
    if not reports_dir.is_dir():
        return
    names = {p.name for p in reports_dir.iterdir()}
    if names - {BUILD_DIR_NAME, FIGURES_DIR_NAME, EVALUATION_DIR_NAME} and not all((reports_dir / m).exists() for m in REPORTS_MARKERS):
        raise FileExistsError(f"{reports_dir}: exists, is not empty and was not written by `maskclf reports`; refusing to replace it")


def _keep_failed(executed: Path, reports_dir: Path) -> Path:
    kept = reports_dir / BUILD_DIR_NAME / f"{executed.stem}.failed.ipynb"
    kept.parent.mkdir(parents=True, exist_ok=True)
    if executed.exists():
        shutil.copyfile(executed, kept)
    return kept


# --------------------------------------------------------------------------- index page


REPORT_SUMMARIES = {
    "01_extract": "the data: faces cropped from the annotated boxes, class counts, face sizes, sample crops, "
                  "the folds grouped by photo",
    "02_train": "training: cached backbone features, 5-fold cross-validation, learning curves, the comparison "
                "table (ablation), the run folder written",
    "03_evaluate": "the validation fold: confusion matrix, per-class metrics with 95% CIs by photo, ROC and PR "
                   "curves, thresholds, calibration, accuracy by face size, the framing check",
    "04_error_analysis": "the mistakes: every misclassified face beside its photo, Grad-CAM, error rates by size, "
                         "photo and class, likely label errors, whole photos through the detector and the face verifier",
}
"""One line per report on the index page: what it shows."""

def render_index(runs: list[NotebookRun], params: dict[str, Any], metrics: dict[str, Any] | None,
                 run_folder: Path | None = None, run_href: str | None = None) -> str:
    """`reports/index.html`: the headline with CIs, one line per report, the files, the parameters (folded).

    `run_folder` is the model's run folder on disk (only the files it holds are linked, `export/`
    included) and `run_href` the same folder as a link from the index; without them no run file is linked.
    """
    items = "".join(
        f'<li><a href="{html.escape(r.html.name)}">{html.escape(r.name)}</a>'
        + (f": {html.escape(REPORT_SUMMARIES[r.name])}" if r.name in REPORT_SUMMARIES else "") + "</li>"
        for r in runs
    )
    headline = _headline_html(metrics) if metrics else "<p>No evaluation was run.</p>"
    shown = {k: v for k, v in sorted(params.items()) if not str(k).startswith("_")}
    params_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(json.dumps(v))}</code></td></tr>" for k, v in shown.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>maskclf reports</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 900px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left; }}
li {{ margin: 0.4em 0; }} code {{ font-size: 0.9em; }} .muted {{ color: #666; }}
details > summary {{ cursor: pointer; }}
</style></head><body>
<h1>maskclf: does each face wear a mask?</h1>
<p class="muted">Written by <code>python -m maskclf reports</code>; a rerun with nothing changed writes the same
bytes (each run's times are in <code>reports/_build/timings.json</code>, not committed).</p>
<h2>Headline</h2>
{headline}
<h2>Reports</h2>
<ul>{items}</ul>
<h2>Files</h2>
{_files_html(metrics, run_folder, run_href)}
<h2>Parameters</h2>
<details><summary>the {len(shown)} parameters of this run (<code>notebooks/params.yaml</code> and overrides)</summary>
<table>{params_rows}</table>
</details>
</body></html>
"""


def _files_html(metrics: dict[str, Any] | None, run_folder: Path | None, run_href: str | None) -> str:
    """metrics.json, and the run folder's files that exist (never a link to a file that is not there)."""
    parts = ['<a href="metrics.json">metrics.json</a>: the headline figures' if metrics else "no metrics.json"]
    run = str(metrics.get("run_name") or "") if metrics else ""
    if run and run_folder is not None and run_href is not None and run_folder.is_dir():
        from .runs import RUN_FILES

        href = run_href.rstrip("/")
        links = [f'<a href="{html.escape(href)}/{html.escape(f)}" title="{html.escape(what)}">{html.escape(f)}</a>'
                 for f, what in RUN_FILES.items() if (run_folder / f.rstrip("/")).exists()]
        if links:
            parts.append(f"the run folder <code>{html.escape(href)}/</code>: " + ", ".join(links))
    elif run:
        parts.append(f"the run <code>{html.escape(run)}</code> (its folder is not here)")
    return "<p>" + "; ".join(parts) + "</p>"


def _headline_html(m: dict[str, Any]) -> str:
    def ci(name: str) -> str:
        return html.escape(formatting.with_ci(m[name], m.get("ci95", {}).get(name)))

    cv = m.get("cv", {}).get("mean", {})
    framing = m.get("framing_accuracy") or {}
    worst = min(framing.items(), key=lambda kv: kv[1]) if framing else None
    items = [
        ("backbone / weights", f"{html.escape(str(m.get('backbone')))} / {html.escape(str(m.get('weights')))}"),
        ("split", html.escape(str(m.get("split")))),
        ("evaluated on", html.escape(formatting.evaluated_on(m))),
        ("accuracy [95% CI]", ci("accuracy")),
        ("ROC AUC [95% CI]", ci("roc_auc")),
        ("balanced accuracy [95% CI]", ci("balanced_accuracy")),
        ("recall of without_mask", f"{m['recall']['without_mask']:.3f}"),
        ("5-fold CV mean accuracy / AUC", f"{cv.get('accuracy', float('nan')):.3f} / {cv.get('roc_auc', float('nan')):.3f}"),
        ("data sha256", f"<code>{html.escape(str(m.get('data_sha256', ''))[:16])}…</code>"),
    ]
    if worst:
        items.insert(7, ("worst re-cut (framing check)", f"{html.escape(worst[0])}: {worst[1]:.3f} "
                                                         f"(annotated box {framing.get('annotated box', float('nan')):.3f})"))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run `reports` from parsed arguments."""
    overrides = dict(args.param)
    t0 = time.perf_counter()
    try:
        if args.data:
            # absolute, but symlinks kept: a data set beside the project through a link shows as ../ in the reports
            overrides["data_dir"] = os.path.abspath(resolve_data_dir(args.data))
        params = load_params(args.params, overrides)  # every value checked (params.schema.yaml) before anything runs
        runs = run_reports(params, reports_dir=args.reports_dir)
        if args.data and Path(args.reports_dir).resolve() == REPORTS_DIR.resolve():
            remember_data_dir(overrides["data_dir"])  # so that JupyterLab finds what the project's reports used
    except (ParamsError, DataNotFoundError, FileExistsError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(f"error: {exc}\nthe previous reports in {args.reports_dir} are unchanged", file=sys.stderr)
        return 1
    for r in runs:
        print(f"{r.name}: {r.html} ({r.seconds:.0f} s)")
    print(f"index: {Path(args.reports_dir) / 'index.html'}; total {time.perf_counter() - t0:.0f} s")
    return 0
