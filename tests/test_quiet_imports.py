"""Notebook kernels stay quiet: no TensorFlow C++ log lines and no tqdm/ipywidgets warning on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from maskclf import native_logs
from maskclf.native_logs import NATIVE_LOG

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK_IMPORTS = """
import sys
from maskclf import answers, conclusions, data, evaluate, explain, formatting, plots, runs, splits, train, wholephoto
from maskclf.config import resolve_params
from maskclf.framing import framing_faces, framing_table
from maskclf.images import load_crop
from maskclf.model import cached_predict_crops, cached_scorer
import tensorflow as tf
tf.constant([1.0]) + 1.0  # the runtime's start (CUDA probing: `failed call to cuInit` without a GPU)
assert 'tqdm.autonotebook' not in sys.modules, 'tqdm.auto imported: in a kernel without ipywidgets it warns'
print('imported')
"""


def test_notebook_facing_modules_import_without_native_logs_or_tqdm_warnings():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", NOTEBOOK_IMPORTS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
    assert [line for line in done.stderr.splitlines() if NATIVE_LOG.match(line)] == [], done.stderr
    assert "TqdmWarning" not in done.stderr and "IProgress" not in done.stderr, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "cuInit" not in done.stderr, done.stderr


def test_verbose_undoes_the_quiet_import(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(native_logs, "_SET_BY_US", [])
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, native_logs._QuietTensorFlowImport)])
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as before TensorFlow's first import
    native_logs.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == native_logs.TF_LOG_LEVEL
    assert sum(isinstance(f, native_logs._QuietTensorFlowImport) for f in sys.meta_path) == 1
    native_logs.quiet_tensorflow()  # idempotent
    assert sum(isinstance(f, native_logs._QuietTensorFlowImport) for f in sys.meta_path) == 1
    native_logs.show_native_logs()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert not any(isinstance(f, native_logs._QuietTensorFlowImport) for f in sys.meta_path)


def test_a_level_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.setattr(native_logs, "_SET_BY_US", [])
    native_logs.quiet_tensorflow()
    native_logs.show_native_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_no_progress_bars_inside_a_notebook_kernel(monkeypatch):
    import types

    monkeypatch.delitem(sys.modules, "ipykernel.kernelapp", raising=False)
    assert native_logs.show_progress(True) and not native_logs.show_progress(False)
    idle = types.SimpleNamespace(IPKernelApp=types.SimpleNamespace(initialized=lambda: False))
    monkeypatch.setitem(sys.modules, "ipykernel.kernelapp", idle)  # imported, but no kernel runs here
    assert native_logs.show_progress(True)
    running = types.SimpleNamespace(IPKernelApp=types.SimpleNamespace(initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "ipykernel.kernelapp", running)
    assert not native_logs.show_progress(True)
