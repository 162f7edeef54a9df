"""The cooperation chapter's three studies, computed through :mod:`bncourse.lab.stats`.

* :class:`SizeSweep`: a BN network with and without dropout after its last BN layer, trained on
  training sets of several sizes; at each size the paired difference, its t interval and the
  verdict (better, worse, equivalent within a margin, or within the noise).
* :class:`WidthStudy`: networks with dropout before every weight layer (the paper's case (b)) at
  several widths, with the width mechanism measured layer by layer
  (:mod:`bncourse.lab.geometry`) and trend tests of the measured shift, the predictions and
  ``d cos^2(theta)`` against the width.
* :class:`PlacementTable`: where, which kind and how much noise, each row compared with the
  network without dropout on the same seeds.

:func:`configs` lists every trial of the three (run them with
:func:`bncourse.lab.coop_trials.run_trials`); :func:`glue_cooperate` glues every number and
verdict phrase of the chapter's prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bncourse.lab.coop_trials import COOP_TRIAL, trial
from bncourse.lab.glue import glue_number, glue_text
from bncourse.lab.plots import markdown_table
from bncourse.lab.stats import (
    GeometricMeanCI,
    MeanCI,
    PairedComparison,
    Trend,
    compare_paired,
    compare_ratio,
    geometric_mean_ci,
    mean_ci,
    trend_test,
)

__all__ = [
    "CONFIDENCE",
    "MARGIN_POINTS",
    "SEEDS",
    "SIZES",
    "SWEEP_ARMS",
    "WIDTHS",
    "WIDTH_P",
    "TABLE_N",
    "TABLE_ROWS",
    "Runs",
    "SizeSweep",
    "WidthStudy",
    "PlacementTable",
    "configs",
    "glue_cooperate",
]

#: Confidence level of every interval and test of the chapter.
CONFIDENCE = 0.95
#: Equivalence margin in accuracy points (as in the remedies chapter).
MARGIN_POINTS = 1.0
#: Seeds shared by every configuration: seed ``s`` fixes the subset, the weights and the noise.
SEEDS = list(range(10))
#: Training-set sizes of the sweep; 0 stands for the whole training split.
SIZES = (50, 100, 200, 400, 0)
#: The sweep's arms: label and trial settings; the first is the reference without dropout.
SWEEP_ARMS: list[tuple[str, dict]] = [
    ("no dropout", {"placement": "none"}),
    ("dropout p = 0.5 after the last BN", {"placement": "after_bn", "p": 0.5}),
    ("dropout p = 0.3 before every weight layer", {"placement": "before_weight", "p": 0.3}),
]
#: Widths of the case-(b) study and its drop probability.
WIDTHS = (16, 64, 256)
WIDTH_P = 0.3
#: Training-set size of the placement table (one of :data:`SIZES`).
TABLE_N = 100
#: The placement table's rows: label and trial settings. The first row is the reference.
TABLE_ROWS: list[tuple[str, dict]] = [
    ("no dropout", {"placement": "none"}),
    ("after the last BN, dropout p = 0.1", {"placement": "after_bn", "p": 0.1}),
    ("after the last BN, dropout p = 0.5", {"placement": "after_bn", "p": 0.5}),
    (
        "after the last BN, Gaussian dropout p = 0.5",
        {"placement": "after_bn", "p": 0.5, "noise": "gaussian"},
    ),
    ("before every weight layer, dropout p = 0.3", {"placement": "before_weight", "p": 0.3}),
    ("before every BN, dropout p = 0.3", {"placement": "before_bn", "p": 0.3}),
    (
        "before every BN, Gaussian dropout p = 0.3",
        {"placement": "before_bn", "p": 0.3, "noise": "gaussian"},
    ),
    ("before every BN, Uout β = 0.5", {"placement": "before_bn", "noise": "uout", "beta": 0.5}),
]


def _sweep_cases() -> list[tuple[int, str, dict]]:
    out = []
    for n in SIZES:
        out += [(n, label, {"n_train": n, **changes}) for label, changes in SWEEP_ARMS]
    return out


def _width_cases() -> list[tuple[int, dict]]:
    return [
        (w, {"width": w, "placement": "before_weight", "p": WIDTH_P, "geometry": True})
        for w in WIDTHS
    ]


def _table_cases() -> list[tuple[str, dict]]:
    return [(label, {"n_train": TABLE_N, **changes}) for label, changes in TABLE_ROWS]


def configs() -> list[dict]:
    """Every trial of the chapter (duplicates once), for one parallel run."""
    cases = [c for _, _, c in _sweep_cases()] + [c for _, c in _width_cases()]
    cases += [c for _, c in _table_cases()]
    out, seen = [], set()
    for changes in cases:
        for seed in SEEDS:
            config = trial(**changes, seed=seed)
            key = tuple(sorted(config.items()))
            if key not in seen:
                seen.add(key)
                out.append(config)
    return out


def _key(config: dict) -> tuple:
    return tuple(sorted(trial(**config).items()))


class Results:
    """The chapter's trial results, looked up by settings (every seed of :data:`SEEDS`)."""

    def __init__(self, configs: list[dict], results: list[dict]) -> None:
        if len(configs) != len(results):
            raise ValueError(f"{len(configs)} configurations but {len(results)} results")
        self._by_key = {_key(c): r for c, r in zip(configs, results, strict=True)}

    def runs(self, label: str, changes: dict) -> Runs:
        """Per-seed measurements of the configuration ``changes``, in seed order."""
        missing = [s for s in SEEDS if _key({**changes, "seed": s}) not in self._by_key]
        if missing:
            raise ValueError(f"no result for {changes} with seeds {missing}")
        results = [self._by_key[_key({**changes, "seed": s})] for s in SEEDS]
        return Runs.from_results(label, changes, tuple(SEEDS), results)


