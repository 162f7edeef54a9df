"""Checks for model builders that must place dropout where batch norm never sees it.

Students write a builder with one of these signatures and return an ``nn.Module``:

``mlp_without_shift(in_features, num_classes, depth, width, p)`` (ps04_variance_shift)
    ``depth`` blocks ``Linear -> BatchNorm1d -> ReLU`` of ``width`` units, then dropout of drop
    probability ``p`` and a linear classifier;
``make_cnn(in_channels, num_classes, depth, width, p)`` (ps05_train_vs_eval)
    ``depth`` blocks ``Conv2d(3x3) -> BatchNorm2d -> ReLU`` of ``width`` channels, global average
    pooling, then dropout and a linear classifier.

The checks look at behaviour, not at the code: they build the network, run an input through it
with its BN layers in evaluation mode (so that nothing depends on the batch) and everything else
in training mode, then run the same input in evaluation mode, and compare what every BN layer
receives (the same both times when no dropout acts before it, so there is no variance shift) and
what comes out (different: dropout, which zeroes and rescales, is active in training). They also
check the number of BN layers, the output shape, that evaluation mode is deterministic, and the
drop probability: the first weight or BN layer whose input differs between the two runs receives
the dropout's output, whose kept values are the evaluation-mode values times exactly
1 / (1 - p), whatever the mask (so ``Dropout(1 - p)`` is told apart without statistics, and a
dropout written with ``torch.nn.functional.dropout`` is measured like a layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bncourse.grading.engine import (
    CheckFailure,
    Result,
    Task,
    draw_seed,
    resolve_device,
    run_check,
)
from bncourse.grading.networks import BN_TYPES, bn_modules, no_tf32

__all__ = [
    "CNN_PLACEMENT",
    "MLP_PLACEMENT",
    "BuilderCase",
    "check_cnn_placement",
    "check_mlp_placement",
    "cnn_variant",
    "draw_builder_cases",
    "mlp_variant",
]


@dataclass(frozen=True)
class BuilderCase:
    """Arguments for the builder and an input of the right shape."""

    layout: str
    in_channels: int
    num_classes: int
    depth: int
    width: int
    p: float
    x: Tensor
    seed: int

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def describe(self) -> str:
        first = "in_features" if self.layout == "dense" else "in_channels"
        return (
            f"{first}={self.in_channels}, num_classes={self.num_classes}, depth={self.depth}, "
            f"width={self.width}, p={self.p:g}, input of shape {tuple(self.x.shape)}"
        )

    def exact(self) -> BuilderCase:
        return self


# (in_channels or in_features, num_classes, depth, width, p[, image side]); "more" adds deeper
# and one-block networks and drop probabilities near 0 and 1.
BUILDER_SPECS = {
    "dense": ((6, 3, 3, 8, 0.3), (4, 5, 1, 5, 0.7), (10, 2, 2, 16, 0.2)),
    "dense_more": ((3, 2, 5, 4, 0.05), (8, 6, 1, 3, 0.9), (64, 10, 4, 32, 0.5)),
    "conv": ((2, 3, 2, 4, 0.3, 5), (1, 4, 1, 6, 0.6, 4), (3, 2, 3, 3, 0.2, 3)),
    "conv_more": ((1, 2, 4, 3, 0.05, 4), (2, 5, 1, 2, 0.9, 3), (3, 10, 3, 8, 0.5, 6)),
}


def draw_builder_cases(
    seed: int, layout: str, device: torch.device | str | None = None, *, more: bool = False
) -> list[BuilderCase]:
    """The builder's arguments and an input batch of 32 for each spec of ``layout``."""
    if layout not in ("dense", "conv"):
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i, spec in enumerate(BUILDER_SPECS[layout + ("_more" if more else "")]):
        channels, classes, depth, width, p = spec[:5]
        shape = (32, channels) if layout == "dense" else (32, channels, spec[5], spec[5])
        x = 1.0 + 2.0 * torch.randn(shape, generator=gen)
        cases.append(
            BuilderCase(layout, channels, classes, depth, width, p, x.to(device), seed + i)
        )
    return cases


