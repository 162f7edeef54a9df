"""The measured chapter's verdicts, phrases and alt texts follow the data: synthetic results, flipped."""

from __future__ import annotations

import re
import zlib

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bncourse.lab import measured as me  # noqa: E402
from bncourse.lab.plots import plot_intervals  # noqa: E402
from bncourse.lab.stats import geometric_mean_ci, mean_ci  # noqa: E402

SEEDS = list(range(10))
DEPTH = 4


def _row(label, case, *, growth=1.0, level=2.0, trainmode=97.0, eval_=95.0, recal=96.0,
         test=94.0, layers=DEPTH, seed_offset=0):  # fmt: skip
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    trials = []
    for seed in SEEDS:
        jitter = rng.normal(0.0, 0.3)
        stats = [
            {"statistic": float(level * growth**i * np.exp(rng.normal(0, 0.05)))}
            for i in range(layers)
        ]
        trials.append(
            {
                "config": {**case, "seed": seed + seed_offset},
                "acc": {
                    "test": (test + jitter) / 100,
                    "test_recal": (test + recal - eval_ + jitter) / 100,
                    "train": (eval_ + jitter) / 100,
                    "train_trainmode": (trainmode + rng.normal(0.0, 0.3)) / 100,
                    "train_recal": (recal + jitter) / 100,
                },
                "shift": stats,
                "first_layer_theory": {"statistic": level * 1.01},
            }
        )
    return {"label": label, "case": case, "trials": trials}


def _layer_data(growth: float = 1.5, fail_high: bool = True) -> dict:
    rows = [_row(me.NONE, {"placement": "none", "p": 0.0}, level=1.01)]
    for p in me.LAYER_RATES:
        fails = fail_high and p == max(me.LAYER_RATES)
        rows.append(
            _row(
                me.label("before_bn", p),
                {"placement": "before_bn", "p": p},
                growth=growth,
                level=1 + 4 * p,
                trainmode=60.0 if fails else 97.0,
                eval_=40.0 if fails else 93.0,
                recal=65.0 if fails else 97.0,
            )
        )
    for placement, level in (("before_weight", 1.2), ("after_bn", 1.01)):
        rows.append(
            _row(
                me.label(placement, me.MATCHED_P),
                {"placement": placement, "p": me.MATCHED_P},
                level=level,
                test=96.0,
            )
        )
    return {"rows": rows}


def _depth_data(grows: bool = True) -> dict:
    rows = []
    for d in me.DEPTHS:
        rows.append(_row(f"depth {d}, none", {"depth": d, "placement": "none", "p": 0.0},
                         level=1.01, layers=d, test=95.0))  # fmt: skip
        for p in me.DEPTH_RATES:
            level = 1.5 + (d if grows else 0)
            rows.append(_row(f"depth {d}, p={p}", {"depth": d, "placement": "before_bn", "p": p},
                             level=level, layers=d, test=95.0 - (d if grows else 0)))  # fmt: skip
    return {"rows": rows}


@pytest.fixture
def glued(monkeypatch) -> dict:
    out: dict = {}
    monkeypatch.setattr(me, "glue_number", lambda name, value: out.__setitem__(name, value))
    monkeypatch.setattr(me, "glue_text", lambda name, value: out.__setitem__(name, value))
    return out


def test_layer_trend_phrases_follow_the_data(glued):
    me.glue_measured(me.MeasuredReport(_layer_data(growth=1.5), _depth_data()))
    assert "increases from layer to layer" in glued["me_layer_trends"]
    assert "no monotone trend" not in glued["me_layer_trends"]
    assert "every rate tried" in glued["me_layer_accumulates"]
    assert glued["me_rate_trend"].startswith("the largest statistic of a network increases")
    me.glue_measured(me.MeasuredReport(_layer_data(growth=1.0), _depth_data()))
    assert "increases" not in glued["me_layer_trends"]
    assert "do not show the shift accumulating" in glued["me_layer_accumulates"]


def test_a_configuration_that_fails_to_train_is_not_used_for_the_mode_gap(glued):
    report = me.MeasuredReport(_layer_data(fail_high=True), _depth_data())
    assert not report.before_bn(max(me.LAYER_RATES)).trains
    assert report.trained_rate() == sorted(me.LAYER_RATES)[-2]
    me.glue_measured(report)
    assert glued["me_tr_p"] == sorted(me.LAYER_RATES)[-2]
    assert glued["me_fails"] == f"p = {max(me.LAYER_RATES):g}"
    assert glued["me_tr_recal_low"] >= me.FIT_MIN
    everything = me.MeasuredReport(_layer_data(fail_high=False), _depth_data())
    assert everything.trained_rate() == max(me.LAYER_RATES)


