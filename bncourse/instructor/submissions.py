"""Find the students' submissions and say what is wrong with a submission's files before grading."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader import utils as nbutils


def list_students(submitted_dir: Path, assignment: str, exclude: str = "") -> list[str]:
    """Students with a ``submitted/<student>/<assignment>/`` folder, sorted (nbgrader's order)."""
    excluded = {s for s in exclude.split(",") if s}
    students = [
        folder.parent.name
        for folder in Path(submitted_dir).glob(f"*/{assignment}")
        if folder.is_dir() and not folder.is_symlink()
    ]
    return sorted(s for s in students if s not in excluded)


def _read(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        return nb, ""
    except Exception as exc:  # JSON errors, schema errors, binary files: all mean "not a notebook"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{type(exc).__name__}: {reason[:80]}"


@dataclass
class Inspection:
    """What a student's folder holds compared with what the assignment expects."""

    renames: dict[str, str] = field(default_factory=dict)
    rewrites: dict[str, nbformat.NotebookNode] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        self.notes.append(note)


def restore_metadata(
    nb: nbformat.NotebookNode, release: nbformat.NotebookNode
) -> nbformat.NotebookNode | None:
    """``nb`` with the nbgrader metadata of ``release`` put back cell by cell, when they line up.

    Cells line up when both notebooks have the same number of cells of the same types in the
    same order (what copying every cell into a new notebook gives); otherwise None.
    """
    if len(nb.cells) != len(release.cells):
        return None
    if any(a.cell_type != b.cell_type for a, b in zip(nb.cells, release.cells, strict=True)):
        return None
    restored = nbformat.from_dict(nb)
    for cell, original in zip(restored.cells, release.cells, strict=True):
        if "nbgrader" in original.get("metadata", {}):
            cell.metadata["nbgrader"] = nbformat.from_dict(original.metadata["nbgrader"])
    return restored


def _check_cells(
    name: str,
    nb: nbformat.NotebookNode,
    grade_cells: set[str],
    out: Inspection,
    release: nbformat.NotebookNode | None = None,
) -> None:
    cells = [c for c in nb.cells if "nbgrader" in c.get("metadata", {})]
    if not cells:
        restored = restore_metadata(nb, release) if release is not None else None
        if restored is None:
            out.add(
                f"{name}: no nbgrader metadata (cells copied into a new notebook?) and its "
                "cells do not line up with the student version; answers cannot be matched to tests"
            )
            return
        out.rewrites[name] = restored
        out.add(f"{name}: no nbgrader metadata; restored from the student version cell by cell")
        cells = [c for c in restored.cells if "nbgrader" in c.metadata]
    present = {c.metadata.nbgrader.get("grade_id") for c in cells}
    missing = sorted(grade_cells - present)
    if missing:
        out.add(f"{name}: test cells deleted and put back: {', '.join(missing)}")
    edited = []
    for cell in cells:
        meta = cell.metadata.nbgrader
        if meta.get("locked") and meta.get("checksum"):
            try:
                if nbutils.compute_checksum(cell) != meta["checksum"]:
                    edited.append(meta.get("grade_id", "?"))
            except Exception:
                edited.append(meta.get("grade_id", "?"))
    if edited:
        out.add(f"{name}: locked cells edited and restored: {', '.join(sorted(edited))}")


def inspect(
    folder: Path,
    expected: dict[str, set[str]],
    ignore: list[str] = (),
    releases: dict[str, nbformat.NotebookNode] | None = None,
) -> Inspection:
    """Compare ``folder`` with the expected notebooks (name without .ipynb -> grade cell ids).

    A single notebook with the wrong name, where the expected one is missing, is graded under
    the expected name (``renames``); extra notebooks are ignored, as nbgrader ignores them. A
    notebook that lost its nbgrader metadata gets it back from the student version (``releases``,
    by name) when its cells line up with it (``rewrites``, by graded file name).
    """
    releases = releases or {}
    out = Inspection()
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not any(fnmatch.fnmatch(p.name, pat) for pat in ignore)
    )
    notebooks = [p for p in files if p.suffix == ".ipynb"]
    readable: dict[str, nbformat.NotebookNode] = {}
    for path in notebooks:
        nb, reason = _read(path)
        if nb is None:
            out.add(f"{path.name} is not a valid notebook ({reason})")
        else:
            readable[path.stem] = nb
    unknown = [stem for stem in readable if stem not in expected]
    for name, grade_cells in expected.items():
        if name in readable:
            _check_cells(f"{name}.ipynb", readable[name], grade_cells, out, releases.get(name))
        elif f"{name}.ipynb" in {p.name for p in notebooks}:
            continue  # already reported as invalid
        elif len(expected) == 1 and len(unknown) == 1:
            stem = unknown.pop()
            out.renames[f"{stem}.ipynb"] = f"{name}.ipynb"
            out.add(f"wrongly named notebook {stem}.ipynb graded as {name}.ipynb")
            _check_cells(f"{name}.ipynb", readable[stem], grade_cells, out, releases.get(name))
        else:
            others = ", ".join(p.name for p in files) or "nothing"
            out.add(f"no {name}.ipynb submitted (found: {others}); scored zero")
    if unknown:
        out.add("ignored extra notebooks: " + ", ".join(f"{s}.ipynb" for s in sorted(unknown)))
    return out
