"""The measurements of the chapter "The variance shift, measured", through :mod:`bncourse.lab.stats`.

The chapter runs two grid experiments over the same seeds (:data:`MANY_SEEDS`): the per-layer
shift of the base network for several drop rates and placements (:data:`LAYER_OVERRIDES`), and
networks of several depths, each with its own no-dropout control (:data:`DEPTH_OVERRIDES`).
:class:`MeasuredReport` turns their rows into per-seed arrays (:class:`Runs`) and answers the
chapter's questions with the statistics layer: shift statistics as geometric means with
intervals, accuracies as t intervals, paired comparisons where runs share seeds, and Spearman
trend tests for "grows with the layer" and "grows with depth". :func:`glue_measured` glues every
number and every verdict phrase the prose shows, so the words follow the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bncourse.lab.experiments import BASE_TRIAL, MANY_SEEDS
from bncourse.lab.glue import glue_number, glue_text
from bncourse.lab.paper_numbers import paper_number
from bncourse.lab.plots import markdown_table
from bncourse.lab.remedies import CONFIDENCE, MARGIN_POINTS
from bncourse.lab.stats import (
    GeometricMeanCI,
    MeanCI,
    PairedComparison,
    RatioComparison,
    Trend,
    compare_paired,
    compare_ratio,
    geometric_mean_ci,
    mean_ci,
    trend_test,
)

__all__ = [
    "LAYER_RATES",
    "MATCHED_P",
    "DEPTHS",
    "DEPTH_RATES",
    "FIT_MIN",
    "NONE",
    "LAYER_OVERRIDES",
    "DEPTH_OVERRIDES",
    "Runs",
    "MeasuredReport",
    "label",
    "glue_measured",
    "first_layer_table",
    "layer_alt",
    "modes_alt",
    "depth_alt",
]

#: Drop rates of dropout before every BN in the per-layer experiment.
LAYER_RATES = (0.1, 0.3, 0.5)
#: Drop rate at which the placements are compared (each placement with ``depth`` dropout layers,
#: except one dropout after all BN layers).
MATCHED_P = BASE_TRIAL["p"]
#: Numbers of blocks of the depth experiment, and its drop rates of dropout before every BN
#: (each depth also without dropout, as control).
DEPTHS = (2, 4, 6)
DEPTH_RATES = (0.1, 0.3)
#: Accuracy (percent) on its own training set, in evaluation mode after recalibrating BN, that a
#: network must reach (the lower end of its interval) to count as trained. Training-mode accuracy
#: cannot decide it, as it also pays for the dropout noise; with the noise off and BN's statistics
#: recomputed, a network that fits its training set classifies it. Below this, optimisation
#: failed, and a gap between the modes says little about the variance shift.
FIT_MIN = 90.0

NONE = "no dropout"


def label(placement: str, p: float) -> str:
    """Row label of one configuration of the per-layer experiment: ``"before_bn, p=0.3"``."""
    return NONE if placement == "none" else f"{placement}, p={p:g}"


LAYER_OVERRIDES: dict = {
    "seeds": MANY_SEEDS,
    "cases": [
        {"label": NONE, "placement": "none", "p": 0.0},
        *[{"label": label("before_bn", p), "placement": "before_bn", "p": p} for p in LAYER_RATES],
        *[
            {"label": label(placement, MATCHED_P), "placement": placement, "p": MATCHED_P}
            for placement in ("before_weight", "after_bn")
        ],
    ],
}

DEPTH_OVERRIDES: dict = {
    "seeds": MANY_SEEDS,
    "cases": [
        case
        for d in DEPTHS
        for case in (
            {"label": f"depth {d}, {NONE}", "depth": d, "placement": "none", "p": 0.0},
            *[
                {"label": f"depth {d}, p={p:g}", "depth": d, "placement": "before_bn", "p": p}
                for p in DEPTH_RATES
            ],
        )
    ],
}


@dataclass(frozen=True)
class Runs:
    """One configuration's per-seed measurements, in seed order (accuracies in percent)."""

    label: str
    case: dict
    seeds: tuple[int, ...]
    test: np.ndarray
    test_recal: np.ndarray
    train: np.ndarray  # training set, evaluation mode
    train_trainmode: np.ndarray  # training set, training mode (dropout on, batch statistics)
    train_recal: np.ndarray  # training set, evaluation mode after recalibrating BN
    shift: np.ndarray  # shift statistic, one row per seed, one column per BN layer
    first_theory: np.ndarray | None  # predicted first-layer statistic (dropout before BN only)

    @classmethod
    def from_row(cls, row: dict) -> Runs:
        """Per-seed arrays of one row of a grid experiment."""
        trials = sorted(row["trials"], key=lambda t: t["config"]["seed"])
        acc = lambda key: np.array([100 * t["acc"][key] for t in trials])  # noqa: E731
        return cls(
            label=row["label"],
            case=row["case"],
            seeds=tuple(t["config"]["seed"] for t in trials),
            test=acc("test"),
            test_recal=acc("test_recal"),
            train=acc("train"),
            train_trainmode=acc("train_trainmode"),
            train_recal=acc("train_recal"),
            shift=np.array([[s["statistic"] for s in t["shift"]] for t in trials]),
            first_theory=np.array([t["first_layer_theory"]["statistic"] for t in trials])
            if all(t.get("first_layer_theory") for t in trials)
            else None,
        )

    @property
    def shift_max(self) -> np.ndarray:
        """Largest per-layer shift statistic of each seed."""
        return self.shift.max(axis=1)

    @property
    def shift_last(self) -> np.ndarray:
        """Shift statistic of the last BN layer of each seed: what the whole stack passes on.

        Against depth this is the fair summary: the largest of more layers grows with their
        number even when no layer shifts more than another.
        """
        return self.shift[:, -1]

    @cached_property
    def profile(self) -> list[GeometricMeanCI]:
        """Shift statistic of every BN layer: geometric mean and interval over seeds."""
        return [geometric_mean_ci(col, CONFIDENCE) for col in self.shift.T]

    def accuracy(self, key: str = "test") -> MeanCI:
        """Mean and t interval over seeds of one accuracy (``"test"``, ``"train_trainmode"``...)."""
        return mean_ci(getattr(self, key), CONFIDENCE)

    @property
    def trains(self) -> bool:
        """Whether the recalibrated training-set accuracy's interval lies above FIT_MIN."""
        return self.accuracy("train_recal").low >= FIT_MIN


