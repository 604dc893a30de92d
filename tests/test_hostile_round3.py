"""Hostile and unlucky input, round 3 (issue 24): full disks, stale exports, rotated phone photos,
parameters checked first. Each fixture is one input found to do harm; where the fix closes a class
(decoder errors, encoder writes, the parameter schema, image reading), a test sweeps the class.

As before: a clear error naming the file or option (exit status 2, no traceback), nothing produced
before lost or half-written, no memory or connection exhausted.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from synthetic import draw_face, voc_xml

from maskclf import config as params_config
from maskclf import data, evaluate, fsutil, report
from maskclf.images import DECODE_BYTES_PER_PIXEL, TRANSPOSES, ImageError, load_rgb
from cli_run import run_cli as _cli
from finders import unscored

REPO = Path(__file__).resolve().parents[1]




def _png(image: Image.Image | np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def fixed_box(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """A face detector that finds one face in the top-left quarter of every image."""
    height, width = image.shape[:2]
    return [(0, 0, max(width // 2, 1), max(height // 2, 1))]


class Recorder:
    """A face detector that records the shape of every image it gets and finds one face in each."""

    def __init__(self):
        self.shapes = []

    def __call__(self, image: np.ndarray) -> list:
        self.shapes.append(image.shape)
        return fixed_box(image)


@pytest.fixture
def fixed_detector(monkeypatch):
    """Commands find faces with `fixed_box` (the real detectors are slow and find none in the synthetic images)."""
    from maskclf import predict, video

    for module in (predict, video):
        monkeypatch.setattr(module, "make_face_finder", lambda *args, **kwargs: unscored(fixed_box))


@pytest.fixture
def no_model_loaded(monkeypatch):
    """Fail the test if a model is loaded: the inputs below must be refused before any work."""
    from maskclf import demo, export, predict, video

    def resolve_model(*args, **kwargs):
        pytest.fail("the model was loaded before the input was checked")

    for module in (predict, video, export, demo):
        monkeypatch.setattr(module, "resolve_model", resolve_model)


def _clip(path: Path, n_frames: int = 40, size: tuple[int, int] = (160, 96), noise: bool = False) -> Path:
    """An mp4 of `n_frames` frames with an unmasked face moving across (`noise`: random pixels, hard to compress)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(n_frames):
        frame = rng.integers(0, 256, (size[1], size[0], 3), np.uint8) if noise else np.full((size[1], size[0], 3), 90, np.uint8)
        frame[20:60, 10 + i: 50 + i] = draw_face(40, "without_mask")
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs, and `fill(free)`: fill it so that only `free` bytes stay free."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def fill(free: int = 0) -> None:
        stats = os.statvfs(disk)
        with open(disk / "filler", "wb") as f:
            f.write(bytes(max(stats.f_bavail * stats.f_frsize - free, 0)))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory) -> Path:
    """40 frames of noise (about 1 MB as mp4v): more than a nearly full disk holds."""
    return _clip(tmp_path_factory.mktemp("noisy") / "in.mp4", noise=True, size=(320, 240))


def test_video_on_a_full_disk_keeps_the_previous_output(full_disk, noisy_clip, tiny_run, fixed_detector, capsys):
    disk, fill = full_disk
    previous = _clip(disk / "prev.mp4", n_frames=5)
    before = previous.read_bytes()
    fill(free=100_000)
    status, _, err = _cli(capsys, "video", "--source", noisy_clip, "--out-video", previous, "--no-show",
                          "--model", tiny_run)
    assert status == 2 and f"{previous}: " in err and "Traceback" not in err, err
    assert previous.read_bytes() == before and _frames(previous) == 5, "the previous video is kept whole"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "prev.mp4"], "no temporary file left"


@pytest.mark.parametrize("option", ["--jsonl", "--draw"])
def test_predict_on_a_full_disk_names_the_output(option, full_disk, tiny_run, fixed_detector, tmp_path, capsys):
    disk, fill = full_disk
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (200, 300, 3), np.uint8)).save(photos / f"{i}.png")
    target = disk / ("faces.jsonl" if option == "--jsonl" else "drawn")
    fill(free=0)
    status, _, err = _cli(capsys, "predict", photos, "--model", tiny_run, option, target)
    assert status == 2 and f"error: {target}" in err and "No space left on device" in err, err
    assert "Traceback" not in err


