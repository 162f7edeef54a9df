"""A guard that stops a submission from delegating to a reference implementation.

While :func:`forbid_reference` is active, calling torch's own normalization or dropout (functional
or module), any operator of ``torch.ops`` (an ATen kernel, by whatever name it was looked up),
torch's Python decompositions and batch-norm fusion routines (``torch.nn.utils.fusion``) or
any function of :mod:`bncourse.nn` raises :class:`ReferenceCallError`. The checks compute their expected values before entering the guard,
so only the submission's code runs under it.

The guard is a :class:`torch.overrides.TorchFunctionMode`: every torch function called while it is
active passes through it, whatever name the submission imported it under. It stops honest
shortcuts, not deliberate circumvention (code that disables torch-function handling can slip
past it).

Exercises whose graded function runs a whole network (a probe, a recalibration, an evaluation
loop) must be free to call torch's layers: they pass ``torch_layers=False`` and instead name the
course modules that hold the reference of what they grade (``references=("bncourse.theory",)``,
``("bncourse.lab.probes",)``, ...). A call into any function defined in one of those files is
refused, seen through :func:`sys.setprofile` (the modules are found by path, never imported, so
that grading does not depend on :mod:`bncourse.lab`). The checks' own parametrised
implementations (``bncourse.grading.*.*_variant``, correct with their default arguments) are
refused in the same way to code written in a notebook cell (the tests of this package call
them as submissions from their own files).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch._ops
from torch.overrides import TorchFunctionMode

import bncourse
import bncourse.nn

__all__ = [
    "FORBIDDEN_TORCH_FUNCTIONS",
    "ReferenceCallError",
    "TAMPERING",
    "active_guards",
    "forbid_reference",
    "notebook_runs_elsewhere",
    "registered_guard",
]

_ACTIVE: ContextVar[tuple[tuple[dict[str, Any], Any], ...]] = ContextVar(
    "bncourse_active_guards", default=()
)


def active_guards() -> list[tuple[dict[str, Any], Any]]:
    """The guards active here, innermost last, each as (a spec to set it up again, the guard).

    When a check calls a function that runs in another process (a sandboxed kernel), the spec
    lets that process guard the call the same way and the guard receives its refusals.
    """
    return list(_ACTIVE.get())


_NOTEBOOK_ELSEWHERE: ContextVar[bool] = ContextVar("bncourse_notebook_elsewhere", default=False)


@contextmanager
def notebook_runs_elsewhere() -> Iterator[None]:
    """Declare that no notebook code runs in this process while the enclosed code runs.

    The trusted grader says so: the notebook runs in its sandboxed kernel, which sets up every
    guard again for each call it is sent (:func:`active_guards`). :func:`forbid_reference` then
    leaves out, here, its profile hook and its search of the call stack for reference code on
    every torch call: both look for notebook code calling into reference files, which cannot
    happen in this process, and tracing every call of the grader's own messaging with the kernel
    costs seconds per submission. Forbidden torch functions are still refused here.
    """
    token = _NOTEBOOK_ELSEWHERE.set(True)
    try:
        yield
    finally:
        _NOTEBOOK_ELSEWHERE.reset(token)


@contextmanager
def registered_guard(spec: dict[str, Any], guard: Any) -> Iterator[None]:
    """Make ``guard`` one of :func:`active_guards` while the enclosed code runs."""
    token = _ACTIVE.set((*_ACTIVE.get(), (spec, guard)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


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
_PACKAGE_DIR = os.path.dirname(os.path.abspath(bncourse.__file__))
#: The checks' own correct implementations (``*_variant`` functions, the mutants' base) live here.
_GRADING_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


#: Where a notebook's cells are compiled: ipykernel's cell files, IPython's and exec's names.
_CELL_FILE = re.compile(r"^<|[\\/]ipykernel_\d+[\\/]")


#: ``os.path.abspath`` of code objects' file names, asked for on every call the guard sees.
_absolute = functools.lru_cache(maxsize=8192)(os.path.abspath)


@functools.lru_cache(maxsize=4096)
def _grading_file(filename: str) -> bool:
    return _absolute(filename).startswith(_GRADING_DIR)


@functools.lru_cache(maxsize=4096)
def _reference_file(filename: str) -> bool:
    return _absolute(filename).startswith(_REFERENCE_DIR)


def _is_check_variant(code: Any) -> bool:
    """Whether ``code`` is one of the checks' own functions: a parametrised implementation
    (``*_variant``) or any module-level function of :mod:`bncourse.grading` (its helpers)."""
    if not _grading_file(code.co_filename):
        return False
    return code.co_name.endswith("variant") or "." not in code.co_qualname


#: Modules whose source, run as notebook code (``exec`` of ``inspect.getsource``), is refused.
_COURSE_CODE_MODULES = ("bncourse.grading", "bncourse.nn")


def _course_source_in_notebook(frame: Any) -> str | None:
    """``bncourse.<module>.<function>`` when ``frame`` runs notebook-compiled code in the globals
    of a grading or reference module: the course's code copied into a cell and run there."""
    if not _notebook_code(frame.f_code):
        return None
    module = frame.f_globals.get("__name__")
    if not isinstance(module, str) or not module.startswith(_COURSE_CODE_MODULES):
        return None
    if frame.f_code in _generated_code(module):
        return None  # the module's own methods written at import time (dataclasses' __init__)
    return f"{module}.{frame.f_code.co_qualname}"


