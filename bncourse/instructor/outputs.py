"""What ``bncourse grade`` and ``bncourse report`` write next to ``grades.csv``: the class report
and the LMS import files of one assignment, all read from the gradebook and the graded notebooks."""

from __future__ import annotations

from pathlib import Path

from bncourse.instructor import lms_export, misconceptions, reports
from bncourse.instructor.class_grades import read_class
from bncourse.instructor.course import Course
from bncourse.instructor.review_notes import read_notes


def report_path(folder: Path, assignment: str) -> Path:
    """Where the class report of ``assignment`` goes."""
    return Path(folder) / f"report-{assignment}.html"


def write_class_outputs(
    course: Course,
    assignment: str,
    folder: Path,
    exports: list[str] = (),
    *,
    canvas_id: str | int | None = None,
    section: str = "",
) -> dict[str, Path]:
    """Write the class report (``report``) and each export of ``exports`` into ``folder``."""
    notes = read_notes(course.root).get(assignment)
    grades = read_class(course.db_url, course.course_id, assignment, course.source_dir, notes)
    found = misconceptions.in_class(
        course.autograded_dir, assignment, [s.student for s in grades.submitted]
    )
    written = {"report": reports.write_report(grades, found, report_path(folder, assignment))}
    written.update(
        lms_export.export(grades, folder, list(exports), canvas_id=canvas_id, section=section)
    )
    return written
