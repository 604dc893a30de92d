"""The main job's cost: wall time and peak memory of `python -m maskclf reports`, cold and then warm.

Cold means no crops, feature cache, cross-validation cache, models or reports: they all go
to a fresh work folder (so the checkout's own caches are neither used nor touched). Warm is
the same command again with nothing changed. For each run it prints the wall time, the peak
memory of the whole process tree (papermill and its kernels, sampled every 0.2 s) and of each of
its processes (one kernel per notebook, in order), the time
of each notebook, and the slowest cells of each notebook (the stages: backbone passes,
fits, comparison, evaluation...).

    .venv/bin/python benchmarks/main_job.py [--data DIR] [--work DIR | --in-place] [--runs cold warm]

--work keeps the work folder (default: a temporary one, removed at the end); giving the
same --work again with `--runs warm` measures a warm run later. --in-place runs the job on
the checkout's own folders and regenerates reports/ (for a cold run, first move
data/interim/, data/processed/ and models/ aside: a cold run refuses to start if they hold
anything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name and the cores this process may use."""
    name = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def process_label(p: psutil.Process) -> str:
    """A short name for a process of the job: its program and the module or script it runs."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    words = [Path(w).name for w in cmd[:3] if not w.startswith("-") or w == "-m"]
    return " ".join(w for w in words if w != "-m") or p.name()


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, int, int, list[tuple[str, int]]]:
    """Run `command`; its wall time, the peak RSS of its process tree (the sum over its processes at one sample),
    its exit status, and each process's own peak RSS in the order they started (papermill runs one kernel per
    notebook, in order)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    peak, watched = 0, psutil.Process(proc.pid)
    own: dict[int, tuple[float, str, int]] = {}  # pid -> (start time, label, peak RSS)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            total = 0
            for p in [watched, *watched.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    created, label, top = own.get(p.pid) or (p.create_time(), process_label(p), 0)
                except psutil.Error:
                    continue
                own[p.pid] = created, label, max(top, rss)
                total += rss
            peak = max(peak, total)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = proc.wait()
    stop.set()
    sampler.join()
    processes = [(label, top) for _, label, top in sorted(own.values())]
    return time.perf_counter() - start, peak, status, processes


def notebook_times(reports: Path, slowest: int) -> list[tuple[str, float, list[tuple[float, str]]]]:
    """(notebook, seconds, its slowest cells as (seconds, first line)) from the run's `_build/timings.json`
    (the committed notebooks carry no times, so that a rerun with nothing changed writes the same bytes)."""
    timings = json.loads((reports / "_build" / "timings.json").read_text(encoding="utf-8"))
    return [(name, float(seconds), sorted(map(tuple, timings["cells"].get(name, [])), reverse=True)[:slowest])
            for name, seconds in timings["seconds"].items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the data set folder (default: as `python -m maskclf reports` finds it)")
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--work", help="work folder for crops, caches, models and reports (default: temporary)")
    place.add_argument("--in-place", action="store_true", help="use the checkout's own folders and reports/")
    parser.add_argument("--runs", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument("--slowest", type=int, default=4, help="slowest cells shown per notebook")
    args = parser.parse_args()

    if args.in_place:
        work, env = ROOT, dict(os.environ)
        command = [sys.executable, "-m", "maskclf", "reports"]
        folders = {"crops": ROOT / "data" / "interim", "caches": ROOT / "data" / "processed", "models": ROOT / "models"}
        reports = ROOT / "reports"
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="maskclf-main-job-")).resolve()
        env = {**os.environ, "MASKCLF_FEATURES_DIR": str(work / "features")}
        command = [sys.executable, "-m", "maskclf", "reports", "--reports-dir", str(work / "reports"),
                   "-p", f"faces_dir={work / 'faces'}", "-p", f"models_dir={work / 'models'}"]
        folders = {"crops": work / "faces", "caches": work / "features", "models": work / "models"}
        reports = work / "reports"
    if "cold" in args.runs:
        used = [f"{name} ({path})" for name, path in folders.items()
                if path.exists() and any(p.name != ".gitkeep" for p in path.iterdir())]
        if used:
            print(f"error: not a cold start: {', '.join(used)} not empty; move them aside or give --runs warm",
                  file=sys.stderr)
            return 2
    if args.data:
        command += ["--data", args.data]
    print(f"machine: {cpu_name()}; work folder: {'the checkout' if args.in_place else work}", flush=True)
    results = []
    for run in args.runs:
        print(f"--- {run} run", flush=True)
        seconds, peak, status, processes = run_measured(command, env)
        results.append((run, seconds, peak, status, [] if status else notebook_times(reports, args.slowest)))
        print("peak RSS of each process over 256 MiB, in the order they started: " + ", ".join(
            f"{label} {top / 2**30:.2f} GiB" for label, top in processes if top > 2**28), flush=True)
        if status:
            print(f"{run} run failed with exit status {status}", file=sys.stderr)
            break
    print(f"\nmachine: {cpu_name()}")
    print(f"{'run':<6} {'wall':>16} {'peak RSS':>10}  notebooks (s)")
    for run, seconds, peak, status, notebooks in results:
        per_nb = ", ".join(f"{name} {s:.0f}" for name, s, _ in notebooks)
        print(f"{run:<6} {seconds / 60:6.1f} min ({seconds:4.0f} s) {peak / 2**30:7.2f} GiB  {per_nb}"
              + (" FAILED" if status else ""))
    for run, _, _, _, notebooks in results:
        print(f"\nslowest cells, {run} run:")
        for name, _, cells in notebooks:
            for s, line in cells:
                print(f"  {name:<20} {s:7.1f} s  {line}")
    if not (args.work or args.in_place):
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return max((r[3] for r in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
