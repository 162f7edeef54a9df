"""Checks of ps06_bn_in_practice: every catalogued mistake is caught and named, sound variants pass.

Each mutant of the catalogue (a reference with one mistake switched on) plays the student; it must
fail every check of its function with a message naming its misconception. The references agree
with torch's own folding and group norm; alternative correct implementations pass; delegating to
torch's fusion routines, its group norm or the checks' own reference is refused.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fusion

from bncourse import grading
from bncourse.grading import CATALOGUE, CheckFailure
from bncourse.grading.practice import (
    draw_fold_cases,
    draw_freeze_cases,
    draw_group_norm_cases,
    fold_variant,
    freeze_variant,
    group_norm_variant,
)

SEEDS = (0, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only contend with each other on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VARIANTS = {
    "fold_batchnorm": fold_variant,
    "freeze_batchnorm": freeze_variant,
    "group_norm": group_norm_variant,
}
CHECKS = {
    "fold_batchnorm": {
        "linear": functools.partial(grading.check_fold_batchnorm, device="cpu"),
        "conv": functools.partial(grading.check_fold_batchnorm, layout="conv", device="cpu"),
    },
    "freeze_batchnorm": {
        "dense": functools.partial(grading.check_freeze_batchnorm, device="cpu"),
        "conv": functools.partial(grading.check_freeze_batchnorm, layout="conv", device="cpu"),
    },
    "group_norm": {
        "float32": functools.partial(grading.check_group_norm, device="cpu"),
        "float64": functools.partial(grading.check_group_norm, dtype=torch.float64, device="cpu"),
    },
}


def _mutants():
    """(misconception, task, flags) for every catalogued mutant of this exercise's tasks."""
    for name, misconception in CATALOGUE.items():
        for task, flag_sets in misconception.mutants.items():
            if task in VARIANTS:
                for flags in flag_sets:
                    yield name, task, flags


MUTANTS = list(_mutants())
# Mistakes that are right on some layouts: freezing only BatchNorm2d is right on a conv net.
RIGHT_ON = {"bn-only-2d-frozen": ("conv",)}


def _named(message: str) -> set[str]:
    return {
        m.name for m in CATALOGUE.values() if f"Misconception: {m.title} [{m.name}]." in message
    }


def test_the_exercise_has_mutants_for_every_function():
    assert {task for _, task, _ in MUTANTS} == set(VARIANTS)


@pytest.mark.parametrize(
    ("name", "task", "flags"), MUTANTS, ids=[f"{n}-{t}" for n, t, _ in MUTANTS]
)
def test_each_mistake_fails_every_check_of_its_function_and_is_named(name, task, flags):
    student = functools.partial(VARIANTS[task], **flags)
    for layout, check in CHECKS[task].items():
        for seed in SEEDS:
            if layout in RIGHT_ON.get(name, ()):
                check(student, seed=seed)  # the mistake does not show on these networks
                continue
            with pytest.raises(CheckFailure) as failure:
                check(student, seed=seed)
            message = str(failure.value)
            assert _named(message) == {name}, message
            assert CATALOGUE[name].feedback in message
            assert CATALOGUE[name].link in message
            assert "tensor(" not in message


def test_checks_pass_the_references_with_seeds_drawn_now(capsys):
    for task, checks in CHECKS.items():
        for check in checks.values():
            check(VARIANTS[task])
    assert capsys.readouterr().out.count("matches the reference") == sum(map(len, CHECKS.values()))


# --- the references against torch ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["linear", "conv"])
def test_folding_reference_is_torchs_fusion(layout):
    for case in draw_fold_cases(3, layout, "cpu", torch.float64):
        fuse = fusion.fuse_linear_bn_weights if layout == "linear" else fusion.fuse_conv_bn_weights
        args = (case.running_mean, case.running_var, case.eps, case.gamma, case.beta)
        want_w, want_b = fuse(case.weight, case.bias, *args)
        got_w, got_b = fold_variant(case.weight, case.bias, *args[:2], *args[3:], case.eps)
        torch.testing.assert_close(got_w, want_w.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_b, want_b.detach(), rtol=1e-12, atol=1e-12)


