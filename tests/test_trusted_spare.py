"""Kernels started ahead (``bncourse.trusted.spare``): while one notebook is graded, the next
notebook's sandboxed kernel starts; it serves that notebook only, and nothing the current
notebook does reaches it.

One class graded with one worker, in this order: mallory (hostile: leaves files, signals every
process it can name, then sleeps), ada and bo (each reports what its kernel sees).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from example_course import BIN, make_course, release, run

from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records
from bncourse.trusted import spare
from bncourse.trusted.sandbox import Sandbox, unavailable_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable_reason() is not None, reason="no sandbox here"),
]

SLEEP = 6  # seconds mallory's notebook sleeps after its attack: the spare must outlive it

PROBE = """

import json as _json, os as _os
_ticks = _os.sysconf("SC_CLK_TCK")
_start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / _ticks
print("PROBE" + _json.dumps({
    "uid": _os.getuid(),
    "age": float(open("/proc/uptime").read().split()[0]) - _start,
    "left": sorted(_os.listdir("/tmp")) + sorted(_os.listdir("/tmp/work")),
    "processes": sorted(int(p) for p in _os.listdir("/proc") if p.isdigit()),
}))
"""

ATTACK = f"""

import os as _os, signal as _signal, time as _time
open("/tmp/left-by-mallory", "w").write("for the next student")
open("/tmp/work/left-by-mallory", "w").write("for the next student")
_mine = {{int(t) for t in _os.listdir("/proc/self/task")}}
for _pid in range(1, 4096):
    if _pid not in _mine:
        try:
            _os.kill(_pid, _signal.SIGKILL)
        except OSError:
            pass
_time.sleep({SLEEP})
"""


def _probe(graded: Path, student: str) -> dict:
    path = graded / "autograded" / student / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb"
    for cell in nbformat.read(path, 4).cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            if text.startswith("PROBE"):
                return json.loads(text[len("PROBE") :].splitlines()[0])
    raise AssertionError(f"{student}'s notebook printed no probe")


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_course(tmp_path_factory.mktemp("spare") / "course")
    correct = ec.ANSWERS["correct"]
    hostile = {**correct, "variance": correct["variance"] + PROBE + ATTACK}
    ec.submit(root, "a-mallory", ec.answer(release(root), hostile))
    for student in ("b-ada", "c-bo"):
        probed = {**correct, "mean": correct["mean"] + PROBE}
        ec.submit(root, student, ec.answer(release(root), probed))
    run([str(BIN / "bncourse"), "grade", ec.ASSIGNMENT, "--workers", "1", "--no-progress"], root)
    return root


def test_the_next_kernel_starts_while_the_current_notebook_runs(graded):
    assert _probe(graded, "b-ada")["age"] > SLEEP  # it was up before mallory's sleep ended
    assert _probe(graded, "c-bo")["age"] > 0


def test_what_a_notebook_leaves_or_does_never_reaches_the_next_kernel(graded):
    for student in ("b-ada", "c-bo"):
        probe = _probe(graded, student)
        assert not any("mallory" in name for name in probe["left"]), probe
    scores = {
        s: r.score
        for s, r in class_records(f"sqlite:///{graded / 'gradebook.db'}", ec.ASSIGNMENT).items()
    }
    assert scores == {"a-mallory": 5, "b-ada": 5, "c-bo": 5}


def test_a_kernel_sees_only_its_own_processes(graded):
    mallory, ada = _probe(graded, "a-mallory"), _probe(graded, "b-ada")
    assert max(mallory["processes"]) < 100 and max(ada["processes"]) < 100  # own PID namespace


@pytest.mark.skipif(os.geteuid() != 0, reason="kernels change user only when grading as root")
def test_consecutive_kernels_run_as_different_users(graded):
    uids = [_probe(graded, s)["uid"] for s in ("a-mallory", "b-ada", "c-bo")]
    assert uids[0] != uids[1] and uids[1] != uids[2], uids
    assert all(uid >= 200_000 for uid in uids)


def test_a_spare_kernel_is_handed_out_once_and_removed_when_not_wanted():
    settings = Sandbox()
    spare.start_spare(("key",), settings, "python3", None, [])
    slot = spare.take(("key",))
    try:
        assert slot is not None and slot.km is not None
        assert spare.take(("key",)) is None  # never a second time
    finally:
        spare._shutdown(slot)
    assert not slot.folder.exists()

    spare.start_spare(("key",), Sandbox(), "python3", None, [])
    unwanted = spare._spare
    assert spare.take(("other settings",)) is None
    assert not unwanted.folder.exists()  # shut down and deleted, not kept for later


def test_the_kernel_folders_of_consecutive_slots_differ_and_alternate_users():
    first, second = spare.new_slot(Sandbox()), spare.new_slot(Sandbox())
    try:
        assert first.folder != second.folder
        if os.geteuid() == 0:
            assert first.settings.uid != second.settings.uid
            assert first.sockets.stat().st_uid == first.settings.uid
    finally:
        first.remove()
        second.remove()


def test_folders_left_by_a_killed_grading_process_are_removed_by_the_next_one(tmp_path):
    import subprocess
    import sys

    from bncourse.trusted.sandbox import shared_memory_folder

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    where = Path(shared_memory_folder() or tmp_path)
    orphan = where / f"bncourse-kernel-{dead}-left"
    alive = where / f"bncourse-kernel-{os.getpid()}-inuse"
    for folder in (orphan, alive):
        (folder / "sockets").mkdir(parents=True)
    try:
        spare._remove_orphans.cache_clear()
        spare.new_slot(Sandbox()).remove()
        assert not orphan.exists()
        assert alive.exists()  # a running grader's folder is never touched
    finally:
        for folder in (orphan, alive):
            shutil.rmtree(folder, ignore_errors=True)
