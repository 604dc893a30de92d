"""The data set: finding it, reading its Pascal VOC boxes, and cropping the faces.

`extract_faces` turns `images/` + `annotations/` into crops under `OUT/faces/<label>/`
and one manifest `OUT/faces.csv` (with grouped, stratified folds), built in a
temporary folder and swapped in only when complete.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd
from lxml import etree
from tqdm import tqdm

from .fsutil import atomic_dir
from .images import ImageError, load_rgb
from .paths import DATASET_NAME, DEFAULT_FACES_DIR, RAW_DIR
from .splits import N_FOLDS, assign_folds

KAGGLE_DATASET = "andrewmvd/face-mask-detection"
DATA_ENV_VAR = "MASKCLF_DATA"

DEFAULT_LABEL_MAP: dict[str, str] = {
    "with_mask": "with_mask",
    "without_mask": "without_mask",
    "mask_weared_incorrect": "without_mask",
}
"""Original VOC class -> binary label: a mask worn incorrectly does not comply."""

DEFAULT_MARGIN = 0.0
"""Context added around each box, as a fraction of its width/height on each side.
0.0 crops exactly the annotated box, as the original study does."""

MANIFEST_COLUMNS = [
    "crop_path", "source_image", "face_index", "xmin", "ymin", "xmax", "ymax", "width", "height",
    "image_width", "image_height", "clipped", "original_label", "label", "fold",
]


class DataError(ValueError):
    """A data file is malformed or inconsistent; the message names the file and the problem."""


class DataNotFoundError(FileNotFoundError):
    """No copy of the data set was found and none could be downloaded."""


# --------------------------------------------------------------------------- locating the data


def is_dataset_dir(path: Path) -> bool:
    """True when `path` holds the Kaggle layout: `images/` and `annotations/` side by side."""
    return (path / "images").is_dir() and (path / "annotations").is_dir()


def resolve_data_dir(explicit: str | Path | None = None, download: bool = True) -> Path:
    """Find the data set: explicit path, then $MASKCLF_DATA, then data/raw/, then a Kaggle download.

    Raises DataNotFoundError with what to do when none of them works.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not is_dataset_dir(path):
            raise DataNotFoundError(f"{path}: not a Face Mask Detection folder (expected images/ and annotations/ inside)")
        return path
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not is_dataset_dir(path):
            raise DataNotFoundError(f"${DATA_ENV_VAR}={env}: not a Face Mask Detection folder (expected images/ and annotations/ inside)")
        return path
    local = RAW_DIR / DATASET_NAME
    if is_dataset_dir(local):
        return local
    reason = "download disabled"
    if download:
        try:
            return download_kaggle_dataset()
        except Exception as exc:  # offline, no credentials, or kagglehub missing
            reason = f"{type(exc).__name__}: {exc}"
    raise DataNotFoundError(
        "Face Mask Detection data set not found. Put it (images/ and annotations/ side by side) at "
        f"{local}, or pass --data DIR (papermill: -p data_dir DIR), or set ${DATA_ENV_VAR}. "
        f"Kaggle download of {KAGGLE_DATASET} failed ({reason})."
    )


def download_kaggle_dataset() -> Path:
    """Download the Kaggle data set with kagglehub (`pip install maskclf[kaggle]`); needs internet."""
    try:
        import kagglehub
    except ImportError as exc:
        raise DataNotFoundError("kagglehub is not installed (pip install kagglehub)") from exc
    path = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    if not is_dataset_dir(path):
        raise DataNotFoundError(f"{path}: the download does not hold images/ and annotations/")
    return path


# --------------------------------------------------------------------------- reading VOC


