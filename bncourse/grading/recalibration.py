"""Checks of BN recalibration written by students (assignment ps04_variance_shift, part 3).

``recalibrate_bn(model, batches) -> None`` recomputes every BN layer's running statistics from
``batches`` (a list of input tensors) with dropout OFF and the weights frozen, gives every BN layer
its momentum back, leaves the model in evaluation mode and the caller's batches unchanged.

The checks build small networks with dropout before every BN layer whose running statistics are
those of training with dropout on (:mod:`bncourse.grading.networks`) and whose BN momenta are
drawn (never PyTorch's default 0.1), hand each run a fresh copy and observe in which mode its
dropout layers ran. Statistics gathered with dropout on are random:
they are reported as NaN, so that the mutant with the same mistake (``model.train()``, as
``torch.optim.swa_utils.update_bn`` does) is recognised. The reference is written here against the
exercise's signature; ``tests/test_grading_variance_shift.py`` checks it against
:func:`bncourse.lab.recalibrate.recalibrate_bn`, which grading does not import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bncourse.grading.compare import Tolerance
from bncourse.grading.engine import Result, Task, draw_seed, resolve_device, run_check
from bncourse.grading.networks import (
    ModeRecorder,
    Snapshot,
    bn_modules,
    describe_part,
    draw_inputs,
    draw_network,
    fresh_copy,
    inputs_unchanged,
    no_tf32,
    uniform,
)

__all__ = [
    "RECALIBRATION",
    "RecalibrationCase",
    "check_recalibration_state",
    "check_recalibration_stats",
    "draw_recalibration_cases",
    "recalibrate_variant",
]


@dataclass(frozen=True)
class RecalibrationCase:
    """A trained-looking network whose BN statistics are off, and the batches to recompute them."""

    model: nn.Module
    batches: tuple[Tensor, ...]
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.batches[0].dtype

    def describe(self) -> str:
        kind = "an MLP" if self.layout == "dense" else "a CNN"
        mode = "training" if self.model.training else "evaluation"
        return (
            f"{kind} with {len(bn_modules(self.model))} BN layers and dropout before each, given "
            f"in {mode} mode, {len(self.batches)} batches of shape {tuple(self.batches[0].shape)}"
        )

    def exact(self) -> RecalibrationCase:
        return self


# (layout, batch shape, number of batches, width, depth, mode the network is handed over in)
RECALIBRATION_SPECS = {
    "dense": (
        ("dense", (64, 6), 4, 6, 3, "eval"),
        ("dense", (64, 5), 3, 4, 2, "train"),
        ("dense", (32, 4), 5, 10, 2, "train"),
    ),
    "conv": (
        ("conv", (8, 2, 5, 5), 4, 4, 2, "train"),
        ("conv", (6, 3, 4, 4), 3, 3, 2, "eval"),
        ("conv", (4, 2, 4, 4), 5, 8, 2, "eval"),
    ),
}


def draw_recalibration_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[RecalibrationCase]:
    """Networks with dropout (p = 0.3) before every BN whose running statistics are those of
    training with dropout on: variances 1.5-2.5 times, means a fraction of a standard deviation
    away from what the layers see with dropout off (10 batches tracked, momentum 0.1)."""
    if layout not in RECALIBRATION_SPECS:
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, shape, count, width, depth, mode in RECALIBRATION_SPECS[layout]:
        model = draw_network(
            gen, layout=kind, in_channels=shape[1], width=width, depth=depth, num_classes=3
        ).to(device)
        batches = tuple(x.to(device) for x in draw_inputs(gen, shape, count))
        target = fresh_copy(model)
        with no_tf32():
            recalibrate_variant(target, batches)
        for bn, right in zip(bn_modules(model), bn_modules(target), strict=True):
            # A momentum of 0.1 written back by hand would pass as restored: draw another one.
            bn.momentum = round(float(uniform(gen, 0.02, 0.08, 1)), 4)
            n = bn.num_features
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(device)
            std = right.running_var.sqrt()
            with torch.no_grad():
                bn.running_var.copy_(right.running_var * uniform(gen, 1.5, 2.5, n).to(device))
                bn.running_mean.copy_(
                    right.running_mean + sign * std * uniform(gen, 0.3, 0.8, n).to(device)
                )
        cases.append(RecalibrationCase(model.train(mode == "train"), batches, kind))
    return cases


def recalibrate_variant(
    model: nn.Module,
    batches: Sequence[Tensor],
    *,
    dropout: str = "off",
    reset: bool = True,
    momentum: str = "none",
    bn_mode: str = "train",
    final: str = "eval",
    use: str = "all",
    momentum_after: str = "restored",
    inputs: str = "kept",
) -> None:
    """BN recalibration with the student's signature and optional catalogued mistakes.

    ``dropout``: "off" (right: everything but BN in evaluation mode) or "on" (``model.train()``,
    as ``torch.optim.swa_utils.update_bn`` does). ``reset``: reset the running statistics first.
    ``momentum``: "none" (a cumulative average over the batches) or "kept" (the layers' own
    exponential average). ``bn_mode``: "train" (BN layers update their statistics) or "eval"
    (nothing is updated). ``final``: "eval" (right) or "as_left" (BN layers stay in training mode).
    ``use``: "all" (right) or "last" (the statistics of the last batch only, as with momentum 1).
    ``momentum_after``: "restored" (right), "none" (left at None) or "default" (set to 0.1).
    ``inputs``: "kept" (right) or "modified" (the batches changed in place afterwards).
    """
    bns = bn_modules(model)
    momenta = [bn.momentum for bn in bns]
    model.train(dropout == "on")
    for bn in bns:
        if reset:
            bn.reset_running_stats()
        if momentum == "none":
            bn.momentum = None
        bn.train(bn_mode == "train")
    with torch.no_grad():
        for x in batches if use == "all" else batches[-1:]:
            model(x)
    for bn, value in zip(bns, momenta, strict=True):
        if momentum_after == "restored":
            bn.momentum = value
        elif momentum_after == "default":
            bn.momentum = 0.1
    if final == "eval":
        model.eval()
    if inputs == "modified":
        for x in batches:
            x.sub_(x.mean(0, keepdim=True))


def _run_recalibration(fn: Callable[..., Any], case: RecalibrationCase) -> Result:
    model = fresh_copy(case.model)
    before = Snapshot.of(model)
    momenta = [bn.momentum for bn in bn_modules(model)]
    given = [x.clone() for x in case.batches]
    with no_tf32(), ModeRecorder(model) as recorder:
        fn(model, list(given))
    bns = bn_modules(model)
    mean = torch.cat([bn.running_mean.detach().reshape(-1).to("cpu", torch.float64) for bn in bns])
    var = torch.cat([bn.running_var.detach().reshape(-1).to("cpu", torch.float64) for bn in bns])
    if recorder.dropout_ran_in_training:  # statistics of noisy inputs: random, not test-time
        mean, var = torch.full_like(mean, float("nan")), torch.full_like(var, float("nan"))
    return {
        "running_mean": mean,
        "running_var": var,
        "dropout_off": not recorder.dropout_ran_in_training,
        "eval_after": not any(m.training for m in model.modules()),
        "weights_unchanged": before.weights_unchanged(model),
        "momentum_restored": [bn.momentum for bn in bns] == momenta,
        "batches_unchanged": inputs_unchanged(given, case.batches),
    }


RECALIBRATION = Task(
    name="bn_recalibration",
    function_name="recalibrate_bn",
    run=_run_recalibration,
    reference=recalibrate_variant,
    variant=recalibrate_variant,
    labels={
        "running_mean": "running means",
        "running_var": "running variances",
        "dropout_off": "dropout off during the pass",
        "eval_after": "network left in evaluation mode",
        "weights_unchanged": "weights unchanged",
        "momentum_restored": "BN momentum given back",
        "batches_unchanged": "the batches unchanged",
    },
    guard={"torch_layers": False, "references": ("bncourse.lab.recalibrate",)},
    # Averaging the statistics of the batches (the reference, PreciseBN) and the exact statistics
    # of all the data, layer by layer in evaluation mode, are both sound; they differ by the spread
    # between batches and by batch statistics normalizing with the biased variance. Over 1,200
    # networks drawn as here that difference stayed below 0.46 of this tolerance, and every
    # catalogued mistake exceeded it by a factor of 2.8 or more.
    tolerance=lambda case: Tolerance(rtol=0.12, atol=0.05),
)


def check_recalibration_stats(
    fn: Callable[..., Any],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """The running statistics ``recalibrate_bn`` leaves: those of test-time inputs, dropout off."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_recalibration_cases(seed, layout, device)
    run_check(
        RECALIBRATION,
        fn,
        cases,
        ["running_mean", "running_var", "dropout_off"],
        seed=seed,
        what=describe_part(layout, "the recalibration"),
    )


def check_recalibration_state(
    fn: Callable[..., Any],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """The network ``recalibrate_bn`` hands back: weights unchanged, momenta given back, in
    evaluation mode; the caller's batches unchanged."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_recalibration_cases(seed, layout, device)
    run_check(
        RECALIBRATION,
        fn,
        cases,
        ["eval_after", "weights_unchanged", "momentum_restored", "batches_unchanged"],
        seed=seed,
        what=describe_part(layout, "the network after recalibration"),
    )
