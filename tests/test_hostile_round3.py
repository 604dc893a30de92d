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

REPO = Path(__file__).resolve().parents[1]


def _cli(capsys, command: str, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `python -m maskclf COMMAND ARGS`, run in this process."""
    from maskclf.cli import main

    try:
        status = main([command, *map(str, args)])
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


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
        monkeypatch.setattr(module, "make_detector", lambda *args, **kwargs: fixed_box)


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
