r"""Hand-derived backward passes of batch norm and inverted dropout, without autograd.

With :math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` computed per channel over the
:math:`n` values of that channel (over N, and H, W for convolutional input) and
:math:`y = \gamma \hat x + \beta`, the gradients of a loss with upstream gradient
:math:`g = \partial L / \partial y` are, per channel,

.. math::

    \frac{\partial L}{\partial \beta} = \sum g, \qquad
    \frac{\partial L}{\partial \gamma} = \sum g \, \hat x, \qquad
    \frac{\partial L}{\partial x} = \frac{\gamma}{n \sqrt{\sigma^2 + \epsilon}}
    \Big( n g - \sum g - \hat x \sum g \, \hat x \Big),

where the two sums inside the bracket are the paths through the batch mean and the batch
variance. In evaluation mode the statistics are constants and only the first term remains.
Inverted dropout multiplies by the mask divided by :math:`1 - p`, so its backward pass multiplies
the upstream gradient by that same mask: the one drawn in the forward pass.

The training-mode batch norm of :mod:`bncourse.nn.functional` runs this backward pass
(:func:`batch_norm_backward_from_statistics`) as its autograd backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad

from bncourse.nn.checks import InputError, NotATensorError, per_channel, reduction_dims

__all__ = [
    "batch_norm_backward",
    "batch_norm_backward_from_statistics",
    "batch_statistics",
    "batch_sum",
    "dropout_backward",
    "dropout_mask",
    "inside_functorch",
    "plain_operations_needed",
    "multiply_add",
    "scratch_like",
]


def batch_norm_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-5,
    *,
    training: bool = True,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of batch norm with respect to ``input``, ``weight`` (gamma) and ``bias`` (beta).

    ``grad_output`` is the gradient of the loss with respect to the output of
    ``batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)``; the
    result is ``(grad_input, grad_weight, grad_bias)``, the same as autograd gives through
    :func:`bncourse.nn.functional.batch_norm` (``grad_weight`` and ``grad_bias`` are returned even
    when ``weight`` is None, i.e. for gamma = 1 and beta = 0). In training mode the statistics are
    those of the batch (biased variance); in evaluation mode ``running_mean`` and ``running_var``
    are constants.
    """
    if not isinstance(grad_output, Tensor) or not isinstance(input, Tensor):
        raise NotATensorError("grad_output and input must be torch.Tensors")
    reduction_dims(input)  # refuses input without a channel axis
    if grad_output.shape != input.shape:
        raise InputError(
            f"grad_output must have the shape of input {tuple(input.shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    ndim, channels = input.dim(), input.shape[1]
    if weight is not None and weight.shape != (channels,):
        raise InputError(
            f"weight must have shape ({channels},), one value per channel, "
            f"got {tuple(weight.shape)}"
        )
    if training:
        if input.numel() // max(channels, 1) <= 1:
            raise InputError(
                "batch norm in training mode needs more than 1 value per channel, "
                f"got input of shape {tuple(input.shape)}"
            )
        mean, var = batch_statistics(input, scratch_like(input))
    else:
        if running_mean is None or running_var is None:
            raise InputError("running_mean and running_var are needed in evaluation mode")
        mean, var = per_channel(running_mean, ndim), per_channel(running_var, ndim)
    inv_std = torch.rsqrt(var + eps)
    return batch_norm_backward_from_statistics(
        grad_output, input, mean, inv_std, weight, training=training
    )


def batch_statistics(x: Tensor, scratch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each channel, shaped (1, C, 1, ...) to broadcast over ``x``.

    Two passes, the variance as the mean of the squares of ``x - mean``: stable where the one-pass
    ``E[x^2] - mean^2`` loses every digit to cancellation (a channel of large mean and small
    spread). The centred values and their squares are written into ``scratch`` where one is
    given (see :func:`scratch_like`), and are fresh tensors otherwise.
    """
    dims = reduction_dims(x)
    n = x.numel() // max(x.shape[1], 1)
    mean = batch_sum(x, dims) / n
    centered = torch.sub(x, mean, out=scratch)
    squares = torch.mul(centered, centered, out=scratch)
    return mean, batch_sum(squares, dims) / n


BLOCK_ROWS = 16


def batch_sum(x: Tensor, dims: list[int]) -> Tensor:
    """``x.sum(dims, keepdim=True)``: each channel's sum over the batch (and positions).

    Under torch.compile on a CPU, (N, C) input whose N is a multiple of :data:`BLOCK_ROWS` is
    summed in blocks of that many consecutive rows first, then over the blocks: the compiled loop
    down one column of a row-major matrix jumps a whole row from value to value, and runs several
    times slower than one that reads a few rows together. Eagerly, PyTorch's own sum is fastest.
    """
    rows = x.shape[0]
    if (
        torch.compiler.is_compiling()
        and x.dim() == 2
        and x.device.type == "cpu"
        and rows > BLOCK_ROWS
        and rows % BLOCK_ROWS == 0
    ):
        return x.view(rows // BLOCK_ROWS, BLOCK_ROWS, x.shape[1]).sum(1).sum(0, keepdim=True)
    return x.sum(dim=dims, keepdim=True)


def batch_norm_backward_from_statistics(
    grad_output: Tensor,
    input: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None = None,
    *,
    training: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The backward pass of batch norm from the forward pass's statistics.

    ``mean`` is :math:`\mu` and ``inv_std`` is :math:`1 / \sqrt{\sigma^2 + \epsilon}`, both
    shaped to broadcast over the input (``(1, C, 1, ...)``). The formula of the module docstring
    is evaluated without forming :math:`\hat x`: with :math:`k = 1/\sqrt{\sigma^2 + \epsilon}`,

    .. math::

        \frac{\partial L}{\partial x} = \gamma k \, g
        - \gamma k^3 \frac{\sum g (x - \mu)}{n} (x - \mu) - \gamma k \frac{\sum g}{n},

    a per-channel multiple of :math:`g`, plus one of :math:`x - \mu`, plus a per-channel constant:
    two sums over the batch and multiply-adds per element, all written over one large temporary
    that becomes the gradient of the input. :math:`x - \mu` is computed twice, for
    :math:`\sum g (x - \mu)` and for the gradient: a pass over the input costs less than a
    second temporary of its size.
    """
    dims = reduction_dims(input)
    n = input.numel() // max(input.shape[1], 1)
    scratch = scratch_like(input, grad_output, mean, inv_std, weight)
    grad_bias = batch_sum(grad_output, dims)  # sum of g
    products = torch.mul(torch.sub(input, mean, out=scratch), grad_output, out=scratch)
    grad_weight = batch_sum(products, dims) * inv_std  # sum of g x_hat = k sum g (x - mu)
    scale = inv_std if weight is None else inv_std * per_channel(weight, input.dim())
    if training:
        # The paths through the variance and through the mean, as per-channel coefficients.
        per_value = scale * (-1 / n)  # -gamma k / n
        variance_path = per_value * inv_std * grad_weight  # -gamma k^3 sum g(x - mu) / n
        mean_path = per_value * grad_bias  # -gamma k sum g / n
        centered = torch.sub(input, mean, out=scratch)  # x - mu, again
        grad_input = multiply_add(centered, variance_path, mean_path, out=scratch)
        grad_input = torch.addcmul(grad_input, grad_output, scale, out=scratch)
    else:
        grad_input = torch.mul(grad_output, scale, out=scratch)
    return grad_input, grad_weight.reshape(-1), grad_bias.reshape(-1)


def multiply_add(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * scale + shift`` for per-channel ``scale`` and ``shift`` (shape (1, C, 1, ...)).

    One fused pass (``addcmul``) for (N, C) input; for (N, C, ...) input, where the vectors
    broadcast along trailing axes and addcmul is slower, a multiply and an add. The result is
    written into ``out`` where one is given (see :func:`scratch_like`).
    """
    if x.dim() == 2:
        return torch.addcmul(shift, x, scale, out=out)
    product = torch.mul(x, scale, out=out)
    return product.add_(shift) if out is not None else product + shift


def scratch_like(x: Tensor, *others: Tensor | None) -> Tensor | None:
    """An uninitialised tensor like ``x`` for the ``out=`` of a chain of element-wise operations,
    or None (each operation then returns a fresh tensor) where writing in place is not allowed.

    On a CPU a fresh large tensor costs about as much as a pass over it, and several alive at
    once cost more (the memory is handed back to the system and faulted in again), so the
    layers write their intermediate results over one temporary.
    """
    return torch.empty_like(x) if may_write_in_place(x, *others) else None


def inside_functorch() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running."""
    return torch._C._are_functorch_transforms_active()


# Tensors batched by vmap: torch.func's, and the legacy ones of autograd's batched gradients.
_BATCHED_CHECKS = tuple(
    check
    for name in ("is_batchedtensor", "is_legacy_batchedtensor")
    if (check := getattr(torch._C._functorch, name, None)) is not None
)


def may_write_in_place(*tensors: Tensor | None) -> bool:
    """Whether plain eager execution allows ``out=`` and in-place shortcuts on these tensors.

    Not where autograd records them, under torch.compile (which fuses on its own), under a
    torch.func transform or forward-mode AD, or for tensors batched by vmap (autograd's batched
    gradients included): those need the plain, out-of-place operations. None is ignored.
    """
    if torch.compiler.is_compiling() or plain_operations_needed():
        return False
    recording = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if recording and t.requires_grad:
            return False
        for is_batched in _BATCHED_CHECKS:
            if is_batched(t):
                return False
    return True


def plain_operations_needed() -> bool:
    """Whether a torch.func transform or forward-mode AD is active (outside torch.compile).

    These derive a layer from its operations, and have no rules for ``out=`` and custom backward
    passes; ordinary training (and torch.compile, which traces the autograd function) uses them.
    """
    if torch.compiler.is_compiling():
        return False
    return inside_functorch() or getattr(forward_ad, "_current_level", -1) >= 0


def dropout_mask(input: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """The keep mask (1.0 with probability ``1 - p``) that :func:`~bncourse.nn.functional.dropout`
    draws for ``input`` from the same generator state: ``dropout(x, p) == x * mask / (1 - p)``."""
    if not isinstance(input, Tensor):
        raise NotATensorError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"p is the probability of dropping a unit and must lie in [0, 1), got {p}")
    return torch.empty_like(input).bernoulli_(1 - p, generator=generator)


def dropout_backward(grad_output: Tensor, mask: Tensor, p: float) -> Tensor:
    """Gradient of inverted dropout with respect to its input: ``grad_output * mask / (1 - p)``.

    ``mask`` is the keep mask of the forward pass (1 or True where the unit was kept), not a fresh
    draw: the gradient flows exactly through the units that the forward pass kept.
    """
    if not isinstance(grad_output, Tensor) or not isinstance(mask, Tensor):
        raise NotATensorError("grad_output and mask must be torch.Tensors")
    if mask.shape != grad_output.shape:
        raise InputError(
            f"mask must have the shape of grad_output {tuple(grad_output.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"p is the probability of dropping a unit and must lie in [0, 1), got {p}")
    return grad_output * mask.to(grad_output.dtype) / (1 - p)
