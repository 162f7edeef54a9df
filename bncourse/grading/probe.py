"""Checks of a variance-shift probe written by students (assignment ps04_variance_shift, part 2).

``probe_variance_shift(model, x) -> list[tuple[float, float]]`` returns one
``(moving_var, real_var)`` pair per BN layer, in the order of ``model.modules()``: the layer's
running variance and the unbiased variance its input really has on ``x`` with the network in
evaluation mode, both averaged over channels. The model's weights, buffers, train/eval flags and
hooks are left as they were.

The checks build small networks with dropout before every BN layer
(:mod:`bncourse.grading.networks`), hand each run a fresh copy in training mode (as a training
loop leaves it), in evaluation mode or in a mix of the two (BN frozen during fine-tuning, dropout
on for Monte Carlo dropout), and observe in which mode its dropout and BN layers ran. The input
``x`` handed over must come back unchanged. A probe that ran them in
training mode measured random numbers: its variances are reported as NaN, so that the mutant with
the same mistake, which does the same, is recognised. The reference is written here against the
exercise's signature; ``tests/test_grading_variance_shift.py`` checks it against
:func:`bncourse.lab.probes.measure_variance_shift`, which grading does not import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bncourse.grading.engine import CheckFailure, Result, Task, draw_seed, resolve_device, run_check
from bncourse.grading.networks import (
    ModeRecorder,
    Snapshot,
    bn_modules,
    describe_arrival,
    describe_part,
    draw_inputs,
    draw_network,
    fresh_copy,
    inputs_unchanged,
    no_tf32,
    remember_modes,
    restore_modes,
    set_arrival_mode,
)

__all__ = [
    "PROBE",
    "ProbeCase",
    "check_probe_side_effects",
    "check_probe_values",
    "draw_probe_cases",
    "probe_variant",
]


def _channel_variance(x: Tensor, axes: str = "channel", unbiased: bool = True) -> float:
    """Variance of BN input ``x`` averaged over channels (``axes="channel"``), or a mistake."""
    x = x.double()
    if axes == "channel":
        return float(x.transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=unbiased).mean())
    if axes == "batch_only":
        return float(x.var(0, unbiased=unbiased).mean())
    if axes == "all":
        return float(x.var(unbiased=unbiased))
    raise ValueError(f"axes must be 'channel', 'batch_only' or 'all', got {axes!r}")


@dataclass(frozen=True)
class ProbeCase:
    """A network (in the train/eval mode it is handed over in) and the data to probe it on."""

    model: nn.Module
    x: Tensor
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def describe(self) -> str:
        kind = "an MLP" if self.layout == "dense" else "a CNN"
        return (
            f"{kind} with {len(bn_modules(self.model))} BN layers and dropout before each, given "
            f"{describe_arrival(self.model)}, input of shape {tuple(self.x.shape)}"
        )

    def exact(self) -> ProbeCase:
        return self  # the reference probe computes in float64 from what the network gives


# (layout, input shape, width, depth, arrival mode). Few values per channel, so that n / (n - 1)
# shows. Each layout has a network in training mode (as a training loop leaves it) and one whose
# flags no single model.train(flag) restores; the CNNs add one in evaluation mode.
PROBE_SPECS = {
    "dense": (("dense", (40, 6), 5, 3, "train"), ("dense", (24, 4), 7, 2, "mc_dropout")),
    "conv": (
        ("conv", (6, 2, 5, 5), 3, 2, "frozen_bn"),
        ("conv", (3, 3, 4, 4), 4, 2, "eval"),
        ("conv", (4, 2, 4, 4), 3, 2, "train"),
    ),
}


def draw_probe_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[ProbeCase]:
    """Networks with dropout (p = 0.3) before every BN, in their arrival modes, and inputs."""
    if layout not in PROBE_SPECS:
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, shape, width, depth, mode in PROBE_SPECS[layout]:
        model = draw_network(
            gen, layout=kind, in_channels=shape[1], width=width, depth=depth, num_classes=3
        )
        (x,) = draw_inputs(gen, shape)
        cases.append(ProbeCase(set_arrival_mode(model.to(device), mode), x.to(device), kind))
    return cases


def probe_variant(
    model: nn.Module,
    x: Tensor,
    *,
    mode: str = "eval",
    where: str = "input",
    axes: str = "channel",
    unbiased: bool = True,
    restore: object = True,
    remove_hooks: bool = True,
    inputs: str = "kept",
) -> list[tuple[float, float]]:
    """The probe with the student's signature and optional catalogued mistakes.

    ``mode``: "eval" (right) or "given" (runs the network in whatever mode it came in).
    ``where``: "input" (right: a forward pre-hook sees BN's input) or "output" (BN's output).
    ``axes``: "channel", "batch_only" (per position, for conv input) or "all" (channels pooled).
    ``unbiased``: the variance's convention. ``restore``: how the train/eval flags are put back
    (see :func:`~bncourse.grading.networks.restore_modes`). ``remove_hooks``: remove the hooks
    afterwards. ``inputs``: "kept" (right) or "modified" (``x`` changed in place afterwards).
    """
    bns = bn_modules(model)
    moving = [float(bn.running_var.double().mean()) for bn in bns]
    captured: list[list[Tensor]] = [[] for _ in bns]
    handles = []
    for bn, store in zip(bns, captured, strict=True):
        if where == "input":
            hook = bn.register_forward_pre_hook(lambda m, args, s=store: s.append(args[0].detach()))
        else:
            hook = bn.register_forward_hook(lambda m, args, out, s=store: s.append(out.detach()))
        handles.append(hook)
    modes = remember_modes(model)
    if mode == "eval":
        model.eval()
    with torch.no_grad():
        model(x)
    if remove_hooks:
        for h in handles:
            h.remove()
    restore_modes(model, modes, restore)
    real = [_channel_variance(torch.cat(store), axes, unbiased) for store in captured]
    if inputs == "modified":
        x.sub_(x.mean(0, keepdim=True))
    return list(zip(moving, real, strict=True))


def _pairs(value: object, count: int, function_name: str) -> Tensor:
    """The student's ``[(moving_var, real_var), ...]`` as a (count, 2) float64 tensor."""
    try:
        rows = [(float(a), float(b)) for a, b in value]  # type: ignore[union-attr]
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailure(
            f"{function_name} returned {type(value).__name__}; it must return a list of "
            "(moving_var, real_var) pairs of numbers, one pair per BN layer."
        ) from None
    if len(rows) != count:
        raise CheckFailure(
            f"{function_name} returned {len(rows)} pairs for a network with {count} BN layers; "
            "return one (moving_var, real_var) pair per BN layer, in the order of "
            "model.modules()."
        )
    return torch.tensor(rows, dtype=torch.float64).reshape(count, 2)