def test_folded_layer_computes_the_layer_then_batch_norm_in_evaluation_mode():
    gen = torch.Generator().manual_seed(4)
    for case in draw_fold_cases(4, "conv", "cpu", torch.float64):
        w, b = fold_variant(
            case.weight,
            case.bias,
            case.running_mean,
            case.running_var,
            case.gamma,
            case.beta,
            case.eps,
        )
        x = torch.randn(2, case.weight.shape[1], 5, 5, generator=gen, dtype=torch.float64)
        pad = case.weight.shape[-1] // 2
        z = F.conv2d(x, case.weight, case.bias, padding=pad)
        bn = F.batch_norm(
            z, case.running_mean, case.running_var, case.gamma, case.beta, False, 0.0, case.eps
        )
        torch.testing.assert_close(F.conv2d(x, w, b, padding=pad), bn, rtol=1e-10, atol=1e-10)


def test_group_norm_reference_is_torchs_and_batch_independent():
    for case in draw_group_norm_cases(5, "cpu", torch.float64):
        args = (case.num_groups, case.gamma, case.beta, case.eps)
        ours = group_norm_variant(case.x, *args)
        want = F.group_norm(case.x, case.num_groups, case.gamma, case.beta, case.eps)
        torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(group_norm_variant(case.x[:1], *args), ours[:1])


def test_eps_changes_the_result_far_beyond_rounding():
    """eps = 0.1 against variances from 0.02: leaving it out shows in both functions."""
    gaps = [
        float((group_norm_variant(*args, c.eps) - group_norm_variant(*args, 0.0)).abs().max())
        for c in draw_group_norm_cases(6, "cpu", torch.float64)
        if c.eps >= 0.05
        for args in [(c.x, c.num_groups, c.gamma, c.beta)]
    ]
    assert gaps and max(gaps) > 1e-2
    for layout in ("linear", "conv"):
        cases = [c for c in draw_fold_cases(6, layout, "cpu", torch.float64) if c.eps >= 0.05]
        assert cases and min(float(c.running_var.min()) for c in cases) < 0.5


def test_freeze_reference_keeps_batch_norm_frozen_after_model_train():
    case = draw_freeze_cases(0, "dense", "cpu")[0]
    model = copy.deepcopy(case.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_variant(model)
    model.train()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bn and all(not m.training for m in bn)
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout))
    x, y = case.batches[0]
    F.cross_entropy(model(x), y).backward()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for m in bn for p in m.parameters())
    assert model[0].weight.grad is not None


# --- sound implementations written differently ---------------------------------------------------


def fold_with_rsqrt(weight, bias, running_mean, running_var, gamma, beta, eps):
    inv_std = torch.rsqrt(running_var + eps)
    folded_bias = beta - gamma * running_mean * inv_std
    if bias is not None:
        folded_bias = folded_bias + gamma * inv_std * bias
    return (gamma * inv_std).view(-1, *([1] * (weight.dim() - 1))) * weight, folded_bias


def fold_channel_by_channel(weight, bias, running_mean, running_var, gamma, beta, eps):
    rows, biases = [], []
    for o in range(weight.shape[0]):
        s = gamma[o] / torch.sqrt(running_var[o] + eps)
        rows.append(weight[o] * s)
        biases.append(((0 if bias is None else bias[o]) - running_mean[o]) * s + beta[o])
    return torch.stack(rows), torch.stack(biases)


def freeze_by_overriding_the_model_train(model):
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in bns:
        bn.weight.requires_grad = False
        bn.bias.requires_grad = False

    def train(mode=True):
        nn.Module.train(model, mode)
        for bn in bns:
            bn.eval()
        return model

    model.train = train
    model.train(model.training)


class _AlwaysEval:
    def train(self, mode=True):
        return nn.Module.train(self, False)


def freeze_by_swapping_classes(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.__class__ = type("Frozen" + type(m).__name__, (_AlwaysEval, type(m)), {})
            m.requires_grad_(False)
            m.eval()


class _FrozenBN(nn.Module):
    def __init__(self, bn):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach().clone())
        self.eps = bn.eps

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return (x - self.running_mean.view(shape)) * scale.view(shape) + self.bias.view(shape)


def freeze_by_replacing_modules(model):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, _FrozenBN(child))


