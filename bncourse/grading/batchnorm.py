"""Checks for batch-norm forward passes written by students (assignment ps01_batchnorm).

Students write two functions with PyTorch's conventions:

``batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps) -> out``
    normalises ``x`` of shape (N, C), (N, C, L) or (N, C, H, W) with the batch's mean and biased
    variance per channel, applies ``gamma`` and ``beta``, and updates ``running_mean`` and
    ``running_var`` IN PLACE: ``running = (1 - momentum) * running + momentum * batch_statistic``
    with the unbiased variance.
``batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps) -> out``
    normalises with the running statistics and leaves them unchanged.

Every check draws its inputs when it runs, on the CPU with a seeded :class:`torch.Generator`, and
moves them to the device under test. The checks of the output also require ``x``, ``gamma`` and
``beta`` to hold their values after the call (only the running statistics change in place); the
check of the running update reads the buffers alone, whatever the function returns.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bncourse.grading.catalogue import CATALOGUE
from bncourse.grading.engine import (
    CheckFailure,
    Result,
    Task,
    draw_seed,
    resolve_device,
    run_check,
)
from bncourse.nn import functional as reference_functional

__all__ = [
    "BatchNormCase",
    "EVAL",
    "RUNNING",
    "TRAIN",
    "batchnorm_eval_variant",
    "batchnorm_train_variant",
    "check_batchnorm_eval",
    "check_batchnorm_gradients",
    "check_batchnorm_train",
    "check_conv_layout",
    "check_running_update",
    "draw_cases",
]


@dataclass(frozen=True)
class BatchNormCase:
    """One input of a batch-norm check. ``momentum`` is None for evaluation-mode cases."""

    x: Tensor
    gamma: Tensor
    beta: Tensor
    running_mean: Tensor
    running_var: Tensor
    momentum: float | None
    eps: float
    grad_output: Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def describe(self) -> str:
        momentum = "" if self.momentum is None else f", momentum={self.momentum:g}"
        return f"input of shape {tuple(self.x.shape)}{momentum}, eps={self.eps:g}"

    def exact(self) -> BatchNormCase:
        return self.to(torch.device("cpu"), torch.float64)

    def to(self, device: torch.device, dtype: torch.dtype) -> BatchNormCase:
        changes = {
            f.name: getattr(self, f.name).to(device, dtype)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)


Spec = tuple[tuple[int, ...], float | None, float]

# (input shape, momentum, eps). Tiny batches make n / (n - 1) large (n = 2 doubles the variance),
# momenta other than 0.5 tell the PyTorch convention from the flipped one, and eps up to 0.1
# against channel variances from 0.09 makes eps's place visible.
TRAIN_SPECS: tuple[Spec, ...] = (
    ((2, 3), 0.3, 1e-5),
    ((3, 5), 0.3, 0.1),
    ((5, 4), 0.1, 1e-3),
    ((4, 8), 0.7, 0.05),
    ((16, 6), 0.3, 1e-5),
    ((64, 3), 0.3, 0.01),
)
CONV_SPECS: tuple[Spec, ...] = (
    ((2, 3, 4, 5), 0.3, 1e-5),
    ((1, 4, 3, 3), 0.3, 0.1),
    ((2, 3, 1, 2), 0.3, 1e-3),
    ((8, 3, 6, 6), 0.1, 1e-5),
    ((4, 2, 7), 0.3, 1e-5),
    ((3, 5, 2), 0.7, 0.05),
)
EVAL_SPECS: tuple[Spec, ...] = (
    ((1, 4), None, 1e-5),
    ((6, 3), None, 0.1),
    ((2, 3), None, 1e-3),
    ((2, 3, 4, 4), None, 1e-3),
    ((1, 2, 3, 3), None, 0.05),
    ((5, 4, 3), None, 1e-5),
)


def draw_cases(
    specs: Sequence[Spec],
    *,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    gradients: bool = False,
) -> list[BatchNormCase]:
    """Inputs whose channels have a mean in [-1.5, 1.5] and a standard deviation in [0.3, 3]."""
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)

    cases = []
    for shape, momentum, eps in specs:
        channels = shape[1]
        per_channel = (1, channels) + (1,) * (len(shape) - 2)
        mean = uniform(-1.5, 1.5, channels).reshape(per_channel)
        std = uniform(0.3, 3.0, channels).reshape(per_channel)
        # Standardise each channel of the sample, so that its batch statistics are exactly
        # `mean` and `std`: no channel is nearly constant, which keeps float32 round-off of any
        # sound formula (even E[x^2] - E[x]^2) far below the tolerance.
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        dims = (0, *range(2, len(shape)))
        z = (z - z.mean(dim=dims, keepdim=True)) / z.std(dim=dims, keepdim=True, unbiased=False)
        x = mean + std * z
        sign = torch.where(torch.rand(channels, generator=gen) < 0.5, -1.0, 1.0).double()
        case = BatchNormCase(
            x=x,
            gamma=sign * uniform(0.5, 2.0, channels),
            beta=torch.randn(channels, generator=gen, dtype=torch.float64),
            running_mean=torch.randn(channels, generator=gen, dtype=torch.float64),
            running_var=uniform(0.5, 2.0, channels),
            momentum=momentum,
            eps=eps,
            grad_output=torch.randn(shape, generator=gen, dtype=torch.float64)
            if gradients
            else None,
        )
        cases.append(case.to(device, dtype))
    return cases


def _output(value: object, x: Tensor, function_name: str) -> Tensor:
    """The function's return value, checked to be a tensor like ``x``."""
    if isinstance(value, (tuple, list)):
        raise CheckFailure(
            f"{function_name} returned a {type(value).__name__}; it must return only the output "
            "tensor (update running_mean and running_var in place, as PyTorch does)."
        )
    if not isinstance(value, Tensor):
        raise CheckFailure(
            f"{function_name} returned {type(value).__name__}, expected a torch.Tensor "
            "(did you forget the return statement?)."
        )
    if value.shape != x.shape:
        raise CheckFailure(
            f"{function_name} returned a tensor of shape {tuple(value.shape)} for an input of "
            f"shape {tuple(x.shape)}; the output has the shape of the input."
        )
    if value.dtype != x.dtype:
        raise CheckFailure(
            f"{function_name} returned {value.dtype} for a {x.dtype} input; return the input's "
            "dtype (cast back with .to(x.dtype) if you compute in another precision)."
        )
    if value.device != x.device:
        raise CheckFailure(
            f"{function_name} returned a tensor on {value.device} for an input on {x.device}; "
            "create every tensor on the input's device."
        )
    return value