@dataclass(frozen=True)
class Runs:
    """One configuration's per-seed measurements (accuracies in percent), in seed order."""

    label: str
    case: dict
    seeds: tuple[int, ...]
    test: np.ndarray
    train: np.ndarray
    shift_max: np.ndarray
    n_train: int
    n_test: int
    geometry: tuple[tuple[dict, ...], ...] = ()

    @classmethod
    def from_results(
        cls, label: str, case: dict, seeds: tuple[int, ...], results: list[dict]
    ) -> Runs:
        return cls(
            label=label,
            case=case,
            seeds=seeds,
            test=np.array([100 * r["acc"]["test"] for r in results]),
            train=np.array([100 * r["acc"]["train"] for r in results]),
            shift_max=np.array([max(s["statistic"] for s in r["shift"]) for r in results]),
            n_train=results[0]["n_train"],
            n_test=results[0]["n_test"],
            geometry=tuple(tuple(r.get("geometry", ())) for r in results),
        )

    @cached_property
    def accuracy(self) -> MeanCI:
        """Test accuracy: mean and t interval over the seeds."""
        return mean_ci(self.test, CONFIDENCE)

    def layer(self, index: int, key: str) -> np.ndarray:
        """Per-seed value of the geometry field ``key`` at BN layer ``index`` (1-based)."""
        return np.array(
            [next(g[key] for g in rows if g["index"] == index) for rows in self.geometry]
        )


def compare(a: Runs, b: Runs) -> PairedComparison:
    """Test accuracy of ``a`` minus ``b`` in points, paired by seed, with the equivalence margin."""
    if a.seeds != b.seeds:
        raise ValueError(f"paired comparisons need the same seeds, got {a.seeds} and {b.seeds}")
    return compare_paired(a.test, b.test, margin=MARGIN_POINTS, confidence=CONFIDENCE)


def _list(items: list[str]) -> str:
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _diff_cell(c: PairedComparison) -> str:
    return f"{c.mean_diff:+.1f} [{c.low:+.1f}, {c.high:+.1f}]"


_VERDICT_WORDS = {
    "better": "helps",
    "worse": "hurts",
    "equivalent": f"makes no difference beyond ±{MARGIN_POINTS:.1f} points (equivalent)",
    "within noise": "makes no difference the data can detect",
}


