"""Hostile and careless input (issue 14): each fixture is one input found to do harm.

Every command must answer bad input with an error that names the file or option and the
problem (exit status 2, no traceback), lose nothing already produced, and neither run
code nor exhaust the machine.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from maskclf import data, report
from maskclf.data import DataError, extract_faces, read_manifest
from maskclf.fsutil import atomic_dir
from maskclf.torch_pickle import TorchPickleError, load_torch_state_dict
from torchfiles import state_dict_pickle, write_legacy, write_zip
from cli_run import run_cli as _cli
from finders import unscored

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A Python process running `code` with this worktree's `maskclf` importable."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True, **kwargs)


# --------------------------------------------------------------------------- output folders


SWAPPER = """
    import sys
    from pathlib import Path
    from maskclf.fsutil import atomic_dir
    target, n = Path(sys.argv[1]), int(sys.argv[2])
    for i in range(n):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text(sys.argv[3])
            (tmp / "b").write_text(sys.argv[3])
"""


@pytest.fixture
def two_writers(tmp_path) -> list[subprocess.Popen]:
    """Two processes swapping the same output folder as fast as they can."""
    writers = [_python(SWAPPER, str(tmp_path / "out"), "1000", name, stderr=subprocess.PIPE) for name in "xy"]
    yield writers
    for w in writers:
        w.kill()
        w.wait()


def test_concurrent_writers_never_collide(two_writers, tmp_path):
    for w in two_writers:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err[-2000:]
    out = tmp_path / "out"
    assert (out / "a").read_text() == (out / "b").read_text() in ("x", "y"), "one writer's complete output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"], "no temporary folder left"


HOLDER = """
    import sys, time
    from maskclf.fsutil import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        (tmp / "half").write_text("written")
        print(tmp, flush=True)
        time.sleep(120)
"""


@pytest.fixture
def killed_and_live_writers(tmp_path) -> tuple[Path, Path]:
    """Temporary folders of `out`: one of a writer killed with -9, one of a writer still running."""
    live = _python(HOLDER, str(tmp_path / "out"), stdout=subprocess.PIPE)
    live_tmp = Path(live.stdout.readline().strip())
    killed = _python(HOLDER, str(tmp_path / "out"), stdout=subprocess.PIPE)
    dead_tmp = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    yield dead_tmp, live_tmp
    live.kill()
    live.wait()


def test_stale_temp_folders_are_swept_live_ones_kept(killed_and_live_writers, tmp_path):
    dead, live = killed_and_live_writers
    assert dead.is_dir() and live.is_dir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("ok")
    assert not dead.exists(), "the killed run's folder is swept"
    assert (live / "half").read_text() == "written", "the live writer's folder is kept"
    assert (tmp_path / "out" / "done").is_file()


@pytest.fixture
def output_is_a_file(tmp_path) -> Path:
    """A user's file where the output folder should go."""
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    return path


def test_atomic_dir_refuses_to_replace_a_file(output_is_a_file):
    with pytest.raises(FileExistsError, match="notes.txt"):
        with atomic_dir(output_is_a_file):
            pass
    assert output_is_a_file.read_text() == "my notes"
    assert sorted(p.name for p in output_is_a_file.parent.iterdir() if p.is_dir()) == []


# --------------------------------------------------------------------------- extract: the data set


def _set_filename(voc: Path, stem: str, filename: str) -> None:
    xml = voc / "annotations" / f"{stem}.xml"
    text = xml.read_text()
    xml.write_text(text.replace(f"<filename>{stem}.png</filename>", f"<filename>{filename}</filename>"))


def _secret_image(tmp_path: Path, voc: Path) -> Path:
    """An image outside the data set, of the same name and size as photo1.png."""
    secret = tmp_path / "secret" / "photo1.png"
    secret.parent.mkdir()
    secret.write_bytes((voc / "images" / "photo1.png").read_bytes())
    return secret


@pytest.fixture
def filename_climbing_out(voc_dir, tmp_path) -> Path:
    """photo1.xml's <filename> climbs out of images/ with '..'."""
    _secret_image(tmp_path, voc_dir)
    _set_filename(voc_dir, "photo1", "../../secret/photo1.png")
    return voc_dir


@pytest.fixture
def filename_absolute(voc_dir, tmp_path) -> Path:
    """photo1.xml's <filename> is an absolute path to an image elsewhere on disk."""
    _set_filename(voc_dir, "photo1", str(_secret_image(tmp_path, voc_dir)))
    return voc_dir


