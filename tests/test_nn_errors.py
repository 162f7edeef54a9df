"""Bad input gets an error that names the argument and what was expected.

For every case torch.nn also rejects, the torch twin is called too, and our exception must be an
instance of the type torch raises (torch mixes ValueError, RuntimeError, TypeError and
AttributeError), so that code written against torch catches ours. Cases without a torch twin
(Gaussian dropout, Uout) or where ours is deliberately stricter are listed separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as TF

from bncourse import nn as bnn
from bncourse.nn import functional as F


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


@dataclass(frozen=True)
class Case:
    ours: Callable[[], object]
    torch: Callable[[], object] | None
    error: type[Exception]
    match: str


SHARED = {
    "BatchNorm1d-with-4D-input": Case(
        lambda: bnn.BatchNorm1d(3)(zeros(2, 3, 4, 4)),
        lambda: torch.nn.BatchNorm1d(3)(zeros(2, 3, 4, 4)),
        ValueError,
        r"input of shape \(N, C\) or \(N, C, L\), got a 4D tensor",
    ),
    "BatchNorm1d-with-1D-input": Case(
        lambda: bnn.BatchNorm1d(3)(zeros(3)),
        lambda: torch.nn.BatchNorm1d(3)(zeros(3)),
        ValueError,
        r"input of shape \(N, C\) or \(N, C, L\), got a 1D tensor",
    ),
    "BatchNorm2d-with-2D-input": Case(
        lambda: bnn.BatchNorm2d(3)(zeros(2, 3)),
        lambda: torch.nn.BatchNorm2d(3)(zeros(2, 3)),
        ValueError,
        r"input of shape \(N, C, H, W\), got a 2D tensor",
    ),
    "BatchNorm1d-channel-mismatch": Case(
        lambda: bnn.BatchNorm1d(3)(zeros(4, 5)),
        lambda: torch.nn.BatchNorm1d(3)(zeros(4, 5)),
        ValueError,
        r"BatchNorm1d\(3\) expects 3 channels in dim 1 of input, got 5",
    ),
    "BatchNorm2d-channel-mismatch-in-eval": Case(
        lambda: bnn.BatchNorm2d(3).eval()(zeros(4, 5, 2, 2)),
        lambda: torch.nn.BatchNorm2d(3).eval()(zeros(4, 5, 2, 2)),
        ValueError,
        r"BatchNorm2d\(3\) expects 3 channels in dim 1 of input, got 5",
    ),
    "batch_norm-running_mean-channel-mismatch": Case(
        lambda: F.batch_norm(zeros(4, 5), torch.zeros(3), torch.ones(3)),
        lambda: TF.batch_norm(zeros(4, 5), torch.zeros(3), torch.ones(3)),
        ValueError,
        r"running_mean must have shape \(5,\), one value per channel",
    ),
    "batch_norm-weight-channel-mismatch": Case(
        lambda: F.batch_norm(zeros(4, 3), torch.zeros(3), torch.ones(3), torch.ones(4)),
        lambda: TF.batch_norm(zeros(4, 3), torch.zeros(3), torch.ones(3), torch.ones(4)),
        ValueError,
        r"weight must have shape \(3,\), one value per channel",
    ),
    "batch_norm-eval-without-running-statistics": Case(
        lambda: F.batch_norm(zeros(4, 3), None, None, training=False),
        lambda: TF.batch_norm(zeros(4, 3), None, None, training=False),
        ValueError,
        r"running_mean and running_var are needed in evaluation mode",
    ),
    "BatchNorm1d-one-value-per-channel-(1,C)": Case(
        lambda: bnn.BatchNorm1d(3)(zeros(1, 3)),
        lambda: torch.nn.BatchNorm1d(3)(zeros(1, 3)),
        ValueError,
        r"training mode needs more than 1 value per channel .*got input of shape \(1, 3\)",
    ),
    "BatchNorm1d-one-value-per-channel-(1,C,1)": Case(
        lambda: bnn.BatchNorm1d(3)(zeros(1, 3, 1)),
        lambda: torch.nn.BatchNorm1d(3)(zeros(1, 3, 1)),
        ValueError,
        r"more than 1 value per channel .*got input of shape \(1, 3, 1\)",
    ),
    "BatchNorm2d-one-value-per-channel-(1,C,1,1)": Case(
        lambda: bnn.BatchNorm2d(3)(zeros(1, 3, 1, 1)),
        lambda: torch.nn.BatchNorm2d(3)(zeros(1, 3, 1, 1)),
        ValueError,
        r"more than 1 value per channel .*got input of shape \(1, 3, 1, 1\)",
    ),
    "BatchNorm1d-untracked-eval-uses-batch-statistics-of-one": Case(
        lambda: bnn.BatchNorm1d(3, track_running_stats=False).eval()(zeros(1, 3)),
        lambda: torch.nn.BatchNorm1d(3, track_running_stats=False).eval()(zeros(1, 3)),
        ValueError,
        r"more than 1 value per channel",
    ),
    "batch_norm-one-value-per-channel": Case(
        lambda: F.batch_norm(zeros(1, 3), None, None, training=True),
        lambda: TF.batch_norm(zeros(1, 3), None, None, training=True),
        ValueError,
        r"more than 1 value per channel .*got input of shape \(1, 3\)",
    ),
    "dropout-p-above-1": Case(
        lambda: F.dropout(zeros(3), 1.5),
        lambda: TF.dropout(zeros(3), 1.5),
        ValueError,
        r"p is the probability of dropping a unit and must lie in \[0, 1\], got 1.5",
    ),
    "dropout-p-below-0": Case(
        lambda: F.dropout(zeros(3), -0.1),
        lambda: TF.dropout(zeros(3), -0.1),
        ValueError,
        r"p .* must lie in \[0, 1\], got -0.1",
    ),
    "dropout-p-nan": Case(
        lambda: F.dropout(zeros(3), float("nan")),
        lambda: TF.dropout(zeros(3), float("nan")),
        ValueError,
        r"p .* must lie in \[0, 1\], got nan",
    ),
    "dropout-p-not-a-number": Case(
        lambda: F.dropout(zeros(3), "0.3"),
        lambda: TF.dropout(zeros(3), "0.3"),
        TypeError,
        r"p must be a float",
    ),
    "Dropout-p-above-1": Case(
        lambda: bnn.Dropout(1.5),
        lambda: torch.nn.Dropout(1.5),
        ValueError,
        r"p .* must lie in \[0, 1\], got 1.5",
    ),
    "Dropout-p-below-0": Case(
        lambda: bnn.Dropout(-0.1),
        lambda: torch.nn.Dropout(-0.1),
        ValueError,
        r"p .* must lie in \[0, 1\], got -0.1",
    ),
    "BatchNorm1d-list-input": Case(
        lambda: bnn.BatchNorm1d(3)([[1.0, 2.0, 3.0]] * 2),
        lambda: torch.nn.BatchNorm1d(3)([[1.0, 2.0, 3.0]] * 2),
        TypeError,
        r"input must be a torch.Tensor, got list",
    ),
    "BatchNorm2d-numpy-input": Case(
        lambda: bnn.BatchNorm2d(3)(torch.zeros(2, 3, 2, 2).numpy()),
        lambda: torch.nn.BatchNorm2d(3)(torch.zeros(2, 3, 2, 2).numpy()),
        TypeError,
        r"input must be a torch.Tensor, got ndarray",
    ),
    "batch_norm-list-input": Case(
        lambda: F.batch_norm([[1.0, 2.0, 3.0]] * 2, None, None, training=True),
        lambda: TF.batch_norm([[1.0, 2.0, 3.0]] * 2, None, None, training=True),
        TypeError,
        r"input must be a torch.Tensor, got list",
    ),
    "dropout-list-input": Case(
        lambda: F.dropout([1.0, 2.0]),
        lambda: TF.dropout([1.0, 2.0]),
        TypeError,
        r"input must be a torch.Tensor, got list",
    ),
    "Dropout-list-input": Case(
        lambda: bnn.Dropout()([1.0, 2.0]),
        lambda: torch.nn.Dropout()([1.0, 2.0]),
        TypeError,
        r"input must be a torch.Tensor, got list",
    ),
    "BatchNorm1d-eps-0-in-training": Case(
        lambda: bnn.BatchNorm1d(3, eps=0)(zeros(4, 3)),
        lambda: torch.nn.BatchNorm1d(3, eps=0)(zeros(4, 3)),
        ValueError,
        r"eps must be positive in training mode .*got 0",
    ),
    "BatchNorm2d-negative-eps-at-forward": Case(
        lambda: bnn.BatchNorm2d(3, eps=-1e-5)(zeros(2, 3, 2, 2)),
        lambda: torch.nn.BatchNorm2d(3, eps=-1e-5)(zeros(2, 3, 2, 2)),
        ValueError,
        r"eps must be non-negative \(positive in training mode\), got -1e-05",
    ),
    "batch_norm-eps-0-in-training": Case(
        lambda: F.batch_norm(zeros(4, 3), None, None, training=True, eps=0.0),
        lambda: TF.batch_norm(zeros(4, 3), None, None, training=True, eps=0.0),
        ValueError,
        r"eps must be positive in training mode",
    ),
    "batch_norm-momentum-not-a-number": Case(
        lambda: F.batch_norm(zeros(4, 3), None, None, training=True, momentum="0.1"),
        lambda: TF.batch_norm(zeros(4, 3), None, None, training=True, momentum="0.1"),
        TypeError,
        r"momentum must be a float",
    ),
    "BatchNorm2d-float32-module-float64-input": Case(
        lambda: bnn.BatchNorm2d(3)(zeros(2, 3, 2, 2).double()),
        lambda: torch.nn.BatchNorm2d(3)(zeros(2, 3, 2, 2).double()),
        ValueError,
        r"must have the input's dtype torch.float64, got one of dtype torch.float32",
    ),
    "BatchNorm1d-integer-input": Case(
        lambda: bnn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long)),
        lambda: torch.nn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long)),
        TypeError,
        r"input must be a floating-point tensor, got dtype torch.int64",
    ),
    "dropout1d-4D-input": Case(
        lambda: F.dropout1d(zeros(2, 3, 4, 4)),
        lambda: TF.dropout1d(zeros(2, 3, 4, 4)),
        ValueError,
        r"dropout1d expects input of shape \(N, C, L\) or \(C, L\), got a 4D tensor",
    ),
    "Dropout2d-p-above-1": Case(
        lambda: bnn.Dropout2d(1.5),
        lambda: torch.nn.Dropout2d(1.5),
        ValueError,
        r"p .* must lie in \[0, 1\], got 1.5",
    ),
    "AlphaDropout-p-below-0": Case(
        lambda: bnn.AlphaDropout(-0.5),
        lambda: torch.nn.AlphaDropout(-0.5),
        ValueError,
        r"got -0.5",
    ),
    "BatchNorm3d-with-4D-input": Case(
        lambda: bnn.BatchNorm3d(3)(zeros(2, 3, 2, 2)),
        lambda: torch.nn.BatchNorm3d(3)(zeros(2, 3, 2, 2)),
        ValueError,
        r"BatchNorm3d expects input of shape \(N, C, D, H, W\), got a 4D tensor",
    ),
}

OURS_ONLY = {
    # No torch twin: Gaussian dropout and Uout are not part of torch.nn.
    "gaussian_dropout-p-1": Case(
        lambda: F.gaussian_dropout(zeros(3), 1.0),
        None,
        ValueError,
        r"p .* must lie in \[0, 1\) \(p = 1 means noise of infinite variance\), got 1.0",
    ),
    "GaussianDropout-p-1": Case(
        lambda: bnn.GaussianDropout(1), None, ValueError, r"p .* must lie in \[0, 1\)"
    ),
    "GaussianDropout-p-above-1": Case(
        lambda: bnn.GaussianDropout(1.5), None, ValueError, r"must lie in \[0, 1\).*got 1.5"
    ),
    "gaussian_dropout-p-below-0": Case(
        lambda: F.gaussian_dropout(zeros(3), -0.1), None, ValueError, r"got -0.1"
    ),
    "uout-beta-below-0": Case(
        lambda: F.uout(zeros(3), -0.1),
        None,
        ValueError,
        r"beta is the half-width of the uniform noise and must be >= 0, got -0.1",
    ),
    "Uout-beta-below-0": Case(lambda: bnn.Uout(-0.1), None, ValueError, r"beta must be >= 0"),
    "uout-beta-nan": Case(lambda: F.uout(zeros(3), float("nan")), None, ValueError, r"beta"),
    "Uout-beta-not-a-number": Case(lambda: bnn.Uout("0.1"), None, TypeError, r"beta must be a"),
    "gaussian_dropout-list-input": Case(
        lambda: F.gaussian_dropout([1.0]), None, TypeError, r"input must be a torch.Tensor"
    ),
    "Uout-list-input": Case(
        lambda: bnn.Uout()([1.0]), None, TypeError, r"input must be a torch.Tensor"
    ),
    # Stricter than torch, which accepts these silently.
    "BatchNorm1d-untracked-channel-mismatch": Case(
        # torch only notices a mismatch through a parameter or buffer of the wrong length
        lambda: bnn.BatchNorm1d(3, affine=False, track_running_stats=False)(zeros(4, 5)),
        None,
        ValueError,
        r"expects 3 channels in dim 1 of input, got 5",
    ),
    "BatchNorm2d-float-features": Case(
        lambda: bnn.BatchNorm2d(3.0), None, TypeError, r"num_features must be an int"
    ),
    "batch_norm-only-one-running-statistic": Case(
        lambda: F.batch_norm(zeros(4, 3), torch.zeros(3), None, training=True),
        None,
        ValueError,
        r"running_mean and running_var must be given together",
    ),
}


@pytest.mark.parametrize("case", list(SHARED.values()), ids=list(SHARED))
def test_bad_input_is_refused_like_torch(case: Case):
    with pytest.raises(Exception) as theirs:  # noqa: B017 - torch's exception types vary by case
        case.torch()
    with pytest.raises(case.error, match=case.match) as ours:
        case.ours()
    assert isinstance(ours.value, type(theirs.value)), (
        f"torch raises {type(theirs.value).__name__}, which does not catch our "
        f"{type(ours.value).__name__}"
    )


@pytest.mark.parametrize("case", list(OURS_ONLY.values()), ids=list(OURS_ONLY))
def test_bad_input_without_a_torch_twin_is_refused(case: Case):
    with pytest.raises(case.error, match=case.match):
        case.ours()


def test_the_stricter_case_is_really_accepted_by_torch():
    """Documents where ours is stricter: torch runs this without complaint."""
    torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False)(zeros(4, 5))


def test_a_batch_of_one_is_fine_in_eval_mode():
    """The one-value-per-channel rule applies in training only, as in torch."""
    for ours, theirs, shape in (
        (bnn.BatchNorm1d(3), torch.nn.BatchNorm1d(3), (1, 3)),
        (bnn.BatchNorm2d(3), torch.nn.BatchNorm2d(3), (1, 3, 1, 1)),
    ):
        x = torch.arange(3.0).reshape(shape)
        assert torch.equal(ours.eval()(x), theirs.eval()(x))
