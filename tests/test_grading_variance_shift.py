"""Checks of ps04_variance_shift: every catalogued mistake is caught and named, sound variants pass.

Each mutant of the catalogue (a reference with one mistake switched on) plays the student; it must
fail exactly the checks listed for it, with a message naming its misconception, and pass all the
others. Alternative correct implementations pass everything; delegating to the course's own
implementation is refused. The grading references agree with those of :mod:`bncourse.lab`.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bncourse import grading, theory
from bncourse import nn as bnn
from bncourse.grading import CATALOGUE, CheckFailure
from bncourse.grading.networks import bn_modules
from bncourse.grading.placement import mlp_variant
from bncourse.grading.probe import draw_probe_cases, probe_variant
from bncourse.grading.recalibration import draw_recalibration_cases, recalibrate_variant
from bncourse.grading.variance_shift import variance_shift_variant

SEEDS = (0, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: intra-op threads only contend with each other on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VARIANTS = {
    "variance_shift": variance_shift_variant,
    "variance_probe": probe_variant,
    "bn_recalibration": recalibrate_variant,
    "mlp_placement": mlp_variant,
}
CHECKS = {
    "variance_shift": {
        "shift": grading.check_variance_shift,
        "shift_edge": functools.partial(grading.check_variance_shift, spec="edge"),
    },
    "variance_probe": {
        "values": grading.check_probe_values,
        "values_conv": functools.partial(grading.check_probe_values, layout="conv"),
        "side_effects": grading.check_probe_side_effects,
        "side_effects_conv": functools.partial(grading.check_probe_side_effects, layout="conv"),
    },
    "bn_recalibration": {
        "stats": grading.check_recalibration_stats,
        "stats_conv": functools.partial(grading.check_recalibration_stats, layout="conv"),
        "state": grading.check_recalibration_state,
        "state_conv": functools.partial(grading.check_recalibration_state, layout="conv"),
    },
    "mlp_placement": {
        "placement": grading.check_mlp_placement,
        "placement_more": functools.partial(grading.check_mlp_placement, more=True),
    },
}

# For every catalogued mutant of these tasks: the checks that must fail and name it.
EXPECTED_FAILURES = {
    ("shift-retain-drop-confused", "variance_shift"): {"shift", "shift_edge"},
    ("shift-mean-ignored", "variance_shift"): {"shift", "shift_edge"},
    ("shift-ratio-inverted", "variance_shift"): {"shift", "shift_edge"},
    ("shift-mean-square-not-subtracted", "variance_shift"): {"shift", "shift_edge"},
    ("shift-dropout-not-inverted", "variance_shift"): {"shift", "shift_edge"},
    ("probe-train-mode", "variance_probe"): {
        "values",
        "values_conv",
        "side_effects",
        "side_effects_conv",
    },
    ("probe-bn-output", "variance_probe"): {"values", "values_conv"},
    ("probe-variance-wrong-axes", "axes=all"): {"values", "values_conv"},
    ("probe-variance-wrong-axes", "axes=batch_only"): {"values_conv"},
    ("probe-biased-variance", "variance_probe"): {"values", "values_conv"},
    ("mode-not-restored", "variance_probe"): {"side_effects", "side_effects_conv"},
    ("mode-restored-wholesale", "restore=model_flag"): {"side_effects", "side_effects_conv"},
    ("mode-restored-wholesale", "restore=train"): {"side_effects", "side_effects_conv"},
    ("inputs-modified-in-place", "variance_probe"): {"side_effects", "side_effects_conv"},
    ("inputs-modified-in-place", "bn_recalibration"): {"state", "state_conv"},
    ("hooks-not-removed", "variance_probe"): {"side_effects", "side_effects_conv"},
    ("recal-dropout-on", "bn_recalibration"): {"stats", "stats_conv"},
    ("recal-stats-not-reset", "reset=False"): {"stats", "stats_conv"},
    ("recal-stats-not-reset", "reset=False,momentum=kept"): {"stats", "stats_conv"},
    ("recal-momentum-kept", "bn_recalibration"): {"stats", "stats_conv"},
    ("recal-bn-not-updated", "bn_recalibration"): {"stats", "stats_conv"},
    ("recal-left-in-training", "bn_recalibration"): {"state", "state_conv"},
    ("recal-momentum-not-restored", "momentum_after=none"): {"state", "state_conv"},
    ("recal-momentum-not-restored", "momentum_after=default"): {"state", "state_conv"},
    ("recal-last-batch-only", "bn_recalibration"): {"stats", "stats_conv"},
    ("dropout-before-bn", "mlp_placement"): {"placement", "placement_more"},
    ("dropout-through-weight-layer", "placement=before_weight"): {"placement", "placement_more"},
    ("dropout-through-weight-layer", "placement=every_block"): {"placement", "placement_more"},
    ("dropout-rate-as-keep", "mlp_placement"): {"placement", "placement_more"},
    ("dropout-removed", "mlp_placement"): {"placement", "placement_more"},
}


def _mutants():
    """(misconception, label, task, flags) for every catalogued mutant of this exercise's tasks."""
    for name, misconception in CATALOGUE.items():
        for task, flag_sets in misconception.mutants.items():
            if task not in VARIANTS:
                continue
            for flags in flag_sets:
                label = ",".join(f"{k}={v}" for k, v in flags.items())
                yield name, label if len(flag_sets) > 1 else task, task, flags


