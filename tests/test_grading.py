"""bncourse.grading: every catalogued mistake is caught and named, sound alternatives pass.

The checks draw their inputs from a seed; tests that need reproducibility pass fixed seeds, and a
few run with seeds drawn at grading time as the notebooks do.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bncourse.nn
from bncourse import grading
from bncourse.grading import CATALOGUE, CheckFailure, ReferenceCallError, forbid_reference
from bncourse.grading.batchnorm import (
    EVAL_SPECS,
    TRAIN,
    TRAIN_SPECS,
    batchnorm_eval_variant,
    batchnorm_train_variant,
    draw_cases,
)
from bncourse.grading.catalogue import book_link, book_url

SEEDS = (0, 1, 2)

TRAIN_CHECKS = {
    "train": grading.check_batchnorm_train,
    "running": grading.check_running_update,
    "conv": grading.check_conv_layout,
    "gradients": grading.check_batchnorm_gradients,
}
EVAL_CHECKS = {"eval": grading.check_batchnorm_eval}

# For every catalogued mutant: the checks that must fail and name it. Every other check of the
# task must pass: a mistake costs the points of exactly these checks.
EXPECTED_FAILURES = {
    ("stats-wrong-axes", "batch_only"): {"conv"},
    ("stats-wrong-axes", "per_sample"): {"train", "running", "conv", "gradients"},
    ("stats-wrong-axes", "spatial_only"): {"conv"},
    ("stats-wrong-axes", "all"): {"train", "running", "conv", "gradients"},
    ("stats-wrong-axes", "reshape"): {"conv"},
    ("eps-missing", "batchnorm_train"): {"train", "conv", "gradients"},
    ("eps-missing", "batchnorm_eval"): {"eval"},
    ("eps-outside-sqrt", "batchnorm_train"): {"train", "conv", "gradients"},
    ("eps-outside-sqrt", "batchnorm_eval"): {"eval"},
    ("biased-running-variance", "batchnorm_train"): {"running", "conv"},
    ("momentum-flipped", "batchnorm_train"): {"running", "conv"},
    ("keras-style-momentum", "batchnorm_train"): {"running", "conv"},
    ("running-stats-replaced", "replace"): {"running", "conv"},
    ("running-stats-replaced", "no_decay"): {"running", "conv"},
    ("running-stats-not-updated", "batchnorm_train"): {"running", "conv"},
    ("eval-uses-batch-statistics", "batch_biased"): {"eval"},
    ("eval-uses-batch-statistics", "batch_unbiased"): {"eval"},
    ("running-stats-updated-in-eval", "batchnorm_eval"): {"eval"},
    ("autograd-graph-cut", "cut"): {"gradients"},
    ("autograd-graph-cut", "detached_statistics"): {"gradients"},
    # The n - 1 variance normalises the batch; it then enters the running variance twice
    # ("unbiased") or, stored as it is, once ("biased", the buffers right).
    ("normalized-with-unbiased-variance", "unbiased"): {"train", "running", "conv", "gradients"},
    ("normalized-with-unbiased-variance", "biased"): {"train", "conv", "gradients"},
    ("bessel-factor-batch-size", "batchnorm_train"): {"conv"},
    ("momentum-hard-coded", "batchnorm_train"): {"running", "conv"},
    ("gamma-beta-swapped", "batchnorm_train"): {"train", "conv", "gradients"},
    ("gamma-beta-swapped", "batchnorm_eval"): {"eval"},
    # The output and the gradients are right; the caller's x is not what it passed.
    ("inputs-modified-in-place", "batchnorm_train"): {"train", "conv"},
    ("inputs-modified-in-place", "batchnorm_eval"): {"eval"},
}
# Where a check names more or other than the mutant's own misconception. A student whose
# statistics have no single value per channel cannot update (C,) buffers with them: the checks see
# buffers left alone, and say so.
NAMED_INSTEAD = {
    ("stats-wrong-axes", "per_sample", "running"): {"running-stats-not-updated"},
    ("stats-wrong-axes", "batch_only", "conv"): {"stats-wrong-axes", "running-stats-not-updated"},
}


def _mutants():
    """(misconception, label, task, flags) for every mutant of the batch-norm forward tasks.

    The mutants of other exercises' tasks are tested next to their checks.
    """
    for name, misconception in CATALOGUE.items():
        for task, flag_sets in misconception.mutants.items():
            if task not in ("batchnorm_train", "batchnorm_eval"):
                continue
            for flags in flag_sets:
                label = next(iter(flags.values())) if len(flag_sets) > 1 else task
                yield name, str(label), task, flags


MUTANTS = list(_mutants())


def _as_student(task: str, flags) -> object:
    variant = batchnorm_train_variant if task == "batchnorm_train" else batchnorm_eval_variant
    return functools.partial(variant, **flags)


def _named(message: str) -> set[str]:
    return {
        m.name for m in CATALOGUE.values() if f"Misconception: {m.title} [{m.name}]." in message
    }


def test_expectations_cover_the_whole_catalogue():
    assert {(name, label) for name, label, _, _ in MUTANTS} == set(EXPECTED_FAILURES)


# A student who normalises a batch of one with its unbiased variance triggers torch's warning.
@pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")
@pytest.mark.parametrize(
    ("name", "label", "task", "flags"), MUTANTS, ids=[f"{n}-{lbl}" for n, lbl, _, _ in MUTANTS]
)
def test_each_catalogued_mistake_fails_exactly_its_checks_and_is_named(name, label, task, flags):
    student = _as_student(task, flags)
    checks = TRAIN_CHECKS if task == "batchnorm_train" else EVAL_CHECKS
    expected = EXPECTED_FAILURES[(name, label)]
    for check_name, check in checks.items():
        for seed in SEEDS:
            if check_name not in expected:
                if label == "spatial_only":  # reduces nothing on (N, C) input: not a function there
                    continue
                check(student, seed=seed)
                continue
            with pytest.raises(CheckFailure) as failure:
                check(student, seed=seed)
            named = _named(str(failure.value))
            assert named == NAMED_INSTEAD.get((name, label, check_name), {name}), str(failure.value)
            misconception = CATALOGUE[name]
            if name in named:
                assert misconception.feedback in str(failure.value)
                assert misconception.link in str(failure.value)


def test_two_mistakes_at_once_are_both_named():
    student = functools.partial(
        batchnorm_train_variant, running_var_kind="biased", eps_kind="missing"
    )
    with pytest.raises(CheckFailure) as failure:
        grading.check_conv_layout(student, seed=3)
    assert _named(str(failure.value)) == {"biased-running-variance", "eps-missing"}


@pytest.mark.parametrize(
    ("flags", "check", "names"),
    [
        (
            {"batch_var": "unbiased", "momentum_kind": "constant"},
            grading.check_running_update,
            {"normalized-with-unbiased-variance", "momentum-hard-coded"},
        ),
        (
            {"running_var_kind": "batch_size", "eps_kind": "missing"},
            grading.check_conv_layout,
            {"bessel-factor-batch-size", "eps-missing"},
        ),
        (
            {"affine": "swapped", "in_place": True},
            grading.check_batchnorm_train,
            {"gamma-beta-swapped", "inputs-modified-in-place"},
        ),
    ],
    ids=["unbiased+momentum", "bessel+eps", "swapped+in-place"],
)
def test_new_mistakes_are_named_in_pairs(flags, check, names):
    for seed in SEEDS:
        with pytest.raises(CheckFailure) as failure:
            check(functools.partial(batchnorm_train_variant, **flags), seed=seed)
        assert _named(str(failure.value)) == names, str(failure.value)


@pytest.mark.parametrize("seed", SEEDS)
def test_keras_update_is_named_as_one_convention_not_two_mistakes(seed):
    student = functools.partial(
        batchnorm_train_variant, running_var_kind="biased", momentum_kind="flipped"
    )
    with pytest.raises(CheckFailure) as failure:
        grading.check_running_update(student, seed=seed)
    assert _named(str(failure.value)) == {"keras-style-momentum"}


# --- sound implementations written differently from the reference -----------------------------


def _shape(x):
    return [1, -1] + [1] * (x.dim() - 2)


def train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps):
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    n = x.numel() // x.shape[1]
    running_mean.copy_((1 - momentum) * running_mean + momentum * mean.detach())
    running_var.copy_((1 - momentum) * running_var + momentum * var.detach() * n / (n - 1))
    s = _shape(x)
    return (x - mean.view(s)) * torch.rsqrt(var.view(s) + eps) * gamma.view(s) + beta.view(s)


def train_float64_internals(x, gamma, beta, running_mean, running_var, momentum, eps):
    xd = x.double()
    dims = [0, *range(2, x.dim())]
    mean, var = xd.mean(dims), xd.var(dims, unbiased=False)
    n = x.numel() // x.shape[1]
    with torch.no_grad():
        running_mean[:] = (1 - momentum) * running_mean.double() + momentum * mean
        running_var[:] = (1 - momentum) * running_var.double() + momentum * var * n / (n - 1)
    s = _shape(x)
    out = (xd - mean.view(s)) / (var.view(s) + eps).sqrt()
    return (out * gamma.double().view(s) + beta.double().view(s)).to(x.dtype)


def train_loop_over_channels(x, gamma, beta, running_mean, running_var, momentum, eps):
    outs = []
    for c in range(x.shape[1]):
        xc = x[:, c]
        n = xc.numel()
        mean = xc.sum() / n
        var = ((xc - mean) ** 2).sum() / n
        with torch.no_grad():
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = (1 - momentum) * running_var[c] + momentum * var * n / (n - 1)
        outs.append(gamma[c] * (xc - mean) / torch.sqrt(var + eps) + beta[c])
    return torch.stack(outs, dim=1)


def train_channels_last_moments(x, gamma, beta, running_mean, running_var, momentum, eps):
    """Channels moved last, then E[x^2] - E[x]^2 and an unbiased torch.var for the buffer."""
    c = x.shape[1]
    flat = x.movedim(1, -1).reshape(-1, c)
    mean = flat.mean(0)
    var = (flat**2).mean(0) - mean**2
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean)
        running_var.mul_(1 - momentum).add_(momentum * flat.var(0, unbiased=True))
    out = (flat - mean) / torch.sqrt(var + eps) * gamma + beta
    return out.reshape(x.movedim(1, -1).shape).movedim(-1, 1)


def eval_folded(x, gamma, beta, running_mean, running_var, eps):
    scale = gamma / torch.sqrt(running_var + eps)
    s = _shape(x)
    return x * scale.view(s) + (beta - running_mean * scale).view(s)


def eval_loop(x, gamma, beta, running_mean, running_var, eps):
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        out[:, c] = (x[:, c] - running_mean[c]) / (running_var[c] + eps) ** 0.5 * gamma[c] + beta[c]
    return out


ALTERNATIVES = [
    train_var_mean,
    train_float64_internals,
    train_loop_over_channels,
    train_channels_last_moments,
]


@pytest.mark.parametrize("student", ALTERNATIVES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("check", list(TRAIN_CHECKS.values()), ids=list(TRAIN_CHECKS))
def test_sound_training_implementations_pass(student, check):
    for seed in (*SEEDS, None):  # None: drawn when the check runs, as in the notebooks
        check(student, seed=seed)


@pytest.mark.parametrize("student", [eval_folded, eval_loop], ids=lambda f: f.__name__)
def test_sound_evaluation_implementations_pass(student):
    for seed in (*SEEDS, None):
        grading.check_batchnorm_eval(student, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checks_run_on_every_device_and_dtype(device, dtype):
    for check in TRAIN_CHECKS.values():
        check(train_var_mean, device=device, dtype=dtype)
    grading.check_batchnorm_eval(eval_folded, device=device, dtype=dtype)
    with pytest.raises(CheckFailure, match="biased running variance"):
        grading.check_running_update(
            functools.partial(batchnorm_train_variant, running_var_kind="biased"),
            device=device,
            dtype=dtype,
        )


# --- delegating to a reference ----------------------------------------------------------------


def delegate_functional(x, gamma, beta, running_mean, running_var, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, gamma, beta, True, momentum, eps)


def delegate_torch_batch_norm(x, gamma, beta, running_mean, running_var, momentum, eps):
    return torch.batch_norm(x, gamma, beta, running_mean, running_var, True, momentum, eps, False)


def delegate_module(x, gamma, beta, running_mean, running_var, momentum, eps):
    layer = torch.nn.BatchNorm1d(x.shape[1], eps=eps, momentum=momentum)
    return layer(x)


def delegate_aten(x, gamma, beta, running_mean, running_var, momentum, eps):
    out, _, _ = torch.ops.aten.native_batch_norm(
        x, gamma, beta, running_mean, running_var, True, momentum, eps
    )
    return out


def delegate_aten_by_computed_name(x, gamma, beta, running_mean, running_var, momentum, eps):
    # No forbidden name in sight: elementary ATen kernels, looked up by computed strings.
    aten = getattr(torch.ops, "at" + "en")
    mean = getattr(aten, "me" + "an").dim(x, [0], True)
    var = torch._ops.ops.aten.var.correction(x, [0], correction=0, keepdim=True)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean.reshape(-1))
        n = x.shape[0]
        running_var.mul_(1 - momentum).add_(momentum * var.reshape(-1) * n / (n - 1))
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


def delegate_layer_norm_trick(x, gamma, beta, running_mean, running_var, momentum, eps):
    out = F.layer_norm(x.t(), (x.shape[0],), eps=eps).t()
    return out * gamma + beta


def delegate_course_reference(x, gamma, beta, running_mean, running_var, momentum, eps):
    return bncourse.nn.functional.batch_norm(
        x, running_mean, running_var, gamma, beta, True, momentum, eps
    )


def delegate_course_module(x, gamma, beta, running_mean, running_var, momentum, eps):
    return bncourse.nn.BatchNorm1d(x.shape[1], eps=eps, momentum=momentum)(x)


def delegate_and_hide_the_error(x, gamma, beta, running_mean, running_var, momentum, eps):
    try:
        return delegate_functional(x, gamma, beta, running_mean, running_var, momentum, eps)
    except Exception:
        return train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps)


def delegate_and_raise_another_error(x, gamma, beta, running_mean, running_var, momentum, eps):
    try:
        return delegate_module(x, gamma, beta, running_mean, running_var, momentum, eps)
    except Exception as error:
        raise ValueError("no luck") from error


DELEGATES = [
    delegate_functional,
    delegate_torch_batch_norm,
    delegate_module,
    delegate_aten,
    delegate_aten_by_computed_name,
    delegate_layer_norm_trick,
    delegate_course_reference,
    delegate_course_module,
    delegate_and_hide_the_error,
    delegate_and_raise_another_error,
]


@pytest.mark.parametrize("student", DELEGATES, ids=lambda f: f.__name__)
def test_delegating_to_a_reference_fails_with_the_guard_message(student):
    for check in (grading.check_batchnorm_train, grading.check_running_update):
        with pytest.raises(CheckFailure, match="write the computation yourself") as failure:
            check(student)
        assert "batchnorm_forward_train called" in str(failure.value)


def test_delegating_evaluation_fails():
    def student(x, gamma, beta, running_mean, running_var, eps):
        return F.batch_norm(x, running_mean, running_var, gamma, beta, False, 0.1, eps)

    with pytest.raises(CheckFailure, match="torch.nn.functional.batch_norm"):
        grading.check_batchnorm_eval(student)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: F.dropout(x, 0.3),
        lambda x: torch.nn.Dropout(0.3)(x),
        lambda x: torch.dropout(x, 0.3, True),
        lambda x: F.instance_norm(x.unsqueeze(0)),
        lambda x: F.group_norm(x.unsqueeze(0), 1),
        lambda x: bncourse.nn.functional.dropout(x, 0.3),
        lambda x: bncourse.nn.Dropout(0.3)(x),
        lambda x: torch.ops.aten.mean.default(x),
        lambda x: getattr(torch.ops.aten, "native_batch_" + "norm_backward"),
    ],
    ids=[
        "F.dropout",
        "nn.Dropout",
        "torch.dropout",
        "instance_norm",
        "group_norm",
        "bn.dropout",
        "bn.Dropout",
        "aten.mean",
        "aten-by-computed-name",
    ],
)
def test_guard_refuses_other_references(call):
    x = torch.randn(4, 3)
    with (
        forbid_reference("student_fn") as guard,
        pytest.raises(ReferenceCallError, match="student_fn called"),
    ):
        result = call(x)
        if not isinstance(result, torch.Tensor):  # an operator looked up, now called
            result(x, x, None, None, None, x.mean(0), x.mean(0), True, 1e-5, [True] * 3)
    assert guard.violations


def test_guard_allows_elementary_operations_and_ends_with_its_block():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with forbid_reference() as guard:
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        out = (x - mean) / torch.sqrt(var + 1e-5)
        mask = torch.bernoulli(torch.full_like(x, 0.7))
        out = out * mask / 0.7
    assert not guard.violations
    # The reference works again outside the guard.
    bncourse.nn.functional.batch_norm(x, None, None, training=True)
    F.batch_norm(x, None, None, training=True)


# --- what the messages reveal -----------------------------------------------------------------

_FLOAT = re.compile(r"-?\d+\.\d+(?:e-?\d+)?|\d+e-?\d+")
_ALLOWED_FLOATS = {
    float(v)
    for _, momentum, eps in TRAIN_SPECS + EVAL_SPECS
    for v in (momentum, eps)
    if v is not None
} | {0.1, 0.9, 0.99}  # conventions quoted in the feedback text
# An uncatalogued mistake whose feedback states the submission's own factors: a relation between
# its values and the right ones, never an expected value.
_OUTPUT_FACTOR, _BUFFER_FACTOR = 1.001, 1.01


def _unknown_mistake(x, gamma, beta, running_mean, running_var, momentum, eps):
    out = train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps)
    running_var.mul_(_BUFFER_FACTOR)
    return out * _OUTPUT_FACTOR


def _patternless_mistake(x, gamma, beta, running_mean, running_var, momentum, eps):
    """Uncatalogued, and neither a scaling nor an offset of the right values."""
    out = train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps)
    running_var.add_(0.1 * running_var**2)
    return out + 0.01 * x**3


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (grading.check_conv_layout, _unknown_mistake),
        (grading.check_batchnorm_train, _unknown_mistake),
        (
            grading.check_running_update,
            _as_student("batchnorm_train", {"running_var_kind": "biased"}),
        ),
        (grading.check_batchnorm_eval, _as_student("batchnorm_eval", {"stats": "batch_biased"})),
    ],
    ids=["conv-unknown", "train-unknown", "running-biased", "eval-batch"],
)
def test_messages_contain_no_expected_value(check, student):
    with pytest.raises(CheckFailure) as failure:
        check(student, seed=11)
    message = str(failure.value)
    assert "tensor(" not in message
    allowed = _ALLOWED_FLOATS | {_OUTPUT_FACTOR, _BUFFER_FACTOR}
    assert {float(v) for v in _FLOAT.findall(message)} <= allowed, message
    assert "seed 11" in message


def test_unknown_scaling_is_described_with_its_factor():
    with pytest.raises(CheckFailure) as failure:
        grading.check_conv_layout(_unknown_mistake, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches" in message
    assert f"your output equals the correct one times about {_OUTPUT_FACTOR:g}" in message
    assert f"your running_var equals the correct one times about {_BUFFER_FACTOR:g}" in message
    assert f"Closest section of the book: {TRAIN.link()}" in message


def test_unknown_mistake_says_where_the_values_first_differ():
    with pytest.raises(CheckFailure) as failure:
        grading.check_conv_layout(_patternless_mistake, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches" in message
    assert "output differs in" in message and "the first at index (" in message
    assert "running_var differs in" in message
    # the output shows no simple relation; the buffers tell where to read
    assert f"Closest section of the book: {book_link('batchnorm', 'bn-running-stats')}" in message


def _beta_forgotten(x, gamma, beta, running_mean, running_var, momentum, eps):
    return train_var_mean(
        x, gamma, torch.zeros_like(beta), running_mean, running_var, momentum, eps
    )


def _affine_step_left_out(x, gamma, beta, running_mean, running_var, momentum, eps):
    ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
    return train_var_mean(x, ones, zeros, running_mean, running_var, momentum, eps)


def _division_by_zero(x, gamma, beta, running_mean, running_var, momentum, eps):
    return train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps) / 0.0


@pytest.mark.parametrize(
    ("student", "anchor"),
    [
        (_beta_forgotten, "bn-affine"),
        (_affine_step_left_out, "bn-affine"),
        (_unknown_mistake, "bn-axes"),  # a scaled output: the statistics of each channel
        (_division_by_zero, "bn-eps"),
    ],
    ids=["beta-forgotten", "affine-left-out", "scaled", "division-by-zero"],
)
def test_the_closest_section_follows_from_what_the_values_show(student, anchor):
    with pytest.raises(CheckFailure) as failure:
        grading.check_batchnorm_train(student, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches the output" in message
    assert f"Closest section of the book: {book_link('batchnorm', anchor)}\n" in message


def test_inputs_are_drawn_when_the_check_runs():
    seen = []

    def recorder(x, gamma, beta, running_mean, running_var, momentum, eps):
        seen.append(x.clone())
        return train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps)

    grading.check_batchnorm_train(recorder)
    first = list(seen)
    seen.clear()
    grading.check_batchnorm_train(recorder)
    assert not any(torch.equal(a, b) for a, b in zip(first, seen, strict=True))


def test_replaying_outputs_of_an_earlier_run_fails():
    cases = draw_cases(TRAIN_SPECS, seed=1234, device="cpu")
    recorded = {
        tuple(c.x.shape): train_var_mean(
            c.x, c.gamma, c.beta, c.running_mean.clone(), c.running_var.clone(), c.momentum, c.eps
        )
        for c in cases
    }

    def replay(x, gamma, beta, running_mean, running_var, momentum, eps):
        return recorded[tuple(x.shape)].to(x.device)

    grading.check_batchnorm_train(replay, seed=1234, device="cpu")  # same seed: replay "works"
    with pytest.raises(CheckFailure, match="No catalogued misconception matches"):
        grading.check_batchnorm_train(replay, seed=4321, device="cpu")


@pytest.mark.parametrize(
    ("student", "match"),
    [
        (lambda *a: (train_var_mean(*a), a[3], a[4]), "returned a tuple"),
        (lambda *a: None, "returned NoneType"),
        (lambda *a: train_var_mean(*a).double(), "returned torch.float64 for a torch.float32"),
        (lambda *a: train_var_mean(*a)[:1], "returned a tensor of shape"),
    ],
    ids=["tuple", "none", "dtype", "shape"],
)
def test_malformed_returns_get_a_clear_message(student, match):
    with pytest.raises(CheckFailure, match=match):
        grading.check_batchnorm_train(student)


def test_an_output_of_the_wrong_dtype_costs_the_output_checks_only():
    def float64_output(x, gamma, beta, running_mean, running_var, momentum, eps):
        return train_var_mean(x, gamma, beta, running_mean, running_var, momentum, eps).double()

    grading.check_running_update(float64_output, seed=4)  # the buffers are right
    for check in (grading.check_batchnorm_train, grading.check_conv_layout):
        with pytest.raises(CheckFailure, match="returned torch.float64 for a torch.float32"):
            check(float64_output, seed=4)


def centre_in_place(x, gamma, beta, running_mean, running_var, momentum, eps):
    """Right output and buffers, but the caller's x is centred, as ``x -= mean`` does."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
    n = x.numel() // x.shape[1]
    with torch.no_grad():
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * n / (n - 1), momentum)
    x -= mean.reshape(shape)
    return x / torch.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)


