"""``torch.nn`` drop-in modules built on :mod:`bncourse.nn.functional`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bncourse.nn import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "Dropout", "GaussianDropout", "Uout"]


class _BatchNorm(nn.Module):
    """Shared state and forward of the batch-norm modules, mirroring ``torch.nn.modules.batchnorm``.

    Same constructor arguments, parameters (``weight``, ``bias``), buffers (``running_mean``,
    ``running_var``, ``num_batches_tracked``) and ``state_dict`` keys as the ``torch.nn`` twin, so a
    state dict loads either way.
    """

    _version = 2
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
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(
                f"num_features must be a positive number of channels, got {num_features}"
            )
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1] or be None, got {momentum}")
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input(self, input: Tensor) -> None:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in self._expected_dims:
            raise ValueError(
                f"{type(self).__name__} expects input of shape {self._shape_text}, "
                f"got a {input.dim()}D tensor of shape {tuple(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects {self.num_features} channels "
                f"in dim 1 of input, got {input.shape[1]} (input shape {tuple(input.shape)})"
            )
        if self.training and input.numel() // input.shape[1] <= 1:
            raise ValueError(
                "batch norm in training mode needs more than 1 value per channel, got input of "
                f"shape {tuple(input.shape)}; use a larger batch or call .eval()"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
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

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # A state dict from before num_batches_tracked existed: keep the module's own count,
            # as torch.nn does (a fresh count of 0 where there is none to keep).
            own = self.num_batches_tracked
            keep = own is not None and own.device != torch.device("meta")
            state_dict[key] = own if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input, per channel C; drop-in for ``torch.nn.BatchNorm1d``."""

    _expected_dims = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input, per channel C; drop-in for ``torch.nn.BatchNorm2d``."""

    _expected_dims = (4,)
    _shape_text = "(N, C, H, W)"


class Dropout(nn.Module):
    """Inverted dropout; drop-in for ``torch.nn.Dropout`` (``p`` = probability of dropping)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        F._check_probability(p, allow_one=True)
        self.p = p  # kept as given, like torch.nn.Dropout (repr shows p=1, not p=1.0)
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        out = F.dropout(input, self.p, self.training)
        if self.inplace and out is not input:
            return input.copy_(out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise N(1, p/(1-p)) in training, identity in evaluation."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        F._check_probability(p, allow_one=False)
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
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def forward(self, input: Tensor) -> Tensor:
        return F.uout(input, self.beta, self.training)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
