"""The grader's stand-ins for what a sandboxed kernel holds: functions, objects and modules.

A test cell runs in the grader's process with each name it takes from the notebook bound to a
stand-in. Calling one sends the arguments to the kernel as data (:mod:`bncourse.trusted.wire`),
with the guards the check has active and the grader's random state, and brings back the result,
the arguments as the call left them (a running mean updated in place, a network's modes and
weights), and what the check's hooks would have seen. A result that depends on arguments that
require grad is joined to them by :class:`_RemoteGraph`, whose backward pass asks the kernel.
Modules of allowed ``torch.nn`` classes are rebuilt here and run here; a module whose class the
notebook defined is a :class:`RemoteModule`, whose forward pass runs in the kernel. A module whose
``train`` method the notebook replaced gets a :class:`TrainInKernel` as its ``train``: switching
it to training or evaluation mode runs the notebook's method there and takes the flags back.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bncourse.grading.guard import TAMPERING, ReferenceCallError, active_guards
from bncourse.trusted.wire import (
    Decoder,
    Encoder,
    Handle,
    WireError,
    add_global_stand_ins,
    apply_module_state,
    is_dummy_hook,
    node_flags,
    read_message,
    walk,
    write_message,
)

__all__ = [
    "Kernel",
    "KernelError",
    "RemoteError",
    "RemoteModule",
    "RemoteObject",
    "TrainInKernel",
]


class KernelError(RuntimeError):
    """The kernel did not answer a request (it died, timed out, or its answer was unreadable)."""


class RemoteError(Exception):
    """An exception of a kind the grader does not rebuild, raised by the notebook's code."""


# Exceptions rebuilt by name when the notebook's code raises them (the checks catch some).
_REBUILT = {
    name: getattr(builtins, name)
    for name in (
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "IndexError",
        "KeyError",
        "LookupError",
        "NameError",
        "NotImplementedError",
        "OverflowError",
        "RecursionError",
        "RuntimeError",
        "TypeError",
        "UnboundLocalError",
        "ValueError",
        "ZeroDivisionError",
        "MemoryError",
    )
}


class RemoteObject:
    """An object of the notebook that cannot travel as data; callable if it is in the kernel."""

    def __init__(self, kernel: Kernel, handle: Handle, name: str | None = None) -> None:
        self._kernel = kernel
        self._handle = handle
        self.__name__ = name or handle.type_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._kernel.call(self._handle, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self._handle.type_name} {self.__name__} in the notebook>"


class RemoteModule(nn.Module):
    """A module of a class the notebook defined: its parts are here, its forward pass is not."""

    def __init__(self, kernel: Kernel, handle: int, type_name: str) -> None:
        super().__init__()
        self._bncourse_kernel = kernel
        self._bncourse_handle = handle
        self._bncourse_type_name = type_name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._bncourse_kernel.call(
            Handle(self._bncourse_handle, "module"), args, kwargs, self
        )

    def extra_repr(self) -> str:
        return f"class {self._bncourse_type_name} of the notebook"


class TrainInKernel:
    """The ``train`` method of a module whose ``train`` the notebook replaced: it runs the
    notebook's method on the kernel's module and gives this module, and every module inside it,
    the train/eval flags and ``requires_grad`` flags that the kernel's came out with."""

    def __init__(self, module: nn.Module, method: Any) -> None:
        self._module = module
        self._method = method

    def __call__(self, mode: bool = True) -> nn.Module:
        method = self._method
        if isinstance(method, RemoteObject):
            # the flags come from the kernel's module itself, whatever the method returns
            method._kernel.call(method._handle, (bool(mode),), {}, owner=self._module)
            return self._module
        result = method(bool(mode))
        if isinstance(result, nn.Module):
            _copy_flags(self._module, result)
        return self._module

    def __deepcopy__(self, memo: dict[int, Any]) -> TrainInKernel:
        # a copy of the module (copied before its attributes) asks the same kernel method
        return TrainInKernel(memo.get(id(self._module), self._module), self._method)


def _copy_flags(module: nn.Module, source: nn.Module) -> None:
    """``module`` and its submodules take the train/eval flags and parameters' ``requires_grad``
    of the modules of ``source`` with the same names."""
    modes = {name: m.training for name, m in source.named_modules()}
    grads = {name: p.requires_grad for name, p in source.named_parameters()}
    _set_flags(module, modes, grads)