def group_norm_with_var_mean(x, num_groups, gamma, beta, eps):
    n, c = x.shape[:2]
    per_group = x.reshape(n * num_groups, -1)
    var, mean = torch.var_mean(per_group, dim=1, correction=0, keepdim=True)
    normed = ((per_group - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (c,) + (1,) * (x.dim() - 2)
    return torch.addcmul(beta.reshape(shape), normed, gamma.reshape(shape))


def group_norm_group_by_group(x, num_groups, gamma, beta, eps):
    c = x.shape[1]
    size = c // num_groups
    dims = tuple(range(1, x.dim()))
    parts = []
    for g in range(num_groups):
        part = x[:, g * size : (g + 1) * size]
        mean = part.mean(dim=dims, keepdim=True)
        var = ((part - mean) ** 2).mean(dim=dims, keepdim=True)
        parts.append((part - mean) / torch.sqrt(var + eps))
    shape = (1, c) + (1,) * (x.dim() - 2)
    return torch.cat(parts, dim=1) * gamma.view(shape) + beta.view(shape)


ALTERNATIVES = {
    "fold_batchnorm": [fold_with_rsqrt, fold_channel_by_channel],
    "freeze_batchnorm": [
        freeze_by_overriding_the_model_train,
        freeze_by_swapping_classes,
        freeze_by_replacing_modules,
    ],
    "group_norm": [group_norm_with_var_mean, group_norm_group_by_group],
}


@pytest.mark.parametrize(
    ("task", "student"),
    [(t, f) for t, fs in ALTERNATIVES.items() for f in fs],
    ids=[f.__name__ for fs in ALTERNATIVES.values() for f in fs],
)
def test_alternative_implementations_pass(task, student):
    for check in CHECKS[task].values():
        for seed in SEEDS:
            check(student, seed=seed)


def test_references_and_alternatives_pass_on_every_device(device):
    for task, checks in CHECKS.items():
        for check in checks.values():
            for student in [VARIANTS[task], *ALTERNATIVES[task]]:
                check(student, seed=7, device=device)


# --- delegating ------------------------------------------------------------------------------------


def fold_with_torchs_fusion(weight, bias, running_mean, running_var, gamma, beta, eps):
    fuse = fusion.fuse_linear_bn_weights if weight.dim() == 2 else fusion.fuse_conv_bn_weights
    w, b = fuse(weight, bias, running_mean, running_var, eps, gamma, beta)
    return w.detach(), b.detach()


def group_norm_with_torch(x, num_groups, gamma, beta, eps):
    return F.group_norm(x, num_groups, gamma, beta, eps)


def group_norm_with_aten(x, num_groups, gamma, beta, eps):
    n, c = x.shape[:2]
    return torch.ops.aten.native_group_norm(x, gamma, beta, n, c, x[0, 0].numel(), num_groups, eps)[
        0
    ]


DELEGATING = [
    ("fold_batchnorm", fold_with_torchs_fusion, "torch.nn.utils.fusion.fuse_"),
    ("group_norm", group_norm_with_torch, "torch.nn.functional.group_norm"),
    ("group_norm", group_norm_with_aten, "torch.ops.aten.native_group_norm"),
]


@pytest.mark.parametrize(
    ("task", "student", "called"), DELEGATING, ids=[d[1].__name__ for d in DELEGATING]
)
def test_delegating_to_torch_fails_every_check(task, student, called):
    for check in CHECKS[task].values():
        with pytest.raises(CheckFailure, match=f"called {called}"):
            check(student, seed=0)


def test_the_checks_never_modify_the_cases_they_hand_over():
    from bncourse.grading.practice import FOLD, FREEZE

    case = draw_fold_cases(0, "linear", "cpu")[0]
    before = case.weight.clone()
    result = FOLD.run(functools.partial(fold_variant, in_place=True), case)
    assert not result["inputs_unchanged"] and torch.equal(case.weight, before)
    case = draw_freeze_cases(0, "dense", "cpu")[0]
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    FREEZE.run(freeze_variant, case)
    assert all(torch.equal(v, before[k]) for k, v in case.model.state_dict().items())
    assert all(m.training for m in case.model.modules())


# --- evading the guard from notebook code ----------------------------------------------------------


def _from_a_cell(source: str, name: str, **names):
    """The function ``name`` defined by ``source`` compiled as a notebook cell is."""
    namespace = {"torch": torch, "F": F, "nn": nn, **names}
    exec(compile(source, "<cell>", "exec"), namespace)
    return namespace[name]


EVADING = [
    (
        "group_norm",
        "def group_norm(x, num_groups, gamma, beta, eps):\n"
        "    with torch._C.DisableTorchFunction():\n"
        "        return torch.group_norm(x, num_groups, gamma, beta, eps)\n",
        "called torch._C.DisableTorchFunction, which turns off torch-function handling",
    ),
    (
        "group_norm",
        "def group_norm(x, num_groups, gamma, beta, eps):\n"
        "    with torch._C.DisableTorchFunctionSubclass():\n"
        "        return torch.group_norm(x, num_groups, gamma, beta, eps)\n",
        "called torch._C.DisableTorchFunctionSubclass, which turns off",
    ),
    (
        "group_norm",
        "def group_norm(x, num_groups, gamma, beta, eps):\n"
        "    n, c = x.shape[:2]\n"
        "    g = x.reshape(n, num_groups, -1)\n"
        "    y = F.layer_norm(g, g.shape[-1:], eps=eps).reshape(x.shape)\n"
        "    shape = (1, c) + (1,) * (x.dim() - 2)\n"
        "    return y * gamma.reshape(shape) + beta.reshape(shape)\n",
        "called torch.nn.functional.layer_norm",
    ),
    (
        "group_norm",
        "def group_norm(x, num_groups, gamma, beta, eps):\n"
        "    return variant(x, num_groups, gamma, beta, eps)\n",
        "called bncourse.grading.practice.group_norm_variant",
    ),
    (
        "group_norm",
        "def group_norm(x, num_groups, gamma, beta, eps):\n    return std(x, eps, 'inside')\n",
        "called bncourse.grading.practice._std",
    ),
]


@pytest.mark.parametrize(("task", "source", "refusal"), EVADING, ids=range(len(EVADING)))
def test_notebook_code_evading_the_guard_fails_every_check(task, source, refusal):
    from bncourse.grading import practice

    student = _from_a_cell(source, task, variant=practice.group_norm_variant, std=practice._std)
    for check in CHECKS[task].values():
        with pytest.raises(CheckFailure, match=refusal):
            check(student, seed=0)


def test_the_checks_source_run_as_notebook_code_is_refused():
    """inspect.getsource of the checks' own implementations, exec'd in a copy of their module."""
    import inspect
    import textwrap

    from bncourse.grading import practice

    namespace = dict(vars(practice))
    for function in (practice.fold_variant, practice.group_norm_variant, practice.freeze_variant):
        source = textwrap.dedent(inspect.getsource(function))
        exec(compile(source, "<cell>", "exec"), namespace)
    for task, name in [
        ("fold_batchnorm", "fold_variant"),
        ("group_norm", "group_norm_variant"),
        ("freeze_batchnorm", "freeze_variant"),
    ]:
        student = _from_a_cell(
            f"def {task}(*args):\n    return copied(*args)\n", task, copied=namespace[name]
        )
        for check in CHECKS[task].values():
            with pytest.raises(CheckFailure, match=f"called bncourse.grading.practice.{name}"):
                check(student, seed=0)


def test_torch_internals_may_still_disable_torch_function_handling():
    """Operations on a tensor subclass (torch's own code enters DisableTorchFunctionSubclass)."""

    class Tagged(torch.Tensor):
        pass

    student = _from_a_cell(
        "def group_norm(x, num_groups, gamma, beta, eps):\n"
        "    n, c = x.shape[:2]\n"
        "    g = x.as_subclass(Tagged).reshape(n, num_groups, -1)\n"
        "    mean = g.mean(dim=2, keepdim=True)\n"
        "    var = ((g - mean) ** 2).mean(dim=2, keepdim=True)\n"
        "    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)\n"
        "    shape = (1, c) + (1,) * (x.dim() - 2)\n"
        "    y = y * gamma.reshape(shape) + beta.reshape(shape)\n"
        "    return y.as_subclass(torch.Tensor)\n",
        "group_norm",
        Tagged=Tagged,
    )
    for check in CHECKS["group_norm"].values():
        check(student, seed=0)
