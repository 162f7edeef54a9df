"""The data that crosses between the grader and a sandboxed kernel: JSON plus one safetensors file.

Nothing here can run code when it is read: a message is a JSON tree whose tensors live in a
safetensors file, and the only objects rebuilt from it are plain Python values, tensors, torch
generators, dtypes and devices, and ``torch.nn`` modules of the classes in :data:`MODULE_CLASSES`
(built on the ``meta`` device from checked constructor arguments, then given the sent tensors).
Everything else the kernel holds travels as a *handle*, a number the kernel resolves again when it
is sent back. Nothing is ever unpickled.

The tree's tagged nodes (``{"$t": kind, ...}``):
``float`` (nan and infinities), ``tuple``, ``dict``, ``tensor``, ``ndarray``, ``dtype``,
``device``, ``generator``, ``module``, ``handle`` (an object of the kernel), ``ref`` (an object of
the call's arguments, by its path in them).

A module whose ``train`` method the notebook replaced (on the instance, or in a class of its own,
as a fine-tuning helper that keeps batch norm frozen does) carries a handle of that method: where
it is rebuilt, its ``train`` asks the kernel (``Decoder.own_train``), so that a later
``model.train()`` or ``model.eval()`` behaves as in the notebook.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn
from torch.utils.hooks import RemovableHandle

from bncourse import nn as bnn

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TENSOR_BYTES",
    "MODULE_CLASSES",
    "Decoder",
    "Encoder",
    "Handle",
    "WireError",
    "read_message",
    "walk",
    "write_message",
]

MAX_JSON_BYTES = 32 * 2**20
"""The largest JSON part of a message that is read."""
MAX_TENSOR_BYTES = 512 * 2**20
"""The largest tensor file of a message that is read."""
MAX_DEPTH = 64
"""How deeply a message may nest."""
MAX_MODULES = 4096
"""The most module nodes a message may hold (a network of the course has a few dozen)."""
MAX_HOOKS = 4096
"""The most hooks a message may report left on its modules, all modules together."""


class WireError(ValueError):
    """A message is malformed, too large, or holds something that cannot travel."""


@dataclass(frozen=True)
class Handle:
    """An object that stays in the kernel, named by its number there."""

    id: int
    type_name: str


def _init(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda m: {n: getattr(m, n) for n in names}


def _linear(m: nn.Module) -> dict[str, Any]:
    return {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    }


def _conv(m: nn.Module) -> dict[str, Any]:
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
    return {
        **{n: getattr(m, n) for n in names},
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn(m: nn.Module) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


_POOL = ("kernel_size", "stride", "padding")
MODULE_CLASSES: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]], bool]] = {
    # name: (class, its constructor arguments read off an instance, takes device=)
    "Sequential": (nn.Sequential, _init(), False),
    "ModuleList": (nn.ModuleList, _init(), False),
    "ModuleDict": (nn.ModuleDict, _init(), False),
    "Linear": (nn.Linear, _linear, True),
    "Bilinear": (nn.Bilinear, _init("in1_features", "in2_features", "out_features"), True),
    "Conv1d": (nn.Conv1d, _conv, True),
    "Conv2d": (nn.Conv2d, _conv, True),
    "Conv3d": (nn.Conv3d, _conv, True),
    "BatchNorm1d": (nn.BatchNorm1d, _bn, True),
    "BatchNorm2d": (nn.BatchNorm2d, _bn, True),
    "BatchNorm3d": (nn.BatchNorm3d, _bn, True),
    "LayerNorm": (nn.LayerNorm, _init("normalized_shape", "eps", "elementwise_affine"), True),
    "Dropout": (nn.Dropout, _init("p", "inplace"), False),
    "Dropout1d": (nn.Dropout1d, _init("p", "inplace"), False),
    "Dropout2d": (nn.Dropout2d, _init("p", "inplace"), False),
    "Dropout3d": (nn.Dropout3d, _init("p", "inplace"), False),
    "AlphaDropout": (nn.AlphaDropout, _init("p", "inplace"), False),
    "ReLU": (nn.ReLU, _init("inplace"), False),
    "ReLU6": (nn.ReLU6, _init("inplace"), False),
    "LeakyReLU": (nn.LeakyReLU, _init("negative_slope", "inplace"), False),
    "ELU": (nn.ELU, _init("alpha", "inplace"), False),
    "GELU": (nn.GELU, _init("approximate"), False),
    "SiLU": (nn.SiLU, _init("inplace"), False),
    "Tanh": (nn.Tanh, _init(), False),
    "Sigmoid": (nn.Sigmoid, _init(), False),
    "Softmax": (nn.Softmax, _init("dim"), False),
    "LogSoftmax": (nn.LogSoftmax, _init("dim"), False),
    "Identity": (nn.Identity, _init(), False),
    "Flatten": (nn.Flatten, _init("start_dim", "end_dim"), False),
    "MaxPool1d": (nn.MaxPool1d, _init(*_POOL, "dilation", "ceil_mode"), False),
    "MaxPool2d": (nn.MaxPool2d, _init(*_POOL, "dilation", "ceil_mode"), False),
    "AvgPool1d": (nn.AvgPool1d, _init(*_POOL, "ceil_mode", "count_include_pad"), False),
    "AvgPool2d": (nn.AvgPool2d, _init(*_POOL, "ceil_mode", "count_include_pad"), False),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, _init("output_size"), False),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _init("output_size"), False),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, _init("output_size"), False),
    "bncourse.BatchNorm1d": (bnn.BatchNorm1d, _bn, True),
    "bncourse.BatchNorm2d": (bnn.BatchNorm2d, _bn, True),
    "bncourse.Dropout": (bnn.Dropout, _init("p", "inplace"), False),
    "bncourse.GaussianDropout": (bnn.GaussianDropout, _init("p"), False),
    "bncourse.Uout": (bnn.Uout, _init("beta"), False),
}
_CLASS_NAMES = {cls: name for name, (cls, _, _) in MODULE_CLASSES.items()}
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def walk(value: Any, path: tuple = ()) -> Iterator[tuple[list, Any]]:
    """``value`` and everything inside its lists, tuples and dicts, each with its path."""
    yield list(path), value
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            yield from walk(item, (*path, i))
    elif type(value) is dict:
        for key, item in value.items():
            yield from walk(item, (*path, key))


def is_dummy_hook(hook: Any) -> bool:
    """Whether ``hook`` only stands for a hook that the kernel's module holds."""
    return getattr(hook, "_bncourse_stand_in", False)


