"""A tiny nbgrader course, ``warmup``, for trying the instructor workflow in seconds.

The assignment asks for the two statistics batch normalization computes: the mean and the
*biased* variance of a list of numbers. It imports nothing heavy, so a kernel grades a submission
in about a second; the book's chapter for instructors and the tests of ``bncourse grade`` use it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ASSIGNMENT = "warmup"
"""Assignment id (and notebook name) of the example class."""

POINTS = {"test_mean": 2, "test_variance": 3}
"""Points of each autograded test cell."""

WRITTEN = {"why_biased": 1}
"""Points of the written answer (graded by hand) that ``make_course(..., written=True)`` adds."""

MISCONCEPTIONS = {
    "median-for-mean": "the median instead of the mean",
    "unbiased-variance": "the unbiased variance (divide by n - 1)",
}
"""The mistakes the example's checks recognise and name, as the course's checks do."""

CONFIG_TEMPLATE = '''\
"""nbgrader configuration of an example course."""

import os

from bncourse.trusted.config import use_trusted_grading

c = get_config()  # noqa: F821

_root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = _root
c.CourseDirectory.course_id = "example"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.db_url = {db_url}
c.Execute.timeout = {timeout}
c.ExecutePreprocessor.timeout = {timeout}
c.Execute.kernel_name = "python3"
c.ExecutePreprocessor.kernel_name = "python3"
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.OverwriteCells.add_missing_cells = True
# `nbgrader export` writes grades.csv as `bncourse grade` does: a column per graded part.
c.ExportApp.plugin_class = "bncourse.instructor.class_grades.PartsCsvExportPlugin"
# Test cells run in the grader, the notebook in a sandbox; feedback without hidden tests.
use_trusted_grading(c)
'''

ANSWERS: dict[str, dict[str, str]] = {
    "correct": {
        "mean": "def mean(xs):\n    return sum(xs) / len(xs)",
        "variance": (
            "def variance(xs):\n    m = mean(xs)\n    return sum((x - m) ** 2 for x in xs) / len(xs)"
        ),
    },
    "unbiased": {
        "mean": "def mean(xs):\n    return sum(xs) / len(xs)",
        "variance": (
            "def variance(xs):\n"
            "    m = mean(xs)\n"
            "    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)"
        ),
    },
    "median": {
        "mean": "def mean(xs):\n    return sorted(xs)[len(xs) // 2]",
        "variance": (
            "def variance(xs):\n    m = mean(xs)\n    return sum((x - m) ** 2 for x in xs) / len(xs)"
        ),
    },
    "blank": {},
}
"""Answers of four kinds of student: all correct, the unbiased-variance mistake, the median
taken for the mean (its variance, built on that mean, is wrong too), and blank."""

WRITTEN_ANSWER = "Training normalises the batch with its own statistics, which divide by n."
"""The model written answer (the instructor version's); students' answers replace it by its
cell's id, ``why_biased``, like the code answers."""


def _named(name: str) -> str:
    """The sentence a check adds when it recognises ``name``, as ``Misconception.explain`` starts."""
    return f"Misconception: {MISCONCEPTIONS[name]} [{name}]."


def _nbgrader(grade_id: str, *, solution: bool, grade: bool, points: int = 0) -> dict:
    meta: dict = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": not solution,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


def source_notebook(*, written: bool = False) -> nbformat.NotebookNode:
    """The instructor version: solutions between markers, visible and hidden tests; with
    ``written``, a last question answered in words and graded by hand."""
    cells = [
        new_markdown_cell(
            "# Warm-up: the statistics of batch normalization\n\n"
            "Implement `mean(xs)` and the **biased** `variance(xs)` (divide by n, as batch "
            "normalization does when it normalizes a batch):\n\n"
            "$$\\mu = \\frac{1}{n}\\sum_{i=1}^{n} x_i, \\qquad "
            "\\sigma^2 = \\frac{1}{n}\\sum_{i=1}^{n} (x_i - \\mu)^2.$$"
        ),
        new_code_cell(
            "### BEGIN SOLUTION\n" + ANSWERS["correct"]["mean"] + "\n### END SOLUTION",
            metadata=_nbgrader("mean", solution=True, grade=False),
        ),
        new_code_cell(
            textwrap.dedent(
                f"""\
                m = mean([1.0, 2.0, 6.0])
                assert m == 3.0, "mean([1, 2, 6]) should be 3" + (
                    "\\n{_named("median-for-mean")}" if m == 2.0 else ""
                )
                ### BEGIN HIDDEN TESTS
                assert mean([-4.0, 4.0]) == 0.0
                ### END HIDDEN TESTS"""
            ),
            metadata=_nbgrader("test_mean", solution=False, grade=True, points=POINTS["test_mean"]),
        ),
        new_code_cell(
            "### BEGIN SOLUTION\n" + ANSWERS["correct"]["variance"] + "\n### END SOLUTION",
            metadata=_nbgrader("variance", solution=True, grade=False),
        ),
        new_code_cell(
            textwrap.dedent(
                f"""\
                from bncourse.grading.catalogue import book_link

                v = variance([1.0, 2.0, 6.0])
                assert abs(v - 14 / 3) < 1e-12, (
                    f"variance([1, 2, 6]) gave {{v:.4f}}: divide by n (biased), not by n - 1, "
                    "because batch normalization normalizes a batch with the variance of that "
                    "batch itself, not with an estimate of the variance of the population it was "
                    "drawn from. Read more: " + book_link("batchnorm", "bn-unbiased-variance")
                    + ("\\n{_named("unbiased-variance")}" if abs(v - 7) < 1e-12 else "")
                )"""
            ),
            metadata=_nbgrader(
                "test_variance", solution=False, grade=True, points=POINTS["test_variance"]
            ),
        ),
    ]
    if written:
        cells += [
            new_markdown_cell(
                "In words: why does batch normalization divide by n, not by n - 1, while training?"
            ),
            new_markdown_cell(
                WRITTEN_ANSWER,
                metadata=_nbgrader(
                    "why_biased", solution=True, grade=True, points=WRITTEN["why_biased"]
                ),
            ),
        ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def write_config(root: Path, *, timeout: int = 30, db_url: str | None = None) -> Path:
    """Write ``nbgrader_config.py`` of an example course rooted at ``root``."""
    if timeout < 1:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    db = repr(db_url) if db_url else '"sqlite:///" + os.path.join(_root, "gradebook.db")'
    path = Path(root) / "nbgrader_config.py"
    path.write_text(CONFIG_TEMPLATE.format(db_url=db, timeout=int(timeout)))
    return path


def make_course(
    root: Path, *, timeout: int = 30, db_url: str | None = None, written: bool = False
) -> Path:
    """Create the example course in ``root``: configuration and instructor notebook (with
    ``written``, one more question graded by hand)."""
    root = Path(root)
    source = root / "solutions" / ASSIGNMENT
    source.mkdir(parents=True, exist_ok=True)
    write_config(root, timeout=timeout, db_url=db_url)
    nbformat.write(source_notebook(written=written), source / f"{ASSIGNMENT}.ipynb")
    return root


def answer(release_nb: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """A student's copy of ``release_nb`` with the solution cells named in ``answers`` filled in."""
    nb = nbformat.from_dict(release_nb)
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return nb


def submit(root: Path, student: str, nb: nbformat.NotebookNode, name: str | None = None) -> Path:
    """Put ``nb`` where nbgrader expects a collected submission of ``student``."""
    folder = Path(root) / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ASSIGNMENT}.ipynb")
    nbformat.write(nb, path)
    return path
