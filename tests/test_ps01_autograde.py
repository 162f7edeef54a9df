"""ps01_batchnorm through nbgrader: release, submissions and autograding, end to end.

Every autograder test runs in a temporary course folder of its own (own gradebook), through
nbgrader's Python API, with the repository's nbgrader configuration. What every assignment's
student version must satisfy (what nbgrader generates, no outputs, no solution text) is checked
for all assignments in test_release.py.
"""

from __future__ import annotations

import nbformat
import pytest
from builders import builder
from nbgrader_course import (
    Course,
    answered,
    by_grade_id,
    cell_text,
    says_only_not_implemented,
    solutions,
)

_builder = builder("ps01_batchnorm")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS
SOURCE = _builder.SOURCE
build = _builder.build

# nbgrader 0.9.6 with SQLAlchemy 2 warns on every autograde that a submission is "not in
# session"; the grades are stored all the same (checked below through the gradebook).
pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")

TOTAL = sum(POINTS.values())


def _source() -> nbformat.NotebookNode:
    return nbformat.read(SOURCE, as_version=4)


# --- the committed notebooks ----------------------------------------------------------------


def test_source_notebook_is_what_the_builder_writes():
    assert SOURCE.read_text(encoding="utf-8") == nbformat.writes(build(), version=4) + "\n"


def test_source_notebook_has_graded_cells_and_no_outputs():
    nb = _source()
    nbformat.validate(nb)
    for cell in nb.cells:
        assert not cell.get("outputs") and cell.get("execution_count") is None, cell.id
    cells = by_grade_id(nb)
    graded = {
        k: v.metadata["nbgrader"] for k, v in cells.items() if v.metadata["nbgrader"]["grade"]
    }
    assert {k: m["points"] for k, m in graded.items()} == POINTS
    for grade_id, meta in graded.items():
        assert meta["locked"] and not meta["solution"] and meta["schema_version"] == 3, grade_id
        assert "### BEGIN HIDDEN TESTS" in cells[grade_id].source, grade_id
        assert "from bncourse import grading" in cells[grade_id].source, grade_id
    answers = {k for k, v in cells.items() if v.metadata["nbgrader"]["solution"]}
    assert answers == {"batchnorm_forward_train", "batchnorm_forward_eval"}


# --- through nbgrader -------------------------------------------------------------------------


@pytest.mark.slow
def test_solution_scores_full_marks(tmp_path):
    course = Course(tmp_path, ASSIGNMENT)
    release = course.generate()
    course.submit("instructor", course.source())
    course.submit("student", answered(release, solutions(course.source())))
    seconds = course.autograde("student")
    course.autograde("instructor")
    print(f"autograde of one ps01 submission: {seconds:.1f} s")
    for student in ("instructor", "student"):
        assert course.scores(student) == {k: (p, p) for k, p in POINTS.items()}, student
        assert course.total(student) == (TOTAL, TOTAL)
    graded = by_grade_id(course.graded("student"))
    assert "matches the reference" in cell_text(graded["test_conv_layout"])


@pytest.mark.slow
def test_blank_and_tampered_submissions_score_zero(tmp_path):
    course = Course(tmp_path, ASSIGNMENT)
    release = course.generate()
    course.submit("blank", release)
    course.submit("tampered", answered(release, {}, edit_tests=lambda source: "pass"))
    for student in ("blank", "tampered"):
        course.autograde(student)
        assert course.scores(student) == {k: (0, p) for k, p in POINTS.items()}, student
        assert course.total(student) == (0, TOTAL)
    graded = by_grade_id(course.graded("tampered"))
    assert "check_batchnorm_train" in graded["test_batchnorm_train"].source  # restored
    for student in ("blank", "tampered"):
        graded = by_grade_id(course.graded(student))
        for grade_id in POINTS:
            text = cell_text(graded[grade_id])
            assert says_only_not_implemented(text), (student, grade_id, text)


# Known-wrong submissions (one per catalogued misconception), alternative implementations and
# delegations are graded together, in one course, by tests/test_ps01_mutants.py.
