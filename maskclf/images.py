"""Reading any image file as 8-bit RGB, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000
"""Refuse images larger than this (a decompression bomb or a mistake, not a photo of faces)."""
WORK_SIDE = 1280
"""Longest side of the copy of a photo that face detection works on: bounds its time and memory.
CenterFace's pass size (detect.CENTERFACE_TILE): a larger copy would be cut in 4 or more tiles,
4-5 times the work (a 16-Mpx photo: 4.7 s on 2 cores at 1,600 px)."""


class ImageError(ValueError):
    """An image file is missing, unreadable, truncated or too large."""


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `path` and return it fully decoded as an 8-bit RGB image.

    Transparent pixels are composited over white; 16-bit and 32-bit grey levels are
    scaled to 0-255 rather than clipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels}")
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too large ({exc})") from exc
    except OSError as exc:  # PIL's UnidentifiedImageError and truncation errors are OSErrors
        raise ImageError(f"{path}: unreadable or truncated image ({exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _grey_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    if img.mode == "F":
        top = max(float(arr.max(initial=0)), 1.0)
    grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def working_image(image: np.ndarray, max_side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """An RGB array shrunk so that its longer side is at most `max_side`, and the factor applied (<= 1)."""
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width, 1))
    if factor == 1.0:
        return image, 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA), factor


def resize_crop(crop: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """A face crop as the model sees it: bilinear resize to `size` x `size`, uint8 RGB array.

    Training, evaluation and inference all resize through this one function.
    """
    img = crop if isinstance(crop, Image.Image) else Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8))
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_crop(path: str | Path, image_size: int) -> np.ndarray:
    """Read one crop file as the model sees it (uint8, image_size x image_size x 3)."""
    return resize_crop(load_rgb(path), image_size)


def crop_faces(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], size: int) -> np.ndarray:
    """The faces `boxes` (xmin, ymin, xmax, ymax) of an RGB image, each resized to `size`: float32
    (N, size, size, 3), 0-255."""
    crops = np.zeros((len(boxes), size, size, 3), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        crops[i] = resize_crop(image[y0:y1, x0:x1], size)
    return crops
