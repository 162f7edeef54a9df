"""``bncourse grade --scheduler``: a class graded on a real Dask cluster (a scheduler and two
workers on 127.0.0.1, each in its own empty folder) equals serial nbgrader, even when a worker is
killed mid-grade; a submission whose grading kills every worker it reaches is reported."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from dask_cluster import Cluster
from example_course import (
    BIN,
    env,
    gradebook_url,
    graded_notebooks,
    make_course,
    run,
    submit_kind,
)
from nbgrader.api import Gradebook

from bncourse.cli import main
from bncourse.instructor import cluster as dc
from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records

A = ec.ASSIGNMENT
KILLER = '''\
"""Dask worker preload: grading student "crash" kills the worker process (as the OOM killer would)."""
import os

from bncourse.instructor import worker

_grade = getattr(worker.grade, "original", worker.grade)  # Dask may run a preload twice


def _grade_or_die(job):
    if job.student == "crash":
        os._exit(1)
    return _grade(job)


_grade_or_die.original = _grade
worker.grade = _grade_or_die
'''


def _log_head(root: Path, student: str) -> str:
    """The first line of a student's grading log after the review notes ("[NOTE] ...")."""
    lines = (root / ".bncourse" / "logs" / A / f"{student}.log").read_text().splitlines()
    return next(line for line in lines if not line.startswith("[NOTE] "))


def _grades_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "grades.csv", newline="") as file:
        return list(csv.DictReader(file))


def _a_class(base: Path) -> None:
    """Correct, wrong (with a grade given by hand), blank, late and broken submissions."""
    make_course(base)
    submit_kind(base, "ada", "correct")
    submit_kind(base, "bo", "unbiased")
    submit_kind(base, "cy", "blank")
    submit_kind(base, "di", "correct")
    submit_kind(base, "eve", "correct")
    (base / "submitted" / "di" / A / "timestamp.txt").write_text("2026-03-01 12:30:00.000000 UTC")
    (base / "submitted" / "eve" / A / f"{A}.ipynb").write_text('{"cells": [')  # broken JSON
    with Gradebook(gradebook_url(base)) as gb:
        gb.update_or_create_assignment(A, duedate=datetime(2026, 3, 1, 12, 0, 0))
        gb.add_student("bo", first_name="Bo", email="bo@example.org")
        gb.add_submission(A, "bo")
        gb.find_grade("test_mean", A, A, "bo").manual_score = 1.5
        gb.db.commit()


