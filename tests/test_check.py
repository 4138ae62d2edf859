"""scripts/check gives the same verdict in a plain checkout as in CI.

CI runs it after an editable install; a contributor may run it from a fresh clone with only PYTHONPATH,
or with nothing at all. mypy treats a directory on the interpreter's path as installed packages and
hides their errors, which once let 24 type errors in trial_keeper pass in CI and fail elsewhere.
Here the checks run in a copy of the working tree (what `git clone` gives, plus uncommitted changes),
clean and then with one type error planted in trial_keeper, with and without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _plain_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def _check(tree: Path, *, pythonpath: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPY_CACHE_DIR")}
    if pythonpath:
        env["PYTHONPATH"] = str(tree)
    return subprocess.run(
        ["bash", str(tree / "scripts" / "check")], cwd=tree, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_check_verdict_does_not_depend_on_the_install(tmp_path: Path) -> None:
    tree = _plain_copy(tmp_path / "clone")
    clean = _check(tree, pythonpath=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checks passed" in clean.stdout.splitlines()

    journal = tree / "trial_keeper" / "journal.py"
    journal.write_text(journal.read_text() + "\n\n_PLANTED = 1  # type: str\n")
    for pythonpath in (True, False):
        broken = _check(tree, pythonpath=pythonpath)
        assert broken.returncode != 0, f"PYTHONPATH={pythonpath}: {broken.stdout}{broken.stderr}"
        # mypy's error, not ruff's: the planted line is formatted and lint-clean.
        assert "trial_keeper/journal.py:" in broken.stdout, broken.stdout + broken.stderr
        assert "Incompatible types in assignment" in broken.stdout
        assert "checks passed" not in broken.stdout.splitlines()
