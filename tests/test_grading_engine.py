"""bncourse.grading.engine: signatures, descriptions of unexplained differences, book links on
every failure, and "not implemented yet" for every graded function left unfinished."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bncourse import grading
from bncourse.grading import (
    CATALOGUE,
    CheckFailure,
    backward,
    batchnorm,
    dropout,
    placement,
    practice,
    probe,
    recalibration,
    train_eval,
    variance_shift,
)
from bncourse.grading.catalogue import Misconception, book_link
from bncourse.grading.compare import Tolerance
from bncourse.grading.engine import NotImplementedYet, Task, is_unfinished, run_check
from bncourse.grading.patterns import describe_pattern
from bncourse.grading.signatures import right_but_not, scaled
from bncourse.trusted.kernel_side import _describe
from bncourse.trusted.proxies import _rebuild

ROOT = Path(__file__).resolve().parents[1]
TASK_MODULES = (
    backward,
    batchnorm,
    dropout,
    placement,
    practice,
    probe,
    recalibration,
    train_eval,
    variance_shift,
)
TASKS = {id(t): t for m in TASK_MODULES for t in vars(m).values() if isinstance(t, Task)}.values()
CHECKS = {name: getattr(grading, name) for name in grading.__all__ if name.startswith("check_")}
_FLOAT = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _named(message: str, catalogue) -> set[str]:
    return {m.name for m in catalogue.values() if f"[{m.name}]." in message}


def _batch_var(case) -> tuple[torch.Tensor, int]:
    """The biased batch variance per channel of a case's input, and the values per channel."""
    x = case.exact().x
    dims = [0, *range(2, x.dim())]
    return x.var(dim=dims, unbiased=False), x.numel() // x.shape[1]


def _unbiased_factor(case) -> torch.Tensor:
    """What normalising with the unbiased variance does to gamma * x_hat, per channel."""
    var, n = _batch_var(case)
    return torch.sqrt((var + case.eps) / (var * n / (n - 1) + case.eps))


# A misconception known only by its signature (no mutant): the batch normalised with the
# unbiased variance changes gamma * x_hat by a per-channel factor and leaves beta alone.
UNBIASED = Misconception(
    name="test-unbiased-normalisation",
    title="normalised with the unbiased variance",
    feedback="The batch is normalised with the biased variance; torch.var divides by n - 1.",
    page="batchnorm",
    anchor="bn-unbiased-variance",
    signatures={
        "batchnorm_train": (
            scaled(
                "output",
                _unbiased_factor,
                offset=lambda case: (1 - _unbiased_factor(case)) * case.exact().beta,
            ),
        )
    },
)
OUTPUT_ONLY = Misconception(
    name="test-output-only",
    title="statistics right, output wrong",
    feedback="The running statistics are right, so the batch statistics are: look at the output.",
    page="batchnorm",
    anchor="bn-affine",
    signatures={"batchnorm_train": (right_but_not(["output"], ["running_mean", "running_var"]),)},
)
# The course's catalogue names this mistake with mutants; these tests need a catalogue without it.
WITHOUT_UNBIASED = {k: m for k, m in CATALOGUE.items() if k != "normalized-with-unbiased-variance"}
WITH_UNBIASED = {**WITHOUT_UNBIASED, UNBIASED.name: UNBIASED}
WITH_OUTPUT_ONLY = {**WITHOUT_UNBIASED, OUTPUT_ONLY.name: OUTPUT_ONLY}