def paired(a: np.ndarray, b: np.ndarray, seeds: tuple[tuple[int, ...], ...]) -> PairedComparison:
    """``a - b`` in points, paired by seed, with the book's equivalence margin."""
    if seeds[0] != seeds[1]:
        raise ValueError(f"paired comparisons need the same seeds, got {seeds[0]} and {seeds[1]}")
    return compare_paired(a, b, margin=MARGIN_POINTS, confidence=CONFIDENCE)


def ratio(a: np.ndarray, b: np.ndarray, seeds: tuple[tuple[int, ...], ...]) -> RatioComparison:
    """``a / b`` of positive statistics, paired by seed, on the log scale."""
    if seeds[0] != seeds[1]:
        raise ValueError(f"paired comparisons need the same seeds, got {seeds[0]} and {seeds[1]}")
    return compare_ratio(a, b, confidence=CONFIDENCE)


class MeasuredReport:
    """The chapter's configurations and the comparisons and trends its prose states."""

    def __init__(self, layer_data: dict, depth_data: dict) -> None:
        self.layer = {row["label"]: Runs.from_row(row) for row in layer_data["rows"]}
        self.depth: dict[tuple[int, float], Runs] = {}
        for row in depth_data["rows"]:
            case = row["case"]
            p = 0.0 if case["placement"] == "none" else case["p"]
            self.depth[(case["depth"], p)] = Runs.from_row(row)
        self.depths = sorted({d for d, _ in self.depth})
        self.depth_rates = sorted({p for _, p in self.depth if p > 0})

    def __getitem__(self, key: str) -> Runs:
        return self.layer[key]

    @property
    def baseline(self) -> Runs:
        """The base network without dropout."""
        return self.layer[NONE]

    def before_bn(self, p: float) -> Runs:
        """The base network with dropout of rate ``p`` before every BN (``p = 0``: no dropout)."""
        return self.baseline if p == 0 else self.layer[label("before_bn", p)]

    # --- along the layers of one network ---------------------------------------------------

    def layer_growth(self, runs: Runs) -> RatioComparison:
        """Shift statistic of the last BN layer over that of the first, paired by seed."""
        return ratio(runs.shift[:, -1], runs.shift[:, 0], (runs.seeds, runs.seeds))

    def layer_trend(self, runs: Runs) -> Trend:
        """Spearman trend of the layer-wise geometric means against the layer index."""
        index = np.arange(1, runs.shift.shape[1] + 1)
        return trend_test(index, [g.gmean for g in runs.profile], alpha=1 - CONFIDENCE)

    def rate_trend(self) -> Trend:
        """Spearman trend of the largest shift statistic against the drop rate before every BN."""
        rates = [0.0, *LAYER_RATES]
        x = [p for p in rates for _ in self.before_bn(p).seeds]
        y = np.concatenate([self.before_bn(p).shift_max for p in rates])
        return trend_test(x, y, alpha=1 - CONFIDENCE)

    # --- the modes on the training set -----------------------------------------------------

    def trained_rate(self) -> float | None:
        """The largest drop rate before every BN at which the network still trains (FIT_MIN)."""
        ok = [p for p in LAYER_RATES if self.before_bn(p).trains]
        return max(ok) if ok else None

    @staticmethod
    def mode_gap(runs: Runs) -> PairedComparison:
        """Training-set accuracy in evaluation mode minus training mode, same networks."""
        return paired(runs.train, runs.train_trainmode, (runs.seeds, runs.seeds))

    @staticmethod
    def stale_cost(runs: Runs, split: str = "train") -> PairedComparison:
        """Accuracy after recalibrating BN minus before, same weights: what the shift costs."""
        return paired(
            getattr(runs, f"{split}_recal"), getattr(runs, split), (runs.seeds, runs.seeds)
        )

    # --- placements at matched noise -------------------------------------------------------

    def placement(self, placement: str) -> Runs:
        """The base network with dropout of rate MATCHED_P in ``placement``."""
        return self.layer[label(placement, MATCHED_P)]

    # --- depth -----------------------------------------------------------------------------

    def at_depth(self, depth: int, p: float) -> Runs:
        """The network of ``depth`` blocks with dropout ``p`` before every BN (0: the control)."""
        return self.depth[(depth, p)]

    def depth_shift_trend(self, p: float) -> Trend:
        """Spearman trend of the last BN layer's shift statistic (one value per run) against depth."""
        x = [d for d in self.depths for _ in self.at_depth(d, p).seeds]
        y = np.concatenate([self.at_depth(d, p).shift_last for d in self.depths])
        return trend_test(x, y, alpha=1 - CONFIDENCE)

    def depth_cost(self, depth: int, p: float) -> PairedComparison:
        """Test accuracy of the control minus the dropout network of ``depth`` blocks, by seed."""
        drop, control = self.at_depth(depth, p), self.at_depth(depth, 0.0)
        return paired(control.test, drop.test, (control.seeds, drop.seeds))

    def depth_cost_trend(self, p: float) -> Trend:
        """Spearman trend against depth of the per-seed test-accuracy cost of dropout (points)."""
        x, y = [], []
        for d in self.depths:
            cost = self.depth_cost(d, p)  # checks that the seeds are paired
            drop, control = self.at_depth(d, p), self.at_depth(d, 0.0)
            x += [d] * cost.n
            y += list(control.test - drop.test)
        return trend_test(x, y, alpha=1 - CONFIDENCE)


