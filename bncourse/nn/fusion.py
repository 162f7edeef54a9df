"""Fusion of the reference batch-norm modules into the layer before them, with torch's own tools.

``torch.ao.quantization.fuse_modules`` looks up a fuser method by the exact types of the modules;
``FUSER_METHODS`` holds torch's methods for every pattern that contains ``torch.nn`` batch norm,
keyed by the same pattern with this package's batch norm in its place::

    fuse_modules(model.eval(), [["conv", "bn"]],
                 fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHODS})

The fused layer is torch's (e.g. a ``Conv2d`` whose weight and bias absorb the running statistics
and the affine parameters), exactly as for ``torch.nn.BatchNorm2d``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.ao.quantization.fuser_method_mappings import _DEFAULT_OP_LIST_TO_FUSER_METHOD

from bncourse.nn import modules

__all__ = ["FUSER_METHODS"]

_OURS = {
    nn.BatchNorm1d: modules.BatchNorm1d,
    nn.BatchNorm2d: modules.BatchNorm2d,
    nn.BatchNorm3d: modules.BatchNorm3d,
}

FUSER_METHODS: dict[tuple[type, ...], Callable] = {
    tuple(_OURS.get(t, t) for t in pattern): method
    for pattern, method in _DEFAULT_OP_LIST_TO_FUSER_METHOD.items()
    if any(t in _OURS for t in pattern)
}
