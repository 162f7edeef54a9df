"""Checks for evaluation code fixed by students (assignment ps05_train_vs_eval).

Students repair two functions that a training loop calls while its network is in training mode:

``evaluate(model, batches) -> float``
    the fraction of correctly classified samples over ``batches``, a list of ``(x, y)`` pairs,
    computed as at test time (dropout off, BN on its running statistics), without changing the
    network: its buffers stay as they are and every module gets its train/eval flag back;
``predict(model, x) -> Tensor``
    the predicted class of every sample of ``x``, shape ``(N,)``, for any batch size including
    one, with the same guarantees.

The checks verify behaviour, not code: they hand a fresh copy of a small network (drawn when the
check runs, :mod:`bncourse.grading.networks`) to the function, record in which mode every dropout
and BN layer ran, and compare the result and the network afterwards with the reference. An
accuracy measured with dropout on is random: it is reported as NaN, so that the mutant with the
same mistake is recognised. The model builder of the exercise is checked by
:func:`bncourse.grading.placement.check_cnn_placement`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bncourse.grading.engine import CheckFailure, Result, Task, draw_seed, resolve_device, run_check
from bncourse.grading.networks import (
    ModeRecorder,
    Snapshot,
    bn_modules,
    describe_part,
    draw_inputs,
    draw_network,
    fresh_copy,
    no_tf32,
    noise_modules,
)

__all__ = [
    "EVALUATE",
    "PREDICT",
    "EvaluateCase",
    "PredictCase",
    "check_evaluate",
    "check_evaluate_restores_modes",
    "check_predict",
    "draw_evaluate_cases",
    "draw_predict_cases",
    "evaluate_variant",
    "predict_variant",
]

#: What torch's batch norm says when it is asked to train on one value per channel.
BATCH_OF_ONE_ERROR = "Expected more than 1 value per channel when training"


def _restore(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


def _modes(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def _describe_network(model: nn.Module, layout: str) -> str:
    kind = "an MLP" if layout == "dense" else "a CNN"
    noise = ", dropout before the classifier" if noise_modules(model) else ""
    return f"{kind} with {len(bn_modules(model))} BN layers{noise}, given in training mode"


# --- evaluate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateCase:
    """A network in training mode (as in the middle of a training loop) and labelled batches."""

    model: nn.Module
    batches: tuple[tuple[Tensor, Tensor], ...]
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.batches[0][0].dtype

    def describe(self) -> str:
        return (
            f"{_describe_network(self.model, self.layout)}, {len(self.batches)} batches of shape "
            f"{tuple(self.batches[0][0].shape)}"
        )

    def exact(self) -> EvaluateCase:
        return self  # accuracies are counts: the reference runs where the student's code does


# (layout, batch shape, number of batches, width, depth)
EVALUATE_SPECS = {
    "dense": (("dense", (16, 6), 3, 8, 2), ("dense", (10, 4), 4, 6, 3)),
    "conv": (("conv", (8, 2, 5, 5), 3, 4, 2), ("conv", (6, 3, 4, 4), 2, 3, 2)),
}


def _labels(model: nn.Module, x: Tensor, gen: torch.Generator, classes: int) -> Tensor:
    """The network's own test-time predictions, a quarter of them replaced by random labels."""
    with torch.no_grad(), no_tf32():
        predicted = fresh_copy(model).eval()(x).argmax(1).cpu()
    noise = torch.randint(0, classes, predicted.shape, generator=gen)
    flip = torch.rand(predicted.shape, generator=gen) < 0.25
    return torch.where(flip, noise, predicted).to(x.device)


def draw_evaluate_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[EvaluateCase]:
    """Networks with BN and one dropout (p = 0.3) before the classifier, in training mode."""
    if layout not in EVALUATE_SPECS:
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, shape, count, width, depth in EVALUATE_SPECS[layout]:
        model = draw_network(
            gen,
            layout=kind,
            in_channels=shape[1],
            width=width,
            depth=depth,
            num_classes=4,
            placement="after_bn",
        ).to(device)
        xs = [x.to(device) for x in draw_inputs(gen, shape, count)]
        batches = tuple((x, _labels(model, x, gen, 4)) for x in xs)
        cases.append(EvaluateCase(model.train(), batches, kind))
    return cases


