"""Popular claims about batch norm and dropout, each tested by running code.

Every claim of :data:`CLAIMS` has a statement, what is tested, the course section that teaches
the correct statement, and a ``check`` function that runs a small experiment (a fraction of a
second to a few seconds on one CPU core) and returns an :class:`Evidence`: the numbers, a verdict
computed from them, and a short phrase that states the evidence. Verdicts are never typed: each
``judge_*`` function derives one from the numbers, with thresholds taken from the data (sampling
errors, ``eps``) or from :mod:`bncourse.lab.stats` where seeds are compared.

The ``judge_*`` functions take what a reader can compute in a few lines (the chapter shows those
lines), so the book and the tests reach the verdict through the same code::

    from bncourse.lab import claims
    ev = claims.CLAIMS["bn_range"].check()
    ev.verdict   # "false"
    ev.because   # "outputs range from -3.1 to 3.8; 51% are negative and 14% above 1, while ..."
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from bncourse.lab.data import Dataset, load_digits
from bncourse.lab.glue import glue_number, glue_text
from bncourse.lab.plots import markdown_table
from bncourse.lab.recalibrate import recalibrate_bn
from bncourse.lab.stats import (
    compare_paired,
    compare_ratio,
    equivalence_test,
    format_number,
    mean_ci,
)
from bncourse.lab.train import evaluate, train
from bncourse.nn import functional as F
from bncourse.theory import dropout_variances

__all__ = [
    "Verdict",
    "Evidence",
    "Claim",
    "CLAIMS",
    "run_all",
    "glue_claim",
    "summary_table",
    "skewed_features",
    "judge_bn_range",
    "judge_no_sqrt",
    "judge_dropout_weights",
    "judge_backprop",
    "judge_sample_level",
    "judge_fraction",
    "judge_selective",
    "judge_loss_multiplier",
    "judge_inverted_scaling",
    "judge_eval_identity",
    "judge_mean_and_variance",
    "judge_resnet_block",
    "judge_gaussian",
    "basic_block",
    "bottleneck_block",
    "layer_counts",
    "finetune_experiment",
    "judge_finetune",
    "gradient_experiment",
    "backward_gain",
    "running_statistics_experiment",
    "judge_running_statistics",
    "lr_range_experiment",
]

Verdict = Literal["false", "partly true", "true", "undecided"]

#: Seeds of the claims that train or initialise networks (each run well under a second).
SEEDS = tuple(range(10))


@dataclass(frozen=True)
class Evidence:
    """What a check found: its numbers, the verdict computed from them, and a phrase stating them."""

    verdict: Verdict
    numbers: dict[str, float]
    because: str
    details: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.verdict}: {self.because}"


@dataclass(frozen=True)
class Claim:
    """A popular statement, what the check tests, and where the course teaches the correct one."""

    key: str
    statement: str
    tested: str
    label: str
    check: Callable[[], Evidence]


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _pct(x: float, digits: int = 0) -> str:
    return f"{format_number(100 * x, digits)}%"


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- batch norm's output ------------------------------------------------------------------


def skewed_features(batch: int = 256, seed: int = 0) -> Tensor:
    """A batch of four features with means and scales far from 0 and 1 (``batch x 4``)."""
    mean = torch.tensor([3.0, -2.0, 0.5, 10.0])
    scale = torch.tensor([2.0, 0.5, 5.0, 0.1])
    return mean + scale * torch.randn(batch, 4, generator=_g(seed))


def judge_bn_range(y: Tensor) -> Evidence:
    """BN's training-mode output (``gamma = 1, beta = 0``): inside [0, 1], or zero mean, unit variance?"""
    y = y.detach().double()
    below, above = float((y < 0).double().mean()), float((y > 1).double().mean())
    mean = float(y.mean(0).abs().max())
    var = float((y.var(0, unbiased=False) - 1).abs().max())
    verdict: Verdict = "false" if below > 0 or above > 0 else "true"
    standardized = mean < 1e-3 and var < 1e-2
    because = (
        f"outputs range from {format_number(float(y.min()))} to {format_number(float(y.max()))}; "
        f"{_pct(below)} are negative and {_pct(above)} above 1"
        + (", while every feature has mean 0 and variance 1" if standardized else "")
    )
    numbers = {"min": float(y.min()), "max": float(y.max()), "below": 100 * below}
    numbers |= {"above": 100 * above, "max_abs_mean": mean, "max_var_error": var}
    return Evidence(verdict, numbers, because)


def _bn_range() -> Evidence:
    return judge_bn_range(nn.BatchNorm1d(4)(skewed_features()))


def judge_no_sqrt(
    variances: Sequence[float], out_no_sqrt: Tensor, out_bn: Tensor, eps: float
) -> Evidence:
    """Output variance per feature of ``(x - mean) / (var + eps)`` beside BN's ``/ sqrt(var + eps)``."""
    v = np.asarray(variances, dtype=float)
    wrong = out_no_sqrt.detach().double().var(0, unbiased=False).numpy()
    right = out_bn.detach().double().var(0, unbiased=False).numpy()
    # With the batch's own statistics BN's output variance is var / (var + eps): 1 up to eps / var.
    tol = 10 * eps / v.min()
    off = np.abs(wrong - 1) > tol
    unit = np.isclose(v, 1.0)
    verdict: Verdict = "false" if off[~unit].any() and np.all(np.abs(right - 1) <= tol) else "true"
    parts = ", ".join(
        f"{format_number(a, 2)} → {format_number(b, 3)}" for a, b in zip(v, wrong, strict=True)
    )
    with_root = (
        "every feature has variance 1"
        if np.all(np.abs(right - 1) <= tol)
        else f"the output variances are {', '.join(format_number(r, 3) for r in right)}"
    )
    because = (
        f"without the square root the output variance is about 1/variance (input variance → output: "
        f"{parts}); with it, {with_root}"
    )
    numbers = {"tol": tol, "max_bn_error": float(np.abs(right - 1).max())}
    numbers |= {f"var_{i}": float(w) for i, w in enumerate(wrong)}
    numbers["unit_error"] = float(np.abs(wrong[unit] - 1).max()) if unit.any() else float("nan")
    return Evidence(verdict, numbers, because, {"input_var": v, "no_sqrt_var": wrong})


