"""Monte Carlo estimates of the variance shift, made with the course's own noise functions.

The estimates check :mod:`bncourse.theory`: draw inputs with mean ``c``, variance ``v`` and a
shared pairwise correlation ``rho``, apply :func:`bncourse.nn.functional.dropout` (or the
Gaussian and Uout variants) in training mode, optionally project onto a weight vector ``w`` with
a chosen ``d cos^2(theta)``, and compare the sample variances with and without the noise.

Train-time and test-time samples are drawn independently, so the standard error of the ratio
follows from the delta method: a sample variance of ``n`` values has variance
``(mu4 - sigma^4) / n`` (``mu4`` the fourth central moment), and for independent ``A`` and ``B``
``Var(A/B) / (A/B)^2 ~ Var(A)/A^2 + Var(B)/B^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bncourse.nn import functional as F

__all__ = ["ShiftEstimate", "simulate_shift", "weight_with_d_cos2"]

NOISES = ("dropout", "gaussian", "uout")


@dataclass(frozen=True)
class ShiftEstimate:
    """Monte Carlo estimate of ``Var_train``, ``Var_test`` and ``Delta`` with standard errors."""

    train_var: float
    test_var: float
    ratio: float
    train_var_se: float
    test_var_se: float
    ratio_se: float
    n_samples: int


def _variance_and_se(x: Tensor) -> tuple[float, float]:
    centred = x - x.mean()
    m2 = centred.pow(2).mean()
    m4 = centred.pow(4).mean()
    n = x.numel()
    return float(m2 * n / (n - 1)), float(torch.sqrt((m4 - m2**2).clamp_min(0) / n))


def weight_with_d_cos2(d: int, d_cos2: float, generator: torch.Generator) -> Tensor:
    """A unit-norm weight vector of length ``d`` whose ``d cos^2(theta)`` equals ``d_cos2``.

    ``w = cos(theta) e + sin(theta) u`` with ``e`` the normalized all-ones vector and ``u`` a random
    unit vector orthogonal to it, so ``(sum w)^2 / ||w||^2 = d cos^2(theta)``.
    """
    if not 0 <= d_cos2 <= d:
        raise ValueError(f"d_cos2 must lie in [0, d] = [0, {d}], got {d_cos2}")
    e = torch.full((d,), 1 / math.sqrt(d), dtype=torch.float64)
    u = torch.randn(d, generator=generator, dtype=torch.float64)
    u = u - (u @ e) * e
    if d > 1:
        u = u / u.norm()
    cos = math.sqrt(d_cos2 / d)
    return cos * e + math.sqrt(max(0.0, 1 - cos**2)) * u


def _inputs(
    n: int, d: int, mean: float, var: float, rho: float, generator: torch.Generator
) -> Tensor:
    """``n`` x ``d`` Gaussian inputs with the given mean, variance and pairwise correlation."""
    shared = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    own = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return mean + math.sqrt(var) * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own)


def simulate_shift(
    noise: str = "dropout",
    strength: float = 0.5,
    mean: float = 0.0,
    var: float = 1.0,
    rho: float = 0.0,
    d: int = 1,
    d_cos2: float = 1.0,
    n_samples: int = 100_000,
    seed: int = 0,
) -> ShiftEstimate:
    """Estimate the variance shift of ``noise`` before BN by simulation.

    ``noise`` is ``"dropout"`` (inverted Bernoulli), ``"gaussian"`` (matched Gaussian dropout) --
    both with ``strength`` = PyTorch's drop probability ``p`` -- or ``"uout"`` with ``strength`` =
    ``beta``. ``d = 1`` puts the noise directly before BN; ``d > 1`` puts a weight layer of fan-in
    ``d`` (unit-norm weights with the given ``d_cos2``) between the noise and BN, with inputs of
    pairwise correlation ``rho`` in ``[0, 1]``. Runs on the CPU in float64, seeded by ``seed``.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if not 0 <= rho <= 1:
        raise ValueError(f"rho must lie in [0, 1] for this simulation, got {rho}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 100:
        raise ValueError(f"n_samples must be an int >= 100, got {n_samples!r}")
    gen = torch.Generator().manual_seed(seed)
    w = weight_with_d_cos2(d, d_cos2 if d > 1 else 1.0, gen)

    def apply(x: Tensor) -> Tensor:
        if noise == "dropout":
            return F.dropout(x, strength, True, generator=gen)
        if noise == "gaussian":
            return F.gaussian_dropout(x, strength, True, generator=gen)
        return F.uout(x, strength, True, generator=gen)

    train_out = apply(_inputs(n_samples, d, mean, var, rho, gen)) @ w
    test_out = _inputs(n_samples, d, mean, var, rho, gen) @ w
    train_var, train_se = _variance_and_se(train_out)
    test_var, test_se = _variance_and_se(test_out)
    ratio = test_var / train_var
    ratio_se = ratio * math.sqrt((train_se / train_var) ** 2 + (test_se / test_var) ** 2)
    return ShiftEstimate(train_var, test_var, ratio, train_se, test_se, ratio_se, n_samples)
