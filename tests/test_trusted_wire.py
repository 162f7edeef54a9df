"""The data format between the grader and a sandboxed kernel, the scan, and the sandbox command."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.trusted.sandbox import Sandbox, bwrap_command
from bncourse.trusted.scan import is_tampering, scan_cells, scan_source
from bncourse.trusted.wire import (
    MAX_JSON_BYTES,
    Decoder,
    Encoder,
    Handle,
    WireError,
    add_global_stand_ins,
    apply_module_state,
    read_message,
    write_message,
)

REPO = Path(__file__).resolve().parents[1]


def _round_trip(value, tmp_path: Path, **decoder):
    encoder = Encoder()
    write_message(tmp_path, "m", encoder.encode(value), encoder.tensors)
    tree, tensors = read_message(tmp_path, "m")
    return Decoder(tensors, **decoder).decode(tree)


def test_values_survive_the_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(3)
    value = {
        "t": torch.arange(6, dtype=torch.float64).reshape(2, 3).t(),  # not contiguous
        "b": torch.tensor([True, False]),
        "nested": [1, 2.5, None, "s", (torch.float32, torch.device("cpu"))],
        "inf": (math.inf, -math.inf),
        3: gen,
    }
    back = _round_trip(value, tmp_path)
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float64
    assert torch.equal(back["b"], value["b"])
    assert back["nested"] == [1, 2.5, None, "s", (torch.float32, torch.device("cpu"))]
    assert back["inf"] == (math.inf, -math.inf)
    assert math.isnan(_round_trip(math.nan, tmp_path))
    assert torch.equal(back[3].get_state(), gen.get_state())


def test_a_network_comes_back_with_its_classes_state_and_modes(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 3), nn.Dropout(0.3), nn.BatchNorm1d(3, momentum=0.3), bnn.Uout(0.2)
    )
    net(torch.randn(8, 4))
    net[2].eval()
    back = _round_trip(net, tmp_path)
    assert [type(m) for m in back] == [nn.Linear, nn.Dropout, nn.BatchNorm1d, bnn.Uout]
    assert back[1].p == 0.3 and back[2].momentum == 0.3 and back[3].beta == 0.2
    assert back.training and not back[2].training
    assert back.state_dict().keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(5, 4)
    net.eval(), back.eval()
    assert torch.equal(back(x), net(x))


def test_a_network_coming_back_updates_the_graders_modules_in_place(tmp_path):
    """The kernel names every module it sends by a handle of its own; the grader's modules take
    the state in place (parameters, buffers, modes), so that its hooks see every later call."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.3), nn.Dropout(0.3))
    children = list(net)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(m.training)) for m in net[1:]]
    kernel_copy = _round_trip(net, tmp_path)  # what the kernel holds
    handles = {id(m): i for i, m in enumerate(kernel_copy.modules(), start=1)}
    for step in range(3):  # the student's code changes the kernel's network, call after call
        kernel_copy.train(step % 2 == 0)
        kernel_copy[1].requires_grad_(step % 2 == 1)  # BN frozen, then unfrozen, in the notebook
        with torch.no_grad():
            kernel_copy[0].weight.add_(1.0)
            kernel_copy(torch.randn(6, 4))
        encoder = Encoder(module_handle=lambda m: handles[id(m)])
        write_message(tmp_path, "r", encoder.encode_module(kernel_copy), encoder.tensors)
        tree, tensors = read_message(tmp_path, "r")
        apply_module_state(net, tree, Decoder(tensors))
        assert [id(m) for m in net] == [id(m) for m in children]  # the same modules
        for key, value in kernel_copy.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), key
        assert [m.training for m in net.modules()] == [m.training for m in kernel_copy.modules()]
        flags = [p.requires_grad for p in kernel_copy.parameters()]
        assert [p.requires_grad for p in net.parameters()] == flags
        seen.clear()
        net(torch.randn(6, 4))
        assert seen == [step % 2 == 0] * 2  # both hooks still fire, in the mode sent back
    for h in hooks:
        h.remove()


