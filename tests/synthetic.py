"""A tiny synthetic Face Mask Detection set in the Kaggle layout, generated for tests.

Faces are skin-coloured squares; a masked face has a blue lower half, an unmasked one
a red mouth, an incorrect one a blue band under the mouth. Photos come in every image
mode the loader must handle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("RGB", "RGBA", "P", "L", "I;16")
CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")


def draw_face(size: int, cls: str) -> np.ndarray:
    """An RGB face patch of `size` pixels for class `cls`."""
    face = np.zeros((size, size, 3), np.uint8)
    face[:] = (224, 172, 140)
    eye = max(size // 8, 1)
    face[size // 4 : size // 4 + eye, size // 4 : size // 4 + eye] = 30
    face[size // 4 : size // 4 + eye, 3 * size // 4 - eye : 3 * size // 4] = 30
    if cls == "with_mask":
        face[size // 2 :, :] = (40, 90, 200)
    elif cls == "without_mask":
        face[2 * size // 3 : 2 * size // 3 + eye, size // 3 : 2 * size // 3] = (200, 30, 30)
    else:
        face[2 * size // 3 : 2 * size // 3 + eye, size // 3 : 2 * size // 3] = (200, 30, 30)
        face[5 * size // 6 :, :] = (40, 90, 200)
    return face


def voc_xml(filename: str, width: int, height: int, boxes: list[tuple[str, int, int, int, int]]) -> str:
    """Pascal VOC text for one photo."""
    objects = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<occluded>0</occluded><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>images</folder><filename>{filename}</filename>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objects}</annotation>"
    )


def save_in_mode(rgb: np.ndarray, path: Path, mode: str) -> None:
    """Save an RGB array as a PNG of the given PIL mode."""
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:2, :2] = 128  # a few translucent pixels, as in the real set
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "L":
        img = img.convert("L")
    elif mode == "I;16":
        grey = np.asarray(img.convert("L"), np.uint16) * 257
        img = Image.fromarray(grey)  # uint16 -> mode I;16
    img.save(path)


def make_voc_dataset(root: str | Path, n_photos: int = 20, seed: int = 0, face_size: int = 24) -> Path:
    """Write `n_photos` photos with 2-4 faces each under root/images and root/annotations.

    Every photo but the first holds one face touching the right border with xmax one pixel
    past it (as in the real set). Returns `root`.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = 160, 96
    for i in range(n_photos):
        canvas = np.full((height, width, 3), (90, 140, 90), np.uint8)
        boxes = []
        n_faces = 2 + i % 3
        for j in range(n_faces):
            cls = CLASSES[(i + j) % 3] if j else CLASSES[i % 2]
            size = face_size if j % 2 == 0 else face_size // 2  # some tiny faces
            x0 = 4 + j * (face_size + 8)
            y0 = int(rng.integers(4, height - size - 4))
            canvas[y0 : y0 + size, x0 : x0 + size] = draw_face(size, cls)
            boxes.append((cls, x0, y0, x0 + size, y0 + size))
        if i:
            size = face_size
            canvas[10 : 10 + size, width - size :] = draw_face(size, "with_mask")
            boxes.append(("with_mask", width - size, 10, width + 1, 10 + size))
        name = f"photo{i}.png"
        save_in_mode(canvas, root / "images" / name, MODES[i % len(MODES)])
        (root / "annotations" / f"photo{i}.xml").write_text(voc_xml(name, width, height, boxes))
    return root
