"""Re-estimate batch-norm running statistics with the weights frozen and dropout OFF.

After training with dropout before BN, each BN layer's running variance is the variance of its
input *with* dropout noise, which is larger than what the layer sees at test time (the variance
shift). Passing the training data once more with dropout switched off, and averaging the batch
statistics, gives BN the statistics of test-time inputs (Hendrycks & Gimpel, 2016; Li et al., 2019).

Why not ``torch.optim.swa_utils.update_bn``? It resets the statistics and sets ``momentum=None``
as we do, but it calls ``model.train()``, which switches every dropout layer back ON; the
recomputed statistics would then contain the dropout noise again and the shift would remain.
Here only the BN layers are put in training mode; dropout (and Uout, and every other module) stays
in evaluation mode.
"""

from __future__ import annotations

import torch
from torch import nn

from bncourse.lab.data import Dataset
from bncourse.lab.models import bn_layers

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Dataset,
    split: str = "train",
    batch_size: int = 256,
) -> nn.Module:
    """Recompute every BN layer's running mean and variance on ``split``, dropout off; in place.

    Each BN layer gets ``reset_running_stats()`` and ``momentum=None`` (a cumulative average over
    the pass, as in PreciseBN); the other modules stay in evaluation mode, and no weight changes.
    BN momenta are restored afterwards and the model is returned in evaluation mode.
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError("model has no batch-norm layer to recalibrate")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    momenta = {name: bn.momentum for name, bn in layers}
    model.eval()
    for _, bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        x_all, _ = data.split(split)
        chunks = list(torch.arange(len(x_all)).split(batch_size))
        if len(chunks) > 1 and len(chunks[-1]) < 2:  # BN cannot use a batch of one
            chunks.pop()
        for idx in chunks:
            model(x_all[idx].to(device))
    finally:
        for name, bn in layers:
            bn.momentum = momenta[name]
        model.eval()
    return model
