"""Build nbgrader source notebooks with nbformat: cells with the right nbgrader metadata.

Each cell kind sets the ``nbgrader`` metadata of schema version 3 the way the "Create Assignment"
toolbar does, and every cell gets a stable id, so that rebuilding a notebook gives the same file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bncourse.distribution import setup_cell_source

SCHEMA_VERSION = 3
INSTALL_ID = "install"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _nbgrader(
    grade_id: str, *, grade: bool, solution: bool, locked: bool, points: float | None = None
) -> dict:
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
        "task": False,
    }
    if points is not None:
        meta["points"] = points
    return meta


def _text(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def instructions(grade_id: str, source: str) -> NotebookNode:
    """A read-only markdown cell (restored from the source version at grading)."""
    cell = new_markdown_cell(_text(source), id=grade_id)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=False, solution=False, locked=True)
    return cell


def readonly_code(grade_id: str, source: str) -> NotebookNode:
    """A read-only code cell, e.g. imports every later cell relies on."""
    cell = new_code_cell(_text(source), id=grade_id)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=False, solution=False, locked=True)
    return cell


def solution(grade_id: str, source: str) -> NotebookNode:
    """An autograded-answer cell: what lies between the solution markers is cleared for students."""
    cell = new_code_cell(_text(source), id=grade_id)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=False, solution=True, locked=False)
    return cell


def tests(grade_id: str, points: float, source: str) -> NotebookNode:
    """An autograder-tests cell worth ``points``; hidden tests go between the hidden-test markers."""
    if points <= 0:
        raise ValueError(f"points must be positive, got {points}")
    cell = new_code_cell(_text(source), id=grade_id)
    cell.metadata["nbgrader"] = _nbgrader(
        grade_id, grade=True, solution=False, locked=True, points=points
    )
    return cell


def written_answer(grade_id: str, points: float, source: str) -> NotebookNode:
    """A manually graded markdown answer worth ``points``: what lies between the solution markers
    is replaced by nbgrader's "YOUR ANSWER HERE" for students, and a grader scores it by hand
    (autograding leaves it ungraded)."""
    if points <= 0:
        raise ValueError(f"points must be positive, got {points}")
    cell = new_markdown_cell(_text(source), id=grade_id)
    cell.metadata["nbgrader"] = _nbgrader(
        grade_id, grade=True, solution=True, locked=False, points=points
    )
    return cell


def scratch(cell_id: str, source: str) -> NotebookNode:
    """A free code cell for students to try things; not graded, not restored."""
    return new_code_cell(_text(source), id=cell_id)


def install() -> NotebookNode:
    """The read-only set-up cell every notebook begins with: installs the course's package on
    Colab, Binder or wherever it is missing, and does nothing where it is installed."""
    return readonly_code(INSTALL_ID, setup_cell_source())


def notebook(cells: list[NotebookNode]) -> NotebookNode:
    """A notebook of the set-up cell and ``cells``, with a python3 kernel, validated by nbformat."""
    cells = [install(), *cells]
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"cell ids must be unique, got {ids}")
    nb = new_notebook(
        cells=cells,
        metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}},
    )
    nbformat.validate(nb)
    return nb


def write(nb: NotebookNode, path: Path) -> None:
    """Write ``nb`` as nbformat 4 JSON (one-space indent, trailing newline, as Jupyter does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
