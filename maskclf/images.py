"""Reading any image file as 8-bit RGB: the one reader of every command.

`open_image` reads a file's header (or an upload's bytes) and refuses what is too large;
`decode_rgb` decodes it as upright 8-bit RGB (EXIF orientation applied) within
DECODE_BYTES_PER_PIXEL. Only READ_FORMATS are read. Every decoder failure, of whatever type Pillow's plugins raise, is
an ImageError naming the file.
"""

from __future__ import annotations

import io
import warnings
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
READ_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
"""The image formats read, an allow-list of photos' formats (JPEG opens phones' MPO files too). Pillow's
other plugins (EPS runs Ghostscript; DDS, QOI, SGI, IM... hold no photo of faces) are never tried."""
DECODE_BYTES_PER_PIXEL = 12
"""Most bytes a pixel that decoding takes at its peak, in every mode read: the decoded image (at most
4 bytes a pixel: 32-bit grey or float, RGBA, CMYK), the 8-bit grey or RGB result and its upright copy
(measured: 9.6 bytes a pixel for a 9-Mpx float TIFF). Grey levels are scaled in bands of GREY_BAND_PIXELS."""
GREY_BAND_PIXELS = 1 << 20
ORIENTATION_TAG = 0x0112
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose)."""


class ImageError(ValueError):
    """An image file is missing, unreadable, truncated or too large."""


class ImageTooLarge(ImageError):
    """An image has more pixels than the limit; refused before its pixels are decoded. `size`: (width, height), if read."""

    def __init__(self, message: str, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.size = size


def open_image(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file or an upload's bytes (its header read, not its pixels), within `max_pixels`.

    ImageError naming the file (`name`, default the path) when it is missing, empty or not an
    image; ImageTooLarge when it has too many pixels.
    """
    name = name or str(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: image file not found")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
    elif not source:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            warnings.simplefilter("ignore", UserWarning)  # corrupt metadata (EXIF): the pixels may still decode
            Image.init()  # every plugin registered, so that each of READ_FORMATS is known
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=READ_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: too large ({exc})") from exc
    except Exception as exc:  # noqa: BLE001  Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, struct.error...
        raise ImageError(f"{name}: unreadable or truncated image ({type(exc).__name__}: {exc})") from exc
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageTooLarge(f"{name}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels}", img.size)
    return img


def decode_rgb(img: Image.Image, name: str) -> Image.Image:
    """Decode an opened image as upright 8-bit RGB (`to_rgb`, then its EXIF orientation); ImageError naming `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # corrupt metadata (EXIF): the pixels may still decode
            orientation = img.getexif().get(ORIENTATION_TAG)
            img.load()
        rgb = to_rgb(img)
    except Exception as exc:  # noqa: BLE001  any decoder failure (truncated data, bad tables, bad EXIF...)
        raise ImageError(f"{name}: unreadable or truncated image ({type(exc).__name__}: {exc})") from exc
    transpose = TRANSPOSES.get(orientation) if isinstance(orientation, int) else None
    return rgb.transpose(transpose) if transpose is not None else rgb


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `path` and return it fully decoded as upright 8-bit RGB (`open_image`, `decode_rgb`).

    Transparent pixels are composited over white; 16-bit and 32-bit grey levels are
    scaled to 0-255 rather than clipped.
    """
    with open_image(path, max_pixels=max_pixels) as img:
        return decode_rgb(img, str(path))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _grey_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey levels scaled to 0-255, read in bands of GREY_BAND_PIXELS: no full-size
    copy of the levels (an array of the whole image alone would take 4-8 bytes a pixel more). Not-a-number
    and infinite levels count as 0."""
    rows = max(1, GREY_BAND_PIXELS // max(img.width, 1))
    bands = [(start, min(start + rows, img.height)) for start in range(0, img.height, rows)]

    def levels(top: int, bottom: int) -> np.ndarray:
        band = np.asarray(img.crop((0, top, img.width, bottom)), dtype=np.float32)
        return np.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0)

    peak = max((float(levels(*b).max(initial=0)) for b in bands), default=0.0)
    if img.mode == "F":
        scale = 255.0 / max(peak, 1.0)
    else:
        scale = 255.0 / (65535.0 if img.mode.startswith("I;16") or peak > 255 else 255.0)
    grey = np.empty((img.height, img.width), np.uint8)
    for top, bottom in bands:
        band = levels(top, bottom)
        band *= scale
        grey[top:bottom] = np.clip(np.rint(band, out=band), 0, 255, out=band)
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
