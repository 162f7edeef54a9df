"""A student who found the course online: the student install in a fresh virtual environment
(no dev tools, not the repository's .venv), and work in an empty folder outside the repository.

Every exercise, answered, runs there and `bncourse check` gives it full marks; unanswered, zero;
a wrong answer gets exactly the per-part scores of the instructor's autograder. Every chapter,
as the built site offers it for download, runs top to bottom there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from book_site import site_dir
from submissions import answers, edited, read_source, submission

from bncourse.instructor.check import grade_notebook

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
DEV_ONLY = ("jupyter-book", "myst-nb", "pytest", "playwright", "ruff", "psycopg2-binary")

pytestmark = pytest.mark.slow


@dataclass
class StudentEnv:
    """The fresh environment and an empty working folder outside the repository."""

    bin: Path
    work: Path
    env: dict[str, str]
    install_seconds: float
    size_mb: float

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 900):
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd or self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _build_wheel(dest: Path) -> Path:
    """The package's wheel, built from a copy of what the package ships (the checkout untouched)."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "bncourse", src / "bncourse", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["-w", str(dest / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    return next((dest / "dist").glob("bncourse-*.whl"))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> StudentEnv:
    root = tmp_path_factory.mktemp("student")
    wheel = _build_wheel(root)
    venv = root / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    start = time.perf_counter()
    # the README's line installs the same package and extra from the release tag; here it comes
    # from the wheel of this checkout, and torch is the CPU build installed first
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile"]
        + ["-c", str(REPO / "constraints.txt"), "torch==2.13.0", f"{wheel}[check]"],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    work = root / "Downloads"
    work.mkdir()
    home = root / "home"
    home.mkdir()
    repo_bin = str(Path(sys.executable).parent)
    path = [str(venv / "bin")] + [
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != repo_bin
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=os.pathsep.join(path), HOME=str(home), VIRTUAL_ENV=str(venv))
    env.pop("BNCOURSE_CACHE", None)
    print(f"\nstudent install: {seconds:.1f} s, {size / 2**20:.0f} MiB")
    return StudentEnv(venv / "bin", work, env, seconds, size / 2**20)


def test_the_student_install_has_the_package_and_its_check_but_no_dev_tools(student) -> None:
    listed = student.run("python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"bncourse", "torch", "nbgrader", "ipykernel"} <= names
    assert not names & set(DEV_ONLY), names & set(DEV_ONLY)
    where = student.run("python", "-c", "import bncourse; print(bncourse.__file__)")
    assert str(student.bin.parent) in where.stdout, where  # not the repository's source tree
    setup = student.run("python", "-c", _setup_cell_with_pip_refused())
    assert setup.returncode == 0, setup.stderr  # the set-up cell does nothing here


def _setup_cell_with_pip_refused() -> str:
    from bncourse.distribution import setup_cell_source

    refuse = (
        "import subprocess\nsubprocess.run = lambda *a, **k: (_ for _ in ()).throw(SystemExit(3))\n"
    )
    return refuse + setup_cell_source()


def _check(student: StudentEnv, path: Path) -> tuple[int, dict[str, float], str]:
    """``bncourse check`` in the student's folder: exit status, points per part, output."""
    done = student.run("bncourse", "check", path.name, cwd=path.parent)
    points = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r"^(test_\w+|\w+)\s+([\d.]+)\s+[\d.]+\s+(?:pass|FAIL)$", done.stdout, re.M
        )
    }
    return done.returncode, points, done.stdout + done.stderr


def _execute(student: StudentEnv, path: Path) -> subprocess.CompletedProcess:
    """Run the notebook top to bottom as Jupyter does, saving its outputs in place."""
    return student.run(
        "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
        "--ExecutePreprocessor.timeout=600", path.name, cwd=path.parent,
    )  # fmt: skip


def _points(assignment: str) -> dict[str, float]:
    source = read_source(assignment)
    return {
        c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"])
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    }


