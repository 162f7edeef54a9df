"""Read one submission's autograder results from a gradebook and write them into another.

``nbgrader autograde`` writes these fields of a submission and no others: the submission's
timestamp, each notebook's late penalty, each grade's ``auto_score`` and ``needs_manual_grade``,
and each comment's ``auto_comment``. Manual grades, extra credit and manual comments belong to
the graders and are left as they are.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.engine import make_url


@dataclass
class CellResult:
    """The autograder's result for one graded or commented cell."""

    notebook: str
    cell: str
    auto_score: float | None = None
    needs_manual_grade: bool | None = None
    auto_comment: str | None = None
    max_score: float = 0.0
    score: float = 0.0


@dataclass
class SubmissionRecord:
    """What ``nbgrader autograde`` stored for one student's submission of one assignment."""

    assignment: str
    student: str
    timestamp: datetime | None = None
    late_penalties: dict[str, float | None] = field(default_factory=dict)
    grades: list[CellResult] = field(default_factory=list)
    comments: list[CellResult] = field(default_factory=list)
    score: float = 0.0
    max_score: float = 0.0

    def key(self) -> tuple:
        """Everything the autograder decided, in a comparable form."""
        return (
            self.timestamp,
            tuple(sorted(self.late_penalties.items())),
            tuple(
                sorted(
                    (g.notebook, g.cell, g.auto_score, g.needs_manual_grade) for g in self.grades
                )
            ),
            tuple(sorted((c.notebook, c.cell, c.auto_comment) for c in self.comments)),
            self.score,
        )


def read_submission(gb: Gradebook, assignment: str, student: str) -> SubmissionRecord | None:
    """The stored results of ``student`` for ``assignment``, or None if there is no submission."""
    try:
        sub = gb.find_submission(assignment, student)
    except MissingEntry:
        return None
    record = SubmissionRecord(
        assignment=assignment,
        student=student,
        timestamp=sub.timestamp,
        score=float(sub.score or 0.0),
        max_score=float(sub.max_score or 0.0),
    )
    for nb in sub.notebooks:
        record.late_penalties[nb.name] = nb.late_submission_penalty
        for grade in nb.grades:
            record.grades.append(
                CellResult(
                    notebook=nb.name,
                    cell=grade.name,
                    auto_score=grade.auto_score,
                    needs_manual_grade=grade.needs_manual_grade,
                    max_score=float(grade.max_score or 0.0),
                    score=float(grade.score or 0.0),
                )
            )
        for comment in nb.comments:
            record.comments.append(
                CellResult(notebook=nb.name, cell=comment.name, auto_comment=comment.auto_comment)
            )
    return record


def write_submission(gb: Gradebook, record: SubmissionRecord) -> None:
    """Store ``record``'s autograder fields in ``gb``, creating student and submission if needed."""
    gb.update_or_create_student(record.student)
    if record.timestamp is not None:
        gb.update_or_create_submission(
            record.assignment, record.student, timestamp=record.timestamp
        )
    else:
        gb.update_or_create_submission(record.assignment, record.student)
    for name, penalty in record.late_penalties.items():
        nb = gb.find_submission_notebook(name, record.assignment, record.student)
        nb.late_submission_penalty = penalty
    for g in record.grades:
        grade = gb.find_grade(g.cell, g.notebook, record.assignment, record.student)
        grade.auto_score = g.auto_score
        grade.needs_manual_grade = g.needs_manual_grade
    for c in record.comments:
        comment = gb.find_comment(c.cell, c.notebook, record.assignment, record.student)
        comment.auto_comment = c.auto_comment
    gb.db.commit()


def class_records(db_url: str, assignment: str) -> dict[str, SubmissionRecord]:
    """Every student's stored results for ``assignment``, by student id."""
    with Gradebook(db_url) as gb:
        students = [s.student.id for s in gb.find_assignment(assignment).submissions]
        records = {s: read_submission(gb, assignment, s) for s in students}
    return {s: r for s, r in sorted(records.items()) if r is not None}


