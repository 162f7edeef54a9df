"""What a grader should read about a submission, kept from one ``bncourse grade`` to the next.

``bncourse grade`` prints, per student, the problems it met and the routes around the checks it
found (for review). They are also kept in ``.bncourse/notes.json`` of the course folder, by
assignment and student, so that ``grades.csv`` (its ``notes`` column), the class report and
``bncourse report`` (run later, without grading) show them too. Grading a student again replaces
that student's notes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

NOTES_FILE = Path(".bncourse") / "notes.json"
"""Where the notes are kept, relative to the course folder."""

Notes = dict[str, dict[str, list[str]]]
"""assignment -> student -> notes."""


def read_notes(root: Path | str) -> Notes:
    """Every note kept in the course folder ``root`` (none if there is no file, or it is unreadable)."""
    path = Path(root) / NOTES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(a): {str(s): [str(n) for n in notes] for s, notes in students.items()}
        for a, students in data.items()
        if isinstance(students, dict)
    }


def update_notes(root: Path | str, assignment: str, by_student: Mapping[str, list[str]]) -> Path:
    """Replace the notes of the students in ``by_student`` (an empty list removes them)."""
    path = Path(root) / NOTES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = read_notes(root)
    kept = notes.setdefault(assignment, {})
    for student, found in by_student.items():
        if found:
            kept[student] = list(found)
        else:
            kept.pop(student, None)
    path.write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
