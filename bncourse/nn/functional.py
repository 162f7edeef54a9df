"""Batch norm and three kinds of dropout as pure functions of tensors.

These are the reference implementations of the course: written with elementary tensor operations
so that every step can be read, yet matching ``torch.nn.functional`` outputs and gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["batch_norm", "dropout", "gaussian_dropout", "uout", "reduction_dims"]


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_probability(p: object, *, allow_one: bool) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float (the probability of dropping a unit), got {p!r}")
    upper_ok = p <= 1 if allow_one else p < 1
    if not (0 <= p and upper_ok) or math.isnan(p):
        interval = "[0, 1]" if allow_one else "[0, 1) (p = 1 means noise of infinite variance)"
        raise ValueError(
            f"p is the probability of dropping a unit and must lie in {interval}, got {p}"
        )
    return float(p)


def reduction_dims(input: Tensor) -> list[int]:
    """Axes batch norm averages over: N for (N, C), N and L for (N, C, L), N, H, W for (N, C, H, W)."""
    if input.dim() not in (2, 3, 4):
        raise ValueError(
            "input must have shape (N, C), (N, C, L) or (N, C, H, W), "
            f"got a {input.dim()}D tensor of shape {tuple(input.shape)}"
        )
    return [0, *range(2, input.dim())]


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) vector so that it broadcasts along dim 1 of an ndim-dimensional input."""
    return t.reshape(1, -1, *([1] * (ndim - 2)))


def _check_channel_vector(name: str, t: Tensor | None, channels: int) -> None:
    if t is None:
        return
    _check_tensor(name, t)
    if t.shape != (channels,):
        raise ValueError(
            f"{name} must have shape ({channels},), one value per channel of the input, "
            f"got shape {tuple(t.shape)}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    In training mode the input is normalized with the statistics of the batch (mean and *biased*
    variance over every axis but the channel axis 1) and, when running buffers are given, they are
    updated in place: ``running = (1 - momentum) * running + momentum * batch_statistic``, where
    the variance stored is the *unbiased* one, ``n / (n - 1)`` times the biased variance.
    In evaluation mode the running statistics are used and nothing is updated.
    """
    _check_tensor("input", input)
    dims = reduction_dims(input)
    channels = input.shape[1]
    _check_channel_vector("running_mean", running_mean, channels)
    _check_channel_vector("running_var", running_var, channels)
    _check_channel_vector("weight", weight, channels)
    _check_channel_vector("bias", bias, channels)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float in [0, 1], got {momentum!r}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")

    ndim = input.dim()
    if training:
        n = input.numel() // channels
        if n <= 1:
            raise ValueError(
                "batch norm in training mode needs more than 1 value per channel to compute a "
                f"variance, got input of shape {tuple(input.shape)}; "
                "use a larger batch or call .eval()"
            )
        mean = input.mean(dim=dims)
        var = input.var(dim=dims, unbiased=False)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                unbiased = var.detach() * (n / (n - 1))
                running_var.mul_(1 - momentum).add_(unbiased * momentum)
    else:
        if running_mean is None:
            raise ValueError(
                "running_mean and running_var are needed in evaluation mode (training=False)"
            )
        mean, var = running_mean, running_var

    out = (input - _per_channel(mean, ndim)) / torch.sqrt(_per_channel(var, ndim) + eps)
    if weight is not None:
        out = out * _per_channel(weight, ndim)
    if bias is not None:
        out = out + _per_channel(bias, ndim)
    return out


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale survivors by ``1/(1-p)``.

    ``p`` is the probability of *dropping*, as in ``torch.nn.functional.dropout``. The scaling
    keeps the expectation of every element unchanged, so evaluation mode is the identity.
    """
    _check_tensor("input", input)
    p = _check_probability(p, allow_one=True)
    if not training or p == 0:
        return input
    if p == 1:
        return input * torch.zeros_like(input)
    keep = torch.empty_like(input).bernoulli_(1 - p, generator=generator)
    return input * keep / (1 - p)


def gaussian_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian dropout: multiply by noise drawn from N(1, p / (1 - p)).

    The noise has the same mean (1) and variance (p / (1 - p)) as the mask of inverted Bernoulli
    dropout with drop probability ``p`` (Srivastava et al., 2014), so ``p`` means the same here.
    """
    _check_tensor("input", input)
    p = _check_probability(p, allow_one=False)
    if not training or p == 0:
        return input
    std = math.sqrt(p / (1 - p))
    noise = torch.empty_like(input).normal_(1.0, std, generator=generator)
    return input * noise


def uout(
    input: Tensor,
    beta: float = 0.1,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uout (Li et al., 2019): ``x + x * r`` with ``r ~ U(-beta, beta)`` drawn per element."""
    _check_tensor("input", input)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a float >= 0, got {beta!r}")
    if not beta >= 0:
        raise ValueError(
            f"beta is the half-width of the uniform noise and must be >= 0, got {beta}"
        )
    if not training or beta == 0:
        return input
    r = torch.empty_like(input).uniform_(-beta, beta, generator=generator)
    return input + input * r
