"""Checks for dropout, Gaussian dropout and Uout written by students (assignment ps03_dropout).

Students write, with PyTorch's convention that ``p`` is the probability of DROPPING a unit:

``dropout_forward(x, p, training, generator=None) -> (out, cache)``
    inverted dropout: in training, zero each element with probability ``p`` and scale the
    survivors by ``1 / (1 - p)``; in evaluation, the identity. ``cache`` is whatever the backward
    pass needs.
``dropout_backward(dout, cache) -> dx``
    the gradient with respect to ``x``, through the units the forward pass kept.
``gaussian_dropout(x, p, training, generator=None) -> out``
    multiply by noise from N(1, p / (1 - p)) in training; the identity in evaluation.
``uout(x, beta, training, generator=None) -> out``
    ``x + x * r`` with ``r ~ U(-beta, beta)`` in training; the identity in evaluation.

The outputs are random, so the checks compare *properties* of them with those of the reference,
each classified when the check runs: the fraction of units zeroed (within binomial bounds), the
factor applied to the kept units, whether one mask serves the whole batch, the mean and variance
of the multiplicative noise ``out / x`` (within bounds from their sampling distributions), what
the output is where the input is zero and whether the noise is as wide for small as for large
``|x|`` (multiplicative noise is; noise added to ``x`` is not), whether the gradient flows
exactly through the kept units. Every check draws its inputs and a seed when it runs and hands
the submission a :class:`torch.Generator` seeded with it on the input's device: the result is
deterministic given the seed, and unknown before the check runs. The properties are described by
formulas in ``p`` (or ``beta``), never by a value a submission could return.

Every call is also checked for what it must leave alone: the forward functions are called twice
with generators in the same state (the outputs must be equal) and once with another seed (in
training mode the output must change), and the global random generators must be untouched; the
caller's ``x`` (and ``dout`` for the backward pass) must be unchanged after the call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bncourse.grading.backward import forbid_autograd
from bncourse.grading.catalogue import book_link
from bncourse.grading.engine import (
    CheckFailure,
    Result,
    Task,
    draw_seed,
    reports_unfinished,
    resolve_device,
    run_check,
)
from bncourse.grading.guard import ReferenceCallError
from bncourse.nn import backward as reference_backward
from bncourse.nn import functional as reference_functional

__all__ = [
    "BACKWARD",
    "DropoutCase",
    "FORWARD",
    "GAUSSIAN",
    "UOUT",
    "Z",
    "check_dropout_backward",
    "check_dropout_eval",
    "check_dropout_train",
    "check_gaussian_dropout",
    "check_uout",
    "draw_cases",
    "dropout_pipeline_variant",
    "dropout_variant",
    "gaussian_dropout_variant",
    "uout_variant",
]

# Every sample statistic is classified within Z standard deviations of a candidate value: a
# two-sided normal tail of 2e-9 per statistic, so that a correct submission fails no more than
# once in about 10^7 gradings, while every catalogued mistake sits hundreds of standard
# deviations away on the inputs drawn (n >= 10,000 elements, p and beta never 0.5).
Z = 6.0

# |x| is log-uniform on [1/MAGNITUDE_SPREAD, MAGNITUDE_SPREAD], of either sign: noise added to x
# instead of multiplied has a spread out / x that grows like 1/|x|, 100 times wider at the
# smallest inputs than at the largest. With zeros, this fraction of the inputs is exactly 0
# (multiplicative noise leaves them 0, added noise does not).
MAGNITUDE_SPREAD = 10.0
ZERO_FRACTION = 0.1


@dataclass(frozen=True)
class DropoutCase:
    """One input of a dropout check: ``rate`` is p, or beta for Uout."""

    x: Tensor
    rate: float
    training: bool
    seed: int
    grad_output: Tensor | None = None
    rate_name: str = "p"

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def describe(self) -> str:
        mode = "training" if self.training else "evaluation"
        return f"input of shape {tuple(self.x.shape)}, {self.rate_name}={self.rate:g}, {mode} mode"

    def exact(self) -> DropoutCase:
        return self.to(torch.device("cpu"), torch.float64)

    def to(self, device: torch.device, dtype: torch.dtype) -> DropoutCase:
        changes = {
            f.name: getattr(self, f.name).to(device, dtype)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the input's device, seeded for this case (``offset``: another seed)."""
        return torch.Generator(device=self.x.device).manual_seed((self.seed + offset) % 2**63)