def _wait_for_grading(folder: Path, timeout: float = 120) -> str:
    """The student a worker starts grading in ``folder`` (its scratch folder appears)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.rglob("bncourse-grade-*"):
            return path.name.removeprefix("bncourse-grade-").rsplit("-", 1)[0]
        time.sleep(0.05)
    raise AssertionError(f"no grading started in {folder}")


@pytest.mark.slow
def test_dask_cluster_with_a_killed_worker_equals_serial_nbgrader(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _a_class(base)
    serial, dask = tmp_path / "serial", tmp_path / "dask"
    for root in (serial, dask):
        shutil.copytree(base, root)
    nbgrader = str(BIN / "nbgrader")
    run([nbgrader, "autograde", A, "--force"], serial, check=False)  # eve's notebook fails
    run([nbgrader, "generate_feedback", A, "--force"], serial, check=False)
    run([nbgrader, "export"], serial)

    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_scheduler()
        doomed = cluster.start_worker("wa", "--no-nanny")
        cluster.start_worker("wb", "--no-nanny")
        cluster.wait_for_workers(2)
        grading = subprocess.Popen(
            [str(BIN / "bncourse"), "grade", A, "--scheduler", cluster.address, "--no-progress"],
            cwd=dask,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        victim = _wait_for_grading(doomed)
        cluster.kill("wa")
        out, err = grading.communicate(timeout=600)
    finally:
        cluster.stop()

    assert grading.returncode == 1, out + err  # eve's notebook cannot be graded
    expected, got = class_records(gradebook_url(serial), A), class_records(gradebook_url(dask), A)
    assert sorted(got) == ["ada", "bo", "cy", "di", "eve"]
    assert {s: r.key() for s, r in got.items()} == {s: r.key() for s, r in expected.items()}
    assert [got[s].score for s in sorted(got)] == [5.0, 1.5, 0.0, 5.0, 0.0]
    with Gradebook(gradebook_url(dask)) as gb:
        bo = gb.find_grade("test_mean", A, A, "bo")
        assert bo.manual_score == 1.5 and bo.needs_manual_grade
        assert len(gb.find_assignment(A).submissions) == 5  # each student graded exactly once
    graded = graded_notebooks(dask)
    assert graded == {k: v for k, v in graded_notebooks(serial).items() if "/eve/" not in k}
    ours, theirs = _grades_csv(dask), _grades_csv(serial)
    notes = {row["student_id"]: row.pop("notes") for row in ours}
    assert notes.pop("eve").startswith("warmup.ipynb is not a valid notebook")  # nbgrader: none
    assert set(notes.values()) == {""} and {row.pop("notes") for row in theirs} == {""}
    assert ours == theirs
    for student in ("ada", "bo", "cy", "di"):
        assert (dask / "feedback" / student / A / f"{A}.html").is_file()

    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "not a valid notebook" in rows["eve"]
    assert f"graded on the Dask cluster at {cluster.address} (workers: wa, wb)" in out
    retried = next(line for line in out.splitlines() if line.startswith("retried after"))
    assert f"{victim} (1x)" in retried  # and any others the dead worker held
    assert _log_head(dask, victim).startswith("graded on Dask worker wb after 1 worker death")
    for student in got:
        head = _log_head(dask, student)
        assert head.startswith(("graded on Dask worker wa", "graded on Dask worker wb")), head
    leftovers = [p for p in (tmp_path / "cluster" / "wb").rglob("bncourse-grade-*")]
    assert leftovers == []  # the surviving worker cleaned up after every task


@pytest.mark.slow
def test_a_submission_that_keeps_killing_workers_is_reported_not_retried_forever(
    tmp_path: Path,
) -> None:
    root = make_course(tmp_path / "course")
    submit_kind(root, "ada", "correct")
    submit_kind(root, "crash", "correct")
    preload = tmp_path / "killer.py"
    preload.write_text(KILLER)
    cluster = Cluster(tmp_path / "cluster")
    # The scheduler gives up on a task at the first death of a worker running it.
    cluster.extra_env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    try:
        cluster.start_scheduler()
        for name in ("wa", "wb"):  # with nannies, which restart a worker that died
            cluster.start_worker(name, "--preload", str(preload))
        cluster.wait_for_workers(2)
        proc = run(
            [str(BIN / "bncourse"), "grade", A, "--scheduler", cluster.address, "--no-progress"],
            root,
            check=False,
        )
    finally:
        cluster.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert rows["ada"].split()[1:4] == ["5", "5", "-"], proc.stdout
    assert (
        "every worker that graded it died (2 times, the last 1 with no other submission beside "
        "it); not retried again" in rows["crash"]
    )
    assert "crash (2x)" in proc.stdout
    assert "Could not grade: crash" in proc.stdout
    records = class_records(gradebook_url(root), A)
    assert records["ada"].score == 5 and "crash" not in records


def test_unreachable_scheduler_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_course(tmp_path)
    submit_kind(tmp_path, "ada", "correct")
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "1s")
    import dask

    dask.config.refresh()
    try:
        code = main(
            ["grade", A, "--course-dir", str(tmp_path), "--scheduler", "tcp://127.0.0.1:9"]
            + ["--no-progress"]
        )
    finally:
        monkeypatch.delenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT")
        dask.config.refresh()
    assert code == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and "127.0.0.1:9" in out
    with pytest.raises(SystemExit):
        main(["grade", A, "--scheduler", "tcp://x:1", "--cluster", "local"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_archives_leave_out_links_and_refuse_escapes(tmp_path: Path) -> None:
    folder = tmp_path / "sub"
    (folder / "data").mkdir(parents=True)
    (folder / "a.ipynb").write_text("{}")
    (folder / "data" / "x.txt").write_text("x")
    (folder / "link").symlink_to("/etc/passwd")
    (folder / "dirlink").symlink_to(tmp_path)
    out = dc.unpack_tree(dc.pack_tree(folder), tmp_path / "out")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a.ipynb",
        "data",
        "data/x.txt",
    ]
    import io
    import tarfile

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        dc.unpack_tree(evil.getvalue(), tmp_path / "evil")
    assert not (tmp_path / "escaped.txt").exists()


def test_what_travels_holds_no_gradebook_address_and_no_links(tmp_path: Path) -> None:
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.db_url = "postgresql+psycopg2://grader:s3cret@db.example.org/gb"
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / f"{A}.ipynb").write_text("{}")
    (tmp_path / "seed.db").write_bytes(b"")
    shared = dc.shared_inputs(
        A, config, tmp_path / "source", "solutions", None, tmp_path / "seed.db", {A: set()}
    )
    assert shared.config.CourseDirectory.db_url == ""
    assert config.CourseDirectory.db_url.endswith("/gb")  # the instructor's own is untouched
    import pickle

    assert b"s3cret" not in pickle.dumps(shared)
