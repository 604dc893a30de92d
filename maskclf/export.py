"""Export a run's model for deployment and check that the export answers like the Keras model.

    python -m maskclf export --model models/<run>            # openvino
    python -m maskclf export --model models/<run> --format tflite-fp32,tflite-fp16

`python -m maskclf export --help` says what an export takes and gives. Files go to
`<run>/export/` (`model_openvino.xml` with its weights `model_openvino.bin`, `model.onnx`,
`model_int8.onnx`, `model_fp32.tflite`, `model_fp16.tflite`, `model_int8.tflite`) with `parity.json`.
`openvino` is OpenVINO's IR of the float graph, converted in memory from TensorFlow; OpenVINO runs it in
bfloat16 where the CPU has AMX or AVX512-BF16, in float32 elsewhere or where bfloat16 misses the parity
target (parity.json's `precision` says which it passed in). Every export keeps the run's contract: float32 raw
0-255 RGB crops in, softmax probabilities out. The int8 formats quantise weights and
activations (float input/output), calibrated on crops of the model's training folds:
`onnx-int8` with ONNX Runtime's static quantisation (QDQ, per-channel weights), the backbone
only, its first convolution and everything after it (pooling, standardisation, head) in float.

Parity is measured on labelled crops (`--check`: the output of `maskclf extract`, whose
manifest gives the model's validation fold; a folder `DIR/<class_name>/*.png`; or a VOC data
set folder), else on fixed random crops: label agreement with the Keras model (target >= 99.5%)
and the difference in ROC AUC (target <= 0.002). With a face verifier, the export must keep the faces the Keras
model keeps: on an extraction, the verifier's rule decides alike on the candidates CenterFace finds in the
validation fold's photos (target >= 99.5%); on other check sets, P(face) falls on the same side of 0.5 on the
crops. `onnx` and `onnx-int8` share one conversion. A format that misses the target is not kept:
its figures go to `parity.json`, marked `"usable": false`, and its file is not written.
`runtime.fastest_runtime` classifies with the first of its runtimes that passed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .data import (
    DEFAULT_LABEL_MAP, DataError, DataNotFoundError, annotation_boxes, annotation_image, is_dataset_dir, parse_voc,
    read_manifest, source_photos_dir,
)
from .fsutil import OutputError, atomic_path, output_file_problem, reads_back
from .images import ImageError, load_crop, load_rgb
from . import POSITIVE
from .model import run_batched
from .answers import face_probabilities, kept_as_shown, p_without_mask
from .images import crop_faces
from .model import cached_predict_crops, cached_probabilities, predict_probabilities
from .runs import EXPORT_FILES, PARITY_FILE, export_path, model_sha256, read_parity, write_parity
from .runtime import Runner, load_runner, resolve_model

FORMATS = tuple(EXPORT_FILES)
INT8_FORMATS = ("tflite-int8", "onnx-int8")
WEIGHTS_SUFFIX = ".bin"
"""The `openvino` export's second file: its weights, beside the `.xml`, written before it."""
MIN_AGREEMENT = 0.995
MAX_AUC_DIFF = 0.002
CALIBRATION_CROPS = 300
"""Training-fold crops that calibrate the int8 activation ranges."""
FIXED_CROPS = 16
"""Seeded random crops that parity is measured on when no labelled check set is given."""
QUANTISED_OPS = ("Conv", "Add", "Relu", "MaxPool")
"""Op types onnx-int8 quantises: the backbone's. Pooling, standardisation and head stay float."""


# --------------------------------------------------------------------------- export


def export_model(
    model: Any, fmt: str, path: str | Path, calibration: np.ndarray | None = None, float_onnx: str | Path | None = None,
) -> Path:
    """Write `model` in format `fmt` (one of FORMATS) to `path` atomically.

    The int8 formats need `calibration`: float32 crops (N, S, S, 3), 0-255, like the inputs.
    `float_onnx`: the model already converted to ONNX (format `onnx`), which `onnx` copies and
    `onnx-int8` quantises instead of converting the model again. `openvino` writes the weights file
    (WEIGHTS_SUFFIX) too, under the same name.
    """
    import tensorflow as tf

    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt in INT8_FORMATS and (calibration is None or len(calibration) == 0):
        raise ValueError(f"{fmt} needs calibration crops (pass --check with an extraction)")
    if fmt == "onnx-int8":
        if float_onnx is not None:
            return quantize_onnx(float_onnx, path, calibration)
        with tempfile.TemporaryDirectory() as tmp:
            float_path = export_model(model, "onnx", Path(tmp) / "model.onnx")
            return quantize_onnx(float_path, path, calibration)
    if fmt == "openvino":
        return save_openvino(model, Path(path))
    if fmt == "onnx" and float_onnx is not None:
        with atomic_path(path, check=reads_back("onnx")) as tmp:
            shutil.copyfile(float_onnx, tmp)
        return Path(path)
    options: dict[str, Any] = {}
    if fmt == "tflite-fp16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    elif fmt == "tflite-int8":
        samples = np.asarray(calibration, np.float32)
        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": lambda: ([samples[i : i + 1]] for i in range(len(samples))),
        }
    with atomic_path(path, check=reads_back("onnx" if fmt == "onnx" else "tflite")) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        model.export(str(tmp), format="onnx" if fmt == "onnx" else "litert", verbose=False, **options)
    return Path(path)


