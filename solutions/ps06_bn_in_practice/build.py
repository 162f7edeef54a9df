"""Build the instructor version of ps06_bn_in_practice: ``python solutions/ps06_bn_in_practice/build.py``.

Writes ``solutions/ps06_bn_in_practice/ps06_bn_in_practice.ipynb`` (no outputs). The student
version in ``exercises/`` is then generated from it by ``make release``.
``tests/test_ps06_bn_in_practice.py`` checks that the committed notebook is what this script builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c
from bncourse.published import BOOK_URL

ASSIGNMENT = "ps06_bn_in_practice"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Autograded cells and their points, in notebook order.
POINTS = {
    "test_fold_linear": 2,
    "test_fold_conv": 2,
    "test_freeze_batchnorm": 3,
    "test_group_norm": 3,
}
# The written answer, graded by hand.
MANUAL_POINTS = {"bn_without_a_batch": 2}
# The chapter of the course book that teaches this material (its sections: #bp-folding, ...).
CHAPTER = f"{BOOK_URL}book/bn_dropout_practice.html"

INTRO = rf"""
# Problem set 6: Batch norm in practice

Three things practitioners do with Batch Normalization (BN) once a network is trained, and one
alternative for when there is no batch to normalize over:

- **folding** BN into the layer before it, so that inference runs one layer instead of two;
- **freezing** BN while a pretrained network is fine-tuned on small batches of new data;
- **group normalization**, whose statistics come from one sample alone.

