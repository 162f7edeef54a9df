"""How smooth the loss is along the gradient: the probes of Santurkar et al. (2018), section 3.2.

At the current weights ``w`` with gradient ``g`` on one batch, :func:`probe_gradient_direction`
moves to ``w - eta * g`` for each step size ``eta`` and records the loss there and how far the
gradient there is from ``g``. Three summaries follow:

* ``loss_range``: the spread (max - min) of the loss over the step sizes, ``eta = 0`` included;
* ``gradient_change``: the largest ``||grad(w - eta g) - g||`` ("gradient predictiveness": a
  small value means the gradient still points the same way after the step);
* ``beta``: the largest ``||grad(w - eta g) - g|| / ||eta g||``, the effective beta-smoothness
  (a local Lipschitz constant of the gradient along the direction the optimizer takes).

The model is probed as it trains (batch norm uses the batch's statistics); its weights, buffers
and train/eval flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["DirectionProbe", "probe_gradient_direction"]


@dataclass(frozen=True)
class DirectionProbe:
    """Losses and gradient changes along ``-g`` at the step sizes ``etas``."""

    etas: tuple[float, ...]
    losses: tuple[float, ...]  # at eta = 0 first, then at each of ``etas``
    gradient_changes: tuple[float, ...]  # ||grad(w - eta g) - g|| for each of ``etas``
    gradient_norm: float

    @property
    def loss_range(self) -> float:
        """Max minus min of the loss over the step sizes, ``eta = 0`` included."""
        return max(self.losses) - min(self.losses)

    @property
    def gradient_change(self) -> float:
        """Largest distance between the gradient after a step and the gradient before it."""
        return max(self.gradient_changes)

    @property
    def beta(self) -> float:
        """Largest ratio of gradient change to the length of the step (effective smoothness)."""
        return max(
            d / (eta * self.gradient_norm)
            for d, eta in zip(self.gradient_changes, self.etas, strict=True)
        )


def _loss_and_gradient(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same noise draws (dropout, injected noise) at every point
        loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def probe_gradient_direction(
    model: nn.Module, x: Tensor, y: Tensor, etas: Sequence[float], seed: int = 0
) -> DirectionProbe:
    """Loss and gradient along ``-grad`` at step sizes ``etas`` on the batch ``(x, y)``.

    Random layers (dropout, injected noise) draw the same values, from ``seed``, at every point.
    """
    etas = tuple(float(e) for e in etas)
    if not etas or any(not e > 0 for e in etas):
        raise ValueError(f"etas must be positive step sizes, got {etas!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    model.train()
    try:
        loss0, g = _loss_and_gradient(model, params, x, y, seed)
        losses, changes = [loss0], []
        for eta in etas:
            with torch.no_grad():
                offset = 0
                for p, p0 in zip(params, saved, strict=True):
                    n = p.numel()
                    p.copy_(p0 - eta * g[offset : offset + n].view_as(p))
                    offset += n
            loss, g_eta = _loss_and_gradient(model, params, x, y, seed)
            losses.append(loss)
            changes.append(float((g_eta - g).norm()))
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved, strict=True):
                p.copy_(p0)
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for name, m in model.named_modules():
            m.training = modes[name]
    return DirectionProbe(etas, tuple(losses), tuple(changes), float(g.norm()))
