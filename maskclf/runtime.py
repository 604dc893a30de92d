"""A run loaded in a runtime to score crops: Keras, or the fastest exported file (TFLite, ONNX) whose parity
check passed against the run's model.keras (`maskclf export` writes the files and the check).

`predict`, `video`, `demo` and `export` load their model here (`resolve_model`), so serving and exporting
share one loader and neither imports the other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .paths import MODELS_DIR

Runner = Callable[[np.ndarray], np.ndarray]


def resolve_model(model_dir: str | Path | None = None, fast: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load a run folder (default: the latest under models/); RunFolderError if unusable.

    `fast`: the model is the run's `fastest_runtime` (an exported file when there is a good one), for classifying
    only. Says on stderr which run and which runtime answer (`model_line`).
    """
    from .runs import latest_run, load_run  # TensorFlow loads here

    run_dir = Path(model_dir) if model_dir else latest_run(MODELS_DIR)
    model, config = load_run(run_dir)
    model = fastest_runtime(model, run_dir) if fast else model
    print(model_line(model, run_dir), file=sys.stderr)
    return model, config


def model_line(model: Any, run_dir: Path) -> str:
    """Which run and runtime classify, e.g. "model: resnet50-...-3f9a2c1d (Keras; `python -m maskclf export ...`
    makes the faster ONNX int8 runtime)"."""
    if isinstance(model, ExportedModel):
        return f"model: {run_dir.name} ({model.path.name}, exported)"
    return (f"model: {run_dir.name} (Keras; `python -m maskclf export --model {run_dir}` makes a faster exported "
            "runtime, used from then on)")


FAST_RUNTIMES = ("openvino", "onnx-int8", "onnx", "tflite-fp32")
"""Exported formats (`maskclf export`) used for classifying when present, fastest first (OpenVINO in bfloat16
answered one face in about 13 ms on this project's 2-core Xeon, in float32 34 ms, Keras 58 ms: docs/deployment.md).
Keras is the fallback."""


class ExportedModel:
    """An exported model file behind the two Keras calls classification uses (`predict_on_batch`, `output_shape`)."""

    def __init__(self, runner: Any, n_classes: int, path: Path):
        self.runner, self.output_shape, self.path = runner, (None, n_classes), path

    def predict_on_batch(self, crops: np.ndarray) -> np.ndarray:
        return self.runner(np.asarray(crops, np.float32))


def fastest_runtime(model: Any, run_dir: str | Path, threads: int | None = None) -> Any:
    """The run's exported model in the first of FAST_RUNTIMES whose export passed its parity check
    (`export/parity.json`) against this very model.keras (its SHA-256); `model` itself when there is none.

    Exports made for another model.keras are never used; stderr says so.
    """
    from .runs import RunFolderError, export_path, read_parity

    report, stale = read_parity(run_dir)
    if report is None:
        if stale:
            print(f"note: {stale}; classifying with Keras (run `maskclf export` again)", file=sys.stderr)
        return model
    for fmt in FAST_RUNTIMES:
        path = export_path(run_dir, fmt)
        if _parity_passed(report, fmt) and path.is_file():
            try:
                precision = report["formats"][fmt].get("precision")
                return ExportedModel(load_runner(path, threads, precision=precision), model.output_shape[-1], path)
            except Exception as exc:  # onnxruntime and LiteRT raise their own types for a corrupt file
                raise RunFolderError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); export the model "
                                     f"again, or remove {path.parent} to classify with Keras") from exc
    return model


def _parity_passed(report: Any, fmt: str) -> bool:
    """Whether `parity.json`'s entry for `fmt` says its parity check passed (False for anything malformed)."""
    entry = report.get("formats") if isinstance(report, dict) else None
    entry = entry.get(fmt) if isinstance(entry, dict) else None
    entry = entry.get("parity") if isinstance(entry, dict) else None
    return isinstance(entry, dict) and entry.get("passed") is True


def load_runner(path: str | Path, num_threads: int | None = None, precision: str | None = None) -> Runner:
    """A function `crops (N, S, S, 3) float32 -> probabilities (N, C)` for an exported file, by its suffix: an
    OpenVINO IR (.xml, the `openvino` export) through OpenVINO in `precision` (None: `fastpass.feature_precision()`,
    bfloat16 where the CPU has it), a .onnx file through ONNX Runtime, a .tflite file through LiteRT.

    `num_threads` None: the runtime's default (one per core).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    if path.suffix == ".xml":
        from .fastpass import compile_openvino, feature_precision

        return compile_openvino(path, precision or feature_precision(), num_threads)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        # idle threads sleep rather than spin: never slower here, and no cores burnt beside other work
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda crops: session.run(None, {name: np.asarray(crops, np.float32)})[0]
    return _tflite_runner(path, num_threads)


def _tflite_runner(path: Path, num_threads: int | None) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def run(crops: np.ndarray) -> np.ndarray:
        crops = np.ascontiguousarray(crops, np.float32)
        if crops.shape != shape[0]:
            interpreter.resize_tensor_input(inp, crops.shape)
            interpreter.allocate_tensors()
            shape[0] = crops.shape
        interpreter.set_tensor(inp, crops)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()

    return run