# --- the phrases of the prose ------------------------------------------------------------


def _list(items: list[str]) -> str:
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _rates(ps: list[float]) -> str:
    return _list([f"p = {p:g}" for p in ps])


def growth_phrase(report: MeasuredReport, p: float) -> str:
    """How the shift of the last BN layer compares with the first's, at rate ``p``."""
    runs = report.before_bn(p)
    g = report.layer_growth(runs)
    return f"at p = {p:g} the last layer's statistic is {g.sentence('the first layer’s')}"


def trend_summary(report: MeasuredReport) -> str:
    """Which drop rates show a shift that increases, decreases or shows no trend with the layer."""
    verdicts = {p: report.layer_trend(report.before_bn(p)).verdict for p in LAYER_RATES}
    parts = []
    for verdict, words in (
        ("increasing", "increases from layer to layer"),
        ("decreasing", "decreases from layer to layer"),
        ("no monotone trend shown", "shows no monotone trend over the layers"),
    ):
        ps = [p for p, v in verdicts.items() if v == verdict]
        if ps:
            parts.append(f"at {_rates(ps)} the statistic {words}")
    return "; ".join(parts)


def glue_measured(report: MeasuredReport) -> None:
    """Glue every number and verdict phrase of the chapter's prose."""
    r, base = report, report.baseline
    glue_number("me_seeds", len(base.seeds))
    glue_number("me_conf", 100 * CONFIDENCE)
    glue_number("me_margin", MARGIN_POINTS)
    for key in ("depth", "width", "epochs", "batch_size", "lr", "momentum"):
        glue_number(f"me_{key}", BASE_TRIAL[key])
    glue_number("me_p_low", min(LAYER_RATES))
    glue_number("me_p_mid", sorted(LAYER_RATES)[1])
    glue_number("me_p_high", max(LAYER_RATES))
    glue_number("me_matched_p", MATCHED_P)
    glue_number("me_fit_min", FIT_MIN)

    # the shift, layer by layer
    glue_number("me_none_max", max(g.high for g in base.profile))
    high = r.before_bn(max(LAYER_RATES))
    glue_number("me_high_first", high.profile[0].gmean)
    glue_number("me_high_last", high.profile[-1].gmean)
    glue_number("me_high_spread", high.shift_max.max() / high.shift_max.min())
    glue_text("me_layer_trends", trend_summary(report))
    glue_text("me_rate_trend", report.rate_trend().sentence("the largest statistic of a network"))
    glue_text("me_layer_growth", "; ".join(growth_phrase(report, p) for p in LAYER_RATES))
    increasing = [p for p in LAYER_RATES if r.layer_trend(r.before_bn(p)).verdict == "increasing"]
    failed = [p for p in increasing if not r.before_bn(p).trains]
    note = ""
    if failed and len(failed) == len(increasing):
        note = ", where the network does not train (see the section on both modes below)"
    if increasing and len(increasing) < len(LAYER_RATES):
        accumulates = f"at {_rates(increasing)} only{note}"
    elif increasing:
        accumulates = "at every rate tried"
    else:
        accumulates = None
    glue_text(
        "me_layer_accumulates",
        f"so, within one network, the data support accumulation along the layers {accumulates}"
        if accumulates
        else "so, within one network, these data do not show the shift accumulating along the "
        "layers",
    )

    first = []
    for p in LAYER_RATES:
        runs = r.before_bn(p)
        if runs.first_theory is not None:
            c = ratio(runs.shift[:, 0], runs.first_theory, (runs.seeds, runs.seeds))
            first.append(f"at p = {p:g} {c.sentence('the prediction')}")
    glue_text("me_first_vs_theory", "; ".join(first))

    # placements at matched noise
    a, b, after = r.placement("before_bn"), r.placement("before_weight"), r.placement("after_bn")
    glue_number("me_b_max", max(g.gmean for g in b.profile))
    glue_number("me_after_max", max(g.gmean for g in after.profile))
    glue_text(
        "me_b_vs_a_shift",
        ratio(b.shift_max, a.shift_max, (b.seeds, a.seeds)).sentence("that of dropout before BN"),
    )
    b_vs_a = paired(b.test, a.test, (b.seeds, a.seeds))
    glue_number("me_a_acc", a.accuracy().mean)
    glue_number("me_b_acc", b.accuracy().mean)
    glue_text("me_b_vs_a_acc", b_vs_a.sentence())
    glue_text(
        "me_placement_verdict",
        {
            "better": "With the same number of dropout layers at the same rate, placement "
            "decides: the network whose noise passes a weight layer before BN is more accurate",
            "worse": "With the same number of dropout layers at the same rate, the network whose "
            "noise passes a weight layer before BN is less accurate, against the paper's account",
            "equivalent": "With the same number of dropout layers at the same rate, the two "
            "placements give equivalent accuracy here, whatever their shifts",
        }.get(
            b_vs_a.verdict,
            "With the same number of dropout layers at the same rate, these seeds cannot tell "
            "the two placements apart in accuracy",
        ),
    )
    glue_text(
        "me_after_vs_base", paired(after.test, base.test, (after.seeds, base.seeds)).sentence()
    )

    # the modes on the training set
    glue_training_modes(report)

    # depth
    glue_depth(report)


