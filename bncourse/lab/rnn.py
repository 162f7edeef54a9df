"""A small recurrent network on a synthetic sequence task, with per-time-step batch norm or layer norm.

The task (:func:`sign_of_sum`): a sequence of ``length`` numbers drawn from N(0, 1); the label says
whether their sum is positive. The network must carry a running total in its state, so every step
matters. The cell is an Elman RNN whose pre-activation is normalized::

    h_t = tanh(norm_t(W x_t + U h_{t-1})),     logits = head(h_T)

``norm="none"``: no normalization. ``norm="bn"``: a separate ``BatchNorm1d`` for every time step
(recurrent batch norm, Cooijmans et al. 2017): step ``t`` keeps its own running statistics, and
steps beyond the longest training sequence reuse those of the last step trained. ``norm="ln"``:
one ``LayerNorm`` over the hidden units of each sample at each step (Ba et al., 2016), which needs
no batch and no statistics per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RNN_NORMS", "sign_of_sum", "NormRNN", "train_rnn", "rnn_accuracy"]

RNN_NORMS = ("none", "bn", "ln")


def sign_of_sum(num: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``num`` sequences ``(num, length, 1)`` of N(0, 1) values and labels ``1[sum > 0]``."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num, length, 1, generator=g)
    return x, (x.sum(dim=(1, 2)) > 0).long()


class NormRNN(nn.Module):
    """The Elman RNN of the module docstring; ``max_steps`` BN layers when ``norm="bn"``."""

    def __init__(
        self,
        norm: str = "none",
        hidden: int = 32,
        input_size: int = 1,
        num_classes: int = 2,
        max_steps: int = 10,
    ) -> None:
        super().__init__()
        if norm not in RNN_NORMS:
            raise ValueError(f"norm must be one of {RNN_NORMS}, got {norm!r}")
        self.norm, self.hidden = norm, hidden
        self.inp = nn.Linear(input_size, hidden, bias=norm == "none")
        self.rec = nn.Linear(hidden, hidden, bias=False)
        if norm == "bn":
            self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(max_steps))
        elif norm == "ln":
            self.norms = nn.ModuleList([nn.LayerNorm(hidden)])
        else:
            self.norms = nn.ModuleList()
        self.head = nn.Linear(hidden, num_classes)

    def step_norm(self, t: int) -> nn.Module:
        """The normalization applied at step ``t`` (0-based)."""
        if self.norm == "none":
            return nn.Identity()
        return self.norms[min(t, len(self.norms) - 1)]

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is ``(N, T, input_size)``; returns the logits ``(N, num_classes)``."""
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.step_norm(t)(self.inp(x[:, t]) + self.rec(h)))
        return self.head(h)


def train_rnn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy; ``seed`` fixes the batch order. Returns it in eval mode."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def rnn_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Accuracy of ``model`` in evaluation mode on ``(x, y)``."""
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()
