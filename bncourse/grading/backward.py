"""Checks for the batch-norm backward pass written by students (assignment ps02_batchnorm_backward).

Students write one function, for (N, C), (N, C, L) and (N, C, H, W) input:

``batchnorm_backward(dout, x, gamma, eps) -> (dx, dgamma, dbeta)``
    the gradients of a loss with respect to ``x``, ``gamma`` and ``beta`` of training-mode batch
    norm ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` (batch mean and biased variance per
    channel), given ``dout``, the gradient of the loss with respect to ``y``.

The expected gradients come from autograd through the course's forward pass
(:func:`bncourse.nn.functional.batch_norm`), and, in :func:`check_batchnorm_backward_numeric`,
from central finite differences of that forward pass alone. The submission must derive the
gradients itself: while it runs, autograd is refused (building a graph, ``backward()``,
``torch.autograd.grad``) as well as the references the guard of :mod:`bncourse.grading.guard`
refuses. ``dout``, ``x`` and ``gamma`` must hold their values after the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from bncourse.grading.batchnorm import BatchNormCase, draw_cases, said_changed
from bncourse.grading.engine import (
    CheckFailure,
    Result,
    Task,
    draw_seed,
    resolve_device,
    run_check,
)
from bncourse.grading.guard import ReferenceCallError, registered_guard
from bncourse.nn import functional as reference_functional

__all__ = [
    "BACKWARD",
    "CONV_SPECS",
    "FC_SPECS",
    "NUMERIC",
    "batchnorm_backward_variant",
    "check_batchnorm_backward_conv",
    "check_batchnorm_backward_input",
    "check_batchnorm_backward_numeric",
    "check_batchnorm_backward_params",
    "forbid_autograd",
]

FUNCTION_NAME = "batchnorm_backward"

# (input shape, momentum (unused), eps). At least 3 values per channel (with 2 the input gradient
# vanishes whatever the formula), n = 3 and 4 where n / (n - 1) is far from 1, eps up to 0.1 so
# that where it enters shows. Image batches have N = 1 (statistics over N alone are then exactly
# constant) or N >= 3, never 2: statistics of two values per pixel, as a mistaken submission
# computes them, are ill-conditioned when the two nearly coincide, and float32 round-off would
# then hide which mistake it is.
FC_SPECS = (
    ((3, 5), None, 1e-5),
    ((4, 3), None, 0.1),
    ((5, 4), None, 1e-3),
    ((16, 6), None, 1e-5),
    ((64, 3), None, 0.01),
)
CONV_SPECS = (
    ((4, 3, 3, 5), None, 1e-5),
    ((1, 4, 3, 3), None, 0.1),
    ((3, 2, 7), None, 1e-5),
    ((8, 3, 2, 2), None, 1e-3),
    ((5, 3, 1, 2), None, 1e-5),
)

# Which autograd entry points a submission may not call (torch-function names).
_AUTOGRAD_FUNCTIONS = frozenset(
    {"grad", "backward", "vjp", "jvp", "jacobian", "hessian", "vhp", "hvp"}
)


class _AutogradGuard(TorchFunctionMode):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.violations: list[str] = []

    def refuse(self, called: str, *, record: bool = True) -> ReferenceCallError:
        """The error that refuses autograd's ``called``; ``record``: add it to violations."""
        if record:
            self.violations.append(called)
        return ReferenceCallError(
            f"{self.what} used autograd ({called}). This exercise asks you to derive the "
            "gradients by hand and compute them with tensor operations; autograd can check your "
            "formulas in a scratch cell, but not compute them inside the graded function. "
            "This part scores zero until the function computes the gradients itself."
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        module = getattr(func, "__module__", "") or ""
        if name in _AUTOGRAD_FUNCTIONS and (
            module.startswith("torch.autograd") or module == "torch._tensor"
        ):
            raise self.refuse(f"{module}.{name}")
        return func(*args, **(kwargs or {}))


@contextmanager
def forbid_autograd(what: str = "the graded function") -> Iterator[_AutogradGuard]:
    """Refuse autograd in the enclosed code: its entry points, and building a graph at all.

    A graph is detected when an operation saves a tensor for its backward pass, which every
    product, quotient or square root on a tensor that requires grad does. ``violations`` lists
    what was refused, including refusals the code caught and hid.
    """
    guard = _AutogradGuard(what)

    def pack(tensor: Tensor) -> Tensor:
        raise guard.refuse("it built a graph on a tensor that requires grad")

    with (
        registered_guard({"kind": "autograd", "what": what}, guard),
        guard,
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
        yield guard


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(1, -1, *([1] * (ndim - 2)))


def _gradients(value: object, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The function's return value, checked to be three tensors on x's device and dtype."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        what = f"a {type(value).__name__}" if not isinstance(value, (tuple, list)) else None
        what = what or f"{len(value)} values"
        raise CheckFailure(
            f"{FUNCTION_NAME} returned {what}; it must return the three gradients "
            "(dx, dgamma, dbeta)."
        )
    for name, t in zip(("dx", "dgamma", "dbeta"), value, strict=True):
        if not isinstance(t, Tensor):
            raise CheckFailure(
                f"{FUNCTION_NAME} returned {type(t).__name__} as {name}, expected a torch.Tensor."
            )
        if t.dtype != x.dtype:
            raise CheckFailure(
                f"{FUNCTION_NAME} returned {name} as {t.dtype} for a {x.dtype} input; return "
                "the input's dtype (cast back with .to(x.dtype) if you compute in another "
                "precision)."
            )
        if t.device != x.device:
            raise CheckFailure(
                f"{FUNCTION_NAME} returned {name} on {t.device} for an input on {x.device}; "
                "create every tensor on the input's device."
            )
    return value[0], value[1], value[2]


def _cpu64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _autograd_reference(dout: Tensor, x: Tensor, gamma: Tensor, eps: float):
    """The gradients autograd finds through the course's training-mode forward pass."""
    with torch.enable_grad():
        x, gamma = x.clone().requires_grad_(), gamma.clone().requires_grad_()
        beta = torch.zeros_like(gamma, requires_grad=True)
        out = reference_functional.batch_norm(x, None, None, gamma, beta, True, 0.0, eps)
        return torch.autograd.grad(out, (x, gamma, beta), dout)


def _numeric_reference(dout: Tensor, x: Tensor, gamma: Tensor, eps: float, h: float = 2e-3):
    """Gradients by five-point central differences of the forward pass, in float64.

    Every element of x is perturbed in its own copy of the batch (a leading axis of size
    x.numel()); only the loss of the perturbed element's channel changes, so that loss alone is
    differenced, which keeps round-off small. With h = 2e-3 the truncation error (order h**4)
    and the round-off (order 1e-16 / h) stay below 1e-10 on the checks' inputs, far inside the
    float64 tolerance.
    """
    x, dout, gamma = (t.to(torch.float64) for t in (x, dout, gamma))
    ndim, channels, k = x.dim(), x.shape[1], x.numel()
    dims = (1, *range(3, ndim + 1))
    gamma_shape = (1, 1, channels) + (1,) * (ndim - 2)

    def channel_losses(xs: Tensor, g: Tensor, b: Tensor) -> Tensor:  # (K, N, C, ...) -> (K, C)
        mean = xs.mean(dims, keepdim=True)
        var = ((xs - mean) ** 2).mean(dims, keepdim=True)
        y = (xs - mean) / torch.sqrt(var + eps) * g + b
        return (y * dout).sum(dims)

    stencil = ((-1.0, 2.0), (8.0, 1.0), (-8.0, -1.0), (1.0, -2.0))
    eye = torch.eye(k, dtype=torch.float64, device=x.device).reshape(k, *x.shape)
    channel_of = torch.arange(channels, device=x.device).reshape(gamma_shape[1:]).expand(x.shape)
    channel_of = channel_of.reshape(-1)
    g, b = gamma.reshape(gamma_shape), torch.zeros(gamma_shape, dtype=torch.float64)
    b = b.to(x.device)
    dx = sum(
        coef
        * channel_losses(x + step * h * eye, g, b)[torch.arange(k, device=x.device), channel_of]
        for coef, step in stencil
    )
    dx = (dx / (12 * h)).reshape(x.shape)
    # The loss is linear in gamma and beta: differences of the whole loss are exact up to
    # round-off.
    xs = x.unsqueeze(0)
    bump = torch.eye(channels, dtype=torch.float64, device=x.device)
    bump = bump.reshape(channels, *gamma_shape[1:])
    dgamma = sum(coef * channel_losses(xs, g + step * h * bump, b).sum(1) for coef, step in stencil)
    dbeta = sum(coef * channel_losses(xs, g, b + step * h * bump).sum(1) for coef, step in stencil)
    return dx, dgamma / (12 * h), dbeta / (12 * h)


def batchnorm_backward_variant(
    dout: Tensor,
    x: Tensor,
    gamma: Tensor,
    eps: float,
    *,
    axes: str = "channel",
    params_reduce: str = "sum",
    gamma_factor: str = "x_hat",
    paths: str = "both",
    variance: str = "biased",
    eps_in_backward: bool = True,
    gamma_in_dx: bool = True,
    in_place: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch-norm backward pass with the student's signature and optional catalogued mistakes.

    With the default flags this is correct. ``axes``: "channel" (right), "batch_only" (every sum
    and statistic over N alone), "reshape" ((N, C, ...) reshaped to (-1, C) without moving C
    last). ``params_reduce``: "sum" (right), "mean", "batch_only" (dgamma, dbeta summed over N
    alone), "per_sample" (summed over every axis but N). ``gamma_factor``: "x_hat" (right), "x",
    "centered" (x - mean). ``paths``: "both" (right), "no_mean", "no_variance", "none" (the
    input gradient through x_hat alone). ``variance``: "biased" (right), "unbiased" (statistics
    recomputed with the unbiased variance), "unbiased_derivative" (d var / dx = 2 (x - mean) /
    (n - 1)), "unbiased_consistent" (both). ``paths`` "variance_sign" adds the variance path
    instead of subtracting it. ``eps_in_backward``: False divides by sqrt(var) in the backward
    pass. ``gamma_in_dx``: False leaves gamma out of dx (dx_hat = dout). ``in_place``: dout is
    scaled by gamma in place (``dout *= gamma``), which changes the caller's tensor.
    """
    ndim, channels = x.dim(), x.shape[1]
    if axes == "reshape":
        xv, gv, dims = x.reshape(-1, channels), dout.reshape(-1, channels), (0,)
        g = gamma
    elif axes in ("channel", "batch_only"):
        xv, gv = x, dout
        dims = (0, *range(2, ndim)) if axes == "channel" else (0,)
        g = _per_channel(gamma, ndim)
    else:
        raise ValueError(f"axes: unknown kind {axes!r}")
    mean = xv.mean(dim=dims, keepdim=True)
    n = xv.numel() // mean.numel()
    centered = xv - mean
    stats_n = n - 1 if variance in ("unbiased", "unbiased_consistent") else n
    path_n = n - 1 if variance in ("unbiased_derivative", "unbiased_consistent") else n
    var = (centered**2).sum(dim=dims, keepdim=True) / stats_n
    inv_std = 1 / torch.sqrt(var + eps) if eps_in_backward else 1 / torch.sqrt(var)
    x_hat = centered * inv_std

    factor = {"x_hat": x_hat, "x": xv, "centered": centered}[gamma_factor]
    if params_reduce == "sum":
        dbeta, dgamma = gv.sum(dim=dims), (gv * factor).sum(dim=dims)
    elif params_reduce == "mean":
        dbeta, dgamma = gv.mean(dim=dims), (gv * factor).mean(dim=dims)
    elif params_reduce in ("batch_only", "per_sample"):
        pdims = (0,) if params_reduce == "batch_only" else tuple(range(1, gv.dim()))
        dbeta, dgamma = gv.sum(dim=pdims), (gv * factor).sum(dim=pdims)
    else:
        raise ValueError(f"params_reduce: unknown kind {params_reduce!r}")

    dx_hat = gv * g if gamma_in_dx else gv
    dx = dx_hat
    if paths in ("both", "no_variance", "variance_sign"):
        dx = dx - dx_hat.sum(dim=dims, keepdim=True) / n
    variance_path = x_hat * (dx_hat * x_hat).sum(dim=dims, keepdim=True) / path_n
    if paths in ("both", "no_mean"):
        dx = dx - variance_path
    elif paths == "variance_sign":
        dx = dx + variance_path
    elif paths not in ("no_variance", "none"):
        raise ValueError(f"paths: unknown kind {paths!r}")
    dx = (dx * inv_std).reshape(x.shape)
    if in_place:
        dout.mul_(_per_channel(gamma, ndim))
    return dx, dgamma, dbeta


def _signature_hint(case: BatchNormCase) -> str:
    """What the check called and what it expects back, for a TypeError raised by the call."""
    shape, dtype = tuple(case.x.shape), str(case.x.dtype).removeprefix("torch.")
    return (
        f"The check called {FUNCTION_NAME}(dout, x, gamma, eps) with dout and x {dtype} "
        f"tensors of shape {shape}, gamma a tensor of shape ({shape[1]},) and eps={case.eps:g} "
        "a Python float, and expects back the tuple (dx, dgamma, dbeta), of the shapes of x, "
        "gamma and gamma. A TypeError comes from the call itself when the function's "
        "parameters are not these four (beta is not passed: dbeta does not depend on it), or "
        "from inside it when an operation gets an argument of the wrong kind (for example a "
        "list holding a range where dim needs a tuple of ints, or None where a tensor is "
        "needed)."
    )


def _run(fn: Callable[..., Any], case: BatchNormCase) -> Result:
    dout, x, gamma = (t.clone() for t in (case.grad_output, case.x, case.gamma))
    if fn is _autograd_reference or fn is _numeric_reference:
        value = fn(dout, x, gamma, case.eps)
    else:
        with forbid_autograd(FUNCTION_NAME) as guard:
            try:
                value = fn(dout, x, gamma, case.eps)
            except ReferenceCallError:
                raise
            except Exception as error:
                if guard.violations:
                    raise guard.refuse(guard.violations[0]) from None
                if isinstance(error, TypeError):
                    error.add_note(_signature_hint(case))
                raise
        if guard.violations:
            raise guard.refuse(guard.violations[0])
    dx, dgamma, dbeta = _gradients(value, case.x)
    changed = [
        name
        for t, name, original in (
            (dout, "dout", "grad_output"),
            (x, "x", "x"),
            (gamma, "gamma", "gamma"),
        )
        if not torch.equal(t, getattr(case, original))
    ]
    return {
        "grad_input": _cpu64(dx),
        "grad_weight": _cpu64(dgamma),
        "grad_bias": _cpu64(dbeta),
        "inputs_unchanged": not changed,
        "changed": changed,
    }


_LABELS = {
    "grad_input": "dx (gradient with respect to x)",
    "grad_weight": "dgamma (gradient with respect to gamma)",
    "grad_bias": "dbeta (gradient with respect to beta)",
    "inputs_unchanged": "caller's dout, x and gamma after the call",
}


def _inputs(case: BatchNormCase) -> dict[str, Tensor]:
    """What dx may be confused with: the input and the upstream gradient, by the student's names."""
    return {"dout": case.grad_output, "x": case.x}


SECTIONS = dict.fromkeys(("grad_weight", "grad_bias"), ("batchnorm_backward", "bnb-params"))
"""The book section on the quantities a description of an unexplained gradient finds wrong."""

BACKWARD = Task(
    name="batchnorm_backward",
    function_name=FUNCTION_NAME,
    run=_run,
    reference=_autograd_reference,
    variant=batchnorm_backward_variant,
    labels=_LABELS,
    channel_dims={"grad_input": 1},
    inputs=_inputs,
    sections=SECTIONS,
    phrases={"inputs_unchanged": said_changed},
)
# The same task with finite differences of the forward pass as the reference.
NUMERIC = Task(
    name="batchnorm_backward",
    function_name=FUNCTION_NAME,
    run=_run,
    reference=_numeric_reference,
    variant=batchnorm_backward_variant,
    labels=_LABELS,
    channel_dims={"grad_input": 1},
    inputs=_inputs,
    sections=SECTIONS,
    phrases={"inputs_unchanged": said_changed},
)


def _cases(
    specs: Sequence, seed: int, device: torch.device | str | None, dtype: torch.dtype
) -> list[BatchNormCase]:
    device = resolve_device(device)
    return draw_cases(specs, seed=seed, device=device, dtype=dtype, gradients=True)


def check_batchnorm_backward_params(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """dgamma and dbeta from ``batchnorm_backward`` on (N, C) input, against autograd."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    run_check(
        BACKWARD,
        fn,
        _cases(FC_SPECS, seed, device, dtype),
        ["grad_weight", "grad_bias", "inputs_unchanged"],
        seed=seed,
        what="the gradient with respect to gamma and beta for (N, C) input",
    )


def check_batchnorm_backward_input(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """dx from ``batchnorm_backward`` on (N, C) input, tiny batches included, against autograd."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    run_check(
        BACKWARD,
        fn,
        _cases(FC_SPECS, seed, device, dtype),
        ["grad_input", "inputs_unchanged"],
        seed=seed,
        what="dx for (N, C) input",
    )


def check_batchnorm_backward_conv(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """All three gradients on (N, C, L) and (N, C, H, W) input, a batch of one image included."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    run_check(
        BACKWARD,
        fn,
        _cases(CONV_SPECS, seed, device, dtype),
        ["grad_input", "grad_weight", "grad_bias", "inputs_unchanged"],
        seed=seed,
        what="the backward pass for (N, C, L) and (N, C, H, W) input",
    )


def check_batchnorm_backward_numeric(
    fn: Callable[..., Any],
    *,
    layout: str = "fc",
    quantities: Sequence[str] = ("grad_input", "grad_weight", "grad_bias"),
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """The gradients against finite differences of the forward pass, in float64.

    ``layout`` is "fc" for (N, C) input or "conv" for (N, C, L) and (N, C, H, W) input.
    """
    __tracebackhide__ = True
    if layout not in ("fc", "conv"):
        raise ValueError(f"layout must be 'fc' or 'conv', got {layout!r}")
    seed = draw_seed() if seed is None else seed
    specs = FC_SPECS if layout == "fc" else CONV_SPECS
    run_check(
        NUMERIC,
        fn,
        _cases(specs, seed, device, torch.float64),
        list(quantities),
        seed=seed,
        what="the backward pass, compared with finite differences of the forward pass,",
    )
