"""Hostile and careless input (issue 14): each fixture is one input found to do harm.

Every command must answer bad input with an error that names the file or option and the
problem (exit status 2, no traceback), lose nothing already produced, and neither run
code nor exhaust the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maskclf.fsutil import atomic_dir

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
