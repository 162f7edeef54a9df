"""Checks for evaluation code fixed by students (assignment ps05_train_vs_eval).

Students repair two functions that a training loop calls while its network is in training mode:

``evaluate(model, batches) -> float``
    the fraction of correctly classified samples over ``batches``, a list of ``(x, y)`` pairs
    (the last batch may be smaller, as a data loader's is), computed as at test time (dropout
    off, BN on its running statistics), without changing the network or the batches: its buffers
    stay as they are and every module gets its train/eval flag back;
``predict(model, x) -> Tensor``
    the predicted class of every sample of ``x``, shape ``(N,)``, for any batch size including
    one, with the same guarantees.

The checks verify behaviour, not code: they hand a fresh copy of a small network (drawn when the
check runs, :mod:`bncourse.grading.networks`) to the function, in training mode (as in the middle
of a training loop), in evaluation mode or in a mix of the two that no single ``model.train(flag)``
restores, record in which mode every dropout
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
    describe_arrival,
    describe_part,
    draw_inputs,
    draw_network,
    fresh_copy,
    inputs_unchanged,
    no_tf32,
    noise_modules,
    remember_modes,
    restore_modes,
    set_arrival_mode,
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


def _describe_network(model: nn.Module, layout: str) -> str:
    kind = "an MLP" if layout == "dense" else "a CNN"
    noise = ", dropout before the classifier" if noise_modules(model) else ""
    return f"{kind} with {len(bn_modules(model))} BN layers{noise}, given {describe_arrival(model)}"


# --- evaluate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateCase:
    """A network in its arrival mode and labelled batches of unequal sizes."""

    model: nn.Module
    batches: tuple[tuple[Tensor, Tensor], ...]
    layout: str

    @property
    def dtype(self) -> torch.dtype:
        return self.batches[0][0].dtype

    def describe(self) -> str:
        sizes = ", ".join(str(len(y)) for _, y in self.batches)
        return (
            f"{_describe_network(self.model, self.layout)}, batches of {sizes} samples of shape "
            f"{tuple(self.batches[0][0].shape[1:])}"
        )

    def exact(self) -> EvaluateCase:
        return self  # accuracies are counts: the reference runs where the student's code does


# (layout, sample shape, batch sizes, width, depth, arrival mode). The batches differ in size, as
# a data loader's last batch does, so that the mean of per-batch accuracies is not the accuracy.
EVALUATE_SPECS = {
    "dense": (
        ("dense", (6,), (16, 16, 5), 8, 2, "train"),
        ("dense", (4,), (10, 10, 10, 3), 6, 3, "mc_dropout"),
        ("dense", (5,), (12, 7), 5, 2, "eval"),
    ),
    "conv": (
        ("conv", (2, 5, 5), (8, 8, 3), 4, 2, "train"),
        ("conv", (3, 4, 4), (6, 2), 3, 2, "frozen_bn"),
        ("conv", (2, 4, 4), (5, 5, 2), 3, 2, "eval"),
    ),
}


def _labels(model: nn.Module, xs: list[Tensor], gen: torch.Generator, classes: int) -> list[Tensor]:
    """The network's own test-time predictions, a quarter of them replaced by random labels, and
    one more changed where needed so that the mean of the per-batch accuracies is not the
    accuracy (the smallest batch then weighs visibly more in that mean)."""
    with torch.no_grad(), no_tf32():
        frozen = fresh_copy(model).eval()
        predicted = [frozen(x).argmax(1).cpu() for x in xs]
    labels = []
    for p in predicted:
        noise = torch.randint(0, classes, p.shape, generator=gen)
        flip = torch.rand(p.shape, generator=gen) < 0.25
        labels.append(torch.where(flip, noise, p))

    def gap() -> float:
        hits = [(y == p).double() for y, p in zip(labels, predicted, strict=True)]
        per_batch = torch.stack([h.mean() for h in hits]).mean()
        return abs(float(per_batch - torch.cat(hits).mean()))

    if gap() < 1e-3:  # far above the tolerance of an accuracy (1e-4 relative)
        small = min(range(len(labels)), key=lambda i: len(labels[i]))
        right = labels[small][0] == predicted[small][0]
        labels[small][0] = (predicted[small][0] + 1) % classes if right else predicted[small][0]
    if gap() < 1e-3:
        raise RuntimeError("the batch sizes must differ for the weighting to show")
    return [y.to(x.device) for y, x in zip(labels, xs, strict=True)]


def draw_evaluate_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[EvaluateCase]:
    """Networks with BN and one dropout (p = 0.3) before the classifier, in their arrival modes,
    and batches of unequal sizes."""
    if layout not in EVALUATE_SPECS:
        raise ValueError(f"layout must be 'dense' or 'conv', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, sample, sizes, width, depth, mode in EVALUATE_SPECS[layout]:
        model = draw_network(
            gen,
            layout=kind,
            in_channels=sample[0],
            width=width,
            depth=depth,
            num_classes=4,
            placement="after_bn",
        ).to(device)
        (x,) = draw_inputs(gen, (sum(sizes), *sample))
        xs = [part.to(device) for part in x.split(list(sizes))]
        batches = tuple(zip(xs, _labels(model, xs, gen, 4), strict=True))
        cases.append(EvaluateCase(set_arrival_mode(model, mode), batches, kind))
    return cases


def evaluate_variant(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    switch: str = "all",
    restore: object = True,
    average: str = "samples",
    inputs: str = "kept",
) -> float:
    """``evaluate`` with the student's signature and optional catalogued mistakes.

    ``switch``: which layers are put in evaluation mode: "all" (right: ``model.eval()``), "none"
    (eval() forgotten), "bn_only" (dropout left on), "dropout_only" (BN left in training mode),
    "bn1d_only" (``BatchNorm1d`` and dropout only, so a CNN's ``BatchNorm2d`` stays in training
    mode). ``restore``: how every module gets its flag back afterwards (see
    :func:`~bncourse.grading.networks.restore_modes`). ``average``: "samples" (right: correct
    samples over all samples) or "batches" (the mean of the per-batch accuracies). ``inputs``:
    "kept" (right) or "modified" (the batches' inputs changed in place afterwards).
    """
    modes = remember_modes(model)
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
    accuracies = []
    with torch.no_grad():
        for x, y in batches:
            hits = int((model(x).argmax(1) == y).sum())
            correct += hits
            total += len(y)
            accuracies.append(hits / len(y))
    restore_modes(model, modes, restore)
    if inputs == "modified":
        for x, _ in batches:
            x.sub_(x.mean(0, keepdim=True))
    return correct / total if average == "samples" else sum(accuracies) / len(accuracies)


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
    given = [(x.clone(), y.clone()) for x, y in case.batches]
    with no_tf32(), ModeRecorder(model) as recorder:
        value = fn(model, list(given))
    accuracy = _fraction(value)
    if recorder.dropout_ran_in_training:  # a random accuracy: not the network's test accuracy
        accuracy = math.nan
    return {
        "accuracy": torch.tensor(accuracy, dtype=torch.float64),
        "dropout_off": not recorder.dropout_ran_in_training,
        "bn_eval": not recorder.bn_ran_in_training,
        "buffers_unchanged": before.buffers_unchanged(model),
        "mode_restored": before.modes_restored(model),
        "batches_unchanged": inputs_unchanged(
            [t for pair in given for t in pair], [t for pair in case.batches for t in pair]
        ),
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
        "batches_unchanged": "the batches unchanged",
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
    and left unchanged, and reports the network's accuracy over all samples; the batches are
    left unchanged."""
    __tracebackhide__ = True
    seed = draw_seed() if seed is None else seed
    cases = draw_evaluate_cases(seed, layout, device)
    run_check(
        EVALUATE,
        fn,
        cases,
        ["accuracy", "dropout_off", "bn_eval", "buffers_unchanged", "batches_unchanged"],
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
    """A BN network in its arrival mode and the inputs ``predict`` is called on, one call each."""

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


# (layout, sample shape, width, depth, arrival mode); each network is called on a batch of five,
# then on three single samples. One image has many values per channel, so BN in training mode
# accepts it, and duplicating it changes nothing: "all" keeps MLPs next to the CNNs, which tell
# the two apart. Networks without dropout have one mix of modes: BN frozen in training mode.
_DENSE_PREDICT = (("dense", (6,), 8, 2, "train"), ("dense", (5,), 5, 3, "frozen_bn"))
PREDICT_SPECS = {
    "dense": _DENSE_PREDICT,
    "all": _DENSE_PREDICT + (("conv", (2, 5, 5), 4, 2, "train"), ("conv", (3, 4, 4), 3, 1, "eval")),
}


def draw_predict_cases(
    seed: int, layout: str = "dense", device: torch.device | str | None = None
) -> list[PredictCase]:
    """Networks with BN and no dropout (so that training mode is deterministic), in their arrival
    modes."""
    if layout not in PREDICT_SPECS:
        raise ValueError(f"layout must be 'dense' or 'all', got {layout!r}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, sample, width, depth, mode in PREDICT_SPECS[layout]:
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
        # The batch first: a predict that switches to evaluation mode for a single sample and
        # leaves it so would otherwise run every later batch in evaluation mode by chance.
        calls = (x[3:8], x[0:1], x[1:2], x[2:3])
        cases.append(PredictCase(set_arrival_mode(model, mode), calls, kind))
    return cases


def predict_variant(
    model: nn.Module,
    x: Tensor,
    *,
    mode: str = "eval",
    duplicate: bool = False,
    restore: object = True,
    inputs: str = "kept",
) -> Tensor:
    """``predict`` with the student's signature and optional catalogued mistakes.

    ``mode``: "eval" (right), "train" (the network runs in the mode it came in) or "eval_if_one"
    (evaluation mode only for a batch of one, where BN in training mode refuses). ``duplicate``:
    a single sample is sent as a batch of two copies of itself. ``restore``: how every module gets
    its flag back afterwards (see :func:`~bncourse.grading.networks.restore_modes`). ``inputs``:
    "kept" (right) or "modified" (``x`` changed in place afterwards).
    """
    modes = remember_modes(model)
    if mode == "eval" or (mode == "eval_if_one" and len(x) == 1):
        model.eval()
    single = duplicate and len(x) == 1
    with torch.no_grad():
        logits = model(torch.cat([x, x]) if single else x)
    restore_modes(model, modes, restore)
    if inputs == "modified":
        x.sub_(x.mean(0, keepdim=True))
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
    classes, refused, bn_eval = [], False, []
    given = [x.clone() for x in case.calls]
    with no_tf32(), ModeRecorder(model) as recorder:
        for x in given:
            recorder.bn_calls.clear()  # call by call: a predict that switches modes by batch size
            refused_now = False
            try:
                value = fn(model, x)
            except ValueError as error:  # BN in training mode on one value per channel
                if BATCH_OF_ONE_ERROR not in str(error):
                    raise
                refused = refused_now = True
                classes.append(torch.full((len(x),), -1))
            else:
                classes.append(_classes(value, len(x)))
            # a refusal is BN in training mode whether or not its hooks were seen
            bn_eval.append(not (recorder.bn_ran_in_training or refused_now))
    return {
        "classes": torch.cat(classes),
        "refused": refused,
        "bn_eval": tuple(bn_eval),
        "buffers_unchanged": before.buffers_unchanged(model),
        "mode_restored": before.modes_restored(model),
        "input_unchanged": inputs_unchanged(given, case.calls),
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
        "bn_eval": "BN on its running statistics, call by call",
        "buffers_unchanged": "BN buffers unchanged",
        "mode_restored": "train/eval flags restored",
        "input_unchanged": "the input x unchanged",
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
        ["classes", "refused", "bn_eval", "buffers_unchanged", "mode_restored", "input_unchanged"],
        seed=seed,
        what=f"the prediction ({'MLP' if layout == 'dense' else 'MLP and CNN'})",
    )
