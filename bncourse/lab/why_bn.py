"""The experiments of the chapter "Why batch norm helps, and what it does not do".

Each function trains small MLPs of :func:`bncourse.lab.ablations.ablation_mlp` on the digits
with :func:`bncourse.lab.train.train`, one run per seed (seed ``s`` of every configuration shares
its data split, initial weights where the architecture allows, and batch order), and returns
per-seed NumPy arrays that the chapter hands to :mod:`bncourse.lab.stats`. They are sized to run
in seconds on one CPU core.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from bncourse.lab.ablations import ablation_mlp
from bncourse.lab.activations import input_drift, saturation, weight_gradient_norms
from bncourse.lab.data import Dataset
from bncourse.lab.data import load_digits as _load_digits
from bncourse.lab.landscape import probe_gradient_direction
from bncourse.lab.stats import compare_paired
from bncourse.lab.train import evaluate, train

__all__ = [
    "SEEDS",
    "subset",
    "noise_and_smoothness",
    "saturation_experiment",
    "stability_sweep",
    "largest_stable_lr",
    "batch_size_gap",
    "ghost_gap",
    "ghost_verdict",
    "ghost_conclusion",
    "order_experiment",
    "bias_before_bn",
]

#: Seeds of every configuration (one run each).
SEEDS = tuple(range(10))


@cache
def load_digits(seed: int = 0) -> Dataset:
    """:func:`bncourse.lab.data.load_digits`, loaded once per split seed."""
    return _load_digits(seed=seed)


def subset(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """The same data set with only ``n`` training samples (drawn with ``seed``), test set whole."""
    idx = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))[:n]
    return Dataset(
        data.name, data.x_train[idx], data.y_train[idx], data.x_test, data.y_test, data.num_classes
    )


def _fit(model, data, seed, **options):
    h = train(model, data, seed=seed, progress=False, **options)
    return h


def noise_and_smoothness(
    configs: dict[str, dict],
    seeds: Sequence[int] = SEEDS,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 0.05,
    etas: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
    probe_size: int = 256,
) -> dict[str, dict[str, np.ndarray]]:
    """Train each configuration (``ablation_mlp`` options) epoch by epoch with plain SGD.

    After every epoch the loss landscape along the gradient is probed on a fixed batch of
    ``probe_size`` training samples; at the end the input drift of every hidden layer is measured.
    Returns per configuration: ``test``, ``train_loss`` (last epoch), ``loss_range``,
    ``gradient_change`` and ``beta`` (each averaged over the probes), ``drift`` (averaged over
    layers), and ``seconds``, one value per seed.
    """
    out: dict[str, dict[str, list]] = {}
    for label, options in configs.items():
        rec = out.setdefault(
            label,
            {
                k: []
                for k in (
                    "test",
                    "train_loss",
                    "loss_range",
                    "gradient_change",
                    "beta",
                    "drift",
                    "seconds",
                )
            },
        )
        for seed in seeds:
            data = load_digits(seed=seed)
            x, y = data.x_train[:probe_size], data.y_train[:probe_size]
            model = ablation_mlp(data.input_shape, data.num_classes, seed=seed, **options)
            start = time.perf_counter()
            probes, loss = [], float("nan")
            for epoch in range(epochs):
                h = _fit(
                    model,
                    data,
                    1000 * seed + epoch,
                    epochs=1,
                    batch_size=batch_size,
                    lr=lr,
                    momentum=0.0,
                )
                loss = h.train_loss[-1]
                probes.append(probe_gradient_direction(model, x, y, etas, seed=epoch))
            rec["seconds"].append(time.perf_counter() - start)
            rec["test"].append(100 * evaluate(model, data))
            rec["train_loss"].append(loss)
            rec["loss_range"].append(np.mean([p.loss_range for p in probes]))
            rec["gradient_change"].append(np.mean([p.gradient_change for p in probes]))
            rec["beta"].append(np.mean([p.beta for p in probes]))
            rec["drift"].append(np.mean(input_drift(model, data.x_train, batch_size, 8, seed)))
    return {label: {k: np.asarray(v) for k, v in rec.items()} for label, rec in out.items()}


def saturation_experiment(
    seeds: Sequence[int] = SEEDS,
    activation: str = "tanh",
    init_scale: float = 3.0,
    depth: int = 4,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 0.05,
) -> dict[str, dict[str, np.ndarray]]:
    """Saturated fraction per layer at initialization and after training, with and without BN.

    Returns per ``"BN"``/``"no BN"``: ``sat_init`` and ``sat_trained`` (seeds x layers),
    ``grad_init`` (seeds x layers, weight-gradient norms at initialization) and ``test``.
    """
    out = {}
    for label, norm in (("BN", True), ("no BN", False)):
        rec: dict[str, list] = {"sat_init": [], "sat_trained": [], "grad_init": [], "test": []}
        for seed in seeds:
            data = load_digits(seed=seed)
            x, y = data.x_train[:256], data.y_train[:256]
            model = ablation_mlp(
                data.input_shape,
                data.num_classes,
                depth=depth,
                activation=activation,
                norm=norm,
                init_scale=init_scale,
                seed=seed,
            )
            rec["sat_init"].append(saturation(model, x))
            rec["grad_init"].append(weight_gradient_norms(model, x, y))
            _fit(model, data, seed, epochs=epochs, batch_size=batch_size, lr=lr)
            rec["sat_trained"].append(saturation(model, x))
            rec["test"].append(100 * evaluate(model, data))
        out[label] = {k: np.asarray(v) for k, v in rec.items()}
    return out


def stability_sweep(
    init_scales: Sequence[float],
    lrs: Sequence[float],
    seeds: Sequence[int],
    epochs: int = 2,
    batch_size: int = 128,
    depth: int = 3,
) -> dict[str, np.ndarray]:
    """Test accuracy (percent, NaN-free: a diverged run scores chance) over scales x lrs x seeds.

    Returns ``{"BN": array, "no BN": array}`` of shape ``(len(init_scales), len(lrs), len(seeds))``.
    """
    out = {}
    for label, norm in (("BN", True), ("no BN", False)):
        acc = np.zeros((len(init_scales), len(lrs), len(seeds)))
        for i, scale in enumerate(init_scales):
            for j, lr in enumerate(lrs):
                for k, seed in enumerate(seeds):
                    data = load_digits(seed=seed)
                    model = ablation_mlp(
                        data.input_shape,
                        data.num_classes,
                        depth=depth,
                        norm=norm,
                        init_scale=scale,
                        seed=seed,
                    )
                    h = _fit(model, data, seed, epochs=epochs, batch_size=batch_size, lr=lr)
                    ok = np.isfinite(h.train_loss[-1])
                    acc[i, j, k] = 100 * evaluate(model, data) if ok else 100 / data.num_classes
        out[label] = acc
    return out


def largest_stable_lr(acc: np.ndarray, lrs: Sequence[float], threshold: float) -> np.ndarray:
    """Per leading index and seed: the largest lr whose accuracy reaches ``threshold`` (else NaN).

    ``acc`` has shape ``(..., len(lrs), seeds)``, as one slice of :func:`stability_sweep`.
    """
    lrs = np.asarray(lrs, dtype=float)
    ok = acc >= threshold
    best = np.where(ok, lrs[:, None], np.nan)
    with np.errstate(all="ignore"):
        return np.where(ok.any(-2), np.nanmax(np.where(ok, best, -np.inf), axis=-2), np.nan)


def _gap_runs(data_for, model_for, seeds, **fit):
    test, train_acc = [], []
    for seed in seeds:
        data = data_for(seed)
        model = model_for(data, seed)
        _fit(model, data, seed, **fit)
        test.append(100 * evaluate(model, data))
        train_acc.append(100 * evaluate(model, data, split="train"))
    test, train_acc = np.asarray(test), np.asarray(train_acc)
    return {"test": test, "train": train_acc, "gap": train_acc - test}


def batch_size_gap(
    batch_sizes: Sequence[int],
    seeds: Sequence[int] = SEEDS,
    n_train: int = 400,
    epochs: int = 15,
    lr: float = 0.05,
    norm: bool = True,
) -> dict[int, dict[str, np.ndarray]]:
    """Train/test accuracy and their gap (points) per batch size on ``n_train`` digits."""
    out = {}
    for bs in batch_sizes:
        out[bs] = _gap_runs(
            lambda s: subset(load_digits(seed=s), n_train, s),
            lambda d, s: ablation_mlp(d.input_shape, d.num_classes, norm=norm, seed=s),
            seeds,
            epochs=epochs,
            batch_size=bs,
            lr=lr,
        )
    return out


def ghost_gap(
    ghost_sizes: Sequence[int],
    batch_size: int,
    seeds: Sequence[int] = SEEDS,
    n_train: int = 400,
    epochs: int = 15,
    lr: float = 0.05,
) -> dict[int, dict[str, np.ndarray]]:
    """Train/test gap at a fixed ``batch_size`` for every ghost batch size (BN statistics per chunk)."""
    out = {}
    for g in ghost_sizes:
        out[g] = _gap_runs(
            lambda s: subset(load_digits(seed=s), n_train, s),
            lambda d, s, g=g: ablation_mlp(
                d.input_shape, d.num_classes, ghost_batch_size=g, seed=s
            ),
            seeds,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
        )
    return out


_GAP_WORDS = {"worse": "a smaller train-test gap", "better": "a larger train-test gap"}
_TEST_WORDS = {"better": "a higher test accuracy", "worse": "a lower test accuracy"}


def _ghost_tests(by_ghost: dict[int, dict], plain: int, margin: float):
    """(ghost size, gap comparison, test comparison) against plain BN for every ghost size."""
    for g in sorted(k for k in by_ghost if k != plain):
        gap = compare_paired(by_ghost[g]["gap"], by_ghost[plain]["gap"], margin=margin)
        test = compare_paired(by_ghost[g]["test"], by_ghost[plain]["test"], margin=margin)
        yield g, gap, test


def ghost_conclusion(by_ghost: dict[int, dict], plain: int, margin: float) -> str:
    """Whether the ghost-batch noise regularized: a smaller gap *and* a higher test accuracy."""
    tests = list(_ghost_tests(by_ghost, plain, margin))
    regularizes = [
        g for g, gap, test in tests if gap.verdict == "worse" and test.verdict == "better"
    ]
    if regularizes:
        sizes = " and ".join(map(str, regularizes))
        return (
            f"with ghost batches of {sizes} the extra noise narrowed the train-test gap and raised "
            "the test accuracy against plain BN: on this task that noise regularizes"
        )
    if any(gap.verdict == "worse" for _, gap, _ in tests):
        return (
            "where the extra noise of ghost batches narrowed the train-test gap, the test accuracy "
            "did not rise against plain BN: the networks fit their training set less well, which "
            "is not the same as generalizing better"
        )
    return (
        "no ghost batch size tried narrowed the train-test gap against plain BN, so no "
        "regularizing effect of the noise is shown"
    )


def ghost_verdict(by_ghost: dict[int, dict], plain: int, margin: float) -> str:
    """What every ghost-batch size did to the gap and the test accuracy against plain BN.

    ``by_ghost`` maps the ghost batch size to per-seed ``"gap"`` and ``"test"`` arrays (points),
    ``plain`` is the key of plain BN (ghost batches as large as the batch); every size is compared
    with plain BN, paired by seed, and the conclusion names only what these tests showed.
    """
    parts = []
    for g, gap, test in _ghost_tests(by_ghost, plain, margin):
        equal = f"within ±{margin:g} points"
        gap_words = _GAP_WORDS.get(
            gap.verdict,
            f"the same gap {equal}"
            if gap.verdict == "equivalent"
            else "no detectable change of the gap",
        )
        test_words = _TEST_WORDS.get(
            test.verdict,
            f"the same test accuracy {equal}"
            if test.verdict == "equivalent"
            else "no detectable change of the test accuracy",
        )
        parts.append(
            f"ghost batches of {g} gave {gap_words} ({gap.mean_diff:+.1f} points) and {test_words} "
            f"({test.mean_diff:+.1f} points)"
        )
    conclusion = ghost_conclusion(by_ghost, plain, margin)
    return (
        "Against plain BN, paired by seed, "
        + "; ".join(parts)
        + ". "
        + conclusion[0].upper()
        + conclusion[1:]
    )


def order_experiment(
    seeds: Sequence[int] = SEEDS, epochs: int = 4, batch_size: int = 64, lr: float = 0.05
) -> dict[str, dict[str, np.ndarray]]:
    """Test accuracy with BN before the ReLU and after it, same seeds and weights."""
    out = {}
    for label, order in (("BN before ReLU", "bn_act"), ("BN after ReLU", "act_bn")):
        out[label] = _gap_runs(
            load_digits,
            lambda d, s, order=order: ablation_mlp(
                d.input_shape, d.num_classes, order=order, seed=s
            ),
            seeds,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
        )
    return out


def bias_before_bn(seed: int = 0, epochs: int = 3) -> dict[str, float]:
    """What a bias before BN does: output difference, its gradient, how far training moves it.

    Builds the BN network with biases (random, large), copies it without them, and compares the
    two on a training batch. Then trains the biased one and reports how much its biases moved.
    """
    data = load_digits(seed=seed)
    with_bias = ablation_mlp(data.input_shape, data.num_classes, bias=True, seed=seed)
    with torch.no_grad():
        for name, m in with_bias.named_modules():
            if name.startswith("linear"):
                m.bias.normal_(0, 5.0, generator=torch.Generator().manual_seed(seed))
    without = ablation_mlp(data.input_shape, data.num_classes, bias=False, seed=seed)
    state = {
        k: v
        for k, v in with_bias.state_dict().items()
        if not k.endswith(".bias") or not k.startswith("linear")
    }
    without.load_state_dict(state)
    x, y = data.x_train[:128], data.y_train[:128]
    with_bias.train(), without.train()
    out_b, out_n = with_bias(x), without(x)
    loss = torch.nn.functional.cross_entropy(out_b, y)
    loss.backward()
    linears = [m for name, m in with_bias.named_modules() if name.startswith("linear")]
    bias_grad = max(float(m.bias.grad.abs().max()) for m in linears)
    weight_grad = min(float(m.weight.grad.abs().max()) for m in linears)
    start = [m.bias.detach().clone() for m in linears]
    with_bias.zero_grad()
    _fit(with_bias, data, seed, epochs=epochs, batch_size=64, lr=0.05)
    moved = max(
        float((m.bias.detach() - b0).abs().max()) for m, b0 in zip(linears, start, strict=True)
    )
    return {
        "output_difference": float((out_b - out_n).detach().abs().max()),
        "output_scale": float(out_n.detach().abs().max()),
        "bias_grad": bias_grad,
        "weight_grad": weight_grad,
        "bias_moved": moved,
        "bias_size": max(float(b.abs().max()) for b in start),
    }
