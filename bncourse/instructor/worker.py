"""Grade one student in a private course folder: what each worker process of ``bncourse grade`` runs.

Every job gets its own temporary course folder with a copy of the instructor version, a copy of
the student's submitted files (the originals are never opened for writing; links are left out)
and, for an SQLite gradebook, its own copy of the gradebook. There it runs nbgrader's own
``autograde`` (and ``generate_feedback``) with the trusted execution step of
:mod:`bncourse.trusted`: the submission's cells run in a sandboxed kernel, the test cells here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from traitlets.config import Config

from bncourse.instructor.gradebook_io import (
    StudentState,
    SubmissionRecord,
    apply_student_state,
    copy_sqlite,
    read_submission,
)
from bncourse.instructor.submissions import Inspection, inspect
from bncourse.trusted.config import use_trusted_grading

REPORT_NAME = "trusted-report.jsonl"
"""Where, in a job's private course folder, the trusted execution step writes its findings."""


@dataclass
class GradeJob:
    """Everything a worker needs to grade one student (picklable)."""

    assignment: str
    student: str
    config: Config
    submitted: Path
    source: Path
    source_subdir: str
    expected: dict[str, set[str]]
    scratch: Path
    release: Path | None = None
    snapshot: Path | None = None
    db_url: str | None = None
    feedback: bool = True
    allow_unsandboxed: bool = False
    student_state: StudentState | None = None
    """The student's rows to add to a copy of a seed gradebook (see ``gradebook_io``)."""


@dataclass
class GradeResult:
    """What happened to one student's submission."""

    student: str
    success: bool
    record: SubmissionRecord | None = None
    problems: list[str] = field(default_factory=list)
    log: str = ""
    workdir: Path | None = None
    autograded: Path | None = None
    feedback: Path | None = None
    seconds: float = 0.0
    review: list[str] = field(default_factory=list)
    """Routes around the checks found in the source, for the instructor to read (not scored)."""
    sandboxed: bool = True
    worker: str = ""
    """The Dask worker that graded the submission ("" in the local process pool)."""
    retries: int = 0
    """How many times a worker died while grading it before it was graded."""
    environment: str = ""
    """Why the grader's own environment could not grade this submission ("" when it could):
    such a result is not a grade and is not written to the gradebook."""


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""The environment variables that set how many threads a kernel's torch uses."""


def init_worker(threads: int | None, log_path: str | None) -> None:
    """Process-pool initializer: quiet stderr into a log file, share the cores between kernels."""
    if threads:
        for var in THREAD_VARIABLES:
            os.environ.setdefault(var, str(threads))
    if log_path:
        redirect_stderr(log_path)
    silence_library_warnings()
    import nbgrader.apps  # noqa: F401  (import while the pool starts, not with the first student)


def redirect_stderr(log_path: str | Path) -> int:
    """Send this process's stderr (and that of the kernels it starts) to ``log_path``.

    Returns a duplicate of the old stderr, for :func:`restore_stderr`.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    return saved


def restore_stderr(saved: int) -> None:
    """Undo :func:`redirect_stderr`."""
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def silence_library_warnings() -> None:
    """Hide nbgrader's harmless SQLAlchemy and deprecation warnings from the console."""
    from sqlalchemy.exc import SAWarning

    warnings.filterwarnings("ignore", category=SAWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


_ERROR_HINTS = [
    ("DeadKernelError", "the kernel died (os._exit, a crash or out of memory)"),
    ("UnresponsiveKernelError", "the kernel stopped responding and could not be interrupted"),
    (
        "Timeout waiting for IOPub output",
        "a cell ran past the time limit and ignored the interrupt; nothing could be graded",
    ),
    ("SandboxUnavailable", "no sandbox could start (see the log); nothing was run"),
    ("NotJSONError", "not a valid notebook (not JSON)"),
    ("JSONDecodeError", "not a valid notebook (not JSON)"),
    ("ValidationError", "not a valid notebook (fails the notebook schema)"),
    ("No notebooks found", "no notebook of this assignment was submitted"),
    ("No notebooks were matched", "no notebook of this assignment was submitted"),
]


def explain_failure(text: str) -> str:
    """A one-line reason for a failed autograde, from nbgrader's log and traceback."""
    for needle, hint in _ERROR_HINTS:
        if needle in text:
            return hint
    for name, message in re.findall(r"(\w+(?:Error|Exception)): (.*)", text):
        if name != "NbGraderException":
            return f"{name}: {message}"[:200]
    return "autograding failed (see the log)"


def notebook_problems(autograded: Path, timeout: int | None) -> list[str]:
    """Problems visible in the graded notebooks: cells stopped by the time limit, kernel exits."""
    problems = []
    for path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") != "error":
                    continue
                if out.get("ename") == "CellTimeoutError":
                    problems.append(
                        f"{path.name}: cell {index} ran past the {timeout} s time limit"
                    )
                elif out.get("ename") == "SystemExit":
                    problems.append(f"{path.name}: cell {index} called sys.exit()")
    return problems


def _copy_submission(job: GradeJob, dest: Path, found: Inspection) -> None:
    """The student's files in the private course; renames and metadata repairs go to the copy."""
    shutil.copytree(job.submitted, dest, symlinks=True, ignore=_links)
    for old, new in found.renames.items():
        (dest / old).rename(dest / new)
    for name, nb in found.rewrites.items():
        nbformat.write(nb, dest / name)


def _links(folder: str, names: list[str]) -> list[str]:
    """Links in a submission are not copied: nothing outside it is read on its behalf."""
    return [n for n in names if os.path.islink(os.path.join(folder, n))]


def _take_findings(result: GradeResult, findings: list[dict]) -> None:
    """What the trusted execution step reported, as problems and notes for review."""
    for finding in findings:
        kind, note = finding.get("kind"), str(finding.get("note", ""))
        if kind == "unsandboxed":
            result.sandboxed = False
        elif kind == "environment":
            result.environment = result.environment or note
        elif kind == "flagged":
            result.review.append(note)
        elif note not in result.problems:
            result.problems.append(note)


def _releases(folder: Path | None) -> dict[str, nbformat.NotebookNode]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted(folder.glob("*.ipynb"))}