def save_openvino(model: Any, path: Path) -> Path:
    """`model` as OpenVINO IR: the weights (`path` with WEIGHTS_SUFFIX), then `path` (.xml), each atomically."""
    import openvino as ov

    from .fastpass import openvino_graph

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".openvino-") as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(openvino_graph(model), str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(WEIGHTS_SUFFIX), path.with_suffix(WEIGHTS_SUFFIX))
        os.replace(staged, path)
    return path


def quantize_onnx(
    source: str | Path, path: str | Path, calibration: np.ndarray, float_first_conv: bool = True, batch_size: int = 8,
) -> Path:
    """Static int8 quantisation of the float ONNX model `source` into `path` (atomic).

    QDQ format, uint8 activations and int8 weights quantised per output channel (the fast
    VNNI/AMX path of ONNX Runtime on x86), activation ranges the moving average of each
    batch's min and max over `calibration` (crops (N, S, S, 3), 0-255), less swayed by one
    outlier crop than the overall extremes. Only QUANTISED_OPS are quantised, so pooling,
    standardisation and head run in float; with `float_first_conv` the convolution that
    reads the image (and its activation) does too: on the study's ResNet-50 it alone halved
    the faces that int8 moved across the threshold.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    crops = np.asarray(calibration, np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self.batches = iter(range(0, len(crops), batch_size))
            self.input_name = input_name

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {self.input_name: crops[start : start + batch_size]}

    with tempfile.TemporaryDirectory() as tmp, atomic_path(path, check=reads_back("onnx")) as out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        exclude = _first_conv(graph) if float_first_conv else []
        quantize_static(
            str(prepared), str(out), Reader(graph.input[0].name), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISED_OPS), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            extra_options={"CalibMovingAverage": True},
        )
    return Path(path)


def _first_conv(graph: Any) -> list[str]:
    """Names of the first Conv node of a (topologically sorted) graph and of a Relu right after it."""
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None:
        return []
    after = [n.name for n in graph.node if n.op_type == "Relu" and n.input[0] in conv.output]
    return [conv.name, *after]


# --------------------------------------------------------------------------- parity


def parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    config: dict[str, Any],
    labels: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """How closely `candidate` probabilities follow `reference` (both (N, C) outputs of the run's model: its
    `class_names`, and P(face) with a verifier), in P(without_mask) and its label at `threshold` (and P(face)
    and its side of 0.5).

    `labels` (1 = without_mask) adds each model's ROC AUC and their difference.
    """
    from sklearn.metrics import roc_auc_score

    ref, cand = p_without_mask(reference, config), p_without_mask(candidate, config)
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
    ref_face, cand_face = face_probabilities(reference, config), face_probabilities(candidate, config)
    if ref_face is not None:  # a verifier's P(face): the export must keep the same candidates
        report["face_agreement"] = float(np.mean((ref_face >= 0.5) == (cand_face >= 0.5)))
        report["face_max_abs_diff"] = float(np.max(np.abs(ref_face - cand_face), initial=0.0))
    report["passed"] = parity_passed(report)
    return report


def parity_passed(report: dict[str, Any]) -> bool:
    """Whether parity figures meet the targets; for the faces a verifier keeps, `faces_kept_agreement`'s figure."""
    faces = faces_kept_agreement(report)
    return bool(report["agreement"] >= MIN_AGREEMENT and report.get("auc_diff", 0.0) <= MAX_AUC_DIFF
                and (faces is None or faces[1] >= MIN_AGREEMENT))


