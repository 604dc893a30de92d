"""Export a run's model for deployment and check that the export answers like the Keras model.

    python -m maskclf export --model models/<run>            # tflite-fp32, tflite-fp16, onnx
    python -m maskclf export --model models/<run> --format tflite-int8

`python -m maskclf export --help` says what an export takes and gives. Files go to `<run>/export/` (`model_fp32.tflite`, `model_fp16.tflite`, `model_int8.tflite`,
`model.onnx`) with `parity.json`. Every export keeps the run's contract: float32 raw
0-255 RGB crops in, softmax probabilities out. `tflite-int8` quantises weights and
activations (float input/output), calibrated on crops of the check set.

Parity is measured on labelled crops (`--check`: a folder `DIR/<class_name>/*.png`, as
`maskclf extract` writes under `faces/`, or a VOC data set folder): label agreement with
the Keras model (target >= 99.5%) and the difference in ROC AUC (target <= 0.002).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .data import DEFAULT_LABEL_MAP, DataError, annotation_boxes, is_dataset_dir, parse_voc, read_manifest
from .fsutil import atomic_path, output_file_problem
from .images import ImageError, load_crop, load_rgb
from . import POSITIVE
from .model import run_batched
from .predict import crop_faces, predict_probabilities, resolve_model
from .runs import EXPORT_FILES, PARITY_FILE, export_path, write_parity
from .splits import N_FOLDS

FORMATS = tuple(EXPORT_FILES)
MIN_AGREEMENT = 0.995
MAX_AUC_DIFF = 0.002
CALIBRATION_CROPS = 200

Runner = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- export


def export_model(model: Any, fmt: str, path: str | Path, calibration: np.ndarray | None = None) -> Path:
    """Write `model` in format `fmt` (one of FORMATS) to `path` atomically.

    `tflite-int8` needs `calibration`: float32 crops (N, S, S, 3), 0-255, like the inputs.
    """
    import tensorflow as tf

    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    options: dict[str, Any] = {}
    if fmt == "tflite-fp16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    elif fmt == "tflite-int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("tflite-int8 needs calibration crops (pass --check with labelled crops)")
        samples = np.asarray(calibration, np.float32)
        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": lambda: ([samples[i : i + 1]] for i in range(len(samples))),
        }
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        model.export(str(tmp), format="onnx" if fmt == "onnx" else "litert", verbose=False, **options)
    return Path(path)


def load_runner(path: str | Path, num_threads: int | None = None) -> Runner:
    """A function `crops (N, S, S, 3) float32 -> probabilities (N, C)` for a .tflite or .onnx file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
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


# --------------------------------------------------------------------------- parity


def parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    class_names: Sequence[str],
    labels: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """How closely `candidate` probabilities follow `reference` (both (N, C) softmax outputs).

    `labels` (1 = without_mask) adds each model's ROC AUC and their difference.
    """
    from sklearn.metrics import roc_auc_score

    positive = list(class_names).index(POSITIVE)
    ref, cand = reference[:, positive], candidate[:, positive]
    report: dict[str, Any] = {
        "n": int(len(ref)),
        "agreement": float(np.mean((ref >= threshold) == (cand >= threshold))),
        "max_abs_diff": float(np.max(np.abs(ref - cand), initial=0.0)),
        "mean_abs_diff": float(np.mean(np.abs(ref - cand))) if len(ref) else 0.0,
    }
    if labels is not None and len(set(labels.tolist())) == 2:
        report["auc_reference"] = float(roc_auc_score(labels, ref))
        report["auc_candidate"] = float(roc_auc_score(labels, cand))
        report["auc_diff"] = abs(report["auc_reference"] - report["auc_candidate"])
    report["passed"] = report["agreement"] >= MIN_AGREEMENT and report.get("auc_diff", 0.0) <= MAX_AUC_DIFF
    return report


