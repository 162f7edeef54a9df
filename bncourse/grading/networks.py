"""Small networks that model-level checks build from ``torch.nn``, and instruments that watch them.

A check of a function that takes a whole model (a probe, a BN recalibration, an evaluation loop,
a model builder) cannot compare one output tensor. It builds a small network with dropout and
batch norm whose weights and running statistics are drawn when the check runs, hands the function
a fresh copy, and observes what the function did to it and with it:

* :class:`ModeRecorder` records, for every forward call of a dropout or BN layer, whether the
  layer ran in training mode;
* :class:`Snapshot` tells whether weights, buffers, train/eval flags and hooks are as they were.

These checks build their networks here rather than from :mod:`bncourse.lab` (grading depends only
on :mod:`bncourse.nn` and :mod:`bncourse.theory`); the networks are the lab's placements in
miniature, with biases and scales chosen so that every BN input has a mean far from 0 and a
variance far from 1 (a statistic left at its initial value is then visible).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bncourse import nn as bnn

__all__ = [
    "ARRIVAL_MODES",
    "BN_TYPES",
    "NOISE_TYPES",
    "ModeRecorder",
    "Snapshot",
    "bn_modules",
    "describe_arrival",
    "draw_network",
    "fresh_copy",
    "describe_part",
    "draw_inputs",
    "inputs_unchanged",
    "noise_modules",
    "no_tf32",
    "remember_modes",
    "restore_modes",
    "set_arrival_mode",
    "uniform",
]


def describe_part(layout: str, part: str) -> str:
    """What a check's success or failure line calls its part, e.g. "the recalibration (MLP)"."""
    return f"{part} ({'MLP' if layout == 'dense' else 'CNN'})"


#: Batch-norm layers of torch and of the course (a student's model may hold either).
BN_TYPES = (nn.modules.batchnorm._BatchNorm, bnn.modules._BatchNorm)
#: Layers that multiply their input by random noise in training mode.
NOISE_TYPES = (nn.modules.dropout._DropoutNd, bnn.Dropout, bnn.GaussianDropout, bnn.Uout)


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of ``model``, in the order of ``model.modules()``."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES)]