@dataclass(frozen=True)
class Box:
    """One annotated face."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass(frozen=True)
class Annotation:
    """One VOC file: the image it describes and its boxes."""

    xml_path: Path
    filename: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


def parse_voc(xml_path: str | Path) -> Annotation:
    """Parse one Pascal VOC XML file, raising DataError on anything malformed."""
    xml_path = Path(xml_path)
    try:
        root = etree.parse(str(xml_path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except (etree.XMLSyntaxError, OSError) as exc:
        raise DataError(f"{xml_path}: malformed XML ({exc})") from exc
    filename = _text(root, "filename", xml_path)
    width = _int(root, "size/width", xml_path)
    height = _int(root, "size/height", xml_path)
    boxes = []
    for i, obj in enumerate(root.findall("object")):
        where = f"object #{i}"
        boxes.append(
            Box(
                name=_text(obj, "name", xml_path, where),
                xmin=_int(obj, "bndbox/xmin", xml_path, where),
                ymin=_int(obj, "bndbox/ymin", xml_path, where),
                xmax=_int(obj, "bndbox/xmax", xml_path, where),
                ymax=_int(obj, "bndbox/ymax", xml_path, where),
            )
        )
    return Annotation(xml_path, filename, width, height, boxes)


def _text(node: etree._Element, tag: str, xml_path: Path, where: str = "") -> str:
    text = node.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{xml_path}: {where + ': ' if where else ''}missing <{tag}>")
    return text.strip()


def _int(node: etree._Element, tag: str, xml_path: Path, where: str = "") -> int:
    text = _text(node, tag, xml_path, where)
    try:
        return int(round(float(text)))
    except ValueError as exc:
        raise DataError(f"{xml_path}: {where + ': ' if where else ''}<{tag}> is not a number: {text!r}") from exc


def check_box(box: Box, width: int, height: int, xml_path: Path, index: int) -> tuple[int, int, int, int]:
    """Validate a box and return it clipped to the image; DataError if it is empty or inverted."""
    if box.xmax <= box.xmin or box.ymax <= box.ymin:
        raise DataError(
            f"{xml_path}: object #{index} ({box.name}) has a zero-area or inverted box "
            f"({box.xmin}, {box.ymin}, {box.xmax}, {box.ymax})"
        )
    clipped = (max(box.xmin, 0), max(box.ymin, 0), min(box.xmax, width), min(box.ymax, height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(f"{xml_path}: object #{index} ({box.name}) lies outside the {width}x{height} image")
    return clipped


def expand_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Grow a box by `margin` of its size on each side, clipped to the image."""
    xmin, ymin, xmax, ymax = box
    dx, dy = round((xmax - xmin) * margin), round((ymax - ymin) * margin)
    return max(xmin - dx, 0), max(ymin - dy, 0), min(xmax + dx, width), min(ymax + dy, height)


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractResult:
    """What `extract_faces` wrote."""

    out_dir: Path
    manifest: pd.DataFrame
    skipped: list[dict[str, str]]
    data_sha256: str

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "faces.csv"


