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
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from lxml import etree
from tqdm import tqdm

from .config import resolve_params
from .fsutil import atomic_dir, atomic_path, files_fingerprint, reads_back, write_text_atomic
from .images import ImageError, load_rgb
from .native_logs import show_progress
from .paths import DATA_DIR, DATA_ENV_VAR, DATASET_NAME, DEFAULT_FACES_DIR, RAW_DIR
from .splits import N_FOLDS, assign_folds

KAGGLE_DATASET = "andrewmvd/face-mask-detection"
DATA_LOCATION_FILE = Path(os.environ.get("MASKCLF_DATA_LOCATION_FILE") or DATA_DIR / ".data_dir")
"""Where the last `--data` given to extract or reports is remembered (git-ignored, this machine only;
the tests point it elsewhere)."""

DEFAULT_LABEL_MAP: dict[str, str] = {
    "with_mask": "with_mask",
    "without_mask": "without_mask",
    "mask_weared_incorrect": "without_mask",
}
"""Original VOC class -> binary label: a mask worn incorrectly does not comply."""

MANIFEST_COLUMNS = [
    "crop_path", "source_image", "face_index", "xmin", "ymin", "xmax", "ymax", "width", "height",
    "image_width", "image_height", "clipped", "original_label", "label", "fold",
]


MAX_XML_BYTES = 1 << 20
"""Refuse annotation files larger than this (a VOC file of the real set is at most 40 kB)."""

MAX_OBJECTS = 1000
"""Refuse annotation files with more boxes than this (the real set has at most 115 per photo)."""

MAX_SEED = 2**32 - 1
LABEL_NAME = re.compile(r"\w[\w.\- ]{0,63}")
"""A label is a folder name of the crops: letters, digits, '_', '.', '-', ' '; no path separators."""


class DataError(ValueError):
    """A data file is malformed or inconsistent; the message names the file and the problem."""


class DataNotFoundError(FileNotFoundError):
    """No copy of the data set was found and none could be downloaded."""


# --------------------------------------------------------------------------- locating the data


def is_dataset_dir(path: Path) -> bool:
    """True when `path` holds the Kaggle layout: `images/` and `annotations/` side by side."""
    return (path / "images").is_dir() and (path / "annotations").is_dir()


def remember_data_dir(path: str | Path) -> None:
    """Record where the data set is (DATA_LOCATION_FILE), so JupyterLab finds what the main job used.

    Only a main job that wrote the project's own reports calls this (`maskclf.report`).
    """
    write_text_atomic(DATA_LOCATION_FILE, str(Path(path).expanduser().resolve()) + "\n")


