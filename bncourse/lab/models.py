"""Small MLPs and CNNs with Batch Normalization and a configurable dropout placement.

Both builders return an ``nn.Sequential`` whose layers carry readable names, so the layer order
is easy to print and to test. With ``depth`` hidden blocks, the placements are:

``"none"``
    ``[flatten] (linear_i, bn_i, relu_i) x depth, head`` -- no dropout at all.
``"before_bn"``
    ``(linear_i, drop_i, bn_i, relu_i) x depth, head`` -- dropout directly before every BN, the
    paper's case (a), which suffers the largest variance shift.
``"before_weight"``
    ``(drop_i, linear_i, bn_i, relu_i) x depth, head`` -- dropout before every weight layer, so
    that a linear/conv layer sits between dropout and BN: the paper's case (b).
``"after_bn"``
    ``(linear_i, bn_i, relu_i) x depth, drop, head`` -- one dropout after all BN layers, right
    before the classifier (a remedy proposed by the paper).
``"uout"``
    ``(linear_i, uout_i, bn_i, relu_i) x depth, head`` -- Uout noise ``x + x*r``,
    ``r ~ U(-beta, beta)``, in place of dropout before every BN (the paper's other remedy).

For the CNN, ``linear_i`` is a 3x3 convolution (``conv_i``) and the head is global average
pooling, flatten and a linear classifier. ``p`` is PyTorch's *drop* probability (the paper's
retain probability is ``1 - p``); ``beta`` is Uout's noise half-width.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bncourse import nn as bnn

__all__ = ["PLACEMENTS", "mlp", "cnn", "build_model", "bn_layers"]

#: Accepted values of ``placement``.
PLACEMENTS = ("none", "before_bn", "before_weight", "after_bn", "uout")

_LAYERS = {
    "torch": {"bn1d": nn.BatchNorm1d, "bn2d": nn.BatchNorm2d, "dropout": nn.Dropout},
    "bncourse": {"bn1d": bnn.BatchNorm1d, "bn2d": bnn.BatchNorm2d, "dropout": bnn.Dropout},
}


def _check_common(depth: int, width: int, placement: str, p: float, beta: float, impl: str) -> None:
    for arg, value in (("depth", depth), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p is the drop probability and must lie in [0, 1), got {p!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta is Uout's noise half-width and must be >= 0, got {beta!r}")
    if impl not in _LAYERS:
        raise ValueError(f"impl must be 'torch' or 'bncourse', got {impl!r}")


def _noise(placement: str, p: float, beta: float, impl: str) -> nn.Module:
    if placement == "uout":
        return bnn.Uout(beta)
    return _LAYERS[impl]["dropout"](p)


def _block(
    i: int,
    weight: nn.Module,
    bn: nn.Module,
    placement: str,
    p: float,
    beta: float,
    impl: str,
    weight_name: str,
) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    if placement == "before_weight":
        layers.append((f"drop{i}", _noise(placement, p, beta, impl)))
    layers.append((f"{weight_name}{i}", weight))
    if placement in ("before_bn", "uout"):
        name = "uout" if placement == "uout" else "drop"
        layers.append((f"{name}{i}", _noise(placement, p, beta, impl)))
    layers += [(f"bn{i}", bn), (f"relu{i}", nn.ReLU())]
    return layers


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Initialize parameters from ``seed`` (if given) without touching the global random state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mlp(
    input_shape: Sequence[int] | int,
    num_classes: int,
    depth: int = 4,
    width: int = 64,
    placement: str = "none",
    p: float = 0.5,
    beta: float = 0.1,
    impl: str = "torch",
    seed: int | None = None,
) -> nn.Sequential:
    """An MLP of ``depth`` hidden blocks (Linear without bias, BN, ReLU) of ``width`` units.

    ``placement`` chooses where dropout (or Uout) goes, see the module docstring; ``p`` is the
    drop probability; ``impl`` picks ``torch.nn`` or :mod:`bncourse.nn` layers; ``seed`` makes
    the initial weights reproducible without changing the global random state.
    """
    _check_common(depth, width, placement, p, beta, impl)
    in_features = input_shape if isinstance(input_shape, int) else _prod(input_shape)
    bn = _LAYERS[impl]["bn1d"]
    with _seeded(seed):
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        fan_in = in_features
        for i in range(1, depth + 1):
            linear = nn.Linear(fan_in, width, bias=False)
            layers += _block(i, linear, bn(width), placement, p, beta, impl, "linear")
            fan_in = width
        if placement == "after_bn":
            layers.append(("drop", _LAYERS[impl]["dropout"](p)))
        layers.append(("head", nn.Linear(width, num_classes)))
        return nn.Sequential(OrderedDict(layers))


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 3,
    width: int = 16,
    placement: str = "none",
    p: float = 0.5,
    beta: float = 0.1,
    impl: str = "torch",
    seed: int | None = None,
) -> nn.Sequential:
    """A CNN of ``depth`` blocks (3x3 conv without bias, BN, ReLU) with ``width`` channels.

    ``input_shape`` is ``(C, H, W)``. The head is global average pooling, flatten and a linear
    classifier. Other arguments as in :func:`mlp`; dropout acts on single elements.
    """
    _check_common(depth, width, placement, p, beta, impl)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W) for a CNN, got {tuple(input_shape)}")
    bn = _LAYERS[impl]["bn2d"]
    with _seeded(seed):
        layers: list[tuple[str, nn.Module]] = []
        channels = int(input_shape[0])
        for i in range(1, depth + 1):
            conv = nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False)
            layers += _block(i, conv, bn(width), placement, p, beta, impl, "conv")
            channels = width
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
        if placement == "after_bn":
            layers.append(("drop", _LAYERS[impl]["dropout"](p)))
        layers.append(("head", nn.Linear(width, num_classes)))
        return nn.Sequential(OrderedDict(layers))


def build_model(
    kind: str, input_shape: Sequence[int], num_classes: int, **options
) -> nn.Sequential:
    """``mlp(...)`` for ``kind="mlp"``, ``cnn(...)`` for ``kind="cnn"``."""
    if kind == "mlp":
        return mlp(input_shape, num_classes, **options)
    if kind == "cnn":
        return cnn(input_shape, num_classes, **options)
    raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every batch-norm layer (``torch.nn`` or :mod:`bncourse.nn`), in order."""
    kinds = (nn.modules.batchnorm._BatchNorm, bnn.modules._BatchNorm)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