def _stand_in_hook(*args: Any) -> None:
    return None


_stand_in_hook._bncourse_stand_in = True  # type: ignore[attr-defined]


def hook_counts(module: nn.Module) -> list[int]:
    """Forward pre-hooks, forward hooks and backward (pre-)hooks that ``module`` itself holds,
    leaving out the stand-ins of the other side's hooks."""
    backward = [
        *module._backward_hooks.values(),
        *getattr(module, "_backward_pre_hooks", {}).values(),
    ]
    return [
        sum(not is_dummy_hook(h) for h in module._forward_pre_hooks.values()),
        sum(not is_dummy_hook(h) for h in module._forward_hooks.values()),
        sum(not is_dummy_hook(h) for h in backward),
    ]


_GLOBAL_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def global_hook_keys() -> list[set[int]]:
    """The keys of the global module hooks (forward pre, forward, backward, backward pre)."""
    module = nn.modules.module
    return [set(getattr(module, name, {})) for name in _GLOBAL_HOOKS]


def global_hooks_added(before: list[set[int]]) -> list[int]:
    """How many global module hooks of each kind were registered since ``before`` and remain."""
    return [len(now - old) for now, old in zip(global_hook_keys(), before, strict=True)]


def add_global_stand_ins(counts: Any) -> list[RemovableHandle]:
    """Register stand-ins for global module hooks that the other side's code left registered.

    Forward stand-ins do nothing when called; backward ones go in the table of (regular or
    full) backward hooks without choosing a kind, so torch never calls them and the forward
    pass is not wrapped. They are counted wherever the global hooks are counted. One stand-in
    of a kind is enough for a count taken around the call to differ, so a kernel claiming
    thousands cannot slow every later forward pass of the grader.
    """
    _expect(isinstance(counts, list) and len(counts) == 4, "bad global hook counts")
    _expect(all(isinstance(c, int) and 0 <= c < 10_000 for c in counts), "bad global hook count")
    module = nn.modules.module
    tables = [
        module._global_forward_pre_hooks,
        module._global_forward_hooks,
        module._global_backward_hooks,
        module._global_backward_hooks,
    ]
    handles = []
    for table, count in zip(tables, counts, strict=True):
        for _ in range(min(count, 1)):
            handle = RemovableHandle(table)
            table[handle.id] = _stand_in_hook
            handles.append(handle)
    return handles