The course book teaches all of it in the chapter
[*Batch norm and dropout in practice*]({CHAPTER}): read its sections on
[folding BN]({CHAPTER}#bp-folding) for Part 1, [fine-tuning with frozen BN]({CHAPTER}#bp-finetune)
for Part 2, [small batches and group norm]({CHAPTER}#bp-small-batches) for Part 3 and
[a batch of one, online learning and recurrent networks]({CHAPTER}#bp-rnn) for Part 4.

| part | what is graded | points |
|---|---|---|
| 1 | `fold_batchnorm` for a `Linear` layer | 2 |
| 1 | `fold_batchnorm` for a `Conv2d` layer | 2 |
| 2 | `freeze_batchnorm(model)` for fine-tuning | 3 |
| 3 | `group_norm(x, num_groups, gamma, beta, eps)` | 3 |
| 4 | a written answer, graded by hand | 2 |

**How you are graded.** Each graded cell calls a check from `bncourse.grading`. The checks draw
new inputs every time they run (values of both signs and of very different sizes, `eps` large
enough to matter, tiny batches), run your function, and compare what it returns and what it
leaves behind with the course's reference. When something is wrong they name the misconception
behind it and point to the section of the course book that explains it. The grader runs a few
more checks of the same kind (convolutional networks, float64 inputs).

**Rules.** In Parts 1 and 3 write the computation with elementary tensor operations (`mean`,
`var`, `sqrt`, `reshape`, broadcasting, ...): torch's normalization functions and modules
(`torch.nn.functional.group_norm`, batch, layer and instance norm), its fusion routines
(`torch.nn.utils.fusion`, `torch.ao.quantization.fuse_modules`), the kernels of `torch.ops` and the
course's `bncourse.nn` are refused there, and that part then scores zero. In Part 2 use torch's
modules freely. Return new tensors: the tensors you are given belong to the caller. Everything
runs on the CPU in seconds; a CUDA GPU is used when there is one.
"""

SETUP = """
import torch
import torch.nn.functional as F
from torch import nn

from bncourse import grading

torch.set_num_threads(1)  # tiny networks run fastest on one CPU thread
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Working on {device}")
"""

PART1 = r"""
## Part 1: folding batch norm into the layer before it

After training, a BN layer in evaluation mode is a fixed affine map of its input $z$, channel by
channel:

$$
\mathrm{BN}(z)_c = \gamma_c \, \frac{z_c - \mathrm{running\_mean}_c}{\sqrt{\mathrm{running\_var}_c
+ \epsilon}} + \beta_c .
$$

When $z = W x + b$ comes from a `Linear` or `Conv2d` layer, which is affine too, the two layers
compose into **one** layer of the same kind, with a new weight $W'$ and bias $b'$. Inference then
runs a single layer, and the result is the same up to rounding.

Write `fold_batchnorm(weight, bias, running_mean, running_var, gamma, beta, eps)`, which returns
the pair `(folded_weight, folded_bias)`:

- `weight` has shape $(C_\text{out}, C_\text{in})$ for a `Linear` layer and
  $(C_\text{out}, C_\text{in}, k_H, k_W)$ for a `Conv2d` layer; `bias` has shape
  $(C_\text{out},)$, or is `None` for a layer built with `bias=False`;
- `running_mean`, `running_var`, `gamma` and `beta` are the BN layer's, of shape
  $(C_\text{out},)$: BN's channels are the layer's **output** channels;
- the folded weight has the shape of `weight`, the folded bias the shape $(C_\text{out},)$ (a
  layer without bias gets one), both with the dtype and device of `weight`.

Work out $W'$ and $b'$ on paper first: write $\mathrm{BN}(Wx + b)$ and collect the terms that
multiply $x$ and those that do not.
"""

FOLD_SOLUTION = '''
def fold_batchnorm(weight, bias, running_mean, running_var, gamma, beta, eps):
    """The (weight, bias) of one layer equal to the layer (Linear or Conv2d weight; bias may be
    None) followed by batch norm in evaluation mode."""
    ### BEGIN SOLUTION
    scale = gamma / torch.sqrt(running_var + eps)  # one factor per output channel
    shape = [-1] + [1] * (weight.dim() - 1)  # (C_out,) -> (C_out, 1) or (C_out, 1, 1, 1)
    if bias is None:
        bias = torch.zeros_like(running_mean)
    return weight * scale.reshape(shape), (bias - running_mean) * scale + beta
    ### END SOLUTION
'''

TRY_FOLD = """
# Try it (not graded): a Linear and a Conv2d layer, each followed by BN in evaluation mode.
gen = torch.Generator().manual_seed(0)
for layer, bn, x in [
    (nn.Linear(5, 4), nn.BatchNorm1d(4), torch.randn(8, 5, generator=gen)),
    (nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), torch.randn(2, 3, 5, 5, generator=gen)),
]:
    with torch.no_grad():  # statistics as after some training
        bn.running_mean.copy_(torch.randn(4, generator=gen))
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(4, generator=gen))
        bn.bias.copy_(torch.randn(4, generator=gen))
    bn.eval()
    w, b = fold_batchnorm(layer.weight.detach(), layer.bias.detach(), bn.running_mean,
                          bn.running_var, bn.weight.detach(), bn.bias.detach(), bn.eps)
    folded = F.linear(x, w, b) if w.dim() == 2 else F.conv2d(x, w, b, padding=1)
    with torch.no_grad():
        print(type(layer).__name__, "largest difference:", (bn(layer(x)) - folded).abs().max().item())
"""

TEST_FOLD_LINEAR = """
# Part 1: folding into a Linear layer, with and without bias, eps up to 0.1 (2 points).
import torch

from bncourse import grading

grading.check_fold_batchnorm(fold_batchnorm)
### BEGIN HIDDEN TESTS
grading.check_fold_batchnorm(fold_batchnorm, dtype=torch.float64)
### END HIDDEN TESTS
"""

TEST_FOLD_CONV = """
# Part 1: folding into a Conv2d layer, 3x3 and 1x1 kernels (2 points).
import torch

from bncourse import grading

grading.check_fold_batchnorm(fold_batchnorm, layout="conv")
### BEGIN HIDDEN TESTS
grading.check_fold_batchnorm(fold_batchnorm, layout="conv", dtype=torch.float64)
### END HIDDEN TESTS
"""

PART2 = r"""
## Part 2: freezing batch norm for fine-tuning

A network pretrained on a large data set is fine-tuned on a few images at a time. Its BN layers
hold running statistics estimated on millions of samples; in training mode they would normalize
each tiny batch with that batch's own, noisy, statistics and overwrite the good ones. The usual
remedy is to **freeze** them: they normalize with their running statistics (evaluation mode),
and neither those nor $\gamma$ and $\beta$ change, while the rest of the network trains as usual
(dropout included).

The catch is the training loop below, a typical one: it calls `model.train()` at the start, as
nearly every training loop does at each epoch.
"""

FINETUNE = '''
def finetune(model, batches, lr=0.1):
    """A typical training loop: model.train(), then one SGD step per (x, y) batch."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def pretrained_network():
    """A small pretrained-looking network: its running statistics are far from a new batch's."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
    ).to(device)
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net


torch.manual_seed(1)
new_data = [(torch.randn(4, 6, device=device), torch.randint(0, 3, (4,), device=device))
            for _ in range(5)]
'''

PART2_TASK = r"""
Write `freeze_batchnorm(model)`. It changes `model` in place (and returns nothing) so that, **from
then on**:

- every BN layer (`BatchNorm1d`, `BatchNorm2d`, `BatchNorm3d`) normalizes with its running
  statistics, right after the call **and after any later `model.train()`**, and its running
  statistics, $\gamma$ and $\beta$ no longer change during fine-tuning;
- every other layer keeps training: its parameters still learn, and dropout stays active in
  training mode.

The check calls your function on small networks in training mode, runs one forward pass, then
fine-tunes them as `finetune` does and compares everything with the reference. Hint:
`model.train()` calls `train(mode)` on every submodule, and `model.eval()` is `model.train(False)`.
Freeze by overriding `train` (or `eval`), not with hooks: the autograder fine-tunes the network
outside your notebook, and hooks registered on it (`register_forward_pre_hook` and the like) do
not go with it, so a freeze that relies on them is graded as if they were not there.
"""

FREEZE_SOLUTION = '''
def freeze_batchnorm(model):
    """Keep every BN layer of `model` in evaluation mode, for good, with gamma and beta frozen;
    the other layers are left as they are."""
    ### BEGIN SOLUTION
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # BatchNorm1d, 2d and 3d
            m.eval()  # normalize with the running statistics, never update them
            for p in m.parameters():  # gamma and beta (none if affine=False)
                p.requires_grad_(False)
            # model.train() calls m.train(True): make that keep the layer in evaluation mode
            m.train = lambda mode=True, m=m: nn.Module.train(m, False)
    ### END SOLUTION
'''

TRY_FREEZE = """
# Try it (not graded): the running statistics and gamma stay, the first layer learns.
net = pretrained_network()
before = {k: v.clone() for k, v in net.state_dict().items()}
freeze_batchnorm(net)
finetune(net, new_data)
for name in ["0.weight", "1.running_mean", "1.running_var", "1.weight"]:
    print(f"{name:16} unchanged: {torch.equal(before[name], net.state_dict()[name])}")
print("BN in evaluation mode:", not net[1].training, "| dropout in training mode:", net[3].training)
"""

TEST_FREEZE = """
# Part 2: fine-tuning with frozen BN after a later model.train(), MLPs (3 points).
from bncourse import grading

grading.check_freeze_batchnorm(freeze_batchnorm)
### BEGIN HIDDEN TESTS
grading.check_freeze_batchnorm(freeze_batchnorm, layout="conv")
### END HIDDEN TESTS
"""

PART3 = r"""
## Part 3: group normalization

BN's statistics come from the batch: with a batch of one, or a few highly correlated samples,
they are useless. **Group normalization** (Wu and He, 2018) takes its statistics from one sample
alone: it splits the $C$ channels of each sample into $G$ groups of $C/G$ **consecutive**
channels and normalizes each group with the mean and the **biased** variance of all its values
(every channel of the group, every position):

$$
y = \gamma_c \, \frac{x - \mu_{n,g}}{\sqrt{\sigma_{n,g}^2 + \epsilon}} + \beta_c ,
$$

where $\mu_{n,g}$ and $\sigma^2_{n,g}$ belong to sample $n$ and group $g$, and $\gamma$ and
$\beta$ are still per **channel** $c$. It behaves the same in training and evaluation mode, and a
sample's output does not depend on the rest of the batch. Layer norm is the case $G = 1$ and
instance norm the case $G = C$.

Write `group_norm(x, num_groups, gamma, beta, eps)` for `x` of shape $(N, C)$, $(N, C, L)$ or
$(N, C, H, W)$ ($C$ is a multiple of `num_groups`), with the conventions of
`torch.nn.functional.group_norm`. The output has the shape, dtype and device of `x`.
"""

GROUP_SOLUTION = '''
def group_norm(x, num_groups, gamma, beta, eps):
    """Group normalization of x, shape (N, C, *): num_groups groups of consecutive channels per
    sample, then gamma and beta per channel."""
    ### BEGIN SOLUTION
    n, c = x.shape[:2]
    groups = x.reshape(n, num_groups, -1)  # each row: one group of one sample
    mean = groups.mean(dim=2, keepdim=True)
    var = groups.var(dim=2, unbiased=False, keepdim=True)
    y = ((groups - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = [1, c] + [1] * (x.dim() - 2)
    return y * gamma.reshape(shape) + beta.reshape(shape)
    ### END SOLUTION
'''

TRY_GROUP = """
# Try it (not graded): torch's own group norm, and a sample alone or in a batch.
gen = torch.Generator().manual_seed(0)
x = (torch.randn(3, 6, 4, 4, generator=gen) * 2 + 1).to(device)
gamma, beta = torch.randn(6, generator=gen).to(device), torch.randn(6, generator=gen).to(device)
ours = group_norm(x, 3, gamma, beta, 1e-5)
print("largest difference from torch:", (ours - F.group_norm(x, 3, gamma, beta, 1e-5)).abs().max().item())
print("first sample alone, same output:", torch.allclose(group_norm(x[:1], 3, gamma, beta, 1e-5), ours[:1]))
"""

TEST_GROUP = """
# Part 3: group norm on (N, C), (N, C, L), (N, C, H, W), batches of one included (3 points).
import torch

from bncourse import grading

grading.check_group_norm(group_norm)
### BEGIN HIDDEN TESTS
grading.check_group_norm(group_norm, dtype=torch.float64)
### END HIDDEN TESTS
"""

PART4 = rf"""
## Part 4: a batch of one, and recurrent networks (2 points, graded by hand)

Explain in a few sentences:

1. what batch norm computes in training mode for a batch of **one** sample of shape $(1, C)$, and
   why it cannot be used for online learning, where the network learns from one sample at a time;
2. what batch norm with statistics computed **per time step** has to keep in a recurrent
   network, and where it runs into trouble (think of sequences of different lengths, of time
   steps longer than any sequence seen in training, and of a batch of one sequence); say whether
   the book's small recurrent experiment, trained with mini-batches of equal-length sequences,
   shows that cost or not, and why that does not settle the question;
3. what layer norm and group norm change so that both problems disappear, and what they give up
   in exchange.

The section [a batch of one, online learning and recurrent networks]({CHAPTER}#bp-rnn) of the
course book measures both on a small example.

Answer in the cell below (Markdown and LaTeX are welcome).
"""

ANSWER = r"""
### BEGIN SOLUTION
1. For $(1, C)$ input every channel has one value: its batch mean is that value and its biased
   variance 0, so every normalized value is $0/\sqrt{\epsilon} = 0$ and the output is $\beta$,
   whatever the sample; PyTorch refuses it ("Expected more than 1 value per channel when
   training"). In online learning every step is such a batch: no statistics can be estimated,
   the gradient through the normalization vanishes, and the running statistics would be those of
   single samples.
2. Per time step, step $t$ needs its own statistics, computed over the sequences of the batch
   that still have a step $t$: late steps are averaged over few sequences (noisy, or a batch of
   one), and at test time a step longer than every training sequence has no running statistics
   at all. Sharing one set of statistics across steps mixes the different distributions of early
   and late steps. The statistics also depend on the batch, so an online or batch-of-one
   prediction differs from the batched one. The book's experiment trains on equal-length
   sequences in mini-batches, where every step has a full batch, so these costs barely arise
   there (what it measures is stated in the chapter); they appear with sequences of mixed
   lengths, longer test sequences than the statistics cover, or a batch of one, which does fail.
3. Layer norm and group norm compute the mean and variance per **sample** (over its features, or
   over groups of channels), at every step of every sequence: nothing depends on the batch
   or on the step, a batch of one is fine, training and test time compute the same thing and no
   running statistics are kept. They give up BN's normalization of each feature over the data
   (all features of a group share one mean and variance) and the noise of batch statistics that
   regularizes BN networks; in convolutional networks with large batches BN usually still trains
   a little better.
### END SOLUTION
"""


def build() -> NotebookNode:
    """The instructor version of ps06_bn_in_practice."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("part1", PART1),
            c.solution("fold_batchnorm", FOLD_SOLUTION),
            c.scratch("try_fold", TRY_FOLD),
            c.tests("test_fold_linear", POINTS["test_fold_linear"], TEST_FOLD_LINEAR),
            c.tests("test_fold_conv", POINTS["test_fold_conv"], TEST_FOLD_CONV),
            c.instructions("part2", PART2),
            c.readonly_code("finetune", FINETUNE),
            c.instructions("part2_task", PART2_TASK),
            c.solution("freeze_batchnorm", FREEZE_SOLUTION),
            c.scratch("try_freeze", TRY_FREEZE),
            c.tests("test_freeze_batchnorm", POINTS["test_freeze_batchnorm"], TEST_FREEZE),
            c.instructions("part3", PART3),
            c.solution("group_norm", GROUP_SOLUTION),
            c.scratch("try_group_norm", TRY_GROUP),
            c.tests("test_group_norm", POINTS["test_group_norm"], TEST_GROUP),
            c.instructions("part4", PART4),
            c.written_answer("bn_without_a_batch", MANUAL_POINTS["bn_without_a_batch"], ANSWER),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
