"""Build the instructor version of ps01_batchnorm: ``python solutions/ps01_batchnorm/build.py``.

Writes ``solutions/ps01_batchnorm/ps01_batchnorm.ipynb`` (no outputs). The student version in
``exercises/`` is then generated from it by ``make release``. ``tests/test_ps01_autograde.py``
checks that the committed notebook is what this script builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c

ASSIGNMENT = "ps01_batchnorm"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Graded cells and their points: partial credit for each part of the layer.
POINTS = {
    "test_batchnorm_train": 3,
    "test_running_update": 3,
    "test_batchnorm_eval": 2,
    "test_conv_layout": 2,
}

INTRO = r"""
# Problem set 1: Batch Normalization forward, in training and at test time

In this problem set you write the forward pass of Batch Normalization (BN) yourself, with the same
conventions as PyTorch's `torch.nn.BatchNorm1d` and `torch.nn.BatchNorm2d`, in two functions:

- `batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps)` normalizes
  with the statistics of the batch and updates the running statistics;
- `batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps)` normalizes with the
  running statistics.

`x` has shape $(N, C)$ (a fully connected layer), $(N, C, L)$ or $(N, C, H, W)$ (convolutional
layers); `gamma`, `beta`, `running_mean` and `running_var` have shape $(C,)$.

| part | what is graded | points |
|---|---|---|
| 1 | training-mode output for $(N, C)$ input | 3 |
| 2 | the running-statistics update | 3 |
| 3 | evaluation mode | 2 |
| 4 | convolutional layouts $(N, C, L)$ and $(N, C, H, W)$ | 2 |

**How you are graded.** Each graded cell calls a check from `bncourse.grading`. The check draws new
random inputs every time it runs (tiny batches among them), compares your function with the
course's reference implementation, and when something is wrong it names the misconception behind
it and points to the section of the course book that explains it. The checks you see are the ones
that grade you; the grader runs a few more of the same kind (float64 inputs, gradients).

**Rules.** Write the computation with elementary tensor operations (`mean`, `var`, `sqrt`,
broadcasting, ...). Calling `torch.nn.functional.batch_norm`, `torch.nn.BatchNorm1d`, layer, group
or instance norm, or the course's `bncourse.nn` inside your functions is refused by the checks, and
that part scores zero. Leave the tensors you are given as they were: `x`, `gamma` and `beta`
belong to the caller (compute `x - mean` on a new tensor, not `x -= mean` or `x.sub_(...)`); only
`running_mean` and `running_var` are updated in place, in training mode. Every graded part checks
this, so a function that changes its inputs fails each part that calls it. Everything runs on the
CPU; a CUDA GPU is used when there is one.
"""

SETUP = """
import torch

from bncourse import grading

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Working on {device}")
"""

PART1 = r"""
## Part 1: training mode

In training mode BN computes, for every channel $c$, the mean $\mu_c$ and the **biased** variance
$\sigma_c^2$ (divide by $n$) of the $n$ values of that channel in the batch: over the batch axis $N$
for $(N, C)$ input, and over $N$ and every spatial axis for convolutional input. Then

$$
y = \gamma_c \, \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c .
$$

The output has the shape and dtype of `x`. It must stay differentiable with respect to `x`,
`gamma` and `beta` (no `.detach()`, `.data`, `.item()` or NumPy in the computation of `y`).

Write `batchnorm_forward_train` below. It returns only `y`; Part 2 adds the update of the running
statistics to the same function, and Part 4 checks it on convolutional input, so write it for any
number of axes from the start: the axes to average over are `0` and `2, 3, ...`, and a $(C,)$
vector broadcasts against `x` once reshaped to $(1, C, 1, ...)$.

## Part 2: the running statistics

In the same function, update the running statistics **in place**, as PyTorch does:

$$
\text{running} \leftarrow (1 - \text{momentum}) \cdot \text{running} + \text{momentum} \cdot
\text{batch statistic},
$$

where `momentum` weights the *new* value, and where the variance stored is the **unbiased** one,
$\frac{n}{n-1}\,\sigma_c^2$. Update the tensors you are given (for example with `mul_` and `add_`
under `torch.no_grad()`, or `running_mean[:] = ...`); assigning `running_mean = ...` only rebinds
a local name.
"""

TRAIN_SOLUTION = '''
def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    """Batch norm in training mode; updates running_mean and running_var in place.

    x: (N, C), (N, C, L) or (N, C, H, W). gamma, beta, running_mean, running_var: (C,).
    Returns the normalized, scaled and shifted output, with the shape and dtype of x.
    """
    ### BEGIN SOLUTION
    dims = [0, *range(2, x.dim())]  # every axis but the channel axis 1
    shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) -> (1, C, 1, ...) broadcasts against x
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)  # biased: normalize with 1/n
    n = x.numel() // x.shape[1]  # values per channel
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean)
        running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
    x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape)
    ### END SOLUTION
'''

TRY_TRAIN = """
# Try your function on a small batch (change anything here; this cell is not graded).
gen = torch.Generator().manual_seed(0)
x = (3 + 2 * torch.randn(8, 4, generator=gen)).to(device)
gamma, beta = torch.ones(4, device=device), torch.zeros(4, device=device)
running_mean, running_var = torch.zeros(4, device=device), torch.ones(4, device=device)
y = batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5)
print("per-channel mean of y (about 0):", y.mean(dim=0))
print("per-channel std of y (about 1): ", y.std(dim=0, unbiased=False))
print("running_mean (0.1 * batch mean):", running_mean)
"""

TEST_TRAIN = """
# Part 1: the training-mode output on (N, C) input, tiny batches included (3 points).
import torch