def _work_on(student: StudentEnv, assignment: str) -> dict[str, object]:
    folder = student.work / assignment
    folder.mkdir()
    solved = folder / f"Copy of {assignment}.ipynb"  # the name a download from Colab gets
    nbformat.write(submission(read_source(assignment)), solved)
    ran = _execute(student, solved)
    before = solved.read_bytes()
    rc, points, out = _check(student, solved)
    blank = folder / f"{assignment}.ipynb"
    shutil.copy(REPO / "exercises" / assignment / f"{assignment}.ipynb", blank)
    blank_rc, blank_points, blank_out = _check(student, blank)
    return {
        "ran": ran,
        "check": (rc, points, out),
        "unchanged": solved.read_bytes() == before,
        "blank": (blank_rc, blank_points, blank_out),
    }


@pytest.fixture(scope="module")
def worked(student) -> dict[str, dict[str, object]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        results = dict(
            zip(ASSIGNMENTS, pool.map(lambda a: _work_on(student, a), ASSIGNMENTS), strict=True)
        )
    print(f"\nexercises run and checked twice each: {time.perf_counter() - start:.0f} s")
    return results


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_an_answered_exercise_runs_and_checks_with_full_marks(worked, assignment) -> None:
    result = worked[assignment]
    assert result["ran"].returncode == 0, result["ran"].stderr[-3000:]
    rc, points, out = result["check"]
    assert rc == 0, out
    assert points == _points(assignment), out
    assert result["unchanged"], "bncourse check must not modify the student's notebook"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_an_unanswered_exercise_checks_with_zero(worked, assignment) -> None:
    rc, points, out = worked[assignment]["blank"]
    assert rc == 1, out
    assert points == dict.fromkeys(_points(assignment), 0.0), out
    assert "not implemented" in out.lower() or "NotImplementedError" in out


def test_a_wrong_answer_gets_the_instructors_scores_part_by_part(student, tmp_path) -> None:
    source = read_source("ps01_batchnorm")
    code = answers(source)["batchnorm_forward_train"]
    wrong = edited(code, ("momentum * var * n / (n - 1))", "momentum * var)"))
    path = student.work / "ps01 (1).ipynb"
    nbformat.write(submission(source, {"batchnorm_forward_train": wrong}), path)
    rc, points, out = _check(student, path)
    shutil.copy(path, tmp_path / "ps01_batchnorm.ipynb")
    _, instructor = grade_notebook(tmp_path / "ps01_batchnorm.ipynb", course_dir=REPO)
    assert rc == 1, out
    assert points == {p.part: p.score for p in instructor}, out
    assert 0 < sum(points.values()) < sum(_points("ps01_batchnorm").values())


def _downloaded_chapters() -> list[Path]:
    return sorted((site_dir() / "_sources" / "book").glob("*.ipynb"))


def test_every_chapter_as_downloaded_runs_top_to_bottom(student) -> None:
    """The download button's .ipynb, run with the student install (no myst-nb). Experiments read
    the results the book build stored, as a reader's second run would."""
    chapters = _downloaded_chapters()
    if not chapters:
        pytest.fail(f"no built book at {site_dir()}: run `make book` first (`make test` does)")
    cache = student.work.parent / "experiments"
    if not cache.exists():
        shutil.copytree(REPO / ".cache" / "bncourse" / "experiments", cache)
    student.env["BNCOURSE_CACHE"] = str(cache)
    folder = student.work / "chapters"
    folder.mkdir(exist_ok=True)
    for chapter in chapters:
        shutil.copy(chapter, folder / chapter.name)

    def run(chapter: Path) -> tuple[str, subprocess.CompletedProcess, float]:
        start = time.perf_counter()
        done = _execute(student, folder / chapter.name)
        return chapter.stem, done, time.perf_counter() - start

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, chapters))
    print("\n" + "\n".join(f"chapter {name}: {sec:.0f} s" for name, _, sec in results))
    failed = {name: done.stderr[-2000:] for name, done, _ in results if done.returncode != 0}
    assert failed == {}
    assert {name for name, _, _ in results} >= {p.stem for p in (REPO / "book").glob("*.ipynb")}
