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
from datetime import datetime
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