def scale_gamma_in_place(x, gamma, beta, running_mean, running_var, eps):
    shape = [1, -1] + [1] * (x.dim() - 2)
    scale = gamma.div_(torch.sqrt(running_var + eps)).reshape(shape)  # gamma overwritten
    return (x - running_mean.reshape(shape)) * scale + beta.reshape(shape)


def test_changing_the_callers_tensors_in_place_is_named():
    grading.check_running_update(centre_in_place, seed=6)
    for check in (grading.check_batchnorm_train, grading.check_conv_layout):
        with pytest.raises(CheckFailure) as failure:
            check(centre_in_place, seed=6)
        assert _named(str(failure.value)) == {"inputs-modified-in-place"}, str(failure.value)
        assert "(your function changed the caller's `x` in place)" in str(failure.value)
    with pytest.raises(CheckFailure) as failure:
        grading.check_batchnorm_eval(scale_gamma_in_place, seed=6)
    assert _named(str(failure.value)) == {"inputs-modified-in-place"}, str(failure.value)
    assert "(your function changed the caller's `gamma` in place)" in str(failure.value)
    assert "even where its results are right" in str(failure.value)  # why every part fails


def test_errors_in_student_code_propagate_with_the_input_described_and_a_book_link():
    def broken(x, *args):
        return x @ x  # (N, C) @ (N, C): a shape error in the student's code

    with pytest.raises(RuntimeError) as error:
        grading.check_batchnorm_train(broken)
    notes = "\n".join(error.value.__notes__)
    assert "input of shape" in notes
    assert f"Read more: {TRAIN.link()}" in notes