def test_export_on_a_full_disk_names_the_file(full_disk, tiny_run, capsys):
    disk, fill = full_disk
    run = Path(shutil.copytree(tiny_run, disk / "run"))
    fill(free=0)
    status, _, err = _cli(capsys, "export", "--model", run, "--format", "onnx")
    assert status == 2 and f"{run / 'export'}" in err and "No space left on device" in err and "Traceback" not in err, err
    assert not (run / "export" / "model.onnx").exists()


def test_extract_on_a_full_disk_names_the_folder_and_keeps_the_previous_one(full_disk, voc_master, capsys):
    disk, fill = full_disk
    out = disk / "faces"
    status, _, err = _cli(capsys, "extract", "--data", voc_master, "--faces-dir", out, "--fold-seed", "1")
    assert status == 0, err
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fill(free=0)
    status, _, err = _cli(capsys, "extract", "--data", voc_master, "--faces-dir", out, "--fold-seed", "2")
    assert status == 2 and f"error: {out}" in err and "No space left on device" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _onnx_file(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor("pad", TensorProto.FLOAT, [256], np.ones(256, np.float32))])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _tflite_file(path: Path) -> Path:
    import tensorflow as tf

    fn = tf.function(lambda x: tf.nn.relu(x) * np.arange(64, dtype=np.float32)).get_concrete_function(
        tf.TensorSpec([1, 64], tf.float32))
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert())
    return path


def _npz_file(path: Path) -> Path:
    np.savez(path, a=np.arange(10_000.0))
    return path


ENCODED = {
    "image": lambda p: Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(p) or p,
    "video": lambda p: _clip(p, n_frames=8, noise=True),
    "npz": _npz_file,
    "onnx": _onnx_file,
    "tflite": _tflite_file,
}
"""Every kind of encoded file a command writes, each made by its encoder."""


@pytest.mark.parametrize("kind, suffix", [("image", ".png"), ("video", ".mp4"), ("npz", ".npz"), ("onnx", ".onnx"),
                                          ("tflite", ".tflite")])
def test_every_encoded_write_is_read_back_before_it_replaces_the_previous_file(kind, suffix, tmp_path):
    """What a full disk does to an encoder that only warns: the file it leaves is cut short."""
    good = ENCODED[kind](tmp_path / f"good{suffix}")
    frames = 8 if kind == "video" else None
    assert fsutil.reads_back(kind, frames)(good) is None
    target = tmp_path / f"previous{suffix}"
    target.write_bytes(b"the previous output")
    for cut in (len(good.read_bytes()) // 2, 0):
        with pytest.raises(fsutil.OutputError, match=re.escape(f"{target}: the file written does not read back")):
            with fsutil.atomic_path(target, check=fsutil.reads_back(kind, frames)) as tmp:
                tmp.write_bytes(good.read_bytes()[:cut])
        assert target.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, target.name])


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run, exported to ONNX (parity on fixed random crops)."""
    from maskclf.export import export_run
    from maskclf.runs import load_run

    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("exported") / "run"))
    export_run(run, *load_run(run), ["onnx"], None)
    return run


@pytest.fixture
def replaced_model(exported_run, tmp_path) -> Path:
    """The exported run with model.keras replaced by another model's, its time kept older (`cp -p`)."""
    from tinymodel import make_tiny_model

    run = Path(shutil.copytree(exported_run, tmp_path / "run"))
    other = make_tiny_model()
    kernel, bias = other.get_layer("head").get_weights()
    other.get_layer("head").set_weights([-kernel, bias])  # answers the other way round
    old = (run / "model.keras").stat()
    other.save(run / "model.keras")
    os.utime(run / "model.keras", ns=(old.st_atime_ns, old.st_mtime_ns - 10**12))
    return run


