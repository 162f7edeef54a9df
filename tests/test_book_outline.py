"""Every chapter opens with its learning objectives and ends with a summary and its exercise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Pages of the book that are not chapters: the front page, the list of exercises, the bibliography.
NOT_CHAPTERS = {"book/intro", "book/exercises", "book/references"}


def chapters() -> list[str]:
    """The chapters in ``_toc.yml``, as ``book/<name>``, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [
        entry["file"]
        for part in toc["parts"]
        for entry in part["chapters"]
        if entry["file"].startswith("book/")
    ]
    return [name for name in files if name not in NOT_CHAPTERS]


def _prose(chapter: str) -> str:
    text = (ROOT / f"{chapter}.md").read_text(encoding="utf-8")
    return re.sub(r"```\{code-cell\}.*?```", " ", text, flags=re.S)  # the code, not the prose


OBJECTIVES = re.compile(r"```\{admonition\} Learning objectives|\*\*After this chapter you can\*\*")
EXERCISE = re.compile(r"\{doc\}`(/exercises/[^`]+|exercises)`|^## Exercise", re.M)


def test_the_chapters_are_found():
    assert {"book/batchnorm", "book/dropout", "book/instructors"} <= set(chapters())


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_opens_with_objectives_and_ends_with_summary_and_exercise(chapter):
    prose = _prose(chapter)
    objectives = OBJECTIVES.search(prose)
    first_section = re.search(r"^## ", prose, flags=re.M)
    assert objectives, f"{chapter}.md states no learning objectives"
    assert first_section is None or objectives.start() < first_section.start(), (
        f"{chapter}.md states its learning objectives after its first section"
    )
    summary = re.search(r"^## Summary$", prose, flags=re.M)
    assert summary, f"{chapter}.md has no '## Summary' section"
    later = prose[summary.start() :]
    assert not re.search(r"^## (?!Summary$|Exercise$)", later, flags=re.M), (
        f"{chapter}.md has sections after its summary other than its exercise"
    )
    assert EXERCISE.search(later), f"{chapter}.md links no exercise after its summary"


def test_the_backward_chapter_is_marked_optional():
    prose = _prose("book/batchnorm_backward")
    assert re.search(r"```\{admonition\} Optional chapter", prose)
    assert prose.index("Optional chapter") < prose.index("## ")
