"""Folding an evaluation-mode batch norm into the linear or convolutional layer before it.

In evaluation mode batch norm is a fixed affine map per channel,
``y = gamma * (z - mu) / sqrt(var + eps) + beta`` with ``mu``, ``var`` the running statistics, so
a layer ``z = W x + b`` followed by it is one layer with ``W' = s W`` and ``b' = s (b - mu) + beta``,
``s = gamma / sqrt(var + eps)`` scaling each output channel. Inference then skips one pass over
the activations. The folded network equals the original one *in evaluation mode* only: training
mode normalizes with the batch's statistics, which no fixed layer can reproduce.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["fold_batchnorm", "fold_parameters", "fold_sequential"]

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm


def fold_parameters(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``(W', b')`` of the layer ``(weight, bias)`` followed by batch norm in evaluation mode.

    ``weight`` is ``(C_out, ...)`` (Linear or ConvNd); ``bias``, ``gamma`` and ``beta`` may be
    None (no bias; BN without affine parameters). New tensors; the arguments are left unchanged.
    """
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    b = bias if bias is not None else weight.new_zeros(weight.shape[0])
    new_bias = (b - running_mean) * scale
    if beta is not None:
        new_bias = new_bias + beta
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), new_bias


@torch.no_grad()
def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (Linear or ConvNd) whose output equals ``bn(layer(x))`` in eval mode."""
    if not isinstance(layer, _WEIGHT_LAYERS):
        raise TypeError(f"layer must be nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")
    if not isinstance(bn, _BATCH_NORMS):
        raise TypeError(f"bn must be a batch-norm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "bn keeps no running statistics (track_running_stats=False): nothing to fold"
        )
    channels = layer.weight.shape[0]
    if bn.num_features != channels:
        raise ValueError(f"bn normalizes {bn.num_features} channels but layer produces {channels}")
    dtype = layer.weight.dtype
    new_weight, new_bias = fold_parameters(
        layer.weight,
        layer.bias,
        bn.running_mean.to(dtype),
        bn.running_var.to(dtype),
        None if bn.weight is None else bn.weight.to(dtype),
        None if bn.bias is None else bn.bias.to(dtype),
        bn.eps,
    )
    folded = copy.deepcopy(layer)
    folded.weight.copy_(new_weight)
    if folded.bias is None:
        folded.bias = nn.Parameter(new_bias)
    else:
        folded.bias.copy_(new_bias)
    return folded


def fold_sequential(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` with every (Linear/ConvNd, BN) pair folded; each BN becomes Identity."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    names = list(folded._modules)
    for before, after in zip(names, names[1:], strict=False):
        layer, bn = folded._modules[before], folded._modules[after]
        if isinstance(layer, _WEIGHT_LAYERS) and isinstance(bn, _BATCH_NORMS):
            folded._modules[before] = fold_batchnorm(layer, bn)
            folded._modules[after] = nn.Identity()
    return folded
