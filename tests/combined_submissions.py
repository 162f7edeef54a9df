"""Rewrites of several solution cells graded side by side: fewer submissions, the same proof.

An assignment whose functions are graded by disjoint cells can carry one rewrite of each function
in one submission: a mutant (one catalogued mistake) of one function next to an alternative
(another correct way to write it) of another, and so on. The exact per-cell score vector and the
exact set of misconceptions named in each cell then prove, for every rewrite at once, that it
costs exactly its own cells and that nothing leaks into the others. :func:`side_by_side` lays the
rewrites of each function out in rows, as many as the function with the most rewrites has;
:func:`check_graded` asserts what a graded row must show. Built on ``tests/submissions.py``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from submissions import BLANK, Graded, autograde_many, read_source, submission

from bncourse.grading import CATALOGUE

__all__ = [
    "GUARD",
    "Rewrite",
    "Row",
    "check_graded",
    "grade_side_by_side",
    "rewrites_of",
    "side_by_side",
    "student_id",
]

#: What the guard's refusal says in every cell it costs (of a course reference: "... scores zero
#: until it does"; of torch's own routine: "... scores zero until the function computes ...").
GUARD = "scores zero until"


@dataclass(frozen=True)
class Rewrite:
    """New code for one solution cell, the graded cells it costs and what their feedback says.

    An alternative costs nothing. A mutant names its misconception in every cell it costs; a
    delegation's feedback ``says`` which reference it called.
    """

    cell: str
    code: str
    lost: frozenset[str] = frozenset()
    named: str = ""
    says: str = ""


@dataclass(frozen=True)
class Row:
    """The rewrites graded together in one submission, at most one per solution cell."""

    rewrites: tuple[Rewrite, ...]

    @property
    def code(self) -> dict[str, str]:
        return {r.cell: r.code for r in self.rewrites}

    @property
    def lost(self) -> set[str]:
        return {g for r in self.rewrites for g in r.lost}

    def costing(self, grade_id: str) -> Rewrite | None:
        return next((r for r in self.rewrites if grade_id in r.lost), None)


def side_by_side(per_cell: Sequence[Mapping[str, Rewrite]]) -> dict[str, Row]:
    """Rows of rewrites, the i-th rewrite of every cell in row i, named after their names."""
    rows = {}
    for items in itertools.zip_longest(*(list(rewrites.items()) for rewrites in per_cell)):
        present = [item for item in items if item is not None]
        rows["+".join(name for name, _ in present)] = Row(tuple(r for _, r in present))
    return rows


def student_id(name: str) -> str:
    """A row's name as an nbgrader student id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def check_graded(row: Row, result: Graded, points: Mapping[str, float]) -> None:
    """Exact per-cell scores; each lost cell names its mistake (and nothing else), each other
    cell passes its checks; no feedback shows an expected value."""
    order = list(points)
    expected = tuple(0 if g in row.lost else points[g] for g in order)
    assert result.score_vector(order) == expected, result.feedback()
    for grade_id in order:
        text = result.outputs[grade_id]
        named = {m for m in CATALOGUE if f"[{m}]" in text}
        rewrite = row.costing(grade_id)
        if rewrite is None:
            assert not named and "matches the reference" in text, (grade_id, text)
            continue
        assert named == ({rewrite.named} if rewrite.named else set()), (grade_id, text)
        if rewrite.says:
            assert rewrite.says in text and GUARD in text, (grade_id, text)
        assert "tensor(" not in text, (grade_id, text)
        assert not re.search(r"\d\.\d{4,}", text), (grade_id, text)


def rewrites_of(
    cell: str,
    mutants: Mapping[str, Mapping[str, Rewrite]],
    delegations: Mapping[str, Mapping[str, Rewrite]],
    alternatives: Mapping[str, Mapping[str, str]],
) -> dict[str, Rewrite]:
    """The mutants, delegations and alternatives (name -> {cell: code}) of one solution cell."""
    others = {n: Rewrite(cell, code[cell]) for n, code in alternatives.items() if cell in code}
    return {**mutants[cell], **delegations[cell], **others}


def grade_side_by_side(root: Path, assignment: str, rows: Mapping[str, Row]) -> dict[str, Graded]:
    """Autograde the solution, the blank student version and one submission per row in ``root``.

    Results are keyed by :func:`student_id` of ``"solution"``, ``"blank"`` and each row's name.
    """
    source = read_source(assignment)
    notebooks = {"solution": submission(source), "blank": BLANK}
    for name, row in rows.items():
        notebooks[name] = submission(source, row.code)
    results = autograde_many(root, assignment, {student_id(k): v for k, v in notebooks.items()})
    seconds = next(iter(results.values())).seconds
    print(f"\n{assignment}: autograde {seconds:.1f} s per submission ({len(results)} submissions)")
    return results