@pytest.fixture
def image_linked_outside(voc_dir, tmp_path) -> Path:
    """images/photo1.png is a symbolic link to an image elsewhere on disk."""
    secret = _secret_image(tmp_path, voc_dir)
    (voc_dir / "images" / "photo1.png").unlink()
    (voc_dir / "images" / "photo1.png").symlink_to(secret)
    return voc_dir


@pytest.mark.parametrize("fixture", ["filename_climbing_out", "filename_absolute", "image_linked_outside"])
def test_images_outside_the_data_set_are_refused(fixture, request, tmp_path):
    voc = request.getfixturevalue(fixture)
    with pytest.raises(DataError, match=r"photo1\.xml.*outside") as info:
        extract_faces(voc, tmp_path / "out", progress=False)
    assert str(voc / "annotations" / "photo1.xml") in str(info.value)
    result = extract_faces(voc, tmp_path / "out", skip_bad=True, progress=False)
    assert "photo1.png" not in set(result.manifest["source_image"]) and len(result.manifest) > 0
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert list(skipped["file"]) == [str(voc / "annotations" / "photo1.xml")]


@pytest.fixture
def manifest_pointing_outside(voc_master, tmp_path) -> Path:
    """An extraction whose faces.csv lists a crop outside its folder."""
    out = tmp_path / "faces"
    extract_faces(voc_master, out, progress=False)
    manifest = pd.read_csv(out / "faces.csv")
    manifest.loc[0, "crop_path"] = "../../../../../../etc/passwd"
    manifest.to_csv(out / "faces.csv", index=False)
    return out


def test_manifest_paths_outside_the_extraction_are_refused(manifest_pointing_outside):
    for read in (read_manifest, data.hash_extraction):
        with pytest.raises(DataError, match=r"faces\.csv: crop_path '\.\./.*' leads outside"):
            read(manifest_pointing_outside)


@pytest.fixture
def label_climbing_out() -> dict[str, str]:
    """A label map whose label is a path: crops would be written outside the output."""
    return {"with_mask": "../../escaped", "without_mask": "without_mask", "mask_weared_incorrect": "without_mask"}


def test_labels_that_are_paths_are_refused(label_climbing_out, voc_master, tmp_path):
    with pytest.raises(ValueError, match=r"label map: 'with_mask' -> '\.\./\.\./escaped'"):
        extract_faces(voc_master, tmp_path / "a" / "out", label_map=label_climbing_out, progress=False)
    assert not (tmp_path / "escaped").exists()


@pytest.fixture
def huge_annotation(voc_dir) -> Path:
    """photo1.xml padded past the size limit of an annotation."""
    xml = voc_dir / "annotations" / "photo1.xml"
    xml.write_text(xml.read_text().replace("<segmented>", "<!--" + "x" * data.MAX_XML_BYTES + "--><segmented>"))
    return voc_dir


@pytest.fixture
def annotation_with_too_many_boxes(voc_dir) -> Path:
    """photo1.xml with more boxes than any photo of faces holds: as many crops written."""
    xml = voc_dir / "annotations" / "photo1.xml"
    text = xml.read_text()
    box = text[text.index("<object>"): text.index("</object>") + len("</object>")]
    xml.write_text(text.replace(box, box * (data.MAX_OBJECTS + 1), 1))
    return voc_dir


@pytest.mark.parametrize("fixture, problem", [
    ("huge_annotation", "larger than the limit"), ("annotation_with_too_many_boxes", "more than the limit"),
])
def test_oversized_annotations_are_refused(fixture, problem, request, tmp_path):
    voc = request.getfixturevalue(fixture)
    with pytest.raises(DataError, match=rf"photo1\.xml: .*{problem}"):
        extract_faces(voc, tmp_path / "out", progress=False)


@pytest.fixture
def annotation_is_a_fifo(voc_dir) -> Path:
    """annotations/photo1.xml is a named pipe: reading it blocks forever."""
    xml = voc_dir / "annotations" / "photo1.xml"
    xml.unlink()
    os.mkfifo(xml)
    return voc_dir


def test_an_annotation_that_is_not_a_file_is_refused(annotation_is_a_fifo, tmp_path):
    run = _python("from maskclf.cli import main; raise SystemExit(main())", "extract", "--data",
                  str(annotation_is_a_fifo), "--faces-dir", str(tmp_path / "out"), stderr=subprocess.PIPE)
    try:
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 2 and "photo1.xml: not a regular file" in err and "Traceback" not in err


# --------------------------------------------------------------------------- extract: the command line




