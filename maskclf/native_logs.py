"""TensorFlow's C++ log lines: recognised in saved outputs and kept off a command's stderr.

TensorFlow, XLA and absl write notes to file descriptor 2 from C++ (oneDNN, CUDA probing,
CPU instructions, `failed call to cuInit` on machines without a GPU), many of them before
absl's logging is set up, so `TF_CPP_MIN_LOG_LEVEL` silences only some. `filtered_stderr`
passes descriptor 2 through a filter that drops exactly those lines; every other byte (Python
warnings, errors, progress bars) goes through unchanged. Nothing here imports TensorFlow.

This module is the one owner of that noise. `import maskclf` calls `quiet_tensorflow()`: it
sets `TF_CPP_MIN_LOG_LEVEL` (unless set) and runs the process's first `import tensorflow`,
whoever triggers it (keras, a notebook, the CLI), with descriptor 2 filtered, so that a notebook
kernel (JupyterLab or papermill) prints none of these lines either. The CLI's `--verbose` undoes
both (`show_native_logs`). `show_progress` says whether a progress bar belongs on stderr: never
inside a notebook kernel, where it would be saved into the notebook and its report.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

NATIVE_LOG = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"  # TensorFlow/absl C++ log lines
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)
_NATIVE_HEAD = re.compile(rb"[IWEF]\d{4} \d|[IWEF]\d{0,4} ?$")
_NATIVE_STARTS = (b"WARNING: All log messages before", b"To enable the following instructions")
_HOLD_LIMIT = 4096
"""A partial line held longer than this is passed on: no native log line is that long."""
TF_LOG_LEVEL = "3"
"""TF_CPP_MIN_LOG_LEVEL when quiet: errors too (`cuInit` is logged as an error)."""


def drop_native_logs(text: str) -> str:
    """Remove the C++ log lines TensorFlow prints on import (CUDA probing, oneDNN notes) from a stream.

    They are written before any Python logging is set up, so no environment variable
    silences them reliably; Python warnings and errors are kept.
    """
    return "".join(line for line in text.splitlines(keepends=True) if not NATIVE_LOG.match(line))


def _is_native(line: bytes) -> bool:
    return bool(NATIVE_LOG.match(line.decode("utf-8", "replace")))


def _may_be_native(partial: bytes) -> bool:
    """Whether a line whose end has not arrived yet may turn out to be a native log line."""
    return bool(_NATIVE_HEAD.match(partial)) or any(
        partial[: len(start)] == start[: len(partial)] for start in _NATIVE_STARTS)


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy `read_fd` to `write_fd` until end of file, leaving out native log lines."""
    pending = b""
    while chunk := os.read(read_fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not _is_native(line))
        if pending and (len(pending) > _HOLD_LIMIT or not _may_be_native(pending)):
            out, pending = out + pending, b""  # a progress bar's redraw: show it now
        if out:
            os.write(write_fd, out)
    if pending and not _is_native(pending):
        os.write(write_fd, pending)


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within the block, file descriptor 2 (this process's and its children's) loses TensorFlow's C++ logs.

    Also sets TF_CPP_MIN_LOG_LEVEL (unless already set), which TensorFlow reads on import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="native-log-filter", daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here is gone: the pump reads to its end
        pump.join(timeout=5)  # a child still holding the pipe would keep it open
        if not pump.is_alive():
            os.close(read_fd)
            os.close(saved)


# --------------------------------------------------------------------------- notebooks and imports


class _FilteredLoader(importlib.abc.Loader):
    """Wraps a module's loader: its code runs with TensorFlow's C++ logs filtered off descriptor 2."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # is_package, get_code, get_resource_reader, ...
        return getattr(self._loader, name)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would and wraps its first import in `filtered_stderr`, once."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        _remove_hook()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


_SET_BY_US: list[str] = []
"""Environment variables `quiet_tensorflow` set (so that `show_native_logs` can unset them)."""


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ log lines off stderr in this process, from its first import on.

    Sets `TF_CPP_MIN_LOG_LEVEL` (unless already set; it hides later lines such as `failed call
    to cuInit`) and, if TensorFlow is not imported yet, filters descriptor 2 while it is: the lines
    it writes on import come before absl's logging reads that variable.
    """
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = TF_LOG_LEVEL
        _SET_BY_US.append("TF_CPP_MIN_LOG_LEVEL")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def show_native_logs() -> None:
    """Undo `quiet_tensorflow` (the CLI's --verbose): TensorFlow's C++ logs reach stderr again."""
    _remove_hook()
    while _SET_BY_US:
        os.environ.pop(_SET_BY_US.pop(), None)


def show_progress(progress: bool = True) -> bool:
    """Whether to draw a progress bar: when asked for, and not inside a notebook kernel.

    In a kernel (JupyterLab, papermill) a bar on stderr is saved into the notebook and shows in
    its report; plain `tqdm` (never `tqdm.auto`, which wants ipywidgets) is used everywhere.
    """
    return bool(progress) and not in_kernel()


def in_kernel() -> bool:
    """Whether this process is a running Jupyter kernel (importing ipykernel, as papermill's tests do, is not)."""
    app = sys.modules.get("ipykernel.kernelapp")
    return app is not None and app.IPKernelApp.initialized()
