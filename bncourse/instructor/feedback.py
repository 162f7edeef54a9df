"""The feedback page a student receives (``nbgrader generate_feedback``, ``bncourse grade``).

nbgrader renders the graded notebook with the ``feedback`` template of
``bncourse/instructor/templates`` (set by :func:`bncourse.trusted.config.use_trusted_grading`).
:class:`FeedbackPage` prepares what that template shows: the points per graded cell, the
student's own frames in tracebacks and MathJax inlined, so that the one HTML file renders math
from disk with no network (the component the book serves, from the ``django-static-mathjax``
wheel; SVG output, which needs no font files).
"""

from __future__ import annotations

import re
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from markupsafe import Markup
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from traitlets import Bool

from bncourse.trusted.frames import filter_text

__all__ = ["MATHJAX_COMPONENT", "FeedbackPage", "link_urls", "mathjax_script", "points"]

MATHJAX_COMPONENT = "tex-svg-full.js"
"""The MathJax 3 component inlined in each page: every TeX extension, glyphs drawn as SVG paths."""

_URL = re.compile(r"https?://[^\s<>\"']+")
_TRAILING = ".,;:!?)]}'"


def mathjax_script(component: str = MATHJAX_COMPONENT) -> str:
    """The MathJax component's source, safe inside ``<script>``; "" where MathJax is missing."""
    try:
        folder = Path(str(package_files.files("mathjax"))) / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        return ""
    path = folder / component
    if not path.is_file():
        return ""
    source = path.read_text(encoding="utf-8")
    # "<\x21--" and "</script" would end or confuse the HTML parser's script data; \x3C is "<"
    # in a JavaScript string or regular expression alike.
    return re.sub(r"<(?=!--|/script)", r"\\x3C", source, flags=re.I)


def link_urls(html: str) -> Markup:
    """``html`` (escaped text, as ``ansi2html`` gives) with each http(s) URL made a link."""

    def link(match: re.Match) -> str:
        url = match.group(0)
        tail = ""
        while url and url[-1] in _TRAILING:
            url, tail = url[:-1], url[-1] + tail
        return f'<a href="{url}" rel="noopener">{url}</a>{tail}'

    return Markup(_URL.sub(link, str(html)))


def _number(value: Any) -> str:
    """A score as people write it: 3, 2.5, 0.33."""
    number = round(float(value or 0), 2)
    return f"{number:g}"


def _kind(cell: NotebookNode, meta: dict[str, Any]) -> str:
    if meta.get("task"):
        return "task"
    if cell.cell_type == "markdown":
        return "written answer"
    return "graded answer" if meta.get("solution") else "test"


def points(nb: NotebookNode) -> list[dict[str, Any]]:
    """One row per graded cell of a notebook that ``GetGrades`` has annotated, in order."""
    rows = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not (meta.get("grade") or meta.get("task")):
            continue
        score, maximum = float(meta.get("score") or 0), float(meta.get("points") or 0)
        rows.append(
            {
                "id": meta.get("grade_id", ""),
                "kind": _kind(cell, meta),
                "score": _number(score),
                "max": _number(maximum),
                "full": score >= maximum,
            }
        )
    return rows


class FeedbackPage(Preprocessor):
    """Points table, the student's own frames, offline MathJax: what the feedback template shows."""

    enabled = Bool(True)  # nbconvert's preprocessors are off unless enabled

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]):
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = filter_text(list(output.get("traceback", [])))
        grades = resources.get("nbgrader", {})
        resources["bncourse_feedback"] = {
            "points": points(nb),
            "score": _number(grades.get("score")),
            "max_score": _number(grades.get("max_score")),
            "late_penalty": _number(grades["late_penalty"]) if grades.get("late_penalty") else "",
            "mathjax": Markup(mathjax_script()),
        }
        return nb, resources