_GENERATED: dict[str, frozenset] = {}


def _generated_code(module_name: str) -> frozenset:
    """The code objects of the methods of ``module_name``'s classes that were compiled from a
    string when the module was imported (``dataclasses`` writes ``__init__``, ``__eq__``... so)."""
    if module_name not in _GENERATED:
        module = sys.modules.get(module_name)
        codes = set()
        for cls in vars(module).values() if module is not None else ():
            if not isinstance(cls, type) or cls.__module__ != module_name:
                continue
            for value in vars(cls).values():
                code = getattr(getattr(value, "__func__", value), "__code__", None)
                if code is not None and _notebook_code(code):
                    codes.add(code)
        _GENERATED[module_name] = frozenset(codes)
    return _GENERATED[module_name]


#: How a refusal begins when the notebook changes the grader's code in its kernel.
TAMPERING = "the notebook changes the autograder's code in its kernel"

#: torch's switches that turn torch-function handling off, hiding calls from the guard's mode.
_DISABLERS = ("DisableTorchFunction", "DisableTorchFunctionSubclass")


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# torch's Python decompositions and references: batch norm, dropout and their backward passes
# written in Python (torch._decomp.decompositions.native_batch_norm, torch._refs...), reachable
# without torch.ops or torch.nn.functional.
_DECOMPOSITION_DIRS = tuple(
    os.path.join(_TORCH_DIR, d) + os.sep for d in ("_decomp", "_refs", "_prims", "_prims_common")
)


# torch's Python routines that fold batch norm into the layer before it (the weights of a fused
# Linear or Conv, the modules fused for quantization): what folding exercises ask for, in one call.
_FUSION_FILES = tuple(
    os.path.join(_TORCH_DIR, *parts)
    for parts in (
        ("nn", "utils", "fusion.py"),
        ("ao", "quantization", "fuse_modules.py"),
        ("ao", "quantization", "fuser_method_mappings.py"),
        ("fx", "experimental", "optimization.py"),
    )
)


def _decomposition_entry(frame: Any, caller: Any) -> str | None:
    """``torch.<module>.<function>`` when code outside torch calls into torch's decompositions or
    its batch-norm fusion routines:
    the function called, not the decorator's wrapper that runs first (``out_wrapper``'s
    ``_fn``), named by its module and name."""
    code = frame.f_code
    filename = _absolute(code.co_filename)
    if not filename.startswith(_DECOMPOSITION_DIRS) and filename not in _FUSION_FILES:
        return None
    if caller is not None and _absolute(caller.f_code.co_filename).startswith(_TORCH_DIR):
        return None  # torch calling its own decompositions
    wrapped = _wrapped_function(frame) if "<locals>" in code.co_qualname else None
    if wrapped is not None:
        return wrapped
    module = os.path.relpath(os.path.splitext(filename)[0], os.path.dirname(_TORCH_DIR[:-1]))
    return f"{module.replace(os.sep, '.')}.{code.co_qualname}"


