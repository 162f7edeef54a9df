"""``torch.nn`` drop-in modules built on :mod:`bncourse.nn.functional`.

Each batch-norm and dropout class is a subclass of its ``torch.nn`` twin whose ``forward`` is the
reference implementation: it has the twin's constructor, parameters, buffers, ``state_dict`` and
``repr``, and ``isinstance(m, torch.nn.BatchNorm2d)`` holds, so torch's tools that look for
batch norm (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
``torch.func.replace_all_batch_norm_modules_``, ``torch.nn.utils.fusion.fuse_conv_bn_eval``) find
these modules too. The differences, all deliberate:

* ``torch.jit.script`` cannot compile an autograd function, so scripting one of these modules
  compiles its ``torch.nn`` twin's forward with this module's own parameters and buffers (the
  same computation; outputs agree to rounding). For the same reason a ``torch.jit.trace`` of a
  network in training mode records the autograd function and cannot be saved; trace in eval
  mode, or use ``torch.export``.
* ``torch.ao.quantization.fuse_modules`` looks fusions up by exact type: pass
  ``fuse_custom_config_dict={"additional_fuser_method_mapping": bncourse.nn.FUSER_METHODS}``.
* ``torch.fx.symbolic_trace`` keeps only modules defined in ``torch.nn`` as leaves and traces
  into these, whose input checks refuse its proxies: trace with a ``torch.fx.Tracer`` whose
  ``is_leaf_module`` also returns True for them.
* The layers are plain Python over tensor operations, so ``__torch_function__`` overrides and
  ``TorchFunctionMode`` see those operations, not one ``batch_norm`` or ``dropout`` call; outputs
  keep the input's memory layout (torch makes some contiguous); inverted dropout computes
  ``x * mask / (1 - p)``, one rounding from torch's ``x * (mask / (1 - p))``.
* A channel-count mismatch is refused even where torch has no parameter or buffer that would
  notice it (``affine=False, track_running_stats=False``).
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import Tensor, nn

from bncourse.nn import functional as F
from bncourse.nn.checks import InputError, check_probability, check_tensor

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "GaussianDropout",
    "Uout",
]


class _ScriptedAsTwin:
    """``torch.jit.script`` compiles the ``torch.nn`` twin, sharing this module's tensors."""

    def __prepare_scriptable__(self) -> nn.Module:
        twin = copy.copy(self)  # shares the parameter and buffer dictionaries
        twin.__class__ = next(c for c in type(self).__mro__ if c.__module__.startswith("torch."))
        return twin


class _BatchNorm(_ScriptedAsTwin):
    """Forward pass of the batch-norm modules, mirroring ``torch.nn.modules.batchnorm``."""

    _expected_dims: tuple[int, ...] = ()
    _shape_text = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        num_features = int(num_features)
        if num_features < 0:
            raise InputError(f"num_features must be a number of channels, got {num_features}")
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _check_input_dim(self, input: Tensor) -> None:
        check_tensor("input", input)
        if input.dim() not in self._expected_dims:
            raise InputError(
                f"{type(self).__name__} expects input of shape {self._shape_text}, "
                f"got a {input.dim()}D tensor of shape {tuple(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise InputError(
                f"{type(self).__name__}({self.num_features}) expects {self.num_features} channels "
                f"in dim 1 of input, got {input.shape[1]} (input shape {tuple(input.shape)})"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training mode, and also in eval mode when nothing is tracked.
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) input, per channel C; drop-in for ``torch.nn.BatchNorm1d``."""

    _expected_dims = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) input, per channel C; drop-in for ``torch.nn.BatchNorm2d``."""

    _expected_dims = (4,)
    _shape_text = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) input, per channel C; drop-in for ``torch.nn.BatchNorm3d``."""

    _expected_dims = (5,)
    _shape_text = "(N, C, D, H, W)"


class _Dropout(_ScriptedAsTwin):
    """Constructor of the dropout modules: ``p`` checked with this course's message."""

    _function = staticmethod(F.dropout)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        check_probability(p, allow_one=True)
        super().__init__(p, inplace)  # p is kept as given, like torch (repr shows p=1, not 1.0)

    def forward(self, input: Tensor) -> Tensor:
        return self._function(input, self.p, self.training, self.inplace)


class Dropout(_Dropout, nn.Dropout):
    """Inverted dropout; drop-in for ``torch.nn.Dropout`` (``p`` = probability of dropping)."""


class Dropout1d(_Dropout, nn.Dropout1d):
    """Channel dropout of (N, C, L) or (C, L) input; drop-in for ``torch.nn.Dropout1d``."""

    _function = staticmethod(F.dropout1d)


class Dropout2d(_Dropout, nn.Dropout2d):
    """Channel dropout of (N, C, H, W) input; drop-in for ``torch.nn.Dropout2d``."""

    _function = staticmethod(F.dropout2d)


class Dropout3d(_Dropout, nn.Dropout3d):
    """Channel dropout of (N, C, D, H, W) or (C, D, H, W) input; drop-in for ``torch.nn.Dropout3d``."""

    _function = staticmethod(F.dropout3d)


class AlphaDropout(_Dropout, nn.AlphaDropout):
    """Alpha dropout for SELU networks; drop-in for ``torch.nn.AlphaDropout``.

    Like torch's, the module never works in place: ``inplace`` is stored but not used.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.alpha_dropout(input, self.p, self.training)


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise N(1, p/(1-p)) in training, identity in evaluation."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        check_probability(p, allow_one=False)
        self.p = p

    def forward(self, input: Tensor) -> Tensor:
        return F.gaussian_dropout(input, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Uout(nn.Module):
    """Uniform multiplicative noise ``x + x * r``, ``r ~ U(-beta, beta)``, in training (Li et al., 2019)."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"beta must be a float >= 0, got {beta!r}")
        if not beta >= 0:
            raise InputError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def forward(self, input: Tensor) -> Tensor:
        return F.uout(input, self.beta, self.training)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
