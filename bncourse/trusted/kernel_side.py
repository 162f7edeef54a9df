"""What runs inside the sandboxed kernel: answer the grader's requests on the notebook's objects.

The grader writes ``req-N.json``/``req-N.safetensors`` into a folder the kernel can only read,
then runs ``serve(requests, responses, N)`` in the kernel, which writes ``resp-N.*`` into a folder
of its own. Everything here runs in the student's process, so nothing it answers is believed: the
grader compares what comes back with its own reference. A request is one of

``lookup``   what the notebook's global names are (a function becomes a handle, data is sent);
``call``     call a handle with arguments, under the guards the grader's check had active, with
             the grader's random state; send back the result, the arguments as the call left
             them, the random state, the guards' refusals, what hooked modules saw, and a graph
             handle when the result depends on arguments that require grad;
``backward`` gradients of a graph kept from a call, for given output gradients.

The grader imports this module before the notebook's first cell, so that what it uses is bound
before the submission can replace modules in ``sys.modules``.
"""

from __future__ import annotations

import builtins
import contextlib
import traceback
from pathlib import Path
from typing import Any

import torch
from IPython import get_ipython
from torch import nn

from bncourse.grading.backward import forbid_autograd
from bncourse.grading.guard import ReferenceCallError, forbid_reference
from bncourse.trusted.frames import is_library_file, student_traceback
from bncourse.trusted.wire import (
    Decoder,
    Encoder,
    Handle,
    global_hook_keys,
    global_hooks_added,
    read_message,
    walk,
    write_message,
)

__all__ = ["serve"]

_objects: dict[int, Any] = {}
_handles: dict[int, int] = {}  # id(object) -> handle
_graphs: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
_train_owners: dict[int, nn.Module] = {}  # handle of a replaced train method -> its module


def _register(value: Any) -> Handle:
    handle = _handles.get(id(value))
    if handle is None or _objects.get(handle) is not value:
        handle = len(_objects) + 1
        _objects[handle] = value
        _handles[id(value)] = handle
    return Handle(handle, type(value).__name__)


def _module_handle(module: nn.Module) -> int:
    return _register(module).id


def _own_train(module: nn.Module) -> Handle | None:
    """A handle of ``module.train`` where the notebook replaced it (on the instance or in a class
    of its own), so that the grader's copy switches modes as the notebook's does."""
    if "train" in vars(module) or type(module).train is not nn.Module.train:
        handle = _register(module.train)
        _train_owners[handle.id] = module
        return handle
    return None


def _lookup_handle(node: dict[str, Any]) -> Any:
    handle = node["id"]
    if handle not in _objects:
        raise KeyError(f"the grader named an object the kernel does not hold ({handle})")
    return _objects[handle]


def _user_namespace() -> dict[str, Any]:
    shell = get_ipython()
    return shell.user_ns if shell is not None else {}


def _decoder(tensors: dict[str, torch.Tensor], arguments: Any = None) -> Decoder:
    return Decoder(
        tensors,
        handle=_lookup_handle,
        module_for=lambda h: _objects.get(h) if isinstance(_objects.get(h), nn.Module) else None,
        arguments=arguments,
    )


def _paths(value: Any) -> dict[int, list]:
    """Paths of the tensors, modules and generators inside the call's arguments, by id."""
    found: dict[int, list] = {}
    for path, item in walk(value):
        if isinstance(item, (torch.Tensor, nn.Module, torch.Generator)):
            found.setdefault(id(item), path)
    return found


def _flat_tensors(value: Any) -> list[tuple[list, torch.Tensor]]:
    return [(path, item) for path, item in walk(value) if isinstance(item, torch.Tensor)]


def _guards(specs: list[dict[str, Any]]) -> tuple[contextlib.ExitStack, list[Any]]:
    stack, guards = contextlib.ExitStack(), []
    for spec in specs:
        if spec.get("kind") == "autograd":
            guards.append(stack.enter_context(forbid_autograd(spec.get("what", "the function"))))
        else:
            guards.append(
                stack.enter_context(
                    forbid_reference(
                        spec.get("what", "the function"),
                        torch_layers=bool(spec.get("torch_layers", True)),
                        references=tuple(spec.get("references", ())),
                    )
                )
            )
    return stack, guards