MUTANTS = list(_mutants())


def _named(message: str) -> set[str]:
    return {
        m.name for m in CATALOGUE.values() if f"Misconception: {m.title} [{m.name}]." in message
    }


def test_expectations_cover_the_exercise_catalogue():
    assert {(name, label) for name, label, _, _ in MUTANTS} == set(EXPECTED_FAILURES)


@pytest.mark.parametrize(
    ("name", "label", "task", "flags"), MUTANTS, ids=[f"{n}-{lbl}" for n, lbl, _, _ in MUTANTS]
)
def test_each_mistake_fails_exactly_its_checks_and_is_named(name, label, task, flags):
    student = functools.partial(VARIANTS[task], **flags)
    expected = EXPECTED_FAILURES[(name, label)]
    for check_name, check in CHECKS[task].items():
        for seed in SEEDS:
            if check_name not in expected:
                check(student, seed=seed, **_device_kw(task))
                continue
            with pytest.raises(CheckFailure) as failure:
                check(student, seed=seed, **_device_kw(task))
            message = str(failure.value)
            assert _named(message) == {name}, message
            assert CATALOGUE[name].feedback in message
            assert CATALOGUE[name].link in message
            assert "tensor(" not in message


def _device_kw(task: str) -> dict:
    return {} if task == "variance_shift" else {"device": "cpu"}


def test_checks_pass_the_references_with_seeds_drawn_now(capsys):
    for task, checks in CHECKS.items():
        for check in checks.values():
            check(VARIANTS[task])
    assert capsys.readouterr().out.count("matches the reference") == sum(map(len, CHECKS.values()))


def test_references_and_alternatives_pass_on_every_device(device):
    """The networks, inputs and students' runs live on ``device`` (CUDA where there is one)."""
    for task, checks in CHECKS.items():
        for check in checks.values():
            for student in [VARIANTS[task], *ALTERNATIVES[task]]:
                kwargs = {} if task == "variance_shift" else {"device": device}
                check(student, seed=7, **kwargs)


# --- sound implementations written differently -------------------------------------------------


def shift_second_moment(p, mean, var):
    second_moment = 1 / (1 - p)  # E[m^2] of the inverted-dropout multiplier
    var_train = second_moment * (mean**2 + var) - mean**2
    return var / var_train


def shift_float32_tensor(p, mean, var):
    p, mean, var = (torch.tensor(v, dtype=torch.float32) for v in (p, mean, var))
    keep = 1 - p
    return var * keep / (var + p * mean**2)


