"""Build the instructor version of ps04_variance_shift: ``python solutions/ps04_variance_shift/build.py``.

Writes ``solutions/ps04_variance_shift/ps04_variance_shift.ipynb`` (no outputs). The student
version in ``exercises/`` is then generated from it by ``make release``.
``tests/test_ps04_variance_shift.py`` checks that the committed notebook is what this script builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c

ASSIGNMENT = "ps04_variance_shift"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Graded cells and their points, in notebook order.
POINTS = {
    "test_variance_shift": 2,
    "test_probe_values": 2,
    "test_probe_side_effects": 1,
    "test_recalibration_stats": 2,
    "test_recalibration_state": 1,
    "test_placement": 2,
}

INTRO = r"""
# Problem set 4: The variance shift: compute it, measure it, repair it, avoid it

Dropout placed directly before a Batch Normalization (BN) layer makes BN learn, during training,
a running variance that is larger than the variance its input has at test time: the *variance
shift* of Li et al. (CVPR 2019). In this problem set you

1. compute the shift from its closed form;
2. measure it inside a trained network with a probe built from forward hooks;
3. repair a trained network by recomputing its BN statistics with dropout switched off, and see
   how much accuracy comes back;
4. build the network so that no BN layer sees dropout noise at all.

| part | what is graded | points |
|---|---|---|
| 1 | `variance_shift(p, mean, var)` | 2 |
| 2 | `probe_variance_shift(model, x)`: what it measures | 2 |
| 2 | `probe_variance_shift(model, x)`: the network left as it was found | 1 |
| 3 | `recalibrate_bn(model, batches)`: the statistics | 2 |
| 3 | `recalibrate_bn(model, batches)`: the network handed back | 1 |
| 4 | `mlp_without_shift(in_features, num_classes, depth, width, p)` | 2 |

**Conventions.** `p` is always PyTorch's **drop** probability, as in `torch.nn.Dropout(p)`; the
paper writes $p$ for the probability of *retaining* a unit, $1 - p$ here. Variances are per
channel (dim 1 of the input), and BN's `running_var` holds unbiased estimates.

**How you are graded.** Each graded cell calls a check from `bncourse.grading`. The checks draw
new values and build new small networks every time they run, compare what your function computes
or does with the course's reference, and when something is wrong they name the misconception
behind it and link the section of the course book that explains it. The checks you see are the
ones that grade you; the grader runs a few more of the same kind (convolutional networks, values
of `p` near 0 and 1).

**Rules.** Write each function yourself. Inside them, calling the course's own implementations
(`bncourse.theory`, `bncourse.lab.probes`, `bncourse.lab.recalibrate`, `bncourse.lab.models`) is
refused by the checks, and that part scores zero. Everything runs on the CPU in seconds; a CUDA
GPU is used when there is one.
"""

SETUP = """
import copy

import torch
from torch import nn

from bncourse import grading
from bncourse.lab.data import load_dataset
from bncourse.lab.models import mlp
from bncourse.lab.train import evaluate, train

torch.set_num_threads(1)  # tiny networks run fastest on one CPU thread
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
data = load_dataset("digits", seed=0)  # 8x8 images of digits, shipped with scikit-learn
print(f"Working on {device} with {data}")
"""

PART1 = r"""
## Part 1: the shift in closed form

Take one unit $x$ with mean $c$ and variance $v$. Inverted dropout with drop probability $p$
multiplies it during training by $m = a / (1 - p)$, with $a \sim \mathrm{Bernoulli}(1 - p)$
independent of $x$, and leaves it alone at test time. BN's running variance learns the
training-time variance $\operatorname{Var}^{\text{train}}[m x]$; at test time the unit has
variance $\operatorname{Var}^{\text{test}}[x] = v$. The variance shift is

$$
\Delta = \frac{\operatorname{Var}^{\text{test}}}{\operatorname{Var}^{\text{train}}} .
$$

