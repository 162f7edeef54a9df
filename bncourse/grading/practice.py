"""Checks for batch norm in practice (assignment ps06_bn_in_practice).

Students write three functions:

``fold_batchnorm(weight, bias, running_mean, running_var, gamma, beta, eps) -> (weight, bias)``
    the weight and bias of one ``Linear`` (2-D weight) or ``Conv2d`` (4-D weight) layer that
    computes what the layer followed by batch norm in evaluation mode computes: with
    ``s = gamma / sqrt(running_var + eps)``, the weight scaled by ``s`` per output channel (dim 0)
    and the bias ``(bias - running_mean) * s + beta``; ``bias`` may be None (a layer without bias).
``freeze_batchnorm(model) -> None``
    prepares ``model`` for fine-tuning: from now on, and after any later ``model.train()`` of a
    training loop, its BN layers normalise with their running statistics and neither those nor
    their affine parameters change, while every other layer keeps training and dropout stays
    active in training mode.
``group_norm(x, num_groups, gamma, beta, eps) -> out``
    group normalisation of ``x`` of shape (N, C, *), as ``torch.nn.functional.group_norm``: the
    C channels of each sample in ``num_groups`` groups of consecutive channels, each normalised
    with its own mean and biased variance, then ``gamma`` and ``beta`` per channel.

The checks draw their inputs when they run, with values of both signs and magnitudes from 0.1 to
a few units, eps up to 0.1 against variances from 0.02 (so eps's place shows), and weight layers
that keep their width (as many output as input channels), so that a scale applied along the wrong
axis of the weight computes a wrong result instead of failing to broadcast. The freeze check
hands the function a small network in training mode, then does what a fine-tuning loop does:
one forward pass right away, then ``model.train()`` and a few SGD steps on tiny batches with
dropout masks drawn from a seed, and compares the output, the losses, the trained weights and
the BN layers' statistics and affine parameters with the reference. ``fold_batchnorm`` and
``group_norm`` are checked with torch's normalisation and fusion routines refused, against
``bncourse.nn``'s own ``fold_parameters`` and ``group_norm`` (the variants below reproduce the
catalogued mistakes).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bncourse.grading.engine import CheckFailure, Result, Task, draw_seed, resolve_device, run_check
from bncourse.grading.networks import (
    BN_TYPES,
    describe_part,
    draw_inputs,
    draw_network,
    fresh_copy,
    no_tf32,
)
from bncourse.nn.folding import fold_parameters
from bncourse.nn.normalization import group_norm

__all__ = [
    "FOLD",
    "FREEZE",
    "GROUP_NORM",
    "FoldCase",
    "FreezeCase",
    "GroupNormCase",
    "check_fold_batchnorm",
    "check_freeze_batchnorm",
    "check_group_norm",
    "draw_fold_cases",
    "draw_freeze_cases",
    "draw_group_norm_cases",
    "fold_variant",
    "freeze_variant",
    "group_norm_variant",
]


def _cpu64(value: Tensor) -> Tensor:
    return value.detach().to("cpu", torch.float64)


def _signs(gen: torch.Generator, n: int) -> Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()


def _uniform64(gen: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _same_tensors(given: Sequence[Tensor | None], originals: Sequence[Tensor | None]) -> bool:
    return all(
        (a is None and b is None)
        or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
        for a, b in zip(given, originals, strict=True)
    )


def _std(var: Tensor, eps: float, eps_kind: str) -> Tensor:
    if eps_kind == "inside":
        return torch.sqrt(var + eps)
    if eps_kind == "missing":
        return torch.sqrt(var)
    if eps_kind == "added_to_std":
        return torch.sqrt(var) + eps
    raise ValueError(f"eps_kind must be 'inside', 'missing' or 'added_to_std', got {eps_kind!r}")


# --- folding batch norm into the layer before it ---------------------------------------------------


@dataclass(frozen=True)
class FoldCase:
    """A weight layer's weight and bias (or None) and the BN layer after it, in evaluation mode."""

    weight: Tensor
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor
    gamma: Tensor
    beta: Tensor
    eps: float

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def describe(self) -> str:
        kind = "a Linear" if self.weight.dim() == 2 else "a Conv2d"
        bias = "with" if self.bias is not None else "without"
        return f"{kind} weight of shape {tuple(self.weight.shape)} {bias} bias, eps={self.eps:g}"

    def exact(self) -> FoldCase:
        return self.to(torch.device("cpu"), torch.float64)

    def to(self, device: torch.device, dtype: torch.dtype) -> FoldCase:
        changes = {
            f.name: getattr(self, f.name).to(device, dtype)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)