@dataclass
class Encoder:
    """Turns a value into a JSON tree, collecting its tensors.

    ``opaque(value)`` is asked for a :class:`Handle` of any value that cannot travel as data (the
    kernel keeps it); without it such a value raises :class:`WireError`. ``references`` maps
    ``id(obj)`` of the call's arguments to their path, so that a result that *is* an argument
    (the same tensor or module) is sent as a reference to it. ``module_handle(module)`` gives
    the handle sent with every module (the kernel's way of finding it again).
    """

    opaque: Callable[[Any], Handle] | None = None
    references: dict[int, list] = field(default_factory=dict)
    module_handle: Callable[[nn.Module], int | None] = lambda m: None
    own_train: Callable[[nn.Module], Handle | None] = lambda m: None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def _tensor(self, t: torch.Tensor) -> str:
        key = f"t{len(self.tensors)}"
        self.tensors[key] = t.detach().to("cpu").contiguous().clone()
        return key

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("the value nests too deeply to be sent")
        ref = self.references.get(id(value))
        if ref is not None and not isinstance(value, (bool, int, float, str, type(None))):
            return {"$t": "ref", "path": ref}
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            return {"$t": "float", "v": "nan" if math.isnan(value) else str(value)}
        if isinstance(value, np.generic):
            return self.encode(value.item(), depth)
        if isinstance(value, torch.Tensor):
            if value.is_sparse or value.layout != torch.strided:
                raise WireError("sparse tensors cannot be sent")
            return {
                "$t": "tensor",
                "k": self._tensor(value),
                "grad": bool(value.requires_grad),
                "param": isinstance(value, nn.Parameter),
                "device": str(value.device),
            }
        if isinstance(value, np.ndarray) and value.dtype != object:
            return {
                "$t": "ndarray",
                "k": self._tensor(torch.from_numpy(np.ascontiguousarray(value))),
            }
        if isinstance(value, torch.dtype):
            return {"$t": "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"$t": "device", "v": str(value)}
        if isinstance(value, torch.Generator):
            return {
                "$t": "generator",
                "device": str(value.device),
                "state": self._tensor(value.get_state()),
            }
        if isinstance(value, Handle):
            return {"$t": "handle", "id": value.id, "type": value.type_name}
        if isinstance(value, nn.Module):
            return self.encode_module(value, depth)
        if type(value) in (list, tuple):
            items = [self.encode(v, depth + 1) for v in value]
            return items if type(value) is list else {"$t": "tuple", "v": items}
        if type(value) is dict and all(isinstance(k, (str, int)) for k in value):
            return {"$t": "dict", "v": [[k, self.encode(v, depth + 1)] for k, v in value.items()]}
        if self.opaque is not None:
            return self.encode(self.opaque(value), depth)
        raise WireError(f"a value of type {type(value).__name__} cannot be sent to the kernel")

    def encode_module(self, module: nn.Module, depth: int = 0) -> dict[str, Any]:
        name = _CLASS_NAMES.get(type(module))
        init = MODULE_CLASSES[name][1](module) if name else {}
        hooks = hook_counts(module)
        node = {
            "$t": "module",
            "cls": name,
            "name": type(module).__name__,
            "init": self.encode(init, depth + 1),
            "training": bool(module.training),
            "handle": self.module_handle(module),
            "hooks": hooks,
            "children": [
                [k, None if c is None else self.encode_module(c, depth + 1)]
                for k, c in module._modules.items()
            ],
            "params": [
                [k, None if p is None else self.encode(p, depth + 1)]
                for k, p in module._parameters.items()
            ],
            "buffers": [
                [k, None if b is None else self.encode(b, depth + 1)]
                for k, b in module._buffers.items()
            ],
            "persistent": [
                k for k in module._buffers if k not in module._non_persistent_buffers_set
            ],
        }
        own = self.own_train(module)
        if own is not None:
            node["train"] = self.encode(own, depth + 1)
        return node


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise WireError(f"malformed message: {what}")


def _decoded_init(node: dict[str, Any], decoder: Decoder, depth: int) -> dict[str, Any]:
    """A module node's constructor arguments, decoded and checked to be plain bounded values."""
    init = decoder.decode(node.get("init") or {"$t": "dict", "v": []}, depth + 1)
    _expect(isinstance(init, dict), "bad constructor arguments")
    _check_init(init)
    return init


def _check_init(init: Any) -> None:
    """Constructor arguments are plain values; numbers are bounded so nothing huge is built."""
    if isinstance(init, dict):
        for v in init.values():
            _check_init(v)
    elif isinstance(init, (list, tuple)):
        _expect(len(init) <= 8, "a constructor argument is too long")
        for v in init:
            _check_init(v)
    elif isinstance(init, bool) or init is None or isinstance(init, (float, str)):
        pass
    elif isinstance(init, int):
        _expect(-(2**31) < init < 2**31, "a constructor argument is out of range")
    else:
        raise WireError("malformed message: a constructor argument is not a plain value")


@dataclass
class Decoder:
    """Rebuilds values from a JSON tree and its tensors (see :class:`Encoder`).

    ``handle(node)`` turns a handle node into an object (the kernel looks its object up; the
    grader makes a stand-in); ``module_for(handle)`` gives the module a module node with a handle
    refers to, or None; ``device`` maps the sender's device names (the kernel may lack CUDA).
    ``arguments`` resolves ``ref`` nodes. ``own_train(module, handle)``, where given, makes the
    stand-in ``train`` method of a module whose node carries a handle of the kernel's ``train``.
    """

    tensors: dict[str, torch.Tensor]
    handle: Callable[[dict[str, Any]], Any] = lambda node: Handle(int(node["id"]), node["type"])
    module_for: Callable[[int], nn.Module | None] = lambda handle: None
    shell: Callable[[dict[str, Any]], nn.Module] | None = None
    arguments: Any = None
    device: Callable[[str], torch.device] = torch.device
    own_train: Callable[[nn.Module, Any], Callable[..., Any]] | None = None
    modules: int = 0
    """Module nodes decoded so far (at most :data:`MAX_MODULES`)."""
    hooks: int = 0
    """Stand-in hooks registered so far (at most :data:`MAX_HOOKS`)."""

    def _tensor(self, key: Any) -> torch.Tensor:
        _expect(isinstance(key, str) and key in self.tensors, "a tensor is missing")
        return self.tensors[key]

    def decode(self, node: Any, depth: int = 0) -> Any:
        _expect(depth <= MAX_DEPTH, "too deeply nested")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, depth + 1) for v in node]
        _expect(isinstance(node, dict) and isinstance(node.get("$t"), str), "an untagged object")
        kind = node["$t"]
        if kind == "float":
            _expect(node.get("v") in _NONFINITE, "a bad float")
            return _NONFINITE[node["v"]]
        if kind == "tuple":
            _expect(isinstance(node.get("v"), list), "a bad tuple")
            return tuple(self.decode(v, depth + 1) for v in node["v"])
        if kind == "dict":
            items = node.get("v")
            _expect(isinstance(items, list), "a bad dict")
            out = {}
            for item in items:
                _expect(isinstance(item, list) and len(item) == 2, "a bad dict item")
                _expect(isinstance(item[0], (str, int)), "a bad dict key")
                out[item[0]] = self.decode(item[1], depth + 1)
            return out
        if kind == "tensor":
            t = self._tensor(node.get("k")).to(self.device(str(node.get("device", "cpu"))))
            if node.get("param"):
                return nn.Parameter(t, requires_grad=bool(node.get("grad")))
            if node.get("grad") and (t.is_floating_point() or t.is_complex()):
                t.requires_grad_(True)
            return t
        if kind == "ndarray":
            return self._tensor(node.get("k")).numpy()
        if kind == "dtype":
            _expect(node.get("v") in _DTYPES, "an unknown dtype")
            return _DTYPES[node["v"]]
        if kind == "device":
            return self.device(str(node.get("v")))
        if kind == "generator":
            device = self.device(str(node.get("device", "cpu")))
            gen = torch.Generator(device=device)
            gen.set_state(self._tensor(node.get("state")))
            return gen
        if kind == "handle":
            _expect(isinstance(node.get("id"), int), "a bad handle")
            return self.handle(node)
        if kind == "ref":
            return self._resolve(node.get("path"))
        if kind == "module":
            return self.decode_module(node, depth)
        raise WireError(f"malformed message: unknown kind {kind!r}")

    def _resolve(self, path: Any) -> Any:
        _expect(isinstance(path, list), "a bad reference")
        value = self.arguments
        for step in path:
            try:
                value = value[step]
            except (KeyError, IndexError, TypeError):
                raise WireError("malformed message: a reference to no argument") from None
        return value

    def decode_module(self, node: dict[str, Any], depth: int = 0) -> nn.Module:
        """A module of an allowed class, rebuilt; or the one its handle names; or a shell."""
        _expect(node.get("$t") == "module", "not a module")
        handle = node.get("handle")
        existing = self.module_for(handle) if isinstance(handle, int) else None
        if existing is not None:
            apply_module_state(existing, node, self, depth)
            return existing
        name = node.get("cls")
        if name is not None:
            _expect(name in MODULE_CLASSES, f"module class {name!r} is not allowed")
            cls, _, takes_device = MODULE_CLASSES[name]
            init = _decoded_init(node, self, depth)
            try:
                module = cls(**init, **({"device": "meta"} if takes_device else {}))
            except (TypeError, ValueError) as error:
                raise WireError(f"malformed message: cannot build {name}: {error}") from None
        else:
            _expect(self.shell is not None, "a module of a class defined in the notebook")
            module = self.shell(node)
        apply_module_state(module, node, self, depth, fresh=True)
        return module


