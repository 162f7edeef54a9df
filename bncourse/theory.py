"""Closed-form train-time and test-time variances, and the variance shift, of noise before BN.

The set-up is that of Li et al. (CVPR 2019), "Understanding the disharmony between dropout and
batch normalization by variance shift". A unit ``x`` with mean ``c`` (``mean``) and variance ``v``
(``var``) is multiplied by independent noise ``m`` with ``E[m] = 1`` and ``Var[m] = s2`` during
training, and left alone at test time. Batch norm's running variance learns the training-time
variance; at test time the unit has the test-time variance. The *variance shift* is

    Delta = Var_test / Var_train,

so BN divides test-time activations by a standard deviation that is ``1 / sqrt(Delta)`` too large.

Noise variances ``s2`` of the three kinds of noise:

* inverted Bernoulli dropout with drop probability ``p``: ``m = a / (1 - p)``,
  ``a ~ Bernoulli(1 - p)``, so ``s2 = p / (1 - p)``;
* Gaussian dropout at matched strength: ``m ~ N(1, p / (1 - p))``, the same ``s2``;
* Uout: ``m = 1 + r``, ``r ~ U(-beta, beta)``, so ``s2 = beta**2 / 3``.

With the noise directly before BN (the paper's case (a))::

    Var_train = (1 + s2) (c**2 + v) - c**2,   Var_test = v.

With the noise before a weight layer of fan-in ``d`` and weights ``w`` that feeds BN (case (b)),
inputs sharing one pairwise correlation ``rho``, and ``d_cos2 = d cos^2(theta)`` where ``theta``
is the angle between ``w`` and the all-ones vector, both variances gain the same term
``v rho (d_cos2 - 1)`` (times ``||w||^2``, which cancels in Delta). ``d_cos2 = 1`` (or ``rho = 0``)
gives case (a) back.

**Convention.** Every function here takes ``p`` as PyTorch's *drop* probability
(``torch.nn.Dropout(p)``). The paper writes ``p`` for the *retain* probability; convert with
:func:`retain_from_drop` and :func:`drop_from_retain` (``retain = 1 - drop``). In the paper's
notation case (a) reads ``Delta = v / ((c**2 + v) / p_retain - c**2)``, which is ``p_retain`` for
``c = 0``.

Functions accept floats or NumPy arrays (broadcast together) and return a float for scalar input.
This module imports nothing from the rest of the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "retain_from_drop",
    "drop_from_retain",
    "noise_variance_dropout",
    "noise_variance_uout",
    "noise_variances",
    "noise_shift",
    "dropout_variances",
    "dropout_shift",
    "gaussian_dropout_variances",
    "gaussian_dropout_shift",
    "uout_variances",
    "uout_shift",
    "uout_beta_matching_dropout",
    "dropout_equivalent_of_uout",
    "d_cos2_theta",
    "shift_statistic",
]

ArrayLike = float | int | Sequence[float] | np.ndarray


def _as_array(name: str, value: ArrayLike) -> np.ndarray:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
    try:
        out = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if np.isnan(out).any():
        raise ValueError(f"{name} must not be NaN")
    return out


def _result(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def _drop(p: ArrayLike) -> np.ndarray:
    p = _as_array("p", p)
    if ((p < 0) | (p >= 1)).any():
        raise ValueError(
            "p is the drop probability (PyTorch's convention; the paper's retain probability is "
            f"1 - p) and must lie in [0, 1), got {p if p.ndim == 0 else p[(p < 0) | (p >= 1)]}"
        )
    return p


def retain_from_drop(p: ArrayLike) -> float | np.ndarray:
    """The paper's retain probability ``1 - p`` from PyTorch's drop probability ``p`` in [0, 1]."""
    p = _as_array("p", p)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p is a drop probability and must lie in [0, 1], got {p}")
    return _result(1 - p)


def drop_from_retain(retain: ArrayLike) -> float | np.ndarray:
    """PyTorch's drop probability ``1 - retain`` from the paper's retain probability in [0, 1]."""
    retain = _as_array("retain", retain)
    if ((retain < 0) | (retain > 1)).any():
        raise ValueError(f"retain is a retain probability and must lie in [0, 1], got {retain}")
    return _result(1 - retain)


def noise_variance_dropout(p: ArrayLike) -> float | np.ndarray:
    """Variance ``p / (1 - p)`` of the inverted-dropout multiplier (Bernoulli or matched Gaussian)."""
    p = _drop(p)
    return _result(p / (1 - p))


def noise_variance_uout(beta: ArrayLike) -> float | np.ndarray:
    """Variance ``beta**2 / 3`` of Uout's multiplier ``1 + r``, ``r ~ U(-beta, beta)``."""
    beta = _as_array("beta", beta)
    if (beta < 0).any():
        raise ValueError(f"beta is Uout's noise half-width and must be >= 0, got {beta}")
    return _result(beta**2 / 3)