class SizeSweep:
    """Every arm of :data:`SWEEP_ARMS` at every size of :data:`SIZES`, against no dropout."""

    def __init__(self, results: Results) -> None:
        self.sizes = list(SIZES)
        self.arms = {
            n: [results.runs(label, {"n_train": n, **c}) for label, c in SWEEP_ARMS]
            for n in self.sizes
        }
        self.labels = [label for label, _ in SWEEP_ARMS]

    def size(self, n: int) -> int:
        """The number of training images of sweep size ``n`` (0 is the whole split)."""
        return self.arms[n][0].n_train

    def comparison(self, n: int, arm: int) -> PairedComparison:
        """Arm ``arm`` (index into :data:`SWEEP_ARMS`, 1 or more) minus no dropout at size ``n``."""
        return compare(self.arms[n][arm], self.arms[n][0])

    def verdicts(self, arm: int) -> dict[int, str]:
        return {n: self.comparison(n, arm).verdict for n in self.sizes}

    def trend(self, arm: int) -> Trend:
        """Spearman test of the per-seed gain of arm ``arm`` against the training-set size."""
        x = [self.size(n) for n in self.sizes for _ in SEEDS]
        y = [d for n in self.sizes for d in self.arms[n][arm].test - self.arms[n][0].test]
        return trend_test(x, y, alpha=1 - CONFIDENCE)

    def sentence(self, arm: int) -> str:
        """Where the arm helps, hurts or makes no difference, by training-set size."""
        groups: dict[str, list[str]] = {}
        for n, verdict in self.verdicts(arm).items():
            groups.setdefault(verdict, []).append(f"{self.size(n):,}")
        parts = [
            f"{_VERDICT_WORDS[v]} with {_list(groups[v])} training images"
            for v in ("better", "worse", "equivalent", "within noise")
            if v in groups
        ]
        return _list(parts)

    def budget_sentence(self) -> str:
        """What the fixed step budget means for the verdicts: epochs, and convergence where dropout hurts."""
        steps, batch = COOP_TRIAL["steps"], COOP_TRIAL["batch_size"]
        small, full = min(self.sizes, key=self.size), max(self.sizes, key=self.size)
        text = (
            f"every network gets the same {steps} steps of {batch} images, "
            f"{steps * batch / self.size(full):.1f} epochs on the whole split of "
            f"{self.size(full):,} images and {steps * batch / self.size(small):.0f} on the "
            f"{self.size(small):,}-image set"
        )
        hurt = [
            (a, n)
            for a in range(1, len(self.labels))
            for n in self.sizes
            if self.comparison(n, a).verdict == "worse"
        ]
        if not hurt:
            return text
        slower: dict[str, list[tuple[int, float, float]]] = {}
        fitted: dict[str, list[tuple[int, float, float]]] = {}
        for a, n in hurt:
            drop, base = self.arms[n][a], self.arms[n][0]
            c = compare_paired(drop.train, base.train, confidence=CONFIDENCE)
            row = (self.size(n), float(np.mean(drop.train)), float(np.mean(base.train)))
            (slower if c.verdict == "worse" else fitted).setdefault(self.labels[a], []).append(row)

        def items(groups: dict[str, list[tuple[int, float, float]]]) -> str:
            return _list(
                [
                    f"{label} with {_list([f'{n:,}' for n, _, _ in rows])} images ("
                    + _list([f"{d:.1f}%" for _, d, _ in rows])
                    + " against "
                    + _list([f"{b:.1f}%" for _, _, b in rows])
                    + " without dropout)"
                    for label, rows in groups.items()
                ]
            )

        if slower:
            text += (
                "; where dropout hurts, the network with dropout also fits its own training images "
                "less well (training accuracy, paired by seed: " + items(slower) + "), so part of "
                "the loss may be slower convergence within this budget rather than a cost that "
                "would remain with longer training, which these runs do not test"
            )
        if fitted:
            text += (
                "; where dropout hurts with its training accuracy not detectably lower ("
                + items(fitted)
                + "), the training accuracy gives no sign of slower convergence"
            )
        return text

    def remark_verdict(self) -> str:
        """Whether the data support "dropout helps a BN network when data are scarce"."""
        helped = {
            self.labels[a]: [n for n, v in self.verdicts(a).items() if v == "better"]
            for a in range(1, len(self.labels))
        }
        small = min(self.sizes, key=self.size)
        yes = [label for label, ns in helped.items() if ns]
        if not yes:
            return (
                "the data do not support the remark: no placement of dropout tried here ("
                + _list(list(helped))
                + ") made this BN network more accurate at any training-set size"
            )
        no = [label for label, ns in helped.items() if not ns]
        at_small = [label for label in yes if small in helped[label]]
        text = "the data support the remark for " + _list(
            [
                f"{label} (more accurate with {_list([f'{self.size(n):,}' for n in helped[label]])} "
                "training images)"
                for label in yes
            ]
        )
        if no:
            text += ", and not for " + _list(no)
        if not at_small:
            text += f", although not with the smallest set ({self.size(small):,} images)"
        return text

    def table(self) -> str:
        conf = f"{100 * CONFIDENCE:g}%"
        headers = ["training images", f"no dropout: test accuracy (%) [{conf} CI]"]
        for label in self.labels[1:]:
            headers += [f"{label}: difference (points) [{conf} CI]", "verdict"]
        rows = []
        for n in self.sizes:
            row = [f"{self.size(n):,}", self.arms[n][0].accuracy.cell()]
            for a in range(1, len(self.labels)):
                c = self.comparison(n, a)
                row += [_diff_cell(c), c.cell(unit=" points")]
            rows.append(row)
        return markdown_table(headers, rows)