def probe_var_mean_in_chunks(model, x):
    """Chunks of 7 samples, float64 sums, torch.var_mean-free: sums of squares per channel."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums = [[0, 0.0, 0.0] for _ in bns]

    def hook(index):
        def record(module, args):
            z = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
            sums[index][0] += z.shape[1]
            sums[index][1] = sums[index][1] + z.sum(1)
            sums[index][2] = sums[index][2] + (z**2).sum(1)

        return record

    handles = [bn.register_forward_pre_hook(hook(i)) for i, bn in enumerate(bns)]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            for chunk in x.split(7):
                model(chunk)
    finally:
        for h in handles:
            h.remove()
        for m, t in was_training.items():
            m.train(t)
    out = []
    for bn, (n, s, s2) in zip(bns, sums, strict=True):
        var = (s2 - s**2 / n) / (n - 1)
        out.append((bn.running_var.mean().item(), var.mean().item()))
    return out


def probe_previous_module_outputs(model, x):
    """No BN hooks: walks the Sequential, keeping what enters each BN layer, in float32."""
    state = [(m, m.training) for m in model.modules()]
    model.eval()
    pairs = []
    with torch.no_grad():
        h = x
        for layer in model:
            if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
                flat = h.movedim(1, -1).reshape(-1, h.shape[1])
                var, _ = torch.var_mean(flat, dim=0)
                pairs.append((layer.running_var.mean(), var.mean()))
            h = layer(h)
    for m, training in state:
        m.train(training)
    return pairs


def probe_a_copy(model, x):
    """Hooks on a deep copy in evaluation mode: the caller's network is never touched."""
    frozen = copy.deepcopy(model).eval()
    bns = bn_modules(frozen)
    seen = {}
    handles = [
        bn.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0])) for bn in bns
    ]
    with torch.no_grad():
        frozen(x)
    for h in handles:
        h.remove()
    out = []
    for bn in bns:
        z = seen[bn].movedim(1, 0).flatten(1)
        out.append((float(bn.running_var.mean()), float(z.var(1).mean())))
    return out


def recal_precise(model, batches):
    """Exact statistics of all the data, layer by layer, in evaluation mode (PreciseBN-like)."""
    model.eval()
    x = torch.cat(list(batches))
    for bn in bn_modules(model):
        seen: list[torch.Tensor] = []
        handle = bn.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            model(x)
        handle.remove()
        z = seen[0].transpose(0, 1).reshape(bn.num_features, -1)
        with torch.no_grad():
            bn.running_mean.copy_(z.mean(1))
            bn.running_var.copy_(z.var(1))


def recal_momentum_one(model, batches):
    """fvcore's update_bn_stats: momentum 1 per batch, then the average of the batch statistics."""
    model.eval()
    bns = bn_modules(model)
    saved = [bn.momentum for bn in bns]
    totals = [(torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)) for bn in bns]
    for bn in bns:
        bn.momentum = 1.0
        bn.train()
    with torch.no_grad():
        for x in batches:
            model(x)
            for (m, v), bn in zip(totals, bns, strict=True):
                m += bn.running_mean
                v += bn.running_var
    for (m, v), bn, momentum in zip(totals, bns, saved, strict=True):
        bn.running_mean.copy_(m / len(batches))
        bn.running_var.copy_(v / len(batches))
        bn.momentum = momentum
    model.eval()


def recal_one_big_batch(model, batches):
    """All batches at once, with the buffers zeroed by hand instead of reset_running_stats()."""
    model.eval()
    momenta = {bn: bn.momentum for bn in bn_modules(model)}
    for bn in bn_modules(model):
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        model(torch.cat(list(batches)))
    for bn, momentum in momenta.items():
        bn.momentum = momentum
    model.eval()