from bncourse import grading

grading.check_batchnorm_train(batchnorm_forward_train)
### BEGIN HIDDEN TESTS
grading.check_batchnorm_train(batchnorm_forward_train, dtype=torch.float64)
grading.check_batchnorm_gradients(batchnorm_forward_train)
### END HIDDEN TESTS
"""

TEST_RUNNING = """
# Part 2: the running statistics after one training step, momentum 0.1, 0.3 and 0.7 (3 points).
import torch

from bncourse import grading

grading.check_running_update(batchnorm_forward_train)
### BEGIN HIDDEN TESTS
grading.check_running_update(batchnorm_forward_train, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART3 = r"""
## Part 3: evaluation mode

At test time BN normalizes with the running statistics collected during training,

$$
y = \gamma_c \, \frac{x - \mathrm{running\_mean}_c}{\sqrt{\mathrm{running\_var}_c + \epsilon}} + \beta_c ,
$$

so the output for a sample does not depend on the rest of the batch, a batch of one works, and
the running statistics are only read, never changed.
"""

EVAL_SOLUTION = '''
def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps):
    """Batch norm in evaluation mode: normalize with the running statistics, change nothing.

    x: (N, C), (N, C, L) or (N, C, H, W). gamma, beta, running_mean, running_var: (C,).
    """
    ### BEGIN SOLUTION
    shape = [1, -1] + [1] * (x.dim() - 2)
    x_hat = (x - running_mean.reshape(shape)) / torch.sqrt(running_var.reshape(shape) + eps)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape)
    ### END SOLUTION
'''

TRY_EVAL = """
# A batch of one in evaluation mode (not graded).
x1 = torch.randn(1, 4, generator=gen).to(device)
print(batchnorm_forward_eval(x1, gamma, beta, running_mean, running_var, eps=1e-5))
print("running_mean unchanged:", running_mean)
"""

TEST_EVAL = """
# Part 3: evaluation mode on (N, C), (N, C, L) and (N, C, H, W) input, batches of one included
# (2 points).
import torch

from bncourse import grading

grading.check_batchnorm_eval(batchnorm_forward_eval)
### BEGIN HIDDEN TESTS
grading.check_batchnorm_eval(batchnorm_forward_eval, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART4 = r"""
## Part 4: convolutional layouts

For $(N, C, H, W)$ input BN keeps one mean and one variance per channel, computed over $N$, $H$
and $W$ together: $n = N \cdot H \cdot W$ values per channel, and `running_mean` and `running_var`
keep their shape $(C,)$. The same holds for $(N, C, L)$ with $n = N \cdot L$. If your
`batchnorm_forward_train` from Part 1 handles only $(N, C)$, make it general; the cell below checks
a whole training step (output and running statistics) on both layouts, with a batch of one image
among the inputs.
"""

TRY_CONV = """
# A training step on a small batch of images (not graded).
images = torch.randn(2, 4, 3, 3, generator=gen).to(device)
rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
y = batchnorm_forward_train(images, gamma, beta, rm, rv, momentum=0.1, eps=1e-5)
print("output shape:", tuple(y.shape), "running_mean shape:", tuple(rm.shape))
print("per-channel mean of y (about 0):", y.mean(dim=(0, 2, 3)))
"""

TEST_CONV = """
# Part 4: a whole training step on (N, C, L) and (N, C, H, W) input (2 points).
import torch

from bncourse import grading

grading.check_conv_layout(batchnorm_forward_train)
### BEGIN HIDDEN TESTS
grading.check_conv_layout(batchnorm_forward_train, dtype=torch.float64)
### END HIDDEN TESTS
"""


def build() -> NotebookNode:
    """The instructor version of ps01_batchnorm."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("part1_part2", PART1),
            c.solution("batchnorm_forward_train", TRAIN_SOLUTION),
            c.scratch("try_train", TRY_TRAIN),
            c.tests("test_batchnorm_train", POINTS["test_batchnorm_train"], TEST_TRAIN),
            c.tests("test_running_update", POINTS["test_running_update"], TEST_RUNNING),
            c.instructions("part3", PART3),
            c.solution("batchnorm_forward_eval", EVAL_SOLUTION),
            c.scratch("try_eval", TRY_EVAL),
            c.tests("test_batchnorm_eval", POINTS["test_batchnorm_eval"], TEST_EVAL),
            c.instructions("part4", PART4),
            c.scratch("try_conv", TRY_CONV),
            c.tests("test_conv_layout", POINTS["test_conv_layout"], TEST_CONV),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