def glue_training_modes(report: MeasuredReport) -> None:
    """Glue the section on the training set in both modes, and its comparison with the paper."""
    r = report
    fails = [p for p in LAYER_RATES if not r.before_bn(p).trains]
    glue_text("me_fails", _rates(fails) if fails else "none of the rates tried")
    trained = r.trained_rate()
    if trained is None:  # nothing trains: the section says so and compares nothing
        glue_number("me_tr_p", float("nan"))
        for key in (
            "me_tr_trainmode",
            "me_tr_eval",
            "me_tr_recal",
            "me_tr_test",
            "me_tr_test_recal",
        ):
            glue_number(key, float("nan"))
        for key in ("me_tr_gap", "me_tr_stale", "me_tr_stale_test", "me_tr_paper_verdict"):
            glue_text(key, "not measured: no configuration trained")
        return
    runs = r.before_bn(trained)
    glue_number("me_tr_p", trained)
    glue_number("me_tr_trainmode", runs.accuracy("train_trainmode").mean)
    glue_number("me_tr_recal_low", runs.accuracy("train_recal").low)
    glue_number("me_tr_eval", runs.accuracy("train").mean)
    glue_number("me_tr_recal", runs.accuracy("train_recal").mean)
    glue_number("me_tr_test", runs.accuracy("test").mean)
    glue_number("me_tr_test_recal", runs.accuracy("test_recal").mean)
    gap = r.mode_gap(runs)
    glue_text(
        "me_tr_gap",
        gap.sentence(higher="higher in evaluation mode", lower="lower in evaluation mode"),
    )
    glue_text("me_tr_stale", r.stale_cost(runs).sentence())
    glue_text("me_tr_stale_test", r.stale_cost(runs, "test").sentence())
    stale = r.stale_cost(runs)
    if gap.verdict == "worse":
        verdict = "the paper's observation holds here too"
    else:
        how = "more than" if gap.verdict == "better" else "about as much as"
        verdict = (
            "the paper's observation does not show here as a gap between the modes: the dropout "
            f"noise costs training mode {how} the stale statistics cost evaluation mode"
        )
        if stale.verdict == "better":
            verdict += ", and only recalibration separates the two"
    glue_text("me_tr_paper_verdict", verdict)
    # the gap between the modes at every rate, for the figure's caption
    per_rate = {p: r.mode_gap(r.before_bn(p)).verdict for p in LAYER_RATES}
    lower = [p for p, v in per_rate.items() if v == "worse"]
    higher = [p for p, v in per_rate.items() if v == "better"]
    within = [p for p, v in per_rate.items() if v not in ("worse", "better")]
    parts = []
    if lower:
        parts.append(f"below training mode by more than the noise at {_rates(lower)}")
    if higher:
        parts.append(
            f"above it at {_rates(higher)}, where the dropout noise costs training mode more "
            "than the shift costs evaluation mode"
        )
    if within:
        parts.append(f"within the noise of it at {_rates(within)}")
    glue_text("me_modes_across", "Across the rates, evaluation mode is " + "; ".join(parts))

    # the paper: its DenseNet, recalibrated (Table 3), beside the course's trained configuration
    err = paper_number("densenet_c100_dropout_err")
    err_recal = paper_number("densenet_c100_dropout_recal_err")
    glue_number("me_paper_p", paper_number("densenet_c100_drop_ratio").value)
    glue_number("me_paper_err", err.value)
    glue_number("me_paper_err_recal", err_recal.value)
    glue_number("me_paper_recal_gain", err.value - err_recal.value)
    glue_text("me_paper_source", err.source)
    glue_text(
        "me_paper_direction",
        "The direction agrees: recalibration helps here too"
        if r.stale_cost(runs, "test").verdict == "better"
        else "Here recalibration does not raise the test accuracy by more than the noise, so even "
        "the direction is not reproduced",
    )


