"""Inference speed on this CPU: Keras vs every export, and the cold start of `maskclf predict`.

Single-face latency is one (1, S, S, 3) crop per call (median and 90th percentile over
`--repeats` calls after a warm-up); throughput is crops per second in batches of
`--batch`, the median of `--rounds` timed rounds. Exports are those `export` kept in
`<model>/export/` (run `python -m maskclf export` first), each with `--threads` threads
(TFLite: XNNPACK); ONNX files also with ONNX Runtime's thread spinning off; the OpenVINO IR in
bfloat16 (where the CPU has it) and float32, whichever of the two `export` kept it in. Agreement and
AUC are `export`'s parity figures (parity.json). Cold start is the wall time of a fresh
`python -m maskclf predict PHOTO` process, per detector, including Python, TensorFlow and
model loading (`--cold-runs 0` skips it).

    python benchmarks/inference_speed.py --model models/<run>
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from maskclf.detect import DETECTORS  # noqa: E402
from maskclf.export import FORMATS, call_times_ms  # noqa: E402
from maskclf.runs import EXPORT_DIR, PARITY_FILE, export_path, latest_run, read_json  # noqa: E402
from maskclf.native_logs import filtered_stderr  # noqa: E402
from maskclf.paths import MODELS_DIR  # noqa: E402
from maskclf.runtime import load_runner, resolve_model  # noqa: E402


def latency_ms(fn: Callable[[np.ndarray], object], crop: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median and 90th percentile milliseconds of `fn(crop)` after 3 warm-up calls."""
    times = call_times_ms(fn, crop, repeats, warmup=3)
    return statistics.median(times), float(np.percentile(times, 90))


def throughput(fn: Callable[[np.ndarray], object], batch: np.ndarray, rounds: int = 5) -> float:
    """Crops per second in one batch call: the median of `rounds` calls, after one warm-up call."""
    fn(batch)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(rates)


def onnx_runner(path: Path, threads: int, spinning: bool) -> Callable[[np.ndarray], object]:
    """An ONNX Runtime session on `path`: all graph optimisations, `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda crops: session.run(None, {name: crops})[0]


def cold_start(model_dir: Path, photo: Path, detector: str, runs: int) -> float:
    """Median wall seconds of a fresh `python -m maskclf predict PHOTO` process."""
    command = [sys.executable, "-m", "maskclf", "predict", str(photo), "--model", str(model_dir), "--detector", detector]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def default_photo() -> Path:
    """A photo of the study if the data set is beside the repository, else matplotlib's portrait."""
    real = ROOT.parent / "shared" / "datasets" / "face-mask-detection" / "images" / "maksssksksss0.png"
    if real.is_file():
        return real
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run folder (default: the latest under models/)")
    parser.add_argument("--repeats", type=int, default=200, help="single-face calls timed (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="batch size for throughput (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timed batch calls (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="runtime threads (default: the CPU count)")
    parser.add_argument("--photo", type=Path, help="photo for the cold start (default: a study photo)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold starts per detector (default: %(default)s)")
    args = parser.parse_args(argv)

    model_dir = args.model or latest_run(MODELS_DIR)
    model, config = resolve_model(model_dir)
    size = config["image_size"]
    rng = np.random.default_rng(0)
    crop = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    batch = rng.uniform(0, 255, (args.batch, size, size, 3)).astype(np.float32)

    engines: dict[str, Callable[[np.ndarray], object]] = {"keras": model.predict_on_batch}
    for fmt in FORMATS:  # `export` keeps only the formats that met their parity target
        path = export_path(model_dir, fmt)
        if not path.is_file():
            continue
        if fmt == "openvino":
            for precision in ("bfloat16", "float32"):
                engines[f"{fmt} ({precision})"] = load_runner(path, args.threads, precision)
        elif path.suffix == ".onnx":
            engines[f"{fmt} (ORT)"] = onnx_runner(path, args.threads, spinning=True)
            engines[f"{fmt} (ORT, no spinning)"] = onnx_runner(path, args.threads, spinning=False)
        else:
            engines[f"{fmt} (XNNPACK)"] = load_runner(path, num_threads=args.threads)
    if len(engines) == 1:
        print(f"note: no usable exports in {model_dir / EXPORT_DIR}; run `python -m maskclf export --model {model_dir}`")
    parity = read_json(model_dir, PARITY_FILE)["formats"] if len(engines) > 1 else {}

    print(f"model {model_dir.name} ({config.get('backbone')}, {size}x{size}), {os.cpu_count()} CPU cores, "
          f"{args.threads} threads")
    print(f"| runtime / format | 1 face: median ms | 1 face: p90 ms | batch {args.batch}: faces/s | agreement | AUC |")
    print("|---|---|---|---|---|---|")
    for name, fn in engines.items():
        median, p90 = latency_ms(fn, crop, args.repeats)
        entry = parity.get(name.split()[0], {})
        p = entry.get("missed", {}).get(name.split("(")[-1].rstrip(")"), entry).get("parity", {})  # openvino by precision
        agreement = f"{p['agreement']:.4f}" if p else "-"
        auc = f"{p['auc_candidate']:.4f} ({p['auc_reference']:.4f})" if "auc_candidate" in p else "-"
        print(f"| {name} | {median:.1f} | {p90:.1f} | {throughput(fn, batch, args.rounds):.1f} | {agreement} | {auc} |",
              flush=True)

    if args.cold_runs < 1:
        return 0
    photo = args.photo or default_photo()
    print(f"\ncold start of `python -m maskclf predict {photo.name}` (median of {args.cold_runs}):")
    for detector in DETECTORS:
        print(f"- --detector {detector}: {cold_start(model_dir, photo, detector, args.cold_runs):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    with filtered_stderr():  # TensorFlow's C++ lines (`failed call to cuInit`) come at its first op, after the import
        sys.exit(main())
