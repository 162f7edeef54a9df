"""The machinery every check shares: run the submission, compare, name the misconception.

A :class:`Task` knows how to call one kind of graded function on one input case and what to read
back (the output, the buffers it updated, gradients): a *result*, a dict of named quantities.
:func:`run_check` computes the reference results first, then runs the submission under the guard,
and when a checked quantity differs it looks for the catalogued mutants (one misconception, then
pairs of them) that reproduce the submission's behaviour on every case.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bncourse.grading.catalogue import CATALOGUE, Misconception
from bncourse.grading.compare import Tolerance, describe_difference, same
from bncourse.grading.guard import ReferenceCallError, forbid_reference

__all__ = [
    "CheckFailure",
    "Mutant",
    "Result",
    "Task",
    "default_device",
    "draw_seed",
    "mutants_for",
    "resolve_device",
    "run_check",
]

Result = dict[str, Any]


class CheckFailure(AssertionError):
    """A graded function gave a wrong result; the message explains what and, if known, why."""


class Case(Protocol):
    """One input of a check: tensors on the device under test, plus scalars."""

    dtype: torch.dtype

    def describe(self) -> str: ...

    def exact(self) -> Case:
        """The same case in float64 on the CPU, where the reference and the mutants run."""
        ...


def default_device() -> torch.device:
    """The device checks run on when none is given: CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``, or :func:`default_device` when it is None."""
    return torch.device(device) if device is not None else default_device()


def draw_seed() -> int:
    """A seed chosen when the check runs, so that no expected value can be known beforehand."""
    return secrets.randbits(63)


@dataclass(frozen=True)
class Task:
    """One kind of graded function.

    ``run(fn, case)`` calls ``fn`` with the student's signature on fresh copies of the case's
    tensors and returns the result; ``reference`` is the correct function with that signature and
    ``variant(**flags)`` its catalogued mutations; ``labels`` names each quantity for messages.
    ``undefined(flags, case)`` lists the quantities a mutation predicts nothing about on a case
    (for example the buffers, when its statistics do not even have one value per channel).
    ``guard`` holds keyword arguments of :func:`forbid_reference` for the submission's run (a
    function that runs a whole network passes ``torch_layers=False`` and names its reference
    modules); ``tolerance(case)``, when given, replaces the dtype's default tolerance.
    """

    name: str
    function_name: str
    run: Callable[[Callable[..., Any], Any], Result]
    reference: Callable[..., Any]
    variant: Callable[..., Any]
    labels: Mapping[str, str]
    undefined: Callable[[Mapping[str, object], Any], set[str]] = lambda flags, case: set()
    guard: Mapping[str, Any] = field(default_factory=dict)
    tolerance: Callable[[Any], Tolerance] | None = None

    def tolerance_for(self, case: Any) -> Tolerance:
        """How close a result must be to the reference on ``case``."""
        return self.tolerance(case) if self.tolerance else Tolerance.for_dtype(case.dtype)


@dataclass(frozen=True)
class Mutant:
    """A mutation of a task's reference that makes the mistakes of one or more misconceptions."""

    misconceptions: tuple[Misconception, ...]
    flags: Mapping[str, object]

    def function(self, task: Task) -> Callable[..., Any]:
        return functools.partial(task.variant, **self.flags)


def mutants_for(task: str, *, pairs: bool = False) -> list[Mutant]:
    """The catalogue's mutants of ``task``: each alone, then (with ``pairs``) two mistakes at once."""
    singles = [
        Mutant((m,), dict(flags)) for m in CATALOGUE.values() for flags in m.mutants.get(task, ())
    ]
    if not pairs:
        return singles
    combined = []
    for a, b in itertools.combinations(singles, 2):
        if a.misconceptions == b.misconceptions or set(a.flags) & set(b.flags):
            continue
        combined.append(Mutant(a.misconceptions + b.misconceptions, {**a.flags, **b.flags}))
    return singles + combined


def _run_student(task: Task, fn: Callable[..., Any], case: Any) -> Result:
    __tracebackhide__ = True
    with forbid_reference(task.function_name, **task.guard) as guard:
        try:
            result = task.run(fn, case)
        except ReferenceCallError as error:
            raise CheckFailure(str(error)) from None
        except CheckFailure:
            raise
        except Exception as error:
            if guard.violations:
                raise _hidden_violation(task, guard.violations[0]) from None
            error.add_note(f"(raised while checking {task.function_name} on {case.describe()})")
            raise
    if guard.violations:
        raise _hidden_violation(task, guard.violations[0])
    return result


def _hidden_violation(task: Task, called: str) -> CheckFailure:
    return CheckFailure(
        f"{task.function_name} called {called} and hid the error it raised. This exercise asks "
        "you to write the computation yourself with elementary tensor operations; this part "
        "scores zero until it does."
    )