def depth_trends(report: MeasuredReport) -> str:
    """The trend of the last layer's shift with depth, rate by rate, and in the controls."""
    parts = [
        report.depth_shift_trend(p).sentence(f"at p = {p:g} the last layer's statistic")
        for p in report.depth_rates
    ]
    parts.append(report.depth_shift_trend(0.0).sentence("without dropout it"))
    return "; ".join(parts)


def glue_depth(report: MeasuredReport) -> None:
    """Glue the section on depth: shift and accuracy cost against depth, with controls."""
    r = report
    glue_text("me_depth_rates", _rates(r.depth_rates))
    glue_number("me_depth_min", r.depths[0])
    glue_number("me_depth_max", r.depths[-1])
    glue_text("me_depth_shift_trends", depth_trends(r))
    cost = []
    for p in r.depth_rates:
        shallow = r.depth_cost(r.depths[0], p).sentence(
            higher="lower with dropout", lower="higher with dropout"
        )
        deep = r.depth_cost(r.depths[-1], p).sentence(
            higher="lower with dropout", lower="higher with dropout"
        )
        trend = r.depth_cost_trend(p).sentence("the cost")
        cost.append(
            f"at p = {p:g}, the test accuracy is {shallow} with {r.depths[0]} blocks and {deep} "
            f"with {r.depths[-1]}, and over all depths {trend}"
        )
    glue_text("me_depth_costs", "; ".join(cost))
    glue_text(
        "me_depth_cost_trends",
        "; ".join(
            r.depth_cost_trend(p).sentence(f"at p = {p:g} the cost in test accuracy")
            for p in r.depth_rates
        ),
    )
    recal = [
        f"at p = {p:g} {r.stale_cost(r.at_depth(r.depths[-1], p), 'test').sentence()}"
        for p in r.depth_rates
    ]
    glue_text("me_depth_recal_deep", "; ".join(recal))
    untrained = [(d, p) for d in r.depths for p in r.depth_rates if not r.at_depth(d, p).trains]
    glue_text(
        "me_depth_fit",
        f"Every network of this experiment trains: recalibrated, each classifies at least "
        f"{FIT_MIN:g}% of its training set"
        if not untrained
        else "Not every network trains: "
        + _list([f"with {d} blocks at p = {p:g}" for d, p in untrained])
        + f" the network does not classify {FIT_MIN:g}% of its own training set even after "
        "recalibration, so there the cost mixes failed optimisation with the shift",
    )


