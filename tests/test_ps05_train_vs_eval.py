"""ps05_train_vs_eval: the notebook, and its autograder proven through nbgrader.

Every submission below is the instructor's solution with some functions rewritten: a *mutant*
keeps one of the bugs a student can leave in (or put in) while fixing the colleague's code, an
*alternative* is another correct fix, a *delegation* calls the course's own implementation. They
are autograded in one temporary course (``submissions.autograde_many``), one rewrite of each
function per submission (``combined_submissions``); each must get exactly the per-cell scores
stated here, with feedback that names its misconception in exactly the cells it costs. (Every
variant of every misconception is also run against the checks themselves, without nbgrader, in
``test_grading_train_eval.py``.)
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

_builder = builder("ps05_train_vs_eval")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS
SOURCE = _builder.SOURCE
build = _builder.build

ORDER = list(POINTS)
EVALUATE, EVALUATE_MODES, PREDICT, MAKE_CNN = ORDER
CELLS = {"evaluate": "evaluate", "predict": "predict", "cnn_placement": "make_cnn"}
E, P, C = CELLS.values()


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


def test_the_buggy_code_shown_to_students_is_what_the_mutants_start_from():
    """The colleague's functions are in read-only cells; the solutions fix exactly them."""
    cells = by_grade_id(nbformat.read(SOURCE, as_version=4))
    assert "with torch.no_grad():" in cells["buggy_evaluate"].source
    assert "model.eval()" not in cells["buggy_evaluate"].source
    assert "torch.cat([x, x])" in cells["buggy_predict"].source
    buggy_block = "[conv, nn.Dropout(p), nn.BatchNorm2d(width), nn.ReLU()]"
    assert buggy_block in cells["buggy_make_cnn"].source


# --- submissions -------------------------------------------------------------------------------

CODE = answers(read_source(ASSIGNMENT))


def mutant(cell: str, lost: set[str], named: str, *edits: tuple[str, str]) -> Rewrite:
    return Rewrite(cell, edited(CODE[cell], *edits), frozenset(lost), named)


EVAL_E = "model.eval()  # dropout off, BN on its running statistics; no_grad alone changes neither"
EVAL_P = "model.eval()  # BN on its running statistics: a batch of one is fine, nothing is updated"
RESTORE = "    for m, training in modes.items():\n        m.training = training"
BLOCK = "layers += [conv, nn.BatchNorm2d(width), nn.ReLU()]"
HEAD = (
    "layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p), "
    "nn.Linear(width, num_classes)]"
)
MODES = "modes = {m: m.training for m in model.modules()}"
COUNT = "correct += (model(x).argmax(dim=1) == y).sum().item()"
TOTAL = "total += len(y)"
NO_DROPOUT_HEAD = "layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]"

# Every catalogued misconception of the exercise, as a student writes it, per function.
MUTANTS = {
    E: {
        # The colleague's version: no_grad but no eval().
        "no-grad-only": mutant(E, {EVALUATE}, "eval-forgotten", (EVAL_E, "")),
        "bn-only": mutant(
            E,
            {EVALUATE},
            "dropout-on-at-test",
            (
                EVAL_E,
                "for m in model.modules():\n"
                "    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):\n"
                "        m.eval()",
            ),
        ),
        # Passes on an MLP; the hidden CNN's BatchNorm2d stays in training mode.
        "bn1d-and-dropout": mutant(
            E,
            {EVALUATE},
            "bn-train-mode-at-test",
            (
                EVAL_E,
                "for m in model.modules():\n"
                "    if isinstance(m, (nn.BatchNorm1d, nn.Dropout)):\n"
                "        m.eval()",
            ),
        ),
        "never-back-to-train": mutant(
            E, {EVALUATE_MODES}, "mode-not-restored", (RESTORE, "    pass")
        ),
        # Right for a network that arrives all in one mode; the checks also send mixed ones.
        "one-flag-back": mutant(
            E,
            {EVALUATE_MODES},
            "mode-restored-wholesale",
            (MODES, "was_training = model.training"),
            (RESTORE, "    model.train(was_training)"),
        ),
        # Right only when every batch has the same size.
        "mean-of-batch-accuracies": mutant(
            E,
            {EVALUATE},
            "accuracy-mean-of-batches",
            (COUNT, "correct += (model(x).argmax(dim=1) == y).float().mean().item()"),
            (TOTAL, "total += 1"),
        ),
        # The labels reshaped in place to compare with keepdim=True.
        "labels-reshaped-in-place": mutant(
            E,
            {EVALUATE},
            "inputs-modified-in-place",
            (
                COUNT,
                "correct += (model(x).argmax(dim=1, keepdim=True) == y.unsqueeze_(1)).sum().item()",
            ),
        ),
    },
    P: {
        "no-eval": mutant(P, {PREDICT}, "eval-forgotten", (EVAL_P, "")),
        # The colleague's version, with its own no_grad.
        "duplicated-sample": Rewrite(
            P,
            "with torch.no_grad():\n"
            "    if len(x) == 1:\n"
            "        return model(torch.cat([x, x])).argmax(dim=1)[:1]\n"
            "    return model(x).argmax(dim=1)",
            frozenset({PREDICT}),
            "batch-of-one-padded",
        ),
        "left-in-eval": mutant(P, {PREDICT}, "mode-not-restored", (RESTORE, "    pass")),
        # Evaluation mode only where BN refused: a batch of one.
        "eval-for-one-only": mutant(
            P,
            {PREDICT},
            "eval-only-for-batch-of-one",
            (EVAL_P, "if len(x) == 1:\n    model.eval()  # BN refuses a batch of one in training"),
        ),
    },
    C: {
        # The colleague's version.
        "dropout-before-bn": mutant(
            C,
            {MAKE_CNN},
            "dropout-before-bn",
            (
                BLOCK,
                "layers += [conv, nn.Dropout(p), nn.BatchNorm2d(width), nn.ReLU()]",
            ),
            (HEAD, NO_DROPOUT_HEAD),
        ),
        "dropout-before-conv": mutant(
            C,
            {MAKE_CNN},
            "dropout-through-weight-layer",
            (
                BLOCK,
                "layers += [nn.Dropout(p), conv, nn.BatchNorm2d(width), nn.ReLU()]",
            ),
            (HEAD, NO_DROPOUT_HEAD),
        ),
        "dropout-dropped": mutant(C, {MAKE_CNN}, "dropout-removed", (HEAD, NO_DROPOUT_HEAD)),
        # Conv -> BN -> ReLU -> Dropout blocks: every BN but the first sees the noise.
        "dropout-every-block": mutant(
            C,
            {MAKE_CNN},
            "dropout-through-weight-layer",
            (BLOCK, "layers += [conv, nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(p)]"),
            (HEAD, NO_DROPOUT_HEAD),
        ),
        "keep-probability": mutant(
            C,
            {MAKE_CNN},
            "dropout-rate-as-keep",
            (HEAD, HEAD.replace("Dropout(p)", "Dropout(1 - p)")),
        ),
    },
}

