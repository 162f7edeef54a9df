"""What the hidden layers of an MLP see: saturated activations, gradient sizes per layer, and how
much each layer's input distribution moves from one training batch to the next.

The probes find layers by type (activations) or by name (``linear{i}`` of
:func:`bncourse.lab.ablations.ablation_mlp`), run without changing weights, buffers or train/eval
flags, and return one value per layer, first layer first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["SLOPES", "saturation", "weight_gradient_norms", "input_drift"]

#: The derivative of each saturating activation as a function of its input, and its largest value.
SLOPES = {
    nn.Tanh: (lambda z: 1 - torch.tanh(z) ** 2, 1.0),
    nn.Sigmoid: (lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)), 0.25),
}


@contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for name, m in model.named_modules():
            m.training = modes[name]


@torch.no_grad()
def saturation(model: nn.Module, x: Tensor, level: float = 0.1, train: bool = True) -> list[float]:
    """Per tanh/sigmoid layer: fraction of inputs where the slope is below ``level`` of its peak.

    For tanh, ``level=0.1`` means ``|z| > 1.82``: a unit there passes on less than a tenth of the
    gradient it would pass at zero. ``train`` runs batch norm on the batch's own statistics.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    layers = [m for m in model.modules() if type(m) in SLOPES]
    if not layers:
        raise ValueError("the model has no tanh or sigmoid layer")
    found: dict[int, float] = {}

    def hook(index: int, module: nn.Module):
        slope, peak = SLOPES[type(module)]
        return lambda _m, args: found.__setitem__(
            index, float((slope(args[0]) < level * peak).float().mean())
        )

    handles = [m.register_forward_pre_hook(hook(i, m)) for i, m in enumerate(layers)]
    try:
        with _state_kept(model):
            model.train(train)
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [found[i] for i in range(len(layers))]


def weight_gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> list[float]:
    """Norm of the cross-entropy gradient of every hidden linear layer's weight, in training mode."""
    linears = [m for name, m in model.named_modules() if name.startswith("linear")]
    if not linears:
        raise ValueError("the model has no layer named linear{i}")
    with _state_kept(model):
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [m.weight for m in linears])
    return [float(g.norm()) for g in grads]


@torch.no_grad()
def input_drift(model: nn.Module, x: Tensor, batch_size: int, batches: int, seed: int = 0):
    """Per hidden linear layer after the first: how far its input's batch mean moves per batch.

    ``batches`` random batches of ``batch_size`` pass in training mode with the weights frozen;
    for every unit the standard deviation of its batch mean across the batches is divided by the
    unit's overall standard deviation, then averaged over units. Zero: the layer sees the same
    distribution every step; large: its input moves as much as it varies.
    """
    if batches < 2:
        raise ValueError(f"batches must be at least 2, got {batches!r}")
    linears = [m for name, m in model.named_modules() if name.startswith("linear")][1:]
    means: list[list[Tensor]] = [[] for _ in linears]
    pooled: list[list[Tensor]] = [[] for _ in linears]

    def hook(i: int):
        def record(_m, args):
            means[i].append(args[0].mean(0))
            pooled[i].append(args[0])

        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(linears)]
    gen = torch.Generator().manual_seed(seed)
    try:
        with _state_kept(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            for _ in range(batches):
                model(x[torch.randperm(len(x), generator=gen)[:batch_size]])
    finally:
        for h in handles:
            h.remove()
    out = []
    for m, p in zip(means, pooled, strict=True):
        spread = torch.stack(m).std(0)
        scale = torch.cat(p).std(0).clamp_min(1e-12)
        out.append(float((spread / scale).mean()))
    return out
