"""bncourse.grading.backward: the batch-norm backward checks catch and name every catalogued
mistake, accept sound implementations, and refuse autograd and the references."""

from __future__ import annotations

import contextlib
import functools
import io
import re

import pytest
import torch
import torch.nn.functional as F

import bncourse.nn.backward
from bncourse.grading import CATALOGUE, CheckFailure
from bncourse.grading import backward as bw
from bncourse.grading.batchnorm import draw_cases
from bncourse.grading.compare import Tolerance, same

TASK = "batchnorm_backward"
CHECKS = {
    "params": bw.check_batchnorm_backward_params,
    "input": bw.check_batchnorm_backward_input,
    "conv": bw.check_batchnorm_backward_conv,
    "numeric_fc": bw.check_batchnorm_backward_numeric,
    "numeric_conv": functools.partial(bw.check_batchnorm_backward_numeric, layout="conv"),
}

# For every catalogued mutant of the task: the checks that fail and name it. Every other check
# passes, so a mistake costs exactly the points of the cells that run these checks.
EXPECTED_FAILURES = {
    ("grad-params-wrong-reduction", "per_sample"): {"params", "conv", "numeric_fc", "numeric_conv"},
    ("grad-params-wrong-reduction", "mean"): {"params", "conv", "numeric_fc", "numeric_conv"},
    ("grad-params-wrong-reduction", "batch_only"): {"conv", "numeric_conv"},
    ("grad-gamma-without-x-hat", "x"): {"params", "conv", "numeric_fc", "numeric_conv"},
    ("grad-gamma-without-x-hat", "centered"): {"params", "conv", "numeric_fc", "numeric_conv"},
    ("grad-input-missing-paths", "none"): {"input", "conv", "numeric_fc", "numeric_conv"},
    ("grad-input-missing-paths", "no_mean"): {"input", "conv", "numeric_fc", "numeric_conv"},
    ("grad-input-missing-paths", "no_variance"): {"input", "conv", "numeric_fc", "numeric_conv"},
    ("grad-unbiased-variance", "unbiased"): {
        "params",
        "input",
        "conv",
        "numeric_fc",
        "numeric_conv",
    },
    ("grad-unbiased-variance", "unbiased_derivative"): {
        "input",
        "conv",
        "numeric_fc",
        "numeric_conv",
    },
    ("grad-unbiased-variance", "unbiased_consistent"): {
        "params",
        "input",
        "conv",
        "numeric_fc",
        "numeric_conv",
    },
    ("grad-conv-wrong-axes", "batch_only"): {"conv", "numeric_conv"},
    ("grad-conv-wrong-axes", "reshape"): {"conv", "numeric_conv"},
    ("grad-eps-missing", "False"): {"params", "input", "conv", "numeric_fc", "numeric_conv"},
    ("grad-input-without-gamma", "False"): {"input", "conv", "numeric_fc", "numeric_conv"},
    ("grad-variance-path-sign", "variance_sign"): {"input", "conv", "numeric_fc", "numeric_conv"},
    # The gradients are right; the caller's dout is not what it passed (the numeric checks
    # compare the gradients alone).
    ("inputs-modified-in-place", "True"): {"params", "input", "conv"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mutants():
    for name, misconception in CATALOGUE.items():
        for flags in misconception.mutants.get(TASK, ()):
            yield name, str(next(iter(flags.values()))), flags


MUTANTS = list(_mutants())


def _named(message: str) -> set[str]:
    return {m.name for m in CATALOGUE.values() if f"[{m.name}]" in message}


def _quietly(check, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        check(*args, **kwargs)


def test_expectations_cover_every_mutant_of_the_task():
    assert {(name, label) for name, label, _ in MUTANTS} == set(EXPECTED_FAILURES)


@pytest.mark.parametrize(
    ("name", "label", "flags"), MUTANTS, ids=[f"{n}-{lb}" for n, lb, _ in MUTANTS]
)
def test_each_catalogued_mistake_fails_exactly_its_checks_and_is_named(name, label, flags):
    student = functools.partial(bw.batchnorm_backward_variant, **flags)
    expected = EXPECTED_FAILURES[(name, label)]
    seed = MUTANTS.index((name, label, flags))  # a different draw for every mutant
    for check_name, check in CHECKS.items():
        if check_name not in expected:
            _quietly(check, student, seed=seed)
            continue
        with pytest.raises(CheckFailure) as failure:
            check(student, seed=seed)
        message = str(failure.value)
        assert _named(message) == {name}, (check_name, message)
        assert CATALOGUE[name].feedback in message
        assert CATALOGUE[name].link in message


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (
            {"eps_in_backward": False, "gamma_in_dx": False},
            {"grad-eps-missing", "grad-input-without-gamma"},
        ),
        (
            {"paths": "variance_sign", "in_place": True},
            {"grad-variance-path-sign", "inputs-modified-in-place"},
        ),
    ],
    ids=["eps+gamma", "sign+in-place"],
)
def test_new_mistakes_are_named_in_pairs(flags, names):
    student = functools.partial(bw.batchnorm_backward_variant, **flags)
    for seed in range(3):
        with pytest.raises(CheckFailure) as failure:
            bw.check_batchnorm_backward_input(student, seed=seed)
        assert _named(str(failure.value)) == names, str(failure.value)


def test_the_variant_without_flags_is_the_reference():
    for case in draw_cases(bw.FC_SPECS + bw.CONV_SPECS, seed=3, device="cpu", gradients=True):
        case = case.exact()
        args = (case.grad_output, case.x, case.gamma, case.eps)
        tol = Tolerance.for_dtype(torch.float64)
        for got, autograd, numeric in zip(
            bw.batchnorm_backward_variant(*args),
            bw._autograd_reference(*args),
            bw._numeric_reference(*args),
            strict=True,
        ):
            assert same(got, autograd, tol)
            assert same(numeric, autograd, tol)


# --- sound implementations written differently ------------------------------------------------


def _dims_shape(x):
    return [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)


def staged_graph(dout, x, gamma, eps):
    """CS231n's staged computational graph, node by node."""
    dims, shape = _dims_shape(x)
    n = x.numel() // x.shape[1]
    mu = x.sum(dims, keepdim=True) / n
    xmu = x - mu
    var = (xmu**2).sum(dims, keepdim=True) / n
    sqrtvar = torch.sqrt(var + eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    dbeta = dout.sum(dims)
    dgamma = (dout * xhat).sum(dims)
    dxhat = dout * gamma.reshape(shape)
    divar = (dxhat * xmu).sum(dims, keepdim=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar**2 * divar
    dvar = 0.5 / torch.sqrt(var + eps) * dsqrtvar
    dsq = torch.ones_like(x) / n * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(dims, keepdim=True)
    dx2 = torch.ones_like(x) / n * dmu
    return dx1 + dx2, dgamma, dbeta


def loops_over_channels(dout, x, gamma, eps):
    dx = torch.empty_like(x)
    dgamma = torch.empty_like(gamma)
    dbeta = torch.empty_like(gamma)
    for c in range(x.shape[1]):
        xc, gc = x[:, c], dout[:, c]
        n = xc.numel()
        mean = xc.sum() / n
        var = ((xc - mean) ** 2).sum() / n
        xhat = (xc - mean) / (var + eps) ** 0.5
        dbeta[c] = gc.sum()
        dgamma[c] = (gc * xhat).sum()
        dx[:, c] = (
            gamma[c] / n / (var + eps) ** 0.5 * (n * gc - gc.sum() - xhat * (gc * xhat).sum())
        )
    return dx, dgamma, dbeta


def float64_internals(dout, x, gamma, eps):
    grads = bw.batchnorm_backward_variant(dout.double(), x.double(), gamma.double(), eps)
    return tuple(g.to(x.dtype) for g in grads)


def channels_last_var_mean(dout, x, gamma, eps):
    c = x.shape[1]
    xf = x.movedim(1, -1).reshape(-1, c)
    gf = dout.movedim(1, -1).reshape(-1, c)
    var, mean = torch.var_mean(xf, dim=0, correction=0)
    rstd = torch.rsqrt(var + eps)
    xhat = (xf - mean) * rstd
    dbeta = gf.sum(0)
    dgamma = (gf * xhat).sum(0)
    dx = gamma * rstd * (gf - dbeta / xf.shape[0] - xhat * dgamma / xf.shape[0])
    return dx.reshape(x.movedim(1, -1).shape).movedim(-1, 1), dgamma, dbeta


ALTERNATIVES = [staged_graph, loops_over_channels, float64_internals, channels_last_var_mean]


@pytest.mark.parametrize("student", ALTERNATIVES, ids=lambda f: f.__name__)
def test_sound_implementations_pass_every_check(student):
    for check in CHECKS.values():
        for seed in (0, None):  # None: drawn when the check runs, as in the notebooks
            _quietly(check, student, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checks_run_on_every_device_and_dtype(device, dtype):
    for name, check in CHECKS.items():
        kwargs = {} if name.startswith("numeric") else {"dtype": dtype}
        _quietly(check, staged_graph, device=device, **kwargs)
    with pytest.raises(CheckFailure, match=r"\[grad-input-missing-paths\]"):
        bw.check_batchnorm_backward_input(
            functools.partial(bw.batchnorm_backward_variant, paths="none"),
            device=device,
            dtype=dtype,
        )


# --- autograd and the references are refused ---------------------------------------------------


def with_autograd_grad(dout, x, gamma, eps):
    x, gamma = x.clone().requires_grad_(), gamma.clone().requires_grad_()
    beta = torch.zeros_like(gamma, requires_grad=True)
    dims, shape = _dims_shape(x)
    xhat = (x - x.mean(dims, keepdim=True)) / torch.sqrt(
        x.var(dims, unbiased=False, keepdim=True) + eps
    )
    y = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return torch.autograd.grad(y, (x, gamma, beta), dout)


def with_backward_call(dout, x, gamma, eps):
    x = x.clone().requires_grad_()
    dims, shape = _dims_shape(x)
    y = (x - x.mean(dims, keepdim=True)) / torch.sqrt(
        x.var(dims, unbiased=False, keepdim=True) + eps
    )
    (y * gamma.reshape(shape) * dout).sum().backward()
    _, dgamma, dbeta = staged_graph(dout, x.detach(), gamma, eps)
    return x.grad, dgamma, dbeta


def with_enable_grad_and_torch_batch_norm(dout, x, gamma, eps):
    with torch.enable_grad():
        x, gamma = x.clone().requires_grad_(), gamma.clone().requires_grad_()
        beta = torch.zeros_like(gamma, requires_grad=True)
        y = F.batch_norm(x, None, None, gamma, beta, True, 0.0, eps)
        return torch.autograd.grad(y, (x, gamma, beta), dout)


def with_the_course_backward(dout, x, gamma, eps):
    return bncourse.nn.backward.batch_norm_backward(dout, x, gamma, eps)


def with_aten_backward_by_computed_name(dout, x, gamma, eps):
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    invstd = 1 / torch.sqrt(x.var(dim=dims, unbiased=False) + eps)
    kernel = getattr(torch.ops.aten, "native_batch_" + "norm_backward")
    return kernel(dout, x, gamma, None, None, mean, invstd, True, eps, [True, True, True])


def with_aten_overload_of_torch_ops(dout, x, gamma, eps):
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    invstd = 1 / torch.sqrt(x.var(dim=dims, unbiased=False) + eps)
    kernel = torch._ops.ops.aten.native_batch_norm_backward.default
    return kernel(dout, x, gamma, None, None, mean, invstd, True, eps, [True, True, True])


def with_autograd_and_hidden_error(dout, x, gamma, eps):
    try:
        return with_autograd_grad(dout, x, gamma, eps)
    except Exception:
        return tuple(torch.zeros_like(t) for t in (x, gamma, gamma))


@pytest.mark.parametrize(
    ("student", "match"),
    [
        (with_autograd_grad, "used autograd"),
        (with_backward_call, "used autograd"),
        (with_enable_grad_and_torch_batch_norm, "called torch"),
        (with_the_course_backward, "called bncourse.nn."),
        (with_autograd_and_hidden_error, "used autograd"),
        (
            with_aten_backward_by_computed_name,
            "called torch.ops.aten.native_batch_norm_backward, an ATen kernel",
        ),
        (with_aten_overload_of_torch_ops, "called torch.ops.aten.native_batch_norm_backward"),
    ],
    ids=[
        "autograd.grad",
        "backward()",
        "enable_grad+F.batch_norm",
        "course",
        "hidden",
        "aten-getattr",
        "aten-overload",
    ],
)
def test_autograd_and_references_are_refused(student, match):
    for check in (bw.check_batchnorm_backward_input, bw.check_batchnorm_backward_params):
        with pytest.raises(CheckFailure, match=match) as failure:
            check(student)
        assert "scores zero" in str(failure.value)


def test_autograd_works_again_after_a_check():
    _quietly(bw.check_batchnorm_backward_input, staged_graph)
    x = torch.ones(3, requires_grad=True)
    (x * x).sum().backward()
    assert torch.equal(x.grad, 2 * torch.ones(3))


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student", "match"),
    [
        (lambda dout, x, gamma, eps: staged_graph(dout, x, gamma, eps)[0], "returned a Tensor"),
        (lambda dout, x, gamma, eps: staged_graph(dout, x, gamma, eps)[:2], "returned 2 values"),
        (
            lambda dout, x, gamma, eps: tuple(
                g.double() for g in staged_graph(dout, x, gamma, eps)
            ),
            "returned dx as torch.float64",
        ),
        (lambda dout, x, gamma, eps: (None, None, None), "returned NoneType as dx"),
    ],
    ids=["tensor", "pair", "dtype", "none"],
)
def test_malformed_returns_get_a_clear_message(student, match):
    with pytest.raises(CheckFailure, match=match):
        bw.check_batchnorm_backward_input(student)


def test_a_call_that_does_not_fit_the_signature_says_what_was_called():
    def with_beta(dout, x, gamma, beta, eps):  # a signature of its own: beta is not passed
        return staged_graph(dout, x, gamma, eps)

    with pytest.raises(TypeError) as error:
        bw.check_batchnorm_backward_input(with_beta, seed=2)
    notes = "\n".join(error.value.__notes__)
    assert "The check called batchnorm_backward(dout, x, gamma, eps) with dout and x" in notes
    assert "expects back the tuple (dx, dgamma, dbeta)" in notes


_FLOAT = re.compile(r"-?\d+\.\d+(?:e-?\d+)?|\d+e-?\d+")
_ALLOWED = {eps for _, _, eps in bw.FC_SPECS + bw.CONV_SPECS}


# An uncatalogued mistake: its feedback states the submission's own factor (a relation to the
# right values, never one of them).
_FACTOR = 1.01


def _unknown_mistake(dout, x, gamma, eps):
    dx, dgamma, dbeta = staged_graph(dout, x, gamma, eps)
    return dx * _FACTOR, dgamma, dbeta


def _patternless_mistake(dout, x, gamma, eps):
    dx, dgamma, dbeta = staged_graph(dout, x, gamma, eps)
    return dx + 0.01 * x**3, dgamma, dbeta


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (bw.check_batchnorm_backward_input, _unknown_mistake),
        (CHECKS["numeric_conv"], _unknown_mistake),
        (
            bw.check_batchnorm_backward_params,
            functools.partial(bw.batchnorm_backward_variant, gamma_factor="x"),
        ),
    ],
    ids=["unknown", "numeric-unknown", "named"],
)
def test_messages_contain_no_expected_value(check, student):
    with pytest.raises(CheckFailure) as failure:
        check(student, seed=11)
    message = str(failure.value)
    assert "tensor(" not in message
    assert {float(v) for v in _FLOAT.findall(message)} <= _ALLOWED | {_FACTOR}, message
    assert "seed 11" in message


def test_unknown_scaling_is_described_with_its_factor():
    with pytest.raises(CheckFailure) as failure:
        bw.check_batchnorm_backward_input(_unknown_mistake, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches" in message
    assert f"dx (gradient with respect to x) equals the correct one times about {_FACTOR:g}" in (
        message
    )
    assert f"Closest section of the book: {bw.BACKWARD.link()}" in message


def test_unknown_mistake_says_where_the_values_first_differ():
    with pytest.raises(CheckFailure) as failure:
        bw.check_batchnorm_backward_input(_patternless_mistake, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches" in message
    assert "dx (gradient with respect to x) differs in" in message


def test_inputs_are_drawn_when_the_check_runs():
    seen = []

    def recorder(dout, x, gamma, eps):
        seen.append(x.clone())
        return staged_graph(dout, x, gamma, eps)

    _quietly(bw.check_batchnorm_backward_input, recorder)
    first = list(seen)
    seen.clear()
    _quietly(bw.check_batchnorm_backward_input, recorder)
    assert not any(torch.equal(a, b) for a, b in zip(first, seen, strict=True))


def test_numeric_layout_is_validated():
    with pytest.raises(ValueError, match="layout"):
        bw.check_batchnorm_backward_numeric(staged_graph, layout="nchw")


def backward_scaling_dout_in_place(dout, x, gamma, eps):
    """Right gradients, but dx_hat is made by ``dout.mul_(gamma)``: the caller's dout changes."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = 1 / torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    x_hat = (x - mean) * inv_std
    dbeta, dgamma = dout.sum(dim=dims), (dout * x_hat).sum(dim=dims)
    dx_hat = dout.mul_(gamma.reshape(shape))
    dx = (
        inv_std
        / n
        * (n * dx_hat - dx_hat.sum(dims, True) - x_hat * (dx_hat * x_hat).sum(dims, True))
    )
    return dx, dgamma, dbeta


def test_the_callers_dout_changed_in_place_is_said_in_words():
    for check in (bw.check_batchnorm_backward_params, bw.check_batchnorm_backward_input):
        with pytest.raises(CheckFailure) as failure:
            check(backward_scaling_dout_in_place, seed=2)
        message = str(failure.value)
        assert "(your function changed the caller's `dout` in place)" in message, message
        assert "left unchanged differs" not in message
        assert _named(message) == {"inputs-modified-in-place"}, message
        assert "even where its results are right" in message  # why every part fails