def apply_module_state(
    module: nn.Module, node: dict[str, Any], decoder: Decoder, depth: int = 0, fresh: bool = False
) -> None:
    """Give ``module`` the flags, tensors, children and hook counts that ``node`` describes.

    A child the ``decoder`` knows by its handle (on the kernel's side: an object the kernel
    holds) becomes that object. Any other child whose class matches the one under its name is
    updated in place: parameters, buffers, training flags and children, so that hooks on it (the
    grader's recorders) survive any number of calls; only a child of another class, or a stand-in
    of another object of the notebook, is replaced. ``fresh`` is for a module just built, whose
    tensors are all replaced.
    """
    _expect(depth <= MAX_DEPTH, "too deeply nested")
    decoder.modules += 1
    _expect(decoder.modules <= MAX_MODULES, f"more than {MAX_MODULES} modules")
    module.training = bool(node.get("training", True))
    if not fresh:
        _apply_settings(module, node, decoder, depth)
    if is_dummy_hook(vars(module).get("train")):
        del module.__dict__["train"]  # a stand-in of an earlier answer
    own = node.get("train")
    if own is not None and decoder.own_train is not None:
        _expect(isinstance(own, dict) and own.get("$t") == "handle", "a bad train method")
        stand_in = decoder.own_train(module, decoder.decode(own, depth + 1))
        stand_in._bncourse_stand_in = True
        module.__dict__["train"] = stand_in
    children = node.get("children") or []
    _expect(isinstance(children, list), "bad children")
    new_children: dict[str, nn.Module | None] = {}
    for item in children:
        _expect(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str), "a child")
        key, child = item
        old = module._modules.get(key)
        if child is None:
            new_children[key] = None
            continue
        _expect(isinstance(child, dict), "a child not a module")
        handle = child.get("handle")
        known = decoder.module_for(handle) if isinstance(handle, int) else None
        if known is None and _same_object(old, child):
            apply_module_state(old, child, decoder, depth + 1)
            new_children[key] = old
        else:
            new_children[key] = decoder.decode_module(child, depth + 1)
    module._modules.clear()
    module._modules.update(new_children)
    for slot, entries in (("_parameters", node.get("params")), ("_buffers", node.get("buffers"))):
        _expect(isinstance(entries, list), "bad tensors of a module")
        table = getattr(module, slot)
        keep: dict[str, Any] = {}
        for item in entries:
            _expect(
                isinstance(item, list) and len(item) == 2 and isinstance(item[0], str), "a slot"
            )
            key, value = item
            value = None if value is None else decoder.decode(value, depth + 1)
            _expect(value is None or isinstance(value, torch.Tensor), "a module slot not a tensor")
            old = table.get(key)
            if (
                not fresh
                and isinstance(old, torch.Tensor)
                and isinstance(value, torch.Tensor)
                and old.shape == value.shape
                and old.dtype == value.dtype
                and old.device == value.device
            ):
                with torch.no_grad():
                    old.copy_(value)
                if isinstance(old, nn.Parameter):  # frozen or unfrozen in the notebook
                    old.requires_grad_(value.requires_grad)
                keep[key] = old
            elif (
                slot == "_parameters" and value is not None and not isinstance(value, nn.Parameter)
            ):
                keep[key] = nn.Parameter(value, requires_grad=value.requires_grad)
            else:
                keep[key] = value
        table.clear()
        table.update(keep)
    persistent = node.get("persistent", list(module._buffers))
    _expect(isinstance(persistent, list), "bad persistent buffers")
    module._non_persistent_buffers_set = {k for k in module._buffers if k not in persistent}
    hooks = node.get("hooks") or [0, 0, 0]
    _expect(isinstance(hooks, list) and len(hooks) == 3, "bad hook counts")
    _expect(all(isinstance(h, int) and 0 <= h < 10_000 for h in hooks), "bad hook count")
    decoder.hooks += sum(hooks)
    _expect(decoder.hooks <= MAX_HOOKS, f"more than {MAX_HOOKS} hooks left on modules")
    for table, wanted in ((module._forward_pre_hooks, hooks[0]), (module._forward_hooks, hooks[1])):
        # The stand-ins on this side are exactly the other side's own hooks; this side's own
        # hooks (the grader's recorders, the notebook's hooks) are never counted twice.
        for key in [k for k, h in table.items() if is_dummy_hook(h)]:
            del table[key]
        for _ in range(wanted):
            if table is module._forward_pre_hooks:
                module.register_forward_pre_hook(_stand_in_hook)
            else:
                module.register_forward_hook(_stand_in_hook)
    for table in (module._backward_hooks, getattr(module, "_backward_pre_hooks", {})):
        for key in [k for k, h in table.items() if is_dummy_hook(h)]:
            del table[key]
    for _ in range(hooks[2]):
        # put in the table without choosing a kind of backward hook: torch never calls it, and
        # the module's forward pass is not wrapped as a full backward hook would wrap it
        handle = RemovableHandle(module._backward_hooks)
        module._backward_hooks[handle.id] = _stand_in_hook