@dataclass(frozen=True)
class RuleCheck:
    """What the verifier's decisions are compared on: candidates of held-out photos, cut as the model sees them,
    their detector scores, and the Keras model's outputs on them."""

    crops: np.ndarray  # (N, S, S, 3) float32, 0-255
    scores: np.ndarray  # (N,) CenterFace's scores
    reference: np.ndarray  # (N, outputs) the Keras model's
    description: str


def rule_check(model: Any, check: str | Path | None, config: dict[str, Any], limit: int | None,
               seed: int = 0) -> RuleCheck | None:
    """The candidates the verifier's rule is checked on: those CenterFace finds (at the run's candidate score) in
    the photos of the extraction `check`'s validation fold, a seeded `limit` of them. None for a run without a
    verifier, a check set that is not an extraction, an extraction whose photos are gone, or no candidates."""
    from .candidates import candidate_loader, photo_candidates

    verifier = config.get("face_verifier")
    if not verifier or check is None or not (Path(check) / "faces.csv").is_file():
        return None
    try:
        photos_dir = source_photos_dir(check)
    except DataNotFoundError:
        return None
    every_face, val_fold = read_manifest(check), config.get("val_fold")
    manifest = every_face if val_fold is None else every_face[every_face["fold"] == val_fold].reset_index(drop=True)
    table = photo_candidates(every_face, photos_dir, only_cached=True)  # what training found, where it ran here
    if table is None:
        table = photo_candidates(manifest, photos_dir)
    table = table[table["source_image"].isin(manifest["source_image"]) & (table["score"] >= verifier["candidate_score"])]
    table = table.reset_index(drop=True)
    if table.empty:
        return None
    rows = np.arange(len(table))
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    load = candidate_loader(table, photos_dir, config["image_size"])
    crops = np.asarray([load(int(i)) for i in rows], np.float32).reshape(-1, *[config["image_size"]] * 2, 3)
    fold = f" of fold {val_fold}" if val_fold is not None else ""
    description = (f"the verifier's rule on {len(rows)} of the {len(table)} candidates CenterFace finds in the "
                   f"{manifest['source_image'].nunique()} photos{fold}")
    return RuleCheck(crops, table["score"].to_numpy()[rows], cached_probabilities(model, crops), description)


def rule_parity(check: RuleCheck, candidate: np.ndarray, config: dict[str, Any]) -> dict[str, Any]:
    """How often the verifier's rule, on P(face) as shown, keeps or drops a candidate alike from the export's outputs
    (`candidate`, on `check.crops`) and from the Keras model's."""
    rule = config["face_verifier"]["rule"]
    kept = kept_as_shown(check.scores, face_probabilities(check.reference, config), rule)
    kept_export = kept_as_shown(check.scores, face_probabilities(candidate, config), rule)
    return {"rule_candidates": int(len(kept)), "rule_agreement": float(np.mean(kept == kept_export)),
            "rule_kept_reference": int(kept.sum()), "rule_kept_candidate": int(kept_export.sum())}


class CheckCrops(NamedTuple):
    """Labelled crops for parity."""

    crops: np.ndarray  # (N, size, size, 3) float32, 0-255
    labels: np.ndarray  # (N,) 1 = without_mask
    problems: list[str]  # the files that could not be read, skipped
    files: list[str] | None  # each crop's file; None for crops cut from photos


Item = tuple[Callable[[int], np.ndarray], str, "str | None"]
"""A check crop: its loader (size -> crop), its label and its file (None when cut from a photo)."""


def load_check_crops(
    source: str | Path, size: int, limit: int | None = None, seed: int = 0, folds: Sequence[int] | None = None,
) -> CheckCrops:
    """Labelled crops for parity.

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
    crops, labels, problems, files = [], [], [], []
    for load, label, file in items:
        try:
            crops.append(load(size))
            labels.append(int(label == POSITIVE))
            files.append(file)
        except (ImageError, DataError) as exc:
            problems.append(str(exc))
    return CheckCrops(np.asarray(crops, np.float32).reshape(-1, size, size, 3), np.asarray(labels, np.int64), problems,
                      None if None in files else files)


def reference_outputs(model: Any, check: CheckCrops, size: int) -> np.ndarray:
    """The Keras model's outputs on the check crops. Crop files are scored through the result cache that training's
    end-to-end check and 03_evaluate fill (`model.cached_predict_crops`), so an export after training scores
    the validation fold's crops once."""
    if check.files is None:
        return predict_probabilities(model, check.crops)
    seen, probs = cached_predict_crops(model, check.files, size)
    if seen != check.files:
        raise RuntimeError("the reference pass did not keep the check crops' order")
    return probs.astype(np.float32)


