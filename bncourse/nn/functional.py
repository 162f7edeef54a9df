"""Batch norm and the kinds of dropout as pure functions of tensors.

These are the reference implementations of the course: written with elementary tensor operations
so that every step can be read, yet matching ``torch.nn.functional`` outputs and gradients, and
fast enough to train with. Training-mode batch norm is an autograd function whose backward pass is
the hand-derived one of :mod:`bncourse.nn.backward`.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from bncourse.nn.backward import (
    batch_norm_backward,
    batch_norm_backward_from_statistics,
    batch_statistics,
    inside_functorch,
    multiply_add,
    plain_operations_needed,
    scratch_like,
)
from bncourse.nn.checks import (
    InputError,
    UnsupportedDtypeError,
    as_dtype,
    check_channel_vector,
    check_probability,
    check_tensor,
    computation_dtype,
    per_channel,
    reduction_dims,
)

__all__ = [
    "batch_norm",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "gaussian_dropout",
    "uout",
    "reduction_dims",
]


def _normalize_with_batch_statistics(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode batch norm: the output, and the batch's mean, biased variance and
    1/sqrt(var + eps), each shaped (1, C, 1, ...).

    The forward pass of :class:`_BatchStatisticsNorm`; under torch.func transforms and
    forward-mode AD, ``batch_norm`` calls it directly, as plain differentiable operations.
    """
    x = as_dtype(input, computation_dtype(input))
    # One large temporary: the centred values, then their squares, then the output.
    scratch = scratch_like(x, weight, bias)
    mean, var = batch_statistics(x, scratch)
    inv_std = torch.rsqrt(var + eps)
    # gamma * (x - mean) / sqrt(var + eps) + beta, as one multiply-add per element with
    # per-channel scale = gamma / sqrt(var + eps) and shift = beta - mean * scale.
    scale = inv_std if weight is None else inv_std * per_channel(weight, x.dim())
    if bias is None:
        shift = -mean * scale
    else:
        shift = torch.addcmul(per_channel(bias, x.dim()), mean, scale, value=-1)
    out = multiply_add(x, scale, shift, out=scratch)
    return as_dtype(out, input.dtype), mean, var, inv_std


class _BatchStatisticsNorm(torch.autograd.Function):
    """Batch norm with the statistics of the batch; backward: the hand-derived formula.

    Returns the output and the batch's mean and biased variance (for the running statistics).
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        out, mean, var, inv_std = _normalize_with_batch_statistics(input, weight, bias, eps)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zero gradients for the statistics
        # The input and the statistics are kept for the backward pass, which recomputes x - mean:
        # a pass over the input costs less than keeping another tensor of its size alive.
        ctx.save_for_backward(input, weight, mean, inv_std)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_output: Tensor, *_statistics: Tensor):
        if grad_output is None:
            return None, None, None, None
        input, weight, mean, inv_std = ctx.saved_tensors
        grad_output = as_dtype(grad_output, inv_std.dtype)
        x = as_dtype(input, inv_std.dtype)
        if torch.is_grad_enabled():
            # A differentiable backward pass (create_graph=True): the statistics must be
            # recomputed as functions of the input, not taken as the constants saved above.
            grads = batch_norm_backward(grad_output, x, weight, ctx.eps)
        else:
            grads = batch_norm_backward_from_statistics(grad_output, x, mean, inv_std, weight)
        grad_input, grad_weight, grad_bias = grads
        needs = ctx.needs_input_grad
        return (
            as_dtype(grad_input, input.dtype) if needs[0] else None,
            as_dtype(grad_weight, weight.dtype) if needs[1] else None,
            as_dtype(grad_bias, ctx.bias_dtype) if needs[2] else None,
            None,
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

    As in torch: an empty batch gives an empty output and leaves the running statistics as they
    are; ``eps`` must be positive in training mode; float16 and bfloat16 input is computed in
    float32 and returned in its own dtype.
    """
    check_tensor("input", input)
    reduction_dims(input)
    channels = input.shape[1]
    for name, vector in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        check_channel_vector(name, vector, channels)
    if (running_mean is None) != (running_var is None):
        raise InputError("running_mean and running_var must be given together or both be None")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a float, got {momentum!r}")
    momentum = float(momentum)
    compute = computation_dtype(input, running_mean, running_var, weight, bias)
    if eps < 0:
        raise InputError(f"eps must be non-negative (positive in training mode), got {eps}")
    if not training:
        if running_mean is None:
            raise InputError(
                "running_mean and running_var are needed in evaluation mode (training=False)"
            )
        return _normalize_with(input, running_mean, running_var, weight, bias, eps, compute)

    if not eps > 0:
        raise InputError(
            f"eps must be positive in training mode (it keeps 1/sqrt(var + eps) finite), got {eps}"
        )
    n = input.numel() // channels if channels else 0
    if n == 1:
        raise InputError(
            "batch norm in training mode needs more than 1 value per channel to compute a "
            f"variance, got input of shape {tuple(input.shape)}; "
            "use a larger batch or call .eval()"
        )
    if input.numel() == 0:
        return _empty_output(input, weight, bias)
    if plain_operations_needed():
        out, mean, var, _ = _normalize_with_batch_statistics(input, weight, bias, eps)
    else:
        out, mean, var = _BatchStatisticsNorm.apply(input, weight, bias, eps)
    if running_mean is not None:
        _update_running_statistics(running_mean, running_var, mean, var, n, momentum)
    return out


