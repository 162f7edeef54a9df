"""What an instructor reads after grading: grades.csv part by part, the Canvas and Moodle import
files and the class report, on one small example class graded once (``bncourse grade``).

The class: Ada all correct with a written answer, Bo the unbiased variance, Cy blank, Di the
median for the mean, Eve whose own code raises an error that names a misconception (not counted:
the notebook wrote it, not a check), "Jane Smith" (a Moodle-style id with a space) correct, and
Fay, who is in the gradebook but submitted nothing.
"""

from __future__ import annotations

import csv
import re

import pytest
from nbgrader.api import Gradebook

from bncourse.instructor import example_class as ec
from bncourse.instructor import misconceptions
from bncourse.instructor.class_grades import (
    MANUAL_COLUMN,
    NBGRADER_COLUMNS,
    NOTES_COLUMN,
    read_class,
)
from bncourse.instructor.lms_export import CANVAS_STUDENT_COLUMNS, MOODLE_STUDENT_COLUMNS
from bncourse.instructor.reports import summarize
from tests.example_course import BIN, gradebook_url, release, run

pytestmark = pytest.mark.slow

A = ec.ASSIGNMENT
CANVAS_ID = "4242"
FORGED = (
    "def variance(xs):\n"
    "    raise AssertionError('Misconception: the unbiased variance [unbiased-variance].')"
)
KINDS = {
    "ada": {**ec.ANSWERS["correct"], "why_biased": ec.WRITTEN_ANSWER},
    "bo": ec.ANSWERS["unbiased"],
    "cy": ec.ANSWERS["blank"],
    "di": ec.ANSWERS["median"],
    "eve": {**ec.ANSWERS["correct"], "variance": FORGED},
    "Jane Smith": ec.ANSWERS["correct"],
}
PEOPLE = {  # student id -> first name, last name, email, lms_user_id
    "ada": ("Ada", "Lovelace", "ada@example.org", "1001"),
    "bo": ("Bo", "Chen", "bo@example.org", None),
    "fay": ("Fay", "Ng", "fay@example.org", "1006"),
}
FULL = sum(ec.POINTS.values())


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reports") / "course"
    ec.make_course(root, timeout=20, written=True)
    run([str(BIN / "nbgrader"), "generate_assignment", A, "--force"], cwd=root)
    for student, answers in KINDS.items():
        ec.submit(root, student, ec.answer(release(root), answers))
    with Gradebook(gradebook_url(root), "example") as gb:
        for student, (first, last, email, lms) in PEOPLE.items():
            gb.update_or_create_student(
                student, first_name=first, last_name=last, email=email, lms_user_id=lms
            )
    proc = run(
        [
            str(BIN / "bncourse"),
            "grade",
            A,
            "--workers",
            "2",
            "--no-progress",
            "--export",
            "canvas,moodle",
            "--canvas-id",
            CANVAS_ID,
        ],
        cwd=root,
    )

    def rows(name: str) -> list[dict[str, str]]:
        with open(root / name, newline="") as fh:
            return list(csv.DictReader(fh))

    return {"root": root, "out": proc.stdout, "rows": rows}


def _by_student(rows: list[dict[str, str]], key: str) -> dict[str, dict[str, str]]:
    return {row[key]: row for row in rows}


def test_grades_csv_has_nbgraders_columns_then_one_per_part_then_the_manual_flag(graded) -> None:
    with open(graded["root"] / "grades.csv") as fh:
        header = next(csv.reader(fh))
    parts = [*ec.POINTS, *ec.WRITTEN]
    assert header == [*NBGRADER_COLUMNS, *parts, MANUAL_COLUMN, NOTES_COLUMN]


def test_grades_csv_scores_each_part(graded) -> None:
    rows = _by_student(graded["rows"]("grades.csv"), "student_id")
    assert {s: (rows[s]["test_mean"], rows[s]["test_variance"]) for s in KINDS} == {
        "ada": (str(float(ec.POINTS["test_mean"])), str(float(ec.POINTS["test_variance"]))),
        "bo": (str(float(ec.POINTS["test_mean"])), "0.0"),
        "cy": ("0.0", "0.0"),
        "di": ("0.0", "0.0"),
        "eve": (str(float(ec.POINTS["test_mean"])), "0.0"),
        "Jane Smith": (str(float(ec.POINTS["test_mean"])), str(float(ec.POINTS["test_variance"]))),
    }
    for s in KINDS:  # the parts add up to the score
        parts = [float(rows[s][p]) for p in [*ec.POINTS, *ec.WRITTEN]]
        assert sum(parts) == float(rows[s]["score"])


