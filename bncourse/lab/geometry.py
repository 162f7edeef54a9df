"""The width mechanism of Li et al. (2019), case (b), measured inside a trained network.

With noise before a weight layer that feeds BN (``noise -> Linear -> BN``), the theory
(:func:`bncourse.theory.noise_variances`) says that both of BN's variances gain the term
``v rho (d cos^2(theta) - 1)``, so the shift shrinks when the inputs are correlated (``rho > 0``)
and the weights point along the all-ones direction (``d cos^2(theta)`` large). This probe reads
every such block of a trained network and reports, per BN layer:

* ``d`` (the fan-in), ``d_cos2`` (``d cos^2(theta) = (sum w)^2 / ||w||^2``, averaged over the
  output units) and ``cos2``;
* the inputs' mean ``c``, variance ``v`` and mean pairwise correlation ``rho`` (the noise
  module's input in evaluation mode, over a data split);
* ``gain``: how much the inputs' correlations amplify the noise-free variance of BN's input,
  ``w S w / sum_i w_i^2 v_i`` (averaged over units as BN averages channels), and
  ``gain_shared``: the same in the paper's model of one shared correlation,
  ``1 + rho (d cos^2(theta) - 1)``. The larger the gain, the smaller the shift;
* ``predicted``: the shift statistic the paper's formula gives with those numbers, unit by unit
  (each output unit's own ``d cos^2(theta)`` and ``||w||^2``), BN's variances averaged over
  channels as the probe of :mod:`bncourse.lab.probes` does (NaN where a negative ``rho`` makes
  the formula's test-time variance non-positive: no set of inputs has that structure);
* ``predicted_exact``: the same without the shared-correlation simplification, from the inputs'
  full covariance ``S`` and means: ``Var_test = w S w`` and
  ``Var_train = w S w + s2 sum_i w_i^2 (c_i^2 + v_i)``;
* ``measured``: the statistic ``max(real/moving, moving/real)`` of the trained BN layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from bncourse.lab.data import Dataset
from bncourse.lab.models import bn_layers
from bncourse.lab.probes import measure_variance_shift
from bncourse.theory import (
    noise_variance_dropout,
    noise_variance_uout,
    noise_variances,
    shift_statistic,
)

__all__ = ["LayerGeometry", "noise_variance_of", "weight_layer_blocks", "measure_geometry"]


@dataclass(frozen=True)
class LayerGeometry:
    """Case-(b) geometry of one ``noise -> weight -> BN`` block and its shift (see module doc)."""

    index: int
    name: str
    d: int
    d_cos2: float
    cos2: float
    c: float
    v: float
    rho: float
    noise_var: float
    gain: float
    gain_shared: float
    predicted: float
    predicted_exact: float
    measured: float

    def to_dict(self) -> dict:
        return asdict(self)


def noise_variance_of(module: nn.Module) -> float | None:
    """Variance ``s2`` of the multiplier of a dropout, Gaussian-dropout or Uout module, else None."""
    from bncourse.nn import Dropout, GaussianDropout, Uout

    if isinstance(module, (nn.Dropout, Dropout, GaussianDropout)):
        return float(noise_variance_dropout(module.p))
    if isinstance(module, Uout):
        return float(noise_variance_uout(module.beta))
    return None


def weight_layer_blocks(model: nn.Module) -> list[tuple[int, str, nn.Module, nn.Linear]]:
    """``(BN index, BN name, noise module, Linear)`` for every ``noise -> Linear -> BN`` run.

    The BN index counts every BN layer of the model from 1, as :mod:`bncourse.lab.probes` does.
    """
    modules = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    index = {name: i for i, (name, _) in enumerate(bn_layers(model), start=1)}
    out = []
    for k in range(2, len(modules)):
        (_, noise), (_, weight), (name, _) = modules[k - 2], modules[k - 1], modules[k]
        if name in index and isinstance(weight, nn.Linear) and noise_variance_of(noise) is not None:
            out.append((index[name], name, noise, weight))
    return out


@torch.no_grad()
def _inputs(model: nn.Module, modules: list[nn.Module], data: Dataset, split: str) -> list:
    """The inputs of ``modules`` (flattened to ``(N, features)``) with ``model`` in eval mode."""
    param = next(iter(model.parameters()))
    store: list[list[torch.Tensor]] = [[] for _ in modules]
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, s=s: s.append(args[0].detach().double()))
        for m, s in zip(modules, store, strict=True)
    ]
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        x_all, _ = data.split(split)
        for idx in torch.arange(len(x_all)).split(512):
            model(x_all[idx].to(param.device))
    finally:
        for h in hooks:
            h.remove()
        for name, m in model.named_modules():
            m.training = modes[name]
    return [torch.cat(s).flatten(1).cpu().numpy() for s in store]


def _mean_correlation(x: np.ndarray) -> float:
    """Mean off-diagonal correlation of the columns of ``x`` (constant columns left out)."""
    x = x[:, x.std(axis=0) > 0]
    if x.shape[1] < 2:
        return 0.0
    r = np.corrcoef(x, rowvar=False)
    d = r.shape[0]
    return float((r.sum() - np.trace(r)) / (d * (d - 1)))


def measure_geometry(model: nn.Module, data: Dataset, split: str = "train") -> list[LayerGeometry]:
    """One :class:`LayerGeometry` per ``noise -> Linear -> BN`` block of ``model`` (see module doc).

    The model runs in evaluation mode; its flags are restored and nothing in it changes.
    """
    blocks = weight_layer_blocks(model)
    if not blocks:
        raise ValueError("model has no noise -> Linear -> BN block (the paper's case (b))")
    shifts = {row.name: row.statistic for row in measure_variance_shift(model, data, split)}
    inputs = _inputs(model, [noise for _, _, noise, _ in blocks], data, split)
    out = []
    for (index, name, noise, linear), x in zip(blocks, inputs, strict=True):
        w = linear.weight.detach().double().cpu().numpy()  # (units, d)
        s2 = noise_variance_of(noise)
        d = w.shape[1]
        norm2 = (w**2).sum(axis=1)
        k = w.sum(axis=1) ** 2 / norm2  # d cos^2(theta), one per output unit
        means, variances = x.mean(axis=0), x.var(axis=0, ddof=1)
        c, v, rho = float(means.mean()), float(variances.mean()), _mean_correlation(x)
        try:
            train, test = noise_variances(s2, c, v, rho, k, norm2)
            predicted = float(shift_statistic(np.mean(test), np.mean(train)))
        except ValueError:  # rho < 0 with d cos^2 large: no inputs share that correlation
            predicted = float("nan")
        cov = np.cov(x, rowvar=False)
        test_exact = ((w @ cov) * w).sum(axis=1)
        train_exact = test_exact + s2 * (w**2) @ (means**2 + variances)
        out.append(
            LayerGeometry(
                index=index,
                name=name,
                d=d,
                d_cos2=float(k.mean()),
                cos2=float(k.mean() / d),
                c=c,
                v=v,
                rho=rho,
                noise_var=s2,
                gain=float(test_exact.mean() / ((w**2) @ variances).mean()),
                gain_shared=float(1 + rho * (norm2 * (k - 1)).sum() / norm2.sum()),
                predicted=predicted,
                predicted_exact=float(shift_statistic(test_exact.mean(), train_exact.mean())),
                measured=float(shifts[name]),
            )
        )
    return out
