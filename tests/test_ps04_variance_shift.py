"""ps04_variance_shift: the notebook, and its autograder proven through nbgrader.

Every submission below is the instructor's solution with some functions rewritten: a *mutant*
makes one catalogued mistake (an edit of the solution's code, so that it stays next to the
solution it mutates), an *alternative* is another correct way to write a function, a *delegation*
calls the course's own implementation. All of them are autograded in one temporary course
(``submissions.autograde_many``); each must get exactly the per-cell scores stated here, with
feedback that names its misconception in exactly the cells it costs.

The four functions are graded by disjoint cells, so one submission carries one rewrite of each
function (a mistake in one, an alternative in another): the exact per-cell scores and the exact
set of misconceptions named in each cell show that no mistake leaks into another function's cells
and that every alternative earns its cells. (Every variant of every misconception is also
run against the checks themselves, without nbgrader, in ``test_grading_variance_shift.py``.)
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

_builder = builder("ps04_variance_shift")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS
SOURCE = _builder.SOURCE
build = _builder.build

ORDER = list(POINTS)
SHIFT, PROBE_VALUES, PROBE_SIDE, RECAL_STATS, RECAL_STATE, PLACEMENT = ORDER
CELLS = {
    "variance_shift": "variance_shift",
    "variance_probe": "probe_variance_shift",
    "bn_recalibration": "recalibrate_bn",
    "mlp_placement": "mlp_without_shift",
}


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
        assert meta["locked"] and not meta["solution"], grade_id
        assert "### BEGIN HIDDEN TESTS" in cells[grade_id].source, grade_id
        assert "from bncourse import grading" in cells[grade_id].source, grade_id
    solutions = {k for k, v in cells.items() if v.metadata["nbgrader"]["solution"]}
    assert solutions == set(CELLS.values())


# --- submissions -------------------------------------------------------------------------------

CODE = answers(read_source(ASSIGNMENT))


def mutant(cell: str, lost: set[str], named: str, *edits: tuple[str, str]) -> Rewrite:
    return Rewrite(cell, edited(CODE[cell], *edits), frozenset(lost), named)


def delegation(cell: str, lost: set[str], code: str, called: str) -> Rewrite:
    return Rewrite(cell, code, frozenset(lost), says=f"called {called}")


S, P, R, B = CELLS.values()
KEEP = (
    "keep = 1 - p  # PyTorch's p drops; the multiplier m = a / keep has E[m] = 1, E[m^2] = 1 / keep"
)
VAR_TRAIN = "var_train = (mean**2 + var) / keep - mean**2"
EVAL = "model.eval()  # dropout off, BN on its running statistics: the network at test time"
HOOK = "handles = [bn.register_forward_pre_hook(remember) for bn in bns]"
VARIANCE = "per_channel = z.transpose(0, 1).reshape(z.shape[1], -1).var(dim=1)  # unbiased"
REMOVE = "    for handle in handles:\n        handle.remove()\n"
MODES = "modes = {m: m.training for m in model.modules()}"
RESTORE = "    for m, training in modes.items():\n        m.training = training\n"
DROPOUT_OFF = "model.eval()  # dropout off"
RESET = "    bn.reset_running_stats()\n"
MOMENTUM = "    bn.momentum = None  # a cumulative average over the batches\n"
BN_TRAIN = "    bn.train()  # only BN collects statistics\n"
FINAL = "    bn.momentum = momentum\nmodel.eval()"
BLOCK = "layers += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]"
HEAD = "layers += [nn.Dropout(p), nn.Linear(width, num_classes)]  # no BN after the dropout"
PROBE = {PROBE_VALUES, PROBE_SIDE}
RECAL = {RECAL_STATS, RECAL_STATE}

# Every catalogued misconception of the exercise, as a student writes it, per function.
MUTANTS = {
    S: {
        "retain-for-drop": mutant(S, {SHIFT}, "shift-retain-drop-confused", (KEEP, "keep = p")),
        "zero-mean-formula": mutant(
            S, {SHIFT}, "shift-mean-ignored", (VAR_TRAIN, "var_train = var / keep")
        ),
        "train-over-test": mutant(
            S,
            {SHIFT},
            "shift-ratio-inverted",
            ("return var_test / var_train", "return var_train / var_test"),
        ),
        # E[m^2] E[x^2] without - (E[m] E[x])^2.
        "mean-square-kept": mutant(
            S,
            {SHIFT},
            "shift-mean-square-not-subtracted",
            (VAR_TRAIN, "var_train = (mean**2 + var) / keep"),
        ),
        # m = a, the bare mask: E[m] = E[m^2] = keep.
        "plain-dropout": mutant(
            S,
            {SHIFT},
            "shift-dropout-not-inverted",
            (VAR_TRAIN, "var_train = keep * (mean**2 + var) - (keep * mean) ** 2"),
        ),
    },
    P: {
        "eval-forgotten": mutant(P, PROBE, "probe-train-mode", (EVAL, "pass")),
        "forward-hook": mutant(
            P,
            {PROBE_VALUES},
            "probe-bn-output",
            (
                HOOK,
                "handles = [\n"
                "    bn.register_forward_hook(lambda m, args, out: remember(m, (out,)))\n"
                "    for bn in bns\n]",
            ),
        ),
        "pooled-variance": mutant(
            P, {PROBE_VALUES}, "probe-variance-wrong-axes", (VARIANCE, "per_channel = z.var()")
        ),
        "biased-variance": mutant(
            P,
            {PROBE_VALUES},
            "probe-biased-variance",
            (
                VARIANCE,
                "per_channel = z.transpose(0, 1).reshape(z.shape[1], -1).var(dim=1, unbiased=False)",
            ),
        ),
        "modes-left-in-eval": mutant(P, {PROBE_SIDE}, "mode-not-restored", (RESTORE, "")),
        # Right for a network that arrives all in one mode; the checks also send mixed ones.
        "one-flag-back": mutant(
            P,
            {PROBE_SIDE},
            "mode-restored-wholesale",
            (MODES, "was_training = model.training"),
            (RESTORE, "    model.train(was_training)\n"),
        ),
        "hooks-left": mutant(P, {PROBE_SIDE}, "hooks-not-removed", (REMOVE, "    pass\n")),
        # Hooks the kernel's side must report: a global one, and backward hooks left on BN.
        "global-hook-left": mutant(
            P,
            {PROBE_SIDE},
            "hooks-not-removed",
            (
                HOOK,
                "handles = []\n"
                "nn.modules.module.register_module_forward_pre_hook(\n"
                "    lambda m, args: remember(m, args) if any(m is bn for bn in bns) else None\n"
                ")",
            ),
        ),
        "backward-hooks-left": mutant(
            P,
            {PROBE_SIDE},
            "hooks-not-removed",
            (
                REMOVE,
                REMOVE
                + "    for bn in bns:\n        bn.register_full_backward_hook(lambda *a: None)\n",
            ),
        ),
    },
    R: {
        # The look-alike from torch: resets, cumulates, but switches dropout back on (the plain
        # model.train() variant is run against the checks in test_grading_variance_shift.py).
        "swa-update-bn": Rewrite(
            R,
            "torch.optim.swa_utils.update_bn(batches, model)\nmodel.eval()",
            frozenset({RECAL_STATS}),
            "recal-dropout-on",
        ),
        "no-reset": mutant(R, {RECAL_STATS}, "recal-stats-not-reset", (RESET, "")),
        "exponential-average": mutant(R, {RECAL_STATS}, "recal-momentum-kept", (MOMENTUM, "")),
        "bn-left-in-eval": mutant(R, {RECAL_STATS}, "recal-bn-not-updated", (BN_TRAIN, "")),
        "no-final-eval": mutant(
            R, {RECAL_STATE}, "recal-left-in-training", (FINAL, "    bn.momentum = momentum")
        ),
        # Right only for layers whose momentum was PyTorch's default.
        "momentum-hard-coded": mutant(
            R,
            {RECAL_STATE},
            "recal-momentum-not-restored",
            (FINAL, "    bn.momentum = 0.1  # back to the default\nmodel.eval()"),
        ),
        "momentum-one": mutant(
            R,
            {RECAL_STATS},
            "recal-last-batch-only",
            (MOMENTUM, "    bn.momentum = 1.0  # the new statistics replace the old\n"),
        ),
        "frees-the-batches": mutant(
            R,
            {RECAL_STATE},
            "inputs-modified-in-place",
            ("        model(x)\n", "        model(x)\n        x.set_()  # release its memory\n"),
        ),
    },
    B: {
        "dropout-before-bn": mutant(
            B,
            {PLACEMENT},
            "dropout-before-bn",
            (
                BLOCK,
                "layers += [nn.Linear(fan_in, width, bias=False), nn.Dropout(p), "
                "nn.BatchNorm1d(width), nn.ReLU()]",
            ),
            (HEAD, "layers += [nn.Linear(width, num_classes)]"),
        ),
        "dropout-before-linear": mutant(
            B,
            {PLACEMENT},
            "dropout-through-weight-layer",
            (
                BLOCK,
                "layers += [nn.Dropout(p), nn.Linear(fan_in, width, bias=False), "
                "nn.BatchNorm1d(width), nn.ReLU()]",
            ),
            (HEAD, "layers += [nn.Linear(width, num_classes)]"),
        ),
        "dropout-dropped": mutant(
            B, {PLACEMENT}, "dropout-removed", (HEAD, "layers += [nn.Linear(width, num_classes)]")
        ),
        # Linear -> BN -> ReLU -> Dropout blocks: every BN but the first sees the noise.
        "dropout-every-block": mutant(
            B,
            {PLACEMENT},
            "dropout-through-weight-layer",
            (BLOCK, BLOCK.replace("nn.ReLU()]", "nn.ReLU(), nn.Dropout(p)]")),
            (HEAD, "layers += [nn.Linear(width, num_classes)]"),
        ),
        "keep-probability": mutant(
            B,
            {PLACEMENT},
            "dropout-rate-as-keep",
            (HEAD, HEAD.replace("Dropout(p)", "Dropout(1 - p)")),
        ),
    },
}

DELEGATIONS = {
    S: {
        "theory": delegation(
            S,
            {SHIFT},
            "from bncourse.theory import dropout_shift\n\nreturn dropout_shift(p, mean, var)",
            "bncourse.theory.dropout_shift",
        ),
    },
    P: {
        "lab-probe": delegation(
            P,
            PROBE,
            "from bncourse.lab.data import Dataset\n"
            "from bncourse.lab.probes import measure_variance_shift\n\n"
            "labels = torch.zeros(len(x), dtype=torch.long)\n"
            "rows = measure_variance_shift(model, Dataset('x', x, labels, x, labels, 2))\n"
            "return [(row.moving_var, row.real_var) for row in rows]",
            "bncourse.lab.probes.measure_variance_shift",
        ),
    },
    R: {
        "lab-recalibration": delegation(
            R,
            RECAL,
            "from bncourse.lab.data import Dataset\n"
            "from bncourse.lab.recalibrate import recalibrate_bn as reference\n\n"
            "x = torch.cat(list(batches))\n"
            "labels = torch.zeros(len(x), dtype=torch.long)\n"
            "reference(model, Dataset('x', x, labels, x, labels, 2), batch_size=len(batches[0]))",
            "bncourse.lab.recalibrate.recalibrate_bn",
        ),
    },
    B: {
        "lab-models": delegation(
            B,
            {PLACEMENT},
            "return mlp(in_features, num_classes, depth=depth, width=width, placement='after_bn',"
            " p=p)",
            "bncourse.lab.models.mlp",
        ),
    },
}

ALTERNATIVES = {
    "moments-and-chunks": {
        S: """
            second_moment = 1 / (1 - p)  # E[m^2]; E[m] = 1
            var_train = second_moment * (mean**2 + var) - mean**2
            return var / var_train
            """,
        P: """
            bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            sums = {bn: [0, 0.0, 0.0] for bn in bns}

            def accumulate(module, args):
                z = args[0].detach().double().movedim(1, -1).reshape(-1, args[0].shape[1])
                s = sums[module]
                s[0], s[1], s[2] = s[0] + len(z), s[1] + z.sum(0), s[2] + (z * z).sum(0)

            handles = [bn.register_forward_pre_hook(accumulate) for bn in bns]
            was = [(m, m.training) for m in model.modules()]
            model.eval()
            with torch.no_grad():
                for chunk in x.split(5):
                    model(chunk)
            for h in handles:
                h.remove()
            for m, t in was:
                m.training = t
            out = []
            for bn in bns:
                n, s, s2 = sums[bn]
                out.append((float(bn.running_var.mean()), float(((s2 - s * s / n) / (n - 1)).mean())))
            return out
            """,
        R: """
            # Exact statistics of all the data, layer by layer, in evaluation mode.
            model.eval()
            x = torch.cat(list(batches))
            for bn in [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]:
                seen = []
                handle = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
                with torch.no_grad():
                    model(x)
                handle.remove()
                z = seen[0].transpose(0, 1).reshape(bn.num_features, -1)
                with torch.no_grad():
                    bn.running_mean.copy_(z.mean(1))
                    bn.running_var.copy_(z.var(1))
            """,
        B: """
            import torch.nn.functional as F

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    sizes = [in_features] + [width] * depth
                    self.linears = nn.ModuleList(
                        nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])
                    )
                    self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(depth))
                    self.head = nn.Linear(width, num_classes)

                def forward(self, x):
                    x = x.flatten(1)
                    for linear, norm in zip(self.linears, self.norms):
                        x = torch.relu(norm(linear(x)))
                    return self.head(F.dropout(x, p, training=self.training))

            return Net()
            """,
    },
    "tensors-and-momentum-one": {
        S: """
            p, mean, var = (torch.tensor(v, dtype=torch.float32) for v in (p, mean, var))
            return float(var * (1 - p) / (var + p * mean**2))
            """,
        P: """
            # No hooks: walk the Sequential and keep what enters each BN layer.
            state = {m: m.training for m in model.modules()}
            model.eval()
            pairs = []
            with torch.no_grad():
                h = x
                for layer in model:
                    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                        var, _ = torch.var_mean(h.movedim(1, -1).reshape(-1, h.shape[1]), dim=0)
                        pairs.append((layer.running_var.mean(), var.mean()))
                    h = layer(h)
            for m, t in state.items():
                m.training = t
            return pairs
            """,
        R: """
            # fvcore's update_bn_stats: momentum 1, then the average of the batch statistics.
            bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
            model.eval()
            saved = [bn.momentum for bn in bns]
            totals = [[0, 0] for _ in bns]
            for bn in bns:
                bn.momentum = 1.0
                bn.train()
            with torch.no_grad():
                for x in batches:
                    model(x)
                    for total, bn in zip(totals, bns):
                        total[0] = total[0] + bn.running_mean
                        total[1] = total[1] + bn.running_var
            for (mean, var), bn, momentum in zip(totals, bns, saved):
                bn.running_mean.copy_(mean / len(batches))
                bn.running_var.copy_(var / len(batches))
                bn.momentum = momentum
            model.eval()
            """,
        B: """
            from bncourse import nn as bnn

            blocks = []
            for i in range(depth):
                blocks += [nn.Linear(width if i else in_features, width), bnn.BatchNorm1d(width),
                           nn.ReLU()]
            return nn.Sequential(nn.Flatten(), *blocks, bnn.Dropout(p), nn.Linear(width, num_classes))
            """,
    },
}


# Networks arriving in evaluation or mixed modes, momenta other than 0.1: handled right.
ALTERNATIVES["a-copy-and-saved-momenta"] = {
    P: """
        # Probe a deep copy: the caller's network, whatever its flags, is never touched.
        frozen = copy.deepcopy(model).eval()
        seen = {}
        bns = [m for m in frozen.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        handles = [bn.register_forward_pre_hook(lambda m, a: seen.update({m: a[0]})) for bn in bns]
        with torch.no_grad():
            frozen(x)
        for h in handles:
            h.remove()
        return [
            (bn.running_var.mean().item(), seen[bn].movedim(1, 0).flatten(1).var(1).mean().item())
            for bn in bns
        ]
        """,
    R: """
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = {bn: bn.momentum for bn in bns}
        try:
            model.eval()
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            with torch.no_grad():
                for x in batches:
                    model(x)
        finally:
            for bn, momentum in saved.items():
                bn.momentum = momentum
            model.eval()
        """,
}


def _rewrites(cell: str) -> dict[str, Rewrite]:
    """The mutants, delegations and alternatives of one function."""
    return rewrites_of(cell, MUTANTS, DELEGATIONS, ALTERNATIVES)


ROWS = side_by_side([_rewrites(cell) for cell in CELLS.values()])


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graded]:
    return grade_side_by_side(tmp_path_factory.mktemp(ASSIGNMENT), ASSIGNMENT, ROWS)


pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")
FULL = tuple(POINTS[g] for g in ORDER)


@pytest.mark.slow
def test_solution_scores_full_marks(graded):
    result = graded["solution"]
    assert result.score_vector(ORDER) == FULL, result.feedback()
    assert all("matches the reference" in result.outputs[g] for g in ORDER)


@pytest.mark.slow
def test_blank_student_version_scores_zero(graded):
    assert graded["blank"].score_vector(ORDER) == (0,) * len(ORDER)
    for grade_id in ORDER:
        text = graded["blank"].outputs[grade_id]
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
