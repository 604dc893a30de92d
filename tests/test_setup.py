"""What `make setup` leaves behind works from any shell, not only inside the activated venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git_config(key: str) -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), "config", "--get", key], capture_output=True, text=True)
    return done.stdout.strip() or None


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_notebook_diff_works_without_the_venv_on_path(tmp_path):
    command = _git_config("diff.jupyternotebook.command")
    if command is None:
        pytest.skip("nbdime is not configured in this checkout (run `make setup`)")
    driver = Path(command.split()[0])
    assert driver.is_absolute() and os.access(driver, os.X_OK), f"git runs {command!r}: not an absolute executable"
    repo = tmp_path / "repo"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)  # noqa: E731
    repo.mkdir()
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    git("config", "diff.jupyternotebook.command", command)
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "x = 1"}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (repo / "a.ipynb").write_text(json.dumps(notebook))
    git("add", ".")
    git("commit", "-qm", "one")
    notebook["cells"][0]["source"] = "x = 2"
    (repo / "a.ipynb").write_text(json.dumps(notebook))
    done = git("diff", "--no-color")
    assert done.returncode == 0, done.stderr
    assert "nbdiff" in done.stdout and "x = 2" in done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_lab_allows_root_only_when_run_as_root():
    done = subprocess.run(["make", "-n", "-o", "setup", "lab"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    command = next(line for line in done.stdout.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in command) == (os.geteuid() == 0), command