def remembered_data_dir() -> Path | None:
    """The data set location recorded by `remember_data_dir` (None: none recorded).

    DataNotFoundError, naming the file and the location, when the recorded folder no longer holds the data set.
    """
    if not DATA_LOCATION_FILE.is_file():
        return None
    try:
        path = Path(DATA_LOCATION_FILE.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataNotFoundError(f"{DATA_LOCATION_FILE}: unreadable ({exc}); delete it, then pass --data DIR") from exc
    if not is_dataset_dir(path):
        raise DataNotFoundError(
            f"{DATA_LOCATION_FILE} remembers the data set at {path}, which no longer holds it (images/ and "
            f"annotations/); pass --data DIR (papermill: -p data_dir DIR) or set ${DATA_ENV_VAR}, or delete "
            f"{DATA_LOCATION_FILE} to use {RAW_DIR / DATASET_NAME}")
    return path


def resolve_data_dir(explicit: str | Path | None = None, download: bool = True) -> Path:
    """Find the data set: explicit path, $MASKCLF_DATA, the remembered location, data/raw/, a Kaggle download.

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
    remembered = remembered_data_dir()
    if remembered is not None:
        return remembered
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
    text = _read_xml_bytes(xml_path)
    try:
        root = etree.fromstring(text, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise DataError(f"{xml_path}: malformed XML ({exc})") from exc
    objects = root.findall("object")
    if len(objects) > MAX_OBJECTS:
        raise DataError(f"{xml_path}: {len(objects)} objects, more than the limit of {MAX_OBJECTS}")
    filename = _text(root, "filename", xml_path)
    width = _int(root, "size/width", xml_path)
    height = _int(root, "size/height", xml_path)
    boxes = []
    for i, obj in enumerate(objects):
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


def _read_xml_bytes(xml_path: Path) -> bytes:
    """The bytes of an annotation file: a regular file of valid UTF-8 name, at most MAX_XML_BYTES."""
    try:
        os.fsencode(xml_path.name).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{xml_path}: the file name is not valid UTF-8; rename the file") from None
    if not xml_path.is_file():
        raise DataError(f"{xml_path}: not a regular file")
    try:
        with xml_path.open("rb") as f:
            text = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{xml_path}: unreadable ({exc.strerror or exc})") from exc
    if len(text) > MAX_XML_BYTES:
        raise DataError(f"{xml_path}: larger than the limit of {MAX_XML_BYTES} bytes for an annotation")
    return text


def _text(node: etree._Element, tag: str, xml_path: Path, where: str = "") -> str:
    text = node.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{xml_path}: {where + ': ' if where else ''}missing <{tag}>")
    return text.strip()


def _int(node: etree._Element, tag: str, xml_path: Path, where: str = "") -> int:
    text = _text(node, tag, xml_path, where)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{xml_path}: {where + ': ' if where else ''}<{tag}> is not a number, or not a finite one: {text!r}")
    return int(round(value))


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


def annotation_boxes(ann: Annotation, width: int, height: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Class and box, checked and clipped to a `width` x `height` image, of every face of `ann`."""
    return [(box.name, check_box(box, width, height, ann.xml_path, i)) for i, box in enumerate(ann.boxes)]


def expand_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Grow a box by `margin` of its size on each side, clipped to the image."""
    xmin, ymin, xmax, ymax = box
    dx, dy = round(min((xmax - xmin) * margin, width)), round(min((ymax - ymin) * margin, height))
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
    margin: float | None = None,
    label_map: Mapping[str, str] | None = None,
    fold_seed: int | None = None,
    n_folds: int = N_FOLDS,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Crop every annotated face of `data_dir` into `out_dir` and write the manifest with folds.

    With `skip_bad`, a bad file or box is recorded in `skipped.csv` instead of stopping
    the run. Images are read only from inside `data_dir/images`. The previous `out_dir`
    is replaced only once the new one is complete; a file, a link or a folder that
    extraction did not write is refused. An extraction already in `out_dir` from the same
    files, parameters and code, its crops unchanged, is kept as it is.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    defaults = resolve_params("01_extract", {"margin": margin, "fold_seed": fold_seed})
    margin, fold_seed = check_margin(defaults["margin"]), check_seed(defaults["fold_seed"])
    label_map = check_label_map(DEFAULT_LABEL_MAP if label_map is None else label_map)
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    _refuse_foreign_output(out_dir)
    xml_files = sorted((data_dir / "annotations").glob("*.xml"))
    if not xml_files:
        raise DataError(f"{data_dir / 'annotations'}: no .xml files")
    images = sorted(p for p in (data_dir / "images").iterdir() if p.is_file()) if (data_dir / "images").is_dir() else []
    source_key = {"data_dir": str(data_dir.resolve()), "margin": margin, "label_map": label_map, "fold_seed": fold_seed,
                  "n_folds": n_folds, "skip_bad": skip_bad, "files": files_fingerprint([*xml_files, *images]),
                  "code": files_fingerprint([__file__, load_rgb.__code__.co_filename])}
    kept = _up_to_date_extraction(out_dir, source_key)
    if kept is not None:
        return kept

    rows: list[dict] = []
    skipped: list[dict[str, str]] = []
    with atomic_dir(out_dir, marker="extract.json") as tmp:
        for xml_path in tqdm(xml_files, desc="extract", unit="photo", disable=not show_progress(progress)):
            try:
                rows += _crop_one(xml_path, data_dir / "images", tmp, margin, label_map, skip_bad, skipped)
            except (DataError, ImageError) as exc:
                if not skip_bad:
                    raise
                skipped.append({"file": str(xml_path), "problem": str(exc)})
        if not rows:
            raise DataError(f"{data_dir}: no face could be extracted")
        manifest = pd.DataFrame(rows)
        n_photos = manifest["source_image"].nunique()
        if n_photos < n_folds:
            raise DataError(f"{data_dir}: faces from only {n_photos} photos, fewer than the {n_folds} folds (each fold needs photos of its own)")
        manifest["fold"] = assign_folds(manifest["label"], manifest["source_image"], n_folds=n_folds, seed=fold_seed)
        manifest = manifest[MANIFEST_COLUMNS]
        manifest.to_csv(tmp / "faces.csv", index=False)
        skipped_table = pd.DataFrame(skipped, columns=["file", "problem"]).map(printable)
        skipped_table.to_csv(tmp / "skipped.csv", index=False)
        digest = hash_extraction(tmp)
        params = {
            "data_dir": str(data_dir), "margin": margin, "label_map": label_map, "fold_seed": fold_seed,
            "n_folds": n_folds, "skip_bad": skip_bad, "n_faces": len(manifest),
            "n_images": int(manifest["source_image"].nunique()), "n_skipped": len(skipped), "data_sha256": digest,
            "source_key": source_key,
        }
        (tmp / "extract.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return ExtractResult(out_dir, manifest, skipped, digest)


def _up_to_date_extraction(out_dir: Path, source_key: dict[str, Any]) -> ExtractResult | None:
    """The extraction in `out_dir`, if it was made from `source_key` and its manifest and crops are unchanged."""
    try:
        info = read_extraction_info(out_dir)
        if info.get("source_key") != source_key or hash_extraction(out_dir) != info["data_sha256"]:
            return None
        skipped = pd.read_csv(out_dir / "skipped.csv", dtype=str, keep_default_na=False).to_dict("records")
        return ExtractResult(out_dir, read_manifest(out_dir)[MANIFEST_COLUMNS], skipped, info["data_sha256"])
    except (OSError, ValueError, KeyError, DataError):
        return None


def printable(text: str) -> str:
    """`text` with the undecodable bytes of file names (surrogate escapes) shown as `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_margin(margin: Any) -> float:
    """`margin` as a float, if it is a finite number >= 0; ValueError otherwise."""
    try:
        value = float(margin)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    return value


def check_seed(seed: Any) -> int:
    """`seed` as an int, if it is a whole number in 0..MAX_SEED; ValueError otherwise."""
    try:
        value = int(seed, 10) if isinstance(seed, str) else operator.index(seed)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return value


def check_label_map(label_map: Any) -> dict[str, str]:
    """`label_map` as a dict, if it maps class names to labels usable as folder names; ValueError otherwise."""
    if not isinstance(label_map, Mapping) or not label_map:
        raise ValueError(f"label map must be a non-empty mapping of original class to label, got {label_map!r}")
    for name, label in label_map.items():
        if not isinstance(name, str) or not isinstance(label, str) or not LABEL_NAME.fullmatch(label):
            raise ValueError(
                f"label map: {name!r} -> {label!r}: class names must be strings and labels names of up to 64 "
                "letters, digits, '_', '.', '-' or spaces, starting with a letter, digit or '_' (they name folders)"
            )
    return dict(label_map)


def _refuse_foreign_output(out_dir: Path) -> None:
    """Never replace a file, a link or a non-empty folder that an earlier extraction did not write."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise DataError(f"{out_dir}: exists and is not a folder written by `maskclf extract`; refusing to replace it")
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
    image_path = annotation_image(ann, images_dir)
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
        with atomic_path(out_dir / crop_rel, check=reads_back("image")) as tmp:
            image.crop(expand_box(clipped, margin, ann.width, ann.height)).save(tmp, format="PNG")
        rows.append({
            "crop_path": crop_rel.as_posix(), "source_image": ann.filename, "face_index": index,
            "xmin": clipped[0], "ymin": clipped[1], "xmax": clipped[2], "ymax": clipped[3],
            "width": clipped[2] - clipped[0], "height": clipped[3] - clipped[1],
            "image_width": ann.width, "image_height": ann.height,
            "clipped": clipped != (box.xmin, box.ymin, box.xmax, box.ymax),
            "original_label": box.name, "label": label,
        })
    return rows


def annotation_image(ann: Annotation, images_dir: Path) -> Path:
    """The image an annotation describes: its `<filename>` in `images_dir`, the only image it may name.

    DataError naming the annotation when the name leads outside `images_dir` ('..', an absolute
    path, a link out; links resolved) or is not the annotation's own name (photo1.xml: photo1.*).
    Every reader of a VOC data set's photos goes through here.
    """
    xml_path, filename = ann.xml_path, ann.filename
    path = images_dir / filename
    if not path.resolve().is_relative_to(images_dir.resolve()):
        raise DataError(f"{xml_path}: <filename> {filename!r} leads outside {images_dir}; refusing to read it")
    if Path(filename).stem != xml_path.stem:
        raise DataError(f"{xml_path}: <filename> is {filename!r}, which does not match the annotation's name")
    return path


def hash_extraction(out_dir: str | Path) -> str:
    """SHA-256 of the manifest and every crop it lists: the key of everything computed downstream."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "faces.csv"
    digest = hashlib.sha256(manifest_path.read_bytes())
    with open(manifest_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            _check_inside(row["crop_path"], "crop_path", manifest_path)
            digest.update((out_dir / row["crop_path"]).read_bytes())
    return digest.hexdigest()


def _check_inside(relative: Any, column: str, manifest_path: Path) -> None:
    """DataError unless `relative` is a relative path that stays inside its base folder."""
    path = PurePosixPath(str(relative))
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{manifest_path}: {column} {relative!r} leads outside the data; refusing to read it")


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
    for column in ("crop_path", "source_image"):
        for relative in manifest[column]:
            _check_inside(relative, column, path)
    manifest["crop_file"] = [str(faces_dir / p) for p in manifest["crop_path"]]
    return manifest


def face_size(manifest: pd.DataFrame) -> pd.Series:
    """Short side of each annotated box in pixels: the size every report, filter and bucket uses."""
    return manifest[["width", "height"]].min(axis=1)


TINY_FACE = 16
"""Faces under this many pixels (short side) are tiny: too few pixels for a reliable label. The first size
bucket, marked in the figures, and flagged (`"small_face"`) in predictions."""
SIZE_BINS = (0, TINY_FACE, 32, 64, float("inf"))
SIZE_LABELS = ("<16 px", "16-31 px", "32-63 px", ">=64 px")


def size_buckets(face_px: Sequence[int]) -> pd.Categorical:
    """Face size buckets (SIZE_LABELS) of short sides in pixels, as `face_size` gives them."""
    return pd.cut(np.asarray(face_px), SIZE_BINS, right=False, labels=SIZE_LABELS)


def read_extraction_info(faces_dir: str | Path = DEFAULT_FACES_DIR) -> dict:
    """Parameters, counts and data hash recorded by the extraction that wrote `faces_dir`."""
    return json.loads((Path(faces_dir) / "extract.json").read_text(encoding="utf-8"))


def source_photos_dir(faces_dir: str | Path = DEFAULT_FACES_DIR) -> Path:
    """The `images/` folder of the data set that `faces_dir` was extracted from: its resolved path (`source_key`), so
    that an extraction made with a relative `--data` is found from any working folder, a notebook's included."""
    info = read_extraction_info(faces_dir)
    images = Path(info.get("source_key", {}).get("data_dir") or info["data_dir"]) / "images"
    if not images.is_dir():
        raise DataNotFoundError(f"{images}: the source photos of {faces_dir} are gone; re-run `python -m maskclf extract`")
    return images


# --------------------------------------------------------------------------- CLI


def parse_label_map(text: str) -> dict[str, str]:
    """A `--label-map` argument: a JSON object mapping original classes to labels."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    return check_label_map(obj)


def run(args: argparse.Namespace) -> int:
    """Run `extract` from parsed arguments."""
    try:
        data_dir = resolve_data_dir(args.data)
        result = extract_faces(data_dir, args.out, margin=args.margin, label_map=args.label_map, fold_seed=args.fold_seed,
                               skip_bad=args.skip_bad)
    except (DataError, DataNotFoundError, ImageError, OSError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    counts = result.manifest["label"].value_counts().to_dict()
    print(f"wrote {len(result.manifest)} faces from {result.manifest['source_image'].nunique()} photos to {result.out_dir}: {counts}")
    print(f"manifest: {result.manifest_path}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad items: see {result.out_dir / 'skipped.csv'}")
    return 0
