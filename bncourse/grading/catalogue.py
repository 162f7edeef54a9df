"""The catalogue of misconceptions the checks recognise, with their feedback and book sections.

Each :class:`Misconception` says what the mistake is, explains it in a short paragraph, links the
book section that teaches the right convention, and lists its *mutants*: for each graded task
(see :mod:`bncourse.grading.tasks`) the keyword flags that turn the task's reference into an
implementation that makes exactly this mistake, and its *signatures*: for each task, tests of
the mistake's effect on the results (:mod:`bncourse.grading.signatures`). A check recognises the
misconception when the submission behaves like one of its mutants on every input drawn, or when
one of its signatures matches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bncourse.grading.signatures import Signature
from bncourse.published import BOOK_URL

__all__ = ["BOOK_URL_VARIABLE", "CATALOGUE", "Misconception", "book_link", "book_url"]

# Where an instructor who publishes the book elsewhere says it lives, e.g.
# https://example.org/bncourse/ (also c.TrustedExecute.book_url in nbgrader_config.py). Without
# it, links go to the published book, html.baseurl of _config.yml (bncourse/published.py).
BOOK_URL_VARIABLE = "BNCOURSE_BOOK_URL"

Flags = Mapping[str, object]


def book_url() -> str:
    """The book's address, ending with ``/``: the instructor's if set, else the published one."""
    base = os.environ.get(BOOK_URL_VARIABLE, "") or BOOK_URL
    return base if base.endswith("/") else base + "/"


def book_link(page: str, anchor: str) -> str:
    """Link to a section of the course book: ``<book URL>book/<page>.html#<anchor>``."""
    return f"{book_url()}book/{page}.html#{anchor}"


@dataclass(frozen=True)
class Misconception:
    """A known mistake: its name, feedback paragraph, book section, mutants and signatures.

    ``mutants`` and ``signatures`` are keyed by task name (:class:`bncourse.grading.engine.Task`).
    """

    name: str
    title: str
    feedback: str
    page: str
    anchor: str
    mutants: Mapping[str, tuple[Flags, ...]] = field(default_factory=dict)
    signatures: Mapping[str, tuple[Signature, ...]] = field(default_factory=dict)

    @property
    def link(self) -> str:
        return book_link(self.page, self.anchor)

    def tasks(self) -> set[str]:
        """The tasks whose checks can recognise this misconception."""
        return set(self.mutants) | set(self.signatures)

    def explain(self) -> str:
        """The paragraph a failing check prints: title and name, feedback, where to read more.

        The bracketed name is stable, so that an instructor can count misconceptions across the
        feedback of a whole class.
        """
        return (
            f"Misconception: {self.title} [{self.name}].\n{self.feedback}\nRead more: {self.link}"
        )


def _entries(*items: Misconception) -> Mapping[str, Misconception]:
    names = [m.name for m in items]
    if len(set(names)) != len(names):
        raise ValueError(f"misconception names must be unique, got {names}")
    return MappingProxyType({m.name: m for m in items})


_WRONG_AXES = tuple(
    {"axes": axes} for axes in ("batch_only", "per_sample", "spatial_only", "all", "reshape")
)

