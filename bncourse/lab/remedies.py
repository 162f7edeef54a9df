"""The comparisons of the remedies chapter, computed through :mod:`bncourse.lab.stats`.

The chapter runs the ``remedies`` experiment and a drop-rate sweep of dropout before BN, both over
the same seeds (:data:`bncourse.lab.experiments.MANY_SEEDS`), then hands the results to
:class:`RemediesReport`: every accuracy with its t interval, every comparison paired by seed,
shift statistics as geometric means, and every verdict phrase the prose shows, generated from the
tests. :func:`glue_remedies` glues all of it for the chapter's prose, so the chapter keeps only
the code that teaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bncourse.lab.experiments import BASE_TRIAL, MANY_SEEDS
from bncourse.lab.glue import glue_number, glue_text
from bncourse.lab.paper_numbers import paper_number
from bncourse.lab.plots import markdown_table
from bncourse.lab.stats import (
    GeometricMeanCI,
    MeanCI,
    PairedComparison,
    RatioComparison,
    compare_paired,
    compare_ratio,
    geometric_mean_ci,
    mean_ci,
)

__all__ = [
    "CONFIDENCE",
    "MARGIN_POINTS",
    "SWEEP_OVERRIDES",
    "Config",
    "RemediesReport",
    "glue_remedies",
]

#: Confidence level of every interval and test in the chapter.
CONFIDENCE = 0.95
#: Equivalence margin: two configurations whose test accuracies provably differ by less than this
#: many points are called equivalent. About four digits of the held-out set; smaller gaps are
#: not what a choice between remedies turns on.
MARGIN_POINTS = 1.0

PROBLEM = "dropout before every BN (the problem)"
BASELINE = "no dropout"
AFTER = "dropout after all BN layers"
UOUT_WEAK = "Uout (beta = 0.1) before every BN"
UOUT_STRONG = "Uout (beta = 0.5) before every BN"
LOW_P = "lower drop rate (p = 0.1) before every BN"
WIDE_A = "dropout before every BN, 4x wider"
NARROW_B = "dropout before every weight layer"
WIDE_B = "dropout before every weight layer, 4x wider"
RECAL = "dropout before every BN, then BN recalibrated with dropout off"

#: Drop rate (PyTorch's p) of the paper's DenseNet in its Figure 1, the sweep's row set beside it.
PAPER_DROP = paper_number("densenet_c100_drop_ratio").value

#: The drop rates the chapter sets beside the paper: dropout before every BN, the same seeds.
SWEEP_OVERRIDES: dict = {
    "seeds": MANY_SEEDS,
    "cases": [
        {"label": "no dropout", "placement": "none", "p": 0.0},
        *[
            {"label": f"before_bn, p={p}", "placement": "before_bn", "p": p}
            for p in (BASE_TRIAL["p"], PAPER_DROP)  # the problem's rate (shared runs), the paper's
        ],
    ],
}


@dataclass(frozen=True)
class Config:
    """One configuration's per-seed measurements, in seed order."""

    label: str
    case: dict
    seeds: tuple[int, ...]
    test: np.ndarray  # test accuracy in percent
    train: np.ndarray  # training-set accuracy (evaluation mode) in percent
    test_recal: np.ndarray  # test accuracy after recalibrating BN, in percent
    shift_mean: np.ndarray  # shift statistic averaged over the BN layers
    shift_max: np.ndarray  # largest shift statistic over the BN layers
    shift_recal_max: np.ndarray
    train_seconds: np.ndarray

    @classmethod
    def from_row(cls, row: dict, label: str | None = None) -> Config:
        """Per-seed arrays of one row of a grid experiment (``rows[i]`` of its data)."""
        trials = sorted(row["trials"], key=lambda t: t["config"]["seed"])
        acc = lambda key: np.array([100 * t["acc"][key] for t in trials])  # noqa: E731
        stat = lambda t, key: np.array([s["statistic"] for s in t[key]])  # noqa: E731
        return cls(
            label=label or row["label"],
            case=row["case"],
            seeds=tuple(t["config"]["seed"] for t in trials),
            test=acc("test"),
            train=acc("train"),
            test_recal=acc("test_recal"),
            shift_mean=np.array([stat(t, "shift").mean() for t in trials]),
            shift_max=np.array([stat(t, "shift").max() for t in trials]),
            shift_recal_max=np.array([stat(t, "shift_recal").max() for t in trials]),
            train_seconds=np.array([t["train_seconds"] for t in trials]),
        )

    def recalibrated(self, label: str) -> Config:
        """The same networks after recalibration, as a configuration of their own."""
        return Config(
            label,
            self.case,
            self.seeds,
            self.test_recal,
            self.train,
            self.test_recal,
            self.shift_mean,  # not measured per layer after recalibration: see shift_max
            self.shift_recal_max,
            self.shift_recal_max,
            self.train_seconds,
        )

    @cached_property
    def accuracy(self) -> MeanCI:
        """Test accuracy (percent): mean and t interval over seeds."""
        return mean_ci(self.test, CONFIDENCE)

    @cached_property
    def shift(self) -> GeometricMeanCI:
        """Largest per-layer shift statistic: geometric mean and interval over seeds."""
        return geometric_mean_ci(self.shift_max, CONFIDENCE)


