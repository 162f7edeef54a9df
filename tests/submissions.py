"""Submissions made from an assignment's solution, autograded many at a time: the proof helpers.

An autograder is proven by grading submissions whose score is known in advance: the solution, the
blank student version, one *mutant* per catalogued misconception (the solution with one mistake
put in), alternative correct implementations and submissions that delegate to a reference. This
module writes such submissions from the instructor version and grades a whole set of them in one
temporary nbgrader course.

Writing submissions
-------------------
``answers(source)`` gives the code inside the solution region (between ``### BEGIN SOLUTION`` and
``### END SOLUTION``) of every solution cell, dedented. A mutant is that code with one edit,
``edited(code, (old, new), ...)``, which fails loudly when ``old`` is not found exactly once (so
that a change to the solution cannot silently turn a mutant into the solution). An alternative
implementation is simply new code for the region. ``submission(source, {grade_id: code})`` then
builds the notebook a student would hand in: the source notebook with each named cell's solution
region replaced by the given code (indented like the region, so a function body stays inside its
``def``), the other solution cells answered with the instructor's code, the markers removed, and
the hidden tests taken out of the test cells (nbgrader puts them back when it grades)::

    source = read_source("ps01_batchnorm")
    code = answers(source)["batchnorm_forward_train"]
    biased = edited(code, ("momentum * var * n / (n - 1)", "momentum * var"))
    notebooks = {
        "solution": submission(source),
        "biased": submission(source, {"batchnorm_forward_train": biased}),
    }

Grading many
------------
``autograde_many(tmp_path, "ps01_batchnorm", notebooks)`` makes ONE temporary course with the
repository's nbgrader configuration (see ``nbgrader_course.Course``), runs ``generate_assignment``
once, submits every notebook under its key as the student id, and runs nbgrader's own
``autograde`` once for all of them. It returns a :class:`Graded` per student: ``scores`` (grade id
-> (score, max score) from the gradebook), ``outputs`` (grade id -> everything that cell printed
or raised in the autograded notebook: the feedback a student reads) and ``seconds`` (the
autograde time per submission, the run's time divided by the number of submissions)::

    graded = autograde_many(tmp_path, "ps01_batchnorm", notebooks)
    assert graded["biased"].score_vector(POINTS) == (3, 0, 2, 0)
    assert "[biased-running-variance]" in graded["biased"].outputs["test_running_update"]

``"blank"`` can be passed as a notebook value to grade the generated student version as is. Keep
the set of submissions of one test file in one ``autograde_many`` call (a module-scoped fixture
with ``tmp_path_factory``): the course set-up and the nbgrader start-up are then paid once, and
each submission costs one kernel start and its cells (2.5 to 5 s for ps01 on a busy 2-core
machine); kernels are killed as soon as their notebook has run.
Mark such tests ``@pytest.mark.slow`` and filter nbgrader's harmless SQLAlchemy warning, as
``tests/test_ps01_mutants.py`` does::

    pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader_course import REPO, Course, by_grade_id, cell_text
from traitlets.config import Config

__all__ = [
    "BLANK",
    "Graded",
    "answers",
    "autograde_many",
    "edited",
    "read_source",
    "submission",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN = re.compile(
    r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?", re.M | re.S
)
FAST_SHUTDOWN = Config({"Execute": {"shutdown_kernel": "immediate"}})
BLANK = "blank"
"""A notebook value for :func:`autograde_many`: the generated student version, unanswered."""


def read_source(assignment: str) -> NotebookNode:
    """The instructor version of ``assignment`` from the repository's ``solutions/``."""
    return nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)


def _solution_cells(nb: NotebookNode) -> dict[str, NotebookNode]:
    return {
        grade_id: cell
        for grade_id, cell in by_grade_id(nb).items()
        if cell.metadata["nbgrader"].get("solution") and cell.cell_type == "code"
    }


def _region(source: str, grade_id: str) -> tuple[int, int, str]:
    """Line numbers of the BEGIN and END markers of the one solution region, and its indent."""
    lines = source.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"cell {grade_id!r} must have exactly one solution region")
    indent = lines[begins[0]][: len(lines[begins[0]]) - len(lines[begins[0]].lstrip())]
    return begins[0], ends[0], indent


