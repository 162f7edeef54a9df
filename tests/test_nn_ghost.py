"""Ghost batch norm against ``torch.nn.BatchNorm1d`` applied to each ghost batch in turn.

Tolerances as in ``test_nn_batchnorm.py``: rounding only, 1e-10 in float64.
"""

from __future__ import annotations

import pytest
import torch

from bncourse.nn import GhostBatchNorm1d
from bncourse.nn.checks import InputError
from bncourse.nn.ghost import ghost_chunks

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _pair(channels: int, ghost: int, momentum, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ours = GhostBatchNorm1d(channels, ghost, momentum=momentum, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(channels, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) * 2 + 0.5)
        ours.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
    ref.load_state_dict(ours.state_dict())
    return ours, ref, gen


@pytest.mark.parametrize(
    ("batch", "ghost", "shape_tail"),
    [(12, 3, ()), (12, 4, (2,)), (11, 4, ()), (9, 4, ()), (6, 2, ()), (5, 8, ())],
)
@pytest.mark.parametrize("momentum", [0.3, None])
def test_ghost_batches_are_normalized_like_torch_bn_on_each_chunk(
    batch, ghost, shape_tail, momentum
):
    ours, ref, gen = _pair(3, ghost, momentum)
    x = torch.randn(batch, 3, *shape_tail, generator=gen, dtype=torch.float64) * 2.5 + 0.7
    upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):  # twice: running statistics accumulate over calls as in torch
        out = ours(x1)
        expected = torch.cat([ref(c) for c in x2.split(ghost_chunks(batch, ghost))])
    torch.testing.assert_close(out, expected, **TOL)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **TOL)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **TOL)


def test_eval_mode_is_plain_batch_norm_with_running_statistics():
    ours, ref, gen = _pair(4, 2, 0.3)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 3
    ours(x), [ref(c) for c in x.split(2)]
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_chunks_cover_the_batch_and_never_leave_a_single_sample():
    for batch in range(2, 40):
        for ghost in range(2, 10):
            sizes = ghost_chunks(batch, ghost)
            assert sum(sizes) == batch and min(sizes) >= 2
    assert ghost_chunks(9, 4) == [4, 5]
    assert ghost_chunks(10, 4) == [4, 4, 2]


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_a_ghost_size_below_two_or_not_an_int_is_refused(bad):
    with pytest.raises(InputError, match="ghost_batch_size"):
        GhostBatchNorm1d(3, bad)


def test_repr_names_the_ghost_size():
    assert "ghost_batch_size=16" in repr(GhostBatchNorm1d(3, 16))
