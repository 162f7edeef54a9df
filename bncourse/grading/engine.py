"""The machinery every check shares: run the submission, compare, name the misconception.

A :class:`Task` knows how to call one kind of graded function on one input case and what to read
back (the output, the buffers it updated, gradients): a *result*, a dict of named quantities.
:func:`run_check` computes the reference results first, then runs the submission under the guard,
and when a checked quantity differs it looks for the catalogued mutants (one misconception, then
pairs of them) that reproduce the submission's behaviour on every case, then for the catalogued
signatures (:mod:`bncourse.grading.signatures`) that match it. What no misconception explains is
described from the data (:mod:`bncourse.grading.patterns`), with the book section closest to
what the description found.
A graded function that raises NotImplementedError, as the released stubs do, is reported as not
implemented yet, and nothing else.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import re
import secrets
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from bncourse.grading.catalogue import CATALOGUE, Misconception, book_link
from bncourse.grading.compare import Tolerance, describe_difference, same
from bncourse.grading.guard import ReferenceCallError, forbid_reference
from bncourse.grading.patterns import describe_pattern
from bncourse.grading.signatures import Observation

__all__ = [
    "CheckFailure",
    "Mutant",
    "NotImplementedYet",
    "Result",
    "Task",
    "default_device",
    "draw_seed",
    "is_unfinished",
    "mutants_for",
    "reports_unfinished",
    "resolve_device",
    "run_check",
]

Result = dict[str, Any]
Catalogue = Mapping[str, Misconception]


class CheckFailure(AssertionError):
    """A graded function gave a wrong result; the message explains what and, if known, why."""


class NotImplementedYet(CheckFailure):
    """The graded function raised NotImplementedError: the part is not done yet."""

    def __init__(self, function_name: str, detail: str = "") -> None:
        detail = detail.strip()[:200]
        super().__init__(
            f"{function_name} is not implemented yet" + (f": {detail}" if detail else ".")
        )


_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
_TORCH_FILE = re.compile(r"[\\/]site-packages[\\/]torch[\\/]")
_TORCH_MESSAGE = re.compile(r"aten::|not (currently )?implemented for ")


def _innermost_file(error: BaseException) -> str:
    """The file of the frame that raised ``error`` in this process (an error brought back from the
    notebook's kernel says where it was raised with ``raised_in_library`` instead: the traceback
    it carries holds the student's frames only)."""
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else ""


def is_unfinished(error: BaseException) -> bool:
    """Whether ``error`` says the student's code is unfinished, rather than that torch lacks an op.

    A NotImplementedError raised by the student's own code (``raise NotImplementedError``, as the
    released stubs do) counts; one raised inside torch (no kernel for a device or dtype, an
    ``nn.Module`` without ``forward``) does not.
    """
    if not isinstance(error, NotImplementedError):
        return False
    if getattr(error, "raised_in_library", False):  # set where the notebook's kernel raised it
        return False
    where = _innermost_file(error)
    if where.startswith(_TORCH_DIR) or _TORCH_FILE.search(where):
        return False
    return not _TORCH_MESSAGE.search(str(error))


@contextlib.contextmanager
def reports_unfinished(function_name: str) -> Iterator[None]:
    """Turn the student's own NotImplementedError into :class:`NotImplementedYet` for the name."""
    __tracebackhide__ = True
    try:
        yield
    except NotImplementedError as error:
        if not is_unfinished(error):
            raise
        raise NotImplementedYet(function_name, str(error)) from None


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

    For the description of a difference no misconception explains: ``channel_dims`` names the
    quantities with a channel axis (quantity -> dim) that may be scaled or shifted per channel,
    ``inputs(case)`` the input tensors by the student's names for them (default: ``x``),
    ``book`` the (page, anchor) of the closest book section (default: the section most of the
    task's catalogued misconceptions link, see :meth:`section`) and ``sections`` the book
    sections that teach what a description found, by what it found: a key is a pattern's kind
    (:class:`~bncourse.grading.patterns.Pattern`, e.g. "channel-offset"), a quantity, or
    "quantity:kind"; the most specific key wins (see :meth:`section_for`).
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
    channel_dims: Mapping[str, int] = field(default_factory=dict)
    inputs: Callable[[Any], Mapping[str, Tensor]] = lambda case: _case_x(case)
    book: tuple[str, str] | None = None
    sections: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    phrases: Mapping[str, Callable[[Result], str]] = field(default_factory=dict)
    """How a failing check's first line says what is wrong with a quantity, from the student's
    result on the first wrong input (default: "<label> differs")."""

    def tolerance_for(self, case: Any) -> Tolerance:
        """How close a result must be to the reference on ``case``."""
        return self.tolerance(case) if self.tolerance else Tolerance.for_dtype(case.dtype)

    def section(self, catalogue: Catalogue = CATALOGUE) -> tuple[str, str] | None:
        """The (page, anchor) of the book section closest to this task.

        ``book`` when given; else, on the page most of the task's catalogued misconceptions link,
        the section of the first of them (the catalogue lists the basics first); None when the
        task has none.
        """
        if self.book is not None:
            return self.book
        sections = [(m.page, m.anchor) for m in catalogue.values() if self.name in m.tasks()]
        if not sections:
            return None
        pages = collections.Counter(page for page, _ in sections)
        page = max(pages, key=lambda p: (pages[p], -[s[0] for s in sections].index(p)))
        return next(s for s in sections if s[0] == page)

    def section_for(
        self, found: Sequence[tuple[str, str | None]], catalogue: Catalogue = CATALOGUE
    ) -> tuple[str, str] | None:
        """The section closest to what a description ``found``: (quantity, pattern kind or
        None) pairs in the order they were described; :meth:`section` when none is listed."""
        for quantity, kind in found:
            for key in (f"{quantity}:{kind}", kind, quantity):
                if key in self.sections:
                    return self.sections[key]
        return self.section(catalogue)

    def link(self, catalogue: Catalogue = CATALOGUE) -> str | None:
        """The link to :meth:`section`, as a failing check prints it."""
        section = self.section(catalogue)
        return book_link(*section) if section else None


def _case_x(case: Any) -> Mapping[str, Tensor]:
    x = getattr(case, "x", None)
    return {"x": x} if isinstance(x, Tensor) else {}


@dataclass(frozen=True)
class Mutant:
    """A mutation of a task's reference that makes the mistakes of one or more misconceptions."""

    misconceptions: tuple[Misconception, ...]
    flags: Mapping[str, object]

    def function(self, task: Task) -> Callable[..., Any]:
        return functools.partial(task.variant, **self.flags)


def mutants_for(
    task: str, *, pairs: bool = False, catalogue: Catalogue = CATALOGUE
) -> list[Mutant]:
    """The catalogue's mutants of ``task``: each alone, then (with ``pairs``) two mistakes at once."""
    singles = [
        Mutant((m,), dict(flags)) for m in catalogue.values() for flags in m.mutants.get(task, ())
    ]
    if not pairs:
        return singles
    combined = []
    for a, b in itertools.combinations(singles, 2):
        if a.misconceptions == b.misconceptions or set(a.flags) & set(b.flags):
            continue
        combined.append(Mutant(a.misconceptions + b.misconceptions, {**a.flags, **b.flags}))
    return singles + combined


_READ_MORE = "Read more: "


def _with_link(message: str, link: str | None) -> str:
    return message if link is None or _READ_MORE in message else f"{message}\n{_READ_MORE}{link}"


def _run_student(task: Task, fn: Callable[..., Any], case: Any, link: str | None) -> Result:
    __tracebackhide__ = True
    with forbid_reference(task.function_name, **task.guard) as guard:
        try:
            result = task.run(fn, case)
        except ReferenceCallError as error:
            raise CheckFailure(_with_link(str(error), link)) from None
        except NotImplementedYet:
            raise
        except CheckFailure as error:
            error.args = (_with_link(str(error), link),)
            raise
        except Exception as error:
            if guard.violations:
                raise _hidden_violation(task, guard.violations[0], link) from None
            if is_unfinished(error):
                raise NotImplementedYet(task.function_name, str(error)) from None
            note = f"(raised while checking {task.function_name} on {case.describe()})"
            notes = getattr(error, "__notes__", [])
            error.add_note(note if any(_READ_MORE in n for n in notes) else _with_link(note, link))
            raise
    if guard.violations:
        raise _hidden_violation(task, guard.violations[0], link)
    return result


def _hidden_violation(task: Task, called: str, link: str | None) -> CheckFailure:
    message = (
        f"{task.function_name} called {called} and hid the error it raised. This exercise asks "
        "you to write the computation yourself with elementary tensor operations; this part "
        "scores zero until it does."
    )
    return CheckFailure(_with_link(message, link))


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


def _signatures_matching(
    task: Task, observations: Sequence[Observation], catalogue: Catalogue
) -> list[tuple[Misconception, frozenset[str]]]:
    """(misconception, quantities explained) for every catalogued signature that matches."""
    found = []
    for misconception in catalogue.values():
        for signature in misconception.signatures.get(task.name, ()):
            try:
                matches = signature.matches(observations)
            except Exception:  # a signature that cannot read these results does not match
                matches = False
            if matches:
                found.append((misconception, signature.explains))
    return found


def _diagnose(
    task: Task,
    cases: Sequence[Any],
    student: Sequence[Result],
    expected: Sequence[Result],
    quantities: Sequence[str],
    failing: Sequence[str],
    tols: Sequence[Tolerance],
    catalogue: Catalogue,
) -> tuple[list[Misconception], dict[str, list[Misconception]]]:
    """Misconceptions that explain every failing quantity, else those that explain some.

    First the mutants that reproduce every checked quantity (one misconception, then pairs), then
    the signatures that together explain every failing quantity; else, per failing quantity, the
    single mutants and the signatures that explain it.
    """
    results = []
    for mutant in mutants_for(task.name, pairs=True, catalogue=catalogue):
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
            return _unique((mc for m in whole for mc in m.misconceptions), catalogue), {}
    observations = [
        Observation(s, e, case, t)
        for s, e, case, t in zip(student, expected, cases, tols, strict=True)
    ]
    signed = [
        (m, explains & set(failing))
        for m, explains in _signatures_matching(task, observations, catalogue)
        if explains & set(failing)
    ]
    if signed and set(failing) <= set().union(*(explains for _, explains in signed)):
        return _unique((m for m, _ in signed), catalogue), {}
    partial = {}
    for q in failing:
        matching = [
            mc
            for m, got in results
            if len(m.misconceptions) == 1 and _predicts(got, q) and _agrees(student, got, q, tols)
            for mc in m.misconceptions
        ]
        matching += [m for m, explains in signed if q in explains]
        if matching:
            partial[q] = _unique(matching, catalogue)
    return [], _best_supported(partial)


def _best_supported(partial: dict[str, list[Misconception]]) -> dict[str, list[Misconception]]:
    """For each quantity, only the misconceptions that explain the most failing quantities.

    A quantity two mistakes change alike (noise beyond Uout's interval: normal noise, or noise
    added to x) is told by the other quantities: the mistake that explains more of them stays.
    """
    support = collections.Counter(m.name for found in partial.values() for m in found)
    return {
        q: [m for m in found if support[m.name] == max(support[f.name] for f in found)]
        for q, found in partial.items()
    }


def _unique(items, catalogue: Catalogue) -> list[Misconception]:
    seen: dict[str, Misconception] = {}
    for item in items:
        seen.setdefault(item.name, item)
    order = list(catalogue)
    return sorted(seen.values(), key=lambda m: order.index(m.name))


def _what_the_values_show(
    task: Task,
    quantity: str,
    cases: Sequence[Any],
    student: Sequence[Result],
    expected: Sequence[Result],
    tols: Sequence[Tolerance],
) -> tuple[str, str | None]:
    """One line on ``quantity``: the relation its values bear to the correct ones, else where
    they first differ; and the kind of the relation (None when none was found)."""
    label = task.labels[quantity]
    wrong = [
        i
        for i in range(len(cases))
        if not same(student[i][quantity], expected[i][quantity], tols[i])
    ]
    patterns = {
        i: describe_pattern(
            student[i][quantity],
            expected[i][quantity],
            tols[i],
            inputs=task.inputs(cases[i]),
            channel_dim=task.channel_dims.get(quantity),
        )
        for i in wrong
    }
    shown = next((i for i in wrong if patterns[i] is not None), None)
    if shown is None:
        i = wrong[0]
        detail = describe_difference(label, student[i][quantity], expected[i][quantity], tols[i])
        return f"  on {cases[i].describe()}: {detail}.", None
    pattern = patterns[shown]
    alike = sum(1 for i in wrong if patterns[i] is not None and patterns[i].kind == pattern.kind)
    also = f" (a difference of this kind on {alike} of the {len(wrong)} wrong inputs)"
    line = (
        f"  on {cases[shown].describe()}: your {label} {pattern.text}"
        f"{also if len(wrong) > 1 else ''}."
    )
    return line, pattern.kind


def run_check(
    task: Task,
    fn: Callable[..., Any],
    cases: Sequence[Any],
    quantities: Sequence[str],
    *,
    seed: int,
    what: str,
    catalogue: Catalogue | None = None,
) -> None:
    """Check ``fn`` against the reference on ``cases`` for ``quantities``; raise on a difference.

    The message names the catalogued misconceptions that reproduce the submission's behaviour or
    whose signature it shows; what none explains is described from the data (a scaling, an
    offset, NaN, ... else where the first values differ), never by the expected values, with the
    book section closest to what the description found. ``catalogue`` replaces :data:`CATALOGUE` (for tests).
    """
    __tracebackhide__ = True  # IPython and pytest show the message, not this frame
    catalogue = CATALOGUE if catalogue is None else catalogue
    link = task.link(catalogue)
    if not callable(fn):
        raise CheckFailure(
            _with_link(f"expected the function {task.function_name}, got {type(fn).__name__}", link)
        )
    expected = [task.run(task.reference, case.exact()) for case in cases]
    tols = [task.tolerance_for(case) for case in cases]
    student = [_run_student(task, fn, case, link) for case in cases]
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
    compared = [q for q in failing if q not in task.phrases]
    said = [task.phrases[q](student[first]) for q in failing if q in task.phrases]
    if compared:
        verb = "differs" if len(compared) == 1 else "differ"
        said.insert(0, f"{', '.join(task.labels[q] for q in compared)} {verb}")
    lines = [
        f"{task.function_name}: {what} is wrong on {len(wrong_cases)} of {len(cases)} random "
        f"inputs ({'; '.join(said)})."
    ]
    whole, partial = _diagnose(task, cases, student, expected, quantities, failing, tols, catalogue)
    for misconception in whole:
        lines += ["", misconception.explain()]
    for q, found in partial.items():
        lines += ["", f"The {task.labels[q]} behaves as with this mistake:"]
        lines += [m.explain() for m in found]
    unexplained = [q for q in failing if not whole and q not in partial]
    if unexplained:
        names = ", ".join(task.labels[q] for q in unexplained)
        lines += ["", f"No catalogued misconception matches the {names}. What the values show:"]
        shown = [
            _what_the_values_show(task, q, cases, student, expected, tols) for q in unexplained
        ]
        lines += [line for line, _ in shown]
        section = task.section_for(
            [(q, kind) for q, (_, kind) in zip(unexplained, shown, strict=True)], catalogue
        )
        if section is not None:
            lines.append(f"Closest section of the book: {book_link(*section)}")
    lines += [
        "",
        f"(Inputs drawn at grading time with seed {seed}; first wrong input: "
        f"{cases[first].describe()}.)",
    ]
    raise CheckFailure("\n".join(lines))