Spec = tuple[tuple[int, ...], float]

# (input shape, p) with n >= 10,000 elements: dropout's statistics are tested on many units.
# Fully connected, sequence and image layouts, and a batch of one.
TRAIN_SPECS: tuple[Spec, ...] = (((200, 100), 0.3), ((50, 8, 7, 7), 0.7), ((40, 25, 20), 0.2))
EVAL_SPECS: tuple[Spec, ...] = (((1, 12000), 0.3), ((200, 100), 0.7), ((30, 4, 10, 10), 0.2))
GAUSSIAN_SPECS = TRAIN_SPECS
UOUT_SPECS: tuple[Spec, ...] = (((200, 100), 0.1), ((50, 8, 7, 7), 0.5), ((40, 25, 20), 0.3))


def draw_cases(
    specs: Sequence[Spec],
    *,
    training: bool,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    gradients: bool = False,
    rate_name: str = "p",
    zeros: bool = False,
) -> list[DropoutCase]:
    """Inputs with a spread of magnitudes and signs, and with ``zeros`` some exact zeros.

    |x| is log-uniform on [1/MAGNITUDE_SPREAD, MAGNITUDE_SPREAD]; with ``zeros`` a fraction
    ZERO_FRACTION of the elements is 0. The gradients have |dout| in [0.5, 2], either sign.
    """
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)

    def signed(size: Tensor) -> Tensor:
        return torch.where(torch.rand(size.shape, generator=gen) < 0.5, -size, size)

    def spread(shape: tuple[int, ...]) -> Tensor:
        exponent = 2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1
        x = signed(MAGNITUDE_SPREAD**exponent)
        if zeros:
            x = torch.where(torch.rand(shape, generator=gen) < ZERO_FRACTION, 0.0, x)
        return x

    def away_from_zero(shape: tuple[int, ...]) -> Tensor:
        return signed(0.5 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64))

    cases = []
    for shape, rate in specs:
        case = DropoutCase(
            x=spread(shape),
            rate=rate,
            training=training,
            seed=int(torch.randint(0, 2**62, (1,), generator=gen)),
            grad_output=away_from_zero(shape) if gradients else None,
            rate_name=rate_name,
        )
        cases.append(case.to(device, dtype))
    return cases


# --- what a result is classified as -------------------------------------------------------------


def _named_values(p: float) -> list[tuple[str, float]]:
    return [
        ("1/(1 - p)", 1 / (1 - p)),
        ("1", 1.0),
        ("p", p),
        ("1 - p", 1 - p),
        ("1/p", 1 / p),
    ]


def _rtol(dtype: torch.dtype) -> float:
    return 1e-4 if dtype != torch.float64 else 1e-7


def _constant_factor(values: Tensor, p: float, dtype: torch.dtype) -> str:
    """Which formula in p the one value of ``values`` is, if they are one value."""
    if values.numel() == 0:
        return "no value"
    low, high = float(values.min()), float(values.max())
    rtol = _rtol(dtype)
    if high - low > rtol * max(abs(low), abs(high)):
        return "not one value"
    for name, value in _named_values(p):
        if abs(low - value) <= rtol * value and abs(high - value) <= rtol * value:
            return name
    return "another value"


