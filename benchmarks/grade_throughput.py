"""Autograding throughput and the sandbox's cost: serial ``nbgrader``, ``bncourse grade`` with
1 and 2 workers in its process pool and on a Dask ``LocalCluster``, and ``bncourse grade`` with
the sandbox turned off.

Builds a class of synthetic submissions of an assignment of this course (default: 40 of
``ps01_batchnorm``, a mix of correct, blank and partly wrong notebooks) in temporary course folders,
grades identical copies of it four ways and prints submissions per minute and the speed-up:

* serial: ``nbgrader autograde`` + ``nbgrader generate_feedback`` + ``nbgrader export``, the same
  three jobs ``bncourse grade`` does (plain ``nbgrader autograde`` alone is printed too);
* ``bncourse grade --workers 1`` and ``bncourse grade --workers 2`` (the process pool);
* ``bncourse grade --cluster local --workers 1`` and ``... --workers 2``: the same on Dask, every
  submission and result travelling as data (the cluster's start and stop are in the time);
* ``bncourse grade --workers 1`` with ``c.Sandbox.enabled = False``: the per-submission time with
  and without the sandbox, side by side (the trusted verdict is computed the same way in both).

Every run computes the verdict in the grader (see ``bncourse.trusted``). It checks that all give
the same grades, and prints the floor: a fresh kernel that only imports torch, which every graded
submission pays.

    python benchmarks/grade_throughput.py                 # 40 ps01 submissions
    python benchmarks/grade_throughput.py --n 8 --example # the tiny example class, seconds
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from bncourse.instructor import example_class as ec
from bncourse.instructor.gradebook_io import class_records

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
SOLUTION = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", flags=re.MULTILINE)


CPU: dict[str, float] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sh(args: list[str], cwd: Path, label: str | None = None) -> float:
    """Run a command in ``cwd``; its wall-clock time in seconds (CPU seconds go to ``CPU``)."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if label:
        CPU[label] = CPU.get(label, 0.0) + _children_cpu() - cpu
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def make_base(folder: Path, assignment: str, example: bool) -> Path:
    """A course folder with the assignment released into its gradebook."""
    if example:
        ec.make_course(folder, timeout=120)
    else:
        folder.mkdir(parents=True)
        shutil.copy(ROOT / "nbgrader_config.py", folder / "nbgrader_config.py")
        shutil.copytree(ROOT / "solutions" / assignment, folder / "solutions" / assignment)
    sh([str(BIN / "nbgrader"), "generate_assignment", assignment, "--force"], folder)
    return folder


