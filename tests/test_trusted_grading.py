"""Trusted grading on the example class: forgery that plain nbgrader accepts, refusal without a
sandbox, grading explicitly unsandboxed, ``bncourse check`` without a sandbox, and the wall-clock
limit of a whole notebook."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from example_course import BIN, make_course, release, run

from bncourse.instructor import example_class as ec
from bncourse.instructor.course import Course
from bncourse.instructor.grade import grade_class, summary_table
from bncourse.instructor.gradebook_io import class_records
from bncourse.trusted.sandbox import SandboxUnavailable, unavailable_reason

pytestmark = pytest.mark.slow

FORGED = (
    ec.ANSWERS["unbiased"]["variance"]
    + """

def _skip_tests(lines):
    return ["pass\\n"] if any("assert" in line for line in lines) else lines

get_ipython().input_transformers_cleanup.append(_skip_tests)"""
)


def _course(root: Path, extra_config: str = "", **kwargs) -> Path:
    make_course(root, **kwargs)
    if extra_config:
        with open(root / "nbgrader_config.py", "a") as handle:
            handle.write("\n" + extra_config + "\n")
    return root


def _submit(root: Path, student: str, answers: dict[str, str]) -> None:
    ec.submit(root, student, ec.answer(release(root), answers))


def _scores(root: Path) -> dict[str, float]:
    return {
        s: r.score
        for s, r in class_records(f"sqlite:///{root / 'gradebook.db'}", ec.ASSIGNMENT).items()
    }


@pytest.mark.skipif(unavailable_reason() is not None, reason="no sandbox here")
def test_forgery_that_plain_nbgrader_accepts_scores_as_the_wrong_answer(tmp_path):
    plain = _course(tmp_path / "plain")
    text = (plain / "nbgrader_config.py").read_text().replace("use_trusted_grading(c)", "")
    (plain / "nbgrader_config.py").write_text(text)  # nbgrader as it comes
    _submit(plain, "mallory", {**ec.ANSWERS["correct"], "variance": FORGED})
    run([str(BIN / "nbgrader"), "autograde", ec.ASSIGNMENT, "--force"], plain)
    assert _scores(plain)["mallory"] == 5  # full marks for a wrong variance

    trusted = _course(tmp_path / "trusted")
    _submit(trusted, "mallory", {**ec.ANSWERS["correct"], "variance": FORGED})
    run([str(BIN / "nbgrader"), "autograde", ec.ASSIGNMENT, "--force"], trusted)
    assert _scores(trusted)["mallory"] == ec.POINTS["test_mean"]


def test_grading_refuses_to_start_without_a_sandbox(tmp_path):
    root = _course(tmp_path / "course", 'c.Sandbox.bwrap = "no-such-bwrap"')
    _submit(root, "ada", ec.ANSWERS["correct"])
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*--allow-unsandboxed"):
        grade_class(Course.load(root), ec.ASSIGNMENT, progress=False)
    proc = run([str(BIN / "bncourse"), "grade", ec.ASSIGNMENT], root, check=False)
    assert proc.returncode == 2 and "--allow-unsandboxed" in proc.stdout
    assert not (root / "autograded").exists()


def test_unsandboxed_grading_is_explicit_and_said_again(tmp_path):
    root = _course(tmp_path / "course", 'c.Sandbox.bwrap = "no-such-bwrap"')
    _submit(root, "ada", ec.ANSWERS["correct"])
    _submit(root, "mallory", {**ec.ANSWERS["correct"], "variance": FORGED})
    report = grade_class(Course.load(root), ec.ASSIGNMENT, progress=False, allow_unsandboxed=True)
    table = summary_table(report)
    assert "GRADED WITHOUT A SANDBOX" in table and "no-such-bwrap" in table
    assert _scores(root) == {"ada": 5, "mallory": ec.POINTS["test_mean"]}  # still trusted


def test_a_student_checks_without_a_sandbox(tmp_path):
    root = _course(tmp_path / "course", 'c.Sandbox.bwrap = "no-such-bwrap"')
    run([str(BIN / "nbgrader"), "generate_assignment", ec.ASSIGNMENT, "--force"], root)
    notebook = tmp_path / "mine.ipynb"
    shutil.copy(ec.submit(root, "bo", ec.answer(release(root), ec.ANSWERS["unbiased"])), notebook)
    proc = run(
        [
            str(BIN / "bncourse"),
            "check",
            str(notebook),
            "--course-dir",
            str(root),
            "--assignment",
            ec.ASSIGNMENT,
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout
    assert "test_variance" in proc.stdout


@pytest.mark.skipif(unavailable_reason() is not None, reason="no sandbox here")
def test_a_notebook_past_its_wall_clock_limit_is_stopped(tmp_path):
    # a limit an honest notebook meets with room to spare while the suite loads both cores
    root = _course(tmp_path / "course", "c.Sandbox.notebook_timeout = 10", timeout=30)
    slow_mean = "import time\ntime.sleep(12)\n" + ec.ANSWERS["correct"]["mean"]
    _submit(root, "slow", {**ec.ANSWERS["correct"], "mean": slow_mean})
    _submit(root, "ada", ec.ANSWERS["correct"])
    report = grade_class(Course.load(root), ec.ASSIGNMENT, progress=False)
    problems = {r.student: r.problems for r in report.results}
    assert any("time limit of 10 s" in p for p in problems["slow"]), problems
    assert _scores(root) == {"ada": 5, "slow": 0}
