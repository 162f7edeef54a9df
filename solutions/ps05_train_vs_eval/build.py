"""Build the instructor version of ps05_train_vs_eval: ``python solutions/ps05_train_vs_eval/build.py``.

Writes ``solutions/ps05_train_vs_eval/ps05_train_vs_eval.ipynb`` (no outputs). The student version
in ``exercises/`` is then generated from it by ``make release``.
``tests/test_ps05_train_vs_eval.py`` checks that the committed notebook is what this script builds.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from bncourse.instructor import nbgrader_cells as c

ASSIGNMENT = "ps05_train_vs_eval"
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"

# Graded cells and their points, in notebook order.
POINTS = {
    "test_evaluate": 3,
    "test_evaluate_modes": 1,
    "test_predict": 2,
    "test_make_cnn": 2,
}

INTRO = r"""
# Problem set 5: Debugging training and test modes

A colleague's training code runs without a single error message and still gets its numbers
wrong. Every bug below comes from the same place: Dropout and Batch Normalization (BN) behave
differently in training mode and in evaluation mode, and the code switches between the two at the
wrong time, or not at all. For each part you get the colleague's code and a cell that shows the
symptom; find the bug and write a fixed version.

| part | what is graded | points |
|---|---|---|
| 1 | `evaluate(model, batches)`: evaluates as at test time, changes nothing | 3 |
| 1 | `evaluate(model, batches)`: gives every module its train/eval flag back | 1 |
| 2 | `predict(model, x)`: right classes for any batch size, one included | 2 |
| 3 | `make_cnn(in_channels, num_classes, depth, width, p)`: no BN layer sees dropout | 2 |

**How you are graded.** The checks do not read your code; they run it. They build small networks
(in training mode, as in the middle of a training loop), call your function, record in which mode
every dropout and BN layer ran, and compare what it returns and what it leaves behind with the
course's reference. When something is wrong they name the misconception behind it and link the
section of the course book that explains it. The grader runs a few more checks of the same kind
(convolutional networks among them).

**Rules.** Inside your functions, calling the course's own implementations
(`bncourse.lab.train.evaluate`, `bncourse.lab.models`) is refused by the checks, and that part
scores zero. Everything runs on the CPU in seconds; a CUDA GPU is used when there is one.
"""

SETUP = """
import copy

import torch
from torch import nn

from bncourse import grading
from bncourse.lab.data import load_dataset
from bncourse.lab.models import mlp
from bncourse.lab.train import train

torch.set_num_threads(1)  # tiny networks run fastest on one CPU thread
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
data = load_dataset("digits", seed=0)  # 8x8 images of digits, shipped with scikit-learn
test_batches = [
    (x.to(device), y.to(device)) for x, y in zip(data.x_test.split(128), data.y_test.split(128))
]
# The colleague's network: two Linear -> BN -> ReLU blocks, dropout before the classifier.
net = mlp(data.input_shape, data.num_classes, depth=2, width=32, placement="after_bn", p=0.3,
          seed=0)
train(net, data, epochs=5, batch_size=64, lr=0.05, seed=0, progress=False, device=device)
print(f"Working on {device}; the network:")
print(net)
"""

PART1 = r"""
## Part 1: an evaluation that changes the model

