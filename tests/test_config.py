"""One source of defaults: JupyterLab, papermill (the main job) and the CLI build the same run."""

from __future__ import annotations

import argparse

import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from maskclf import cli_args, train, trainconfig
from maskclf.config import load_params, resolve_params, stage_defaults
from maskclf.paths import NOTEBOOKS_DIR
from maskclf.report import declared_parameters

NOTEBOOK = NOTEBOOKS_DIR / "02_train.ipynb"


def notebook_config(injected: dict | None = None) -> dict:
    """Run 02_train's parameter cells and its own code up to `config = ...`, as a kernel would."""
    nb = load_notebook_node(str(NOTEBOOK))  # as papermill reads it
    if injected is not None:
        nb = parameterize_notebook(nb, injected)
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [line for line in cell.source.splitlines() if not line.startswith("%")]
        cut = next((i for i, line in enumerate(lines) if line.startswith("config = ")), None)
        exec("\n".join(lines if cut is None else lines[: cut + 1]), namespace)
        if cut is not None:
            return namespace["config"].to_dict()
    raise AssertionError("02_train never builds `config`")


def cli_config(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    cli_args.train_options(parser)
    return train.config_from_args(parser.parse_args(argv)).to_dict()


def main_job_injection(overrides: dict | None = None) -> dict:
    """What `python -m maskclf reports` injects into 02_train: params.yaml (+ -p overrides), its declared names."""
    params = load_params(overrides=overrides)
    return {k: v for k, v in params.items() if k in declared_parameters(NOTEBOOK)}


def test_jupyterlab_papermill_and_cli_build_the_same_run():
    in_lab = notebook_config()  # opened in JupyterLab and run: nothing injected
    by_papermill = notebook_config(main_job_injection())
    by_cli = cli_config([])
    assert in_lab == by_papermill == by_cli
    assert in_lab["backbone"] == stage_defaults("02_train")["backbone"]


def test_one_override_changes_the_same_field_everywhere():
    by_papermill = notebook_config(main_job_injection({"backbone": "efficientnet_lite0", "jitter_views": 0}))
    by_cli = cli_config(["--backbone", "efficientnet_lite0", "--jitter-views", "0"])
    assert by_papermill == by_cli
    assert by_cli["backbone"] == "efficientnet_lite0" and by_cli["jitter_views"] == 0
    assert {k: v for k, v in by_cli.items() if k not in ("backbone", "jitter_views", "image_size")} == {
        k: v for k, v in notebook_config().items() if k not in ("backbone", "jitter_views", "image_size")}


def test_a_default_changed_in_params_yaml_reaches_every_entry_point(tmp_path, monkeypatch):
    from maskclf import config

    text = config.PARAMS_FILE.read_text().replace("  head_c: 0.01", "  head_c: 0.5")
    assert "head_c: 0.5" in text
    changed = tmp_path / "params.yaml"
    changed.write_text(text)
    monkeypatch.setattr(config, "PARAMS_FILE", changed)
    assert notebook_config()["head_c"] == cli_config([])["head_c"] == trainconfig.TrainConfig.from_params({}).head_c == 0.5


def test_none_means_the_default_and_none_string_means_random_weights():
    assert resolve_params("02_train", {"epochs": None})["epochs"] == stage_defaults("02_train")["epochs"]
    assert trainconfig.TrainConfig.from_params({"weights": "none"}).weights is None
    with pytest.raises(ValueError, match="parameter 'pooling': 'sum' is not one of the choices"):
        trainconfig.TrainConfig.from_params({"pooling": "sum"})
