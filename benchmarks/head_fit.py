"""What cross-validating the L-BFGS heads costs: passes over the features, seconds and CV means.

Reads the cached features of the saved configuration (params.yaml's `train` section; run
02_train or `python -m maskclf train` first) and cross-validates it without the CV cache:

- `--memory M [M ...]`: the run's 5 folds alone, once per L-BFGS memory (correction pairs kept);
- `--together`: the run's folds and those of every comparison variant that is a slice of its
  features (`featureset.derived_features`), in one lockstep, as `run_study` fits them; then the
  same variants one after another, as they were fitted before.

Prints, per fit, the passes over the features, the wall time and the 5-fold means.

    .venv/bin/python benchmarks/head_fit.py [--faces DIR] [--memory 10 50] [--together]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf import crossval, logreg  # noqa: E402
from maskclf.config import stage_defaults  # noqa: E402
from maskclf.data import read_manifest  # noqa: E402
from maskclf.featureset import prepare_features  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.train import comparison_variants  # noqa: E402
from maskclf.trainconfig import TrainConfig  # noqa: E402

from main_job import cpu_name  # noqa: E402


class PassCounter:
    """Counts `logreg._evaluate` calls: one pass over the features each."""

    def __init__(self) -> None:
        self.passes = 0
        self._evaluate = logreg._evaluate
        logreg._evaluate = self._count

    def _count(self, *args, **kwargs):
        self.passes += 1
        return self._evaluate(*args, **kwargs)


def timed(counter: PassCounter, studies: list) -> tuple[list, int, float]:
    """Cross-validate `studies` together; their results, the passes and the seconds it took."""
    counter.passes, start = 0, time.perf_counter()
    results = crossval.cross_validate_together(studies)
    return results, counter.passes, time.perf_counter() - start


def means(summary: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in summary["mean"].items() if k != "balanced_accuracy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR))
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="L-BFGS memories to time the run alone with")
    parser.add_argument("--together", action="store_true", help="the run with its comparison, together and apart")
    args = parser.parse_args()

    manifest = read_manifest(args.faces)
    config = TrainConfig.from_params({})
    fs = prepare_features(manifest, args.faces, config, verbose=0)
    print(f"machine: {cpu_name()}; features {fs.pooled.shape} {fs.pooled.dtype}, {fs.precision} pass", flush=True)
    counter = PassCounter()
    for memory in args.memory:
        logreg.MEMORY = memory
        [(summary, _)], passes, seconds = timed(counter, [(fs, manifest, None)])
        print(f"memory {memory:>3}: {passes} passes, {seconds:.1f} s; {means(summary)}", flush=True)
    if args.together:
        variants = comparison_variants(args.faces, config, stage_defaults("02_train")["compare"], base_features=fs,
                                       cached=False)
        shared = [v.fs for v in variants if v.fs.config.head == "lbfgs" and np.shares_memory(v.fs.pooled, fs.pooled)]
        studies = [(f, manifest, None) for f in [fs, *shared]]
        _, passes, seconds = timed(counter, studies)
        print(f"memory {logreg.MEMORY}, the run and {len(shared)} variants together: {passes} passes, {seconds:.1f} s",
              flush=True)
        total_passes, total_seconds = 0, 0.0
        for study in studies:
            _, passes, seconds = timed(counter, [study])
            total_passes, total_seconds = total_passes + passes, total_seconds + seconds
        print(f"memory {logreg.MEMORY}, one after another: {total_passes} passes, {total_seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
