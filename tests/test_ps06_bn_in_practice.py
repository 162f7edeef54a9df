"""ps06_bn_in_practice: the notebook, and its autograder proven through nbgrader.

Every submission below is the instructor's solution with some functions rewritten: a *mutant*
makes one catalogued mistake, an *alternative* is another correct way to write the function, a
*delegation* calls torch's own routine or the checks' reference. They are autograded in one
temporary course (``submissions.autograde_many``), one rewrite of each function per submission
(``combined_submissions``); each must get exactly the per-cell scores stated here, with feedback
that names its misconception in exactly the cells it costs. (Every catalogued mutant is also run
against the checks themselves, without nbgrader, in ``test_grading_practice.py``.)

The freeze is graded through nbgrader's trusted execution: the function runs in the sandboxed
kernel and the check fine-tunes the network it hands back in the grader, where a ``train`` method
the notebook gave a module (on the instance, in a class of its own, or on the whole network) still
runs in the kernel. The written answer is graded by hand: autograding leaves it for the instructor
when it was answered, and scores it zero when it was left untouched.
"""

from __future__ import annotations

import nbformat
import pytest
from builders import builder
from combined_submissions import (
    Rewrite,
    check_graded,
    grade_side_by_side,
    rewrites_of,
    side_by_side,
    student_id,
)
from nbgrader_course import by_grade_id, says_only_not_implemented
from submissions import Graded, answers, edited, read_source

from bncourse.grading import CATALOGUE

_builder = builder("ps06_bn_in_practice")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS
MANUAL_POINTS = _builder.MANUAL_POINTS
SOURCE = _builder.SOURCE
build = _builder.build

ORDER = list(POINTS)
FOLD_LINEAR, FOLD_CONV, FREEZE, GROUP = ORDER
FOLD_CELLS = {FOLD_LINEAR, FOLD_CONV}
WRITTEN = "bn_without_a_batch"
CELLS = {
    "fold_batchnorm": "fold_batchnorm",
    "freeze_batchnorm": "freeze_batchnorm",
    "group_norm": "group_norm",
}
FO, FR, GN = CELLS.values()

pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")


# --- the committed notebook ------------------------------------------------------------------


def test_source_notebook_is_what_the_builder_writes():
    assert SOURCE.read_text(encoding="utf-8") == nbformat.writes(build(), version=4) + "\n"