def sqlite_path(db_url: str) -> Path:
    """The file of an ``sqlite:///`` gradebook URL."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ValueError(f"db_url must be an sqlite file URL, got {db_url!r}")
    return Path(url.database)


def snapshot_sqlite(db_url: str, dest: Path) -> Path:
    """A consistent copy of an SQLite gradebook (SQLite's online backup), for a worker to start from."""
    src = sqlite_path(db_url)
    dest = Path(dest)
    if not src.exists():
        raise FileNotFoundError(f"gradebook {src} does not exist")
    with closing(sqlite3.connect(src)) as source, closing(sqlite3.connect(dest)) as target:
        source.backup(target)
    return dest


def copy_sqlite(snapshot: Path, dest: Path) -> str:
    """Copy a snapshot to ``dest`` and return its URL."""
    shutil.copyfile(snapshot, dest)
    return f"sqlite:///{Path(dest).resolve()}"


def seed_gradebook(db_url: str, course_id: str, assignment: str, dest: Path) -> Path:
    """A new SQLite gradebook at ``dest`` holding only the definition of ``assignment``.

    Its notebooks, graded, solution, task and source cells and its due date are copied from the
    gradebook at ``db_url`` (SQLite or a database server), so that a machine without access to it
    can run ``nbgrader autograde``; students come with :class:`StudentState`.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"seed gradebook {dest} already exists")
    with (
        Gradebook(db_url, course_id) as src,
        Gradebook(f"sqlite:///{dest.resolve()}", course_id) as gb,
    ):
        found = src.find_assignment(assignment)
        gb.update_or_create_assignment(assignment, duedate=found.duedate)
        for nb in found.notebooks:
            gb.update_or_create_notebook(nb.name, assignment, kernelspec=nb.kernelspec)
            for c in nb.grade_cells:
                gb.update_or_create_grade_cell(
                    c.name, nb.name, assignment, max_score=c.max_score, cell_type=c.cell_type
                )
            for c in nb.solution_cells:
                gb.update_or_create_solution_cell(c.name, nb.name, assignment)
            for c in nb.task_cells:
                gb.update_or_create_task_cell(
                    c.name, nb.name, assignment, max_score=c.max_score, cell_type=c.cell_type
                )
            for c in nb.source_cells:
                gb.update_or_create_source_cell(
                    c.name,
                    nb.name,
                    assignment,
                    cell_type=c.cell_type,
                    locked=c.locked,
                    source=c.source,
                    checksum=c.checksum,
                )
    return dest


_STUDENT_FIELDS = ("first_name", "last_name", "email", "lms_user_id")


@dataclass
class StudentState:
    """What ``nbgrader autograde`` reads of one student besides the submission itself.

    The student's details and, when the assignment was graded before, the submission's timestamp
    and extension and each grade's manual score and extra credit: a manual score keeps a cell
    flagged for manual grading, and both count in the notebook score that late penalties see.
    """

    student: str
    details: dict[str, str | None] = field(default_factory=dict)
    submitted: bool = False
    timestamp: datetime | None = None
    extension: timedelta | None = None
    grades: dict[tuple[str, str], tuple[float | None, float | None]] = field(default_factory=dict)


def read_student_state(gb: Gradebook, assignment: str, student: str) -> StudentState | None:
    """``student``'s :class:`StudentState` in ``gb``, or None if the student is not in it."""
    try:
        found = gb.find_student(student)
    except MissingEntry:
        return None
    state = StudentState(student, {k: getattr(found, k) for k in _STUDENT_FIELDS})
    try:
        sub = gb.find_submission(assignment, student)
    except MissingEntry:
        return state
    state.submitted, state.timestamp, state.extension = True, sub.timestamp, sub.extension
    for nb in sub.notebooks:
        for grade in nb.grades:
            state.grades[(nb.name, grade.name)] = (grade.manual_score, grade.extra_credit)
    return state


def apply_student_state(gb: Gradebook, assignment: str, state: StudentState) -> None:
    """Put ``state`` into a gradebook made by :func:`seed_gradebook`."""
    gb.update_or_create_student(state.student, **state.details)
    if not state.submitted:
        return
    sub = gb.update_or_create_submission(assignment, state.student, timestamp=state.timestamp)
    sub.extension = state.extension
    for (notebook, cell), (manual, extra) in state.grades.items():
        try:
            grade = gb.find_grade(cell, notebook, assignment, state.student)
        except MissingEntry:  # the cell is no longer part of the assignment
            continue
        grade.manual_score, grade.extra_credit = manual, extra
    gb.db.commit()
