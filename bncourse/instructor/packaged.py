"""The course's own assignments as installed with the package, for ``bncourse check`` anywhere.

``bncourse/instructor/assignments/<name>.ipynb`` is the instructor version of each assignment
with every solution replaced by nbgrader's stub, the solution markers kept: nbgrader's
``generate_assignment`` turns it into exactly the notebook students receive, and puts exactly the
instructor's test cells (hidden tests included) into the gradebook. So a student who has only
installed the package checks a notebook with the same tests, and gets the same per-part scores,
as the instructor's ``bncourse grade``; no solution is installed. ``make release`` rewrites these
files from ``solutions/`` (``python -m bncourse.instructor.packaged solutions``).

The hidden tests of this course are more of the checks the notebooks already call (other dtypes
and devices), and the checks themselves are part of the package: keeping them in these files
reveals no answer. A course with secret tests keeps its own course folder and checks with
``--course-dir``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from bncourse.instructor.course import CODE_STUB

PACKAGED_DIR = Path(__file__).resolve().parent / "assignments"
TEXT_STUB = "YOUR ANSWER HERE"
_BEGIN, _END = "BEGIN SOLUTION", "END SOLUTION"
_MARK_SCHEME = re.compile(r"=== BEGIN MARK SCHEME ===.*?=== END MARK SCHEME ===\n?", re.S)


def packaged_assignments() -> list[str]:
    """The names of the assignments installed with the package."""
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.ipynb"))


def packaged_notebook(assignment: str) -> Path:
    """The installed test version of ``assignment``."""
    path = PACKAGED_DIR / f"{assignment}.ipynb"
    if not path.is_file():
        known = ", ".join(packaged_assignments()) or "none"
        raise FileNotFoundError(
            f"assignment {assignment!r} is not one of this course's assignments ({known})"
        )
    return path


def graded_cell_ids(nb: NotebookNode) -> set[str]:
    """The grade ids of the notebook's autograded test cells (nbgrader metadata)."""
    ids = set()
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and meta.get("grade_id"):
            ids.add(meta["grade_id"])
    return ids


def identify(nb: NotebookNode, candidates: dict[str, list[Path]] | None = None) -> str:
    """The assignment whose test cells ``nb`` carries; the most shared ones win.

    ``candidates``: assignment name -> its notebooks; default: the installed assignments.
    """
    if candidates is None:
        candidates = {name: [packaged_notebook(name)] for name in packaged_assignments()}
    mine = graded_cell_ids(nb)
    shared = {
        name: max(
            (len(mine & graded_cell_ids(nbformat.read(path, as_version=4))) for path in paths),
            default=0,
        )
        for name, paths in candidates.items()
    }
    best = max(shared.values(), default=0)
    winners = [name for name, count in shared.items() if count == best]
    if best == 0 or len(winners) != 1:
        known = ", ".join(sorted(candidates))
        raise FileNotFoundError(
            "the notebook carries no graded cells of this course's assignments "
            f"({known}); pass --assignment with its name"
        )
    return winners[0]


def _stub_regions(source: str, stub: str) -> str:
    """``source`` with what lies between the solution markers replaced by ``stub``, markers kept."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        if _BEGIN in line:
            if inside:
                raise ValueError(f"nested {_BEGIN!r} in:\n{source}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(line)
            out.extend(indent + s for s in stub.split("\n"))
        elif _END in line:
            if not inside:
                raise ValueError(f"{_END!r} without {_BEGIN!r} in:\n{source}")
            inside = False
            out.append(line)
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{_BEGIN!r} without {_END!r} in:\n{source}")
    return "\n".join(out)


def without_solutions(nb: NotebookNode, code_stub: str = CODE_STUB) -> NotebookNode:
    """A copy of the instructor notebook ``nb`` with every solution stubbed and no mark scheme."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "markdown":
            cell.source = _MARK_SCHEME.sub("", cell.source)
        if meta.get("solution"):
            stub = code_stub if cell.cell_type == "code" else TEXT_STUB
            if _BEGIN in cell.source:
                cell.source = _stub_regions(cell.source, stub)
            else:
                cell.source = stub  # nbgrader replaces a solution cell without markers wholesale
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def write_packaged(source_dir: Path, dest: Path = PACKAGED_DIR) -> list[Path]:
    """Write the test version of every assignment in ``source_dir`` (one notebook each) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for folder in sorted(p for p in Path(source_dir).iterdir() if p.is_dir()):
        notebooks = sorted(folder.glob("*.ipynb"))
        if len(notebooks) != 1 or notebooks[0].stem != folder.name:
            raise ValueError(f"{folder} must hold exactly one notebook, {folder.name}.ipynb")
        nb = without_solutions(nbformat.read(notebooks[0], as_version=4))
        path = dest / f"{folder.name}.ipynb"
        path.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
        written.append(path)
    for stale in set(dest.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source_dir", type=Path, help="the course's solutions folder")
    args = parser.parse_args(argv)
    for path in write_packaged(args.source_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