def test_the_mode_gap_and_the_recalibration_are_paired_tests_on_the_same_networks(glued):
    report = me.MeasuredReport(_layer_data(), _depth_data())
    runs = report.before_bn(min(me.LAYER_RATES))
    gap = report.mode_gap(runs)
    assert gap.verdict == "worse"  # evaluation mode 93 against training mode 97
    assert gap.mean_diff == pytest.approx(np.mean(runs.train - runs.train_trainmode))
    assert report.stale_cost(runs).verdict == "better"
    me.glue_measured(report)
    assert glued["me_tr_gap"].startswith("lower in evaluation mode by")
    assert glued["me_tr_paper_verdict"] == "the paper's observation holds here too"


def test_depth_trends_follow_the_data_and_the_control_is_paired_by_seed(glued):
    p = me.DEPTH_RATES[0]
    report = me.MeasuredReport(_layer_data(), _depth_data(grows=True))
    assert report.depth_shift_trend(p).verdict == "increasing"
    assert report.depth_cost_trend(p).verdict == "increasing"
    assert report.depth_cost(me.DEPTHS[-1], p).verdict == "better"  # the control is more accurate
    me.glue_measured(report)
    assert f"at p = {p:g} the last layer's statistic increases" in glued["me_depth_shift_trends"]
    assert "the cost increases" in glued["me_depth_costs"]
    flat = me.MeasuredReport(_layer_data(), _depth_data(grows=False))
    assert flat.depth_shift_trend(p).verdict == "no monotone trend shown"
    me.glue_measured(flat)
    assert "increases" not in glued["me_depth_shift_trends"].split("without dropout")[0]
    assert "the cost increases" not in glued["me_depth_costs"]


def test_comparisons_refuse_runs_on_different_seeds():
    depth = _depth_data()
    depth["rows"][0] = _row("depth 2, none", {"depth": me.DEPTHS[0], "placement": "none", "p": 0.0},
                            layers=me.DEPTHS[0], seed_offset=100)  # fmt: skip
    report = me.MeasuredReport(_layer_data(), depth)
    with pytest.raises(ValueError, match="need the same seeds"):
        report.depth_cost(me.DEPTHS[0], me.DEPTH_RATES[0])


def test_alt_texts_state_the_plotted_values_and_the_tested_trend():
    report = me.MeasuredReport(_layer_data(growth=1.5), _depth_data())
    alt = me.layer_alt(report)
    top = report.before_bn(max(me.LAYER_RATES)).profile
    assert f"{max(g.gmean for g in top):.2f}" in alt
    assert "increases from layer to layer" in alt
    flat = me.layer_alt(me.MeasuredReport(_layer_data(growth=1.0), _depth_data()))
    assert "increases" not in flat
    modes = me.modes_alt(report)
    assert f"{report.baseline.accuracy('train').mean:.1f}" in modes
    assert f"p = {sorted(me.LAYER_RATES)[-2]:g}" in modes.split("line at")[1]
    assert "increases" in me.depth_alt(report)
    assert "increases" not in me.depth_alt(me.MeasuredReport(_layer_data(), _depth_data(False)))


def test_first_layer_table_has_a_row_per_rate():
    table = me.first_layer_table(me.MeasuredReport(_layer_data(), _depth_data()))
    lines = table.splitlines()
    assert len(lines) == 2 + len(me.LAYER_RATES)
    assert lines[2].startswith(f"| {min(me.LAYER_RATES):g} | {1 / (1 - min(me.LAYER_RATES)):.2f}")


def test_plot_intervals_draws_each_estimate_between_its_interval_bounds():
    fig, ax = plt.subplots()
    x = [1, 2, 3]
    means = [mean_ci([v, v + 1, v + 2]) for v in x]
    ratios = [geometric_mean_ci([v, v * 2, v * 3]) for v in x]
    plot_intervals(ax, x, means, "means")
    plot_intervals(ax, x, ratios, "ratios", offset=0.1)
    plt.close(fig)
    for container, intervals, dx in zip(ax.containers, (means, ratios), (0.0, 0.1), strict=True):
        line, _, (bars,) = container.lines
        centre = [getattr(i, "gmean", None) or i.mean for i in intervals]
        np.testing.assert_allclose(line.get_xdata(), np.array(x) + dx)
        np.testing.assert_allclose(line.get_ydata(), centre)
        ends = np.array([segment[:, 1] for segment in bars.get_segments()])
        np.testing.assert_allclose(ends, [[i.low, i.high] for i in intervals])


def test_every_value_the_chapter_pastes_is_glued(glued):
    from pathlib import Path

    chapter = Path(__file__).resolve().parents[1] / "book" / "variance_shift_measured.md"
    names = set(re.findall(r"\{glue:text\}`(\w+)", chapter.read_text(encoding="utf-8")))
    me.glue_measured(me.MeasuredReport(_layer_data(), _depth_data()))
    glued_in_the_chapter = {"me_n_train"}  # from the data set, in the chapter's own cell
    assert names - set(glued) - glued_in_the_chapter == set()
