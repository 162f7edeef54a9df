"""A class's grades part by part, read from the gradebook, and ``grades.csv`` written from them.

``grades.csv`` has nbgrader's own export columns (``nbgrader export``'s CSV) and, after them, one
column per graded part (each autograded test cell and each answer graded by hand),
``needs_manual_grading`` and ``notes`` (what ``bncourse grade`` noted for a grader to read). A student who did not submit an assignment gets empty scores there,
never 0, so that "not submitted" and "scored zero" stay apart. :class:`PartsCsvExportPlugin` is
the same file as an nbgrader export plugin: with ``c.ExportApp.plugin_class`` set to it (as this
course's configuration does), ``nbgrader export`` writes it too.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.coursedir import CourseDirectory
from nbgrader.plugins import ExportPlugin

from bncourse.instructor.review_notes import Notes, read_notes

NBGRADER_COLUMNS = (
    "assignment",
    "duedate",
    "timestamp",
    "student_id",
    "last_name",
    "first_name",
    "email",
    "raw_score",
    "late_submission_penalty",
    "score",
    "max_score",
)
"""The columns of nbgrader's CSV export, first in ``grades.csv`` and in the same order."""

MANUAL_COLUMN = "needs_manual_grading"
"""The column that names the parts still waiting for a grader (empty: none, or not submitted)."""

NOTES_COLUMN = "notes"
"""The column of what a grader should read about the submission (problems met while grading,
routes around the checks found for review; see :mod:`review_notes`), separated by " | "."""


@dataclass(frozen=True)
class Part:
    """One graded cell of an assignment."""

    notebook: str
    cell: str
    max_score: float
    written: bool
    """True for an answer graded by hand (a written answer), False for an autograded test cell."""
    column: str
    """Its column in ``grades.csv``: the cell's name, prefixed by the notebook's when the
    assignment has several notebooks."""


@dataclass
class StudentGrades:
    """One student's grades for one assignment; ``submitted`` False means every score is None."""

    student: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    lms_user_id: str | None = None
    submitted: bool = False
    timestamp: datetime | None = None
    raw_score: float | None = None
    late_penalty: float | None = None
    score: float | None = None
    parts: dict[str, float | None] = field(default_factory=dict)
    """Score of each part by :attr:`Part.column`; None where not submitted."""
    needs_manual: list[str] = field(default_factory=list)
    """Columns of the parts that nbgrader flags for a grader."""
    notes: list[str] = field(default_factory=list)
    """What ``bncourse grade`` noted for a grader to read (see :mod:`review_notes`)."""

    @property
    def display_name(self) -> str:
        """ "Last, First" when the gradebook has both names, else the student id."""
        if self.last_name and self.first_name:
            return f"{self.last_name}, {self.first_name}"
        return self.student


@dataclass
class AssignmentGrades:
    """Every student's grades for one assignment, in the gradebook's order of students."""

    assignment: str
    duedate: datetime | None
    max_score: float
    parts: list[Part]
    students: list[StudentGrades]

    @property
    def submitted(self) -> list[StudentGrades]:
        return [s for s in self.students if s.submitted]


def _cell_order(source_dir: Path | None, assignment: str, notebook: str) -> list[str]:
    """The graded cells' ids in the order of the instructor's notebook (none if it is missing)."""
    if source_dir is None:
        return []
    path = Path(source_dir) / assignment / f"{notebook}.ipynb"
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError):
        return []
    return [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells]


def _parts(assignment, source_dir: Path | None) -> list[Part]:
    several = len(assignment.notebooks) > 1
    parts = []
    for nb in assignment.notebooks:
        answers = {c.name for c in nb.solution_cells}
        order = _cell_order(source_dir, assignment.name, nb.name)

        def position(cell, order=order):
            return (order.index(cell.name) if cell.name in order else len(order), cell.name)

        for cell in sorted(nb.grade_cells, key=position):
            parts.append(
                Part(
                    notebook=nb.name,
                    cell=cell.name,
                    max_score=float(cell.max_score or 0.0),
                    written=cell.name in answers,
                    column=f"{nb.name}/{cell.name}" if several else cell.name,
                )
            )
    return parts


