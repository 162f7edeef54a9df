"""What ``torch.nn.SyncBatchNorm`` exchanges between devices, as arithmetic on one machine.

Each device holds a shard of the global batch. Plain batch norm on each device would normalize
with the shard's own mean and variance. SyncBatchNorm instead lets every device compute, per
channel, the count ``n_k``, the mean ``m_k`` and the biased variance ``v_k`` of its shard, gathers
them from all devices, and combines them into the statistics of the whole batch
(``torch.batch_norm_gather_stats_with_counts``):

    n = sum n_k,   mean = sum n_k m_k / n,   var = sum n_k (v_k + (m_k - mean)^2) / n.

Every device then normalizes its shard with these global statistics, and the running variance is
updated with the unbiased ``var * n / (n - 1)``, as if one device had seen the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bncourse.nn.checks import InputError, check_tensor, reduction_dims

__all__ = ["ShardStatistics", "shard_statistics", "combine_statistics"]


@dataclass(frozen=True)
class ShardStatistics:
    """Per-channel count, mean and biased variance of one device's shard."""

    count: int
    mean: Tensor
    var: Tensor


def shard_statistics(shard: Tensor) -> ShardStatistics:
    """What one device contributes: its count per channel, mean and biased variance."""
    check_tensor("shard", shard)
    dims = reduction_dims(shard)
    count = shard.numel() // shard.shape[1]
    if count < 1:
        raise InputError(
            f"shard must hold at least one value per channel, got {tuple(shard.shape)}"
        )
    mean = shard.mean(dim=dims)
    var = shard.var(dim=dims, unbiased=False)
    return ShardStatistics(count, mean, var)


def combine_statistics(shards: Sequence[ShardStatistics]) -> ShardStatistics:
    """The global count, mean and biased variance from every device's :class:`ShardStatistics`."""
    if not shards:
        raise InputError("shards must hold the statistics of at least one device")
    first = shards[0].mean
    counts = torch.tensor([s.count for s in shards], dtype=first.dtype, device=first.device)
    means = torch.stack([s.mean for s in shards])  # (devices, C)
    variances = torch.stack([s.var for s in shards])
    n = counts.sum()
    weights = (counts / n)[:, None]
    mean = (weights * means).sum(0)
    var = (weights * (variances + (means - mean) ** 2)).sum(0)
    return ShardStatistics(int(n.item()), mean, var)
