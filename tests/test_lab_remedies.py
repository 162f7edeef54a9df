"""The remedies chapter's table and verdicts follow the data: synthetic results, flipped."""

from __future__ import annotations

import numpy as np
import pytest

from bncourse.lab import remedies as rm

SEEDS = list(range(10))


def _row(label: str, case: dict, test: np.ndarray, shift: float = 1.2, recal_gain=0.0) -> dict:
    trials = []
    for seed, acc in zip(SEEDS, test, strict=True):
        layers = [{"statistic": shift * (1 + 0.01 * seed) * (1 + i)} for i in range(3)]
        trials.append(
            {
                "config": {**case, "seed": seed},
                "acc": {
                    "test": acc / 100,
                    "train": min(1.0, acc / 100 + 0.02),
                    "test_recal": (acc + recal_gain) / 100,
                },
                "shift": layers,
                "shift_recal": [{"statistic": 1.01} for _ in layers],
                "train_seconds": 0.5,
            }
        )
    return {"label": label, "case": case, "trials": trials}


def _data(remedy_offset: float) -> dict:
    rng = np.random.default_rng(0)
    base = 95 + rng.normal(0.0, 1.0, size=len(SEEDS))
    noise = lambda: rng.normal(0.0, 0.3, size=len(SEEDS))  # noqa: E731
    return {
        "rows": [
            _row(rm.BASELINE, {"placement": "none", "p": 0.0}, base),
            _row(rm.PROBLEM, {"placement": "before_bn", "p": 0.3}, base - 20 + noise(), 3.0, 15),
            _row(rm.AFTER, {"placement": "after_bn", "p": 0.3}, base + remedy_offset + noise()),
        ]
    }


def _verdict_cells(table: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    return {cells[0].lstrip("| "): cells[3] for cells in rows}


def test_verdict_cells_flip_when_the_data_flip():
    better = _verdict_cells(rm.RemediesReport(_data(+3.0)).table())
    worse = _verdict_cells(rm.RemediesReport(_data(-3.0)).table())
    assert (better[rm.AFTER], worse[rm.AFTER]) == ("better", "worse")
    assert better[rm.BASELINE] == "(reference)"
    assert better[rm.PROBLEM] == worse[rm.PROBLEM] == "worse"


def test_a_tiny_difference_on_ten_seeds_is_equivalent_within_the_margin():
    cells = _verdict_cells(rm.RemediesReport(_data(0.0)).table())
    assert cells[rm.AFTER] == f"equivalent within ±{rm.MARGIN_POINTS:.1f} points"


def test_recalibration_is_compared_on_the_same_networks():
    report = rm.RemediesReport(_data(0.0))
    gain = rm.recal_gain(report.problem)
    assert gain.verdict == "better"
    assert gain.mean_diff == pytest.approx(15.0)
    assert [c.label for c in report.entries][1:3] == [rm.PROBLEM, rm.RECAL]
    assert rm.recovered_percent(report.problem, report.baseline) == pytest.approx(75.0, abs=2)


def test_comparisons_refuse_configurations_run_on_different_seeds():
    data = _data(0.0)
    for trial, seed in zip(data["rows"][2]["trials"], range(100, 110), strict=True):
        trial["config"]["seed"] = seed
    report = rm.RemediesReport(data)
    with pytest.raises(ValueError, match="need the same seeds"):
        rm.compare(report[rm.AFTER], report.baseline)


def test_shift_is_summarized_by_a_geometric_mean_and_compared_as_a_ratio():
    report = rm.RemediesReport(_data(0.0))
    ratio = rm.compare_shift(report.problem, report[rm.AFTER])
    assert ratio.verdict == "larger"
    assert ratio.ratio == pytest.approx(3.0 / 1.2)