def evaluate_variant(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    switch: str = "all",
    restore: bool = True,
) -> float:
    """``evaluate`` with the student's signature and optional catalogued mistakes.

    ``switch``: which layers are put in evaluation mode: "all" (right: ``model.eval()``), "none"
    (eval() forgotten), "bn_only" (dropout left on), "dropout_only" (BN left in training mode),
    "bn1d_only" (``BatchNorm1d`` and dropout only, so a CNN's ``BatchNorm2d`` stays in training
    mode). ``restore``: give every module its flag back afterwards.
    """
    modes = _modes(model)
    if switch == "all":
        model.eval()
    else:
        if switch == "bn_only":
            chosen = bn_modules(model)
        elif switch == "dropout_only":
            chosen = noise_modules(model)
        elif switch == "bn1d_only":
            chosen = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.Dropout)]
        elif switch == "none":
            chosen = []
        else:
            raise ValueError(f"switch: unknown value {switch!r}")
        for m in chosen:
            m.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    if restore:
        _restore(modes)
    return correct / total


def _fraction(value: object) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise CheckFailure(
                f"evaluate returned a tensor of shape {tuple(value.shape)}; it must return one "
                "number, the fraction of correct predictions."
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckFailure(
            f"evaluate returned {type(value).__name__}, expected a number (the fraction of "
            "correct predictions; did you forget the return statement?)."
        )
    if not 0 <= value <= 1:
        raise CheckFailure(
            f"evaluate returned {value!r}; return the FRACTION of correct predictions, in [0, 1]."
        )
    return float(value)


def _run_evaluate(fn: Callable[..., Any], case: EvaluateCase) -> Result:
    model = fresh_copy(case.model)
    before = Snapshot.of(model)
    with no_tf32(), ModeRecorder(model) as recorder:
        value = fn(model, [(x.clone(), y.clone()) for x, y in case.batches])
    accuracy = _fraction(value)
    if recorder.dropout_ran_in_training:  # a random accuracy: not the network's test accuracy
        accuracy = math.nan
    return {
        "accuracy": torch.tensor(accuracy, dtype=torch.float64),
        "dropout_off": not recorder.dropout_ran_in_training,
        "bn_eval": not recorder.bn_ran_in_training,
        "buffers_unchanged": before.buffers_unchanged(model),
        "mode_restored": before.modes_restored(model),
    }


EVALUATE = Task(
    name="evaluate",
    function_name="evaluate",
    run=_run_evaluate,
    reference=evaluate_variant,
    variant=evaluate_variant,
    labels={
        "accuracy": "accuracy",
        "dropout_off": "dropout off during evaluation",
        "bn_eval": "BN on its running statistics during evaluation",
        "buffers_unchanged": "BN buffers unchanged",
        "mode_restored": "train/eval flags restored",
    },
    guard={"torch_layers": False, "references": ("bncourse.lab.train",)},
)


def check_evaluate(
    fn: Callable[..., float],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """``evaluate`` runs the network as at test time: dropout off, BN on its running statistics
    and left unchanged, and reports the network's accuracy."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_evaluate_cases(seed, layout, device)
    run_check(
        EVALUATE,
        fn,
        cases,
        ["accuracy", "dropout_off", "bn_eval", "buffers_unchanged"],
        seed=seed,
        what=describe_part(layout, "the evaluation"),
    )


def check_evaluate_restores_modes(
    fn: Callable[..., float],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """After ``evaluate`` every module has the train/eval flag it had before."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_evaluate_cases(seed, layout, device)
    run_check(
        EVALUATE,
        fn,
        cases,
        ["mode_restored"],
        seed=seed,
        what=describe_part(layout, "restoring the train/eval flags"),
    )


# --- predict ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictCase:
    """A BN network in training mode and the inputs ``predict`` is called on, one call each."""

    model: nn.Module
    calls: tuple[Tensor, ...]
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.calls[0].dtype

    def describe(self) -> str:
        sizes = ", ".join(str(len(x)) for x in self.calls)
        return f"{_describe_network(self.model, self.layout)}, called on batches of {sizes}"

    def exact(self) -> PredictCase:
        return self


# (layout, sample shape, width, depth); each network is called on three single samples, then on
# a batch of five. One image has many values per channel, so BN in training mode accepts it, and
# duplicating it changes nothing: "all" keeps MLPs next to the CNNs, which tell the two apart.
_DENSE_PREDICT = (("dense", (6,), 8, 2), ("dense", (5,), 5, 3))
PREDICT_SPECS = {
    "dense": _DENSE_PREDICT,
    "all": _DENSE_PREDICT + (("conv", (2, 5, 5), 4, 2), ("conv", (3, 4, 4), 3, 1)),
}


def draw_predict_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[PredictCase]:
    """Networks with BN and no dropout (so that training mode is deterministic), in training mode."""
    if layout not in PREDICT_SPECS:
        raise ValueError(f"layout must be 'dense' or 'all', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, sample, width, depth in PREDICT_SPECS[layout]:
        model = draw_network(
            gen,
            layout=kind,
            in_channels=sample[0],
            width=width,
            depth=depth,
            num_classes=4,
            dropout=False,
        ).to(device)
        (x,) = draw_inputs(gen, (8, *sample))
        x = x.to(device)
        calls = (x[0:1], x[1:2], x[2:3], x[3:8])
        cases.append(PredictCase(model.train(), calls, kind))
    return cases


def predict_variant(
    model: nn.Module,
    x: Tensor,
    *,
    mode: str = "eval",
    duplicate: bool = False,
    restore: bool = True,
) -> Tensor:
    """``predict`` with the student's signature and optional catalogued mistakes.

    ``mode``: "eval" (right) or "train" (the network runs in the mode it came in). ``duplicate``:
    a single sample is sent as a batch of two copies of itself. ``restore``: give every module its
    flag back afterwards.
    """
    modes = _modes(model)
    if mode == "eval":
        model.eval()
    single = duplicate and len(x) == 1
    with torch.no_grad():
        logits = model(torch.cat([x, x]) if single else x)
    if restore:
        _restore(modes)
    return logits.argmax(1)[: len(x)]


def _classes(value: object, count: int) -> Tensor:
    try:
        classes = torch.as_tensor(value).detach().reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailure(
            f"predict returned {type(value).__name__}; it must return a tensor of class indices "
            "(did you forget the return statement?)."
        ) from None
    if classes.numel() != count or classes.is_floating_point() or classes.is_complex():
        raise CheckFailure(
            f"predict returned {classes.numel()} values of type {classes.dtype} for {count} "
            "samples; return one class index per sample (logits.argmax(dim=1))."
        )
    return classes.long()


def _run_predict(fn: Callable[..., Any], case: PredictCase) -> Result:
    model = fresh_copy(case.model)
    before = Snapshot.of(model)
    classes, refused = [], False
    with no_tf32(), ModeRecorder(model) as recorder:
        for x in case.calls:
            try:
                value = fn(model, x.clone())
            except ValueError as error:  # BN in training mode on one value per channel
                if BATCH_OF_ONE_ERROR not in str(error):
                    raise
                refused = True
                classes.append(torch.full((len(x),), -1))
                continue
            classes.append(_classes(value, len(x)))
    return {
        "classes": torch.cat(classes),
        "refused": refused,
        "bn_eval": not recorder.bn_ran_in_training,
        "buffers_unchanged": before.buffers_unchanged(model),
        "mode_restored": before.modes_restored(model),
    }


PREDICT = Task(
    name="predict",
    function_name="predict",
    run=_run_predict,
    reference=predict_variant,
    variant=predict_variant,
    labels={
        "classes": "predicted classes",
        "refused": "batch of one refused by BN",
        "bn_eval": "BN on its running statistics",
        "buffers_unchanged": "BN buffers unchanged",
        "mode_restored": "train/eval flags restored",
    },
    guard={"torch_layers": False, "references": ("bncourse.lab.train",)},
)


def check_predict(
    fn: Callable[..., Tensor],
    *,
    layout: str = "dense",
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> None:
    """``predict`` on single samples and a batch: test-time classes, network left unchanged.

    ``layout="all"`` adds CNNs to the MLPs.
    """
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_predict_cases(seed, layout, device)
    run_check(
        PREDICT,
        fn,
        cases,
        ["classes", "refused", "bn_eval", "buffers_unchanged", "mode_restored"],
        seed=seed,
        what=f"the prediction ({'MLP' if layout == 'dense' else 'MLP and CNN'})",
    )