def test_a_stale_export_never_answers_for_a_replaced_model(replaced_model, tmp_path, capsys):
    from maskclf.runtime import ExportedModel, resolve_model

    red = tmp_path / "red.png"
    Image.fromarray(np.full((40, 40, 3), (230, 20, 20), np.uint8)).save(red)
    model, _ = resolve_model(replaced_model, fast=True)
    assert not isinstance(model, ExportedModel), "Keras answers"
    assert "measured against another model.keras" in capsys.readouterr().err
    status, out, err = _cli(capsys, "predict", red, "--crops", "--model", replaced_model)
    assert status == 0 and json.loads(out.splitlines()[0])["label"] == "with_mask", "the new model's answer"
    assert "its SHA-256 differs" in err and "classifying with Keras" in err


def test_an_export_keeps_the_formats_of_earlier_exports(exported_run, tmp_path, capsys):
    from maskclf.runtime import ExportedModel, resolve_model

    run = Path(shutil.copytree(exported_run, tmp_path / "run"))
    status, _, err = _cli(capsys, "export", "--model", run, "--format", "tflite-fp32")
    assert status == 0, err
    report = json.loads((run / "export" / "parity.json").read_text())
    assert sorted(report["formats"]) == ["onnx", "tflite-fp32"] and report["formats"]["onnx"]["parity"]["passed"]
    model, _ = resolve_model(run, fast=True)
    assert isinstance(model, ExportedModel) and model.path.name == "model.onnx", "the faster ONNX export stays in use"


@pytest.fixture
def filename_outside(voc_dir, tmp_path, request) -> Path:
    """photo1.xml's <filename> names an image outside the data set ('..' or an absolute path)."""
    secret = tmp_path / "outside" / "photo1.png"
    secret.parent.mkdir()
    shutil.copy(voc_dir / "images" / "photo1.png", secret)
    name = "../../outside/photo1.png" if request.param == "climbing" else str(secret)
    xml = voc_dir / "annotations" / "photo1.xml"
    xml.write_text(xml.read_text().replace("<filename>photo1.png</filename>", f"<filename>{name}</filename>"))
    return voc_dir


@pytest.mark.parametrize("filename_outside", ["climbing", "absolute"], indirect=True)
def test_export_check_reads_no_image_outside_the_data_set(filename_outside, monkeypatch):
    from maskclf import export

    read = []
    monkeypatch.setattr(export, "load_rgb", lambda path: read.append(Path(path)) or load_rgb(path))
    crops, labels, problems, _ = export.load_check_crops(filename_outside, 32)
    assert all(path.parent == filename_outside / "images" for path in read), read
    assert any(re.search(r"photo1\.xml: <filename> .* leads outside", p) for p in problems), problems
    assert len(crops) == len(labels) > 0


# --------------------------------------------------------------------------- evaluation


def test_every_headline_figure_is_at_the_chosen_threshold(voc_master, tmp_path):
    faces = tmp_path / "faces"
    data.extract_faces(voc_master, faces, progress=False)
    manifest = data.read_manifest(faces)
    p = np.linspace(0.05, 0.95, len(manifest))  # most faces land on different sides of 0.3 and 0.5
    table = evaluate.prediction_table(manifest, manifest["crop_file"].tolist(), p, threshold=0.3)
    ci = evaluate.bootstrap_ci(table, n_boot=200, seed=0)
    headline = evaluate.headline_metrics(table, ci, {"val_fold": 0}, {})
    at_03 = evaluate.binary_metrics(table["y_true"], p, 0.3)
    assert headline["threshold"] == 0.3 and headline["accuracy"] == at_03["accuracy"]
    assert headline["accuracy"] != evaluate.binary_metrics(table["y_true"], p, 0.5)["accuracy"]
    assert ci["accuracy"][0] <= headline["accuracy"] <= ci["accuracy"][1]
    assert headline["accuracy"] == float(table["correct"].mean()), "the table's own predictions agree"
    with pytest.raises(ValueError, match="differs from the prediction table's 0.3"):
        evaluate.bootstrap_ci(table, n_boot=10, threshold=0.5)


# --------------------------------------------------------------------------- rotated phone photos