def _cpu64(value: object) -> object:
    return value.detach().to("cpu", torch.float64) if isinstance(value, Tensor) else value


# A function written for (N, C) input (statistics over dim 0, gamma of shape (C,) broadcast
# against the last axis) cannot run on conv input at all: there is no output to compare with the
# catalogued mutants, so the error itself says which misconception usually causes it.
def _conv_error_hint() -> str:
    return (
        "This error arose on convolutional input. When the same function works on (N, C) input, "
        "it most likely computes the statistics (or broadcasts gamma, beta and the running "
        "statistics) for the (N, C) layout only:\n" + CATALOGUE["stats-wrong-axes"].explain()
    )


def _unchanged(case: BatchNormCase, **passed: Tensor) -> bool:
    """Whether the tensors passed to the graded function still hold the case's values."""
    return not changed_inputs(case, **passed)


def changed_inputs(case: Any, **passed: Tensor) -> list[str]:
    """The names of the tensors passed to the graded function that no longer hold the case's
    values (``passed``: name -> tensor, the case's attribute of that name holds the original)."""
    return [name for name, t in passed.items() if not torch.equal(t.detach(), getattr(case, name))]


def said_changed(result: Result) -> str:
    """The first line's words for a function that changed the caller's tensors in place."""
    names = result.get("changed") or ["inputs"]
    listed = " and ".join(", ".join(f"`{n}`" for n in names).rsplit(", ", 1))
    return f"your function changed the caller's {listed} in place"


def _run_train(fn: Callable[..., Any], case: BatchNormCase, *, judge_output: bool = True) -> Result:
    """Call ``fn`` on copies of the case; without ``judge_output`` only the buffers are read."""
    gradients = case.grad_output is not None
    x, gamma, beta = (t.clone().requires_grad_(gradients) for t in (case.x, case.gamma, case.beta))
    running_mean, running_var = case.running_mean.clone(), case.running_var.clone()
    try:
        out = fn(x, gamma, beta, running_mean, running_var, case.momentum, case.eps)
    except (RuntimeError, IndexError) as error:
        # NotImplementedError is a RuntimeError: an unfinished function says only that.
        if case.x.dim() > 2 and not isinstance(error, NotImplementedError):
            error.add_note(_conv_error_hint())
        raise
    result: Result = {"running_mean": running_mean, "running_var": running_var}
    if not judge_output:  # the running-update check: whatever is returned, the buffers count
        return {k: _cpu64(v) for k, v in result.items()}
    out = _output(out, x, TRAIN.function_name)
    changed = changed_inputs(case, x=x, gamma=gamma, beta=beta)
    result.update(output=out, inputs_unchanged=not changed, changed=changed)
    if gradients:
        grads: Sequence[Tensor | None] = (None, None, None)
        if out.requires_grad:
            loss = (out * case.grad_output).sum()
            grads = torch.autograd.grad(loss, (x, gamma, beta), allow_unused=True)
        result.update(grad_input=grads[0], grad_weight=grads[1], grad_bias=grads[2])
    return {k: _cpu64(v) for k, v in result.items()}