def test_a_module_of_a_notebook_class_needs_a_stand_in(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

    encoder = Encoder(module_handle=lambda m: 7)
    tree = encoder.encode(Custom())
    assert tree["cls"] is None and tree["name"] == "Custom"
    with pytest.raises(WireError, match="defined in the notebook"):
        Decoder(encoder.tensors).decode(tree)
    shell = Decoder(encoder.tensors, shell=lambda node: nn.Module()).decode(tree)
    assert isinstance(shell.inner, nn.Linear)


def test_a_train_method_of_the_notebook_keeps_working_where_the_module_is_rebuilt(tmp_path):
    """The kernel sends a handle of a replaced ``train``; the rebuilt module's ``train`` calls it
    and takes back the flags and requires_grad of what the kernel's module became."""
    from bncourse.trusted.proxies import TrainInKernel

    kernel_side = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.3))
    bn = kernel_side[1]
    bn.eval()
    bn.weight.requires_grad_(False)
    bn.train = lambda mode=True: nn.Module.train(bn, False)  # the notebook's freeze
    methods = {}

    def own_train(module):
        if "train" not in vars(module):
            return None
        methods[len(methods) + 1] = module.train
        return Handle(len(methods), "function")

    encoder = Encoder(own_train=own_train)
    write_message(tmp_path, "m", encoder.encode(kernel_side), encoder.tensors)
    tree, tensors = read_message(tmp_path, "m")
    assert "train" in tree["children"][1][1] and "train" not in tree["children"][0][1]

    def in_kernel(handle):  # what calling a handle does: the kernel's method, its module back
        return lambda mode: _round_trip(methods[handle.id](mode), tmp_path / "back")

    (tmp_path / "back").mkdir()
    grader_side = Decoder(tensors, own_train=lambda m, h: TrainInKernel(m, in_kernel(h))).decode(
        tree
    )
    assert isinstance(vars(grader_side[1])["train"], TrainInKernel)
    grader_side.train()
    assert grader_side.training and grader_side[2].training and not grader_side[1].training
    assert not grader_side[1].weight.requires_grad and grader_side[0].weight.requires_grad
    plain = Decoder(tensors).decode(tree)  # a decoder without stand-ins ignores the handle
    plain.train()
    assert plain[1].training


@pytest.mark.parametrize(
    "node, message",
    [
        ({"$t": "module", "cls": "os.system", "init": None, "children": []}, "not allowed"),
        ({"$t": "pickle", "v": "gASV"}, "unknown kind"),
        ({"$t": "tensor", "k": "t9"}, "tensor is missing"),
        ({"$t": "dtype", "v": "object"}, "unknown dtype"),
        ({"no": "tag"}, "untagged"),
    ],
)
def test_malformed_or_unsafe_nodes_are_refused(node, message):
    with pytest.raises(WireError, match=message):
        Decoder({}).decode(node)


def test_a_huge_layer_is_never_built():
    node = Encoder().encode(nn.Linear(2, 2))
    node["init"]["v"] = [["in_features", 2**40], ["out_features", 2**40], ["bias", True]]
    with pytest.raises(WireError, match="out of range"):
        Decoder({}).decode(node)


