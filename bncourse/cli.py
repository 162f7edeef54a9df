"""Command line: ``bncourse ...`` or ``python -m bncourse ...``."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from bncourse import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bncourse", description="Tools of the Batch Normalization and Dropout course."
    )
    parser.add_argument("--version", action="version", version=f"bncourse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_instructor_commands(commands)
    return parser


def _add_instructor_commands(commands: argparse._SubParsersAction) -> None:
    grade = commands.add_parser(
        "grade",
        help="autograde every submitted student in parallel, then feedback and grades.csv",
        description=(
            "Autograde every student in submitted/*/ASSIGNMENT with nbgrader, in parallel worker "
            "processes, store the grades in the course gradebook, generate feedback and export "
            "the grades to CSV. Exits 1 when a submission could not be graded, 3 when the grader's "
            "own environment failed (for instance a kernel that cannot import bncourse)."
        ),
    )
    grade.add_argument(
        "assignment", metavar="ASSIGNMENT", help="assignment id, e.g. ps01_batchnorm"
    )
    grade.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: the number of CPU cores); with --cluster local, the "
        "local cluster's workers",
    )
    where = grade.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="grade on the Dask distributed cluster whose scheduler is at ADDRESS "
        "(e.g. tcp://10.0.0.5:8786); the workers need bncourse[cluster] and a sandbox, not this "
        "course folder",
    )
    where.add_argument(
        "--cluster",
        choices=["local"],
        default=None,
        help="start a Dask LocalCluster of --workers processes on this machine and grade on it",
    )
    _add_course_dir(grade)
    grade.add_argument(
        "--student",
        action="append",
        default=None,
        metavar="ID",
        help="grade only this student (repeat for several); default: every submitted student",
    )
    _add_output_options(grade)
    grade.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML files")
    grade.add_argument("--no-progress", action="store_true", help="no progress bar")
    grade.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="grade even where no sandbox can start (said again in the summary); student code "
        "then runs with this account's rights",
    )
    grade.set_defaults(func=_run_grade)

    report = commands.add_parser(
        "report",
        help="write grades.csv, the class report and LMS import files from the gradebook",
        description=(
            "Without grading again: write grades.csv (a column per graded part), the class "
            "report report-ASSIGNMENT.html (score distributions, misconceptions and who made "
            "them) and, with --export, the Canvas and Moodle import files, from the gradebook "
            "and the graded notebooks (for instance after grading written answers by hand)."
        ),
    )
    report.add_argument(
        "assignment", metavar="ASSIGNMENT", help="assignment id, e.g. ps01_batchnorm"
    )
    _add_course_dir(report)
    _add_output_options(report)
    report.set_defaults(func=_run_report)

    check = commands.add_parser(
        "check",
        help="grade your notebook the way the autograder will and show the score of each part",
        description=(
            "Run NOTEBOOK through nbgrader's autograder in a temporary course (same time limit, "
            "test cells restored from the instructor version) and print a score table with the "
            "feedback of each failed check. Exits 1 when a check fails, 2 when grading failed."
        ),
    )
    check.add_argument("notebook", type=Path, metavar="NOTEBOOK")
    check.add_argument(
        "--assignment",
        default=None,
        help="assignment id (default: the name of the folder holding NOTEBOOK)",
    )
    _add_course_dir(check)
    check.set_defaults(func=_run_check)


def _add_course_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--course-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="nbgrader course folder (default: nearest folder with nbgrader_config.py)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """What ``grade`` and ``report`` write: grades.csv and the LMS import files."""
    parser.add_argument("--csv", type=Path, default=None, help="grades file (default: grades.csv)")
    parser.add_argument(
        "--export",
        type=_formats,
        default=[],
        metavar="FORMATS",
        help="also write the gradebook-import files of these LMS, comma-separated: canvas, "
        "moodle (canvas-ASSIGNMENT.csv, moodle-ASSIGNMENT.csv next to grades.csv)",
    )
    parser.add_argument(
        "--canvas-id",
        default=None,
        metavar="ID",
        help="the Canvas assignment's id (in its URL), so that Canvas's import updates that "
        "assignment; without it Canvas makes a new one",
    )


def _formats(text: str) -> list[str]:
    from bncourse.instructor.lms_export import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
        )
    return formats


def _print_files(files: dict) -> None:
    for kind, path in files.items():
        label = "Class report" if kind == "report" else f"{kind.capitalize()} import"
        print(f"{label}: {path}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _run_grade(args: argparse.Namespace) -> int:
    from bncourse.instructor.course import Course
    from bncourse.instructor.grade import grade_class, summary_table

    try:
        course = Course.load(args.course_dir)
        report = grade_class(
            course,
            args.assignment,
            workers=args.workers,
            feedback=not args.no_feedback,
            csv=args.csv,
            progress=not args.no_progress,
            only=args.student,
            allow_unsandboxed=args.allow_unsandboxed,
            scheduler=args.scheduler or args.cluster,
            exports=args.export,
            canvas_id=args.canvas_id,
        )
    except (OSError, RuntimeError) as exc:  # OSError: also a scheduler that cannot be reached
        print(f"error: {exc}")
        return 2
    if report.added_assignment:
        print(f"Added assignment {args.assignment} to the gradebook from its source folder.")
    print(summary_table(report))
    print(f"\nGrades: {report.csv}   Logs: {report.log_dir}")
    _print_files(report.files)
    if report.environment:
        print(
            "\nerror: the grader's environment is broken (see above); no grade was recorded for "
            "the students it failed"
        )
        return 3
    if report.failed:
        names = ", ".join(r.student for r in report.failed)
        print(f"Could not grade: {names}")
        return 1
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from nbgrader.api import MissingEntry

    from bncourse.instructor.course import Course
    from bncourse.instructor.grade import export_grades
    from bncourse.instructor.outputs import write_class_outputs

    try:
        course = Course.load(args.course_dir)
        csv = export_grades(course, args.csv or course.root / "grades.csv")
        files = write_class_outputs(
            course, args.assignment, csv.parent, args.export, canvas_id=args.canvas_id
        )
    except MissingEntry:
        print(f"error: the gradebook has no assignment {args.assignment!r}")
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"Grades: {csv}")
    _print_files(files)
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from bncourse.instructor.check import check_notebook

    return check_notebook(args.notebook, assignment=args.assignment, course_dir=args.course_dir)


GRADING_TOOLS = ("nbgrader", "nbclient", "nbformat", "ipykernel")


def missing_grading_tools() -> list[str]:
    """The packages of the ``check`` extra that ``grade`` and ``check`` need and this Python lacks."""
    return [name for name in GRADING_TOOLS if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    missing = missing_grading_tools()
    if missing:
        from bncourse.distribution import CHECK_EXTRA, install_command

        print(
            f"error: bncourse {args.command} needs {', '.join(missing)}, which the package "
            f"installs with its {CHECK_EXTRA!r} extra: {install_command(CHECK_EXTRA)}"
        )
        return 2
    return args.func(args)