def _run_eval(fn: Callable[..., Any], case: BatchNormCase) -> Result:
    x, gamma, beta = case.x.clone(), case.gamma.clone(), case.beta.clone()
    running_mean, running_var = case.running_mean.clone(), case.running_var.clone()
    out = _output(fn(x, gamma, beta, running_mean, running_var, case.eps), x, EVAL.function_name)
    unchanged = torch.equal(running_mean, case.running_mean) and torch.equal(
        running_var, case.running_var
    )
    changed = changed_inputs(case, x=x, gamma=gamma, beta=beta)
    return {
        "output": _cpu64(out),
        "buffers_unchanged": unchanged,
        "inputs_unchanged": not changed,
        "changed": changed,
    }


def _train_reference(x, gamma, beta, running_mean, running_var, momentum, eps):
    return reference_functional.batch_norm(
        x, running_mean, running_var, gamma, beta, True, momentum, eps
    )


def _eval_reference(x, gamma, beta, running_mean, running_var, eps):
    return reference_functional.batch_norm(
        x, running_mean, running_var, gamma, beta, False, 0.0, eps
    )


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(1, -1, *([1] * (ndim - 2)))


def _affine(x_hat: Tensor, gamma: Tensor, beta: Tensor, affine: str) -> Tensor:
    ndim = x_hat.dim()
    if affine == "right":
        return x_hat * _per_channel(gamma, ndim) + _per_channel(beta, ndim)
    if affine == "swapped":
        return x_hat * _per_channel(beta, ndim) + _per_channel(gamma, ndim)
    raise ValueError(f"affine must be 'right' or 'swapped', got {affine!r}")


def _modify_in_place(x: Tensor) -> None:
    """What ``x -= mean`` does to the caller's tensor, done after the output is computed."""
    dims = (0, *range(2, x.dim()))
    with torch.no_grad():
        x.sub_(x.mean(dim=dims, keepdim=True))


def _normalize(centered: Tensor, var: Tensor, eps: float, eps_kind: str) -> Tensor:
    if eps_kind == "inside":
        return centered / torch.sqrt(var + eps)
    if eps_kind == "missing":
        return centered / torch.sqrt(var)
    if eps_kind == "added_to_std":
        return centered / (torch.sqrt(var) + eps)
    raise ValueError(f"eps_kind must be 'inside', 'missing' or 'added_to_std', got {eps_kind!r}")


def _moving_average(old: Tensor, new: Tensor, momentum: float, kind: str) -> Tensor:
    if kind == "pytorch":
        return (1 - momentum) * old + momentum * new
    if kind == "flipped":
        return momentum * old + (1 - momentum) * new
    if kind == "replace":
        return new.expand_as(old)
    if kind == "no_decay":
        return old + momentum * new
    if kind == "constant":  # the argument ignored: PyTorch's default momentum hard-coded
        return 0.9 * old + 0.1 * new
    raise ValueError(f"momentum_kind: unknown kind {kind!r}")