CATALOGUE: Mapping[str, Misconception] = _entries(
    Misconception(
        name="stats-wrong-axes",
        title="statistics over the wrong axes",
        feedback=(
            "Batch norm computes one mean and one variance per channel (dim 1), over every other "
            "axis: over N for (N, C) input, over N and L for (N, C, L), over N, H and W for "
            "(N, C, H, W). Averaging over the features of a sample, over N alone, over H and W "
            "alone, or reshaping (N, C, H, W) to (-1, C) without moving C last first, mixes "
            "values that belong to different channels or keeps statistics per position."
        ),
        page="batchnorm",
        anchor="bn-axes",
        mutants={"batchnorm_train": _WRONG_AXES},
    ),
    Misconception(
        name="eps-missing",
        title="eps missing",
        feedback=(
            "The variance is stabilised by eps before the square root: "
            "(x - mean) / sqrt(var + eps). Without eps a channel whose values are (nearly) equal "
            "divides by (nearly) zero, and the output differs from PyTorch's whenever the "
            "variance is small."
        ),
        page="batchnorm",
        anchor="bn-eps",
        mutants={
            "batchnorm_train": ({"eps_kind": "missing"},),
            "batchnorm_eval": ({"eps_kind": "missing"},),
            "fold_batchnorm": ({"eps_kind": "missing"},),
            "group_norm": ({"eps_kind": "missing"},),
        },
    ),
    Misconception(
        name="eps-outside-sqrt",
        title="eps outside the square root",
        feedback=(
            "eps belongs inside the square root, added to the variance: "
            "(x - mean) / sqrt(var + eps), not (x - mean) / (sqrt(var) + eps) or "
            "(x - mean) / sqrt(var) + eps. The difference is largest for channels with a small "
            "variance, which is exactly where eps matters."
        ),
        page="batchnorm",
        anchor="bn-eps",
        mutants={
            "batchnorm_train": ({"eps_kind": "added_to_std"},),
            "batchnorm_eval": ({"eps_kind": "added_to_std"},),
            "fold_batchnorm": ({"eps_kind": "added_to_std"},),
            "group_norm": ({"eps_kind": "added_to_std"},),
        },
    ),
    Misconception(
        name="biased-running-variance",
        title="biased running variance",
        feedback=(
            "The batch is normalised with the biased variance (divide by n), but PyTorch stores "
            "the unbiased estimate, n / (n - 1) times larger, in running_var, where n is the "
            "number of values per channel (N, or N*H*W for conv input). With small batches the "
            "factor is far from 1: for n = 2 it doubles the variance."
        ),
        page="batchnorm",
        anchor="bn-unbiased-variance",
        mutants={"batchnorm_train": ({"running_var_kind": "biased"},)},
    ),
    # The direction of the average alone (the variance stored is still the unbiased one), and
    # Keras's whole update: old-weighted average of the biased variance. The two differ in
    # running_var whenever n / (n - 1) shows (tiny batches), so each is named on its own.
    Misconception(
        name="momentum-flipped",
        title="momentum direction flipped",
        feedback=(
            "In PyTorch momentum is the weight of the NEW batch statistic: "
            "running = (1 - momentum) * running + momentum * batch_statistic, so momentum=0.1 "
            "keeps 90% of the old value. The update here weights the old value by momentum "
            "instead, running = momentum * running + (1 - momentum) * batch_statistic, which "
            "with PyTorch's momentum moves the running statistics the wrong amount."
        ),
        page="batchnorm",
        anchor="bn-momentum",
        mutants={"batchnorm_train": ({"momentum_kind": "flipped"},)},
    ),
    Misconception(
        name="keras-style-momentum",
        title="Keras-style running statistics",
        feedback=(
            "This is the update of Keras (tf.keras BatchNormalization) and of CS231n: "
            "running = momentum * running + (1 - momentum) * batch_statistic, with the BIASED "
            "batch variance (divide by n) stored as the running variance. PyTorch differs twice: "
            "its momentum weights the NEW statistic, running = (1 - momentum) * running + "
            "momentum * batch_statistic (Keras's momentum=0.99 is PyTorch's 0.01), and it stores "
            "the unbiased variance, n / (n - 1) times the biased one."
        ),
        page="batchnorm",
        anchor="bn-momentum",
        mutants={"batchnorm_train": ({"momentum_kind": "flipped", "running_var_kind": "biased"},)},
    ),
    Misconception(
        name="running-stats-replaced",
        title="running statistics replaced instead of averaged",
        feedback=(
            "The running statistics are an exponential moving average: "
            "running = (1 - momentum) * running + momentum * batch_statistic. Overwriting them "
            "with the statistics of the latest batch (or adding momentum * batch_statistic "
            "without decaying the old value) makes evaluation depend on the last batch only."
        ),
        page="batchnorm",
        anchor="bn-running-stats",
        mutants={
            "batchnorm_train": ({"momentum_kind": "replace"}, {"momentum_kind": "no_decay"}),
        },
    ),
    Misconception(
        name="running-stats-not-updated",
        title="running statistics not updated",
        feedback=(
            "After a training step running_mean and running_var must hold the new moving "
            "averages, as torch.nn.functional.batch_norm leaves them: update the tensors you "
            "were given IN PLACE (running_mean.mul_(1 - momentum).add_(momentum * mean), or "
            "running_mean[:] = ...). Writing running_mean = ... only rebinds a local name and "
            "the caller's buffers keep their old values."
        ),
        page="batchnorm",
        anchor="bn-running-stats",
        mutants={"batchnorm_train": ({"update": False},)},
    ),
    Misconception(
        name="normalized-with-unbiased-variance",
        title="batch normalized with the unbiased variance",
        feedback=(
            "Training mode normalizes with the BIASED batch variance, mean((x - mean)^2), "
            "dividing by n, the number of values per channel: that is the variance of the "
            "numbers actually in the batch. torch.var and Tensor.var divide by n - 1 unless you "
            "pass unbiased=False (or correction=0), which shrinks the output by about "
            "sqrt((n - 1) / n), far from 1 for small batches. The n - 1 belongs to the running "
            "variance only (and applying n / (n - 1) to an already unbiased variance counts it "
            "twice)."
        ),
        page="batchnorm",
        anchor="bn-unbiased-variance",
        mutants={
            "batchnorm_train": (
                # n / (n - 1) applied once more for the running variance, or not
                {"batch_var": "unbiased"},
                {"running_var_kind": "biased", "batch_var": "unbiased"},
            ),
        },
    ),
    Misconception(
        name="bessel-factor-batch-size",
        title="n / (n - 1) computed with the batch size",
        feedback=(
            "The running variance stores n / (n - 1) times the biased batch variance, where n is "
            "the number of values the statistics were computed from: N for (N, C) input, N * L "
            "for (N, C, L), N * H * W for (N, C, H, W) (x.numel() // x.shape[1]). Taking "
            "n = x.shape[0], the batch size, is right for (N, C) input only: on images it "
            "inflates the running variance, and a batch of one image divides by zero."
        ),
        page="batchnorm",
        anchor="bn-unbiased-variance",
        mutants={"batchnorm_train": ({"running_var_kind": "batch_size"},)},
    ),
    Misconception(
        name="momentum-hard-coded",
        title="momentum hard-coded instead of the argument",
        feedback=(
            "The update must use the momentum it is given: running = (1 - momentum) * running + "
            "momentum * batch_statistic. Writing PyTorch's default 0.1 (or 0.9 for the old "
            "value) as a number gives the right result for momentum=0.1 only; a layer built with "
            "another momentum then averages at the wrong rate."
        ),
        page="batchnorm",
        anchor="bn-momentum",
        mutants={"batchnorm_train": ({"momentum_kind": "constant"},)},
    ),
    Misconception(
        name="gamma-beta-swapped",
        title="gamma and beta swapped",
        feedback=(
            "gamma (the weight, initialized to ones) SCALES the normalized input and beta (the "
            "bias, initialized to zeros) SHIFTS it: y = gamma * x_hat + beta. Computing "
            "beta * x_hat + gamma exchanges their roles, so a freshly initialized layer outputs "
            "a constant 1 instead of x_hat."
        ),
        page="batchnorm",
        anchor="bn-affine",
        mutants={
            "batchnorm_train": ({"affine": "swapped"},),
            "batchnorm_eval": ({"affine": "swapped"},),
        },
    ),
    Misconception(
        name="inputs-modified-in-place",
        title="the caller's tensors modified in place",
        feedback=(
            "The tensors a function is given belong to the caller, who still needs them: the "
            "backward pass and the next epoch read x, gamma, beta and dout belong to the model "
            "and to autograd, and a measurement or an evaluation loop hands the same batch on. "
            "In-place operations, the methods ending in an underscore (x.sub_(...), "
            "x.clamp_(...)), augmented assignments (x -= mean, dout *= gamma) and slice "
            "assignments (x[...] = ...) write into the caller's tensor. Compute on new tensors "
            "instead (x = x - mean), or on x.clone(). Only running_mean and running_var are "
            "updated in place, in training mode. Every graded part that calls the function "
            "checks the tensors it was given, so each of them fails until the function leaves "
            "them as they were, even where its results are right."
        ),
        page="batchnorm",
        anchor="bn-running-stats",
        mutants={
            "batchnorm_train": ({"in_place": True},),
            "batchnorm_eval": ({"in_place": True},),
            "batchnorm_backward": ({"in_place": True},),
            "variance_probe": ({"inputs": "modified"},),
            "bn_recalibration": ({"inputs": "modified"},),
            "evaluate": ({"inputs": "modified"},),
            "predict": ({"inputs": "modified"},),
            "fold_batchnorm": ({"in_place": True},),
            "group_norm": ({"in_place": True},),
        },
    ),
    Misconception(
        name="eval-uses-batch-statistics",
        title="evaluation uses batch statistics",
        feedback=(
            "At test time batch norm normalises with the running statistics collected during "
            "training, not with the statistics of the batch at hand: the output of a sample "
            "must not depend on the other samples of the batch, and a batch of one must work."
        ),
        page="batchnorm",
        anchor="bn-eval",
        mutants={
            "batchnorm_eval": (
                {"stats": "batch_biased"},
                {"stats": "batch_unbiased"},
            ),
        },
    ),
    Misconception(
        name="running-stats-updated-in-eval",
        title="running statistics updated in evaluation",
        feedback=(
            "Evaluation only reads running_mean and running_var. Updating them at test time "
            "lets the test data change the model, and the same input gives different outputs "
            "from one call to the next."
        ),
        page="batchnorm",
        anchor="bn-no-grad",
        mutants={"batchnorm_eval": ({"update": True},)},
    ),
    Misconception(
        name="autograd-graph-cut",
        title="autograd graph cut",
        feedback=(
            "The output must stay differentiable with respect to x, gamma and beta, so that "
            "training can backpropagate through the layer. Computing with .data, .detach(), "
            ".item(), .numpy() or torch.no_grad() (for anything but the running-statistics "
            "update) cuts the graph: the gradient is missing or wrong."
        ),
        page="batchnorm",
        anchor="bn-no-grad",
        mutants={
            "batchnorm_train": ({"grad": "cut"}, {"grad": "detached_statistics"}),
        },
    ),
    Misconception(
        name="grad-params-wrong-reduction",
        title="gamma and beta gradients not summed over every value of the channel",
        feedback=(
            "gamma_c and beta_c act on every value of channel c, in every sample (and at every "
            "position of an image), so their gradients are SUMS over all of them: "
            "dbeta = sum of dout and dgamma = sum of dout * x_hat over N for (N, C) input, over "
            "N, H and W for (N, C, H, W). A mean instead of a sum, a sum over the features of "
            "each sample, or over N alone for image input, gives the wrong values or shape."
        ),
        page="batchnorm_backward",
        anchor="bnb-params",
        mutants={
            "batchnorm_backward": (
                {"params_reduce": "per_sample"},
                {"params_reduce": "mean"},
                {"params_reduce": "batch_only"},
            ),
        },
    ),
    Misconception(
        name="grad-gamma-without-x-hat",
        title="dgamma without the normalized input",
        feedback=(
            "The output is y = gamma * x_hat + beta, so dy/dgamma = x_hat, the NORMALIZED input "
            "(x - mean) / sqrt(var + eps): dgamma = sum of dout * x_hat. Multiplying dout by x "
            "itself, or by x - mean without dividing by the standard deviation, differentiates "
            "a different layer."
        ),
        page="batchnorm_backward",
        anchor="bnb-params",
        mutants={"batchnorm_backward": ({"gamma_factor": "x"}, {"gamma_factor": "centered"})},
    ),
    Misconception(
        name="grad-input-missing-paths",
        title="dx without the paths through the batch mean and variance",
        feedback=(
            "In training mode the mean and the variance are computed from the batch, so every x "
            "reaches the output three ways: directly through x_hat, through the mean, and "
            "through the variance. dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * "
            "mean(dout * x_hat)), the means taken per channel. Treating the statistics as "
            "constants (dx = gamma * dout / sqrt(var + eps)) is the gradient of evaluation mode, "
            "not of training mode."
        ),
        page="batchnorm_backward",
        anchor="bnb-input",
        mutants={
            "batchnorm_backward": (
                {"paths": "none"},
                {"paths": "no_mean"},
                {"paths": "no_variance"},
            ),
        },
    ),
    Misconception(
        name="grad-unbiased-variance",
        title="unbiased variance in the backward pass",
        feedback=(
            "The forward pass normalizes with the BIASED variance, var = mean((x - mean)^2), "
            "dividing by n; the backward pass differentiates exactly that: d var / dx = "
            "2 (x - mean) / n. The unbiased n - 1 belongs to the running variance only. "
            "torch.var divides by n - 1 unless you pass unbiased=False (or correction=0)."
        ),
        page="batchnorm_backward",
        anchor="bnb-variance",
        mutants={
            "batchnorm_backward": (
                {"variance": "unbiased"},
                {"variance": "unbiased_derivative"},
                {"variance": "unbiased_consistent"},
            ),
        },
    ),
    Misconception(
        name="grad-conv-wrong-axes",
        title="backward sums over the wrong axes for image input",
        feedback=(
            "For (N, C, H, W) input the forward statistics are per channel over N, H and W "
            "together, so every sum of the backward pass (for dbeta, dgamma, and the mean and "
            "variance paths of dx) runs over the same axes (0, 2, 3), with n = N * H * W. "
            "Summing over N alone treats every pixel position as a channel of its own; "
            "reshaping to (-1, C) without first moving C last mixes channels."
        ),
        page="batchnorm_backward",
        anchor="bnb-conv",
        mutants={"batchnorm_backward": ({"axes": "batch_only"}, {"axes": "reshape"})},
    ),
    Misconception(
        name="grad-eps-missing",
        title="eps left out of the backward pass",
        feedback=(
            "The backward pass differentiates the forward pass as it was computed, with "
            "s = sqrt(var + eps) in x_hat and in the factor 1 / s of dx: dx = gamma / s * (dout "
            "- mean(dout) - x_hat * mean(dout * x_hat)). Dividing by sqrt(var) instead "
            "differentiates a layer without eps, which differs wherever a channel's variance is "
            "not large compared with eps."
        ),
        page="batchnorm_backward",
        anchor="bnb-input",
        mutants={"batchnorm_backward": ({"eps_in_backward": False},)},
    ),
    Misconception(
        name="grad-input-without-gamma",
        title="dx without gamma",
        feedback=(
            "The output is y = gamma * x_hat + beta, so the gradient reaching x_hat is "
            "dL/dx_hat = gamma * dout, per channel, before it is split into the three paths: "
            "dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat)). "
            "Leaving gamma out is right only where gamma is 1."
        ),
        page="batchnorm_backward",
        anchor="bnb-input",
        mutants={"batchnorm_backward": ({"gamma_in_dx": False},)},
    ),
    Misconception(
        name="grad-variance-path-sign",
        title="sign error in the variance path of dx",
        feedback=(
            "dL/dvar = -gamma / (2 s^2) * sum(dout * x_hat) is negative where the loss grows "
            "with the spread, and the variance path enters dx with a MINUS sign: dx = gamma / s "
            "* (dout - mean(dout) - x_hat * mean(dout * x_hat)). Adding the term instead leaves "
            "dx not orthogonal to x_hat (sum(dx * x_hat) per channel is not zero), a quick "
            "self-check."
        ),
        page="batchnorm_backward",
        anchor="bnb-input",
        mutants={"batchnorm_backward": ({"paths": "variance_sign"},)},
    ),
    # --- ps04_variance_shift: the closed form, the probe, the recalibration, the placement ---
    Misconception(
        name="shift-retain-drop-confused",
        title="retain and drop probability confused in the variance shift",
        feedback=(
            "The paper writes p for the probability of RETAINING a unit; PyTorch's "
            "torch.nn.Dropout(p), and this exercise, take the probability of DROPPING it. The "
            "dropout multiplier a / (1 - p) has second moment 1 / (1 - p), so "
            "Var_train = (c^2 + v) / (1 - p) - c^2. Using the paper's formula with the drop "
            "probability in place of the retain probability gives the shift of the opposite drop "
            "rate."
        ),
        page="variance_shift_theory",
        anchor="vs-conventions",
        mutants={"variance_shift": ({"convention": "retain"},)},
    ),
    Misconception(
        name="shift-mean-ignored",
        title="the input's mean left out of the variance shift",
        feedback=(
            "Dropout multiplies the whole value, mean included: E[(m x)^2] = E[m^2] (c^2 + v), so "
            "the training-time variance is (c^2 + v) / (1 - p) - c^2. The shift equals 1 - p "
            "only for zero-mean input; a non-zero mean makes it larger, because its square is "
            "inflated by 1 / (1 - p) too."
        ),
        page="variance_shift_theory",
        anchor="vs-before-bn",
        mutants={"variance_shift": ({"mean_term": "ignored"},)},
    ),
    Misconception(
        name="shift-ratio-inverted",
        title="variance shift inverted",
        feedback=(
            "The variance shift is Var_test / Var_train: the variance the unit has at test time "
            "divided by the one BN's running variance learned during training. With dropout "
            "before BN it is below 1 (BN divides by a standard deviation that is too large); "
            "Var_train / Var_test is its reciprocal."
        ),
        page="variance_shift_theory",
        anchor="vs-before-bn",
        mutants={"variance_shift": ({"ratio": "train_over_test"},)},
    ),
    Misconception(
        name="shift-mean-square-not-subtracted",
        title="(E[m] E[x])^2 left out of the training-time variance",
        feedback=(
            "A variance is the second moment minus the squared mean: Var[m x] = E[m^2] E[x^2] - "
            "(E[m] E[x])^2. With inverted dropout E[m] = 1 and E[m^2] = 1 / (1 - p), so "
            "Var_train = (c^2 + v) / (1 - p) - c^2. Stopping at E[m^2] E[x^2] = (c^2 + v) / "
            "(1 - p) counts the squared mean c^2 as variance: right only for zero-mean input, "
            "and too small a shift as soon as the mean is not zero."
        ),
        page="variance_shift_theory",
        anchor="vs-before-bn",
        mutants={"variance_shift": ({"mean_term": "not_subtracted"},)},
    ),
    Misconception(
        name="shift-dropout-not-inverted",
        title="the variance shift of dropout without the 1/(1 - p) scaling",
        feedback=(
            "PyTorch's dropout is inverted: the multiplier is m = a / (1 - p) with a ~ "
            "Bernoulli(1 - p), so E[m] = 1 and E[m^2] = 1 / (1 - p), and at test time the unit "
            "passes unchanged. Taking m = a, the bare mask (E[m] = E[m^2] = 1 - p), describes a "
            "dropout that shrinks its input in training, whose training-time variance is "
            "(1 - p)(c^2 + v) - (1 - p)^2 c^2 and whose 'shift' is above 1."
        ),
        page="variance_shift_theory",
        anchor="vs-before-bn",
        mutants={"variance_shift": ({"dropout": "plain"},)},
    ),
    Misconception(
        name="probe-train-mode",
        title="the probe measures in training mode",
        feedback=(
            "The real variance is the one a BN layer's input has at TEST time, so the probe must "
            "run the network after model.eval(): in training mode dropout draws new masks, BN "
            "normalizes with the batch's statistics, and every forward pass overwrites the "
            "running statistics you are trying to compare with. torch.no_grad() does not switch "
            "the mode. Put the train/eval flags back afterwards."
        ),
        page="variance_shift_measured",
        anchor="vs-probe",
        mutants={"variance_probe": ({"mode": "given"},)},
    ),
    Misconception(
        name="probe-bn-output",
        title="the probe records BN's output instead of its input",
        feedback=(
            "The running variance describes what a BN layer RECEIVES, so the probe must record "
            "the layer's input: a forward pre-hook, register_forward_pre_hook(hook) with "
            "hook(module, args) reading args[0]. A forward hook's output is the normalized, "
            "scaled and shifted result, whose variance is about gamma^2 times the shift."
        ),
        page="variance_shift_measured",
        anchor="vs-probe",
        mutants={"variance_probe": ({"where": "output"},)},
    ),
    Misconception(
        name="probe-variance-wrong-axes",
        title="the probe's variance is not taken per channel",
        feedback=(
            "BN keeps one running variance per channel, computed over every axis but the channel "
            "axis 1: over N for (N, C) input, over N, H and W for (N, C, H, W). Compare like with "
            "like: take each channel's variance over those axes, then average over channels. "
            "x.var() pools all channels (and adds the spread of their means); x.var(0) on image "
            "input keeps one variance per pixel position."
        ),
        page="variance_shift_measured",
        anchor="vs-probe",
        mutants={"variance_probe": ({"axes": "all"}, {"axes": "batch_only"})},
    ),
    Misconception(
        name="probe-biased-variance",
        title="the probe compares a biased variance with the unbiased running variance",
        feedback=(
            "running_var holds unbiased estimates (divided by n - 1), so the probe must compute "
            "the real variance the same way: torch.var's default, unbiased=True. The biased "
            "variance is n / (n - 1) times smaller, which shows when a channel has few values."
        ),
        page="variance_shift_measured",
        anchor="vs-probe",
        mutants={"variance_probe": ({"unbiased": False},)},
    ),
    Misconception(
        name="mode-not-restored",
        title="train/eval mode not restored",
        feedback=(
            "A helper that calls model.eval() changes the caller's model. Remember the flags "
            "first (modes = {m: m.training for m in model.modules()}) and put them back before "
            "returning (for m, t in modes.items(): m.train(t)). Otherwise the training loop that "
            "called the helper continues with dropout switched off and BN frozen."
        ),
        page="batchnorm",
        anchor="bn-no-grad",
        mutants={
            "variance_probe": ({"restore": False},),
            "evaluate": ({"restore": False},),
            "predict": ({"restore": False},),
        },
    ),
    Misconception(
        name="mode-restored-wholesale",
        title="train/eval flags restored with one flag for the whole network",
        feedback=(
            "model.train(was_training) and model.train() set EVERY module to one flag, but a "
            "network can arrive with mixed flags: BN layers frozen in evaluation mode while the "
            "rest fine-tunes, or dropout left on in an evaluation-mode network for Monte Carlo "
            "dropout, or the whole network in evaluation mode. Remember each module's own flag "
            "(modes = {m: m.training for m in model.modules()}) and give each its flag back "
            "(for m, t in modes.items(): m.train(t)), in a finally block."
        ),
        page="batchnorm",
        anchor="bn-evaluation-loop",
        mutants={
            "variance_probe": ({"restore": "model_flag"}, {"restore": "train"}),
            "evaluate": ({"restore": "model_flag"}, {"restore": "train"}),
            "predict": ({"restore": "model_flag"}, {"restore": "train"}),
        },
    ),
    Misconception(
        name="hooks-not-removed",
        title="hooks left on the network",
        feedback=(
            "register_forward_pre_hook and register_forward_hook return a handle: call "
            "handle.remove() when the measurement is done (in a finally block, so that an error "
            "cannot leave them behind). A hook left on the network keeps recording every later "
            "forward pass, which costs memory and mixes later data into the next measurement."
        ),
        page="variance_shift_measured",
        anchor="vs-probe",
        mutants={"variance_probe": ({"remove_hooks": False},)},
    ),
    Misconception(
        name="recal-dropout-on",
        title="BN recalibrated with dropout on",
        feedback=(
            "Recalibration exists to give BN the statistics of test-time inputs, so dropout must "
            "stay OFF during the pass: put the model in eval() and then switch only the BN layers "
            "to train(). model.train(), and torch.optim.swa_utils.update_bn, which calls it, "
            "switch every dropout layer back on and re-learn the inflated variance."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"dropout": "on"},)},
    ),
    Misconception(
        name="recal-stats-not-reset",
        title="running statistics not reset before recalibration",
        feedback=(
            "The old running statistics were learned with dropout on; averaging new batches into "
            "them keeps much of the shift. Call bn.reset_running_stats() (mean 0, variance 1, "
            "num_batches_tracked 0) on every BN layer and set bn.momentum = None, so that the "
            "statistics become a plain average over the recalibration batches only."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"reset": False}, {"reset": False, "momentum": "kept"})},
    ),
    Misconception(
        name="recal-momentum-kept",
        title="recalibration with an exponential moving average",
        feedback=(
            "With its momentum of 0.1, BN keeps 0.9 of the old running value at every batch: "
            "after a reset, a handful of batches leaves the statistics close to their initial "
            "mean 0 and variance 1. Set bn.momentum = None during recalibration (a cumulative "
            "average with equal weights) and restore the momentum afterwards."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"momentum": "kept"},)},
    ),
    Misconception(
        name="recal-momentum-not-restored",
        title="BN momentum not given back after recalibration",
        feedback=(
            "Recalibration sets bn.momentum = None for its pass; afterwards every BN layer must "
            "get back the momentum it had, which is not always PyTorch's default 0.1. Save the "
            "values first (momenta = [bn.momentum for bn in bns]) and write them back. A layer "
            "left at None keeps a cumulative average over everything it sees once training "
            "resumes, and a hard-coded 0.1 silently changes the model's hyperparameters."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={
            "bn_recalibration": ({"momentum_after": "none"}, {"momentum_after": "default"}),
        },
    ),
    Misconception(
        name="recal-last-batch-only",
        title="BN recalibrated from the last batch only",
        feedback=(
            "The recalibrated statistics must average over ALL the batches: with bn.momentum = "
            "None, BN keeps a cumulative average, each batch weighted equally. A momentum of 1, "
            "or a forward pass outside the loop over the batches, leaves the statistics of the "
            "last batch alone, a noisy estimate from a fraction of the data."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"use": "last"},)},
    ),
    Misconception(
        name="recal-bn-not-updated",
        title="BN layers left in evaluation mode during recalibration",
        feedback=(
            "In evaluation mode BN only reads its running statistics. To recompute them, switch "
            "the BN layers (and only them) to training mode for the pass, under torch.no_grad(), "
            "and back to evaluation mode afterwards."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"bn_mode": "eval"},)},
    ),
    Misconception(
        name="recal-left-in-training",
        title="network left in training mode after recalibration",
        feedback=(
            "After the recalibration pass, call model.eval(): BN layers left in training mode "
            "normalize every later batch with its own statistics and overwrite the statistics "
            "just computed."
        ),
        page="variance_shift_remedies",
        anchor="vs-recalibration",
        mutants={"bn_recalibration": ({"final": "as_left"},)},
    ),
    Misconception(
        name="dropout-before-bn",
        title="dropout noise reaches a BN layer",
        feedback=(
            "A BN layer that sees dropout noise during training learns a running variance that "
            "is larger than what it sees at test time (the variance shift). Put dropout after the "
            "last BN layer, right before the classifier: no BN layer then sees its noise."
        ),
        page="variance_shift_remedies",
        anchor="vs-remedies",
        mutants={
            "mlp_placement": ({"placement": "before_bn"},),
            "cnn_placement": ({"placement": "before_bn"},),
        },
    ),
    Misconception(
        name="dropout-through-weight-layer",
        title="dropout noise reaches BN through the layer in between",
        feedback=(
            "A Linear or Conv layer between dropout and BN does not filter the noise out: each "
            "of its outputs is a weighted sum of dropped and rescaled units, so BN's input still "
            "has a larger variance in training than at test time. The shift is smaller than with "
            "dropout directly before BN, but it is there. This happens with dropout before every "
            "weight layer, and with Linear -> BN -> ReLU -> Dropout blocks, where every BN layer "
            "but the first sees the previous block's dropout. Keep one dropout, after the last "
            "BN layer, right before the classifier."
        ),
        page="variance_shift_theory",
        anchor="vs-weight-layer",
        mutants={
            "mlp_placement": ({"placement": "before_weight"}, {"placement": "every_block"}),
            "cnn_placement": ({"placement": "before_weight"}, {"placement": "every_block"}),
        },
    ),
    Misconception(
        name="dropout-rate-as-keep",
        title="the dropout layer built with the keep probability",
        feedback=(
            "torch.nn.Dropout(p) takes the probability of DROPPING a unit, as the builder's "
            "argument p does: Dropout(p), not Dropout(1 - p). The papers write p for the "
            "probability of keeping a unit; mixing the two conventions drops 1 - p of the units "
            "and scales the kept ones by 1/p. The check reads the rate from the scale of the "
            "kept values."
        ),
        page="dropout",
        anchor="do-mask",
        mutants={
            "mlp_placement": ({"rate": "keep"},),
            "cnn_placement": ({"rate": "keep"},),
        },
    ),
    Misconception(
        name="dropout-removed",
        title="dropout removed instead of moved",
        feedback=(
            "Leaving dropout out avoids the variance shift but also drops the regularization "
            "the network was designed with. Keep one dropout layer, placed after the last BN "
            "layer (right before the classifier), where it is active in training mode and no BN "
            "layer sees its noise."
        ),
        page="variance_shift_remedies",
        anchor="vs-remedies",
        mutants={
            "mlp_placement": ({"placement": "none"},),
            "cnn_placement": ({"placement": "none"},),
        },
    ),
    Misconception(
        name="dropout-no-scaling",
        title="dropout without the 1/(1 - p) scaling",
        feedback=(
            "Inverted dropout keeps a unit with probability 1 - p and divides the kept units by "
            "1 - p, so that the expected output equals the input: E[m x / (1 - p)] = x. Without "
            "the factor the training-time output is (1 - p) times smaller on average, and the "
            "evaluation-mode network (the identity) sees larger inputs than training did. "
            "Classic dropout instead multiplies by 1 - p at test time; PyTorch does neither at "
            "test time. The backward pass scales the gradient by the same 1/(1 - p)."
        ),
        page="dropout",
        anchor="do-inverted",
        mutants={
            "dropout_forward": (
                {"scale": "none"},
                {"scale": "none", "eval_mode": "classic"},
            ),
            "dropout_backward": ({"backward_scale": "none"},),
        },
    ),
    Misconception(
        name="dropout-wrong-scaling",
        title="kept units scaled by p or by 1 - p instead of 1/(1 - p)",
        feedback=(
            "The kept units are DIVIDED by the keep probability 1 - p: out = x * mask / (1 - p). "
            "Multiplying by p, or by 1 - p, shrinks them instead of enlarging them, and the "
            "expected output is no longer the input."
        ),
        page="dropout",
        anchor="do-inverted",
        mutants={"dropout_forward": ({"scale": "p"}, {"scale": "keep"})},
    ),
    Misconception(
        name="dropout-keep-drop-confused",
        title="keep and drop probability confused",
        feedback=(
            "In PyTorch, p is the probability of DROPPING a unit: torch.nn.Dropout(p=0.3) zeroes "
            "30% of the units and keeps 70%, so the mask is 1 with probability 1 - p (for "
            "example torch.rand(...) >= p). The dropout paper and the variance-shift paper write "
            "p for the probability of keeping a unit; mixing the two conventions zeroes the "
            "wrong fraction or scales by 1/p. For Gaussian dropout, the noise variance that "
            "matches drop probability p is p/(1 - p), not (1 - p)/p."
        ),
        page="dropout",
        anchor="do-mask",
        mutants={
            "dropout_forward": ({"keep_prob": "p"}, {"keep_prob": "p", "scale": "inverse_p"}),
            "dropout_backward": (
                {"keep_prob": "p", "scale": "inverse_p", "backward_scale": "inverse_p"},
            ),
            "gaussian_dropout": ({"std": "keep"},),
        },
    ),
    Misconception(
        name="dropout-in-eval",
        title="noise applied in evaluation mode",
        feedback=(
            "In evaluation mode (training=False) dropout, Gaussian dropout and Uout are the "
            "identity: the output is the input, and its gradient is the upstream gradient. "
            "Dropping units or adding noise at test time makes predictions random and, for "
            "inverted dropout, no rescaling is needed because training already divided by "
            "1 - p."
        ),
        page="dropout",
        anchor="do-eval",
        mutants={
            "dropout_forward": ({"eval_mode": "train"},),
            "dropout_backward": ({"eval_mode": "train"},),
            "gaussian_dropout": ({"eval_mode": "train"},),
            "uout": ({"eval_mode": "train"},),
        },
    ),
    Misconception(
        name="dropout-backward-new-mask",
        title="backward pass not reusing the forward mask",
        feedback=(
            "The output of the forward pass depends on exactly the units its mask kept, so the "
            "gradient flows through those units only: dx = dout * mask / (1 - p) with the SAME "
            "mask. Store it in the cache during the forward pass; drawing a new mask in the "
            "backward pass (or using none) sends gradient to units that were dropped and "
            "blocks it at units that were used."
        ),
        page="dropout",
        anchor="do-backward",
        mutants={
            "dropout_backward": ({"backward_mask": "fresh"}, {"backward_mask": "none"}),
        },
    ),
    Misconception(
        name="gaussian-std-as-variance",
        title="Gaussian noise with standard deviation p/(1 - p)",
        feedback=(
            "Gaussian dropout multiplies by noise with mean 1 and VARIANCE p/(1 - p), the variance "
            "of the inverted Bernoulli multiplier it imitates; its standard deviation is "
            "sqrt(p/(1 - p)). torch.randn draws with standard deviation 1, so scale it by the "
            "square root: 1 + sqrt(p/(1 - p)) * torch.randn(...)."
        ),
        page="dropout",
        anchor="do-gaussian",
        mutants={"gaussian_dropout": ({"std": "variance"},)},
    ),
    Misconception(
        name="uout-wrong-interval",
        title="Uout noise drawn from the wrong interval",
        feedback=(
            "Uout multiplies by 1 + r with r uniform on [-beta, beta]: mean 1, variance "
            "beta^2/3. torch.rand draws from [0, 1), so r = beta * (2 * torch.rand(...) - 1). "
            "Drawing r from [0, beta) shifts the mean to 1 + beta/2; from [-beta/2, beta/2) the "
            "noise is half as wide as it should be."
        ),
        page="dropout",
        anchor="do-uout",
        mutants={"uout": ({"interval": "zero_to_beta"}, {"interval": "half_width"})},
    ),
    Misconception(
        name="uout-gaussian-noise",
        title="Uout noise drawn from a normal distribution instead of a uniform one",
        feedback=(
            "Uout's r is UNIFORM on [-beta, beta]: out / x = 1 + r never leaves "
            "[1 - beta, 1 + beta], and its variance is beta^2/3. torch.randn draws from a normal "
            "distribution, which has no bounds (beta * torch.randn(...) also has variance beta^2, "
            "three times too much); scaling it to the right variance still leaves values outside "
            "the interval. Draw with torch.rand: r = beta * (2 * torch.rand(x.shape, "
            "generator=generator, device=x.device) - 1)."
        ),
        page="dropout",
        anchor="do-uout",
        mutants={"uout": ({"distribution": "normal"}, {"distribution": "normal_matched"})},
    ),
    Misconception(
        name="gaussian-std-p",
        title="Gaussian noise with standard deviation p",
        feedback=(
            "The noise of Gaussian dropout has mean 1 and the variance of the inverted Bernoulli "
            "multiplier it imitates, p/(1 - p); its standard deviation is sqrt(p/(1 - p)), not "
            "p: 1 + math.sqrt(p / (1 - p)) * torch.randn(...). With standard deviation p the "
            "noise is much weaker than dropout with the same p (for p = 0.5, 0.5 instead of 1)."
        ),
        page="dropout",
        anchor="do-gaussian",
        mutants={"gaussian_dropout": ({"std": "p"},)},
    ),
    Misconception(
        name="gaussian-noise-mean-zero",
        title="Gaussian noise with mean 0 instead of 1",
        feedback=(
            "Gaussian dropout multiplies x by noise from N(1, p/(1 - p)): centred on 1, so that "
            "the expected output is x itself. torch.randn draws from N(0, 1); scaled by the "
            "standard deviation it has mean 0, and x * noise is then 0 on average and changes "
            "sign half of the time. Add 1: noise = 1 + math.sqrt(p / (1 - p)) * torch.randn(...)."
        ),
        page="dropout",
        anchor="do-gaussian",
        mutants={"gaussian_dropout": ({"mean": "zero"},)},
    ),
    Misconception(
        name="gaussian-additive-noise",
        title="Gaussian noise added to x instead of multiplying it",
        feedback=(
            "Gaussian dropout is MULTIPLICATIVE noise, out = x * noise with noise from "
            "N(1, p/(1 - p)): the noise scales with the unit, a unit that is 0 stays 0, and "
            "out / x has the same spread for small and large units, as with a dropout mask. "
            "x + noise (or x + std * torch.randn(...)) adds noise of a fixed size instead: it "
            "swamps small units, barely changes large ones, and moves units that are 0."
        ),
        page="dropout",
        anchor="do-gaussian",
        mutants={"gaussian_dropout": ({"combine": "add"}, {"combine": "add", "mean": "zero"})},
    ),
    Misconception(
        name="uout-additive-noise",
        title="Uout noise added to x instead of multiplying it",
        feedback=(
            "Uout is out = x + x * r = x * (1 + r) with r uniform on [-beta, beta]: the noise is "
            "proportional to the unit, so out / x lies in [1 - beta, 1 + beta] whatever the size "
            "of x, and a unit that is 0 stays 0. x + r adds noise of a fixed size instead, which "
            "swamps small units and moves units that are 0."
        ),
        page="dropout",
        anchor="do-uout",
        mutants={"uout": ({"combine": "add"},)},
    ),
    Misconception(
        name="dropout-mask-shared",
        title="one dropout mask shared by every sample of the batch",
        feedback=(
            "Every element of the input gets its own mask value, drawn independently: the mask "
            "has the shape of x, torch.rand(x.shape, generator=generator, device=x.device) >= p. "
            "A mask of the shape of one sample (x.shape[1:], or x[0]) is broadcast over the "
            "batch, so every sample loses the same units at the same step: the samples of a "
            "batch are no longer independent draws of the noise, and the network sees far fewer "
            "different sub-networks."
        ),
        page="dropout",
        anchor="do-mask",
        mutants={"dropout_forward": ({"mask": "shared"},)},
    ),
    Misconception(
        name="dropout-generator-ignored",
        title="random numbers not drawn from the generator given",
        feedback=(
            "Every random draw must come from the generator argument: "
            "torch.rand(x.shape, generator=generator, device=x.device), "
            "torch.randn(..., generator=generator), tensor.bernoulli_(q, generator=generator). "
            "Then two generators in the same state give the same output, different seeds give "
            "different outputs, and the global random state (torch.manual_seed) is left alone. "
            "Drawing without it uses, and changes, the global generator (so does seeding it "
            "with torch.manual_seed inside the function); a new generator with a fixed seed "
            "gives the same mask at every step."
        ),
        page="dropout",
        anchor="do-generator",
        mutants={
            task: tuple(
                {"random_source": source} for source in ("global", "reseeded_global", "fixed_seed")
            )
            for task in ("dropout_forward", "gaussian_dropout", "uout")
        },
    ),
    Misconception(
        name="dropout-input-modified-in-place",
        title="the caller's tensor modified in place",
        feedback=(
            "The function must return a new tensor and leave its input as it was: the caller "
            "may still need x (the layer before keeps it for its own backward pass; autograd "
            "refuses in-place changes of tensors it saved). Write out = x * mask / (1 - p), not "
            "x *= ..., x.mul_(...) or x[...] = ...; in the backward pass, dx = dout * ... rather "
            "than dout *= .... (torch.nn.Dropout(inplace=True) changes its input only when asked "
            "to.)"
        ),
        page="dropout",
        anchor="do-out-of-place",
        mutants={
            "dropout_forward": ({"inplace": True},),
            "dropout_backward": ({"backward_inplace": True},),
            "gaussian_dropout": ({"inplace": True},),
            "uout": ({"inplace": True},),
        },
    ),
    # --- ps05_train_vs_eval: evaluation code debugged ---
    Misconception(
        name="eval-forgotten",
        title="model.eval() forgotten at test time",
        feedback=(
            "Code that evaluates or predicts must call model.eval(). In training mode dropout "
            "keeps dropping units (the accuracy changes from one call to the next), BN "
            "normalizes each batch with its own statistics (and refuses a batch of one), and "
            "every forward pass overwrites BN's running statistics with test data. "
            "torch.no_grad() only stops recording gradients; it changes no layer's mode. Put "
            "the flags back afterwards, since the caller may be in the middle of training."
        ),
        page="batchnorm",
        anchor="bn-eval",
        mutants={"evaluate": ({"switch": "none"},), "predict": ({"mode": "train"},)},
    ),
    Misconception(
        name="dropout-on-at-test",
        title="dropout left on at test time",
        feedback=(
            "Switching only the BN layers to evaluation mode leaves dropout dropping units at "
            "test time: predictions become random and the accuracy changes from one call to the "
            "next. model.eval() switches every layer at once; inverted dropout is then the "
            "identity."
        ),
        page="dropout",
        anchor="do-eval",
        mutants={"evaluate": ({"switch": "bn_only"},)},
    ),
    Misconception(
        name="bn-train-mode-at-test",
        title="BN left in training mode at test time",
        feedback=(
            "A BN layer in training mode at test time normalizes each test batch with that "
            "batch's own statistics, so a prediction depends on the other samples of the batch, "
            "and it overwrites its running statistics with test data. Switching layers one type "
            "at a time misses some (isinstance(m, nn.BatchNorm1d) does not catch BatchNorm2d); "
            "model.eval() switches them all."
        ),
        page="batchnorm",
        anchor="bn-eval",
        mutants={"evaluate": ({"switch": "dropout_only"}, {"switch": "bn1d_only"})},
    ),
    Misconception(
        name="accuracy-mean-of-batches",
        title="accuracy averaged over batches instead of samples",
        feedback=(
            "The accuracy is the number of correctly classified samples divided by the number "
            "of samples. The mean of the per-batch accuracies equals it only when every batch "
            "has the same size; a data loader's last batch is usually smaller, and each of its "
            "samples then weighs more. Sum the correct predictions and the batch sizes "
            "(len(y)) over the batches and divide once at the end."
        ),
        page="batchnorm",
        anchor="bn-evaluation-loop",
        mutants={"evaluate": ({"average": "batches"},)},
    ),
    Misconception(
        name="batch-of-one-padded",
        title="a batch of one padded in training mode",
        feedback=(
            "BN refuses a batch of one in training mode because a single value per channel has "
            "no variance. Duplicating the sample silences the error but normalizes the sample "
            "against itself: every normalized value becomes 0, every sample gets the same "
            "prediction, and the running statistics are overwritten. At test time the network "
            "belongs in evaluation mode, where a batch of one is fine."
        ),
        page="batchnorm",
        anchor="bn-batch-of-one",
        mutants={"predict": ({"mode": "train", "duplicate": True},)},
    ),
    Misconception(
        name="eval-only-for-batch-of-one",
        title="evaluation mode only for a batch of one",
        feedback=(
            "Switching to model.eval() only when BN refuses a batch of one silences the error "
            "but leaves every larger batch predicted in training mode: BN normalizes it with its "
            "own statistics (a prediction depends on the other samples of the batch), the "
            "running statistics are overwritten with test data, and dropout stays on. "
            "Prediction is test time for every batch size: call model.eval() always, and give "
            "the flags back afterwards."
        ),
        page="batchnorm",
        anchor="bn-batch-of-one",
        mutants={"predict": ({"mode": "eval_if_one"},)},
    ),
    # --- ps06_bn_in_practice: folding, frozen statistics, group norm ---
    Misconception(
        name="fold-variance-as-std",
        title="folded with the variance instead of the standard deviation",
        feedback=(
            "In evaluation mode batch norm divides by the standard deviation, "
            "sqrt(running_var + eps), so the folded scale is gamma / sqrt(running_var + eps). "
            "running_var holds a variance (a squared spread): dividing by running_var + eps "
            "itself scales every output channel by a wrong factor, too small where the variance "
            "is above 1 and too large where it is below."
        ),
        page="bn_dropout_practice",
        anchor="bp-folding",
        mutants={"fold_batchnorm": ({"spread": "var"},)},
    ),
    Misconception(
        name="fold-bias-dropped",
        title="the layer's own bias left out of the folded bias",
        feedback=(
            "Batch norm normalizes what the layer outputs, bias included: gamma * (W x + b - "
            "running_mean) / sqrt(running_var + eps) + beta. The folded bias is therefore "
            "(b - running_mean) * s + beta with s = gamma / sqrt(running_var + eps); leaving b "
            "out is right only for a layer built with bias=False (bias is None)."
        ),
        page="bn_dropout_practice",
        anchor="bp-folding",
        mutants={"fold_batchnorm": ({"bias_kind": "dropped"},)},
    ),
    Misconception(
        name="fold-mean-not-subtracted",
        title="running mean not subtracted in the folded bias",
        feedback=(
            "Evaluation-mode batch norm subtracts running_mean before it scales: the folded bias "
            "is (b - running_mean) * s + beta, with s = gamma / sqrt(running_var + eps) (and "
            "b = 0 for a layer without bias). Scaling the bias and adding beta without the mean "
            "shifts every output channel by running_mean * s."
        ),
        page="bn_dropout_practice",
        anchor="bp-folding",
        mutants={"fold_batchnorm": ({"bias_kind": "mean_kept"},)},
    ),
    Misconception(
        name="fold-weight-not-scaled",
        title="the weight not scaled when folding",
        feedback=(
            "Batch norm multiplies the whole output of the layer by s = gamma / "
            "sqrt(running_var + eps), the part W x as well as the bias: the folded weight is W "
            "with each output channel's row (or filter) multiplied by its s. Adjusting the bias "
            "alone leaves the normalization of W x out."
        ),
        page="bn_dropout_practice",
        anchor="bp-folding",
        mutants={"fold_batchnorm": ({"weight_axis": "none"},)},
    ),
    Misconception(
        name="fold-scale-wrong-axis",
        title="the folded scale applied along the input axis",
        feedback=(
            "Batch norm has one scale s_c per OUTPUT channel c of the layer, and the output "
            "channels are dim 0 of the weight: (out_features, in_features) for Linear, "
            "(out_channels, in_channels, kH, kW) for Conv2d. Multiply with s reshaped to "
            "(-1, 1) or (-1, 1, 1, 1); reshaping it to (1, -1, ...) scales the input channels "
            "instead (and broadcasting a (C,) vector against the weight lines it up with the "
            "LAST axis)."
        ),
        page="bn_dropout_practice",
        anchor="bp-folding",
        mutants={"fold_batchnorm": ({"weight_axis": "in"},)},
    ),
    Misconception(
        name="bn-frozen-by-requires-grad",
        title="batch norm frozen with requires_grad=False alone",
        feedback=(
            "requires_grad=False stops gamma and beta from learning, but the running statistics "
            "are buffers, not parameters: a BN layer in training mode still normalizes each "
            "batch with that batch's own statistics and overwrites running_mean and running_var "
            "with the fine-tuning data at every forward pass. Put the BN layers in evaluation "
            "mode as well (bn.eval()), and keep them there."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"stats": "training"},)},
    ),
    Misconception(
        name="bn-only-2d-frozen",
        title="only the BatchNorm2d layers frozen",
        feedback=(
            "The freeze picks out nn.BatchNorm2d alone, so the batch norm of a fully connected "
            "network (nn.BatchNorm1d) or of a 3-D one (nn.BatchNorm3d) keeps learning and keeps "
            "overwriting its running statistics. Test for every batch-norm class: "
            "isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)), or their common "
            "base nn.modules.batchnorm._BatchNorm."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"bn_types": "2d"},)},
    ),
    Misconception(
        name="bn-eval-undone-by-train",
        title="BN put in evaluation mode once, undone by model.train()",
        feedback=(
            "A training loop calls model.train() at the start of every epoch, and Module.train() "
            "sets EVERY submodule's flag, the BN layers' included: eval() called once before "
            "fine-tuning is undone at the first epoch. Make the freeze survive it, for example "
            "by giving each BN layer a train method that keeps it in evaluation mode "
            "(bn.train = lambda mode=True: nn.Module.train(bn, False)), or by overriding train() "
            "of the model so that it switches the BN layers back to eval() after the rest. "
            "A freeze done with hooks (register_forward_pre_hook setting bn.training = False "
            "before each forward pass) cannot be checked: hooks stay in your notebook and the "
            "autograder fine-tunes the network without them, so it grades such a freeze as this "
            "mistake. Override train (or eval) instead."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"persist": False},)},
    ),
    Misconception(
        name="whole-model-frozen-in-eval",
        title="the whole network kept in evaluation mode for fine-tuning",
        feedback=(
            "model.eval() switches every layer, dropout included: dropout then stops dropping "
            "units and no longer regularizes the fine-tuning. Only the BN layers belong in "
            "evaluation mode; select them with isinstance(m, nn.modules.batchnorm._BatchNorm) "
            "(which covers BatchNorm1d, 2d and 3d) and leave the rest in training mode."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"which": "all"},)},
    ),
    Misconception(
        name="bn-affine-not-frozen",
        title="BN's gamma and beta left trainable",
        feedback=(
            "Evaluation mode freezes the running statistics only: gamma and beta are parameters "
            "and keep receiving gradients, so the optimizer keeps changing them. Freezing batch "
            "norm for fine-tuning means both: bn.eval() for the statistics and "
            "requires_grad_(False) on bn.weight and bn.bias."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"affine": "trainable"},)},
    ),
    Misconception(
        name="all-parameters-frozen",
        title="every parameter frozen, not only batch norm's",
        feedback=(
            "requires_grad_(False) on model.parameters() freezes the whole network: nothing "
            "learns during fine-tuning. Freeze the parameters of the BN layers only "
            "(bn.parameters()); the weight layers and the classifier keep training."
        ),
        page="bn_dropout_practice",
        anchor="bp-finetune",
        mutants={"freeze_batchnorm": ({"parameters": "all"},)},
    ),
    Misconception(
        name="gn-batch-statistics",
        title="group norm statistics taken over the batch",
        feedback=(
            "Group norm normalizes every sample on its own: the mean and variance of a group "
            "are computed over that group's channels and positions in ONE sample, never over "
            "the batch axis N. That is what makes it independent of the batch size (a batch of "
            "one is normalized like any other) and identical in training and evaluation."
        ),
        page="bn_dropout_practice",
        anchor="bp-small-batches",
        mutants={"group_norm": ({"axes": "batch"},)},
    ),
    Misconception(
        name="gn-unbiased-variance",
        title="group norm normalized with the unbiased variance",
        feedback=(
            "Group norm, like batch norm, normalizes with the BIASED variance of the values it "
            "normalizes, mean((x - mean)^2), dividing by their number. torch.var and Tensor.var "
            "divide by n - 1 unless given unbiased=False (or correction=0); with few values per "
            "group the difference is large."
        ),
        page="bn_dropout_practice",
        anchor="bp-small-batches",
        mutants={"group_norm": ({"variance": "unbiased"},)},
    ),
    Misconception(
        name="gn-interleaved-groups",
        title="channels grouped in turn instead of consecutively",
        feedback=(
            "The groups of group norm are CONSECUTIVE channels: with C channels and G groups, "
            "channels 0 to C/G - 1 form group 0, the next C/G group 1, and so on, which is what "
            "x.reshape(N, G, -1) gives. Reshaping to (N, C/G, G, ...) and reducing over the "
            "first axis puts channel c in group c % G, a different partition."
        ),
        page="bn_dropout_practice",
        anchor="bp-small-batches",
        mutants={"group_norm": ({"grouping": "interleaved"},)},
    ),
    Misconception(
        name="gn-group-size-confused",
        title="num_groups taken as the number of channels per group",
        feedback=(
            "num_groups is the NUMBER of groups G, each of C / G consecutive channels: "
            "x.reshape(N, num_groups, -1). Taking it as the size of a group normalizes C / G "
            "groups of G channels instead (the same only where G * G = C)."
        ),
        page="bn_dropout_practice",
        anchor="bp-small-batches",
        mutants={"group_norm": ({"grouping": "group_size"},)},
    ),
)