def _train(
    x, gamma, beta, running_mean, running_var, momentum, eps, *, unbiased=False, store="unbiased"
):
    """A training step written by a student: normalised with the unbiased variance where
    ``unbiased``, the ``store`` variance kept in running_var."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=dims)
    biased = ((x - mean.view(shape)) ** 2).sum(dim=dims) / n
    var = biased * n / (n - 1) if unbiased else biased
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean)
        kept = biased * n / (n - 1) if store == "unbiased" else biased
        running_var.mul_(1 - momentum).add_(momentum * kept)
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    return x_hat * gamma.view(shape) + beta.view(shape)


def _unbiased(*args):
    return _train(*args, unbiased=True)


def _unbiased_and_biased_buffer(*args):
    """Two mistakes: the unbiased variance normalises, the biased one is stored."""
    return _train(*args, unbiased=True, store="biased")


def _train_check(student, quantities, catalogue, seed=7, specs=batchnorm.CONV_SPECS):
    cases = batchnorm.draw_cases(specs, seed=seed, device="cpu")
    with pytest.raises(CheckFailure) as failure:
        run_check(
            batchnorm.TRAIN, student, cases, quantities, seed=seed, what="x", catalogue=catalogue
        )
    return str(failure.value)


# --- signatures ----------------------------------------------------------------------------------


def test_without_a_signature_the_unbiased_variance_is_unnamed():
    message = _train_check(_unbiased, ["output"], WITHOUT_UNBIASED)
    assert "No catalogued misconception matches" in message
    named = _train_check(_unbiased, ["output"], CATALOGUE)
    assert _named(named, CATALOGUE) == {"normalized-with-unbiased-variance"}


def test_a_signature_names_a_mistake_no_mutant_makes():
    message = _train_check(_unbiased, ["output", "running_mean", "running_var"], WITH_UNBIASED)
    assert _named(message, WITH_UNBIASED) == {UNBIASED.name}
    assert UNBIASED.explain() in message
    assert "No catalogued misconception matches" not in message


def test_a_signature_and_a_mutant_name_two_mistakes_made_at_once():
    message = _train_check(
        _unbiased_and_biased_buffer, ["output", "running_mean", "running_var"], WITH_UNBIASED
    )
    assert _named(message, WITH_UNBIASED) == {UNBIASED.name, "biased-running-variance"}
    assert "No catalogued misconception matches" not in message


def _output_cubed(x, gamma, beta, running_mean, running_var, momentum, eps):
    return _train(x, gamma, beta, running_mean, running_var, momentum, eps) + 0.01 * x**3


def test_right_buffers_with_a_wrong_output_are_recognised():
    message = _train_check(_output_cubed, ["output"], WITH_OUTPUT_ONLY)
    assert _named(message, WITH_OUTPUT_ONLY) == {OUTPUT_ONLY.name}


def test_a_case_that_contradicts_a_signature_keeps_it_silent():
    def also_buffers_wrong(x, gamma, beta, running_mean, running_var, momentum, eps):
        out = _output_cubed(x, gamma, beta, running_mean, running_var, momentum, eps)
        running_mean.add_(0.1 * running_mean**2)
        return out

    message = _train_check(also_buffers_wrong, ["output"], WITH_OUTPUT_ONLY)
    assert not _named(message, WITH_OUTPUT_ONLY)
    assert "No catalogued misconception matches" in message


# --- descriptions of a difference no misconception explains ----------------------------------------

TOL = Tolerance.for_dtype(torch.float32)


def _correct(shape=(6, 4)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5


def _numbers(text: str) -> list[float]:
    return [float(v) for v in _FLOAT.findall(text)]


def test_a_global_scaling_is_described_with_its_factor():
    e, k = _correct(), 0.87
    found = describe_pattern(e * k, e, TOL, channel_dim=1)
    assert found.kind == "scale"
    assert _numbers(found.text) == pytest.approx([k], rel=1e-3)


def test_a_per_channel_scaling_is_described_with_every_factor():
    e = _correct()
    k = torch.linspace(0.5, 2.0, e.shape[1], dtype=torch.float64)
    found = describe_pattern(e * k, e, TOL, channel_dim=1)
    assert found.kind == "channel-scale"
    assert _numbers(found.text) == pytest.approx(k.tolist(), rel=1e-3)


def test_a_per_channel_scaling_and_shift_is_described():
    e = _correct((5, 3, 2, 2))
    k = torch.tensor([0.8, 0.9, 1.2], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    found = describe_pattern(e * k.view(1, -1, 1, 1) + b.view(1, -1, 1, 1), e, TOL, channel_dim=1)
    assert found.kind == "channel-affine"
    assert _numbers(found.text) == pytest.approx(k.tolist() + b.tolist(), rel=1e-3)


def test_an_offset_is_described_with_its_size_and_direction():
    e, d = _correct(), -0.25
    found = describe_pattern(e + d, e, TOL, channel_dim=1)
    assert found.kind == "offset" and "minus about" in found.text
    assert _numbers(found.text) == pytest.approx([abs(d)], rel=1e-3)
    d = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    found = describe_pattern(e + d, e, TOL, channel_dim=1)
    assert found.kind == "channel-offset"
    assert _numbers(found.text) == pytest.approx(d.tolist(), rel=1e-3, abs=1e-9)


def test_sign_flips_are_described():
    e = _correct()
    assert describe_pattern(-e, e, TOL, channel_dim=1).kind == "sign"
    k = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    found = describe_pattern(e * k, e, TOL, channel_dim=1)
    assert found.kind == "channel-sign"
    assert str(torch.nonzero(k < 0).flatten().tolist()) in found.text


def test_zeros_nan_inf_and_the_input_are_described():
    e = _correct()
    x = e * 3 - 1
    assert describe_pattern(torch.zeros_like(e), e, TOL).kind == "zeros"
    nan = torch.full_like(e, float("nan"))
    assert describe_pattern(nan, e, TOL).text.startswith("is NaN everywhere")
    some = e.clone()
    some[0, :2] = float("nan")
    found = describe_pattern(some, e, TOL)
    assert found.kind == "nan" and f"2 of {e.numel()}" in found.text
    assert describe_pattern(e / 0, e, TOL).kind == "inf"
    found = describe_pattern(x.clone(), e, TOL, inputs={"x": x})
    assert found.kind == "input" and "the input x unchanged" in found.text


def test_no_relation_is_claimed_where_there_is_none():
    e = _correct()
    assert describe_pattern(e + 0.1 * e**3, e, TOL, channel_dim=1) is None
    # One value per channel: any per-channel factor fits, so none is claimed.
    e = _correct((1, 5))
    k = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    assert describe_pattern(e * k, e, TOL, channel_dim=1) is None


def test_checks_describe_the_relation_on_a_named_input():
    with pytest.raises(CheckFailure) as failure:
        grading.check_batchnorm_eval(lambda x, *args: x.clone(), seed=3)
    message = str(failure.value)
    assert "your output equals the input x unchanged" in message
    assert f"Closest section of the book: {batchnorm.EVAL.link()}" in message
    with pytest.raises(CheckFailure) as failure:
        grading.check_batchnorm_train(lambda x, *args: x * float("nan"), seed=3)
    assert "your output is NaN everywhere" in str(failure.value)


# --- a book link on every failure ----------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.reference.__name__}")
def test_every_task_links_a_section_of_the_book(task):
    page, anchor = task.section()
    assert f"({anchor})=" in (ROOT / "book" / f"{page}.md").read_text()
    assert task.link() == book_link(page, anchor)
    assert task.link().endswith(f"book/{page}.html#{anchor}")


def test_the_closest_section_defaults_to_the_catalogue_and_can_be_given():
    assert batchnorm.TRAIN.section() == (
        CATALOGUE["stats-wrong-axes"].page,
        CATALOGUE["stats-wrong-axes"].anchor,
    )
    assert batchnorm.EVAL.section() == batchnorm.EVAL.book


def _delegating(x, gamma, beta, running_mean, running_var, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, gamma, beta, True, momentum, eps)


def _hiding(x, gamma, beta, running_mean, running_var, momentum, eps):
    try:
        return _delegating(x, gamma, beta, running_mean, running_var, momentum, eps)
    except Exception:
        return _train(x, gamma, beta, running_mean, running_var, momentum, eps) * 2


@pytest.mark.parametrize(
    "student",
    [
        None,  # not a function
        lambda *args: (args[0], args[3], args[4]),  # a malformed return
        _delegating,
        _hiding,
        _output_cubed,  # wrong values, no misconception
        _unbiased_and_biased_buffer,  # two misconceptions at once
        lambda *args: _train(*args) * 1.5,  # wrong values described
    ],
    ids=[
        "not-callable",
        "tuple",
        "delegation",
        "hidden-delegation",
        "unknown",
        "two-mistakes",
        "scale",
    ],
)
def test_every_failure_carries_a_book_link(student):
    for check in (grading.check_batchnorm_train, grading.check_conv_layout):
        with pytest.raises(CheckFailure) as failure:
            check(student, seed=2)
        message = str(failure.value)
        links = {batchnorm.TRAIN.link()} | {m.link for m in CATALOGUE.values()}
        assert any(link in message for link in links), message


# --- not implemented yet -------------------------------------------------------------------------


def _stub(*args, **kwargs):
    raise NotImplementedError()


# The name each check reports for an unfinished function: the name the notebook defines.
UNFINISHED = {
    "check_batchnorm_backward_conv": "batchnorm_backward",
    "check_batchnorm_backward_input": "batchnorm_backward",
    "check_batchnorm_backward_numeric": "batchnorm_backward",
    "check_batchnorm_backward_params": "batchnorm_backward",
    "check_batchnorm_eval": "batchnorm_forward_eval",
    "check_batchnorm_gradients": "batchnorm_forward_train",
    "check_batchnorm_train": "batchnorm_forward_train",
    "check_cnn_placement": "make_cnn",
    "check_conv_layout": "batchnorm_forward_train",
    "check_dropout_backward": "dropout_forward",
    "check_dropout_eval": "dropout_forward",
    "check_dropout_train": "dropout_forward",
    "check_fold_batchnorm": "fold_batchnorm",
    "check_freeze_batchnorm": "freeze_batchnorm",
    "check_group_norm": "group_norm",
    "check_evaluate": "evaluate",
    "check_evaluate_restores_modes": "evaluate",
    "check_gaussian_dropout": "gaussian_dropout",
    "check_mlp_placement": "mlp_without_shift",
    "check_predict": "predict",
    "check_probe_side_effects": "probe_variance_shift",
    "check_probe_values": "probe_variance_shift",
    "check_recalibration_state": "recalibrate_bn",
    "check_recalibration_stats": "recalibrate_bn",
    "check_running_update": "batchnorm_forward_train",
    "check_uout": "uout",
    "check_variance_shift": "variance_shift",
}


def test_every_check_and_every_task_is_covered():
    assert set(UNFINISHED) == set(CHECKS)
    names = {t.function_name for t in TASKS}
    assert names == set(UNFINISHED.values()) | {"dropout_forward and dropout_backward"}


def _assert_unfinished(check, functions, name):
    with pytest.raises(CheckFailure) as failure:
        check(*functions)
    assert isinstance(failure.value, NotImplementedYet)
    assert str(failure.value) == f"{name} is not implemented yet."
    assert not getattr(failure.value, "__notes__", [])
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


@pytest.mark.parametrize("check_name", sorted(UNFINISHED))
def test_an_unfinished_function_says_so_and_nothing_else(check_name):
    check = CHECKS[check_name]
    arity = sum(p.default is p.empty for p in inspect.signature(check).parameters.values())
    _assert_unfinished(check, [_stub] * arity, UNFINISHED[check_name])


def test_an_unfinished_backward_after_a_finished_forward_is_named():
    _assert_unfinished(
        grading.check_dropout_backward, [dropout.dropout_variant, _stub], "dropout_backward"
    )


def test_the_students_own_message_is_kept():
    def partly(x, *args):
        if x.dim() > 2:
            raise NotImplementedError("conv input")
        return _train(x, *args)

    with pytest.raises(NotImplementedYet, match=r"^batchnorm_forward_train is not implemented "):
        grading.check_conv_layout(partly)


def _torch_not_implemented(x, *args):
    return torch.nn.Module()(x)  # a module without forward: torch raises NotImplementedError


def test_torch_raising_not_implemented_is_not_called_unfinished():
    for check in (grading.check_batchnorm_train, grading.check_conv_layout):
        with pytest.raises(NotImplementedError) as error:
            check(_torch_not_implemented)
        assert not isinstance(error.value, CheckFailure)
        notes = "\n".join(error.value.__notes__)
        assert "input of shape" in notes
        assert "[stats-wrong-axes]" not in notes  # not a sign of statistics over wrong axes


@pytest.mark.parametrize(
    ("student", "unfinished"), [(_stub, True), (_torch_not_implemented, False)]
)
def test_unfinished_survives_the_trip_from_the_notebooks_kernel(student, unfinished):
    try:
        student(torch.zeros(2, 3))
    except NotImplementedError as error:
        described = json.loads(json.dumps(_describe(error, [])))  # data, as the kernel sends it
    rebuilt = _rebuild(described, [])
    assert isinstance(rebuilt, NotImplementedError)
    assert is_unfinished(rebuilt) is unfinished