#: Layers whose input the drop probability is read from: weight layers and BN layers.
_WATCHED = (nn.Linear, nn.modules.conv._ConvNd, *BN_TYPES)


@dataclass
class _Run:
    """One forward pass: what every BN layer and every watched layer received, and the output."""

    bn_inputs: list[Tensor]
    layer_inputs: list[tuple[str, Tensor]]  # ("BN" or "weight layer", input), in call order
    out: Tensor


def _forward(model: nn.Module, x: Tensor, seed: int) -> _Run:
    """Run ``model`` on ``x`` for one draw of the noise, recording the watched layers' inputs."""
    run = _Run([], [], x)
    bns = set(bn_modules(model))

    def record(module: nn.Module, args: tuple) -> None:
        value = args[0].detach().clone()
        run.layer_inputs.append(("BN" if module in bns else "weight layer", value))
        if module in bns:
            run.bn_inputs.append(value)

    handles = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _WATCHED)
    ]
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            run.out = model(x)
    finally:
        for h in handles:
            h.remove()
    return run


def _first_noisy_input(train: _Run, evaluation: _Run) -> tuple[str, Tensor]:
    """The first watched layer whose input changes with the mode ("BN", "weight layer" or
    "none"), and the ``p`` of the dropout that feeds it: 1 - 1 / (the ratio of its kept values),
    NaN where there is none (or nothing was kept)."""
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    pairs = zip(train.layer_inputs, evaluation.layer_inputs, strict=False)
    for (kind, a), (_, b) in pairs:
        if a.shape != b.shape:
            return kind, nan
        if torch.equal(a, b):
            continue
        kept = (a != 0) & (b != 0)
        if not kept.any():
            return kind, nan
        scale = (a[kept].double() / b[kept].double()).median()
        return kind, (1 - 1 / scale).cpu()
    return "none", nan


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def _run_builder(fn: Callable[..., Any], case: BuilderCase, function_name: str) -> Result:
    devices = [case.x.device] if case.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), no_tf32():
        torch.manual_seed(case.seed)
        model = fn(case.in_channels, case.num_classes, case.depth, case.width, case.p)
        if not isinstance(model, nn.Module):
            raise CheckFailure(
                f"{function_name} returned {type(model).__name__}, expected an nn.Module (did you "
                "forget the return statement?)."
            )
        model = model.to(case.x.device)
        model.train()
        for bn in bn_modules(model):
            bn.eval()  # batch statistics would make every BN input depend on the whole batch
            if getattr(bn, "bias", None) is not None:
                # A freshly initialised narrow network can have every ReLU after some block
                # silent on every sample, and then dropout after it changes nothing. Shifting
                # BN's output up by 1 keeps the units alive.
                with torch.no_grad():
                    bn.bias.fill_(1.0)
        # Inverted dropout both zeroes and rescales (by 1 / (1 - p)) in training mode, so any
        # dropout upstream changes what a layer receives compared with evaluation mode, whatever
        # the mask drawn: the comparison does not depend on luck, even for p = 0.05.
        train = _forward(model, case.x, 1)
        model.eval()
        evaluation = _forward(model, case.x, 2)
        again = _forward(model, case.x, 3)
    first_noisy, drop_probability = _first_noisy_input(train, evaluation)
    return {
        "output_shape": tuple(evaluation.out.shape),
        "bn_count": len(bn_modules(model)),
        "bn_inputs_noise_free": _same(train.bn_inputs, evaluation.bn_inputs),
        "noisy_in_training": not torch.equal(train.out, evaluation.out),
        "deterministic_in_eval": torch.equal(evaluation.out, again.out),
        "first_noisy_layer": first_noisy,
        "drop_probability": drop_probability,
    }


def _block(layout: str, fan_in: int, width: int) -> tuple[nn.Module, nn.Module]:
    if layout == "dense":
        return nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width)
    return nn.Conv2d(fan_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)


