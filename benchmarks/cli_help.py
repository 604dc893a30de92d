"""Wall time of `python -m maskclf [COMMAND] --help`: a fresh process per call, median of --repeats.

Help must be instant: parsing imports maskclf.cli_args and params.yaml, never TensorFlow,
OpenCV or onnxruntime (tests/test_cli.py checks the imports; this measures the time).

    python benchmarks/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskclf.cli import COMMANDS  # noqa: E402


def wall_seconds(argv: list[str], repeats: int) -> list[float]:
    """Wall times of `repeats` fresh processes running `argv`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per command (default: %(default)s)")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "maskclf"]
    wall_seconds([*cli, "--help"], 1)  # warms the file cache
    rows = {"(none)": [*cli, "--help"], **{name: [*cli, name, "--help"] for name in COMMANDS},
            "python -c pass (the interpreter alone)": [sys.executable, "-c", "pass"]}
    print(f"{'python -m maskclf COMMAND --help':<40} {'median s':>9} {'max s':>7}")
    for name, argv in rows.items():
        times = wall_seconds(argv, args.repeats)
        print(f"{name:<40} {statistics.median(times):>9.2f} {max(times):>7.2f}")


if __name__ == "__main__":
    main()