def _drop_fraction(dropped: Tensor, p: float) -> str:
    """Which of 0, p, 1 - p, 1 the fraction of True in ``dropped`` is consistent with."""
    n = dropped.numel()
    fraction = float(dropped.float().mean())
    if fraction == 0.0:
        return "none"
    if fraction == 1.0:
        return "all"
    for name, q in (("p", p), ("1 - p", 1 - p)):
        if abs(fraction - q) <= Z * math.sqrt(q * (1 - q) / n):  # binomial standard deviation
            return name
    return "neither p nor 1 - p"


def _classify(value: float, candidates: Sequence[tuple[str, float]], bound: float) -> str:
    for name, target in candidates:
        if abs(value - target) <= bound:
            return name
    return "none of " + ", ".join(name for name, _ in candidates)


def _noise_statistics(r: Tensor, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """Sample mean and variance of the multiplier r, and their standard errors.

    The standard error of the mean is sqrt(var / n); that of the variance is
    sqrt((m4 - var^2) / n), with m4 the fourth central moment, both from the sample. A floor of a
    few rounding errors of ``dtype`` lets a noiseless multiplier (exactly 1) be classified.
    """
    r = r.reshape(-1)
    n = r.numel()
    mean = float(r.mean())
    centered = r - mean
    var = float((centered**2).mean())
    m4 = float((centered**4).mean())
    floor = 10 * torch.finfo(dtype).eps
    se_mean = math.sqrt(var / n) + floor
    se_var = math.sqrt(max(m4 - var**2, 0.0) / n) + floor**2
    return mean, var, se_mean, se_var


def _distinct_values(r: Tensor) -> str:
    count = torch.unique(r).numel()
    if count == 1:
        return "one value"
    if count == 2:
        return "two values"
    return "many values" if count > r.numel() // 2 else "a few values"


def _as_output(value: object, x: Tensor, function_name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise CheckFailure(
            f"{function_name} returned {type(value).__name__} where a torch.Tensor was expected "
            "(did you forget a return statement?)."
        )
    if value.shape != x.shape:
        raise CheckFailure(
            f"{function_name} returned a tensor of shape {tuple(value.shape)} for an input of "
            f"shape {tuple(x.shape)}; the output has the shape of the input."
        )
    if value.dtype != x.dtype:
        raise CheckFailure(
            f"{function_name} returned {value.dtype} for a {x.dtype} input; return the input's "
            "dtype (draw the noise with dtype=x.dtype, or cast back with .to(x.dtype))."
        )
    if value.device != x.device:
        raise CheckFailure(
            f"{function_name} returned a tensor on {value.device} for an input on {x.device}; "
            "create every tensor on the input's device (device=x.device)."
        )
    return value


def _forward_pair(value: object, x: Tensor) -> Tensor:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise CheckFailure(
            "dropout_forward must return a pair (out, cache): the output and what "
            f"dropout_backward needs; it returned {type(value).__name__}."
        )
    return _as_output(value[0], x, "dropout_forward")


def _cpu64(t: Tensor) -> Tensor:
    """A float64 copy on the CPU (never the tensor itself: later calls cannot change it)."""
    return t.detach().to("cpu", torch.float64, copy=True)


# --- what a call must leave alone: the global random generators, the caller's tensors --------

SEEDED = "changes with the generator's seed"
FIXED = "the same for every seed"


def _global_rng_states(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _restore_global_rng_states(states: list[Tensor], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def _identical(a: Tensor, b: Tensor) -> bool:
    if torch.equal(a, b):
        return True
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _observe(call: Callable[[torch.Generator], Tensor], case: DropoutCase) -> tuple[Tensor, str]:
    """The output of ``call`` with the case's generator, and how it used the generator.

    ``call(generator)`` runs the function under test on fresh copies of the case's inputs and
    returns its output as a float64 CPU copy. It runs three times: with the case's generator,
    with another generator in the same state (a function that draws from the generator it is
    given returns the same output) and with a generator seeded differently (in training mode, a
    different output). The global random generators must keep their state; it is restored.
    """
    device = case.x.device
    before = _global_rng_states(device)
    try:
        out = call(case.generator())
        again = call(case.generator())
        other = call(case.generator(offset=1))
        after = _global_rng_states(device)
    finally:
        _restore_global_rng_states(before, device)
    if not _identical(out, again):
        return out, "differs between two generators in the same state"
    if not all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        return out, "changes the state of the global random generator"
    return out, FIXED if _identical(out, other) else SEEDED


def _unchanged(passed: Tensor, original: Tensor) -> str:
    """Whether the tensor handed to the function still holds the caller's values."""
    return "unchanged" if torch.equal(passed, original) else "modified in place"


_CALL_LABELS = {
    "randomness": "use of the generator",
    "input": "the caller's x after the call",
}


# --- dropout forward -------------------------------------------------------------------------


def _random_source(
    generator: torch.Generator | None, x: Tensor, source: str
) -> torch.Generator | None:
    """The generator a variant draws from: "generator" (the one given, right), "global" (none:
    the global generator), "reseeded_global" (the global generator, seeded from the one given)
    or "fixed_seed" (a new one with a constant seed)."""
    if source == "generator":
        return generator
    if source == "reseeded_global":
        torch.manual_seed(generator.initial_seed() if generator is not None else 0)
    if source in ("global", "reseeded_global"):
        return None
    return torch.Generator(device=x.device).manual_seed(0)


def dropout_variant(
    x: Tensor,
    p: float,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    keep_prob: str = "1 - p",
    scale: str = "inverted",
    eval_mode: str = "identity",
    mask: str = "per_element",
    random_source: str = "generator",
    inplace: bool = False,
) -> tuple[Tensor, object]:
    """``dropout_forward`` with the student's signature and optional catalogued mistakes.

    With the default flags this is correct. ``keep_prob``: "1 - p" (right) or "p" (a unit is kept
    with probability p). ``scale`` of the kept units: "inverted" (1/(1 - p), right), "none",
    "p", "keep" (1 - p), "inverse_p" (1/p). ``eval_mode``: "identity" (right), "train"
    (dropout applied in evaluation too), "classic" (multiply by 1 - p in evaluation).
    ``mask``: "per_element" (right) or "shared" (one mask of a sample's shape for the whole
    batch). ``random_source``: see :func:`_random_source`. ``inplace``: multiply x in place.
    """
    if not training and eval_mode == "identity":
        return x, None
    if not training and eval_mode == "classic":
        return x * (1 - p), None
    q = 1 - p if keep_prob == "1 - p" else p
    shape = x.shape[1:] if mask == "shared" else x.shape
    keep = torch.empty(shape, dtype=x.dtype, device=x.device)
    keep.bernoulli_(q, generator=_random_source(generator, x, random_source))
    factor = {"inverted": 1 / (1 - p), "none": 1.0, "p": p, "keep": 1 - p, "inverse_p": 1 / p}
    f = factor[scale]
    return (x.mul_(keep * f) if inplace else x * keep * f), (keep, f)


def _forward_reference(x, p, training, generator=None):
    return reference_functional.dropout(x, p, training, generator=generator), None


NO_DROP = "no unit dropped"
SHARED = "one mask shared by every sample"


def _mask_layout(dropped: Tensor) -> str:
    """Whether the samples of the batch (dim 0) have masks of their own."""
    if not dropped.any():
        return NO_DROP
    if dropped.all():
        return "every unit dropped"
    if dropped.shape[0] < 2:
        return "a batch of one"
    # Two independent masks of >= 100 units agree everywhere with probability < 0.79^100.
    return SHARED if bool((dropped == dropped[:1]).all()) else "a mask of its own for every sample"


def _run_forward(fn: Callable[..., Any], case: DropoutCase) -> Result:
    passed = []

    def call(generator: torch.Generator) -> Tensor:
        x = case.x.clone()
        passed.append(x)
        return _cpu64(_forward_pair(fn(x, case.rate, case.training, generator), case.x))

    out, randomness = _observe(call, case)
    r = out / _cpu64(case.x)
    dropped = r.abs() <= _rtol(case.dtype)
    layout = _mask_layout(dropped)
    return {
        # One mask for the batch has the units of one sample only: its drop fraction is that of
        # those units, within the binomial bounds of their number.
        "drop_fraction": _drop_fraction(dropped[0] if layout == SHARED else dropped, case.rate),
        "kept_factor": _constant_factor(r[~dropped], case.rate, case.dtype),
        "mask_layout": layout,
        "randomness": randomness,
        "input": _unchanged(passed[0], case.x),
    }


FORWARD = Task(
    name="dropout_forward",
    function_name="dropout_forward",
    run=_run_forward,
    reference=_forward_reference,
    variant=dropout_variant,
    labels={
        "drop_fraction": "fraction of units zeroed",
        "kept_factor": "factor applied to the kept units",
        "mask_layout": "masks of the samples of a batch",
        **_CALL_LABELS,
    },
)


# --- dropout backward, through the student's own forward pass --------------------------------


def _eval_backward_crash(error: Exception, cache: object) -> str:
    given = "None" if cache is None else f"a {type(cache).__name__}"
    what = str(error)
    what = what if len(what) <= 200 else what[:200] + "..."
    return (
        f"dropout_backward raised {type(error).__name__} ({what}) in evaluation mode, on the "
        f"cache that dropout_forward returned there ({given}). In evaluation mode dropout is the "
        "identity, and so is its gradient: dropout_backward must accept the cache your forward "
        "pass returns in evaluation mode and return dout unchanged (for example: if cache is "
        f"None: return dout).\nRead more: {book_link('dropout', 'do-backward')}"
    )


class _Pipeline:
    """The student's forward and backward passes as one function of (x, p, training, gen, dout).

    The backward pass computes the gradient itself: autograd is refused inside it, as in the
    batch-norm backward exercise. A backward pass that fails on the cache of evaluation mode is
    told so.
    """

    def __init__(self, forward: Callable[..., Any], backward: Callable[..., Any]) -> None:
        self.forward, self.backward = forward, backward

    def __call__(self, x, p, training, generator, dout):
        with reports_unfinished("dropout_forward"):
            value = self.forward(x, p, training, generator)
        out = _forward_pair(value, x)
        with reports_unfinished("dropout_backward"), forbid_autograd("dropout_backward") as guard:
            try:
                dx = self.backward(dout, value[1])
            except ReferenceCallError:
                raise
            except Exception as error:
                if guard.violations:
                    raise guard.refuse(guard.violations[0]) from None
                if not training and not isinstance(error, NotImplementedError):
                    raise CheckFailure(_eval_backward_crash(error, value[1])) from error
                raise
        if guard.violations:
            raise guard.refuse(guard.violations[0])
        return out, _as_output(dx, x, "dropout_backward")


def dropout_pipeline_variant(
    x: Tensor,
    p: float,
    training: bool,
    generator: torch.Generator | None,
    dout: Tensor,
    *,
    backward_mask: str = "forward",
    backward_scale: str = "inverted",
    backward_inplace: bool = False,
    **forward_flags: Any,
) -> tuple[Tensor, Tensor]:
    """Forward then backward pass, with optional catalogued mistakes in either.

    ``forward_flags`` are those of :func:`dropout_variant`. ``backward_mask``: "forward" (the
    mask of the forward pass, right), "fresh" (a new mask drawn in the backward pass), "none" (no
    mask). ``backward_scale``: "inverted" (1/(1 - p), right), "none" or "inverse_p" (1/p).
    ``backward_inplace``: multiply dout in place.
    """
    out, cache = dropout_variant(x, p, training, generator, **forward_flags)
    if cache is None:
        return out, dout
    keep, _ = cache
    if backward_mask == "fresh":
        keep = torch.empty_like(dout).bernoulli_(1 - p, generator=generator)
    elif backward_mask == "none":
        keep = torch.ones_like(dout)
    factor = {"inverted": 1 / (1 - p), "none": 1.0, "inverse_p": 1 / p}[backward_scale]
    return out, (dout.mul_(keep * factor) if backward_inplace else dout * keep * factor)


def _pipeline_reference(x, p, training, generator, dout):
    if not training:
        return x, dout
    keep = reference_backward.dropout_mask(x, p, generator)
    return x * keep / (1 - p), reference_backward.dropout_backward(dout, keep, p)


def _run_pipeline(fn: Callable[..., Any], case: DropoutCase) -> Result:
    x, dout = case.x.clone(), case.grad_output.clone()
    out, dx = fn(x, case.rate, case.training, case.generator(), dout)
    out, dx = _cpu64(out), _cpu64(dx)
    rtol = _rtol(case.dtype)
    dropped = (out / _cpu64(case.x)).abs() <= rtol
    g = dx / _cpu64(case.grad_output)
    blocked = g.abs() <= rtol
    if not blocked.any():
        zeros = "nowhere"
    elif torch.equal(blocked, dropped):
        zeros = "exactly where the forward pass dropped units"
    else:
        zeros = "elsewhere than where the forward pass dropped units"
    return {
        "grad_zeros": zeros,
        "grad_factor": _constant_factor(g[~blocked], case.rate, case.dtype),
        "dout": _unchanged(dout, case.grad_output),
    }


BACKWARD = Task(
    name="dropout_backward",
    function_name="dropout_forward and dropout_backward",
    run=_run_pipeline,
    reference=_pipeline_reference,
    variant=dropout_pipeline_variant,
    labels={
        "grad_zeros": "the gradient is zero",
        "grad_factor": "factor applied to the gradient where it is not zero",
        "dout": "the caller's dout after dropout_backward",
    },
)


# --- Gaussian dropout and Uout ---------------------------------------------------------------


def gaussian_dropout_variant(
    x: Tensor,
    p: float,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    std: str = "sqrt",
    mean: str = "one",
    combine: str = "multiply",
    eval_mode: str = "identity",
    random_source: str = "generator",
    inplace: bool = False,
) -> Tensor:
    """``gaussian_dropout`` with optional catalogued mistakes.

    ``std`` of the noise: "sqrt" (sqrt(p/(1 - p)), right), "variance" (p/(1 - p)), "keep"
    (sqrt((1 - p)/p)), "p". ``mean`` of the noise: "one" (right) or "zero". ``combine``:
    "multiply" (x * noise, right) or "add" (x + noise). ``eval_mode``: "identity" (right) or
    "train" (noise in evaluation too). ``random_source``: see :func:`_random_source`.
    ``inplace``: combine into x in place.
    """
    if not training and eval_mode == "identity":
        return x
    sigma = {
        "sqrt": math.sqrt(p / (1 - p)),
        "variance": p / (1 - p),
        "keep": math.sqrt((1 - p) / p),
        "p": p,
    }
    noise = torch.empty_like(x).normal_(
        1.0 if mean == "one" else 0.0,
        sigma[std],
        generator=_random_source(generator, x, random_source),
    )
    if combine == "add":
        return x.add_(noise) if inplace else x + noise
    return x.mul_(noise) if inplace else x * noise


def uout_variant(
    x: Tensor,
    beta: float,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    interval: str = "symmetric",
    distribution: str = "uniform",
    combine: str = "multiply",
    eval_mode: str = "identity",
    random_source: str = "generator",
    inplace: bool = False,
) -> Tensor:
    """``uout`` with optional catalogued mistakes.

    ``interval`` of r: "symmetric" (U(-beta, beta), right), "zero_to_beta" (U(0, beta)),
    "half_width" (U(-beta/2, beta/2)). ``distribution`` of r: "uniform" (right), "normal"
    (N(0, beta^2): torch.randn scaled by beta) or "normal_matched" (N(0, beta^2/3), the
    uniform's variance). ``combine``: "multiply" (x + x * r, right) or "add" (x + r).
    ``eval_mode``: "identity" (right) or "train". ``random_source``: see
    :func:`_random_source`. ``inplace``: add to x in place.
    """
    if not training and eval_mode == "identity":
        return x
    low, high = {
        "symmetric": (-beta, beta),
        "zero_to_beta": (0.0, beta),
        "half_width": (-beta / 2, beta / 2),
    }[interval]
    source = _random_source(generator, x, random_source)
    if distribution == "uniform":
        r = torch.empty_like(x).uniform_(low, high, generator=source)
    else:
        std = {"normal": beta, "normal_matched": beta / math.sqrt(3)}[distribution]
        r = torch.empty_like(x).normal_((low + high) / 2, std, generator=source)
    change = r if combine == "add" else x * r
    return x.add_(change) if inplace else x + change


SAME_SPREAD = "as wide for small |x| as for large |x|"


def _spread_by_magnitude(r: Tensor, magnitude: Tensor, dtype: torch.dtype) -> str:
    """Whether the noise r has one variance for |x| < 1 and for |x| >= 1.

    The two sample variances come from disjoint halves of the inputs: for noise independent of
    x their difference has mean 0 and standard error hypot(se_small, se_large).
    """
    small, large = r[magnitude < 1], r[magnitude >= 1]
    _, var_small, _, se_small = _noise_statistics(small, dtype)
    _, var_large, _, se_large = _noise_statistics(large, dtype)
    if abs(var_small - var_large) <= Z * math.hypot(se_small, se_large):
        return SAME_SPREAD
    return "wider for small |x|" if var_small > var_large else "wider for large |x|"


def _run_noise(
    fn: Callable[..., Any], case: DropoutCase, function_name: str
) -> tuple[Tensor, Tensor, Result]:
    """The noise r = out / x where x is not 0, |x| there, and what every noise check reads."""
    passed = []

    def call(generator: torch.Generator) -> Tensor:
        x = case.x.clone()
        passed.append(x)
        out = fn(x, case.rate, case.training, generator)
        return _cpu64(_as_output(out, case.x, function_name))

    out, randomness = _observe(call, case)
    x64 = _cpu64(case.x)
    nonzero = x64 != 0
    r = out[nonzero] / x64[nonzero]
    return (
        r,
        x64[nonzero].abs(),
        {
            "zero_inputs": "0" if bool((out[~nonzero] == 0).all()) else "not 0",
            "randomness": randomness,
            "input": _unchanged(passed[0], case.x),
        },
    )


def _noise_result(r: Tensor, magnitude: Tensor, case: DropoutCase, means, variances) -> Result:
    mean, var, se_mean, se_var = _noise_statistics(r, case.dtype)
    return {
        "noise_mean": _classify(mean, means, Z * se_mean),
        "noise_variance": _classify(var, variances, Z * se_var),
        "noise_values": _distinct_values(r),
        "noise_spread": _spread_by_magnitude(r, magnitude, case.dtype),
    }


def _run_gaussian(fn: Callable[..., Any], case: DropoutCase) -> Result:
    r, magnitude, result = _run_noise(fn, case, "gaussian_dropout")
    p = case.rate
    variances = [
        ("p/(1 - p)", p / (1 - p)),
        ("(p/(1 - p))^2", (p / (1 - p)) ** 2),
        ("(1 - p)/p", (1 - p) / p),
        ("p^2", p**2),
        ("0", 0.0),
    ]
    means = [("1", 1.0), ("0", 0.0)]
    return {**_noise_result(r, magnitude, case, means, variances), **result}


def _run_uout(fn: Callable[..., Any], case: DropoutCase) -> Result:
    r, magnitude, result = _run_noise(fn, case, "uout")
    beta = case.rate
    noise = _noise_result(
        r,
        magnitude,
        case,
        [("1", 1.0), ("1 + beta/2", 1 + beta / 2)],
        [("beta^2/3", beta**2 / 3), ("beta^2/12", beta**2 / 12), ("beta^2", beta**2), ("0", 0.0)],
    )
    inside = bool(((r - 1).abs() <= beta * (1 + _rtol(case.dtype)) + _rtol(case.dtype)).all())
    noise["noise_range"] = (
        "within [1 - beta, 1 + beta]" if inside else "beyond [1 - beta, 1 + beta]"
    )
    return {**noise, **result}


_NOISE_LABELS = {
    "noise_mean": "mean of the noise out / x",
    "noise_variance": "variance of the noise out / x",
    "noise_values": "values the noise out / x takes",
    "noise_spread": "variance of the noise out / x for |x| < 1 and for |x| >= 1",
    "zero_inputs": "output where the input is 0",
    **_CALL_LABELS,
}

GAUSSIAN = Task(
    name="gaussian_dropout",
    function_name="gaussian_dropout",
    run=_run_gaussian,
    reference=reference_functional.gaussian_dropout,
    variant=gaussian_dropout_variant,
    labels=_NOISE_LABELS,
)
UOUT = Task(
    name="uout",
    function_name="uout",
    run=_run_uout,
    reference=reference_functional.uout,
    variant=uout_variant,
    labels={**_NOISE_LABELS, "noise_range": "range of the noise out / x"},
)


# --- the checks ------------------------------------------------------------------------------


def check_dropout_train(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``dropout_forward`` in training mode: which units are zeroed, how the others are scaled."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(TRAIN_SPECS, training=True, seed=seed, device=device, dtype=dtype)
    run_check(
        FORWARD,
        fn,
        cases,
        list(FORWARD.labels),
        seed=seed,
        what="training mode",
    )


def check_dropout_eval(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``dropout_forward`` in evaluation mode, a batch of one included."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(EVAL_SPECS, training=False, seed=seed, device=device, dtype=dtype)
    run_check(
        FORWARD,
        fn,
        cases,
        list(FORWARD.labels),
        seed=seed,
        what="evaluation mode",
    )


def check_dropout_backward(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``dropout_backward`` after ``dropout_forward``, in training and in evaluation mode."""
    __tracebackhide__ = True
    for name, f in (("dropout_forward", forward), ("dropout_backward", backward)):
        if not callable(f):
            raise CheckFailure(f"expected the function {name}, got {type(f).__name__}")
    seed = draw_seed() if seed is None else seed
    cases = draw_cases(
        TRAIN_SPECS, training=True, seed=seed, device=device, dtype=dtype, gradients=True
    ) + draw_cases(
        EVAL_SPECS[1:], training=False, seed=seed + 1, device=device, dtype=dtype, gradients=True
    )
    run_check(
        BACKWARD,
        _Pipeline(forward, backward),
        cases,
        list(BACKWARD.labels),
        seed=seed,
        what="the gradient",
    )


def check_gaussian_dropout(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``gaussian_dropout`` in training mode (the noise's distribution) and evaluation mode."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    common = dict(device=device, dtype=dtype, zeros=True)
    cases = draw_cases(GAUSSIAN_SPECS, training=True, seed=seed, **common) + draw_cases(
        EVAL_SPECS[:2], training=False, seed=seed + 1, **common
    )
    run_check(
        GAUSSIAN,
        fn,
        cases,
        list(GAUSSIAN.labels),
        seed=seed,
        what="the noise in training and evaluation mode",
    )


def check_uout(
    fn: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``uout`` in training mode (the noise's distribution) and evaluation mode."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    common = dict(device=device, dtype=dtype, rate_name="beta", zeros=True)
    train = draw_cases(UOUT_SPECS, training=True, seed=seed, **common)
    evaluation = draw_cases(UOUT_SPECS[:2], training=False, seed=seed + 1, **common)
    run_check(
        UOUT,
        fn,
        train + evaluation,
        list(UOUT.labels),
        seed=seed,
        what="the noise in training and evaluation mode",
    )
