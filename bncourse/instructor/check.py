"""``bncourse check NOTEBOOK``: grade one notebook exactly as the autograder will, before submitting.

The notebook goes through nbgrader's own ``autograde`` in a temporary course built from the
course's configuration (same time limit) and its instructor version (test cells, hidden tests
included, are restored from it as nbgrader's ``OverwriteCells`` does) and run in this process,
as ``bncourse grade`` runs them. Outside a course folder (a notebook downloaded from the book or
saved from Colab) the course and assignment installed with the package take their place, the
assignment recognised from the notebook's graded cells; the notebook's own cells run sandboxed where a sandbox can start
and, since this is the student's own code on the student's own machine, unsandboxed where it
cannot (on macOS, or on Colab). Unlike
``nbgrader validate`` the exit status tells the result: 0 when every check passes, 1 when one
fails, 2 when the notebook could not be graded.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import nbformat

from bncourse.instructor import packaged, worker
from bncourse.instructor.course import Course, find_course_dir, packaged_course

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STUDENT = "student"


@dataclass
class PartResult:
    """One graded cell of the checked notebook."""

    notebook: str
    part: str
    score: float
    max_score: float
    manual: bool
    message: str = ""
    answered: bool = True

    @property
    def status(self) -> str:
        if self.manual:
            return "graded by hand" if self.answered else "no answer yet"
        return "pass" if self.passed else "FAIL"

    @property
    def passed(self) -> bool:
        return self.manual or self.score >= self.max_score


def _error_messages(autograded: Path | None) -> dict[tuple[str, str], str]:
    """The error shown under each graded cell of the graded notebooks: ename and message."""
    messages: dict[tuple[str, str], str] = {}
    if autograded is None:
        return messages
    for path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if grade_id and errors:
                err = errors[-1]
                name, value = err.get("ename", "Error"), str(err.get("evalue", "")).strip()
                text = f"{name}: {value}" if value else name
                messages[(path.stem, grade_id)] = _ANSI.sub("", text)
    return messages


def _source_for(course: Course, assignment: str) -> Path:
    for folder in (course.source_dir / assignment, course.release_dir / assignment):
        if folder.is_dir() and any(folder.glob("*.ipynb")):
            return folder
    raise FileNotFoundError(
        f"assignment {assignment!r} has neither {course.source_dir / assignment} nor "
        f"{course.release_dir / assignment}; pass --assignment with its name"
    )


def _course_source(
    notebook: Path, assignment: str | None, course_dir: Path | None
) -> tuple[Course, str, Path] | None:
    """The course folder that holds the notebook's assignment: its course, name and source.

    ``None`` when no folder at or above the notebook is a course holding that assignment (a
    notebook saved anywhere else): then the copy installed with the package grades it.
    """
    if course_dir is not None:
        course = Course.load(course_dir)
        if assignment is None:
            try:
                return course, notebook.parent.name, _source_for(course, notebook.parent.name)
            except FileNotFoundError:
                assignment = packaged.identify(_read(notebook), _course_notebooks(course))
        return course, assignment, _source_for(course, assignment)
    try:
        course = Course.load(find_course_dir(notebook.parent))
    except FileNotFoundError:
        return None
    try:
        name = assignment or notebook.parent.name
        return course, name, _source_for(course, name)
    except FileNotFoundError:
        return None


def _course_notebooks(course: Course) -> dict[str, list[Path]]:
    """Each assignment of the course folder and its instructor (else student) notebooks."""
    found: dict[str, list[Path]] = {}
    for top in (course.release_dir, course.source_dir):
        for folder in sorted(p for p in top.glob("*") if p.is_dir()):
            if notebooks := sorted(folder.glob("*.ipynb")):
                found[folder.name] = notebooks
    return found


def _read(notebook: Path) -> nbformat.NotebookNode:
    try:
        return nbformat.read(notebook, as_version=4)
    except Exception as exc:  # nbformat raises several kinds for a file that is not a notebook
        raise FileNotFoundError(f"{notebook} is not a valid notebook ({exc})") from exc


def _refuse_copied_cells(notebook: Path) -> None:
    """A cell copied in Jupyter keeps its nbgrader id, which nbgrader cannot grade: say which."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:  # not a notebook: grading says so in its own words
        return
    ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells]
    twice = sorted({i for i in ids if i and ids.count(i) > 1})
    if twice:
        raise RuntimeError(
            f"{notebook.name}: these graded cells appear more than once, "
            f"probably copied or split in Jupyter: {', '.join(twice)}. A copy keeps the cell's "
            "grading id; delete the copies (keep your answer in the original cell) and check again."
        )