def test_source_notebook_has_graded_cells_a_written_answer_and_no_outputs():
    nb = nbformat.read(SOURCE, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs") and cell.get("execution_count") is None, cell.id
    cells = by_grade_id(nb)
    graded = {k: v for k, v in cells.items() if v.metadata["nbgrader"]["grade"]}
    assert {k: v.metadata["nbgrader"]["points"] for k, v in graded.items()} == {
        **POINTS,
        **MANUAL_POINTS,
    }
    for grade_id in POINTS:
        meta = graded[grade_id].metadata["nbgrader"]
        assert graded[grade_id].cell_type == "code" and meta["locked"] and not meta["solution"]
        assert "### BEGIN HIDDEN TESTS" in graded[grade_id].source, grade_id
        assert "from bncourse import grading" in graded[grade_id].source, grade_id
    written = graded[WRITTEN]
    assert written.cell_type == "markdown"
    assert written.metadata["nbgrader"]["solution"] and not written.metadata["nbgrader"]["locked"]
    solutions = {k for k, v in cells.items() if v.metadata["nbgrader"]["solution"]}
    assert solutions == {*CELLS.values(), WRITTEN}


def test_released_written_answer_is_a_stub():
    released = nbformat.read(
        SOURCE.parents[2] / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4
    )
    assert by_grade_id(released)[WRITTEN].source.strip() == "YOUR ANSWER HERE"


# --- submissions -------------------------------------------------------------------------------

CODE = answers(read_source(ASSIGNMENT))


def mutant(cell: str, lost: set[str], named: str, *edits: tuple[str, str]) -> Rewrite:
    return Rewrite(cell, edited(CODE[cell], *edits), frozenset(lost), named)


STD = "torch.sqrt(running_var + eps)"
FOLDED_WEIGHT = "return weight * scale.reshape(shape),"
FOLDED_BIAS = "(bias - running_mean) * scale + beta"
SHAPE = "shape = [-1] + [1] * (weight.dim() - 1)"
EVAL = "        m.eval()  # normalize with the running statistics, never update them\n"
FREEZE_AFFINE = (
    "        for p in m.parameters():  # gamma and beta (none if affine=False)\n"
    "            p.requires_grad_(False)\n"
)
KEEP_EVAL = (
    "        # model.train() calls m.train(True): make that keep the layer in evaluation mode\n"
    "        m.train = lambda mode=True, m=m: nn.Module.train(m, False)"
)
GROUPS = "groups = x.reshape(n, num_groups, -1)  # each row: one group of one sample"
MEAN = "groups.mean(dim=2, keepdim=True)"
VAR = "groups.var(dim=2, unbiased=False, keepdim=True)"
GN_STD = "torch.sqrt(var + eps)"

# Every catalogued misconception of the exercise, as a student writes it, per function.
MUTANTS = {
    FO: {
        "eps-forgotten": mutant(FO, FOLD_CELLS, "eps-missing", (STD, "torch.sqrt(running_var)")),
        "eps-after-sqrt": mutant(
            FO, FOLD_CELLS, "eps-outside-sqrt", (STD, "(torch.sqrt(running_var) + eps)")
        ),
        "no-square-root": mutant(
            FO,
            FOLD_CELLS,
            "fold-variance-as-std",
            (f"gamma / {STD}", "gamma / (running_var + eps)"),
        ),
        "layer-bias-dropped": mutant(
            FO, FOLD_CELLS, "fold-bias-dropped", (FOLDED_BIAS, "beta - running_mean * scale")
        ),
        "mean-not-subtracted": mutant(
            FO, FOLD_CELLS, "fold-mean-not-subtracted", (FOLDED_BIAS, "bias * scale + beta")
        ),
        "bias-only": mutant(
            FO, FOLD_CELLS, "fold-weight-not-scaled", (FOLDED_WEIGHT, "return weight.clone(),")
        ),
        # One scale per input channel: (1, C, 1, ...) instead of (C, 1, ...).
        "input-axis": mutant(
            FO,
            FOLD_CELLS,
            "fold-scale-wrong-axis",
            (SHAPE, "shape = [1, -1] + [1] * (weight.dim() - 2)"),
        ),
        "weight-scaled-in-place": mutant(
            FO,
            FOLD_CELLS,
            "inputs-modified-in-place",
            (FOLDED_WEIGHT, "weight *= scale.reshape(shape)\nreturn weight,"),
        ),
    },
    FR: {
        "requires-grad-only": mutant(
            FR, {FREEZE}, "bn-frozen-by-requires-grad", (EVAL, ""), (KEEP_EVAL, "")
        ),
        # eval() once, undone by the training loop's model.train().
        "eval-once": mutant(FR, {FREEZE}, "bn-eval-undone-by-train", (KEEP_EVAL, "")),
        "gamma-beta-still-learn": mutant(FR, {FREEZE}, "bn-affine-not-frozen", (FREEZE_AFFINE, "")),
        "only-batchnorm2d": mutant(
            FR,
            {FREEZE},
            "bn-only-2d-frozen",
            ("isinstance(m, nn.modules.batchnorm._BatchNorm)", "isinstance(m, nn.BatchNorm2d)"),
        ),
        "every-parameter-frozen": mutant(
            FR,
            {FREEZE},
            "all-parameters-frozen",
            ("for p in m.parameters():", "for p in model.parameters():"),
        ),
        # A train of its own that switches BN back to training (and returns None): the grader
        # takes the modes of the kernel's network, not of what the method returns.
        "train-returns-none": Rewrite(
            FR,
            "for m in model.modules():\n"
            "    if isinstance(m, nn.modules.batchnorm._BatchNorm):\n"
            "        m.eval()\n"
            "        for p in m.parameters():\n"
            "            p.requires_grad_(False)\n"
            "\n"
            "def train(mode=True):\n"
            "    nn.Module.train(model, mode)  # BN back to training: the freeze does not last\n"
            "\n"
            "model.train = train",
            frozenset({FREEZE}),
            "bn-eval-undone-by-train",
        ),
        "whole-network-in-eval": Rewrite(
            FR,
            "for m in model.modules():\n"
            "    m.eval()\n"
            "    m.train = lambda mode=True, m=m: nn.Module.train(m, False)\n"
            "    if isinstance(m, nn.modules.batchnorm._BatchNorm):\n"
            "        for p in m.parameters():\n"
            "            p.requires_grad_(False)",
            frozenset({FREEZE}),
            "whole-model-frozen-in-eval",
        ),
    },
    GN: {
        "batch-statistics": mutant(
            GN,
            {GROUP},
            "gn-batch-statistics",
            (MEAN, "groups.mean(dim=(0, 2), keepdim=True)"),
            (VAR, "groups.var(dim=(0, 2), unbiased=False, keepdim=True)"),
        ),
        "unbiased": mutant(
            GN, {GROUP}, "gn-unbiased-variance", (VAR, "groups.var(dim=2, keepdim=True)")
        ),
        "interleaved": mutant(
            GN,
            {GROUP},
            "gn-interleaved-groups",
            (GROUPS, "groups = x.reshape(n, c // num_groups, num_groups, -1)"),
            (MEAN, "groups.mean(dim=(1, 3), keepdim=True)"),
            (VAR, "groups.var(dim=(1, 3), unbiased=False, keepdim=True)"),
        ),
        "group-size": mutant(
            GN,
            {GROUP},
            "gn-group-size-confused",
            (GROUPS, "groups = x.reshape(n, c // num_groups, -1)"),
        ),
        "eps-forgotten": mutant(GN, {GROUP}, "eps-missing", (GN_STD, "torch.sqrt(var)")),
        "eps-after-sqrt": mutant(
            GN, {GROUP}, "eps-outside-sqrt", (GN_STD, "(torch.sqrt(var) + eps)")
        ),
    },
}

DELEGATIONS = {
    FO: {
        "torch-fusion": Rewrite(
            FO,
            "from torch.nn.utils import fusion\n\n"
            "fuse = fusion.fuse_linear_bn_weights if weight.dim() == 2 else "
            "fusion.fuse_conv_bn_weights\n"
            "w, b = fuse(weight, bias, running_mean, running_var, eps, gamma, beta)\n"
            "return w.detach(), b.detach()",
            frozenset(FOLD_CELLS),
            says="called torch.nn.utils.fusion.fuse_",
        ),
    },
    FR: {
        "checks-reference": Rewrite(
            FR,
            "from bncourse.grading.practice import freeze_variant\n\nfreeze_variant(model)",
            frozenset({FREEZE}),
            says="called bncourse.grading.practice.freeze_variant",
        ),
    },
    GN: {
        "torch-group-norm": Rewrite(
            GN,
            "return F.group_norm(x, num_groups, gamma, beta, eps)",
            frozenset({GROUP}),
            says="called torch.nn.functional.group_norm",
        ),
        "aten-kernel": Rewrite(
            GN,
            "n, c = x.shape[:2]\n"
            "op = getattr(torch.ops.aten, 'native_' + 'group_norm')\n"
            "return op(x, gamma, beta, n, c, x[0, 0].numel(), num_groups, eps)[0]",
            frozenset({GROUP}),
            says="called torch.ops.aten.native_group_norm",
        ),
        # torch-function handling switched off around torch's group norm: refused as evasion.
        "torch-function-disabled": Rewrite(
            GN,
            "with torch._C.DisableTorchFunction():\n"
            "    return torch.group_norm(x, num_groups, gamma, beta, eps)",
            frozenset({GROUP}),
            says="called torch._C.DisableTorchFunction, which turns off",
        ),
        # Layer norm over each group of a reshaped view computes group norm in one call.
        "layer-norm-on-groups": Rewrite(
            GN,
            "n, c = x.shape[:2]\n"
            "g = x.reshape(n, num_groups, -1)\n"
            "y = F.layer_norm(g, g.shape[-1:], eps=eps).reshape(x.shape)\n"
            "shape = (1, c) + (1,) * (x.dim() - 2)\n"
            "return y * gamma.reshape(shape) + beta.reshape(shape)",
            frozenset({GROUP}),
            says="called torch.nn.functional.layer_norm",
        ),
        # The checks' own implementation, its source read and run as notebook code.
        "checks-source-copied": Rewrite(
            GN,
            "import inspect, textwrap\n\n"
            "from bncourse.grading import practice as module\n"
            "namespace = dict(vars(module))\n"
            "source = textwrap.dedent(inspect.getsource(module.group_norm_variant))\n"
            "exec(compile(source, '<cell>', 'exec'), namespace)\n"
            "return namespace['group_norm_variant'](x, num_groups, gamma, beta, eps)",
            frozenset({GROUP}),
            says="called bncourse.grading.practice.group_norm_variant",
        ),
    },
}

ALTERNATIVES = {
    # The network's train() keeps BN in evaluation mode and, as a hand-written one may, returns
    # nothing.
    "train-returns-nothing": {
        FR: """
            bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for bn in bns:
                bn.eval()
                bn.requires_grad_(False)

            def train(mode=True):
                nn.Module.train(model, mode)
                for bn in bns:
                    bn.eval()

            model.train = train
            """,
    },
    "rsqrt+model-train-overridden+sums": {
        FO: """
            inv_std = torch.rsqrt(running_var + eps)
            folded_bias = beta - gamma * running_mean * inv_std
            if bias is not None:
                folded_bias = folded_bias + gamma * inv_std * bias
            return (gamma * inv_std).view(-1, *([1] * (weight.dim() - 1))) * weight, folded_bias
            """,
        FR: """
            # The network's own train() switches its BN layers back to evaluation mode.
            bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
            for bn in bns:
                bn.weight.requires_grad = False
                bn.bias.requires_grad = False

            def train(mode=True):
                nn.Module.train(model, mode)
                for bn in bns:
                    bn.eval()
                return model

            model.train = train
            model.train(model.training)
            """,
        GN: """
            n, c = x.shape[:2]
            g = x.reshape(n, num_groups, -1)
            count = g.shape[2]
            mean = g.sum(dim=2, keepdim=True) / count
            var = ((g - mean) ** 2).sum(dim=2, keepdim=True) / count
            out = ((g - mean) / (var + eps).sqrt()).view_as(x)
            shape = (1, c) + (1,) * (x.dim() - 2)
            return out * gamma.view(shape) + beta.view(shape)
            """,
    },
    "einsum+class-swap+var-mean": {
        FO: """
            scale = gamma / (running_var + eps).sqrt()
            folded = torch.einsum("o,o...->o...", scale, weight)
            shift = beta - running_mean * scale
            return folded, shift if bias is None else shift + bias * scale
            """,
        FR: """
            # Each BN layer becomes an instance of a class whose train() keeps evaluation mode.
            class AlwaysEval:
                def train(self, mode=True):
                    return nn.Module.train(self, False)

            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.__class__ = type("Frozen" + type(m).__name__, (AlwaysEval, type(m)), {})
                    m.requires_grad_(False)
                    m.eval()
            """,
        GN: """
            n, c = x.shape[:2]
            per_group = x.reshape(n * num_groups, -1)
            var, mean = torch.var_mean(per_group, dim=1, correction=0, keepdim=True)
            normed = ((per_group - mean) / torch.sqrt(var + eps)).reshape(x.shape)
            shape = (c,) + (1,) * (x.dim() - 2)
            return torch.addcmul(beta.reshape(shape), normed, gamma.reshape(shape))
            """,
    },
    "float64+frozen-module+group-loop": {
        FO: """
            s = gamma.double() / (running_var.double() + eps) ** 0.5
            b = torch.zeros_like(s) if bias is None else bias.double()
            folded = weight.double() * s.reshape((-1,) + (1,) * (weight.dim() - 1))
            return folded.to(weight.dtype), ((b - running_mean.double()) * s + beta).to(weight.dtype)
            """,
        FR: """
            # Every BN layer replaced by a module that has no training mode at all.
            class FrozenBN(nn.Module):
                def __init__(self, bn):
                    super().__init__()
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        self.register_buffer(name, getattr(bn, name).detach().clone())
                    self.eps = bn.eps

                def forward(self, x):
                    shape = (1, -1) + (1,) * (x.dim() - 2)
                    scale = self.weight / torch.sqrt(self.running_var + self.eps)
                    return (x - self.running_mean.view(shape)) * scale.view(shape) + self.bias.view(
                        shape
                    )

            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.modules.batchnorm._BatchNorm):
                        setattr(parent, name, FrozenBN(child))
            """,
        GN: """
            c = x.shape[1]
            size = c // num_groups
            dims = tuple(range(1, x.dim()))
            parts = []
            for g in range(num_groups):
                part = x[:, g * size : (g + 1) * size]
                mean = part.mean(dim=dims, keepdim=True)
                var = ((part - mean) ** 2).mean(dim=dims, keepdim=True)
                parts.append((part - mean) / torch.sqrt(var + eps))
            shape = (1, c) + (1,) * (x.dim() - 2)
            return torch.cat(parts, dim=1) * gamma.view(shape) + beta.view(shape)
            """,
    },
    "channel-loop+bound-method": {
        FO: """
            rows, biases = [], []
            for o in range(weight.shape[0]):
                s = gamma[o] / torch.sqrt(running_var[o] + eps)
                rows.append(weight[o] * s)
                biases.append(((0 if bias is None else bias[o]) - running_mean[o]) * s + beta[o])
            return torch.stack(rows), torch.stack(biases)
            """,
        FR: """
            import types

            def keep_eval(self, mode=True):
                self.training = False
                return self

            for m in model.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    m.training = False
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
                    m.train = types.MethodType(keep_eval, m)
            """,
    },
}


def _rewrites(cell: str) -> dict[str, Rewrite]:
    """The mutants, delegations and alternatives of one function."""
    return rewrites_of(cell, MUTANTS, DELEGATIONS, ALTERNATIVES)


ROWS = side_by_side([_rewrites(cell) for cell in CELLS.values()])


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graded]:
    root = tmp_path_factory.mktemp(ASSIGNMENT)
    results = grade_side_by_side(root, ASSIGNMENT, ROWS)
    results["_gradebook"] = f"sqlite:///{root / 'gradebook.db'}"
    return results