def test_an_unfinished_function_says_so_and_nothing_else():
    def unfinished(*args):
        raise NotImplementedError

    for check in (grading.check_batchnorm_train, grading.check_conv_layout):
        with pytest.raises(CheckFailure) as error:
            check(unfinished)
        assert str(error.value) == "batchnorm_forward_train is not implemented yet."
        assert not getattr(error.value, "__notes__", [])


def test_catalogue_entries_are_complete():
    for name, misconception in CATALOGUE.items():
        assert misconception.name == name
        assert misconception.mutants or misconception.signatures, name
        assert len(misconception.feedback) > 80, name
        path = misconception.link.removeprefix(book_url())  # absolute, into the published book
        assert re.fullmatch(r"book/[a-z0-9_-]+\.html#[a-z0-9-]+", path), name


def test_book_links_take_the_published_address(monkeypatch):
    monkeypatch.setenv("BNCOURSE_BOOK_URL", "https://example.org/course")
    link = CATALOGUE["biased-running-variance"].link
    assert link == "https://example.org/course/book/batchnorm.html#bn-unbiased-variance"


def test_every_feedback_links_a_section_of_the_book():
    root = Path(__file__).resolve().parents[1]
    for misconception in CATALOGUE.values():
        page = root / "book" / f"{misconception.page}.md"
        assert page.is_file(), misconception.name
        assert f"({misconception.anchor})=" in page.read_text(), (misconception.name, page)


def _decomposition_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    from torch._decomp import decompositions

    return decompositions.native_batch_norm(
        x, gamma, beta, running_mean, running_var, True, momentum, eps
    )[0]


def test_torchs_python_decompositions_are_refused():
    """torch._decomp / torch._refs compute batch norm in Python without torch.ops: refused too."""
    # named as the student called it, not by the decorator's wrapper that runs first
    called = r"called torch\._decomp\.decompositions\.native_batch_norm\. "
    with pytest.raises(CheckFailure, match=called) as failure:
        grading.check_batchnorm_train(_decomposition_train, seed=1)
    assert "wrappers" not in str(failure.value) and "<locals>" not in str(failure.value)
    with pytest.raises(CheckFailure, match=r"called torch\._"):
        grading.check_batchnorm_eval(
            lambda x, g, b, rm, rv, eps: _decomposition_train(
                x, g, b, rm.clone(), rv.clone(), 0, eps
            ),
            seed=1,
        )
