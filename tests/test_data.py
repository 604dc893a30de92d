"""Extraction: VOC parsing, crops, class merge, bad inputs, reruns, data resolution."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskclf import data
from maskclf.data import DataError, DataNotFoundError, extract_faces, read_manifest, resolve_data_dir
from maskclf.images import ImageError, load_rgb
from conftest import REAL_DATA
from synthetic import MODES, save_in_mode


def _xml(voc: Path, stem: str = "photo1") -> Path:
    return voc / "annotations" / f"{stem}.xml"


def _edit_xml(voc: Path, pattern: str, new: str, stem: str = "photo1") -> Path:
    """Replace the first match of the regex `pattern` in the photo's XML."""
    path = _xml(voc, stem)
    text, n = re.subn(pattern, new, path.read_text(), count=1)
    assert n == 1
    path.write_text(text)
    return path


def test_extract_merges_classes_and_records_every_face(voc_dir, tmp_path):
    result = extract_faces(voc_dir, tmp_path / "out", progress=False)
    m = result.manifest
    n_boxes = sum(p.read_text().count("<object>") for p in (voc_dir / "annotations").glob("*.xml"))
    assert len(m) == n_boxes
    assert set(m["label"]) == {"with_mask", "without_mask"}
    incorrect = m[m["original_label"] == "mask_weared_incorrect"]
    assert len(incorrect) > 0 and (incorrect["label"] == "without_mask").all()
    assert list(m.columns) == data.MANIFEST_COLUMNS
    for row in m.itertuples():
        crop = Image.open(tmp_path / "out" / row.crop_path)
        assert crop.mode == "RGB" and crop.size == (row.width, row.height)
        assert Path(row.crop_path).parts[:2] == ("faces", row.label)
    assert (m[["width", "height"]].min(axis=1) < 16).any(), "tiny faces are kept"


def test_label_map_is_a_parameter(voc_dir, tmp_path):
    label_map = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "with_mask"}
    m = extract_faces(voc_dir, tmp_path / "out", label_map=label_map, progress=False).manifest
    assert (m.loc[m["original_label"] == "mask_weared_incorrect", "label"] == "with_mask").all()


def test_boxes_past_the_border_are_clipped(voc_dir, tmp_path):
    m = extract_faces(voc_dir, tmp_path / "out", progress=False).manifest
    clipped = m[m["clipped"]]
    assert len(clipped) == m["source_image"].nunique() - 1  # every photo but the first has one
    assert (clipped["xmax"] == clipped["image_width"]).all()
    assert (m["xmax"] <= m["image_width"]).all() and (m["xmin"] >= 0).all()


