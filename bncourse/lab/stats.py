"""The statistics that the book's comparisons go through, each result able to state itself.

Every function takes plain numbers (one value per seed, or two aligned lists for configurations
that share seeds) and returns a small frozen dataclass with the estimate, its interval and, where
there is a test, its p-value and a verdict. ``sentence()`` writes the English phrase the book
glues into its prose, built from the computed test, so the words change when the data change::

    from bncourse.lab.stats import compare_paired
    c = compare_paired(acc_remedy, acc_baseline, margin=1.0)  # points, seeds aligned
    c.verdict      # "better", "worse", "within noise" or "equivalent"
    c.sentence()   # "higher by 2.1 points (95% CI 1.2 to 3.0 points, p = 0.001)"

Intervals come from the t-distribution (SciPy's quantiles); heavy-tailed positive ratios, such as
the variance-shift statistic, get a geometric mean with a t interval on the logarithms or a
bootstrap with a fixed seed. "No difference" is never read off a failed significance test: it is
an equivalence test (two one-sided tests, TOST) against a stated margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _st

__all__ = [
    "MeanCI",
    "PairedComparison",
    "GeometricMeanCI",
    "RatioComparison",
    "Equivalence",
    "Trend",
    "mean_ci",
    "compare_paired",
    "compare_ratio",
    "geometric_mean_ci",
    "equivalence_test",
    "trend_test",
    "format_number",
]


def _check_confidence(confidence: float, name: str = "confidence") -> float:
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {confidence!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {confidence!r}")
    return value


def _sample(values: Sequence[float], name: str, minimum: int = 2) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite numbers only")
    return array


def _pair(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> np.ndarray:
    x, y = _sample(a, names[0]), _sample(b, names[1])
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be paired (same seeds, same length), "
            f"got {x.size} and {y.size} values"
        )
    return x - y


def format_number(value: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals."""
    return f"{value:.{digits}f}"


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _percent(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def _t_interval(mean: float, sd: float, n: int, confidence: float) -> tuple[float, float]:
    if sd == 0.0:
        return mean, mean
    low, high = _st.t.interval(confidence, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
    return float(low), float(high)


# --- mean of one sample -------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a t-distribution confidence interval."""

    mean: float
    low: float
    high: float
    sd: float
    n: int
    confidence: float

    def sentence(self, digits: int = 1, unit: str = "") -> str:
        """``"97.3 (95% CI 96.8 to 97.8, 10 seeds)"``."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        return (
            f"{f(self.mean)}{unit} ({_percent(self.confidence)} CI {f(self.low)} to "
            f"{f(self.high)}{unit}, {self.n} seeds)"
        )

    def cell(self, digits: int = 1) -> str:
        """A table cell: ``"97.3 [96.8, 97.8]"``."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` and its ``confidence`` interval from Student's t (n - 1 df)."""
    confidence = _check_confidence(confidence)
    x = _sample(values, "values")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    low, high = _t_interval(mean, sd, x.size, confidence)
    return MeanCI(mean, low, high, sd, int(x.size), confidence)


# --- equivalence (TOST) -------------------------------------------------------------------


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests of ``|mean difference| < margin`` and the plain test of zero.

    ``verdict`` is ``"equivalent"`` when both one-sided tests reject at ``alpha`` (the
    ``1 - 2 alpha`` interval lies inside ``(-margin, margin)``), otherwise ``"different"`` when the
    two-sided test rejects a zero difference, otherwise ``"inconclusive"``: the data neither show
    a difference nor rule out one as large as the margin.
    """

    mean_diff: float
    margin: float
    low: float
    high: float
    p_equivalence: float
    p_difference: float
    n: int
    alpha: float

    @property
    def verdict(self) -> Literal["equivalent", "different", "inconclusive"]:
        """``"equivalent"``, ``"different"`` or ``"inconclusive"`` (see the class docstring)."""
        if self.p_equivalence < self.alpha:
            return "equivalent"
        if self.p_difference < self.alpha:
            return "different"
        return "inconclusive"

    def sentence(self, digits: int = 1, unit: str = " points") -> str:
        """The verdict as a phrase with the margin and the interval that decided it."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        ci = f"{_percent(1 - 2 * self.alpha)} CI {f(self.low)} to {f(self.high)}{unit}"
        m = f"±{f(self.margin)}{unit}"
        if self.verdict == "equivalent":
            return f"equivalent within {m} ({ci}, TOST {_format_p(self.p_equivalence)})"
        if self.verdict == "different":
            return (
                f"different by {f(self.mean_diff)}{unit}, and not shown equivalent within {m} "
                f"({ci}, {_format_p(self.p_difference)})"
            )
        return (
            f"inconclusive: neither a difference nor equivalence within {m} is shown "
            f"({ci}, {self.n} seeds)"
        )


def _tost(d: np.ndarray, margin: float, alpha: float) -> Equivalence:
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0.0:
        p_lower = 0.0 if mean > -margin else 1.0
        p_upper = 0.0 if mean < margin else 1.0
        p_diff = 1.0 if mean == 0.0 else 0.0
    else:
        p_lower = float(_st.t.sf((mean + margin) / se, df))  # H0: mean <= -margin
        p_upper = float(_st.t.cdf((mean - margin) / se, df))  # H0: mean >= +margin
        p_diff = float(2 * _st.t.sf(abs(mean) / se, df))
    low, high = _t_interval(mean, sd, n, 1 - 2 * alpha)
    return Equivalence(mean, margin, low, high, max(p_lower, p_upper), p_diff, n, alpha)


def equivalence_test(
    a: Sequence[float],
    b: Sequence[float] | None = None,
    *,
    margin: float,
    alpha: float = 0.05,
) -> Equivalence:
    """TOST of the mean of ``a`` (or of the paired differences ``a - b``) within ``±margin``."""
    alpha = _check_confidence(alpha, "alpha")
    if not alpha < 0.5:
        raise ValueError(f"alpha must be below 0.5 for two one-sided tests, got {alpha!r}")
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number, got {margin!r}")
    d = _sample(a, "a") if b is None else _pair(a, b, ("a", "b"))
    return _tost(d, float(margin), alpha)


# --- paired comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class PairedComparison:
    """Mean of the paired differences ``a - b`` (shared seeds), its t interval and p-value.

    With a ``margin``, ``equivalence`` holds the TOST of the same differences, and the verdict
    ``"equivalent"`` replaces ``"within noise"`` when the interval rules out differences as
    large as the margin.
    """

    mean_diff: float
    low: float
    high: float
    p_value: float
    sd_diff: float
    n: int
    confidence: float
    equivalence: Equivalence | None = None

    @property
    def significant(self) -> bool:
        """Whether the two-sided test rejects a zero difference at ``1 - confidence``."""
        return self.p_value < 1 - self.confidence

    @property
    def verdict(self) -> Literal["better", "worse", "within noise", "equivalent"]:
        """``"equivalent"`` (TOST), else ``"better"``/``"worse"`` (t test), else ``"within noise"``."""
        if self.equivalence is not None and self.equivalence.verdict == "equivalent":
            return "equivalent"
        if self.significant:
            return "better" if self.mean_diff > 0 else "worse"
        return "within noise"

    def cell(self, digits: int = 1, unit: str = "") -> str:
        """A table cell for the verdict: ``"better"``, ``"equivalent within ±1.0"``, ..."""
        if self.verdict == "equivalent":
            return f"equivalent within ±{format_number(self.equivalence.margin, digits)}{unit}"
        return self.verdict

    def sentence(
        self,
        digits: int = 1,
        unit: str = " points",
        higher: str = "higher",
        lower: str = "lower",
    ) -> str:
        """The result phrase: direction and size, interval, p-value; or equivalence, or noise."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        ci = f"{_percent(self.confidence)} CI {f(self.low)} to {f(self.high)}{unit}"
        if self.verdict == "equivalent":
            return self.equivalence.sentence(digits, unit)
        if self.verdict in ("better", "worse"):
            word = higher if self.verdict == "better" else lower
            if self.verdict == "worse":  # "lower by 4.9 (CI 1.8 to 7.9)": the interval of the gap
                ci = f"{_percent(self.confidence)} CI {f(-self.high)} to {f(-self.low)}{unit}"
            return f"{word} by {f(abs(self.mean_diff))}{unit} ({ci}, {_format_p(self.p_value)})"
        tail = ""
        if self.equivalence is not None:
            tail = (
                f"; a difference as large as ±{f(self.equivalence.margin)}{unit} is not ruled out"
            )
        return (
            f"within the seed-to-seed noise ({f(self.mean_diff)}{unit}, {ci}, "
            f"{_format_p(self.p_value)}{tail})"
        )


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    margin: float | None = None,
    confidence: float = 0.95,
) -> PairedComparison:
    """Paired comparison of ``a`` and ``b`` (same seeds, same order): ``a - b`` with a t test.

    ``margin`` (same unit as the values) adds an equivalence test at ``alpha = 1 - confidence``.
    """
    confidence = _check_confidence(confidence)
    d = _pair(a, b, ("a", "b"))
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    low, high = _t_interval(mean, sd, n, confidence)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * _st.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    equivalence = None
    if margin is not None:
        equivalence = equivalence_test(d, margin=margin, alpha=1 - confidence)
    return PairedComparison(mean, low, high, p, sd, n, confidence, equivalence)


# --- geometric mean of positive ratios ----------------------------------------------------


@dataclass(frozen=True)
class GeometricMeanCI:
    """Geometric mean of positive values with an interval, and the median with its own.

    ``median_low``/``median_high`` are NaN when there are too few values for an order-statistic
    interval at this confidence (fewer than 6 at 95%).
    """

    gmean: float
    low: float
    high: float
    median: float
    median_low: float
    median_high: float
    n: int
    confidence: float
    method: Literal["t", "bootstrap"]

    def sentence(self, digits: int = 2) -> str:
        """``"1.43 (geometric mean, 95% CI 1.21 to 1.70; median 1.40)"``."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        how = "t interval on logarithms" if self.method == "t" else "bootstrap"
        return (
            f"{f(self.gmean)} (geometric mean over {self.n} seeds, {_percent(self.confidence)} "
            f"CI {f(self.low)} to {f(self.high)} by {how}; median {f(self.median)})"
        )

    def cell(self, digits: int = 2) -> str:
        """A table cell: ``"1.43 [1.21, 1.70]"``."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        return f"{f(self.gmean)} [{f(self.low)}, {f(self.high)}]"


def geometric_mean_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    method: Literal["t", "bootstrap"] = "t",
    seed: int = 0,
    n_resamples: int = 2000,
) -> GeometricMeanCI:
    """Geometric mean of positive ``values`` with a ``confidence`` interval, and the median.

    ``method="t"``: the t interval of the mean of ``log(values)``, exponentiated (exact for
    log-normal data). ``method="bootstrap"``: ``scipy.stats.bootstrap`` (BCa) with ``seed``.
    The median's interval is the distribution-free one from order statistics
    (``scipy.stats.quantile_test``); it is NaN when ``n`` is too small for ``confidence``.
    """
    confidence = _check_confidence(confidence)
    x = _sample(values, "values")
    if np.any(x <= 0):
        raise ValueError("values must all be positive for a geometric mean")
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    logs = np.log(x)
    g = float(np.exp(logs.mean()))
    if method == "t":
        low, high = (
            math.exp(v) for v in _t_interval(logs.mean(), logs.std(ddof=1), x.size, confidence)
        )
    else:
        res = _st.bootstrap(
            (logs,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
        low, high = math.exp(res.confidence_interval.low), math.exp(res.confidence_interval.high)
    median = float(np.median(x))
    med = _st.quantile_test(x, q=median, p=0.5).confidence_interval(confidence)
    return GeometricMeanCI(
        g,
        float(low),
        float(high),
        median,
        float(med.low),
        float(med.high),
        int(x.size),
        confidence,
        method,
    )


@dataclass(frozen=True)
class RatioComparison:
    """Geometric mean of the paired ratios ``a / b`` (shared seeds), from a t test on the logs."""

    ratio: float
    low: float
    high: float
    p_value: float
    n: int
    confidence: float

    @property
    def verdict(self) -> Literal["larger", "smaller", "within noise"]:
        """``"larger"``/``"smaller"`` when the interval of the ratio excludes 1, else noise."""
        if self.p_value < 1 - self.confidence:
            return "larger" if self.ratio > 1 else "smaller"
        return "within noise"

    def sentence(self, reference: str = "the reference", digits: int = 2) -> str:
        """``"1.83 times the reference (95% CI 1.50 to 2.23, p < 0.001)"`` or the noise phrase."""
        f = lambda v: format_number(v, digits)  # noqa: E731
        ci = f"{_percent(self.confidence)} CI {f(self.low)} to {f(self.high)}"
        if self.verdict == "within noise":
            return (
                f"not distinguishable from {reference} (ratio {f(self.ratio)}, {ci}, "
                f"{_format_p(self.p_value)})"
            )
        return f"{f(self.ratio)} times {reference} ({ci}, {_format_p(self.p_value)})"


def compare_ratio(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> RatioComparison:
    """Paired comparison of positive, heavy-tailed ``a`` and ``b`` (same seeds) on the log scale."""
    x, y = _sample(a, "a"), _sample(b, "b")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a and b must all be positive for a ratio")
    c = compare_paired(np.log(x), np.log(y), confidence=confidence)
    return RatioComparison(
        math.exp(c.mean_diff), math.exp(c.low), math.exp(c.high), c.p_value, c.n, c.confidence
    )


# --- monotone trend -----------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """Spearman's rank correlation of ``y`` with ``x`` and its two-sided p-value."""

    rho: float
    p_value: float
    n: int
    alpha: float

    @property
    def verdict(self) -> Literal["increasing", "decreasing", "no monotone trend shown"]:
        """The direction when the test rejects ``rho = 0`` at ``alpha``, else no trend shown."""
        if self.p_value < self.alpha:
            return "increasing" if self.rho > 0 else "decreasing"
        return "no monotone trend shown"

    def sentence(self, what: str = "the value") -> str:
        """``"the value increases (Spearman ρ = 0.81, p < 0.001, 40 runs)"``."""
        tail = f"(Spearman ρ = {self.rho:.2f}, {_format_p(self.p_value)}, {self.n} runs)"
        if self.verdict == "increasing":
            return f"{what} increases {tail}"
        if self.verdict == "decreasing":
            return f"{what} decreases {tail}"
        return f"{what} shows no monotone trend that the data can detect {tail}"


def trend_test(x: Sequence[float], y: Sequence[float], *, alpha: float = 0.05) -> Trend:
    """Spearman test of a monotone trend of ``y`` in ``x`` (one pair per run: repeat x per seed)."""
    alpha = _check_confidence(alpha, "alpha")
    xs, ys = _sample(x, "x", minimum=3), _sample(y, "y", minimum=3)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    if np.all(xs == xs[0]) or np.all(ys == ys[0]):
        raise ValueError("x and y must each take more than one value for a rank correlation")
    res = _st.spearmanr(xs, ys)
    return Trend(float(res.statistic), float(res.pvalue), int(xs.size), alpha)