def _upright(width: int = 90, height: int = 60) -> np.ndarray:
    """An asymmetric picture: every flip and rotation of it differs."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 3, : width // 4] = (230, 20, 20)
    image[height // 2:, width // 2:] = (20, 20, 230)
    image[:, -3:] = (20, 230, 20)
    return image


INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}
"""The transpose that turns an upright picture into what a camera stores with each EXIF orientation."""


def _as_stored(upright: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    """The bytes a camera writes for `upright` held in `orientation`: sideways pixels, and the tag."""
    stored = Image.fromarray(upright)
    stored = stored.transpose(INVERSE[orientation]) if orientation in INVERSE else stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format=fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_read_upright(orientation, tmp_path):
    from maskclf.demo import decode_upload

    upright = _upright()
    path = tmp_path / "phone.png"
    path.write_bytes(_as_stored(upright, orientation))
    assert np.array_equal(np.asarray(load_rgb(path)), upright)
    assert np.array_equal(decode_upload(path.read_bytes(), "phone.png"), upright)


def test_predict_finds_and_draws_faces_on_the_upright_photo(tiny_run, tmp_path, monkeypatch, capsys):
    from maskclf import predict

    portrait = _upright(60, 90)  # a phone portrait, stored sideways (orientation 6), as a JPEG
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "portrait.jpg").write_bytes(_as_stored(portrait, 6, "JPEG"))
    detector = Recorder()
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(detector))
    status, out, err = _cli(capsys, "predict", tmp_path / "in", "--model", tiny_run, "--draw", tmp_path / "drawn")
    assert status == 0, err
    assert detector.shapes == [(90, 60, 3)], "the detector sees the portrait upright"
    assert json.loads(out.splitlines()[0])["box"] == [0, 0, 30, 45], "boxes in the upright photo's pixels"
    drawn = Image.open(tmp_path / "drawn" / "portrait.drawn.png")
    assert drawn.height > drawn.width, "drawn on the upright photo"


def test_the_demo_analyses_the_upright_photo(tiny):
    from maskclf.demo import create_app

    detector = Recorder()
    client = TestClient(create_app(*tiny, unscored(detector)), raise_server_exceptions=False)
    reply = client.post("/api/predict", files={"file": ("portrait.png", _as_stored(_upright(60, 90), 6), "image/png")})
    assert reply.status_code == 200 and (reply.json()["width"], reply.json()["height"]) == (60, 90)
    assert detector.shapes == [(90, 60, 3)]


# --------------------------------------------------------------------------- a corrupt video


@pytest.fixture
def corrupt_clip(tmp_path) -> Path:
    """A 40-frame mp4 with 2 kB of garbage in its middle: reading stopped at the first bad frame."""
    path = _clip(tmp_path / "corrupt.mp4")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle: middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    return path


def test_a_corrupt_video_is_read_past_its_bad_frames_and_reported(corrupt_clip, tiny_run, fixed_detector, tmp_path,
                                                                   capsys):
    out = tmp_path / "out.mp4"
    status, _, err = _cli(capsys, "video", "--source", corrupt_clip, "--out-video", out, "--no-show", "--model", tiny_run)
    written = _frames(out)
    assert status == 1 and re.search(rf"{re.escape(str(corrupt_clip))}: \d+ of its 40 frames could not be decoded", err)
    missing = int(re.search(r"(\d+) of its 40 frames", err).group(1))
    assert 0 < missing < 20 and written == 40 - missing, "every decodable frame, after the bad ones too"


# --------------------------------------------------------------------------- parameters, checked first


@pytest.fixture
def no_notebook_runs(monkeypatch):
    """Fail the test if a notebook starts: the inputs below must be refused before any runs."""
    def run_notebook(notebook, *args, **kwargs):
        pytest.fail(f"{notebook.name} ran")

    monkeypatch.setattr(report, "run_notebook", run_notebook)


@pytest.mark.parametrize("override, problem", [
    ("n_bootstrap=abc", "parameter 'n_bootstrap': 'abc' is not an integer; expected an integer from 0 to 100000"),
    ("n_bootstrap=1000000000", "parameter 'n_bootstrap': 1000000000 is out of range"),
    ("backbone=nosuch", "parameter 'backbone': 'nosuch' is not made of known backbones (unknown backbone 'nosuch')"),
    ("epochs=-5", "parameter 'epochs': -5 is out of range; expected an integer from 1 to 10000"),
    ("data_dir=/etc", "parameter 'data_dir': '/etc' is not a Face Mask Detection folder"),
    ("threshold=-1", "parameter 'threshold': -1 is out of range; expected a number from 0.0 to 1.0"),
    ("threshold=.nan", "parameter 'threshold': nan is not a finite number"),
    ("compare=[{epochs: 0}]", "parameter 'compare': [{'epochs': 0}] is not valid: item 0: parameter 'epochs'"),
    ("run_name=../../etc", "parameter 'run_name': '../../etc' is not an allowed name"),
])
def test_reports_check_every_parameter_before_any_notebook_runs(override, problem, voc_master, tmp_path,
                                                                no_notebook_runs, capsys):
    data_option = [] if override.startswith("data_dir=") else ["--data", voc_master]  # --data would replace data_dir
    status, _, err = _cli(capsys, "reports", *data_option, "-p", override, "--reports-dir", tmp_path / "reports")
    assert status == 2 and problem in err, err
    assert not data.DATA_LOCATION_FILE.exists(), "--data is recorded only once the parameters are checked"
    assert not (tmp_path / "reports").exists()


def test_every_parameter_of_params_yaml_has_a_schema_entry():
    names = {name for section in params_config.read_sections().values() for name in section}
    assert names == set(params_config.SCHEMA), "params.yaml and params.schema.yaml name the same parameters"
    for name, value in params_config.load_params().items():
        params_config.check_param(name, value)  # every default fits its own schema


def test_the_schema_names_every_backbone():
    from maskclf.backbones import BACKBONES

    assert sorted(params_config.SCHEMA["backbone"]["choices"]) == sorted(BACKBONES)


def test_a_parameter_without_a_schema_entry_is_refused(tmp_path, no_notebook_runs, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(params_config.PARAMS_FILE.read_text() + "  new_knob: 3\n")
    status, _, err = _cli(capsys, "reports", "--params", params, "--reports-dir", tmp_path / "reports")
    assert status == 2 and "parameter 'new_knob' has no entry in params.schema.yaml" in err


WRONG = {"int": [1.5, "12", True, 10**12, -10**12], "float": ["0.5", float("nan"), float("inf"), True, 1e300, -1e300],
         "bool": [1, "true"], "str": [3, "", "x" * 200], "path": [3, ""], "dataset_dir": ["/etc", 5],
         "weights": ["/no/such/file.h5", 1], "backbone": ["vgg", "resnet50+vgg", 2],
         "label_map": [{"with_mask": "../up"}, ["x"]], "configurations": [[{"nosuch": 1}], [1], "x"]}
"""Values of the wrong type, or out of any sane range, for each type of the schema."""


@pytest.mark.parametrize("name", sorted(params_config.SCHEMA))
def test_every_parameter_refuses_values_of_the_wrong_type_or_range(name):
    entry = params_config.SCHEMA[name]
    wrong = [v for v in WRONG[entry["type"]] if not (entry["type"] == "float" and isinstance(v, float)
                                                      and np.isfinite(v) and entry["min"] <= v <= entry["max"])]
    for value in wrong:
        with pytest.raises(params_config.ParamsError, match=rf"parameter '{name}': .* expected "):
            params_config.check_param(name, value)
    if not entry.get("nullable"):
        with pytest.raises(params_config.ParamsError, match=f"parameter '{name}': null is not allowed"):
            params_config.check_param(name, None)


def test_notebooks_and_train_use_the_same_check(capsys, monkeypatch):
    from maskclf import train

    with pytest.raises(params_config.ParamsError, match="parameter 'n_bootstrap': 'abc' is not an integer"):
        params_config.resolve_params("03_evaluate", {"n_bootstrap": "abc"})  # a notebook's parameters cell
    monkeypatch.setattr(train, "run_study", lambda *a, **k: pytest.fail("training started"))
    status, _, err = _cli(capsys, "train", "--epochs", "-5")
    assert status == 2 and "parameter 'epochs': -5 is out of range" in err


# --------------------------------------------------------------------------- run folders


@pytest.fixture
def zip_bomb_model(tiny_run, tmp_path) -> Path:
    """A run whose model.keras holds a config.json padded to 40 MB of whitespace (a few kB compressed)."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    source = run / "model.keras"
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            content = old.read(info)
            new.writestr(info.filename, content + b" " * (40 << 20) if info.filename == "config.json" else content)
    shutil.move(bomb, source)
    return run


