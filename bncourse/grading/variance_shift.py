"""Checks of the closed-form variance shift (assignment ps04_variance_shift, part 1).

Students write ``variance_shift(p, mean, var) -> float``: the shift ``Var_test / Var_train`` of a
unit with mean ``mean`` and variance ``var`` behind inverted dropout of *drop* probability ``p``,
directly before BN. It is checked against :func:`bncourse.theory.dropout_shift` on values drawn
when the check runs, with ``p`` never near 0.5 (where drop and retain probabilities coincide).
The other parts of the exercise are checked by :mod:`~bncourse.grading.probe`,
:mod:`~bncourse.grading.recalibration` and :mod:`~bncourse.grading.placement`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bncourse import theory
from bncourse.grading.compare import Tolerance
from bncourse.grading.engine import CheckFailure, Result, Task, draw_seed, run_check
from bncourse.grading.networks import uniform

__all__ = [
    "SHIFT",
    "ShiftCase",
    "check_variance_shift",
    "draw_shift_cases",
    "variance_shift_variant",
]


@dataclass(frozen=True)
class ShiftCase:
    """Triples ``(p, mean, var)`` at which ``variance_shift`` is evaluated."""

    p: tuple[float, ...]
    mean: tuple[float, ...]
    var: tuple[float, ...]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    def describe(self) -> str:
        triples = ", ".join(
            f"({p:.3f}, {m:.3f}, {v:.3f})"
            for p, m, v in zip(self.p, self.mean, self.var, strict=True)
        )
        return f"(p, mean, var) = {triples}"

    def exact(self) -> ShiftCase:
        return self


# Kinds of input unit: zero mean (the shift is then 1 - p), a moderate mean, a mean large against
# the standard deviation (where it dominates). "edge" draws p near 0 and near 1.
SHIFT_SPECS = {
    "typical": ("zero_mean", "mean", "mean", "large_mean"),
    "edge": ("edge_zero_mean", "edge_mean"),
}


def draw_shift_cases(seed: int, spec: str = "typical", per_case: int = 4) -> list[ShiftCase]:
    """Cases of ``per_case`` triples each; ``p`` is never near 0.5, where drop = retain."""
    if spec not in SHIFT_SPECS:
        raise ValueError(f"spec must be one of {sorted(SHIFT_SPECS)}, got {spec!r}")
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind in SHIFT_SPECS[spec]:
        u = uniform(gen, 0.0, 1.0, per_case).double()
        low = torch.arange(per_case) % 2 == 0
        if kind.startswith("edge"):
            p = torch.where(low, 0.001 + 0.049 * u, 0.9 + 0.09 * u)
        else:
            p = torch.where(low, 0.05 + 0.4 * u, 0.55 + 0.35 * u)
        sign = torch.where(torch.rand(per_case, generator=gen) < 0.5, -1.0, 1.0).double()
        if kind.endswith("zero_mean"):
            mean = torch.zeros(per_case, dtype=torch.float64)
        elif kind == "large_mean":
            mean = sign * uniform(gen, 2.0, 5.0, per_case).double()
        else:
            mean = sign * uniform(gen, 0.3, 2.0, per_case).double()
        var = uniform(gen, 0.2, 3.0, per_case).double()
        cases.append(ShiftCase(tuple(p.tolist()), tuple(mean.tolist()), tuple(var.tolist())))
    return cases


def _number(value: object, function_name: str) -> float:
    if isinstance(value, Tensor | np.ndarray | np.generic):
        if np.size(value) != 1 if not isinstance(value, Tensor) else value.numel() != 1:
            raise CheckFailure(
                f"{function_name} returned {type(value).__name__} with several values; it must "
                "return one number for one (p, mean, var)."
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckFailure(
            f"{function_name} returned {type(value).__name__}, expected a number (did you forget "
            "the return statement?)."
        )
    return float(value)


def _run_shift(fn: Callable[..., Any], case: ShiftCase) -> Result:
    values = [
        _number(fn(p, m, v), SHIFT.function_name)
        for p, m, v in zip(case.p, case.mean, case.var, strict=True)
    ]
    return {"shift": torch.tensor(values, dtype=torch.float64)}


def _shift_reference(p: float, mean: float, var: float) -> float:
    return float(theory.dropout_shift(p, mean, var))


def variance_shift_variant(
    p: float,
    mean: float,
    var: float,
    *,
    convention: str = "drop",
    mean_term: str = "kept",
    ratio: str = "test_over_train",
    dropout: str = "inverted",
) -> float:
    """The shift with the student's signature and optional catalogued mistakes.

    ``convention``: "drop" (right: ``p`` drops) or "retain" (``p`` used as the keep probability).
    ``mean_term``: "kept" (right), "ignored" (the zero-mean formula ``1 - p`` for every input) or
    "not_subtracted" (``E[m^2] E[x^2]`` without ``- (E[m] E[x])^2``).
    ``ratio``: "test_over_train" (right) or "train_over_test".
    ``dropout``: "inverted" (right: ``m = a / (1 - p)``) or "plain" (``m = a``, no scaling).
    """
    keep = 1 - p if convention == "drop" else p
    m1, m2 = (1.0, 1 / keep) if dropout == "inverted" else (keep, keep)  # E[m], E[m^2]
    c2 = 0.0 if mean_term == "ignored" else mean**2
    squared_mean = 0.0 if mean_term == "not_subtracted" else (m1 * mean) ** 2
    train = m2 * (c2 + var) - (squared_mean if mean_term != "ignored" else 0.0)
    return var / train if ratio == "test_over_train" else train / var


SHIFT = Task(
    name="variance_shift",
    function_name="variance_shift",
    run=_run_shift,
    reference=_shift_reference,
    variant=variance_shift_variant,
    labels={"shift": "variance shift"},
    guard={"references": ("bncourse.theory",)},
    # Any sound formula in float32 or float64 is within 1e-5; every catalogued mistake is off by
    # more than 1e-2 on some triple (p is at least 0.05 away from 0.5).
    tolerance=lambda case: Tolerance(rtol=1e-5, atol=1e-7),
)


def check_variance_shift(
    fn: Callable[..., float], *, spec: str = "typical", seed: int | None = None
) -> None:
    """``variance_shift(p, mean, var)`` against the closed form on triples drawn now."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_shift_cases(seed, spec)
    run_check(
        SHIFT,
        fn,
        cases,
        ["shift"],
        seed=seed,
        what="the variance shift of dropout directly before BN",
    )