DELEGATIONS = {
    E: {
        "lab-evaluate": Rewrite(
            E,
            "from bncourse.lab.data import Dataset\n"
            "from bncourse.lab.train import evaluate as reference\n\n"
            "x = torch.cat([x for x, _ in batches])\n"
            "y = torch.cat([y for _, y in batches])\n"
            "return reference(model, Dataset('x', x, y, x, y, 4))",
            frozenset({EVALUATE, EVALUATE_MODES}),
            says="called bncourse.lab.train.evaluate",
        ),
    },
    P: {},
    C: {
        "lab-models": Rewrite(
            C,
            "from bncourse.lab.models import cnn\n\n"
            "return cnn((in_channels, 8, 8), num_classes, depth, width, placement='after_bn', p=p)",
            frozenset({MAKE_CNN}),
            says="called bncourse.lab.models.cnn",
        ),
    },
}

ALTERNATIVES = {
    "weighted-batches-and-inference-mode": {
        E: """
            # Per-batch accuracies weighted by the batch sizes; each module's own flag back.
            flags = [(m, m.training) for m in model.modules()]
            model.eval()
            with torch.inference_mode():
                scored = [((model(x).argmax(1) == y).float().mean(), len(y)) for x, y in batches]
            for m, flag in flags:
                m.train(flag)
            return float(sum(a * n for a, n in scored) / sum(n for _, n in scored))
            """,
        P: """
            flags = [(m, m.training) for m in model.modules()]
            try:
                model.eval()
                with torch.inference_mode():
                    return model(x).max(dim=1).indices
            finally:
                for m, flag in flags:
                    m.train(flag)
            """,
        C: """
            import torch.nn.functional as F

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    channels = [in_channels] + [width] * depth
                    self.convs = nn.ModuleList(
                        nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels[:-1], channels[1:])
                    )
                    self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(depth))
                    self.head = nn.Linear(width, num_classes)

                def forward(self, x):
                    for conv, norm in zip(self.convs, self.norms):
                        x = F.relu(norm(conv(x)))
                    return self.head(F.dropout(x.mean(dim=(2, 3)), p, training=self.training))

            return Net()
            """,
    },
    "a-frozen-copy": {
        E: """
            frozen = copy.deepcopy(model).eval()  # the caller's model is never touched
            x = torch.cat([x for x, _ in batches])
            y = torch.cat([y for _, y in batches])
            with torch.no_grad():
                return (frozen(x).argmax(dim=1) == y).float().mean()
            """,
        P: """
            frozen = copy.deepcopy(model).eval()
            with torch.no_grad():
                return torch.stack([frozen(sample[None]).argmax(dim=1)[0] for sample in x])
            """,
        C: """
            from bncourse import nn as bnn

            blocks = []
            for i in range(depth):
                blocks += [nn.Conv2d(width if i else in_channels, width, 3, padding=1),
                           bnn.BatchNorm2d(width), nn.ReLU()]
            return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), bnn.Dropout(p),
                                 nn.Linear(width, num_classes))
            """,
    },
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
