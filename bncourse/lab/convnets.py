"""A small pooled CNN for the 8x8 digits, with a choice of normalization and of dropout placement.

The layers, with readable names::

    conv1 [norm1] relu1 [drop1] pool1  conv2 [norm2] relu2 [drop2] pool2  flatten [drop] head

``norm`` is ``"none"``, ``"bn"`` (``BatchNorm2d``), ``"gn"`` (``GroupNorm`` with ``groups``
groups) or ``"ln"`` (``GroupNorm`` with one group: layer norm over each sample's channels and
positions, with a per-channel affine). ``dropout`` places dropout with drop probability ``p``:

``"none"``
    no dropout;
``"conv"``
    element-wise ``Dropout`` on the convolutional feature maps (after each ReLU, before pooling);
``"pool"``
    element-wise ``Dropout`` after each pooling layer;
``"channel"``
    ``Dropout2d`` on the feature maps: whole channels dropped (after each ReLU, before pooling);
``"head"``
    one ``Dropout`` on the flattened features, before the classifier.

Convolutions followed by a normalization carry no bias (the normalization's shift replaces it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["NORMS", "DROPOUTS", "small_cnn"]

NORMS = ("none", "bn", "gn", "ln")
DROPOUTS = ("none", "conv", "pool", "channel", "head")


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    return nn.GroupNorm(1, channels)


def small_cnn(
    norm: str = "none",
    dropout: str = "none",
    p: float = 0.2,
    widths: Sequence[int] = (16, 32),
    groups: int = 4,
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    seed: int | None = None,
) -> nn.Sequential:
    """The CNN of the module docstring; ``seed`` fixes the initial weights (global RNG untouched)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if dropout not in DROPOUTS:
        raise ValueError(f"dropout must be one of {DROPOUTS}, got {dropout!r}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"p is the drop probability and must lie in [0, 1), got {p!r}")
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise ValueError(
            f"input_shape must be (C, H, W) with H, W multiples of 4, got {input_shape}"
        )
    if len(widths) != 2 or any(w % groups for w in widths):
        raise ValueError(f"widths must be two channel counts divisible by groups={groups}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = []
        channels = int(input_shape[0])
        for i, width in enumerate(widths, start=1):
            layers.append(
                (f"conv{i}", nn.Conv2d(channels, width, 3, padding=1, bias=norm == "none"))
            )
            if norm != "none":
                layers.append((f"norm{i}", _norm(norm, width, groups)))
            layers.append((f"relu{i}", nn.ReLU()))
            if dropout == "conv":
                layers.append((f"drop{i}", nn.Dropout(p)))
            elif dropout == "channel":
                layers.append((f"drop{i}", nn.Dropout2d(p)))
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
            if dropout == "pool":
                layers.append((f"pooldrop{i}", nn.Dropout(p)))
            channels = width
        layers.append(("flatten", nn.Flatten()))
        if dropout == "head":
            layers.append(("drop", nn.Dropout(p)))
        features = channels * (input_shape[1] // 4) * (input_shape[2] // 4)
        layers.append(("head", nn.Linear(features, num_classes)))
        return nn.Sequential(OrderedDict(layers))