#: Geometry fields the width study reports, with their names in tables and sentences.
GEOMETRY_FIELDS = {
    "d_cos2": "d cos²θ",
    "rho": "ρ",
    "gain": "correlation gain (measured)",
    "gain_shared": "correlation gain (shared ρ)",
    "predicted": "shift, paper's formula (shared ρ)",
    "predicted_exact": "shift, from the covariance",
    "measured": "shift, measured",
}


class WidthStudy:
    """Case-(b) networks at every width of :data:`WIDTHS`, the width mechanism layer by layer."""

    def __init__(self, results: Results) -> None:
        self.widths = list(WIDTHS)
        self.runs = {w: results.runs(f"width {w}", changes) for w, changes in _width_cases()}
        first = self.runs[self.widths[0]].geometry[0]
        self.layers = [g["index"] for g in first]
        #: Layers whose fan-in is the width (the first layer's fan-in is the input's size).
        self.wide_layers = [
            i
            for i in self.layers
            if {self.runs[w].layer(i, "d")[0] for w in self.widths} == set(self.widths)
        ]

    def values(self, key: str, layer: int | None = None) -> dict[int, np.ndarray]:
        """Per-seed ``key`` at every width: one layer, or the mean over the wide layers."""
        layers = [layer] if layer is not None else self.wide_layers
        return {
            w: np.mean([self.runs[w].layer(i, key) for i in layers], axis=0) for w in self.widths
        }

    def mean(self, key: str, width: int, layer: int | None = None) -> MeanCI:
        return mean_ci(self.values(key, layer)[width], CONFIDENCE)

    def trend(self, key: str, layer: int | None = None) -> Trend:
        """Spearman test of ``key`` (mean over the wide layers, per seed) against the width."""
        values = self.values(key, layer)
        x = [w for w in self.widths for _ in SEEDS]
        y = [v for w in self.widths for v in values[w]]
        return trend_test(x, y, alpha=1 - CONFIDENCE)

    def shrinks(self, key: str) -> bool:
        """Whether the shift statistic ``key`` decreases with width (a significant trend)."""
        return self.trend(key).verdict == "decreasing"

    def table(self) -> str:
        conf = f"{100 * CONFIDENCE:g}%"
        headers = ["width", "BN layer", "fan-in d", *GEOMETRY_FIELDS.values()]
        rows = []
        for w in self.widths:
            for i in self.layers:
                d = int(self.runs[w].layer(i, "d")[0])
                cells = []
                for key in GEOMETRY_FIELDS:
                    m = self.mean(key, w, i)
                    cells.append(m.cell(2 if key != "rho" else 3))
                rows.append([w, i, d, *cells])
        note = f"means over {len(SEEDS)} seeds [{conf} CI]"
        return markdown_table(
            [*headers[:3], *[f"{h}, {note}" if h == headers[3] else h for h in headers[3:]]], rows
        )

    def gain_sentence(self) -> str:
        """The measured correlation gain against the shared-ρ gain at the largest width."""
        wide = self.widths[-1]
        values = (self.values("gain")[wide], self.values("gain_shared")[wide])
        r = compare_ratio(*values, confidence=CONFIDENCE)
        return f"at width {wide} the measured gain is {r.sentence('the gain with a shared ρ')}"

    def ratio(self, key: str) -> GeometricMeanCI:
        """Measured statistic over the prediction ``key``, per seed, wide layers, every width."""
        measured, predicted = self.values("measured"), self.values(key)
        ratios = np.concatenate([measured[w] / predicted[w] for w in self.widths])
        return geometric_mean_ci(ratios, CONFIDENCE)

    def closer(self) -> str:
        """Which prediction comes closer to the measured statistic (geometric mean of ratios)."""
        exact = abs(np.log(self.ratio("predicted_exact").gmean))
        shared = abs(np.log(self.ratio("predicted").gmean))
        if exact < shared:
            return (
                "the prediction from the inputs' full covariance comes closer to the measurement "
                "than the formula with their mean correlation"
            )
        return (
            "the formula with the inputs' mean correlation comes closer to the measurement than "
            "the prediction from their full covariance"
        )

    def verdict(self) -> str:
        """Does the measured shift shrink with width, and which prediction agrees with that?"""
        measured = self.shrinks("measured")
        head = (
            "the measured shift shrinks with width"
            if measured
            else "the measured shift does not shrink detectably with width"
        )
        names = {
            "predicted": "the paper's formula with one shared correlation ρ",
            "predicted_exact": "the course's extension of it to the inputs' full covariance",
        }
        says = {key: self.shrinks(key) for key in names}

        def predicts(shrinking: bool) -> str:
            return "predicts a shrinking shift" if shrinking else "predicts no shrinking"

        tail = [
            f"{names[k]} {predicts(v)}, "
            + ("in agreement with the measurement" if v == measured else "against the measurement")
            for k, v in says.items()
        ]
        return head + "; " + ", while ".join(tail)