def _agrees(
    actual: Sequence[Result], expected: Sequence[Result], quantity: str, tols: Sequence[Tolerance]
) -> bool:
    """Whether ``actual`` agrees with ``expected`` on every case where ``expected`` defines it."""
    return all(
        quantity not in e or same(a[quantity], e[quantity], t)
        for a, e, t in zip(actual, expected, tols, strict=True)
    )


def _predicts(results: Sequence[Result], quantity: str) -> bool:
    return any(quantity in r for r in results)


def _mutant_results(task: Task, mutant: Mutant, cases: Sequence[Any]) -> list[Result] | None:
    fn = mutant.function(task)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a variance of one value in a mutant
            results = [task.run(fn, case.exact()) for case in cases]
    except Exception:  # a mutant that cannot handle an input explains nothing about it
        return None
    for result, case in zip(results, cases, strict=True):
        for quantity in task.undefined(mutant.flags, case):
            result.pop(quantity, None)
    return results


def _diagnose(
    task: Task,
    cases: Sequence[Any],
    student: Sequence[Result],
    expected: Sequence[Result],
    quantities: Sequence[str],
    failing: Sequence[str],
    tols: Sequence[Tolerance],
) -> tuple[list[Misconception], dict[str, list[Misconception]]]:
    """Misconceptions whose mutants reproduce every checked quantity, else per failing quantity."""
    results = []
    for mutant in mutants_for(task.name, pairs=True):
        got = _mutant_results(task, mutant, cases)
        if got is not None:
            results.append((mutant, got))
    for size in (1, 2):
        whole = [
            m
            for m, got in results
            if len(m.misconceptions) == size
            and all(_predicts(got, q) for q in failing)
            and all(_agrees(student, got, q, tols) for q in quantities)
        ]
        if whole:
            return _unique(mc for m in whole for mc in m.misconceptions), {}
    partial = {}
    for q in failing:
        matching = [
            m
            for m, got in results
            if len(m.misconceptions) == 1 and _predicts(got, q) and _agrees(student, got, q, tols)
        ]
        if matching:
            partial[q] = _unique(mc for m in matching for mc in m.misconceptions)
    return [], partial


def _unique(items) -> list[Misconception]:
    seen: dict[str, Misconception] = {}
    for item in items:
        seen.setdefault(item.name, item)
    order = list(CATALOGUE)
    return sorted(seen.values(), key=lambda m: order.index(m.name))


def run_check(
    task: Task,
    fn: Callable[..., Any],
    cases: Sequence[Any],
    quantities: Sequence[str],
    *,
    seed: int,
    what: str,
) -> None:
    """Check ``fn`` against the reference on ``cases`` for ``quantities``; raise on a difference.

    The message names the catalogued misconceptions that reproduce the submission's behaviour;
    when none does, it says where the first values differ (case, quantity, index), never what
    they should be.
    """
    __tracebackhide__ = True  # IPython and pytest show the message, not this frame
    if not callable(fn):
        raise CheckFailure(f"expected the function {task.function_name}, got {type(fn).__name__}")
    expected = [task.run(task.reference, case.exact()) for case in cases]
    tols = [task.tolerance_for(case) for case in cases]
    student = [_run_student(task, fn, case) for case in cases]
    failing = [q for q in quantities if not _agrees(student, expected, q, tols)]
    if not failing:
        dtype = str(cases[0].dtype).removeprefix("torch.")
        print(
            f"{task.function_name}: {what} matches the reference on {len(cases)} random "
            f"{dtype} inputs."
        )
        return
    wrong_cases = [
        i
        for i, (s, e, t) in enumerate(zip(student, expected, tols, strict=True))
        if any(not same(s[q], e[q], t) for q in failing)
    ]
    first = wrong_cases[0]
    labels = ", ".join(task.labels[q] for q in failing)
    verb = "differs" if len(failing) == 1 else "differ"
    lines = [
        f"{task.function_name}: {what} is wrong on {len(wrong_cases)} of {len(cases)} random "
        f"inputs ({labels} {verb})."
    ]
    whole, partial = _diagnose(task, cases, student, expected, quantities, failing, tols)
    for misconception in whole:
        lines += ["", misconception.explain()]
    for q, found in partial.items():
        lines += ["", f"The {task.labels[q]} behaves as with this mistake:"]
        lines += [m.explain() for m in found]
    unexplained = [q for q in failing if not whole and q not in partial]
    if unexplained:
        lines.append("")
        lines.append("No catalogued misconception matches. Where the values first differ:")
        for q in unexplained:
            i = next(i for i in wrong_cases if not same(student[i][q], expected[i][q], tols[i]))
            detail = describe_difference(task.labels[q], student[i][q], expected[i][q], tols[i])
            lines.append(f"  on {cases[i].describe()}: {detail}.")
    lines += [
        "",
        f"(Inputs drawn at grading time with seed {seed}; first wrong input: "
        f"{cases[first].describe()}.)",
    ]
    raise CheckFailure("\n".join(lines))
