"""Numbers in a chapter's prose are glued from code, not typed (checked chapter by chapter).

A chapter joins :data:`CHECKED` once its prose reads every measured or quoted number from code
(``{glue:text}``); the other chapters still type some and are converted by later work.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"

#: Chapters whose prose holds no typed number besides :data:`STRUCTURAL`.
CHECKED = [
    "variance_shift_remedies",
    "variance_shift_measured",
    "variance_shift_theory",
    "why_batchnorm",
    "bn_dropout_practice",
    "bn_dropout_cooperate",
    "misconceptions",
    "dropout",
    "batchnorm",
    "batchnorm_backward",
    "instructors",
]

#: Numbers that are names or definitions, not results: what may stay typed, and why.
STRUCTURAL = [
    r"CIFAR-10{1,2}",  # the data sets' names
    r"\(1 means no\s+shift\)",  # the definition of the shift statistic's neutral value
    r"two one-sided tests",  # the name of the equivalence test (TOST)
    r"[Tt]wo configurations",  # a comparison is between two
    r"one of four",  # the verdicts, listed right after
    r"\b(Figure|Table) \d+\b",  # a cited paper's figures and tables, by their names
    r"\bthree paths\b",  # the chain rule's paths from x to the loss (through x-hat, mean, variance)
    r"\bCS231n( assignment 2)?",  # the name of Stanford's course and of its batch-norm assignment
    r"Moodle 3\.1",  # a software version, named as the release that changed a default
]

#: Numbers written as words ("three seeds", "six blocks", "a third of a percent").
WORDS = re.compile(
    r"\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twice|thrice|half|third|"
    r"quarter|dozen|hundred|thousand)\b",
    re.IGNORECASE,
)

_REMOVE = [
    r"\A---\n.*?\n---\n",  # front matter
    r"```.*?```",  # code cells and directives (their options and captions are checked below)
    r"\{glue:text\}`[^`]*`",
    r"\{(cite|ref|doc|numref)\}`[^`]*`",
    r"\$\$.*?\$\$",  # display math
    r"\$[^$\n]*\$",  # inline math: symbols and formulas
    r"`[^`\n]*`",  # inline code
    r"\(vs-[a-z-]+\)=",  # section labels
]


def typed_numbers(text: str) -> list[str]:
    """Lines of ``text`` that still hold a number (digits or words) once glue, math, code and
    structural names are removed."""
    captions = "\n".join(re.findall(r"```\{glue:figure\}.*?\n(.*?)```", text, flags=re.S))
    for pattern in _REMOVE:
        text = re.sub(pattern, " ", text, flags=re.S)
        if not pattern.startswith("```"):  # a caption's glue, math and code count as glued
            captions = re.sub(pattern, " ", captions, flags=re.S)
    text += "\n" + captions
    for pattern in STRUCTURAL:
        text = re.sub(pattern, " ", text)
    lines = text.splitlines()
    return [line.strip() for line in lines if re.search(r"\d", line) or WORDS.search(line)]


def test_the_checker_finds_typed_numbers_and_spares_glued_ones():
    assert typed_numbers("reaches 97.3% of it") == ["reaches 97.3% of it"]
    assert typed_numbers("reaches {glue:text}`x:.1f`% at $p = 0.5$ on CIFAR-100") == []
    assert typed_numbers("```{code-cell}\nx = 3\n```\nno digit here") == []
    caption = "```{glue:figure} fig\n:alt: three seeds\n:name: f\n\nMean over 3 seeds.\n```"
    assert typed_numbers(caption) == [":alt: three seeds", "Mean over 3 seeds."]
    glued = "```{glue:figure} fig\n:name: f\n\nMean over {glue:text}`n` seeds, $p = 0$.\n```"
    assert typed_numbers(glued) == []
    assert typed_numbers("as weak as dropping a third of a percent") != []
    assert typed_numbers("compares two configurations, seed by seed") == []


@pytest.mark.parametrize("chapter", CHECKED)
def test_prose_numbers_are_glued(chapter):
    typed = typed_numbers((BOOK / f"{chapter}.md").read_text(encoding="utf-8"))
    assert typed == [], f"book/{chapter}.md types numbers in its prose; glue them: {typed}"
