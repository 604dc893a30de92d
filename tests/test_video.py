"""video: a short generated clip annotated headless, and the bad sources."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from finders import unscored
from synthetic import draw_face
from tinymodel import make_tiny_incorrect_model, make_tiny_run

from maskclf.cli import main
from maskclf.runs import load_run
from maskclf.predict import COLOURS
from maskclf.video import VideoError, annotate_frames, process_video, read_frames

N_FRAMES, SIZE = 8, (160, 120)
BOX = (60, 40, 100, 80)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """An mp4 of N_FRAMES frames with an unmasked face at BOX."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, SIZE)
    for i in range(N_FRAMES):
        frame = np.full((SIZE[1], SIZE[0], 3), (90, 140 + i, 90), np.uint8)
        frame[BOX[1] : BOX[3], BOX[0] : BOX[2]] = draw_face(40, "without_mask")
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


fixed_box = unscored(lambda frame: [BOX])
"""A FaceFinder that finds the face at BOX in every frame."""


def test_annotate_frames_draws_boxes_and_fps(tiny_run, clip):
    model, config = load_run(tiny_run)
    capture = cv2.VideoCapture(str(clip))
    results = list(annotate_frames(read_frames(capture, max_frames=3), model, config, fixed_box))
    capture.release()
    assert len(results) == 3
    for frame, faces in results:
        assert frame.shape == (SIZE[1], SIZE[0], 3)
        assert [f["label"] for f in faces] == ["without_mask"]
        assert frame[60, BOX[0]].tolist() == list(COLOURS["without_mask"])
        corner = frame[5:30, 5:60]
        # white strokes on a black outline; how many white pixels depends on the digits of the measured FPS
        assert (corner.min(axis=-1) > 200).sum() > 5 and (corner.max(axis=-1) < 30).sum() > 20, "FPS text expected"


def test_annotate_frames_draws_a_mask_worn_incorrectly_in_its_own_colour(clip, tmp_path):
    model, config = load_run(make_tiny_run(tmp_path / "incorrect", make_tiny_incorrect_model()))
    capture = cv2.VideoCapture(str(clip))
    frame, faces = next(annotate_frames(read_frames(capture, max_frames=1), model, config, fixed_box))
    capture.release()
    assert [(f["label"], f["three_way"]) for f in faces] == [("without_mask", "mask_incorrect")]
    assert frame[60, BOX[0]].tolist() == list(COLOURS["mask_incorrect"]) != list(COLOURS["without_mask"])


def test_process_video_writes_every_frame(tiny_run, clip, tmp_path):
    model, config = load_run(tiny_run)
    out = tmp_path / "out" / "annotated.mp4"
    stats = process_video(str(clip), model, config, fixed_box, out=out, show=False)
    assert (stats.frames, stats.faces) == (N_FRAMES, N_FRAMES) and stats.fps > 0
    capture = cv2.VideoCapture(str(out))
    frames = list(read_frames(capture))
    capture.release()
    assert len(frames) == N_FRAMES and frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert [p.name for p in out.parent.iterdir()] == ["annotated.mp4"], "no temporary file left behind"


def test_cli_headless_with_the_real_detector(tiny_run, clip, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    status = main(["video", "--source", str(clip), "--out-video", str(out), "--no-show", "--model", str(tiny_run),
                   "--detector", "haar", "--max-frames", "4"])
    assert status == 0 and out.stat().st_size > 0
    assert "4 frames" in capsys.readouterr().err


@pytest.mark.parametrize("make_source, message", [
    (lambda d: d / "missing.mp4", "missing.mp4: no such video file"),
    (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "notes.mp4"),
    (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty.mp4"),
])
def test_cli_bad_sources_are_named(tiny_run, tmp_path, capsys, make_source, message):
    source = make_source(tmp_path)
    status = main(["video", "--source", str(source), "--out-video", str(tmp_path / "o.mp4"), "--no-show", "--model", str(tiny_run)])
    err = capsys.readouterr().err
    assert status == 2 and message in err
    assert not (tmp_path / "o.mp4").exists()


def test_cli_no_show_needs_an_output(tiny_run, clip, capsys):
    assert main(["video", "--source", str(clip), "--no-show", "--model", str(tiny_run)]) == 2
    assert "--out-video" in capsys.readouterr().err


@pytest.mark.skipif("GUI:                           NONE" not in cv2.getBuildInformation()
                    and "GUI: NONE" not in " ".join(cv2.getBuildInformation().split()),
                    reason="this OpenCV has a GUI backend; opening a window needs a display")
def test_show_without_gui_support_says_what_to_do(tiny_run, clip):
    model, config = load_run(tiny_run)
    with pytest.raises(VideoError, match="--no-show"):
        process_video(str(clip), model, config, fixed_box, show=True, max_frames=1)
