"""Layer norm, group norm, batch-norm folding and the statistics SyncBatchNorm combines, against torch.

Float64 with asymmetric inputs (a different mean and scale per channel, non-trivial affine
parameters and running statistics), so that a transposed axis, a wrong variance or a missing
term shows; two correct float64 implementations differ by rounding only (1e-10 is a wide margin).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncourse import nn as bnn

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _asymmetric(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    channel_shape = (1, shape[1], *([1] * (len(shape) - 2)))
    scale = torch.linspace(0.5, 3.0, shape[1], dtype=torch.float64).reshape(channel_shape)
    shift = torch.linspace(-2.0, 5.0, shape[1], dtype=torch.float64).reshape(channel_shape)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def _randomize_affine(*modules: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7 + 0.4)


@pytest.mark.parametrize(
    "shape, groups",
    [((3, 6, 5), 3), ((2, 4, 3, 5), 2), ((1, 6, 4, 4), 6), ((2, 6), 1), ((1, 8, 2, 3, 2), 4)],
)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch_outputs_and_gradients(shape, groups, affine):
    ours = bnn.GroupNorm(groups, shape[1], eps=1e-3, affine=affine).double()
    ref = nn.GroupNorm(groups, shape[1], eps=1e-3, affine=affine).double()
    if affine:
        _randomize_affine(ours)
        ref.load_state_dict(ours.state_dict())
    x1 = _asymmetric(*shape).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = ours(x1), ref(x2)
    torch.testing.assert_close(out1, out2, **TIGHT)
    upstream = _asymmetric(*shape, seed=5)
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TIGHT)
    for p1, p2 in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, **TIGHT)


@pytest.mark.parametrize("shape, normalized", [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((1, 7), (7,))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_outputs_and_gradients(shape, normalized, affine):
    ours = bnn.LayerNorm(normalized, eps=1e-3, elementwise_affine=affine).double()
    ref = nn.LayerNorm(normalized, eps=1e-3, elementwise_affine=affine).double()
    if affine:
        _randomize_affine(ours)
        ref.load_state_dict(ours.state_dict())
    # a different mean and scale per *sample* as well, which layer norm must remove
    x = _asymmetric(*shape) * torch.arange(1, shape[0] + 1, dtype=torch.float64).reshape(
        -1, *[1] * (len(shape) - 1)
    )
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = ours(x1), ref(x2)
    torch.testing.assert_close(out1, out2, **TIGHT)
    upstream = _asymmetric(*shape, seed=5)
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TIGHT)


def test_per_sample_norms_do_not_depend_on_the_batch_but_batch_norm_does():
    x = _asymmetric(5, 4, 3, 3)
    gn, bn = bnn.GroupNorm(2, 4).double(), nn.BatchNorm2d(4).double()
    torch.testing.assert_close(gn(x)[:1], gn(x[:1]), **TIGHT)
    assert not torch.allclose(bn(x)[:2], bn(x[:2]))


def test_normalization_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_groups=4 must divide"):
        bnn.group_norm(torch.randn(2, 6, 3), 4)
    with pytest.raises(ValueError, match="normalized_shape"):
        bnn.layer_norm(torch.randn(2, 6), (5,))


def _trained_bn(bn: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``bn`` with asymmetric affine parameters and running statistics from a few batches."""
    _randomize_affine(bn)
    bn.train()
    for seed in range(3):
        bn(_asymmetric(*shape, seed=10 + seed))
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_conv_and_linear_equal_the_eval_mode_network(bias, affine):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4, momentum=0.3, affine=affine),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6, bias=bias),
        nn.BatchNorm1d(6, momentum=0.3, affine=affine),
    ).double()
    _randomize_affine(model[0], model[4], seed=3)
    model.train()
    for seed in range(3):
        model(_asymmetric(4, 3, 5, 5, seed=20 + seed))
    _randomize_affine(model[1], model[5], seed=4)
    model.eval()
    folded = bnn.fold_sequential(model)
    assert [type(m) for m in folded] == [
        nn.Conv2d,
        nn.Identity,
        nn.ReLU,
        nn.Flatten,
        nn.Linear,
        nn.Identity,
    ]
    x = _asymmetric(3, 3, 5, 5, seed=30)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), **TIGHT)
    assert isinstance(model[1], nn.BatchNorm2d)


def test_fold_batchnorm_of_our_batch_norm_and_its_errors():
    conv = nn.Conv1d(2, 3, 2).double()
    bn = _trained_bn(bnn.BatchNorm1d(3, momentum=0.3).double(), (4, 3, 5))
    x = _asymmetric(2, 2, 6)
    with torch.no_grad():
        torch.testing.assert_close(bnn.fold_batchnorm(conv, bn)(x), bn(conv(x)), **TIGHT)
    with pytest.raises(TypeError, match="layer must be"):
        bnn.fold_batchnorm(nn.ReLU(), bn)
    with pytest.raises(ValueError, match="running statistics"):
        bnn.fold_batchnorm(conv, nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="normalizes 5 channels"):
        bnn.fold_batchnorm(conv, nn.BatchNorm1d(5))


@pytest.mark.parametrize("sizes", [(3, 5), (2, 7, 1), (6,)])
def test_combined_shard_statistics_are_the_full_batch_statistics(sizes):
    x = _asymmetric(sum(sizes), 4, 3, 2)
    shards = [bnn.shard_statistics(s) for s in x.split(list(sizes))]
    total = bnn.combine_statistics(shards)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    assert total.count == x.numel() // 4
    torch.testing.assert_close(total.mean, mean, **TIGHT)
    torch.testing.assert_close(total.var, var, **TIGHT)
    # and torch's batch norm in training mode on the whole batch uses exactly these
    bn = nn.BatchNorm2d(4, momentum=0.3, affine=False).double()
    expected = (x - total.mean.reshape(1, -1, 1, 1)) / torch.sqrt(
        total.var.reshape(1, -1, 1, 1) + bn.eps
    )
    torch.testing.assert_close(bn(x), expected, **TIGHT)
    n = total.count
    torch.testing.assert_close(bn.running_var, 0.7 + 0.3 * total.var * n / (n - 1), **TIGHT)


def test_combine_statistics_needs_a_shard():
    with pytest.raises(ValueError, match="at least one device"):
        bnn.combine_statistics([])


def test_everything_runs_on_the_device_and_matches_torch(device):
    x = _asymmetric(4, 6, 3, 3).to(device)
    gn = nn.GroupNorm(3, 6).double().to(device)
    torch.testing.assert_close(bnn.group_norm(x, 3, gn.weight, gn.bias), gn(x), **TIGHT)
    ln = nn.LayerNorm([6, 3, 3]).double().to(device)
    torch.testing.assert_close(bnn.layer_norm(x, [6, 3, 3], ln.weight, ln.bias), ln(x), **TIGHT)
    model = nn.Sequential(nn.Conv2d(6, 5, 3, bias=False), nn.BatchNorm2d(5, momentum=0.3))
    model = model.double().to(device)
    model(x)  # training mode: fills the running statistics
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(bnn.fold_sequential(model)(x), model(x), **TIGHT)
    total = bnn.combine_statistics([bnn.shard_statistics(s) for s in x.split([1, 3])])
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(total.var, var, **TIGHT)
    torch.testing.assert_close(total.mean, mean, **TIGHT)
