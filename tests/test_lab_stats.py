"""The statistics layer against known distributions, SciPy's own tests and bad input.

Coverage checks draw many intervals from a known distribution with a fixed seed and require the
number that cover the truth to lie inside the 99.9% binomial interval around the nominal level, so
a correct interval fails with probability 0.001 per check (and, the seed being fixed, never twice).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bncourse.lab.stats import (
    compare_paired,
    compare_ratio,
    equivalence_test,
    geometric_mean_ci,
    mean_ci,
    trend_test,
)

REPS = 2000
NOMINAL = 0.95


def binomial_bounds(reps: int, probability: float, level: float = 0.999) -> tuple[float, float]:
    """Counts between which a Binomial(reps, probability) falls with probability ``level``."""
    return stats.binom.interval(level, reps, probability)


def assert_coverage(hits: int, reps: int = REPS, nominal: float = NOMINAL) -> None:
    low, high = binomial_bounds(reps, nominal)
    assert low <= hits <= high, f"{hits}/{reps} intervals covered the truth; expected {low}-{high}"


# --- coverage on simulated data -----------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10])
def test_t_interval_covers_the_true_mean_at_its_nominal_rate(n):
    rng = np.random.default_rng(1)
    true_mean = 2.5
    samples = rng.normal(true_mean, 3.0, size=(REPS, n))
    hits = 0
    for x in samples:
        ci = mean_ci(x, NOMINAL)
        hits += ci.low <= true_mean <= ci.high
    assert_coverage(hits)


def test_a_wider_confidence_covers_more_often():
    rng = np.random.default_rng(2)
    samples = rng.normal(0.0, 1.0, size=(REPS, 5))
    hits = sum(mean_ci(x, 0.8).low <= 0.0 <= mean_ci(x, 0.8).high for x in samples)
    assert_coverage(hits, nominal=0.8)


def test_paired_interval_covers_the_true_difference_on_correlated_seeds():
    rng = np.random.default_rng(3)
    n, true_diff = 10, 0.7
    hits = 0
    for _ in range(REPS):
        seed_effect = rng.normal(0.0, 5.0, size=n)  # shared by both configurations
        a = seed_effect + true_diff + rng.normal(0.0, 1.0, size=n)
        b = seed_effect + rng.normal(0.0, 1.0, size=n)
        c = compare_paired(a, b, confidence=NOMINAL)
        hits += c.low <= true_diff <= c.high
    assert_coverage(hits)


def test_pairing_removes_the_shared_seed_effect():
    rng = np.random.default_rng(4)
    seed_effect = rng.normal(0.0, 5.0, size=10)
    a = seed_effect + 1.0 + rng.normal(0.0, 0.2, size=10)
    b = seed_effect + rng.normal(0.0, 0.2, size=10)
    paired = compare_paired(a, b)
    assert paired.verdict == "better"
    assert paired.high - paired.low < mean_ci(a).high - mean_ci(a).low


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_geometric_mean_interval_covers_the_log_normal_median(method):
    # exp(mu) is both the median and the geometric mean of a log-normal distribution.
    rng = np.random.default_rng(5)
    mu, sigma, n = 0.4, 1.2, 10
    reps = REPS if method == "t" else 400
    hits = median_hits = 0
    for x in rng.lognormal(mu, sigma, size=(reps, n)):
        ci = geometric_mean_ci(x, NOMINAL, method=method, seed=0, n_resamples=999)
        hits += ci.low <= math.exp(mu) <= ci.high
        median_hits += ci.median_low <= math.exp(mu) <= ci.median_high
    # the order-statistic interval of the median covers at least at its nominal rate
    assert median_hits >= binomial_bounds(reps, NOMINAL)[0]
    if method == "t":
        assert_coverage(hits, reps)
    else:
        # BCa is approximate at n = 10 (it undercovers slightly): require it to be no further
        # below 0.95 than 0.90 could explain, and not above the nominal level's bound.
        assert binomial_bounds(reps, 0.90)[0] <= hits <= binomial_bounds(reps, NOMINAL)[1]


def test_geometric_mean_and_median_of_known_values():
    ci = geometric_mean_ci([1.0, 10.0, 100.0])
    assert ci.gmean == pytest.approx(10.0)
    assert ci.median == 10.0
    assert ci.low < 10.0 < ci.high
    assert math.isnan(ci.median_low)  # three values are too few for a 95% median interval
    ten = geometric_mean_ci(np.arange(1.0, 11.0))
    assert ten.gmean == pytest.approx(stats.gmean(np.arange(1.0, 11.0)))
    assert ten.median_low <= ten.median == 5.5 <= ten.median_high


# --- equivalence (TOST) -------------------------------------------------------------------


def test_tost_declares_equivalence_at_most_at_rate_alpha_beyond_the_margin():
    # TOST is a level-alpha test: when the true difference lies at or beyond the margin it
    # declares equivalence with probability at most alpha.
    rng = np.random.default_rng(6)
    reps, n, margin, alpha = 1000, 10, 1.0, 0.05
    for true_diff in (margin, 2 * margin):
        verdicts = [
            equivalence_test(rng.normal(true_diff, 1.0, size=n), margin=margin, alpha=alpha).verdict
            for _ in range(reps)
        ]
        assert verdicts.count("equivalent") <= binomial_bounds(reps, alpha)[1]
    # at twice the margin, with 10 samples of sd 1, a two-sided t test detects the difference
    # with probability at least the power computed from the noncentral t distribution
    df, nc = n - 1, 2 * margin * math.sqrt(n)
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    power = stats.nct.sf(t_crit, df, nc) + stats.nct.cdf(-t_crit, df, nc)
    assert verdicts.count("different") >= binomial_bounds(reps, power)[0]


def test_tost_declares_equivalence_when_the_difference_is_zero_and_samples_suffice():
    # Lower bound on the power at a true difference of 0: equivalence is declared when
    # |mean| + t* S / sqrt(n) < margin, which holds when |mean| < margin / 2 and
    # t* S / sqrt(n) < margin / 2; the two failure probabilities follow from the normal and
    # chi-square distributions of the mean and the variance.
    rng = np.random.default_rng(7)
    reps, n, margin, sd, alpha = 1000, 40, 1.0, 1.0, 0.05
    t_star = stats.t.ppf(1 - alpha, n - 1)
    p_mean = 2 * stats.norm.sf(margin / 2 * math.sqrt(n) / sd)
    s_max = margin / 2 * math.sqrt(n) / t_star
    p_sd = stats.chi2.sf((n - 1) * (s_max / sd) ** 2, n - 1)
    power_bound = 1 - p_mean - p_sd
    assert power_bound > 0.9  # the sample size is enough for the claim to be tested
    hits = sum(
        equivalence_test(rng.normal(0.0, sd, size=n), margin=margin, alpha=alpha).verdict
        == "equivalent"
        for _ in range(reps)
    )
    assert hits >= binomial_bounds(reps, power_bound)[0]


def test_too_few_samples_are_inconclusive_not_no_difference():
    e = equivalence_test([0.1, -0.3, 0.4], margin=0.5)
    assert e.verdict == "inconclusive"
    assert "inconclusive" in e.sentence()
    assert "no difference" not in e.sentence()


def test_tost_p_value_is_the_larger_of_two_one_sided_t_tests():
    rng = np.random.default_rng(8)
    d = rng.normal(0.2, 1.0, size=15)
    e = equivalence_test(d, margin=0.8)
    lower = stats.ttest_1samp(d, -0.8, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.8, alternative="less").pvalue
    assert e.p_equivalence == pytest.approx(max(lower, upper))
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.90)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high))


# --- agreement with SciPy -----------------------------------------------------------------


def test_paired_comparison_agrees_with_scipy_ttest_rel():
    rng = np.random.default_rng(9)
    a, b = rng.normal(1.0, 1.0, size=12), rng.normal(0.5, 1.0, size=12)
    c = compare_paired(a, b, confidence=0.9)
    ref = stats.ttest_rel(a, b)
    assert c.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.9)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
    assert c.mean_diff == pytest.approx(np.mean(a - b))


def test_mean_interval_agrees_with_scipy_ttest_1samp():
    x = np.random.default_rng(10).normal(3.0, 2.0, size=7)
    ci = mean_ci(x, 0.99)
    ref = stats.ttest_1samp(x, 0.0).confidence_interval(0.99)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high))


def test_trend_agrees_with_scipy_spearmanr():
    x = np.repeat([2, 4, 6, 8], 5)
    y = x + np.random.default_rng(11).normal(0.0, 2.0, size=x.size)
    t = trend_test(x, y)
    ref = stats.spearmanr(x, y)
    assert (t.rho, t.p_value) == pytest.approx((ref.statistic, ref.pvalue))


# --- generated sentences follow the data --------------------------------------------------


def test_paired_sentence_flips_when_the_data_flip():
    rng = np.random.default_rng(12)
    a = rng.normal(95.0, 1.0, size=10)
    b = a - 3.0 + rng.normal(0.0, 0.5, size=10)
    forward, backward = compare_paired(a, b), compare_paired(b, a)
    assert (forward.verdict, backward.verdict) == ("better", "worse")
    assert forward.sentence().startswith("higher by")
    assert backward.sentence().startswith("lower by")
    # the interval is that of the gap named, so both read the same numbers
    assert forward.sentence().split("(")[1] == backward.sentence().split("(")[1]
    assert forward.cell() == "better" and backward.cell() == "worse"


def test_paired_verdicts_noise_and_equivalence():
    rng = np.random.default_rng(13)
    a = rng.normal(95.0, 1.0, size=10)
    noisy = a + rng.normal(0.0, 3.0, size=10)
    c = compare_paired(noisy, a, margin=0.5)
    assert c.verdict == "within noise"
    assert "noise" in c.sentence() and "not ruled out" in c.sentence()
    close = a + rng.normal(0.0, 0.05, size=10)
    e = compare_paired(close, a, margin=0.5)
    assert e.verdict == "equivalent"
    assert e.cell(unit=" points") == "equivalent within ±0.5 points"
    assert e.sentence().startswith("equivalent within ±0.5 points")


def test_ratio_comparison_is_a_paired_t_test_on_logs_and_flips_with_the_data():
    rng = np.random.default_rng(14)
    b = rng.lognormal(0.0, 1.0, size=10)
    a = b * rng.lognormal(math.log(2.0), 0.1, size=10)
    r = compare_ratio(a, b)
    ref = stats.ttest_rel(np.log(a), np.log(b))
    assert r.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r.low, r.high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
    assert r.ratio == pytest.approx(stats.gmean(a / b))
    assert (r.verdict, compare_ratio(b, a).verdict) == ("larger", "smaller")
    assert r.sentence("the narrow one").startswith(f"{r.ratio:.2f} times the narrow one (")
    same = compare_ratio(b * rng.lognormal(0.0, 0.5, size=10), b)
    assert same.verdict == "within noise"
    assert same.sentence("it").startswith("not distinguishable from it")
    with pytest.raises(ValueError, match="must all be positive"):
        compare_ratio([1.0, -1.0], [1.0, 1.0])


def test_trend_sentence_flips_with_the_direction():
    x = np.repeat([1, 2, 3, 4], 4)
    y = x + np.tile([0.1, -0.1, 0.2, -0.2], 4)
    assert trend_test(x, y).verdict == "increasing"
    assert trend_test(x, -y).verdict == "decreasing"
    assert "increases" in trend_test(x, y).sentence("the shift")
    flat = trend_test(x, np.tile([1.0, 3.0, 2.0, 4.0], 4))
    assert flat.verdict == "no monotone trend shown"


def test_sentences_state_the_interval_that_decided_them():
    ci = mean_ci([97.0, 98.0, 96.5, 97.5])
    assert ci.sentence() == f"97.2 (95% CI {ci.low:.1f} to {ci.high:.1f}, 4 seeds)"
    assert ci.cell() == f"97.2 [{ci.low:.1f}, {ci.high:.1f}]"


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mean_ci([1.0]), "values needs at least 2"),
        (lambda: mean_ci([1.0, 2.0], confidence=1.0), "confidence must lie strictly between"),
        (lambda: mean_ci([1.0, 2.0], confidence=0.0), "confidence must lie strictly between"),
        (lambda: mean_ci([1.0, float("nan")]), "values must hold finite"),
        (lambda: compare_paired([1.0, 2.0], [1.0, 2.0, 3.0]), "a and b must be paired"),
        (lambda: compare_paired([1.0], [2.0]), "a needs at least 2"),
        (lambda: geometric_mean_ci([1.0, 0.0, 2.0]), "values must all be positive"),
        (lambda: geometric_mean_ci([1.0, 2.0], method="z"), "method must be"),
        (lambda: equivalence_test([1.0, 2.0], margin=0.0), "margin must be a positive"),
        (lambda: equivalence_test([1.0, 2.0], margin=1.0, alpha=0.6), "alpha must be below 0.5"),
        (lambda: trend_test([1, 2, 3, 4], [1, 2, 3]), "x and y must have the same length"),
        (lambda: trend_test([1, 1, 1], [1, 2, 3]), "more than one value"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