def _apply_settings(module: nn.Module, node: dict[str, Any], decoder: Decoder, depth: int) -> None:
    """Give a module updated in place the settings (momentum, eps, p, ...) the other side set.

    Only the constructor arguments held as plain values are taken; sizes and other arguments
    that tensors or children stand for (``bias``, ``num_features``) stay as the tensors say.
    """
    name = node.get("cls")
    if name is None or _CLASS_NAMES.get(type(module)) != name:
        return
    init = _decoded_init(node, decoder, depth)
    for key, value in init.items():
        if key in _STRUCTURAL or not isinstance(key, str):
            continue
        current = getattr(module, key, _MISSING)
        if current is _MISSING or isinstance(current, (torch.Tensor, nn.Module)):
            continue
        setattr(module, key, value)


_MISSING = object()
#: Constructor arguments that fix the shapes of a module's tensors: never changed in place.
_STRUCTURAL = frozenset(
    {
        "num_features",
        "in_features",
        "out_features",
        "in1_features",
        "in2_features",
        "in_channels",
        "out_channels",
        "kernel_size",
        "groups",
        "bias",
        "affine",
        "track_running_stats",
        "normalized_shape",
        "elementwise_affine",
        "num_groups",
        "num_channels",
        "num_embeddings",
        "embedding_dim",
        "input_size",
        "hidden_size",
        "num_layers",
    }
)