def _manifest_items(faces_dir: Path, folds: Sequence[int] | None) -> list[Item]:
    manifest = read_manifest(faces_dir)
    if folds is not None:
        manifest = manifest[manifest["fold"].isin(folds)]
    return [(lambda size, path=path: load_crop(path, size), label, str(path))
            for path, label in zip(manifest["crop_file"], manifest["label"])]


def _folder_items(folder: Path) -> list[Item]:
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        for path in sorted(sub.glob("*.png")) + sorted(sub.glob("*.jpg")):
            items.append((lambda size, path=path: load_crop(path, size), sub.name, str(path)))
    return items


def _voc_items(root: Path) -> list[Item]:
    items = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        ann = parse_voc(xml)
        for index, box in enumerate(ann.boxes):
            if box.name in DEFAULT_LABEL_MAP:
                items.append((lambda size, a=ann, i=index: _voc_crop(root, a, i, size), DEFAULT_LABEL_MAP[box.name], None))
    return items


def _voc_crop(root: Path, ann: Any, index: int, size: int) -> np.ndarray:
    image = np.asarray(load_rgb(annotation_image(ann, root / "images")))
    _, box = annotation_boxes(ann, image.shape[1], image.shape[0])[index]
    return crop_faces(image, [box], size)[0]


# --------------------------------------------------------------------------- the whole job


def calibration_crops(
    check: str | Path, config: dict[str, Any], n: int = CALIBRATION_CROPS, seed: int = 0,
) -> tuple[np.ndarray, list[int]]:
    """`n` crops (a seeded sample) of the model's training folds in the extraction `check`, and their manifest rows.

    Every fold but the run's `val_fold` (all folds if it has none), so the int8 ranges are
    never fitted on the crops its parity is measured on.
    """
    if not (Path(check) / "faces.csv").is_file():
        raise DataError(f"{check}: int8 calibration needs an extraction (faces.csv with folds), "
                        "to calibrate on the model's training folds")
    manifest = read_manifest(check)
    rows = manifest.index[manifest["fold"] != config.get("val_fold")].tolist()
    if len(rows) > n:
        rows = sorted(np.random.default_rng(seed).choice(rows, n, replace=False).tolist())
    crops = [load_crop(path, config["image_size"]) for path in manifest.loc[rows, "crop_file"]]
    return np.asarray(crops, np.float32).reshape(-1, config["image_size"], config["image_size"], 3), rows


def fixed_crops(size: int, n: int = FIXED_CROPS, seed: int = 0) -> np.ndarray:
    """Seeded random crops (n, size, size, 3), 0-255: the parity inputs when there is no check set."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def call_times_ms(runner: Runner, crops: np.ndarray, calls: int = 10, warmup: int = 1) -> list[float]:
    """Milliseconds of each of `calls` calls `runner(crops)`, after `warmup` untimed calls."""
    for _ in range(warmup):
        runner(crops)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner(crops)
        times.append(1000 * (time.perf_counter() - start))
    return times


def ms_per_face(runner: Runner, crop: np.ndarray, calls: int = 10) -> float:
    """Median milliseconds of `runner` on one crop (1, S, S, 3), after one warm-up call."""
    return statistics.median(call_times_ms(runner, crop, calls))


def export_run(
    run_dir: str | Path,
    model: Any,
    config: dict[str, Any],
    formats: Sequence[str],
    check: str | Path | None,
    limit: int | None = 1000,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Export `formats` into `run_dir/export/`, measure parity and speed, write `parity.json`.

    Parity is on `check` (an extraction: the model's validation fold) or, without one, on
    fixed random crops; for a verifier, also on the candidates of `rule_check`. A format that misses
    the parity target is not kept (`usable` false).
    The entries of other formats that an earlier export measured against this same model.keras
    (`keras_sha256`) stay in `parity.json`; those of another model are dropped.
    """
    labels = calibration = None
    keras_sha256 = model_sha256(run_dir)
    earlier, _ = read_parity(run_dir, keras_sha256)
    report: dict[str, Any] = {"check": str(check) if check else f"{FIXED_CROPS} fixed random crops",
                              "keras_sha256": keras_sha256, "problems": [],
                              "formats": {fmt: entry for fmt, entry in (earlier or {"formats": {}})["formats"].items()
                                          if fmt in FORMATS and fmt not in formats}}
    if check is not None:
        val_fold = config.get("val_fold")
        folds = [val_fold] if val_fold is not None else None
        loaded = load_check_crops(check, config["image_size"], limit, folds=folds)
        crops, labels, report["problems"] = loaded.crops, loaded.labels, loaded.problems
        reference = reference_outputs(model, loaded, config["image_size"])
    else:
        crops = fixed_crops(config["image_size"])
        reference = predict_probabilities(model, crops)
    if any(fmt in INT8_FORMATS for fmt in formats):
        if check is None:
            raise ValueError("int8 needs calibration crops: pass --check with an extraction")
        calibration, rows = calibration_crops(check, config)
        folds = sorted({int(f) for f in read_manifest(check).loc[rows, "fold"]})
        report["calibration"] = {"crops": len(calibration), "folds": folds}
    rules = rule_check(model, check, config, limit)
    if rules is not None:
        report["verifier_check"] = rules.description
    one = crops[:1]
    report["keras_ms_per_face"] = round(ms_per_face(model.predict_on_batch, one), 2)
    with tempfile.TemporaryDirectory(prefix="maskclf-export-") as tmp:
        float_onnx = None
        if "onnx" in formats and "onnx-int8" in formats:  # one conversion for both
            float_onnx = export_model(model, "onnx", Path(tmp) / "model.onnx")
        for fmt in formats:
            report["formats"][fmt] = _export_one(
                run_dir, model, fmt, config, crops, labels, reference, threshold, report["check"], calibration, float_onnx,
                rules,
            )
            gc.collect()  # the converter's graphs and the runtime's session, before the next format
    write_parity(run_dir, report)
    return report


