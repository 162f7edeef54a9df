"""ps02_batchnorm_backward: the notebook, and its autograder proven through nbgrader.

Every submission below is the instructor's solution with the function rewritten: a *mutant* makes
one catalogued mistake (an edit of the solution's code, so that it stays next to the solution it
mutates), an *alternative* is another correct way to write the function, a *delegation* lets
autograd or a reference compute the gradients. All of them are autograded in one temporary course
(``submissions.autograde_many``); each must get exactly the per-cell scores stated here, with
feedback that names its misconception in exactly the cells it costs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat
import pytest
from builders import builder
from nbgrader_course import by_grade_id, says_only_not_implemented
from submissions import BLANK, Graded, answers, autograde_many, edited, read_source, submission

from bncourse.grading import CATALOGUE

_builder = builder("ps02_batchnorm_backward")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS
SOURCE = _builder.SOURCE
build = _builder.build

ORDER = list(POINTS)  # test_grad_params, test_grad_input, test_conv_layout
PARAMS, INPUT, CONV = ORDER
CELL = "batchnorm_backward"


# --- the committed notebook ------------------------------------------------------------------


def test_source_notebook_is_what_the_builder_writes():
    assert SOURCE.read_text(encoding="utf-8") == nbformat.writes(build(), version=4) + "\n"


def test_source_notebook_has_graded_cells_and_no_outputs():
    nb = nbformat.read(SOURCE, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs") and cell.get("execution_count") is None, cell.id
    cells = by_grade_id(nb)
    graded = {
        k: v.metadata["nbgrader"] for k, v in cells.items() if v.metadata["nbgrader"]["grade"]
    }
    assert {k: m["points"] for k, m in graded.items()} == POINTS
    for grade_id, meta in graded.items():
        source = cells[grade_id].source
        assert meta["locked"] and not meta["solution"], grade_id
        assert "### BEGIN HIDDEN TESTS" in source and "check_batchnorm_backward_numeric" in source
    assert {k for k, v in cells.items() if v.metadata["nbgrader"]["solution"]} == {CELL}


# --- submissions -------------------------------------------------------------------------------

CODE = answers(read_source(ASSIGNMENT))[CELL]
DIMS = "dims = [0, *range(2, x.dim())]  # every axis but the channel axis 1"
VAR = "var = x.var(dim=dims, unbiased=False, keepdim=True)  # biased, as in the forward pass"
DBETA = "dbeta = dout.sum(dim=dims)"
DGAMMA = "dgamma = (dout * x_hat).sum(dim=dims)"
DX = "dx = (dx_hat - mean_path - variance_path) * inv_std"
INV_STD = "inv_std = 1 / torch.sqrt(var + eps)"
DX_HAT = "dx_hat = dout * gamma.reshape(shape)"
RETURN = "return dx, dgamma, dbeta"


@dataclass(frozen=True)
class Mistake:
    """A rewrite of the solution, the graded cells it costs and the misconception they name."""

    code: str
    lost: frozenset[str]
    named: str = ""  # the misconception every lost cell's feedback names
    says: str = ""  # other text every lost cell's feedback contains


def mutant(lost: set[str], named: str, *edits: tuple[str, str]) -> Mistake:
    return Mistake(edited(CODE, *edits), frozenset(lost), named)


# Every catalogued misconception of the task, as a student writes it, in each of the patterns of
# cells it can cost. (Every variant of every misconception is checked against the checks
# themselves, without nbgrader, in test_grading_backward.py.)
MUTANTS = {
    "params-per-sample": mutant(
        {PARAMS, CONV},
        "grad-params-wrong-reduction",
        (DBETA, "dbeta = dout.sum(dim=list(range(1, x.dim())))"),
        (DGAMMA, "dgamma = (dout * x_hat).sum(dim=list(range(1, x.dim())))"),
    ),
    "params-over-batch-axis-only": mutant(
        {CONV},
        "grad-params-wrong-reduction",
        (DBETA, "dbeta = dout.sum(dim=0)"),
        (DGAMMA, "dgamma = (dout * x_hat).sum(dim=0)"),
    ),
    "dgamma-with-x": mutant(
        {PARAMS, CONV}, "grad-gamma-without-x-hat", (DGAMMA, "dgamma = (dout * x).sum(dim=dims)")
    ),
    "dx-direct-path-only": mutant(
        {INPUT, CONV}, "grad-input-missing-paths", (DX, "dx = dx_hat * inv_std")
    ),
    "torch-var-default": mutant(
        {PARAMS, INPUT, CONV},
        "grad-unbiased-variance",
        (VAR, "var = x.var(dim=dims, keepdim=True)"),
    ),
    "conv-batch-axis-only": mutant({CONV}, "grad-conv-wrong-axes", (DIMS, "dims = [0]")),
    "eps-ignored": mutant(
        {PARAMS, INPUT, CONV}, "grad-eps-missing", (INV_STD, "inv_std = 1 / torch.sqrt(var)")
    ),
    "dx-without-gamma": mutant(
        {INPUT, CONV}, "grad-input-without-gamma", (DX_HAT, "dx_hat = dout")
    ),
    "variance-path-added": mutant(
        {INPUT, CONV},
        "grad-variance-path-sign",
        (DX, "dx = (dx_hat - mean_path + variance_path) * inv_std"),
    ),
    # Right gradients, but the caller's dout is overwritten.
    "dout-scaled-in-place": mutant(
        {PARAMS, INPUT, CONV},
        "inputs-modified-in-place",
        (DX_HAT, "dx_hat = dout.mul_(gamma.reshape(shape))  # in place"),
    ),
    "conv-reshape-without-transpose": mutant(
        {CONV},
        "grad-conv-wrong-axes",
        (
            DIMS,
            "shape_in = x.shape\n"
            "x, dout = x.reshape(-1, x.shape[1]), dout.reshape(-1, x.shape[1])\n"
            "dims = [0]",
        ),
        (RETURN, "return dx.reshape(shape_in), dgamma, dbeta"),
    ),
}

# Autograd and the references compute the gradients: zero for every part.
GUARD = "This part scores zero"
DELEGATIONS = {
    "autograd": Mistake(
        """
        x, gamma = x.clone().requires_grad_(), gamma.clone().requires_grad_()
        beta = torch.zeros_like(gamma, requires_grad=True)
        y = batchnorm_forward(x, gamma, beta, eps)
        return torch.autograd.grad(y, (x, gamma, beta), dout)
        """,
        frozenset(ORDER),
        says="batchnorm_backward used autograd",
    ),
    "course-backward": Mistake(
        """
        from bncourse.nn.backward import batch_norm_backward

        return batch_norm_backward(dout, x, gamma, eps)
        """,
        frozenset(ORDER),
        says="batchnorm_backward called bncourse.nn.",
    ),
    # No forbidden name in the source: the ATen kernel looked up by a computed string.
    "aten-by-computed-name": Mistake(
        """
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        invstd = 1 / torch.sqrt(x.var(dim=dims, unbiased=False) + eps)
        kernel = getattr(torch.ops.aten, "native_batch_" + "norm_backward")
        return kernel(dout, x, gamma, None, None, mean, invstd, True, eps, [True, True, True])
        """,
        frozenset(ORDER),
        says="batchnorm_backward called torch.ops.aten.native_batch_norm_backward",
    ),
    # torch's Python decomposition of the same kernel, without torch.ops: named as it was called.
    "python-decomposition": Mistake(
        """
        from torch._decomp import decompositions

        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        invstd = 1 / torch.sqrt(x.var(dim=dims, unbiased=False) + eps)
        return decompositions.native_batch_norm_backward(
            dout, x, gamma, None, None, mean, invstd, True, eps, [True, True, True]
        )
        """,
        frozenset(ORDER),
        says="batchnorm_backward called torch._decomp.decompositions.native_batch_norm_backward.",
    ),
}

# Code that raises a TypeError: the feedback says what the check called and what it expects.
CRASHES = {
    "dims-with-a-range": edited(CODE, (DIMS, "dims = (0, range(2, x.dim()))")),
}
SIGNATURE = "The check called batchnorm_backward(dout, x, gamma, eps) with dout and x"

ALTERNATIVES = {
    # CS231n's staged graph, node by node, in the order of the forward pass.
    "staged-graph": """
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1]
        mu = x.sum(dim=dims, keepdim=True) / n
        xmu = x - mu
        var = (xmu**2).sum(dim=dims, keepdim=True) / n
        sqrtvar = torch.sqrt(var + eps)
        ivar = 1.0 / sqrtvar
        xhat = xmu * ivar
        dbeta = dout.sum(dim=dims)
        dgamma = (dout * xhat).sum(dim=dims)
        dxhat = dout * gamma.reshape(shape)
        divar = (dxhat * xmu).sum(dim=dims, keepdim=True)
        dsqrtvar = -divar / sqrtvar**2
        dvar = 0.5 / sqrtvar * dsqrtvar
        dxmu = dxhat * ivar + 2 * xmu * dvar / n
        dmu = -dxmu.sum(dim=dims, keepdim=True)
        return dxmu + dmu / n, dgamma, dbeta
        """,
    "loops-in-float64": """
        dx = torch.empty_like(x, dtype=torch.float64)
        dgamma = torch.empty(x.shape[1], dtype=torch.float64, device=x.device)
        dbeta = torch.empty_like(dgamma)
        for c in range(x.shape[1]):
            xc, gc = x[:, c].double(), dout[:, c].double()
            n = xc.numel()
            mean = xc.sum() / n
            std = (((xc - mean) ** 2).sum() / n + eps) ** 0.5
            xhat = (xc - mean) / std
            dbeta[c] = gc.sum()
            dgamma[c] = (gc * xhat).sum()
            dx[:, c] = gamma[c].double() / (n * std) * (n * gc - gc.sum() - xhat * (gc * xhat).sum())
        return dx.to(x.dtype), dgamma.to(x.dtype), dbeta.to(x.dtype)
        """,
    # dx from dbeta and dgamma themselves: the compact form of the three paths.
    "compact-from-param-gradients": """
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1]
        centered = x - x.mean(dim=dims, keepdim=True)
        rstd = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + eps)
        x_hat = centered * rstd
        dbeta = dout.sum(dim=dims)
        dgamma = (dout * x_hat).sum(dim=dims)
        scale = gamma.reshape(shape) * rstd / n
        dx = scale * (n * dout - dbeta.reshape(shape) - x_hat * dgamma.reshape(shape))
        return dx, dgamma, dbeta
        """,
}


def _student_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graded]:
    source = read_source(ASSIGNMENT)
    notebooks = {"solution": submission(source), "blank": BLANK}
    for name, m in {**MUTANTS, **DELEGATIONS}.items():
        notebooks[name] = submission(source, {CELL: m.code})
    for name, code in {**CRASHES, **ALTERNATIVES}.items():
        notebooks[name] = submission(source, {CELL: code})
    root = tmp_path_factory.mktemp(ASSIGNMENT)
    results = autograde_many(root, ASSIGNMENT, {_student_id(k): v for k, v in notebooks.items()})
    seconds = next(iter(results.values())).seconds
    print(f"\n{ASSIGNMENT}: autograde {seconds:.1f} s per submission ({len(results)} submissions)")
    return results


pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")
FULL = tuple(POINTS[g] for g in ORDER)


@pytest.mark.slow
def test_solution_scores_full_marks(graded):
    assert graded["solution"].score_vector(ORDER) == FULL
    assert "matches the reference" in graded["solution"].outputs[CONV]


@pytest.mark.slow
def test_blank_student_version_scores_zero(graded):
    assert graded["blank"].score_vector(ORDER) == (0,) * len(ORDER)
    for grade_id in ORDER:
        text = graded["blank"].outputs[grade_id]
        assert says_only_not_implemented(text), (grade_id, text)


def _expected(lost: frozenset[str]) -> tuple[float, ...]:
    return tuple(0 if g in lost else POINTS[g] for g in ORDER)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTANTS) + list(DELEGATIONS))
def test_each_mistake_loses_exactly_its_cells_and_is_named(graded, name):
    mistake = {**MUTANTS, **DELEGATIONS}[name]
    result = graded[_student_id(name)]
    assert result.score_vector(ORDER) == _expected(mistake.lost), result.feedback()
    for grade_id in ORDER:
        text = result.outputs[grade_id]
        if mistake.named:
            tag = f"[{mistake.named}]"
            assert (tag in text) == (grade_id in mistake.lost), (grade_id, text)
        if grade_id in mistake.lost:
            named = {m for m in CATALOGUE if f"[{m}]" in text}
            assert named == ({mistake.named} if mistake.named else set()), (grade_id, text)
            if mistake.says:
                assert mistake.says in text and GUARD in text, (grade_id, text)
            # The feedback shows no expected value: no tensors, no long decimals.
            assert "tensor(" not in text
            assert not re.search(r"\d\.\d{4,}", text), text


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CRASHES))
def test_a_type_error_says_what_was_called_and_expected(graded, name):
    result = graded[_student_id(name)]
    assert result.score_vector(ORDER) == (0,) * len(ORDER), result.feedback()
    for grade_id in ORDER:
        text = result.outputs[grade_id]
        assert "TypeError" in text and SIGNATURE in text, (grade_id, text)


def test_every_catalogued_misconception_of_the_task_has_a_mutant():
    task_misconceptions = {name for name, m in CATALOGUE.items() if CELL in m.mutants}
    assert {m.named for m in MUTANTS.values()} == task_misconceptions


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_alternative_correct_implementations_score_full_marks(graded, name):
    result = graded[_student_id(name)]
    assert result.score_vector(ORDER) == FULL, result.feedback()
