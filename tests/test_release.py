"""Every assignment's student version in exercises/ is what nbgrader generates from solutions/,
carries no outputs and no solution text."""

from __future__ import annotations

import nbformat
import pytest
from nbgrader_course import REPO, Course

ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")

pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")


def _notebook(folder: str, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / folder / assignment / f"{assignment}.ipynb", as_version=4)


def _view(nb: nbformat.NotebookNode) -> list[tuple]:
    """What a student receives: cell ids, types, sources and metadata, and the notebook's metadata."""
    return [nb.metadata] + [(c.get("id"), c.cell_type, c.source, c.metadata) for c in nb.cells]


def _solution_lines(nb: nbformat.NotebookNode) -> set[str]:
    """Lines inside solution and hidden-test regions that appear nowhere else in the notebook."""
    inside, outside = set(), set()
    for cell in nb.cells:
        region = False
        for line in cell.source.splitlines():
            text = line.strip()
            if text.startswith("### BEGIN"):
                region = True
            (inside if region else outside).add(text)
            if text.startswith("### END"):
                region = False
    return {line for line in inside - outside if line}


def test_every_assignment_is_released():
    assert ASSIGNMENTS
    assert sorted(p.name for p in (REPO / "exercises").iterdir() if p.is_dir()) == ASSIGNMENTS


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebooks_carry_no_outputs(assignment):
    for folder in ("solutions", "exercises"):
        for cell in _notebook(folder, assignment).cells:
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                folder,
                cell.id,
            )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_released_file_contains_solution_text(assignment):
    secret = _solution_lines(_notebook("solutions", assignment))
    assert len(secret) >= 5, assignment  # answers and hidden tests
    folder = REPO / "exercises" / assignment
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert [p.name for p in files] == [f"{assignment}.ipynb"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for marker in MARKERS:
            assert marker not in text, (path, marker)
        released_lines = {
            line.strip()
            for cell in nbformat.reads(text, 4).cells
            for line in cell.source.splitlines()
        }
        assert not secret & released_lines, (path, secret & released_lines)


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercises_are_what_nbgrader_generates_from_solutions(tmp_path, assignment):
    generated = Course(tmp_path, assignment).generate()
    assert _view(generated) == _view(_notebook("exercises", assignment))
    released = REPO / "exercises" / assignment
    assert sorted(p.name for p in (tmp_path / "exercises" / assignment).iterdir()) == sorted(
        p.name for p in released.iterdir()
    )
