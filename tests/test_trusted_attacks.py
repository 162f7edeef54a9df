"""Attacks on grading, graded in one class next to honest students with ``bncourse grade``.

Each attack of :mod:`attacks` is one student of a ps01_batchnorm class, graded with two workers
beside three honest students (the instructor's answer, a blank notebook, and the commonest
mistake, the unbiased variance). The honest students' grades must be exactly those of the same
three graded alone; every attack is blocked or scored as the wrong answer it is; no file of the
course, the repository or the virtual environment changes.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from attacks import ATTACKS, FORGED_TEXT
from nbgrader_course import REPO, Course, answered, by_grade_id, cell_text, solutions

from bncourse.instructor.course import Course as CourseFolder
from bncourse.instructor.grade import grade_class, summary_table
from bncourse.instructor.gradebook_io import class_records
from bncourse.trusted.cgroups import KernelCgroup
from bncourse.trusted.sandbox import unavailable_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
    ),
]

A = "ps01_batchnorm"
HONEST = ("honest_correct", "honest_blank", "honest_unbiased")
FORGERIES = (
    "patch_checks",
    "fake_module",
    "import_hook",
    "patched_comparisons",
    "ipython_transformer",
)
HIDDEN_ONLY = "check_batchnorm_gradients"  # in ps01's first hidden tests, nowhere visible
HIDDEN_LATER = "dtype=torch.float64"  # in the hidden tests of every cell, nowhere visible


def _hashes(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        files = (
            [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        )
        for path in files:
            if "__pycache__" in path.parts:
                continue
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _venv_state() -> dict[str, str]:
    """Names in every site-packages and bin folder, and the content of every .pth file."""
    import site

    state = {}
    for folder in [*site.getsitepackages(), str(Path(sys.executable).parent)]:
        folder = Path(folder)
        state[str(folder)] = "\n".join(sorted(p.name for p in folder.iterdir()))
        for pth in folder.glob("*.pth"):
            state[str(pth)] = hashlib.sha256(pth.read_bytes()).hexdigest()
    return state


def _honest_answers(release, answers) -> dict[str, nbformat.NotebookNode]:
    unbiased = answers["batchnorm_forward_train"].replace("unbiased=False", "unbiased=True")
    assert unbiased != answers["batchnorm_forward_train"], "the mutation no longer applies"
    return {
        "honest_correct": answered(release, answers),
        "honest_blank": release,
        "honest_unbiased": answered(release, {**answers, "batchnorm_forward_train": unbiased}),
    }


def _attack_notebook(release, answers, attack, course: Path, port: int) -> nbformat.NotebookNode:
    prelude = f"COURSE = {str(course)!r}\nREPO = {str(REPO)!r}\nPORT = {port}\n"
    chosen = dict(answers)
    if attack.train is not None:
        chosen["batchnorm_forward_train"] = attack.train
    cell = "batchnorm_forward_train" if attack.early else "batchnorm_forward_eval"
    chosen[cell] = chosen[cell] + "\n\n" + prelude + attack.append
    nb = answered(release, chosen)
    if attack.last_cell:
        nb.cells.append(nbformat.v4.new_code_cell(prelude + attack.last_cell))
    return nb


class _Listener:
    """A TCP server on the loopback interface that records anything sent to it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                self.received.append(conn.recv(100))

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.server.close()


def _course(root: Path) -> tuple[Course, nbformat.NotebookNode, dict[str, str]]:
    course = Course(root, A)
    release = course.generate()
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    return course, release, solutions(course.source())


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    alone, release, answers = _course(tmp_path_factory.mktemp("honest_alone"))
    for student, nb in _honest_answers(release, answers).items():
        alone.submit(student, nb)
    alone_report = grade_class(CourseFolder.load(alone.root), A, workers=2, progress=False)
    assert all(r.success for r in alone_report.results), summary_table(alone_report)

    course, release, answers = _course(tmp_path_factory.mktemp("attacked"))
    listener = _Listener()
    for student, nb in _honest_answers(release, answers).items():
        course.submit(student, nb)
    for attack in ATTACKS:
        course.submit(
            attack.name, _attack_notebook(release, answers, attack, course.root, listener.port)
        )
    watched = [
        course.root / p for p in ("solutions", "exercises", "submitted", "nbgrader_config.py")
    ]
    watched += [REPO / "bncourse", REPO / "nbgrader_config.py", REPO / "solutions"]
    before, venv_before = _hashes(*watched), _venv_state()
    report = grade_class(CourseFolder.load(course.root), A, workers=2, progress=False)
    listener.close()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return {
        "alone": class_records(alone.config.CourseDirectory.db_url, A),
        "records": class_records(course.config.CourseDirectory.db_url, A),
        "report": report,
        "results": {r.student: r for r in report.results},
        "course": course,
        "changed": {k for k, v in _hashes(*watched).items() if before.get(k) != v}
        | (set(before) - set(_hashes(*watched))),
        "venv_changed": {k for k, v in _venv_state().items() if venv_before.get(k) != v},
        "received": listener.received,
        "processes": ps,
    }


def _scores(records) -> dict[str, float]:
    return {student: r.score for student, r in records.items()}


