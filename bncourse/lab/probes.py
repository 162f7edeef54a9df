"""Probes of the variance shift inside a trained network, one row per batch-norm layer.

For every BN layer the probe compares two numbers, each averaged over the layer's channels:

* ``moving_var`` -- the running variance BN stored during training (what it divides by at test);
* ``real_var`` -- the variance its input really has when the whole network runs in test mode
  (dropout off, every BN using its running statistics), measured by a forward pre-hook over a
  data split.

and reports the paper's statistic ``max(real/moving, moving/real)`` (1 means no shift), following
the protocol of Li et al. (2019): weights frozen, the training data passed again in test mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from bncourse.lab.data import Dataset
from bncourse.lab.models import bn_layers
from bncourse.theory import (
    noise_variance_dropout,
    noise_variance_uout,
    noise_variances,
    shift_statistic,
)

__all__ = [
    "LayerShift",
    "InputMoments",
    "input_moments",
    "measure_variance_shift",
    "predicted_first_layer_shift",
]


@dataclass(frozen=True)
class LayerShift:
    """Variance shift of one BN layer: index (1-based), name, both variances and the statistic."""

    index: int
    name: str
    moving_var: float
    real_var: float
    statistic: float

    def to_dict(self) -> dict:
        return asdict(self)


class InputMoments:
    """Running per-channel sums of a BN layer's input, fed by a forward pre-hook (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_sq: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().to(torch.float64)
        dims = [0, *range(2, x.dim())]
        n = x.numel() // x.shape[1]
        s, s2 = x.sum(dims), x.pow(2).sum(dims)
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq = s2 if self.sum_sq is None else self.sum_sq + s2
        self.count += n

    def variance(self) -> Tensor:
        """Unbiased per-channel variance of everything seen (the convention of ``running_var``)."""
        if self.count < 2 or self.sum is None or self.sum_sq is None:
            raise ValueError("need at least 2 values per channel to estimate a variance")
        mean = self.sum / self.count
        return (self.sum_sq - self.count * mean**2) / (self.count - 1)


@torch.no_grad()
def input_moments(
    model: nn.Module,
    modules: list[nn.Module],
    data: Dataset,
    split: str = "train",
    batch_size: int = 512,
) -> list[InputMoments]:
    """Per-channel moments of the inputs of ``modules`` with ``model`` in evaluation mode.

    The model's train/eval flags are restored afterwards; nothing in it changes.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    moments = [InputMoments() for _ in modules]
    handles = [m.register_forward_pre_hook(hook) for m, hook in zip(modules, moments, strict=True)]
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        x_all, _ = data.split(split)
        for idx in torch.arange(len(x_all)).split(batch_size):
            model(x_all[idx].to(device))
    finally:
        for h in handles:
            h.remove()
        for name, m in model.named_modules():
            m.training = modes[name]
    return moments


def measure_variance_shift(
    model: nn.Module,
    data: Dataset,
    split: str = "train",
    batch_size: int = 512,
) -> list[LayerShift]:
    """Per-BN-layer running variance vs the real test-mode variance of its input on ``split``.

    The model runs in evaluation mode during the measurement; its train/eval flags are restored
    afterwards and nothing in it changes.
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError("model has no batch-norm layer to probe")
    untracked = [name for name, bn in layers if bn.running_var is None]
    if untracked:
        raise ValueError(f"BN layers {untracked} keep no running statistics to compare with")
    moments = input_moments(model, [bn for _, bn in layers], data, split, batch_size)
    rows = []
    for i, ((name, bn), m) in enumerate(zip(layers, moments, strict=True), start=1):
        moving = float(bn.running_var.double().mean())
        real = float(m.variance().mean())
        rows.append(LayerShift(i, name, moving, real, float(shift_statistic(real, moving))))
    return rows


def predicted_first_layer_shift(
    model: nn.Module, data: Dataset, split: str = "train", batch_size: int = 512
) -> dict:
    """The closed-form statistic of the first BN layer when noise sits directly before it.

    The input of the noise module in front of the first BN layer does not depend on any earlier
    noise or BN, so its per-channel mean ``c_j`` and variance ``v_j`` (measured in evaluation mode)
    predict both variances exactly: ``Var_train_j = (1 + s2)(c_j^2 + v_j) - c_j^2`` and
    ``Var_test_j = v_j``, with the noise variance ``s2`` of :mod:`bncourse.theory`. Returns the
    predicted moving and real variances (averaged over channels) and their statistic.
    """
    from bncourse.nn import Dropout, GaussianDropout, Uout

    layers = bn_layers(model)
    children = list(model.named_modules())
    names = [name for name, _ in children]
    if not layers:
        raise ValueError("model has no batch-norm layer")
    position = names.index(layers[0][0])
    noise = children[position - 1][1] if position > 0 else None
    if isinstance(noise, (nn.Dropout, Dropout, GaussianDropout)):
        s2 = float(noise_variance_dropout(noise.p))
    elif isinstance(noise, Uout):
        s2 = float(noise_variance_uout(noise.beta))
    else:
        raise ValueError("the first BN layer is not directly preceded by a dropout or Uout module")
    (m,) = input_moments(model, [noise], data, split, batch_size)
    mean = (m.sum / m.count).cpu().numpy()
    var = m.variance().cpu().numpy()
    train, test = noise_variances(s2, mean, var)
    moving, real = float(train.mean()), float(test.mean())
    return {
        "moving_var": moving,
        "real_var": real,
        "statistic": float(shift_statistic(real, moving)),
    }
