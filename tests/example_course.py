"""Helpers for the instructor-workflow tests: the example course in a temporary folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nbformat

from bncourse.instructor import example_class as ec

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """The environment nbgrader needs: this venv's ``alembic`` and ``python`` first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command line (``nbgrader ...``, ``bncourse ...``) in ``cwd``."""
    proc = subprocess.run(
        args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_course(root: Path, *, timeout: int = 30, db_url: str | None = None) -> Path:
    """The example course, released with ``nbgrader generate_assignment`` (gradebook included)."""
    ec.make_course(root, timeout=timeout, db_url=db_url)
    run([str(BIN / "nbgrader"), "generate_assignment", ec.ASSIGNMENT, "--force"], cwd=root)
    return root


def release(root: Path) -> nbformat.NotebookNode:
    """The student version of the example assignment."""
    return nbformat.read(root / "exercises" / ec.ASSIGNMENT / f"{ec.ASSIGNMENT}.ipynb", 4)


def submit_kind(root: Path, student: str, kind: str) -> Path:
    """Submit one of the example answers (``correct``, ``unbiased``, ``blank``) for ``student``."""
    return ec.submit(root, student, ec.answer(release(root), ec.ANSWERS[kind]))


def tree_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def notebook_view(path: Path) -> list[tuple]:
    """A graded notebook's cells as (type, source, outputs' text), for comparing two gradings."""
    nb = nbformat.read(path, 4)
    view = []
    for cell in nb.cells:
        outputs = tuple(
            (
                o.get("output_type"),
                o.get("name"),
                o.get("text"),
                o.get("ename"),
                o.get("evalue"),
                str(o.get("data", {}).get("text/plain", "")),
            )
            for o in cell.get("outputs", [])
        )
        view.append((cell.cell_type, cell.source, cell.metadata.get("nbgrader"), outputs))
    return view


def gradebook_url(root: Path) -> str:
    """The URL of the SQLite gradebook of the example course at ``root``."""
    return f"sqlite:///{Path(root) / 'gradebook.db'}"


def graded_notebooks(root: Path) -> dict[str, list]:
    """Every graded notebook of the example assignment under ``root``, as :func:`notebook_view`."""
    return {
        str(p.relative_to(root)): notebook_view(p)
        for p in sorted((Path(root) / "autograded").glob(f"*/{ec.ASSIGNMENT}/*.ipynb"))
    }