def _text(graded: dict, student: str) -> str:
    """What the student's cells printed (streams only: tracebacks quote the attack's source)."""
    nb = graded["course"].graded(student)
    return "".join(
        o.text for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"
    )


def test_the_class_completes_and_names_every_student(graded):
    print(summary_table(graded["report"]))
    assert set(graded["results"]) == set(HONEST) | {a.name for a in ATTACKS}
    broken = {s: r.problems for s, r in graded["results"].items() if not r.success}
    assert not broken, broken


def test_honest_grades_are_those_without_attackers(graded):
    alone = _scores(graded["alone"])
    assert alone["honest_correct"] == 10 and alone["honest_blank"] == 0
    assert 0 < alone["honest_unbiased"] < 10
    attacked = _scores(graded["records"])
    assert {s: attacked[s] for s in HONEST} == alone
    alone_cells = {s: [(g.cell, g.score) for g in r.grades] for s, r in graded["alone"].items()}
    cells = {s: [(g.cell, g.score) for g in r.grades] for s, r in graded["records"].items()}
    assert {s: cells[s] for s in HONEST} == alone_cells


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_is_blocked_or_scored_as_the_wrong_answer_it_is(graded, attack):
    scores = _scores(graded["records"])
    result = graded["results"][attack.name]
    text = _text(graded, attack.name)
    assert not [line for line in text.splitlines() if line.startswith("ATTACK LEAK")], text
    assert scores[attack.name] == attack.expected, (result.problems, text[-3000:])
    if attack.review:
        assert any(attack.review in note for note in result.review), result.review
    if attack.name in FORGERIES:
        assert any(
            "reported a pass that the trusted check did not reproduce" in p for p in result.problems
        ), result.problems


def test_text_a_notebook_writes_into_its_refusals_reaches_no_verdict(graded):
    """The checks' messages (which the class report and feedback quote) and the notes for
    review say what the grader found, never text the notebook chose."""
    result = graded["results"]["forged_refusal_text"]
    nb = graded["course"].graded("forged_refusal_text")
    verdicts = [cell_text(cell) for cell in by_grade_id(nb).values() if cell.cell_type == "code"]
    assert verdicts and not [v for v in verdicts if FORGED_TEXT in v]
    assert not [n for n in result.problems + result.review if FORGED_TEXT in n]


def test_no_file_outside_the_sandbox_changes(graded):
    assert graded["changed"] == set()
    assert graded["venv_changed"] == set()


def test_the_network_is_unreachable(graded):
    assert graded["received"] == []
    assert "ATTACK BLOCKED 127.0.0.1" in _text(graded, "network")


def test_no_process_survives(graded):
    assert "sleep 4242" not in graded["processes"]
    assert "sleep 4243" not in graded["processes"]
    assert "ATTACK DONE daemons" in _text(graded, "daemons")


def test_killing_reaches_only_the_attackers_own_sandbox(graded):
    text = _text(graded, "kill_processes")
    seen = [int(line.split()[2]) for line in text.splitlines() if line.startswith("ATTACK sees")]
    assert len(seen) < 20, seen  # its own few processes in its own PID namespace
    assert graded["results"]["kill_processes"].success


def test_memory_is_bounded(graded):
    text = _text(graded, "memory_bomb")
    assert "ATTACK BLOCKED MemoryError" in text
    if KernelCgroup.create(2**30, 16) is None:
        pytest.skip("no control group can be made here: only the per-process bound holds")
    line = next(line for line in text.splitlines() if line.startswith("ATTACK children"))
    holding = int(line.split()[2])
    assert holding * 3 <= 4, line  # the sandbox as a whole holds at most its 4 GiB


def test_processes_are_bounded(graded):
    line = next(
        line for line in _text(graded, "fork_bomb").splitlines() if line.startswith("ATTACK forked")
    )
    assert int(line.split()[2]) < 256


def test_disk_is_bounded(graded):
    line = next(
        line for line in _text(graded, "disk_bomb").splitlines() if line.startswith("ATTACK wrote")
    )
    assert int(line.split()[2]) <= 2**30


def test_hidden_tests_never_reach_the_kernel_or_feedback(graded):
    text = _text(graded, "hidden_tests")
    saw = next(line for line in text.splitlines() if line.startswith("ATTACK SAW"))
    # It saw the visible part of a failed test that ran after it installed its hooks, never a
    # hidden test.
    assert HIDDEN_LATER not in saw and "grading.check_conv_layout" in saw
    found = [line for line in text.splitlines() if line.startswith("ATTACK notebook")]
    assert found == []  # no notebook of the course is visible to the kernel
    for student in ("honest_correct", "honest_unbiased", "hidden_tests"):
        folder = graded["course"].root / "feedback" / student / A
        html = "".join(p.read_text() for p in folder.glob("*.html"))
        assert html and HIDDEN_ONLY not in html and "BEGIN HIDDEN TESTS" not in html


def test_graded_notebook_holds_the_trusted_verdict(graded):
    nb = graded["course"].graded("patch_checks")
    cell = by_grade_id(nb)["test_batchnorm_train"]
    assert any(o.output_type == "error" for o in cell.outputs)
    assert "batchnorm_forward_train" in cell_text(cell)