def node_flags(node: Any, prefix: str = "", depth: int = 0) -> tuple[dict, dict]:
    """The train/eval flags of a module node and its children, and its parameters'
    ``requires_grad`` flags, by their names in the module (as ``named_modules`` gives them)."""
    _expect(depth <= MAX_DEPTH, "too deeply nested")
    _expect(isinstance(node, dict) and node.get("$t") == "module", "not a module")
    modes = {prefix: bool(node.get("training", True))}
    grads: dict[str, bool] = {}
    dot = f"{prefix}." if prefix else ""
    for item in node.get("params") or []:
        _expect(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str), "a slot")
        if isinstance(item[1], dict):
            grads[dot + item[0]] = bool(item[1].get("grad"))
    for item in node.get("children") or []:
        _expect(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str), "a child")
        if item[1] is not None:
            child_modes, child_grads = node_flags(item[1], dot + item[0], depth + 1)
            modes.update(child_modes)
            grads.update(child_grads)
    return modes, grads


def _same_object(module: nn.Module | None, node: dict[str, Any]) -> bool:
    """Whether ``node`` may update ``module`` in place: same class, and for a stand-in of an
    object of the notebook (it carries that object's handle), the same object."""
    if module is None or not _same_class(module, node):
        return False
    mine = getattr(module, "_bncourse_handle", None)
    return mine is None or mine == node.get("handle")


