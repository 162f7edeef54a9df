"""Test cells put back from the gradebook before grading, without nbgrader's false alarm.

nbgrader stores a test cell in the gradebook with its hidden tests, and the student version
without them; at autograde its ``OverwriteCells`` compares the submitted cell with the stored
one and logs "Attribute 'checksum' for cell ... has changed!" for every test cell with hidden
tests of every submission, edited or not (jupyter/nbgrader#1961). A log in which every student
"changed" every test cell hides the students who did. :class:`RestoreTestCells` puts the stored
source back first where the submitted cell is exactly the student version of it, so the warning
is left for cells a student really edited (``bncourse grade`` also names those in its notes).
"""

from __future__ import annotations

from typing import Any

from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import ClearHiddenTests, OverwriteCells


class RestoreTestCells(OverwriteCells):
    """nbgrader's ``OverwriteCells``; a test cell handed in as released is not reported."""

    def preprocess_cell(
        self, cell: NotebookNode, resources: Any, cell_index: int
    ) -> tuple[NotebookNode, Any]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id is not None and cell.cell_type == "code" and utils.is_locked(cell):
            try:
                stored = self.gradebook.find_source_cell(
                    grade_id, self.notebook_id, self.assignment_id
                )
            except MissingEntry:
                stored = None
            if stored is not None and stored.locked and cell.source == self.released(stored):
                cell.source = stored.source
        return super().preprocess_cell(cell, resources, cell_index)

    def released(self, stored: Any) -> str | None:
        """The source of a stored cell as the student version shows it: hidden tests cleared by
        nbgrader's own ``ClearHiddenTests`` (with this course's delimiters), as
        ``generate_assignment`` clears them; None where they cannot be."""
        cell = NotebookNode(cell_type=stored.cell_type, source=str(stored.source), metadata={})
        try:
            ClearHiddenTests(parent=self)._remove_hidden_test_region(cell)
        except RuntimeError:  # unbalanced delimiters
            return None
        return cell.source