def _extract(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of `python -m maskclf extract ARGS`."""
    status, _, err = _cli(capsys, "extract", *args)
    return status, err


@pytest.fixture
def non_utf8_name(voc_dir) -> Path:
    """An annotation whose file name is not valid UTF-8."""
    (voc_dir / "annotations" / "photo3.xml").rename(voc_dir / "annotations" / os.fsdecode(b"photo\xff.xml"))
    return voc_dir


@pytest.fixture
def overflowing_coordinate(voc_dir) -> Path:
    """A box coordinate of 1e400: float('inf') once parsed."""
    xml = voc_dir / "annotations" / "photo3.xml"
    xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>1e400</xmax>", xml.read_text(), count=1))
    return voc_dir


@pytest.mark.parametrize("fixture, problem", [
    ("non_utf8_name", r"photo\xff.xml: the file name is not valid UTF-8"),
    ("overflowing_coordinate", "photo3.xml: object #0: <bndbox/xmax> is not a number, or not a finite one: '1e400'"),
])
def test_bad_files_are_named_errors_and_skippable(fixture, problem, request, tmp_path, capsys):
    voc = request.getfixturevalue(fixture)
    status, err = _extract(capsys, "--data", str(voc), "--faces-dir", str(tmp_path / "out"))
    assert status == 2 and problem in err
    assert not (tmp_path / "out").exists()
    status, err = _extract(capsys, "--data", str(voc), "--faces-dir", str(tmp_path / "out"), "--skip-bad")
    assert status == 0
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert len(skipped) == 1 and problem in skipped["problem"][0]


@pytest.fixture
def fewer_photos_than_folds(voc_dir) -> Path:
    """A data set of 3 photos, to be split into 5 folds."""
    for xml in sorted((voc_dir / "annotations").glob("*.xml"))[3:]:
        xml.unlink()
    return voc_dir


def test_fewer_photos_than_folds_is_a_named_error(fewer_photos_than_folds, tmp_path, capsys):
    status, err = _extract(capsys, "--data", str(fewer_photos_than_folds), "--faces-dir", str(tmp_path / "out"))
    assert status == 2 and f"{fewer_photos_than_folds}: faces from only 3 photos, fewer than the 5 folds" in err


@pytest.mark.parametrize("option, value", [
    ("--margin", "-1"), ("--margin", "nan"), ("--margin", "inf"), ("--margin", "ten"),
    ("--fold-seed", "-5"), ("--fold-seed", "1.5"), ("--fold-seed", str(2**32)),
    ("--label-map", "{x"), ("--label-map", "[1, 2]"), ("--label-map", '{"with_mask": 1}'),
    ("--label-map", '{"with_mask": "../up"}'), pytest.param("--label-map", "[" * 100_000, id="--label-map-deeply-nested"),
])
def test_bad_options_are_named_errors(option, value, voc_master, tmp_path, capsys):
    status, err = _extract(capsys, "--data", str(voc_master), "--faces-dir", str(tmp_path / "out"), option, value)
    assert status == 2 and f"argument {option}: " in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def output_is_a_link(tmp_path) -> Path:
    """A symbolic link where the output folder should go."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    return tmp_path / "link"


@pytest.mark.parametrize("fixture", ["output_is_a_file", "output_is_a_link"])
def test_extract_refuses_an_output_it_did_not_write(fixture, request, voc_master, capsys):
    out = request.getfixturevalue(fixture)
    before = sorted(out.parent.iterdir())
    status, err = _extract(capsys, "--data", str(voc_master), "--faces-dir", str(out))
    assert status == 2 and f"{out}: exists and is not a folder written by `maskclf extract`" in err
    assert sorted(out.parent.iterdir()) == before, "nothing renamed aside, nothing added"


# --------------------------------------------------------------------------- PyTorch weights files

LOADER = """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a file that asks for more fails here
    from maskclf.torch_pickle import load_torch_state_dict
    try:
        load_torch_state_dict(sys.argv[1])
    except ValueError as exc:
        print(exc)
        raise SystemExit(2)
"""


def _storage_pickle(shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    return state_dict_pickle({"w": ("0", "FloatStorage", 0, shape, stride)})


def _declare_size(path: Path, member: str, size: int) -> Path:
    """Make the zip's central directory declare `size` uncompressed bytes for `member`."""
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")
    while raw[entry + 46: entry + 46 + len(member)] != member.encode():
        entry = raw.index(b"PK\x01\x02", entry + 4)
    raw[entry + 24: entry + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def stride_zero_tensor(tmp_path) -> Path:
    """A tensor of 50000x50000 floats over a storage of one: 10 GB from a tiny file."""
    return write_zip(tmp_path / "stride0.pth", _storage_pickle((50_000, 50_000), (0, 0)), {"0": np.ones(1, np.float32)})


@pytest.fixture
def huge_shape(tmp_path) -> Path:
    """A 100000x100000 tensor whose every row repeats one storage of 100000 floats."""
    return write_zip(tmp_path / "huge.pth", _storage_pickle((100_000, 100_000), (0, 1)), {"0": np.zeros(100_000, np.float32)})


@pytest.fixture
def zip_bomb(tmp_path) -> Path:
    """A storage whose zip member declares 4 GB once decompressed."""
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _storage_pickle((4,), (1,)))
        archive.writestr("archive/data/0", bytes(1 << 20))
    return _declare_size(path, "archive/data/0", 0xFFFF_FFF0)


@pytest.fixture
def memo_bomb(tmp_path) -> Path:
    """A 9-byte pickle whose memo index makes the unpickler allocate and zero 4 GB."""
    return write_zip(tmp_path / "memo.pth", b"\x80\x02Nr" + struct.pack("<I", 0x0FFF_FFFF) + b".")


@pytest.fixture
def bytes_bomb(tmp_path) -> Path:
    """A pickle that declares a 1 TB bytes object (the unpickler allocates it before reading)."""
    return write_zip(tmp_path / "bytes.pth", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx.")


@pytest.fixture
def legacy_storage_bomb(tmp_path) -> Path:
    """A legacy file whose storage header declares 2**40 elements."""
    path = write_legacy(tmp_path / "legacy.pth", _storage_pickle((4,), (1,)), {"0": np.zeros(4, np.float32)})
    raw = path.read_bytes()
    header = raw.rindex(struct.pack("<q", 4))
    path.write_bytes(raw[:header] + struct.pack("<q", 1 << 40) + raw[header + 8:])
    return path


@pytest.mark.parametrize("fixture, problem", [
    ("stride_zero_tensor", "overruns its storage of 1 elements"),
    ("huge_shape", "overruns its storage of 100000 elements"),
    ("zip_bomb", "its storages declare 4294967280 bytes, over the limit"),
    ("memo_bomb", "memo index 268435455 at opcode 2 is out of range"),
    ("bytes_bomb", "bytes8"),
    ("legacy_storage_bomb", "truncated"),
])
def test_weights_files_cannot_exhaust_memory(fixture, problem, request):
    path = request.getfixturevalue(fixture)
    run = _python(LOADER, str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    assert out.startswith(f"{path}: not a readable PyTorch state dict (") and problem in out


@pytest.fixture
def compressed_storage(tmp_path) -> Path:
    """A valid file whose 64 MB storage compresses to 64 kB."""
    path = tmp_path / "dense.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _storage_pickle((1 << 24,), (1,)))
        archive.writestr("archive/data/0", bytes(1 << 26))
    return path


def test_weights_files_are_read_within_a_limit(compressed_storage):
    assert load_torch_state_dict(compressed_storage)["w"].shape == (1 << 24,)
    with pytest.raises(TorchPickleError, match=r"dense\.pth: .*its storages declare 67108864 bytes, over the limit of 1048576"):
        load_torch_state_dict(compressed_storage, max_bytes=1 << 20)


# --------------------------------------------------------------------------- reports


def _reports(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of `python -m maskclf reports ARGS`."""
    status, _, err = _cli(capsys, "reports", *args)
    return status, err


@pytest.fixture
def no_notebook_runs(monkeypatch):
    """Fail the test if a notebook starts: the inputs below must be refused before any runs."""
    def run_notebook(notebook, *args, **kwargs):
        pytest.fail(f"{notebook.name} ran")

    monkeypatch.setattr(report, "run_notebook", run_notebook)


@pytest.fixture
def missing_params_file(tmp_path) -> Path:
    """A --params file that does not exist."""
    return tmp_path / "missing.yaml"


@pytest.fixture
def alias_bomb_params(tmp_path) -> Path:
    """A 600-byte YAML file whose aliases expand to 10**9 values."""
    levels = ["    - &a0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n  compare:\n" + "\n".join(levels) + "\n")
    return path


@pytest.mark.parametrize("fixture, problem", [
    ("missing_params_file", "missing.yaml: parameter file not found"),
    ("alias_bomb_params", "parameter 'compare': more than 100000 values"),
])
def test_bad_parameter_files_are_named_errors(fixture, problem, request, tmp_path, no_notebook_runs, capsys):
    params = request.getfixturevalue(fixture)
    status, err = _reports(capsys, "--params", str(params), "--reports-dir", str(tmp_path / "reports"))
    assert status == 2 and problem in err


@pytest.mark.parametrize("override, problem", [
    ("backbone=[x", "argument -p/--param: -p backbone: not valid YAML/JSON"),
    ("backbon=resnet50", "unknown parameter(s) ['backbon']; known: "),
    ("run_name=2024-01-01", "parameter 'run_name': datetime.date(2024, 1, 1) is a date"),
    ("cross_validate=false", "parameter 'cross_validate' is off, but 04_error_analysis needs"),
])
def test_bad_parameters_are_refused_before_any_notebook_runs(override, problem, tmp_path, no_notebook_runs, capsys):
    status, err = _reports(capsys, "-p", override, "--reports-dir", str(tmp_path / "reports"))
    assert status == 2 and problem in err


def test_reports_refuse_a_missing_data_set(tmp_path, no_notebook_runs, capsys):
    status, err = _reports(capsys, "--data", str(tmp_path / "nowhere"), "--reports-dir", str(tmp_path / "reports"))
    assert status == 2 and f"{tmp_path / 'nowhere'}: not a Face Mask Detection folder" in err


@pytest.fixture
def foreign_folder(tmp_path) -> Path:
    """A folder of the user's own where the reports should go."""
    path = tmp_path / "Documents"
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


@pytest.mark.parametrize("fixture", ["output_is_a_file", "output_is_a_link", "foreign_folder"])
def test_reports_refuse_an_output_they_did_not_write(fixture, request, no_notebook_runs, capsys):
    out = request.getfixturevalue(fixture)
    before = {p: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    status, err = _reports(capsys, "--reports-dir", str(out))
    assert status == 2 and f"{out}: exists" in err and "written by `maskclf reports`; refusing to replace it" in err
    assert {p: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()} == before


@pytest.fixture
def dying_kernel(tmp_path) -> Path:
    """A notebook folder whose one notebook kills its kernel, as running out of memory does."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    params = nbformat.v4.new_code_cell("worst_n = 1")
    params.metadata["tags"] = ["parameters"]
    cells = [params, nbformat.v4.new_code_cell("print(worst_n)"), nbformat.v4.new_code_cell("import os; os._exit(9)")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "01_dies.ipynb")
    return nbs


def test_a_dead_kernel_is_a_failed_notebook(dying_kernel, tmp_path, monkeypatch, capsys):
    reports = tmp_path / "reports"
    (reports / "executed").mkdir(parents=True)
    (reports / "index.html").write_text("the previous reports")
    run = functools.partial(report.run_reports, notebooks=("01_dies",), notebooks_dir=dying_kernel, progress=False)
    monkeypatch.setattr(report, "run_reports", run)
    (tmp_path / "params.yaml").write_text("error_analysis:\n  worst_n: 2\n")
    status, err = _reports(capsys, "--params", str(tmp_path / "params.yaml"), "--reports-dir", str(reports))
    kept = reports / "_build" / "01_dies.failed.ipynb"
    assert status == 1, err
    # the dying cell's number is whatever the kernel had counted when it died (3 or 4 after the injected parameters)
    assert re.search(r"01_dies\.ipynb failed in cell \d+ \(DeadKernelError", err) and f"executed notebook: {kept}" in err
    assert f"the previous reports in {reports} are unchanged" in err
    assert kept.is_file() and (reports / "index.html").read_text() == "the previous reports"


def test_a_model_is_never_saved_over_a_foreign_folder(foreign_folder):
    from tinymodel import make_tiny_run

    with pytest.raises(FileExistsError, match="Documents: exists, is not empty and has no config.json"):
        make_tiny_run(foreign_folder)
    assert [p.name for p in foreign_folder.iterdir()] == ["thesis.tex"]


# --------------------------------------------------------------------------- the demo


def _png(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


class Recorder:
    """A face detector that records the shape of every image it gets and finds `boxes` in each."""

    def __init__(self, boxes=((100, 100, 200, 200),)):
        self.boxes, self.shapes = list(boxes), []

    def __call__(self, image: np.ndarray) -> list:
        self.shapes.append(image.shape)
        return self.boxes


class Blocker(Recorder):
    """A face detector that holds its caller until released."""

    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, image: np.ndarray) -> list:
        self.started.set()
        assert self.release.wait(30)
        return super().__call__(image)


def _client(tiny, detector, **kwargs) -> TestClient:
    """The demo of the tiny model with `detector` (and `large_detector`) as FaceFinders of detectors without scores."""
    from maskclf.demo import create_app

    model, config = tiny
    if kwargs.get("large_detector") is not None:
        kwargs["large_detector"] = unscored(kwargs["large_detector"])
    return TestClient(create_app(model, config, unscored(detector), **kwargs), raise_server_exceptions=False)


def _upload(client: TestClient, name: str, data: bytes):
    return client.post("/api/predict", files={"file": (name, data, "image/png")})


@pytest.fixture(scope="module")
def grey_4000_png() -> bytes:
    """A 56 KB PNG of 4000x4000 grey pixels: one such upload took 25 s and 6 GB of the demo."""
    return _png(Image.new("L", (4000, 4000), 128))


@pytest.fixture(scope="module")
def grey_7990_png() -> bytes:
    """A 205 KB PNG of 7990x7990 grey pixels, under the old 64-Mpx limit: it took the demo down."""
    return _png(Image.new("L", (7990, 7990), 128))


def test_demo_detects_faces_of_a_large_upload_on_a_bounded_copy(tiny, grey_4000_png):
    from maskclf.images import WORK_SIDE

    detector = Recorder()
    reply = _upload(_client(tiny, detector), "big.png", grey_4000_png)
    assert reply.status_code == 200, reply.text
    assert max(max(shape[:2]) for shape in detector.shapes) <= WORK_SIDE
    factor = WORK_SIDE / 4000
    assert reply.json()["faces"][0]["box"] == [round(v / factor) for v in (100, 100, 200, 200)], "in the upload's pixels"
    drawn = Image.open(io.BytesIO(base64.b64decode(reply.json()["image"].split(",", 1)[1])))
    assert drawn.width <= WORK_SIDE


def test_demo_refuses_an_image_too_large_to_decode(tiny, grey_7990_png):
    detector = Recorder()
    reply = _upload(_client(tiny, detector), "bomb.png", grey_7990_png)
    assert reply.status_code == 413 and "bomb.png" in reply.json()["error"] and "megapixels" in reply.json()["error"]
    assert detector.shapes == [], "never decoded nor detected"


@pytest.fixture
def blocked_large_lane():
    """A detector for large uploads that holds the first one until the test releases it."""
    blocker = Blocker()
    yield blocker
    blocker.release.set()


def test_demo_answers_normal_photos_while_a_large_upload_is_analysed(tiny, blocked_large_lane, grey_4000_png):
    from maskclf.demo import Lanes

    client = _client(tiny, Recorder(), large_detector=blocked_large_lane, lanes=Lanes(wait_s=0.5, max_waiting=4))
    first = threading.Thread(target=_upload, args=(client, "big.png", grey_4000_png))
    first.start()
    assert blocked_large_lane.started.wait(30)
    normal = _upload(client, "photo.png", _png(np.full((300, 400, 3), 90, np.uint8)))
    assert normal.status_code == 200, "a normal photo does not wait behind a large upload"
    busy = _upload(client, "big2.png", grey_4000_png)
    assert busy.status_code == 503 and "busy" in busy.json()["error"]
    blocked_large_lane.release.set()
    first.join(30)


def test_demo_refuses_requests_past_the_queue_at_once(tiny, blocked_large_lane):
    from maskclf.demo import Lanes

    client = _client(tiny, blocked_large_lane, lanes=Lanes(wait_s=30, max_waiting=0))
    first = threading.Thread(target=_upload, args=(client, "a.png", _png(np.full((30, 40, 3), 90, np.uint8))))
    first.start()
    assert blocked_large_lane.started.wait(30)
    start = time.monotonic()
    busy = _upload(client, "b.png", _png(np.full((30, 40, 3), 90, np.uint8)))
    assert busy.status_code == 503 and "busy" in busy.json()["error"] and time.monotonic() - start < 5
    blocked_large_lane.release.set()
    first.join(30)


@pytest.fixture
def chunked_200_mb():
    """A 200 MB upload sent in 64 KB chunks without Content-Length, counting the chunks read."""
    head = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunk = bytes(64 * 1024)
    pulled = []

    async def receive() -> dict:
        pulled.append(len(head) if not pulled else len(chunk))
        if len(pulled) * len(chunk) >= 200 << 20:
            return {"type": "http.request", "body": b"\r\n--x--\r\n", "more_body": False}
        return {"type": "http.request", "body": head if len(pulled) == 1 else chunk, "more_body": True}

    return receive, pulled


def test_demo_stops_reading_a_chunked_upload_at_the_limit(tiny, chunked_200_mb):
    from maskclf.demo import create_app

    receive, pulled = chunked_200_mb
    model, config = tiny
    app = create_app(model, config, unscored(Recorder()), max_bytes=1 << 20)
    sent = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"larger than 1 MB" in b"".join(m.get("body", b"") for m in sent[1:])
    assert sum(pulled) <= (1 << 20) + 2 * 64 * 1024 + 64 * 1024, "reading stopped at the limit"


@pytest.fixture
def one_pixel_png() -> bytes:
    """A 1x1 image: it was classified at p=0.60 with no warning."""
    return _png(np.full((1, 1, 3), 200, np.uint8))


def test_demo_flags_faces_too_small_to_classify(tiny, one_pixel_png):
    reply = _upload(_client(tiny, Recorder([(0, 0, 1, 1)])), "dot.png", one_pixel_png)
    face = reply.json()["faces"][0]
    assert reply.status_code == 200 and face["small_face"] is True and "under 16 px" in face["warning"]
    assert "too small" in reply.json()["message"]
    from maskclf.demo import PAGE

    assert "face.small_face" in PAGE, "the page's table shows the warning"


# --------------------------------------------------------------------------- predict, video, export


@pytest.fixture
def no_model_loaded(monkeypatch):
    """Fail the test if a model is loaded: the inputs below must be refused before any work."""
    from maskclf import export, predict, video

    def resolve_model(*args, **kwargs):
        pytest.fail("the model was loaded before the output was checked")

    for module in (predict, video, export):
        monkeypatch.setattr(module, "resolve_model", resolve_model)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def out_is_a_folder(tmp_path) -> Path:
    """An existing folder given as the output file: the results were lost after all the work."""
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


@pytest.mark.parametrize("command, option", [("predict", "--jsonl"), ("video", "--out-video")])
def test_an_output_file_that_is_a_folder_is_refused_before_the_work(command, option, out_is_a_folder, photo,
                                                                    no_model_loaded, capsys):
    args = [photo, "--crops"] if command == "predict" else ["--source", photo, "--no-show"]
    status, _, err = _cli(capsys, command, *args, option, out_is_a_folder)
    assert status == 2 and f"{option} {out_is_a_folder}: is a folder" in err and "Traceback" not in err


@pytest.fixture
def export_is_a_file(tiny_run, tmp_path) -> Path:
    """A run folder whose export/ is a file: the exports failed after the work."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "export").write_text("my notes")
    return run


def test_export_refuses_outputs_it_cannot_write_before_the_work(export_is_a_file, no_model_loaded, capsys):
    status, _, err = _cli(capsys, "export", "--model", export_is_a_file, "--format", "onnx", "--check-limit", "1")
    assert status == 2 and f"{export_is_a_file / 'export'} is not a folder" in err
    assert (export_is_a_file / "export").read_text() == "my notes"


@pytest.fixture
def same_names_in_two_folders(tmp_path) -> Path:
    """in/a/x.png and in/b/x.png, two different crops: their annotated copies overwrote each other."""
    for sub, colour in (("a", (0, 200, 0)), ("b", (220, 10, 10))):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(tmp_path / "in" / sub / "x.png")
    return tmp_path / "in"


def test_draw_keeps_the_inputs_folder_structure(same_names_in_two_folders, tiny_run, tmp_path, capsys):
    status, _, err = _cli(capsys, "predict", same_names_in_two_folders, "--crops", "--model", tiny_run,
                          "--draw", tmp_path / "drawn")
    assert status == 0, err
    assert sorted(p.relative_to(tmp_path / "drawn").as_posix() for p in (tmp_path / "drawn").rglob("*.png")) == [
        "a/x.drawn.png", "b/x.drawn.png"]


@pytest.mark.parametrize("draw, problem", [
    ("in", "is inside the input folder"), ("in/a/annotated", "is inside the input folder"),
])
def test_draw_inside_an_input_folder_is_refused(draw, problem, same_names_in_two_folders, no_model_loaded, tmp_path,
                                                capsys):
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status, _, err = _cli(capsys, "predict", same_names_in_two_folders, "--crops", "--draw", tmp_path / draw)
    assert status == 2 and f"--draw {tmp_path / draw}: {problem}" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_draw_never_replaces_an_input_file(same_names_in_two_folders, no_model_loaded, capsys):
    photo = same_names_in_two_folders / "a" / "x.png"
    drawing = shutil.copy(photo, photo.with_name("x.drawn.png"))  # an earlier drawing, given as an input
    before = photo.read_bytes()
    status, _, err = _cli(capsys, "predict", photo, drawing, "--crops", "--draw", photo.parent)
    assert status == 2 and f"the annotated copy of {photo} would replace the input" in err
    assert photo.read_bytes() == before and Path(drawing).read_bytes() == before


def _edit_config(run: Path, **changes) -> Path:
    config = json.loads((run / "config.json").read_text())
    config.update(changes)
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return run


@pytest.fixture
def config_without_image_size(tiny_run, tmp_path) -> Path:
    """A run folder whose config.json lacks image_size: KeyError."""
    return _edit_config(Path(shutil.copytree(tiny_run, tmp_path / "run")), image_size=None)


@pytest.fixture
def config_with_a_wrong_image_size(tiny_run, tmp_path) -> Path:
    """A run folder whose config.json names 64-px crops for a model of 32-px ones: ValueError."""
    return _edit_config(Path(shutil.copytree(tiny_run, tmp_path / "run")), image_size=64)


@pytest.fixture
def config_with_a_text_image_size(tiny_run, tmp_path) -> Path:
    """A run folder whose config.json says "32" (text) for image_size."""
    return _edit_config(Path(shutil.copytree(tiny_run, tmp_path / "run")), image_size="32")


@pytest.fixture
def truncated_model(tiny_run, tmp_path) -> Path:
    """A run folder whose model.keras was cut in half (an interrupted copy): "File not found"."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 2])
    return run


@pytest.mark.parametrize("fixture, problem", [
    ("config_without_image_size", "config.json: 'image_size' must be a whole number of pixels from 1 to 1024, got None"),
    ("config_with_a_wrong_image_size", "config.json: 'image_size' is 64, but the model takes 32x32 crops"),
    ("config_with_a_text_image_size", "config.json: 'image_size' must be a whole number of pixels from 1 to 1024, got '32'"),
    ("truncated_model", "model.keras: not a complete Keras archive (truncated or corrupt)"),
])
def test_a_broken_run_folder_is_a_named_error(fixture, problem, request, photo, capsys):
    run = request.getfixturevalue(fixture)
    status, _, err = _cli(capsys, "predict", photo, "--crops", "--model", run)
    assert status == 2 and problem in err and "Traceback" not in err


@pytest.fixture
def photo_8000_px(tmp_path) -> Path:
    """An 8000x8000 photo: the face detector crashed with SIGSEGV under a 10 GB cap."""
    path = tmp_path / "huge.png"
    Image.new("L", (8000, 8000), 128).save(path)
    return path


def test_predict_detects_faces_of_a_huge_photo_on_a_bounded_copy(photo_8000_px, tiny_run, monkeypatch, capsys):
    from maskclf.images import WORK_SIDE

    from maskclf import predict

    detector = Recorder()
    monkeypatch.setattr(predict, "make_face_finder", lambda *args, **kwargs: unscored(detector))
    status, out, err = _cli(capsys, "predict", photo_8000_px, "--model", tiny_run)
    assert status == 0, err
    assert max(max(shape[:2]) for shape in detector.shapes) <= WORK_SIDE
    face = json.loads(out.splitlines()[0])
    assert face["box"] == [round(v * 8000 / WORK_SIDE) for v in (100, 100, 200, 200)], "in the photo's pixels"


def test_video_frames_are_detected_on_a_bounded_copy(tiny):
    from maskclf.images import WORK_SIDE

    from maskclf.video import annotate_frames

    detector = Recorder()
    model, config = tiny
    frames = iter([np.full((2000, 3000, 3), 90, np.uint8)])
    _, faces = next(annotate_frames(frames, model, config, unscored(detector)))
    assert max(detector.shapes[0][:2]) <= WORK_SIDE and faces[0]["box"][2] == round(200 * 3000 / WORK_SIDE)


@pytest.fixture
def one_pixel_crop(tmp_path) -> Path:
    """A 1x1 image: it was classified at p=0.60 with no warning."""
    path = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(path)
    return path


def test_predict_flags_faces_too_small_to_classify(one_pixel_crop, tiny_run, capsys):
    status, out, err = _cli(capsys, "predict", one_pixel_crop, "--crops", "--model", tiny_run)
    face = json.loads(out.splitlines()[0])
    assert status == 0 and face["small_face"] is True and face["warning"].startswith("face of 1x1 px, under 16 px")
    assert "1 face under 16 px" in err


@pytest.fixture
def draw_is_a_file(tmp_path) -> Path:
    """A file of the user's where the --draw folder should go."""
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    return path


def test_a_draw_folder_that_is_a_file_is_refused_before_the_work(draw_is_a_file, photo, no_model_loaded, capsys):
    status, _, err = _cli(capsys, "predict", photo, "--crops", "--draw", draw_is_a_file)
    assert status == 2 and f"--draw {draw_is_a_file}: " in err and "is not a folder" in err
    assert draw_is_a_file.read_text() == "my notes"


@pytest.mark.parametrize("command, option", [("predict", "--jsonl"), ("video", "--out-video")])
def test_an_output_that_is_the_input_is_refused(command, option, photo, no_model_loaded, capsys):
    before = photo.read_bytes()
    args = [photo, "--crops"] if command == "predict" else ["--source", photo, "--no-show"]
    status, _, err = _cli(capsys, command, *args, option, photo)
    assert status == 2 and f"{option} {photo}: is " in err and "would replace it" in err
    assert photo.read_bytes() == before