def _set_flags(module: nn.Module, modes: dict[str, bool], grads: dict[str, bool]) -> None:
    for name, m in module.named_modules():
        if name in modes:
            m.training = bool(modes[name])
    for name, p in module.named_parameters():
        if name in grads:
            p.requires_grad_(bool(grads[name]))


class _RemoteGraph(torch.autograd.Function):
    """Joins a result computed in the kernel to the arguments it depends on, for autograd."""

    @staticmethod
    def forward(ctx, kernel, graph, n_outputs, *tensors):
        ctx.kernel, ctx.graph = kernel, graph
        ctx.n_inputs = len(tensors) - n_outputs
        return tuple(t.detach().clone() for t in tensors[ctx.n_inputs :])

    @staticmethod
    def backward(ctx, *grads):
        found = ctx.kernel.backward(ctx.graph, list(grads))
        return (None, None, None, *found, *([None] * len(grads)))


def _hooked(module: nn.Module) -> bool:
    return any(not is_dummy_hook(h) for h in module._forward_pre_hooks.values()) or any(
        not is_dummy_hook(h) for h in module._forward_hooks.values()
    )


def _modules_with_hooks(value: Any) -> list[tuple[list, str, nn.Module]]:
    """(argument path, module path, module) of every hooked module inside the arguments."""
    return [
        (path, name, module)
        for path, item in walk(value)
        if isinstance(item, nn.Module)
        for name, module in item.named_modules()
        if _hooked(module)
    ]


def _sync(original: Any, node: Any, decoder: Decoder) -> None:
    """Make ``original`` (an argument of the call) what the kernel's copy became."""
    if isinstance(original, nn.Module) and isinstance(node, dict) and node.get("$t") == "module":
        apply_module_state(original, node, decoder)
    elif (
        isinstance(original, torch.Tensor) and isinstance(node, dict) and node.get("$t") == "tensor"
    ):
        new = decoder.decode(node)
        with torch.no_grad():
            if new.shape == original.shape and new.dtype == original.dtype:
                original.copy_(new)
            else:
                original.data = new.detach()
    elif isinstance(original, torch.Generator) and isinstance(node, dict):
        if node.get("$t") == "generator":
            original.set_state(decoder.decode(node).get_state())
    elif type(original) is list and isinstance(node, list):
        if len(node) == len(original):
            for item, sub in zip(original, node, strict=True):
                _sync(item, sub, decoder)
        else:
            original[:] = decoder.decode(node)
    elif type(original) is tuple and isinstance(node, dict) and node.get("$t") == "tuple":
        for item, sub in zip(original, node["v"], strict=False):
            _sync(item, sub, decoder)
    elif type(original) is dict and isinstance(node, dict) and node.get("$t") == "dict":
        for key, sub in node["v"]:
            if key in original:
                _sync(original[key], sub, decoder)


def _replace(value: Any, path: list, replacements: dict[tuple, Any]) -> Any:
    if tuple(path) in replacements:
        return replacements[tuple(path)]
    if type(value) in (list, tuple):
        items = [_replace(v, [*path, i], replacements) for i, v in enumerate(value)]
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        return {k: _replace(v, [*path, k], replacements) for k, v in value.items()}
    return value