def batchnorm_train_variant(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    eps: float,
    *,
    axes: str = "channel",
    running_var_kind: str = "unbiased",
    momentum_kind: str = "pytorch",
    eps_kind: str = "inside",
    update: bool = True,
    grad: str = "kept",
    batch_var: str = "biased",
    affine: str = "right",
    in_place: bool = False,
) -> Tensor:
    """Training-mode batch norm with the student's signature and optional catalogued mistakes.

    With the default flags this is correct. ``axes``: "channel" (right), "batch_only" (over N
    alone), "per_sample" (over every axis but N), "spatial_only" (over H, W alone), "all",
    "reshape" ((N, C, ...) reshaped to (-1, C) without moving C last). ``running_var_kind``:
    "unbiased", "biased" or "batch_size" (n / (n - 1) with n = N, the batch size, whatever the
    layout). ``momentum_kind``: "pytorch", "flipped", "replace", "no_decay", "constant" (0.1,
    whatever the argument). ``eps_kind``: "inside", "missing", "added_to_std". ``update``:
    whether the buffers are updated in place. ``grad``: "kept", "cut" (output detached),
    "detached_statistics". ``batch_var``: "biased" (right) or "unbiased" (the batch normalised,
    and the running variance fed, with the n - 1 variance). ``affine``: "right" or "swapped"
    (beta scales, gamma shifts). ``in_place``: x is centred in place, as ``x -= mean`` does.
    """
    ndim, channels = x.dim(), x.shape[1]
    if axes == "reshape":
        values, dims = x.reshape(-1, channels), (0,)
    else:
        values = x
        dims_by_axes = {
            "channel": (0, *range(2, ndim)),
            "batch_only": (0,),
            "per_sample": tuple(range(1, ndim)),
            "spatial_only": tuple(range(2, ndim)),
            "all": tuple(range(ndim)),
        }
        dims = dims_by_axes[axes]
        if not dims:
            raise ValueError(f"axes={axes!r} reduces nothing for a {ndim}D input")
    mean = values.mean(dim=dims, keepdim=True)
    var = ((values - mean) ** 2).mean(dim=dims, keepdim=True)
    if batch_var == "unbiased":
        n = values.numel() // mean.numel()
        var = var * n / (n - 1)
    elif batch_var != "biased":
        raise ValueError(f"batch_var must be 'biased' or 'unbiased', got {batch_var!r}")
    if grad == "detached_statistics":
        mean, var = mean.detach(), var.detach()
    out = _normalize(values - mean, var, eps, eps_kind).reshape(x.shape)
    out = _affine(out, gamma, beta, affine)
    per_channel_stats = mean.numel() == 1 or (
        mean.shape[1:2] == (channels,) and mean.numel() == channels
    )
    if update and per_channel_stats:
        n = values.numel() // mean.numel()
        if running_var_kind == "batch_size":
            n = x.shape[0]
        stored_var = var * n / (n - 1) if running_var_kind != "biased" else var
        with torch.no_grad():
            new_mean = _moving_average(
                running_mean, mean.reshape(-1), momentum, momentum_kind
            ).clone()
            new_var = _moving_average(
                running_var, stored_var.reshape(-1), momentum, momentum_kind
            ).clone()
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    if grad == "cut":
        out = out.detach()
    if in_place:
        _modify_in_place(x)
    return out


def batchnorm_eval_variant(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    *,
    stats: str = "running",
    eps_kind: str = "inside",
    update: bool = False,
    affine: str = "right",
    in_place: bool = False,
) -> Tensor:
    """Evaluation-mode batch norm with the student's signature and optional catalogued mistakes.

    ``stats``: "running" (right), "batch_biased", "batch_unbiased". ``update``: also update the
    running statistics (momentum 0.1) after normalising, as a training step would. ``affine``:
    "right" or "swapped" (beta scales, gamma shifts). ``in_place``: x is centred in place.
    """
    ndim = x.dim()
    dims = (0, *range(2, ndim))
    if stats == "running":
        mean, var = _per_channel(running_mean, ndim), _per_channel(running_var, ndim)
    elif stats in ("batch_biased", "batch_unbiased"):
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=stats == "batch_unbiased")
    else:
        raise ValueError(
            f"stats must be 'running', 'batch_biased' or 'batch_unbiased', got {stats!r}"
        )
    out = _affine(_normalize(x - mean, var, eps, eps_kind), gamma, beta, affine)
    if update:
        with torch.no_grad():
            running_mean.mul_(0.9).add_(0.1 * x.mean(dim=dims))
            running_var.mul_(0.9).add_(0.1 * x.var(dim=dims, unbiased=x.numel() > x.shape[1]))
    if in_place:
        _modify_in_place(x)
    return out


def _train_undefined(flags: Mapping[str, object], case: BatchNormCase) -> set[str]:
    """Statistics that are not one value per channel say nothing about the running buffers."""
    axes = flags.get("axes", "channel")
    if axes in ("channel", "reshape", "all") or (axes == "batch_only" and case.x.dim() == 2):
        return set()
    return {"running_mean", "running_var"}


_AFFINE = ("batchnorm", "bn-affine")
_EPS = ("batchnorm", "bn-eps")
_RUNNING = ("batchnorm", "bn-running-stats")
SECTIONS = {
    # an offset or a per-channel scale and shift left over: the affine step (gamma, beta)
    **dict.fromkeys(("offset", "channel-offset", "affine", "channel-affine"), _AFFINE),
    # a scale of each channel's values: that channel's statistics
    **dict.fromkeys(("scale", "channel-scale", "channel-sign", "sign"), ("batchnorm", "bn-axes")),
    # a division by (nearly) zero
    **dict.fromkeys(("nan", "inf"), _EPS),
    "running_mean": _RUNNING,
    "running_var": _RUNNING,
}
"""The book section that teaches what a description of an unexplained output found (see
:meth:`~bncourse.grading.engine.Task.section_for`)."""

