"""``bncourse check NOTEBOOK``: the autograder's verdict before submitting, in the exit status."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from example_course import make_course, release

from bncourse.cli import main
from bncourse.instructor import example_class as ec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_course(tmp_path_factory.mktemp("check"))


def _write(course: Path, name: str, nb: nbformat.NotebookNode) -> Path:
    folder = course / "work" / ec.ASSIGNMENT  # a student's working copy, outside the course folders
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def _table(out: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("test_")
    }


def test_correct_notebook_passes(course: Path, capsys: pytest.CaptureFixture) -> None:
    nb = _write(course, f"{ec.ASSIGNMENT}.ipynb", ec.answer(release(course), ec.ANSWERS["correct"]))
    assert main(["check", str(nb), "--course-dir", str(course)]) == 0
    out = capsys.readouterr().out
    assert _table(out) == {"test_mean": ["2", "2", "pass"], "test_variance": ["3", "3", "pass"]}
    assert "All checks passed." in out


def test_failing_check_exits_nonzero_with_feedback(course: Path, capsys) -> None:
    answers = ec.ANSWERS["unbiased"]
    nb = _write(course, f"{ec.ASSIGNMENT}.ipynb", ec.answer(release(course), answers))
    assert main(["check", str(nb)]) == 1  # the course folder is found from the notebook's path
    out = capsys.readouterr().out
    assert _table(out)["test_variance"] == ["0", "3", "FAIL"]
    assert "divide by n (biased), not by n - 1" in out
    assert "1 of 2 checks failed." in out


def test_edited_test_cell_is_restored_before_checking(course: Path, capsys) -> None:
    nb = ec.answer(release(course), ec.ANSWERS["unbiased"])
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_variance":
            cell.source = "pass"
    path = _write(course, "my copy.ipynb", nb)  # a different file name is fine too
    assert main(["check", str(path), "--assignment", ec.ASSIGNMENT]) == 1
    out = capsys.readouterr().out
    assert "locked cells edited and restored: test_variance" in out
    assert _table(out)["test_variance"] == ["0", "3", "FAIL"]


def test_hidden_tests_count(course: Path, capsys) -> None:
    answers = {**ec.ANSWERS["correct"], "mean": "def mean(xs):\n    return 3.0"}
    nb = _write(course, f"{ec.ASSIGNMENT}.ipynb", ec.answer(release(course), answers))
    assert main(["check", str(nb)]) == 1  # passes the visible test, fails the hidden one
    assert _table(capsys.readouterr().out)["test_mean"] == ["0", "2", "FAIL"]


def test_unreadable_notebook_exits_2(course: Path, capsys) -> None:
    path = course / "work" / ec.ASSIGNMENT / "broken.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{ not json")
    assert main(["check", str(path), "--assignment", ec.ASSIGNMENT]) == 2
    assert "is not a valid notebook" in capsys.readouterr().out
    assert main(["check", str(course / "missing.ipynb")]) == 2
    assert "does not exist" in capsys.readouterr().out


def test_written_answers_are_not_counted_as_checks(capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "exercises" / "ps03_dropout" / "ps03_dropout.ipynb"
    graded = [
        c.metadata["nbgrader"] for c in nbformat.read(path, 4).cells if "nbgrader" in c.metadata
    ]
    tests = [m["grade_id"] for m in graded if m.get("grade") and not m.get("solution")]
    written = [m["grade_id"] for m in graded if m.get("grade") and m.get("solution")]
    assert written, "ps03 asks for a written answer, graded by hand"
    assert main(["check", str(path)]) == 1  # the blank student version
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for grade_id in written:
        assert rows[grade_id].endswith("no answer yet")
    assert f"{len(tests)} of {len(tests)} checks failed." in out
