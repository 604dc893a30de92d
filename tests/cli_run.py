"""Running `python -m maskclf COMMAND` in the test's own process, for tests of the command line."""

from __future__ import annotations


def run_cli(capsys, command: str, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `python -m maskclf COMMAND ARGS`, run in this process."""
    from maskclf.cli import main

    try:
        status = main([command, *map(str, args)])
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err