def load_check_crops(
    source: str | Path, size: int, limit: int | None = None, seed: int = 0, folds: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labelled crops for parity: (crops (N, size, size, 3) float32, labels 1 = without_mask, problems).

    `source` is the output of `extract` (its manifest; `folds` selects folds), a folder of
    class-named subfolders of crops, or a VOC data set folder (boxes cropped, classes mapped
    as `extract` does). A random `limit` of them (seeded) is kept; files that cannot be read
    are listed in `problems` and skipped.
    """
    source = Path(source)
    if (source / "faces.csv").is_file():
        items = _manifest_items(source, folds)
    else:
        items = _voc_items(source) if is_dataset_dir(source) else _folder_items(source)
    if not items:
        raise DataError(f"{source}: no labelled crops (expected {source}/<class_name>/*.png or a VOC data set folder)")
    if limit is not None and len(items) > limit:
        keep = np.random.default_rng(seed).choice(len(items), limit, replace=False)
        items = [items[i] for i in sorted(keep)]
    crops, labels, problems = [], [], []
    for load, label in items:
        try:
            crops.append(load(size))
            labels.append(int(label == POSITIVE))
        except (ImageError, DataError) as exc:
            problems.append(str(exc))
    return np.asarray(crops, np.float32).reshape(-1, size, size, 3), np.asarray(labels, np.int64), problems


def _manifest_items(faces_dir: Path, folds: Sequence[int] | None) -> list[tuple[Callable[[int], np.ndarray], str]]:
    manifest = read_manifest(faces_dir)
    if folds is not None:
        manifest = manifest[manifest["fold"].isin(folds)]
    return [(lambda size, path=path: load_crop(path, size), label)
            for path, label in zip(manifest["crop_file"], manifest["label"])]


def _folder_items(folder: Path) -> list[tuple[Callable[[int], np.ndarray], str]]:
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        for path in sorted(sub.glob("*.png")) + sorted(sub.glob("*.jpg")):
            items.append((lambda size, path=path: load_crop(path, size), sub.name))
    return items


def _voc_items(root: Path) -> list[tuple[Callable[[int], np.ndarray], str]]:
    items = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        ann = parse_voc(xml)
        for index, box in enumerate(ann.boxes):
            if box.name in DEFAULT_LABEL_MAP:
                items.append((lambda size, a=ann, i=index: _voc_crop(root, a, i, size), DEFAULT_LABEL_MAP[box.name]))
    return items


def _voc_crop(root: Path, ann: Any, index: int, size: int) -> np.ndarray:
    image = np.asarray(load_rgb(root / "images" / ann.filename))
    _, box = annotation_boxes(ann, image.shape[1], image.shape[0])[index]
    return crop_faces(image, [box], size)[0]


# --------------------------------------------------------------------------- the whole job


def export_run(
    run_dir: str | Path,
    model: Any,
    config: dict[str, Any],
    formats: Sequence[str],
    check: str | Path | None,
    limit: int | None = 1000,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Export `formats` into `run_dir/export/`, measure parity on `check`, write `parity.json`."""
    crops = labels = calibration = None
    problems: list[str] = []
    if check is not None:
        # from an extraction: parity on the model's validation fold, int8 calibration on training folds
        val_fold = config.get("val_fold")
        folds = [val_fold] if val_fold is not None else None
        crops, labels, problems = load_check_crops(check, config["image_size"], limit, folds=folds)
        calibration = crops[:CALIBRATION_CROPS]
        if folds is not None and (Path(check) / "faces.csv").is_file():
            others = [f for f in range(N_FOLDS) if f != val_fold]
            calibration = load_check_crops(check, config["image_size"], CALIBRATION_CROPS, folds=others)[0]
    reference = predict_probabilities(model, crops) if crops is not None else None
    report: dict[str, Any] = {"check": str(check) if check else None, "problems": problems, "formats": {}}
    for fmt in formats:
        path = export_path(run_dir, fmt)
        start = time.perf_counter()
        export_model(model, fmt, path, calibration=calibration)
        entry: dict[str, Any] = {"file": str(path), "bytes": path.stat().st_size,
                                 "export_seconds": round(time.perf_counter() - start, 1)}
        if crops is not None:
            candidate = run_batched(load_runner(path), crops, batch_size=32)
            entry["parity"] = parity(reference, candidate, config["class_names"], labels, threshold)
        report["formats"][fmt] = entry
    write_parity(run_dir, report)
    return report


def check_outputs(run_dir: Path, formats: Sequence[str]) -> None:
    """ValueError naming the first file of an export of `run_dir` that cannot be written (checked before the work)."""
    for name in [*formats, PARITY_FILE]:
        if problem := output_file_problem(export_path(run_dir, name)):
            raise ValueError(problem)


def format_report(report: dict[str, Any]) -> str:
    """The export report as a small text table."""
    lines = [f"{'format':<12} {'MB':>8} {'agreement':>10} {'max|dp|':>9} {'AUC keras':>10} {'AUC export':>11} {'AUC diff':>9}  ok"]
    for fmt, entry in report["formats"].items():
        p = entry.get("parity", {})
        cells = [f"{fmt:<12}", f"{entry['bytes'] / 1e6:>8.3f}",
                 f"{p['agreement']:>10.4f}" if p else f"{'-':>10}",
                 f"{p['max_abs_diff']:>9.4f}" if p else f"{'-':>9}",
                 f"{p['auc_reference']:>10.4f}" if "auc_reference" in p else f"{'-':>10}",
                 f"{p['auc_candidate']:>11.4f}" if "auc_candidate" in p else f"{'-':>11}",
                 f"{p['auc_diff']:>9.4f}" if "auc_diff" in p else f"{'-':>9}",
                 (" yes" if p["passed"] else " NO") if p else "  -"]
        lines.append(" ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run `export`: 0 if every parity target is met, 1 if one is missed, 2 on an error."""
    from .runs import RunFolderError, latest_run
    from .paths import MODELS_DIR

    if "tflite-int8" in args.format and args.check is None:
        print("error: tflite-int8 needs calibration crops: pass --check DIR (labelled crops or a VOC data set)", file=sys.stderr)
        return 2
    try:
        run_dir = Path(args.model) if args.model else latest_run(MODELS_DIR)
        check_outputs(run_dir, args.format)
        model, config = resolve_model(run_dir)
        report = export_run(run_dir, model, config, args.format, args.check, args.check_limit, args.threshold)
    except (RunFolderError, DataError, ImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported to {export_path(run_dir, PARITY_FILE).parent}; parity on {args.check or 'no check set'}"
          + (f" ({next(iter(report['formats'].values())).get('parity', {}).get('n', 0)} crops)" if args.check else ""))
    print(format_report(report))
    for problem in report["problems"]:
        print(f"skipped: {problem}", file=sys.stderr)
    checked = [e["parity"]["passed"] for e in report["formats"].values() if "parity" in e]
    if checked and not all(checked):
        print(f"parity target missed (agreement >= {MIN_AGREEMENT}, AUC diff <= {MAX_AUC_DIFF})", file=sys.stderr)
        return 1
    return 0
