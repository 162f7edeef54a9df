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
* ``bncourse grade --workers 1`` with ``c.TrustedExecute.prestart = False``: each kernel started
  when its notebook comes, not while the previous one is graded (serial nbgrader, in one
  process, starts kernels ahead as ``bncourse grade`` does);
* ``bncourse grade --workers 1`` with ``c.Sandbox.enabled = False``: the per-submission time with
  and without the sandbox, side by side (the trusted verdict is computed the same way in both;
  unsandboxed kernels are never started ahead, so the sandbox's cost is measured against the
  run without kernels started ahead).

Every run computes the verdict in the grader (see ``bncourse.trusted``). It checks that all give
the same grades, and prints the floor: a fresh kernel that only imports torch, which every graded
submission pays.

    python benchmarks/grade_throughput.py                 # 40 ps01 submissions
    python benchmarks/grade_throughput.py --n 8 --example # the tiny example class, seconds
    python benchmarks/grade_throughput.py --n 12 --runs workers1 no-prestart  # two runs only
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


RUNS = {
    "serial": "serial nbgrader autograde + feedback + export",
    "workers1": "bncourse grade --workers 1",
    "workers2": "bncourse grade --workers 2",
    "dask1": "bncourse grade --cluster local --workers 1",
    "dask2": "bncourse grade --cluster local --workers 2",
    "no-prestart": "bncourse grade --workers 1, no kernel started ahead",
    "unsandboxed": "bncourse grade --workers 1, no sandbox (nor kernels ahead)",
}
"""The runs, by the name ``--runs`` takes."""

EXTRA_CONFIG = {
    "no-prestart": "c.TrustedExecute.prestart = False",
    "unsandboxed": "c.Sandbox.enabled = False\nc.Sandbox.allow_unsandboxed = True",
}


def run_one(name: str, root: Path, assignment: str) -> float:
    """Grade the class in ``root`` the way ``name`` says; wall-clock seconds."""
    label = RUNS[name]
    if name == "serial":
        nbgrader = str(BIN / "nbgrader")
        autograde = sh([nbgrader, "autograde", assignment, "--force"], root, label)
        CPU["serial nbgrader autograde (alone)"] = CPU[label]
        SECONDS["serial nbgrader autograde (alone)"] = autograde
        rest = sh([nbgrader, "generate_feedback", assignment, "--force"], root, label)
        return autograde + rest + sh([nbgrader, "export"], root, label)
    grade = [str(BIN / "bncourse"), "grade", assignment, "--no-progress"]
    if name.startswith("dask"):
        grade += ["--cluster", "local"]
    return sh([*grade, "--workers", "2" if name.endswith("2") else "1"], root, label)


SECONDS: dict[str, float] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of submissions (default 40)")
    parser.add_argument("--assignment", default="ps01_batchnorm")
    parser.add_argument("--example", action="store_true", help="use the tiny example class")
    parser.add_argument("--floor-repeats", type=int, default=5)
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=list(RUNS),
        default=list(RUNS),
        help="which runs to time, in this order (default: all)",
    )
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be a positive number of submissions, got {args.n}")
    assignment = ec.ASSIGNMENT if args.example else args.assignment
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the start")

    with tempfile.TemporaryDirectory(prefix="bncourse-bench-") as tmp:
        tmp = Path(tmp)
        base = make_base(tmp / "base", assignment, args.example)
        kinds = synthetic_class(base, assignment, args.n)
        roots = {name: tmp / name for name in args.runs}
        for name, root in roots.items():
            shutil.copytree(base, root)
            if name in EXTRA_CONFIG:
                with open(root / "nbgrader_config.py", "a") as config:
                    config.write(f"\n{EXTRA_CONFIG[name]}\n")
        for name, root in roots.items():
            SECONDS[RUNS[name]] = run_one(name, root, assignment)
        floor = kernel_floor(args.floor_repeats)

        records = {
            name: {
                s: r.key()
                for s, r in class_records(f"sqlite:///{root}/gradebook.db", assignment).items()
            }
            for name, root in roots.items()
        }
        first = args.runs[0]
        same = all(r == records[first] for r in records.values())
        csvs = {name: (root / "grades.csv").read_text() for name, root in roots.items()}
        same_csv = all(c == csvs[first] for c in csvs.values())
        scores = class_records(f"sqlite:///{roots[first]}/gradebook.db", assignment)

    n = args.n
    print(
        f"\n{n} submissions of {assignment}: "
        + ", ".join(
            f"{sum(1 for k in kinds.values() if k == kind)} {kind}"
            for kind in ("correct", "blank", "partial")
        )
    )
    for kind in ("correct", "blank", "partial"):
        values = sorted({scores[s].score for s, k in kinds.items() if k == kind})
        if values:
            print(f"  scores of the {kind} ones: {values} of {scores['s000'].max_score:g}")
    reference = SECONDS.get(RUNS["serial"])
    print(f"\n{'run':<52} {'seconds':>8} {'subm./min':>10} {'speed-up':>9} {'CPU s':>7}")
    for name, secs in SECONDS.items():
        speed_up = f"{reference / secs:8.2f}x" if reference else f"{'-':>9}"
        print(f"{name:<52} {secs:8.1f} {60 * n / secs:10.1f} {speed_up} {CPU[name]:7.1f}")
    print(
        f"\nfloor: a fresh kernel importing torch takes {floor:.2f} s "
        f"({60 / floor:.0f} per minute per core; {60 * 2 / floor:.0f} per minute on 2 cores)"
    )
    per = {name: SECONDS[RUNS[name]] / n for name in args.runs if name != "serial"}
    print("per submission with one worker, against the floor measured in this run:")
    for name in ("workers1", "no-prestart", "unsandboxed", "dask1"):
        if name in per:
            print(f"  {RUNS[name]:<52} {per[name]:6.2f} s  {per[name] / floor:5.2f}x the floor")
    if "no-prestart" in per and "unsandboxed" in per:
        cost = 100 * (per["no-prestart"] / per["unsandboxed"] - 1)
        print(f"  the sandbox costs {cost:+.1f}% (both with each kernel started when it is needed)")
    print(f"same grades in all {len(roots)} gradebooks: {same}; identical grades.csv: {same_csv}")
    print(
        "(CPU s: processor time of the run and its kernels; the machine's other load is not in "
        "it, and neither is that of sandboxed kernels, which are killed rather than waited for)"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if same and same_csv else 1


if __name__ == "__main__":
    sys.exit(main())
