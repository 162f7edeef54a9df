"""ps01_batchnorm's autograder proven through nbgrader, one submission per known mistake.

Every submission below is the instructor's solution with one of its functions rewritten: a
*mutant* makes one catalogued mistake (written as an edit of the solution's code, so it stays
next to the solution it mutates), an *alternative* is another correct way to write the function,
a *delegation* calls a reference instead of computing. All of them are autograded in one
temporary course (see ``submissions.autograde_many``) and each must get exactly the per-cell
scores stated here, with feedback that names its misconception in exactly the cells it costs.

The train and eval functions are graded by disjoint cells, so a mistake in the eval function rides
along with a mistake in the train function in the same submission: the exact per-cell scores and
the exact set of misconceptions named in each cell show that neither leaks into the other's cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from builders import builder
from submissions import Graded, answers, autograde_many, edited, read_source, submission

from bncourse.grading import CATALOGUE
from bncourse.grading.batchnorm import EVAL, TRAIN

_builder = builder("ps01_batchnorm")
ASSIGNMENT = _builder.ASSIGNMENT
POINTS = _builder.POINTS

# nbgrader 0.9.6 with SQLAlchemy 2 warns on every autograde that a submission is "not in
# session"; the grades are stored all the same.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Object of type:sqlalchemy.exc.SAWarning"),
]

SOURCE = read_source(ASSIGNMENT)
TRAIN_CELL, EVAL_CELL = "batchnorm_forward_train", "batchnorm_forward_eval"
TRAIN_CODE, EVAL_CODE = answers(SOURCE)[TRAIN_CELL], answers(SOURCE)[EVAL_CELL]
ORDER = list(
    POINTS
)  # test_batchnorm_train, test_running_update, test_batchnorm_eval, test_conv_layout
TRAIN_GRADED, RUNNING_GRADED, EVAL_GRADED, CONV_GRADED = ORDER


@dataclass(frozen=True)
class Mistake:
    """A rewrite of one solution cell, the graded cells it costs and what their feedback says."""

    cell: str
    code: str
    lost: frozenset[str]
    named: frozenset[str] = frozenset()  # catalogued misconceptions named in each lost cell
    says: str = ""  # other text every lost cell's feedback must contain


def train(*edits: tuple[str, str]) -> str:
    return edited(TRAIN_CODE, *edits)


def evaluation(*edits: tuple[str, str]) -> str:
    return edited(EVAL_CODE, *edits)


def mistake(cell: str, code: str, lost: set[str], *named: str, says: str = "") -> Mistake:
    return Mistake(cell, code, frozenset(lost), frozenset(named), says)


# --- lines of the solution that the mutants rewrite ------------------------------------------

DIMS = "dims = [0, *range(2, x.dim())]  # every axis but the channel axis 1"
MEAN = "mean = x.mean(dim=dims)"
VAR = "var = x.var(dim=dims, unbiased=False)  # biased: normalize with 1/n"
UPDATE_MEAN = "running_mean.mul_(1 - momentum).add_(momentum * mean)"
UPDATE_VAR = "running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))"
N_VALUES = "n = x.numel() // x.shape[1]  # values per channel"
NORMALIZE = "x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)"
RETURN = "return gamma.reshape(shape) * x_hat + beta.reshape(shape)"
EVAL_NORMALIZE = (
    "x_hat = (x - running_mean.reshape(shape)) / torch.sqrt(running_var.reshape(shape) + eps)"
)
EVAL_RETURN = RETURN

TRAIN_STEP = {TRAIN_GRADED, CONV_GRADED}  # the cells that check the training-mode output
UPDATE = {RUNNING_GRADED, CONV_GRADED}  # the cells that check the running statistics

TRAIN_MISTAKES = {
    "biased-running-variance": mistake(
        TRAIN_CELL,
        train((UPDATE_VAR, "running_var.mul_(1 - momentum).add_(momentum * var)")),
        UPDATE,
        "biased-running-variance",
    ),
    "momentum-flipped": mistake(
        TRAIN_CELL,
        train(
            (UPDATE_MEAN, "running_mean.mul_(momentum).add_((1 - momentum) * mean)"),
            (UPDATE_VAR, "running_var.mul_(momentum).add_((1 - momentum) * var * n / (n - 1))"),
        ),
        UPDATE,
        "momentum-flipped",
    ),
    "keras-style-momentum": mistake(
        TRAIN_CELL,
        train(
            (UPDATE_MEAN, "running_mean.mul_(momentum).add_((1 - momentum) * mean)"),
            (UPDATE_VAR, "running_var.mul_(momentum).add_((1 - momentum) * var)"),
        ),
        UPDATE,
        "keras-style-momentum",
    ),
    # The (N, C) recipe applied to a (-1, C) view: channels and positions mixed for conv input.
    "reshape-without-transpose": mistake(
        TRAIN_CELL,
        train(
            (MEAN, "flat = x.reshape(-1, x.shape[1])\nmean = flat.mean(dim=0)"),
            (VAR, "var = flat.var(dim=0, unbiased=False)"),
            (NORMALIZE, "x_hat = ((flat - mean) / torch.sqrt(var + eps)).reshape(x.shape)"),
        ),
        {CONV_GRADED},
        "stats-wrong-axes",
    ),
    # Written for (N, C) only: it cannot even run on conv input; the error names the cause.
    "batch-axis-only": mistake(
        TRAIN_CELL,
        train((DIMS, "dims = [0]  # the batch axis")),
        {CONV_GRADED},
        "stats-wrong-axes",
    ),
    "running-stats-not-updated": mistake(
        TRAIN_CELL,
        train(
            (UPDATE_MEAN, "running_mean = (1 - momentum) * running_mean + momentum * mean"),
            (
                UPDATE_VAR,
                "running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)",
            ),
        ),
        UPDATE,
        "running-stats-not-updated",
    ),
    "running-stats-replaced": mistake(
        TRAIN_CELL,
        train(
            (UPDATE_MEAN, "running_mean.copy_(mean)"),
            (UPDATE_VAR, "running_var.copy_(var * n / (n - 1))"),
        ),
        UPDATE,
        "running-stats-replaced",
    ),
    # The gradients are checked by the hidden tests of the training-output cell only.
    "numpy-round-trip": mistake(
        TRAIN_CELL,
        train(
            (
                RETURN,
                "y = gamma.reshape(shape) * x_hat + beta.reshape(shape)\n"
                "return torch.from_numpy(y.detach().cpu().numpy()).to(x.device)",
            )
        ),
        {TRAIN_GRADED},
        "autograd-graph-cut",
    ),
    "statistics-from-data": mistake(
        TRAIN_CELL,
        train(
            (MEAN, "mean = x.data.mean(dim=dims)"),
            (VAR, "var = x.data.var(dim=dims, unbiased=False)"),
        ),
        {TRAIN_GRADED},
        "autograd-graph-cut",
    ),
    "input-detached": mistake(
        TRAIN_CELL,
        train((DIMS, "x = x.detach()\n" + DIMS)),
        {TRAIN_GRADED},
        "autograd-graph-cut",
    ),
    # torch.var's default divides by n - 1: the output shrinks, and the update, which multiplies
    # by n / (n - 1) as the solution does, counts the correction twice.
    "torch-var-default": mistake(
        TRAIN_CELL,
        train((VAR, "var = x.var(dim=dims)  # torch's default")),
        {TRAIN_GRADED, RUNNING_GRADED, CONV_GRADED},
        "normalized-with-unbiased-variance",
    ),
    # Right for (N, C) input only.
    "bessel-with-batch-size": mistake(
        TRAIN_CELL,
        train((N_VALUES, "n = x.shape[0]  # the batch size")),
        {CONV_GRADED},
        "bessel-factor-batch-size",
    ),
    "momentum-hard-coded": mistake(
        TRAIN_CELL,
        train(
            (UPDATE_MEAN, "running_mean.mul_(0.9).add_(0.1 * mean)"),
            (UPDATE_VAR, "running_var.mul_(0.9).add_(0.1 * var * n / (n - 1))"),
        ),
        UPDATE,
        "momentum-hard-coded",
    ),
    # Computed in float64 and not cast back: the output cells say so; the buffers are right.
    "float64-output": mistake(
        TRAIN_CELL,
        train((RETURN, "return (gamma.reshape(shape) * x_hat + beta.reshape(shape)).double()")),
        TRAIN_STEP,
        says="batchnorm_forward_train returned torch.float64 for a torch.float32 input",
    ),
    "delegates-to-torch": mistake(
        TRAIN_CELL,
        "return torch.nn.functional.batch_norm(\n"
        "    x, running_mean, running_var, gamma, beta, True, momentum, eps\n)",
        {TRAIN_GRADED, RUNNING_GRADED, CONV_GRADED},
        says="batchnorm_forward_train called torch.nn.functional.batch_norm.",
    ),
}

EVAL_MISTAKES = {
    "eval-uses-batch-statistics": mistake(
        EVAL_CELL,
        evaluation(
            (
                EVAL_NORMALIZE,
                "dims = [0, *range(2, x.dim())]\n"
                "x_hat = (x - x.mean(dims, keepdim=True)) / "
                "torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)",
            )
        ),
        {EVAL_GRADED},
        "eval-uses-batch-statistics",
    ),
    # The training step's update copied into evaluation: right output, buffers changed.
    "running-stats-updated-in-eval": mistake(
        EVAL_CELL,
        evaluation(
            (
                EVAL_RETURN,
                "with torch.no_grad():\n"
                "    running_mean.mul_(0.9).add_(0.1 * x.mean(dim=[0, *range(2, x.dim())]))\n"
                + EVAL_RETURN,
            )
        ),
        {EVAL_GRADED},
        "running-stats-updated-in-eval",
    ),
    "delegates-to-bncourse": mistake(
        EVAL_CELL,
        "import bncourse.nn\n\n"
        "return bncourse.nn.functional.batch_norm(\n"
        "    x, running_mean, running_var, gamma, beta, False, 0.0, eps\n)",
        {EVAL_GRADED},
        says="batchnorm_forward_eval called bncourse.nn.functional.batch_norm.",
    ),
    # Falls back to its own code when the guard refuses the call: still zero for the part.
    "delegates-and-hides-the-error": mistake(
        EVAL_CELL,
        "try:\n"
        "    return torch.nn.functional.batch_norm(\n"
        "        x, running_mean, running_var, gamma, beta, False, 0.0, eps\n"
        "    )\n"
        "except Exception:\n" + "\n".join("    " + line for line in EVAL_CODE.splitlines()),
        {EVAL_GRADED},
        says="batchnorm_forward_eval called torch.nn.functional.batch_norm and hid the error",
    ),
}

# The same mistake in both functions, as a student who forgets eps does.
BOTH = {
    "eps-missing": (
        train((NORMALIZE, "x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape))")),
        evaluation(
            (
                EVAL_NORMALIZE,
                "x_hat = (x - running_mean.reshape(shape)) / torch.sqrt(running_var.reshape(shape))",
            )
        ),
    ),
    "gamma-beta-swapped": (
        train((RETURN, "return beta.reshape(shape) * x_hat + gamma.reshape(shape)")),
        evaluation((EVAL_RETURN, "return beta.reshape(shape) * x_hat + gamma.reshape(shape)")),
    ),
    # Right outputs and buffers, but the caller's x is overwritten.
    "inputs-modified-in-place": (
        train(
            (
                NORMALIZE,
                "x -= mean.reshape(shape)  # centred in place\n"
                "x_hat = x / torch.sqrt(var.reshape(shape) + eps)",
            )
        ),
        evaluation(
            (
                EVAL_NORMALIZE,
                "x.sub_(running_mean.reshape(shape)).div_(torch.sqrt(running_var.reshape(shape) + eps))\n"
                "x_hat = x",
            )
        ),
    ),
    "eps-outside-sqrt": (
        train(
            (
                NORMALIZE,
                "x_hat = (x - mean.reshape(shape)) / (torch.sqrt(var.reshape(shape)) + eps)",
            )
        ),
        evaluation(
            (
                EVAL_NORMALIZE,
                "x_hat = (x - running_mean.reshape(shape)) / "
                "(torch.sqrt(running_var.reshape(shape)) + eps)",
            )
        ),
    ),
}


@dataclass(frozen=True)
class Submission:
    """What one student hands in and what the autograder must make of it."""

    mistakes: tuple[Mistake, ...]

    @property
    def code(self) -> dict[str, str]:
        return {m.cell: m.code for m in self.mistakes}

    @property
    def lost(self) -> set[str]:
        return {cell for m in self.mistakes for cell in m.lost}

    def named(self, grade_id: str) -> set[str]:
        return {name for m in self.mistakes if grade_id in m.lost for name in m.named}

    def says(self, grade_id: str) -> list[str]:
        return [m.says for m in self.mistakes if grade_id in m.lost and m.says]


def _mistaken_submissions() -> dict[str, Submission]:
    subs = {}
    # Pair each eval mistake with a train mistake; the remaining train mistakes go alone.
    pairs = dict(zip(list(TRAIN_MISTAKES)[: len(EVAL_MISTAKES)], EVAL_MISTAKES, strict=True))
    for name, m in TRAIN_MISTAKES.items():
        if name in pairs:
            subs[f"{name}+{pairs[name]}"] = Submission((m, EVAL_MISTAKES[pairs[name]]))
        else:
            subs[name] = Submission((m,))
    for name, (train_code, eval_code) in BOTH.items():
        subs[name] = Submission(
            (
                mistake(TRAIN_CELL, train_code, TRAIN_STEP, name),
                mistake(EVAL_CELL, eval_code, {EVAL_GRADED}, name),
            )
        )
    return subs


MISTAKEN = _mistaken_submissions()

# --- correct implementations written differently from the solution ----------------------------

ALTERNATIVES = {
    "var-mean-and-rsqrt": {
        TRAIN_CELL: """
            dims = [0, *range(2, x.dim())]
            shape = [1, -1] + [1] * (x.dim() - 2)
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            unbiased = torch.var(x, dim=dims, correction=1)
            with torch.no_grad():
                running_mean.copy_((1 - momentum) * running_mean + momentum * mean)
                running_var.copy_((1 - momentum) * running_var + momentum * unbiased)
            scale = torch.rsqrt(var + eps).reshape(shape)
            return (x - mean.reshape(shape)) * scale * gamma.reshape(shape) + beta.reshape(shape)
            """,
        EVAL_CELL: """
            shape = [1, -1] + [1] * (x.dim() - 2)
            scale = gamma * torch.rsqrt(running_var + eps)  # folded into one affine map
            shift = beta - running_mean * scale
            return x * scale.reshape(shape) + shift.reshape(shape)
            """,
    },
    "manual-sums-in-float64": {
        TRAIN_CELL: """
            x64 = x.double()
            dims = [0, *range(2, x.dim())]
            shape = [1, -1] + [1] * (x.dim() - 2)
            n = x64.numel() // x64.shape[1]
            mean = x64.sum(dim=dims) / n
            centered = x64 - mean.reshape(shape)
            squares = (centered * centered).sum(dim=dims)
            with torch.no_grad():
                new_mean = (1 - momentum) * running_mean.double() + momentum * mean
                new_var = (1 - momentum) * running_var.double() + momentum * squares / (n - 1)
                running_mean[:] = new_mean.to(running_mean.dtype)
                running_var[:] = new_var.to(running_var.dtype)
            y = centered / torch.sqrt(squares / n + eps).reshape(shape)
            return (gamma.double().reshape(shape) * y + beta.double().reshape(shape)).to(x.dtype)
            """,
        EVAL_CELL: """
            shape = [1, -1] + [1] * (x.dim() - 2)
            mean, var = running_mean.double().reshape(shape), running_var.double().reshape(shape)
            y = (x.double() - mean) / torch.sqrt(var + eps)
            return (gamma.double().reshape(shape) * y + beta.double().reshape(shape)).to(x.dtype)
            """,
    },
    "loop-over-channels": {
        TRAIN_CELL: """
            outputs = []
            for c in range(x.shape[1]):
                values = x[:, c]  # every value of channel c, whatever the layout
                n = values.numel()
                mean = values.sum() / n
                var = ((values - mean) ** 2).sum() / n
                with torch.no_grad():
                    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
                    running_var[c] = (1 - momentum) * running_var[c] + momentum * var * n / (n - 1)
                outputs.append(gamma[c] * (values - mean) / torch.sqrt(var + eps) + beta[c])
            return torch.stack(outputs, dim=1)
            """,
        EVAL_CELL: """
            outputs = []
            for c in range(x.shape[1]):
                scale = gamma[c] / torch.sqrt(running_var[c] + eps)
                outputs.append((x[:, c] - running_mean[c]) * scale + beta[c])
            return torch.stack(outputs, dim=1)
            """,
    },
    # The unbiased variance first (torch.var_mean's default), rescaled to the biased one.
    "unbiased-first-and-addcmul": {
        TRAIN_CELL: """
            dims = tuple(d for d in range(x.dim()) if d != 1)
            n = x.numel() // x.shape[1]
            unbiased, mean = torch.var_mean(x, dim=dims, keepdim=True)  # divides by n - 1
            biased = unbiased * (n - 1) / n
            running_mean.copy_(torch.lerp(running_mean, mean.flatten().detach(), momentum))
            running_var.copy_(torch.lerp(running_var, unbiased.flatten().detach(), momentum))
            view = mean.shape
            x_hat = (x - mean) / (biased + eps).sqrt()
            return torch.addcmul(beta.view(view), gamma.view(view), x_hat)
            """,
        EVAL_CELL: """
            view = (1, -1) + (1,) * (x.dim() - 2)
            scale = (gamma * (running_var + eps).rsqrt()).view(view)
            return torch.addcmul(beta.view(view), scale, x - running_mean.view(view))
            """,
    },
    "channels-first-matrix-and-lerp": {
        TRAIN_CELL: """
            channels = x.shape[1]
            by_channel = x.transpose(0, 1).reshape(channels, -1)  # (C, n)
            n = by_channel.shape[1]
            mean = by_channel.mean(dim=1)
            var = (by_channel * by_channel).mean(dim=1) - mean * mean  # E[x^2] - E[x]^2
            with torch.no_grad():
                running_mean.lerp_(mean, momentum)  # (1 - momentum) * old + momentum * new
                running_var.lerp_(var * n / (n - 1), momentum)
            y = (by_channel - mean[:, None]) / torch.sqrt(var[:, None] + eps)
            y = gamma[:, None] * y + beta[:, None]
            return y.reshape(x.transpose(0, 1).shape).transpose(0, 1)
            """,
        EVAL_CELL: """
            last = x.movedim(1, -1)  # channels last: broadcasts against (C,) vectors
            y = (last - running_mean) / (running_var + eps).sqrt() * gamma + beta
            return y.movedim(-1, 1)
            """,
    },
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graded]:
    notebooks = {"solution": submission(SOURCE)}
    notebooks.update({name: submission(SOURCE, s.code) for name, s in MISTAKEN.items()})
    notebooks.update({name: submission(SOURCE, code) for name, code in ALTERNATIVES.items()})
    students = {re.sub(r"[^A-Za-z0-9_-]", "_", name): nb for name, nb in notebooks.items()}
    result = autograde_many(tmp_path_factory.mktemp("ps01-mutants"), ASSIGNMENT, students)
    seconds = next(iter(result.values())).seconds
    print(f"\nps01_batchnorm: {len(result)} submissions, autograde {seconds:.1f} s per submission")
    return {name: result[re.sub(r"[^A-Za-z0-9_-]", "_", name)] for name in notebooks}


def _named(text: str) -> set[str]:
    """The catalogued misconceptions a feedback text names (by their stable bracketed names)."""
    return {m.name for m in CATALOGUE.values() if f"Misconception: {m.title} [{m.name}]." in text}


def _full(points: dict[str, float], lost: set[str] = frozenset()) -> tuple[float, ...]:
    return tuple(0 if grade_id in lost else points[grade_id] for grade_id in ORDER)


def test_every_ps01_misconception_has_a_mutant_submission():
    ps01_tasks = {TRAIN.name, EVAL.name}
    applies = {m.name for m in CATALOGUE.values() if ps01_tasks & set(m.mutants)}
    proven = {name for s in MISTAKEN.values() for m in s.mistakes for name in m.named}
    assert applies == proven


def test_the_solution_scores_full_marks(graded):
    assert graded["solution"].score_vector(ORDER) == _full(POINTS)


@pytest.mark.parametrize("name", list(MISTAKEN))
def test_a_mistake_loses_exactly_its_cells_and_is_named_there(graded, name):
    expected, result = MISTAKEN[name], graded[name]
    assert result.score_vector(ORDER) == _full(POINTS, expected.lost)
    for grade_id in ORDER:
        text = result.outputs[grade_id]
        assert _named(text) == expected.named(grade_id), (grade_id, text)
        for words in expected.says(grade_id):
            assert words in text, (grade_id, text)
        if grade_id not in expected.lost:
            assert "matches the reference" in text and "Error" not in text, (grade_id, text)
    # The feedback shows no expected value: only input settings, indices and the seed.
    for grade_id in expected.lost:
        text = result.outputs[grade_id]
        assert "tensor(" not in text, text
        assert not re.search(r"\d\.\d{4,}", text), text


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_an_alternative_correct_implementation_scores_full_marks(graded, name):
    result = graded[name]
    assert result.score_vector(ORDER) == _full(POINTS)
    for grade_id in ORDER:
        assert "matches the reference" in result.outputs[grade_id], result.outputs[grade_id]
        assert "Misconception" not in result.outputs[grade_id]
