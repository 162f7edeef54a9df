"""Write the set-up cell (bncourse.distribution.setup_cell_source) into every chapter and solution.

Run by ``make release`` and ``make notebooks``, so that a new version or repository URL in
``pyproject.toml`` reaches the first code cell of each chapter (``book/*.md``) and the locked
``install`` cell of each instructor notebook (``solutions/``); nbgrader and jupytext then carry it
into ``exercises/`` and the chapters' ``.ipynb`` twins. Prints the files it changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from bncourse.distribution import setup_cell_source

REPO = Path(__file__).resolve().parents[1]
INSTALL_ID = "install"
#: The first code cell of a MyST Markdown notebook, with its options block.
FIRST_CELL = re.compile(r"(```\{code-cell\}[^\n]*\n(?::[^\n]*\n)*\n?)(.*?)(\n```)", re.S)


def update_chapter(path: Path, source: str) -> bool:
    text = path.read_text(encoding="utf-8")
    match = FIRST_CELL.search(text)
    if match is None or 'find_spec("bncourse")' not in match.group(2):
        raise ValueError(f"{path}: its first code cell is not the set-up cell")
    new = text[: match.start(2)] + source + text[match.end(2) :]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def update_solution(path: Path, source: str) -> bool:
    nb = nbformat.read(path, as_version=4)
    cell = nb.cells[0]
    if cell.get("id") != INSTALL_ID:
        raise ValueError(f"{path}: its first cell is not the {INSTALL_ID!r} cell")
    if cell.source == source:
        return False
    cell.source = source
    path.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
    return True


def main() -> int:
    source = setup_cell_source()
    chapters = [
        p for p in sorted((REPO / "book").glob("*.md")) if "```{code-cell}" in p.read_text()
    ]
    changed = [p for p in chapters if update_chapter(p, source)]
    changed += [
        p for p in sorted((REPO / "solutions").glob("*/*.ipynb")) if update_solution(p, source)
    ]
    for path in changed:
        print(f"set-up cell updated: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