def _where(case: dict) -> str:
    return {
        "none": "none",
        "after_bn": "after the last BN",
        "before_weight": "before every weight layer",
        "before_bn": "before every BN",
    }[case.get("placement", "none")]


def _kind(case: dict) -> str:
    if case.get("placement", "none") == "none":
        return "–"
    return {"bernoulli": "dropout", "gaussian": "Gaussian dropout", "uout": "Uout"}[
        case.get("noise", "bernoulli")
    ]


def _amount(case: dict) -> str:
    if case.get("placement", "none") == "none":
        return "–"
    if case.get("noise") == "uout":
        return f"β = {case['beta']:g}"
    return f"p = {case['p']:g}"


class PlacementTable:
    """Every row of :data:`TABLE_ROWS` at :data:`TABLE_N` images, against the first row."""

    def __init__(self, results: Results) -> None:
        self.rows = [results.runs(label, changes) for label, changes in _table_cases()]
        self.baseline = self.rows[0]

    def comparison(self, row: Runs) -> PairedComparison:
        return compare(row, self.baseline)

    def by_verdict(self) -> dict[str, list[Runs]]:
        out: dict[str, list[Runs]] = {}
        for row in self.rows[1:]:
            out.setdefault(self.comparison(row).verdict, []).append(row)
        return out

    def best(self) -> Runs:
        """The row with the highest mean test accuracy."""
        return max(self.rows, key=lambda r: r.accuracy.mean)

    def best_sentence(self) -> str:
        """Which row has the highest mean test accuracy, beside the network without dropout."""
        best, base = self.best(), self.baseline.accuracy.mean
        if best is self.baseline:
            return f"none has a higher mean test accuracy than the network without dropout ({base:.1f}%)"
        return (
            f"the highest mean test accuracy is that of {_describe(best)} "
            f"({best.accuracy.mean:.1f}%, against {base:.1f}% without dropout)"
        )

    def table(self) -> str:
        conf = f"{100 * CONFIDENCE:g}%"
        rows = []
        for r in self.rows:
            c = None if r is self.baseline else self.comparison(r)
            rows.append(
                [
                    _where(r.case),
                    _kind(r.case),
                    _amount(r.case),
                    r.accuracy.cell(),
                    "" if c is None else _diff_cell(c),
                    "(reference)" if c is None else c.cell(unit=" points"),
                    f"{np.exp(np.log(r.shift_max).mean()):.2f}",
                ]
            )
        return markdown_table(
            [
                "where",
                "which",
                "how much",
                f"test accuracy (%) [{conf} CI]",
                f"difference to no dropout (points) [{conf} CI]",
                "verdict against no dropout",
                "largest shift statistic (geometric mean)",
            ],
            rows,
        )

    def advice(self) -> str:
        """The rows that beat, and those that lose to, the network without dropout."""
        groups = self.by_verdict()

        def describe(rows: list[Runs]) -> str:
            return _list([_describe(r) for r in rows])

        parts = []
        if groups.get("better"):
            parts.append(f"more accurate than no dropout: {describe(groups['better'])}")
        else:
            parts.append("no row is more accurate than the network without dropout")
        if groups.get("worse"):
            parts.append(f"less accurate: {describe(groups['worse'])}")
        if groups.get("equivalent"):
            parts.append(
                f"equivalent within ±{MARGIN_POINTS:.1f} points: {describe(groups['equivalent'])}"
            )
        if groups.get("within noise"):
            parts.append(f"within the seed-to-seed noise: {describe(groups['within noise'])}")
        return "; ".join(parts)