class Kernel:
    """The grader's end of the conversation with one sandboxed kernel.

    ``execute(code)`` runs one line of code in the kernel and raises :class:`KernelError` when
    the kernel does not complete it. Requests go to ``requests`` (a folder the kernel can only
    read), answers come from ``responses``.
    """

    def __init__(self, execute: Callable[[str], None], requests: Path, responses: Path) -> None:
        self._execute = execute
        self.requests, self.responses = Path(requests), Path(responses)
        self._count = 0
        self._global_stand_ins: list[Any] = []
        self.tampering: str | None = None
        """Set when the notebook changes the grader's code in its kernel: what and where. The
        guard that refuses delegation runs there, so every guarded call is refused then."""

    def close(self) -> None:
        """Remove the stand-ins of the global hooks that the notebook left registered."""
        for handle in self._global_stand_ins:
            handle.remove()
        self._global_stand_ins.clear()

    def _request(self, tree: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        self._count += 1
        number = self._count
        write_message(self.requests, f"req-{number}", tree, tensors)
        self._execute(
            "__import__('bncourse.trusted.kernel_side', fromlist=['serve']).serve("
            f"{str(self.requests)!r}, {str(self.responses)!r}, {number})"
        )
        try:
            response, found = read_message(self.responses, f"resp-{number}")
        except WireError as error:
            raise KernelError(f"the notebook's kernel gave no readable answer: {error}") from None
        finally:
            for suffix in (".json", ".safetensors"):
                (self.requests / f"req-{number}{suffix}").unlink(missing_ok=True)
        if not isinstance(response, dict):
            raise KernelError("the notebook's kernel gave a malformed answer")
        return response, found

    def _decoder(self, tensors: dict[str, torch.Tensor], arguments: Any = None) -> Decoder:
        return Decoder(
            tensors,
            handle=lambda node: RemoteObject(self, Handle(int(node["id"]), str(node.get("type")))),
            shell=lambda node: RemoteModule(self, int(node["handle"]), str(node.get("name"))),
            arguments=arguments,
            own_train=TrainInKernel,
        )

    def _encoder(self) -> Encoder:
        def opaque(value: Any) -> Handle:
            if isinstance(value, RemoteObject):
                return value._handle
            raise WireError(f"a value of type {type(value).__name__} cannot be sent to the kernel")

        return Encoder(opaque=opaque, module_handle=lambda m: getattr(m, "_bncourse_handle", None))

    def lookup(self, names: list[str]) -> dict[str, Any]:
        """The notebook's globals among ``names``: functions as stand-ins, data as values."""
        response, tensors = self._request({"op": "lookup", "names": sorted(names)}, {})
        _raise_for(response)
        decoder = self._decoder(tensors)
        found = {}
        for name, entry in (response.get("names") or {}).items():
            if not isinstance(entry, dict):
                raise KernelError("the notebook's kernel gave a malformed answer")
            if entry.get("callable"):
                handle = decoder.decode(entry["handle"])
                if isinstance(handle, RemoteObject):
                    handle.__name__ = name
                found[name] = handle
            else:
                found[name] = decoder.decode(entry.get("value"))
        return found

    def call(
        self,
        target: Handle,
        args: tuple,
        kwargs: dict,
        module: nn.Module | None = None,
        *,
        owner: nn.Module | None = None,
    ) -> Any:
        """Call the kernel's object ``target`` (``module``: the stand-in whose forward this is;
        ``owner``: the module whose replaced ``train`` method ``target`` is, which takes the
        train/eval and ``requires_grad`` flags of the kernel's module after the call)."""
        encoder = self._encoder()
        arguments = [list(args), dict(kwargs)]
        hooked = _modules_with_hooks(arguments)
        if module is not None:
            hooked += [(None, name, m) for name, m in module.named_modules() if _hooked(m)]
        guards = active_guards()
        if guards and self.tampering:
            _, guard = guards[0]
            raise guard.refuse(f"{TAMPERING} ({self.tampering})")
        request = {
            "op": "call",
            "target": {"$t": "handle", "id": target.id, "type": target.type_name},
            "args": encoder.encode(list(args)),
            "kwargs": encoder.encode(dict(kwargs)),
            "self": encoder.encode_module(module) if module is not None else None,
            "guards": [spec for spec, _ in guards],
            "rng": _rng(encoder),
            "grad_enabled": torch.is_grad_enabled(),
            "record": [[p, name] for p, name, _ in hooked],
        }
        response, tensors = self._request(request, encoder.tensors)
        decoder = self._decoder(tensors, arguments)
        for (_, guard), violations in zip(guards, response.get("violations") or [], strict=False):
            for called in violations if isinstance(violations, list) else []:
                called = reported_call(called)
                if called not in guard.violations:
                    guard.violations.append(called)
        rng = response.get("rng")
        if isinstance(rng, dict):
            torch.set_rng_state(decoder.decode(rng["cpu"]))
        _sync(arguments, response.get("arguments"), decoder)
        if module is not None and isinstance(response.get("self"), dict):
            apply_module_state(module, response["self"], decoder)
        if owner is not None and isinstance(response.get("owner"), dict):
            _set_flags(owner, *node_flags(response["owner"]))
        if response.get("global_hooks") is not None:
            self._global_stand_ins += add_global_stand_ins(response["global_hooks"])
        self._replay(response.get("records"), hooked, decoder)
        if "error" in response:
            raise _rebuild(response["error"], guards)
        result = decoder.decode(response.get("result"))
        graph = response.get("graph")
        if isinstance(graph, dict) and torch.is_grad_enabled():
            result = self._join_graph(graph, arguments, result)
        return result

    def _replay(self, records: Any, hooked: list, decoder: Decoder) -> None:
        """Call the grader's hooks with what the kernel's modules saw, in order."""
        for record in decoder.decode(records) or []:
            try:
                _, _, module = hooked[record["i"]]
            except (KeyError, IndexError, TypeError):
                raise KernelError("the notebook's kernel gave a malformed answer") from None
            training, module.training = module.training, bool(record["training"])
            args = tuple(record["args"]) if isinstance(record["args"], (list, tuple)) else ()
            try:
                if record["kind"] == "pre":
                    hooks = list(module._forward_pre_hooks.values())
                    for hook in hooks:
                        if not is_dummy_hook(hook):
                            hook(module, args)
                else:
                    for hook in list(module._forward_hooks.values()):
                        if not is_dummy_hook(hook):
                            hook(module, args, record.get("out"))
            finally:
                module.training = training

    def _join_graph(self, graph: dict[str, Any], arguments: Any, result: Any) -> Any:
        flat_args = {tuple(path): item for path, item in walk(arguments)}
        flat_result = {tuple(path): item for path, item in walk(result)}
        inputs = [flat_args.get(tuple(p)) for p in graph.get("inputs", [])]
        outputs = [flat_result.get(tuple(p)) for p in graph.get("outputs", [])]
        if not all(isinstance(t, torch.Tensor) for t in inputs + outputs):
            raise KernelError("the notebook's kernel gave a malformed answer")
        joined = _RemoteGraph.apply(self, int(graph["id"]), len(outputs), *inputs, *outputs)
        replacements = {tuple(p): t for p, t in zip(graph["outputs"], joined, strict=True)}
        return _replace(result, [], replacements)

    def backward(self, graph: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        encoder = self._encoder()
        request = {"op": "backward", "graph": graph, "grads": encoder.encode(grads)}
        response, tensors = self._request(request, encoder.tensors)
        if "error" in response:
            raise _rebuild(response["error"], [])
        return list(self._decoder(tensors).decode(response.get("grads")))


_CALL_NAME = re.compile(r"[A-Za-z_][\w.<>]{0,199}")
UNNAMED_CALL = "a function the guard refuses (the kernel gave no readable name for it)"


def reported_call(called: Any) -> str:
    """A refused call as the kernel reported it: a dotted name such as
    ``torch.nn.functional.batch_norm``; anything else (text a notebook wrote into the report to
    reach the instructor's pages) is still a refused call, under a fixed name."""
    if isinstance(called, str) and _CALL_NAME.fullmatch(called):
        return called
    return UNNAMED_CALL


def _rng(encoder: Encoder) -> dict[str, Any]:
    return {"cpu": encoder.encode(torch.get_rng_state()), "cuda": []}


def _raise_for(response: dict[str, Any]) -> None:
    if "error" in response:
        raise _rebuild(response["error"], [])


def _rebuild(error: Any, guards: list) -> BaseException:
    """The exception the notebook's code raised, as the grader's checks expect to catch it."""
    if not isinstance(error, dict):
        return KernelError("the notebook's kernel gave a malformed answer")
    name, message = str(error.get("type", "Exception")), str(error.get("message", ""))
    index = error.get("guard")
    if isinstance(index, int) and 0 <= index < len(guards):
        _, guard = guards[index]
        called = guard.violations[-1] if guard.violations else "a reference implementation"
        return guard.refuse(called, record=False)  # the kernel's guard recorded it
    cls = _REBUILT.get(str(error.get("builtin")))
    if cls is not None:
        exc: BaseException = cls(message)
    elif error.get("runtime"):
        exc = RuntimeError(f"{name}: {message}")
    else:
        exc = RemoteError(f"{name}: {message}")
    if isinstance(exc, ReferenceCallError):
        return exc
    # read by bncourse.grading.engine.is_unfinished: torch's NotImplementedError is not a stub's
    exc.raised_in_library = bool(error.get("raised_in_library"))
    for note in error.get("notes") or []:
        exc.add_note(str(note))
    exc.add_note("Where the notebook raised it:\n" + str(error.get("traceback", ""))[-3000:])
    return exc