def read_assignment(
    gb: Gradebook,
    assignment: str,
    source_dir: Path | None = None,
    notes: Mapping[str, list[str]] | None = None,
) -> AssignmentGrades:
    """The grades of every student in ``gb`` for ``assignment``, part by part: in the order of the
    instructor's notebooks in ``source_dir`` (the course's ``solutions/``), else by name; with
    the ``notes`` kept for each student (student -> notes)."""
    found = gb.find_assignment(assignment)
    parts = _parts(found, source_dir)
    column = {(p.notebook, p.cell): p.column for p in parts}
    students = []
    for student in gb.students:
        row = StudentGrades(
            student=student.id,
            first_name=student.first_name,
            last_name=student.last_name,
            email=student.email,
            lms_user_id=student.lms_user_id,
            parts={p.column: None for p in parts},
            notes=list((notes or {}).get(student.id, [])),
        )
        try:
            sub = gb.find_submission(assignment, student.id)
        except MissingEntry:
            students.append(row)
            continue
        row.submitted = True
        row.timestamp = sub.timestamp
        row.raw_score = float(sub.score or 0.0)
        row.late_penalty = float(sub.late_submission_penalty or 0.0)
        row.score = max(0.0, row.raw_score - row.late_penalty)
        for nb in sub.notebooks:
            for grade in nb.grades:
                name = column.get((nb.name, grade.name))
                if name is None:
                    continue
                row.parts[name] = float(grade.score or 0.0)
                if grade.needs_manual_grade:
                    row.needs_manual.append(name)
        row.needs_manual.sort(key=[p.column for p in parts].index)
        students.append(row)
    return AssignmentGrades(
        assignment=assignment,
        duedate=found.duedate,
        max_score=float(found.max_score or 0.0),
        parts=parts,
        students=students,
    )


def read_class(
    db_url: str,
    course_id: str,
    assignment: str,
    source_dir: Path | None = None,
    notes: Mapping[str, list[str]] | None = None,
) -> AssignmentGrades:
    """:func:`read_assignment` on the gradebook at ``db_url``."""
    with Gradebook(db_url, course_id) as gb:
        return read_assignment(gb, assignment, source_dir, notes)


def _text(value) -> str:
    return "" if value is None else str(value)


def csv_rows(classes: list[AssignmentGrades]) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of ``grades.csv`` for these assignments (one row per student each)."""
    columns: list[str] = list(NBGRADER_COLUMNS)
    for grades in classes:
        columns += [p.column for p in grades.parts if p.column not in columns]
    columns += [MANUAL_COLUMN, NOTES_COLUMN]
    rows = []
    for grades in classes:
        for s in grades.students:
            row = dict.fromkeys(columns, "")
            row.update(
                assignment=grades.assignment,
                duedate=_text(grades.duedate),
                timestamp=_text(s.timestamp),
                student_id=s.student,
                last_name=_text(s.last_name),
                first_name=_text(s.first_name),
                email=_text(s.email),
                raw_score=_text(s.raw_score),
                late_submission_penalty=_text(s.late_penalty),
                score=_text(s.score),
                max_score=_text(grades.max_score),
            )
            row.update({name: _text(score) for name, score in s.parts.items()})
            row[MANUAL_COLUMN] = " ".join(s.needs_manual)
            row[NOTES_COLUMN] = " | ".join(s.notes)
            rows.append(row)
    return columns, rows


def write_grades_csv(
    gb: Gradebook,
    path: Path,
    source_dir: Path | None = None,
    assignments: list[str] | None = None,
    notes: Notes | None = None,
) -> Path:
    """Write ``grades.csv`` for ``assignments`` (default: every assignment in ``gb``), with the
    ``notes`` kept for them (see :mod:`review_notes`)."""
    names = assignments or [a.name for a in gb.assignments]
    notes = notes or {}
    grades = [read_assignment(gb, name, source_dir, notes.get(name)) for name in names]
    _write(path, *csv_rows(grades))
    return Path(path)


def _write(path: Path | str, columns: list[str], rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class PartsCsvExportPlugin(ExportPlugin):
    """``nbgrader export`` writing ``grades.csv`` with a column per graded part (see the module)."""

    def export(self, gradebook: Gradebook) -> None:
        dest = self.to or "grades.csv"
        wanted = [str(a) for a in self.assignment]
        names = [a.name for a in gradebook.assignments if not wanted or a.name in wanted]
        students = {str(s) for s in self.student}
        coursedir = CourseDirectory(config=self.config)
        source = Path(coursedir.root) / coursedir.source_directory
        notes = read_notes(coursedir.root)
        grades = [read_assignment(gradebook, name, source, notes.get(name)) for name in names]
        columns, rows = csv_rows(grades)
        if students:
            rows = [r for r in rows if r["student_id"] in students]
        self.log.info("Exporting grades, part by part, to %s", dest)
        _write(dest, columns, rows)
