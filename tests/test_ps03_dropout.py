"""ps03_dropout: the notebook, and its autograder proven through nbgrader.

Every submission below is the instructor's solution with some functions rewritten: a *mutant*
makes one catalogued mistake (an edit of the solution's code), an *alternative* is another
correct way to write the functions, a *delegation* calls a reference. The four functions are
graded by disjoint cells (dropout_backward's cell also runs dropout_forward), so mistakes in
gaussian_dropout and uout ride along with a dropout mistake in the same submission: the exact
per-cell scores and the exact misconceptions named in each cell show that none leaks into
another's cells. All submissions are autograded in one temporary course.

The written answer is graded by hand: autograding leaves it for the instructor (needs manual
grading, no score yet) when it was answered, and scores it zero when it was left untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import nbformat
import pytest
from builders import builder
from nbgrader_course import by_grade_id, says_only_not_implemented
from submissions import BLANK, Graded, answers, autograde_many, edited, read_source, submission

from bncourse.grading import CATALOGUE

_builder = builder("ps03_dropout")
ASSIGNMENT = _builder.ASSIGNMENT
MANUAL_POINTS = _builder.MANUAL_POINTS
POINTS = _builder.POINTS
SOURCE = _builder.SOURCE
build = _builder.build

ORDER = list(POINTS)
TRAIN, EVAL, BACKWARD, GAUSSIAN, UOUT = ORDER
WRITTEN = "mean_not_variance"
TASKS = ("dropout_forward", "dropout_backward", "gaussian_dropout", "uout")

pytestmark = pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning")


# --- the committed notebook ------------------------------------------------------------------


def test_source_notebook_is_what_the_builder_writes():
    assert SOURCE.read_text(encoding="utf-8") == nbformat.writes(build(), version=4) + "\n"


def test_source_notebook_has_graded_cells_and_a_written_answer():
    nb = nbformat.read(SOURCE, as_version=4)
    cells = by_grade_id(nb)
    graded = {k: v for k, v in cells.items() if v.metadata["nbgrader"]["grade"]}
    assert {k: v.metadata["nbgrader"]["points"] for k, v in graded.items()} == {
        **POINTS,
        **MANUAL_POINTS,
    }
    for grade_id in POINTS:
        assert (
            graded[grade_id].cell_type == "code" and graded[grade_id].metadata["nbgrader"]["locked"]
        )
        assert "### BEGIN HIDDEN TESTS" in graded[grade_id].source
    written = graded[WRITTEN]
    assert written.cell_type == "markdown"
    assert written.metadata["nbgrader"]["solution"] and not written.metadata["nbgrader"]["locked"]
    solutions = {k for k, v in cells.items() if v.metadata["nbgrader"]["solution"]}
    assert solutions == {*TASKS, WRITTEN}


def test_released_written_answer_is_a_stub():
    released = nbformat.read(
        SOURCE.parents[2] / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4
    )
    assert by_grade_id(released)[WRITTEN].source.strip() == "YOUR ANSWER HERE"


# --- submissions -------------------------------------------------------------------------------

CODE = answers(read_source(ASSIGNMENT))
EVAL_BRANCH = "if not training:\n    return x, None  # the identity: nothing to remember for the backward pass\n"
KEEP = ">= p  # kept w.p. 1 - p"
OUT = "out = x * keep / (1 - p)"
BACKWARD_RETURN = "return dout * keep / (1 - p)"
UNPACK = "keep, p = cache"
NOISE_EVAL_BRANCH = "if not training:\n    return x\n"
STD = "std = math.sqrt(p / (1 - p))"
R = "r = beta * (2 * u - 1)  # uniform on [-beta, beta)"
RAND = "torch.rand(x.shape, generator=generator, device=x.device)"
BACKWARD_EVAL_BRANCH = (
    "if cache is None:  # evaluation mode: the forward pass was the identity\n    return dout\n"
)
NOISE = "noise = 1 + std *"
MULTIPLY = "return x * noise"
UOUT_RETURN = "return x + x * r"


@dataclass(frozen=True)
class Submission:
    """Rewritten solution cells, and for each graded cell it costs, what its feedback says."""

    code: dict[str, str]
    named: dict[str, str] = field(default_factory=dict)  # lost cell -> misconception named
    says: dict[str, str] = field(default_factory=dict)  # lost cell -> text of a guard message
    tells: dict[str, str] = field(default_factory=dict)  # lost cell -> text of another message

    @property
    def lost(self) -> set[str]:
        return set(self.named) | set(self.says) | set(self.tells)


def rewrite(cell: str, *edits: tuple[str, str]) -> str:
    return edited(CODE[cell], *edits)


def forward(*edits):
    return rewrite("dropout_forward", *edits)


# Correct rewrites that ride along in the free cells of mutant rows: each must keep its cells'
# full marks next to the mistakes of the others.
BACKWARD_ON_A_COPY = """
    if cache is None:
        return dout
    keep, p = cache
    return dout.clone().mul_(keep / (1 - p))
    """
GAUSSIAN_RANDN_TIMES_STD_PLUS_ONE = """
    if not training:
        return x
    std = math.sqrt(p / (1 - p))
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x * (z * std + 1)
    """
UOUT_UNIFORM_AROUND_ONE = """
    if not training:
        return x
    return x * torch.empty_like(x).uniform_(1 - beta, 1 + beta, generator=generator)
    """


MUTANTS = {
    "no-scaling+backward-fails-in-eval+gaussian-std-as-variance+uout-from-zero": Submission(
        {
            "dropout_forward": forward((OUT, "out = x * keep")),
            "dropout_backward": rewrite("dropout_backward", (BACKWARD_EVAL_BRANCH, "")),
            "gaussian_dropout": rewrite("gaussian_dropout", (STD, "std = p / (1 - p)")),
            "uout": rewrite("uout", (R, "r = beta * u")),
        },
        {
            TRAIN: "dropout-no-scaling",
            GAUSSIAN: "gaussian-std-as-variance",
            UOUT: "uout-wrong-interval",
        },
        tells={
            BACKWARD: "dropout_backward raised TypeError (cannot unpack non-iterable NoneType "
            "object) in evaluation mode, on the cache that dropout_forward returned there (None)"
        },
    ),
    "classic-dropout+backward-in-place+gaussian-keep-probability+uout-half-width": Submission(
        {
            "dropout_forward": forward(
                (OUT, "out = x * keep"),
                ("return x, None", "return x * (1 - p), None"),
            ),
            "dropout_backward": rewrite(
                "dropout_backward", (BACKWARD_RETURN, "dout *= keep / (1 - p)\nreturn dout")
            ),
            "gaussian_dropout": rewrite("gaussian_dropout", (STD, "std = math.sqrt((1 - p) / p)")),
            "uout": rewrite("uout", (R, "r = beta / 2 * (2 * u - 1)")),
        },
        {
            TRAIN: "dropout-no-scaling",
            EVAL: "dropout-no-scaling",
            BACKWARD: "dropout-input-modified-in-place",
            GAUSSIAN: "dropout-keep-drop-confused",
            UOUT: "uout-wrong-interval",
        },
    ),
    "generator-ignored+backward-no-scaling+noise-in-eval": Submission(
        {
            "dropout_forward": forward((RAND, "torch.rand(x.shape, device=x.device)")),
            "dropout_backward": rewrite(
                "dropout_backward", (BACKWARD_RETURN, "return dout * keep")
            ),
            "gaussian_dropout": rewrite("gaussian_dropout", (NOISE_EVAL_BRANCH, "")),
            "uout": rewrite("uout", (NOISE_EVAL_BRANCH, "")),
        },
        {
            TRAIN: "dropout-generator-ignored",
            BACKWARD: "dropout-no-scaling",
            GAUSSIAN: "dropout-in-eval",
            UOUT: "dropout-in-eval",
        },
    ),
    # x + std * z had full marks while every |x| was in [0.5, 2] (E[1/x^2] = 1 there).
    "scaled-by-p+gaussian-added+uout-added": Submission(
        {
            "dropout_forward": forward((OUT, "out = x * keep * p")),
            "gaussian_dropout": rewrite(
                "gaussian_dropout", (NOISE, "noise = std *"), (MULTIPLY, "return x + noise")
            ),
            "uout": rewrite("uout", (UOUT_RETURN, "return x + r")),
        },
        {
            TRAIN: "dropout-wrong-scaling",
            GAUSSIAN: "gaussian-additive-noise",
            UOUT: "uout-additive-noise",
        },
    ),
    # torch.randn where Uout's noise is uniform: unbounded, named for what it is, not additive.
    "uout-normal-noise": Submission(
        {
            "uout": rewrite(
                "uout",
                (R, "r = beta * torch.randn(x.shape, generator=generator, device=x.device)"),
            )
        },
        {UOUT: "uout-gaussian-noise"},
    ),
    "scaled-by-keep-probability+gaussian-std-p+uout-in-place": Submission(
        {
            "dropout_forward": forward((OUT, "out = x * keep * (1 - p)")),
            "gaussian_dropout": rewrite("gaussian_dropout", (STD, "std = p")),
            "uout": rewrite("uout", (UOUT_RETURN, "x += x * r\nreturn x")),
        },
        {
            TRAIN: "dropout-wrong-scaling",
            GAUSSIAN: "gaussian-std-p",
            UOUT: "dropout-input-modified-in-place",
        },
    ),
    "p-as-keep-probability+gaussian-mean-zero+uout-uniform-around-one": Submission(
        {
            "dropout_forward": forward((KEEP, "< p  # kept w.p. p")),
            "gaussian_dropout": rewrite("gaussian_dropout", (NOISE, "noise = std *")),
            "uout": UOUT_UNIFORM_AROUND_ONE,
        },
        {TRAIN: "dropout-keep-drop-confused", GAUSSIAN: "gaussian-noise-mean-zero"},
    ),
    "p-as-keep-probability-throughout+gaussian-plus-noise": Submission(
        {
            "dropout_forward": forward((KEEP, "< p  # kept w.p. p"), (OUT, "out = x * keep / p")),
            "dropout_backward": rewrite(
                "dropout_backward", (BACKWARD_RETURN, "return dout * keep / p")
            ),
            "gaussian_dropout": rewrite("gaussian_dropout", (MULTIPLY, "return x + noise")),
        },
        {
            TRAIN: "dropout-keep-drop-confused",
            BACKWARD: "dropout-keep-drop-confused",
            GAUSSIAN: "gaussian-additive-noise",
        },
    ),
    "dropout-in-eval+gaussian-randn-times-std-plus-one": Submission(
        {
            "dropout_forward": forward((EVAL_BRANCH, "")),
            "gaussian_dropout": GAUSSIAN_RANDN_TIMES_STD_PLUS_ONE,
        },
        {EVAL: "dropout-in-eval", BACKWARD: "dropout-in-eval"},
    ),
    "mask-shared-by-the-batch+backward-fresh-mask": Submission(
        {
            "dropout_forward": forward(("torch.rand(x.shape,", "torch.rand(x.shape[1:],")),
            "dropout_backward": rewrite(
                "dropout_backward",
                (UNPACK, "_, p = cache\nkeep = torch.rand(dout.shape, device=dout.device) >= p"),
            ),
        },
        {TRAIN: "dropout-mask-shared", BACKWARD: "dropout-backward-new-mask"},
    ),
    # The backward cell runs this forward pass too: x changed in place costs the forward's cell.
    "forward-in-place+backward-on-a-copy+gaussian-randn-plus-one+uout-around-one": Submission(
        {
            "dropout_forward": forward((OUT, "out = x.mul_(keep / (1 - p))")),
            "dropout_backward": BACKWARD_ON_A_COPY,
            "gaussian_dropout": GAUSSIAN_RANDN_TIMES_STD_PLUS_ONE,
            "uout": UOUT_UNIFORM_AROUND_ONE,
        },
        {TRAIN: "dropout-input-modified-in-place"},
    ),
}

DELEGATIONS = {
    # torch's dropout in dropout_forward costs both modes and the backward pass that runs it;
    # the course's Gaussian dropout costs that part only.
    "delegates": Submission(
        {
            "dropout_forward": "return torch.nn.functional.dropout(x, p, training), None",
            "gaussian_dropout": "import bncourse.nn\n\n"
            "return bncourse.nn.functional.gaussian_dropout(x, p, training, generator)",
        },
        says={
            TRAIN: "dropout_forward called torch.nn.functional.dropout",
            EVAL: "dropout_forward called torch.nn.functional.dropout",
            BACKWARD: "dropout_forward and dropout_backward called torch.nn.functional.dropout",
            GAUSSIAN: "gaussian_dropout called bncourse.nn.functional.gaussian_dropout",
        },
    ),
}

ALTERNATIVES = {
    "where-bernoulli-normal-uniform": {
        "dropout_forward": """
            if not training:
                return x.clone(), ("eval",)
            keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator).bool()
            return torch.where(keep, x / (1 - p), torch.zeros_like(x)), ("train", keep, p)
            """,
        "dropout_backward": """
            if cache[0] == "eval":
                return dout
            _, keep, p = cache
            return torch.where(keep, dout / (1 - p), torch.zeros_like(dout))
            """,
        "gaussian_dropout": """
            if not training:
                return x
            return x * torch.empty_like(x).normal_(1.0, (p / (1 - p)) ** 0.5, generator=generator)
            """,
        "uout": """
            if not training:
                return x
            return x * (1 + torch.empty_like(x).uniform_(-beta, beta, generator=generator))
            """,
    },
    "prescaled-mask-in-float64": {
        "dropout_forward": """
            if not training:
                return x, torch.ones_like(x)
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            mask = (u < 1 - p).double() / (1 - p)  # the cache holds the scaled mask
            return (x.double() * mask).to(x.dtype), mask
            """,
        "dropout_backward": """
            return (dout.double() * cache).to(dout.dtype)
            """,
        "gaussian_dropout": """
            if not training:
                return x
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            return (x.double() * (1 + math.sqrt(p / (1 - p)) * z)).to(x.dtype)
            """,
        "uout": """
            if not training:
                return x
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            return (x.double() * (1 + beta * (2 * u - 1))).to(x.dtype)
            """,
    },
    # Masks kept below 1 - p, Gaussian noise from torch.normal, Uout with addcmul: every draw
    # from the generator given, every result a new tensor.
    "rand-below-keep-normal-addcmul": {
        "dropout_forward": """
            if not training:
                return x, None
            keep = torch.rand(x.shape, generator=generator, device=x.device) < 1 - p
            return torch.where(keep, x / (1 - p), torch.zeros_like(x)), (keep, p)
            """,
        "dropout_backward": """
            if cache is None:
                return dout
            keep, p = cache
            return torch.where(keep, dout / (1 - p), torch.zeros_like(dout))
            """,
        "gaussian_dropout": """
            if not training:
                return x
            std = math.sqrt(p / (1 - p))
            noise = torch.normal(1.0, std, x.shape, generator=generator, device=x.device)
            return x * noise.to(x.dtype)
            """,
        "uout": """
            if not training:
                return x
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return torch.addcmul(x, x, beta * (2 * u - 1))
            """,
    },
}


def _student_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graded]:
    source = read_source(ASSIGNMENT)
    notebooks = {"solution": submission(source), "blank": BLANK}
    for name, s in {**MUTANTS, **DELEGATIONS}.items():
        notebooks[name] = submission(source, s.code)
    for name, code in ALTERNATIVES.items():
        notebooks[name] = submission(source, code)
    root = tmp_path_factory.mktemp(ASSIGNMENT)
    results = autograde_many(root, ASSIGNMENT, {_student_id(k): v for k, v in notebooks.items()})
    seconds = next(iter(results.values())).seconds
    print(f"\n{ASSIGNMENT}: autograde {seconds:.1f} s per submission ({len(results)} submissions)")
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
    assert result.score_vector(ORDER) == FULL
    # Autograding does not score the answered written question: zero of its points so far,
    # flagged for manual grading.
    assert result.scores[WRITTEN] == (0, MANUAL_POINTS[WRITTEN])
    assert _needs_manual_grade(graded, "solution")
    assert result.total == (sum(POINTS.values()), sum(POINTS.values()) + MANUAL_POINTS[WRITTEN])


@pytest.mark.slow
def test_blank_student_version_scores_zero(graded):
    result = graded["blank"]
    assert result.score_vector(ORDER) == (0,) * len(ORDER)
    assert result.scores[WRITTEN] == (0, MANUAL_POINTS[WRITTEN])
    assert not _needs_manual_grade(graded, "blank")  # an untouched answer is simply zero
    for grade_id in ORDER:
        assert says_only_not_implemented(result.outputs[grade_id]), (grade_id, result.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTANTS) + list(DELEGATIONS))
def test_each_mistake_loses_exactly_its_cells_and_is_named(graded, name):
    expected = {**MUTANTS, **DELEGATIONS}[name]
    result = graded[_student_id(name)]
    assert result.score_vector(ORDER) == tuple(
        0 if g in expected.lost else POINTS[g] for g in ORDER
    ), result.feedback()
    for grade_id in ORDER:
        text = result.outputs[grade_id]
        named = {m for m in CATALOGUE if f"[{m}]" in text}
        want = {expected.named[grade_id]} if grade_id in expected.named else set()
        assert named == want, (grade_id, text)
        if grade_id in expected.says:
            assert expected.says[grade_id] in text and "scores zero" in text, (grade_id, text)
        if grade_id in expected.tells:
            assert expected.tells[grade_id] in text, (grade_id, text)
        if grade_id in expected.lost:
            assert "tensor(" not in text
            assert not re.search(r"\d\.\d{4,}", text), text


def test_every_catalogued_dropout_misconception_has_a_mutant():
    in_tasks = {name for name, m in CATALOGUE.items() if set(m.mutants) & set(TASKS)}
    assert {n for s in MUTANTS.values() for n in s.named.values()} == in_tasks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_alternative_correct_implementations_score_full_marks(graded, name):
    result = graded[_student_id(name)]
    assert result.score_vector(ORDER) == FULL, result.feedback()