def _wrapped_function(frame: Any) -> str | None:
    """The module-level torch function a decorator's wrapper running in ``frame`` wraps, if any."""
    try:
        values = list(frame.f_locals.values())  # a wrapper's closure holds the function
    except Exception:
        return None
    for value in values:
        if not inspect.isfunction(value):
            continue
        function = inspect.unwrap(value)
        module, name = getattr(function, "__module__", ""), function.__qualname__
        if module.startswith("torch.") and "<locals>" not in name:
            return f"{module}.{name}"
    return None


def _notebook_code(code: Any) -> bool:
    """Whether ``code`` was written in a notebook cell (or built at run time), not in a file."""
    return bool(_CELL_FILE.search(code.co_filename))


def _module_file(name: str) -> str:
    """The source file of the course module ``name`` (e.g. ``bncourse.lab.probes``), not imported."""
    parts = name.split(".")
    if parts[0] != "bncourse" or len(parts) < 2:
        raise ValueError(f"references must name modules of the bncourse package, got {name!r}")
    path = os.path.join(_PACKAGE_DIR, *parts[1:])
    if os.path.isdir(path):
        path = os.path.join(path, "__init__")
    path += ".py"
    if not os.path.isfile(path):
        raise ValueError(f"no module {name!r} in the bncourse package (looked for {path})")
    return path


class ReferenceCallError(AssertionError):
    """A graded function called a reference implementation instead of computing the result."""


def _aten_route(func: Any) -> str | None:
    """``torch.ops.<namespace>.<op>`` when ``func`` is an operator of ``torch.ops``, else None.

    Whatever name or computed string reached it (``getattr(torch.ops.aten, "native_batch_" +
    "norm_backward")``, ``torch._ops.ops.aten...``, an overload such as ``.default``), a call of
    an operator object arrives here as that object. An elementary tensor operation a submission
    writes arrives as its Python API (``torch.Tensor.mean``, ``torch.sqrt``): only a direct call
    of a kernel is an operator.
    """
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = getattr(func, "_qualified_op_name", None) or getattr(func, "_name", None)
        name = str(name or getattr(func, "__name__", "?")).replace("::", ".")
        return f"torch.ops.{name}"
    return None


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
        if _reference_file(frame.f_code.co_filename):
            outermost = frame
        frame = frame.f_back
    if outermost is None:
        return None
    module = os.path.splitext(os.path.basename(outermost.f_code.co_filename))[0]
    return f"bncourse.nn.{module}.{outermost.f_code.co_qualname}"


