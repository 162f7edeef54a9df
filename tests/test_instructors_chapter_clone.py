"""The chapter for instructors can be followed literally in a fresh clone: the shell commands of
its block ``instructors-in-a-clone`` run, as written, in a copy of the repository and produce what
the chapter says they do.

Two lines are the set-up this test already has: ``make install`` (this checkout's ``.venv`` is
reused rather than built again) and ``source .venv/bin/activate`` (the same ``.venv`` goes first on
PATH). The copy holds the repository's files (tracked and untracked, as ``git`` lists them); its
``bncourse`` package folder is a link to this checkout's, the one the reused ``.venv`` imports,
so that the grader and the sandboxed kernels see the same package, as in a clone with its own
``.venv``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "instructors.md"
SET_UP = {"make install", "source .venv/bin/activate"}
ASSIGNMENT = "ps01_batchnorm"


def chapter_commands() -> list[str]:
    """The lines of the chapter's code block named ``instructors-in-a-clone``."""
    text = CHAPTER.read_text()
    match = re.search(
        r"```\{code-block\} bash\n:name: instructors-in-a-clone\n\n(.*?)```", text, re.S
    )
    assert match, "the chapter has no block named instructors-in-a-clone"
    return [line for line in match.group(1).splitlines() if line.strip()]


def copy_of_repository(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file() and not src.is_symlink():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    shutil.rmtree(dest / "bncourse")
    (dest / "bncourse").symlink_to(ROOT / "bncourse", target_is_directory=True)
    return dest


def test_the_block_starts_with_the_set_up_then_runs_course_commands() -> None:
    commands = chapter_commands()
    assert commands[: len(SET_UP)] == ["make install", "source .venv/bin/activate"]
    assert any(c.startswith("bncourse grade ") for c in commands)


@pytest.mark.slow
def test_the_chapters_commands_run_in_a_copy_of_the_repository(tmp_path) -> None:
    clone = copy_of_repository(tmp_path / "clone")
    script = [c for c in chapter_commands() if c not in SET_UP]
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(clone / "grades.csv", newline="") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh) if r["assignment"] == ASSIGNMENT}
    assert set(rows) == {"ada", "bo"}
    with Gradebook(f"sqlite:///{clone / 'gradebook.db'}") as gb:
        top = {
            c.name: c.max_score
            for nb in gb.find_assignment(ASSIGNMENT).notebooks
            for c in nb.grade_cells
        }
    parts = [c for c in rows["ada"] if c in top]
    assert sorted(parts) == sorted(top), "grades.csv needs a column per graded part"
    assert {p: float(rows["ada"][p]) for p in parts} == top  # full marks on every part
    assert float(rows["ada"]["score"]) == float(rows["ada"]["max_score"]) == sum(top.values())
    assert float(rows["bo"]["score"]) == 0 and all(float(rows["bo"][p]) == 0 for p in parts)
    for name in (
        f"report-{ASSIGNMENT}.html",
        f"canvas-{ASSIGNMENT}.csv",
        f"moodle-{ASSIGNMENT}.csv",
    ):
        assert (clone / name).is_file(), name
    assert "<svg" in (clone / f"report-{ASSIGNMENT}.html").read_text()
    for student in ("ada", "bo"):
        assert list((clone / "feedback" / student / ASSIGNMENT).glob("*.html")), student
