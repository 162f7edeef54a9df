"""``bncourse grade``: the same grades as serial ``nbgrader autograde``, idempotent re-runs."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from example_course import (
    BIN,
    gradebook_url,
    graded_notebooks,
    make_course,
    run,
    submit_kind,
    tree_hashes,
)
from nbgrader.api import Gradebook

from bncourse.cli import main
from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records

A = ec.ASSIGNMENT


@pytest.mark.slow
def test_parallel_grades_equal_serial_nbgrader_autograde(tmp_path: Path) -> None:
    base = make_course(tmp_path / "base")
    submit_kind(base, "ada", "correct")
    submit_kind(base, "bo", "unbiased")
    submit_kind(base, "cy", "blank")
    submit_kind(base, "di", "correct")
    (base / "submitted" / "di" / A / "timestamp.txt").write_text("2026-03-01 12:30:00.000000 UTC")
    with Gradebook(
        gradebook_url(base)
    ) as gb:  # an assignment with a due date, and a grade given by hand
        gb.update_or_create_assignment(A, duedate=datetime(2026, 3, 1, 12, 0, 0))
        gb.add_student("bo")
        gb.add_submission(A, "bo")
        gb.find_grade("test_mean", A, A, "bo").manual_score = 1.5
        gb.db.commit()
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for root in (serial, parallel):
        shutil.copytree(base, root)  # the configuration finds its folder from its own path

    run([str(BIN / "nbgrader"), "autograde", A, "--force"], serial)
    run([str(BIN / "nbgrader"), "generate_feedback", A, "--force"], serial)
    run([str(BIN / "nbgrader"), "export"], serial)
    proc = run([str(BIN / "bncourse"), "grade", A, "--workers", "2"], parallel)

    expected, got = (
        class_records(gradebook_url(serial), A),
        class_records(gradebook_url(parallel), A),
    )
    assert sorted(got) == ["ada", "bo", "cy", "di"]
    assert {s: r.key() for s, r in got.items()} == {s: r.key() for s, r in expected.items()}
    assert [got[s].score for s in sorted(got)] == [5.0, 1.5 + 0.0, 0.0, 5.0]
    assert got["di"].timestamp is not None
    with Gradebook(gradebook_url(parallel)) as gb:
        bo = gb.find_grade("test_mean", A, A, "bo")
        assert bo.manual_score == 1.5 and bo.needs_manual_grade
    assert graded_notebooks(parallel) == graded_notebooks(serial)
    assert (parallel / "grades.csv").read_text() == (serial / "grades.csv").read_text()
    for student in got:
        assert (parallel / "feedback" / student / A / f"{A}.html").is_file()
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert rows["ada"] == ["5", "5", "-"]
    assert rows["bo"] == ["1.5", "5", "needs", "manual", "grading:", "test_mean"]  # nbgrader's flag


@pytest.mark.slow
def test_rerun_is_idempotent_and_keeps_latest_submission(tmp_path: Path) -> None:
    root = make_course(tmp_path / "course")
    submit_kind(root, "alice", "correct")
    submit_kind(root, "bob", "unbiased")
    grade = [str(BIN / "bncourse"), "grade", A, "--workers", "2", "--no-progress"]
    run(grade, root)
    first, first_nbs = class_records(gradebook_url(root), A), graded_notebooks(root)
    assert first["bob"].score == ec.POINTS["test_mean"]

    submit_kind(root, "bob", "correct")  # bob hands in again, later; alice's files stay as they are
    (root / "submitted" / "bob" / A / "timestamp.txt").write_text("2026-04-01 09:00:00.000000 UTC")
    run(grade, root)
    latest, latest_nbs = class_records(gradebook_url(root), A), graded_notebooks(root)
    assert latest["bob"].score == 5
    assert latest["bob"].timestamp == datetime(2026, 4, 1, 9, 0, 0)
    assert latest["alice"].key() == first["alice"].key()  # re-grading alice changed nothing
    alice = f"autograded/alice/{A}/{A}.ipynb"
    assert latest_nbs[alice] == first_nbs[alice]
    assert (root / "grades.csv").read_text().count("\nwarmup,") == 2


def test_a_bncourse_folder_in_the_course_folder_does_not_replace_the_installed_grader(
    tmp_path: Path,
) -> None:
    # A clone of the course's repository has the package's source at its root, maybe of another
    # version than the one installed; nbgrader puts the course folder first on sys.path.
    root = make_course(tmp_path / "course")
    submit_kind(root, "ada", "correct")
    decoy = root / "bncourse"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the folder in the course was imported')")
    proc = run([str(BIN / "bncourse"), "grade", A, "--workers", "2", "--no-progress"], root)
    assert "was imported" not in proc.stdout + proc.stderr
    assert class_records(gradebook_url(root), A)["ada"].score == 5


def test_the_course_folder_is_on_sys_path_last_and_not_where_it_holds_another_bncourse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bncourse.instructor.course import Course

    root = (tmp_path / "course").resolve()
    ec.make_course(root)
    (root / "course_plugin.py").write_text("VALUE = 3\n")  # a plug-in of the course's own
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    Course.load(root)
    assert sys.path == [*before, str(root)]
    assert importlib.import_module("course_plugin").VALUE == 3
    (root / "bncourse").mkdir()
    (root / "bncourse" / "__init__.py").write_text("")
    sys.path[:] = before
    Course.load(root)
    assert sys.path == before


def test_the_log_says_a_test_cell_changed_only_where_the_student_changed_it(tmp_path: Path) -> None:
    # test_mean has hidden tests: the student version differs from the gradebook's copy there.
    root = make_course(tmp_path / "course")
    submit_kind(root, "ada", "correct")
    path = submit_kind(root, "bo", "correct")
    nb = nbformat.read(path, as_version=4)
    test_mean = next(
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_mean"
    )
    test_mean.source = test_mean.source.replace("== 3.0", "== m")  # a test that always passes
    nbformat.write(nb, path)
    run([str(BIN / "bncourse"), "grade", A, "--workers", "2", "--no-progress"], root)
    logs = root / ".bncourse" / "logs" / A
    assert "checksum" not in (logs / "ada.log").read_text()
    changed = [line for line in (logs / "bo.log").read_text().splitlines() if "checksum" in line]
    assert len(changed) == 1 and "for cell test_mean has changed" in changed[0], changed
    records = class_records(gradebook_url(root), A)
    assert records["ada"].score == records["bo"].score == 5  # bo's test was put back, and passes


def test_grade_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ec.make_course(tmp_path)
    with pytest.raises(SystemExit):
        main(["grade", A, "--workers", "0", "--course-dir", str(tmp_path)])
    assert "must be a positive integer" in capsys.readouterr().err
    assert main(["grade", "no_such_assignment", "--course-dir", str(tmp_path)]) == 2
    assert "no_such_assignment" in capsys.readouterr().out


@pytest.mark.slow
def test_assignment_released_without_gradebook_is_added(tmp_path: Path) -> None:
    root = ec.make_course(tmp_path / "course")
    nbgrader = str(BIN / "nbgrader")
    run([nbgrader, "generate_assignment", A, "--no-db"], root)  # what `make release` runs
    released = tree_hashes(root / "exercises")
    submit_kind(root, "ann", "correct")
    proc = run([str(BIN / "bncourse"), "grade", A, "--no-progress"], root)
    assert f"Added assignment {A} to the gradebook" in proc.stdout
    assert class_records(gradebook_url(root), A)["ann"].score == 5
    assert tree_hashes(root / "exercises") == released  # registered without re-releasing


BLOCK_BNCOURSE = """\
import sys
class NoCourse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'bncourse':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoCourse())
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""
"""A kernel whose Python lacks the course package (as a kernelspec of another environment)."""


