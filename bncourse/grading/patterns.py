"""What a wrong tensor has in common with the right one, described from the data alone.

When no catalogued misconception explains a difference, :func:`describe_pattern` looks for a
simple relation between the submission's values and the correct ones (non-finite values, all
zeros, an input returned unchanged, a sign flip, a scaling or an offset, globally or per channel)
and says it in words a student can act on: "equals the correct one scaled per channel by about
[0.866, 0.866, 0.866]". It reveals relations, never the expected values themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from bncourse.grading.compare import Tolerance, same

__all__ = ["Pattern", "describe_pattern"]

# More values than parameters, so that a fitted relation is evidence rather than arithmetic.
_MIN_VALUES = {"scale": 2, "offset": 2, "affine": 3}
_LISTED_CHANNELS = 8


@dataclass(frozen=True)
class Pattern:
    """A relation found between a submission's values and the correct ones.

    ``kind`` is stable ("nan", "inf", "zeros", "input", "sign", "scale", "channel-sign",
    "channel-scale", "offset", "channel-offset", "channel-affine", "affine"); ``text`` completes
    "your <quantity> ...".
    """

    kind: str
    text: str


def _about(value: float) -> str:
    """``value`` with 3 significant digits, more where 3 would round it to 0 or +-1."""
    text = f"{value:.3g}"
    for digits in range(4, 8):
        if float(text) not in (0.0, 1.0, -1.0) or float(text) == value:
            break
        text = f"{value:.{digits}g}"
    return text


def _listed(values: Tensor) -> str:
    numbers = [float(v) for v in values]
    if len(numbers) <= _LISTED_CHANNELS:
        return "[" + ", ".join(_about(v) for v in numbers) + "]"
    return f"factors from {_about(min(numbers))} to {_about(max(numbers))}"


def _nonfinite(a: Tensor) -> Pattern | None:
    nan, inf, total = int(a.isnan().sum()), int(a.isinf().sum()), a.numel()
    if not nan and not inf:
        return None
    if nan == total:
        return Pattern("nan", "is NaN everywhere (a 0/0 or the square root of a negative number?)")
    if inf == total:
        return Pattern("inf", "is infinite everywhere (a division by zero?)")
    if nan:
        return Pattern(
            "nan",
            f"contains NaN in {nan} of {total} values (a 0/0 or the square root of a negative "
            "number?)",
        )
    return Pattern("inf", f"contains infinite values in {inf} of {total} (a division by zero?)")


def _by_channel(t: Tensor, channel_dim: int) -> Tensor:
    return t.movedim(channel_dim, 0).reshape(t.shape[channel_dim], -1)


def _scale(a: Tensor, e: Tensor) -> Tensor | None:
    """Least-squares factors k of a ~ k e, one per row; None where a row of e is zero."""
    energy = (e * e).sum(dim=-1)
    if bool((energy == 0).any()):
        return None
    return (a * e).sum(dim=-1) / energy


def _affine(a: Tensor, e: Tensor) -> tuple[Tensor, Tensor] | None:
    """Least-squares k, b of a ~ k e + b, one pair per row; None where a row of e is constant."""
    ec = e - e.mean(dim=-1, keepdim=True)
    energy = (ec * ec).sum(dim=-1)
    if bool((energy == 0).any()):
        return None
    k = (ec * (a - a.mean(dim=-1, keepdim=True))).sum(dim=-1) / energy
    return k, a.mean(dim=-1) - k * e.mean(dim=-1)


def _linear(a: Tensor, e: Tensor, tol: Tolerance, channel_dim: int | None) -> Pattern | None:
    """A scaling, an offset or both, first of the whole tensor, then per channel."""
    whole_a, whole_e = a.reshape(1, -1), e.reshape(1, -1)
    rows = None
    if channel_dim is not None and a.dim() > channel_dim and a.shape[channel_dim] > 1:
        rows = (_by_channel(a, channel_dim), _by_channel(e, channel_dim))
    per_row = rows[0].shape[1] if rows else 0
    fits = lambda fitted: same(a, fitted, tol)  # noqa: E731

    def expand(values: Tensor) -> Tensor:
        shape = [1] * a.dim()
        shape[channel_dim] = -1
        return values.reshape(shape)

    if a.numel() >= _MIN_VALUES["scale"]:
        k = _scale(whole_a, whole_e)
        if k is not None and fits(k * e):
            k = float(k)
            if abs(k + 1) <= tol.rtol:
                return Pattern("sign", "has the opposite sign of the correct one everywhere")
            return Pattern("scale", f"equals the correct one times about {_about(k)}")
    if rows and per_row >= _MIN_VALUES["scale"]:
        k = _scale(*rows)
        if k is not None and fits(expand(k) * e):
            flipped = (k + 1).abs() <= tol.rtol
            if bool((flipped | ((k - 1).abs() <= tol.rtol)).all()):
                where = [int(c) for c in torch.nonzero(flipped).flatten()]
                return Pattern(
                    "channel-sign",
                    f"has the opposite sign in channel(s) {where} and is right in the others",
                )
            return Pattern(
                "channel-scale", f"equals the correct one scaled per channel by about {_listed(k)}"
            )
    if a.numel() >= _MIN_VALUES["offset"]:
        d = float((a - e).mean())
        if fits(e + d):
            sign = "plus" if d > 0 else "minus"
            return Pattern("offset", f"equals the correct one {sign} about {_about(abs(d))}")
    if rows and per_row >= _MIN_VALUES["offset"]:
        d = (rows[0] - rows[1]).mean(dim=-1)
        if fits(e + expand(d)):
            return Pattern(
                "channel-offset", f"equals the correct one shifted per channel by {_listed(d)}"
            )
    if rows and per_row >= _MIN_VALUES["affine"]:
        fit = _affine(*rows)
        if fit is not None and fits(expand(fit[0]) * e + expand(fit[1])):
            return Pattern(
                "channel-affine",
                f"equals the correct one scaled per channel by about {_listed(fit[0])} and "
                f"shifted by about {_listed(fit[1])}",
            )
    if a.numel() >= _MIN_VALUES["affine"]:
        fit = _affine(whole_a, whole_e)
        if fit is not None and fits(float(fit[0]) * e + float(fit[1])):
            k, b = float(fit[0]), float(fit[1])
            sign = "plus" if b > 0 else "minus"
            return Pattern(
                "affine",
                f"equals the correct one times about {_about(k)}, {sign} about {_about(abs(b))}",
            )
    return None


def describe_pattern(
    actual: object,
    expected: object,
    tol: Tolerance,
    *,
    inputs: Mapping[str, Tensor] | None = None,
    channel_dim: int | None = None,
) -> Pattern | None:
    """The simplest relation that ``actual`` bears to ``expected`` within ``tol``, if any.

    Both must be tensors of one shape, ``expected`` finite. ``inputs`` are the case's input
    tensors by the names the student knows them ("x"): an output equal to one of them is said to
    be that input unchanged. ``channel_dim`` allows per-channel scalings and offsets.
    """
    if not (isinstance(actual, Tensor) and isinstance(expected, Tensor)):
        return None
    if actual.shape != expected.shape or not actual.numel():
        return None
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if not bool(e.isfinite().all()):
        return None
    found = _nonfinite(a)
    if found:
        return found
    if not bool(a.any()):
        return Pattern("zeros", "is zero everywhere")
    for name, value in (inputs or {}).items():
        if isinstance(value, Tensor) and value.shape == a.shape and same(a, value, tol):
            return Pattern("input", f"equals the input {name} unchanged")
    return _linear(a, e, tol, channel_dim)
