"""The nbgrader settings that make grading trusted; light to import (``nbgrader_config.py`` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "AUTOGRADE_PREPROCESSORS",
    "SANITIZE_PREPROCESSORS",
    "FEEDBACK_PREPROCESSORS",
    "FEEDBACK_TEMPLATES",
    "use_trusted_grading",
]

AUTOGRADE_PREPROCESSORS = [
    "bncourse.trusted.execute.TrustedExecute",  # in place of nbgrader.preprocessors.Execute
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
"""nbgrader's own ``Autograde.autograde_preprocessors``, with the trusted execution step."""

SANITIZE_PREPROCESSORS = [
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "bncourse.trusted.test_cells.RestoreTestCells",  # in place of OverwriteCells
    "nbgrader.preprocessors.CheckCellMetadata",
]
"""nbgrader's own ``Autograde.sanitize_preprocessors``: test cells put back from the gradebook
without a false "changed" warning for each test cell with hidden tests."""

FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "nbgrader.preprocessors.ClearHiddenTests",  # feedback never shows hidden tests
    # points table, the student's own frames, MathJax inlined (bncourse.instructor.feedback)
    "bncourse.instructor.feedback.FeedbackPage",
]
"""nbgrader's own ``GenerateFeedback.preprocessors``, with hidden tests cleared, then ours."""

FEEDBACK_TEMPLATES = str(Path(__file__).resolve().parents[1] / "instructor" / "templates")
"""Holds ``feedback/``, the page template that replaces nbgrader's of the same name."""


def use_trusted_grading(config: Any) -> None:
    """Make nbgrader's autograde and feedback in ``config`` (a traitlets Config) trusted."""
    config.Autograde.sanitize_preprocessors = list(SANITIZE_PREPROCESSORS)
    config.Autograde.autograde_preprocessors = list(AUTOGRADE_PREPROCESSORS)
    config.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    # nbgrader's API asks for the template named "feedback"; ours is found first.
    config.HTMLExporter.extra_template_basedirs = [FEEDBACK_TEMPLATES]
    config.HTMLExporter.filters = {"link_urls": "bncourse.instructor.feedback.link_urls"}
