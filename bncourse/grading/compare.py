"""Tolerant comparison of results, and descriptions of a difference that reveal no expected value."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Tolerance", "describe_difference", "same"]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|``, elementwise."""

    rtol: float
    atol: float

    @staticmethod
    def for_dtype(dtype: torch.dtype) -> Tolerance:
        """Tolerances that accept any sound implementation in ``dtype`` and reject real mistakes.

        float32 rounding in a correct implementation stays below 1e-5 relative on the inputs the
        checks draw (channel scales >= 0.3, so no catastrophic cancellation); every catalogued
        mistake changes some value by more than 1e-3 relative on at least one input.
        """
        if dtype == torch.float64:
            return Tolerance(rtol=1e-7, atol=1e-9)
        if dtype == torch.float32:
            return Tolerance(rtol=1e-4, atol=1e-5)
        return Tolerance(rtol=1e-2, atol=1e-3)  # half precision, should a check ever use it


def _close_mask(actual: Tensor, expected: Tensor, tol: Tolerance) -> Tensor:
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    scale = (
        max(1.0, float(expected.abs().nan_to_num(0.0, 0.0, 0.0).max())) if expected.numel() else 1.0
    )
    return torch.isclose(actual, expected, rtol=tol.rtol, atol=tol.atol * scale, equal_nan=True)


def same(actual: object, expected: object, tol: Tolerance) -> bool:
    """Whether two quantities agree: tensors of one shape within ``tol``, other values equal."""
    if isinstance(expected, Tensor) or isinstance(actual, Tensor):
        if not (isinstance(actual, Tensor) and isinstance(expected, Tensor)):
            return False
        if actual.shape != expected.shape:
            return False
        return bool(_close_mask(actual, expected, tol).all())
    return actual == expected


def describe_difference(label: str, actual: object, expected: object, tol: Tolerance) -> str:
    """Where ``actual`` departs from ``expected``: shape, count and first index, never a value."""
    if isinstance(expected, Tensor):
        if actual is None:
            return f"{label} is missing (None)"
        if not isinstance(actual, Tensor):
            return f"{label} is a {type(actual).__name__}, expected a tensor"
        if actual.shape != expected.shape:
            return f"{label} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        wrong = ~_close_mask(actual, expected, tol)
        count = int(wrong.sum())
        first = tuple(int(i) for i in torch.nonzero(wrong)[0]) if count else ()
        where = f"index {first}" if len(first) != 1 else f"index {first[0]}"
        return (
            f"{label} differs in {count} of {expected.numel()} values "
            f"(shape {tuple(expected.shape)}), the first at {where}"
        )
    return f"{label}: {actual!r} (expected {expected!r})"