#: Input variances of the no-square-root check: one of them 1, where both formulas agree.
NO_SQRT_VARIANCES = (0.25, 1.0, 4.0, 16.0)


def _no_sqrt() -> Evidence:
    v = torch.tensor(NO_SQRT_VARIANCES)
    z = torch.randn(512, len(v), generator=_g(1), dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, unbiased=False)  # exactly mean 0, variance 1 per feature
    x = z * v.double().sqrt() + 2.0
    mean, var = x.mean(0), x.var(0, unbiased=False)
    bn = nn.BatchNorm1d(len(v)).double()
    # The check feeds the batch's own variance, so the formulas differ only in the square root.
    return judge_no_sqrt(var.tolist(), (x - mean) / (var + bn.eps), bn(x), bn.eps)


# --- what dropout zeroes, and its gradient ------------------------------------------------


def judge_dropout_weights(weight_before: Tensor, weight_after: Tensor, out: Tensor) -> Evidence:
    """After a training-mode forward pass through ``Linear -> Dropout``: weights or activations zeroed?"""
    changed = float((weight_after - weight_before).abs().max())
    masks = out.detach() != 0
    zero = float((~masks).double().mean())
    distinct = len({tuple(row.tolist()) for row in masks})
    verdict: Verdict = "false" if changed == 0 and zero > 0 and distinct > 1 else "true"
    because = (
        f"the weights did not change (largest change {format_number(changed, 0)}); {_pct(zero)} of "
        f"the activations are zero, with {distinct} different patterns in {len(masks)} examples"
        + (", which no single set of zeroed weights could give" if distinct > 1 else "")
    )
    numbers = {"weight_change": changed, "zero": 100 * zero, "distinct": distinct}
    return Evidence(verdict, numbers | {"batch": len(masks)}, because)


def _dropout_weights(p: float = 0.3) -> Evidence:
    torch.manual_seed(2)
    layer, drop = nn.Linear(8, 16), nn.Dropout(p)
    before = layer.weight.detach().clone()
    out = drop(layer(torch.randn(32, 8, generator=_g(2))))
    return judge_dropout_weights(before, layer.weight.detach(), out)


def judge_backprop(hidden_grad: Tensor, kept: Tensor, weight_grad: Tensor) -> Evidence:
    """Gradients at a dropout layer: zero at dropped positions? Do dropped units' weights still learn?"""
    at_dropped = float(hidden_grad[~kept].abs().max()) if (~kept).any() else 0.0
    at_kept = float((hidden_grad[kept] != 0).double().mean())
    rows = float((weight_grad.abs().sum(1) > 0).double().mean())
    dropped_somewhere = float((~kept).any(0).double().mean())
    if at_dropped != 0:
        verdict: Verdict = "false"
    else:
        verdict = "partly true" if rows == 1.0 else "true"
    because = (
        f"the gradient is exactly zero at every dropped position (largest {format_number(at_dropped, 0)}) "
        f"and non-zero at {_pct(at_kept)} of the kept ones; {_pct(dropped_somewhere)} of the units "
        f"were dropped for some example, yet {_pct(rows)} of their weight rows received a gradient "
        f"from the batch"
    )
    numbers = {"at_dropped": at_dropped, "at_kept": 100 * at_kept, "rows": 100 * rows}
    return Evidence(verdict, numbers | {"dropped_somewhere": 100 * dropped_somewhere}, because)


def _backprop(p: float = 0.3) -> Evidence:
    torch.manual_seed(3)
    layer, drop, head = nn.Linear(8, 16), nn.Dropout(p), nn.Linear(16, 1)
    hidden = layer(torch.randn(32, 8, generator=_g(3)))
    hidden.retain_grad()
    out = drop(hidden)
    head(out).sum().backward()
    return judge_backprop(hidden.grad, out.detach() != 0, layer.weight.grad)


def judge_sample_level(out: Tensor) -> Evidence:
    """Does dropout drop whole examples (a row all zero or all kept), or units one by one?"""
    zero = out.detach() == 0
    whole = float((zero.all(1) | (~zero).all(1)).double().mean())
    per_row = zero.double().mean(1)
    verdict: Verdict = "false" if whole < 1 else "true"
    because = (
        f"{_pct(1 - whole)} of the examples have some units dropped and others kept; each example "
        f"loses between {_pct(float(per_row.min()))} and {_pct(float(per_row.max()))} of its units"
    )
    numbers = {"mixed": 100 * (1 - whole), "row_min": 100 * float(per_row.min())}
    return Evidence(verdict, numbers | {"row_max": 100 * float(per_row.max())}, because)


def _sample_level(p: float = 0.3) -> Evidence:
    torch.manual_seed(4)
    return judge_sample_level(nn.Dropout(p)(torch.ones(64, 32)))


#: Equivalence margin (fraction of units) for "the dropped fraction is p": one percentage point.
FRACTION_MARGIN = 0.01


