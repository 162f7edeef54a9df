"""Does the variance shift reach a transformer-style block? A residual block, normalized after the
sum as in the original transformer, with batch norm or with layer norm.

The block computes ``norm(x + dropout(W2 relu(W1 x)))``. In training mode dropout inflates the
variance of the sum; at test time it does not. Batch norm divides by running statistics learned
in training, so its test-time output is smaller than in training (the variance shift); layer norm
computes its statistics from each sample, in both modes, and keeps none. :func:`output_variance_ratio`
measures the ratio of the block's per-feature output variance at test time to that in training,
:func:`sample_scale_ratio` the same for the scale of each sample's output.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "block_outputs",
    "output_variance_ratio",
    "sample_scale_ratio",
    "shift_ratios",
]

Norm = Literal["bn", "ln"]


class ResidualBlock(nn.Module):
    """``norm(x + dropout(W2 relu(W1 x)))``: the post-norm residual block of a transformer layer."""

    def __init__(self, width: int, p: float, norm: Norm, hidden: int | None = None) -> None:
        """``hidden`` units in the feed-forward branch (4 x ``width`` when None, as in the
        transformer)."""
        super().__init__()
        if norm not in ("bn", "ln"):
            raise ValueError(f"norm must be 'bn' or 'ln', got {norm!r}")
        hidden = 4 * width if hidden is None else hidden
        self.ff = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(p)
        # momentum=None: the running statistics are the plain average over the training batches
        self.norm = nn.BatchNorm1d(width, momentum=None) if norm == "bn" else nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.ff(x)))


@torch.no_grad()
def block_outputs(
    norm: Norm,
    *,
    p: float = 0.3,
    seed: int = 0,
    branch: float = 1.0,
    width: int = 32,
    batches: int = 8,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's outputs on the same test inputs in training mode and in evaluation mode.

    The block starts from ``seed``'s random weights; BN's running statistics are learned on
    ``batches`` training-mode batches of standard normal inputs, then both modes see the same
    fresh inputs (training mode with fresh dropout masks, batch by batch). ``branch`` sets the
    size of the feed-forward branch against the residual: its last layer is rescaled so that the
    branch's output has ``branch`` times the standard deviation of the input (on a first batch,
    without dropout).
    """
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if not branch > 0:
        raise ValueError(f"branch must be positive, got {branch}")
    if batches < 1 or batch_size < 2:
        raise ValueError(f"batches must be >= 1 and batch_size >= 2, got {batches}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = ResidualBlock(width, p, norm)
        first = torch.randn(batch_size, width, generator=gen)
        scale = branch * first.std() / block.ff(first).std()
        block.ff[-1].weight.mul_(scale)
        block.ff[-1].bias.mul_(scale)
        block.train()
        for _ in range(batches):
            block(torch.randn(batch_size, width, generator=gen))
        test = [torch.randn(batch_size, width, generator=gen) for _ in range(batches)]
        train_out = torch.cat([block(x) for x in test])
        block.eval()
        eval_out = torch.cat([block(x) for x in test])
    return train_out, eval_out


def shift_ratios(norm: Norm, **kwargs: float) -> tuple[float, float]:
    """Both ratios of test time to training time, from one run: :func:`output_variance_ratio`'s
    and :func:`sample_scale_ratio`'s. Arguments as :func:`block_outputs`."""
    train_out, eval_out = block_outputs(norm, **kwargs)
    feature = (eval_out.var(dim=0) / train_out.var(dim=0)).mean().item()
    sample = (eval_out.pow(2).mean(dim=1) / train_out.pow(2).mean(dim=1)).mean().item()
    return feature, sample


def output_variance_ratio(norm: Norm, **kwargs: float) -> float:
    """Mean over features of (output variance at test time) / (output variance in training):
    what the next layer sees of each feature across samples. 1 means no shift. Arguments as
    :func:`block_outputs`."""
    return shift_ratios(norm, **kwargs)[0]


def sample_scale_ratio(norm: Norm, **kwargs: float) -> float:
    """(Mean square of each output sample over its features at test time) / (the same in
    training), averaged over the samples: the scale of each sample's representation. 1 means
    no change. Arguments as :func:`block_outputs`."""
    return shift_ratios(norm, **kwargs)[1]
