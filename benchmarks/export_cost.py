"""Cost of `python -m maskclf export` on a run: wall time and peak resident memory.

    .venv/bin/python benchmarks/export_cost.py --model models/<run> --check data/interim/face-mask-detection
    .venv/bin/python benchmarks/export_cost.py --model models/<run> --check DIR --format onnx,tflite-fp32

The run folder is copied to a temporary folder first (its files, not `export/`), so the run's own
exports are left as they are. The export runs as a child process; its peak RSS is the largest of
that process and any it started (the kernel's RUSAGE_CHILDREN). Prints the export's own output,
then one line of figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder to export (copied first)")
    parser.add_argument("--check", help="passed to `export --check`")
    parser.add_argument("--format", help="passed to `export --format` (default: export's default formats)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-cost-") as tmp:
        run = Path(tmp) / Path(args.model).resolve().name
        shutil.copytree(args.model, run, ignore=shutil.ignore_patterns("export", "export.*"))
        command = [sys.executable, "-m", "maskclf", "export", "--model", str(run)]
        command += ["--check", args.check] if args.check else []
        command += ["--format", args.format] if args.format else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        status = subprocess.run(command, env=env).returncode
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
    cpu = os.cpu_count()
    print(f"export: {int(wall // 60)} min {wall % 60:.0f} s wall, peak RSS {peak:.2f} GiB, exit {status}, "
          f"{cpu} CPUs, load average {os.getloadavg()[0]:.1f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
