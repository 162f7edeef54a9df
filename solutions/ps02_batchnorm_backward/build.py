"""Build the instructor version of ps02_batchnorm_backward: ``python solutions/ps02_batchnorm_backward/build.py``.

Writes ``solutions/ps02_batchnorm_backward/ps02_batchnorm_backward.ipynb`` (no outputs). The
student version in ``exercises/`` is then generated from it by ``make release``.
``tests/test_ps02_batchnorm_backward.py`` checks that the committed notebook is what this script
builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c

ASSIGNMENT = "ps02_batchnorm_backward"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Graded cells and their points: partial credit for each gradient and for the image layout.
POINTS = {
    "test_grad_params": 2,
    "test_grad_input": 4,
    "test_conv_layout": 2,
}

INTRO = r"""
# Problem set 2: the backward pass of Batch Normalization

In training mode batch norm normalizes every channel with the mean and the (biased) variance of
the batch, then scales and shifts:

$$
\mu_c = \frac1n \sum_i x_{i,c}, \qquad
\sigma_c^2 = \frac1n \sum_i (x_{i,c} - \mu_c)^2, \qquad
\hat x_{i,c} = \frac{x_{i,c} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}, \qquad
y_{i,c} = \gamma_c \hat x_{i,c} + \beta_c ,
$$

where $i$ runs over the $n$ values of channel $c$ in the batch: the $N$ samples of an $(N, C)$
input, and every sample and position of an $(N, C, L)$ or $(N, C, H, W)$ input.

In this problem set you **derive** the backward pass and implement it without autograd, in one
function

`batchnorm_backward(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`

where `dout` $= \partial L / \partial y$ is the gradient of some loss $L$ with respect to the
output, with the shape of `x`, and the function returns $\partial L/\partial x$ (shape of `x`),
$\partial L/\partial\gamma$ and $\partial L/\partial\beta$ (shape $(C,)$), with the dtype and on the
device of `x`. The course book derives the same formulas in the chapter *The backward pass of batch
normalization*: try on your own first.

| part | what is graded | points |
|---|---|---|
| 1 | `dgamma` and `dbeta` for $(N, C)$ input | 2 |
| 2 | `dx` for $(N, C)$ input, batches of 3 and 4 included | 4 |
| 3 | all three gradients for $(N, C, L)$ and $(N, C, H, W)$ input | 2 |

**How you are graded.** Each graded cell calls a check from `bncourse.grading`. The check draws new
random inputs every time it runs, compares your gradients with the ones autograd computes through
the course's forward pass, and when something is wrong it names the misconception behind it and
points to the section of the course book that explains it. The grader runs a few more checks of
the same kind: float64 inputs, and a comparison with *numerical* gradients (finite differences of
the forward pass).

**Rules.** Compute the gradients with tensor operations (`sum`, `mean`, broadcasting, ...).
Autograd (`.backward()`, `torch.autograd.grad`, tensors that require grad), torch's own batch
norm and the course's `bncourse.nn` are refused inside `batchnorm_backward`, and that part scores
zero. Outside it, in the scratch cells, use autograd as much as you like to check your formulas.
Leave `dout`, `x` and `gamma` as they were: they belong to the caller (write `dout * gamma`, not
`dout *= gamma` or `dout.mul_(gamma)`). Every graded part checks this, so a function that changes
its inputs fails each part that calls it. Everything runs on the CPU; a CUDA GPU is used when
there is one.
"""

SETUP = '''
import torch

from bncourse import grading

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Working on {device}")


def batchnorm_forward(x, gamma, beta, eps):
    """Training-mode batch norm, differentiable by autograd: use it to check your gradients."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return gamma.reshape(shape) * (x - mean) / torch.sqrt(var + eps) + beta.reshape(shape)
'''

PARTS = r"""
## Part 1: the gradients of $\gamma$ and $\beta$

$\gamma_c$ and $\beta_c$ act on every value of channel $c$. Write $\partial L/\partial\beta_c$ and
$\partial L/\partial\gamma_c$ in terms of `dout` and $\hat x$. Which axes do you sum over?

## Part 2: the gradient of the input

In training mode $x_{i,c}$ reaches the loss three ways: directly through $\hat x_{i,c}$, through
the batch mean $\mu_c$, and through the batch variance $\sigma_c^2$ (every $\hat x_{j,c}$ of the
channel depends on both). Derive $\partial L/\partial\sigma_c^2$ and $\partial L/\partial\mu_c$
first, then add up the three paths with the chain rule, using
$\partial\mu_c/\partial x_{i,c} = 1/n$ and $\partial\sigma_c^2/\partial x_{i,c} = 2(x_{i,c}-\mu_c)/n$.
The result simplifies to an expression in `dout`, $\hat x$, $\gamma$ and $\sqrt{\sigma^2 + \epsilon}$
alone. Careful: the variance of the forward pass divides by $n$, not $n - 1$.

## Part 3: convolutional layouts

For $(N, C, H, W)$ input the statistics of a channel are taken over $N$, $H$ and $W$ together. Write
`batchnorm_backward` so that it works for any number of axes from the start: the axes to sum over
are `0` and `2, 3, ...`, and a $(C,)$ vector broadcasts against `x` once reshaped to
$(1, C, 1, \dots)$.
"""

SOLUTION = '''
def batchnorm_backward(dout, x, gamma, eps):
    """Gradients of training-mode batch norm with respect to x, gamma and beta.

    dout: gradient of the loss with respect to the output, shape of x.
    x: (N, C), (N, C, L) or (N, C, H, W). gamma: (C,).
    Returns (dx, dgamma, dbeta) with the shapes of x, gamma and gamma.
    """
    ### BEGIN SOLUTION
    dims = [0, *range(2, x.dim())]  # every axis but the channel axis 1
    shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) -> (1, C, 1, ...) broadcasts against x
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)  # biased, as in the forward pass
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dbeta = dout.sum(dim=dims)
    dgamma = (dout * x_hat).sum(dim=dims)
    dx_hat = dout * gamma.reshape(shape)
    # Three paths from x to the loss: through x_hat directly, the mean and the variance.
    mean_path = dx_hat.mean(dim=dims, keepdim=True)
    variance_path = x_hat * (dx_hat * x_hat).mean(dim=dims, keepdim=True)
    dx = (dx_hat - mean_path - variance_path) * inv_std
    return dx, dgamma, dbeta
    ### END SOLUTION