@pytest.mark.slow
def test_kernel_without_bncourse_is_the_graders_failure_not_a_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_course(tmp_path / "course")
    submit_kind(root, "ada", "correct")
    submit_kind(root, "bo", "correct")
    grade = [str(BIN / "bncourse"), "grade", A, "--no-progress"]
    run(grade + ["--student", "ada"], root)
    feedback = tree_hashes(root / "feedback")

    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [str(BIN / "python"), "-c", BLOCK_BNCOURSE, "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    proc = run(grade, root, check=False)

    assert proc.returncode == 3, proc.stdout + proc.stderr
    warning = proc.stdout.split("\n\n")[0]
    assert warning.startswith("GRADER'S ENVIRONMENT BROKEN")
    assert "No module named 'bncourse'" in warning
    assert "not graded (2): ada, bo" in warning
    assert "c.Execute.kernel_name" in warning  # and how to fix it
    assert proc.stdout.count(warning) == 2  # said first and again after the table
    assert "error: the grader's environment is broken" in proc.stdout
    records = class_records(gradebook_url(root), A)
    assert records["ada"].score == 5  # ada's grade from the working kernel stays
    assert "bo" not in records  # bo is not recorded as 0
    assert tree_hashes(root / "feedback") == feedback
    log = (root / ".bncourse/logs" / A / "bo.log").read_text()
    assert log.startswith("[NOTE] not graded: the grader's environment is broken\n")
    assert "No module named 'bncourse'" in log
    with open(root / "grades.csv", newline="") as fh:  # the notes reach grades.csv and the report
        notes = {row["student_id"]: row["notes"] for row in csv.DictReader(fh)}
    assert notes["bo"] == "not graded: the grader's environment is broken"
    review = (root / f"report-{A}.html").read_text().split("<h2>For review</h2>")[1]
    assert "<td>bo</td>" in review and "not graded" in review


def test_one_failure_shared_by_the_whole_class_is_reported_as_the_graders() -> None:
    from bncourse.instructor.grade import ClassReport, summary_table
    from bncourse.instructor.worker import GradeResult

    def failed(student: str, problem: str) -> GradeResult:
        return GradeResult(student=student, success=False, problems=[problem])

    same = "no sandbox could start (see the log); nothing was run"
    report = ClassReport(A, results=[failed("ada", same), failed("bo", same)])
    assert len(report.environment) == 1 and same in report.environment[0]
    assert summary_table(report).startswith("GRADER'S ENVIRONMENT BROKEN")
    mixed = ClassReport(A, results=[failed("ada", same), failed("bo", "the kernel died")])
    assert mixed.environment == []  # different failures are the submissions'
    alone = ClassReport(A, results=[failed("ada", same)])
    assert alone.environment == []  # one submission alone says nothing about the grader
    graded = ClassReport(A, results=[failed("ada", same), GradeResult("bo", success=True)])
    assert graded.environment == [] and "GRADER'S" not in summary_table(graded)