TRAIN = Task(
    name="batchnorm_train",
    function_name="batchnorm_forward_train",
    run=_run_train,
    reference=_train_reference,
    variant=batchnorm_train_variant,
    labels={
        "output": "output",
        "running_mean": "running_mean",
        "running_var": "running_var",
        "grad_input": "gradient with respect to x",
        "grad_weight": "gradient with respect to gamma",
        "grad_bias": "gradient with respect to beta",
        "inputs_unchanged": "caller's x, gamma and beta after the call",
    },
    undefined=_train_undefined,
    channel_dims={"output": 1, "grad_input": 1},
    sections=SECTIONS,
    phrases={"inputs_unchanged": said_changed},
)
# The running-update check judges the buffers alone: an output of the wrong dtype, shape or kind
# costs the output checks, not this one.
RUNNING = dataclasses.replace(TRAIN, run=functools.partial(_run_train, judge_output=False))
EVAL = Task(
    name="batchnorm_eval",
    function_name="batchnorm_forward_eval",
    run=_run_eval,
    reference=_eval_reference,
    variant=batchnorm_eval_variant,
    labels={
        "output": "output",
        "buffers_unchanged": "running statistics left unchanged",
        "inputs_unchanged": "caller's x, gamma and beta after the call",
    },
    channel_dims={"output": 1},
    book=("batchnorm", "bn-eval"),
    # in evaluation mode a channel scaled wrongly used the wrong statistics: bn-eval (the default)
    sections={k: v for k, v in SECTIONS.items() if v != ("batchnorm", "bn-axes")},
    phrases={"inputs_unchanged": said_changed},
)


def check_batchnorm_train(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """The training-mode output of ``batchnorm_forward_train`` on (N, C) inputs, tiny batches included."""
    __tracebackhide__ = True  # tracebacks show the check\'s message, not its internals
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(TRAIN_SPECS, seed=seed, device=device, dtype=dtype)
    run_check(
        TRAIN,
        fn,
        cases,
        ["output", "inputs_unchanged"],
        seed=seed,
        what="the training-mode output for (N, C) input",
    )


def check_running_update(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """The running statistics ``batchnorm_forward_train`` leaves after one step on (N, C) inputs."""
    __tracebackhide__ = True  # tracebacks show the check\'s message, not its internals
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(TRAIN_SPECS, seed=seed, device=device, dtype=dtype)
    run_check(
        RUNNING,
        fn,
        cases,
        ["running_mean", "running_var"],
        seed=seed,
        what="the running-statistics update for (N, C) input",
    )


def check_conv_layout(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """A whole training step of ``batchnorm_forward_train`` on (N, C, L) and (N, C, H, W) inputs."""
    __tracebackhide__ = True  # tracebacks show the check\'s message, not its internals
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(CONV_SPECS, seed=seed, device=device, dtype=dtype)
    run_check(
        TRAIN,
        fn,
        cases,
        ["output", "running_mean", "running_var", "inputs_unchanged"],
        seed=seed,
        what="the training step for (N, C, L) and (N, C, H, W) input",
    )


def check_batchnorm_gradients(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """Gradients through ``batchnorm_forward_train`` with respect to x, gamma and beta, (N, C) input."""
    __tracebackhide__ = True  # tracebacks show the check\'s message, not its internals
    seed = draw_seed() if seed is None else seed
    # With n = 2 values per channel the gradient with respect to x vanishes (both normalised
    # values are +-1 whatever x is), so only round-off would be compared: use n >= 4. (N, C)
    # input only: the conv layout has its own check.
    specs = TRAIN_SPECS[2:]
    cases = draw_cases(specs, seed=seed, device=device, dtype=dtype, gradients=True)
    run_check(
        TRAIN,
        fn,
        cases,
        ["grad_input", "grad_weight", "grad_bias"],
        seed=seed,
        what="the gradient of the training-mode output",
    )


def check_batchnorm_eval(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``batchnorm_forward_eval`` on (N, C), (N, C, L), (N, C, H, W) inputs, batches of one included."""
    __tracebackhide__ = True  # tracebacks show the check\'s message, not its internals
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(EVAL_SPECS, seed=seed, device=device, dtype=dtype)
    run_check(
        EVAL,
        fn,
        cases,
        ["output", "buffers_unchanged", "inputs_unchanged"],
        seed=seed,
        what="evaluation mode",
    )