def _mean_text(values: np.ndarray, digits: int = 1) -> str:
    return f"{float(np.mean(values)):.{digits}f}"


def glue_cooperate(sweep: SizeSweep, width: WidthStudy, table: PlacementTable) -> None:
    """Glue every number and verdict phrase of the cooperation chapter's prose."""
    base = COOP_TRIAL
    glue_number("co_seeds", len(SEEDS))
    glue_number("co_conf", 100 * CONFIDENCE)
    glue_number("co_margin", MARGIN_POINTS)
    for key in ("depth", "width", "steps", "batch_size", "lr"):
        glue_number(f"co_{key}", base[key])

    # the data-size sweep
    small, full = min(sweep.sizes, key=sweep.size), max(sweep.sizes, key=sweep.size)
    glue_number("co_n_small", sweep.size(small))
    glue_number("co_n_full", sweep.size(full))
    glue_number("co_n_sizes", len(sweep.sizes))
    glue_number("co_n_test", table.baseline.n_test)
    after, weight = SWEEP_ARMS[1][1], SWEEP_ARMS[2][1]
    glue_number("co_after_p", after["p"])
    glue_number("co_weight_p", weight["p"])
    glue_text("co_after_sizes", sweep.sentence(1))
    glue_text("co_weight_sizes", sweep.sentence(2))
    glue_text("co_after_trend", sweep.trend(1).sentence("the gain from dropout after the last BN"))
    glue_text(
        "co_weight_trend",
        sweep.trend(2).sentence("the gain from dropout before every weight layer"),
    )
    glue_text("co_remark", sweep.remark_verdict())
    glue_text("co_budget", sweep.budget_sentence())
    glue_number("co_small_base", sweep.arms[small][0].accuracy.mean)
    glue_number("co_small_weight", sweep.arms[small][2].accuracy.mean)
    glue_number("co_full_base", sweep.arms[full][0].accuracy.mean)
    glue_text("co_small_weight_vs", sweep.comparison(small, 2).sentence())
    glue_text("co_full_weight_vs", sweep.comparison(full, 2).sentence())
    glue_number("co_small_gap", np.mean(sweep.arms[small][0].train - sweep.arms[small][0].test))
    glue_number("co_full_gap", np.mean(sweep.arms[full][0].train - sweep.arms[full][0].test))

    # the width study
    narrow, wide = width.widths[0], width.widths[-1]
    glue_number("co_w_narrow", narrow)
    glue_number("co_w_wide", wide)
    glue_number("co_w_p", WIDTH_P)
    glue_number("co_w_first_d", width.runs[narrow].layer(width.layers[0], "d")[0])
    glue_text("co_w_wide_layers", _list([str(i) for i in width.wide_layers]))
    for key in ("d_cos2", "gain", "gain_shared", "rho", "measured", "predicted", "predicted_exact"):
        values = width.values(key)
        digits = 3 if key == "rho" else 2
        glue_text(f"co_w_{key}_narrow", _mean_text(values[narrow], digits))
        glue_text(f"co_w_{key}_wide", _mean_text(values[wide], digits))
    glue_text("co_w_trend_measured", width.trend("measured").sentence("the measured statistic"))
    glue_text("co_w_trend_shared", width.trend("predicted").sentence("the shared-ρ prediction"))
    glue_text(
        "co_w_trend_exact", width.trend("predicted_exact").sentence("the covariance prediction")
    )
    glue_text("co_w_trend_dcos2", width.trend("d_cos2").sentence("d cos²θ"))
    glue_text("co_w_trend_rho", width.trend("rho").sentence("ρ"))
    glue_text("co_w_verdict", width.verdict())
    glue_text("co_w_gain_vs_shared", width.gain_sentence())
    glue_text("co_w_closer", width.closer())
    for key, name in (
        ("predicted_exact", "the covariance prediction"),
        ("predicted", "the formula's"),
    ):
        r = width.ratio(key)
        glue_text(
            f"co_w_ratio_{key}",
            f"{r.gmean:.2f} times {name} (geometric mean over {r.n} networks, "
            f"{100 * r.confidence:g}% CI {r.low:.2f} to {r.high:.2f})",
        )

    # the placement table
    glue_number("co_table_n", table.baseline.n_train)
    glue_text("co_advice", table.advice())
    glue_text("co_best", table.best_sentence())
    glue_placement_advice(table)


