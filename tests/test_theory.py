"""bncourse.theory: closed forms against the paper's values and against Monte Carlo estimates.

Monte Carlo tolerance. ``simulate_shift`` estimates Var_train and Var_test from independent
samples of size n and reports the delta-method standard error of their ratio,
``se = ratio * sqrt(se_A^2/A^2 + se_B^2/B^2)`` with ``se_A^2 = (mu4 - sigma^4) / n`` (the sampling
variance of a sample variance). For n = 40,000 the estimate is very nearly normal, so
``|estimate - theory| <= 5 se`` fails by chance with probability ~6e-7 per check; the seeds are
fixed, so the test is deterministic. We also bound the standard error itself from above with the
normal-theory value (kurtosis <= 3 + noise contribution), so a broken ``ratio_se`` cannot widen
the tolerance unnoticed: for the settings below ``se`` must stay under 3% of the ratio.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bncourse import theory
from bncourse.lab.simulate import simulate_shift

N = 40_000
Z = 5.0


def test_conversion_between_drop_and_retain():
    assert theory.retain_from_drop(0.3) == pytest.approx(0.7)
    assert theory.drop_from_retain(0.7) == pytest.approx(0.3)
    np.testing.assert_allclose(theory.retain_from_drop([0.0, 0.25, 1.0]), [1.0, 0.75, 0.0])
    with pytest.raises(ValueError, match="drop probability"):
        theory.retain_from_drop(1.5)
    with pytest.raises(ValueError, match="retain"):
        theory.drop_from_retain(-0.1)


def test_paper_values():
    # Paper, case (a), in the paper's notation p_retain = 0.7, c = 1, v = 2: Delta = 0.6087.
    p_drop = theory.drop_from_retain(0.7)
    assert theory.dropout_shift(p_drop, mean=1.0, var=2.0) == pytest.approx(2 / (3 / 0.7 - 1))
    assert theory.dropout_shift(p_drop, mean=1.0, var=2.0) == pytest.approx(0.6087, abs=1e-4)
    # Zero mean: the shift is the retain probability 1 - p (not p).
    assert theory.dropout_shift(0.3) == pytest.approx(0.7)
    # Uout at zero mean: 3 / (3 + beta^2); the paper's beta = 0.1 gives 300/301.
    assert theory.uout_shift(0.1) == pytest.approx(300 / 301)
    assert theory.uout_shift(0.5) == pytest.approx(300 / 325)
    # Case (b) illustrative values (c = 0, v = 1): rho = 0.1, d cos^2 = 15, drop 0.3 -> 0.848.
    assert theory.dropout_shift(0.3, rho=0.1, d_cos2=15) == pytest.approx(0.848, abs=1e-3)
    assert theory.dropout_shift(0.5, rho=0.3, d_cos2=50) == pytest.approx(0.940, abs=1e-3)


def test_weight_layer_reduces_to_direct_case():
    p = 0.3
    direct = theory.dropout_shift(p, mean=0.5, var=2.0)
    assert theory.dropout_shift(p, mean=0.5, var=2.0, rho=0.0, d_cos2=40) == pytest.approx(direct)
    assert theory.dropout_shift(p, mean=0.5, var=2.0, rho=0.4, d_cos2=1) == pytest.approx(direct)
    # Wider (larger d cos^2) with correlated inputs: closer to 1, monotonically.
    shifts = theory.dropout_shift(p, rho=0.2, d_cos2=np.array([1, 3, 10, 50]))
    assert np.all(np.diff(shifts) > 0) and shifts[-1] < 1


def test_note_form_of_case_b_is_the_same():
    # The secondary note's Eq. 14, written with the retain probability q.
    c, v, rho, k, q = 0.5, 1.3, 0.2, 7.0, 0.6
    note = (v * rho + v * (1 - rho) / k) / (v * rho + ((1 / q - 1) * c**2 + v * (1 / q - rho)) / k)
    ours = theory.dropout_shift(1 - q, mean=c, var=v, rho=rho, d_cos2=k)
    assert ours == pytest.approx(note)


def test_gaussian_matches_bernoulli_and_uout_equivalence():
    p = np.array([0.1, 0.3, 0.5])
    np.testing.assert_allclose(
        theory.gaussian_dropout_shift(p, mean=1), theory.dropout_shift(p, mean=1)
    )
    beta = theory.uout_beta_matching_dropout(0.3)
    assert theory.uout_shift(beta, mean=0.7) == pytest.approx(theory.dropout_shift(0.3, mean=0.7))
    assert theory.dropout_equivalent_of_uout(beta) == pytest.approx(0.3)


def test_variances_scale_with_weight_norm():
    train, test = theory.dropout_variances(0.3, mean=1.0, var=2.0)
    assert test == pytest.approx(2.0)
    assert train == pytest.approx(3.0 / 0.7 - 1.0)
    train4, test4 = theory.dropout_variances(0.3, mean=1.0, var=2.0, weight_norm2=4.0)
    assert (train4, test4) == pytest.approx((4 * train, 4 * test))


def test_d_cos2_theta_and_statistic():
    assert theory.d_cos2_theta([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert theory.d_cos2_theta([1.0, -1.0]) == pytest.approx(0.0)
    assert theory.shift_statistic(2.0, 1.0) == theory.shift_statistic(1.0, 2.0) == 2.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: theory.dropout_shift(1.0), "drop probability"),
        (lambda: theory.dropout_shift(-0.1), "drop probability"),
        (lambda: theory.dropout_shift(0.3, var=0.0), "var"),
        (lambda: theory.dropout_shift(0.3, rho=1.5), "rho"),
        (lambda: theory.dropout_shift(0.3, d_cos2=-1), "d_cos2"),
        (lambda: theory.dropout_shift(0.3, rho=-0.5, d_cos2=5), "non-positive"),
        (lambda: theory.uout_shift(-0.1), "beta"),
        (lambda: theory.dropout_shift(float("nan")), "NaN"),
        (lambda: theory.d_cos2_theta([0.0, 0.0]), "zero vector"),
        (lambda: theory.shift_statistic(0.0, 1.0), "> 0"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="p must be a number"):
        theory.dropout_shift("0.3")
    with pytest.raises(TypeError, match="p must be a number"):
        theory.dropout_shift(True)


MC_CASES = [
    # (noise, strength, mean, var, rho, d, d_cos2, closed form)
    ("dropout", 0.3, 0.0, 1.0, 0.0, 1, 1.0, lambda: theory.dropout_shift(0.3)),
    ("dropout", 0.3, 1.0, 2.0, 0.0, 1, 1.0, lambda: theory.dropout_shift(0.3, 1.0, 2.0)),
    ("gaussian", 0.5, 0.5, 1.0, 0.0, 1, 1.0, lambda: theory.gaussian_dropout_shift(0.5, 0.5)),
    ("uout", 0.8, 0.0, 1.0, 0.0, 1, 1.0, lambda: theory.uout_shift(0.8)),
    ("uout", 1.5, 1.0, 0.5, 0.0, 1, 1.0, lambda: theory.uout_shift(1.5, 1.0, 0.5)),
    (
        "dropout",
        0.5,
        0.5,
        1.0,
        0.1,
        16,
        4.36,
        lambda: theory.dropout_shift(0.5, 0.5, 1.0, 0.1, 4.36),
    ),
    (
        "dropout",
        0.3,
        0.0,
        1.0,
        0.3,
        16,
        12.0,
        lambda: theory.dropout_shift(0.3, 0.0, 1.0, 0.3, 12.0),
    ),
    (
        "gaussian",
        0.4,
        0.3,
        1.0,
        0.2,
        16,
        8.0,
        lambda: theory.gaussian_dropout_shift(0.4, 0.3, 1.0, 0.2, 8.0),
    ),
    ("uout", 1.0, 0.5, 1.0, 0.2, 16, 8.0, lambda: theory.uout_shift(1.0, 0.5, 1.0, 0.2, 8.0)),
]


@pytest.mark.parametrize(("noise", "s", "c", "v", "rho", "d", "k", "closed"), MC_CASES)
def test_closed_form_matches_monte_carlo(noise, s, c, v, rho, d, k, closed):
    est = simulate_shift(noise, s, mean=c, var=v, rho=rho, d=d, d_cos2=k, n_samples=N, seed=7)
    exact = closed()
    assert 0 < est.ratio_se < 0.03 * est.ratio, "standard error out of the expected range"
    z = (est.ratio - exact) / est.ratio_se
    assert abs(z) <= Z, f"Monte Carlo {est.ratio:.4f} vs theory {exact:.4f}: {z:.1f} s.e. apart"


def test_monte_carlo_variances_match_each_closed_form():
    """Not only the ratio: each variance separately, with its own standard error."""
    p, c, v = 0.3, 1.0, 2.0
    est = simulate_shift("dropout", p, mean=c, var=v, n_samples=N, seed=3)
    train, test = theory.dropout_variances(p, mean=c, var=v)
    assert abs(est.train_var - train) <= Z * est.train_var_se
    assert abs(est.test_var - test) <= Z * est.test_var_se
    # The tolerance is not vacuous: the flipped convention (p as retain probability) is far off.
    wrong_train, _ = theory.dropout_variances(1 - p, mean=c, var=v)
    assert abs(est.train_var - wrong_train) > 20 * est.train_var_se
    # Normal-theory check of the standard error of the test variance (Gaussian input):
    # Var(s^2) = 2 v^2 / n, so se = v sqrt(2/n), to within a few percent.
    assert est.test_var_se == pytest.approx(v * math.sqrt(2 / N), rel=0.05)
