"""Build the instructor version of ps03_dropout: ``python solutions/ps03_dropout/build.py``.

Writes ``solutions/ps03_dropout/ps03_dropout.ipynb`` (no outputs). The student version in
``exercises/`` is then generated from it by ``make release``. ``tests/test_ps03_dropout.py``
checks that the committed notebook is what this script builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c

ASSIGNMENT = "ps03_dropout"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Autograded cells and their points: partial credit for each mode and each kind of noise.
POINTS = {
    "test_dropout_train": 3,
    "test_dropout_eval": 1,
    "test_dropout_backward": 2,
    "test_gaussian_dropout": 2,
    "test_uout": 2,
}
# The written answer, graded by hand.
MANUAL_POINTS = {"mean_not_variance": 2}

INTRO = r"""
# Problem set 3: Dropout in training and at test time

In this problem set you write inverted dropout, its backward pass, Gaussian dropout and Uout
yourself, with PyTorch's convention: **`p` is the probability of dropping a unit**, as in
`torch.nn.Dropout(p)`.

| part | what is graded | points |
|---|---|---|
| 1 | `dropout_forward` in training mode | 3 |
| 1 | `dropout_forward` in evaluation mode | 1 |
| 2 | `dropout_backward` | 2 |
| 3 | `gaussian_dropout` | 2 |
| 4 | `uout` | 2 |
| 5 | a written answer, graded by hand | 2 |

**Randomness.** Every function takes a `generator` argument: draw all random numbers from it, on
the input's device, for example `torch.rand(x.shape, generator=generator, device=x.device)`.
The checks pass a `torch.Generator` seeded when they run, so your results are reproducible for a
given seed but cannot be known in advance. They call each function twice with generators in the
same state and expect the same output, and they check that the global random generator (the one
`torch.manual_seed` sets) is left alone.

**How you are graded.** Each graded cell calls a check from `bncourse.grading`. Since dropout is
random, the check does not compare your outputs with fixed numbers: it draws large random inputs
(about 20,000 values each, small and large, some of them zero) and tests *properties* of your
outputs, within bounds derived from the sampling distribution: the fraction of units zeroed, the
factor applied to the kept units, whether every sample has a mask of its own, the mean and
variance of the noise and whether it scales with the input, where the gradient flows. When
something is wrong it names the misconception behind it and points to the section of the course
book that explains it. The grader runs the same checks once more in float64.

**Rules.** Use elementary tensor operations and random draws (`torch.rand`, `torch.randn`,
`torch.bernoulli`, `Tensor.uniform_`, ...). `torch.nn.functional.dropout`, `torch.nn.Dropout`
and the course's `bncourse.nn` are refused inside your functions, and so is autograd inside
`dropout_backward`; that part then scores zero. Return new tensors: your functions must leave
`x` and `dout` as they were, not change them in place.
Everything runs on the CPU; a CUDA GPU is used when there is one.
"""

SETUP = """
import math

import torch

from bncourse import grading

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Working on {device}")
"""

PART1 = r"""
## Part 1: inverted dropout

In training mode, inverted dropout draws for every element $x_i$ a mask value $m_i$ that is 1 with
probability $1 - p$ (the unit is **kept**) and 0 with probability $p$, and outputs

$$
y_i = \frac{m_i\, x_i}{1 - p},
$$

so that $\mathbb{E}[y_i] = x_i$. In evaluation mode it is the identity, $y_i = x_i$.

Write `dropout_forward(x, p, training, generator=None)`. It returns a pair `(out, cache)`: the
output, and whatever your backward pass in Part 2 will need (for example the mask; `None` is fine
in evaluation mode). The output has the shape, dtype and device of `x`.
"""

FORWARD_SOLUTION = '''
def dropout_forward(x, p, training, generator=None):
    """Inverted dropout: p is the probability of dropping. Returns (out, cache)."""
    ### BEGIN SOLUTION
    if not training:
        return x, None  # the identity: nothing to remember for the backward pass
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p  # kept w.p. 1 - p
    out = x * keep / (1 - p)
    return out, (keep, p)
    ### END SOLUTION
'''

TRY_FORWARD = """
# Try it (change anything here; this cell is not graded).
gen = torch.Generator(device=device).manual_seed(0)
x = torch.ones(10_000, device=device)
out, cache = dropout_forward(x, 0.3, training=True, generator=gen)
print("fraction zeroed (about 0.3):", (out == 0).float().mean().item())
print("values kept (1 / 0.7 = 1.4286):", out[out != 0].unique())
print("mean (about 1):", out.mean().item())
print("evaluation mode returns x:", torch.equal(dropout_forward(x, 0.3, training=False)[0], x))
"""

TEST_TRAIN = """
# Part 1: dropout_forward in training mode, p = 0.2, 0.3 and 0.7 (3 points).
import torch