def noise_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout-like layer of ``model``, in the order of ``model.modules()``."""
    return [m for m in model.modules() if isinstance(m, NOISE_TYPES)]


def uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    """Uniform values in ``[low, high)`` drawn on the CPU from ``gen`` (float32)."""
    return low + (high - low) * torch.rand(shape, generator=gen)


def draw_inputs(gen: torch.Generator, shape: Sequence[int], count: int = 1) -> list[Tensor]:
    """``count`` batches of ``shape`` from one distribution whose channels (dim 1) have means in
    [-1, 1] and standard deviations in [0.5, 2]."""
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    mean = uniform(gen, -1.0, 1.0, shape[1]).reshape(per_channel)
    std = uniform(gen, 0.5, 2.0, shape[1]).reshape(per_channel)
    return [mean + std * torch.randn(tuple(shape), generator=gen) for _ in range(count)]


def _signs(gen: torch.Generator, n: int) -> Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def draw_network(
    gen: torch.Generator,
    *,
    layout: str,
    in_channels: int,
    width: int,
    depth: int,
    num_classes: int,
    placement: str = "before_bn",
    p: float = 0.3,
    dropout: bool = True,
) -> nn.Sequential:
    """A ``depth``-block network with weights, BN affine parameters and running stats from ``gen``.

    ``layout="dense"``: ``Linear -> [Dropout] -> BatchNorm1d -> ReLU`` blocks on ``(N, F)`` input;
    ``layout="conv"``: ``Conv2d(3x3) -> [Dropout] -> BatchNorm2d -> ReLU`` blocks on ``(N, C, H, W)``
    input, then global average pooling. The head is a linear classifier. ``placement`` is
    ``"before_bn"`` (dropout directly before every BN, the paper's case (a)) or ``"after_bn"``
    (one dropout before the head); ``dropout=False`` builds the network without any. The running
    statistics are arbitrary (as after some training) and ``num_batches_tracked`` is 10.
    """
    if layout not in ("dense", "conv"):
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    if placement not in ("before_bn", "after_bn"):
        raise ValueError(f"placement must be 'before_bn' or 'after_bn', got {placement!r}")
    layers: list[nn.Module] = []
    fan_in = in_channels
    for _ in range(depth):
        if layout == "dense":
            weight_layer: nn.Module = nn.Linear(fan_in, width)
            bn: nn.Module = nn.BatchNorm1d(width)
            fan = fan_in
        else:
            weight_layer = nn.Conv2d(fan_in, width, kernel_size=3, padding=1)
            bn = nn.BatchNorm2d(width)
            fan = fan_in * 9
        with torch.no_grad():
            # Unit variance would hide a variance left at its initial value 1: scale to 2-6.
            weight = torch.randn(weight_layer.weight.shape, generator=gen)
            weight_layer.weight.copy_(weight * uniform(gen, 1.4, 2.4, 1) / fan**0.5)
            weight_layer.bias.copy_(_signs(gen, width) * uniform(gen, 0.5, 1.5, width))
            bn.weight.copy_(uniform(gen, 0.5, 2.0, width))
            bn.bias.copy_(0.5 * torch.randn(width, generator=gen))
            bn.running_mean.copy_(torch.randn(width, generator=gen))
            bn.running_var.copy_(uniform(gen, 0.5, 4.0, width))
            bn.num_batches_tracked.fill_(10)
        layers.append(weight_layer)
        if dropout and placement == "before_bn":
            layers.append(nn.Dropout(p))
        layers += [bn, nn.ReLU()]
        fan_in = width
    if layout == "conv":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout and placement == "after_bn":
        layers.append(nn.Dropout(p))
    head = nn.Linear(width, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / width**0.5)
        head.bias.copy_(0.1 * torch.randn(num_classes, generator=gen))
    layers.append(head)
    return nn.Sequential(*layers)


#: How a network may arrive at a function that takes it: all in training mode (between two epochs),
#: all in evaluation mode, in training mode with frozen BN layers (fine-tuning), or in evaluation
#: mode with dropout on (Monte Carlo dropout). The last two are mixed: no single flag restores them.
ARRIVAL_MODES = ("train", "eval", "frozen_bn", "mc_dropout")


def set_arrival_mode(model: nn.Module, mode: str) -> nn.Module:
    """``model`` with the train/eval flags of arrival ``mode`` (one of :data:`ARRIVAL_MODES`)."""
    if mode not in ARRIVAL_MODES:
        raise ValueError(f"mode must be one of {ARRIVAL_MODES}, got {mode!r}")
    model.train(mode in ("train", "frozen_bn"))
    if mode == "frozen_bn":
        for bn in bn_modules(model):
            bn.eval()
    if mode == "mc_dropout":
        for m in noise_modules(model):
            m.train()
    return model


def describe_arrival(model: nn.Module) -> str:
    """How ``model`` is handed over: "in training mode", "in evaluation mode" or the mix."""
    flags = [m.training for m in model.modules()]
    if all(flags):
        return "in training mode"
    if not any(flags):
        return "in evaluation mode"
    if model.training:
        return "in training mode with its BN layers frozen (evaluation mode)"
    return "in evaluation mode with its dropout on (training mode)"


def remember_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """The train/eval flag of every module of ``model``."""
    return {m: m.training for m in model.modules()}


def restore_modes(model: nn.Module, modes: dict[nn.Module, bool], how: object = True) -> None:
    """Put the flags back as a function may: ``True`` or "per_module" (right), ``False`` (not at
    all), "model_flag" (``model.train(was_training)``, one flag for every module) or "train"
    (``model.train()``, as if the network always came in training mode)."""
    if how is True or how == "per_module":
        for module, training in modes.items():
            module.training = training
    elif how == "model_flag":
        model.train(modes[model])
    elif how == "train":
        model.train()
    elif how is not False:
        raise ValueError(f"restore: unknown value {how!r}")


def inputs_unchanged(given: Sequence[Tensor], originals: Sequence[Tensor]) -> bool:
    """Whether the tensors handed to a function still equal the caller's (shape and values)."""
    return len(given) == len(originals) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(given, originals, strict=True)
    )


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy, so that every run of a check starts from the same network."""
    return copy.deepcopy(model)


@contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 precision for CUDA matmuls and convolutions (cuDNN uses TF32 by default)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


class ModeRecorder:
    """Records the mode of every dropout and BN forward call while it is active (a context)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.noise_calls: list[bool] = []  # training flag of each dropout-like call
        self.bn_calls: list[tuple[str, bool]] = []  # (class name, training flag) of each BN call
        self._handles: list = []

    def __enter__(self) -> ModeRecorder:
        for m in noise_modules(self.model):
            self._handles.append(
                m.register_forward_pre_hook(lambda mod, args: self.noise_calls.append(mod.training))
            )
        for m in bn_modules(self.model):
            self._handles.append(
                m.register_forward_pre_hook(
                    lambda mod, args: self.bn_calls.append((type(mod).__name__, mod.training))
                )
            )
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def dropout_ran_in_training(self) -> bool:
        """Whether any dropout-like layer drew a random mask."""
        return any(self.noise_calls)

    @property
    def bn_ran_in_training(self) -> bool:
        return any(training for _, training in self.bn_calls)

    @property
    def ran(self) -> bool:
        """Whether the network ran forward at all (some BN or dropout layer was called)."""
        return bool(self.noise_calls or self.bn_calls)


def _hook_counts(model: nn.Module) -> list[int]:
    counts = []
    for m in model.modules():
        for attr in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            counts.append(len(getattr(m, attr, {})))
    module = nn.modules.module
    for attr in (
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        counts.append(len(getattr(module, attr, {})))
    return counts


@dataclass(frozen=True)
class Snapshot:
    """What a model was before a function ran: weights, buffers, train/eval flags, hook counts."""

    parameters: dict[str, Tensor]
    buffers: dict[str, Tensor]
    modes: dict[str, bool]
    hooks: list[int]

    @classmethod
    def of(cls, model: nn.Module) -> Snapshot:
        return cls(
            {k: v.detach().clone() for k, v in model.named_parameters()},
            {k: v.detach().clone() for k, v in model.named_buffers()},
            {k: m.training for k, m in model.named_modules()},
            _hook_counts(model),
        )

    @staticmethod
    def _same(now: dict[str, Tensor], before: dict[str, Tensor]) -> bool:
        return now.keys() == before.keys() and all(
            now[k].shape == before[k].shape and torch.equal(now[k], before[k]) for k in before
        )

    def weights_unchanged(self, model: nn.Module) -> bool:
        return self._same(dict(model.named_parameters()), self.parameters)

    def buffers_unchanged(self, model: nn.Module) -> bool:
        return self._same(dict(model.named_buffers()), self.buffers)

    def modes_restored(self, model: nn.Module) -> bool:
        return {k: m.training for k, m in model.named_modules()} == self.modes

    def hooks_removed(self, model: nn.Module) -> bool:
        return _hook_counts(model) == self.hooks