def grade_notebook(
    notebook: Path, *, assignment: str | None = None, course_dir: Path | None = None
) -> tuple[worker.GradeResult, list[PartResult]]:
    """Autograde ``notebook`` in a temporary copy of its course; the result and its parts.

    The course is ``course_dir``, else the course folder around the notebook when it holds the
    assignment, else this course as installed with the package (:mod:`.packaged`), the
    assignment then recognised from the notebook's graded cells unless ``assignment`` names it.
    The notebook itself is only read.
    """
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        what = "is a folder, not a notebook file" if notebook.is_dir() else "does not exist"
        raise FileNotFoundError(f"notebook {notebook} {what}")
    _refuse_copied_cells(notebook)
    found = _course_source(notebook, assignment, course_dir)
    worker.silence_library_warnings()
    with tempfile.TemporaryDirectory(prefix="bncourse-check-") as tmp:
        if found is None:
            name = assignment or packaged.identify(_read(notebook))
            course = packaged_course(Path(tmp) / "installed")
            source = Path(tmp) / "installed" / "solutions" / name
            source.mkdir(parents=True)
            shutil.copyfile(packaged.packaged_notebook(name), source / f"{name}.ipynb")
        else:
            course, name, source = found
        work = Path(tmp) / "course"
        work.mkdir()
        saved = worker.redirect_stderr(Path(tmp) / "stderr.log")
        try:
            return _grade_in(work, notebook, course, name, source)
        finally:
            worker.restore_stderr(saved)


def _grade_in(
    tmp: Path, notebook: Path, course: Course, assignment: str, source: Path
) -> tuple[worker.GradeResult, list[PartResult]]:
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from bncourse.instructor.grade import expected_notebooks

    subdir = str(course.source_dir.relative_to(course.root))
    shutil.copytree(source, tmp / subdir / assignment)
    config = course.config_for(tmp, db_url=f"sqlite:///{tmp / 'gradebook.db'}")
    config.TrustedExecute.prestart = False  # one notebook: no next kernel to start ahead
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    made = api.generate_assignment(assignment, force=True, create=True)
    if not made["success"]:
        raise RuntimeError(f"could not prepare {assignment}:\n{made.get('error', '')}")
    expected = expected_notebooks(Course(root=tmp, config=config), assignment)
    submitted = tmp / "upload" / STUDENT / assignment
    submitted.mkdir(parents=True)
    # a notebook renamed on the way ("Copy of ps01.ipynb", "ps01 (1).ipynb") is graded as the
    # assignment's notebook when the assignment has only one
    name = (
        notebook.stem if notebook.stem in expected or len(expected) != 1 else next(iter(expected))
    )
    shutil.copyfile(notebook, submitted / f"{name}.ipynb")
    scratch = tmp / "scratch"
    scratch.mkdir()
    job = worker.GradeJob(
        assignment=assignment,
        student=STUDENT,
        config=config,
        submitted=submitted,
        source=tmp / subdir / assignment,
        source_subdir=subdir,
        release=tmp / course.release_dir.relative_to(course.root) / assignment,
        expected=expected,
        scratch=scratch,
        db_url=config.CourseDirectory.db_url,
        feedback=False,
        allow_unsandboxed=True,
    )
    result = worker.grade(job)
    messages = _error_messages(result.autograded)
    # graded cells that are also answer cells are graded by hand (nbgrader's "manually graded
    # answer"); an unchanged one gets nbgrader's automatic zero for "no response"
    written = {c.cell for c in result.record.comments} if result.record else set()
    parts = [
        PartResult(
            notebook=g.notebook,
            part=g.cell,
            score=g.score,
            max_score=g.max_score,
            manual=g.cell in written,
            answered=not (g.cell in written and g.auto_score == 0),
            message=messages.get((g.notebook, g.cell), ""),
        )
        for g in (result.record.grades if result.record else [])
    ]
    return result, parts


def format_table(parts: list[PartResult]) -> str:
    """The per-part score table."""
    rows = [("part", "points", "max", "result")]
    for p in parts:
        rows.append((p.part, "-" if p.manual else f"{p.score:g}", f"{p.max_score:g}", p.status))
    total = sum(p.score for p in parts if not p.manual)
    top = sum(p.max_score for p in parts)
    rows.append(("total", f"{total:g}", f"{top:g}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    ]
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def check_notebook(
    notebook: Path,
    *,
    assignment: str | None = None,
    course_dir: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Grade ``notebook``, print the score table and feedback; the exit status (0, 1 or 2)."""
    out = out or sys.stdout
    try:
        result, parts = grade_notebook(notebook, assignment=assignment, course_dir=course_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=out)
        return 2
    for note in result.problems:
        print(f"note: {note}", file=out)
    for note in result.review:
        print(f"note: the autograder shows this to your instructor for review: {note}", file=out)
    if not result.success:
        print(f"{Path(notebook).name} could not be graded: see the notes above.", file=out)
        return 2
    print(format_table(parts), file=out)
    failed = [p for p in parts if not p.passed]
    for p in failed:
        print(f"\n{p.part}: {p.message or 'no error message'}", file=out)
    for p in parts:
        if p.manual and not p.answered:
            print(f"\n{p.part}: a written answer, graded by hand; it is still empty.", file=out)
    if failed:
        checks = sum(1 for p in parts if not p.manual)
        print(f"\n{len(failed)} of {checks} checks failed.", file=out)
        return 1
    empty = sum(1 for p in parts if p.manual and not p.answered)
    written = sum(1 for p in parts if p.manual)
    if written:
        print(
            f"\nAll automatic checks passed; {written} written answer(s) are graded by hand"
            + (f", {empty} still empty." if empty else "."),
            file=out,
        )
        return 0
    print("\nAll checks passed.", file=out)
    return 0
