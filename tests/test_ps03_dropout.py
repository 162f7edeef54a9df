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
from build_ps03_dropout import ASSIGNMENT, MANUAL_POINTS, POINTS, SOURCE, build
from nbgrader_course import by_grade_id, says_only_not_implemented
from submissions import BLANK, Graded, answers, autograde_many, edited, read_source, submission

from bncourse.grading import CATALOGUE

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


@dataclass(frozen=True)
class Submission:
    """Rewritten solution cells, and for each graded cell it costs, what its feedback says."""

    code: dict[str, str]
    named: dict[str, str] = field(default_factory=dict)  # lost cell -> misconception named
    says: dict[str, str] = field(default_factory=dict)  # lost cell -> text of a guard message

    @property
    def lost(self) -> set[str]:
        return set(self.named) | set(self.says)


def rewrite(cell: str, *edits: tuple[str, str]) -> str:
    return edited(CODE[cell], *edits)


def forward(*edits):
    return rewrite("dropout_forward", *edits)


MUTANTS = {
    "no-scaling+gaussian-std-as-variance+uout-from-zero": Submission(
        {
            "dropout_forward": forward((OUT, "out = x * keep")),
            "gaussian_dropout": rewrite("gaussian_dropout", (STD, "std = p / (1 - p)")),
            "uout": rewrite("uout", (R, "r = beta * u")),
        },
        {
            TRAIN: "dropout-no-scaling",
            GAUSSIAN: "gaussian-std-as-variance",
            UOUT: "uout-wrong-interval",
        },
    ),
    "classic-dropout+gaussian-keep-probability+uout-half-width": Submission(
        {
            "dropout_forward": forward(
                (OUT, "out = x * keep"),
                ("return x, None", "return x * (1 - p), None"),
            ),
            "gaussian_dropout": rewrite("gaussian_dropout", (STD, "std = math.sqrt((1 - p) / p)")),
            "uout": rewrite("uout", (R, "r = beta / 2 * (2 * u - 1)")),
        },
        {
            TRAIN: "dropout-no-scaling",
            EVAL: "dropout-no-scaling",
            GAUSSIAN: "dropout-keep-drop-confused",
            UOUT: "uout-wrong-interval",
        },
    ),
    "backward-no-scaling+noise-in-eval": Submission(
        {
            "dropout_backward": rewrite(
                "dropout_backward", (BACKWARD_RETURN, "return dout * keep")
            ),
            "gaussian_dropout": rewrite("gaussian_dropout", (NOISE_EVAL_BRANCH, "")),
            "uout": rewrite("uout", (NOISE_EVAL_BRANCH, "")),
        },
        {BACKWARD: "dropout-no-scaling", GAUSSIAN: "dropout-in-eval", UOUT: "dropout-in-eval"},
    ),
    "scaled-by-p": Submission(
        {"dropout_forward": forward((OUT, "out = x * keep * p"))},
        {TRAIN: "dropout-wrong-scaling"},
    ),
    "scaled-by-keep-probability": Submission(
        {"dropout_forward": forward((OUT, "out = x * keep * (1 - p)"))},
        {TRAIN: "dropout-wrong-scaling"},
    ),
    "p-as-keep-probability": Submission(
        {"dropout_forward": forward((KEEP, "< p  # kept w.p. p"))},
        {TRAIN: "dropout-keep-drop-confused"},
    ),
    "p-as-keep-probability-throughout": Submission(
        {
            "dropout_forward": forward((KEEP, "< p  # kept w.p. p"), (OUT, "out = x * keep / p")),
            "dropout_backward": rewrite(
                "dropout_backward", (BACKWARD_RETURN, "return dout * keep / p")
            ),
        },
        {TRAIN: "dropout-keep-drop-confused", BACKWARD: "dropout-keep-drop-confused"},
    ),
    "dropout-in-eval": Submission(
        {"dropout_forward": forward((EVAL_BRANCH, ""))},
        {EVAL: "dropout-in-eval", BACKWARD: "dropout-in-eval"},
    ),
    "backward-fresh-mask": Submission(
        {
            "dropout_backward": rewrite(
                "dropout_backward",
                (UNPACK, "_, p = cache\nkeep = torch.rand(dout.shape, device=dout.device) >= p"),
            )
        },
        {BACKWARD: "dropout-backward-new-mask"},
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