def test_margin_adds_context_within_the_image(voc_dir, tmp_path):
    m = extract_faces(voc_dir, tmp_path / "out", margin=0.25, progress=False).manifest
    row = m[~m["clipped"]].iloc[0]
    crop = Image.open(tmp_path / "out" / row["crop_path"])
    assert crop.width > row["width"] and crop.height > row["height"]


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_loads_as_rgb(tmp_path, mode):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (200, 200, 200)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    save_in_mode(rgb, path, mode)
    img = load_rgb(path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (8, 8, 3)
    assert arr[4, 6].max() < 10 and arr[4, 1].min() > 150, "grey levels are scaled, not clipped"


def test_translucent_pixels_are_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png")).min() == 255


BAD_INPUTS = {
    "malformed XML": (lambda v: _xml(v).write_text("<annotation><filename>photo1.png</filename"), "malformed XML"),
    "missing image": (lambda v: (v / "images" / "photo1.png").unlink(), "not found"),
    "unreadable image": (lambda v: (v / "images" / "photo1.png").write_bytes(b"not a png at all"), "unreadable"),
    "truncated image": (
        lambda v: (v / "images" / "photo1.png").write_bytes((v / "images" / "photo1.png").read_bytes()[:300]),
        "truncated",
    ),
    "empty image": (lambda v: (v / "images" / "photo1.png").write_bytes(b""), "empty"),
    "unknown class": (lambda v: _edit_xml(v, "<name>without_mask</name>", "<name>helmet</name>"), "unknown class 'helmet'"),
    "zero-area box": (lambda v: _edit_xml(v, r"<xmax>\d+</xmax>", "<xmax>4</xmax>"), "zero-area or inverted"),
    "inverted box": (lambda v: _edit_xml(v, r"<ymax>\d+</ymax>", "<ymax>1</ymax>"), "zero-area or inverted"),
    "filename mismatch": (lambda v: _edit_xml(v, "<filename>photo1.png", "<filename>photo2.png"), "does not match"),
    "non-numeric box": (lambda v: _edit_xml(v, r"<xmin>\d+</xmin>", "<xmin>abc</xmin>"), "not a number"),
    "size mismatch": (lambda v: _edit_xml(v, "<width>160", "<width>161"), "<size> says"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_an_error_naming_the_file(voc_dir, tmp_path, case):
    corrupt, message = BAD_INPUTS[case]
    corrupt(voc_dir)
    with pytest.raises((DataError, ImageError)) as info:
        extract_faces(voc_dir, tmp_path / "out", progress=False)
    assert "photo1" in str(info.value) and message in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing is half-written"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_skip_bad_records_every_skipped_item(voc_dir, tmp_path, case):
    corrupt, message = BAD_INPUTS[case]
    clean = extract_faces(voc_dir, tmp_path / "clean", progress=False).manifest
    corrupt(voc_dir)
    result = extract_faces(voc_dir, tmp_path / "out", skip_bad=True, progress=False)
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert len(skipped) == len(result.skipped) >= 1
    assert skipped["file"].str.contains("photo1").all() and skipped["problem"].str.contains(message, regex=False).any()
    lost = len(clean) - len(result.manifest)
    photo1_faces = int((clean["source_image"] == "photo1.png").sum())
    per_object = case in ("unknown class", "zero-area box", "inverted box")
    assert lost == (1 if per_object else photo1_faces)


def test_rerun_with_other_parameters_leaves_no_stale_crops(voc_dir, tmp_path):
    out = tmp_path / "out"
    extract_faces(voc_dir, out, progress=False)
    merged_into_with = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "with_mask"}
    m = extract_faces(voc_dir, out, label_map=merged_into_with, progress=False).manifest
    on_disk = {p.relative_to(out).as_posix() for p in (out / "faces").rglob("*.png")}
    assert on_disk == set(m["crop_path"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out") and p.is_dir()], "no temporary folders left"


def test_interrupted_rerun_keeps_the_previous_output(voc_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = extract_faces(voc_dir, out, progress=False)
    before = (out / "faces.csv").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "assign_folds", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_faces(voc_dir, out, margin=0.5, progress=False)
    assert (out / "faces.csv").read_bytes() == before
    assert data.hash_extraction(out) == first.data_sha256


def test_an_up_to_date_extraction_is_kept_and_a_changed_input_redone(voc_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = extract_faces(voc_dir, out, progress=False)
    calls = []
    crop_one = data._crop_one
    monkeypatch.setattr(data, "_crop_one", lambda *a, **k: calls.append(1) or crop_one(*a, **k))
    again = extract_faces(voc_dir, out, progress=False)
    assert not calls and again.data_sha256 == first.data_sha256 and again.skipped == first.skipped
    pd.testing.assert_frame_equal(again.manifest, first.manifest)
    extract_faces(voc_dir, out, fold_seed=7, progress=False)  # another parameter
    assert calls
    calls.clear()
    extract_faces(voc_dir, out, fold_seed=7, progress=False)
    assert not calls
    xml = sorted((voc_dir / "annotations").glob("*.xml"))[0]
    text = xml.read_text()
    flipped = text.replace("<name>with_mask<", "<name>WITHOUT<").replace("<name>without_mask<", "<name>with_mask<")
    xml.write_text(flipped.replace("<name>WITHOUT<", "<name>without_mask<"))  # another annotation
    assert xml.read_text() != text
    extract_faces(voc_dir, out, fold_seed=7, progress=False)
    assert calls
    calls.clear()
    crop = out / data.read_manifest(out)["crop_path"].iloc[0]
    crop.write_bytes(crop.read_bytes() + b"tampered")  # a changed crop
    extract_faces(voc_dir, out, fold_seed=7, progress=False)
    assert calls and data.hash_extraction(out) == data.read_extraction_info(out)["data_sha256"]


def test_refuses_to_replace_a_foreign_folder(voc_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="refusing"):
        extract_faces(voc_dir, out, progress=False)
    assert (out / "thesis.tex").exists()


def test_data_hash_changes_with_the_crops(voc_dir, tmp_path):
    a = extract_faces(voc_dir, tmp_path / "a", progress=False).data_sha256
    b = extract_faces(voc_dir, tmp_path / "b", progress=False).data_sha256
    c = extract_faces(voc_dir, tmp_path / "c", margin=0.2, progress=False).data_sha256
    assert a == b != c


def test_resolution_order(voc_dir, tmp_path, monkeypatch):
    other = tmp_path / "env"
    (other / "images").mkdir(parents=True)
    (other / "annotations").mkdir()
    monkeypatch.setenv(data.DATA_ENV_VAR, str(other))
    assert resolve_data_dir(voc_dir) == voc_dir
    assert resolve_data_dir() == other
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="MASKCLF_DATA"):
        resolve_data_dir()
    monkeypatch.delenv(data.DATA_ENV_VAR)
    monkeypatch.setattr(data, "RAW_DIR", tmp_path / "raw")
    local = Path(__import__("shutil").copytree(voc_dir, tmp_path / "raw" / data.DATASET_NAME))
    assert resolve_data_dir() == local


def test_offline_without_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(data, "RAW_DIR", tmp_path / "raw")

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "download_kaggle_dataset", offline)
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    text = str(info.value)
    assert str(tmp_path / "raw" / data.DATASET_NAME) in text and "--data" in text and "no network" in text


def test_cli_extract(voc_dir, tmp_path, capsys):
    from maskclf.cli import main

    assert main(["extract", "--data", str(voc_dir), "--faces-dir", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out")) > 0
    (voc_dir / "images" / "photo3.png").unlink()
    assert main(["extract", "--data", str(voc_dir), "--faces-dir", str(tmp_path / "out")]) == 2
    assert "photo3.png: image file not found" in capsys.readouterr().err


def test_the_photos_of_an_extraction_made_with_a_relative_path_are_found_from_elsewhere(voc_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(voc_dir.parent)
    extract_faces(Path(voc_dir.name), tmp_path / "out", progress=False)
    monkeypatch.chdir(tmp_path)  # as a notebook's kernel, which runs in notebooks/
    assert data.source_photos_dir(tmp_path / "out") == (voc_dir / "images").resolve()


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/datasets/face-mask-detection is not present")
def test_real_data_counts(tmp_path):
    m = extract_faces(REAL_DATA, tmp_path / "real", progress=False).manifest
    assert len(m) == 4072
    assert m["label"].value_counts().to_dict() == {"with_mask": 3232, "without_mask": 840}
    assert m["source_image"].nunique() == 853
    assert m.groupby("source_image")["fold"].nunique().max() == 1
    shares = m.groupby("fold")["label"].apply(lambda s: (s == "without_mask").mean())
    assert shares.max() - shares.min() < 0.03


def test_the_data_location_remembered_is_found_again_and_a_stale_one_is_named(voc_dir, tmp_path, monkeypatch):
    """After the main job's `--data DIR`, JupyterLab finds DIR without $MASKCLF_DATA; `extract --data` records
    nothing; a remembered folder that is gone is reported by name with the way out."""
    from maskclf import data
    from maskclf.cli import main

    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(data, "RAW_DIR", tmp_path / "raw")  # no copy under data/raw either
    assert data.remembered_data_dir() is None
    assert main(["extract", "--data", str(voc_dir), "--faces-dir", str(tmp_path / "faces")]) == 0
    assert data.remembered_data_dir() is None
    data.remember_data_dir(voc_dir)
    assert data.resolve_data_dir(download=False) == voc_dir.resolve()
    monkeypatch.setenv(data.DATA_ENV_VAR, str(voc_dir))
    assert data.resolve_data_dir(download=False) == voc_dir  # the environment still wins
    monkeypatch.delenv(data.DATA_ENV_VAR)
    gone = tmp_path / "elsewhere"
    data.remember_data_dir(gone)
    with pytest.raises(data.DataNotFoundError, match=f"{gone}.*no longer holds it.*--data"):
        data.resolve_data_dir(download=False)