def noise_variances(
    noise_var: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
    weight_norm2: ArrayLike = 1.0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """``(Var_train, Var_test)`` of BN's input for multiplicative noise of variance ``noise_var``.

    ``mean``/``var`` are the mean ``c`` and variance ``v`` of each input unit. Noise directly
    before BN: leave ``rho=0, d_cos2=1``. Noise before a weight layer that feeds BN: ``rho`` is the
    inputs' shared pairwise correlation, ``d_cos2`` is ``d cos^2(theta)`` (see
    :func:`d_cos2_theta`) and ``weight_norm2`` is ``||w||^2``.
    """
    s2 = _as_array("noise_var", noise_var)
    c = _as_array("mean", mean)
    v = _as_array("var", var)
    rho = _as_array("rho", rho)
    k = _as_array("d_cos2", d_cos2)
    w2 = _as_array("weight_norm2", weight_norm2)
    if (s2 < 0).any():
        raise ValueError(f"noise_var must be >= 0, got {s2}")
    if (v <= 0).any():
        raise ValueError(f"var is the variance of an input unit and must be > 0, got {v}")
    if ((rho < -1) | (rho > 1)).any():
        raise ValueError(f"rho is a correlation and must lie in [-1, 1], got {rho}")
    if (k < 0).any():
        raise ValueError(f"d_cos2 = d cos^2(theta) must be >= 0, got {k}")
    if (w2 <= 0).any():
        raise ValueError(f"weight_norm2 = ||w||^2 must be > 0, got {w2}")
    shared = v * rho * (k - 1)
    test = w2 * (v + shared)
    if (test <= 0).any():
        raise ValueError(
            "rho and d_cos2 give a non-positive test-time variance v (1 + rho (d_cos2 - 1)); "
            "no set of inputs has that correlation structure"
        )
    train = w2 * ((1 + s2) * (c**2 + v) - c**2 + shared)
    return _result(train), _result(test)


def noise_shift(
    noise_var: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
) -> float | np.ndarray:
    """``Delta = Var_test / Var_train`` for multiplicative noise of variance ``noise_var``."""
    train, test = noise_variances(noise_var, mean, var, rho, d_cos2)
    return _result(np.asarray(test) / np.asarray(train))


def dropout_variances(
    p: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
    weight_norm2: ArrayLike = 1.0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """``(Var_train, Var_test)`` of BN's input with inverted dropout of *drop* probability ``p``.

    Directly before BN (defaults ``rho=0, d_cos2=1``): ``Var_train = (c**2 + v) / (1 - p) - c**2``
    and ``Var_test = v``. With a weight layer in between, see :func:`noise_variances`.
    """
    return noise_variances(noise_variance_dropout(p), mean, var, rho, d_cos2, weight_norm2)


def dropout_shift(
    p: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
) -> float | np.ndarray:
    """Variance shift of inverted dropout with *drop* probability ``p`` (PyTorch's convention).

    Directly before BN with zero-mean input it is ``1 - p``, the paper's retain probability.
    """
    return noise_shift(noise_variance_dropout(p), mean, var, rho, d_cos2)


def gaussian_dropout_variances(
    p: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
    weight_norm2: ArrayLike = 1.0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """``(Var_train, Var_test)`` for Gaussian dropout ``N(1, p / (1 - p))`` at drop strength ``p``.

    Only the multiplier's variance enters, so this equals :func:`dropout_variances`.
    """
    return noise_variances(noise_variance_dropout(p), mean, var, rho, d_cos2, weight_norm2)


def gaussian_dropout_shift(
    p: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
) -> float | np.ndarray:
    """Variance shift of Gaussian dropout at matched strength: the same as Bernoulli dropout."""
    return noise_shift(noise_variance_dropout(p), mean, var, rho, d_cos2)


def uout_variances(
    beta: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
    weight_norm2: ArrayLike = 1.0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """``(Var_train, Var_test)`` for Uout ``x + x r``, ``r ~ U(-beta, beta)``.

    ``Var_train = v + beta**2 / 3 * (c**2 + v)`` (plus the shared weight-layer term).
    """
    return noise_variances(noise_variance_uout(beta), mean, var, rho, d_cos2, weight_norm2)


def uout_shift(
    beta: ArrayLike,
    mean: ArrayLike = 0.0,
    var: ArrayLike = 1.0,
    rho: ArrayLike = 0.0,
    d_cos2: ArrayLike = 1.0,
) -> float | np.ndarray:
    """Variance shift of Uout; ``3 / (3 + beta**2)`` for zero-mean input directly before BN."""
    return noise_shift(noise_variance_uout(beta), mean, var, rho, d_cos2)


def uout_beta_matching_dropout(p: ArrayLike) -> float | np.ndarray:
    """Uout half-width ``beta = sqrt(3 p / (1 - p))`` whose shift equals dropout's at drop ``p``."""
    return _result(np.sqrt(3 * np.asarray(noise_variance_dropout(p))))


def dropout_equivalent_of_uout(beta: ArrayLike) -> float | np.ndarray:
    """Drop probability ``p`` with the same shift as Uout at ``beta``: ``s2 / (1 + s2)``, ``s2 = beta**2/3``."""
    s2 = np.asarray(noise_variance_uout(beta))
    return _result(s2 / (1 + s2))


def d_cos2_theta(weight: ArrayLike) -> float:
    """``d cos^2(theta) = (sum w)**2 / ||w||**2`` for a weight vector ``w`` of fan-in ``d``.

    ``theta`` is the angle between ``w`` and the all-ones vector; the value lies in ``[0, d]``.
    """
    w = _as_array("weight", weight)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weight must be a non-empty 1-D vector, got shape {w.shape}")
    norm2 = float(w @ w)
    if norm2 == 0:
        raise ValueError("weight must not be the zero vector")
    return float(w.sum() ** 2 / norm2)


def shift_statistic(real_var: ArrayLike, moving_var: ArrayLike) -> float | np.ndarray:
    """The paper's per-layer statistic ``max(real/moving, moving/real)``; 1 means no shift."""
    real = _as_array("real_var", real_var)
    moving = _as_array("moving_var", moving_var)
    if (real <= 0).any() or (moving <= 0).any():
        raise ValueError("real_var and moving_var must be > 0")
    return _result(np.maximum(real / moving, moving / real))