def extract_faces(
    data_dir: str | Path,
    out_dir: str | Path = DEFAULT_FACES_DIR,
    margin: float = DEFAULT_MARGIN,
    label_map: Mapping[str, str] | None = None,
    seed: int = 42,
    n_folds: int = N_FOLDS,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Crop every annotated face of `data_dir` into `out_dir` and write the manifest with folds.

    With `skip_bad`, a bad file or box is recorded in `skipped.csv` instead of stopping
    the run. The previous `out_dir` is replaced only once the new one is complete.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    label_map = dict(DEFAULT_LABEL_MAP if label_map is None else label_map)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    _refuse_foreign_dir(out_dir)
    xml_files = sorted((data_dir / "annotations").glob("*.xml"))
    if not xml_files:
        raise DataError(f"{data_dir / 'annotations'}: no .xml files")

    rows: list[dict] = []
    skipped: list[dict[str, str]] = []
    with atomic_dir(out_dir) as tmp:
        for xml_path in tqdm(xml_files, desc="extract", unit="photo", disable=not progress):
            try:
                rows += _crop_one(xml_path, data_dir / "images", tmp, margin, label_map, skip_bad, skipped)
            except (DataError, ImageError) as exc:
                if not skip_bad:
                    raise
                skipped.append({"file": str(xml_path), "problem": str(exc)})
        if not rows:
            raise DataError(f"{data_dir}: no face could be extracted")
        manifest = pd.DataFrame(rows)
        manifest["fold"] = assign_folds(manifest["label"], manifest["source_image"], n_folds=n_folds, seed=seed)
        manifest = manifest[MANIFEST_COLUMNS]
        manifest.to_csv(tmp / "faces.csv", index=False)
        pd.DataFrame(skipped, columns=["file", "problem"]).to_csv(tmp / "skipped.csv", index=False)
        digest = hash_extraction(tmp)
        params = {
            "data_dir": str(data_dir), "margin": margin, "label_map": label_map, "seed": seed,
            "n_folds": n_folds, "skip_bad": skip_bad, "n_faces": len(manifest),
            "n_images": int(manifest["source_image"].nunique()), "n_skipped": len(skipped), "data_sha256": digest,
        }
        (tmp / "extract.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return ExtractResult(out_dir, manifest, skipped, digest)


def _refuse_foreign_dir(out_dir: Path) -> None:
    """Never replace a non-empty folder that an earlier extraction did not write."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "extract.json").is_file():
        raise DataError(f"{out_dir}: exists, is not empty and was not written by `maskclf extract`; refusing to replace it")


def _crop_one(
    xml_path: Path,
    images_dir: Path,
    out_dir: Path,
    margin: float,
    label_map: Mapping[str, str],
    skip_bad: bool,
    skipped: list[dict[str, str]],
) -> list[dict]:
    ann = parse_voc(xml_path)
    if Path(ann.filename).stem != xml_path.stem:
        raise DataError(f"{xml_path}: <filename> is {ann.filename!r}, which does not match the annotation's name")
    image_path = images_dir / ann.filename
    image = load_rgb(image_path)
    if image.size != (ann.width, ann.height):
        raise DataError(f"{xml_path}: <size> says {ann.width}x{ann.height} but {image_path} is {image.width}x{image.height}")
    rows = []
    for index, box in enumerate(ann.boxes):
        try:
            if box.name not in label_map:
                raise DataError(f"{xml_path}: object #{index} has unknown class {box.name!r} (known: {sorted(label_map)})")
            clipped = check_box(box, ann.width, ann.height, xml_path, index)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append({"file": f"{xml_path}#object{index}", "problem": str(exc)})
            continue
        label = label_map[box.name]
        crop_rel = Path("faces") / label / f"{xml_path.stem}_{index:03d}.png"
        (out_dir / crop_rel).parent.mkdir(parents=True, exist_ok=True)
        image.crop(expand_box(clipped, margin, ann.width, ann.height)).save(out_dir / crop_rel)
        rows.append({
            "crop_path": crop_rel.as_posix(), "source_image": ann.filename, "face_index": index,
            "xmin": clipped[0], "ymin": clipped[1], "xmax": clipped[2], "ymax": clipped[3],
            "width": clipped[2] - clipped[0], "height": clipped[3] - clipped[1],
            "image_width": ann.width, "image_height": ann.height,
            "clipped": clipped != (box.xmin, box.ymin, box.xmax, box.ymax),
            "original_label": box.name, "label": label,
        })
    return rows


def hash_extraction(out_dir: str | Path) -> str:
    """SHA-256 of the manifest and every crop it lists: the key of everything computed downstream."""
    out_dir = Path(out_dir)
    digest = hashlib.sha256((out_dir / "faces.csv").read_bytes())
    with open(out_dir / "faces.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            digest.update((out_dir / row["crop_path"]).read_bytes())
    return digest.hexdigest()


def read_manifest(faces_dir: str | Path = DEFAULT_FACES_DIR) -> pd.DataFrame:
    """Read `faces.csv` with absolute crop paths added as `crop_file`."""
    faces_dir = Path(faces_dir)
    path = faces_dir / "faces.csv"
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no manifest; run `python -m maskclf extract` (or notebooks/01_extract.ipynb) first")
    manifest = pd.read_csv(path)
    missing = set(MANIFEST_COLUMNS) - set(manifest.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    manifest["crop_file"] = [str(faces_dir / p) for p in manifest["crop_path"]]
    return manifest


def read_extraction_info(faces_dir: str | Path = DEFAULT_FACES_DIR) -> dict:
    """Parameters, counts and data hash recorded by the extraction that wrote `faces_dir`."""
    return json.loads((Path(faces_dir) / "extract.json").read_text(encoding="utf-8"))


def source_photos_dir(faces_dir: str | Path = DEFAULT_FACES_DIR) -> Path:
    """The `images/` folder of the data set that `faces_dir` was extracted from."""
    images = Path(read_extraction_info(faces_dir)["data_dir"]) / "images"
    if not images.is_dir():
        raise DataNotFoundError(f"{images}: the source photos of {faces_dir} are gone; re-run `python -m maskclf extract`")
    return images


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m maskclf extract`."""
    parser.add_argument("--data", help=f"data set folder (default: ${DATA_ENV_VAR}, then data/raw/{DATASET_NAME}, then Kaggle)")
    parser.add_argument("--out", default=str(DEFAULT_FACES_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="context around each box, fraction of its size (default: %(default)s)")
    parser.add_argument("--label-map", type=json.loads, default=None, help="JSON object mapping original to binary labels")
    parser.add_argument("--seed", type=int, default=42, help="seed of the fold assignment (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true", help="record bad files in skipped.csv instead of stopping")


def run(args: argparse.Namespace) -> int:
    """Run `extract` from parsed arguments."""
    try:
        data_dir = resolve_data_dir(args.data)
        result = extract_faces(data_dir, args.out, margin=args.margin, label_map=args.label_map, seed=args.seed, skip_bad=args.skip_bad)
    except (DataError, DataNotFoundError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result.manifest["label"].value_counts().to_dict()
    print(f"wrote {len(result.manifest)} faces from {result.manifest['source_image'].nunique()} photos to {result.out_dir}: {counts}")
    print(f"manifest: {result.manifest_path}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad items: see {result.out_dir / 'skipped.csv'}")
    return 0
