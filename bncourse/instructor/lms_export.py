"""Grades in the gradebook-import formats of Canvas and Moodle.

Canvas (Grades, Import) reads a CSV with the columns of its own gradebook export: ``Student``
("Last, First"), ``ID`` (Canvas's user number), ``SIS User ID``, ``SIS Login ID``, ``Section``,
then one column per assignment, headed ``Name (assignment id)`` to update an existing Canvas
assignment (a header without an id makes a new one); the second row, ``Points Possible``, gives
each assignment's maximum. Moodle (Grades, Import, CSV file) reads any CSV whose columns the
instructor maps in its import form: one column identifies the student (map ``Email address`` to
the user's email, or ``ID number`` to the user's ID number) and each other column feeds a grade
item.

Each file carries the assignment's score alone: a column per graded part would make a new
Canvas assignment (or Moodle grade item) per part on import, counted in the course total next to
the assignment itself. The part-by-part scores are in ``grades.csv``.

The student columns come from nbgrader's student records (``nbgrader db student import``):
first and last name, email, ``lms_user_id`` and the student id. A student who did not submit
gets an empty cell, never 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from bncourse.instructor.class_grades import AssignmentGrades, StudentGrades

CANVAS_STUDENT_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
MOODLE_STUDENT_COLUMNS = ("First name", "Last name", "ID number", "Email address")
FORMATS = ("canvas", "moodle")


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def canvas_ids(student: StudentGrades) -> tuple[str, str]:
    """(``ID``, ``SIS User ID``) of a student: Canvas's user number is ``lms_user_id`` or else a
    student id made of digits only (what the Canvas regexp of ``zip_collect`` collects); any other
    student id is the SIS user id."""
    if student.lms_user_id:
        return str(student.lms_user_id), student.student
    if student.student.isdigit():
        return student.student, ""
    return "", student.student


def canvas_header(assignment: str, canvas_id: str | int | None = None) -> str:
    """The assignment's column header: ``name (id)`` for an existing Canvas assignment."""
    return f"{assignment} ({canvas_id})" if canvas_id not in (None, "") else assignment


def write_canvas(
    grades: AssignmentGrades,
    path: Path,
    *,
    canvas_id: str | int | None = None,
    section: str = "",
) -> Path:
    """Write ``grades`` as a Canvas gradebook import file."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*CANVAS_STUDENT_COLUMNS, canvas_header(grades.assignment, canvas_id)])
        writer.writerow(["    Points Possible", "", "", "", "", _score(grades.max_score)])
        for s in grades.students:
            user_id, sis_id = canvas_ids(s)
            writer.writerow(
                [s.display_name, user_id, sis_id, s.email or "", section, _score(s.score)]
            )
    return Path(path)


def write_moodle(grades: AssignmentGrades, path: Path) -> Path:
    """Write ``grades`` as a CSV for Moodle's grade import (one grade item: the assignment)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*MOODLE_STUDENT_COLUMNS, grades.assignment])
        for s in grades.students:
            writer.writerow(
                [s.first_name or "", s.last_name or "", s.student, s.email or "", _score(s.score)]
            )
    return Path(path)


def export(
    grades: AssignmentGrades,
    folder: Path,
    formats: list[str],
    *,
    canvas_id: str | int | None = None,
    section: str = "",
) -> dict[str, Path]:
    """Write the files of ``formats`` (``canvas``, ``moodle``) into ``folder``, by format."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {', '.join(unknown)}; choose from {FORMATS}")
    written = {}
    for fmt in formats:
        path = Path(folder) / f"{fmt}-{grades.assignment}.csv"
        if fmt == "canvas":
            written[fmt] = write_canvas(grades, path, canvas_id=canvas_id, section=section)
        else:
            written[fmt] = write_moodle(grades, path)
    return written
