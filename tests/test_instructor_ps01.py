"""``bncourse grade`` and ``bncourse check`` on the course's real assignment, ps01_batchnorm."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from example_course import BIN, notebook_view, run
from nbgrader_course import REPO, Course, answered, by_grade_id, solutions

from bncourse.cli import main
from bncourse.instructor.gradebook_io import class_records

pytestmark = pytest.mark.slow

A = "ps01_batchnorm"


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ps01")
    serial = Course(tmp / "serial", A)
    release = serial.generate()
    answers = solutions(serial.source())
    first = sorted(answers)[0]
    stub = by_grade_id(release)[first].source
    serial.submit("correct", answered(release, answers))
    serial.submit("blank", release)
    serial.submit("partial", answered(release, {**answers, first: stub}))
    parallel = tmp / "parallel"
    shutil.copytree(serial.root, parallel)
    shutil.copy(REPO / "nbgrader_config.py", parallel / "nbgrader_config.py")
    for student in ("blank", "correct", "partial"):  # nbgrader autograde's own order, one by one
        serial.autograde(student)
    proc = run([str(BIN / "bncourse"), "grade", A, "--workers", "2", "--no-progress"], parallel)
    return {"serial": serial, "parallel": parallel, "proc": proc}


def test_ps01_grades_equal_serial_nbgrader(graded: dict) -> None:
    serial, parallel = graded["serial"], graded["parallel"]
    want = class_records(serial.config.CourseDirectory.db_url, A)
    got = class_records(f"sqlite:///{parallel / 'gradebook.db'}", A)
    assert {s: r.key() for s, r in got.items()} == {s: r.key() for s, r in want.items()}
    assert got["correct"].score == got["correct"].max_score > 0
    assert got["blank"].score == 0
    assert 0 < got["partial"].score < got["partial"].max_score
    name = f"{A}.ipynb"
    for student in want:
        ours = notebook_view(parallel / "autograded" / student / A / name)
        theirs = notebook_view(serial.root / "autograded" / student / A / name)
        assert [c[:3] for c in ours] == [c[:3] for c in theirs]  # same cells, sources and metadata
        assert (parallel / "feedback" / student / A / f"{A}.html").is_file()


def test_check_blank_exercise_fails_and_solution_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["check", str(REPO / "exercises" / A / f"{A}.ipynb")]) == 1
    assert "FAIL" in capsys.readouterr().out
    course = Course(tmp_path / "course", A)
    release = course.generate()
    path = tmp_path / A / f"{A}.ipynb"
    path.parent.mkdir()
    nbformat.write(answered(release, solutions(course.source())), path)
    assert main(["check", str(path), "--course-dir", str(REPO)]) == 0
    assert "All checks passed." in capsys.readouterr().out
