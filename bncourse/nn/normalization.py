"""Layer norm and group norm as pure functions and as drop-in modules for their ``torch.nn`` twins.

Batch norm averages over the *batch* (and the spatial axes); these two average over the axes of
*one sample*, so they behave the same in training and evaluation, keep no running statistics, and
work on a batch of one:

* ``layer_norm``: the last ``len(normalized_shape)`` axes of each sample (Ba et al., 2016), with
  one weight and bias per normalized *element* (``torch.nn.LayerNorm``);
* ``group_norm``: the channels of each sample split into ``num_groups`` groups, each normalized
  over its channels and spatial positions (Wu & He, 2018), with one weight and bias per *channel*
  (``torch.nn.GroupNorm``). ``num_groups=1`` normalizes the whole sample, ``num_groups=C`` each
  channel on its own (instance norm).

Both use the biased variance (divided by the number of averaged values), as torch does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bncourse.nn.checks import InputError, check_channel_vector, check_tensor, computation_dtype

__all__ = ["layer_norm", "group_norm", "LayerNorm", "GroupNorm"]


def _standardize(x: Tensor, dims: list[int], eps: float) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=dims, keepdim=True)  # biased, as in torch
    return centered * torch.rsqrt(var + eps)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each sample over its last axes ``normalized_shape``; elementwise affine."""
    check_tensor("input", input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[-k:]) != shape:
        raise InputError(
            f"normalized_shape {shape} must equal the last axes of the input, "
            f"got input of shape {tuple(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(check_tensor(name, t).shape) != shape:
            raise InputError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    x = input.to(computation_dtype(input, weight, bias))
    out = _standardize(x, list(range(-k, 0)), eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(input.dtype)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each sample's ``num_groups`` channel groups ``(N, C, ...)``; per-channel affine."""
    check_tensor("input", input)
    if input.dim() < 2:
        raise InputError(f"input must be (N, C, ...), got shape {tuple(input.shape)}")
    channels = input.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise InputError(f"num_groups must be a positive int, got {num_groups!r}")
    if channels % num_groups:
        raise InputError(f"num_groups={num_groups} must divide the number of channels {channels}")
    check_channel_vector("weight", weight, channels)
    check_channel_vector("bias", bias, channels)
    x = input.to(computation_dtype(input, weight, bias))
    grouped = x.reshape(x.shape[0], num_groups, -1)  # (N, G, C/G * spatial)
    out = _standardize(grouped, [2], eps).reshape(x.shape)
    per_channel = (1, channels, *([1] * (input.dim() - 2)))
    if weight is not None:
        out = out * weight.reshape(per_channel)
    if bias is not None:
        out = out + bias.reshape(per_channel)
    return out.to(input.dtype)


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by :func:`layer_norm` (same arguments and parameters)."""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` computed by :func:`group_norm` (same arguments and parameters)."""

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
