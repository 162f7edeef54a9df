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
"""

from __future__ import annotations

import torch
from torch import Tensor

from bncourse.nn.functional import reduction_dims

__all__ = ["batch_norm_backward", "dropout_backward", "dropout_mask"]


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(1, -1, *([1] * (ndim - 2)))


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
        raise TypeError("grad_output and input must be torch.Tensors")
    dims = reduction_dims(input)
    if grad_output.shape != input.shape:
        raise ValueError(
            f"grad_output must have the shape of input {tuple(input.shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    ndim, channels = input.dim(), input.shape[1]
    if weight is None:
        weight = torch.ones(channels, dtype=input.dtype, device=input.device)
    if weight.shape != (channels,):
        raise ValueError(
            f"weight must have shape ({channels},), one value per channel, "
            f"got {tuple(weight.shape)}"
        )
    if training:
        n = input.numel() // channels
        if n <= 1:
            raise ValueError(
                "batch norm in training mode needs more than 1 value per channel, "
                f"got input of shape {tuple(input.shape)}"
            )
        mean = input.mean(dim=dims, keepdim=True)
        var = input.var(dim=dims, unbiased=False, keepdim=True)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are needed in evaluation mode")
        mean, var = _per_channel(running_mean, ndim), _per_channel(running_var, ndim)
    inv_std = torch.rsqrt(var + eps)
    x_hat = (input - mean) * inv_std
    grad_bias = grad_output.sum(dim=dims)
    grad_weight = (grad_output * x_hat).sum(dim=dims)
    grad_x_hat = grad_output * _per_channel(weight, ndim)
    if not training:
        return grad_x_hat * inv_std, grad_weight, grad_bias
    # The paths through the mean and the variance: their gradient projects grad_x_hat onto the
    # vectors orthogonal to the constant and to x_hat, per channel.
    mean_path = grad_x_hat.mean(dim=dims, keepdim=True)
    var_path = x_hat * (grad_x_hat * x_hat).mean(dim=dims, keepdim=True)
    grad_input = (grad_x_hat - mean_path - var_path) * inv_std
    return grad_input, grad_weight, grad_bias


def dropout_mask(input: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """The keep mask (1.0 with probability ``1 - p``) that :func:`~bncourse.nn.functional.dropout`
    draws for ``input`` from the same generator state: ``dropout(x, p) == x * mask / (1 - p)``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p is the probability of dropping a unit and must lie in [0, 1), got {p}")
    return torch.empty_like(input).bernoulli_(1 - p, generator=generator)


def dropout_backward(grad_output: Tensor, mask: Tensor, p: float) -> Tensor:
    """Gradient of inverted dropout with respect to its input: ``grad_output * mask / (1 - p)``.

    ``mask`` is the keep mask of the forward pass (1 or True where the unit was kept), not a fresh
    draw: the gradient flows exactly through the units that the forward pass kept.
    """
    if not isinstance(grad_output, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("grad_output and mask must be torch.Tensors")
    if mask.shape != grad_output.shape:
        raise ValueError(
            f"mask must have the shape of grad_output {tuple(grad_output.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p is the probability of dropping a unit and must lie in [0, 1), got {p}")
    return grad_output * mask.to(grad_output.dtype) / (1 - p)