def grade(job: GradeJob) -> GradeResult:
    """Autograde ``job.student`` in a fresh course folder under ``job.scratch``; never raises."""
    start = time.perf_counter()
    result = GradeResult(student=job.student, success=False)
    try:
        _grade(job, result)
    except Exception as exc:  # a broken submission must never stop the class
        result.success = False
        result.problems.append(f"grading crashed: {type(exc).__name__}: {exc}"[:300])
    result.seconds = time.perf_counter() - start
    return result


def _grade(job: GradeJob, result: GradeResult) -> None:
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    root = Path(tempfile.mkdtemp(prefix=f"{job.student}-", dir=job.scratch))
    result.workdir = root
    db_url = copy_sqlite(job.snapshot, root / "gradebook.db") if job.snapshot else job.db_url
    if job.student_state is not None:
        with Gradebook(db_url, str(job.config.CourseDirectory.get("course_id", ""))) as gb:
            apply_student_state(gb, job.assignment, job.student_state)
    config = copy.deepcopy(job.config)
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.db_url = db_url
    use_trusted_grading(config)
    config.TrustedExecute.report_path = str(root / REPORT_NAME)
    if job.allow_unsandboxed:
        config.Sandbox.allow_unsandboxed = True
    if not any("shutdown_kernel" in config[k] for k in ("Execute", "ExecutePreprocessor")):
        # Kill each kernel once its notebook has run (every output is in by then) instead of
        # waiting 1-2 s for it to exit; a course can still set Execute.shutdown_kernel itself.
        config.Execute.shutdown_kernel = "immediate"
    ignore = list(config.CourseDirectory.get("ignore", []))

    shutil.copytree(job.source, root / job.source_subdir / job.assignment)
    found = inspect(job.submitted, job.expected, ignore, _releases(job.release))
    result.problems.extend(found.notes)
    _copy_submission(job, root / "submitted" / job.student / job.assignment, found)

    coursedir = CourseDirectory(config=config)
    api = NbGraderAPI(coursedir=coursedir, config=config)
    create = config.get("Autograde", {}).get("create_student", True)
    outcome = api.autograde(job.assignment, job.student, force=True, create=create)
    result.log = outcome.get("log", "") + outcome.get("error", "")
    result.success = bool(outcome["success"])
    from bncourse.trusted.execute import read_report

    _take_findings(result, read_report(root / REPORT_NAME))
    autograded = root / "autograded" / job.student / job.assignment
    if result.environment:
        result.success = False
        result.problems.append("not graded: the grader's environment is broken")
        result.log += f"[ERROR] not graded: {result.environment}\n"
        return
    if not result.success:
        reason = explain_failure(result.log)
        if not (
            reason.startswith("not a valid notebook") and "not a valid notebook" in str(found.notes)
        ):
            result.problems.append(reason)
    elif autograded.is_dir():
        result.autograded = autograded
        timeout = config.Execute.get("timeout", config.ExecutePreprocessor.get("timeout", 30))
        result.problems.extend(notebook_problems(autograded, timeout))
        if job.feedback:
            fb = api.generate_feedback(job.assignment, job.student, force=True)
            feedback = root / "feedback" / job.student / job.assignment
            if fb["success"] and feedback.is_dir():
                result.feedback = feedback
            else:
                result.problems.append("feedback could not be generated")
                result.log += fb.get("log", "") + fb.get("error", "")
    with Gradebook(db_url) as gb:
        result.record = read_submission(gb, job.assignment, job.student)
