"""``bncourse grade``: autograde a whole class in parallel, then feedback and a grades CSV.

nbgrader grades one student at a time, and its SQLite gradebook is unsafe with concurrent writers.
Here each worker process grades a student in a private course folder (see ``worker``); with an
SQLite gradebook the worker starts from a snapshot of the course's gradebook and this process,
the only writer, merges each result back through nbgrader's ``Gradebook`` API. With a database
server (PostgreSQL) configured as ``db_url`` the workers write to it directly.

With ``scheduler`` the students are graded on a Dask distributed cluster instead (see
``cluster``): the workers get everything as data and this process writes every result, whatever
the database.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bncourse.instructor import cluster, worker
from bncourse.instructor.class_grades import write_grades_csv
from bncourse.instructor.cluster import ClusterRun
from bncourse.instructor.course import Course
from bncourse.instructor.gradebook_io import (
    read_student_state,
    seed_gradebook,
    snapshot_sqlite,
    write_submission,
)
from bncourse.instructor.outputs import write_class_outputs
from bncourse.instructor.review_notes import read_notes, update_notes

LOG_DIR = Path(".bncourse") / "logs"
"""Per-student grading logs, relative to the course folder."""


@dataclass
class ClassReport:
    """The outcome of grading one assignment for a whole class."""

    assignment: str
    results: list[worker.GradeResult] = field(default_factory=list)
    csv: Path | None = None
    log_dir: Path | None = None
    added_assignment: bool = False
    unsandboxed: str | None = None
    """Why grading ran without a sandbox (allowed explicitly), or None when it was sandboxed."""
    cluster: ClusterRun | None = None
    """The Dask cluster that graded the class, or None for the local process pool."""
    files: dict[str, Path] = field(default_factory=dict)
    """The class report (``report``) and the LMS import files (``canvas``, ``moodle``) written."""

    @property
    def failed(self) -> list[worker.GradeResult]:
        return [r for r in self.results if not r.success]

    @property
    def environment(self) -> list[str]:
        """Why the grader's environment, not the submissions, failed (empty when it did not).

        A kernel that cannot import the course's grader says so for each submission it ran; a
        class where every submission (two or more) failed with one and the same problem says it
        as a whole.
        """
        causes = sorted({r.environment for r in self.results if r.environment})
        if causes:
            return causes
        problems = {"; ".join(r.problems) for r in self.results}
        if len(self.results) > 1 and not any(r.success for r in self.results):
            if len(problems) == 1 and "" not in problems:
                return [
                    f"every submission failed in the same way ({problems.pop()}); a problem "
                    "shared by the whole class is most likely the grader's environment: read a "
                    f"log in {self.log_dir}, fix the cause, then grade again."
                ]
        return []


def ensure_assignment(course: Course, assignment: str) -> bool:
    """Register the assignment in the gradebook when it is missing; True if it was added.

    ``nbgrader generate_assignment`` does this as it releases; ``make release`` runs it with
    ``--no-db``. Here it runs in a temporary folder so that the released files are not touched.
    """
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    with Gradebook(course.db_url, course.course_id) as gb:
        try:
            if gb.find_assignment(assignment).notebooks:
                return False
        except MissingEntry:
            pass
    with tempfile.TemporaryDirectory(prefix="bncourse-register-") as tmp:
        course.copy_source(assignment, Path(tmp))
        config = course.config_for(Path(tmp))
        api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
        outcome = api.generate_assignment(assignment, force=True, create=True)
    if not outcome["success"]:
        raise RuntimeError(
            f"could not add assignment {assignment!r} to the gradebook:\n{outcome.get('log', '')}"
            f"{outcome.get('error', '')}"
        )
    return True


def expected_notebooks(course: Course, assignment: str) -> dict[str, set[str]]:
    """The assignment's notebooks (names without .ipynb) and their graded cells, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(course.db_url, course.course_id) as gb:
        return {
            nb.name: {cell.name for cell in nb.grade_cells}
            for nb in gb.find_assignment(assignment).notebooks
        }