def _export_one(
    run_dir: str | Path, model: Any, fmt: str, config: dict[str, Any], crops: np.ndarray, labels: np.ndarray | None,
    reference: np.ndarray, threshold: float, check: str, calibration: np.ndarray | None, float_onnx: Path | None,
    rules: RuleCheck | None = None,
) -> dict[str, Any]:
    """Export one format, measure its parity and speed, and keep its file only if the parity passed."""
    path = export_path(run_dir, fmt)
    staged = path.with_name(f".staged-{path.name}")
    files = [(staged, path)] + ([(staged.with_suffix(WEIGHTS_SUFFIX), path.with_suffix(WEIGHTS_SUFFIX))]
                                if fmt == "openvino" else [])
    start = time.perf_counter()
    try:
        export_model(model, fmt, staged, calibration=calibration, float_onnx=float_onnx)
        entry: dict[str, Any] = {"file": str(path), "check": check, "bytes": sum(s.stat().st_size for s, _ in files),
                                 "export_seconds": round(time.perf_counter() - start, 1)}
        for precision in openvino_precisions() if fmt == "openvino" else [None]:
            runner = load_runner(staged, precision=precision)
            candidate = run_batched(runner, crops, batch_size=32)
            entry["parity"] = parity(reference, candidate, config, labels, threshold)
            if rules is not None:
                entry["parity"].update(rule_parity(rules, run_batched(runner, rules.crops, batch_size=32), config))
                entry["parity"]["passed"] = parity_passed(entry["parity"])
            entry["ms_per_face"] = round(ms_per_face(runner, crops[:1]), 2)
            del runner
            if precision:
                entry["precision"] = precision
            if entry["parity"]["passed"]:
                break
            if precision:  # a precision that missed the target: its figures stay on record
                entry.setdefault("missed", {})[precision] = {"parity": entry["parity"], "ms_per_face": entry["ms_per_face"]}
        entry["usable"] = entry["parity"]["passed"]
        if entry["usable"]:
            for done, final in reversed(files):  # the weights before the file that reads them
                os.replace(done, final)
        else:
            for _, final in files:  # an earlier export of this format must not stay in use, the .xml first
                final.unlink(missing_ok=True)
            entry["file"] = None
    finally:
        for done, _ in files:
            done.unlink(missing_ok=True)
    return entry


def openvino_precisions() -> list[str]:
    """The precisions the `openvino` export is checked in, in order, until one passes: the backbone pass's
    (bfloat16 where the CPU has it), then float32."""
    from .fastpass import feature_precision

    return list(dict.fromkeys([feature_precision(), "float32"]))


def check_outputs(run_dir: Path, formats: Sequence[str]) -> None:
    """ValueError naming the first file of an export of `run_dir` that cannot be written (checked before the work)."""
    for name in [*formats, PARITY_FILE]:
        if problem := output_file_problem(export_path(run_dir, name)):
            raise ValueError(problem)


