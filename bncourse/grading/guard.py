"""A guard that stops a submission from delegating to a reference implementation.

While :func:`forbid_reference` is active, calling torch's own normalization or dropout (functional,
module or ``torch.ops.aten`` kernel) or any function of :mod:`bncourse.nn` raises
:class:`ReferenceCallError`. The checks compute their expected values before entering the guard,
so only the submission's code runs under it.

The guard is a :class:`torch.overrides.TorchFunctionMode`: every torch function called while it is
active passes through it, whatever name the submission imported it under. It stops honest
shortcuts, not deliberate circumvention (code that disables torch-function handling can slip
past it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.overrides import TorchFunctionMode

import bncourse.nn

__all__ = ["FORBIDDEN_TORCH_FUNCTIONS", "ReferenceCallError", "forbid_reference"]

# Names of torch functions (Python API, ``torch.ops.aten`` overloads and their kernels) that
# compute a normalization or a dropout in one call. Layer, group, RMS and instance norm are here
# too: applied to a transposed input they compute batch norm.
FORBIDDEN_TORCH_FUNCTIONS: frozenset[str] = frozenset(
    {
        "batch_norm",
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional",
        "_batch_norm_impl_index",
        "_batch_norm_with_update",
        "_batch_norm_no_update",
        "batch_norm_stats",
        "batch_norm_elemt",
        "batch_norm_gather_stats",
        "batch_norm_gather_stats_with_counts",
        "cudnn_batch_norm",
        "miopen_batch_norm",
        "instance_norm",
        "layer_norm",
        "native_layer_norm",
        "group_norm",
        "native_group_norm",
        "rms_norm",
        "_fused_rms_norm",
        "dropout",
        "dropout_",
        "native_dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "feature_dropout",
        "feature_dropout_",
        "alpha_dropout",
        "alpha_dropout_",
        "feature_alpha_dropout",
        "feature_alpha_dropout_",
        "fused_dropout",
        "_fused_dropout",
    }
)

_REFERENCE_DIR = os.path.dirname(os.path.abspath(bncourse.nn.__file__)) + os.sep


class ReferenceCallError(AssertionError):
    """A graded function called a reference implementation instead of computing the result."""


def _function_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", None) or getattr(func, "_opname", None) or repr(func)
    return str(name).split(".")[0]


def _qualified_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    if module.startswith("torch._C") or module in ("", "torch._ops"):
        return f"torch's {name}"
    return f"{module}.{name}"


def _reference_frame() -> str | None:
    """The outermost ``bncourse.nn`` function on the current call stack, if any: the one the
    submission called, not the helper that it called in turn."""
    frame, outermost = sys._getframe(2), None
    while frame is not None:
        if os.path.abspath(frame.f_code.co_filename).startswith(_REFERENCE_DIR):
            outermost = frame
        frame = frame.f_back
    if outermost is None:
        return None
    module = os.path.splitext(os.path.basename(outermost.f_code.co_filename))[0]
    return f"bncourse.nn.{module}.{outermost.f_code.co_qualname}"


class _Guard(TorchFunctionMode):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.violations: list[str] = []

    def _refuse(self, called: str) -> ReferenceCallError:
        self.violations.append(called)
        return ReferenceCallError(
            f"{self.what} called {called}. This exercise asks you to write the computation "
            "yourself with elementary tensor operations (sum, mean, var, sqrt, indexing, ...); "
            "torch's own batch norm, layer/group/instance norm and dropout, and the course's "
            "reference implementations in bncourse.nn, cannot be used inside it. "
            "This part scores zero until the function computes the result itself."
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _function_name(func) in FORBIDDEN_TORCH_FUNCTIONS:
            raise self._refuse(_qualified_name(func))
        reference = _reference_frame()
        if reference is not None:
            raise self._refuse(reference)
        return func(*args, **kwargs)


@contextmanager
def forbid_reference(what: str = "the graded function") -> Iterator[_Guard]:
    """Run the enclosed code with reference implementations forbidden.

    ``what`` names the code under test in the error message. The yielded guard lists in
    ``violations`` every forbidden call, including those whose error the code caught and hid:
    a check should fail when that list is not empty.
    """
    guard = _Guard(what)
    with guard:
        yield guard
