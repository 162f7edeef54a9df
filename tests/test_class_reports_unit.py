"""The class-report pieces on hand-made data (no grading): which misconception names count, the
columns of grades.csv, and the student columns of the Canvas and Moodle files."""

from __future__ import annotations

import csv

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from bncourse.grading.catalogue import CATALOGUE
from bncourse.instructor import lms_export, misconceptions
from bncourse.instructor.class_grades import (
    MANUAL_COLUMN,
    NBGRADER_COLUMNS,
    NOTES_COLUMN,
    AssignmentGrades,
    Part,
    StudentGrades,
    csv_rows,
)
from bncourse.instructor.reports import render, summarize

KNOWN = next(iter(CATALOGUE.values()))


def _test_cell(grade_id: str, outputs: list, source: str = "check(f)") -> nbformat.NotebookNode:
    meta = {"nbgrader": {"grade": True, "solution": False, "grade_id": grade_id, "points": 1}}
    return new_code_cell(source, metadata=meta, outputs=outputs)


def _error(message: str, notes: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    return new_output(
        "error",
        ename="CheckFailure",
        evalue=message,
        traceback=[f"CheckFailure: {message}", *notes],
    )


def test_names_come_from_the_checks_verdicts_only(tmp_path) -> None:
    named = f"f is wrong.\n\n{KNOWN.explain()}"
    student_cell = new_code_cell(
        "print('Misconception: x [" + KNOWN.name + "]')",
        metadata={"nbgrader": {"grade": False, "solution": True, "grade_id": "answer"}},
        outputs=[new_output("stream", name="stdout", text=f"Misconception: x [{KNOWN.name}].")],
    )
    nb = new_notebook(
        cells=[
            student_cell,  # the student's own cell: never counted
            _test_cell("t_error", [_error(named)]),
            _test_cell("t_stream", [new_output("stream", name="stdout", text=named)]),
            # raised by the notebook's own code: the grader's note says so
            _test_cell("t_raised", [_error(named, (misconceptions.RAISED_BY_NOTEBOOK + "\n...",))]),
            # a name neither catalogued nor written in the test cell's source
            _test_cell("t_invented", [_error("Misconception: made up [made-up-name].")]),
            # a name the instructor's test cell itself declares
            _test_cell(
                "t_declared",
                [_error("Misconception: local one [local-one].")],
                source='assert ok, "Misconception: local one [local-one]."',
            ),
        ]
    )
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert misconceptions.in_notebook(path) == [
        ("t_error", KNOWN.name, KNOWN.title),
        ("t_stream", KNOWN.name, KNOWN.title),
        ("t_declared", "local-one", "local one"),
    ]


def _grades() -> AssignmentGrades:
    parts = [
        Part("hw", "test_a", 2.0, False, "test_a"),
        Part("hw", "essay", 1.0, True, "essay"),
    ]
    return AssignmentGrades(
        assignment="hw",
        duedate=None,
        max_score=3.0,
        parts=parts,
        students=[
            StudentGrades(
                "ada",
                first_name="Ada",
                last_name="Lovelace",
                email="ada@example.org",
                lms_user_id="77",
                submitted=True,
                raw_score=3.0,
                late_penalty=0.0,
                score=3.0,
                parts={"test_a": 2.0, "essay": 1.0},
            ),
            StudentGrades(
                "4521",
                submitted=True,
                raw_score=0.0,
                late_penalty=0.0,
                score=0.0,
                parts={"test_a": 0.0, "essay": 0.0},
                needs_manual=["essay"],
                notes=["cell 3 called sys.exit()", "for review: cell 2 rebinds grading"],
            ),
            StudentGrades(
                "zed",
                first_name="Zed",
                last_name="Ng",
                email="zed@example.org",
                parts={"test_a": None, "essay": None},
            ),
        ],
    )


def test_grades_csv_columns_and_empty_for_not_submitted() -> None:
    columns, rows = csv_rows([_grades()])
    assert columns == [*NBGRADER_COLUMNS, "test_a", "essay", MANUAL_COLUMN, NOTES_COLUMN]
    by_id = {r["student_id"]: r for r in rows}
    assert by_id["4521"]["score"] == "0.0" and by_id["4521"][MANUAL_COLUMN] == "essay"
    assert by_id["4521"][NOTES_COLUMN] == (
        "cell 3 called sys.exit() | for review: cell 2 rebinds grading"
    )
    assert [by_id["zed"][c] for c in ("score", "test_a", "essay", MANUAL_COLUMN)] == [""] * 4
    assert by_id["ada"][NOTES_COLUMN] == by_id["zed"][NOTES_COLUMN] == ""


def test_notes_are_kept_per_student_and_replaced_when_graded_again(tmp_path) -> None:
    from bncourse.instructor.review_notes import read_notes, update_notes

    assert read_notes(tmp_path) == {}
    update_notes(tmp_path, "hw", {"ada": ["for review: x"], "bo": ["the kernel died"]})
    update_notes(tmp_path, "hw", {"ada": [], "cy": ["not graded"]})  # ada graded again: clean
    update_notes(tmp_path, "other", {"ada": ["late"]})
    assert read_notes(tmp_path) == {
        "hw": {"bo": ["the kernel died"], "cy": ["not graded"]},
        "other": {"ada": ["late"]},
    }


def test_canvas_and_moodle_student_columns(tmp_path) -> None:
    files = lms_export.export(_grades(), tmp_path, ["canvas", "moodle"], canvas_id=99, section="A")
    with open(files["canvas"], newline="") as fh:
        canvas = list(csv.reader(fh))
    assert canvas[0] == [*lms_export.CANVAS_STUDENT_COLUMNS, "hw (99)"]
    assert canvas[1] == ["    Points Possible", "", "", "", "", "3"]
    assert canvas[2:] == [
        ["Lovelace, Ada", "77", "ada", "ada@example.org", "A", "3"],
        ["4521", "4521", "", "", "A", "0"],  # a number as student id: Canvas's user number
        ["Ng, Zed", "", "zed", "zed@example.org", "A", ""],
    ]
    with open(files["moodle"], newline="") as fh:
        moodle = list(csv.reader(fh))
    assert moodle == [
        [*lms_export.MOODLE_STUDENT_COLUMNS, "hw"],
        ["Ada", "Lovelace", "ada", "ada@example.org", "3"],
        ["", "", "4521", "", "0"],
        ["Zed", "Ng", "zed", "zed@example.org", ""],
    ]


def test_summary_and_page_of_a_class() -> None:
    total, test_a, essay = summarize(_grades())
    assert (total.not_submitted, total.full_marks, total.zeros) == (1, 1, 1)
    assert essay.written and essay.needs_manual == 1
    found = [misconceptions.Found("x-y", "an x for a y", {"ada"}, {"test_a"})]
    page = render(_grades(), found)
    assert "<svg" in page and "x-y" in page and "an x for a y" in page and "<script" not in page
    review = page[page.index("<h2>For review</h2>") :]
    assert "<td>4521</td>" in review and "for review: cell 2 rebinds grading" in review
    assert "<td>ada</td>" not in review