def test_a_zip_bomb_model_is_refused_before_keras_reads_it(zip_bomb_model, monkeypatch, tmp_path, capsys):
    import keras

    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras read the archive"))
    photo = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    status, _, err = _cli(capsys, "predict", photo, "--crops", "--model", zip_bomb_model)
    assert status == 2 and f"{zip_bomb_model / 'model.keras'}: its entry 'config.json' declares " in err
    assert "over the limit of 16777216" in err


def _broken_config(run: Path, text: str) -> Path:
    (run / "config.json").write_text(text)
    return run


@pytest.mark.parametrize("problem, make", [
    ("not valid JSON (nested too deep)", lambda config: "[" * 100_000 + "]" * 100_000),
    ("not valid JSON (Exceeds the limit", lambda config: json.dumps(config).replace('"image_size": 32', '"image_size": ' + "9" * 5000)),
    ("'class_names' ['a', 'b'] lacks 'without_mask'", lambda config: json.dumps({**config, "class_names": ["a", "b"]})),
    ("'class_names' has 2 names, but the model outputs 3 scores",
     lambda config: json.dumps({**{k: v for k, v in config.items() if k != "reports_as"},
                                "class_names": ["with_mask", "without_mask"]})),
    ("'reports_as' must map each of", lambda config: json.dumps({**config, "reports_as": {"with_mask": "with_mask"}})),
])
@pytest.mark.parametrize("command", ["predict", "export", "video"])
def test_a_broken_config_is_a_named_error_in_every_command(problem, make, command, tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    _broken_config(run, make(json.loads((run / "config.json").read_text())))
    photo = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    args = {"predict": [photo, "--crops"], "export": ["--format", "onnx"],
            "video": ["--source", _clip(tmp_path / "in.mp4", 2), "--out-video", tmp_path / "o.mp4", "--no-show"]}[command]
    status, _, err = _cli(capsys, command, *args, "--model", run)
    assert status == 2 and f"{run / 'config.json'}: " in err and problem in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- images Pillow refuses


SMALL = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), np.uint8))
TAGGED = Image.Exif()
TAGGED[0x0112] = 6
TAGGED[0x010F] = "cam"


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    SMALL.save(buffer, format=fmt, **({"exif": TAGGED} if fmt in ("PNG", "JPEG", "TIFF", "WEBP") else {}))
    return buffer.getvalue()


