"""Autograder checks: compare a student's function with the reference and name the mistake.

The checks called by the graded cells of the exercises draw their inputs when they run (no
expected value can be known in advance), compare with :mod:`bncourse.nn` in float64, and on a
difference raise an :class:`AssertionError` whose message names the catalogued misconception that
reproduces the submission's behaviour, with a feedback paragraph and a link to the book. While the
student's code runs, calling the reference or torch's own normalization and dropout is refused
(:func:`forbid_reference`).

Layout: :mod:`~bncourse.grading.catalogue` (the misconceptions: feedback, book section, mutants per
task), :mod:`~bncourse.grading.engine` (run, compare, diagnose; shared by every exercise),
:mod:`~bncourse.grading.signatures` (a mistake recognised by its effect on the results, besides
its mutants), :mod:`~bncourse.grading.patterns` (what an unexplained difference has in common
with the right values: a scaling, an offset, NaN, ...), :mod:`~bncourse.grading.guard`,
:mod:`~bncourse.grading.compare`, and one module of checks per topic
(:mod:`~bncourse.grading.batchnorm`). A new graded function is a new
:class:`~bncourse.grading.engine.Task` (how to call it and what to read back, its reference, a
variant function whose keyword flags make each catalogued mistake) plus catalogue entries, or
extra ``mutants`` or ``signatures`` on existing entries, keyed by the task's name. Every failure
links the book: the misconception's section, else the task's closest one. A graded function that
raises NotImplementedError (the released stub) fails with "... is not implemented yet" alone.

Functions that take a whole network (:mod:`~bncourse.grading.probe`,
:mod:`~bncourse.grading.recalibration`, :mod:`~bncourse.grading.train_eval`,
:mod:`~bncourse.grading.placement`, the fine-tuning freeze of
:mod:`~bncourse.grading.practice`) are checked on small networks built from ``torch.nn`` by
:mod:`~bncourse.grading.networks`, which also records what the function did to them; their tasks
let torch's layers run and refuse only the course modules that hold their reference. Grading
imports :mod:`bncourse.nn` and :mod:`bncourse.theory`, never :mod:`bncourse.lab`.
"""

from bncourse.grading.backward import (
    check_batchnorm_backward_conv,
    check_batchnorm_backward_input,
    check_batchnorm_backward_numeric,
    check_batchnorm_backward_params,
)
from bncourse.grading.batchnorm import (
    check_batchnorm_eval,
    check_batchnorm_gradients,
    check_batchnorm_train,
    check_conv_layout,
    check_running_update,
)
from bncourse.grading.catalogue import CATALOGUE, Misconception
from bncourse.grading.dropout import (
    check_dropout_backward,
    check_dropout_eval,
    check_dropout_train,
    check_gaussian_dropout,
    check_uout,
)
from bncourse.grading.engine import CheckFailure, default_device
from bncourse.grading.guard import ReferenceCallError, forbid_reference
from bncourse.grading.placement import check_cnn_placement, check_mlp_placement
from bncourse.grading.practice import (
    check_fold_batchnorm,
    check_freeze_batchnorm,
    check_group_norm,
)
from bncourse.grading.probe import check_probe_side_effects, check_probe_values
from bncourse.grading.recalibration import check_recalibration_state, check_recalibration_stats
from bncourse.grading.train_eval import check_evaluate, check_evaluate_restores_modes, check_predict
from bncourse.grading.variance_shift import check_variance_shift

__all__ = [
    "CATALOGUE",
    "CheckFailure",
    "Misconception",
    "ReferenceCallError",
    "check_batchnorm_backward_conv",
    "check_batchnorm_backward_input",
    "check_batchnorm_backward_numeric",
    "check_batchnorm_backward_params",
    "check_batchnorm_eval",
    "check_batchnorm_gradients",
    "check_batchnorm_train",
    "check_cnn_placement",
    "check_conv_layout",
    "check_dropout_backward",
    "check_dropout_eval",
    "check_dropout_train",
    "check_gaussian_dropout",
    "check_uout",
    "check_evaluate",
    "check_evaluate_restores_modes",
    "check_fold_batchnorm",
    "check_freeze_batchnorm",
    "check_group_norm",
    "check_mlp_placement",
    "check_predict",
    "check_probe_side_effects",
    "check_probe_values",
    "check_recalibration_state",
    "check_recalibration_stats",
    "check_running_update",
    "check_variance_shift",
    "default_device",
    "forbid_reference",
]