def _paired(a: np.ndarray, b: np.ndarray, seeds: tuple[Sequence[int], Sequence[int]]):
    if tuple(seeds[0]) != tuple(seeds[1]):
        raise ValueError(f"paired comparisons need the same seeds, got {seeds[0]} and {seeds[1]}")
    return compare_paired(a, b, margin=MARGIN_POINTS, confidence=CONFIDENCE)


def compare(a: Config, b: Config) -> PairedComparison:
    """Test accuracy of ``a`` minus ``b`` (points), paired by seed, with the equivalence margin."""
    return _paired(a.test, b.test, (a.seeds, b.seeds))


def compare_shift(a: Config, b: Config, largest: bool = True) -> RatioComparison:
    """Shift statistic of ``a`` over that of ``b``, paired by seed, on the log scale."""
    if a.seeds != b.seeds:
        raise ValueError(f"paired comparisons need the same seeds, got {a.seeds} and {b.seeds}")
    key = "shift_max" if largest else "shift_mean"
    return compare_ratio(getattr(a, key), getattr(b, key), confidence=CONFIDENCE)


def recal_gain(c: Config) -> PairedComparison:
    """Test accuracy after recalibration minus before, on the same trained networks."""
    return _paired(c.test_recal, c.test, (c.seeds, c.seeds))


def recovered_percent(c: Config, baseline: Config) -> float:
    """Share (percent) of the accuracy lost to dropout that recalibration wins back."""
    return float(
        100 * (c.test_recal.mean() - c.test.mean()) / (baseline.test.mean() - c.test.mean())
    )


class RemediesReport:
    """Every configuration of the remedies experiment and the comparisons the chapter states."""

    def __init__(self, data: dict, sweep: dict | None = None) -> None:
        self.configs = {row["label"]: Config.from_row(row) for row in data["rows"]}
        self.baseline = self.configs[BASELINE]
        self.problem = self.configs[PROBLEM]
        self.recal = self.problem.recalibrated(RECAL)
        self.sweep = {row["label"]: Config.from_row(row) for row in sweep["rows"]} if sweep else {}

    def __getitem__(self, label: str) -> Config:
        return self.recal if label == RECAL else self.configs[label]

    @property
    def entries(self) -> list[Config]:
        """The table's rows: every configuration, the recalibrated problem after the problem."""
        out = []
        for c in self.configs.values():
            out.append(c)
            if c is self.problem:
                out.append(self.recal)
        return out

    def versus_baseline(self, c: Config) -> PairedComparison | None:
        """Paired comparison with the no-dropout network (None for that network itself)."""
        return None if c is self.baseline else compare(c, self.baseline)

    def table(self) -> str:
        """The chapter's table as Markdown, verdict cells generated from the tests."""
        rows = []
        for c in self.entries:
            vs = self.versus_baseline(c)
            rows.append(
                [
                    c.label,
                    c.accuracy.cell(),
                    "" if vs is None else f"{vs.mean_diff:+.1f} [{vs.low:+.1f}, {vs.high:+.1f}]",
                    "(reference)" if vs is None else vs.cell(unit=" points"),
                    c.shift.cell(),
                    f"{c.train_seconds.mean():.1f}",
                ]
            )
        conf = f"{100 * CONFIDENCE:g}%"
        return markdown_table(
            [
                "configuration",
                f"test accuracy (%), mean [{conf} CI]",
                f"difference to no dropout (points) [{conf} CI]",
                "verdict against no dropout",
                f"largest shift statistic, geometric mean [{conf} CI]",
                "training time per run (s)",
            ],
            rows,
        )

    @property
    def noisy_sweep(self) -> list[Config]:
        """Configurations of the sweep and of the remedies with noise inside the blocks."""
        inside = ("before_bn", "before_weight", "uout")
        configs = [*self.sweep.values(), *self.configs.values()]
        seen, out = set(), []
        for c in configs:
            key = tuple(sorted(c.case.items()))
            if c.case.get("placement") in inside and key not in seen:
                seen.add(key)
                out.append(c)
        return out


