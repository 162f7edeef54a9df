"""Broken and hostile submissions: each is graded as far as possible or reported by name, the run
goes on for the rest of the class, and no submitted file is changed.

One class holds every case (graded once, with two workers and a 15 s cell time limit); each test
checks one student of it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import pytest
from example_course import BIN, make_course, release, run, tree_hashes

from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records

pytestmark = pytest.mark.slow

TIMEOUT = 15  # seconds per cell: the infinite loop must be stopped by it, and an honest cell
# must finish within it while the rest of the suite loads both cores (make test runs three files)
CORRECT = ec.ANSWERS["correct"]
OUTPUT_LIMIT = 16 * 2**20  # bytes of output a notebook may send the grader (c.TrustedExecute)

# Output written straight onto the kernel's message socket, past IPython's printing: 48 MiB.
FIREHOSE = """

_kernel = get_ipython().kernel
_parent = _kernel.get_parent("shell")
for _ in range(48):
    _kernel.session.send(_kernel.iopub_socket, "stream", {"name": "stdout", "text": "x" * 2**20},
                         parent=_parent)
"""
# A function that publishes 24 MiB on the kernel's message socket each time a check calls it,
# under no cell's name (read by nothing while the check waits for the function's answer).
CHECKFLOOD = """

def variance(xs):
    _kernel = get_ipython().kernel
    for _ in range(24):
        _kernel.session.send(_kernel.iopub_socket, "stream", {"name": "stdout", "text": "x" * 2**20},
                             parent={"header": {"msg_id": "no-cell"}})
    m = mean(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)
"""
# Lines written to the kernel process's own stdout and stderr, shaped like the grader's.
FORGER = """