def judge_fraction(fractions: dict[float, Sequence[float]], default_p: float) -> Evidence:
    """Per drop probability ``p``, per batch, the dropped fraction: equal to ``p`` (TOST)? To 1/2?"""
    tests = {
        p: equivalence_test(np.asarray(f, dtype=float) - p, margin=FRACTION_MARGIN)
        for p, f in fractions.items()
    }
    halves = {
        p: equivalence_test(np.asarray(f, dtype=float) - 0.5, margin=FRACTION_MARGIN).verdict
        == "equivalent"
        for p, f in fractions.items()
    }
    equal_p = all(t.verdict == "equivalent" for t in tests.values())
    if all(halves.values()):
        verdict: Verdict = "true"  # half, whatever p: the claim as stated
    elif any(halves.values()):
        verdict = "partly true" if equal_p else "undecided"
    else:
        verdict = "false" if equal_p else "undecided"
    means = {p: float(np.mean(f)) for p, f in fractions.items()}
    parts = ", ".join(f"{_pct(m, 1)} at p = {format_number(p, 1)}" for p, m in means.items())
    half_at = [format_number(p, 1) for p, h in halves.items() if h]
    because = (
        f"the dropped fraction is {parts}, "
        + ("each" if equal_p else "not each")
        + f" shown within ±{format_number(100 * FRACTION_MARGIN, 0)} point of p (TOST); it is one "
        "half only at "
        + (f"p = {', '.join(half_at)}" if half_at else "no p tried")
        + f", PyTorch's default being p = {format_number(default_p, 1)}"
    )
    numbers = {"default_p": default_p, "margin": 100 * FRACTION_MARGIN, "tried": len(fractions)}
    numbers |= {"half_count": sum(halves.values())}
    numbers |= {f"mean_{round(100 * p)}": 100 * m for p, m in means.items()}
    default = tests.get(default_p)
    if default is not None:
        numbers |= {
            "low": 100 * (default_p + default.low),
            "high": 100 * (default_p + default.high),
        }
    return Evidence(verdict, numbers, because)


#: Drop probabilities of the fraction check: PyTorch's default and two common smaller ones.
FRACTION_PS = (0.1, 0.3, 0.5)


def _fraction() -> Evidence:
    torch.manual_seed(5)
    fractions = {}
    for p in FRACTION_PS:
        drop = nn.Dropout(p)
        fractions[p] = [float((drop(torch.ones(4096)) == 0).double().mean()) for _ in range(20)]
    return judge_fraction(fractions, nn.Dropout().p)


#: Equivalence margin (drop rate) for "weak and strong units are dropped alike".
SELECTIVE_MARGIN = 0.02


def judge_selective(activation: Tensor, out: Tensor, quantile: float = 0.1) -> Evidence:
    """Drop rate among the weakest and the strongest activations, per batch (first dim), compared."""
    a, dropped = activation.detach(), out.detach() == 0
    weak, strong = [], []
    for act, d in zip(a, dropped, strict=True):
        lo, hi = torch.quantile(act.flatten(), torch.tensor([quantile, 1 - quantile]))
        weak.append(float(d[act <= lo].double().mean()))
        strong.append(float(d[act >= hi].double().mean()))
    eq = equivalence_test(strong, weak, margin=SELECTIVE_MARGIN)
    verdict: Verdict = "false" if eq.verdict == "equivalent" else "undecided"
    because = (
        f"the weakest {_pct(quantile)} of the activations are dropped at a rate of "
        f"{_pct(float(np.mean(weak)), 1)}, the strongest {_pct(quantile)} at "
        f"{_pct(float(np.mean(strong)), 1)}: {eq.sentence(digits=3, unit='')}"
    )
    numbers = {"weak": 100 * float(np.mean(weak)), "strong": 100 * float(np.mean(strong))}
    numbers |= {"margin": 100 * SELECTIVE_MARGIN, "quantile": 100 * quantile}
    return Evidence(verdict, numbers, because)


def _selective(p: float = 0.3) -> Evidence:
    torch.manual_seed(6)
    # Positive activations spread over three orders of magnitude: nearly dead to over-active.
    act = torch.exp(2 * torch.randn(20, 256, 64, generator=_g(6)))
    return judge_selective(act, nn.Dropout(p)(act))


# --- scaling: the loss multiplier and inverted dropout -------------------------------------


def _mean_ratio(out: Tensor, x: Tensor) -> np.ndarray:
    """Per draw (first dim): mean of ``out`` over mean of ``x``."""
    return (out.mean(dim=tuple(range(1, out.dim()))) / x.mean(dim=tuple(range(1, x.dim())))).numpy()


def judge_inverted_scaling(
    ratio_scaled: Sequence[float], ratio_raw: Sequence[float], p: float
) -> Evidence:
    """Training-to-test ratio of the mean activation, with and without dividing by ``1 - p``."""
    scaled, raw = mean_ci(ratio_scaled, 0.99), mean_ci(ratio_raw, 0.99)
    ok = scaled.low <= 1 <= scaled.high and not raw.low <= 1 <= raw.high
    verdict: Verdict = "true" if ok else "undecided"
    because = (
        f"at p = {format_number(p, 1)} the mean activation during training is "
        f"{format_number(raw.mean, 3)} times its test value without the division and "
        f"{format_number(scaled.mean, 3)} times with it (99% CI {format_number(scaled.low, 3)} to "
        f"{format_number(scaled.high, 3)})"
    )
    numbers = {
        "p": p,
        "raw": raw.mean,
        "scaled": scaled.mean,
        "low": scaled.low,
        "high": scaled.high,
    }
    return Evidence(verdict, numbers, because)


