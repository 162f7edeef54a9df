"""The theory chapter's verdict on its simulations and its alt texts follow the simulated points."""

from __future__ import annotations

import numpy as np
import pytest

from bncourse import theory
from bncourse.lab import simulation_report as sr
from bncourse.lab.paper_numbers import paper_number


def test_the_normal_share_within_two_standard_errors():
    assert sr.NORMAL_WITHIN_2 == pytest.approx(0.9545, abs=1e-4)


def test_the_verdict_follows_the_share_of_points_within_two_standard_errors():
    rng = np.random.default_rng(0)
    assert sr.simulation_verdict(rng.normal(size=200)).startswith("as many as sampling noise")
    assert sr.simulation_verdict(3 * rng.normal(size=200)).startswith("fewer than")
    assert sr.simulation_verdict(0.1 * rng.normal(size=200)).startswith("more than")


def _point(noise, strength, mean, z, **extra):
    exact = (
        theory.uout_shift(strength, mean=mean)
        if noise == "uout"
        else theory.dropout_shift(strength, mean=mean, rho=extra.get("rho", 0.0),
                                  d_cos2=extra.get("d_cos2", 1.0))
    )  # fmt: skip
    se = 0.01
    return {"noise": noise, "strength": strength, "mean": mean, "theory": float(exact),
            "ratio": float(exact) + z * se, "ratio_se": se, **extra}  # fmt: skip


def test_alt_texts_count_the_points_on_the_curves_and_state_computed_values():
    points = [_point("dropout", 0.3, 0.0, 0.5), _point("gaussian", 0.3, 1.0, 3.0),
              _point("uout", 0.5, 0.0, -1.0)]  # fmt: skip
    grid, betas = np.linspace(0, 0.8, 9), np.linspace(0, 2.2, 12)
    alt = sr.noise_alt(points, grid, betas, 0.1)
    assert "1 of 2 simulated points of Bernoulli and Gaussian dropout" in alt
    assert "1 of 1 simulated points lie within" in alt
    assert f"from 1.00 to {1 - grid[-1]:.2f}" in alt
    assert "lies below it" in alt
    weight = [_point("dropout", 0.5, 0.0, z, rho=rho, d=32, d_cos2=k)
              for rho, z in ((0.0, 0.0), (0.1, 2.5)) for k in (1.0, 30.0)]  # fmt: skip
    k = np.linspace(0.5, 60, 5)
    narrow, wide = paper_number("d_cos2_narrow"), paper_number("d_cos2_wrn")
    alt = sr.weight_layer_alt(weight, k, 0.5, narrow, wide)
    assert "for rho = 0 the theory line is flat at 0.50" in alt
    assert "for rho = 0.1 it goes from" in alt
    assert "2 of 4 simulated points" in alt
    assert narrow.text() in alt and wide.text() in alt