def _normalize_with(input, mean, var, weight, bias, eps, compute) -> Tensor:
    """Evaluation mode: y = gamma (x - mean) / sqrt(var + eps) + beta as x * scale + shift."""
    ndim = input.dim()
    scale = torch.rsqrt(as_dtype(var, compute) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    x = as_dtype(input, compute)
    scale, shift = per_channel(scale, ndim), per_channel(shift, ndim)
    out = multiply_add(x, scale, shift, out=scratch_like(x, scale, shift))
    return as_dtype(out, input.dtype)


def _empty_output(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The empty output of an empty batch, still connected to the parameters (zero gradients)."""
    out = input.clone()
    if weight is not None:
        out = out * per_channel(weight, input.dim())
    if bias is not None:
        out = out + per_channel(bias, input.dim())
    return out.to(input.dtype)


def _update_running_statistics(running_mean, running_var, mean, var, n, momentum) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place, where the batch's
    variance is the unbiased one, ``n / (n - 1)`` times the biased ``var`` of the batch."""
    mean = as_dtype(mean.reshape(running_mean.shape), running_mean.dtype)
    var = as_dtype(var.reshape(running_var.shape), running_var.dtype)
    bessel = n / (n - 1)
    if not inside_functorch():
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var, alpha=momentum * bessel)
        return
    unbiased_var = var * bessel
    new_mean = running_mean * (1 - momentum) + mean * momentum
    new_var = running_var * (1 - momentum) + unbiased_var * momentum
    try:  # both computed first, so that a refusal leaves the statistics as they were
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    except RuntimeError as error:  # under torch.func.vmap, the statistics are batched
        raise InputError(
            "batch norm in training mode got a batched input (torch.func.vmap) while "
            "running_mean and running_var, which are updated in place, are not batched: "
            "build the module with track_running_stats=False, or call "
            "torch.func.replace_all_batch_norm_modules_(model) first"
        ) from error


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale survivors by ``1/(1-p)``.

    ``p`` is the probability of *dropping*, as in ``torch.nn.functional.dropout`` (same signature,
    plus a keyword-only ``generator`` for the random mask). The scaling keeps the expectation of
    every element unchanged, so evaluation mode is the identity.
    """
    check_tensor("input", input)
    p = check_probability(p, allow_one=True)
    return _masked(input, p, training, inplace, input.shape, generator)


def _masked(
    input: Tensor,
    p: float,
    training: bool,
    inplace: bool,
    mask_shape: tuple[int, ...],
    generator: torch.Generator | None,
) -> Tensor:
    """``input * mask / (1 - p)`` with a keep mask of ``mask_shape`` (broadcast over the input)."""
    if not training or p == 0 or input.numel() == 0:
        return input
    _check_floating(input)
    if p == 1:
        return input.mul_(0) if inplace else input * input.new_zeros(())
    # Element-wise masks are drawn in the input's memory order, as torch does.
    mask = torch.empty_like(input) if mask_shape == input.shape else input.new_empty(mask_shape)
    keep = mask.bernoulli_(1 - p, generator=generator)
    if inplace:
        return input.mul_(keep).div_(1 - p)
    return input * keep / (1 - p)


def _channel_mask_shape(input: Tensor) -> tuple[int, ...]:
    """One mask value per (sample, channel): shape (N, C, 1, ..., 1)."""
    return (*input.shape[:2], *([1] * (input.dim() - 2)))


def _check_floating(input: Tensor) -> None:
    if not (input.is_floating_point() or input.is_complex()):
        raise UnsupportedDtypeError(
            f"dropout needs a floating-point input, got dtype {input.dtype}"
        )


def _channel_dropout(input, p, training, inplace, generator, batched: bool) -> Tensor:
    """Zero whole channels; an unbatched input is one sample (batched=False)."""
    if not batched:
        input = input.unsqueeze_(0) if inplace else input.unsqueeze(0)
    if input.dim() < 2:
        raise InputError(
            f"channel dropout needs at least 2 dimensions (N and C), got a {input.dim()}D tensor"
        )
    out = _masked(input, p, training, inplace, _channel_mask_shape(input), generator)
    if not batched:
        out = out.squeeze_(0) if inplace else out.squeeze(0)
    return out


def dropout1d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Channel dropout of (N, C, L) or (C, L) input: each channel of each sample is kept whole or
    zeroed with probability ``p`` (survivors scaled by ``1/(1-p)``), as ``torch.nn.functional.dropout1d``."""
    check_tensor("input", input)
    p = check_probability(p, allow_one=True)
    if input.dim() not in (2, 3):
        raise InputError(
            f"dropout1d expects input of shape (N, C, L) or (C, L), got a {input.dim()}D tensor"
        )
    return _channel_dropout(input, p, training, inplace, generator, batched=input.dim() == 3)


def dropout2d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Channel dropout of (N, C, H, W) input, as ``torch.nn.functional.dropout2d``.

    Like torch (for now), a 3D input is read as (N, C, L), not as one unbatched (C, H, W) sample,
    with torch's warning; other shapes warn too and are read as (N, C, ...).
    """
    check_tensor("input", input)
    p = check_probability(p, allow_one=True)
    if input.dim() not in (3, 4):
        warnings.warn(
            f"dropout2d expects (N, C, H, W) input, got a {input.dim()}D tensor: "
            "use dropout for element-wise dropout",
            stacklevel=2,
        )
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: a 3D input is read as (N, C, L), as torch does for now, not as one "
            "(C, H, W) sample: use dropout1d for (N, C, L) input",
            stacklevel=2,
        )
    return _channel_dropout(input, p, training, inplace, generator, batched=True)


def dropout3d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Channel dropout of (N, C, D, H, W) or (C, D, H, W) input, as ``torch.nn.functional.dropout3d``."""
    check_tensor("input", input)
    p = check_probability(p, allow_one=True)
    if input.dim() not in (4, 5):
        warnings.warn(
            f"dropout3d expects (N, C, D, H, W) or (C, D, H, W) input, got a {input.dim()}D "
            "tensor: use dropout for element-wise dropout",
            stacklevel=2,
        )
    return _channel_dropout(input, p, training, inplace, generator, batched=input.dim() == 5)


SELU_ALPHA_SCALE = 1.7580993408473766
"""-alpha * lambda of SELU: the value a dropped unit takes in alpha dropout (before the affine map)."""


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Alpha dropout for SELU networks, as ``torch.nn.functional.alpha_dropout``.

    A dropped unit is set to SELU's negative saturation value ``-alpha' = -1.7581`` instead of 0,
    and the result is mapped by ``a * x + b`` chosen so that zero-mean, unit-variance input keeps
    mean 0 and variance 1 (Klambauer et al., 2017). Note torch's default ``training=False``.
    """
    check_tensor("input", input)
    p = check_probability(p, allow_one=True)
    if not training or p == 0 or input.numel() == 0:
        return input
    _check_floating(input)
    if p == 1:
        return input.mul_(0) if inplace else input * input.new_zeros(())
    keep = torch.empty_like(input).bernoulli_(1 - p, generator=generator)
    alpha = SELU_ALPHA_SCALE
    a = 1 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
    # kept: a * x + a * alpha * p;  dropped: a * (-alpha) + a * alpha * p
    b = (keep - 1) * (alpha * a) + alpha * a * p
    noise = keep * a
    out = input.mul_(noise) if inplace else input * noise
    return out.add_(b)


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
    check_tensor("input", input)
    p = check_probability(p, allow_one=False)
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
    check_tensor("input", input)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a float >= 0, got {beta!r}")
    if not beta >= 0:
        raise InputError(
            f"beta is the half-width of the uniform noise and must be >= 0, got {beta}"
        )
    if not training or beta == 0:
        return input
    r = torch.empty_like(input).uniform_(-beta, beta, generator=generator)
    return input + input * r