# --- table and alt texts -----------------------------------------------------------------


def first_layer_table(report: MeasuredReport) -> str:
    """The first BN layer's statistic: zero-mean theory, theory with measured moments, measured."""
    conf = f"{100 * CONFIDENCE:g}%"
    rows = []
    for p in LAYER_RATES:
        runs = report.before_bn(p)
        theory = (
            ""
            if runs.first_theory is None
            else geometric_mean_ci(runs.first_theory, CONFIDENCE).cell()
        )
        rows.append([f"{p:g}", f"{1 / (1 - p):.2f}", theory, runs.profile[0].cell()])
    return markdown_table(
        [
            "p (drop)",
            "1/(1-p): zero-mean theory",
            f"theory with measured c_j, v_j: geometric mean [{conf} CI]",
            f"measured, layer 1: geometric mean [{conf} CI]",
        ],
        rows,
    )


def _span(values: list[float], digits: int = 2) -> str:
    return f"between {min(values):.{digits}f} and {max(values):.{digits}f}"


def layer_alt(report: MeasuredReport) -> str:
    """Alt text of the per-layer figure, from the data and the trend tests."""
    depth = report.baseline.shift.shape[1]
    parts = [
        f"Two panels of the variance-shift statistic on a logarithmic axis against the BN layer "
        f"index 1 to {depth}, geometric means over {len(report.baseline.seeds)} seeds with "
        f"confidence intervals. Left: without dropout the means lie "
        f"{_span([g.gmean for g in report.baseline.profile])}"
    ]
    for p in LAYER_RATES:
        runs = report.before_bn(p)
        parts.append(
            f"with dropout p = {p:g} before every BN {_span([g.gmean for g in runs.profile])}"
        )
    text = "; ".join(parts) + f". By the trend test, {trend_summary(report)}. "
    right = [
        f"{name} {_span([g.gmean for g in report.placement(placement).profile])}"
        for placement, name in (
            ("before_bn", "dropout before every BN"),
            ("before_weight", "dropout before every weight layer"),
            ("after_bn", "one dropout after all BN layers"),
        )
    ]
    return text + f"Right, all at p = {MATCHED_P:g}: " + "; ".join(right) + "."


