"""The hand-derived backward passes of bncourse.nn.backward against autograd and numeric gradients.

In float64 the hand-derived gradients agree with autograd through ``torch.nn.functional`` to
round-off (rtol 1e-10): the two compute the same closed form in a different order. Wrapped in a
``torch.autograd.Function`` whose backward is the hand-derived one, they also pass
``torch.autograd.gradcheck`` (central finite differences, its default tolerances).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from bncourse.nn import backward as B
from bncourse.nn import functional as F

# (N, C) and convolutional layouts, tiny batches (n = 3 values per channel) included.
SHAPES = [(5, 3), (3, 4), (16, 6), (4, 2, 7), (2, 3, 4, 5), (1, 4, 3, 3), (8, 3, 2, 2)]
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(shape, seed, device="cpu"):
    """x with per-channel offsets and scales, gamma of both signs, beta, an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    per_channel = (1, c) + (1,) * (len(shape) - 2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * (
        0.3 + 2 * torch.rand(per_channel, generator=gen, dtype=torch.float64)
    ) + torch.randn(per_channel, generator=gen, dtype=torch.float64)
    gamma = torch.randn(c, generator=gen, dtype=torch.float64)
    beta = torch.randn(c, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    running_mean = torch.randn(c, generator=gen, dtype=torch.float64)
    running_var = 0.5 + torch.rand(c, generator=gen, dtype=torch.float64)
    return [t.to(device) for t in (x, gamma, beta, grad_out, running_mean, running_var)]


def _autograd(x, gamma, beta, grad_out, training, running_mean, running_var, eps):
    x, gamma, beta = (t.clone().requires_grad_() for t in (x, gamma, beta))
    out = TF.batch_norm(
        x, running_mean.clone(), running_var.clone(), gamma, beta, training, 0.1, eps
    )
    return torch.autograd.grad(out, (x, gamma, beta), grad_out)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_batch_norm_backward_matches_autograd(shape, training, eps, device):
    x, gamma, beta, grad_out, rm, rv = _inputs(shape, seed=sum(shape), device=device)
    expected = _autograd(x, gamma, beta, grad_out, training, rm, rv, eps)
    got = B.batch_norm_backward(
        grad_out, x, gamma, eps, training=training, running_mean=rm, running_var=rv
    )
    for name, g, e in zip(("input", "weight", "bias"), got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype and g.device == e.device, name
        torch.testing.assert_close(g, e, **TIGHT, msg=f"grad {name}")


def test_batch_norm_backward_without_weight_is_gamma_one():
    x, _, _, grad_out, _, _ = _inputs((6, 4), seed=3)
    ones = torch.ones(4, dtype=torch.float64)
    for got, expected in zip(
        B.batch_norm_backward(grad_out, x),
        B.batch_norm_backward(grad_out, x, ones),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_batch_norm_backward_float32_close_to_float64():
    x, gamma, _, grad_out, _, _ = _inputs((2, 3, 4, 5), seed=4)
    exact = B.batch_norm_backward(grad_out, x, gamma, 1e-5)
    single = B.batch_norm_backward(grad_out.float(), x.float(), gamma.float(), 1e-5)
    for g, e in zip(single, exact, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


def test_input_gradient_is_orthogonal_to_the_constant_and_to_x_hat():
    """Shifting or scaling a channel of x leaves the training-mode output unchanged, so the input
    gradient sums to zero per channel and is orthogonal to the normalized input."""
    x, gamma, _, grad_out, _, _ = _inputs((4, 3, 2, 5), seed=5)
    grad_input, _, _ = B.batch_norm_backward(grad_out, x, gamma, 0.0)
    dims = (0, 2, 3)
    x_hat = (x - x.mean(dims, keepdim=True)) / x.std(dims, unbiased=False, keepdim=True)
    torch.testing.assert_close(grad_input.sum(dims), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close((grad_input * x_hat).sum(dims), torch.zeros(3, dtype=torch.float64))


class _HandDerivedBatchNorm(torch.autograd.Function):
    """Batch norm whose backward pass is the hand-derived one (for gradcheck)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, training, running_mean, running_var):
        ctx.save_for_backward(x, gamma, running_mean, running_var)
        ctx.eps, ctx.training = eps, training
        rm = running_mean.clone() if running_mean is not None else None
        rv = running_var.clone() if running_var is not None else None
        return F.batch_norm(x, rm, rv, gamma, beta, training, 0.1, eps)

    @staticmethod
    def backward(ctx, grad_output):
        x, gamma, running_mean, running_var = ctx.saved_tensors
        grads = B.batch_norm_backward(
            grad_output,
            x,
            gamma,
            ctx.eps,
            training=ctx.training,
            running_mean=running_mean,
            running_var=running_var,
        )
        return (*grads, None, None, None, None)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2), (3, 2, 4), (2, 2, 3, 2)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_passes_gradcheck(shape, training):
    x, gamma, beta, _, rm, rv = _inputs(shape, seed=7 + len(shape))
    x, gamma, beta = (t.requires_grad_() for t in (x, gamma, beta))

    def layer(x, gamma, beta):
        return _HandDerivedBatchNorm.apply(x, gamma, beta, 1e-3, training, rm, rv)

    assert torch.autograd.gradcheck(layer, (x, gamma, beta))


def test_a_wrong_backward_fails_gradcheck():
    """The gradcheck above has teeth: leaving out the variance path is caught."""

    class _NoVariancePath(_HandDerivedBatchNorm):
        @staticmethod
        def backward(ctx, grad_output):
            x, gamma, _, _ = ctx.saved_tensors
            dims = [0, *range(2, x.dim())]
            inv_std = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + ctx.eps)
            g = grad_output * gamma.reshape(1, -1, *[1] * (x.dim() - 2))
            grad_input = (g - g.mean(dims, keepdim=True)) * inv_std
            _, grad_weight, grad_bias = B.batch_norm_backward(grad_output, x, gamma, ctx.eps)
            return grad_input, grad_weight, grad_bias, None, None, None, None

    x, gamma, beta, _, rm, rv = _inputs((5, 3), seed=9)
    x, gamma, beta = (t.requires_grad_() for t in (x, gamma, beta))

    def layer(x, gamma, beta):
        return _NoVariancePath.apply(x, gamma, beta, 1e-3, True, rm, rv)

    assert not torch.autograd.gradcheck(layer, (x, gamma, beta), raise_exception=False)


# --- dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.7])
@pytest.mark.parametrize("shape", [(40, 50), (4, 3, 5, 5)], ids=str)
def test_dropout_mask_is_the_forward_mask_and_backward_matches_autograd(p, shape, device):
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) + 3).to(device)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    mask_gen = torch.Generator(device=device)
    mask = B.dropout_mask(x, p, generator=mask_gen.manual_seed(5))
    xr = x.clone().requires_grad_()
    out = F.dropout(xr, p, generator=mask_gen.manual_seed(5))
    torch.testing.assert_close(out, x * mask / (1 - p), rtol=0, atol=0)
    (expected,) = torch.autograd.grad(out, xr, grad_out)
    got = B.dropout_backward(grad_out, mask, p)
    torch.testing.assert_close(got, expected, **TIGHT)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # The gradient is zero exactly where the forward pass dropped the unit.
    assert torch.equal(got == 0, out == 0)


def test_dropout_backward_accepts_a_boolean_mask():
    grad_out = torch.arange(1.0, 7.0).reshape(2, 3)
    keep = torch.tensor([[True, False, True], [False, False, True]])
    got = B.dropout_backward(grad_out, keep, 0.3)
    assert torch.equal(got, grad_out * keep.float() / 0.7)


def test_dropout_gradient_through_torch_matches_with_the_same_mask():
    """torch's own dropout, recovered mask included, has the same backward."""
    gen = torch.Generator().manual_seed(12)
    x = (torch.rand(30, 40, generator=gen) + 0.5).requires_grad_()
    out = TF.dropout(x, 0.3)
    mask = (out != 0).float()
    grad_out = torch.randn(30, 40, generator=gen)
    (expected,) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(B.dropout_backward(grad_out, mask, 0.3), expected)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: B.batch_norm_backward(torch.ones(2, 3), torch.ones(3, 3)), ValueError, "shape"),
        (lambda: B.batch_norm_backward(torch.ones(1, 3), torch.ones(1, 3)), ValueError, "1 value"),
        (lambda: B.batch_norm_backward([1.0], torch.ones(3, 3)), TypeError, "torch.Tensor"),
        (
            lambda: B.batch_norm_backward(torch.ones(4, 3), torch.ones(4, 3), torch.ones(2)),
            ValueError,
            "weight",
        ),
        (
            lambda: B.batch_norm_backward(torch.ones(4, 3), torch.ones(4, 3), training=False),
            ValueError,
            "running_mean",
        ),
        (lambda: B.dropout_backward(torch.ones(2), torch.ones(3), 0.3), ValueError, "shape"),
        (lambda: B.dropout_backward(torch.ones(2), torch.ones(2), 1.0), ValueError, "p"),
        (lambda: B.dropout_mask(torch.ones(2), -0.1), ValueError, "p"),
    ],
    ids=["shape", "n=1", "type", "weight", "eval-no-stats", "mask-shape", "p=1", "p<0"],
)
def test_bad_input_is_refused_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_batch_sum_under_compile_sums_blocks_of_rows_to_the_same_values():
    from bncourse.nn.backward import BLOCK_ROWS, batch_sum

    torch._dynamo.reset()
    x = torch.randn(BLOCK_ROWS * 5, 7, dtype=torch.float64) * 3 + 2
    compiled = torch.compile(lambda t: batch_sum(t, [0]), fullgraph=True)
    torch.testing.assert_close(compiled(x), x.sum(0, keepdim=True), rtol=1e-12, atol=1e-12)
    odd = torch.randn(BLOCK_ROWS + 3, 7, dtype=torch.float64)  # not a multiple: a plain sum
    torch.testing.assert_close(compiled(odd), odd.sum(0, keepdim=True), rtol=1e-12, atol=1e-12)
    assert torch.equal(batch_sum(x, [0]), x.sum(0, keepdim=True))  # eagerly, torch's own sum