def _grade_id(cell: nbformat.NotebookNode) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def synthetic_class(course: Path, assignment: str, n: int) -> dict[str, str]:
    """Write ``n`` submissions: a third correct, a third blank, a third with one part left blank."""
    source = nbformat.read(course / "solutions" / assignment / f"{assignment}.ipynb", 4)
    release = nbformat.read(course / "exercises" / assignment / f"{assignment}.ipynb", 4)
    answers = {
        _grade_id(c): SOLUTION.sub("", c.source)
        for c in source.cells
        if c.get("metadata", {}).get("nbgrader", {}).get("solution") and c.cell_type == "code"
    }
    parts = sorted(answers)
    kinds = {}
    for i in range(n):
        student = f"s{i:03d}"
        kind = ("correct", "blank", "partial")[i % 3]
        chosen = dict(answers) if kind != "blank" else {}
        if kind == "partial":
            chosen.pop(parts[(i // 3) % len(parts)])  # this part keeps the student version's stub
        nb = nbformat.from_dict(release)
        for cell in nb.cells:
            if _grade_id(cell) in chosen:
                cell.source = chosen[_grade_id(cell)]
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
        kinds[student] = kind
    return kinds


def kernel_floor(repeats: int) -> float:
    """Mean seconds to start a fresh python3 kernel, import torch in it and shut it down."""
    from jupyter_client.manager import start_new_kernel

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        km, kc = start_new_kernel(kernel_name="python3")
        try:
            reply = kc.execute_interactive("import torch", timeout=120, store_history=False)
            assert reply["content"]["status"] == "ok", reply
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of submissions (default 40)")
    parser.add_argument("--assignment", default="ps01_batchnorm")
    parser.add_argument("--example", action="store_true", help="use the tiny example class")
    parser.add_argument("--floor-repeats", type=int, default=5)
    args = parser.parse_args()
    assignment = ec.ASSIGNMENT if args.example else args.assignment
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the start")

    with tempfile.TemporaryDirectory(prefix="bncourse-bench-") as tmp:
        tmp = Path(tmp)
        base = make_base(tmp / "base", assignment, args.example)
        kinds = synthetic_class(base, assignment, args.n)
        names = ("serial", "workers1", "workers2", "dask1", "dask2", "unsandboxed")
        roots = {name: tmp / name for name in names}
        for root in roots.values():
            shutil.copytree(base, root)
        with open(roots["unsandboxed"] / "nbgrader_config.py", "a") as config:
            config.write("\nc.Sandbox.enabled = False\nc.Sandbox.allow_unsandboxed = True\n")

        nbgrader = str(BIN / "nbgrader")
        serial = "serial nbgrader autograde + feedback + export"
        autograde = sh([nbgrader, "autograde", assignment, "--force"], roots["serial"], serial)
        CPU["serial nbgrader autograde (alone)"] = CPU[serial]
        feedback = sh(
            [nbgrader, "generate_feedback", assignment, "--force"], roots["serial"], serial
        )
        export = sh([nbgrader, "export"], roots["serial"], serial)
        grade = [str(BIN / "bncourse"), "grade", assignment, "--no-progress", "--workers"]
        seconds = {
            "serial nbgrader autograde (alone)": autograde,
            "serial nbgrader autograde + feedback + export": autograde + feedback + export,
            "bncourse grade --workers 1": sh(
                [*grade, "1"], roots["workers1"], "bncourse grade --workers 1"
            ),
            "bncourse grade --workers 2": sh(
                [*grade, "2"], roots["workers2"], "bncourse grade --workers 2"
            ),
            "bncourse grade --cluster local --workers 1": sh(
                [*grade[:-1], "--cluster", "local", "--workers", "1"],
                roots["dask1"],
                "bncourse grade --cluster local --workers 1",
            ),
            "bncourse grade --cluster local --workers 2": sh(
                [*grade[:-1], "--cluster", "local", "--workers", "2"],
                roots["dask2"],
                "bncourse grade --cluster local --workers 2",
            ),
            "bncourse grade --workers 1, no sandbox": sh(
                [*grade, "1"], roots["unsandboxed"], "bncourse grade --workers 1, no sandbox"
            ),
        }
        floor = kernel_floor(args.floor_repeats)

        records = {
            name: {
                s: r.key()
                for s, r in class_records(f"sqlite:///{root}/gradebook.db", assignment).items()
            }
            for name, root in roots.items()
        }
        same = all(r == records["serial"] for r in records.values())
        csvs = {name: (root / "grades.csv").read_text() for name, root in roots.items()}
        same_csv = all(c == csvs["serial"] for c in csvs.values())
        scores = class_records(f"sqlite:///{roots['serial']}/gradebook.db", assignment)

    n = args.n
    reference = seconds["serial nbgrader autograde + feedback + export"]
    print(
        f"\n{n} submissions of {assignment}: "
        + ", ".join(
            f"{sum(1 for k in kinds.values() if k == kind)} {kind}"
            for kind in ("correct", "blank", "partial")
        )
    )
    for kind in ("correct", "blank", "partial"):
        values = sorted({scores[s].score for s, k in kinds.items() if k == kind})
        print(f"  scores of the {kind} ones: {values} of {scores['s000'].max_score:g}")
    print(f"\n{'run':<48} {'seconds':>8} {'subm./min':>10} {'speed-up':>9} {'CPU s':>7}")
    for name, secs in seconds.items():
        print(
            f"{name:<48} {secs:8.1f} {60 * n / secs:10.1f} {reference / secs:8.2f}x "
            f"{CPU[name]:7.1f}"
        )
    print(
        f"\nfloor: a fresh kernel importing torch takes {floor:.2f} s "
        f"({60 / floor:.0f} per minute per core; {60 * 2 / floor:.0f} per minute on 2 cores)"
    )
    sandboxed = seconds["bncourse grade --workers 1"] / n
    bare = seconds["bncourse grade --workers 1, no sandbox"] / n
    on_dask = seconds["bncourse grade --cluster local --workers 1"] / n
    print(
        f"per submission, one worker: {sandboxed:.2f} s sandboxed, {bare:.2f} s without the "
        f"sandbox: the sandbox costs {100 * (sandboxed / bare - 1):+.1f}%; "
        f"{sandboxed / floor:.2f}x the floor; on Dask {on_dask:.2f} s, {on_dask / floor:.2f}x "
        "the floor"
    )
    print(f"same grades in all {len(roots)} gradebooks: {same}; identical grades.csv: {same_csv}")
    print(
        "(CPU s: processor time of the run and its kernels; the machine's other load is not in "
        "it, and neither is that of sandboxed kernels, which are killed rather than waited for)"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if same and same_csv else 1


if __name__ == "__main__":
    sys.exit(main())
