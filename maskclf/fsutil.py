"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
"""OSErrors of a write that says the disk is full, over quota or failing: OutputError names the file."""


class OutputError(OSError):
    """A file or folder could not be written whole; the message names it and says that the previous one is kept."""


@contextmanager
def atomic_path(target: str | Path, suffix: str = "", check: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    `check(tmp)` (e.g. `reads_back(kind)`) says what is wrong with the file written, or None: a
    file an encoder left incomplete (a full disk makes some encoders only warn) is refused before
    the swap. On an exception the temporary file is removed and `target` is untouched; a full disk
    and a failed check are OutputErrors naming `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _naming_write_errors(target):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        with _naming_write_errors(target):
            yield tmp_path
            problem = check(tmp_path) if check is not None else None
            if problem:
                raise OutputError(f"{target}: the file written does not read back ({problem}); most often the disk "
                                  f"is full. {_kept(target)}")
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def _naming_write_errors(target: Path, folder: bool = False) -> Iterator[None]:
    """Re-raise a full disk's OSError (WRITE_ERRNOS) as an OutputError naming `target`; for a `folder`
    (atomic_dir), also an OutputError about a file inside it."""
    try:
        yield
    except OSError as exc:
        inner = isinstance(exc, OutputError)
        if (inner and not folder) or (not inner and exc.errno not in WRITE_ERRNOS):
            raise
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        error = OutputError(f"{target}: cannot be written ({why}). {_kept(target)}")
        error.errno = exc.errno
        raise error from exc


def _kept(target: Path) -> str:
    return f"The previous {target} is unchanged." if target.exists() else "Nothing was written there."


def reads_back(kind: str, frames: int | None = None) -> Callable[[Path], str | None]:
    """A `check` for atomic_path: the file reads back whole as `kind` ("image", "video" of `frames` frames,
    "npz", "onnx", "tflite"); what is wrong with it, or None."""
    if kind not in READERS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(READERS)}")

    def check(path: Path) -> str | None:
        if path.stat().st_size == 0:
            return "0 bytes"
        try:
            count = READERS[kind](path)
        except Exception as exc:  # noqa: BLE001  each decoder raises its own types for a cut file
            return f"{type(exc).__name__}: {exc}"
        if frames is not None and count != frames:
            return f"{count} of the {frames} frames"
        return None

    return check


def _read_image(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
    return 1


def _read_video(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV cannot open it")
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def _read_npz(path: Path) -> int:
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return len([archive[name] for name in archive.files])


def _read_onnx(path: Path) -> int:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    return 1


def _read_tflite(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=str(path)).allocate_tensors()
    return 1


READERS: dict[str, Callable[[Path], int]] = {
    "image": _read_image, "video": _read_video, "npz": _read_npz, "onnx": _read_onnx, "tflite": _read_tflite,
}
"""Kind of encoded file -> a reader that decodes it whole (raising if it cannot) and counts its frames."""


def output_file_problem(target: str | Path) -> str | None:
    """Why a file cannot be written at `target`, starting with its name, or None if it can.

    Checked before long work starts, so that its results are not lost at the end.
    """
    target = Path(target)
    if target.is_dir():
        return f"{target}: is a folder; give a file name"
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{target}: {parent} is not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{target}: no permission to write in {parent}"
            return None
    return None


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write `text` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def json_text(obj: Any) -> str:
    """`obj` as the project writes JSON: indented, keys sorted, NumPy values and paths converted."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json_atomic(target: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `target` atomically."""
    return write_text_atomic(target, json_text(obj))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextmanager
def atomic_dir(target: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success swap it in place of `target`.

    The previous `target` (if any) stays intact until the new one is complete, so an
    interrupted build leaves the old output, and a finished one leaves no stale files.
    Swaps are serialised by a lock on `target`, so concurrent writers never collide, and
    temporary folders left by killed runs are swept (never those of a live writer).
    `target` must be a folder or not exist: a file or a link there is refused, and so is,
    given a `marker` file name, a non-empty folder without it (one this code did not write).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        _refuse_foreign(target, marker)
        _sweep_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
        tmp_fd = _lock_fd(tmp)  # held while the folder is built: marks it as a live writer's
    try:
        with _naming_write_errors(target, folder=True):
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            with _locked(target):
                _refuse_foreign(target, marker)
                _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(tmp_fd)


def _sweep_stale(target: Path) -> None:
    """Remove the temporary and old folders of `target` left by killed runs.

    A live writer holds a lock on its temporary folder, so its folder is kept. Called
    with `target`'s lock held, when no swap (and so no old folder) is in progress.
    """
    for path in target.parent.iterdir():
        if not path.name.startswith((_tmp_prefix(target), _old_prefix(target))) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = _lock_fd(path, blocking=False)
        except (BlockingIOError, FileNotFoundError):
            continue  # a live writer's, or already gone
        try:
            shutil.rmtree(path)
        finally:
            os.close(fd)


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def _refuse_foreign(target: Path, marker: str | None) -> None:
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise FileExistsError(f"{target}: exists and is {kind}; refusing to replace it")
    if marker and not (target / marker).exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: exists, is not empty and has no {marker}, so it was not written here; refusing to replace it")


def _swap_in(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f"{_old_prefix(target)}{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `target` (a lock file beside it) for the duration."""
    lock = target.with_name(f".{target.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lock_fd(folder: Path, blocking: bool = True) -> int:
    """Open `folder` and lock it exclusively; the lock lasts until the descriptor is closed."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[str | Path]) -> str:
    """Hex digest of the names and contents of files, in order, read in chunks.

    A path that is not a regular file (a FIFO, a device, a folder) counts by its name only,
    and is never opened: it cannot block or flood the hash.
    """
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(path.name.encode("utf-8", "surrogateescape") + b"\0")
        if not path.is_file():
            digest.update(b"\0not a regular file\0")
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:20]
