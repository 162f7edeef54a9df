"""Checks of ps05_train_vs_eval: every catalogued bug is caught and named, sound fixes pass.

Each mutant of the catalogue (a reference with one bug switched on) plays the student; it must
fail exactly the checks listed for it, with a message naming its misconception, and pass all the
others. Alternative correct fixes pass everything; delegating to the course's own implementation
is refused.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bncourse import grading
from bncourse import nn as bnn
from bncourse.grading import CATALOGUE, CheckFailure
from bncourse.grading.placement import cnn_variant
from bncourse.grading.train_eval import (
    draw_evaluate_cases,
    draw_predict_cases,
    evaluate_variant,
    predict_variant,
)

SEEDS = (0, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: intra-op threads only contend with each other on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VARIANTS = {"evaluate": evaluate_variant, "predict": predict_variant, "cnn_placement": cnn_variant}
CHECKS = {
    "evaluate": {
        "evaluate": functools.partial(grading.check_evaluate, device="cpu"),
        "evaluate_conv": functools.partial(grading.check_evaluate, layout="conv", device="cpu"),
        "modes": functools.partial(grading.check_evaluate_restores_modes, device="cpu"),
        "modes_conv": functools.partial(
            grading.check_evaluate_restores_modes, layout="conv", device="cpu"
        ),
    },
    "predict": {
        "predict": functools.partial(grading.check_predict, device="cpu"),
        "predict_all": functools.partial(grading.check_predict, layout="all", device="cpu"),
    },
    "cnn_placement": {
        "placement": functools.partial(grading.check_cnn_placement, device="cpu"),
        "placement_more": functools.partial(grading.check_cnn_placement, more=True, device="cpu"),
    },
}
EVALUATION = {"evaluate", "evaluate_conv"}
PLACEMENT = {"placement", "placement_more"}

# For every catalogued mutant of these tasks: the checks that must fail and name it.
PREDICTION = {"predict", "predict_all"}
MODES = {"modes", "modes_conv"}
EXPECTED_FAILURES = {
    ("eval-forgotten", "evaluate"): EVALUATION,
    ("eval-forgotten", "predict"): PREDICTION,
    ("dropout-on-at-test", "evaluate"): EVALUATION,
    ("bn-train-mode-at-test", "evaluate:switch=dropout_only"): EVALUATION,
    ("bn-train-mode-at-test", "evaluate:switch=bn1d_only"): {"evaluate_conv"},
    ("accuracy-mean-of-batches", "evaluate"): EVALUATION,
    ("batch-of-one-padded", "predict"): PREDICTION,
    ("eval-only-for-batch-of-one", "predict"): PREDICTION,
    ("mode-not-restored", "evaluate"): MODES,
    ("mode-not-restored", "predict"): PREDICTION,
    ("mode-restored-wholesale", "evaluate:restore=model_flag"): MODES,
    ("mode-restored-wholesale", "evaluate:restore=train"): MODES,
    ("mode-restored-wholesale", "predict:restore=model_flag"): PREDICTION,
    ("mode-restored-wholesale", "predict:restore=train"): PREDICTION,
    ("inputs-modified-in-place", "evaluate"): EVALUATION,
    ("inputs-modified-in-place", "predict"): PREDICTION,
    ("dropout-before-bn", "cnn_placement"): PLACEMENT,
    ("dropout-through-weight-layer", "cnn_placement:placement=before_weight"): PLACEMENT,
    ("dropout-through-weight-layer", "cnn_placement:placement=every_block"): PLACEMENT,
    ("dropout-rate-as-keep", "cnn_placement"): PLACEMENT,
    ("dropout-removed", "cnn_placement"): PLACEMENT,
}


def _mutants():
    """(misconception, label, task, flags) for every catalogued mutant of this exercise's tasks."""
    for name, misconception in CATALOGUE.items():
        for task, flag_sets in misconception.mutants.items():
            if task not in VARIANTS:
                continue
            for flags in flag_sets:
                label = ",".join(f"{k}={v}" for k, v in flags.items())
                yield name, f"{task}:{label}" if len(flag_sets) > 1 else task, task, flags


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
def test_each_bug_fails_exactly_its_checks_and_is_named(name, label, task, flags):
    student = functools.partial(VARIANTS[task], **flags)
    expected = EXPECTED_FAILURES[(name, label)]
    for check_name, check in CHECKS[task].items():
        for seed in SEEDS:
            if check_name not in expected:
                check(student, seed=seed)
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


