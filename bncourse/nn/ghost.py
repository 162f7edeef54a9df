"""Ghost batch norm: batch statistics over sub-batches ("ghost batches") of each training batch.

Hoffer et al. (2017) normalize each training batch of ``N`` samples in chunks of
``ghost_batch_size``, so that a large batch carries the noise of the small batches' statistics.
:class:`GhostBatchNorm1d` is :class:`bncourse.nn.BatchNorm1d` applied to every chunk in turn: the
output is the concatenation of the chunks' outputs and the running statistics are updated once
per chunk, exactly as if the chunks had been passed through a ``torch.nn.BatchNorm1d`` one after
the other. In evaluation mode, or with a ghost size of at least ``N``, it is plain batch norm.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from bncourse.nn.checks import InputError
from bncourse.nn.modules import BatchNorm1d

__all__ = ["GhostBatchNorm1d", "ghost_chunks"]


def ghost_chunks(batch_size: int, ghost_batch_size: int) -> list[int]:
    """Sizes of the ghost batches of a batch of ``batch_size`` (a trailing single is merged)."""
    sizes = [ghost_batch_size] * (batch_size // ghost_batch_size)
    rest = batch_size - sum(sizes)
    if rest == 1 and sizes:
        sizes[-1] += 1  # batch norm cannot normalize a single sample: it joins the last chunk
    elif rest:
        sizes.append(rest)
    return sizes


class GhostBatchNorm1d(BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) input with statistics per ghost batch in training."""

    def __init__(self, num_features: int, ghost_batch_size: int, **options) -> None:
        if (
            isinstance(ghost_batch_size, bool)
            or not isinstance(ghost_batch_size, numbers.Integral)
            or ghost_batch_size < 2
        ):
            raise InputError(
                f"ghost_batch_size must be an int >= 2 (batch norm needs 2+ samples), "
                f"got {ghost_batch_size!r}"
            )
        super().__init__(num_features, **options)
        self.ghost_batch_size = int(ghost_batch_size)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.ghost_batch_size:
            return super().forward(input)
        sizes = ghost_chunks(input.shape[0], self.ghost_batch_size)
        if len(set(sizes)) == 1 and input.dim() == 2:
            return self._equal_chunks(input, len(sizes))
        normalize = super().forward
        return torch.cat([normalize(chunk) for chunk in input.split(sizes)])

    def _equal_chunks(self, input: Tensor, chunks: int) -> Tensor:
        """All ghost batches at once (same result as one after the other, fewer operations)."""
        self._check_input_dim(input)
        x = input.reshape(chunks, -1, input.shape[1])
        n = x.shape[1]
        mean = x.mean(1, keepdim=True)
        var = x.var(1, unbiased=False, keepdim=True)
        out = ((x - mean) / torch.sqrt(var + self.eps)).reshape_as(input)
        if self.affine:
            out = out * self.weight + self.bias
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                means, unbiased = mean.squeeze(1), var.squeeze(1) * (n / (n - 1))
                for k in range(chunks):
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:
                        factor = 1.0 / float(self.num_batches_tracked)
                    else:
                        factor = self.momentum
                    self.running_mean.mul_(1 - factor).add_(means[k], alpha=factor)
                    self.running_var.mul_(1 - factor).add_(unbiased[k], alpha=factor)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"
