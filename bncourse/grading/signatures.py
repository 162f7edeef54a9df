"""Signatures: what a misconception does to a check's results, recognisable without its mutant.

A mutant names a misconception only when it reproduces the submission exactly. A
:class:`Signature` describes the mistake's effect instead, as a test on each input case of the
submission's and the reference's results (an :class:`Observation`): "the output is the correct
one times sqrt((n - 1) / n) per channel", "the buffers are right but the output is not". It
recognises near-variants (another formula with the same effect) and, since each signature
explains only its own quantities, combinations of mistakes.

A signature's test answers per case: True (this case shows the mistake), False (this case
contradicts it) or None (this case cannot tell, for example because the mistake changes nothing
on it). It matches when no case contradicts it and at least one shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from bncourse.grading.compare import Tolerance, same

__all__ = ["Observation", "Signature", "predicted", "right_but_not", "scaled"]


@dataclass(frozen=True)
class Observation:
    """One input case of a check: the submission's and the reference's results on it."""

    student: dict[str, Any]
    expected: dict[str, Any]
    case: Any
    tol: Tolerance

    def right(self, quantity: str) -> bool:
        """Whether the submission's ``quantity`` agrees with the reference on this case."""
        return same(self.student.get(quantity), self.expected.get(quantity), self.tol)

    def equals(self, quantity: str, value: object) -> bool:
        """Whether the submission's ``quantity`` agrees with ``value`` on this case."""
        return same(self.student.get(quantity), value, self.tol)


@dataclass(frozen=True)
class Signature:
    """The effect of a mistake on the quantities in ``explains``, tested case by case."""

    explains: frozenset[str]
    test: Callable[[Observation], bool | None]

    def matches(self, observations: Sequence[Observation]) -> bool:
        """True when no case contradicts the signature and at least one shows it."""
        verdicts = [self.test(o) for o in observations]
        return False not in verdicts and True in verdicts


def predicted(quantity: str, value: Callable[[Observation], object]) -> Signature:
    """The submission's ``quantity`` equals ``value(observation)``, computed from the reference.

    A case on which the predicted value equals the correct one cannot tell the mistake apart.
    """

    def test(o: Observation) -> bool | None:
        guess = value(o)
        if same(guess, o.expected.get(quantity), o.tol):
            return None if o.right(quantity) else False
        return o.equals(quantity, guess)

    return Signature(frozenset({quantity}), test)


def _broadcast(factor: float | Tensor, like: Tensor, channel_dim: int) -> float | Tensor:
    if not isinstance(factor, Tensor) or factor.dim() == 0 or like.dim() <= channel_dim:
        return factor
    shape = [1] * like.dim()
    shape[channel_dim] = -1
    return factor.to(like.dtype).reshape(shape)


def scaled(
    quantity: str,
    factor: Callable[[Any], float | Tensor],
    *,
    offset: Callable[[Any], float | Tensor] | None = None,
    channel_dim: int = 1,
) -> Signature:
    """``quantity`` equals the correct one times ``factor(case)`` (plus ``offset(case)``).

    A tensor factor or offset of one value per channel is broadcast along ``channel_dim``.
    """

    def value(o: Observation) -> object:
        correct = o.expected.get(quantity)
        if not isinstance(correct, Tensor):
            return None
        out = correct * _broadcast(factor(o.case), correct, channel_dim)
        if offset is not None:
            out = out + _broadcast(offset(o.case), correct, channel_dim)
        return out

    return predicted(quantity, value)


def right_but_not(wrong: Iterable[str], right: Iterable[str]) -> Signature:
    """The quantities ``right`` agree with the reference but ``wrong`` do not.

    For example, the buffers are right but the output is not: the statistics were computed
    correctly and used wrongly. A case on which ``wrong`` is right too cannot tell.
    """
    wrong, right = frozenset(wrong), frozenset(right)

    def test(o: Observation) -> bool | None:
        if not all(o.right(q) for q in right):
            return False
        return None if all(o.right(q) for q in wrong) else True

    return Signature(wrong, test)