The colleague evaluates the network after every epoch of training with this function. It runs
under `torch.no_grad()`, "so it is evaluation". Run the cell after it: the network is in training
mode, as it is between two epochs.
"""

BUGGY_EVALUATE = '''
def buggy_evaluate(model, batches):
    """Fraction of the samples in `batches`, a list of (x, y), that `model` classifies correctly."""
    correct = total = 0
    with torch.no_grad():  # no gradients: this is evaluation, isn't it?
        for x, y in batches:
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += len(y)
    return correct / total
'''

SYMPTOM_EVALUATE = """
between_epochs = copy.deepcopy(net).train()  # the network as the training loop leaves it
before = between_epochs.bn1.running_mean.clone()
print("three evaluations:", [round(buggy_evaluate(between_epochs, test_batches), 3) for _ in range(3)])
moved = (between_epochs.bn1.running_mean - before).abs().max().item()
print(f"bn1.running_mean moved by up to {moved:.3f} while evaluating")
"""

PART1_TASK = r"""
Write `evaluate(model, batches)`, a fixed version. It returns the fraction of correctly classified
samples (a float in $[0, 1]$) as the network would score **at test time**, gives the same answer
every time, leaves BN's running statistics untouched, and hands the network back with every
module in the train/eval mode it had before (the training loop continues right after it; some
modules may be in evaluation mode and others in training mode). The batches may differ in size
(a data loader's last batch is usually smaller), and their tensors must come back unchanged.
"""

EVALUATE_SOLUTION = '''
def evaluate(model, batches):
    """Fraction of the samples in `batches`, a list of (x, y), that `model` classifies correctly
    at test time; the model is left exactly as it was found."""
    ### BEGIN SOLUTION
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout off, BN on its running statistics; no_grad alone changes neither
    correct = total = 0
    try:
        with torch.no_grad():
            for x, y in batches:
                correct += (model(x).argmax(dim=1) == y).sum().item()
                total += len(y)
    finally:
        for m, training in modes.items():
            m.training = training
    return correct / total
    ### END SOLUTION
'''

TRY_EVALUATE = """
# Try it (not graded): the same number three times, nothing moved, the mode given back.
between_epochs = copy.deepcopy(net).train()
before = between_epochs.bn1.running_mean.clone()
print("three evaluations:", [round(evaluate(between_epochs, test_batches), 3) for _ in range(3)])
print("running_mean unchanged:", torch.equal(before, between_epochs.bn1.running_mean))
print("still in training mode:", between_epochs.training)
"""

TEST_EVALUATE = """
# Part 1: evaluation as at test time, buffers untouched, the network's accuracy (3 points).
from bncourse import grading

grading.check_evaluate(evaluate)
### BEGIN HIDDEN TESTS
grading.check_evaluate(evaluate, layout="conv")
### END HIDDEN TESTS
"""

TEST_EVALUATE_MODES = """
# Part 1: every module gets its train/eval flag back (1 point).
from bncourse import grading

grading.check_evaluate_restores_modes(evaluate)
### BEGIN HIDDEN TESTS
grading.check_evaluate_restores_modes(evaluate, layout="conv")
### END HIDDEN TESTS
"""

PART2 = r"""
## Part 2: a prediction for one sample

For a demo the colleague needed the prediction for a single image. The first version raised
`ValueError: Expected more than 1 value per channel when training`, so they "fixed" it:
"""

BUGGY_PREDICT = '''
def buggy_predict(model, x):
    """Predicted class of every sample of x, a batch of shape (N, ...)."""
    if len(x) == 1:
        # BatchNorm refused a batch of one, so the sample goes in twice.
        return model(torch.cat([x, x])).argmax(dim=1)[:1]
    return model(x).argmax(dim=1)
'''

SYMPTOM_PREDICT = """
demo = copy.deepcopy(net).train()
images, labels = data.x_test[:12].to(device), data.y_test[:12]
with torch.no_grad():
    one_by_one = [buggy_predict(demo, images[i : i + 1]).item() for i in range(len(images))]
print("true classes:     ", labels.tolist())
print("one at a time:    ", one_by_one)
"""

PART2_TASK = r"""
Write `predict(model, x)`, a fixed version: the predicted class of every sample of `x`, a tensor
of shape $(N,)$, for any $N$ including 1, computed as at test time. Like `evaluate`, it changes
nothing in the network or in `x` and gives every module its train/eval flag back.
"""

PREDICT_SOLUTION = '''
def predict(model, x):
    """Predicted class of every sample of x, shape (N,), for any N including 1; `model` is left
    exactly as it was found."""
    ### BEGIN SOLUTION
    modes = {m: m.training for m in model.modules()}
    model.eval()  # BN on its running statistics: a batch of one is fine, nothing is updated
    try:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    finally:
        for m, training in modes.items():
            m.training = training
    ### END SOLUTION
'''

TRY_PREDICT = """
# Try it (not graded).
one_by_one = [predict(demo, images[i : i + 1]).item() for i in range(len(images))]
print("true classes: ", labels.tolist())
print("one at a time:", one_by_one)
print("as a batch:   ", predict(demo, images).tolist())
"""

TEST_PREDICT = """
# Part 2: single samples and a batch, classes as at test time, network unchanged (2 points).
from bncourse import grading

grading.check_predict(predict)
### BEGIN HIDDEN TESTS
grading.check_predict(predict, layout="all")
### END HIDDEN TESTS
"""

PART3 = r"""
## Part 3: a network that cannot be evaluated

For a convolutional version the colleague wrote this builder. Nothing crashes, but its BN
layers learn statistics they will never see at test time. The cell after it shows this without
any training: it measures the variance of every BN layer's input on the same images in training
mode (dropout on) and in evaluation mode (dropout off). BN's running variance learns the first;
at test time it gets the second.
"""

BUGGY_CNN = '''
def buggy_make_cnn(in_channels, num_classes, depth, width, p):
    """depth blocks Conv2d(3x3) -> Dropout -> BatchNorm2d -> ReLU, pooling, a linear classifier."""
    layers = []
    channels = in_channels
    for _ in range(depth):
        conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        layers += [conv, nn.Dropout(p), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def bn_input_variances(model, x, training):
    """Variance of each BN layer's input on x, averaged over channels; dropout on if `training`
    (BN itself stays in evaluation mode, so that it changes nothing)."""
    seen = []
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for bn in bns]
    model.train(training)
    for bn in bns:
        bn.eval()
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    model.eval()
    return [z.transpose(0, 1).flatten(1).var(dim=1).mean().item() for z in seen]


def show_variances(model):
    torch.manual_seed(0)
    images = data.x_train[:256].to(device)
    train_var = bn_input_variances(model, images, training=True)
    eval_var = bn_input_variances(model, images, training=False)
    for i, (t, e) in enumerate(zip(train_var, eval_var), start=1):
        print(f"BN layer {i}: input variance {t:.3f} in training mode, {e:.3f} in evaluation mode")
'''

SYMPTOM_CNN = """
torch.manual_seed(0)
show_variances(buggy_make_cnn(1, data.num_classes, depth=3, width=16, p=0.5).to(device))
"""

PART3_TASK = r"""
Write `make_cnn(in_channels, num_classes, depth, width, p)`, a fixed builder: `depth` blocks
`Conv2d(3x3, padding=1, bias=False) -> BatchNorm2d -> ReLU` of `width` channels, global average
pooling, and a linear classifier, with **one** dropout layer of drop probability `p` that still
regularizes the classifier but whose noise no BN layer sees.
"""

CNN_SOLUTION = '''
def make_cnn(in_channels, num_classes, depth, width, p):
    """A CNN whose one dropout layer (drop probability p) feeds no BN layer."""
    ### BEGIN SOLUTION
    layers = []
    channels = in_channels
    for _ in range(depth):
        conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
    ### END SOLUTION
'''

TRY_CNN = """
# Try it (not graded): both columns should agree now.
torch.manual_seed(0)
show_variances(make_cnn(1, data.num_classes, depth=3, width=16, p=0.5).to(device))
"""

TEST_CNN = """
# Part 3: dropout active in training, and no BN layer sees its noise (2 points).
from bncourse import grading

grading.check_cnn_placement(make_cnn)
### BEGIN HIDDEN TESTS
grading.check_cnn_placement(make_cnn, more=True)
### END HIDDEN TESTS
"""


def build() -> NotebookNode:
    """The instructor version of ps05_train_vs_eval."""
    return c.notebook(
        [
            c.instructions("intro", INTRO),
            c.readonly_code("setup", SETUP),
            c.instructions("part1", PART1),
            c.readonly_code("buggy_evaluate", BUGGY_EVALUATE),
            c.readonly_code("symptom_evaluate", SYMPTOM_EVALUATE),
            c.instructions("part1_task", PART1_TASK),
            c.solution("evaluate", EVALUATE_SOLUTION),
            c.scratch("try_evaluate", TRY_EVALUATE),
            c.tests("test_evaluate", POINTS["test_evaluate"], TEST_EVALUATE),
            c.tests("test_evaluate_modes", POINTS["test_evaluate_modes"], TEST_EVALUATE_MODES),
            c.instructions("part2", PART2),
            c.readonly_code("buggy_predict", BUGGY_PREDICT),
            c.readonly_code("symptom_predict", SYMPTOM_PREDICT),
            c.instructions("part2_task", PART2_TASK),
            c.solution("predict", PREDICT_SOLUTION),
            c.scratch("try_predict", TRY_PREDICT),
            c.tests("test_predict", POINTS["test_predict"], TEST_PREDICT),
            c.instructions("part3", PART3),
            c.readonly_code("buggy_make_cnn", BUGGY_CNN),
            c.readonly_code("symptom_make_cnn", SYMPTOM_CNN),
            c.instructions("part3_task", PART3_TASK),
            c.solution("make_cnn", CNN_SOLUTION),
            c.scratch("try_make_cnn", TRY_CNN),
            c.tests("test_make_cnn", POINTS["test_make_cnn"], TEST_CNN),
        ]
    )


def main() -> None:
    c.write(build(), SOURCE)
    print(f"wrote {SOURCE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