Derive $\operatorname{Var}^{\text{train}}[m x] = \mathbb E[m^2]\,\mathbb E[x^2] - (\mathbb E[m]\,\mathbb E[x])^2$
(work out $\mathbb E[m]$ and $\mathbb E[m^2]$ first), then write `variance_shift(p, mean, var)`,
which returns $\Delta$ for drop probability `p`, input mean `mean` $= c$ and input variance
`var` $= v$ (Python floats in, a float out). Check yourself: for a zero-mean unit the shift is
$1 - p$, the paper's retain probability.
"""

SHIFT_SOLUTION = '''
def variance_shift(p, mean, var):
    """Var_test / Var_train of a unit with mean `mean` and variance `var` behind inverted dropout
    of DROP probability `p`, directly before BN."""
    ### BEGIN SOLUTION
    keep = 1 - p  # PyTorch's p drops; the multiplier m = a / keep has E[m] = 1, E[m^2] = 1 / keep
    var_train = (mean**2 + var) / keep - mean**2
    var_test = var
    return var_test / var_train
    ### END SOLUTION
'''

TRY_SHIFT = """
# Try it (not graded): a zero-mean unit, then a unit whose mean is twice its standard deviation.
for p in (0.1, 0.3, 0.5):
    print(f"p = {p}: shift {variance_shift(p, 0.0, 1.0):.3f} (zero mean), "
          f"{variance_shift(p, 2.0, 1.0):.3f} (mean 2, variance 1)")
"""

TEST_SHIFT = """
# Part 1: the closed-form variance shift on values drawn now (2 points).
from bncourse import grading

grading.check_variance_shift(variance_shift)
### BEGIN HIDDEN TESTS
grading.check_variance_shift(variance_shift, spec="edge")
### END HIDDEN TESTS
"""

PART2 = r"""
## Part 2: measuring the shift with a probe

The network below is an MLP of four `Linear -> Dropout(0.5) -> BatchNorm1d -> ReLU` blocks,
trained for a second on the digits: dropout sits directly before every BN layer.

A *probe* compares, for every BN layer, two numbers averaged over the layer's channels:

* `moving_var`: the running variance the layer learned during training, `bn.running_var`;
* `real_var`: the variance the layer's input really has when the network runs **in evaluation
  mode** on data `x`; per channel, the **unbiased** variance over every axis but the channel axis
  (over $N$ for $(N, C)$ input, over $N, H, W$ for images), as `running_var` is.

Write `probe_variance_shift(model, x)`. It returns a list with one `(moving_var, real_var)` pair
of floats per BN layer (`torch.nn.BatchNorm1d` or `BatchNorm2d`), in the order of
`model.modules()`. Record the inputs of the BN layers with forward pre-hooks:
`handle = bn.register_forward_pre_hook(hook)` calls `hook(module, args)` before every forward
pass of `bn`, with the layer's input in `args[0]`. The probe must leave the network exactly as it
found it: the same weights and buffers, the same train/eval flag on every module (the network
may come in training mode, straight from a training loop, in evaluation mode, or with some
modules in each), and no hook left behind (`handle.remove()`); `x` stays as it is too.
"""

TRAIN_SHIFTED = """
# A network with dropout directly before every BN layer, trained for 15 epochs (about a second).
shifted = mlp(data.input_shape, data.num_classes, depth=4, width=64, placement="before_bn", p=0.5,
              seed=0)