def _run_probe(fn: Callable[..., Any], case: ProbeCase) -> Result:
    model = fresh_copy(case.model)
    before = Snapshot.of(model)
    x = case.x.clone()
    with no_tf32(), ModeRecorder(model) as recorder:
        value = fn(model, x)
    count = len(bn_modules(model))
    pairs = _pairs(value, count, PROBE.function_name)
    eval_mode = recorder.ran and not (
        recorder.dropout_ran_in_training or recorder.bn_ran_in_training
    )
    if not eval_mode:  # measured with dropout or batch statistics on: random, not test-time
        pairs = torch.full_like(pairs, float("nan"))
    return {
        "moving_var": pairs[:, 0],
        "real_var": pairs[:, 1],
        "eval_mode": eval_mode,
        "modes_restored": before.modes_restored(model),
        "hooks_removed": before.hooks_removed(model),
        "model_unchanged": before.weights_unchanged(model) and before.buffers_unchanged(model),
        "input_unchanged": inputs_unchanged([x], [case.x]),
    }


PROBE = Task(
    name="variance_probe",
    function_name="probe_variance_shift",
    run=_run_probe,
    reference=probe_variant,
    variant=probe_variant,
    labels={
        "moving_var": "running (moving) variance per BN layer",
        "real_var": "real test-mode variance per BN layer",
        "eval_mode": "network run in evaluation mode",
        "modes_restored": "train/eval flags restored",
        "hooks_removed": "hooks removed",
        "model_unchanged": "weights and buffers unchanged",
        "input_unchanged": "the input x unchanged",
    },
    guard={"torch_layers": False, "references": ("bncourse.lab.probes",)},
)


def check_probe_values(
    fn: Callable[..., Any],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """What ``probe_variance_shift`` measures: running vs real test-mode variance per BN layer."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_probe_cases(seed, layout, device)
    run_check(
        PROBE,
        fn,
        cases,
        ["moving_var", "real_var", "eval_mode"],
        seed=seed,
        what=describe_part(layout, "the measurement"),
    )


def check_probe_side_effects(
    fn: Callable[..., Any],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """What ``probe_variance_shift`` leaves behind: flags, hooks, weights, buffers and ``x`` as
    found."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_probe_cases(seed, layout, device)
    run_check(
        PROBE,
        fn,
        cases,
        ["modes_restored", "hooks_removed", "model_unchanged", "input_unchanged"],
        seed=seed,
        what=describe_part(layout, "the network after probing"),
    )