def _list(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def glue_remedies(report: RemediesReport) -> None:
    """Glue every number and verdict phrase the remedies chapter's prose shows."""
    r, base, problem = report, report.baseline, report.problem
    glue_number("re_seeds", len(base.seeds))
    glue_number("re_conf", 100 * CONFIDENCE)
    glue_number("re_tost_conf", 100 * (1 - 2 * (1 - CONFIDENCE)))
    glue_number("re_margin", MARGIN_POINTS)
    glue_number("re_depth", BASE_TRIAL["depth"])
    glue_number("re_epochs", BASE_TRIAL["epochs"])
    glue_number("re_p", problem.case["p"])
    glue_number("re_retain", 1 - problem.case["p"])

    # recalibration
    glue_number("re_base", base.accuracy.mean)
    glue_number("re_base_train", base.train.mean())
    glue_number("re_base_gap", base.train.mean() - base.test.mean())
    glue_number("re_problem", problem.accuracy.mean)
    glue_number("re_recal", r.recal.accuracy.mean)
    glue_number("re_problem_shift", problem.shift.gmean)
    glue_number("re_shift_spread", problem.shift_max.max() / problem.shift_max.min())
    glue_number("re_recal_shift", r.recal.shift.gmean)
    glue_text("re_recal_vs_problem", recal_gain(problem).sentence())
    glue_text("re_recal_vs_base", compare(r.recal, base).sentence())
    glue_number("re_recal_fraction", recovered_percent(problem, base))

    # dropout after BN, Uout, a lower drop rate
    after, weak, strong, low = r[AFTER], r[UOUT_WEAK], r[UOUT_STRONG], r[LOW_P]
    glue_number("re_after", after.accuracy.mean)
    glue_text("re_after_vs_base", compare(after, base).sentence())
    beta = weak.case["beta"]
    glue_number("re_uout_beta", beta)
    glue_number("re_uout_beta_strong", strong.case["beta"])
    glue_number("re_uout_drop_equiv", 100 * (beta**2 / 3) / (1 + beta**2 / 3))
    glue_number("re_uout01", weak.accuracy.mean)
    glue_number("re_uout01_shift", weak.shift.gmean)
    glue_text("re_uout01_vs_base", compare(weak, base).sentence())
    glue_number("re_uout05", strong.accuracy.mean)
    glue_number("re_uout05_shift", strong.shift.gmean)
    glue_text("re_uout05_vs_base", compare(strong, base).sentence())
    glue_text(
        "re_uout05_shift_vs_01",
        compare_shift(strong, weak).sentence(f"the value at β = {beta:g}"),
    )
    glue_number("re_low_p", low.case["p"])
    glue_number("re_low", low.accuracy.mean)
    glue_number("re_low_shift", low.shift.gmean)
    glue_text("re_low_vs_base", compare(low, base).sentence())
    glue_text(
        "re_low_shift_vs_problem",
        compare_shift(low, problem).sentence(f"the value at p = {problem.case['p']:g}"),
    )

    # width
    wide_a, narrow_b, wide_b = r[WIDE_A], r[NARROW_B], r[WIDE_B]
    glue_number("re_width", BASE_TRIAL["width"])
    glue_number("re_width_wide", wide_a.case["width"])
    glue_number("re_width_factor", wide_a.case["width"] / BASE_TRIAL["width"])
    glue_number("re_wide_a", wide_a.accuracy.mean)
    glue_number("re_wide_a_shift", wide_a.shift.gmean)
    wide_vs = compare(wide_a, problem)
    glue_text("re_wide_a_vs_problem", wide_vs.sentence())
    glue_text(
        "re_wide_a_shift_vs_problem",
        compare_shift(wide_a, problem).sentence("that of the narrow network"),
    )
    glue_text(
        "re_wide_a_theory",
        {
            "better": "The data disagree with that prediction: the wider network is more "
            "accurate, so width helps here through something other than the shift",
            "worse": "The wider network is even less accurate, which the theory does not "
            "predict either",
        }.get(wide_vs.verdict, "The data agree: no gain from width is detected"),
    )
    glue_number("re_b", narrow_b.accuracy.mean)
    glue_number("re_b_wide", wide_b.accuracy.mean)
    glue_number("re_b_shift", narrow_b.shift.gmean)
    glue_number("re_b_wide_shift", wide_b.shift.gmean)
    glue_text("re_b_wide_vs_b", compare(wide_b, narrow_b).sentence())
    b_shift = compare_shift(wide_b, narrow_b, largest=False)
    glue_text("re_b_shift_ratio", b_shift.sentence("that of the narrow one"))
    glue_text(
        "re_b_width_verdict",
        "the wider layers did shift less, as the paper's mechanism predicts"
        if b_shift.verdict == "smaller"
        else "this experiment does not show the smaller shift that the paper's width mechanism "
        "predicts, and the shift cannot explain what width does to the accuracy here",
    )
    wide_recal = recal_gain(wide_a)
    glue_number("re_wide_a_recal", wide_a.test_recal.mean())
    glue_text("re_wide_a_recal_vs", wide_recal.sentence())
    glue_text(
        "re_wide_a_recal_so",
        "so the shift accounts for a measurable part of its loss"
        if wide_recal.verdict == "better"
        else "so this experiment cannot attribute its loss to the shift",
    )

    # does a remedy beat no dropout?
    remedies = [c for c in r.configs.values() if c is not base and c is not problem]
    verdicts = {c.label: compare(c, base).verdict for c in remedies}
    better = [label for label, v in verdicts.items() if v == "better"]
    counts = {v: sum(x == v for x in verdicts.values()) for v in set(verdicts.values())}
    glue_text(
        "re_beats_base",
        _list(better)
        if better
        else "none of them: of the {} remedies, {} {} equivalent within ±{:.1f} points, {} worse "
        "and {} within the seed-to-seed noise".format(
            len(remedies),
            counts.get("equivalent", 0),
            "is" if counts.get("equivalent", 0) == 1 else "are",
            MARGIN_POINTS,
            counts.get("worse", 0),
            counts.get("within noise", 0),
        ),
    )

    # the paper, beside this course
    glue_paper(report)


def glue_paper(report: RemediesReport) -> None:
    """Glue the paper's reported numbers and the course's counterparts for the last section."""
    base_acc = paper_number("densenet_c100_no_dropout_acc")
    drop_acc = paper_number("densenet_c100_dropout_acc")
    glue_number("re_paper_base", base_acc.value)
    glue_number("re_paper_drop", drop_acc.value)
    glue_number("re_paper_loss", base_acc.value - drop_acc.value)
    glue_number("re_paper_p", PAPER_DROP)
    glue_number("re_paper_retain", 1 - PAPER_DROP)
    glue_text("re_paper_fig_source", base_acc.source)
    glue_number("re_paper_recal_cells", paper_number("recal_cells_improved").value)
    after_base = paper_number("densenet_c100_after_bn_base_err")
    after = paper_number("densenet_c100_after_bn_err")
    glue_number("re_paper_after_gain", after_base.value - after.value)
    glue_text("re_paper_after_source", after.source)

    sweep, base = report.sweep, report.sweep["no dropout"]
    p05 = sweep[f"before_bn, p={PAPER_DROP}"]
    loss = compare(base, p05)
    glue_number("re_course_loss", loss.mean_diff)
    glue_text("re_course_loss_ci", f"{loss.low:.1f} to {loss.high:.1f}")
    noisy = report.noisy_sweep
    gains = [recal_gain(c).verdict for c in noisy]
    glue_number("re_recal_settings", len(noisy))
    glue_number("re_recal_improved", gains.count("better"))
    glue_number("re_recal_worse", gains.count("worse"))
    glue_number("re_recal_unclear", len(gains) - gains.count("better") - gains.count("worse"))
    problem_p = report.problem.case["p"]
    glue_number("re_recovered_03", recovered_percent(sweep[f"before_bn, p={problem_p}"], base))
    glue_number("re_recovered_05", recovered_percent(p05, base))
    recal_vs_base = compare(p05.recalibrated("recal"), base)
    glue_text("re_recal_05_vs_base", recal_vs_base.sentence())


def paper_table(report: RemediesReport) -> str:
    """The paper's DenseNet numbers beside the course's digits MLP, as Markdown."""
    base_acc = paper_number("densenet_c100_no_dropout_acc")
    drop_acc = paper_number("densenet_c100_dropout_acc")
    recal = paper_number("recal_cells_improved")
    sweep = report.sweep
    base, p05 = sweep["no dropout"], sweep[f"before_bn, p={PAPER_DROP}"]
    conf = f"{100 * CONFIDENCE:g}%"
    rows = [
        ["no dropout", base_acc.text(), base_acc.source, base.accuracy.cell()],
        [
            f"dropout p = {p05.case['p']:g} before BN (paper: in each bottleneck)",
            drop_acc.text(),
            drop_acc.source,
            p05.accuracy.cell(),
        ],
        [
            "same, BN statistics recalibrated with dropout off",
            f"lower error in all {recal.text()} settings",
            recal.source,
            p05.recalibrated("recal").accuracy.cell(),
        ],
    ]
    return markdown_table(
        [
            "",
            "paper: DenseNet, CIFAR-100, test accuracy (%)",
            "source in the paper",
            f"course: {BASE_TRIAL['depth']}-block MLP, digits, test accuracy (%) [{conf} CI]",
        ],
        rows,
    )