def _scaled_and_raw(p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    x = torch.rand(30, 2048, generator=_g(seed)) + 0.5
    scaled = nn.Dropout(p)(x)  # inverted dropout: kept values divided by 1 - p
    raw = scaled * (1 - p)  # the same mask without the division
    return _mean_ratio(scaled, x), _mean_ratio(raw, x)


def _inverted_scaling(p: float = 0.3) -> Evidence:
    scaled, raw = _scaled_and_raw(p, 7)
    return judge_inverted_scaling(scaled, raw, p)


def judge_loss_multiplier(
    grad_ratio: float, output_change: float, ratio_raw: Sequence[float], p: float
) -> Evidence:
    """Scaling the loss by ``p / (1 - p)``: what it changes (gradients) and what it leaves (the mismatch)."""
    factor = p / (1 - p)
    raw = mean_ci(ratio_raw, 0.99)
    mismatch = not raw.low <= 1 <= raw.high
    verdict: Verdict = "false" if output_change == 0 and mismatch else "undecided"
    because = (
        f"the factor {format_number(factor, 3)} multiplies every gradient by "
        f"{format_number(grad_ratio, 3)} (a change of learning rate) and changes no output "
        f"(largest change {format_number(output_change, 0)}); the mean activation during training stays "
        f"{format_number(raw.mean, 3)} times its test value; at p = 0.5 the factor is "
        f"{format_number(0.5 / (1 - 0.5), 0)}"
    )
    numbers = {"p": p, "factor": factor, "grad_ratio": grad_ratio, "raw": raw.mean}
    numbers |= {"factor_half": 0.5 / (1 - 0.5), "output_change": output_change}
    return Evidence(verdict, numbers, because)


def _loss_multiplier(p: float = 0.3) -> Evidence:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(32, 8, generator=_g(8))
    grads, outputs = [], []
    for factor in (1.0, p / (1 - p)):
        model.zero_grad()
        out = model(x)
        (factor * out.pow(2).mean()).backward()
        grads.append(torch.cat([q.grad.flatten() for q in model.parameters()]))
        outputs.append(out.detach())
    ratio = float(grads[1].norm() / grads[0].norm())
    _, raw = _scaled_and_raw(p, 8)
    return judge_loss_multiplier(ratio, float((outputs[1] - outputs[0]).abs().max()), raw, p)


def judge_eval_identity(max_change: dict[float, float]) -> Evidence:
    """``max |Dropout(p).eval()(x) - x|`` per ``p``: is dropout the identity at test time?"""
    worst = max(max_change.values())
    verdict: Verdict = "false" if worst == 0 else "true"
    ps = ", ".join(format_number(p, 1) for p in max_change)
    because = (
        f"in evaluation mode dropout returns its input unchanged for every p tried ({ps}; "
        f"largest change {format_number(worst, 0)}): there is no drop probability to pick at test time"
    )
    return Evidence(verdict, {"worst": worst, "tried": len(max_change)}, because)


def _eval_identity() -> Evidence:
    x = torch.randn(64, 32, generator=_g(9))
    change = {}
    for p in (0.1, 0.3, 0.5, 0.8):
        drop = nn.Dropout(p).eval()
        change[p] = float((drop(x) - x).abs().max())
    return judge_eval_identity(change)


def judge_mean_and_variance(
    mean_ratio: Sequence[float], var_ratio: Sequence[float], predicted_var_ratio: float
) -> Evidence:
    """Per draw, training over test mean and variance after dropout: mean kept, variance changed?"""
    m, v = mean_ci(mean_ratio, 0.99), mean_ci(var_ratio, 0.99)
    mean_kept = m.low <= 1 <= m.high
    var_changed = not v.low <= 1 <= v.high
    verdict: Verdict = (
        "true"
        if mean_kept and var_changed
        else "partly true"
        if mean_kept or var_changed
        else "false"
    )
    because = (
        f"during training the mean is {format_number(m.mean, 3)} times its test value (99% CI "
        f"{format_number(m.low, 3)} to {format_number(m.high, 3)}) and the variance "
        f"{format_number(v.mean, 3)} times (99% CI {format_number(v.low, 3)} to "
        f"{format_number(v.high, 3)}; the formula predicts {format_number(predicted_var_ratio, 3)})"
    )
    numbers = {"mean": m.mean, "var": v.mean, "predicted": predicted_var_ratio}
    return Evidence(verdict, numbers | {"var_low": v.low, "var_high": v.high}, because)


def _mean_and_variance(p: float = 0.3, mean: float = 1.0, var: float = 1.0) -> Evidence:
    g = _g(12)
    mean_ratio, var_ratio = [], []
    for _ in range(20):
        x = mean + math.sqrt(var) * torch.randn(20000, generator=g, dtype=torch.float64)
        y = F.dropout(x, p, generator=g)
        mean_ratio.append(float(y.mean() / x.mean()))
        var_ratio.append(float(y.var() / x.var()))
    train_var, test_var = dropout_variances(p, mean=mean, var=var)
    return judge_mean_and_variance(mean_ratio, var_ratio, float(train_var / test_var))


# --- ResNet's residual blocks -------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body, self.relu = body, nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + x)


def basic_block(channels: int = 16) -> nn.Module:
    """He et al.'s basic block (2016, section 3.4): conv3x3, BN, ReLU, conv3x3, BN, identity, ReLU."""
    return _Residual(
        nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
    )


def bottleneck_block(channels: int = 64, reduction: int = 4) -> nn.Module:
    """He et al.'s bottleneck block: conv1x1, BN, ReLU, conv3x3, BN, ReLU, conv1x1, BN, plus identity."""
    mid = channels // reduction
    return _Residual(
        nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
    )


def layer_counts(module: nn.Module) -> dict[str, int]:
    """How many layers of each kind ``module`` holds (batch norm, dropout of any kind, conv)."""
    mods = list(module.modules())
    return {
        "batch_norm": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
        "dropout": sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in mods),
        "conv": sum(isinstance(m, nn.Conv2d) for m in mods),
    }


def judge_resnet_block(counts: dict[str, dict[str, int]], source: str = "") -> Evidence:
    """Per block kind, its layer counts: BN in every block? Dropout in any?

    The count reads the blocks as built; for blocks transcribed from a paper (``source``) it
    displays what the transcription holds, so the verdict is as good as the transcription.
    """
    bn = all(c["batch_norm"] > 0 for c in counts.values())
    do = any(c["dropout"] > 0 for c in counts.values())
    verdict: Verdict = "true" if bn and do else "partly true" if bn or do else "false"
    parts = "; ".join(
        f"{name}: {c['conv']} convolutions, {c['batch_norm']} BN, {c['dropout']} dropout layers"
        for name, c in counts.items()
    )
    every = all(c["batch_norm"] == c["conv"] for c in counts.values())
    bn_words = (
        "batch norm after every convolution" if every else "batch norm" if bn else "no batch norm"
    )
    because = f"{parts}: {bn_words}, {'dropout' if do else 'no dropout'}"
    if source:
        because = f"as transcribed from {source}, {because}"
    numbers = {
        f"{name.split()[0]}_{k}": float(v) for name, c in counts.items() for k, v in c.items()
    }
    return Evidence(verdict, numbers, because)


