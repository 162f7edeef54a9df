"""Argument checks and shape helpers shared by the reference layers, with torch.nn's error types.

Every refusal names the argument and what was expected. The exception classes are subclasses of
the type ``torch.nn`` raises for the same input as well as of the natural Python type, so code
written against torch (``except RuntimeError``) and code written against this course
(``except ValueError``) both catch them.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "InputError",
    "NotATensorError",
    "UnsupportedDtypeError",
    "check_tensor",
    "check_probability",
    "check_channel_vector",
    "computation_dtype",
    "reduction_dims",
    "per_channel",
    "as_dtype",
]


class InputError(ValueError, RuntimeError):
    """A value or shape the layer cannot use (torch raises ValueError or RuntimeError for these)."""


class UnsupportedDtypeError(TypeError, NotImplementedError):
    """A dtype the layer does not compute in, such as integers (torch: NotImplementedError)."""


class NotATensorError(TypeError, AttributeError):
    """Something other than a tensor where a tensor is needed (torch raises AttributeError)."""


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise NotATensorError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_probability(p: object, *, allow_one: bool) -> float:
    """``p`` as a float in [0, 1] (or [0, 1) where ``allow_one`` is false).

    Any real number is accepted (a NumPy scalar, a one-element tensor), but not a bool, which is
    more likely a misplaced ``training`` or ``inplace`` flag than a probability.
    """
    if isinstance(p, Tensor) and p.numel() == 1 and p.dtype.is_floating_point:
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a float (the probability of dropping a unit), got {p!r}")
    upper_ok = p <= 1 if allow_one else p < 1
    if not (0 <= p and upper_ok) or math.isnan(p):
        interval = "[0, 1]" if allow_one else "[0, 1) (p = 1 means noise of infinite variance)"
        raise InputError(
            f"p is the probability of dropping a unit and must lie in {interval}, got {p}"
        )
    return float(p)


def reduction_dims(input: Tensor) -> list[int]:
    """Axes batch norm averages over: every axis but the channel axis 1.

    N for (N, C), N and L for (N, C, L), N, H, W for (N, C, H, W), N, D, H, W for (N, C, D, H, W).
    """
    if input.dim() < 2:
        raise InputError(
            "input must have a batch axis and a channel axis, (N, C, ...), "
            f"got a {input.dim()}D tensor of shape {tuple(input.shape)}"
        )
    return [0, *range(2, input.dim())]


def per_channel(t: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) vector so that it broadcasts along dim 1 of an ndim-dimensional input.

    For (N, C) input the vector broadcasts as it is, and is returned unchanged.
    """
    return t if ndim == 2 else t.reshape(1, -1, *([1] * (ndim - 2)))


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, without the call where ``t`` has that dtype already."""
    return t if t.dtype == dtype else t.to(dtype)


def check_channel_vector(name: str, t: Tensor | None, channels: int) -> None:
    if t is None:
        return
    check_tensor(name, t)
    if t.shape != (channels,):
        raise InputError(
            f"{name} must have shape ({channels},), one value per channel of the input, "
            f"got shape {tuple(t.shape)}"
        )


REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def computation_dtype(input: Tensor, *vectors: Tensor | None) -> torch.dtype:
    """The dtype batch norm computes in: the input's, or float32 for float16 and bfloat16 input.

    As in torch: per-channel parameters and buffers share the input's dtype, except that float16
    and bfloat16 input may come with float32 ones (mixed precision). Sums over a channel are
    accumulated in float32 for such input, where float16 would overflow past 65504.
    """
    if not input.is_floating_point():
        raise UnsupportedDtypeError(
            f"input must be a floating-point tensor, got dtype {input.dtype}"
        )
    compute = torch.float32 if input.dtype in REDUCED_PRECISION else input.dtype
    for t in vectors:
        if t is not None and t.dtype not in (input.dtype, compute):
            raise InputError(
                f"parameters and running statistics must have the input's dtype {input.dtype}"
                f"{' (or float32)' if compute != input.dtype else ''}, got one of dtype {t.dtype}"
            )
    return compute