'''

TRY = """
# Compare with autograd on a small batch (change anything here; this cell is not graded).
gen = torch.Generator().manual_seed(0)
x = (2 + 1.5 * torch.randn(4, 3, generator=gen, dtype=torch.float64)).to(device)
gamma = torch.randn(3, generator=gen, dtype=torch.float64).to(device)
beta = torch.randn(3, generator=gen, dtype=torch.float64).to(device)
dout = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(device)

xg, gg, bg = (t.clone().requires_grad_() for t in (x, gamma, beta))
expected = torch.autograd.grad(batchnorm_forward(xg, gg, bg, 1e-5), (xg, gg, bg), dout)
for name, mine, auto in zip(("dx", "dgamma", "dbeta"), batchnorm_backward(dout, x, gamma, 1e-5), expected):
    print(f"{name:>6}: largest difference from autograd {(mine - auto).abs().max().item():.2e}")
"""

TRY_NUMERIC = r"""
# A numerical check of dx that trusts no framework: central differences of the loss
# L = sum(dout * y), one element of x at a time (not graded).
h = 1e-6
dx, _, _ = batchnorm_backward(dout, x, gamma, 1e-5)
for index in [(0, 0), (2, 1), (3, 2)]:
    bump = torch.zeros_like(x)
    bump[index] = h
    loss_plus = (dout * batchnorm_forward(x + bump, gamma, beta, 1e-5)).sum()
    loss_minus = (dout * batchnorm_forward(x - bump, gamma, beta, 1e-5)).sum()
    numeric = (loss_plus - loss_minus) / (2 * h)
    print(f"dx{index}: yours {dx[index].item():+.8f}, numerical {numeric.item():+.8f}")
"""

TEST_PARAMS = """
# Part 1: dgamma and dbeta for (N, C) input (2 points).
import torch

from bncourse import grading

grading.check_batchnorm_backward_params(batchnorm_backward)
### BEGIN HIDDEN TESTS
grading.check_batchnorm_backward_params(batchnorm_backward, dtype=torch.float64)
grading.check_batchnorm_backward_numeric(
    batchnorm_backward, quantities=("grad_weight", "grad_bias")
)
### END HIDDEN TESTS
"""

TEST_INPUT = """
# Part 2: dx for (N, C) input, batches of 3 and 4 included (4 points).
import torch

from bncourse import grading

grading.check_batchnorm_backward_input(batchnorm_backward)
### BEGIN HIDDEN TESTS
grading.check_batchnorm_backward_input(batchnorm_backward, dtype=torch.float64)
grading.check_batchnorm_backward_numeric(batchnorm_backward, quantities=("grad_input",))
### END HIDDEN TESTS
"""

TRY_CONV = """
# Images: compare with autograd on a small (N, C, H, W) batch (not graded).
images = (1 + 2 * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)).to(device)
dout_images = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64).to(device)
xg, gg, bg = (t.clone().requires_grad_() for t in (images, gamma, beta))
expected = torch.autograd.grad(batchnorm_forward(xg, gg, bg, 1e-5), (xg, gg, bg), dout_images)
mine = batchnorm_backward(dout_images, images, gamma, 1e-5)
for name, m, auto in zip(("dx", "dgamma", "dbeta"), mine, expected):
    print(f"{name:>6}: shape {tuple(m.shape)}, largest difference {(m - auto).abs().max().item():.2e}")
"""

TEST_CONV = """
# Part 3: dx, dgamma and dbeta for (N, C, L) and (N, C, H, W) input (2 points).
import torch

from bncourse import grading

grading.check_batchnorm_backward_conv(batchnorm_backward)
### BEGIN HIDDEN TESTS
grading.check_batchnorm_backward_conv(batchnorm_backward, dtype=torch.float64)
grading.check_batchnorm_backward_numeric(batchnorm_backward, layout="conv")
### END HIDDEN TESTS
"""


def build() -> NotebookNode:
    """The instructor version of ps02_batchnorm_backward."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("parts", PARTS),
            c.solution("batchnorm_backward", SOLUTION),
            c.scratch("try_autograd", TRY),
            c.scratch("try_numeric", TRY_NUMERIC),
            c.tests("test_grad_params", POINTS["test_grad_params"], TEST_PARAMS),
            c.tests("test_grad_input", POINTS["test_grad_input"], TEST_INPUT),
            c.scratch("try_conv", TRY_CONV),
            c.tests("test_conv_layout", POINTS["test_conv_layout"], TEST_CONV),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