def _same_class(module: nn.Module, node: dict[str, Any]) -> bool:
    name = node.get("cls")
    if name is None:
        return getattr(module, "_bncourse_type_name", None) == node.get("name")
    return _CLASS_NAMES.get(type(module)) == name


def write_message(folder: Path, name: str, tree: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``name.json`` and ``name.safetensors`` in ``folder``."""
    folder = Path(folder)
    (folder / f"{name}.safetensors").write_bytes(save_tensors(tensors) if tensors else b"")
    (folder / f"{name}.json").write_text(json.dumps(tree, allow_nan=False))


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file that is no link and no larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise WireError(f"the kernel wrote no {path.name}") from None
    except OSError as error:
        raise WireError(f"{path.name} cannot be read ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WireError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise WireError(f"{path.name} is larger than {limit} bytes")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 2**20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise WireError(f"{path.name} is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def read_message(folder: Path, name: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Read what :func:`write_message` wrote, refusing links, odd files and oversized parts."""
    folder = Path(folder)
    raw = _read_regular(folder / f"{name}.json", MAX_JSON_BYTES)
    blob = _read_regular(folder / f"{name}.safetensors", MAX_TENSOR_BYTES)
    try:
        tree = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WireError(f"{name}.json is not valid JSON") from None
    try:
        tensors = load_tensors(blob) if blob else {}
    except Exception:
        raise WireError(f"{name}.safetensors is not a valid tensor file") from None
    return tree, tensors
