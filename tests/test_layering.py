"""The package's layers: the study's modules never import the serving ones, and the notebooks import only the study's."""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maskclf"
NOTEBOOKS = PACKAGE.parent / "notebooks"
SERVING = {"predict", "video", "demo", "demo_browser", "export", "runtime", "cli", "__main__"}
"""Modules that use a trained model on new photos (the CLI's commands, the demo, export, and runtime, which loads a
run for them); everything else is the study: data, features, training, evaluation, reports, and what both layers
share (detection, images, runs)."""


def imported_modules(source: str) -> set[str]:
    """The maskclf modules `source` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("maskclf")):
            module = (node.module or "").removeprefix("maskclf").lstrip(".")
            found |= {module.split(".")[0]} if module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("maskclf.")}
    return found


def test_no_study_module_imports_a_serving_module():
    study = [p for p in PACKAGE.glob("*.py") if p.stem not in SERVING]
    offending = {p.stem: sorted(imported_modules(p.read_text()) & SERVING) for p in study}
    assert not {k: v for k, v in offending.items() if v}, "study modules must not import serving modules"
    assert SERVING <= {p.stem for p in PACKAGE.glob("*.py")}, "a serving module was renamed: update SERVING"


def test_predict_and_export_do_not_import_each_other():
    """Both load a run through maskclf.runtime; neither reaches into the other."""
    imports = {name: imported_modules((PACKAGE / f"{name}.py").read_text()) for name in ("predict", "export")}
    assert "export" not in imports["predict"] and "predict" not in imports["export"]
    assert "runtime" in imports["predict"] and "runtime" in imports["export"]


def test_notebooks_import_only_study_modules():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        assert not imported_modules(code) & SERVING, f"{path.name} imports {sorted(imported_modules(code) & SERVING)}"


def test_the_import_finder_sees_lazy_and_absolute_imports():
    source = "from . import answers, evaluate\ndef f():\n    from .predict import x\nimport maskclf.export\n"
    assert imported_modules(source) == {"answers", "evaluate", "predict", "export"}


def test_the_extraction_notebook_s_imports_start_no_tensorflow():
    """01_extract reads the configuration (the crops' size) but runs no model: its kernel starts in about a second
    where importing TensorFlow takes about four."""
    import subprocess
    import sys

    cells = json.loads((NOTEBOOKS / "01_extract.ipynb").read_text())["cells"]
    setup = "".join(next(c for c in cells if c["cell_type"] == "code" and "import" in "".join(c["source"]))["source"])
    imports = "\n".join(line for line in setup.splitlines() if line.startswith(("import ", "from ")))
    code = f"{imports}\nimport sys\nTrainConfig.from_params({{}}).image_size\nprint(sorted({{'tensorflow', 'keras'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"01_extract's imports load {done.stdout.strip()}"