class MlpWithFunctionalDropout(nn.Module):
    def __init__(self, in_features, num_classes, depth, width, p):
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norms = nn.ModuleList(bnn.BatchNorm1d(width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)
        self.p = p

    def forward(self, x):
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = torch.relu(norm(linear(x)))
        return self.head(F.dropout(x, self.p, training=self.training))


ALTERNATIVES = {
    "variance_shift": [shift_second_moment, shift_float32_tensor],
    "variance_probe": [probe_var_mean_in_chunks, probe_previous_module_outputs, probe_a_copy],
    "bn_recalibration": [recal_precise, recal_momentum_one, recal_one_big_batch],
    "mlp_placement": [MlpWithFunctionalDropout],
}


@pytest.mark.parametrize(
    ("task", "student"),
    [(t, f) for t, fs in ALTERNATIVES.items() for f in fs],
    ids=[f.__name__ for fs in ALTERNATIVES.values() for f in fs],
)
def test_alternative_implementations_pass(task, student):
    for check in CHECKS[task].values():
        for seed in SEEDS:
            check(student, seed=seed, **_device_kw(task))


# --- delegating to the course's own implementation -----------------------------------------------


def shift_from_theory(p, mean, var):
    return theory.dropout_shift(p, mean, var)


def probe_from_lab(model, x):
    from bncourse.lab.data import Dataset
    from bncourse.lab.probes import measure_variance_shift

    labels = torch.zeros(len(x), dtype=torch.long)
    data = Dataset("x", x, labels, x, labels, 2)
    return [(r.moving_var, r.real_var) for r in measure_variance_shift(model, data)]


def recal_from_lab(model, batches):
    from bncourse.lab.data import Dataset
    from bncourse.lab.recalibrate import recalibrate_bn

    x = torch.cat(list(batches))
    labels = torch.zeros(len(x), dtype=torch.long)
    recalibrate_bn(model, Dataset("x", x, labels, x, labels, 2), batch_size=len(batches[0]))


def placement_from_lab(in_features, num_classes, depth, width, p):
    from bncourse.lab.models import mlp

    return mlp(in_features, num_classes, depth=depth, width=width, placement="after_bn", p=p)


def recal_hiding_the_refusal(model, batches):
    try:
        recal_from_lab(model, batches)
    except AssertionError:
        recalibrate_variant(model, batches)


DELEGATING = [
    ("variance_shift", shift_from_theory, "bncourse.theory.dropout_shift"),
    ("variance_probe", probe_from_lab, "bncourse.lab.probes.measure_variance_shift"),
    ("bn_recalibration", recal_from_lab, "bncourse.lab.recalibrate.recalibrate_bn"),
    ("bn_recalibration", recal_hiding_the_refusal, "bncourse.lab.recalibrate.recalibrate_bn"),
    ("mlp_placement", placement_from_lab, "bncourse.lab.models.mlp"),
]


@pytest.mark.parametrize(
    ("task", "student", "called"), DELEGATING, ids=[d[1].__name__ for d in DELEGATING]
)
def test_delegating_to_the_course_implementation_fails_every_check(task, student, called):
    for check in CHECKS[task].values():
        with pytest.raises(CheckFailure, match=f"called {called}"):
            check(student, seed=0, **_device_kw(task))
    # The refusal does not outlive the check: the same function works outside it.
    assert theory.dropout_shift(0.3) == pytest.approx(0.7)


# --- the grading references agree with the lab's --------------------------------------------------


def test_reference_probe_agrees_with_the_lab_probe():
    for layout in ("dense", "conv"):
        for case in draw_probe_cases(3, layout, "cpu"):
            expected = probe_from_lab(case.model, case.x)
            got = probe_variant(case.model, case.x)
            torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-6, atol=0)


def test_reference_recalibration_agrees_with_the_lab_recalibration():
    import copy

    for layout in ("dense", "conv"):
        for case in draw_recalibration_cases(3, layout, "cpu"):
            ours, lab = copy.deepcopy(case.model), copy.deepcopy(case.model)
            recalibrate_variant(ours, case.batches)
            recal_from_lab(lab, case.batches)
            for a, b in zip(bn_modules(ours), bn_modules(lab), strict=True):
                torch.testing.assert_close(a.running_mean, b.running_mean)
                torch.testing.assert_close(a.running_var, b.running_var)
            assert not ours.training and not lab.training