def _set_rng(encoded: dict[str, Any] | None, decoder: Decoder) -> None:
    if not encoded:
        return
    torch.set_rng_state(decoder.decode(encoded["cpu"]))
    cuda = decoder.decode(encoded.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _rng(encoder: Encoder) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu": encoder.encode(torch.get_rng_state()), "cuda": encoder.encode(cuda)}


def _module_at(root: Any, arg_path: list, module_path: str) -> nn.Module:
    value = root
    for step in arg_path:
        value = value[step]
    return value.get_submodule(module_path) if module_path else value


def _raised_in_library(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and is_library_file(frames[-1].filename)


def _describe(error: BaseException, guards: list[Any]) -> dict[str, Any]:
    guard_index = None
    if isinstance(error, ReferenceCallError):
        for i, guard in enumerate(guards):
            if guard.violations:
                guard_index = i
    builtin = (
        type(error).__name__
        if getattr(builtins, type(error).__name__, None) is type(error)
        else None
    )
    return {
        "type": type(error).__name__,
        "builtin": builtin,
        "runtime": isinstance(error, RuntimeError),
        "message": str(error)[:4000],
        "notes": [str(n)[:1000] for n in getattr(error, "__notes__", [])][:10],
        # the student's frames only: this module's and torch's say nothing about their code
        "traceback": student_traceback(error)[-6000:],
        # whether torch (or another library) raised it: the traceback above no longer shows that
        "raised_in_library": _raised_in_library(error),
        "guard": guard_index,
    }


def _call(request: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[Any, Encoder]:
    target = _lookup_handle(request["target"])
    args, kwargs = (
        _decoder(tensors).decode(request["args"]),
        _decoder(tensors).decode(request["kwargs"]),
    )
    arguments = [args, kwargs]
    decoder = _decoder(tensors, arguments)
    if request.get("self") is not None:
        decoder.decode_module(request["self"])  # the grader's copy of the module's state
    _set_rng(request.get("rng"), decoder)
    records: list[dict[str, Any]] = []
    hooks = []
    for index, (arg_path, module_path) in enumerate(request.get("record", [])):
        root = target if arg_path is None else arguments
        module = _module_at(root, arg_path or [], module_path)

        def pre(m, inputs, index=index):
            records.append({"i": index, "kind": "pre", "training": m.training, "args": inputs})

        def post(m, inputs, output, index=index):
            records.append(
                {"i": index, "kind": "post", "training": m.training, "args": inputs, "out": output}
            )

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    references = _paths(arguments)
    stack, guards = _guards(request.get("guards", []))
    error = None
    global_hooks = global_hook_keys()
    try:
        with stack, torch.set_grad_enabled(bool(request.get("grad_enabled", True))):
            result = target(*args, **kwargs)
    except Exception as exc:  # the student's error goes back to the grader as data
        error, result = exc, None
    finally:
        for h in hooks:
            h.remove()
    encoder = Encoder(opaque=_register, module_handle=_module_handle, own_train=_own_train)
    owner = _train_owners.get(request["target"]["id"])
    response: dict[str, Any] = {
        "violations": [list(g.violations) for g in guards],
        # global module hooks the call left registered: the grader counts them as it would here
        "global_hooks": global_hooks_added(global_hooks),
        # the module whose replaced train method this is, as the method left it
        "owner": encoder.encode_module(owner) if owner is not None else None,
        "rng": _rng(encoder),
        "arguments": encoder.encode(arguments),
        "self": encoder.encode_module(target) if isinstance(target, nn.Module) else None,
        "records": encoder.encode(records),
    }
    if error is not None:
        response["error"] = _describe(error, guards)
        return response, encoder
    result_encoder = Encoder(
        opaque=_register,
        references=references,
        module_handle=_module_handle,
        own_train=_own_train,
    )
    result_encoder.tensors = encoder.tensors
    response["result"] = result_encoder.encode(result)
    inputs = [(p, t) for p, t in _flat_tensors(arguments) if t.requires_grad]
    outputs = [
        (p, t) for p, t in _flat_tensors(result) if t.requires_grad and t.grad_fn is not None
    ]
    if inputs and outputs:
        graph = len(_graphs) + 1
        _graphs[graph] = ([t for _, t in inputs], [t for _, t in outputs])
        response["graph"] = {
            "id": graph,
            "inputs": [p for p, _ in inputs],
            "outputs": [p for p, _ in outputs],
        }
    return response, encoder


def _backward(request: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[Any, Encoder]:
    inputs, outputs = _graphs[request["graph"]]
    grads = _decoder(tensors).decode(request["grads"])
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
    encoder = Encoder(opaque=_register)
    try:
        found = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
        )
    except Exception as exc:
        return {"error": _describe(exc, [])}, encoder
    return {"grads": encoder.encode(list(found))}, encoder


def _lookup(request: dict[str, Any]) -> tuple[Any, Encoder]:
    namespace = _user_namespace()
    encoder = Encoder(opaque=_register, module_handle=_module_handle, own_train=_own_train)
    found = {}
    for name in request["names"]:
        if name not in namespace:
            continue
        value = namespace[name]
        if callable(value) and not isinstance(value, nn.Module):
            found[name] = {"callable": True, "handle": encoder.encode(_register(value))}
        else:
            found[name] = {"callable": False, "value": encoder.encode(value)}
    return {"names": found}, encoder


def serve(requests: str, responses: str, number: int) -> None:
    """Answer request ``number`` from the folder ``requests`` into the folder ``responses``."""
    tree, tensors = read_message(Path(requests), f"req-{number}")
    op = tree.get("op")
    try:
        if op == "lookup":
            response, encoder = _lookup(tree)
        elif op == "call":
            response, encoder = _call(tree, tensors)
        elif op == "backward":
            response, encoder = _backward(tree, tensors)
        else:
            raise ValueError(f"unknown request {op!r}")
    except Exception as exc:  # a request the notebook's state cannot answer
        response, encoder = {"error": _describe(exc, [])}, Encoder()
    try:
        write_message(Path(responses), f"resp-{number}", response, encoder.tensors)
    except Exception as exc:  # e.g. a result that cannot travel
        write_message(Path(responses), f"resp-{number}", {"error": _describe(exc, [])}, {})