def test_the_buggy_evaluation_of_the_exercise_changes_from_call_to_call():
    """The colleague's evaluate (no eval()) gives random accuracies: the NaN rule is needed."""
    case = draw_evaluate_cases(5, "dense", "cpu")[0]
    model = copy.deepcopy(case.model)
    torch.manual_seed(0)
    runs = {evaluate_variant(model, case.batches, switch="none") for _ in range(10)}
    assert len(runs) > 1


def test_a_batch_of_one_in_training_mode_is_refused_by_batch_norm():
    case = draw_predict_cases(0, "dense", "cpu")[0]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        predict_variant(copy.deepcopy(case.model), case.calls[1], mode="train")


def test_references_and_alternatives_pass_on_every_device(device):
    """The networks, inputs and students' runs live on ``device`` (CUDA where there is one)."""
    for task, checks in CHECKS.items():
        for check in checks.values():
            for student in [VARIANTS[task], *ALTERNATIVES[task]]:
                check(student, seed=7, device=device)


# --- sound fixes written differently ------------------------------------------------------------


def evaluate_weighted_batch_accuracies(model, batches):
    """Per-batch accuracies weighted by the batch sizes, each module's flag given back."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    with torch.inference_mode():
        accuracies = [((model(x).argmax(1) == y).float().mean(), len(y)) for x, y in batches]
    for m, flag in flags.items():
        m.train(flag)
    return sum(a * n for a, n in accuracies) / sum(n for _, n in accuracies)


def evaluate_a_copy(model, batches):
    """Evaluate a deep copy in evaluation mode, in one forward pass; the original is untouched."""
    frozen = copy.deepcopy(model).eval()
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    with torch.no_grad():
        return (frozen(x).argmax(1) == y).float().mean()


def predict_per_module_flags(model, x):
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(x).argmax(dim=1)
    finally:
        for m, flag in flags:
            m.train(flag)


def predict_one_sample_at_a_time(model, x):
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        return torch.stack([frozen(sample[None]).argmax(1)[0] for sample in x])


class CnnWithFunctionalDropout(nn.Module):
    def __init__(self, in_channels, num_classes, depth, width, p):
        super().__init__()
        channels = [in_channels] + [width] * depth
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.norms = nn.ModuleList(bnn.BatchNorm2d(width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)
        self.p = p

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))
        x = x.mean(dim=(2, 3))
        return self.head(F.dropout(x, self.p, training=self.training))


def cnn_with_dropout_after_pooling_layer(in_channels, num_classes, depth, width, p):
    layers = []
    for i in range(depth):
        layers += [
            nn.Conv2d(width if i else in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
        ]
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), bnn.Dropout(p), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


ALTERNATIVES = {
    "evaluate": [evaluate_weighted_batch_accuracies, evaluate_a_copy],
    "predict": [predict_per_module_flags, predict_one_sample_at_a_time],
    "cnn_placement": [CnnWithFunctionalDropout, cnn_with_dropout_after_pooling_layer],
}


@pytest.mark.parametrize(
    ("task", "student"),
    [(t, f) for t, fs in ALTERNATIVES.items() for f in fs],
    ids=[f.__name__ for fs in ALTERNATIVES.values() for f in fs],
)
def test_alternative_fixes_pass(task, student):
    for check in CHECKS[task].values():
        for seed in SEEDS:
            check(student, seed=seed)


# --- delegating to the course's own implementation -----------------------------------------------


def evaluate_with_the_lab(model, batches):
    from bncourse.lab.data import Dataset
    from bncourse.lab.train import evaluate

    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    return evaluate(model, Dataset("x", x, y, x, y, 4))


def cnn_from_the_lab(in_channels, num_classes, depth, width, p):
    from bncourse.lab.models import cnn

    return cnn((in_channels, 8, 8), num_classes, depth, width, placement="after_bn", p=p)


DELEGATING = [
    ("evaluate", evaluate_with_the_lab, "bncourse.lab.train.evaluate"),
    ("cnn_placement", cnn_from_the_lab, "bncourse.lab.models.cnn"),
]


@pytest.mark.parametrize(
    ("task", "student", "called"), DELEGATING, ids=[d[1].__name__ for d in DELEGATING]
)
def test_delegating_to_the_course_implementation_fails_every_check(task, student, called):
    for check in CHECKS[task].values():
        with pytest.raises(CheckFailure, match=f"called {called}"):
            check(student, seed=0)


# --- the situations the checks hand over ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["dense", "conv"])
def test_evaluated_batches_differ_in_size_enough_for_the_weighting_to_show(layout, seed):
    for case in draw_evaluate_cases(seed, layout, "cpu"):
        assert len({len(y) for _, y in case.batches}) > 1
        right = evaluate_variant(copy.deepcopy(case.model), case.batches)
        per_batch = evaluate_variant(copy.deepcopy(case.model), case.batches, average="batches")
        assert abs(right - per_batch) >= 1e-3


def test_evaluated_and_predicted_networks_arrive_in_every_mode():
    from bncourse.grading.networks import describe_arrival

    evaluated = {
        describe_arrival(c.model)
        for layout in ("dense", "conv")
        for c in draw_evaluate_cases(0, layout, "cpu")
    }
    assert len(evaluated) == 4, evaluated  # training, evaluation and both mixes
    predicted = {describe_arrival(c.model) for c in draw_predict_cases(0, "dense", "cpu")}
    assert len(predicted) == 2, predicted  # training, and BN frozen in training mode


def test_the_checks_never_modify_the_cases_they_hand_over():
    """The originals are what the caller's tensors are compared with: a run must not touch them."""
    from bncourse.grading.train_eval import EVALUATE, PREDICT

    case = draw_evaluate_cases(0, "dense", "cpu")[0]
    before = [(x.clone(), y.clone()) for x, y in case.batches]
    result = EVALUATE.run(functools.partial(evaluate_variant, inputs="modified"), case)
    assert not result["batches_unchanged"]
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(before, case.batches, strict=True))
    case = draw_predict_cases(0, "dense", "cpu")[0]
    result = PREDICT.run(functools.partial(predict_variant, inputs="modified"), case)
    assert not result["input_unchanged"] and PREDICT.run(predict_variant, case)["input_unchanged"]


def predict_eval_for_one_sample(model, x):
    """Switches to evaluation mode only where BN refused, and leaves it so."""
    if len(x) == 1:
        model.eval()
    with torch.no_grad():
        return model(x).argmax(1)


def predict_eval_for_one_sample_restored(model, x):
    flags = {m: m.training for m in model.modules()}
    if len(x) == 1:
        model.eval()
    with torch.no_grad():
        out = model(x).argmax(1)
    for m, flag in flags.items():
        m.train(flag)
    return out


@pytest.mark.parametrize(
    ("student", "names"),
    [
        (predict_eval_for_one_sample, {"eval-only-for-batch-of-one", "mode-not-restored"}),
        (predict_eval_for_one_sample_restored, {"eval-only-for-batch-of-one"}),
    ],
)
def test_evaluation_mode_for_a_batch_of_one_only_is_named_so(student, names):
    """Not "a batch of one padded": the batch is predicted in training mode, called first."""
    for check in CHECKS["predict"].values():
        with pytest.raises(CheckFailure) as failure:
            check(student, seed=3)
        assert _named(str(failure.value)) == names, str(failure.value)
