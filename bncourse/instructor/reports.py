"""The class report: one self-contained HTML page per assignment for the instructor.

It shows, for the whole class, the distribution of scores of the assignment and of each graded
part (matplotlib figures inlined as SVG: the page loads nothing from anywhere), a table per part
(maximum, mean, full marks, zero, not submitted, waiting for a grader) and the count of each
misconception the checks named, with the students who made it (:mod:`misconceptions`), and the
notes grading kept for a grader to read (:mod:`review_notes`).
"""

from __future__ import annotations

import html
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bncourse.instructor.class_grades import AssignmentGrades
from bncourse.instructor.misconceptions import Found


@dataclass(frozen=True)
class PartSummary:
    """The class's results on one part (or on the whole assignment)."""

    name: str
    max_score: float
    scores: list[float]
    """The scores of the students who submitted."""
    not_submitted: int
    needs_manual: int
    written: bool = False

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def full_marks(self) -> int:
        return sum(1 for s in self.scores if s >= self.max_score > 0)

    @property
    def zeros(self) -> int:
        return sum(1 for s in self.scores if s == 0)


def summarize(grades: AssignmentGrades) -> list[PartSummary]:
    """The whole assignment first (``total``), then each part in the notebook's order."""
    submitted = grades.submitted
    missing = len(grades.students) - len(submitted)
    rows = [
        PartSummary(
            name="total",
            max_score=grades.max_score,
            scores=[s.score for s in submitted if s.score is not None],
            not_submitted=missing,
            needs_manual=sum(1 for s in submitted if s.needs_manual),
        )
    ]
    for part in grades.parts:
        rows.append(
            PartSummary(
                name=part.column,
                max_score=part.max_score,
                scores=[s.parts[part.column] or 0.0 for s in submitted],
                not_submitted=missing,
                needs_manual=sum(1 for s in submitted if part.column in s.needs_manual),
                written=part.written,
            )
        )
    return rows


def _figure_svg(summaries: list[PartSummary]) -> str:
    """One bar chart per part: how many students got each score; inline SVG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    columns = min(3, len(summaries))
    rows = -(-len(summaries) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(summaries) :]:
        ax.set_visible(False)
    for ax, part in zip(axes.flat, summaries, strict=False):
        counts = Counter(part.scores)
        values = sorted(counts)
        ax.bar([f"{v:g}" for v in values], [counts[v] for v in values], color="#3b6ea5")
        if part.not_submitted:
            ax.bar(["not\nsubmitted"], [part.not_submitted], color="#bbbbbb")
        ax.set_title(f"{part.name} (max {part.max_score:g})", fontsize=10)
        ax.set_xlabel("score")
        ax.set_ylabel("students")
        ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prologue and DOCTYPE: inline in HTML


def part_table(summaries: list[PartSummary]) -> list[dict[str, str]]:
    """The per-part table as rows of text (for the page, and for printing)."""
    return [
        {
            "part": p.name + (" (written)" if p.written else ""),
            "max": f"{p.max_score:g}",
            "mean": "-" if p.mean is None else f"{p.mean:.2f}",
            "full marks": str(p.full_marks),
            "zero": str(p.zeros),
            "not submitted": str(p.not_submitted),
            "needs manual grading": str(p.needs_manual),
        }
        for p in summaries
    ]


def misconception_table(found: list[Found]) -> list[dict[str, str]]:
    """One row per misconception: name, title, parts, how many students and who."""
    return [
        {
            "misconception": f.name,
            "title": f.title,
            "parts": ", ".join(sorted(f.parts)),
            "students": str(len(f.students)),
            "who": ", ".join(sorted(f.students)),
        }
        for f in found
    ]


def notes_table(grades: AssignmentGrades) -> list[dict[str, str]]:
    """One row per student with notes for a grader: who, and each note."""
    return [
        {"student": s.student, "notes": " | ".join(s.notes)} for s in grades.students if s.notes
    ]


def _html_table(rows: list[dict[str, str]], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
svg { max-width: 100%; height: auto; }
"""


def render(grades: AssignmentGrades, found: list[Found]) -> str:
    """The class report of one assignment as a self-contained HTML page."""
    summaries = summarize(grades)
    title = f"Class report: {grades.assignment}"
    submitted = len(grades.submitted)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{submitted} of {len(grades.students)} students submitted; the maximum is "
        f"{grades.max_score:g} points.</p>"
        "<h2>Scores</h2>"
        + _html_table(part_table(summaries), "No graded parts.")
        + (_figure_svg(summaries) if submitted else "")
        + "<h2>Misconceptions</h2>"
        "<p>Each mistake a check recognised and named, with the students who made it.</p>"
        + _html_table(misconception_table(found), "No check named a misconception.")
        + "<h2>For review</h2>"
        "<p>What grading noted for a grader to read: problems met, routes around the checks.</p>"
        + _html_table(notes_table(grades), "Nothing to review.")
        + "</body></html>\n"
    )


def write_report(grades: AssignmentGrades, found: list[Found], path: Path) -> Path:
    """Write :func:`render`'s page to ``path``."""
    Path(path).write_text(render(grades, found), encoding="utf-8")
    return Path(path)