# (weight shape, with bias, eps). Every layer keeps its width, so that a scale applied along the
# input axis computes a wrong weight rather than failing to broadcast; eps = 0.1 and 0.05 against
# running variances from 0.02 make its place visible.
FOLD_SPECS = {
    "linear": (
        ((5, 5), True, 1e-5),
        ((4, 4), False, 0.1),
        ((6, 6), True, 0.1),
        ((3, 3), True, 1e-3),
    ),
    "conv": (
        ((4, 4, 3, 3), True, 1e-5),
        ((3, 3, 1, 1), False, 0.1),
        ((5, 5, 3, 3), True, 0.05),
        ((2, 2, 3, 3), True, 0.1),
    ),
}


def draw_fold_cases(
    seed: int,
    layout: str = "linear",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[FoldCase]:
    """Weights of both signs, biases far from 0, running means in about [-3, 3], running variances
    in [0.02, 3], gamma of both signs with magnitudes in [0.5, 2]."""
    if layout not in FOLD_SPECS:
        raise ValueError(f"layout must be 'linear' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for shape, with_bias, eps in FOLD_SPECS[layout]:
        out = shape[0]
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
        weight = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 / fan_in**0.5
        bias = _signs(gen, out) * _uniform64(gen, 0.3, 2.0, out) if with_bias else None
        case = FoldCase(
            weight=weight,
            bias=bias,
            running_mean=1.5 * torch.randn(out, generator=gen, dtype=torch.float64),
            running_var=_uniform64(gen, 0.02, 3.0, out),
            gamma=_signs(gen, out) * _uniform64(gen, 0.5, 2.0, out),
            beta=torch.randn(out, generator=gen, dtype=torch.float64),
            eps=eps,
        )
        cases.append(case.to(device, dtype))
    return cases


def fold_variant(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
    *,
    eps_kind: str = "inside",
    spread: str = "std",
    bias_kind: str = "shifted",
    weight_axis: str = "out",
    in_place: bool = False,
) -> tuple[Tensor, Tensor]:
    """``fold_batchnorm`` with the student's signature and optional catalogued mistakes.

    ``eps_kind``: "inside" (right), "missing", "added_to_std". ``spread``: "std" (right: divide by
    the standard deviation) or "var" (by ``running_var + eps``, no square root). ``bias_kind``:
    "shifted" (right: ``(bias - mean) * s + beta``), "dropped" (the layer's bias left out),
    "mean_kept" (``bias * s + beta``, the running mean never subtracted). ``weight_axis``: "out"
    (right: one scale per output channel, dim 0), "in" (along dim 1), "none" (the weight left as
    it is). ``in_place``: the caller's weight is scaled in place.
    """
    if spread == "std":
        scale = gamma / _std(running_var, eps, eps_kind)
    elif spread == "var":
        scale = gamma / (running_var + eps)
    else:
        raise ValueError(f"spread must be 'std' or 'var', got {spread!r}")
    ndim = weight.dim()
    if weight_axis == "out":
        folded = weight * scale.reshape(-1, *([1] * (ndim - 1)))
    elif weight_axis == "in":
        folded = weight * scale.reshape(1, -1, *([1] * (ndim - 2)))
    elif weight_axis == "none":
        folded = weight.clone()
    else:
        raise ValueError(f"weight_axis: unknown value {weight_axis!r}")
    b = bias if bias is not None else torch.zeros_like(running_mean)
    if bias_kind == "shifted":
        new_bias = (b - running_mean) * scale + beta
    elif bias_kind == "dropped":
        new_bias = -running_mean * scale + beta
    elif bias_kind == "mean_kept":
        new_bias = b * scale + beta
    else:
        raise ValueError(f"bias_kind: unknown value {bias_kind!r}")
    if in_place:
        with torch.no_grad():
            weight.mul_(scale.reshape(-1, *([1] * (ndim - 1))))
    return folded, new_bias


def _folded(value: object, case: FoldCase, weight: Tensor) -> tuple[Tensor, Tensor]:
    name = FOLD.function_name
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise CheckFailure(
            f"{name} returned {type(value).__name__}; it must return two tensors, the folded "
            "(weight, bias) (did you forget the return statement?)."
        )
    new_weight, new_bias = value
    out = weight.shape[0]
    for label, t, shape in (("weight", new_weight, weight.shape), ("bias", new_bias, (out,))):
        if not isinstance(t, Tensor):
            raise CheckFailure(
                f"{name} returned a {type(t).__name__} as the folded {label}; return a tensor "
                "(a layer without bias gets one after folding)."
            )
        if tuple(t.shape) != tuple(shape):
            raise CheckFailure(
                f"{name} returned a folded {label} of shape {tuple(t.shape)} for {case.describe()}; "
                f"expected shape {tuple(shape)}."
            )
        if t.dtype != weight.dtype or t.device != weight.device:
            raise CheckFailure(
                f"{name} returned a folded {label} of dtype {t.dtype} on {t.device} for a weight "
                f"of dtype {weight.dtype} on {weight.device}; keep the weight's dtype and device."
            )
    return new_weight, new_bias


def _run_fold(fn: Callable[..., Any], case: FoldCase) -> Result:
    given = [
        None if t is None else t.clone()
        for t in (
            case.weight,
            case.bias,
            case.running_mean,
            case.running_var,
            case.gamma,
            case.beta,
        )
    ]
    value = fn(*given, case.eps)
    new_weight, new_bias = _folded(value, case, given[0])
    originals = [
        case.weight,
        case.bias,
        case.running_mean,
        case.running_var,
        case.gamma,
        case.beta,
    ]
    return {
        "weight": _cpu64(new_weight),
        "bias": _cpu64(new_bias),
        "inputs_unchanged": _same_tensors(given, originals),
    }


FOLD = Task(
    name="fold_batchnorm",
    function_name="fold_batchnorm",
    run=_run_fold,
    reference=fold_parameters,
    variant=fold_variant,
    labels={
        "weight": "folded weight",
        "bias": "folded bias",
        "inputs_unchanged": "the tensors passed in left unchanged",
    },
    channel_dims={"weight": 0, "bias": 0},
    inputs=lambda case: {"weight": case.weight},
    book=("bn_dropout_practice", "bp-folding"),
)


def check_fold_batchnorm(
    fn: Callable[..., tuple[Tensor, Tensor]],
    *,
    layout: str = "linear",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``fold_batchnorm`` for Linear (``layout="linear"``) or Conv2d (``"conv"``) weights."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_fold_cases(seed, layout, device, dtype)
    run_check(
        FOLD,
        fn,
        cases,
        ["weight", "bias", "inputs_unchanged"],
        seed=seed,
        what=f"folding into a {'Linear' if layout == 'linear' else 'Conv2d'} layer",
    )


# --- group norm --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupNormCase:
    """An input of shape (N, C, *), its number of groups, gamma and beta of shape (C,), eps."""

    x: Tensor
    num_groups: int
    gamma: Tensor
    beta: Tensor
    eps: float

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def describe(self) -> str:
        return (
            f"input of shape {tuple(self.x.shape)}, num_groups={self.num_groups}, eps={self.eps:g}"
        )

    def exact(self) -> GroupNormCase:
        return self.to(torch.device("cpu"), torch.float64)

    def to(self, device: torch.device, dtype: torch.dtype) -> GroupNormCase:
        return dataclasses.replace(
            self,
            x=self.x.to(device, dtype),
            gamma=self.gamma.to(device, dtype),
            beta=self.beta.to(device, dtype),
        )


# (shape, num_groups, eps). Batches of one (the case group norm is made for), groups whose number
# differs from their size (so that the two cannot be confused unseen), (N, C), (N, C, L) and
# (N, C, H, W) input.
GROUP_NORM_SPECS = (
    ((2, 6, 5), 3, 1e-5),
    ((1, 8, 3, 3), 4, 0.1),
    ((3, 6), 2, 0.1),
    ((2, 4, 2, 3), 2, 1e-3),
    ((1, 6, 4), 2, 0.05),
    ((4, 8, 2, 2), 2, 1e-5),
)


def draw_group_norm_cases(
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[GroupNormCase]:
    """Channels with means in [-2, 2] and standard deviations in [0.1, 3], per sample."""
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for shape, groups, eps in GROUP_NORM_SPECS:
        n, c = shape[:2]
        per = (n, c) + (1,) * (len(shape) - 2)
        mean = _uniform64(gen, -2.0, 2.0, n * c).reshape(per)
        std = _uniform64(gen, 0.1, 3.0, n * c).reshape(per)
        x = mean + std * torch.randn(shape, generator=gen, dtype=torch.float64)
        case = GroupNormCase(
            x=x,
            num_groups=groups,
            gamma=_signs(gen, c) * _uniform64(gen, 0.5, 2.0, c),
            beta=torch.randn(c, generator=gen, dtype=torch.float64),
            eps=eps,
        )
        cases.append(case.to(device, dtype))
    return cases


def group_norm_variant(
    x: Tensor,
    num_groups: int,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
    *,
    axes: str = "group",
    variance: str = "biased",
    grouping: str = "contiguous",
    eps_kind: str = "inside",
    in_place: bool = False,
) -> Tensor:
    """``group_norm`` with the student's signature and optional catalogued mistakes.

    ``axes``: "group" (right: each sample's group alone) or "batch" (a group's statistics over the
    whole batch). ``variance``: "biased" (right) or "unbiased". ``grouping``: "contiguous" (right:
    channels 0..C/G-1 form group 0), "interleaved" (channel c in group c % G), "group_size"
    (``num_groups`` taken as the number of channels per group). ``eps_kind``: as in batch norm.
    ``in_place``: the caller's x is normalized in place (and returned scaled).
    """
    n, c = x.shape[:2]
    if grouping == "contiguous":
        grouped = x.reshape(n, num_groups, -1)
    elif grouping == "interleaved":
        grouped = (
            x.reshape(n, c // num_groups, num_groups, -1).transpose(1, 2).reshape(n, num_groups, -1)
        )
    elif grouping == "group_size":
        grouped = x.reshape(n, c // num_groups, -1)
    else:
        raise ValueError(f"grouping: unknown value {grouping!r}")
    if axes == "group":
        dims: tuple[int, ...] = (2,)
    elif axes == "batch":
        dims = (0, 2)
    else:
        raise ValueError(f"axes must be 'group' or 'batch', got {axes!r}")
    mean = grouped.mean(dim=dims, keepdim=True)
    var = ((grouped - mean) ** 2).mean(dim=dims, keepdim=True)
    if variance == "unbiased":
        count = grouped.numel() // mean.numel()
        var = var * count / (count - 1)
    elif variance != "biased":
        raise ValueError(f"variance must be 'biased' or 'unbiased', got {variance!r}")
    normed = (grouped - mean) / _std(var, eps, eps_kind)
    if grouping == "interleaved":
        normed = normed.reshape(n, num_groups, c // num_groups, -1).transpose(1, 2)
    normed = normed.reshape(x.shape)
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    if in_place:
        return x.copy_(normed).mul_(gamma.reshape(per_channel)).add_(beta.reshape(per_channel))
    return normed * gamma.reshape(per_channel) + beta.reshape(per_channel)


def _run_group_norm(fn: Callable[..., Any], case: GroupNormCase) -> Result:
    x, gamma, beta = case.x.clone(), case.gamma.clone(), case.beta.clone()
    out = fn(x, case.num_groups, gamma, beta, case.eps)
    name = GROUP_NORM.function_name
    if not isinstance(out, Tensor):
        raise CheckFailure(
            f"{name} returned {type(out).__name__}, expected a torch.Tensor (did you forget the "
            "return statement?)."
        )
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise CheckFailure(
            f"{name} returned a {out.dtype} tensor of shape {tuple(out.shape)} on {out.device} "
            f"for an input of shape {tuple(x.shape)} ({x.dtype}, {x.device}); the output has the "
            "input's shape, dtype and device."
        )
    return {
        "output": _cpu64(out),
        "inputs_unchanged": _same_tensors([x, gamma, beta], [case.x, case.gamma, case.beta]),
    }


GROUP_NORM = Task(
    name="group_norm",
    function_name="group_norm",
    run=_run_group_norm,
    reference=group_norm,
    variant=group_norm_variant,
    labels={
        "output": "output",
        "inputs_unchanged": "the tensors passed in (x, gamma, beta) left unchanged",
    },
    channel_dims={"output": 1},
    book=("bn_dropout_practice", "bp-small-batches"),
)


def check_group_norm(
    fn: Callable[..., Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> None:
    """``group_norm`` on (N, C), (N, C, L) and (N, C, H, W) input, batches of one included."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_group_norm_cases(seed, device, dtype)
    run_check(
        GROUP_NORM,
        fn,
        cases,
        ["output", "inputs_unchanged"],
        seed=seed,
        what="group normalization",
    )


# --- freezing batch norm for fine-tuning ----------------------------------------------------------


@dataclass(frozen=True)
class FreezeCase:
    """A network in training mode, a batch it sees right after the call, the fine-tuning batches,
    the seed of the dropout masks and the learning rate."""

    model: nn.Module
    probe: Tensor
    batches: tuple[tuple[Tensor, Tensor], ...]
    seed: int
    lr: float
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.probe.dtype

    def describe(self) -> str:
        kind = "an MLP" if self.layout == "dense" else "a CNN"
        bns = sum(isinstance(m, BN_TYPES) for m in self.model.modules())
        sizes = ", ".join(str(len(y)) for _, y in self.batches)
        return (
            f"{kind} with {bns} BN layers and dropout before the classifier, fine-tuned with SGD "
            f"(lr={self.lr:g}) on batches of {sizes}"
        )

    def exact(self) -> FreezeCase:
        return self  # the dropout masks are drawn on the device and in the dtype under test


# (layout, sample shape, width, depth, fine-tuning batch sizes, learning rate)
FREEZE_SPECS = {
    "dense": (("dense", (6,), 5, 2, (4, 3, 4), 0.2), ("dense", (4,), 3, 3, (2, 5), 0.1)),
    "conv": (("conv", (2, 4, 4), 3, 2, (3, 2), 0.2), ("conv", (3, 3, 3), 4, 1, (2, 4, 3), 0.1)),
}


def draw_freeze_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[FreezeCase]:
    """Networks with BN after every weight layer and dropout (p = 0.3) before the classifier,
    in training mode, with running statistics far from a batch's own."""
    if layout not in FREEZE_SPECS:
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, sample, width, depth, sizes, lr in FREEZE_SPECS[layout]:
        model = draw_network(
            gen,
            layout=kind,
            in_channels=sample[0],
            width=width,
            depth=depth,
            num_classes=3,
            placement="after_bn",
        ).to(device)
        probe, *xs = draw_inputs(gen, (max(sizes), *sample), count=1 + len(sizes))
        batches = tuple(
            (
                x[:size].to(device),
                torch.randint(0, 3, (size,), generator=gen).to(device),
            )
            for x, size in zip(xs, sizes, strict=True)
        )
        mask_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        cases.append(FreezeCase(model.train(), probe.to(device), batches, mask_seed, lr, kind))
    return cases


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """A ``train`` method that keeps the module (and what it holds) in evaluation mode."""
    for m in self.modules():
        m.training = False
    return self


def freeze_variant(
    model: nn.Module,
    *,
    stats: str = "eval",
    persist: bool = True,
    which: str = "bn",
    affine: str = "frozen",
    parameters: str = "bn",
    bn_types: str = "all",
) -> None:
    """``freeze_batchnorm`` with the student's signature and optional catalogued mistakes.

    ``stats``: "eval" (right: BN layers switched to evaluation mode) or "training" (left in
    training mode, only their parameters frozen). ``persist``: whether a later ``model.train()``
    leaves them in evaluation mode (right: their ``train`` method keeps them there) or switches
    them back. ``which``: "bn" (right) or "all" (every module kept in evaluation mode, dropout
    too). ``affine``: "frozen" (right: ``requires_grad=False`` on gamma and beta) or "trainable".
    ``parameters``: "bn" (right) or "all" (every parameter of the network frozen).
    ``bn_types``: "all" (right: every BN layer) or "2d" (only the BatchNorm2d layers frozen).
    """
    if bn_types not in ("all", "2d"):
        raise ValueError(f"bn_types must be 'all' or '2d', got {bn_types!r}")
    kinds = BN_TYPES if bn_types == "all" else nn.BatchNorm2d
    bns = [m for m in model.modules() if isinstance(m, kinds)]
    if parameters == "all":
        for p in model.parameters():
            p.requires_grad_(False)
    elif parameters != "bn":
        raise ValueError(f"parameters must be 'bn' or 'all', got {parameters!r}")
    if affine == "frozen":
        for bn in bns:
            for p in bn.parameters():
                p.requires_grad_(False)
    elif affine != "trainable":
        raise ValueError(f"affine must be 'frozen' or 'trainable', got {affine!r}")
    if stats == "training":
        return
    if stats != "eval":
        raise ValueError(f"stats must be 'eval' or 'training', got {stats!r}")
    if which == "bn":
        chosen = bns
    elif which == "all":
        chosen = list(model.modules())
    else:
        raise ValueError(f"which must be 'bn' or 'all', got {which!r}")
    for m in chosen:
        m.eval()
        if persist:
            m.train = types.MethodType(_stay_in_eval, m)


def _names(model: nn.Module) -> tuple[list[str], list[str]]:
    """The BN layers' names, and the names of the other layers' parameters."""
    bns = [name for name, m in model.named_modules() if isinstance(m, BN_TYPES)]
    others = [name for name, _ in model.named_parameters() if name.rpartition(".")[0] not in bns]
    return bns, others


def _read(model: nn.Module, module_name: str, attr: str, like: Tensor) -> Tensor:
    """``model.<module_name>.<attr>`` in float64 on the CPU; NaNs where it no longer exists."""
    try:
        value = getattr(model.get_submodule(module_name), attr)
    except AttributeError:
        value = None
    if not isinstance(value, Tensor) or value.shape != like.shape:
        return torch.full(like.shape, float("nan"), dtype=torch.float64)
    return _cpu64(value)


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _fork_rng(device: torch.device):
    """The global random state (and the CUDA device's) is given back afterwards."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.random.fork_rng(devices=[index])


def _run_freeze(fn: Callable[..., Any], case: FreezeCase) -> Result:
    model = fresh_copy(case.model)
    bn_names, other_names = _names(model)
    shapes = {
        (name, attr): getattr(model.get_submodule(name), attr).detach().clone()
        for name in bn_names
        for attr in ("running_mean", "running_var", "weight", "bias")
    }
    params = dict(model.named_parameters())
    other_shapes = {name: params[name].detach().clone() for name in other_names}
    with no_tf32(), _fork_rng(case.probe.device):
        returned = fn(model)
        if isinstance(returned, nn.Module):  # a function that hands back the network it froze
            model = returned
        torch.manual_seed(case.seed)
        with torch.no_grad():
            now = model(case.probe.clone())  # right after the call, no train() in between
        model.train()  # what the fine-tuning loop does first
        losses = []
        for x, y in case.batches:
            for p in model.parameters():
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            if loss.requires_grad:
                loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad and p.grad is not None:
                        p -= case.lr * p.grad
            losses.append(loss.detach())
    params = dict(model.named_parameters())
    trained = [
        _cpu64(params[n])
        if n in params and params[n].shape == like.shape
        else torch.full(like.shape, float("nan"), dtype=torch.float64)
        for n, like in other_shapes.items()
    ]

    def bn(attrs: tuple[str, ...]) -> Tensor:
        return _flat(
            [_read(model, name, attr, shapes[name, attr]) for name in bn_names for attr in attrs]
        )

    if not isinstance(now, Tensor):
        raise CheckFailure("the network's output after freeze_batchnorm is not a tensor")
    return {
        "output_now": _cpu64(now),
        "losses": _cpu64(torch.stack(losses)),
        "trained": _flat(trained),
        "bn_statistics": bn(("running_mean", "running_var")),
        "bn_affine": bn(("weight", "bias")),
    }


FREEZE = Task(
    name="freeze_batchnorm",
    function_name="freeze_batchnorm",
    run=_run_freeze,
    reference=freeze_variant,
    variant=freeze_variant,
    labels={
        "output_now": "output of a forward pass right after the call",
        "losses": "training losses after model.train()",
        "trained": "weights of the other layers after fine-tuning",
        "bn_statistics": "BN running statistics after fine-tuning",
        "bn_affine": "BN gamma and beta after fine-tuning",
    },
    guard={"torch_layers": False},
    book=("bn_dropout_practice", "bp-finetune"),
)


def check_freeze_batchnorm(
    fn: Callable[..., Any],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """After ``freeze_batchnorm`` and a later ``model.train()``, fine-tuning leaves BN's running
    statistics and affine parameters alone, trains the other layers and keeps dropout on."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_freeze_cases(seed, layout, device)
    run_check(
        FREEZE,
        fn,
        cases,
        ["output_now", "losses", "trained", "bn_statistics", "bn_affine"],
        seed=seed,
        what=describe_part(layout, "fine-tuning with frozen BN"),
    )