def _resnet_block() -> Evidence:
    blocks = {"basic block": basic_block(), "bottleneck block": bottleneck_block()}
    counts = {name: layer_counts(b) for name, b in blocks.items()}
    return judge_resnet_block(counts, "He et al. (2016), section 3.4")


# --- the variance shift of Gaussian dropout -----------------------------------------------


#: Equivalence margin (log of the shift ratio, about 2%) for "the same shift".
GAUSSIAN_MARGIN = 0.02


def judge_gaussian(shifts: dict[str, Sequence[float]]) -> Evidence:
    """Per noise, per draw: test variance over training variance right after the noise (1: no shift)."""
    gauss, bern = np.asarray(shifts["Gaussian dropout"]), np.asarray(shifts["dropout"])
    c = compare_ratio(gauss, bern)
    g = mean_ci(gauss)
    eq = equivalence_test(np.log(gauss) - np.log(bern), margin=GAUSSIAN_MARGIN)
    shifted = g.high < 1
    verdict: Verdict = "false" if shifted and eq.verdict == "equivalent" else "undecided"
    means = {k: float(np.mean(v)) for k, v in shifts.items()}
    because = (
        f"test over training variance is {format_number(means['dropout'], 3)} for dropout and "
        f"{format_number(means['Gaussian dropout'], 3)} for Gaussian dropout at the same p "
        f"(ratio {format_number(c.ratio, 3)}; on the log scale "
        f"{eq.sentence(digits=3, unit='')}); "
        f"Uout with β = 0.1 gives {format_number(means['Uout'], 3)}"
    )
    numbers = {k.split()[0].lower(): v for k, v in means.items()}
    return Evidence(verdict, numbers | {"ratio": c.ratio}, because)


def _gaussian(p: float = 0.3, beta: float = 0.1) -> Evidence:
    g = _g(11)
    noises = {
        "dropout": lambda x: F.dropout(x, p, generator=g),
        "Gaussian dropout": lambda x: F.gaussian_dropout(x, p, generator=g),
        "Uout": lambda x: F.uout(x, beta, generator=g),
    }
    shifts: dict[str, list[float]] = {k: [] for k in noises}
    for _ in range(10):
        x = torch.randn(20000, generator=g, dtype=torch.float64)
        for name, noise in noises.items():
            shifts[name].append(float(x.var() / noise(x).var()))
    return judge_gaussian(shifts)


# --- experiments that train -----------------------------------------------------------------


@cache
def _digits() -> Dataset:
    return load_digits(seed=0)


def _small_mlp(p: float, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(p), nn.Linear(128, 10)
    )


def _changed_by_eval(model: nn.Module, x: Tensor) -> int:
    """How many parameter and buffer entries ``model.eval()`` and an evaluation pass change."""
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model(x)
    after = model.state_dict()
    return sum(int((after[k] != v).sum()) for k, v in before.items())


def judge_finetune(left: int, changed: int) -> Evidence:
    """Units training left untouched with dropout, and entries that switching to eval changes."""
    verdict: Verdict = "false" if left == 0 and changed == 0 else "undecided"
    because = (
        f"{left} hidden units were left untrained by dropout, and putting the trained network in "
        f"evaluation mode and running it changed {changed} of its parameters and buffers: "
        f"evaluation mode only stops drawing masks"
    )
    return Evidence(verdict, {"left": left, "changed": changed}, because)


def finetune_experiment(p: float = 0.3, seeds: Sequence[int] = SEEDS, epochs: int = 6) -> Evidence:
    """Train with and without dropout: is any unit left untrained, does eval mode change anything?

    The accuracy of both networks, used as they are in evaluation mode, is reported beside the
    verdict: a gap is what dropout costs in this training budget, not a unit awaiting repair.
    """
    acc: dict[float, list[float]] = {0.0: [], p: []}
    trained: dict[float, list[Tensor]] = {0.0: [], p: []}
    changed = 0
    for seed in seeds:
        for q in acc:  # same seed, same initial weights: dropout has no parameters
            model = _small_mlp(q, seed)
            w0 = model[1].weight.detach().clone()
            train(model, _digits(), epochs=epochs, seed=seed, progress=False, device="cpu")
            acc[q].append(100 * evaluate(model, _digits()))
            trained[q].append((model[1].weight.detach() - w0).abs().sum(1) > 0)
            if q > 0:
                changed += _changed_by_eval(model, _digits().x_test)
    # Units that training moved without dropout but left where they started with it.
    left = sum(int((a & ~b).sum()) for a, b in zip(trained[0.0], trained[p], strict=True))
    dead = float(np.mean([float((~t).double().mean()) for t in trained[0.0]]))
    ev = judge_finetune(left, changed)
    c = compare_paired(acc[p], acc[0.0])
    because = ev.because + (
        f" ({len(seeds)} runs; the {_pct(dead, 1)} of units that never move are dead ReLUs, "
        f"unmoved without dropout too)"
    )
    numbers = ev.numbers | {"dead": 100 * dead, "acc_dropout": float(np.mean(acc[p]))}
    numbers |= {"acc_plain": float(np.mean(acc[0.0])), "seeds": len(seeds), "p": p}
    numbers |= {"gap": -c.mean_diff, "gap_low": -c.high, "gap_high": -c.low, "epochs": epochs}
    numbers["confidence"] = 100 * c.confidence
    return Evidence(ev.verdict, numbers, because, {"comparison": c})