def _describe(r: Runs) -> str:
    return f"{_kind(r.case)} {_amount(r.case)} {_where(r.case)}"


def _pairs(rows: list[Runs], key: str) -> list[tuple[Runs, Runs]]:
    """Pairs of rows whose settings differ in ``key`` alone (kinds: at the same ``p``, no Uout)."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            same = {k: v for k, v in a.case.items() if k != key}
            other = {k: v for k, v in b.case.items() if k != key}
            kinds = {a.case.get("noise", "bernoulli"), b.case.get("noise", "bernoulli")}
            if key == "noise" and "uout" in kinds:
                continue  # Uout has no drop probability to match
            if same == other and a.case.get(key, "bernoulli") != b.case.get(key, "bernoulli"):
                out.append((a, b))
    return out


def _pair_sentences(rows: list[Runs], key: str) -> str:
    parts = []
    for a, b in _pairs(rows, key):
        c = compare(b, a)
        parts.append(f"{_describe(b)} against {_describe(a)}: {c.sentence()}")
    return "; ".join(parts) if parts else "no pair of rows differs in this alone"


def _where_sentence(table: PlacementTable) -> str:
    parts = []
    for where in dict.fromkeys(_where(r.case) for r in table.rows[1:]):
        rows = [r for r in table.rows[1:] if _where(r.case) == where]
        verdicts = [table.comparison(r).verdict for r in rows]
        counts = [
            f"{verdicts.count(v)} {v}"
            for v in ("better", "worse", "equivalent", "within noise")
            if v in verdicts
        ]
        parts.append(f"{where}, {_list(counts)} (of {len(rows)})")
    return "; ".join(parts)


def glue_placement_advice(table: PlacementTable) -> None:
    """Glue the placement table's advice: where, which kind, how much, each from paired tests."""
    rows = table.rows[1:]
    glue_text("co_where", _where_sentence(table))
    glue_text("co_which", _pair_sentences(rows, "noise"))
    glue_text("co_how_much", _pair_sentences(rows, "p"))
