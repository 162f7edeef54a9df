"""What the theory chapter says about its simulations, computed from the simulated points.

The ``monte_carlo_shift`` experiment (:mod:`bncourse.lab.experiments`) returns points with a
simulated ``ratio``, its standard error ``ratio_se`` and the closed form ``theory``. The functions
here turn them into the chapter's verdict on the agreement and into the alt texts of its figures,
so that both state what the data show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from bncourse import theory
from bncourse.lab.paper_numbers import PaperNumber

__all__ = ["NORMAL_WITHIN_2", "within", "simulation_verdict", "noise_alt", "weight_layer_alt"]

#: Share of standard normal deviations within two standard deviations of the mean.
NORMAL_WITHIN_2 = float(stats.norm.cdf(2) - stats.norm.cdf(-2))


def within(points: Sequence[dict], k: float = 2.0) -> tuple[int, int]:
    """How many of ``points`` lie within ``k`` standard errors of their closed form, of how many."""
    z = [abs(q["ratio"] - q["theory"]) / q["ratio_se"] for q in points]
    return int(sum(v <= k for v in z)), len(z)


def simulation_verdict(z: Sequence[float], alpha: float = 0.05) -> str:
    """Whether the share of ``|z| <= 2`` is what sampling noise alone gives (binomial test)."""
    z = np.abs(np.asarray(z, dtype=float))
    hits, n = int((z <= 2).sum()), int(z.size)
    test = stats.binomtest(hits, n, NORMAL_WITHIN_2)
    how = (
        f"{100 * NORMAL_WITHIN_2:.1f}% of normal deviations lie within two standard errors; "
        f"binomial test of {hits} of {n}, p = {test.pvalue:.3f}"
    )
    if test.pvalue >= alpha:
        return f"as many as sampling noise alone would leave ({how})"
    if hits < NORMAL_WITHIN_2 * n:
        return f"fewer than sampling noise alone would leave ({how}): somewhere the closed forms and the simulations disagree"
    return f"more than sampling noise alone would leave ({how}): the standard errors are too large"


def _ends(values: np.ndarray) -> str:
    return f"from {values[0]:.2f} to {values[-1]:.2f}"


def noise_alt(
    points: Sequence[dict], grid: np.ndarray, betas: np.ndarray, beta_paper: float
) -> str:
    """Alt text of the figure of the shift directly before BN (dropout, Gaussian, Uout)."""
    drop = [q for q in points if q["noise"] in ("dropout", "gaussian") and "d" not in q]
    uout = [q for q in points if q["noise"] == "uout"]
    zero, one = theory.dropout_shift(grid, mean=0.0), theory.dropout_shift(grid, mean=1.0)
    below = "lies below it" if np.all(one <= zero + 1e-12) else "crosses it"
    u0, u1 = theory.uout_shift(betas, mean=0.0), theory.uout_shift(betas, mean=1.0)
    a, n = within(drop)
    b, m = within(uout)
    return (
        f"Two panels. Left, the variance shift Delta against the drop probability p from "
        f"{grid[0]:g} to {grid[-1]:g}: the theory curve for zero-mean input falls "
        f"{_ends(np.asarray(zero))}, the curve for mean 1 {below} ({_ends(np.asarray(one))}); "
        f"{a} of {n} simulated points of Bernoulli and Gaussian dropout lie within two standard "
        f"errors of their curves. Right, Delta against Uout's half-width beta from {betas[0]:g} "
        f"to {betas[-1]:g}: the curves fall {_ends(np.asarray(u0))} for zero-mean input and "
        f"{_ends(np.asarray(u1))} for mean 1; {b} of {m} simulated points lie within two "
        f"standard errors of them; a dotted line marks the paper's beta = {beta_paper:g}, where "
        f"Delta is {float(theory.uout_shift(beta_paper)):.4f}."
    )


def weight_layer_alt(
    points: Sequence[dict], k: np.ndarray, p: float, narrow: PaperNumber, wide: PaperNumber
) -> str:
    """Alt text of the figure of the shift with a weight layer between dropout and BN."""
    simulated = [q for q in points if q.get("d")]
    rhos = sorted({q["rho"] for q in simulated})
    lines = []
    for rho in rhos:
        curve = np.asarray(theory.dropout_shift(p, rho=rho, d_cos2=k))
        if np.ptp(curve) < 1e-9:
            lines.append(f"for rho = {rho:g} the theory line is flat at {curve[0]:.2f}")
        else:
            lines.append(f"for rho = {rho:g} it goes {_ends(curve)}")
    hits, n = within(simulated)
    return (
        f"The variance shift Delta against d cos squared theta from {k[0]:g} to {k[-1]:g}, for "
        f"dropout p = {p:g} followed by a weight layer and BN: " + "; ".join(lines) + ". "
        f"{hits} of {n} simulated points lie within two standard errors of the lines. Shaded "
        f"bands mark the ranges of d cos squared theta the paper reports: {narrow.text()} for "
        f"PreResNet and DenseNet, {wide.text()} for Wide ResNet."
    )