import os as _os
_os.write(1, b"\\nFORGED-ROW s9-fake   5  5  -\\n")
_os.write(2, b"FORGED-NOTE [NOTE] a line for another student\\n")
"""


def _with(answers: dict[str, str], root: Path) -> nbformat.NotebookNode:
    return ec.answer(release(root), answers)


def _build_class(root: Path) -> None:
    ec.submit(root, "correct", _with(CORRECT, root))
    ec.submit(root, "loop", _with({**CORRECT, "variance": "while True:\n    pass"}, root))
    stubborn = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    ec.submit(root, "stubborn", _with({**CORRECT, "variance": stubborn}, root))
    ec.submit(root, "crash", _with({**CORRECT, "variance": "import os\nos._exit(1)"}, root))
    sys_exit = CORRECT["variance"] + "\n\nimport sys\nsys.exit()"
    ec.submit(root, "sysexit", _with({**CORRECT, "variance": sys_exit}, root))
    bad_import = "import not_a_module_of_this_course\n" + CORRECT["variance"]
    ec.submit(root, "importerror", _with({**CORRECT, "variance": bad_import}, root))

    nb = _with(CORRECT, root)
    nb.cells = [
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "test_variance"
    ]
    ec.submit(root, "deleted", nb)

    nb = _with(ec.ANSWERS["unbiased"], root)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_variance":
            cell.source = "pass  # the test is gone"
    ec.submit(root, "edited", nb)

    nb = _with(CORRECT, root)
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    ec.submit(root, "stripped", nb)

    folder = root / "submitted" / "notjson" / ec.ASSIGNMENT
    folder.mkdir(parents=True)
    (folder / f"{ec.ASSIGNMENT}.ipynb").write_text('{"cells": [ {"cell_type": "code", ')
    folder = root / "submitted" / "notnotebook" / ec.ASSIGNMENT
    folder.mkdir(parents=True)
    (folder / f"{ec.ASSIGNMENT}.ipynb").write_text('{"hello": "this is JSON, not a notebook"}')

    flood = CORRECT["mean"] + "\n\nfor i in range(2_000):\n    print(i, 'spam ' * 500)"  # 5 MB
    ec.submit(root, "flood", _with({**CORRECT, "mean": flood}, root))

    ec.submit(root, "firehose", _with({**CORRECT, "mean": CORRECT["mean"] + FIREHOSE}, root))
    ec.submit(root, "checkflood", _with({**CORRECT, "variance": CHECKFLOOD}, root))
    forger = CORRECT["variance"] + FORGER
    ec.submit(root, "forger", _with({**CORRECT, "variance": forger}, root))

    ec.submit(root, "twonotebooks", _with(CORRECT, root))
    ec.submit(root, "twonotebooks", release(root), name=f"{ec.ASSIGNMENT}-Copy1.ipynb")
    ec.submit(root, "misnamed", _with(CORRECT, root), name="Warmup (1).ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = make_course(tmp_path_factory.mktemp("hostile"), timeout=TIMEOUT)
    with open(root / "nbgrader_config.py", "a") as config:
        config.write(f"\nc.TrustedExecute.output_limit = {OUTPUT_LIMIT}\n")
    _build_class(root)
    before = tree_hashes(root / "submitted")
    proc = run([str(BIN / "bncourse"), "grade", ec.ASSIGNMENT, "--workers", "2"], root, check=False)
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and (root / "submitted" / parts[0]).is_dir():
            rows[parts[0]] = line
    with open(root / "grades.csv") as fh:
        grades = {row["student_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    return {
        "root": root,
        "proc": proc,
        "rows": rows,
        "grades": grades,
        "records": class_records(f"sqlite:///{root / 'gradebook.db'}", ec.ASSIGNMENT),
        "before": before,
        "after": tree_hashes(root / "submitted"),
    }


def _score(graded: dict, student: str) -> float:
    return graded["grades"][student]


def _row(graded: dict, student: str) -> str:
    return graded["rows"][student]


def test_every_student_reported_and_run_not_stopped(graded):
    students = sorted(p.name for p in (graded["root"] / "submitted").iterdir())
    assert sorted(graded["rows"]) == students, graded["proc"].stdout
    assert sorted(graded["grades"]) == students
    assert graded["proc"].returncode == 1  # some submissions could not be graded
    assert "Could not grade: notjson, notnotebook, stubborn\n" in graded["proc"].stdout


def test_submitted_files_never_changed(graded):
    assert graded["after"] == graded["before"]


def test_correct_student_unaffected(graded):
    assert _score(graded, "correct") == 5
    assert _row(graded, "correct").rstrip().endswith("-")


def test_infinite_loop_hits_cell_time_limit(graded):
    assert _score(graded, "loop") == ec.POINTS["test_mean"]
    assert f"ran past the {TIMEOUT} s time limit" in _row(graded, "loop")


def test_loop_ignoring_the_interrupt_reported(graded):
    assert _score(graded, "stubborn") == 0  # nbgrader gives up on the whole notebook
    assert "ignored the interrupt" in _row(graded, "stubborn")


def test_kernel_crash_graded_as_far_as_it_went(graded):
    # The kernel dies in the variance cell: the mean, tested before, keeps its points.
    assert _score(graded, "crash") == ec.POINTS["test_mean"]
    assert "the kernel died" in _row(graded, "crash")
    graded_nb = graded["root"] / "autograded" / "crash" / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb"
    errors = [
        o.ename
        for c in nbformat.read(graded_nb, 4).cells
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert "DeadKernelError" in errors


def test_sys_exit_graded(graded):
    assert _score(graded, "sysexit") == 5
    assert "called sys.exit()" in _row(graded, "sysexit")


def test_exception_at_import_graded(graded):
    assert _score(graded, "importerror") == ec.POINTS["test_mean"]
    nb = nbformat.read(
        graded["root"] / "autograded" / "importerror" / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb", 4
    )
    errors = [o.ename for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert "ModuleNotFoundError" in errors


def test_deleted_test_cell_put_back(graded):
    assert _score(graded, "deleted") == 5
    assert "test cells deleted and put back: test_variance" in _row(graded, "deleted")


def test_edited_test_cell_restored(graded):
    assert _score(graded, "edited") == ec.POINTS["test_mean"]
    assert "locked cells edited and restored: test_variance" in _row(graded, "edited")


def test_stripped_metadata_restored_and_graded(graded):
    assert "no nbgrader metadata; restored from the student version" in _row(graded, "stripped")
    assert _score(graded, "stripped") == 5


def test_not_json_reported(graded):
    assert _score(graded, "notjson") == 0
    assert "is not a valid notebook" in _row(graded, "notjson")


def test_json_but_not_a_notebook_reported(graded):
    assert _score(graded, "notnotebook") == 0
    assert "is not a valid notebook" in _row(graded, "notnotebook")


def test_megabytes_of_output_graded_and_truncated(graded):
    assert _score(graded, "flood") == 5
    assert _row(graded, "flood").rstrip().endswith("-")
    graded_nb = graded["root"] / "autograded" / "flood" / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb"
    printed = [
        o.text
        for cell in nbformat.read(graded_nb, 4).cells
        for o in cell.get("outputs", [])
        if o.output_type == "stream"
    ]
    # nbgrader's LimitOutput keeps the first 1000 lines of the 2000 printed
    assert printed[0].endswith("... Output truncated ...")
    assert len(printed[0].splitlines()) == 1000


def test_two_notebooks_grades_the_expected_one(graded):
    assert _score(graded, "twonotebooks") == 5
    assert f"ignored extra notebooks: {ec.ASSIGNMENT}-Copy1.ipynb" in _row(graded, "twonotebooks")


def test_wrongly_named_notebook_graded_under_expected_name(graded):
    assert _score(graded, "misnamed") == 5
    assert "wrongly named notebook Warmup (1).ipynb" in _row(graded, "misnamed")
    assert (graded["root"] / "submitted" / "misnamed" / ec.ASSIGNMENT / "Warmup (1).ipynb").exists()


def test_output_past_the_limit_is_dropped_and_its_kernel_stopped(graded):
    assert _score(graded, "firehose") == 0  # its kernel is stopped after the flooding cell
    graded_nb = graded["root"] / "autograded" / "firehose" / ec.ASSIGNMENT
    cells = nbformat.read(graded_nb / f"{ec.ASSIGNMENT}.ipynb", 4).cells
    outputs = [o for cell in cells for o in cell.get("outputs", [])]
    assert any(o.get("ename") == "OutputLimit" for o in outputs)
    kept = sum(len(o.get("text", "")) for o in outputs)
    assert kept <= OUTPUT_LIMIT


def test_output_published_while_a_check_waits_counts_and_stops_the_kernel(graded):
    records = graded["records"]["checkflood"]
    scores = {g.cell: g.score for g in records.grades}
    assert scores["test_mean"] > 0 and scores["test_variance"] == 0, scores
    log = (graded["root"] / ".bncourse/logs" / ec.ASSIGNMENT / "checkflood.log").read_text()
    assert "of output while it was checked; its kernel was stopped" in log


def test_a_kernels_own_stdout_and_stderr_reach_neither_terminal_nor_log(graded):
    assert _score(graded, "forger") == 5
    logs = graded["root"] / ".bncourse" / "logs" / ec.ASSIGNMENT
    written = graded["proc"].stdout + graded["proc"].stderr
    written += "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    assert "FORGED-ROW" not in written and "FORGED-NOTE" not in written