def _deep_sigmoid(depth: int, norm: bool, p: float, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width_in = 64
    for _ in range(depth):
        layers.append(nn.Linear(width_in, 64, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm1d(64))
        layers.append(nn.Sigmoid())
        if p > 0:
            layers.append(nn.Dropout(p))
        width_in = 64
    layers.append(nn.Linear(64, 10))
    return nn.Sequential(*layers)


def _gradient_ratio(model: nn.Sequential, x: Tensor, y: Tensor, draws: int) -> float:
    """First over last hidden layer's weight-gradient norm, the gradient averaged over ``draws``."""
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    model.train()
    model.zero_grad()
    for _ in range(draws):
        (nn.functional.cross_entropy(model(x), y) / draws).backward()
    return float(linears[0].weight.grad.norm() / linears[-1].weight.grad.norm())


def backward_gain(model: nn.Sequential, x: Tensor, y: Tensor) -> dict[str, float]:
    """Per hidden layer of a sigmoid MLP: mean sigmoid slope, pre-activation spread, backward gain.

    ``std_min``/``std_max``: the smallest and largest spread of a layer's pre-activations (over
    examples and units); ``batch_std``: the per-unit batch standard deviation, averaged.

    The gain is the geometric mean over consecutive hidden layers of the ratio of the loss
    gradient's norm at one layer's pre-activation to its norm at the next layer's.
    """
    model.train()
    model.zero_grad()
    pre: list[Tensor] = []
    slopes: list[float] = []
    h = x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            pre.append(h)
        elif isinstance(m, nn.Sigmoid):
            slopes.append(float((h * (1 - h)).detach().mean()))
    nn.functional.cross_entropy(h, y).backward()
    hidden = pre[:-1]  # the last Linear is the output layer
    norms = np.array([float(t.grad.norm()) for t in hidden])
    stds = [float(t.detach().std()) for t in hidden]
    return {
        "slope": float(np.mean(slopes)),
        "gain": float(np.exp(np.mean(np.log(norms[:-1] / norms[1:])))),
        "std_min": min(stds),
        "std_max": max(stds),
        "batch_std": float(np.mean([float(t.detach().std(0).mean()) for t in hidden])),
    }


#: Equivalence margin for "dropout leaves the gradient ratio alone": log 2, a factor of 2 either way.
GRADIENT_MARGIN = math.log(2)


def gradient_experiment(
    depth: int = 10,
    p: float = 0.3,
    seeds: Sequence[int] = SEEDS,
    draws: int = 20,
    deep: int = 50,
) -> dict[str, Evidence]:
    """At initialisation, deep sigmoid MLPs: does dropout, or BN, raise the first layer's gradient?

    The gradient of a dropout network is averaged over ``draws`` masks, the gradient the optimiser
    follows on average; a single mask's gradient is noisier, not larger in expectation. BN's
    ratio is also measured at depth ``deep``, where BN's gradients grow towards the input.
    """
    x, y = _digits().x_train[:256], _digits().y_train[:256]
    ratios: dict[str, list[float]] = {"plain": [], "dropout": [], "BN": [], "BN deep": []}
    probes: dict[str, list[dict[str, float]]] = {"plain": [], "BN": []}
    for seed in seeds:
        ratios["plain"].append(_gradient_ratio(_deep_sigmoid(depth, False, 0.0, seed), x, y, 1))
        ratios["dropout"].append(_gradient_ratio(_deep_sigmoid(depth, False, p, seed), x, y, draws))
        ratios["BN"].append(_gradient_ratio(_deep_sigmoid(depth, True, 0.0, seed), x, y, 1))
        ratios["BN deep"].append(_gradient_ratio(_deep_sigmoid(deep, True, 0.0, seed), x, y, 1))
        probes["plain"].append(backward_gain(_deep_sigmoid(depth, False, 0.0, seed), x, y))
        probes["BN"].append(backward_gain(_deep_sigmoid(depth, True, 0.0, seed), x, y))
    mech = {
        f"{name}_{k}": float(np.mean([q[k] for q in qs]))
        for name, qs in (("plain", probes["plain"]), ("bn", probes["BN"]))
        for k in qs[0]
    }
    geo = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
    out = {}
    for name in ("dropout", "BN"):
        c = compare_ratio(ratios[name], ratios["plain"])
        eq = equivalence_test(np.log(ratios[name]), np.log(ratios["plain"]), margin=GRADIENT_MARGIN)
        if c.verdict == "larger":
            # A measurable rise smaller than the margin is not what "alleviates" promises.
            verdict: Verdict = "true" if c.ratio >= math.exp(GRADIENT_MARGIN) else "partly true"
        elif c.verdict == "smaller" or eq.verdict == "equivalent":
            verdict = "false"
        else:
            verdict = "undecided"
        because = (
            f"the first hidden layer's gradient is {geo[name]:.2g} times the last one's with {name} "
            f"and {geo['plain']:.2g} times without ({depth} sigmoid layers, geometric means over "
            f"{len(seeds)} seeds); {name} changes this ratio by a factor {c.ratio:.3g} (95% CI "
            f"{c.low:.3g} to {c.high:.3g}, {_p(c.p_value)})"
        )
        if name == "dropout" and c.verdict != "larger":
            because += (
                f"; on the log scale, with a margin of log 2 (a factor of 2 either way), the "
                f"change is {eq.sentence(digits=2, unit='')}"
            )
        numbers = {"ratio": geo[name], "plain": geo["plain"], "change": c.ratio, "depth": depth}
        numbers |= {"seeds": len(seeds), "margin_factor": math.exp(GRADIENT_MARGIN)}
        if name == "BN":
            numbers |= mech | {"deep": deep, "deep_ratio": geo["BN deep"]}
        out[name] = Evidence(verdict, numbers, because, {"comparison": c, "equivalence": eq})
    return out


@cache
def _gradients() -> dict[str, Evidence]:
    return gradient_experiment()


#: Relative difference below which two float32 statistics count as equal (float precision,
#: accumulated over the few hundred updates of a short training run).
FLOAT_TOL = 1e-4


def _ema(batches: Sequence[Tensor], start: float, momentum: float) -> Tensor:
    """PyTorch's update ``r <- (1 - momentum) r + momentum x``, from ``start``, over ``batches``."""
    r = torch.full_like(batches[0], start)
    for b in batches:
        r = (1 - momentum) * r + momentum * b
    return r


def judge_running_statistics(
    eval_error: float, ema_error: float, whole_diff: float, tol: float = FLOAT_TOL
) -> Evidence:
    """BN at test time: does it use buffers that are an EMA of batch statistics, or the whole set's?

    ``eval_error``: evaluation output against the formula with the buffers; ``ema_error``: the
    buffers against the moving average recomputed from the recorded batch statistics;
    ``whole_diff``: the buffers' variance against the whole training set's (all relative).
    """
    uses_buffers, is_ema, is_whole = eval_error < tol, ema_error < tol, whole_diff < tol
    if not uses_buffers:
        verdict: Verdict = "false"
    elif is_whole:
        verdict = "true"
    else:
        verdict = "partly true" if is_ema else "undecided"
    because = (
        f"in evaluation mode BN normalizes with its running buffers (largest difference from the "
        f"formula {format_number(eval_error, 7)}); the buffers "
        + ("equal" if is_ema else "differ from")
        + f" the exponential moving average of the batch statistics recorded during training "
        f"(largest relative difference {ema_error:.1g}) and their variance differs from the whole "
        f"training set's by {_pct(whole_diff, 1)} (median over features)"
    )
    if verdict == "partly true":
        because += (
            ": whole-set statistics are the paper's inference procedure, not PyTorch's default "
            "buffers"
        )
    numbers = {"eval_error": eval_error, "ema_error": ema_error, "whole": 100 * whole_diff}
    return Evidence(verdict, numbers | {"tol": tol}, because)


def running_statistics_experiment(seed: int = 0, epochs: int = 5, lr: float = 0.1) -> Evidence:
    """Train a BN MLP recording each batch's statistics, then compare the first BN layer's buffers
    with their moving average and with the whole training set's statistics."""
    data = _digits()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    bn = model[2]
    means: list[Tensor] = []
    variances: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        if module.training:  # the statistics the running buffers are updated with
            z = inputs[0].detach().double()
            means.append(z.mean(0))
            variances.append(z.var(0))  # unbiased, as PyTorch's update uses

    hook = bn.register_forward_hook(record)
    train(model, data, epochs=epochs, lr=lr, seed=seed, progress=False, device="cpu")
    hook.remove()
    model.eval()
    m = float(bn.momentum)
    ema_mean, ema_var = _ema(means, 0.0, m), _ema(variances, 1.0, m)
    running_mean, running_var = bn.running_mean.double(), bn.running_var.double()
    ema_error = max(
        float(((running_var - ema_var) / ema_var).abs().max()),
        float((running_mean - ema_mean).abs().max() / running_var.sqrt().min()),
    )
    with torch.no_grad():
        z = model[1](model[0](data.x_train))  # BN's input, whole training set, final weights
        by_hand = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        eval_error = float((bn(z) - by_hand).abs().max())
        whole_var = z.double().var(0)
        whole_diff = float((running_var / whole_var - 1).abs().median())
        recalibrate_bn(model, data)
        recal = float((bn.running_var.double() / whole_var - 1).abs().median())
    ev = judge_running_statistics(eval_error, ema_error, whole_diff)
    because = ev.because + (
        f"; one pass over the training set with frozen weights brings it to {_pct(recal, 1)}"
    )
    numbers = ev.numbers | {"recal": 100 * recal, "momentum": m, "epochs": epochs}
    return Evidence(ev.verdict, numbers | {"steps": len(means)}, because)


#: Learning rates of the tuning claim, and the test accuracy (%) that counts as "trains".
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
TRAINS = 70.0


#: Epochs of every run of the tuning claim: a short budget, in which a small rate is slow.
LR_EPOCHS = 2
#: Below ``LR_SMALL`` a rate counts as small, from ``LR_LARGE`` on as large.
LR_SMALL, LR_LARGE = 0.1, 1.0


def lr_range_experiment(seeds: Sequence[int] = SEEDS[:5], epochs: int = LR_EPOCHS) -> Evidence:
    """How many of :data:`LRS` train a 3-block MLP in ``epochs``, with and without BN, seed by seed."""
    from bncourse.lab.why_bn import stability_sweep

    sweep = stability_sweep([1.0], LRS, seeds, epochs=epochs)
    count = {k: (v[0] >= TRAINS).sum(0) for k, v in sweep.items()}
    c = compare_paired(count["BN"], count["no BN"])
    verdict: Verdict = {"better": "false", "worse": "true", "within noise": "undecided"}[c.verdict]
    because = (
        f"of {len(LRS)} learning rates from {format_number(LRS[0], 2)} to {format_number(LRS[-1], 0)}, "
        f"{format_number(float(count['BN'].mean()), 1)} train with BN and "
        f"{format_number(float(count['no BN'].mean()), 1)} without (mean over {len(seeds)} seeds); "
        f"the paired difference is {format_number(c.mean_diff, 1)} learning rates (95% CI "
        f"{format_number(c.low, 1)} to {format_number(c.high, 1)}, {_p(c.p_value)})"
    )
    # Failed runs at the small rates (too slow for the budget) and at the large ones (unstable).
    small, large = np.asarray(LRS) < LR_SMALL, np.asarray(LRS) >= LR_LARGE
    fails = {k: (v[0] < TRAINS).mean(1) * len(seeds) for k, v in sweep.items()}
    numbers = {"bn": float(count["BN"].mean()), "plain": float(count["no BN"].mean())}
    numbers |= {"lrs": len(LRS), "threshold": TRAINS, "seeds": len(seeds), "epochs": epochs}
    for k, name in (("BN", "bn"), ("no BN", "plain")):
        numbers[f"{name}_fail_small"] = float(fails[k][small].sum())
        numbers[f"{name}_fail_large"] = float(fails[k][large].sum())
    numbers |= {
        "small_runs": float(small.sum() * len(seeds)),
        "large_runs": float(large.sum() * len(seeds)),
    }
    numbers |= {"lr_small": LR_SMALL, "lr_large": LR_LARGE}
    low = min(float(v[0][small].min()) for v in sweep.values())
    numbers |= {"small_min_acc": low, "chance": 100 / _digits().num_classes}
    return Evidence(verdict, numbers, because, {"sweep": sweep, "comparison": c})


# --- the registry -------------------------------------------------------------------------

CLAIMS: dict[str, Claim] = {
    c.key: c
    for c in [
        Claim(
            "bn_range",
            "Batch norm scales activations into the range [0, 1].",
            "a BN layer's training-mode output on features with various means and scales",
            "bn-axes",
            _bn_range,
        ),
        Claim(
            "no_sqrt",
            "Batch norm divides by the variance plus eps, (x - E[x]) / (Var[x] + eps).",
            "the output variance of that formula beside BN's, for several input variances",
            "bn-eps",
            _no_sqrt,
        ),
        Claim(
            "test_stats",
            "At test time BN uses the mean and variance of the whole training set.",
            "what evaluation mode computes, and how the running buffers compare with the moving "
            "average of the batch statistics and with the whole training set's statistics",
            "bn-whole-dataset",
            running_statistics_experiment,
        ),
        Claim(
            "lr_tuning",
            "Batch norm needs more learning-rate tuning.",
            "how many learning rates train a network with and without BN",
            "why-lr",
            lr_range_experiment,
        ),
        Claim(
            "bn_vanishing",
            "Batch norm alleviates vanishing gradients.",
            "the first layer's gradient relative to the last in deep sigmoid networks, with BN "
            "before every sigmoid and without",
            "why-saturation",
            lambda: _gradients()["BN"],
        ),
        Claim(
            "dropout_weights",
            "Dropout sets the dropped neurons' weights to zero.",
            "a layer's weights and outputs after a training-mode pass through dropout",
            "do-mask",
            _dropout_weights,
        ),
        Claim(
            "sample_level",
            "Dropout picks examples of the batch and zeroes all their hidden units.",
            "which entries of a batch dropout zeroes",
            "do-mask",
            _sample_level,
        ),
        Claim(
            "backprop",
            "Dropped units are skipped by back-propagation: no gradient reaches them.",
            "the gradient at the dropout layer and at the weights of the units it dropped",
            "do-backward",
            _backprop,
        ),
        Claim(
            "fraction",
            "Dropout drops half of the neurons.",
            "the fraction dropout zeroes at several drop probabilities, PyTorch's default among them",
            "do-mask",
            _fraction,
        ),
        Claim(
            "selective",
            "Dropout removes dead or over-active neurons.",
            "the drop rate among the weakest and the strongest activations",
            "do-mask",
            _selective,
        ),
        Claim(
            "inverted_scaling",
            "During training the kept outputs are divided by 1 - p so that "
            "training and test see the same expected input.",
            "the mean activation during training over its test value, with and without the division",
            "do-inverted",
            _inverted_scaling,
        ),
        Claim(
            "mean_and_variance",
            "Dropout keeps the expected activation between training and test, but not its variance.",
            "the mean and the variance of activations after dropout during training, over their "
            "test values",
            "do-variance",
            _mean_and_variance,
        ),
        Claim(
            "loss_multiplier",
            "To compensate for dropout, multiply the loss by p / (1 - p).",
            "what scaling the loss changes in the gradients and in the activations",
            "do-inverted",
            _loss_multiplier,
        ),
        Claim(
            "finetune",
            "After training, the dropped neurons are fine-tuned with a small learning "
            "rate to restore them.",
            "whether training leaves any unit untrained, and what switching to evaluation mode "
            "changes in the trained network",
            "do-eval",
            finetune_experiment,
        ),
        Claim(
            "test_p",
            "At test time one picks a suitable drop probability for the situation.",
            "what a dropout layer does in evaluation mode for several p",
            "do-eval",
            _eval_identity,
        ),
        Claim(
            "dropout_vanishing",
            "Dropout alleviates vanishing gradients.",
            "the same gradient ratio with dropout after every sigmoid, averaged over masks",
            "why-saturation",
            lambda: _gradients()["dropout"],
        ),
        Claim(
            "gaussian",
            "Gaussian dropout avoids the variance shift.",
            "the test-to-training variance ratio right after dropout, Gaussian dropout and Uout",
            "do-gaussian",
            _gaussian,
        ),
        Claim(
            "resnet",
            "ResNet uses batch norm and dropout in its residual blocks.",
            "the layers of He et al.'s basic and bottleneck blocks, built as the paper describes",
            "bp-cnn",
            _resnet_block,
        ),
    ]
}


def run_all() -> dict[str, Evidence]:
    """Every claim's evidence, in the order of :data:`CLAIMS`."""
    return {key: claim.check() for key, claim in CLAIMS.items()}


def glue_claim(key: str, evidence: Evidence) -> None:
    """Glue a claim's statement, verdict, evidence phrase and numbers as ``mc_<key>_<name>``."""
    claim = CLAIMS[key]
    glue_text(f"mc_{key}_claim", claim.statement)
    glue_text(f"mc_{key}_verdict", evidence.verdict)
    glue_text(f"mc_{key}_because", evidence.because)
    for name, value in evidence.numbers.items():
        glue_number(f"mc_{key}_{name}", value)


def anchor(key: str) -> str:
    """The chapter's section label of claim ``key``: ``mc-`` and the key with hyphens."""
    return "mc-" + key.replace("_", "-")


def summary_table(results: dict[str, Evidence]) -> str:
    """A Markdown table: claim (linked to its section), what was tested, verdict, evidence."""
    rows = [
        [
            f"[{CLAIMS[k].statement}](#{anchor(k)})",
            CLAIMS[k].tested,
            f"**{ev.verdict}**",
            ev.because,
        ]
        for k, ev in results.items()
    ]
    return markdown_table(["claim", "tested", "verdict", "evidence"], rows)


def verdict_counts(results: dict[str, Evidence]) -> dict[str, int]:
    """How many claims got each verdict."""
    counts: dict[str, int] = {}
    for ev in results.values():
        counts[ev.verdict] = counts.get(ev.verdict, 0) + 1
    return counts