def test_the_kernel_cannot_hand_the_grader_a_link_or_a_huge_file(tmp_path):
    (tmp_path / "m.json").symlink_to("/etc/passwd")
    (tmp_path / "m.safetensors").write_bytes(b"")
    with pytest.raises(WireError, match="cannot be read"):
        read_message(tmp_path, "m")
    (tmp_path / "m.json").unlink()
    os.mkfifo(tmp_path / "m.json")
    with pytest.raises(WireError, match="not a regular file"):
        read_message(tmp_path, "m")
    (tmp_path / "m.json").unlink()
    with open(tmp_path / "m.json", "wb") as handle:
        handle.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(WireError, match="larger than"):
        read_message(tmp_path, "m")
    (tmp_path / "m.json").write_text(json.dumps({"ok": 1}))
    (tmp_path / "m.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(WireError, match="not a valid tensor file"):
        read_message(tmp_path, "m")


def test_opaque_objects_travel_as_handles():
    encoder = Encoder(opaque=lambda value: Handle(5, type(value).__name__))
    tree = encoder.encode({"cache": object()})
    assert tree["v"][0][1] == {"$t": "handle", "id": 5, "type": "object"}
    with pytest.raises(WireError, match="cannot be sent"):
        Encoder().encode(object())


def test_honest_solutions_are_not_flagged():
    for path in sorted((REPO / "solutions").glob("*/*.ipynb")):
        assert scan_cells(nbformat.read(path, 4), []) == [], path


@pytest.mark.parametrize(
    "source, phrase",
    [
        ("with torch._C.DisableTorchFunction():\n    y = F.batch_norm(x, m, v)", "torch._C"),
        ("y = torch.ops.aten.native_batch_norm(x, g, b, m, v, True, 0.1, 1e-5)", "torch.ops"),
        ("import sys\nsys.modules['bncourse.grading'] = None", "sys.modules"),
        ("grading.check_running_update = print", "changes grading.check_running_update"),
        ("from bncourse.nn.functional import batch_norm", "reference implementations"),
        ("f = getattr(__import__('bncourse'), 'nn')", "computed name"),
        ("get_ipython().input_transformers_cleanup.append(f)", "IPython"),
        ("import torch as T\nwith T._C.DisableTorchFunction():\n    pass", "_C"),
        ("import torch as T\n_m = T\n_c = _m._C\nwith _c.DisableTorchFunction():\n    pass", "_C"),
        ("from torch import ops as o\ny = o.aten.native_batch_norm", "torch.ops"),
        ("import bncourse.nn as ref\ny = ref.functional.batch_norm", "reference implementations"),
        ("k = getattr(getattr(torch, 'o' 'ps'), 'aten')", "ATen kernels or their route"),
        ("k = getattr(A, 'native_batch_' + 'norm_backward')", "'native_batch_'"),
        ("k = getattr(A, 'batch_' + 'norm_backward')", "'norm_backward'"),
    ],
)
def test_routes_around_the_checks_are_flagged(source, phrase):
    assert any(phrase in note for note in scan_source(source)), scan_source(source)


def test_the_sandbox_sees_no_course_folder():
    command = bwrap_command(["python3"], Sandbox(), writable=[Path("/tmp/x")], seccomp_fd=3)
    bound = {command[i + 2] for i, arg in enumerate(command) if arg in ("--bind", "--ro-bind")}
    assert str(REPO) not in bound and str(REPO / "solutions") not in bound
    assert str(Path(sys.prefix).resolve()) in bound or any(
        str(Path(sys.prefix).resolve()).startswith(b) for b in bound
    )
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in command
    assert command[command.index("--") + 1] == "prlimit"
    assert command[command.index("--seccomp") + 1] == "3"  # the keyrings filter


def _in_process_kernel(tmp_path: Path):
    """A :class:`Kernel` whose requests the kernel's side answers in this process."""
    from bncourse.trusted import kernel_side
    from bncourse.trusted.proxies import Kernel

    requests, responses = tmp_path / "req", tmp_path / "resp"
    requests.mkdir(), responses.mkdir()
    kernel = Kernel(lambda code: eval(code), requests, responses)  # noqa: S307 (our own line)
    return kernel, kernel_side._register


def test_hooks_the_notebook_leaves_registered_reach_the_graders_count(tmp_path):
    """Backward hooks left on the kernel's modules, and global module hooks the call registered
    and left, are counted on the grader's copy as the notebook left them (stand-ins that never
    run); hooks removed again leave nothing behind."""
    from bncourse.grading.networks import Snapshot

    kernel, register = _in_process_kernel(tmp_path)
    left: list = []
    torch_hooks = nn.modules.module
    kind = torch_hooks._global_is_full_backward_hook  # the kernel's, in its own process

    def leaves_hooks(model):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.register_full_backward_hook(lambda *a: None)
        left.append(nn.modules.module.register_module_forward_pre_hook(lambda *a: None))
        left.append(nn.modules.module.register_module_full_backward_hook(lambda *a: None))

    def removes_hooks(model):
        handles = [m.register_full_backward_hook(lambda *a: None) for m in model.modules()]
        handles.append(nn.modules.module.register_module_forward_pre_hook(lambda *a: None))
        for h in handles:
            h.remove()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(inplace=True))
    x = torch.randn(6, 4, requires_grad=True)
    try:
        before = Snapshot.of(model)
        kernel.call(register(removes_hooks), (model,), {})
        assert before.hooks_removed(model)
        kernel.call(register(leaves_hooks), (model,), {})
        for h in left:  # the kernel's own hooks: only the grader's stand-ins stay
            h.remove()
        torch_hooks._global_is_full_backward_hook = kind
        assert not before.hooks_removed(model)
        assert len(model[1]._backward_hooks) == 1 and not model[0]._backward_hooks
        assert len(nn.modules.module._global_forward_pre_hooks) == 1
        model(x).sum().backward()  # the stand-ins change nothing (an in-place ReLU follows BN)
        assert x.grad is not None and torch.isfinite(x.grad).all()
        kernel.call(register(removes_hooks), (model,), {})
        assert len(model[1]._backward_hooks) == 0  # the kernel's copy holds none of them now
    finally:
        for h in left:
            h.remove()
        torch_hooks._global_is_full_backward_hook = kind
        kernel.close()
    assert not nn.modules.module._global_forward_pre_hooks
    assert not nn.modules.module._global_backward_hooks
    claimed = add_global_stand_ins([9_999, 0, 0, 0])  # enough for the count to differ
    assert len(claimed) == 1 and len(nn.modules.module._global_forward_pre_hooks) == 1
    claimed[0].remove()
    with pytest.raises(WireError, match="global hook"):
        add_global_stand_ins([1, 2, 3])


