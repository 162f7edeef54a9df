"""The chapters render completely: figures with alt text, glued numbers, no errors.

The checks read the built HTML in ``_build/html``. ``make test`` builds the book before pytest
runs; when the pages are missing, the session fixture builds the book once, as CI does.
``BNCOURSE_BOOK_HTML`` points the checks at another build's ``html`` folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("BNCOURSE_BOOK_HTML", ROOT / "_build" / "html"))

#: Section labels that feedback and other pages link to, and the figures each chapter must show.
CHAPTERS = {
    "batchnorm": {
        "labels": [
            "bn-axes",
            "bn-eps",
            "bn-running-stats",
            "bn-momentum",
            "bn-unbiased-variance",
            "bn-eval",
            "bn-no-grad",
            "bn-evaluation-loop",
            "bn-batch-of-one",
            "bn-whole-dataset",
        ],
        "figures": ["bn-running-figure", "bn-drift-figure", "bn-experiment-figure"],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "dropout": {
        "labels": [
            "do-mask",
            "do-generator",
            "do-out-of-place",
            "do-inverted",
            "do-ensemble",
            "do-eval",
            "do-gaussian",
            "do-variance",
        ],
        "figures": ["do-ensemble-figure", "do-noise-figure"],
        "sentences": True,  # generated result sentences are glued besides numbers
    },
    "why_batchnorm": {
        "labels": ["why-ics", "why-saturation", "why-lr", "why-regularizer", "why-order"],
        "figures": [
            "why-ics-figure",
            "why-saturation-figure",
            "why-sweep-figure",
            "why-gap-figure",
        ],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "bn_dropout_practice": {
        "labels": [
            "bp-cnn",
            "bp-small-batches",
            "bp-rnn",
            "bp-finetune",
            "bp-folding",
            "bp-sync",
            "bp-mc-dropout",
            "bp-transformers",
        ],
        "figures": ["bp-sweep-figure"],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "variance_shift_theory": {
        "labels": ["vs-conventions", "vs-before-bn", "vs-weight-layer"],
        "figures": ["th-noise-figure", "th-weight-figure"],
        "sentences": True,  # the simulations' verdicts are glued besides numbers
    },
    "variance_shift_measured": {
        "labels": ["vs-probe", "vs-placement"],
        "figures": ["me-layer-figure", "me-modes-figure", "me-depth-figure"],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "variance_shift_remedies": {
        "labels": ["vs-recalibration", "vs-remedies"],
        "figures": ["re-figure"],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "bn_dropout_cooperate": {
        "labels": ["co-setup", "co-small-data", "co-width", "co-placement"],
        "figures": ["co-sweep-figure", "co-width-figure"],
        "sentences": True,  # verdict phrases of bncourse.lab.stats are glued besides numbers
    },
    "misconceptions": {
        "labels": [
            "mc-bn-range",
            "mc-no-sqrt",
            "mc-test-stats",
            "mc-backprop",
            "mc-loss-multiplier",
            "mc-gaussian",
            "mc-resnet",
        ],
        "figures": [],
        "sentences": True,  # claims, verdicts and evidence phrases are glued besides numbers
    },
}

NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Page:
    """What the checks need from one built page."""

    ids: set[str] = field(default_factory=set)
    figure_images: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    pasted_texts: list[str] = field(default_factory=list)
    output_classes: list[str] = field(default_factory=list)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._figures: list[str | None] = []  # id of every open <figure>, innermost last
        self._pasted_depth = 0  # > 0 inside a <span class="pasted-text">
        self._pasted = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        classes = attributes.get("class", "").split()
        if "id" in attributes:
            self.page.ids.add(attributes["id"])
        if tag == "figure":
            self._figures.append(attributes.get("id"))
        elif tag == "img":
            figure = next((f for f in reversed(self._figures) if f), None)
            if figure is not None:
                self.page.figure_images.setdefault(figure, []).append(attributes)
        elif tag == "span" and "pasted-text" in classes:
            self._pasted_depth, self._pasted = 1, ""
        elif tag == "span" and self._pasted_depth:
            self._pasted_depth += 1
        if "output" in classes:
            self.page.output_classes.append(" ".join(classes))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self._figures:
            self._figures.pop()
        elif tag == "span" and self._pasted_depth:
            self._pasted_depth -= 1
            if not self._pasted_depth:
                self.page.pasted_texts.append(self._pasted.strip())

    def handle_data(self, data: str) -> None:
        if self._pasted_depth:
            self._pasted += data


@pytest.fixture(scope="session")
def built_book() -> Path:
    """The HTML folder of the book, built once (all chapters executed) if it is not there yet."""
    if not (HTML_DIR / "book" / "batchnorm.html").is_file():
        jupyter_book = Path(sys.executable).with_name("jupyter-book")
        command = [str(jupyter_book), "build", "--all", "-W", "-n", "--keep-going", "."]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, (
            "the book did not build without warnings:\n" + (result.stdout + result.stderr)[-5000:]
        )
    return HTML_DIR


def _source(chapter: str) -> str:
    return (ROOT / "book" / f"{chapter}.md").read_text(encoding="utf-8")


def _html(built_book: Path, chapter: str) -> str:
    path = built_book / "book" / f"{chapter}.html"
    assert path.is_file(), f"{path} was not built; is book/{chapter} in _toc.yml?"
    return path.read_text(encoding="utf-8")


def _page(built_book: Path, chapter: str) -> Page:
    parser = _PageParser()
    parser.feed(_html(built_book, chapter))
    return parser.page


pytestmark = pytest.mark.slow
chapters = pytest.mark.parametrize("chapter", sorted(CHAPTERS))


@chapters
def test_figures_are_images_with_alt_text(built_book: Path, chapter: str) -> None:
    page = _page(built_book, chapter)
    for figure in CHAPTERS[chapter]["figures"]:
        images = page.figure_images.get(figure)
        assert images, f"figure {figure!r} of book/{chapter} holds no <img> (a glued figure "
        "rendered as text shows that the figure was not captured as an image)"
        for image in images:
            assert len(image.get("alt", "").split()) >= 5, (
                f"figure {figure!r} of book/{chapter} has no descriptive alt text: {image}"
            )
            src = (built_book / "book" / image["src"]).resolve()
            assert src.is_file() and src.stat().st_size > 1000, f"image {src} is missing or empty"


@chapters
def test_no_errors_or_stderr_in_outputs(built_book: Path, chapter: str) -> None:
    html = _html(built_book, chapter)
    assert "Traceback" not in html, f"book/{chapter} shows a traceback"
    page = _page(built_book, chapter)
    bad = [c for c in page.output_classes if "traceback" in c or "stderr" in c or "error" in c]
    assert not bad, f"book/{chapter} has error or stderr outputs: {bad}"


@chapters
def test_every_glued_number_is_pasted(built_book: Path, chapter: str) -> None:
    html = _html(built_book, chapter)
    assert "{glue" not in html, f"book/{chapter} shows an unresolved glue role"
    expected = len(re.findall(r"\{glue:text\}`", _source(chapter)))
    pasted = _page(built_book, chapter).pasted_texts
    assert expected > 0
    assert len(pasted) == expected, (
        f"book/{chapter} uses {expected} glue:text roles but the page shows {len(pasted)} values"
    )
    if CHAPTERS[chapter].get("sentences"):
        assert all(text for text in pasted), f"book/{chapter} pastes an empty glued value"
        return
    not_numbers = [text for text in pasted if not NUMBER.match(text)]
    assert not not_numbers, f"glued values of book/{chapter} that are not numbers: {not_numbers}"


@chapters
def test_section_labels_exist(built_book: Path, chapter: str) -> None:
    ids = _page(built_book, chapter).ids
    missing = [label for label in CHAPTERS[chapter]["labels"] if label not in ids]
    assert not missing, f"book/{chapter} lacks the section anchors {missing}"
