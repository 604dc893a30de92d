"""TensorFlow's C++ log lines: recognised in saved outputs and kept off a command's stderr.

TensorFlow, XLA and absl write notes to file descriptor 2 from C++ (oneDNN, CUDA probing,
CPU instructions, `failed call to cuInit` on machines without a GPU), many of them before
absl's logging is set up, so `TF_CPP_MIN_LOG_LEVEL` silences only some. `filtered_stderr`
passes descriptor 2 through a filter that drops exactly those lines; every other byte (Python
warnings, errors, progress bars) goes through unchanged. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

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
