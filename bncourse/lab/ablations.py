"""MLPs for taking batch norm apart: with or without it, before or after the activation, with or
without the bias of the layer before it, at a chosen initial scale, with ghost batches, or with
noise that moves each layer's input distribution at every training step.

:func:`ablation_mlp` builds them all from one description, with readable layer names
(``linear{i}``, ``bn{i}``, ``noise{i}``, ``act{i}``, ``head``) so that probes can find the layers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bncourse.lab.models import _seeded
from bncourse.nn.ghost import GhostBatchNorm1d

__all__ = ["ACTIVATIONS", "ORDERS", "ShiftingNoise", "ablation_mlp"]

#: Activation functions by name.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
#: Where batch norm sits in a block: before the activation (Ioffe & Szegedy) or after it.
ORDERS = ("bn_act", "act_bn")


class ShiftingNoise(nn.Module):
    """Per-unit random shift and scale, redrawn at every training forward pass.

    In training mode each call draws, for every unit ``j``, a shift ``m_j ~ U(-shift, shift)`` and
    a log-uniform scale ``s_j`` in ``[1/scale, scale]``, and returns ``s_j * x_ij + m_j``: every
    step the next layer sees its inputs with a new mean and variance (a deliberate "covariate
    shift", after Santurkar et al. 2018). In evaluation mode it is the identity.
    """

    def __init__(self, shift: float = 1.0, scale: float = 2.0) -> None:
        super().__init__()
        if not (math.isfinite(shift) and shift >= 0):
            raise ValueError(f"shift must be a finite number >= 0, got {shift!r}")
        if not (math.isfinite(scale) and scale >= 1):
            raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
        self.shift, self.scale = float(shift), float(scale)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        units = (1, *x.shape[1:])
        m = (torch.rand(units, device=x.device, dtype=x.dtype) * 2 - 1) * self.shift
        log_s = (torch.rand(units, device=x.device, dtype=x.dtype) * 2 - 1) * math.log(self.scale)
        return x * log_s.exp() + m

    def extra_repr(self) -> str:
        return f"shift={self.shift:g}, scale={self.scale:g}"


def _norm(width: int, ghost_batch_size: int | None) -> nn.Module:
    if ghost_batch_size is None:
        return nn.BatchNorm1d(width)
    return GhostBatchNorm1d(width, ghost_batch_size)


def ablation_mlp(
    input_shape: Sequence[int] | int,
    num_classes: int,
    depth: int = 3,
    width: int = 32,
    activation: str = "relu",
    norm: bool = True,
    order: str = "bn_act",
    bias: bool | None = None,
    init_scale: float | None = None,
    ghost_batch_size: int | None = None,
    noise: tuple[float, float] | None = None,
    seed: int | None = None,
) -> nn.Sequential:
    """An MLP of ``depth`` blocks of ``width`` units, batch norm on or off.

    ``order="bn_act"`` gives ``linear, bn, act`` blocks, ``"act_bn"`` gives ``linear, act, bn``.
    ``bias`` of the hidden linear layers defaults to ``not norm`` (a bias before BN is redundant).
    ``init_scale`` draws hidden weights from ``N(0, init_scale**2 / fan_in)`` (``None``: PyTorch's
    default). ``ghost_batch_size`` uses :class:`bncourse.nn.GhostBatchNorm1d`. ``noise=(shift,
    scale)`` puts a :class:`ShiftingNoise` right after every BN layer. ``seed`` fixes the weights.
    """
    for arg, value in (("depth", depth), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if init_scale is not None and not (math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
    if not norm and (ghost_batch_size is not None or noise is not None):
        raise ValueError("ghost_batch_size and noise need norm=True")
    bias = (not norm) if bias is None else bool(bias)
    fan_in = input_shape if isinstance(input_shape, int) else math.prod(input_shape)
    with _seeded(seed):
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i in range(1, depth + 1):
            linear = nn.Linear(fan_in, width, bias=bias)
            if init_scale is not None:
                nn.init.normal_(linear.weight, std=init_scale / math.sqrt(fan_in))
            block = {"linear": linear, "act": ACTIVATIONS[activation]()}
            if norm:
                block["bn"] = _norm(width, ghost_batch_size)
                if noise is not None:
                    block["noise"] = ShiftingNoise(*noise)
            names = (
                ("linear", "bn", "noise", "act")
                if order == "bn_act"
                else ("linear", "act", "bn", "noise")
            )
            layers += [(f"{name}{i}", block[name]) for name in names if name in block]
            fan_in = width
        layers.append(("head", nn.Linear(width, num_classes)))
        return nn.Sequential(OrderedDict(layers))
