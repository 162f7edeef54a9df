"""The case-(b) probe: d cos^2(theta), rho and the predicted shift agree with the theory and with
the shift a BN layer really accumulates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bncourse import theory
from bncourse.lab.data import Dataset
from bncourse.lab.geometry import measure_geometry, noise_variance_of, weight_layer_blocks
from bncourse.lab.models import mlp
from bncourse.nn import GaussianDropout, Uout


def _equicorrelated(n: int, d: int, rho: float, mean: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 1, generator=g, dtype=torch.float64)
    own = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (mean + math.sqrt(rho) * shared + math.sqrt(1 - rho) * own).float()


def _block(d: int, units: int, p: float, weight: torch.Tensor | None = None) -> nn.Sequential:
    linear = nn.Linear(d, units, bias=False)
    if weight is not None:
        with torch.no_grad():
            linear.weight.copy_(weight)
    return nn.Sequential(nn.Dropout(p), linear, nn.BatchNorm1d(units, momentum=None))


@torch.no_grad()
def _accumulate_running_stats(model: nn.Module, x: torch.Tensor, batch: int, seed: int) -> None:
    """BN's running variance learned with the noise on, weights fixed (what training leaves)."""
    torch.manual_seed(seed)
    model.train()
    for chunk in x.split(batch):
        model(chunk)
    model.eval()


def _data(x: torch.Tensor) -> Dataset:
    y = torch.zeros(len(x), dtype=torch.long)
    return Dataset("equicorrelated", x, y, x[:10], y[:10], 2)


@pytest.mark.parametrize("d", [8, 64])
def test_all_ones_weights_on_equicorrelated_inputs_give_the_papers_formula(d):
    p, rho, mean = 0.3, 0.2, 0.5
    x = _equicorrelated(40_000, d, rho, mean, seed=d)
    model = _block(d, 3, p, torch.ones(3, d))
    _accumulate_running_stats(model, x, batch=1000, seed=1)
    (g,) = measure_geometry(model, _data(x))
    assert (g.d, g.d_cos2, g.cos2) == (d, pytest.approx(d), pytest.approx(1.0))
    assert g.rho == pytest.approx(rho, abs=0.02)
    assert g.noise_var == pytest.approx(theory.noise_variance_dropout(p))
    expected = 1 / theory.dropout_shift(p, mean=mean, var=1.0, rho=rho, d_cos2=d)
    # sampling error of ~40k points: a few percent on the variances
    assert g.predicted == pytest.approx(expected, rel=0.03)
    assert g.predicted_exact == pytest.approx(expected, rel=0.03)
    assert g.measured == pytest.approx(expected, rel=0.05)
    assert g.gain == pytest.approx(g.gain_shared, rel=0.05)
    assert g.gain_shared == pytest.approx(1 + rho * (d - 1), rel=0.1)


def test_the_covariance_prediction_follows_the_measured_shift_where_the_shared_rho_fails():
    """Two blocks of correlated inputs, weights on one block: the mean rho understates the gain."""
    d, p = 32, 0.4
    g = torch.Generator().manual_seed(0)
    n = 40_000
    block = torch.randn(n, 1, generator=g)
    x = torch.randn(n, d, generator=g) * 0.5
    x[:, : d // 2] += block  # strongly correlated first half, uncorrelated second half
    weight = torch.zeros(2, d)
    weight[:, : d // 2] = 1.0
    model = _block(d, 2, p, weight)
    _accumulate_running_stats(model, x, batch=1000, seed=2)
    (geo,) = measure_geometry(model, _data(x))
    assert geo.measured == pytest.approx(geo.predicted_exact, rel=0.05)
    assert geo.gain > 2 * geo.gain_shared
    assert abs(geo.predicted - geo.measured) > 5 * abs(geo.predicted_exact - geo.measured)


def test_random_weights_have_d_cos2_about_one_whatever_the_width():
    x = _equicorrelated(2_000, 256, 0.1, 0.0, seed=0)
    values = []
    for d in (16, 256):
        torch.manual_seed(d)
        model = _block(d, 200, 0.3)
        _accumulate_running_stats(model, x[:, :d], batch=500, seed=0)
        values.append(measure_geometry(model, _data(x[:, :d]))[0].d_cos2)
    # mean of 200 chi-square(1) draws: sd about 0.1
    assert values == [pytest.approx(1.0, abs=0.35)] * 2


def test_blocks_are_found_only_where_noise_feeds_a_weight_layer_that_feeds_bn():
    case_b = mlp(64, 10, depth=3, width=16, placement="before_weight", p=0.3)
    assert [(i, name) for i, name, _, _ in weight_layer_blocks(case_b)] == [
        (1, "bn1"),
        (2, "bn2"),
        (3, "bn3"),
    ]
    for placement in ("before_bn", "after_bn", "none"):
        model = mlp(64, 10, depth=3, width=16, placement=placement, p=0.3)
        assert weight_layer_blocks(model) == []
        x = torch.randn(20, 64)
        with pytest.raises(ValueError, match="case \\(b\\)"):
            measure_geometry(model, _data(x))


def test_noise_variances_of_every_kind_of_noise_module():
    assert noise_variance_of(nn.Dropout(0.3)) == pytest.approx(0.3 / 0.7)
    assert noise_variance_of(GaussianDropout(0.5)) == pytest.approx(1.0)
    assert noise_variance_of(Uout(0.6)) == pytest.approx(0.12)
    assert noise_variance_of(nn.ReLU()) is None


def test_the_probe_leaves_the_model_as_it_was():
    model = mlp(64, 10, depth=2, width=8, placement="before_weight", p=0.3, seed=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_geometry(model, _data(torch.randn(50, 64)))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert np.isfinite(
        [g.predicted_exact for g in measure_geometry(model, _data(torch.randn(50, 64)))]
    ).all()