from bncourse import grading

grading.check_dropout_train(dropout_forward)
### BEGIN HIDDEN TESTS
grading.check_dropout_train(dropout_forward, dtype=torch.float64)
### END HIDDEN TESTS
"""

TEST_EVAL = """
# Part 1: dropout_forward in evaluation mode, a batch of one included (1 point).
import torch

from bncourse import grading

grading.check_dropout_eval(dropout_forward)
### BEGIN HIDDEN TESTS
grading.check_dropout_eval(dropout_forward, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART2 = r"""
## Part 2: the backward pass

With the mask fixed by the forward pass, $\partial y_i / \partial x_i = m_i / (1 - p)$. Write
`dropout_backward(dout, cache)`, which returns $\partial L / \partial x$ given
`dout` $= \partial L / \partial y$ and the `cache` your `dropout_forward` returned, in training
and in evaluation mode. The check runs your forward pass, then your backward pass on its cache.
"""

BACKWARD_SOLUTION = '''
def dropout_backward(dout, cache):
    """Gradient of inverted dropout with respect to its input, given the forward pass's cache."""
    ### BEGIN SOLUTION
    if cache is None:  # evaluation mode: the forward pass was the identity
        return dout
    keep, p = cache
    return dout * keep / (1 - p)
    ### END SOLUTION
'''

TRY_BACKWARD = """
# Compare with autograd through your own forward pass (not graded).
x = torch.randn(6, 5, device=device, requires_grad=True)
out, cache = dropout_forward(x, 0.3, training=True, generator=gen)
dout = torch.randn(6, 5, device=device)
(expected,) = torch.autograd.grad(out, x, dout)
print("largest difference from autograd:", (dropout_backward(dout, cache) - expected).abs().max().item())
"""

TEST_BACKWARD = """
# Part 2: dropout_backward after dropout_forward, in training and evaluation mode (2 points).
import torch

from bncourse import grading

grading.check_dropout_backward(dropout_forward, dropout_backward)
### BEGIN HIDDEN TESTS
grading.check_dropout_backward(dropout_forward, dropout_backward, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART3 = r"""
## Part 3: Gaussian dropout

Gaussian dropout multiplies every unit by continuous noise, $y_i = r_i\, x_i$ with
$r_i \sim \mathcal{N}(1, \sigma^2)$. Choosing $\sigma^2 = p / (1 - p)$ gives the noise the same mean
(1) and the same variance as the inverted Bernoulli multiplier $m_i / (1 - p)$ of drop probability
$p$. No rescaling is needed, and it is the identity in evaluation mode. Write
`gaussian_dropout(x, p, training, generator=None)`, returning only the output.
"""

GAUSSIAN_SOLUTION = '''
def gaussian_dropout(x, p, training, generator=None):
    """Multiply by noise from N(1, p / (1 - p)) in training; the identity in evaluation."""
    ### BEGIN SOLUTION
    if not training:
        return x
    std = math.sqrt(p / (1 - p))
    noise = 1 + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x * noise
    ### END SOLUTION
'''

TEST_GAUSSIAN = """
# Part 3: gaussian_dropout in training and evaluation mode (2 points).
import torch

from bncourse import grading

grading.check_gaussian_dropout(gaussian_dropout)
### BEGIN HIDDEN TESTS
grading.check_gaussian_dropout(gaussian_dropout, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART4 = r"""
## Part 4: Uout

Li et al. (2019) propose *Uout*, uniform multiplicative noise: $y_i = x_i + x_i\, r_i$ with $r_i$
uniform on $[-\beta, \beta]$. The noise $1 + r_i$ has mean 1 and variance $\beta^2/3$; like
Gaussian dropout it is the identity in evaluation mode. Write `uout(x, beta, training,
generator=None)`. (`torch.rand` draws uniformly from $[0, 1)$.)
"""

UOUT_SOLUTION = '''
def uout(x, beta, training, generator=None):
    """x + x * r with r ~ U(-beta, beta) in training; the identity in evaluation."""
    ### BEGIN SOLUTION
    if not training:
        return x
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    r = beta * (2 * u - 1)  # uniform on [-beta, beta)
    return x + x * r
    ### END SOLUTION
'''

TRY_NOISE = """
# The noise of Gaussian dropout and Uout (not graded).
x = torch.ones(100_000, device=device)
g = gaussian_dropout(x, 0.3, training=True, generator=gen)
u = uout(x, 0.1, training=True, generator=gen)
print(f"Gaussian: mean {g.mean().item():.4f}, variance {g.var().item():.4f} (p/(1-p) = {0.3 / 0.7:.4f})")
print(f"Uout:     mean {u.mean().item():.4f}, variance {u.var().item():.5f} (beta^2/3 = {0.01 / 3:.5f})")
"""

TEST_UOUT = """
# Part 4: uout in training and evaluation mode, beta = 0.1, 0.3 and 0.5 (2 points).
import torch

from bncourse import grading

grading.check_uout(uout)
### BEGIN HIDDEN TESTS
grading.check_uout(uout, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART5 = r"""
## Part 5: the mean survives evaluation, the variance does not (2 points, graded by hand)

A unit $x$ has mean $\mu$ and variance $s^2$ over the data and passes through inverted dropout
with drop probability $p$. Explain, with a short calculation, why the output has the same mean in
training and in evaluation mode, but not the same variance. Give the training-mode variance, and
say what this means for a batch-norm layer placed right after the dropout layer. Answer in the
cell below (Markdown and LaTeX are welcome).
"""

ANSWER = r"""
### BEGIN SOLUTION
With $m \sim \mathrm{Bernoulli}(1-p)$ independent of $x$, the training output is
$y = m x / (1-p)$. Its mean is $\mathbb{E}[y] = \mathbb{E}[m]\,\mathbb{E}[x] / (1-p) = \mu$, the
same as in evaluation mode, where $y = x$: the factor $1/(1-p)$ was chosen for exactly that.
Its second moment is $\mathbb{E}[y^2] = \mathbb{E}[m^2]\,\mathbb{E}[x^2] / (1-p)^2
= (s^2 + \mu^2)/(1-p)$, because $m^2 = m$. Hence
$\mathrm{Var}_\text{train}[y] = (s^2 + \mu^2)/(1-p) - \mu^2 = s^2 + \frac{p}{1-p}(s^2 + \mu^2)$,
larger than $\mathrm{Var}_\text{eval}[y] = s^2$: the scaling fixes one moment only, and the mask
adds variance that disappears at test time. A batch-norm layer right after dropout estimates its
running variance in training mode, with the extra variance included, and then normalizes the
smaller test-time variance with it: its outputs shrink at test time (the variance shift of
Li et al.).
### END SOLUTION
"""


def build() -> NotebookNode:
    """The instructor version of ps03_dropout."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("part1", PART1),
            c.solution("dropout_forward", FORWARD_SOLUTION),
            c.scratch("try_forward", TRY_FORWARD),
            c.tests("test_dropout_train", POINTS["test_dropout_train"], TEST_TRAIN),
            c.tests("test_dropout_eval", POINTS["test_dropout_eval"], TEST_EVAL),
            c.instructions("part2", PART2),
            c.solution("dropout_backward", BACKWARD_SOLUTION),
            c.scratch("try_backward", TRY_BACKWARD),
            c.tests("test_dropout_backward", POINTS["test_dropout_backward"], TEST_BACKWARD),
            c.instructions("part3", PART3),
            c.solution("gaussian_dropout", GAUSSIAN_SOLUTION),
            c.tests("test_gaussian_dropout", POINTS["test_gaussian_dropout"], TEST_GAUSSIAN),
            c.instructions("part4", PART4),
            c.solution("uout", UOUT_SOLUTION),
            c.scratch("try_noise", TRY_NOISE),
            c.tests("test_uout", POINTS["test_uout"], TEST_UOUT),
            c.instructions("part5", PART5),
            c.written_answer("mean_not_variance", MANUAL_POINTS["mean_not_variance"], ANSWER),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
