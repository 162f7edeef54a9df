"""The paper's reported numbers live in one data file, with their source, and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bncourse.lab import paper_numbers as pn

BOOK = Path(__file__).resolve().parents[1] / "book"


def test_every_number_has_a_value_or_range_a_source_and_a_reliability():
    numbers = pn.paper_numbers()
    assert numbers
    for name, number in numbers.items():
        assert number.name == name
        assert number.source and number.what and number.unit
        assert number.reliability in ("primary", "secondary")
        if number.is_range:
            assert number.low <= number.high
        else:
            assert number.value is not None


def test_figure_one_accuracies_agree_with_the_table_errors():
    # the secondary notes' Table 4 baseline error is 100 minus Figure 1's accuracy: a cross-check
    base = pn.paper_number("densenet_c100_no_dropout_acc").value
    assert pn.paper_number("densenet_c100_after_bn_base_err").value == pytest.approx(100 - base)
    drop = pn.paper_number("densenet_c100_dropout_acc").value
    assert pn.paper_number("densenet_c100_dropout_err").value == pytest.approx(100 - drop)


def test_text_writes_values_and_ranges_as_the_paper_does():
    assert pn.paper_number("densenet_c100_no_dropout_acc").text() == "77.42"
    assert pn.paper_number("d_cos2_narrow").text() == "2.6 to 3.8"
    assert pn.paper_number("d_cos2_wrn").text(digits=0) == "44 to 53"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown paper number 'nope'; known: .*d_cos2_wrn"):
        pn.paper_number("nope")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"unit": "u", "source": "s", "reliability": "primary"}, "lacks"),
        ({"unit": "u", "source": "s", "reliability": "rumour", "what": "w", "value": 1}, "one of"),
        ({"unit": "u", "source": "s", "reliability": "primary", "what": "w"}, "either value"),
        (
            {
                "unit": "u",
                "source": "s",
                "reliability": "primary",
                "what": "w",
                "low": 2,
                "high": 1,
            },
            "low exceeds high",
        ),
    ],
)
def test_malformed_entries_are_rejected(entry, message):
    with pytest.raises(ValueError, match=message):
        pn._parse("x", entry)


def _typed(text: str) -> list[str]:
    """The spellings under which a chapter could have typed a paper number by hand."""
    out = []
    for number in pn.paper_numbers().values():
        if number.is_range:
            lo, hi = f"{number.low:g}", f"{number.high:g}"
            out += [f"{lo} to {hi}", f"{lo}–{hi}", f"{lo}-{hi}", f"{lo}, {hi}"]
        elif re.search(r"\.\d\d", f"{number.value}"):  # values too specific to occur by chance
            out.append(f"{number.value}")
    return [s for s in out if s in text]


@pytest.mark.parametrize("chapter", sorted(p.name for p in BOOK.glob("*.md")))
def test_chapters_read_the_paper_numbers_instead_of_typing_them(chapter):
    typed = _typed((BOOK / chapter).read_text(encoding="utf-8"))
    assert not typed, f"book/{chapter} types the paper's numbers {typed}: use paper_number()"