def answers(source: NotebookNode) -> dict[str, str]:
    """The instructor's code inside the solution region of each solution cell, dedented."""
    out = {}
    for grade_id, cell in _solution_cells(source).items():
        begin, end, _ = _region(cell.source, grade_id)
        out[grade_id] = textwrap.dedent("\n".join(cell.source.splitlines()[begin + 1 : end]))
    return out


def edited(code: str, *edits: tuple[str, str]) -> str:
    """``code`` with each ``(old, new)`` applied in turn; ``old`` must occur exactly once."""
    for old, new in edits:
        count = code.count(old)
        if count != 1:
            raise ValueError(f"expected {old!r} exactly once in the code, found it {count} times")
        code = code.replace(old, new)
    return code


def _fill(source: str, grade_id: str, code: str) -> str:
    """``source`` with its solution region replaced by ``code`` (indented like the region)."""
    begin, end, indent = _region(source, grade_id)
    lines = source.splitlines()
    body = textwrap.indent(textwrap.dedent(code).strip("\n"), indent, lambda line: True)
    return "\n".join(lines[:begin] + body.splitlines() + lines[end + 1 :])


def submission(source: NotebookNode, replace: Mapping[str, str] | None = None) -> NotebookNode:
    """What a student would hand in: ``source`` answered with the instructor's code, except that
    the solution region of each cell named in ``replace`` (grade id -> code) holds that code."""
    replace = dict(replace or {})
    nb = nbformat.from_dict(source)
    cells = _solution_cells(nb)
    unknown = set(replace) - set(cells)
    if unknown:
        raise KeyError(f"no solution cells named {sorted(unknown)}; there are {sorted(cells)}")
    instructor = answers(nb)
    for grade_id, cell in cells.items():
        cell.source = _fill(cell.source, grade_id, replace.get(grade_id, instructor[grade_id]))
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = HIDDEN.sub("", cell.source).rstrip("\n")
    return nb


@dataclass
class Graded:
    """One autograded submission: scores per graded cell, the feedback of every cell, time."""

    scores: dict[str, tuple[float, float]]
    outputs: dict[str, str] = field(repr=False)
    seconds: float

    def score_vector(self, order: Sequence[str]) -> tuple[float, ...]:
        """The scores of the graded cells ``order`` (e.g. the keys of an assignment's POINTS)."""
        return tuple(self.scores[grade_id][0] for grade_id in order)

    @property
    def total(self) -> tuple[float, float]:
        return (
            sum(score for score, _ in self.scores.values()),
            sum(top for _, top in self.scores.values()),
        )

    def feedback(self, grade_ids: Sequence[str] | None = None) -> str:
        """The text output of the graded cells ``grade_ids`` (all graded cells by default)."""
        grade_ids = list(self.scores) if grade_ids is None else grade_ids
        return "\n".join(self.outputs[g] for g in grade_ids)


def autograde_many(
    root: Path,
    assignment: str,
    notebooks: Mapping[str, NotebookNode | str],
    *,
    source: Path | None = None,
) -> dict[str, Graded]:
    """Autograde every notebook of ``notebooks`` (student id -> submission, or :data:`BLANK`) in
    one temporary course at ``root``; see the module docstring."""
    bad = [s for s in notebooks if not re.fullmatch(r"[A-Za-z0-9_-]+", s)]
    if bad:
        raise ValueError(f"student ids must be letters, digits, '-' or '_', got {bad}")
    # Killing each kernel once its notebook has run changes no grade and saves the 1 to 2 s
    # that a graceful shutdown waits for the kernel process to exit.
    course = Course(Path(root), assignment, source=source, overrides=FAST_SHUTDOWN)
    release = course.generate()
    for student, nb in notebooks.items():
        course.submit(student, release if isinstance(nb, str) and nb == BLANK else nb)
    seconds = course.autograde("*") / max(1, len(notebooks))
    graded = {}
    for student in notebooks:
        outputs = {g: cell_text(cell) for g, cell in by_grade_id(course.graded(student)).items()}
        graded[student] = Graded(course.scores(student), outputs, seconds)
    return graded