def register_students(course: Course, students: list[str]) -> None:
    """Add missing students to the gradebook in sorted order, as serial ``nbgrader autograde``
    does; nbgrader's CSV export lists students in the order they were added."""
    from nbgrader.api import Gradebook

    with Gradebook(course.db_url, course.course_id) as gb:
        for student in students:
            gb.update_or_create_student(student)


# What comes back from a job's private folder: graded notebooks, feedback pages, nbgrader's
# timestamp. Nothing else a submission brought or made reaches the course folder.
_KEPT = ("*.ipynb", "*.html", "timestamp.txt")


def _keep_only(folder: str, names: list[str]) -> list[str]:
    ignored = []
    for name in names:
        path = Path(folder) / name
        if path.is_symlink() or (
            path.is_file() and not any(path.match(pattern) for pattern in _KEPT)
        ):
            ignored.append(name)
    return ignored


def _replace_tree(src: Path | None, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    if src is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, ignore=_keep_only)


def _store(
    course: Course, assignment: str, result: worker.GradeResult, log_dir: Path, merge: bool
) -> None:
    """Bring one worker's result into the course: gradebook rows (``merge``: the worker wrote a
    gradebook of its own), graded notebooks, feedback."""
    from nbgrader.api import Gradebook

    notes = review_notes(result)
    header = "".join(f"[NOTE] {note}\n" for note in notes)
    (log_dir / f"{result.student}.log").write_text(header + result.log)
    if result.environment:  # not a grade: what the student had before stays as it was
        if result.workdir is not None:
            shutil.rmtree(result.workdir, ignore_errors=True)
        return
    if merge and result.record is not None:
        with Gradebook(course.db_url, course.course_id) as gb:
            write_submission(gb, result.record)
    _replace_tree(result.autograded, course.autograded_dir / result.student / assignment)
    _replace_tree(result.feedback, course.feedback_dir / result.student / assignment)
    if result.workdir is not None:
        shutil.rmtree(result.workdir, ignore_errors=True)