def _changed(fmt: str, changes: dict[int, int]) -> bytes:
    raw = bytearray(_encoded(fmt))
    for offset, value in changes.items():
        raw[offset] = value
    return bytes(raw)


BROKEN = {
    "png_syntax_error.png": lambda: _changed("PNG", {86: 0}),  # SyntaxError: broken PNG file
    "bmp_value_error.png": lambda: _changed("BMP", {24: 64, 30: 2}),  # ValueError: unknown raw mode
    "ppm_value_error.png": lambda: _changed("PPM", {7: 140}),  # ValueError: invalid literal for int()
    "dds_zero_division.png": lambda: _changed("DDS", {80: 125}),  # ZeroDivisionError (a format not read)
    "eps_ghostscript.png": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
}
"""Files that ended `extract` and `predict` in a traceback: each error type Pillow's plugins raise."""


def _mutants(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` seeded mutants of small images in every format read: a few bytes of the header changed, or cut short."""
    from maskclf.images import READ_FORMATS

    rng = np.random.default_rng(seed)
    seeds = {fmt: _encoded(fmt) for fmt in READ_FORMATS}
    mutants = []
    for i in range(n):
        fmt = list(seeds)[i % len(seeds)]
        raw = bytearray(seeds[fmt])
        if i % 4 == 3:
            raw = raw[: rng.integers(1, len(raw))]
        for _ in range(rng.integers(1, 4)):
            raw[rng.integers(0, min(len(raw), 300))] = rng.integers(0, 256)
        mutants.append((f"mutant{i:03d}_{fmt.lower()}.png", bytes(raw)))
    return mutants


def test_every_decoder_failure_is_an_image_error(tmp_path):
    kinds = set()
    for name, raw in [*[(n, make()) for n, make in BROKEN.items()], *_mutants(400)]:
        path = tmp_path / name
        path.write_bytes(raw)
        try:
            assert load_rgb(path).mode == "RGB"
            kinds.add("read")
        except ImageError as exc:
            assert str(exc).startswith(f"{path}: "), exc
            kinds.add(type(exc.__cause__).__name__)
    assert {"read", "SyntaxError", "ValueError", "UnidentifiedImageError", "OSError"} <= kinds, kinds


@pytest.fixture
def folder_with_bad_images(tmp_path) -> tuple[Path, list[Path], list[Path]]:
    """A folder of 3 good photos and every broken image of BROKEN plus 40 mutants."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good = []
    for i in range(3):
        good.append(folder / f"good{i}.png")
        Image.fromarray(np.full((60, 80, 3), 60 + 40 * i, np.uint8)).save(good[-1])
    bad = []
    for name, raw in [*[(n, make()) for n, make in BROKEN.items()], *_mutants(40, seed=1)]:
        (folder / name).write_bytes(raw)
        try:
            load_rgb(folder / name)
        except ImageError:
            bad.append(folder / name)
        else:
            (folder / name).unlink()
    return folder, good, bad


def test_predict_answers_every_good_photo_beside_bad_ones(folder_with_bad_images, tiny_run, fixed_detector, capsys):
    folder, good, bad = folder_with_bad_images
    status, out, err = _cli(capsys, "predict", folder, "--model", tiny_run)
    answered = {json.loads(line)["path"] for line in out.splitlines() if json.loads(line)["type"] == "photo"}
    assert status == 1 and answered == {str(p) for p in good} and "Traceback" not in err
    assert f"{len(bad)} files failed" in err and all(f"  {path}: " in err for path in bad)


def test_extract_skips_every_image_pillow_refuses(voc_dir, tmp_path, capsys):
    for i, make in enumerate(BROKEN.values()):
        (voc_dir / "images" / f"photo{i}.png").write_bytes(make())
    status, _, err = _cli(capsys, "extract", "--data", voc_dir, "--faces-dir", tmp_path / "out", "--skip-bad")
    assert status == 0 and "Traceback" not in err, err
    skipped = sorted(Path(f).name for f in __import__("pandas").read_csv(tmp_path / "out" / "skipped.csv")["file"])
    assert skipped == [f"photo{i}.xml" for i in range(len(BROKEN))]
    status, _, err = _cli(capsys, "extract", "--data", voc_dir, "--faces-dir", tmp_path / "out2")
    assert status == 2 and "photo0.png: " in err and "Traceback" not in err


def test_the_demo_answers_every_bad_upload_with_a_4xx(tiny):
    from maskclf.demo import create_app

    client = TestClient(create_app(*tiny, unscored(fixed_box)), raise_server_exceptions=False)
    good = _png(np.full((60, 80, 3), 90, np.uint8))
    for name, raw in [*[(n, make()) for n, make in BROKEN.items()], *_mutants(60, seed=2)]:
        reply = client.post("/api/predict", files={"file": (name, raw, "image/png")})
        assert reply.status_code in (200, 400, 413), (name, reply.status_code, reply.text)
    assert client.post("/api/predict", files={"file": ("good.png", good, "image/png")}).status_code == 200


MEASURE = """
    import sys
    from pathlib import Path
    from maskclf.images import load_rgb

    def kb(field):
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field))

    load_rgb(sys.argv[2])  # imports and first use, before the peak is measured
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = kb("VmRSS:")
    image = load_rgb(sys.argv[1])
    print(image.size, (kb("VmHWM:") - before) * 1024)
"""


@pytest.mark.parametrize("mode, dtype", [("F", np.float32), ("I", np.int32), ("I;16", np.uint16)])
def test_high_bit_depth_images_decode_within_the_stated_budget(mode, dtype, tmp_path):
    """A 9-Mpx float TIFF of 160 kB took 32 bytes a pixel (float64 copies); the demo's bound assumed 13."""
    side = 3000
    levels = (np.arange(side * side, dtype=np.float64).reshape(side, side) % 1000).astype(dtype)
    path = tmp_path / f"grey.tif"
    Image.fromarray(levels).save(path, compression="tiff_adobe_deflate")  # the dtype gives the mode
    small = tmp_path / "small.tif"
    Image.fromarray(levels[:8, :8]).save(small)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(MEASURE), str(path), str(small)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    size, grown = run.stdout.split(")")
    assert size == f"({side}, {side}" and int(grown) <= DECODE_BYTES_PER_PIXEL * side * side, int(grown) / side**2


# --------------------------------------------------------------------------- the demo's connections and options


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading what it sends until then)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


def test_slow_clients_are_cut_off_and_never_hold_up_a_normal_request(tiny):
    from maskclf.demo import create_app
    from maskclf.demo_browser import serve

    app = create_app(*tiny, unscored(fixed_box))
    with serve(app, request_timeout_s=1.0, max_connections=8) as url:
        address = ("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1]))
        silent = socket.create_connection(address)
        half_headers = socket.create_connection(address)
        half_headers.sendall(b"POST /api/predict HTTP/1.1\r\nHost: demo\r\nContent-Type: multipart/form-data")
        half_body = socket.create_connection(address)
        half_body.sendall(b"POST /api/predict HTTP/1.1\r\nHost: demo\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                          b"Content-Length: 100000\r\n\r\n--x\r\n")
        start = time.monotonic()
        boundary = "maskclf"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode() + _png(np.full((60, 80, 3), 90, np.uint8)) + \
            f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(url + "api/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200 and json.loads(reply.read())["faces"], "served while the slow ones are held"
        assert time.monotonic() - start < 1.0, "without waiting for the slow connections"
        for sock in (silent, half_headers, half_body):
            assert _closed_within(sock, 3.0), "closed after the request timeout"
            sock.close()
        assert time.monotonic() - start < 4.0


@pytest.mark.parametrize("option, value", [
    ("--max-mb", "nan"), ("--max-mb", "-1"), ("--max-mb", "0"), ("--max-mb", "inf"), ("--max-mb", "1e9"),
    ("--max-mb", "ten"), ("--port", "70000"), ("--port", "-5"), ("--port", "0"), ("--port", "http"),
    ("--threshold", "nan"), ("--min-face", "-3"),
])
def test_demo_options_are_refused_by_the_parser(option, value, no_model_loaded, capsys):
    status, _, err = _cli(capsys, "demo", option, value)
    assert status == 2 and f"argument {option}: " in err and "Traceback" not in err


@pytest.fixture
def taken_port():
    """A port of 127.0.0.1 another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_demo_on_a_taken_port_says_so_before_loading_the_model(taken_port, no_model_loaded, capsys):
    status, _, err = _cli(capsys, "demo", "--port", taken_port)
    assert status == 2 and f"--port {taken_port}: cannot listen on 127.0.0.1:{taken_port} (already in use)" in err
    assert "demo on http://" not in err and "Errno" not in err


def test_predict_names_a_missing_input_before_loading_the_model(tmp_path, no_model_loaded, capsys):
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "here.png")
    status, _, err = _cli(capsys, "predict", tmp_path / "here.png", tmp_path / "typo.png", "--crops")
    assert status == 2 and f"{tmp_path / 'typo.png'}: no such file or folder" in err
