"""The misconceptions each student made, read from the trusted verdicts in the graded notebooks.

With trusted grading (:mod:`bncourse.trusted.execute`) the outputs of every autograded test cell
in ``autograded/<student>/<assignment>/`` are the grader's own: the cell's source is the
instructor's, and its error output is the check's message, which names each misconception as
:meth:`~bncourse.grading.catalogue.Misconception.explain` writes it, ``Misconception: title
[name]``. Two things a submission controls are left out: an error that the notebook's own code
raised (the grader adds the note "Where the notebook raised it:" to those), and any name that is
neither in the catalogue nor written in the test cell's own source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

NAMED = re.compile(r"Misconception: (?P<title>[^\n\[\]]+?) \[(?P<name>[a-z0-9][a-z0-9-]*)\]")
"""How a check names a misconception (see ``Misconception.explain``)."""

RAISED_BY_NOTEBOOK = "Where the notebook raised it:"
"""The note the grader adds to an exception raised by the notebook's own code."""


@dataclass
class Found:
    """One misconception across a class: who made it and in which parts."""

    name: str
    title: str
    students: set[str] = field(default_factory=set)
    parts: set[str] = field(default_factory=set)


def _known_names() -> set[str]:
    from bncourse.grading.catalogue import CATALOGUE

    return set(CATALOGUE)


def _is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution")


def in_notebook(path: Path, known: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(part, name, title) of each misconception the checks named in one graded notebook."""
    known = _known_names() if known is None else known
    nb = nbformat.read(path, as_version=4)
    found = []
    for cell in nb.cells:
        if not _is_test_cell(cell):
            continue
        part = cell["metadata"]["nbgrader"].get("grade_id", "")
        allowed = known | set(re.findall(r"\[([a-z0-9][a-z0-9-]*)\]", cell.source))
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                if any(RAISED_BY_NOTEBOOK in line for line in output.get("traceback", [])):
                    continue
                text = str(output.get("evalue", ""))
            elif output.get("output_type") == "stream":
                text = str(output.get("text", ""))
            else:
                continue
            for match in NAMED.finditer(text):
                if match.group("name") in allowed:
                    item = (part, match.group("name"), match.group("title").strip())
                    if item not in found:
                        found.append(item)
    return found


def in_class(autograded_dir: Path, assignment: str, students: list[str]) -> list[Found]:
    """Every misconception named in the class's graded notebooks, most frequent first."""
    known = _known_names()
    by_name: dict[str, Found] = {}
    for student in students:
        folder = Path(autograded_dir) / student / assignment
        for path in sorted(folder.glob("*.ipynb")):
            for part, name, title in in_notebook(path, known):
                entry = by_name.setdefault(name, Found(name=name, title=title))
                entry.students.add(student)
                entry.parts.add(part)
    return sorted(by_name.values(), key=lambda f: (-len(f.students), f.name))