def _variant(
    layout: str,
    in_channels: int,
    num_classes: int,
    depth: int,
    width: int,
    p: float,
    placement: str,
    rate: str,
) -> nn.Sequential:
    drop = p if rate == "drop" else 1 - p
    layers: list[nn.Module] = []
    fan_in = in_channels
    for i in range(depth):
        weight, bn = _block(layout, fan_in, width)
        if placement == "before_weight" or (placement == "every_block" and i > 0):
            layers.append(nn.Dropout(drop))
        layers.append(weight)
        if placement == "before_bn":
            layers.append(nn.Dropout(drop))
        layers += [bn, nn.ReLU()]
        fan_in = width
    if layout == "conv":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if placement in ("after_bn", "every_block"):
        layers.append(nn.Dropout(drop))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def mlp_variant(
    in_features: int,
    num_classes: int,
    depth: int,
    width: int,
    p: float,
    *,
    placement: str = "after_bn",
    rate: str = "drop",
) -> nn.Sequential:
    """The MLP builder with the student's signature and a choice of dropout placement.

    ``placement``: "after_bn" (right: one dropout before the classifier), "before_bn" (dropout
    directly before every BN), "before_weight" (dropout before every linear layer),
    "every_block" (``Linear -> BN -> ReLU -> Dropout`` blocks: the noise reaches every BN but the
    first through a linear layer), "none". ``rate``: "drop" (right: ``Dropout(p)``) or "keep"
    (``Dropout(1 - p)``).
    """
    return _variant("dense", in_features, num_classes, depth, width, p, placement, rate)


def cnn_variant(
    in_channels: int,
    num_classes: int,
    depth: int,
    width: int,
    p: float,
    *,
    placement: str = "after_bn",
    rate: str = "drop",
) -> nn.Sequential:
    """The CNN builder with the student's signature and the choices of :func:`mlp_variant`."""
    return _variant("conv", in_channels, num_classes, depth, width, p, placement, rate)


_LABELS = {
    "output_shape": "output shape",
    "bn_count": "number of BN layers",
    "bn_inputs_noise_free": "BN inputs free of dropout noise",
    "noisy_in_training": "dropout active in training mode",
    "deterministic_in_eval": "deterministic output in evaluation mode",
    "first_noisy_layer": "first layer the dropout noise reaches",
    "drop_probability": "drop probability of the dropout",
}
_QUANTITIES = list(_LABELS)

MLP_PLACEMENT = Task(
    name="mlp_placement",
    function_name="mlp_without_shift",
    run=lambda fn, case: _run_builder(fn, case, "mlp_without_shift"),
    reference=mlp_variant,
    variant=mlp_variant,
    labels=_LABELS,
    guard={"torch_layers": False, "references": ("bncourse.lab.models",)},
)
CNN_PLACEMENT = Task(
    name="cnn_placement",
    function_name="make_cnn",
    run=lambda fn, case: _run_builder(fn, case, "make_cnn"),
    reference=cnn_variant,
    variant=cnn_variant,
    labels=_LABELS,
    guard={"torch_layers": False, "references": ("bncourse.lab.models",)},
)


def check_mlp_placement(
    fn: Callable[..., nn.Module],
    *,
    more: bool = False,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """``mlp_without_shift``: dropout active in training, and no BN layer sees its noise.

    ``more`` tries deeper and one-block networks and drop probabilities near 0 and 1.
    """
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_builder_cases(seed, "dense", device, more=more)
    run_check(MLP_PLACEMENT, fn, cases, _QUANTITIES, seed=seed, what="the dropout placement")


def check_cnn_placement(
    fn: Callable[..., nn.Module],
    *,
    more: bool = False,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """``make_cnn``: dropout active in training, and no BN layer sees its noise.

    ``more`` tries deeper and one-block networks and drop probabilities near 0 and 1.
    """
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_builder_cases(seed, "conv", device, more=more)
    run_check(CNN_PLACEMENT, fn, cases, _QUANTITIES, seed=seed, what="the dropout placement")