def modes_alt(report: MeasuredReport) -> str:
    """Alt text of the figure of the training set in both modes, from the data."""
    rates = [0.0, *LAYER_RATES]
    nets = [report.before_bn(p) for p in rates]
    curves = []
    for key, name in (
        ("train_trainmode", "training mode"),
        ("train", "evaluation mode"),
        ("train_recal", "evaluation mode after recalibration"),
    ):
        values = ", ".join(f"{n.accuracy(key).mean:.1f}" for n in nets)
        curves.append(f"{name} {values}")
    trains = [p for p, n in zip(rates, nets, strict=True) if n.trains]
    return (
        f"Accuracy on the training set, in percent, against the drop rate of dropout before every "
        f"BN at p = {', '.join(f'{p:g}' for p in rates)}: " + "; ".join(curves) + ". "
        f"Recalibrated accuracy reaches the {FIT_MIN:g}% line at "
        f"{_rates(trains) if trains else 'no rate'}."
    )


def depth_alt(report: MeasuredReport) -> str:
    """Alt text of the depth figure, from the data and the trend tests."""
    d = report.depths
    fmt = lambda values, digits: ", ".join(f"{v:.{digits}f}" for v in values)  # noqa: E731
    shift = lambda p: fmt(  # noqa: E731
        [geometric_mean_ci(report.at_depth(x, p).shift_last, CONFIDENCE).gmean for x in d], 2
    )
    acc = lambda p, key="test": fmt([report.at_depth(x, p).accuracy(key).mean for x in d], 1)  # noqa: E731
    left = "; ".join(
        [f"with dropout p = {p:g} before every BN {shift(p)}" for p in report.depth_rates]
        + [f"without dropout {shift(0.0)}"]
    )
    right = "; ".join(
        [f"without dropout {acc(0.0)}"]
        + [
            f"with dropout p = {p:g} {acc(p)}, after recalibrating BN {acc(p, 'test_recal')}"
            for p in report.depth_rates
        ]
    )
    return (
        f"Left: the last BN layer's shift statistic against the number of blocks "
        f"({', '.join(str(x) for x in d)}), geometric means over seeds: {left}. By the trend "
        f"test, {depth_trends(report)}. Right: test accuracy in percent, {right}."
    )