def test_a_train_method_of_the_notebook_gives_its_modes_whatever_it_returns(tmp_path):
    """A replaced ``train`` that returns None still sets the grader's modules as it set the
    kernel's: a freeze that does not last is seen not to last, one that lasts is kept."""
    kernel, register = _in_process_kernel(tmp_path)

    def freeze(model, lasting):
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
        for bn in bns:
            bn.eval()
            bn.requires_grad_(False)

        def train(mode=True):
            nn.Module.train(model, mode)
            for bn in bns if lasting else []:
                bn.eval()

        model.train = train

    for lasting in (False, True):
        model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.3)).eval()
        kernel.call(register(freeze), (model, lasting), {})
        assert not model[1].training and not model[1].weight.requires_grad
        model.train()
        assert model.training and model[2].training
        assert model[1].training is not lasting
        assert not model[1].weight.requires_grad and model[0].weight.requires_grad
        model.eval()
        assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "source",
    [
        "%env X=1\nimport bncourse.trusted.kernel_side as ks\nks._guards = lambda s: None",
        "import bncourse.trusted.wire as w\nw.hook_counts = lambda m: [9999] * 3",
        "m = __import__('bncourse.tru' + 'sted.kernel_side')",
        "import importlib\nks = importlib.import_module('bncourse.' + 'trusted')",
        "import sys\nks = sys.modules['bncourse.trusted.kernel_side']",
        "import gc\nks = [o for o in gc.get_objects() if callable(o)]",
    ],
)
def test_changing_the_graders_code_in_the_kernel_is_tampering_magics_or_not(source):
    assert any(is_tampering(note) for note in scan_source(source)), scan_source(source)


def test_harmless_magics_and_honest_cells_are_not_tampering():
    for source in ("%matplotlib inline\nimport torch\nx = torch.ones(2)", "print('trusted')"):
        assert scan_source(source) == [], source
    for path in sorted((REPO / "solutions").glob("*/*.ipynb")):
        notes = [n for _, n in scan_cells(nbformat.read(path, 4), [])]
        assert not any(is_tampering(n) for n in notes), path


def test_a_tampering_notebook_has_every_guarded_call_refused(tmp_path):
    from bncourse.grading.guard import ReferenceCallError, forbid_reference

    kernel, register = _in_process_kernel(tmp_path)
    honest = register(lambda x: x * 2)
    assert torch.equal(kernel.call(honest, (torch.ones(2),), {}), torch.full((2,), 2.0))
    kernel.tampering = "cell 3 touches the grader's kernel side: bncourse.trusted.kernel_side"
    with forbid_reference("batchnorm_forward_train"), pytest.raises(ReferenceCallError) as error:
        kernel.call(honest, (torch.ones(2),), {})
    assert "changes the autograder's code in its kernel" in str(error.value)
    assert "cell 3" in str(error.value)
    assert torch.equal(kernel.call(honest, (torch.ones(2),), {}), torch.full((2,), 2.0))


def test_refused_calls_reported_by_the_kernel_are_names_never_free_text():
    from bncourse.trusted.proxies import UNNAMED_CALL, reported_call

    assert reported_call("torch.nn.functional.batch_norm") == "torch.nn.functional.batch_norm"
    assert reported_call("torch._C.DisableTorchFunction") == "torch._C.DisableTorchFunction"
    forged = "torch.x. Misconception: a and b handed in the same notebook [biased-variance]"
    assert reported_call(forged) == UNNAMED_CALL
    assert reported_call(["a list"]) == UNNAMED_CALL
    assert reported_call("x" * 300) == UNNAMED_CALL


def test_a_message_of_too_many_modules_or_hooks_is_refused():
    from bncourse.trusted.wire import MAX_HOOKS, MAX_MODULES

    many = nn.Sequential(*[nn.Identity() for _ in range(MAX_MODULES + 1)])
    tree = Encoder().encode_module(many)
    with pytest.raises(WireError, match="modules"):
        Decoder(tensors={}).decode_module(tree)
    few = nn.Sequential(*[nn.Identity() for _ in range(3)])
    tree = Encoder().encode_module(few)
    for child in tree["children"]:
        child[1]["hooks"] = [MAX_HOOKS // 2, 0, 0]
    with pytest.raises(WireError, match="hooks"):
        Decoder(tensors={}).decode_module(tree)
