"""What ``bncourse grade`` notices in a student's folder before grading (no kernel is started)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from example_course import make_course, release

from bncourse.instructor import example_class as ec
from bncourse.instructor.submissions import inspect, list_students, restore_metadata

EXPECTED = {ec.ASSIGNMENT: set(ec.POINTS)}
NAME = f"{ec.ASSIGNMENT}.ipynb"


@pytest.fixture(scope="module")
def student_version(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    return release(make_course(tmp_path_factory.mktemp("release")))


def _folder(tmp_path: Path, files: dict[str, nbformat.NotebookNode | str]) -> Path:
    folder = tmp_path / "submitted" / "s" / ec.ASSIGNMENT
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, str):
            (folder / name).write_text(content)
        else:
            nbformat.write(content, folder / name)
    return folder


def test_clean_submission_has_no_notes(tmp_path, student_version):
    found = inspect(_folder(tmp_path, {NAME: student_version}), EXPECTED)
    assert found.notes == [] and found.renames == {} and found.rewrites == {}


def test_single_wrongly_named_notebook_is_renamed(tmp_path, student_version):
    found = inspect(_folder(tmp_path, {"Copy of warmup.ipynb": student_version}), EXPECTED)
    assert found.renames == {"Copy of warmup.ipynb": NAME}


def test_two_unknown_notebooks_are_not_guessed(tmp_path, student_version):
    folder = _folder(tmp_path, {"a.ipynb": student_version, "b.ipynb": student_version})
    found = inspect(folder, EXPECTED)
    assert found.renames == {}
    assert any(note.startswith(f"no {NAME} submitted") for note in found.notes)
    assert "ignored extra notebooks: a.ipynb, b.ipynb" in found.notes


def test_stripped_metadata_restored_only_when_cells_line_up(tmp_path, student_version):
    stripped = nbformat.from_dict(student_version)
    for cell in stripped.cells:
        cell.metadata.pop("nbgrader", None)
    restored = restore_metadata(stripped, student_version)
    assert [c.metadata.get("nbgrader") for c in restored.cells] == [
        c.metadata.get("nbgrader") for c in student_version.cells
    ]
    stripped.cells.append(nbformat.v4.new_code_cell("print('one more cell')"))
    assert restore_metadata(stripped, student_version) is None
    found = inspect(
        _folder(tmp_path, {NAME: stripped}), EXPECTED, releases={ec.ASSIGNMENT: student_version}
    )
    assert found.rewrites == {}
    assert "do not line up" in found.notes[0]


def test_invalid_files_are_named(tmp_path):
    found = inspect(_folder(tmp_path, {NAME: "<html>not a notebook</html>"}), EXPECTED)
    assert found.notes[0].startswith(f"{NAME} is not a valid notebook (NotJSONError")


def test_list_students_skips_files_and_excluded(tmp_path, student_version):
    _folder(tmp_path, {NAME: student_version})
    (tmp_path / "submitted" / "t" / ec.ASSIGNMENT).mkdir(parents=True)
    (tmp_path / "submitted" / "u").mkdir()  # no folder for this assignment
    (tmp_path / "submitted" / "notes.txt").write_text("not a student")
    assert list_students(tmp_path / "submitted", ec.ASSIGNMENT) == ["s", "t"]
    assert list_students(tmp_path / "submitted", ec.ASSIGNMENT, exclude="t") == ["s"]
