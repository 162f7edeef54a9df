"""``bncourse grade`` with a PostgreSQL gradebook: a real server, started on loopback for the test.

The server comes from Debian's ``postgresql`` package (``.ci/run`` installs it); where its
binaries are missing the test is skipped with a message saying so. PostgreSQL refuses to run as
root, so under root the server runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from example_course import BIN, make_course, run, submit_kind

from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records

pytestmark = pytest.mark.slow


def _server_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or what PATH has."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _server_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's "
            "`postgresql` package (apt-get install postgresql) to run this test"
        )
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and `runuser` is missing to start the server as postgres")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")

    base = Path(tempfile.mkdtemp(prefix="bncourse-pg-"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", _free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    subprocess.run(
        _as_server_user([*initdb, "--no-sync", "-E", "UTF8"]), check=True, capture_output=True
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log")]
    subprocess.run(
        _as_server_user([*pg_ctl, "-o", options, "-w", "-t", "60", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE gradebook")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/gradebook"
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_parallel_grading_into_postgresql_gradebook(postgres_url: str, tmp_path: Path) -> None:
    root = make_course(tmp_path / "course", db_url=postgres_url)
    kinds = {"ann": "correct", "ben": "unbiased", "cat": "blank", "dan": "correct"}
    for student, kind in kinds.items():
        submit_kind(root, student, kind)

    proc = run([str(BIN / "bncourse"), "grade", ec.ASSIGNMENT, "--workers", "2"], root)

    assert not (root / "gradebook.db").exists()  # everything went to the server
    records = class_records(postgres_url, ec.ASSIGNMENT)
    expected = {"correct": (2, 3), "unbiased": (2, 0), "blank": (0, 0)}
    for student, kind in kinds.items():
        scores = {g.cell: g.auto_score for g in records[student].grades}
        assert (scores["test_mean"], scores["test_variance"]) == expected[kind], student
        assert (root / "feedback" / student / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.html").is_file()
    with open(root / "grades.csv") as fh:
        exported = {row["student_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    assert exported == {"ann": 5.0, "ben": 2.0, "cat": 0.0, "dan": 5.0}
    assert "Could not grade" not in proc.stdout

    # re-grading updates the same rows instead of adding new ones
    run([str(BIN / "bncourse"), "grade", ec.ASSIGNMENT, "--student", "ann", "--no-progress"], root)
    again = class_records(postgres_url, ec.ASSIGNMENT)
    assert {s: r.key() for s, r in again.items()} == {s: r.key() for s, r in records.items()}


def _new_database(url: str, name: str) -> str:
    import psycopg2
    from sqlalchemy.engine import make_url

    server = make_url(url)
    conn = psycopg2.connect(
        host=server.host, port=server.port, user=server.username, dbname="postgres"
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return str(server.set(database=name))


def test_dask_local_cluster_grades_into_postgresql_from_the_instructor_process(
    postgres_url: str, tmp_path: Path
) -> None:
    from nbgrader.api import Gradebook

    url = _new_database(postgres_url, "gradebook_dask")
    root = make_course(tmp_path / "course", db_url=url)
    submit_kind(root, "ann", "correct")
    submit_kind(root, "ben", "unbiased")
    with Gradebook(url, "example") as gb:  # a grade given by hand before the autograder ran
        gb.add_student("ben")
        gb.add_submission(ec.ASSIGNMENT, "ben")
        gb.find_grade("test_mean", ec.ASSIGNMENT, ec.ASSIGNMENT, "ben").manual_score = 1.5
        gb.db.commit()

    grade = [str(BIN / "bncourse"), "grade", ec.ASSIGNMENT, "--cluster", "local", "--workers", "2"]
    proc = run([*grade, "--no-progress"], root)

    assert "graded on the Dask cluster at tcp://127.0.0.1:" in proc.stdout
    assert not (root / "gradebook.db").exists()
    records = class_records(url, ec.ASSIGNMENT)
    scores = {s: {g.cell: g.auto_score for g in r.grades} for s, r in records.items()}
    assert scores == {
        "ann": {"test_mean": 2, "test_variance": 3},
        "ben": {"test_mean": 2, "test_variance": 0},
    }
    with Gradebook(url, "example") as gb:
        ben = gb.find_grade("test_mean", ec.ASSIGNMENT, ec.ASSIGNMENT, "ben")
        assert ben.manual_score == 1.5 and ben.needs_manual_grade  # as nbgrader flags it
    with open(root / "grades.csv") as fh:
        exported = {row["student_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    assert exported == {"ann": 5.0, "ben": 1.5}
    for student in ("ann", "ben"):
        assert (root / "feedback" / student / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.html").is_file()