def test_not_submitted_is_empty_and_blank_is_zero(graded) -> None:
    rows = _by_student(graded["rows"]("grades.csv"), "student_id")
    fay, cy = rows["fay"], rows["cy"]
    for column in ("timestamp", "raw_score", "score", *ec.POINTS, *ec.WRITTEN, MANUAL_COLUMN):
        assert fay[column] == "", column
    assert cy["score"] == cy["raw_score"] == "0.0"
    assert fay["max_score"] == cy["max_score"] == str(float(FULL + sum(ec.WRITTEN.values())))


def test_written_answers_are_flagged_for_manual_grading(graded) -> None:
    """Only Ada wrote an answer; nbgrader scores an untouched answer cell 0 without a grader."""
    rows = _by_student(graded["rows"]("grades.csv"), "student_id")
    flagged = {s: rows[s][MANUAL_COLUMN] for s in KINDS}
    assert flagged == {**dict.fromkeys(KINDS, ""), "ada": "why_biased"}


def test_nbgrader_export_writes_the_same_file(graded, tmp_path) -> None:
    root = graded["root"]
    run([str(BIN / "nbgrader"), "export", "--to", str(tmp_path / "g.csv")], cwd=root)
    assert (tmp_path / "g.csv").read_text() == (root / "grades.csv").read_text()


def test_canvas_file(graded) -> None:
    with open(graded["root"] / f"canvas-{A}.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == [*CANVAS_STUDENT_COLUMNS, f"{A} ({CANVAS_ID})"]
    assert table[1][0].strip() == "Points Possible"
    assert float(table[1][-1]) == FULL + sum(ec.WRITTEN.values())
    rows = {row[0]: row for row in table[2:]}
    grades = _by_student(graded["rows"]("grades.csv"), "student_id")
    # name, ID (lms_user_id), SIS User ID (the student id), SIS Login ID (email), section, score
    assert rows["Lovelace, Ada"] == ["Lovelace, Ada", "1001", "ada", "ada@example.org", "", "5"]
    assert rows["Chen, Bo"][1:5] == ["", "bo", "bo@example.org", ""]
    assert float(rows["Chen, Bo"][5]) == float(grades["bo"]["score"])
    assert rows["Ng, Fay"] == ["Ng, Fay", "1006", "fay", "fay@example.org", "", ""]
    assert rows["cy"][5] == "0"  # blank: zero, submitted
    assert len(rows) == len(KINDS) + 1


def test_moodle_file(graded) -> None:
    with open(graded["root"] / f"moodle-{A}.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == [*MOODLE_STUDENT_COLUMNS, A]
    rows = {row[2]: row for row in table[1:]}
    assert rows["ada"] == ["Ada", "Lovelace", "ada", "ada@example.org", "5"]
    assert rows["fay"] == ["Fay", "Ng", "fay", "fay@example.org", ""]
    assert rows["di"][4] == "0"
    assert set(rows) == {*KINDS, "fay"}


def test_misconceptions_are_counted_with_who_made_them(graded) -> None:
    root = graded["root"]
    grades = read_class(gradebook_url(root), "example", A)
    found = misconceptions.in_class(root / "autograded", A, [s.student for s in grades.submitted])
    assert {f.name: (sorted(f.students), sorted(f.parts)) for f in found} == {
        "unbiased-variance": (["bo"], ["test_variance"]),  # not Eve: her own code said it
        "median-for-mean": (["di"], ["test_mean"]),
    }
    assert {f.name: f.title for f in found} == ec.MISCONCEPTIONS


def test_the_class_report_is_one_self_contained_page(graded) -> None:
    root = graded["root"]
    page = (root / f"report-{A}.html").read_text()
    assert "<svg" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from outside
    assert "<script" not in page
    for name in ec.MISCONCEPTIONS:
        assert name in page
    assert "Class report" in graded["out"] and f"report-{A}.html" in graded["out"]


def test_the_report_table_counts_the_class(graded) -> None:
    grades = read_class(gradebook_url(graded["root"]), "example", A)
    total, mean, variance, written = summarize(grades)
    assert total.not_submitted == 1 and len(total.scores) == len(KINDS)
    assert mean.full_marks == 4 and mean.zeros == 2  # cy, di
    assert variance.full_marks == 2  # ada, Jane Smith
    assert written.written and written.needs_manual == 1  # Ada's answer


def test_report_rewrites_after_a_grade_by_hand(graded) -> None:
    root = graded["root"]
    with Gradebook(gradebook_url(root), "example") as gb:
        grade = gb.find_grade("why_biased", A, A, "ada")
        grade.manual_score, grade.needs_manual_grade = 1.0, False
        gb.db.commit()
    proc = run([str(BIN / "bncourse"), "report", A, "--export", "canvas"], cwd=root)
    assert f"canvas-{A}.csv" in proc.stdout
    rows = _by_student(graded["rows"]("grades.csv"), "student_id")
    assert rows["ada"]["why_biased"] == "1.0" and rows["ada"][MANUAL_COLUMN] == ""
    assert float(rows["ada"]["score"]) == FULL + 1