train(shifted, data, epochs=15, batch_size=64, lr=0.05, seed=0, progress=False, device=device)
print(shifted)
print(f"test accuracy {100 * evaluate(shifted, data):.1f}%")
"""

PROBE_SOLUTION = '''
def probe_variance_shift(model, x):
    """For every BN layer of `model`, in order: (running variance, variance of its input on `x`
    with the network in evaluation mode), both averaged over channels. Changes nothing."""
    ### BEGIN SOLUTION
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    inputs = {}

    def remember(module, args):
        inputs[module] = args[0].detach()

    handles = [bn.register_forward_pre_hook(remember) for bn in bns]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # dropout off, BN on its running statistics: the network at test time
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    pairs = []
    for bn in bns:
        z = inputs[bn]
        per_channel = z.transpose(0, 1).reshape(z.shape[1], -1).var(dim=1)  # unbiased
        pairs.append((bn.running_var.mean().item(), per_channel.mean().item()))
    return pairs
    ### END SOLUTION
'''

TRY_PROBE = """
# The shift inside the trained network (not graded): real / moving is the shift of each layer.
x_train = data.x_train.to(device)
for i, (moving, real) in enumerate(probe_variance_shift(shifted, x_train), start=1):
    print(f"BN layer {i}: moving {moving:7.3f}, real {real:7.3f}, real / moving {real / moving:.2f}")
"""

TEST_PROBE_VALUES = """
# Part 2: what the probe measures, on small MLPs drawn now (2 points).
from bncourse import grading

grading.check_probe_values(probe_variance_shift)
### BEGIN HIDDEN TESTS
grading.check_probe_values(probe_variance_shift, layout="conv")
### END HIDDEN TESTS
"""

TEST_PROBE_SIDE_EFFECTS = """
# Part 2: the network after probing: flags, hooks, weights and buffers as found (1 point).
from bncourse import grading

grading.check_probe_side_effects(probe_variance_shift)
### BEGIN HIDDEN TESTS
grading.check_probe_side_effects(probe_variance_shift, layout="conv")
### END HIDDEN TESTS
"""

PART3 = r"""
## Part 3: repairing a trained network

The weights are fine; BN's statistics are not. Recompute them with the weights frozen and
**dropout switched off**, so that they describe the inputs BN will see at test time:

1. put the whole network in evaluation mode (dropout off), then switch **only** the BN layers to
   training mode, so that they collect statistics;
2. reset each BN layer's statistics (`bn.reset_running_stats()`) and set `bn.momentum = None`, a
   plain average over the batches instead of an exponential one;
3. pass every batch through the network under `torch.no_grad()`;
4. give each BN layer its momentum back and leave the network in evaluation mode.

Write `recalibrate_bn(model, batches)`; `batches` is a list of input tensors. It changes `model`
in place (no return value is needed) and leaves the tensors of `batches` as they are. `torch.optim.swa_utils.update_bn` looks like the same tool,
but it calls `model.train()`, which switches dropout back on: do not use it here.
"""

RECAL_SOLUTION = '''
def recalibrate_bn(model, batches):
    """Recompute every BN layer's running statistics from `batches` with dropout off; the weights
    stay as they are and the network is left in evaluation mode."""
    ### BEGIN SOLUTION
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    momenta = [bn.momentum for bn in bns]
    model.eval()  # dropout off
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
        bn.train()  # only BN collects statistics
    with torch.no_grad():
        for x in batches:
            model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()
    ### END SOLUTION
'''

TRY_RECAL = """
# Recalibrate a copy of the trained network on the training images (not graded).
repaired = copy.deepcopy(shifted)
recalibrate_bn(repaired, [x.to(device) for x in data.x_train.split(256)])
print(f"test accuracy {100 * evaluate(shifted, data):.1f}% before, "
      f"{100 * evaluate(repaired, data):.1f}% after recalibration")
for i, (moving, real) in enumerate(probe_variance_shift(repaired, x_train), start=1):
    print(f"BN layer {i}: real / moving {real / moving:.2f}")
"""

TEST_RECAL_STATS = """
# Part 3: the recalibrated statistics, on small MLPs drawn now (2 points).
from bncourse import grading

grading.check_recalibration_stats(recalibrate_bn)
### BEGIN HIDDEN TESTS
grading.check_recalibration_stats(recalibrate_bn, layout="conv")
### END HIDDEN TESTS
"""

TEST_RECAL_STATE = """
# Part 3: the network handed back: weights unchanged, evaluation mode (1 point).
from bncourse import grading

