"""Training cost: cached features (cold and warm cache) vs the naive way, same epochs.

The naive way is the original study's: the frozen image model is fitted epoch by epoch
over the images, so the backbone runs once per image per epoch. The cached way runs it
once per image and trains the head on stored features.

    .venv/bin/python benchmarks/train_speed.py --faces data/interim/face-mask-detection \\
        --backbone resnet50 --weights none --epochs 10 --limit 1000

ResNet-50 with random weights costs what ResNet-50 with ImageNet weights costs, so
`--weights none` times the study's model where its weights cannot be downloaded.
Prints wall times, the speed-up and the peak resident memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskclf import crossval, featureset, network, trainconfig  # noqa: E402
from maskclf.data import read_manifest  # noqa: E402
from maskclf.evaluate import encode_labels  # noqa: E402
from maskclf.features import crop_dataset  # noqa: E402
from maskclf.paths import DEFAULT_FACES_DIR  # noqa: E402
from maskclf.splits import train_val_indices  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_cached(manifest, faces: Path, config: trainconfig.TrainConfig, cache_dir: Path) -> tuple[float, float, bool]:
    """Seconds for features (cold or warm) and for the head on fold `config.val_fold`."""
    t0 = time.perf_counter()
    fs = featureset.prepare_features(manifest, faces, config, cache_dir, verbose=0)
    t1 = time.perf_counter()
    crossval.train_fold(fs, manifest, config.val_fold)
    return t1 - t0, time.perf_counter() - t1, fs.cache_hit


def time_naive(manifest, config: trainconfig.TrainConfig) -> float:
    """Seconds to fit the frozen end-to-end image model for `config.epochs` epochs over the images."""
    from maskclf.backbones import build_backbone

    featureset.set_determinism(config.train_seed)
    y = encode_labels(manifest["label"])
    train_idx, val_idx = train_val_indices(manifest["fold"], config.val_fold)
    backbone = build_backbone(config.backbone, config.weights, config.image_size)
    inputs = keras.Input((config.image_size, config.image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    model = network.compile_model(keras.Model(inputs, network.build_head(x.shape[-1], config.dropout)(x)), config.learning_rate)

    def images(idx: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.zip(crop_dataset(list(manifest["crop_file"].iloc[idx]), config.image_size, config.batch_size),
                                   tf.data.Dataset.from_tensor_slices(y[idx]).batch(config.batch_size))

    t0 = time.perf_counter()
    model.fit(images(train_idx), validation_data=images(val_idx), epochs=config.epochs, verbose=0)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default=str(DEFAULT_FACES_DIR))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="'imagenet', a file, or 'none'")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="use the first N faces only (0: all)")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    manifest = read_manifest(args.faces)
    if args.limit:
        manifest = manifest.iloc[: args.limit].reset_index(drop=True)
    # epochs fixed for a like-for-like comparison: no early stopping
    config = trainconfig.TrainConfig.from_params({"backbone": args.backbone, "weights": args.weights, "epochs": args.epochs,
                                            "patience": args.epochs, "pooling": "avg", "head": "adam", "labels": "binary",
                                            "augment_views": 0, "jitter_views": 0, "fine_tune_blocks": 0})
    print(f"{len(manifest)} faces, backbone {config.backbone} (weights {args.weights}), {config.image_size} px, "
          f"{config.epochs} epochs, fold {config.val_fold} held out")
    with tempfile.TemporaryDirectory() as cache:
        cold_features, cold_head, hit = time_cached(manifest, Path(args.faces), config, Path(cache))
        assert not hit
        warm_features, warm_head, hit = time_cached(manifest, Path(args.faces), config, Path(cache))
        assert hit
    print(f"cached, cold: features {cold_features:7.1f} s + head {cold_head:5.1f} s = {cold_features + cold_head:7.1f} s")
    print(f"cached, warm: features {warm_features:7.1f} s + head {warm_head:5.1f} s = {warm_features + warm_head:7.1f} s")
    print(f"peak memory so far: {peak_rss_mib():.0f} MiB")
    if not args.skip_naive:
        naive = time_naive(manifest, dataclasses.replace(config))
        print(f"naive ({config.epochs} epochs over images): {naive:7.1f} s")
        print(f"speed-up: cold {naive / (cold_features + cold_head):.1f}x, warm {naive / (warm_features + warm_head):.1f}x")
    print(f"peak memory: {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