def faces_kept_agreement(figures: dict[str, Any]) -> tuple[str, float] | None:
    """What parity measured of the faces a verifier keeps, and its figure: the rule's decisions on candidates, else
    P(face)'s side of 0.5 on the crops; None without a verifier."""
    if "rule_agreement" in figures:
        return "the verifier's decisions on candidates", figures["rule_agreement"]
    if "face_agreement" in figures:
        return "P(face) on the crops", figures["face_agreement"]
    return None


def format_report(report: dict[str, Any]) -> str:
    """The export report as a small text table; `faces agr` is `faces_kept_agreement`."""
    face = any(faces_kept_agreement(entry["parity"]) for entry in report["formats"].values())
    lines = [f"{'format':<12} {'MB':>8} {'agreement':>10} {'max|dp|':>9} {'AUC keras':>10} {'AUC export':>11} "
             f"{'AUC diff':>9}" + (f" {'faces agr':>11}" if face else "") + f" {'ms/face':>8}  kept"]
    for fmt, entry in report["formats"].items():
        p = entry["parity"]
        cells = [f"{fmt:<12}", f"{entry['bytes'] / 1e6:>8.3f}", f"{p['agreement']:>10.4f}", f"{p['max_abs_diff']:>9.4f}",
                 f"{p['auc_reference']:>10.4f}" if "auc_reference" in p else f"{'-':>10}",
                 f"{p['auc_candidate']:>11.4f}" if "auc_candidate" in p else f"{'-':>11}",
                 f"{p['auc_diff']:>9.4f}" if "auc_diff" in p else f"{'-':>9}",
                 *([f"{faces[1]:>11.4f}" if (faces := faces_kept_agreement(p)) else f"{'-':>11}"] if face else []),
                 f"{entry['ms_per_face']:>8.1f}", " yes" if entry["usable"] else " NO (missed the target)",
                 *([f"({entry['precision']})"] if "precision" in entry else [])]
        lines.append(" ".join(cells))
    lines.append(f"{'keras':<12} {'-':>8} {'-':>10} {'-':>9} {'-':>10} {'-':>11} {'-':>9}"
                 + (f" {'-':>11}" if face else "") + f" {report['keras_ms_per_face']:>8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run `export`: 0 if every format met its parity target, 1 if one missed it (not kept), 2 on an error."""
    from .cli_args import DEFAULT_EXPORT_FORMATS
    from .paths import MODELS_DIR
    from .runs import RunFolderError, latest_run

    formats = args.format or list(DEFAULT_EXPORT_FORMATS)
    if any(fmt in INT8_FORMATS for fmt in formats) and args.check is None:
        print("error: int8 needs calibration crops: pass --check DIR (an `extract` output)", file=sys.stderr)
        return 2
    try:
        run_dir = Path(args.model) if args.model else latest_run(MODELS_DIR)
        check_outputs(run_dir, formats)
        model, config = resolve_model(run_dir)
        report = export_run(run_dir, model, config, formats, args.check, args.check_limit, args.threshold)
    except (RunFolderError, DataError, ImageError, OutputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = report["formats"][formats[0]]["parity"]["n"]
    print(f"exported to {export_path(run_dir, PARITY_FILE).parent}; parity on {report['check']} ({n} crops)"
          + (f" and {report['verifier_check']}" if "verifier_check" in report else ""))
    print(format_report(report))
    for fmt, entry in report["formats"].items():
        for precision, tried in entry.get("missed", {}).items():
            p = tried["parity"]
            faces = faces_kept_agreement(p)
            print(f"{fmt} in {precision} missed the target (agreement {p['agreement']:.4f}"
                  + (f", {faces[0]} agree on {faces[1]:.4f}" if faces else "")
                  + (f"); kept in {entry['precision']}" if entry["usable"] else ")"))
    for problem in report["problems"]:
        print(f"skipped: {problem}", file=sys.stderr)
    missed = [fmt for fmt in formats if not report["formats"][fmt]["usable"]]
    if missed:
        faces = next(filter(None, (faces_kept_agreement(report["formats"][fmt]["parity"]) for fmt in missed)), None)
        print(f"not kept: {', '.join(missed)} missed the parity target (agreement >= {MIN_AGREEMENT}, AUC diff <= "
              f"{MAX_AUC_DIFF}" + (f", {faces[0]} agree on >= {MIN_AGREEMENT}" if faces else "") + ")", file=sys.stderr)
        return 1
    return 0