def _run_pool(
    jobs: list[worker.GradeJob], workers: int, log_path: Path, on_result
) -> list[worker.GradeJob]:
    """Grade ``jobs`` in a pool of processes; returns the jobs lost with a crashed worker process."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    lost = []
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=worker.init_worker,
        initargs=(threads, str(log_path)),
    ) as pool:
        futures = {pool.submit(worker.grade, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                on_result(future.result())
            except BrokenProcessPool:
                lost.append(futures[future])
    return lost


def grade_class(
    course: Course,
    assignment: str,
    *,
    workers: int = 1,
    feedback: bool = True,
    csv: Path | None = None,
    progress: bool = True,
    only: list[str] | None = None,
    allow_unsandboxed: bool = False,
    scheduler: str | None = None,
    exports: list[str] = (),
    canvas_id: str | None = None,
) -> ClassReport:
    """Autograde every submitted student of ``assignment`` (or those in ``only``); merge, give
    feedback, export grades, write the class report and the LMS import files of ``exports``
    (``canvas``, ``moodle``; ``canvas_id``: the Canvas assignment's id) next to the grades.

    ``scheduler``: the address of a Dask scheduler to grade on, or ``"local"`` for a
    ``LocalCluster`` of ``workers`` processes; None grades in a local process pool.

    Refuses to start (:class:`~bncourse.trusted.sandbox.SandboxUnavailable`) where no sandbox can
    start, unless ``allow_unsandboxed`` (or ``c.Sandbox.allow_unsandboxed``) says otherwise.
    """
    from bncourse.instructor.submissions import list_students
    from bncourse.trusted.sandbox import Sandbox, SandboxUnavailable

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    worker.silence_library_warnings()
    report = ClassReport(assignment=assignment)
    settings = Sandbox(config=course.config)
    remote = bool(scheduler) and scheduler != cluster.LOCAL
    on_dask = bool(scheduler)  # every Dask worker grades into a seed gradebook of its own
    # On a remote cluster each worker checks its own sandbox (a submission graded where none can
    # start fails with that reason, unless allowed); this machine's does not matter.
    report.unsandboxed = None if remote else settings.unavailable()
    allow_unsandboxed = allow_unsandboxed or settings.allow_unsandboxed
    if report.unsandboxed and not allow_unsandboxed:
        raise SandboxUnavailable(
            f"{report.unsandboxed}. bncourse grade runs student code only in a sandbox; pass "
            "--allow-unsandboxed to grade without one (student code can then read and change "
            "everything this account can)."
        )
    report.added_assignment = ensure_assignment(course, assignment)
    expected = expected_notebooks(course, assignment)
    exclude = str(course.config.CourseDirectory.get("student_id_exclude", ""))
    students = list_students(course.submitted_dir, assignment, exclude)
    if only:
        unknown = sorted(set(only) - set(students))
        if unknown:
            raise FileNotFoundError(
                f"no submission of {assignment} in {course.submitted_dir} by: {', '.join(unknown)}"
            )
        students = [s for s in students if s in set(only)]
    if course.config.get("Autograde", {}).get("create_student", True):
        register_students(course, students)
    report.log_dir = course.root / LOG_DIR / assignment
    report.log_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f"bncourse-grade-{assignment}-") as scratch:
        scratch = Path(scratch)
        bar = tqdm(
            total=len(students), unit="student", desc=f"grading {assignment}", disable=not progress
        )

        def on_result(result: worker.GradeResult) -> None:
            # Pool workers write to a database server themselves; Dask workers never do.
            _store(course, assignment, result, report.log_dir, course.db_is_sqlite or on_dask)
            report.results.append(result)
            bar.update(1)
            bar.set_postfix_str(f"{bar.total - bar.n} remaining, last: {result.student}")

        run = (course, assignment, students, workers, scratch, expected, on_result)
        options = {"feedback": feedback, "allow_unsandboxed": allow_unsandboxed}
        log_path = report.log_dir / "workers.log"
        if scheduler:
            report.cluster = _grade_on_cluster(*run, log_path, scheduler, **options)
        else:
            _grade_in_pool(*run, log_path, **options)
        bar.close()

    report.results.sort(key=lambda r: r.student)
    update_notes(
        course.root,
        assignment,
        {r.student: review_notes(r, manual=False) for r in report.results},
    )
    bare = sorted({r.worker for r in report.results if r.success and not r.sandboxed})
    if remote and bare:
        report.unsandboxed = f"the workers {', '.join(bare)} could start no sandbox"
    report.csv = export_grades(course, csv or course.root / "grades.csv")
    report.files = write_class_outputs(
        course, assignment, report.csv.parent, exports, canvas_id=canvas_id
    )
    return report


def _grade_in_pool(
    course: Course,
    assignment: str,
    students: list[str],
    workers: int,
    scratch: Path,
    expected: dict[str, set[str]],
    on_result,
    log_path: Path,
    **options,
) -> None:
    """Grade ``students`` in local worker processes; a job lost with a crashed process is tried
    once more."""
    snapshot = None
    if course.db_is_sqlite:
        snapshot = snapshot_sqlite(course.db_url, scratch / "snapshot.db")
    jobs = [
        worker.GradeJob(
            assignment=assignment,
            student=student,
            config=course.config,
            submitted=course.submitted_dir / student / assignment,
            source=course.source_dir / assignment,
            source_subdir=str(course.source_dir.relative_to(course.root)),
            release=course.release_dir / assignment,
            expected=expected,
            scratch=scratch,
            snapshot=snapshot,
            db_url=None if snapshot else course.db_url,
            **options,
        )
        for student in students
    ]
    pending, attempts = jobs, 0
    while pending and attempts < 2:
        pending = _run_pool(pending, min(workers, len(pending)), log_path, on_result)
        attempts += 1
    for job in pending:
        on_result(
            worker.GradeResult(
                student=job.student, success=False, problems=["the worker process died"]
            )
        )


def _grade_on_cluster(
    course: Course,
    assignment: str,
    students: list[str],
    workers: int,
    scratch: Path,
    expected: dict[str, set[str]],
    on_result,
    log_path: Path,
    scheduler: str,
    **options,
) -> ClusterRun:
    """Grade ``students`` on a Dask cluster: a seed gradebook and each student's rows travel as
    data; results come back to ``on_result`` here."""
    from nbgrader.api import Gradebook

    seed = seed_gradebook(course.db_url, course.course_id, assignment, scratch / "seed.db")
    with Gradebook(course.db_url, course.course_id) as gb:
        states = {s: read_student_state(gb, assignment, s) for s in students}
    shared = cluster.shared_inputs(
        assignment,
        course.config,
        course.source_dir / assignment,
        str(course.source_dir.relative_to(course.root)),
        course.release_dir / assignment,
        seed,
        expected,
        **options,
    )
    jobs = [
        cluster.with_submission(s, course.submitted_dir / s / assignment, states[s])
        for s in students
    ]
    with cluster.connect(scheduler, local_workers=workers, log_path=log_path) as client:
        return cluster.grade_on_cluster(client, shared, jobs, scratch, on_result)


def export_grades(course: Course, path: Path) -> Path:
    """Write the gradebook to ``grades.csv``, a column per graded part (see ``class_grades``)."""
    from nbgrader.api import Gradebook

    with Gradebook(course.db_url, course.course_id) as gb:
        return write_grades_csv(gb, Path(path), course.source_dir, notes=read_notes(course.root))


def review_notes(result: worker.GradeResult, *, manual: bool = True) -> list[str]:
    """What a grader should read about one student's result: the problems met, the parts waiting
    for a grader (with ``manual``; ``grades.csv`` has a column of its own for them) and the routes
    around the checks found in the source."""
    notes = list(result.problems)
    by_hand = sorted(
        g.cell for g in (result.record.grades if result.record else []) if g.needs_manual_grade
    )
    if manual and by_hand and result.success:  # nbgrader flags every cell of a failed submission
        notes.append("needs manual grading: " + ", ".join(by_hand))
    if result.review:
        notes.append("for review: " + "; ".join(result.review))
    return notes


def summary_table(report: ClassReport) -> str:
    """One line per student: score, maximum, any problem found and the answers left to a grader."""
    rows = [("student", "score", "max", "problem")]
    for r in report.results:
        score = f"{r.record.score:g}" if r.record else "-"
        top = f"{r.record.max_score:g}" if r.record else "-"
        notes = review_notes(r)
        rows.append((r.student, score, top, "; ".join(notes) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}"
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  -------")
    if report.cluster is not None:
        lines += [
            "",
            f"graded on the Dask cluster at {report.cluster.scheduler} "
            f"(workers: {', '.join(report.cluster.workers) or '-'})",
        ]
        retried = [r for r in report.results if r.retries]
        if retried:
            lines.append(
                "retried after a worker died: "
                + ", ".join(f"{r.student} ({r.retries}x)" for r in retried)
            )
    if report.environment:
        warning = environment_warning(report)
        lines = [warning, "", *lines, "", warning]
    if report.unsandboxed:
        lines += [
            "",
            f"GRADED WITHOUT A SANDBOX (--allow-unsandboxed): {report.unsandboxed}. Student code "
            "could read and change everything this account can; scores still come from the "
            "grader's own checks.",
        ]
    return "\n".join(lines)


def environment_warning(report: ClassReport) -> str:
    """The loud paragraph of a summary whose failures are the grader's environment."""
    hit = [r.student for r in report.results if r.environment] or [
        r.student for r in report.results
    ]
    return "\n".join(
        [
            "GRADER'S ENVIRONMENT BROKEN: these results are not the students' work.",
            *(f"  cause: {cause}" for cause in report.environment),
            f"  not graded ({len(hit)}): {', '.join(hit)}. Their earlier grades, graded "
            "notebooks and feedback are left as they were; fix the cause, then run "
            f"`bncourse grade {report.assignment}` again.",
        ]
    )
