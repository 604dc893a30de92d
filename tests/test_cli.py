"""The command line itself: instant help, every option explained, TensorFlow's C++ logs kept off stderr."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskclf import cli, cli_args
from maskclf.native_logs import NATIVE_LOG

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "cv2", "onnxruntime", "ai_edge_litert", "fastapi", "pandas")
"""Modules that --help must not import (TensorFlow alone takes seconds)."""


def _python(code: str, *args: str, env: dict | None = None, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=text,
                          timeout=300, env=env)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def test_help_of_every_command_imports_nothing_heavy():
    code = (
        "import contextlib, io, sys\n"
        "from maskclf.cli import COMMANDS, main\n"
        "for argv in [['--help'], *([name, '--help'] for name in COMMANDS)]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    assert 'usage: python -m maskclf' in out.getvalue(), argv\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"--help imported {run.stdout.strip()}"


def test_every_option_of_every_command_has_help_and_shows_its_default():
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{name or 'maskclf'} {action.dest}"
            assert action.help, f"{where}: no help"
            if action.option_strings:
                assert "(default" in formatter._get_help_string(action), f"{where}: its default is not shown"


def test_train_options_match_the_training_configuration():
    from maskclf.config import stage_defaults
    from maskclf.trainconfig import TrainConfig

    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    assert set(cli_args.TRAIN_OPTIONS) == set(fields) - {"class_weight"}
    for name, (_, kind) in cli_args.TRAIN_OPTIONS.items():
        assert kind is {"int": int, "float": float}.get(str(fields[name]).split(" ")[0], str), name
    train = _subparsers()["train"]
    shown = train.format_help().replace("\n", " ")
    assert f"(default: {stage_defaults('02_train')['epochs']}, from params.yaml)" in " ".join(shown.split())


def test_listed_names_are_the_codes():
    from maskclf.detect import DETECTORS
    from maskclf.runs import EXPORT_FILES

    assert cli_args.DETECTOR_NAMES == tuple(DETECTORS)
    assert cli_args.EXPORT_FORMATS == tuple(EXPORT_FILES)
    assert set(cli_args.DEFAULT_EXPORT_FORMATS) <= set(EXPORT_FILES) and "tflite-int8" not in cli_args.DEFAULT_EXPORT_FORMATS


@pytest.mark.parametrize("argv, dest, new_name", [
    (["extract", "--out", "x"], "out", "--faces-dir"),
    (["train", "--out", "x"], "out", "--run-dir"),
    (["train", "--faces", "x"], "faces", "--faces-dir"),
    (["predict", "p.png", "--out", "x"], "out", "--jsonl"),
    (["video", "--out", "x"], "out", "--out-video"),
    (["weights", "resnet50", "--out", "x"], "out", "--weights-dir"),
])
def test_output_options_are_named_for_what_they_are_and_keep_the_old_name(argv, dest, new_name):
    parser = cli.build_parser()
    old = parser.parse_args(argv)
    new = parser.parse_args([new_name if a == argv[-2] else a for a in argv])
    assert str(getattr(old, dest)) == str(getattr(new, dest)) == "x"


def test_export_help_says_where_files_go_and_what_the_model_takes_and_gives():
    text = " ".join(_subparsers()["export"].format_help().split())
    for words in ("<run>/export/", "(N, S, S, 3)", "float32", "0-255", "(N, C)", "reports_as", "P(without_mask)",
                  "(default: openvino:"):
        assert words in text, words


def test_verbose_keeps_the_native_logs(monkeypatch, tmp_path, capsys):
    filtered = []
    monkeypatch.setattr(cli, "filtered_stderr", lambda: filtered.append(1) or contextlib.nullcontext())
    missing = str(tmp_path / "missing.tgz")
    assert cli.main(["weights", "resnet50", "--from-package", missing, "--verbose"]) == 2
    assert cli.main(["--verbose", "weights", "resnet50", "--from-package", missing]) == 2
    assert filtered == []
    assert cli.main(["weights", "resnet50", "--from-package", missing]) == 2
    assert filtered == [1]
    assert "missing.tgz" in capsys.readouterr().err


def test_filtered_stderr_drops_native_log_lines_only():
    code = (
        "import os, sys\n"
        "from maskclf.native_logs import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1795723906.263917   21666 port.cc:153] oneDNN custom operations are on.\\n'\n"
        "                b'To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with'\n"
        "                b' the appropriate compiler flags.\\n')\n"
        "    os.write(2, b'E0000 00:00:1795680911.855431    7569 cuda_platform.cc:52] failed call to cuInit\\n')\n"
        "    print('UserWarning: kept', file=sys.stderr)\n"
        "    os.write(2, b'\\r 50%|#####     |')\n"
        "    print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
        "print('after', file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = _python(code, env=env, text=False)
    assert run.returncode == 0
    assert run.stderr == b"UserWarning: kept\n\r 50%|#####     |after\n"
    assert run.stdout == b"3\n"


def test_a_command_that_loads_tensorflow_prints_no_native_logs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import sys; from maskclf.cli import main; status = main(); assert 'tensorflow' in sys.modules; sys.exit(status)"
    run = _python(code, "train", "--faces-dir", str(tmp_path), "--no-cv", env=env)
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if NATIVE_LOG.match(line)] == []
    assert run.stderr.strip().startswith("error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
