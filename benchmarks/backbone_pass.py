"""How fast the backbone pass runs against what the CPU can do, in float32 and in bfloat16.

Runs a saved model (backbone + head) over validation crops, once per numeric mode, each in a
fresh process: "fp32" and "bf16" through TensorFlow ("bf16": oneDNN's automatic bfloat16 rewrite
of the graph, which runs convolutions on AVX512-BF16 / AMX where the CPU has them), and
"openvino-fp32" and "openvino-bf16" through OpenVINO (maskclf.fastpass, which computes the
feature caches in bfloat16). Prints images/s, the model's
GFLOPs per image and the share of the CPU's float32 peak (cores x clock x 64 FLOPs per cycle
for two AVX-512 FMA units), and each mode's P(without_mask) against fp32's: the largest
difference and the share of equal labels at 0.5.

    .venv/bin/python benchmarks/backbone_pass.py [--model models/<run>] [--faces DIR] [--n 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("fp32", "bf16", "openvino-fp32", "openvino-bf16")


def conv_flops(model) -> float:
    """FLOPs of one image through the convolution and dense layers (2 per multiply-add)."""
    import keras

    total = 0.0

    def visit(layer) -> None:
        nonlocal total
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
        elif isinstance(layer, keras.layers.Conv2D):
            h, w, cout = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            total += 2.0 * h * w * cout * kh * kw * layer.input.shape[-1] / layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units

    visit(model)
    return total


def cpu_peak_fp32() -> tuple[str, float]:
    """CPU name and its float32 peak in FLOP/s (cores x clock x 64), from /proc/cpuinfo."""
    name, mhz = "unknown CPU", 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("cpu MHz") and not mhz:
            mhz = float(line.split(":", 1)[1])
    cores = len(os.sched_getaffinity(0))
    return f"{name}, {cores} cores at {mhz:.0f} MHz", cores * mhz * 1e6 * 64


def measure(mode: str, model_dir: str, faces_dir: str, n: int, out: str) -> None:
    """In this process: run the model over `n` fold-0 crops in `mode`; save outputs and timing to `out`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    if mode == "bf16":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    from maskclf.data import read_manifest
    from maskclf.images import load_crop
    from maskclf.runs import load_run

    model, config = load_run(model_dir)
    manifest = read_manifest(faces_dir)
    files = manifest.loc[manifest["fold"] == 0, "crop_file"].tolist()[:n]
    crops = np.stack([load_crop(f, config["image_size"]) for f in files]).astype("float32")
    if mode.startswith("openvino"):
        from maskclf.fastpass import compile_openvino

        run = compile_openvino(model, "bfloat16" if mode.endswith("bf16") else "float32")
    else:
        compiled = tf.function(lambda x: model(x, training=False))

        def run(x):
            return compiled(x).numpy()
    run(crops[:32])  # trace and warm up
    start = time.perf_counter()
    outputs = np.concatenate([run(crops[i:i + 32]) for i in range(0, len(crops), 32)])
    seconds = time.perf_counter() - start
    np.save(out, outputs)
    Path(out).with_suffix(".json").write_text(json.dumps({"seconds": seconds, "images": len(crops),
                                                           "flops": conv_flops(model)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder (default: the latest under models/)")
    parser.add_argument("--faces", default=str(ROOT / "data" / "interim" / "face-mask-detection"))
    parser.add_argument("--n", type=int, default=256, help="fold-0 crops to run")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from maskclf.runs import latest_run

        args.model = str(latest_run(ROOT / "models"))
    if args.worker:
        measure(args.worker, args.model, args.faces, args.n, args.out)
        return 0
    import tempfile

    machine, peak = cpu_peak_fp32()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = str(Path(tmp) / f"{mode}.npy")
            subprocess.run([sys.executable, __file__, "--worker", mode, "--model", args.model, "--faces", args.faces,
                            "--n", str(args.n), "--out", out], check=True, cwd=ROOT)
            results[mode] = (np.load(out), json.loads(Path(out).with_suffix(".json").read_text()))
    from maskclf.answers import p_without_mask

    config = json.loads((Path(args.model) / "config.json").read_text())
    reference = p_without_mask(results["fp32"][0], config)
    print(f"machine: {machine}; float32 peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'mode':<13} {'images/s':>9} {'GFLOP/img':>10} {'GFLOP/s':>8} {'of fp32 peak':>13} {'max |dp|':>9} {'labels agree':>13}")
    for mode, (outputs, timing) in results.items():
        rate = timing["images"] / timing["seconds"]
        gflops = timing["flops"] / 1e9
        p = p_without_mask(outputs, config)
        diff = float(np.abs(p - reference).max())
        agree = float(((p >= 0.5) == (reference >= 0.5)).mean())
        print(f"{mode:<13} {rate:9.1f} {gflops:10.2f} {rate * gflops:8.0f} {rate * gflops * 1e9 / peak:13.0%} "
              f"{diff:9.4f} {agree:13.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