grading.check_recalibration_state(recalibrate_bn)
### BEGIN HIDDEN TESTS
grading.check_recalibration_state(recalibrate_bn, layout="conv")
### END HIDDEN TESTS
"""

PART4 = r"""
## Part 4: a placement without shift

Recalibration repairs the statistics after the fact. Better: build the network so that no BN
layer ever sees dropout noise. Write `mlp_without_shift(in_features, num_classes, depth, width,
p)`, which returns an `nn.Module` that flattens its input, then has `depth` blocks
`Linear(bias=False) -> BatchNorm1d -> ReLU` of `width` units and a linear classifier with
`num_classes` outputs, with **one** dropout layer of drop probability `p` placed where it
regularizes the classifier but no BN layer receives its noise.

The check builds your network and runs the same input through it in training mode (its BN layers
switched to evaluation mode, so that nothing depends on the batch) and in evaluation mode. What
every BN layer receives must be the same both times, while the output must differ (dropout, which
zeroes and rescales, is active in training).
"""

PLACEMENT_SOLUTION = '''
def mlp_without_shift(in_features, num_classes, depth, width, p):
    """An MLP with one dropout layer (drop probability p) whose noise no BN layer sees."""
    ### BEGIN SOLUTION
    layers = [nn.Flatten()]
    fan_in = in_features
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        fan_in = width
    layers += [nn.Dropout(p), nn.Linear(width, num_classes)]  # no BN after the dropout
    return nn.Sequential(*layers)
    ### END SOLUTION
'''

TRY_PLACEMENT = """
# Train your network as the one above was trained, and probe it (not graded).
torch.manual_seed(0)
safe = mlp_without_shift(64, data.num_classes, depth=4, width=64, p=0.5)
train(safe, data, epochs=15, batch_size=64, lr=0.05, seed=0, progress=False, device=device)
print(f"test accuracy {100 * evaluate(safe, data):.1f}%")
for i, (moving, real) in enumerate(probe_variance_shift(safe, x_train), start=1):
    print(f"BN layer {i}: real / moving {real / moving:.2f}")
"""

TEST_PLACEMENT = """
# Part 4: dropout active in training, and no BN layer sees its noise (2 points).
from bncourse import grading

grading.check_mlp_placement(mlp_without_shift)
### BEGIN HIDDEN TESTS
grading.check_mlp_placement(mlp_without_shift, more=True)
### END HIDDEN TESTS
"""


def build() -> NotebookNode:
    """The instructor version of ps04_variance_shift."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("part1", PART1),
            c.solution("variance_shift", SHIFT_SOLUTION),
            c.scratch("try_shift", TRY_SHIFT),
            c.tests("test_variance_shift", POINTS["test_variance_shift"], TEST_SHIFT),
            c.instructions("part2", PART2),
            c.readonly_code("train_shifted", TRAIN_SHIFTED),
            c.solution("probe_variance_shift", PROBE_SOLUTION),
            c.scratch("try_probe", TRY_PROBE),
            c.tests("test_probe_values", POINTS["test_probe_values"], TEST_PROBE_VALUES),
            c.tests(
                "test_probe_side_effects",
                POINTS["test_probe_side_effects"],
                TEST_PROBE_SIDE_EFFECTS,
            ),
            c.instructions("part3", PART3),
            c.solution("recalibrate_bn", RECAL_SOLUTION),
            c.scratch("try_recalibration", TRY_RECAL),
            c.tests(
                "test_recalibration_stats", POINTS["test_recalibration_stats"], TEST_RECAL_STATS
            ),
            c.tests(
                "test_recalibration_state", POINTS["test_recalibration_state"], TEST_RECAL_STATE
            ),
            c.instructions("part4", PART4),
            c.solution("mlp_without_shift", PLACEMENT_SOLUTION),
            c.scratch("try_placement", TRY_PLACEMENT),
            c.tests("test_placement", POINTS["test_placement"], TEST_PLACEMENT),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