FULL = tuple(POINTS[g] for g in ORDER)


def _needs_manual_grade(graded, student: str) -> bool:
    from nbgrader.api import Gradebook

    with Gradebook(graded["_gradebook"]) as gb:
        grade = gb.find_grade(WRITTEN, ASSIGNMENT, ASSIGNMENT, student)
        return bool(grade.needs_manual_grade)


@pytest.mark.slow
def test_solution_scores_full_marks_and_leaves_the_written_answer_to_the_grader(graded):
    result = graded["solution"]
    assert result.score_vector(ORDER) == FULL, result.feedback(ORDER)
    assert all("matches the reference" in result.outputs[g] for g in ORDER)
    assert result.scores[WRITTEN] == (0, MANUAL_POINTS[WRITTEN])
    assert _needs_manual_grade(graded, "solution")


@pytest.mark.slow
def test_blank_student_version_scores_zero(graded):
    result = graded["blank"]
    assert result.score_vector(ORDER) == (0,) * len(ORDER)
    assert result.scores[WRITTEN] == (0, MANUAL_POINTS[WRITTEN])
    assert not _needs_manual_grade(graded, "blank")  # an untouched answer is simply zero
    for grade_id in ORDER:
        text = result.outputs[grade_id]
        assert says_only_not_implemented(text), (grade_id, text)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ROWS))
def test_each_rewrite_costs_exactly_its_cells_and_mistakes_are_named(graded, name):
    """Mutants and delegations lose their cells, named there; alternatives lose nothing."""
    check_graded(ROWS[name], graded[student_id(name)], POINTS)


def test_every_catalogued_misconception_of_the_exercise_has_a_mutant():
    exercise = {name for name, m in CATALOGUE.items() if set(m.mutants) & set(CELLS)}
    written = {m.named for cell in MUTANTS.values() for m in cell.values()}
    assert written == exercise


def test_every_rewrite_is_graded_once():
    graded = sorted(r.code for row in ROWS.values() for r in row.rewrites)
    assert graded == sorted(r.code for cell in CELLS.values() for r in _rewrites(cell).values())
    assert len(ROWS) == max(len(_rewrites(cell)) for cell in CELLS.values())


def test_the_exercise_is_proven_on_enough_submissions():
    alternatives = {name for name, code in ALTERNATIVES.items() if len(code) >= 2}
    delegations = [d for cell in DELEGATIONS.values() for d in cell.values()]
    assert len(alternatives) >= 4 and len(delegations) >= 2