class _Guard(TorchFunctionMode):
    def __init__(self, what: str, files: Sequence[str] = ()) -> None:
        super().__init__()
        self.what = what
        self.files = frozenset(os.path.abspath(f) for f in files)
        self.violations: list[str] = []

    def profile(self, frame, event, arg) -> None:
        """A :func:`sys.setprofile` hook: refuse a call into a function of a reference file."""
        if event != "call" or not frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            return  # module and class bodies: importing a reference module is no call into it
        code, caller = frame.f_code, frame.f_back
        if _is_check_variant(code) and (caller is None or _notebook_code(caller.f_code)):
            raise self.refuse(self._course_name(code))
        copied = _course_source_in_notebook(frame)
        if copied is not None:
            raise self.refuse(copied)
        decomposition = _decomposition_entry(frame, caller)
        if decomposition is not None:
            raise self.refuse(decomposition)
        if not self.files:
            return
        filename = _absolute(code.co_filename)
        if filename in self.files and (
            caller is None or _absolute(caller.f_code.co_filename) not in self.files
        ):
            raise self.refuse(self._course_name(code))

    @staticmethod
    def _course_name(code: Any) -> str:
        """``bncourse.<module>.<function>`` of a code object of the package."""
        filename = _absolute(code.co_filename)
        module = os.path.relpath(os.path.splitext(filename)[0], os.path.dirname(_PACKAGE_DIR))
        return f"{module.replace(os.sep, '.')}.{code.co_qualname}"

    def disabler(self, name: str, original: Any) -> Callable[..., Any]:
        """``torch._C.<name>`` as seen while the guard is active: refused to notebook code."""

        def switch(*args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if _notebook_code(caller.f_code):
                raise self.refuse(f"torch._C.{name}")
            return original(*args, **kwargs)

        return switch

    def refuse(self, called: str, *, record: bool = True) -> ReferenceCallError:
        """The error that refuses the call of ``called`` (a dotted name, or a
        :data:`TAMPERING` reason), saying why; ``record``: add it to :attr:`violations`."""
        if record:
            self.violations.append(called)
        if called.startswith(TAMPERING):
            return ReferenceCallError(
                f"{self.what} was not run: {called}. The autograder's check that the function "
                "computes its result itself, without torch's normalization or dropout, runs in "
                "the notebook's kernel, and a notebook that changes the autograder's code there "
                "could hide any call from it; so every part that check protects scores zero. "
                "Remove that code: answers never need it."
            )
        if called.startswith("torch._C.Disable"):
            return ReferenceCallError(
                f"{self.what} called {called}, which turns off torch-function handling: the "
                "autograder's check that the function computes its result itself, without "
                "torch's normalization or dropout, cannot see through it, so its use is refused "
                "as an attempt to evade that check. Remove it and write the computation with "
                "elementary tensor operations; this part scores zero until then."
            )
        if called.startswith("torch.ops."):
            return ReferenceCallError(
                f"{self.what} called {called}, an ATen kernel reached through torch.ops. This "
                "exercise asks you to write the computation yourself with elementary tensor "
                "operations (sum, mean, var, sqrt, indexing, ...); torch's internal kernels "
                "(torch.ops.aten.*, whatever name they are looked up by) cannot be used inside "
                "it. This part scores zero until the function computes the result itself."
            )
        if not called.startswith(("torch", "bncourse.nn")):
            return ReferenceCallError(
                f"{self.what} called {called}, the course's own implementation of what this "
                "exercise asks you to write. Write it yourself (helpers of your own and torch's "
                "layers are fine); this part scores zero until it does."
            )
        return ReferenceCallError(
            f"{self.what} called {called}. This exercise asks you to write the computation "
            "yourself with elementary tensor operations (sum, mean, var, sqrt, indexing, ...); "
            "torch's own batch norm, layer/group/instance norm and dropout, and the course's "
            "reference implementations in bncourse.nn, cannot be used inside it. "
            "This part scores zero until the function computes the result itself."
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _aten_route(func)
        if route is not None:
            raise self.refuse(route)
        if _function_name(func) in FORBIDDEN_TORCH_FUNCTIONS:
            raise self.refuse(_qualified_name(func))
        if not _NOTEBOOK_ELSEWHERE.get():  # else no notebook code runs here (see above)
            reference = _reference_frame()
            if reference is not None:
                raise self.refuse(reference)
        return func(*args, **kwargs)


@contextmanager
def forbid_reference(
    what: str = "the graded function",
    *,
    torch_layers: bool = True,
    references: Sequence[str] = (),
) -> Iterator[_Guard]:
    """Run the enclosed code with reference implementations forbidden.

    ``what`` names the code under test in the error message. With ``torch_layers`` (the default)
    torch's normalization and dropout and :mod:`bncourse.nn` are refused; ``references`` names
    further course modules (``"bncourse.theory"``, ``"bncourse.lab.recalibrate"``, ...) none of
    whose functions may be called. The yielded guard lists in ``violations`` every forbidden call,
    including those whose error the code caught and hid: a check should fail when that list is not
    empty.
    """
    guard = _Guard(what, [_module_file(name) for name in references])
    spec = {
        "kind": "reference",
        "what": what,
        "torch_layers": torch_layers,
        "references": list(references),
    }
    previous = sys.getprofile()
    # The profile hook refuses calls into the reference modules and into the checks' own
    # implementations. A profile function that raises is switched off by Python: the violation
    # is recorded first, and the previous one is put back on exit either way.
    hooked = not _NOTEBOOK_ELSEWHERE.get()
    disablers = {name: getattr(torch._C, name) for name in _DISABLERS if hasattr(torch._C, name)}
    if hooked:
        sys.setprofile(guard.profile)
        for name, original in disablers.items():  # torch's own code reaches them through _C
            setattr(torch._C, name, guard.disabler(name, original))
    try:
        with registered_guard(spec, guard):
            if torch_layers:
                with guard:
                    yield guard
            else:  # torch functions pass unexamined: no need to route them through the mode
                yield guard
    finally:
        if hooked:
            sys.setprofile(previous)
            for name, original in disablers.items():
                setattr(torch._C, name, original)