def test_the_shift_reference_is_the_theory_in_the_drop_convention():
    assert variance_shift_variant(0.3, 0.0, 2.0) == pytest.approx(theory.dropout_shift(0.3))
    assert variance_shift_variant(0.3, 1.5, 0.7) == pytest.approx(
        theory.dropout_shift(0.3, 1.5, 0.7)
    )


# --- the guard's named reference modules ---------------------------------------------------------


def test_the_guard_refuses_calls_into_a_named_module_and_remembers_hidden_ones():
    import sys

    from bncourse.grading import ReferenceCallError, forbid_reference

    before = sys.getprofile()
    with forbid_reference("f", torch_layers=False, references=("bncourse.theory",)) as guard:
        with pytest.raises(ReferenceCallError, match="f called bncourse.theory.dropout_shift"):
            theory.dropout_shift(0.3)
        torch.nn.functional.dropout(torch.ones(3), 0.5)  # torch's layers are allowed here
    assert guard.violations == ["bncourse.theory.dropout_shift"]
    assert sys.getprofile() is before


def test_importing_a_named_module_inside_the_guard_is_no_call():
    import importlib

    from bncourse.grading import forbid_reference

    with forbid_reference("f", references=("bncourse.theory",)) as guard:
        importlib.reload(theory)  # runs the module's body: definitions, no call of its functions
    assert guard.violations == []
    assert theory.dropout_shift(0.3) == pytest.approx(0.7)


def test_the_guard_names_only_modules_of_the_course():
    from bncourse.grading import forbid_reference

    for name in ("torch.optim.swa_utils", "bncourse.no_such_module"):
        with pytest.raises(ValueError, match="references|no module"):
            with forbid_reference("f", references=(name,)):
                pass


def test_grading_does_not_import_the_lab():
    import subprocess
    import sys

    code = (
        "import sys, bncourse.grading; "
        "print(sorted(m for m in sys.modules if m.startswith('bncourse.lab')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the situations the checks hand over ----------------------------------------------------------


def test_probed_networks_arrive_in_training_evaluation_and_mixed_modes():
    """A single model.train(flag) restores none of the mixed arrivals; each layout has one."""
    from bncourse.grading.networks import describe_arrival

    for layout in ("dense", "conv"):
        modes = [describe_arrival(c.model) for c in draw_probe_cases(0, layout, "cpu")]
        assert "in training mode" in modes
        mixed = [m for m in modes if m not in ("in training mode", "in evaluation mode")]
        assert mixed, modes
    conv = [describe_arrival(c.model) for c in draw_probe_cases(0, "conv", "cpu")]
    assert "in evaluation mode" in conv


@pytest.mark.parametrize("layout", ["dense", "conv"])
def test_recalibrated_networks_have_momenta_no_default_would_restore(layout):
    for case in draw_recalibration_cases(4, layout, "cpu"):
        momenta = [bn.momentum for bn in bn_modules(case.model)]
        assert all(m is not None and m != nn.BatchNorm1d(1).momentum for m in momenta), momenta


def test_the_placement_check_reads_the_drop_probability_from_the_kept_values():
    from bncourse.grading.placement import MLP_PLACEMENT, draw_builder_cases

    for case in draw_builder_cases(0, "dense", "cpu", more=True):
        right = MLP_PLACEMENT.run(mlp_variant, case)
        keep = MLP_PLACEMENT.run(functools.partial(mlp_variant, rate="keep"), case)
        functional = MLP_PLACEMENT.run(MlpWithFunctionalDropout, case)
        assert float(right["drop_probability"]) == pytest.approx(case.p, rel=1e-5)
        assert float(keep["drop_probability"]) == pytest.approx(1 - case.p, rel=1e-5)
        assert float(functional["drop_probability"]) == pytest.approx(case.p, rel=1e-5)
        assert right["first_noisy_layer"] == "weight layer"
    before_bn = MLP_PLACEMENT.run(functools.partial(mlp_variant, placement="before_bn"), case)
    assert before_bn["first_noisy_layer"] == "BN"
